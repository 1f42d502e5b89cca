"""The flusher's side of a spool: where it reads, the records handed out from there, and the
damage met on the way (counted once, in rows, as ``corrupt``).

Segment files are read outside the spool's lock, so the thrift side's appends never wait on a
read: where to read is taken under the lock, the file read without it, and the position moved
on under the lock again only if nothing gave those records up meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..platform import RESOURCE_ERRNOS
from .contract import DropCallback
from .record import FILE_MAGIC, Reader, SpooledRecord
from .segments import Segment, Segments

log = logging.getLogger("osquery_aws_logger.spool")

#: At most one "could not open for now" line per this many seconds.
SHORT_LOG_INTERVAL_SECONDS = 10.0


class Damage:
    """Records lost to damage (a torn tail, bad records, a segment that cannot be read): their
    rows counted as dropped (``corrupt``) once, and logged."""

    def __init__(self, directory: Path, on_drop: DropCallback) -> None:
        self.directory = directory
        self._on_drop = on_drop
        #: Damage already counted: gaps below this (seq, row) are not counted again.
        self._counted_below = (0, 0)

    def lost(self, segment: Segment, start: tuple[int, int], end: tuple[int, int],
             why: str = "") -> None:
        """Records `start` to `end` (each a (seq, row)) are lost to damage: count their rows
        (their records, where the rows cannot be told) once."""
        start_seq, start_row = max(start, self._counted_below)
        end_seq, end_row = end
        if end_seq <= start_seq:
            return
        self._counted_below = end
        rows = end_row - start_row if end_row >= start_row else end_seq - start_seq
        self.count(rows, why or f"{segment.name}: {end_seq - start_seq} damaged "
                   f"records skipped (sequence numbers {start_seq} to {end_seq - 1}, "
                   f"{rows} rows)")

    def count(self, rows: int, message: str) -> None:
        if rows:
            self._on_drop("corrupt", rows)
        log.error("spool %s: %s; counted as dropped (corrupt)", self.directory, message)


class Cursor:
    """Where the flusher reads: the next record to hand out (its seq, row and place in its
    segment), and the floor below which records were given up and must not be sent."""

    def __init__(self, segments: Segments, damage: Damage) -> None:
        self._segments = segments
        self._damage = damage
        self.seq = 1
        self.row = 0
        self.pos: tuple[int, int] = (0, 0)  # (segment first_seq, offset) of seq
        #: Records numbered below this were given up (a cap, a full disk), including any the
        #: flusher had already read: it must not send them; it counts those, under this reason.
        self.dropped_below = 0
        self.dropped_reason = "cap_records"
        self._short_logged_at = -SHORT_LOG_INTERVAL_SECONDS

    def rewind(self, acked: int) -> None:
        """Point the reader at the oldest record not yet delivered (all up to `acked` are)."""
        segments = self._segments
        self.seq = max(acked + 1, self.dropped_below)
        self.pos = (0, 0)
        for segment in segments.list:
            if segment.end_seq > self.seq:
                if segment.first_seq >= self.seq:
                    self.seq = segment.first_seq
                    self.pos = (segment.first_seq, len(FILE_MAGIC))
                self.row = segments.row_at(self.seq)
                return
        self.seq = segments.next_seq
        self.row = segments.next_row

    def give_up_below(self, floor: int, reason: str) -> None:
        """Records numbered below `floor` were given up for `reason`: none is handed out."""
        if floor > self.dropped_below:
            self.dropped_below, self.dropped_reason = floor, reason
        if self.seq < floor:
            self.row = self._segments.row_at(floor)
            self.seq, self.pos = floor, (0, 0)  # position found by the next read

    def read(self, lock: threading.Lock, usable: Callable[[], bool], max_records: int,
             max_bytes: int) -> list[SpooledRecord]:
        """The next records after those already handed out (see `Spool.read`). Takes `lock`,
        the spool's, for all but the reading of the file; `usable` answers under it whether the
        spool's directory is open."""
        segments = self._segments
        out: list[SpooledRecord] = []
        taken = 0
        while len(out) < max_records and taken < max_bytes:
            with lock:
                if not usable() or self.seq >= segments.next_seq:
                    break
                segment, index = segments.segment_of(self.seq)
                if segment is None:
                    break
                seq, row = self.seq, self.row
                first, offset = self.pos
                if first != segment.first_seq:
                    offset = len(FILE_MAGIC)  # from the start, skipping what is already read
                ends = (segment.size, segment.end_seq, segments.end_row(index))
                try:
                    fd = segments.open(segment.name, os.O_RDONLY)
                except OSError as exc:
                    if exc.errno in RESOURCE_ERRNOS:
                        # Out of descriptors or memory for now: the segment is there, and is
                        # read at a later turn (never given up as damage for it).
                        self._short(segment, exc)
                        break
                    self._segment_gone(segment, index, seq, row, exc)
                    continue
            try:
                records, offset, next_seq, next_row = self._read_from(
                    fd, segment, offset, ends, (seq, row), limit=max_records - len(out),
                    max_bytes=max_bytes - taken)
            finally:
                os.close(fd)
            with lock:
                if self.seq != seq:
                    continue  # a cap dropped (and counted) what we read: don't also deliver it
                out.extend(records)
                taken += sum(len(r.data) for r in records)
                self.seq, self.row = next_seq, next_row
                self.pos = (segment.first_seq, offset)
                if not records and next_seq == seq:
                    break
        return out

    def _read_from(self, fd: int, segment: Segment, offset: int, ends: tuple[int, int, int],
                   start: tuple[int, int], *, limit: int, max_bytes: int
                   ) -> tuple[list[SpooledRecord], int, int, int]:
        """Records of `segment` from record `start` (seq, row) on, from byte `offset`, up to
        the size, record count and end row `ends` it had under the lock; the offset, seq and
        row after them. Records lost to damage are counted (their rows) and logged."""
        end, end_seq, end_row = ends
        reader = Reader(fd, offset, end, name=segment.name)
        records: list[SpooledRecord] = []
        taken = 0
        expected, expected_row = start
        while len(records) < limit and taken < max_bytes:
            position = reader.offset
            found = reader.next()
            if found is None:
                break
            record_seq = found.seq
            if record_seq < expected:
                continue  # read before (a scan from the segment's start)
            if record_seq >= end_seq:
                reader.offset = position
                break
            if record_seq > expected:
                self._damage.lost(segment, (expected, expected_row), (record_seq, found.row))
            records.append(found)
            taken += len(found.data)
            expected, expected_row = record_seq + 1, found.row + found.rows  # its end_row
        else:
            return records, reader.offset, expected, expected_row
        if reader.offset >= end and expected < end_seq:
            # Damage ran to the end of the segment: everything after the last good record.
            self._damage.lost(segment, (expected, expected_row), (end_seq, end_row))
            expected, expected_row = end_seq, end_row
        return records, reader.offset, expected, expected_row

    def _short(self, segment: Segment, exc: OSError) -> None:
        now = time.monotonic()
        if now >= self._short_logged_at + SHORT_LOG_INTERVAL_SECONDS:
            self._short_logged_at = now
            log.warning("spool %s: could not open %s for now (%s); read again later",
                        self._damage.directory, segment.name, exc.strerror or exc)

    def _segment_gone(self, segment: Segment, index: int, seq: int, row: int,
                      exc: OSError) -> None:
        """A segment that cannot be opened (deleted by hand, a failing disk): its waiting
        records are counted as lost and the reader moves past it, so it never spins on it."""
        end_row = self._segments.end_row(index)
        self._damage.lost(segment, (seq, row), (segment.end_seq, end_row),
                          f"{segment.name} could not be read ({exc.strerror or exc})")
        self._segments.remove(segment, end_row)
        self.seq, self.row, self.pos = segment.end_seq, end_row, (0, 0)
        self.dropped_below = max(self.dropped_below, segment.end_seq)


def accepted_at(fd: int, size: int, seq: int) -> float | None:
    """When the first record numbered `seq` or more in a segment file was accepted."""
    reader = Reader(fd, len(FILE_MAGIC), size)
    while (found := reader.next()) is not None:
        if found.seq >= seq:
            return found.accepted_at
    return None


__all__ = ["Cursor", "Damage", "accepted_at"]
