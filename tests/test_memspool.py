"""The in-memory spool keeps the on-disk spool's contract: the same steps give the same records,
the same drops (in rows) and the same figures on both (a property test over random steps)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from osquery_aws_logger.spool.memory import MemorySpool, MemoryStore
from osquery_aws_logger.spool.record import HEADER
from osquery_aws_logger.spool.spool import KIND_RESULT, Spool, SpoolLike

Step = tuple[str, int]
steps = st.lists(st.tuples(st.sampled_from(["append", "read", "ack", "rewind", "restart", "cap"]),
                           st.integers(1, 30)), max_size=40)


def run(steps_: list[Step], make: object) -> tuple[list[tuple[int, int, int, bytes]], Counter[str],
                                                    list[tuple[int, int, int]]]:
    """Play `steps_` on the spool `make(on_drop, max_records)` gives; answer what was read (seq,
    row, rows, data), what was dropped and the figures after each step."""
    drops: Counter[str] = Counter()

    def on_drop(reason: str, rows: int) -> None:
        drops[reason] += rows

    cap = 10_000
    spool: SpoolLike = make(on_drop, cap)  # type: ignore[operator]
    written = 0
    read: list[tuple[int, int, int, bytes]] = []
    held: list[int] = []
    figures = []
    for action, n in steps_:
        if action == "append":
            for _ in range(n):
                spool.append(KIND_RESULT, b"line %d" % written, rows=written % 4)
                written += 1
        elif action == "read":
            got = spool.read(n)
            read += [(r.seq, r.row, r.rows, r.data) for r in got]
            held += [r.seq for r in got]
        elif action == "ack" and held:
            spool.ack(held[min(n, len(held)) - 1])
            del held[:n]
        elif action == "rewind":
            spool.rewind()
            held = []
        elif action == "restart":
            spool.close()
            spool = make(on_drop, cap)  # type: ignore[operator]
            held = []
        elif action == "cap":
            cap = n  # records: the oldest past it go, counted in rows
            spool.set_caps(cap, 1 << 30)
        figures.append((spool.depth()[0], spool.waiting_rows(), spool.pending_unread()))
    return read, drops, figures


@settings(max_examples=80, deadline=None)
@given(steps_=steps)
def test_the_memory_spool_behaves_as_the_disk_spool(tmp_path_factory: pytest.TempPathFactory,
                                                    steps_: list[Step]) -> None:
    directory: Path = tmp_path_factory.mktemp("contract") / "s"
    store = MemoryStore()
    on_disk = run(steps_, lambda on_drop, cap: Spool(directory, max_records=cap,
                                                     max_bytes=1 << 30, on_drop=on_drop))
    in_memory = run(steps_, lambda on_drop, cap: MemorySpool(directory, max_records=cap,
                                                             max_bytes=1 << 30,
                                                             on_drop=on_drop, store=store))
    assert in_memory == on_disk


Operation = tuple[str, int, int]

operations = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 1), st.integers(1, 3000)),  # kind, size
    st.tuples(st.just("read"), st.integers(1, 40), st.integers(1, 60_000)),  # records, bytes
    st.tuples(st.just("ack"), st.integers(0, 100), st.just(0)),  # share of what was read
    st.tuples(st.just("rewind"), st.just(0), st.just(0)),
    st.tuples(st.just("caps"), st.integers(1, 30), st.just(0)),  # records
), min_size=1, max_size=120)


@settings(max_examples=60, deadline=None)
@given(cap=st.integers(1, 40), steps_=operations)
# Acknowledged after a rewind below it, the record's one-record segment deleted: the disk
# spool's next read took the deleted segment for damage and counted a delivered row corrupt.
@example(cap=2, steps_=[("append", 0, 1), ("append", 0, 1), ("read", 2, 2), ("rewind", 0, 0),
                        ("ack", 50, 0), ("read", 1, 1)])
def test_reads_by_bytes_kinds_and_caps_answer_as_the_disk_spool(
        tmp_path_factory: pytest.TempPathFactory, cap: int, steps_: list[Operation]) -> None:
    """What the fleet simulation leans on: the unread count append answers, reads bounded by
    bytes, the floor a cap leaves (`dropped_below`) and the drops, call by call."""
    real_drops: Counter[str] = Counter()
    double_drops: Counter[str] = Counter()
    directory = tmp_path_factory.mktemp("spool") / "s"
    real = Spool(directory, max_records=cap, max_bytes=1 << 40,
                 on_drop=lambda reason, rows: real_drops.update({reason: rows}))
    double = MemorySpool(directory, max_records=cap, max_bytes=1 << 40,
                         on_drop=lambda reason, rows: double_drops.update({reason: rows}))
    try:
        _play_both(real, double, steps_, real_drops, double_drops)
    finally:  # each failing example hypothesis replays would leak the spool's descriptors
        real.close()


def _play_both(real: Spool, double: MemorySpool, steps_: list[Operation],
               real_drops: Counter[str], double_drops: Counter[str]) -> None:
    read_up_to = 0
    for number, (name, a, b) in enumerate(steps_):
        if name == "append":
            data = bytes([65 + number % 26]) * b
            assert double.append(a, data) == real.append(a, data), "the unread count"
        elif name == "read":
            got = [(r.seq, r.kind, r.data) for r in double.read(a, b)]
            assert got == [(r.seq, r.kind, r.data) for r in real.read(a, b)]
            if got:
                read_up_to = got[-1][0]
        elif name == "ack":  # the accumulator acknowledges a prefix of what it has read
            double.ack(read_up_to * a // 100)
            real.ack(read_up_to * a // 100)
        elif name == "rewind":
            double.rewind()
            real.rewind()
        else:
            double.set_caps(a, 1 << 40)
            real.set_caps(a, 1 << 40)
        assert double.pending_unread() == real.pending_unread()
        assert double.depth()[0] == real.depth()[0]
        assert (double.dropped_below, double.dropped_reason) == \
            (real.dropped_below, real.dropped_reason)
        assert double_drops == real_drops


def test_the_byte_cap_gives_up_the_oldest_records_and_keeps_the_newest() -> None:
    """Record by record (the disk spool gives up a segment at a time: the same rule, coarser)."""
    drops: Counter[str] = Counter()
    spool = MemorySpool(Path("/nonexistent/x"), max_records=1000,
                        max_bytes=10 * (100 + HEADER.size),
                        on_drop=lambda reason, rows: drops.update({reason: rows}))
    for _ in range(15):
        spool.append(KIND_RESULT, b"x" * 100, rows=2)
    assert spool.depth() == (10, 10 * (100 + HEADER.size))
    assert drops["cap_bytes"] == 10 and spool.dropped_below == 6, "5 records of 2 rows"
    assert [r.seq for r in spool.read(100)] == list(range(6, 16))
    spool.append(KIND_RESULT, b"y" * 5000)  # bigger than the cap alone: kept, all older go
    assert spool.depth()[0] == 1 and spool.dropped_below == 16
    assert drops["cap_bytes"] == 10, "those handed out are the reader's to count"
    assert spool.given_up[-1] == (6, 16)
    assert spool.waiting_rows() == 1


def test_the_compact_arrays_let_go_of_acknowledged_records() -> None:
    spool = MemorySpool(Path("/nonexistent/y"), max_records=100_000, max_bytes=1 << 40,
                        on_drop=lambda reason, rows: None)
    for i in range(20_000):
        spool.append(KIND_RESULT, b"%d" % i, rows=1 + i % 3, key="k" if i % 2 else "")
    records = spool.read(20_000)
    spool.ack(records[15_000].seq)
    state = spool.store.state(Path("/nonexistent/y"))
    assert len(state.data) < 20_000 and len(state.keys) <= 5_000, "the forgotten slots went"
    rest = spool.read(10)
    assert rest == [] and spool.depth()[0] == 20_000 - 15_001
    spool.rewind()
    again = spool.read(3)
    assert [(r.seq, r.row, r.rows, r.key, r.data) for r in again] == \
        [(r.seq, r.row, r.rows, r.key, r.data) for r in records[15_001:15_004]]
    assert spool.waiting_rows() == sum(r.rows for r in records[15_001:])
