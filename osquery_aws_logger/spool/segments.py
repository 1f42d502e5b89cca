"""A spool's segment files: how they are named and found, the rows their records hold, and the
one-time migration of the previous format.

A segment is named after the numbers of its first record (``<seq>-<row>.seg``): the record
count of a closed segment follows from the next one's name, and every segment's first row
number is known without reading it. Pure apart from the descriptors it is given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..files import FILE_FLAGS, atomic_write
from .ledger import Ledger
from .record import FILE_MAGIC, KIND_MAX, encode_record

log = logging.getLogger("osquery_aws_logger.spool")

SEGMENT_SUFFIX: Final = ".seg"
# The previous format (OQSPOOL2), read only to migrate it: no row numbers, no key field, and
# the acknowledged position in a text file.
_V2_MAGIC: Final = b"OQSPOOL2"
_V2_SYNC: Final = b"\xa7\x1eQ\xd3"
_V2_HEADER: Final = struct.Struct("<4sIIQBd")
_V2_ACKED: Final = "acked"

#: What a record of the previous format becomes: (payload, partition key, rows).
Migration = Callable[[int, bytes], tuple[bytes, str, int]]


def plain(kind: int, data: bytes) -> tuple[bytes, str, int]:
    """A record of the previous format as it was: one row, no key."""
    return data, "", 1


@dataclass(slots=True)
class Segment:
    first_seq: int
    first_row: int
    count: int = 0
    size: int = 0  # bytes in the file, magic and headers included
    first_at: float = 0.0  # when its first record was accepted (0: none yet)
    #: Rows of each record, when they are not all one; None with `indexed` means all one.
    counts: array[int] | None = None
    #: False for a closed segment found at start: its records' rows are read when needed.
    indexed: bool = True

    @property
    def end_seq(self) -> int:
        return self.first_seq + self.count

    @property
    def name(self) -> str:
        return segment_name(self.first_seq, self.first_row)


def segment_name(first_seq: int, first_row: int) -> str:
    return f"{first_seq:020d}-{first_row:020d}{SEGMENT_SUFFIX}"


def segment_files(dir_fd: int) -> list[tuple[int, int]]:
    """(first seq, first row) of the directory's segment files, in order."""
    found = []
    for name in os.listdir(dir_fd):
        stem = name[:-len(SEGMENT_SUFFIX)]
        if not name.endswith(SEGMENT_SUFFIX) or "-" not in stem:
            continue
        seq, _, row = stem.partition("-")
        if seq.isdigit() and row.isdigit():
            found.append((int(seq), int(row)))
    return sorted(found)


def open_segment(dir_fd: int, name: str, flags: int) -> int:
    """A file of the spool, opened relative to its directory's descriptor (never through a
    link)."""
    return os.open(name, flags | FILE_FLAGS, 0o600, dir_fd=dir_fd)


def delete(dir_fd: int, directory: Path, name: str) -> None:
    """Delete a file of the spool; a failure (a read-only or failing disk) is logged, never
    raised: it must not undo the record just written, nor stop an acknowledgement."""
    if dir_fd < 0:  # never relative to the working directory
        return
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.error("spool %s: cannot delete %s: %s", directory, name, exc.strerror or exc)


def fill_gap(counts: array[int], missing: int, rows: int) -> None:
    """Records lost between two known ones: `missing` records that held `rows` rows in all
    (put on the first of them, so the running total stays exact at every intact record)."""
    if missing <= 0:
        return
    counts.append(max(0, rows))
    counts.extend([0] * (missing - 1))


def _v2_records(data: bytes) -> Iterable[tuple[int, int, bytes, float]]:
    """The intact records of a segment of the previous format, damage skipped."""
    pos = len(_V2_MAGIC) if data.startswith(_V2_MAGIC) else 0
    while pos + _V2_HEADER.size <= len(data):
        sync, crc, length, seq, kind, accepted_at = _V2_HEADER.unpack_from(data, pos)
        start = pos + _V2_HEADER.size
        payload = data[start:start + length]
        if sync == _V2_SYNC and kind <= KIND_MAX and len(payload) == length and \
                zlib.crc32(payload, zlib.crc32(data[pos + 8:start])) == crc:
            yield seq, kind, payload, accepted_at
            pos = start + length
            continue
        found = data.find(_V2_SYNC, pos + 1)
        if found < 0:
            return
        pos = found


def _unlink(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def migrate_previous_format(dir_fd: int, directory: Path, migrate: Migration,
                            ledger: Ledger) -> None:
    """Rewrite segments of the previous format in this one, once (their rows counted
    afresh, a routed record's key taken out of its payload), then its acked file."""
    names = sorted(name for name in os.listdir(dir_fd)
                   if name.endswith(SEGMENT_SUFFIX) and name[:-len(SEGMENT_SUFFIX)].isdigit())
    acked = 0
    with contextlib.suppress(OSError, ValueError):
        fd = os.open(_V2_ACKED, os.O_RDONLY | FILE_FLAGS | os.O_NONBLOCK, dir_fd=dir_fd)
        try:
            acked = int(os.read(fd, 64).decode().strip() or 0)
        finally:
            os.close(fd)
    if not names:
        if acked:
            _unlink(dir_fd, _V2_ACKED)
        return
    row = 0
    for name in names:
        fd = os.open(name, os.O_RDONLY | FILE_FLAGS, dir_fd=dir_fd)
        try:
            data = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
        out: list[bytes] = [FILE_MAGIC]
        first: tuple[int, int] | None = None
        for seq, kind, payload, accepted_at in _v2_records(data):
            if seq <= acked:
                continue
            body, key, rows = migrate(kind, payload)
            if first is None:
                first = (seq, row)
            out.append(encode_record(seq, row, rows, kind, key=key.encode(), data=body,
                                    accepted_at=accepted_at))
            row += rows
        if first is not None:
            atomic_write(dir_fd, segment_name(*first), b"".join(out), mode=0o600)
        _unlink(dir_fd, name)
    if acked:
        ledger.write(dir_fd, acked, 0)
    _unlink(dir_fd, _V2_ACKED)
    log.warning("spool %s: %d segment(s) of the previous format rewritten in this one",
                directory, len(names))
