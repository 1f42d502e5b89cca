"""A spool in memory with the on-disk spool's contract: the test double that ships with the code.

Like httpx's MockTransport, it is part of the library so that what is tested without a disk
(the accumulator, the router, thousands of simulated hosts in `make simulate`) runs against the
same contract as production: records numbered by seq and row, read in order and handed out once,
acknowledged by prefix, rewound on demand, given up oldest first past the caps (counted in rows:
only the rows never handed out, as the real spool does; the reader counts the rest), read again
by span. `tests/test_memspool.py` plays random steps on both and checks every answer agrees.

A `MemoryStore` plays the disk: a spool made again on the same directory and store finds what
was written and not acknowledged, as after a restart. Nothing here touches a file.

Compact, because the fleet simulation keeps millions of waiting rows: a record is a reference
to its payload (the simulator's hosts share a few template lines) and a few numbers in arrays,
about 40 bytes; a `SpooledRecord` is made only when the record is read.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .contract import DropCallback
from .group import SpoolGroup
from .migration import Migration
from .record import HEADER, MAX_RECORD_BYTES, SpooledRecord

#: Let go of the slots of forgotten records once this many lead the arrays (and they are half).
_COMPACT_AT: Final = 4096


@dataclass
class _State:
    """What survives a restart: the records not acknowledged, and the numbering. Index i of
    the arrays is record `base + i`; those before `head` are acknowledged or given up."""

    data: list[bytes] = field(default_factory=list)
    kinds: bytearray = field(default_factory=bytearray)
    rows: array[int] = field(default_factory=lambda: array("q"))
    first_row: array[int] = field(default_factory=lambda: array("q"))
    accepted_at: array[float] = field(default_factory=lambda: array("d"))
    keys: dict[int, str] = field(default_factory=dict)  # seq -> partition key, when there is one
    base: int = 1
    head: int = 0
    next_seq: int = 1
    next_row: int = 0
    bytes: int = 0  # held: each kept record's payload and header

    @property
    def first_kept(self) -> int:
        return self.base + self.head


class MemoryStore:
    """The "disk" of memory spools: their state by directory."""

    def __init__(self) -> None:
        self.states: dict[Path, _State] = {}

    def state(self, directory: Path) -> _State:
        return self.states.setdefault(directory, _State())


class MemorySpool:
    """A spool of one plugin or destination, kept in a `MemoryStore`."""

    releasable = False
    problem = ""

    def __init__(self, directory: Path, *, max_records: int, max_bytes: int,
                 on_drop: DropCallback, sync_interval: float = 1.0,
                 group: SpoolGroup | None = None, releasable: bool = False,
                 migrate: Migration | None = None, store: MemoryStore | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.sync_interval = sync_interval
        self.releasable = releasable
        self._on_drop = on_drop
        self._clock = clock  # stamps accepted_at (the simulator's virtual clock)
        self._group = group if group is not None else SpoolGroup()
        self.store = store if store is not None else MemoryStore()
        self._state = self.store.state(directory)
        self.dropped_below = 0
        self.dropped_reason = "cap_records"
        #: [first, end) sequence ranges given up by a cap, handed out or not (for checks).
        self.given_up: list[tuple[int, int]] = []
        self._read_seq = self._state.first_kept
        self.appends = 0  # records appended through this object

    # -- what the accumulator and the router use ------------------------------------------------

    @property
    def group(self) -> SpoolGroup:
        return self._group

    def child(self, *parts: str, migrate: Migration | None = None) -> MemorySpool:
        """The spool of a directory below this one (a routed destination's), in the same store."""
        return MemorySpool(self.directory.joinpath(*parts), max_records=self.max_records,
                           max_bytes=self.max_bytes, on_drop=self._on_drop,
                           sync_interval=self.sync_interval, group=self._group,
                           releasable=True, migrate=migrate, store=self.store, clock=self._clock)

    def children(self, name: str) -> list[str]:
        below = self.directory / name
        return sorted(path.name for path, state in self.store.states.items()
                      if path.parent == below and state.next_seq > state.first_kept)

    def append(self, kind: int, data: bytes | memoryview, *, rows: int = 1, key: str = "") -> int:
        """Keep one record; answer how many wait unread (0 when it was not kept)."""
        if len(data) > MAX_RECORD_BYTES:
            self._on_drop("oversize", rows)
            return 0
        state = self._state
        state.data.append(data if isinstance(data, bytes) else bytes(data))
        state.kinds.append(kind)
        state.rows.append(rows)
        state.first_row.append(state.next_row)
        state.accepted_at.append(self._clock())
        if key:
            state.keys[state.next_seq] = key
        state.bytes += HEADER.size + len(data)
        state.next_seq += 1
        state.next_row += rows
        self.appends += 1
        self._enforce_caps()
        return state.next_seq - self._read_seq

    def read(self, max_records: int, max_bytes: int = 1 << 62) -> list[SpooledRecord]:
        """The next records after those handed out: at most `max_records`, and no more once
        `max_bytes` of payload are read (at least one)."""
        state = self._state
        out: list[SpooledRecord] = []
        taken = 0
        seq = self._read_seq
        segment = str(self.directory)
        while seq < state.next_seq and len(out) < max_records and taken < max_bytes:
            i = seq - state.base
            payload = state.data[i]
            out.append(SpooledRecord(seq, state.first_row[i], state.rows[i], state.kinds[i],
                                     state.keys.get(seq, ""), payload, state.accepted_at[i],
                                     segment=segment))
            taken += len(payload)
            seq += 1
        self._read_seq = seq
        return out

    def read_span(self, record: SpooledRecord, start: int, end: int) -> bytes | None:
        state = self._state
        i = record.seq - state.base
        if state.head <= i < len(state.data):
            return state.data[i][start:end]
        return None

    def ack(self, through_seq: int) -> None:
        # As the disk spool's cursor: what is acknowledged is never handed out again, even
        # after a rewind that went below it.
        self._read_seq = max(self._read_seq, min(through_seq + 1, self._state.next_seq))
        self._forget_below(through_seq + 1)

    def rewind(self) -> int:
        self._read_seq = max(self._state.first_kept, self.dropped_below)
        return self.dropped_below

    def depth(self) -> tuple[int, int]:
        state = self._state
        return state.next_seq - state.first_kept, state.bytes

    def waiting_rows(self, *, read: bool = True) -> int:
        state = self._state
        if state.next_seq == state.first_kept:
            return 0
        return state.next_row - state.first_row[state.head]

    def pending_unread(self) -> int:
        return max(0, self._state.next_seq - self._read_seq)

    def oldest_accepted_at(self) -> float | None:
        state = self._state
        return state.accepted_at[state.head] if state.next_seq > state.first_kept else None

    def first_waiting(self) -> int:
        """The oldest record neither acknowledged nor given up."""
        return self._state.first_kept

    def set_caps(self, max_records: int, max_bytes: int) -> None:
        self.max_records, self.max_bytes = max_records, max_bytes
        self._enforce_caps()

    def sync(self, *, force: bool = False) -> None:
        return None

    def write_file(self, name: str, data: bytes, *, mode: int = 0o600) -> bool:
        return True

    def release(self) -> None:
        return None

    def close(self) -> None:
        return None

    # -- caps -----------------------------------------------------------------------------------

    def _enforce_caps(self) -> None:
        state = self._state
        excess = state.next_seq - state.first_kept - self.max_records
        if excess > 0:
            self._drop_below(state.first_kept + excess, "cap_records")
        if state.bytes > self.max_bytes and state.next_seq - state.first_kept > 1:
            # The oldest go until the rest fit; the newest is always kept (as the real spool
            # always keeps the segment being written).
            floor, held = state.first_kept, state.bytes
            while held > self.max_bytes and floor < state.next_seq - 1:
                held -= HEADER.size + len(state.data[floor - state.base])
                floor += 1
            self._drop_below(floor, "cap_bytes")

    def _drop_below(self, floor: int, reason: str) -> None:
        """Give up every kept record below `floor`; count the rows of those never handed out
        (the reader counts those it holds, from `dropped_below`)."""
        state = self._state
        first = state.first_kept
        if floor <= first:
            return
        unread = max(first, self._read_seq)
        if floor > unread:
            self._on_drop(reason, sum(state.rows[unread - state.base:floor - state.base]))
        self.given_up.append((first, floor))
        if floor > self.dropped_below:
            self.dropped_below, self.dropped_reason = floor, reason
        self._read_seq = max(self._read_seq, floor)
        self._forget_below(floor)

    def _forget_below(self, seq: int) -> None:
        """Let go of the records numbered below `seq` (acknowledged or given up)."""
        state = self._state
        end = min(seq - state.base, len(state.data))
        if end <= state.head:
            return
        data, keys = state.data, state.keys
        freed = 0
        for i in range(state.head, end):
            freed += HEADER.size + len(data[i])
            data[i] = b""  # the reference goes; the slot at the next compaction
            if keys:
                keys.pop(state.base + i, None)
        state.bytes -= freed
        state.head = end
        if end >= _COMPACT_AT and end * 2 >= len(data):
            del data[:end], state.kinds[:end], state.rows[:end], state.first_row[:end]
            del state.accepted_at[:end]
            state.base += end
            state.head = 0


__all__ = ["MemorySpool", "MemoryStore"]
