"""A spool in memory with the on-disk spool's contract: the test double that ships with the code.

Like httpx's MockTransport, it is part of the library so that what is tested without a disk
(the accumulator, the router, thousands of simulated hosts) runs against the same contract as
production: records numbered by seq and row, read in order and handed out once, acknowledged by
prefix, rewound on demand, given up oldest first past the caps (counted in rows: only the rows
never handed out, as the real spool does; the reader counts the rest), read again by span.

A `MemoryStore` plays the disk: a spool made again on the same directory and store finds what
was written and not acknowledged, as after a restart. Nothing here touches a file.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .contract import DropCallback
from .group import SpoolGroup
from .migration import Migration
from .record import HEADER, MAX_RECORD_BYTES, SpooledRecord


@dataclass
class _State:
    """What survives a restart: the records not acknowledged, and the numbering."""

    records: deque[SpooledRecord] = field(default_factory=deque)
    next_seq: int = 1
    next_row: int = 0
    bytes: int = 0


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
                 migrate: Migration | None = None, store: MemoryStore | None = None) -> None:
        self.directory = directory
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.sync_interval = sync_interval
        self.releasable = releasable
        self._on_drop = on_drop
        self._group = group if group is not None else SpoolGroup()
        self.store = store if store is not None else MemoryStore()
        self._state = self.store.state(directory)
        self.dropped_below = 0
        self.dropped_reason = "cap_records"
        self._read_seq = self._first_seq()
        self.appends = 0  # records appended through this object (for tests and the simulator)

    # -- what the accumulator and the router use ------------------------------------------------

    @property
    def group(self) -> SpoolGroup:
        return self._group

    def child(self, *parts: str, migrate: Migration | None = None) -> MemorySpool:
        """The spool of a directory below this one (a routed destination's), in the same store."""
        return MemorySpool(self.directory.joinpath(*parts), max_records=self.max_records,
                           max_bytes=self.max_bytes, on_drop=self._on_drop,
                           sync_interval=self.sync_interval, group=self._group,
                           releasable=True, migrate=migrate, store=self.store)

    def children(self, name: str) -> list[str]:
        below = self.directory / name
        return sorted(path.name for path, state in self.store.states.items()
                      if path.parent == below and state.records)

    def _first_seq(self) -> int:
        records = self._state.records
        return records[0].seq if records else self._state.next_seq

    def append(self, kind: int, data: bytes | memoryview, *, rows: int = 1, key: str = "") -> int:
        if len(data) > MAX_RECORD_BYTES:
            self._on_drop("oversize", rows)
            return 0
        state = self._state
        record = SpooledRecord(state.next_seq, state.next_row, rows, kind, key, bytes(data),
                               time.time(), segment=str(self.directory))
        state.records.append(record)
        state.bytes += HEADER.size + len(data)
        state.next_seq += 1
        state.next_row += rows
        self.appends += 1
        self._enforce_caps()
        return state.next_seq - self._read_seq

    def _enforce_caps(self) -> None:
        records = self._state.records
        while records and (len(records) > self.max_records or
                           (len(records) > 1 and self._state.bytes > self.max_bytes)):
            reason = "cap_records" if len(records) > self.max_records else "cap_bytes"
            self._give_up_oldest(reason)

    def _give_up_oldest(self, reason: str) -> None:
        oldest = self._state.records.popleft()
        self._state.bytes -= HEADER.size + len(oldest.data)
        if oldest.seq >= self._read_seq:  # never handed out: counted here; else by the reader
            self._on_drop(reason, oldest.rows)
            self._read_seq = oldest.seq + 1
        self.dropped_below, self.dropped_reason = oldest.seq + 1, reason

    def read(self, max_records: int, max_bytes: int = 1 << 62) -> list[SpooledRecord]:
        out: list[SpooledRecord] = []
        taken = 0
        for record in self._state.records:
            if len(out) >= max_records or taken >= max_bytes:
                break
            if record.seq >= self._read_seq:
                out.append(record)
                taken += len(record.data)
        if out:
            self._read_seq = out[-1].seq + 1
        return out

    def read_span(self, record: SpooledRecord, start: int, end: int) -> bytes | None:
        for held in self._state.records:
            if held.seq == record.seq:
                return held.data[start:end]
        return None

    def ack(self, through_seq: int) -> None:
        records = self._state.records
        while records and records[0].seq <= through_seq:
            gone = records.popleft()
            self._state.bytes -= HEADER.size + len(gone.data)

    def rewind(self) -> None:
        self._read_seq = max(self._first_seq(), self.dropped_below)

    def depth(self) -> tuple[int, int]:
        return len(self._state.records), self._state.bytes

    def waiting_rows(self, *, read: bool = True) -> int:
        return sum(record.rows for record in self._state.records)

    def pending_unread(self) -> int:
        return max(0, self._state.next_seq - self._read_seq)

    def oldest_accepted_at(self) -> float | None:
        records = self._state.records
        return records[0].accepted_at if records else None

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


__all__ = ["MemorySpool", "MemoryStore"]
