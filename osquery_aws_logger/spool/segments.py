"""A spool's segment files: how they are named and found, the rows their records hold, and
`Segments`, the files of one spool in order with the one being written.

A segment is named after the numbers of its first record (``<seq>-<row>.seg``): the record
count of a closed segment follows from the next one's name, and every segment's first row
number is known without reading it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..files import DIR_FLAGS, FILE_FLAGS
from ..platform import fdatasync
from .handle import DirectoryHandle
from .record import FILE_MAGIC, Reader, record_header

log = logging.getLogger("osquery_aws_logger.spool")

SEGMENT_SUFFIX: Final = ".seg"
#: At most one line per this many seconds about failing writes.
ERROR_LOG_SECONDS: Final = 10.0
#: The errors of a full filesystem (or of a full quota).
_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Past this size a record's header and payload are written with one writev, not joined
#: first: a multi-MB line is not copied again on its way to disk.
_JOIN_BELOW: Final = 64 << 10
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


def child_spools(dir_fd: int, name: str) -> list[str] | None:
    """The directories inside subdirectory `name` of a spool that hold segments, sorted (never
    through a link); None when `name` is missing or cannot be opened."""
    found: list[str] = []
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        for entry in sorted(os.listdir(fd)):
            try:
                child = os.open(entry, DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue  # not a directory, a link, or unreadable: not a spool of ours
            try:
                if any(n.endswith(SEGMENT_SUFFIX) for n in os.listdir(child)):
                    found.append(entry)
            except OSError:
                pass
            finally:
                os.close(child)
    except OSError:
        pass
    finally:
        os.close(fd)
    return found


class Segments:
    """The segment files of one spool, oldest first, and the numbers its next record takes.

    Owns the file being written (a new one is begun at a sixteenth of each cap, and of the
    filesystem), the bytes the files hold together, the rows of each record, and the deletion
    of the oldest. The spool holds its lock around every call.
    """

    def __init__(self, directory: DirectoryHandle, *, make_room: Callable[[], bool]) -> None:
        self._dir = directory
        #: After a full disk: frees room if it can (False if nothing could go).
        self._make_room = make_room
        self.list: list[Segment] = []
        self.bytes = 0  # sum of the segments' sizes, kept so the caps cost O(1) per append
        self.fd = -1  # the segment being written
        self.dirty_since = 0.0  # its first write since its last fdatasync (0: none since)
        self.next_seq = 1
        self.next_row = 0
        self.records_each = self.bytes_each = 0  # a segment is full at either

    def restore(self, segments: list[Segment], size: int, next_seq: int, next_row: int) -> None:
        """Take what recovery found on disk."""
        self.list, self.bytes = segments, size
        self.next_seq, self.next_row = next_seq, next_row

    # -- writing --------------------------------------------------------------------------------

    def size(self, max_records: int, max_bytes: int) -> None:
        """A segment holds a sixteenth of each cap, and of the filesystem: room comes back a
        segment at a time, so on a small filesystem (a 2 MiB mount, a quota) a delivered
        segment is never most of it while new lines wait behind it."""
        self.records_each = max(1, min(4096, max_records // 16))
        fs_bytes = self._dir.fs_bytes
        room = max_bytes if not fs_bytes else min(max_bytes, fs_bytes)
        self.bytes_each = max(64 << 10, min(16 << 20, room // 16))

    def append(self, kind: int, data: bytes | memoryview, rows: int, key: bytes) -> None:
        """Write the next record, of `rows` rows. Raises OSError (nothing is then kept)."""
        now = time.time()
        header = record_header(self.next_seq, self.next_row, rows, kind, key=key, data=data,
                               accepted_at=now)
        size = self._write(header + data if len(data) < _JOIN_BELOW else (header, data))
        segment = self.list[-1]
        if segment.counts is None and rows != 1:
            segment.counts = array("I", [1]) * segment.count
        if segment.counts is not None:
            segment.counts.append(rows)
        if not segment.count:
            segment.first_at = now
        segment.count += 1
        segment.size += size
        self.bytes += size
        self.next_seq += 1
        self.next_row += rows
        if not self.dirty_since:
            self.dirty_since = time.monotonic()

    def _write(self, record: bytes | tuple[bytes, bytes | memoryview]) -> int:
        """Append one record (in one write, or one writev of header and payload); answer its
        size."""
        size = len(record) if isinstance(record, bytes) else len(record[0]) + len(record[1])
        if self.fd < 0 or self.needs_roll():
            try:
                self.roll()
            except OSError as exc:
                if exc.errno not in _FULL or not self._make_room():
                    raise
                self.roll()
        try:
            self._write_record(record, size)
        except OSError as exc:
            if exc.errno not in _FULL or not self._make_room():  # make room, try once more
                raise
            if self.fd < 0:
                self.roll()
            self._write_record(record, size)
        return size

    def _write_record(self, record: bytes | tuple[bytes, bytes | memoryview], size: int) -> None:
        written = os.write(self.fd, record) if isinstance(record, bytes) else \
            os.writev(self.fd, record)
        if written != size:
            # A short write (the disk filled mid-record): cut it off, so the file stays whole.
            os.ftruncate(self.fd, self.list[-1].size)
            raise OSError(errno.ENOSPC, "No space left on device (short write)")

    def needs_roll(self) -> bool:
        segment = self.list[-1]
        return segment.count >= self.records_each or segment.size >= self.bytes_each

    def roll(self) -> None:
        # A closed segment's record count is read from the names at start: make it durable.
        self._close_synced()
        if self.list and self.list[-1].end_seq == self.next_seq and not self.needs_roll():
            # The segment being written, after its descriptor was let go: go on in it.
            self.fd = self.open(self.list[-1].name, os.O_WRONLY | os.O_APPEND)
            return
        segment = Segment(self.next_seq, self.next_row)
        fd = self.open(segment.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL)
        try:
            if os.write(fd, FILE_MAGIC) != len(FILE_MAGIC):
                raise OSError(errno.ENOSPC, "No space left on device (short write)")
        except OSError:
            os.close(fd)
            self.delete(segment.name)
            raise
        segment.size = len(FILE_MAGIC)
        self.list.append(segment)
        self.bytes += segment.size
        self.fd = fd

    def due_sync(self, now: float, interval: float, *, force: bool) -> int:
        """A descriptor of the segment being written, to fdatasync outside the lock, if it was
        written `interval` seconds ago or more (or `force`) and not synced since; else -1."""
        if not self.dirty_since or self.fd < 0:
            return -1
        if not force and now - self.dirty_since < interval:
            return -1
        fd = os.dup(self.fd)
        self.dirty_since = 0.0
        return fd

    # -- closing and deleting -------------------------------------------------------------------

    def close_file(self) -> None:
        """Close the segment being written (the next line opens it again, or a new one)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def let_go(self) -> None:
        """Close the segment being written, synced first (the spool lets its descriptors go)."""
        if self._close_synced():
            self.dirty_since = 0.0

    def _close_synced(self) -> bool:
        """Close the segment being written, synced first; False when none was open."""
        if self.fd < 0:
            return False
        with contextlib.suppress(OSError):
            fdatasync(self.fd)
        os.close(self.fd)
        self.fd = -1
        return True

    def clear(self) -> None:
        """Forget every segment (the directory is no longer open; nothing is deleted)."""
        self.list.clear()
        self.bytes = 0

    def lose(self) -> None:
        """The directory was removed while in use: forget its segments and the file being
        written (gone with it)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        self.clear()

    def forget_oldest(self) -> None:
        oldest = self.list.pop(0)
        self.bytes -= oldest.size
        self.delete(oldest.name)

    def forget_all(self) -> None:
        """Delete every segment (nothing in them waits): the next line begins a new one."""
        self.close_file()
        while self.list:
            self.forget_oldest()

    def forget_through(self, seq: int) -> None:
        """Delete the segments whose records are all numbered `seq` or below."""
        while self.list:
            segment = self.list[0]
            if segment.end_seq - 1 > seq:
                break
            if segment is self.list[-1]:
                # Keep writing into it; it is empty of waiting records and stays small.
                if segment.size < self.bytes_each // 4:
                    break
                self.close_file()
            self.forget_oldest()

    def remove(self, segment: Segment, end_row: int) -> None:
        """Forget a segment that cannot be read (its records are counted as lost by the
        caller); numbering goes on after it even if it was the newest."""
        if segment is self.list[-1] and self.fd >= 0:
            os.close(self.fd)  # the next line starts a new segment
            self.fd = -1
        self.list.remove(segment)
        self.bytes -= segment.size
        if self.next_seq < segment.end_seq:
            self.next_seq, self.next_row = segment.end_seq, end_row

    def open(self, name: str, flags: int) -> int:
        if self._dir.fd < 0:  # never relative to the working directory
            raise OSError(errno.EBADF, f"spool {self._dir.path} is not open")
        return open_segment(self._dir.fd, name, flags)

    def delete(self, name: str) -> None:
        delete(self._dir.fd, self._dir.path, name)

    # -- rows -----------------------------------------------------------------------------------

    def segment_of(self, seq: int) -> tuple[Segment | None, int]:
        for index, segment in enumerate(self.list):
            if seq < segment.end_seq:
                return segment, index
        return None, -1

    def row_at(self, seq: int) -> int:
        """The row number of record `seq` (of the next record, past the end)."""
        if seq >= self.next_seq or not self.list:
            return self.next_row
        for index, segment in enumerate(self.list):
            if seq >= segment.end_seq:
                continue
            if seq <= segment.first_seq:
                return segment.first_row
            if not segment.indexed:
                self._index(segment, index)
            if segment.counts is None:
                return segment.first_row + (seq - segment.first_seq)
            return segment.first_row + sum(segment.counts[:seq - segment.first_seq])
        return self.next_row

    def end_row(self, index: int) -> int:
        """The row number after the last record of segment `index`."""
        following = self.list[index + 1] if index + 1 < len(self.list) else None
        return following.first_row if following is not None else self.next_row

    def _index(self, segment: Segment, index: int) -> None:
        """Learn the rows of each record of a segment found closed at start, from its headers
        (the flusher does this early, outside the lock: `Spool.sync`)."""
        try:
            fd = self.open(segment.name, os.O_RDONLY)
        except OSError:
            fd = -1
        try:
            segment.counts = record_rows(fd, segment, self.end_row(index))
        finally:
            if fd >= 0:
                os.close(fd)
        segment.indexed = True


def record_rows(fd: int, segment: Segment, end_row: int) -> array[int] | None:
    """The rows of each record of closed `segment` (file `fd`, -1 if it cannot be read: then
    spread evenly), or None when every record holds one row."""
    counts = array("I")
    last_seq, last_row = segment.first_seq - 1, segment.first_row
    if fd >= 0:
        reader = Reader(fd, len(FILE_MAGIC), segment.size)
        while (found := reader.next()) is not None:
            if found.seq <= last_seq or found.seq >= segment.end_seq:
                continue
            fill_gap(counts, found.seq - last_seq - 1, found.row - last_row)
            counts.append(found.rows)
            last_seq, last_row = found.seq, found.end_row
    fill_gap(counts, segment.end_seq - 1 - last_seq, end_row - last_row)
    return counts if any(c != 1 for c in counts) else None


class WriteErrors:
    """Lines that could not be written to the segments: counted until the group next asks (its
    sign of a full disk), and logged at most one line per `ERROR_LOG_SECONDS`."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._since_check = 0
        self._logged_at = -ERROR_LOG_SECONDS
        self._unlogged = 0

    def failed(self, exc: OSError) -> None:
        self._since_check += 1
        now = time.monotonic()
        if now - self._logged_at >= ERROR_LOG_SECONDS:
            more = self._unlogged
            self._logged_at, self._unlogged = now, 0
            log.error("spool %s: cannot write a line, dropped (spool_error): %s%s",
                      self._directory, exc.strerror or exc,
                      f" ({more} more since the last such line)" if more else "")
        else:
            self._unlogged += 1

    def take(self) -> int:
        """The failures since the last call."""
        failed, self._since_check = self._since_check, 0
        return failed


__all__ = [
    "ERROR_LOG_SECONDS",
    "SEGMENT_SUFFIX",
    "Segment",
    "Segments",
    "WriteErrors",
    "child_spools",
    "delete",
    "fill_gap",
    "open_segment",
    "segment_files",
    "segment_name",
]
