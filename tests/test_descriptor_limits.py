"""Descriptors and the watcher (issue 18, item 5's process side): the soft RLIMIT_NOFILE is
raised to the hard one at start and said in one line, and running out of descriptors (or
memory) is never taken for osqueryd gone: only a refused connection, a missing socket or
osqueryd no longer listing the extension stops it. In process, with thrift's real failures;
the real process is in test_every_row.py (item 5)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import resource
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from thrift.transport import TTransport

from osquery_aws_logger.counters import PluginCounters
from osquery_aws_logger.delivery.accumulator import Accumulator
from osquery_aws_logger.delivery.services import KINESIS
from osquery_aws_logger.delivery.shaper import HOLD_BELOW
from osquery_aws_logger.extension import ExtensionArgs, LoggerExtension
from osquery_aws_logger.osquery.manager import ManagerClient, manager_gone
from osquery_aws_logger.platform import raise_descriptor_limit
from osquery_aws_logger.settings import Settings
from osquery_aws_logger.spool import KIND_RESULT, Spool


def failure(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("the call did not fail")


@contextlib.contextmanager
def no_descriptor_left() -> Iterator[None]:
    """Every new descriptor of this process fails with EMFILE until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)  # the kernel hands out the lowest free number
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are short: keep sockets out of pytest's long tmp path.
    with tempfile.TemporaryDirectory(prefix="oqfd", dir="/tmp") as directory:
        yield Path(directory)


def test_a_missing_socket_or_a_refused_connection_is_osqueryd_gone(short_dir: Path) -> None:
    missing = failure(lambda: ManagerClient(str(short_dir / "osquery.em"))._call("ping"))
    assert isinstance(missing, TTransport.TTransportException) and manager_gone(missing)
    stale = short_dir / "stale.em"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(stale))
    listener.close()  # the file stays, nothing listens: as after osqueryd was killed
    refused = failure(lambda: ManagerClient(str(stale))._call("ping"))
    assert manager_gone(refused)


def test_out_of_descriptors_is_not_osqueryd_gone(short_dir: Path) -> None:
    with contextlib.closing(listening(short_dir / "osquery.em")):
        client = ManagerClient(str(short_dir / "osquery.em"), timeout=2)
        with no_descriptor_left():
            exc = failure(lambda: client._call("ping"))
    assert isinstance(exc, OSError) and exc.errno == errno.EMFILE  # thrift lets it through
    assert not manager_gone(exc)


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS])
def test_shortages_wrapped_by_thrift_are_not_osqueryd_gone(code: int) -> None:
    inner = OSError(code, os.strerror(code))
    wrapped = TTransport.TTransportException(type=TTransport.TTransportException.NOT_OPEN,
                                             message="Could not connect", inner=inner)
    assert not manager_gone(wrapped) and not manager_gone(inner)


def listening(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    return listener


def test_a_timeout_or_a_closed_connection_is_not_osqueryd_gone(short_dir: Path) -> None:
    with contextlib.closing(listening(short_dir / "silent.em")):
        silent = failure(lambda: ManagerClient(str(short_dir / "silent.em"), timeout=0.2)
                         ._call("ping"))
    assert isinstance(silent, TTransport.TTransportException)
    assert silent.type == TTransport.TTransportException.TIMED_OUT and not manager_gone(silent)
    with contextlib.closing(listening(short_dir / "closing.em")) as listener:
        def close_at_once() -> None:
            conn, _ = listener.accept()
            conn.close()

        closer = threading.Thread(target=close_at_once)
        closer.start()
        try:
            closed = failure(lambda: ManagerClient(str(short_dir / "closing.em"), timeout=5)
                             ._call("ping"))
        finally:
            closer.join()
    # End of file, or EPIPE/ECONNRESET when the close came before the ping was written.
    assert isinstance(closed, TTransport.TTransportException) and not manager_gone(closed)


# -- the watcher ---------------------------------------------------------------------------------

class ScriptedManager:
    """osqueryd's manager as the watcher sees it: each ping does what the script says next
    (an exception to raise, or True/False), then answers True for good."""

    def __init__(self, script: list[BaseException | bool], registered: bool = True) -> None:
        self.script = list(script)
        self.listed = registered
        self.pings = 0

    def ping_ok(self) -> bool:
        self.pings += 1
        step = self.script.pop(0) if self.script else True
        if isinstance(step, BaseException):
            raise step
        return step

    def registered(self, uuid: int) -> bool:
        return self.listed


def watched(manager: ScriptedManager, until: Callable[[], bool]) -> LoggerExtension:
    extension = LoggerExtension(ExtensionArgs(socket="/nonexistent/osquery.em", timeout=1,
                                              interval=0.001, verbose=False, command_line={}))
    extension.manager = manager  # type: ignore[assignment]
    watcher = threading.Thread(target=extension._watch, daemon=True)
    watcher.start()
    deadline = time.monotonic() + 10
    while not until() and time.monotonic() < deadline:
        time.sleep(0.01)
    return extension


def emfile() -> OSError:
    return OSError(errno.EMFILE, "Too many open files")


def refused() -> TTransport.TTransportException:
    return TTransport.TTransportException(type=TTransport.TTransportException.NOT_OPEN,
                                          message="Could not connect",
                                          inner=ConnectionRefusedError(errno.ECONNREFUSED, "refused"))


def test_the_watcher_keeps_watching_through_shortages_and_stops_when_osqueryd_is_gone(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="osquery_aws_logger")
    shortages: list[BaseException | bool] = [emfile() for _ in range(200)]
    shortages += [TTransport.TTransportException(message="unexpected exception",
                                                 inner=OSError(errno.ENOBUFS, "No buffer space")),
                  TTransport.TTransportException(type=TTransport.TTransportException.TIMED_OUT,
                                                 message="read timeout")]
    manager = ScriptedManager([*shortages, True, True])
    extension = watched(manager, lambda: manager.pings > len(shortages) + 2)
    try:
        assert manager.pings > len(shortages) + 2
        assert not extension.stopping.is_set(), "a shortage here was taken for osqueryd gone"
        lines = [r.getMessage() for r in caplog.records if "could not ping" in r.getMessage()]
        assert len(lines) == 1, "at most one line a minute"
        assert "EMFILE" in lines[0] and "not taken for osqueryd gone" in lines[0]
        manager.script = [refused()]
        deadline = time.monotonic() + 10
        while not extension.stopping.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert extension.stopping.is_set(), "a refused connection is osqueryd gone"
        assert any("is gone (ECONNREFUSED" in r.getMessage() for r in caplog.records)
    finally:
        extension.stopping.set()


def test_the_watcher_stops_when_osqueryd_no_longer_lists_the_extension() -> None:
    manager = ScriptedManager([emfile()], registered=False)
    extension = watched(manager, lambda: manager.pings >= 2)
    deadline = time.monotonic() + 10
    while not extension.stopping.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert extension.stopping.is_set(), "osqueryd no longer lists it: stopped"


# -- the soft limit ------------------------------------------------------------------------------

def test_the_soft_limit_is_raised_to_the_hard_one_and_said_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="osquery_aws_logger")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        raise_descriptor_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        raise_descriptor_limit()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    lines = [r.getMessage() for r in caplog.records if "RLIMIT_NOFILE" in r.getMessage()]
    assert lines == [
        f"open file descriptors (RLIMIT_NOFILE): raised the soft limit from 256 to {hard}",
        f"open file descriptors (RLIMIT_NOFILE): soft limit {hard}, already the hard limit"]


def test_a_spool_out_of_descriptors_reads_later_and_gives_nothing_up(tmp_path: Path) -> None:
    """Review finding: a segment that could not be opened for EMFILE was counted as damage
    (corrupt), taken off the spool and, its file left behind, sent again after a restart."""
    drops: dict[str, int] = {}
    spool = Spool(tmp_path / "k", max_records=10_000, max_bytes=1 << 30,
                  on_drop=lambda reason, rows: drops.__setitem__(reason, drops.get(reason, 0) + rows))
    for i in range(1000):
        spool.append(KIND_RESULT, b'{"i":%d}' % i)
    spool.release()  # its descriptors let go of, as the group does when short of them
    with no_descriptor_left():
        assert spool.read(500) == []
    assert drops == {} and spool.depth()[0] == 1000
    assert [r.seq for r in spool.read(2000)] == list(range(1, 1001))
    spool.close()


def test_a_big_line_read_again_out_of_descriptors_is_taken_later_whole(tmp_path: Path) -> None:
    """A line bigger than the shaper holds is read a window at a time (read_span): EMFILE
    there costs a turn, never the rest of the line (it was dropped as corrupt)."""
    counters = PluginCounters()
    spool = Spool(tmp_path / "k", max_records=10_000, max_bytes=1 << 30, on_drop=counters.drop)
    rows = [{"pid": str(i), "path": "/usr/bin/" + "p" * 200} for i in range(30_000)]
    line = json.dumps({"name": "q", "hostIdentifier": "h", "action": "snapshot",
                       "snapshot": rows}).encode()
    assert len(line) > HOLD_BELOW
    spool.append(KIND_RESULT, line, rows=len(rows))
    accumulator = Accumulator("aws_kinesis", KINESIS, spool, counters,
                              Settings(aws_kinesis_stream="s", aws_logger_results_as_events=True),
                              host_identifier="h")
    delivered, now = 0, 0.0
    for turn in range(400):
        short = 1 <= turn < 80  # past the end of the first window read (about 45 calls in)
        with no_descriptor_left() if short else contextlib.nullcontext():
            if short:
                spool.release()
            ready = accumulator.ready(now, draining=True)
        for batch in ready.batches:
            accumulator.completed(batch, [None] * len(batch.entries), now)
            delivered += batch.rows
        now += 1.0
        if not accumulator.waiting():
            break
    assert sum(counters.dropped.values()) == 0
    assert delivered == counters.delivered == len(rows)
    spool.close()
