"""The spool where room is short: a ledger that needs no new block, a tiny filesystem that fills
and frees, two spools sharing one filesystem oldest-first, and descriptors let go of when idle.

Real filesystems: each test mounts a small tmpfs (as root) and unmounts it after."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from osquery_aws_logger.spool.ledger import LEDGER_FILE, Ledger
from osquery_aws_logger.spool.spool import KIND_RESULT, Spool, SpoolGroup
from tests.harness import tmpfs


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted after the test."""
    with tmpfs(tmp_path / "fs", "2m") as mount:
        yield mount


@pytest.fixture
def shared_fs(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs for two spools (less than their byte caps), unmounted after the test."""
    with tmpfs(tmp_path / "fs", "12m") as mount:
        yield mount


def _spool(path: Path, drops: Counter[str], **kw: object) -> Spool:
    def on_drop(reason: str, rows: int) -> None:
        drops[reason] += rows
    kw.setdefault("max_records", 1_000_000)
    kw.setdefault("max_bytes", 1 << 30)
    return Spool(path, on_drop=on_drop, **kw)  # type: ignore[arg-type]


def _fill(path: Path) -> None:
    """Fill what is left of a filesystem with a file of its own."""
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass


def test_the_ledger_keeps_the_other_slot_when_a_write_is_torn(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ledger = Ledger()
        for seq in (5, 9, 14):
            ledger.write(fd, seq, seq * 10)
        assert Ledger().read(fd) == (14, 140)
        size = os.stat(tmp_path / LEDGER_FILE).st_size
        raw = bytearray((tmp_path / LEDGER_FILE).read_bytes())
        newest = 2048 if ledger.generation % 2 else 0
        raw[newest + 20] ^= 0xFF  # the newest slot torn: the one before it stands
        (tmp_path / LEDGER_FILE).write_bytes(bytes(raw))
        assert Ledger().read(fd) == (9, 90)
        assert os.stat(tmp_path / LEDGER_FILE).st_size == size == 4096
    finally:
        os.close(fd)


def test_a_full_filesystem_still_takes_acknowledgements_and_deletes_what_was_delivered(
        small_fs: Path) -> None:
    drops: Counter[str] = Counter()
    spool = _spool(small_fs / "s", drops)
    spool.append(KIND_RESULT, b"first")
    spool.ack(spool.read(10)[0].seq)  # the ledger is made while there is room
    line = b"x" * 4000
    for _ in range(250):  # about 1 MiB waits (AWS is down), in segments of 128 KiB
        assert spool.append(KIND_RESULT, line)
    _fill(small_fs / "other")  # and something else takes the rest of the filesystem
    assert os.statvfs(small_fs).f_bavail == 0
    got = spool.read(100_000)
    assert len(got) == 250
    spool.ack(got[-1].seq)  # AWS is back: delivered, acknowledged on a full filesystem
    fd = os.open(small_fs / "s", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert Ledger().read(fd) == (got[-1].seq, got[-1].end_row), "written in place"
    finally:
        os.close(fd)
    for i in range(200):  # and new lines are kept again: the delivered segments made room
        assert spool.append(KIND_RESULT, line + b"%d" % i), f"line {i} dropped"
    assert [r.data[-3:] for r in spool.read(1000)][-1] == b"199"
    assert not drops, "nothing waiting was given up, nothing new refused"
    spool.close()
    again = _spool(small_fs / "s", drops)
    assert again.depth()[0] == 200, "the acknowledged position survived a restart"


def test_a_spool_that_fills_its_small_filesystem_gives_up_its_oldest_for_the_newest(
        small_fs: Path) -> None:
    drops: Counter[str] = Counter()
    spool = _spool(small_fs / "s", drops)
    line = b"z" * 4000
    for i in range(2000):  # 8 MB into 2 MiB, AWS down: the oldest segments make room
        assert spool.append(KIND_RESULT, line + b"%05d" % i), f"line {i} refused"
    kept = [int(r.data[-5:]) for r in spool.read(10_000)]
    assert kept == list(range(2000 - len(kept), 2000)), "the newest are the ones kept"
    assert drops["disk_full"] == 2000 - len(kept) and not drops["spool_error"]


def test_the_oldest_rows_go_first_across_two_spools_on_one_filesystem(shared_fs: Path) -> None:
    drops: dict[str, Counter[str]] = {"a": Counter(), "b": Counter()}
    group = SpoolGroup()
    # Segments of 1 MiB (a sixteenth of the byte cap), so room comes back a segment at a time.
    older = _spool(shared_fs / "a", drops["a"], group=group, max_bytes=16 << 20)
    newer = _spool(shared_fs / "b", drops["b"], group=group, max_bytes=16 << 20)
    line = b"y" * 8000
    for _ in range(800):  # about 6 MiB, older than anything of b's
        older.append(KIND_RESULT, line)
    for _ in range(2000):  # b fills the rest of the filesystem, and goes on
        newer.append(KIND_RESULT, line)
        if drops["a"]["disk_full"] + drops["b"]["disk_full"] >= 300:
            break
    # Room was made from a's backlog, the oldest, before any of b's; no line was refused.
    assert drops["a"]["disk_full"] >= 300 and drops["b"]["disk_full"] == 0
    assert not drops["a"]["spool_error"] and not drops["b"]["spool_error"]
    assert older.depth()[0] + drops["a"]["disk_full"] == 800
    # The flusher's headroom check takes the oldest too: a's, while a holds closed segments.
    given_up = drops["a"]["disk_full"]
    _fill(shared_fs / "other")
    group.keep_headroom()
    assert drops["a"]["disk_full"] > given_up and drops["b"]["disk_full"] == 0


def test_idle_spools_let_go_of_their_descriptors(tmp_path: Path) -> None:
    group = SpoolGroup(max_open=8)
    drops: Counter[str] = Counter()

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    spools = [_spool(tmp_path / f"d{i}", drops, group=group, releasable=True) for i in range(300)]
    for i, spool in enumerate(spools):
        spool.append(KIND_RESULT, b"row %d" % i)
    assert open_fds() - before <= 2 * 8 + 2, "at most max_open spools hold descriptors"
    for i, spool in enumerate(spools):  # each read takes them again, and others let go
        assert [r.data for r in spool.read(10)] == [b"row %d" % i]
        spool.ack(1)
        spool.append(KIND_RESULT, b"again %d" % i)  # goes on in the same segment
    assert open_fds() - before <= 2 * 8 + 2
    assert all(s.depth()[0] == 1 for s in spools) and not drops
    assert len(list((tmp_path / "d7").glob("*.seg"))) == 1
