"""The one-time migration of a spool of the previous format (``OQSPOOL2``) to this one.

The previous format had no row numbers and no key field, and kept the acknowledged position in
a text file. Its segments are rewritten in this format once, when the spool is set up (their
rows counted afresh, a routed record's key taken out of its payload), then its acked file goes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

from ..files import FILE_FLAGS, atomic_write
from .ledger import Ledger
from .record import FILE_MAGIC, KIND_MAX, encode_record
from .segments import SEGMENT_SUFFIX, segment_name

log = logging.getLogger("osquery_aws_logger.spool")

# The previous format, read only to migrate it.
_V2_MAGIC: Final = b"OQSPOOL2"
_V2_SYNC: Final = b"\xa7\x1eQ\xd3"
_V2_HEADER: Final = struct.Struct("<4sIIQBd")
_V2_ACKED: Final = "acked"

#: What a record of the previous format becomes: (payload, partition key, rows).
Migration = Callable[[int, bytes], tuple[bytes, str, int]]


def plain(kind: int, data: bytes) -> tuple[bytes, str, int]:
    """A record of the previous format as it was: one row, no key."""
    return data, "", 1


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


__all__ = ["Migration", "migrate_previous_format", "plain"]
