"""A spool in memory that answers exactly what the accumulator asks of the on-disk `Spool`.

Why a double and not the real spool on a tmpfs: an hour's outage at 1,000 hosts leaves millions
of rows waiting, and the real spool keeps each row's bytes (a tmpfs holds them in RAM all the
same: gigabytes), costs a system call per append and two file descriptors per host (20,000 at
10,000 hosts). Here every row of a host is a reference to one of a few template lines, so a
waiting row costs about 20 bytes, and appends are list operations.

What it keeps of the real spool (`osquery_aws_logger/_spool.py`), method for method:

- records are numbered from 1 in append order; `read` hands out the next ones after those
  already handed out, at most `max_records` and no more once `max_bytes` of payload are read
  (at least one); `rewind` hands out again everything not acknowledged; `ack(n)` forgets all up
  to n; `pending_unread` and `depth` count as the real one does;
- the record cap keeps exactly the newest `max_records` waiting records, and a cap counts only
  the records it never handed out (`on_drop(reason, n)`), setting `dropped_below` and
  `dropped_reason` so the accumulator counts those it held: the real spool's split, so no row
  is counted both delivered and dropped;
- the byte cap gives up the oldest waiting records while more than `max_bytes` are held,
  counting each record as its payload plus the real spool's record header.

What it leaves out: durability (sync, segments, damage, a full disk) and one difference of
grain: the real spool gives bytes back a segment (a sixteenth of the cap) at a time, this one a
record at a time. `tests/test_sim_spool.py` runs random sequences of calls on both and checks
every answer agrees (record caps; byte caps within a segment).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Compact the lists once this many forgotten records lead them (and they are half the list).
_COMPACT_AT: Final = 4096


@dataclass(frozen=True, slots=True)
class Record:
    """One record read back: the fields the accumulator reads of the real `SpooledRecord`."""

    seq: int
    kind: int
    data: bytes
    accepted_at: float


class MemorySpool:
    """A FIFO of one host's records with the real spool's numbering, reading and caps."""

    def __init__(self, directory: Path, *, max_records: int, max_bytes: int,
                 on_drop: Callable[[str, int], None], clock: Callable[[], float],
                 record_overhead: int, max_record_bytes: int, sync_interval: float = 1.0) -> None:
        self.directory = directory
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.sync_interval = sync_interval
        self.problem = ""
        self.dropped_below = 0
        self.dropped_reason = "cap_records"
        #: [first, end) sequence ranges given up by a cap, handed out or not (for the checks).
        self.given_up: list[tuple[int, int]] = []
        self._on_drop = on_drop
        self._clock = clock
        self._overhead = record_overhead
        self._max_record_bytes = max_record_bytes
        self._data: list[bytes] = []
        self._kinds = bytearray()
        self._at = array("d")
        self._base = 1  # sequence number of _data[0]
        self._head = 0  # index of the first record still kept
        self._next_seq = 1
        self._acked = 0
        self._read_seq = 1
        self._bytes = 0  # held: payload plus header of every kept record

    # -- the thrift side ------------------------------------------------------------------------

    def append(self, kind: int, data: bytes | memoryview) -> int:
        """Keep one record; answer how many wait unread (0 if it was not kept)."""
        if len(data) > self._max_record_bytes:
            self._on_drop("oversize", 1)
            return 0
        self._data.append(bytes(data) if isinstance(data, memoryview) else data)
        self._kinds.append(kind)
        self._at.append(self._clock())
        self._bytes += len(data) + self._overhead
        self._next_seq += 1
        self._enforce_caps()
        return self._next_seq - self._read_seq

    # -- the flusher side -----------------------------------------------------------------------

    def read(self, max_records: int, max_bytes: int = 1 << 62) -> list[Record]:
        out: list[Record] = []
        taken = 0
        seq = self._read_seq
        data, kinds, at, base = self._data, self._kinds, self._at, self._base
        while seq < self._next_seq and len(out) < max_records and taken < max_bytes:
            index = seq - base
            payload = data[index]
            out.append(Record(seq, kinds[index], payload, at[index]))
            taken += len(payload)
            seq += 1
        self._read_seq = seq
        return out

    def ack(self, through_seq: int) -> None:
        if through_seq <= self._acked:
            return
        self._acked = through_seq
        self._forget_below(self.first_waiting())

    def rewind(self) -> None:
        self._read_seq = max(self._acked + 1, self.dropped_below, self._base + self._head)

    def pending_unread(self) -> int:
        return max(0, self._next_seq - self._read_seq)

    def depth(self) -> tuple[int, int]:
        return self._waiting(), self._bytes

    def oldest_accepted_at(self) -> float | None:
        if not self._waiting():
            return None
        return self._at[self.first_waiting() - self._base]

    def set_caps(self, max_records: int, max_bytes: int) -> None:
        self.max_records, self.max_bytes = max_records, max_bytes
        self._enforce_caps()

    def sync(self, *, force: bool = False) -> None:
        """Nothing to make durable."""

    def close(self) -> None:
        """Nothing to release."""

    # -- caps ------------------------------------------------------------------------------------

    def first_waiting(self) -> int:
        """The oldest record neither acknowledged nor given up."""
        return max(self._acked + 1, self._base + self._head, self.dropped_below)

    def _waiting(self) -> int:
        return max(0, self._next_seq - self.first_waiting())

    def _enforce_caps(self) -> None:
        excess = self._waiting() - self.max_records
        if excess > 0:
            self._drop_below(self.first_waiting() + excess, "cap_records")
        if self._bytes > self.max_bytes and self._waiting() > 1:
            # The oldest records go until the rest fit (the newest is always kept, as the real
            # spool always keeps the segment being written).
            floor = self.first_waiting()
            held = self._bytes
            while held > self.max_bytes and floor < self._next_seq - 1:
                held -= len(self._data[floor - self._base]) + self._overhead
                floor += 1
            self._drop_below(floor, "cap_bytes")

    def _drop_below(self, floor: int, reason: str) -> None:
        """Give up every waiting record below `floor`; count those never handed out (the
        accumulator counts those it holds, from `dropped_below`)."""
        first = self.first_waiting()
        if floor <= first:
            return
        lost = floor - max(first, self._read_seq)
        if lost > 0:
            self._on_drop(reason, lost)
        self.given_up.append((first, floor))
        if floor > self.dropped_below:
            self.dropped_below, self.dropped_reason = floor, reason
        self._read_seq = max(self._read_seq, floor)
        self._forget_below(floor)

    def _forget_below(self, seq: int) -> None:
        """Let go of the records numbered below `seq` (acknowledged or given up)."""
        end = min(seq - self._base, len(self._data))
        head = self._head
        if end <= head:
            return
        data, overhead = self._data, self._overhead
        freed = 0
        for index in range(head, end):
            freed += len(data[index]) + overhead
            data[index] = b""  # the reference goes; the slot goes at the next compaction
        self._bytes -= freed
        self._head = end
        if end >= _COMPACT_AT and end * 2 >= len(data):
            del data[:end]
            del self._kinds[:end]
            del self._at[:end]
            self._base += end
            self._head = 0
