"""A spool's acknowledged position: a fixed 4 KiB file written in place, never a new block.

Rewriting a small file by rename needs a free block for the new copy: on a full filesystem the
position could then never be written, the delivered segment never deleted, and every new line
dropped (a spool alone on a 2 MiB filesystem deadlocked so). Like Vector's disk buffer ledger,
the file is made once, at its full size, when there is room, and from then on each update is a
``pwrite`` over bytes it already owns. Two slots take turns, each with a generation number and a
checksum, so a write torn by a crash leaves the other slot intact; the reader takes the valid
slot with the highest generation. Losing an update only means records delivered since the last
one are sent again after a restart (at-least-once), never a record lost.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import zlib
from typing import Final

from ..files import FILE_FLAGS, UnsafePath, atomic_write

LEDGER_FILE: Final = "ledger"
LEDGER_BYTES: Final = 4096
_MAGIC: Final = b"OQLEDGR1"
#: magic, generation, acknowledged record (seq), the row after it, crc32 of the rest.
_SLOT: Final = struct.Struct("<8sQQQI")
#: The two slots, in different 512-byte sectors so one torn sector write spares the other.
_SLOTS: Final = (0, 2048)


def _encode(generation: int, seq: int, row: int) -> bytes:
    body = _SLOT.pack(_MAGIC, generation, seq, row, 0)[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def _decode(data: bytes) -> tuple[int, int, int] | None:
    if len(data) < _SLOT.size:
        return None
    magic, generation, seq, row, crc = _SLOT.unpack_from(data)
    if magic != _MAGIC or zlib.crc32(data[:_SLOT.size - 4]) != crc:
        return None
    return generation, seq, row


class Ledger:
    """The ledger of the spool whose directory descriptor is `dir_fd`."""

    def __init__(self) -> None:
        self.generation = 0
        self.exists = False

    def read(self, dir_fd: int) -> tuple[int, int] | None:
        """(acknowledged seq, the row after it), or None when there is no ledger (or no slot
        that checks out). Raises OSError for anything but a regular file (never followed)."""
        try:
            fd = os.open(LEDGER_FILE, os.O_RDONLY | FILE_FLAGS | os.O_NONBLOCK, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePath(f"{LEDGER_FILE} is not a regular file")
            self.exists = True
            best = None
            for offset in _SLOTS:
                slot = _decode(os.pread(fd, _SLOT.size, offset))
                if slot is not None and (best is None or slot[0] > best[0]):
                    best = slot
        finally:
            os.close(fd)
        if best is None:
            return None
        self.generation = best[0]
        return best[1], best[2]

    def write(self, dir_fd: int, seq: int, row: int) -> None:
        """Record the position. The first write makes the file whole (this needs room once, and
        again if the file has gone: its directory removed and made again, or deleted by hand);
        every later one overwrites a slot in place. Raises OSError (the caller retries)."""
        self.generation += 1
        slot = _encode(self.generation, seq, row)
        fd = -1
        if self.exists:
            try:
                fd = os.open(LEDGER_FILE, os.O_WRONLY | FILE_FLAGS | os.O_NONBLOCK, dir_fd=dir_fd)
            except FileNotFoundError:
                self.exists = False
        if fd < 0:
            body = bytearray(LEDGER_BYTES)
            # In the slot this generation's number picks, as in place: the next write goes to
            # the other one, so a write torn by a crash always leaves the previous slot whole.
            at = _SLOTS[self.generation % len(_SLOTS)]
            body[at:at + len(slot)] = slot
            atomic_write(dir_fd, LEDGER_FILE, bytes(body), mode=0o600)
            self.exists = True
            return
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePath(f"{LEDGER_FILE} is not a regular file")
            os.pwrite(fd, slot, _SLOTS[self.generation % len(_SLOTS)])
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        os.close(fd)


__all__ = ["LEDGER_BYTES", "LEDGER_FILE", "Ledger"]
