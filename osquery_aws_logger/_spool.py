"""The durable spool: every accepted line is on disk before osqueryd's call is answered.

Why append-only segment files and not sqlite3: the thrift side must answer within microseconds,
and a record here costs one ``os.write`` of header and payload (no transaction, no index, no
page rewrite). The kernel holds the bytes once ``write`` returns, so a ``kill -9`` of the
extension or a restart of osqueryd loses nothing; the flusher thread ``fdatasync``s the segment
being written at most ``sync_interval`` seconds (1 s) after a write, which bounds what a power
loss can take. Delivery order is the file order, so no index is needed: a record is identified
by its sequence number, a segment file is named after the sequence number of its first record,
and the ``acked`` file holds the highest sequence number delivered. Segments wholly delivered
are deleted. Past the record cap the oldest waiting records are given up (counted); past the
byte cap, or when the filesystem is nearly full, the oldest whole segment is.

Segment layout: the 8-byte file magic ``OQSPOOL2``, then records, each
``<sync 4s><crc32 u32><length u32><seq u64><kind u8><accepted_at f64>`` and ``length`` bytes;
the checksum covers everything after itself. The sync marker and the sequence number make
damage cost only the records it touches: a reader that meets a bad record searches forward for
the next sync marker whose record checks out, and the jump in sequence numbers says exactly
how many records were lost, which are counted (``corrupt``) and logged once with the file.
Segments of the first format (no magic, no sync, no sequence numbers) are rewritten once, at
start, in this one.

Nothing here follows a symlink: the directory is opened with ``O_NOFOLLOW`` after its
ancestors are checked as osquery checks extension paths, and every file is opened relative to
that descriptor (``_safefs``). No spool problem raises into the thrift side or ends the
process: a spool that cannot be set up counts each line as dropped (``spool_error``), says
why in ``problem``, and is set up again by the flusher's next ``sync`` after a pause.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ._safefs import DIR_FLAGS, FILE_FLAGS, UnsafePath, atomic_write, open_directory, parent_problem

log = logging.getLogger("osquery_aws_logger.spool")

FILE_MAGIC: Final = b"OQSPOOL2"
SYNC: Final = b"\xa7\x1eQ\xd3"
HEADER: Final = struct.Struct("<4sIIQBd")
#: The part of the header the checksum covers (with the payload): length, seq, kind, time.
_CHECKED_AT: Final = 8
_LENGTH: Final = struct.Struct("<I")
SEGMENT_SUFFIX: Final = ".seg"
ACKED_FILE: Final = "acked"

#: Kinds of spooled record.
KIND_RESULT: Final = 0  # a result or snapshot line exactly as osqueryd sent it
KIND_STATUS: Final = 1  # a finished status record (JSON with log_type "status")
KIND_MAX: Final = KIND_STATUS

#: Largest record the spool takes; anything bigger exceeds every service limit anyway and is
#: dropped as oversize by the flusher, but we keep it bounded so a bad line cannot fill memory.
MAX_RECORD_BYTES: Final = 16 << 20
READ_CHUNK: Final = 1 << 20
#: Seconds between attempts to set up a spool that could not be (permissions, a bad path).
REOPEN_SECONDS: Final = 10.0
#: Keep this much of the filesystem free (or 5 % of it, if less): below it the oldest waiting
#: segment goes early, so the newest lines and the acked file can still be written.
HEADROOM_BYTES: Final = 32 << 20
HEADROOM_SHARE: Final = 0.05
#: At most one line per this many seconds about failing writes.
ERROR_LOG_SECONDS: Final = 10.0
#: The errors of a full filesystem (or of a full quota).
_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT})

# The first format, read only to migrate it: <length u32><crc32 u32><kind u8><accepted_at f64>.
_V1_HEADER: Final = struct.Struct("<IIBd")


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    """One record read back from the spool."""

    seq: int
    kind: int
    data: bytes
    accepted_at: float


@dataclass(slots=True)
class _Segment:
    first_seq: int
    name: str
    count: int = 0
    size: int = 0  # bytes in the file, magic and headers included

    @property
    def end_seq(self) -> int:
        return self.first_seq + self.count


DropCallback = Callable[[str, int], None]


def _segment_name(first: int) -> str:
    return f"{first:020d}{SEGMENT_SUFFIX}"


def record_header(seq: int, kind: int, data: bytes | memoryview, accepted_at: float) -> bytes:
    """The header that goes before `data` on disk (its checksum covers both)."""
    header = HEADER.pack(SYNC, 0, len(data), seq, kind, accepted_at)
    crc = zlib.crc32(data, zlib.crc32(header[_CHECKED_AT:]))
    return SYNC + struct.pack("<I", crc) + header[_CHECKED_AT:]


def encode_record(seq: int, kind: int, data: bytes, accepted_at: float) -> bytes:
    return record_header(seq, kind, data, accepted_at) + data


#: Past this size a record's header and payload are written with one writev, not joined
#: first: a multi-MB line is not copied again on its way to disk.
_JOIN_BELOW: Final = 64 << 10


def _record_at(buffer: bytes, pos: int) -> SpooledRecord | None:
    """The intact record at `pos` of `buffer`, or None (damaged, or not all of it in the
    buffer)."""
    if len(buffer) - pos < HEADER.size:
        return None
    sync, crc, length, seq, kind, accepted_at = HEADER.unpack_from(buffer, pos)
    if sync != SYNC or kind > KIND_MAX or length > MAX_RECORD_BYTES:
        return None
    start = pos + HEADER.size
    data = buffer[start:start + length]  # sliced once: checked, then handed out
    if len(data) != length or \
            zlib.crc32(data, zlib.crc32(buffer[pos + _CHECKED_AT:start])) != crc:
        return None
    return SpooledRecord(seq, kind, data, accepted_at)


class _Reader:
    """Walks the records of one segment file from a byte offset, resynchronising after damage."""

    def __init__(self, fd: int, offset: int, end: int) -> None:
        self._fd = fd
        self.offset = offset  # file offset of buffer[pos]
        self._end = end
        self._buffer = b""
        self._pos = 0

    def _fill(self, need: int) -> bool:
        """Have at least `need` bytes from pos buffered (False at the end of the data)."""
        if len(self._buffer) - self._pos >= need:
            return True
        start = self.offset + len(self._buffer) - self._pos
        want = min(max(READ_CHUNK, need - (len(self._buffer) - self._pos)), self._end - start)
        if want <= 0:
            return False
        more = os.pread(self._fd, want, start)
        self._buffer = self._buffer[self._pos:] + more
        self._pos = 0
        return len(self._buffer) >= need

    def _load(self) -> bool:
        """Buffer the record that starts at pos, as much of it as its header says there is;
        False when not even a header is left."""
        if not self._fill(HEADER.size):
            return False
        (length,) = _LENGTH.unpack_from(self._buffer, self._pos + 8)
        if length <= MAX_RECORD_BYTES:
            self._fill(HEADER.size + length)
        return True

    def next(self) -> SpooledRecord | None:
        """The next intact record, or None at the end of the data. Damage is skipped: the
        caller learns how many records it cost from the jump in sequence numbers."""
        while self.offset < self._end:
            # The usual case first, without a call: the whole record already buffered.
            found = _record_at(self._buffer, self._pos)
            if found is None:
                if not self._load():
                    self._skip_to_end()  # a few bytes too short for a header: a torn tail
                    return None
                found = _record_at(self._buffer, self._pos)
                if found is None:
                    self._resync()
                    continue
            size = HEADER.size + len(found.data)
            self._pos += size
            self.offset += size
            return found
        return None

    def _advance(self, count: int) -> None:
        self._pos += count
        self.offset += count

    def _skip_to_end(self) -> None:
        self.offset = self._end
        self._buffer, self._pos = b"", 0

    def _resync(self) -> None:
        """Move to the next sync marker that starts an intact record (or the end)."""
        self._advance(1)
        while True:
            at = self._buffer.find(SYNC, self._pos)
            if at < 0:
                keep = len(SYNC) - 1  # a marker may straddle the chunk boundary
                drop = max(0, len(self._buffer) - self._pos - keep)
                self._advance(drop)
                if not self._fill(keep + 1) or len(self._buffer) - self._pos <= keep:
                    self._skip_to_end()
                    return
                continue
            self._advance(at - self._pos)
            if self._load() and _record_at(self._buffer, self._pos) is not None:
                return
            self._advance(1)


class Spool:
    """A durable FIFO of one plugin's records, written by the thrift side and read by the flusher.

    ``append`` is the only method the thrift side calls; everything else belongs to the flusher.
    """

    def __init__(self, directory: Path, *, max_records: int, max_bytes: int,
                 on_drop: DropCallback, sync_interval: float = 1.0) -> None:
        self.directory = directory
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.sync_interval = sync_interval
        self._on_drop = on_drop
        self._segment_records = max(1, min(4096, max_records // 16))
        self._segment_bytes = max(64 << 10, min(16 << 20, max_bytes // 16))
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._bytes = 0  # sum of the segments' sizes, kept so the caps cost O(1) per append
        self._dir_fd = -1
        self._fd = -1
        self._dirty_since = 0.0
        self._next_seq = 1
        self._acked = 0
        self._acked_on_disk = 0
        self._read_seq = 1
        self._read_pos: tuple[int, int] = (0, 0)  # (segment first_seq, offset) of _read_seq
        #: Records numbered below this were given up (a cap, a full disk), including any the
        #: flusher had already read: it must not send them; it counts those, under this reason.
        self.dropped_below = 0
        self.dropped_reason = "cap_records"
        #: Damage already counted: gaps below this sequence number are not counted again.
        self._corrupt_counted_below = 0
        #: Why the spool cannot take lines now ("" when it can).
        self.problem = ""
        self._reopen_at = 0.0
        self._next_headroom_check = 0.0
        self._error_logged_at = -ERROR_LOG_SECONDS
        self._acked_logged_at = -ERROR_LOG_SECONDS
        self._errors_unlogged = 0
        self._errors_since_check = 0
        self._open()

    # -- set-up -------------------------------------------------------------------------------

    def _open(self) -> None:
        """Set the spool up, or record why it cannot be (never raises)."""
        try:
            problem = parent_problem(self.directory)
            if problem:
                raise UnsafePath(problem)
            self._dir_fd = open_directory(self.directory, create=True, mode=0o700)
            self._recover()
        except (OSError, ValueError) as exc:
            if self._dir_fd >= 0:
                os.close(self._dir_fd)
                self._dir_fd = -1
            self._segments.clear()
            self._bytes = 0
            reason = str(exc) if isinstance(exc, UnsafePath) else \
                f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
            problem = f"spool {self.directory} unusable: {reason}"
            if problem != self.problem:
                log.error("%s; lines are counted as dropped (spool_error) until it is fixed; "
                          "trying again every %.0fs", problem, REOPEN_SECONDS)
            self.problem = problem
            self._reopen_at = time.monotonic() + REOPEN_SECONDS
            return
        if self.problem:
            log.warning("spool %s usable again", self.directory)
        self.problem = ""

    def _recover(self) -> None:
        self._acked = self._acked_on_disk = self._read_acked()
        firsts = _segment_firsts(self._dir_fd)
        self._segments, self._bytes = [], 0
        for index, first in enumerate(firsts):
            name = _segment_name(first)
            following = firsts[index + 1] if index + 1 < len(firsts) else None
            size = self._migrate_if_old(name, first, following)
            segment = _Segment(first, name, size=size)
            if following is not None:
                # Closed segments were fsynced when they rolled: their count follows from names.
                segment.count = following - first
            else:
                segment.count, segment.size = self._scan_tail(segment)
            if segment.end_seq - 1 <= self._acked:
                self._unlink(name)
                continue
            self._segments.append(segment)
            self._bytes += segment.size
        if self._segments:
            self._next_seq = self._segments[-1].end_seq
        self._next_seq = max(self._next_seq, self._acked + 1)
        self._rewind_reader()

    def _read_acked(self) -> int:
        try:
            return _acked_in(self._dir_fd)
        except OSError as exc:  # a link planted in its place (ELOOP): never read through it
            log.warning("spool %s: ignored the %s file: %s", self.directory, ACKED_FILE,
                        exc.strerror or exc)
            return 0

    def _open_segment(self, name: str, flags: int) -> int:
        return os.open(name, flags | FILE_FLAGS, 0o600, dir_fd=self._dir_fd)

    def _unlink(self, name: str) -> None:
        """Delete a file of the spool; a failure (a read-only or failing disk) is logged, never
        raised: it must not undo the record just written, nor stop an acknowledgement."""
        try:
            os.unlink(name, dir_fd=self._dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("spool %s: cannot delete %s: %s", self.directory, name, exc.strerror or exc)

    def _scan_tail(self, segment: _Segment) -> tuple[int, int]:
        """The record count of the newest segment (by its last intact record) and its size,
        with anything after that record cut off: a write torn by a power loss."""
        fd = self._open_segment(segment.name, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < len(FILE_MAGIC):
                os.ftruncate(fd, 0)
                os.write(fd, FILE_MAGIC)
                return 0, len(FILE_MAGIC)
            reader = _Reader(fd, len(FILE_MAGIC), size)
            last_seq, good_end, good = segment.first_seq - 1, len(FILE_MAGIC), 0
            while (found := reader.next()) is not None:
                if found.seq > last_seq:
                    last_seq, good_end, good = found.seq, reader.offset, good + 1
            if good_end < size:
                self._cut_tail(fd, segment, good_end, size, good)
            return last_seq - segment.first_seq + 1, good_end
        finally:
            os.close(fd)

    def _cut_tail(self, fd: int, segment: _Segment, good_end: int, size: int, good: int) -> None:
        """Cut off what follows the newest segment's last intact record, and count it.

        Every record starts with the sync marker, so those left in the cut bytes say how many
        records they held; a tail zeroed by a power loss keeps none, and then its size over the
        segment's mean record size is the estimate. Either way at least one record.
        """
        tail = os.pread(fd, size - good_end, good_end)
        mean = (good_end - len(FILE_MAGIC)) / good if good else HEADER.size + 256
        zeros = len(tail) - len(tail.rstrip(b"\0"))  # pages a power loss left unwritten
        lost = max(1, tail.count(SYNC) + round(zeros / mean))
        os.ftruncate(fd, good_end)
        os.fsync(fd)
        self._count_corrupt(lost, f"{segment.name}: a torn or damaged tail of {len(tail)} "
                            f"bytes cut off ({lost} record{'s' if lost != 1 else ''}"
                            f"{', estimated from its zeroed bytes' if zeros >= mean else ''})")

    def _migrate_if_old(self, name: str, first: int, following: int | None) -> int:
        """Rewrite a segment of the first format in this one; answer the segment's size."""
        fd = self._open_segment(name, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size == 0 or os.pread(fd, len(FILE_MAGIC), 0) == FILE_MAGIC or \
                    not _first_format(os.pread(fd, _V1_HEADER.size + MAX_RECORD_BYTES, 0)):
                # This format (its magic, or damage where the magic was): never rewritten.
                return size
            data = os.pread(fd, size, 0)
        finally:
            os.close(fd)
        out = [FILE_MAGIC]
        offset, seq = 0, first
        while offset + _V1_HEADER.size <= len(data):
            length, crc, kind, accepted_at = _V1_HEADER.unpack_from(data, offset)
            end = offset + _V1_HEADER.size + length
            payload = data[offset + _V1_HEADER.size:end]
            if kind > KIND_MAX or end > len(data) or zlib.crc32(payload) != crc:
                break
            out.append(encode_record(seq, kind, payload, accepted_at))
            offset, seq = end, seq + 1
        if following is not None and following > seq:
            self._count_corrupt(following - seq, f"{name}: {following - seq} records of the "
                                f"old format unreadable")
        elif following is None and offset < len(data):
            self._count_corrupt(1, f"{name}: a torn tail of {len(data) - offset} bytes in the "
                                f"old format cut off (1 record)")
        body = b"".join(out)
        atomic_write(self._dir_fd, name, body, mode=0o600)
        return len(body)

    def _rewind_reader(self) -> None:
        """Point the reader at the oldest record not yet delivered."""
        self._read_seq = max(self._acked + 1, self.dropped_below)
        self._read_pos = (0, 0)
        for segment in self._segments:
            if segment.end_seq > self._read_seq:
                if segment.first_seq >= self._read_seq:
                    self._read_seq = segment.first_seq
                    self._read_pos = (segment.first_seq, len(FILE_MAGIC))
                return
        self._read_seq = self._next_seq

    # -- the thrift side ----------------------------------------------------------------------

    def append(self, kind: int, data: bytes | memoryview) -> int:
        """Write one record; answer how many records wait unread (0 if this one was not kept).

        Never raises, never blocks on the network.
        """
        if len(data) > MAX_RECORD_BYTES:
            self._on_drop("oversize", 1)
            return 0
        with self._lock:
            if self._dir_fd < 0:
                self._on_drop("spool_error", 1)
                return 0
            header = record_header(self._next_seq, kind, data, time.time())
            try:
                size = self._write(header + data if len(data) < _JOIN_BELOW else (header, data))
            except OSError as exc:
                self._write_failed(exc)
                return 0
            segment = self._segments[-1]
            segment.count += 1
            segment.size += size
            self._bytes += size
            self._next_seq += 1
            if not self._dirty_since:
                self._dirty_since = time.monotonic()
            self._enforce_caps()
            return self._next_seq - self._read_seq

    def _write(self, record: bytes | tuple[bytes, bytes | memoryview]) -> int:
        """Append one record (in one write, or one writev of header and payload); answer its
        size."""
        size = len(record) if isinstance(record, bytes) else len(record[0]) + len(record[1])
        if self._fd < 0 or self._needs_roll():
            try:
                self._roll()
            except OSError as exc:
                if exc.errno not in _FULL or not self._free_space():
                    raise
                self._roll()
        try:
            written = self._write_record(record)
        except OSError as exc:
            if exc.errno not in _FULL or not self._free_space():  # make room, try once more
                raise
            written = self._write_record(record)
        if written != size:
            # A short write (the disk filled mid-record): cut it off, so the file stays whole.
            os.ftruncate(self._fd, self._segments[-1].size)
            raise OSError(errno.ENOSPC, "No space left on device (short write)")
        return size

    def _write_record(self, record: bytes | tuple[bytes, bytes | memoryview]) -> int:
        return os.write(self._fd, record) if isinstance(record, bytes) else \
            os.writev(self._fd, record)

    def _free_space(self) -> bool:
        """Give up the oldest waiting segment to make room (counted); False if none can go."""
        if len(self._segments) < 2:
            return False
        oldest = self._segments[0]
        self._drop_below(oldest.end_seq, "disk_full")
        self._forget_segment()
        return True

    def _write_failed(self, exc: OSError) -> None:
        self._on_drop("spool_error", 1)
        self._errors_since_check += 1
        if exc.errno == errno.ENOENT and self._dir_fd >= 0 and not self._directory_present():
            self._lose_directory()
        now = time.monotonic()
        if now - self._error_logged_at >= ERROR_LOG_SECONDS:
            more = self._errors_unlogged
            self._error_logged_at, self._errors_unlogged = now, 0
            log.error("spool %s: cannot write a line, dropped (spool_error): %s%s",
                      self.directory, exc.strerror or exc,
                      f" ({more} more since the last such line)" if more else "")
        else:
            self._errors_unlogged += 1

    def _directory_present(self) -> bool:
        """Whether the spool's directory is still where it was (not removed by hand)."""
        try:
            return os.fstat(self._dir_fd).st_nlink > 0
        except OSError:
            return False

    def _lose_directory(self) -> None:
        """The directory was removed while in use: forget it and set it up again later
        (records that were in it are gone with it)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        os.close(self._dir_fd)
        self._dir_fd = -1
        self._segments.clear()
        self._bytes = 0
        self.problem = f"spool {self.directory} unusable: its directory was removed"
        self._reopen_at = time.monotonic() + REOPEN_SECONDS
        log.error("%s; setting it up again in %.0fs", self.problem, REOPEN_SECONDS)

    def write_file(self, name: str, data: bytes, *, mode: int = 0o600) -> bool:
        """Replace a small file of the spool's own (state.json) through the spool's directory
        descriptor: never through a link, never for a spool refused or not set up. Answers
        whether it was written; a full disk only costs this update."""
        with self._lock:
            if self._dir_fd < 0:
                return False
            try:
                atomic_write(self._dir_fd, name, data, mode=mode)
            except OSError:
                return False
            return True

    def _needs_roll(self) -> bool:
        segment = self._segments[-1]
        return segment.count >= self._segment_records or segment.size >= self._segment_bytes

    def _roll(self) -> None:
        if self._fd >= 0:
            # A closed segment's record count is read from the names at start: make it durable.
            with contextlib.suppress(OSError):
                os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._segments and self._segments[-1].count == 0:
            segment = self._segments[-1]
            fd = self._open_segment(segment.name, os.O_WRONLY | os.O_APPEND)
        else:
            segment = _Segment(self._next_seq, _segment_name(self._next_seq))
            fd = self._open_segment(segment.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL)
            try:
                if os.write(fd, FILE_MAGIC) != len(FILE_MAGIC):
                    raise OSError(errno.ENOSPC, "No space left on device (short write)")
            except OSError:
                os.close(fd)
                self._unlink(segment.name)
                raise
            segment.size = len(FILE_MAGIC)
            self._segments.append(segment)
            self._bytes += segment.size
        self._fd = fd

    def _first_waiting(self) -> int:
        return max(self._acked + 1, self._segments[0].first_seq, self.dropped_below)

    def _waiting_records(self) -> int:
        if not self._segments:
            return 0
        return max(0, self._next_seq - self._first_waiting())

    def _drop_below(self, floor: int, reason: str) -> None:
        """Give up every waiting record numbered below `floor`, those the flusher already holds
        too (they are off disk, or soon will be: it must not send them).

        Only the records never handed out are counted here, under `reason`; the flusher counts
        those it held and lets go of (`dropped_reason` says why), and none it delivered first,
        so no record is counted both delivered and dropped.
        """
        lost = floor - max(self._first_waiting(), self._read_seq)
        if lost > 0:
            self._on_drop(reason, lost)
        if floor > self.dropped_below:
            self.dropped_below, self.dropped_reason = floor, reason
        if self._read_seq < floor:
            self._read_seq, self._read_pos = floor, (0, 0)  # position found by the next read

    def _enforce_caps(self) -> None:
        if not self._segments:
            return
        # The record cap keeps exactly the newest max_records.
        excess = self._waiting_records() - self.max_records
        if excess > 0:
            self._drop_below(self._first_waiting() + excess, "cap_records")
        # Bytes can only be given back a whole file at a time: the oldest segments go.
        while len(self._segments) > 1 and self._bytes > self.max_bytes:
            self._drop_below(self._segments[0].end_seq, "cap_bytes")
            self._forget_segment()
        # Segments wholly below the floor hold nothing waiting: delete them.
        while len(self._segments) > 1 and self._segments[0].end_seq <= self.dropped_below:
            self._forget_segment()

    def _forget_segment(self) -> None:
        oldest = self._segments.pop(0)
        self._bytes -= oldest.size
        self._unlink(oldest.name)

    def set_caps(self, max_records: int, max_bytes: int) -> None:
        """New caps, in force at once: the oldest records past them are dropped and counted."""
        with self._lock:
            self.max_records, self.max_bytes = max_records, max_bytes
            self._segment_records = max(1, min(4096, max_records // 16))
            self._segment_bytes = max(64 << 10, min(16 << 20, max_bytes // 16))
            if self._fd >= 0 and self._segments and self._needs_roll():
                with contextlib.suppress(OSError):
                    self._roll()  # so the old, larger segment can go whole
            self._enforce_caps()

    # -- the flusher side ---------------------------------------------------------------------

    def read(self, max_records: int, max_bytes: int = 1 << 62) -> list[SpooledRecord]:
        """The next records after those already handed out, oldest first: at most
        `max_records`, and no more once `max_bytes` of payload are read (at least one)."""
        out: list[SpooledRecord] = []
        taken = 0
        while len(out) < max_records and taken < max_bytes:
            with self._lock:
                if self._dir_fd < 0 or self._read_seq >= self._next_seq:
                    break
                segment = self._segment_of(self._read_seq)
                if segment is None:
                    break
                seq = self._read_seq
                first, offset = self._read_pos
                if first != segment.first_seq:
                    offset = len(FILE_MAGIC)  # from the start, skipping what is already read
                end, end_seq = segment.size, segment.end_seq
                try:
                    fd = self._open_segment(segment.name, os.O_RDONLY)
                except OSError as exc:
                    self._segment_gone(segment, seq, exc)
                    continue
            try:
                records, offset, next_seq = self._read_from(
                    fd, segment, offset, (end, end_seq), seq, limit=max_records - len(out),
                    max_bytes=max_bytes - taken)
            finally:
                os.close(fd)
            with self._lock:
                if self._read_seq != seq:
                    continue  # a cap dropped (and counted) what we read: don't also deliver it
                out.extend(records)
                taken += sum(len(r.data) for r in records)
                self._read_seq, self._read_pos = next_seq, (segment.first_seq, offset)
                if not records and next_seq == seq:
                    break
        return out

    def _read_from(self, fd: int, segment: _Segment, offset: int, ends: tuple[int, int],
                   seq: int, *, limit: int, max_bytes: int) -> tuple[list[SpooledRecord], int, int]:
        """Records of `segment` numbered `seq` on, from byte `offset`, up to the byte size and
        record count `ends` it had under the lock; the offset and the sequence number after
        them. Records lost to damage are counted and logged."""
        end, end_seq = ends
        reader = _Reader(fd, offset, end)
        records: list[SpooledRecord] = []
        taken = 0
        expected = seq
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
                self._lost(segment, expected, record_seq)
            records.append(found)
            taken += len(found.data)
            expected = record_seq + 1
        else:
            return records, reader.offset, expected
        if reader.offset >= end and expected < end_seq:
            # Damage ran to the end of the segment: everything after the last good record.
            self._lost(segment, expected, end_seq)
            expected = end_seq
        return records, reader.offset, expected

    def _segment_gone(self, segment: _Segment, seq: int, exc: OSError) -> None:
        """A segment that cannot be opened (deleted by hand, a failing disk): its waiting
        records are counted as lost and the reader moves past it, so it never spins on it."""
        self._lost(segment, seq, segment.end_seq, f"{segment.name} could not be read "
                   f"({exc.strerror or exc})")
        if segment is self._segments[-1] and self._fd >= 0:
            os.close(self._fd)  # the next line starts a new segment
            self._fd = -1
        self._segments.remove(segment)
        self._bytes -= segment.size
        self._read_seq, self._read_pos = segment.end_seq, (0, 0)
        self.dropped_below = max(self.dropped_below, segment.end_seq)
        self._next_seq = max(self._next_seq, segment.end_seq)

    def _lost(self, segment: _Segment, start: int, end: int, why: str = "") -> None:
        start = max(start, self._corrupt_counted_below)
        if end <= start:
            return
        self._corrupt_counted_below = end
        self._count_corrupt(end - start, why or f"{segment.name}: {end - start} damaged records "
                            f"skipped (sequence numbers {start} to {end - 1})")

    def _count_corrupt(self, count: int, message: str) -> None:
        self._on_drop("corrupt", count)
        log.error("spool %s: %s; counted as dropped (corrupt)", self.directory, message)

    def _segment_of(self, seq: int) -> _Segment | None:
        for segment in self._segments:
            if seq < segment.end_seq:
                return segment
        return None

    def ack(self, through_seq: int) -> None:
        """Everything up to `through_seq` is delivered (or given up): forget it for good.

        Never raises: a full disk only delays writing the acked file (the next `sync` tries
        again); segments wholly delivered are deleted all the same, which frees room.
        """
        with self._lock:
            if through_seq <= self._acked or self._dir_fd < 0:
                return
            self._acked = through_seq
            while self._segments:
                segment = self._segments[0]
                if segment.end_seq - 1 > through_seq:
                    break
                if segment is self._segments[-1]:
                    # Keep writing into it; it is empty of waiting records and stays small.
                    if segment.size < self._segment_bytes // 4:
                        break
                    if self._fd >= 0:
                        os.close(self._fd)
                        self._fd = -1
                self._forget_segment()
            self._write_acked()

    def _write_acked(self) -> None:
        if self._acked == self._acked_on_disk or self._dir_fd < 0:
            return
        try:
            atomic_write(self._dir_fd, ACKED_FILE, f"{self._acked}\n".encode(), mode=0o600)
            self._acked_on_disk = self._acked
        except OSError as exc:
            now = time.monotonic()
            if now - self._acked_logged_at >= ERROR_LOG_SECONDS:
                self._acked_logged_at = now
                log.error("spool %s: cannot write the acked file (%s); trying again; a restart "
                          "before it is written sends some delivered records again",
                          self.directory, exc.strerror or exc)

    def rewind(self) -> None:
        """Hand out again every record not yet acknowledged (after the flusher forgot a batch)."""
        with self._lock:
            self._rewind_reader()

    def sync(self, *, force: bool = False) -> None:
        """The flusher's turn at the disk: make written records survive a power loss at most
        `sync_interval` after the write, retry the acked file, keep headroom on a filling
        filesystem, and set up again a spool that could not be."""
        now = time.monotonic()
        with self._lock:
            if self._dir_fd < 0:
                if now >= self._reopen_at:
                    self._open()
                return
            self._write_acked()
            if now >= self._next_headroom_check:
                self._next_headroom_check = now + 1.0
                self._keep_headroom()
            if not self._dirty_since or self._fd < 0:
                return
            if not force and now - self._dirty_since < self.sync_interval:
                return
            fd = os.dup(self._fd)
            self._dirty_since = 0.0
        try:
            os.fdatasync(fd)
        except OSError as exc:
            log.error("spool %s: fdatasync failed: %s", self.directory, exc.strerror or exc)
        finally:
            os.close(fd)

    def _keep_headroom(self) -> None:
        failed, self._errors_since_check = self._errors_since_check, 0
        try:
            info = os.statvfs(self._dir_fd)
        except OSError:
            return
        self._errors_since_check = failed
        free = info.f_bavail * info.f_frsize
        reserve = min(HEADROOM_BYTES, HEADROOM_SHARE * info.f_blocks * info.f_frsize)
        # Only when the spool is what fills the disk (it holds more than the reserve), or a
        # line could not be written: a disk filled by others is no reason to give up backlog.
        if free < reserve and (self._bytes > reserve or self._errors_since_check) and \
                self._waiting_records() and len(self._segments) > 1:
            before = self._first_waiting()
            self._free_space()
            self._errors_since_check = 0
            log.error("spool %s: the filesystem is nearly full (%d bytes free); gave up the "
                      "oldest %d waiting records (disk_full)", self.directory, free,
                      self._first_waiting() - before)

    def depth(self) -> tuple[int, int]:
        """Records waiting (in flight included) and the bytes their segments hold."""
        with self._lock:
            return self._waiting_records(), self._bytes

    def pending_unread(self) -> int:
        """Records written and not yet handed to the flusher."""
        with self._lock:
            return max(0, self._next_seq - self._read_seq)

    def oldest_accepted_at(self) -> float | None:
        """When the oldest waiting record was accepted, if any waits."""
        with self._lock:
            if self._waiting_records() <= 0:
                return None
            seq = self._first_waiting()
            segment = self._segment_of(seq)
            if segment is None:
                return None
            try:
                fd = self._open_segment(segment.name, os.O_RDONLY)
            except OSError:
                return None
            size = segment.size
        try:
            return _first_accepted_at(fd, size, seq)
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.fdatasync(self._fd)
                os.close(self._fd)
                self._fd = -1
            with contextlib.suppress(OSError):
                self._write_acked()
            if self._dir_fd >= 0:
                os.close(self._dir_fd)
                self._dir_fd = -1


def _acked_in(dir_fd: int) -> int:
    """The highest sequence number delivered, as the directory's `acked` file says (0 if it
    has none, or none that reads as a number). Raises OSError for anything but a regular
    file there (a planted link: never read through it)."""
    try:
        fd = os.open(ACKED_FILE, os.O_RDONLY | FILE_FLAGS | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return 0
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePath(f"{ACKED_FILE} is not a regular file")
        return int(os.read(fd, 64).decode().strip() or 0)
    except ValueError:
        return 0
    finally:
        os.close(fd)


def _segment_firsts(dir_fd: int) -> list[int]:
    """The first sequence numbers of the directory's segment files, in order."""
    return sorted(int(name[:-len(SEGMENT_SUFFIX)]) for name in os.listdir(dir_fd)
                  if name.endswith(SEGMENT_SUFFIX) and name[:-len(SEGMENT_SUFFIX)].isdigit())


def _first_format(head: bytes) -> bool:
    """Whether a segment that lacks the magic starts with an intact record of the first
    format (only such a file is rewritten; damage alone never is)."""
    if len(head) < _V1_HEADER.size:
        return False
    length, crc, kind, _ = _V1_HEADER.unpack_from(head)
    payload = head[_V1_HEADER.size:_V1_HEADER.size + length]
    return bool(kind <= KIND_MAX and len(payload) == length and zlib.crc32(payload) == crc)


def _first_accepted_at(fd: int, size: int, seq: int) -> float | None:
    reader = _Reader(fd, len(FILE_MAGIC), size)
    while (found := reader.next()) is not None:
        if found.seq >= seq:
            return found.accepted_at
    return None


def inspect_spool(directory: Path) -> tuple[int, int, float | None]:
    """Records waiting, bytes held and the oldest waiting record's time, without changing
    anything (for `osquery-aws-logger status` while the extension may be running)."""
    try:
        dir_fd = os.open(directory, DIR_FLAGS)
    except OSError:
        return 0, 0, None
    try:
        acked = 0
        with contextlib.suppress(OSError):
            acked = _acked_in(dir_fd)
        segments = []
        for first in _segment_firsts(dir_fd):
            name = _segment_name(first)
            with contextlib.suppress(OSError):
                segments.append((first, name,
                                 os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_size))
        if not segments:
            return 0, 0, None
        size = sum(s for _, _, s in segments)
        last_first, last_name, last_size = segments[-1]
        last_seq = last_first - 1
        with contextlib.suppress(OSError):
            fd = os.open(last_name, os.O_RDONLY | FILE_FLAGS, dir_fd=dir_fd)
            try:
                if os.pread(fd, len(FILE_MAGIC), 0) == FILE_MAGIC:
                    reader = _Reader(fd, len(FILE_MAGIC), last_size)
                    while (found := reader.next()) is not None:
                        last_seq = max(last_seq, found.seq)
                else:  # the first format: count its whole records
                    data = os.pread(fd, last_size, 0)
                    offset = 0
                    while offset + _V1_HEADER.size <= len(data):
                        length = _V1_HEADER.unpack_from(data, offset)[0]
                        offset += _V1_HEADER.size + length
                        if offset <= len(data):
                            last_seq += 1
            finally:
                os.close(fd)
        first_waiting = max(acked + 1, segments[0][0])
        records = max(0, last_seq + 1 - first_waiting)
        oldest = None
        if records:
            for index, (first, name, seg_size) in enumerate(segments):
                end = segments[index + 1][0] if index + 1 < len(segments) else last_seq + 1
                if first_waiting < end:
                    with contextlib.suppress(OSError):
                        fd = os.open(name, os.O_RDONLY | FILE_FLAGS, dir_fd=dir_fd)
                        try:
                            oldest = _first_accepted_at(fd, seg_size, max(first_waiting, first))
                        finally:
                            os.close(fd)
                    break
        return records, size, oldest
    finally:
        os.close(dir_fd)
