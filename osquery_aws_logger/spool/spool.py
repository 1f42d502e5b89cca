"""The durable spool: every accepted line is on disk before osqueryd's call is answered.

Why append-only segment files and not sqlite3: the thrift side must answer within microseconds,
and a record here costs one ``os.write`` of header and payload (no transaction, no index, no
page rewrite). The kernel holds the bytes once ``write`` returns, so a ``kill -9`` of the
extension or a restart of osqueryd loses nothing; the flusher thread ``fdatasync``s the segment
being written at most ``sync_interval`` seconds (1 s) after a write, which bounds what a power
loss can take. Delivery order is the file order, so no index is needed: records are numbered
(``seq``) and so are the rows they hold (``row``); a segment file is named after the numbers of
its first record (``<seq>-<row>.seg``), the ledger (``_ledger``) holds the last record
delivered, and segments wholly delivered are deleted. The record format and its reader are in
``_record``.

Counting is in rows: a batch-format line holds many. Whatever is given up is counted by the
rows it held, read or not: past the record cap the oldest waiting records go; past the byte cap,
or when the filesystem is nearly full, the oldest whole segment does (the oldest across every
spool of the group on that filesystem, so two plugins share the room fairly); damage costs the
records it touches (``corrupt``).

Nothing here follows a symlink: the directory is opened with ``O_NOFOLLOW`` after its
ancestors are checked as osquery checks extension paths, and every file is opened relative to
that descriptor (``_safefs``). No spool problem raises into the thrift side or ends the
process: a spool that cannot be set up counts each line as dropped (``spool_error``), says
why in ``problem``, and is set up again by the flusher's next ``sync`` after a pause. A spool
that is not in use can let go of its descriptors (`release`) and takes them again when next
used, so thousands of routed destinations fit a process limit of 1,024 descriptors.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from pathlib import Path
from typing import Final

from ..files import UnsafePath, atomic_write
from ..platform import fdatasync
from .contract import DropCallback, SpoolLike
from .group import SpoolGroup
from .handle import DirectoryHandle
from .ledger import LEDGER_FILE, Ledger
from .record import (
    FILE_MAGIC,
    KIND_RESULT,
    KIND_STATUS,
    MAX_RECORD_BYTES,
    Reader,
    SpooledRecord,
)
from .recovery import recover
from .segments import (
    SEGMENT_SUFFIX,
    Migration,
    Segment,
    Segments,
    child_spools,
    plain,
    segment_files,
    segment_name,
)

log = logging.getLogger("osquery_aws_logger.spool")

#: Seconds between attempts to set up a spool that could not be (permissions, a bad path).
REOPEN_SECONDS: Final = 10.0
#: At most one line per this many seconds about failing writes.
ERROR_LOG_SECONDS: Final = 10.0


class Spool:
    """A durable FIFO of one plugin's (or one routed destination's) records, written by the
    thrift side (or the router) and read by the flusher.

    ``append`` is the only method the thrift side calls; everything else belongs to the flusher.
    """

    def __init__(self, directory: Path, *, max_records: int, max_bytes: int,
                 on_drop: DropCallback, sync_interval: float = 1.0,
                 group: SpoolGroup | None = None, releasable: bool = False,
                 migrate: Migration = plain) -> None:
        self.directory = directory
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.sync_interval = sync_interval
        self.releasable = releasable
        self.lock = threading.Lock()
        self._on_drop = on_drop
        self._migrate = migrate
        self._group = group if group is not None else SpoolGroup()
        self._dir = DirectoryHandle(directory)
        self._segments = Segments(self._dir, make_room=self._free_space)
        self._segments.size(max_records, max_bytes)
        self._acked = 0
        self._acked_row = 0
        self._ledger = Ledger()
        self._ledger_written = (0, 0)
        self._read_seq = 1
        self._read_row = 0
        self._read_pos: tuple[int, int] = (0, 0)  # (segment first_seq, offset) of _read_seq
        #: Records numbered below this were given up (a cap, a full disk), including any the
        #: flusher had already read: it must not send them; it counts those, under this reason.
        self.dropped_below = 0
        self.dropped_reason = "cap_records"
        #: Damage already counted: gaps below this (seq, row) are not counted again.
        self._corrupt_counted_below = (0, 0)
        #: Why the spool cannot take lines now ("" when it can).
        self.problem = ""
        self._reopen_at = 0.0
        self._error_logged_at = -ERROR_LOG_SECONDS
        self._ledger_logged_at = -ERROR_LOG_SECONDS
        self._errors_unlogged = 0
        self._errors_since_check = 0
        self._oldest: tuple[int, float] | None = None  # (seq, accepted_at) last looked up
        self._reopened = False  # descriptors taken again since the group last heard
        self._waiting_rows = 0  # the last figure waiting_rows() took
        self._group.join(self)
        self._open()
        if self._dir.fd >= 0:
            self._note_open()

    # -- set-up -------------------------------------------------------------------------------

    def _open(self) -> None:
        """Set the spool up, or record why it cannot be (never raises)."""
        try:
            self._dir.open()
            self._segments.size(self.max_records, self.max_bytes)
            self._recover()
        except (OSError, ValueError) as exc:
            self._unusable(exc)
            return
        if self.problem:
            log.warning("spool %s usable again", self.directory)
        self.problem = ""

    def _unusable(self, exc: Exception) -> None:
        self._dir.close()
        self._segments.clear()
        reason = str(exc) if isinstance(exc, UnsafePath) else \
            f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
        problem = f"spool {self.directory} unusable: {reason}"
        if problem != self.problem:
            log.error("%s; lines are counted as dropped (spool_error) until it is fixed; "
                      "trying again every %.0fs", problem, REOPEN_SECONDS)
        self.problem = problem
        self._reopen_at = time.monotonic() + REOPEN_SECONDS

    def _recover(self) -> None:
        found = recover(self._dir.fd, self.directory, self._migrate, self._ledger,
                        self._count_corrupt, numbered=(self._segments.next_seq, self._segments.next_row))
        self._acked, self._acked_row = found.acked, found.acked_row
        self._ledger_written = (self._acked, self._acked_row)
        self._segments.restore(found.segments, found.bytes, found.next_seq, found.next_row)
        self._rewind_reader()

    def _rewind_reader(self) -> None:
        """Point the reader at the oldest record not yet delivered."""
        self._read_seq = max(self._acked + 1, self.dropped_below)
        self._read_pos = (0, 0)
        for segment in self._segments.list:
            if segment.end_seq > self._read_seq:
                if segment.first_seq >= self._read_seq:
                    self._read_seq = segment.first_seq
                    self._read_pos = (segment.first_seq, len(FILE_MAGIC))
                self._read_row = self._segments.row_at(self._read_seq)
                return
        self._read_seq = self._segments.next_seq
        self._read_row = self._segments.next_row

    @property
    def group(self) -> SpoolGroup:
        return self._group

    @property
    def device(self) -> int:
        """The filesystem the spool is on (its room is shared with the group's others there)."""
        return self._dir.device

    def child(self, *parts: str, migrate: Migration = plain) -> Spool:
        """The spool of a directory below this one (a routed destination's): the same caps,
        counters and group; it lets go of its descriptors when idle."""
        return Spool(self.directory.joinpath(*parts), max_records=self.max_records,
                     max_bytes=self.max_bytes, on_drop=self._on_drop,
                     sync_interval=self.sync_interval, group=self._group, releasable=True,
                     migrate=migrate)

    def children(self, name: str) -> list[str]:
        """The directories inside subdirectory `name` of the spool that hold segments, sorted
        (never through a link; none when it is missing or cannot be read)."""
        with self.lock:
            if not self._usable():
                return []
            found = child_spools(self._dir.fd, name)
            if found is None:
                return []
        self._after_use()
        return found

    # -- descriptors ----------------------------------------------------------------------------

    def _note_open(self) -> None:
        for other in self._group.opened(self):
            other.release()

    def release(self) -> None:
        """Let go of the directory and segment descriptors until the spool is next used
        (only for a spool nobody appends to from the thrift side)."""
        with self.lock:
            if not self.releasable or self._dir.fd < 0:
                return
            self._close_fds()
            self._dir.release()
        self._group.closed(self)

    def _close_fds(self) -> None:
        self._segments.let_go()
        self._dir.close()

    def _usable(self) -> bool:
        """Whether the directory is open (reopened, if it was let go). Under the lock."""
        if not self._dir.released:
            return self._dir.fd >= 0
        problem = self._dir.take_again()
        if problem is not None:
            self._unusable(problem)
            return False
        self._reopened = True
        return True

    def _after_use(self) -> None:
        """Outside the lock: a spool that took its descriptors again may push others out."""
        if self._reopened:
            self._reopened = False
            self._note_open()

    # -- rows -----------------------------------------------------------------------------------

    def waiting_rows(self, *, read: bool = True) -> int:
        """Rows accepted and not yet delivered or given up (read or not). Without `read` no
        file is read for it (the socket loop's status table): where a segment found at start
        would have to be, the last figure taken is answered."""
        with self.lock:
            if not self._segments.list:
                return 0
            first = self._first_waiting()
            segment, _ = self._segments.segment_of(first)
            if not read and segment is not None and not segment.indexed \
                    and first > segment.first_seq:
                return self._waiting_rows
            self._waiting_rows = max(0, self._segments.next_row - self._segments.row_at(first))
            return self._waiting_rows

    # -- the thrift side ----------------------------------------------------------------------

    def append(self, kind: int, data: bytes | memoryview, *, rows: int = 1, key: str = "") -> int:
        """Write one record of `rows` rows; answer how many records wait unread (0 if this one
        was not kept, its rows then counted as dropped). Never raises, never blocks on the
        network."""
        if len(data) > MAX_RECORD_BYTES:
            self._on_drop("oversize", rows)
            return 0
        try:
            encoded_key = key.encode()
        except UnicodeEncodeError:
            encoded_key = key.encode("utf-8", "replace")
        with self.lock:
            if not self._usable():
                self._on_drop("spool_error", rows)
                return 0
            try:
                self._segments.append(kind, data, rows, encoded_key)
            except OSError as exc:
                self._write_failed(exc, rows)
                return 0
            self._enforce_caps()
            waiting = self._segments.next_seq - self._read_seq
        self._after_use()
        return waiting

    def _free_space(self) -> bool:
        """Make room after a full disk: start over a spool whose every record is delivered
        (its one segment may fill a small filesystem), else give up the oldest waiting
        segment of any spool on this filesystem (counted). False if nothing could go."""
        if self._segments.list and self._first_waiting() >= self._segments.next_seq:
            self._segments.forget_all()
            return True
        return self._group.free_oldest(self)

    def oldest_closed_segment_at(self) -> float | None:
        """When the first record of this spool's oldest waiting closed segment was accepted,
        if it has one that may go (the segment being written never does). Under the lock."""
        if len(self._segments.list) < 2 or not self._waiting_records():
            return None
        return self._segments.list[0].first_at

    def locked_oldest_closed_segment_at(self) -> float | None:
        with self.lock:
            return self.oldest_closed_segment_at()

    def give_up_oldest_segment(self, reason: str) -> tuple[int, int]:
        """Drop the oldest segment with what waits in it (counted): (bytes, records) freed.
        Under the lock."""
        if not self._usable():
            return 0, 0
        oldest = self._segments.list[0]
        records = max(0, oldest.end_seq - self._first_waiting())
        self._drop_below(oldest.end_seq, reason)
        self._segments.forget_oldest()
        return oldest.size, records

    def locked_give_up_oldest_segment(self, reason: str) -> tuple[int, int]:
        with self.lock:
            if self.oldest_closed_segment_at() is None:
                return 0, 0
            return self.give_up_oldest_segment(reason)

    def _write_failed(self, exc: OSError, rows: int) -> None:
        self._on_drop("spool_error", rows)
        self._errors_since_check += 1
        if exc.errno == errno.ENOENT and self._dir.fd >= 0 and not self._dir.present():
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

    def take_write_errors(self) -> int:
        with self.lock:
            failed, self._errors_since_check = self._errors_since_check, 0
            return failed

    def statvfs(self) -> os.statvfs_result | None:
        with self.lock:
            return self._dir.statvfs()

    def _lose_directory(self) -> None:
        """The directory was removed while in use: forget it and set it up again later
        (records that were in it are gone with it)."""
        self._segments.lose()
        self._dir.close()
        self.problem = f"spool {self.directory} unusable: its directory was removed"
        self._reopen_at = time.monotonic() + REOPEN_SECONDS
        log.error("%s; setting it up again in %.0fs", self.problem, REOPEN_SECONDS)

    def write_file(self, name: str, data: bytes, *, mode: int = 0o600) -> bool:
        """Replace a small file of the spool's own (state.json) through the spool's directory
        descriptor: never through a link, never for a spool refused or not set up. Answers
        whether it was written; a full disk only costs this update."""
        with self.lock:
            if not self._usable():
                return False
            try:
                atomic_write(self._dir.fd, name, data, mode=mode)
            except OSError:
                return False
        self._after_use()
        return True

    def _first_waiting(self) -> int:
        return max(self._acked + 1, self._segments.list[0].first_seq, self.dropped_below)

    def _waiting_records(self) -> int:
        if not self._segments.list:
            return 0
        return max(0, self._segments.next_seq - self._first_waiting())

    def _drop_below(self, floor: int, reason: str) -> None:
        """Give up every waiting record numbered below `floor`, those the flusher already holds
        too (they are off disk, or soon will be: it must not send them).

        Only the rows of records never handed out are counted here, under `reason`; the
        flusher counts those it held and lets go of (`dropped_reason` says why), and none it
        delivered first, so no row is counted both delivered and dropped.
        """
        start = max(self._first_waiting(), self._read_seq)
        if floor > start:
            rows = self._segments.row_at(floor) - (self._read_row if start == self._read_seq
                                          else self._segments.row_at(start))
            if rows > 0:
                self._on_drop(reason, rows)
        if floor > self.dropped_below:
            self.dropped_below, self.dropped_reason = floor, reason
        if floor - 1 > self._acked:
            # Given up is as good as delivered for a restart: never read back (it was counted).
            # The ledger is written at the flusher's next sync, not on the thrift side.
            self._acked, self._acked_row = floor - 1, self._segments.row_at(floor)
        if self._read_seq < floor:
            self._read_row = self._segments.row_at(floor)
            self._read_seq, self._read_pos = floor, (0, 0)  # position found by the next read

    def _enforce_caps(self) -> None:
        if not self._segments.list:
            return
        # The record cap keeps exactly the newest max_records.
        excess = self._waiting_records() - self.max_records
        if excess > 0:
            self._drop_below(self._first_waiting() + excess, "cap_records")
        # Bytes can only be given back a whole file at a time: the oldest segments go.
        while len(self._segments.list) > 1 and self._segments.bytes > self.max_bytes:
            self._drop_below(self._segments.list[0].end_seq, "cap_bytes")
            self._segments.forget_oldest()
        # Segments wholly below the floor hold nothing waiting: delete them.
        while len(self._segments.list) > 1 and self._segments.list[0].end_seq <= self.dropped_below:
            self._segments.forget_oldest()

    def set_caps(self, max_records: int, max_bytes: int) -> None:
        """New caps, in force at once: the oldest records past them are dropped and counted."""
        with self.lock:
            self.max_records, self.max_bytes = max_records, max_bytes
            self._segments.size(self.max_records, self.max_bytes)
            segments = self._segments
            if self._usable() and segments.fd >= 0 and segments.list and segments.needs_roll():
                with contextlib.suppress(OSError):
                    self._segments.roll()  # so the old, larger segment can go whole
            self._enforce_caps()
        self._after_use()

    # -- the flusher side ---------------------------------------------------------------------

    def read(self, max_records: int, max_bytes: int = 1 << 62) -> list[SpooledRecord]:
        """The next records after those already handed out, oldest first: at most
        `max_records`, and no more once `max_bytes` of payload are read (at least one)."""
        out: list[SpooledRecord] = []
        taken = 0
        while len(out) < max_records and taken < max_bytes:
            with self.lock:
                if not self._usable() or self._read_seq >= self._segments.next_seq:
                    break
                segment, index = self._segments.segment_of(self._read_seq)
                if segment is None:
                    break
                seq, row = self._read_seq, self._read_row
                first, offset = self._read_pos
                if first != segment.first_seq:
                    offset = len(FILE_MAGIC)  # from the start, skipping what is already read
                ends = (segment.size, segment.end_seq, self._segments.end_row(index))
                try:
                    fd = self._segments.open(segment.name, os.O_RDONLY)
                except OSError as exc:
                    self._segment_gone(segment, index, seq, row, exc)
                    continue
            try:
                records, offset, next_seq, next_row = self._read_from(
                    fd, segment, offset, ends, (seq, row), limit=max_records - len(out),
                    max_bytes=max_bytes - taken)
            finally:
                os.close(fd)
            with self.lock:
                if self._read_seq != seq:
                    continue  # a cap dropped (and counted) what we read: don't also deliver it
                out.extend(records)
                taken += sum(len(r.data) for r in records)
                self._read_seq, self._read_row = next_seq, next_row
                self._read_pos = (segment.first_seq, offset)
                if not records and next_seq == seq:
                    break
        self._after_use()
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
                self._lost(segment, (expected, expected_row), (record_seq, found.row))
            records.append(found)
            taken += len(found.data)
            expected, expected_row = record_seq + 1, found.row + found.rows  # its end_row
        else:
            return records, reader.offset, expected, expected_row
        if reader.offset >= end and expected < end_seq:
            # Damage ran to the end of the segment: everything after the last good record.
            self._lost(segment, (expected, expected_row), (end_seq, end_row))
            expected, expected_row = end_seq, end_row
        return records, reader.offset, expected, expected_row

    def _segment_gone(self, segment: Segment, index: int, seq: int, row: int,
                      exc: OSError) -> None:
        """A segment that cannot be opened (deleted by hand, a failing disk): its waiting
        records are counted as lost and the reader moves past it, so it never spins on it."""
        end_row = self._segments.end_row(index)
        self._lost(segment, (seq, row), (segment.end_seq, end_row),
                   f"{segment.name} could not be read ({exc.strerror or exc})")
        self._segments.remove(segment, end_row)
        self._read_seq, self._read_row, self._read_pos = segment.end_seq, end_row, (0, 0)
        self.dropped_below = max(self.dropped_below, segment.end_seq)

    def _lost(self, segment: Segment, start: tuple[int, int], end: tuple[int, int],
              why: str = "") -> None:
        """Records `start` to `end` (each a (seq, row)) are lost to damage: count their rows
        (their records, where the rows cannot be told) once."""
        start_seq, start_row = max(start, self._corrupt_counted_below)
        end_seq, end_row = end
        if end_seq <= start_seq:
            return
        self._corrupt_counted_below = end
        rows = end_row - start_row if end_row >= start_row else end_seq - start_seq
        self._count_corrupt(rows, why or f"{segment.name}: {end_seq - start_seq} damaged "
                            f"records skipped (sequence numbers {start_seq} to {end_seq - 1}, "
                            f"{rows} rows)")

    def _count_corrupt(self, rows: int, message: str) -> None:
        if rows:
            self._on_drop("corrupt", rows)
        log.error("spool %s: %s; counted as dropped (corrupt)", self.directory, message)

    def read_span(self, record: SpooledRecord, start: int, end: int) -> bytes | None:
        """Bytes `start` to `end` of a record's payload, read again from its segment (a big
        line is read a call's worth at a time instead of held whole); None when the segment
        has gone (a cap or a full disk gave it up: counted there)."""
        with self.lock:
            if not self._usable():
                return None
            try:
                fd = self._segments.open(record.segment, os.O_RDONLY)
            except OSError:
                return None
        try:
            return os.pread(fd, end - start, record.offset + start)
        except OSError:
            return None
        finally:
            os.close(fd)
            self._after_use()

    def ack(self, through_seq: int) -> None:
        """Everything up to `through_seq` is delivered (or given up): forget it for good.

        Never raises and never needs free space: the ledger is written in place, and segments
        wholly delivered are deleted whether or not it could be.
        """
        with self.lock:
            if through_seq <= self._acked or not self._usable():
                return
            self._acked_row = self._segments.row_at(through_seq + 1)
            self._acked = through_seq
            self._segments.forget_through(through_seq)
            self._write_ledger()
        self._after_use()

    def _write_ledger(self) -> None:
        position = (self._acked, self._acked_row)
        if position == self._ledger_written or self._dir.fd < 0:
            return
        try:
            self._ledger.write(self._dir.fd, *position)
            self._ledger_written = position
        except OSError as exc:
            now = time.monotonic()
            if now - self._ledger_logged_at >= ERROR_LOG_SECONDS:
                self._ledger_logged_at = now
                log.error("spool %s: cannot write the %s (%s); trying again; a restart "
                          "before it is written sends some delivered records again",
                          self.directory, LEDGER_FILE, exc.strerror or exc)

    def rewind(self) -> None:
        """Hand out again every record not yet acknowledged (after the flusher forgot a batch)."""
        with self.lock:
            if self._segments.list:
                self._rewind_reader()

    def sync(self, *, force: bool = False) -> None:
        """The flusher's turn at the disk: make written records survive a power loss at most
        `sync_interval` after the write, retry the ledger, and set up again a spool that could
        not be."""
        now = time.monotonic()
        with self.lock:
            if self._dir.released:
                return
            if self._dir.fd < 0:
                if now >= self._reopen_at:
                    self._open()
                return
            self._write_ledger()
            fd = self._segments.due_sync(now, self.sync_interval, force=force)
            if fd < 0:
                return
        try:
            fdatasync(fd)
        except OSError as exc:
            log.error("spool %s: fdatasync failed: %s", self.directory, exc.strerror or exc)
        finally:
            os.close(fd)

    def depth(self) -> tuple[int, int]:
        """Records waiting (in flight included) and the bytes their segments hold."""
        with self.lock:
            return self._waiting_records(), self._segments.bytes

    def pending_unread(self) -> int:
        """Records written and not yet handed to the flusher."""
        with self.lock:
            return max(0, self._segments.next_seq - self._read_seq)

    def oldest_accepted_at(self) -> float | None:
        """When the oldest waiting record was accepted, if any waits (the flusher's: it may
        read a segment; the status table gets it from what the flusher publishes)."""
        with self.lock:
            if self._waiting_records() <= 0:
                return None
            seq = self._first_waiting()
            if self._oldest is not None and self._oldest[0] == seq:
                return self._oldest[1]
            segment, _ = self._segments.segment_of(seq)
            if segment is None:
                return None
            if seq == segment.first_seq and segment.first_at:
                self._oldest = (seq, segment.first_at)
                return segment.first_at
            if not self._usable():
                return None
            try:
                fd = self._segments.open(segment.name, os.O_RDONLY)
            except OSError:
                return None
            size = segment.size
        try:
            reader = Reader(fd, len(FILE_MAGIC), size)
            while (found := reader.next()) is not None:
                if found.seq >= seq:
                    self._oldest = (seq, found.accepted_at)
                    return found.accepted_at
            return None
        finally:
            os.close(fd)
            self._after_use()

    def close(self) -> None:
        with self.lock:
            if self._dir.fd >= 0:
                with contextlib.suppress(OSError):
                    self._write_ledger()
            self._close_fds()
        self._group.leave(self)


__all__ = ["KIND_RESULT", "KIND_STATUS", "SEGMENT_SUFFIX", "Spool", "SpoolGroup", "SpoolLike",
           "SpooledRecord", "segment_files", "segment_name"]
