"""The durable spool: every accepted line is on disk before osqueryd's call is answered.

Why append-only segment files and not sqlite3: the thrift side must answer within microseconds,
and a record here costs one ``os.write`` of header and payload (no transaction, no index, no
page rewrite). The kernel holds the bytes once ``write`` returns, so a ``kill -9`` of the
extension or a restart of osqueryd loses nothing; the flusher thread ``fdatasync``s the segment
being written at most ``sync_interval`` seconds (1 s) after a write, which bounds what a power
loss can take. Delivery order is the file order, so no index is needed: a record is identified
by its sequence number, a segment file is named after the sequence number of its first record,
and the ``acked`` file holds the highest sequence number delivered. Segments wholly delivered
are deleted. Past a cap, the oldest whole segment of waiting records is deleted and its records
are counted as dropped; segments hold at most 1/16 of the record cap, so a drop takes a small
slice of the oldest records, never the newest.

Record layout: ``<length u32><crc32 u32><kind u8><accepted_at f64>`` then ``length`` bytes.
A torn tail (power loss mid-write) fails its length or checksum and is cut off at start.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

HEADER: Final = struct.Struct("<IIBd")
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
    path: Path
    count: int = 0
    size: int = 0  # bytes in the file, headers included


DropCallback = Callable[[str, int], None]


def _read_acked(directory: Path) -> int:
    """The highest sequence number delivered, as the `acked` file says (0 if none)."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        return int((directory / ACKED_FILE).read_text().strip() or 0)
    return 0


def _segment_firsts(directory: Path) -> list[int]:
    """The first sequence numbers of the segment files, in order."""
    firsts = []
    for path in directory.glob("*" + SEGMENT_SUFFIX):
        with contextlib.suppress(ValueError):
            firsts.append(int(path.stem))
    return sorted(firsts)


def _segment_path(directory: Path, first: int) -> Path:
    return directory / f"{first:020d}{SEGMENT_SUFFIX}"


def _whole_records(data: bytes) -> tuple[int, int]:
    """How many whole, intact records `data` starts with, and the offset after them."""
    offset = count = 0
    while offset + HEADER.size <= len(data):
        length, crc, kind, _ = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if kind > KIND_MAX or end > len(data) or zlib.crc32(data[offset + HEADER.size:end]) != crc:
            break
        offset = end
        count += 1
    return count, offset


def _read_segment(path: Path, offset: int, end: int, seq: int, first_seq: int, *,
                  limit: int, max_bytes: int = 1 << 62) -> tuple[list[SpooledRecord], int, int, bool]:
    """Read up to `limit` records of one segment, from record `seq` at byte `offset` (or -1
    when only the sequence number is known, which scans from the segment's start).

    Answers the records, the byte offset and sequence number after them, and whether a record
    failed its checksum (the rest of the segment is then unreadable).
    """
    skip = 0
    if offset < 0:
        offset, skip = 0, seq - first_seq
    records: list[SpooledRecord] = []
    taken = 0
    with open(path, "rb") as handle:
        handle.seek(offset)
        buffer, pos = b"", 0
        while len(records) < limit and taken < max_bytes and offset < end:
            if len(buffer) - pos < HEADER.size:
                buffer, pos = buffer[pos:] + handle.read(READ_CHUNK), 0
                if len(buffer) < HEADER.size:
                    return records, offset, seq, True
            length, crc, kind, accepted_at = HEADER.unpack_from(buffer, pos)
            if kind > KIND_MAX or length > MAX_RECORD_BYTES:
                return records, offset, seq, True
            total = HEADER.size + length
            if len(buffer) - pos < total:
                buffer, pos = buffer[pos:] + handle.read(max(READ_CHUNK, total)), 0
                if len(buffer) < total:
                    return records, offset, seq, True
            data = buffer[pos + HEADER.size:pos + total]
            if zlib.crc32(data) != crc:
                return records, offset, seq, True
            pos += total
            offset += total
            if skip:
                skip -= 1
                continue
            records.append(SpooledRecord(seq, kind, data, accepted_at))
            taken += length
            seq += 1
    return records, offset, seq, False


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
        self._fd = -1
        self._dirty_since = 0.0
        self._next_seq = 1
        self._acked = 0
        self._read_seq = 1
        self._read_pos: tuple[int, int] = (0, 0)  # (segment first_seq, offset) of _read_seq
        #: Records numbered below this were dropped by a cap, including any the flusher had
        #: already read: it must not send them (they are counted as dropped, and off disk).
        self.dropped_below = 0
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        self._recover()

    # -- start-up ---------------------------------------------------------------------------

    def _recover(self) -> None:
        self._acked = _read_acked(self.directory)
        firsts = _segment_firsts(self.directory)
        for index, first in enumerate(firsts):
            path = _segment_path(self.directory, first)
            segment = _Segment(first, path)
            if index + 1 < len(firsts):
                # Closed segments were fsynced when they rolled: their count follows from names.
                segment.count = firsts[index + 1] - first
                segment.size = path.stat().st_size
            else:
                segment.count, segment.size = self._scan_tail(path)
            if first + segment.count - 1 <= self._acked:
                path.unlink()
                continue
            self._segments.append(segment)
            self._bytes += segment.size
        if self._segments:
            last = self._segments[-1]
            self._next_seq = last.first_seq + last.count
        self._next_seq = max(self._next_seq, self._acked + 1)
        self._rewind_reader()

    @staticmethod
    def _scan_tail(path: Path) -> tuple[int, int]:
        """Count the whole records of the last segment and cut off a torn tail."""
        data = path.read_bytes()
        count, offset = _whole_records(data)
        if offset != len(data):
            with open(path, "r+b") as handle:
                handle.truncate(offset)
                os.fsync(handle.fileno())
        return count, offset

    def _rewind_reader(self) -> None:
        """Point the reader at the oldest record not yet delivered."""
        self._read_seq = max(self._acked + 1, self.dropped_below)
        self._read_pos = (0, 0)
        for segment in self._segments:
            if segment.first_seq + segment.count > self._read_seq:
                if segment.first_seq >= self._read_seq:
                    self._read_seq = segment.first_seq
                    self._read_pos = (segment.first_seq, 0)
                else:
                    self._read_pos = (segment.first_seq, -1)  # resolved lazily by a scan
                return
        self._read_seq = self._next_seq

    # -- the thrift side ----------------------------------------------------------------------

    def append(self, kind: int, data: bytes) -> int:
        """Write one record; answer how many records wait unread (0 if this one was not kept).

        Never raises, never blocks on the network.
        """
        if len(data) > MAX_RECORD_BYTES:
            self._on_drop("oversize", 1)
            return 0
        record = HEADER.pack(len(data), zlib.crc32(data), kind, time.time()) + data
        with self._lock:
            try:
                if self._fd < 0 or self._needs_roll():
                    self._roll()
                os.write(self._fd, record)
            except OSError:
                self._on_drop("spool_error", 1)
                return 0
            segment = self._segments[-1]
            segment.count += 1
            segment.size += len(record)
            self._bytes += len(record)
            self._next_seq += 1
            if not self._dirty_since:
                self._dirty_since = time.monotonic()
            self._enforce_caps()
            return self._next_seq - self._read_seq

    def _needs_roll(self) -> bool:
        segment = self._segments[-1]
        return segment.count >= self._segment_records or segment.size >= self._segment_bytes

    def _roll(self) -> None:
        if self._fd >= 0:
            # A closed segment's record count is read from the names at start: make it durable.
            os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._segments and self._segments[-1].count == 0:
            segment = self._segments[-1]
        else:
            segment = _Segment(self._next_seq, _segment_path(self.directory, self._next_seq))
            self._segments.append(segment)
        self._fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def set_caps(self, max_records: int, max_bytes: int) -> None:
        """New caps, in force at once: the oldest records past them are dropped and counted."""
        with self._lock:
            self.max_records, self.max_bytes = max_records, max_bytes
            self._segment_records = max(1, min(4096, max_records // 16))
            self._segment_bytes = max(64 << 10, min(16 << 20, max_bytes // 16))
            if self._fd >= 0 and self._segments and self._needs_roll():
                self._roll()  # so the old, larger segment can go whole
            self._enforce_caps()

    def _waiting_records(self) -> int:
        if not self._segments:
            return 0
        return self._next_seq - self._first_waiting()

    def _first_waiting(self) -> int:
        return max(self._acked + 1, self._segments[0].first_seq, self.dropped_below)

    def _drop_below(self, floor: int, reason: str) -> None:
        """Give up every waiting record numbered below `floor`, counting them under `reason`;
        those the flusher already holds too (they are off disk, or soon will be)."""
        lost = floor - self._first_waiting()
        if lost > 0:
            self._on_drop(reason, lost)
        self.dropped_below = max(self.dropped_below, floor)
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
            oldest = self._segments[0]
            self._drop_below(oldest.first_seq + oldest.count, "cap_bytes")
            self._forget_segment()
        # Segments wholly below the floor hold nothing waiting: delete them.
        while len(self._segments) > 1 and \
                self._segments[0].first_seq + self._segments[0].count <= self.dropped_below:
            self._forget_segment()

    def _forget_segment(self) -> None:
        oldest = self._segments.pop(0)
        self._bytes -= oldest.size
        with contextlib.suppress(FileNotFoundError):
            oldest.path.unlink()

    # -- the flusher side ---------------------------------------------------------------------

    def read(self, max_records: int, max_bytes: int = 1 << 62) -> list[SpooledRecord]:
        """The next records after those already handed out, oldest first: at most
        `max_records`, and no more once `max_bytes` of payload are read (at least one)."""
        out: list[SpooledRecord] = []
        taken = 0
        while len(out) < max_records and taken < max_bytes:
            with self._lock:
                if self._read_seq >= self._next_seq:
                    break
                segment = self._segment_of(self._read_seq)
                if segment is None:
                    break
                seq = self._read_seq
                first, offset = self._read_pos
                if first != segment.first_seq:
                    offset = 0 if seq == segment.first_seq else -1
                end = segment.size
            try:
                records, offset, next_seq, corrupt = _read_segment(
                    segment.path, offset, end, seq, segment.first_seq,
                    limit=max_records - len(out), max_bytes=max_bytes - taken)
            except FileNotFoundError:
                continue  # a cap dropped it while we read; the reader was moved on
            with self._lock:
                if self._read_seq != seq:
                    continue  # a cap dropped (and counted) what we read: don't also deliver it
                out.extend(records)
                taken += sum(len(r.data) for r in records)
                if corrupt:
                    after = segment.first_seq + segment.count
                    self._on_drop("corrupt", after - next_seq)
                    self._read_seq, self._read_pos = after, (after, 0)
                else:
                    self._read_seq, self._read_pos = next_seq, (segment.first_seq, offset)
            if not records and not corrupt:
                break
        return out

    def _segment_of(self, seq: int) -> _Segment | None:
        for segment in self._segments:
            if seq < segment.first_seq + segment.count:
                return segment
        return None

    def ack(self, through_seq: int) -> None:
        """Everything up to `through_seq` is delivered (or given up): forget it for good."""
        with self._lock:
            if through_seq <= self._acked:
                return
            self._acked = through_seq
            while self._segments:
                segment = self._segments[0]
                if segment.first_seq + segment.count - 1 > through_seq:
                    break
                if segment is self._segments[-1]:
                    # Keep writing into it; it is empty of waiting records and stays small.
                    if segment.size < self._segment_bytes // 4:
                        break
                    if self._fd >= 0:
                        os.close(self._fd)
                        self._fd = -1
                self._segments.pop(0)
                self._bytes -= segment.size
                with contextlib.suppress(FileNotFoundError):
                    segment.path.unlink()
        tmp = self.directory / (ACKED_FILE + ".tmp")
        tmp.write_text(f"{through_seq}\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.directory / ACKED_FILE)

    def rewind(self) -> None:
        """Hand out again every record not yet acknowledged (after the flusher forgot a batch)."""
        with self._lock:
            self._rewind_reader()

    def sync(self, *, force: bool = False) -> None:
        """Make written records survive a power loss, at most `sync_interval` after the write."""
        with self._lock:
            if not self._dirty_since or self._fd < 0:
                return
            if not force and time.monotonic() - self._dirty_since < self.sync_interval:
                return
            fd = os.dup(self._fd)
            self._dirty_since = 0.0
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def depth(self) -> tuple[int, int]:
        """Records waiting (in flight included) and the bytes their segments hold."""
        with self._lock:
            return self._waiting_records(), self._bytes

    def pending_unread(self) -> int:
        """Records written and not yet handed to the flusher."""
        with self._lock:
            return self._next_seq - self._read_seq

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
            records, _, _, _ = _read_segment(segment.path, -1, segment.size, seq,
                                             segment.first_seq, limit=1)
        except FileNotFoundError:
            return None
        return records[0].accepted_at if records else None

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.fdatasync(self._fd)
                os.close(self._fd)
                self._fd = -1


def inspect_spool(directory: Path) -> tuple[int, int, float | None]:
    """Records waiting, bytes held and the oldest waiting record's time, without changing
    anything (for `osquery-aws-logger status` while the extension may be running)."""
    acked = _read_acked(directory)
    segments = []
    for first in _segment_firsts(directory):
        path = _segment_path(directory, first)
        with contextlib.suppress(OSError):
            segments.append((first, path, path.stat().st_size))
    if not segments:
        return 0, 0, None
    size = sum(s for _, _, s in segments)
    last_first, last_path, _ = segments[-1]
    last_count = 0
    with contextlib.suppress(OSError):
        last_count, _ = _whole_records(last_path.read_bytes())
    first_waiting = max(acked + 1, segments[0][0])
    records = max(0, last_first + last_count - first_waiting)
    oldest = None
    if records:
        for index, (first, path, seg_size) in enumerate(segments):
            end = segments[index + 1][0] if index + 1 < len(segments) else last_first + last_count
            if first_waiting < end:
                with contextlib.suppress(OSError):
                    found, _, _, _ = _read_segment(path, -1, seg_size, max(first_waiting, first),
                                                   first, limit=1)
                    oldest = found[0].accepted_at if found else None
                break
    return records, size, oldest
