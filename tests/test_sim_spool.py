"""The simulator's spool double answers every call the accumulator makes exactly as the real one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osquery_aws_logger._counters import PluginCounters
from osquery_aws_logger._spool import HEADER, MAX_RECORD_BYTES, Spool
from sim.spool import MemorySpool

Operation = tuple[str, int, int]

operations = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 1), st.integers(1, 3000)),  # kind, size
    st.tuples(st.just("read"), st.integers(1, 40), st.integers(1, 60_000)),  # records, bytes
    st.tuples(st.just("ack"), st.integers(0, 100), st.just(0)),  # share of what was read
    st.tuples(st.just("rewind"), st.just(0), st.just(0)),
    st.tuples(st.just("caps"), st.integers(1, 30), st.just(0)),  # records
), min_size=1, max_size=120)


def pair(directory: Path, cap: int) -> tuple[Spool, MemorySpool, PluginCounters, PluginCounters]:
    real_counters, double_counters = PluginCounters(), PluginCounters()
    real = Spool(directory, max_records=cap, max_bytes=1 << 40, on_drop=real_counters.drop)
    double = MemorySpool(directory / "unused", max_records=cap, max_bytes=1 << 40,
                         on_drop=double_counters.drop, clock=lambda: 0.0,
                         record_overhead=HEADER.size, max_record_bytes=MAX_RECORD_BYTES)
    return real, double, real_counters, double_counters


def view(records: list[Any]) -> list[tuple[int, int, bytes]]:
    return [(r.seq, r.kind, bytes(r.data)) for r in records]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cap=st.integers(1, 40), steps=operations)
def test_the_double_answers_as_the_spool_does(tmp_path_factory: Any, cap: int,
                                              steps: list[Operation]) -> None:
    real, double, real_counters, double_counters = pair(tmp_path_factory.mktemp("spool"), cap)
    read_up_to = 0
    for number, (name, a, b) in enumerate(steps):
        if name == "append":
            data = bytes([65 + number % 26]) * b
            assert double.append(a, data) == real.append(a, data), "the unread count"
        elif name == "read":
            got = view(double.read(a, b))
            assert got == view(real.read(a, b))
            if got:
                read_up_to = got[-1][0]
        elif name == "ack":
            # The accumulator acknowledges a prefix of what it has read.
            through = read_up_to * a // 100
            double.ack(through)
            real.ack(through)
        elif name == "rewind":
            double.rewind()
            real.rewind()
        else:
            double.set_caps(a, 1 << 40)
            real.set_caps(a, 1 << 40)
        assert double.pending_unread() == real.pending_unread()
        assert double.depth()[0] == real.depth()[0]
        assert (double.dropped_below, double.dropped_reason) == (real.dropped_below, real.dropped_reason)
        assert double_counters.dropped == real_counters.dropped
    real.close()


def test_the_byte_cap_gives_up_the_oldest_records_and_keeps_the_newest() -> None:
    counters = PluginCounters()
    spool = MemorySpool(Path("/dev/null/x"), max_records=1000, max_bytes=10 * (100 + HEADER.size),
                        on_drop=counters.drop, clock=lambda: 0.0, record_overhead=HEADER.size,
                        max_record_bytes=MAX_RECORD_BYTES)
    for _ in range(15):
        spool.append(0, b"x" * 100)
    assert spool.depth() == (10, 10 * (100 + HEADER.size))
    assert counters.dropped["cap_bytes"] == 5 and spool.dropped_below == 6
    assert [r.seq for r in spool.read(100)] == list(range(6, 16))
    spool.append(0, b"y" * 5000)  # bigger than the cap alone: kept, everything older goes
    assert spool.depth()[0] == 1 and spool.dropped_below == 16
    assert counters.dropped["cap_bytes"] == 5, "those handed out are the accumulator's to count"
    assert spool.given_up[-1] == (6, 16)


def test_a_record_too_big_for_any_spool_is_dropped_as_oversize() -> None:
    counters = PluginCounters()
    spool = MemorySpool(Path("/dev/null/x"), max_records=10, max_bytes=1 << 30,
                        on_drop=counters.drop, clock=lambda: 0.0, record_overhead=HEADER.size,
                        max_record_bytes=100)
    assert spool.append(0, b"x" * 101) == 0
    assert counters.dropped["oversize"] == 1 and spool.depth()[0] == 0
