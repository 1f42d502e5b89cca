"""The in-memory spool keeps the on-disk spool's contract: the same steps give the same records,
the same drops (in rows) and the same figures on both (a property test over random steps)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osquery_aws_logger.spool.memory import MemorySpool, MemoryStore
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
