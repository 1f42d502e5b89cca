"""The client side of osqueryd's ExtensionManager: ping, options, register, deregister.

Every call opens a connection of its own, so a call can fail for reasons that are this
process's, not osqueryd's: out of descriptors (EMFILE, ENFILE) or memory (ENOMEM, ENOBUFS), a
timeout. Only a refused connection or a missing socket means osqueryd is gone (`manager_gone`).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Mapping
from typing import Any, Final

from osquery.extensions import ExtensionManager
from osquery.extensions.ttypes import InternalExtensionInfo
from thrift.transport import TSocket, TTransport

from ..errors import RegistrationError
from ..version import __version__
from .wire import lenient_protocol

EXTENSION_NAME: Final = "aws_logger"
SDK_VERSION: Final = "5.23.0"
MIN_SDK_VERSION: Final = "1.8.0"
CONFLICT_TEXT: Final = "conflicts with another item of the same name"
#: A connection refused, or no socket (or no directory) where osqueryd's was: osqueryd is gone.
GONE_ERRNOS: Final = frozenset({errno.ECONNREFUSED, errno.ENOENT, errno.ENOTDIR})


def os_error_of(exc: BaseException) -> OSError | None:
    """The OSError behind a failed call: the exception itself, or the one thrift's
    TTransportException wraps (its `inner`: TSocket.open wraps a failed connect, but lets a
    failed socket() through as it is), or a cause."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            return current
        inner = getattr(current, "inner", None)
        current = inner if isinstance(inner, BaseException) else \
            current.__cause__ or current.__context__
    return None


def manager_gone(exc: BaseException) -> bool:
    """Whether a failed call means osqueryd's extension manager is gone (refused, no socket)."""
    error = os_error_of(exc)
    return error is not None and error.errno in GONE_ERRNOS


def describe_failure(exc: BaseException) -> str:
    """A failed call in a few words: its errno's name and text, or the exception."""
    error = os_error_of(exc)
    if error is not None and error.errno is not None:
        return f"{errno.errorcode.get(error.errno, error.errno)}: {error.strerror or error}"
    return f"{type(exc).__name__}: {exc}"


class ManagerClient:
    """Calls into osqueryd's ExtensionManager, each on a connection of its own."""

    def __init__(self, socket_path: str, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        #: Why the last wait_until_up failed ("" when it did not).
        self.last_error = ""

    def _call(self, method: str, *args: Any) -> Any:
        sock = TSocket.TSocket(unix_socket=self.socket_path)
        sock.setTimeout(self.timeout * 1000)
        transport = TTransport.TBufferedTransport(sock)
        transport.open()
        try:
            client = ExtensionManager.Client(lenient_protocol(transport))
            return getattr(client, method)(*args)
        finally:
            transport.close()

    def wait_until_up(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._call("ping")
                self.last_error = ""
                return True
            except (TTransport.TTransportException, OSError) as exc:
                if time.monotonic() >= deadline:
                    self.last_error = describe_failure(exc)
                    return False
                time.sleep(0.1)

    def options(self) -> dict[str, str]:
        return {name: info.value or "" for name, info in self._call("options").items()}

    def osquery_version(self) -> str:
        answer = self._call("query", "SELECT version FROM osquery_info")
        if answer.status.code == 0 and answer.response:
            return str(answer.response[0].get("version", ""))
        return ""

    def register(self, names: list[str], tables: Mapping[str, list[dict[str, str]]]) -> int:
        """Register the logger plugins `names` and the tables (name: columns); the uuid."""
        info = InternalExtensionInfo(name=EXTENSION_NAME, version=__version__,
                                     sdk_version=SDK_VERSION, min_sdk_version=MIN_SDK_VERSION)
        registry: dict[str, dict[str, list[Any]]] = {
            "logger": {name: [] for name in names},
            "table": {name: list(columns) for name, columns in tables.items()},
        }
        status = self._call("registerExtension", info, registry)
        if status.code != 0:
            raise RegistrationError(status.message or "refused",
                                    name_clash=CONFLICT_TEXT in (status.message or ""))
        return int(status.uuid)

    def registered(self, uuid: int) -> bool:
        return uuid in self._call("extensions")

    def ping_ok(self) -> bool:
        return bool(self._call("ping").code == 0)

    def deregister(self, uuid: int) -> None:
        self._call("deregisterExtension", uuid)
