"""What waits in a spool: the records from the acknowledged position (kept in the ledger) to the
newest, and the caps that give up the oldest of them.

Counting is in rows: a batch-format line holds many. Whatever is given up is counted by the
rows it held, read or not: past the record cap the oldest waiting records go; past the byte cap,
or when the filesystem is nearly full, the oldest whole segment does (the oldest across every
spool of the group on that filesystem, so two plugins share the room fairly); damage costs the
records it touches (``corrupt``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .contract import DropCallback
from .ledger import LEDGER_FILE, Ledger
from .reading import Cursor
from .segments import ERROR_LOG_SECONDS, Segment, Segments

log = logging.getLogger("osquery_aws_logger.spool")


class Backlog:
    """The records of a spool that wait for delivery: the acknowledged position and its ledger,
    the caps, and giving up the oldest past them. The spool holds its lock around every call."""

    def __init__(self, directory: Path, segments: Segments, cursor: Cursor,
                 on_drop: DropCallback) -> None:
        self._directory = directory
        self._segments = segments
        self._cursor = cursor
        self._on_drop = on_drop
        self.acked = 0
        self.acked_row = 0
        self.ledger = Ledger()  # recovery reads it when the spool is set up
        self._ledger_written = (0, 0)
        self._ledger_logged_at = -ERROR_LOG_SECONDS
        self._waiting_rows = 0  # the last figure waiting_rows() took
        self._oldest: tuple[int, float] | None = None  # (seq, accepted_at) last looked up

    def restore(self, acked: int, acked_row: int) -> None:
        """Take the position recovery read from the ledger."""
        self.acked, self.acked_row = acked, acked_row
        self._ledger_written = (acked, acked_row)

    def first_waiting(self) -> int:
        return max(self.acked + 1, self._segments.list[0].first_seq, self._cursor.dropped_below)

    def waiting_records(self) -> int:
        if not self._segments.list:
            return 0
        return max(0, self._segments.next_seq - self.first_waiting())

    def waiting_rows(self, *, read: bool) -> int:
        """Rows waiting (see `Spool.waiting_rows`); without `read`, the last figure taken where
        a file would have to be read for it."""
        segments = self._segments
        if not segments.list:
            return 0
        first = self.first_waiting()
        segment, _ = segments.segment_of(first)
        if not read and segment is not None and not segment.indexed \
                and first > segment.first_seq:
            return self._waiting_rows
        self._waiting_rows = max(0, segments.next_row - segments.row_at(first))
        return self._waiting_rows

    def oldest_accepted_at(self) -> tuple[float | None, int, Segment | None]:
        """When the oldest waiting record was accepted (None if none waits), if that is known
        without reading a file; else its seq and the segment whose file says (`found_oldest`)."""
        if self.waiting_records() <= 0:
            return None, 0, None
        seq = self.first_waiting()
        if self._oldest is not None and self._oldest[0] == seq:
            return self._oldest[1], seq, None
        segment, _ = self._segments.segment_of(seq)
        if segment is None:
            return None, seq, None
        if seq == segment.first_seq and segment.first_at:
            self._oldest = (seq, segment.first_at)
            return segment.first_at, seq, None
        return None, seq, segment

    def found_oldest(self, seq: int, accepted_at: float | None) -> float | None:
        """What the file said of record `seq`'s time (kept, when it said)."""
        if accepted_at is not None:
            self._oldest = (seq, accepted_at)
        return accepted_at

    def rewind(self) -> None:
        """Hand out again every record not yet acknowledged."""
        self._cursor.rewind(self.acked)

    # -- delivered ------------------------------------------------------------------------------

    def ack(self, through_seq: int) -> None:
        """Everything up to `through_seq` is delivered: delete the segments it fills (the
        ledger is written by `write_ledger`)."""
        self.acked_row = self._segments.row_at(through_seq + 1)
        self.acked = through_seq
        self._segments.forget_through(through_seq)
        if self._cursor.seq <= through_seq:
            # Acknowledged after a rewind went below it: never handed out again, and the
            # segments it was in, now deleted, are not taken for damage by the next read.
            self._cursor.rewind(through_seq)

    def write_ledger(self, dir_fd: int) -> None:
        position = (self.acked, self.acked_row)
        if position == self._ledger_written or dir_fd < 0:
            return
        try:
            self.ledger.write(dir_fd, *position)
            self._ledger_written = position
        except OSError as exc:
            now = time.monotonic()
            if now - self._ledger_logged_at >= ERROR_LOG_SECONDS:
                self._ledger_logged_at = now
                log.error("spool %s: cannot write the %s (%s); trying again; a restart "
                          "before it is written sends some delivered records again",
                          self._directory, LEDGER_FILE, exc.strerror or exc)

    # -- given up -------------------------------------------------------------------------------

    def drop_below(self, floor: int, reason: str) -> None:
        """Give up every waiting record numbered below `floor`, those the flusher already holds
        too (they are off disk, or soon will be: it must not send them).

        Only the rows of records never handed out are counted here, under `reason`; the
        flusher counts those it held and lets go of (`dropped_reason` says why), and none it
        delivered first, so no row is counted both delivered and dropped.
        """
        segments, cursor = self._segments, self._cursor
        start = max(self.first_waiting(), cursor.seq)
        if floor > start:
            rows = segments.row_at(floor) - (cursor.row if start == cursor.seq
                                             else segments.row_at(start))
            if rows > 0:
                self._on_drop(reason, rows)
        if floor - 1 > self.acked:
            # Given up is as good as delivered for a restart: never read back (it was counted).
            # The ledger is written at the flusher's next sync, not on the thrift side.
            self.acked, self.acked_row = floor - 1, segments.row_at(floor)
        cursor.give_up_below(floor, reason)

    def enforce_caps(self, max_records: int, max_bytes: int) -> None:
        segments = self._segments
        if not segments.list:
            return
        # The record cap keeps exactly the newest max_records.
        excess = self.waiting_records() - max_records
        if excess > 0:
            self.drop_below(self.first_waiting() + excess, "cap_records")
        # Bytes can only be given back a whole file at a time: the oldest segments go.
        while len(segments.list) > 1 and segments.bytes > max_bytes:
            self.drop_below(segments.list[0].end_seq, "cap_bytes")
            segments.forget_oldest()
        # Segments wholly below the floor hold nothing waiting: delete them.
        while len(segments.list) > 1 and segments.list[0].end_seq <= self._cursor.dropped_below:
            segments.forget_oldest()

    def oldest_closed_segment_at(self) -> float | None:
        """When the first record of the oldest waiting closed segment was accepted, if there
        is one that may go (the segment being written never does)."""
        if len(self._segments.list) < 2 or not self.waiting_records():
            return None
        return self._segments.list[0].first_at

    def give_up_oldest_segment(self, reason: str) -> tuple[int, int]:
        """Drop the oldest segment with what waits in it (counted): (bytes, records) freed."""
        oldest = self._segments.list[0]
        records = max(0, oldest.end_seq - self.first_waiting())
        self.drop_below(oldest.end_seq, reason)
        self._segments.forget_oldest()
        return oldest.size, records


__all__ = ["ERROR_LOG_SECONDS", "Backlog"]
