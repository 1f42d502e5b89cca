"""The durable spool: order, acknowledgement, restart, torn tails, caps and permissions."""

from __future__ import annotations

import os
import stat
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osquery_aws_logger._spool import KIND_RESULT, KIND_STATUS, SEGMENT_SUFFIX, Spool


def make(path: Path, drops: Counter[str] | None = None, **kw: int) -> Spool:
    counter = drops if drops is not None else Counter()
    kw.setdefault("max_records", 1_000_000)
    kw.setdefault("max_bytes", 1 << 30)

    def on_drop(reason: str, n: int) -> None:
        counter[reason] += n

    return Spool(path, on_drop=on_drop, **kw)


def test_records_come_back_in_order_with_kind_and_sequence(tmp_path: Path) -> None:
    spool = make(tmp_path / "s")
    for i in range(10):
        assert spool.append(KIND_STATUS if i % 3 == 0 else KIND_RESULT, b"line %d" % i)
    got = spool.read(4) + spool.read(100)
    assert [r.data for r in got] == [b"line %d" % i for i in range(10)]
    assert [r.seq for r in got] == list(range(1, 11))
    assert got[0].kind == KIND_STATUS and got[1].kind == KIND_RESULT
    assert spool.read(10) == []


def test_unacknowledged_records_survive_a_restart_and_acked_ones_do_not(tmp_path: Path) -> None:
    spool = make(tmp_path / "s")
    for i in range(20):
        spool.append(KIND_RESULT, b"r%d" % i)
    batch = spool.read(5)
    spool.ack(batch[-1].seq)
    spool.read(5)  # in flight, never acknowledged: a kill -9 now must not lose them
    del spool  # no close(): as after kill -9
    again = make(tmp_path / "s")
    assert [r.data for r in again.read(100)] == [b"r%d" % i for i in range(5, 20)]
    assert again.depth()[0] == 15


def test_new_records_after_restart_continue_the_sequence(tmp_path: Path) -> None:
    spool = make(tmp_path / "s")
    spool.append(KIND_RESULT, b"a")
    spool.close()
    again = make(tmp_path / "s")
    again.append(KIND_RESULT, b"b")
    got = again.read(10)
    assert [(r.seq, r.data) for r in got] == [(1, b"a"), (2, b"b")]


def test_a_torn_tail_is_cut_off_and_the_rest_kept(tmp_path: Path) -> None:
    spool = make(tmp_path / "s")
    for i in range(3):
        spool.append(KIND_RESULT, b"x" * 100 + b"%d" % i)
    spool.close()
    (segment,) = (tmp_path / "s").glob("*" + SEGMENT_SUFFIX)
    with open(segment, "ab") as handle:  # half a record, as a power loss mid-write leaves
        handle.write(b"\x40\x00\x00\x00\x01\x02")
    again = make(tmp_path / "s")
    assert len(again.read(10)) == 3
    again.append(KIND_RESULT, b"after")
    assert [r.data for r in again.read(10)] == [b"after"]


def test_record_cap_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    drops: Counter[str] = Counter()
    spool = make(tmp_path / "s", drops, max_records=64)
    for i in range(200):
        assert spool.append(KIND_RESULT, b"%d" % i)
    got = [int(r.data) for r in spool.read(1000)]
    assert len(got) <= 64
    assert got == list(range(200 - len(got), 200)), "the newest records are the ones kept"
    assert drops["cap_records"] == 200 - len(got)
    assert len(got) >= 64 - 64 // 16, "drops take at most one segment more than needed"


def test_byte_cap_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    drops: Counter[str] = Counter()
    spool = make(tmp_path / "s", drops, max_bytes=1 << 20)
    line = b"y" * 1000
    for _ in range(3000):
        spool.append(KIND_RESULT, line)
    records, size = spool.depth()
    assert size <= 1 << 20
    assert drops["cap_bytes"] == 3000 - records
    assert len(spool.read(5000)) == records


def test_a_cap_drops_records_in_flight_too_and_says_which(tmp_path: Path) -> None:
    drops: Counter[str] = Counter()
    spool = make(tmp_path / "s", drops, max_records=32)
    for i in range(30):
        spool.append(KIND_RESULT, b"%d" % i)
    in_flight = spool.read(30)
    for i in range(30, 100):
        spool.append(KIND_RESULT, b"%d" % i)
    # What the flusher still holds from dropped segments is off disk: it must not send it.
    kept_in_flight = [r for r in in_flight if r.seq >= spool.dropped_below]
    rest = spool.read(1000)
    delivered = len(kept_in_flight) + len(rest)
    assert delivered + drops["cap_records"] == 100
    assert drops["cap_records"] > 0
    del spool  # as after kill -9: a restart hands out exactly what was not dropped
    again = make(tmp_path / "s", drops, max_records=32)
    assert [r.seq for r in again.read(1000)] == [r.seq for r in kept_in_flight + rest]


def test_directory_and_files_are_private(tmp_path: Path) -> None:
    spool = make(tmp_path / "s")
    spool.append(KIND_RESULT, b"a")
    spool.ack(spool.read(1)[0].seq)
    assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o700
    for path in (tmp_path / "s").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_corrupt_record_in_a_closed_segment_is_counted_and_skipped(tmp_path: Path) -> None:
    drops: Counter[str] = Counter()
    spool = make(tmp_path / "s", drops, max_records=64)  # 4 records per segment
    for i in range(12):
        spool.append(KIND_RESULT, b"rec%02d" % i)
    spool.close()
    first = sorted((tmp_path / "s").glob("*" + SEGMENT_SUFFIX))[0]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF  # flip a payload byte of its last record
    first.write_bytes(bytes(data))
    again = make(tmp_path / "s", drops, max_records=64)
    got = [r.data for r in again.read(100)]
    assert b"rec03" not in got and len(got) == 11
    assert drops["corrupt"] == 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["append", "read", "ack", "restart"]),
                          st.integers(1, 40)), max_size=40))
def test_every_record_is_delivered_exactly_once_in_order_across_restarts(
        tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]]) -> None:
    path = tmp_path_factory.mktemp("spool")
    spool = make(path, max_records=10_000)
    written = 0
    delivered: list[int] = []
    in_flight: list[int] = []
    for action, n in steps:
        if action == "append":
            for _ in range(n):
                spool.append(KIND_RESULT, b"%d" % written)
                written += 1
        elif action == "read":
            in_flight += [int(r.data) for r in spool.read(n)]
        elif action == "ack" and in_flight:
            take = in_flight[:n]
            del in_flight[:n]
            delivered += take
            spool.ack(spool_seq(take[-1]))
        elif action == "restart":
            in_flight = []  # forgotten: the spool hands them out again
            spool = make(path, max_records=10_000)
    delivered += in_flight
    in_flight = []
    delivered += [int(r.data) for r in spool.read(100_000)]
    assert delivered == list(range(written))


def spool_seq(value: int) -> int:
    # Records are numbered from 1 in write order, and these tests write value i as record i+1.
    return value + 1
