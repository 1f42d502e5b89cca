"""What a spool directory holds when it is opened, made into the state the spool starts from.

The acknowledged position comes from the ledger; the segments from their names, in order. A
closed segment was fsynced when it rolled, so its record count follows from the next one's name
and only its first record is read (for its time); the newest is scanned to its last intact
record, and whatever follows that (a write torn by a power loss) is cut off and counted.
Segments wholly acknowledged are deleted. Runs when the spool is set up, before anyone else
can use it, or under its lock.
"""

from __future__ import annotations

import logging
import os
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .ledger import LEDGER_FILE, Ledger
from .migration import Migration, migrate_previous_format
from .record import FILE_MAGIC, HEADER, SYNC, Reader
from .segments import (
    Segment,
    delete,
    fill_gap,
    open_segment,
    segment_files,
)

log = logging.getLogger("osquery_aws_logger.spool")

#: Told of records lost to damage: (rows, what happened).
CountCorrupt = Callable[[int, str], None]


@dataclass(slots=True)
class Recovered:
    """The state a spool starts from."""

    segments: list[Segment]
    bytes: int  # the segments' sizes together
    next_seq: int
    next_row: int
    acked: int
    acked_row: int


def recover(dir_fd: int, directory: Path, migrate: Migration, ledger: Ledger,
            count_corrupt: CountCorrupt, *, numbered: tuple[int, int]) -> Recovered:
    """The spool in `dir_fd` as it is on disk. `numbered` is the (seq, row) the spool would
    number its next record with (a spool set up again goes on from there). Raises OSError or
    ValueError for a directory that cannot be read."""
    migrate_previous_format(dir_fd, directory, migrate, ledger)
    position = _read_ledger(dir_fd, directory, ledger)
    acked, acked_row = position or (0, 0)
    next_seq, next_row = numbered
    files = segment_files(dir_fd)
    segments: list[Segment] = []
    size = 0
    for index, (first, first_row) in enumerate(files):
        following = files[index + 1] if index + 1 < len(files) else None
        segment = Segment(first, first_row)
        if following is not None:
            # Closed segments were fsynced when they rolled: their count follows from names.
            segment.count = following[0] - first
            segment.indexed = False
            segment.size, segment.first_at = _closed_facts(dir_fd, segment)
        else:
            next_row = _scan_tail(dir_fd, segment, count_corrupt)
        if segment.end_seq - 1 <= acked:
            delete(dir_fd, directory, segment.name)
            continue
        segments.append(segment)
        size += segment.size
    if segments:
        next_seq = segments[-1].end_seq
    return Recovered(segments, size, max(next_seq, acked + 1), max(next_row, acked_row), acked,
                     acked_row)


def _read_ledger(dir_fd: int, directory: Path, ledger: Ledger) -> tuple[int, int] | None:
    try:
        return ledger.read(dir_fd)
    except OSError as exc:  # a link planted in its place (ELOOP): never read through it
        log.warning("spool %s: ignored the %s file: %s", directory, LEDGER_FILE,
                    exc.strerror or exc)
        return None


def _closed_facts(dir_fd: int, segment: Segment) -> tuple[int, float]:
    """A closed segment's size and when its first record was accepted (its first intact
    record's time, or 0 when none is intact)."""
    fd = open_segment(dir_fd, segment.name, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        first = Reader(fd, len(FILE_MAGIC), size).next()
        return size, first.accepted_at if first is not None else 0.0
    finally:
        os.close(fd)


def _scan_tail(dir_fd: int, segment: Segment, count_corrupt: CountCorrupt) -> int:
    """The newest segment: its records (by its last intact one), their rows, and its size,
    with anything after that record cut off (a write torn by a power loss). Answers the
    row number after its last record."""
    fd = open_segment(dir_fd, segment.name, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size < len(FILE_MAGIC):
            os.ftruncate(fd, 0)
            os.write(fd, FILE_MAGIC)
            segment.size = len(FILE_MAGIC)
            return segment.first_row
        reader = Reader(fd, len(FILE_MAGIC), size)
        counts = array("I")
        last_seq, last_row, good_end, good = segment.first_seq - 1, segment.first_row, \
            len(FILE_MAGIC), 0
        while (found := reader.next()) is not None:
            if found.seq <= last_seq:
                continue
            fill_gap(counts, found.seq - last_seq - 1, found.row - last_row)
            counts.append(found.rows)
            if not segment.first_at:
                segment.first_at = found.accepted_at
            last_seq, last_row, good_end, good = found.seq, found.end_row, reader.offset, good + 1
        if good_end < size:
            _cut_tail(fd, segment, good_end, size, good, count_corrupt=count_corrupt)
        segment.count = last_seq - segment.first_seq + 1
        segment.size = good_end
        segment.counts = counts if any(c != 1 for c in counts) else None
        return last_row
    finally:
        os.close(fd)


def _cut_tail(fd: int, segment: Segment, good_end: int, size: int, good: int, *,
              count_corrupt: CountCorrupt) -> None:
    """Cut off what follows the newest segment's last intact record, and count it.

    Every record starts with the sync marker, so those left in the cut bytes say how many
    records they held; a tail zeroed by a power loss keeps none, and then its size over the
    segment's mean record size is the estimate. Either way at least one record, counted as
    one row each (their row counts went with them).
    """
    tail = os.pread(fd, size - good_end, good_end)
    mean = (good_end - len(FILE_MAGIC)) / good if good else HEADER.size + 256
    zeros = len(tail) - len(tail.rstrip(b"\0"))  # pages a power loss left unwritten
    lost = max(1, tail.count(SYNC) + round(zeros / mean))
    os.ftruncate(fd, good_end)
    os.fsync(fd)
    count_corrupt(lost, f"{segment.name}: a torn or damaged tail of {len(tail)} "
                  f"bytes cut off ({lost} record{'s' if lost != 1 else ''}"
                  f"{', estimated from its zeroed bytes' if zeros >= mean else ''})")


__all__ = ["Recovered", "recover"]
