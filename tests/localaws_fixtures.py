"""pytest fixtures for the local AWS stand-ins in ``localaws``.

Import them into a conftest.py (``from tests.localaws_fixtures import fault_proxy, moto_server``) or
list this module in ``pytest_plugins``.  One moto server runs for the whole session (it takes
about a second to start); every test gets a fresh ``FaultProxy`` in front of it and a moto
that has just been reset, because moto's PutRecords slows down as records pile up and state
left by one test must not leak into the next.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.localaws import FaultProxy, MotoServer

__all__ = ["fault_proxy", "moto_server"]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A moto server subprocess on 127.0.0.1 shared by the session; stopped by pid at the end."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def fault_proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    """A new fault-injecting proxy over a freshly reset moto server.

    The reset happens before the test rather than after it, so a test that crashed half-way
    cannot leave streams behind for the next one.  Stopping the proxy abandons any call it is
    still delaying, so nothing reaches moto after the test is over.
    """
    moto_server.reset()
    with FaultProxy(moto_server.url) as proxy:
        yield proxy
