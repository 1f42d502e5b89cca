"""The promises under the faults real hosts bring, against the real extension process:
stalled and dripping peers, multi-MB lines, damaged segments, a full disk, planted symlinks,
an unusable spool, memory after a giant line, and random bytes on the socket."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from osquery.extensions import Extension
from thrift.protocol import TBinaryProtocol
from thrift.transport import TTransport

from osquery_aws_logger.spool.spool import SEGMENT_SUFFIX
from tests.conftest import Aws
from tests.harness import EXTENSION_COMMAND, RunningExtension, result_lines, tmpfs, wait_for
from tests.localaws import free_port

Factory = type[RunningExtension]

CHUNK = 64 << 10


def call_bytes(plugin: str, request: dict[str, str], seqid: int = 7) -> bytes:
    """A logger call exactly as osqueryd's client writes it."""
    buffer = TTransport.TMemoryBuffer()
    client = Extension.Client(TBinaryProtocol.TBinaryProtocol(buffer))
    client._seqid = seqid - 1
    client.send_call("logger", plugin, request)
    return bytes(buffer.getvalue())


def ping_bytes() -> bytes:
    buffer = TTransport.TMemoryBuffer()
    Extension.Client(TBinaryProtocol.TBinaryProtocol(buffer)).send_ping()
    return bytes(buffer.getvalue())


def read_reply(sock: socket.socket, method: str) -> Any:
    """Read one whole reply from `sock` and decode it with the generated client."""
    data = b""
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
        try:
            client = Extension.Client(TBinaryProtocol.TBinaryProtocol(TTransport.TMemoryBuffer(data)))
            return getattr(client, f"recv_{method}")()
        except (EOFError, TTransport.TTransportException):
            continue
    raise AssertionError(f"the connection closed without a whole {method} reply ({len(data)} bytes)")


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    """A connection with osqueryd's 10 s receive timeout: a call that would hang fails."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:
            # The listen backlog is full: a server that accepts nothing fails here in time.
            if time.monotonic() >= deadline:
                sock.close()
                raise
            time.sleep(0.01)


def table(ext: RunningExtension) -> dict[str, dict[str, str]]:
    answer = ext.standin.call(ext.uuid, "table", "aws_logger_status", {"action": "generate"})
    return {row["service"]: row for row in answer.response}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@contextlib.contextmanager
def idle_connections(path: str, count: int) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(connect(path))
        yield socks
    finally:
        for sock in socks:
            sock.close()


# -- 1. stalled and dripping peers ---------------------------------------------------------------

def test_stalled_and_dripping_connections_delay_no_ping_or_log_call(
        tmp_path: Path, extension_factory: Factory) -> None:
    with extension_factory(tmp_path) as ext:
        path = ext.standin.extension_socket(ext.uuid)
        stop = threading.Event()
        message = call_bytes(ext.plugins["kinesis"], {"string": '{"drip":1}', "category": "event"})

        def drip() -> None:
            # One byte every half second: progress, but a message that never ends in time.
            with contextlib.closing(connect(path)) as sock:
                for byte in message[:-1]:
                    if stop.wait(0.5):
                        return
                    with contextlib.suppress(OSError):
                        sock.send(bytes([byte]))

        drippers = [threading.Thread(target=drip) for _ in range(5)]
        for thread in drippers:
            thread.start()
        try:
            with idle_connections(path, 200):
                lines = result_lines(ext.standin, 200)
                for line in lines:
                    # Each is a ping and a call on fresh connections, with osqueryd's timeouts:
                    # a server held up by any other connection fails them.
                    assert ext.log("kinesis", line).status.code == 0
        finally:
            stop.set()
            for thread in drippers:
                thread.join()
        rows = table(ext)
        assert int(rows["kinesis"]["accepted"]) == 200


def test_a_silent_connection_is_closed_after_its_deadline(
        tmp_path: Path, extension_factory: Factory) -> None:
    with extension_factory(tmp_path) as ext:
        sock = connect(ext.standin.extension_socket(ext.uuid), timeout=30)
        sock.send(ping_bytes()[:3])  # a message begun and never finished
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the extension, not by us
        assert time.monotonic() - started < 25
        sock.close()


def test_giant_messages_stalled_together_stay_within_the_memory_budget(
        tmp_path: Path, extension_factory: Factory) -> None:
    with extension_factory(tmp_path) as ext:
        assert ext.proc is not None
        path = ext.standin.extension_socket(ext.uuid)
        time.sleep(1)
        resting = rss_kb(ext.proc.pid)
        head = call_bytes(ext.plugins["kinesis"], {"snapshot": "x" * (60 << 20)})[:50 << 20]
        socks = [connect(path, timeout=30) for _ in range(4)]

        def stall(sock: socket.socket) -> None:
            # 50 MB of a 60 MB line, then nothing: the extension holds what it has read.
            with contextlib.suppress(OSError):
                sock.sendall(head)

        senders = [threading.Thread(target=stall, args=(sock,)) for sock in socks]
        try:
            for thread in senders:
                thread.start()
            time.sleep(3)
            peak = rss_kb(ext.proc.pid)
            # Four of them would be 200 MB, osquery's watchdog limit; the rest waits unread.
            assert peak - resting <= 120 * 1024, f"RSS {resting} kB at rest, {peak} kB stalled"
            assert ext.log("kinesis", result_lines(ext.standin, 1)[0]).status.code == 0
        finally:
            for sock in socks:
                sock.close()
            for thread in senders:
                thread.join()


# -- 2. multi-MB lines ------------------------------------------------------------------------------

def test_a_multi_mb_line_in_64k_chunks_is_answered_and_others_are_served_meanwhile(
        tmp_path: Path, extension_factory: Factory) -> None:
    with extension_factory(tmp_path) as ext:
        path = ext.standin.extension_socket(ext.uuid)
        rows = [{"path": f"/usr/lib/file{i}", "size": str(i)} for i in range(150_000)]
        line = json.dumps({"name": "file_snapshot", "hostIdentifier": "h", "snapshot": rows,
                           "action": "snapshot"})
        assert len(line) > 6 << 20
        message = call_bytes(ext.plugins["kinesis"], {"snapshot": line})
        with contextlib.closing(connect(path)) as big:
            for offset in range(0, len(message) - CHUNK, CHUNK):
                big.sendall(message[offset:offset + CHUNK])
                if offset == CHUNK * 10:
                    # Mid-message: a ping and a log call on fresh connections still answer.
                    assert ext.log("kinesis", result_lines(ext.standin, 1)[0]).status.code == 0
            big.sendall(message[offset + CHUNK:])
            reply = read_reply(big, "call")
        assert reply.status.code == 0
        spool = ext.spool_dir / "kinesis"
        data = b"".join(p.read_bytes() for p in sorted(spool.glob("*" + SEGMENT_SUFFIX)))
        assert line.encode() in data  # the whole line, spooled as sent


def test_a_message_declaring_more_than_the_limit_is_refused_before_it_is_read(
        tmp_path: Path, extension_factory: Factory) -> None:
    with extension_factory(tmp_path) as ext:
        path = ext.standin.extension_socket(ext.uuid)
        head = call_bytes(ext.plugins["kinesis"], {"string": "x"})
        # Rewrite the line's declared length to 1 GiB and send only the head.
        at = head.index(b"string") + len(b"string")
        forged = head[:at] + (1 << 30).to_bytes(4, "big")
        with contextlib.closing(connect(path, timeout=5)) as sock:
            sock.sendall(forged)
            assert sock.recv(1) == b""  # closed at once, nothing read past the declaration
        assert ext.log("kinesis", result_lines(ext.standin, 1)[0]).status.code == 0


# -- 3. damaged segments ----------------------------------------------------------------------------

def _flip(path: Path, at: int, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for index in range(at, at + count):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_segments_cost_only_the_records_they_touch_and_are_counted_and_logged(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    options = aws.options(buffered_log_max="1600")  # segments of 100 records
    sent = 1000
    with extension_factory(tmp_path, options={**options, "aws_kinesis_stream": ""}) as ext:
        for line in result_lines(ext.standin, sent):
            ext.log("kinesis", line)
        assert ext.terminate() == 0
    segments = sorted((tmp_path / "spool" / "kinesis").glob("*" + SEGMENT_SUFFIX))
    assert len(segments) >= 3
    newest, older = segments[-1], segments[1]
    _flip(newest, newest.stat().st_size // 2)
    _flip(older, older.stat().st_size // 2)
    with extension_factory(tmp_path, options=options) as ext:
        def settled() -> bool:
            row = table(ext)["kinesis"]
            return int(row["delivered"]) + int(row["dropped_other"]) >= sent
        wait_for(settled, 60, "every record delivered or counted")
        row = table(ext)["kinesis"]
        delivered = {json.loads(data)["columns"]["i"] for data, _ in aws.kinesis_records()}
        lost = int(row["dropped_other"])
        assert 2 <= lost <= 4  # 16 flipped bytes touch one record, or two across a boundary
        assert len(delivered) + lost == sent
        stderr = ext.stderr()
        assert newest.name in stderr and older.name in stderr
        assert "damaged records skipped" in stderr


# -- 4. a full disk -----------------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", "4m") as mount:
        yield mount


def _fill(mount: Path) -> Path:
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_drops_and_counts_lines_then_recovers_when_space_returns(
        tmp_path: Path, small_tmpfs: Path, extension_factory: Factory, aws: Aws) -> None:
    options = aws.options(aws_logger_spool_dir=str(small_tmpfs / "spool"))
    with extension_factory(tmp_path, options=options) as ext:
        before = result_lines(ext.standin, 100, name="before")
        for line in before:
            assert ext.log("kinesis", line).status.code == 0
        wait_for(lambda: int(table(ext)["kinesis"]["delivered"]) == 100, 30, "the first lines")
        filler = _fill(small_tmpfs)
        during = result_lines(ext.standin, 300, name="during")
        for line in during:
            assert ext.log("kinesis", line).status.code == 0  # never an error to osqueryd
        wait_for(lambda: "cannot write a line" in ext.stderr(), 10, "the full-disk line")
        filler.unlink()
        after = result_lines(ext.standin, 500, name="after")
        for line in after:
            assert ext.log("kinesis", line).status.code == 0
        def names() -> list[str]:
            return [json.loads(data)["name"] for data, _ in aws.kinesis_records()]
        wait_for(lambda: names().count("after") == 500, 60, "every line after the recovery")
        row = table(ext)["kinesis"]
        dropped = int(row["dropped_other"])
        assert dropped > 0
        assert names().count("during") + dropped == 300
        assert int(row["last_success"]) > 0 and row["state"] == "ok"
        assert ext.terminate() == 0
        assert "everything accepted was delivered" not in ext.stderr()
        assert "dropped since start" in ext.stderr()


# -- 5. planted symlinks --------------------------------------------------------------------------

def _victims(root: Path) -> tuple[Path, Path, dict[Path, bytes]]:
    victim_dir = root / "victim-dir"
    victim_dir.mkdir()
    (victim_dir / "keep").write_bytes(b"precious")
    victim_file = root / "victim-file"
    victim_file.write_bytes(b"do not touch")
    os.chmod(victim_file, 0o644)
    return victim_dir, victim_file, {victim_dir / "keep": b"precious", victim_file: b"do not touch"}


def _untouched(victim_dir: Path, victim_file: Path, contents: dict[Path, bytes]) -> None:
    assert sorted(p.name for p in victim_dir.iterdir()) == ["keep"]
    assert (victim_dir.stat().st_mode & 0o777) == 0o755
    assert (victim_file.stat().st_mode & 0o777) == 0o644
    for path, data in contents.items():
        assert path.read_bytes() == data


def test_a_spool_under_a_world_writable_parent_is_refused_and_planted_links_untouched(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    victim_dir, victim_file, contents = _victims(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # writable by anyone, no sticky bit
    spool = shared / "spool"
    spool.mkdir()
    for name in ("kinesis", "firehose"):
        (spool / name).symlink_to(victim_dir)
    options = aws.options(aws_logger_spool_dir=str(spool))
    with extension_factory(tmp_path, options=options) as ext:
        for line in result_lines(ext.standin, 20):
            assert ext.log("kinesis", line).status.code == 0
            assert ext.log("firehose", line).status.code == 0
        rows = table(ext)
        for service in ("kinesis", "firehose"):
            assert rows[service]["state"] == "disabled"
            assert "writable by every user" in rows[service]["last_error"]
            assert int(rows[service]["dropped_other"]) == 20
    _untouched(victim_dir, victim_file, contents)


def test_links_planted_inside_the_spool_are_never_followed(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    victim_dir, victim_file, contents = _victims(tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    (spool / "kinesis").symlink_to(victim_dir)
    firehose = spool / "firehose"
    firehose.mkdir(mode=0o700)
    (firehose / "ledger").symlink_to(victim_file)
    (firehose / "state.json").symlink_to(victim_file)
    with extension_factory(tmp_path, options=aws.options()) as ext:
        lines = result_lines(ext.standin, 50)
        for line in lines:
            assert ext.log("kinesis", line).status.code == 0
            assert ext.log("firehose", line).status.code == 0
        wait_for(lambda: len(aws.firehose_lines()) == 50, 30, "firehose delivery")
        wait_for(lambda: not (firehose / "ledger").is_symlink(), 10, "the ledger written")
        rows = table(ext)
        assert rows["kinesis"]["state"] == "disabled"
        assert "symbolic link" in rows["kinesis"]["last_error"]
    _untouched(victim_dir, victim_file, contents)
    assert (spool / "kinesis").is_symlink()  # refused, never replaced or written through


# -- 6. an unusable spool -----------------------------------------------------------------------

def test_an_unusable_spool_keeps_the_extension_registered_and_ships_once_fixed(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a regular file where the spool's parent should be")
    options = aws.options(aws_logger_spool_dir=str(blocker / "spool"))
    with extension_factory(tmp_path, options=options) as ext:
        for line in result_lines(ext.standin, 10, name="lost"):
            assert ext.log("kinesis", line).status.code == 0
        row = table(ext)["kinesis"]
        assert row["state"] == "disabled" and "unusable" in row["last_error"]
        assert int(row["dropped_other"]) == 10
        assert ext.proc is not None and ext.proc.poll() is None
        status = subprocess.run([str(EXTENSION_COMMAND), "status", "--aws_logger_spool_dir",
                                 str(blocker / "spool")], check=False, capture_output=True,
                                text=True)
        assert status.returncode == 1 and "is not a directory" in status.stdout
        blocker.unlink()
        blocker.mkdir(mode=0o755)
        wait_for(lambda: table(ext)["kinesis"]["state"] != "disabled", 30, "the spool set up again")
        for line in result_lines(ext.standin, 10, name="kept"):
            assert ext.log("kinesis", line).status.code == 0
        wait_for(lambda: len(aws.kinesis_records()) == 10, 30, "delivery after the fix")
        assert {json.loads(d)["name"] for d, _ in aws.kinesis_records()} == {"kept"}
        assert "usable again" in ext.stderr()


# -- 7. memory after a giant line -------------------------------------------------------------

def test_memory_returns_near_rest_after_giant_lines(
        tmp_path: Path, extension_factory: Factory) -> None:
    # A stream behind a closed port: the flusher reads, parses and shapes every line (the big
    # snapshot too), and keeps retrying; nothing is delivered.
    options = {"aws_kinesis_stream": "s", "aws_kinesis_endpoint": f"http://127.0.0.1:{free_port()}",
               "aws_kinesis_period": "1", "aws_region": "us-east-1"}
    with extension_factory(tmp_path, options=options) as ext:
        assert ext.proc is not None
        for line in result_lines(ext.standin, 50):
            ext.log("kinesis", line)
        time.sleep(2)
        resting = rss_kb(ext.proc.pid)
        rows = [{"path": f"/usr/lib/file{i}", "size": str(i)} for i in range(300_000)]
        giant = json.dumps({"name": "giant", "snapshot": "x" * (60 << 20)})
        snapshot = json.dumps({"name": "files", "snapshot": rows, "action": "snapshot"})
        del rows
        # Counted in rows: the giant line is one, the snapshot line its 300,000 rows.
        for dropped, line in ((1, giant), (1 + 300_000, snapshot)):
            message = call_bytes(ext.plugins["kinesis"], {"snapshot": line})
            with contextlib.closing(connect(ext.standin.extension_socket(ext.uuid),
                                            timeout=60)) as sock:
                for offset in range(0, len(message), CHUNK):
                    sock.sendall(message[offset:offset + CHUNK])
                assert read_reply(sock, "call").status.code == 0
            del message
            assert ext.log("kinesis", result_lines(ext.standin, 1)[0]).status.code == 0
            # Dropped when the flusher next reads, which waits for the endpoint's backoff (full
            # jitter, at most 60 s): the spool keeps lines up to the socket's limit.
            wait_for(lambda n=dropped: int(table(ext)["kinesis"]["dropped_oversize"]) == n,
                     90, "the flusher to read, parse and drop the big line")
            pid = ext.proc.pid
            # Back down, and staying there: a few samples in a row, within 30 s.
            wait_for(lambda p=pid: all(rss_kb(p) - resting <= 20 * 1024 and not time.sleep(0.2)
                                       for _ in range(5)),
                     30, f"RSS back within 20 MB of {resting} kB (now {rss_kb(pid)} kB)")


# -- the socket under random bytes -------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningExtension]:
    with RunningExtension(tmp_path_factory.mktemp("fuzz")) as ext:
        yield ext


def _messages() -> st.SearchStrategy[bytes]:
    valid = st.builds(lambda plugin, line: call_bytes(plugin, {"string": line}),
                      st.sampled_from(["aws_kinesis", "aws_firehose", "nope"]), st.text(max_size=200))
    truncated = st.builds(lambda data, cut: data[:cut], valid, st.integers(0, 60))
    oversized = st.builds(lambda data, size: data[:40] + size.to_bytes(4, "big", signed=True)
                          + data[44:], valid, st.integers(-(1 << 31), (1 << 31) - 1))
    return st.one_of(st.binary(max_size=300), truncated, oversized, valid,
                     st.builds(lambda a, b: a + b, valid, st.binary(max_size=50)))


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=_messages(), hold=st.booleans())
def test_random_and_broken_messages_never_stop_the_server(
        fuzz_target: RunningExtension, payload: bytes, hold: bool) -> None:
    path = fuzz_target.standin.extension_socket(fuzz_target.uuid)
    held = connect(path, timeout=2)
    with contextlib.suppress(OSError):
        held.sendall(payload)
        held.settimeout(0.01)
        with contextlib.suppress(TimeoutError):
            held.recv(1 << 16)
    if not hold:
        held.close()
    try:
        assert fuzz_target.proc is not None and fuzz_target.proc.poll() is None
        with contextlib.closing(connect(path, timeout=5)) as sock:
            sock.sendall(ping_bytes())
            assert read_reply(sock, "ping").code == 0
        line = result_lines(fuzz_target.standin, 1)[0]
        assert fuzz_target.log("kinesis", line).status.code == 0
    finally:
        held.close()
