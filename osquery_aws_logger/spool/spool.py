"""The durable spool: every accepted line is on disk before osqueryd's call is answered.

Why append-only segment files and not sqlite3: the thrift side must answer within microseconds,
and a record here costs one ``os.write`` of header and payload (no transaction, no index, no
page rewrite). The kernel holds the bytes once ``write`` returns, so a ``kill -9`` of the
extension or a restart of osqueryd loses nothing; the flusher thread ``fdatasync``s the segment
being written at most ``sync_interval`` seconds (1 s) after a write, which bounds what a power
loss can take. Delivery order is the file order, so no index is needed: records are numbered
(``seq``) and so are the rows they hold (``row``); a segment file is named after the numbers of
its first record (``<seq>-<row>.seg``), the ledger holds the last record delivered, and
segments wholly delivered are deleted.

Counting is in rows (a batch-format line holds many), and whatever is given up is counted:
past the caps (`backlog`), for room on the filesystem (`group`), to damage (`reading`).

Nothing here follows a symlink: the directory is opened with ``O_NOFOLLOW`` after its
ancestors are checked as osquery checks extension paths, and every file is opened relative to
that descriptor. No spool problem raises into the thrift side or ends the
process: a spool that cannot be set up counts each line as dropped (``spool_error``), says
why in ``problem``, and is set up again by the flusher's next ``sync`` after a pause. A spool
that is not in use can let go of its descriptors (`release`) and takes them again when next
used, so thousands of routed destinations fit a process limit of 1,024 descriptors.

This module is the facade: it holds the lock, sets the spool up (again), and answers the thrift
side, the flusher and the group from the parts (see the package's docstring).
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
from ..platform import RESOURCE_ERRNOS, fdatasync
from .backlog import Backlog
from .contract import DropCallback, SpoolLike
from .group import SpoolGroup
from .handle import DirectoryHandle
from .migration import Migration, plain
from .reading import Cursor, Damage, accepted_at
from .record import KIND_RESULT, KIND_STATUS, MAX_RECORD_BYTES, SpooledRecord
from .recovery import recover
from .segments import (
    SEGMENT_SUFFIX,
    Segments,
    WriteErrors,
    child_spools,
    record_rows,
    segment_files,
    segment_name,
)

log = logging.getLogger("osquery_aws_logger.spool")

#: Seconds between attempts to set up a spool that could not be (permissions, a bad path).
REOPEN_SECONDS: Final = 10.0


class Spool:
    """A durable FIFO of one plugin's (or one routed destination's) records, written by the
    thrift side (or the router) and read by the flusher.

    ``append`` is the only method the thrift side calls; everything else belongs to the flusher.
    Every part is used under ``lock``, but for the reading of segment files (`Cursor.read`,
    `read_span`, `oldest_accepted_at`) and the flusher's ``fdatasync``.
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
        self._damage = Damage(directory, on_drop)
        self._cursor = Cursor(self._segments, self._damage)
        self._backlog = Backlog(directory, self._segments, self._cursor, on_drop)
        #: Why the spool cannot take lines now ("" when it can).
        self.problem = ""
        self._reopen_at = 0.0
        self._all_indexed = False  # segments found closed at start, rows not yet learnt
        self._write_errors = WriteErrors(directory)
        self._reopened = False  # descriptors taken again since the group last heard
        self._group.join(self)
        self._open()
        if self._dir.fd >= 0:
            self._note_open()

    @property
    def dropped_below(self) -> int:
        """Records numbered below this were given up (a cap, a full disk), including any the
        flusher had already read: it must not send them; it counts those, under
        `dropped_reason`."""
        return self._cursor.dropped_below

    @property
    def dropped_reason(self) -> str:
        return self._cursor.dropped_reason

    @property
    def group(self) -> SpoolGroup:
        return self._group

    @property
    def device(self) -> int:
        """The filesystem the spool is on (its room is shared with the group's others there)."""
        return self._dir.device

    # -- set-up -------------------------------------------------------------------------------

    def _open(self) -> None:
        """Set the spool up, or record why it cannot be (never raises)."""
        try:
            self._dir.open()
            self._segments.size(self.max_records, self.max_bytes)
            found = recover(self._dir.fd, self.directory, self._migrate, self._backlog.ledger,
                            self._damage.count,
                            numbered=(self._segments.next_seq, self._segments.next_row))
            self._backlog.restore(found.acked, found.acked_row)
            self._segments.restore(found.segments, found.bytes, found.next_seq, found.next_row)
            self._backlog.rewind()
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

    def _lose_directory(self) -> None:
        """The directory was removed while in use: forget it and set it up again later
        (records that were in it are gone with it)."""
        self._segments.lose()
        self._dir.close()
        self.problem = f"spool {self.directory} unusable: its directory was removed"
        self._reopen_at = time.monotonic() + REOPEN_SECONDS
        log.error("%s; setting it up again in %.0fs", self.problem, REOPEN_SECONDS)

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
            self._segments.let_go()
            self._dir.release()
        self._group.closed(self)

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
            self._backlog.enforce_caps(self.max_records, self.max_bytes)
            waiting = self._segments.next_seq - self._cursor.seq
        self._after_use()
        return waiting

    def _free_space(self) -> bool:
        """Make room after a full disk: start over a spool whose every record is delivered
        (its one segment may fill a small filesystem), else give up the oldest waiting
        segment of any spool on this filesystem (counted). False if nothing could go."""
        if self._segments.list and self._backlog.first_waiting() >= self._segments.next_seq:
            self._segments.forget_all()
            return True
        return self._group.free_oldest(self)

    def _write_failed(self, exc: OSError, rows: int) -> None:
        self._on_drop("spool_error", rows)
        if exc.errno == errno.ENOENT and self._dir.fd >= 0 and not self._dir.present():
            self._lose_directory()
        self._write_errors.failed(exc)

    # -- the group: shared room -----------------------------------------------------------------

    def take_write_errors(self) -> int:
        with self.lock:
            return self._write_errors.take()

    def statvfs(self) -> os.statvfs_result | None:
        with self.lock:
            return self._dir.statvfs()

    def oldest_closed_segment_at(self) -> float | None:
        """When the first record of this spool's oldest waiting closed segment was accepted,
        if it has one that may go (the segment being written never does). Under the lock."""
        return self._backlog.oldest_closed_segment_at()

    def locked_oldest_closed_segment_at(self) -> float | None:
        with self.lock:
            return self.oldest_closed_segment_at()

    def give_up_oldest_segment(self, reason: str) -> tuple[int, int]:
        """Drop the oldest segment with what waits in it (counted): (bytes, records) freed.
        Under the lock."""
        if not self._usable():
            return 0, 0
        return self._backlog.give_up_oldest_segment(reason)

    def locked_give_up_oldest_segment(self, reason: str) -> tuple[int, int]:
        with self.lock:
            if self.oldest_closed_segment_at() is None:
                return 0, 0
            return self.give_up_oldest_segment(reason)

    def set_caps(self, max_records: int, max_bytes: int) -> None:
        """New caps, in force at once: the oldest records past them are dropped and counted."""
        with self.lock:
            self.max_records, self.max_bytes = max_records, max_bytes
            segments = self._segments
            segments.size(max_records, max_bytes)
            if self._usable() and segments.fd >= 0 and segments.list and segments.needs_roll():
                with contextlib.suppress(OSError):
                    segments.roll()  # so the old, larger segment can go whole
            self._backlog.enforce_caps(max_records, max_bytes)
        self._after_use()

    # -- the flusher side ---------------------------------------------------------------------

    def read(self, max_records: int, max_bytes: int = 1 << 62) -> list[SpooledRecord]:
        """The next records after those already handed out, oldest first: at most
        `max_records`, and no more once `max_bytes` of payload are read (at least one)."""
        out = self._cursor.read(self.lock, self._usable, max_records, max_bytes)
        self._after_use()
        return out

    def read_span(self, record: SpooledRecord, start: int, end: int) -> bytes | None:
        """Bytes `start` to `end` of a record's payload, read again from its segment (a big
        line is read a call's worth at a time instead of held whole); None when the segment
        has gone (a cap or a full disk gave it up: counted there). Raises OSError when this
        process is out of descriptors or memory for now: the segment is there, read later."""
        with self.lock:
            if not self._usable():
                return None
            try:
                fd = self._segments.open(record.segment, os.O_RDONLY)
            except OSError as exc:
                if exc.errno in RESOURCE_ERRNOS:
                    raise
                return None
        try:
            return os.pread(fd, end - start, record.offset + start)
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                raise
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
            if through_seq <= self._backlog.acked or not self._usable():
                return
            self._backlog.ack(through_seq)
            self._backlog.write_ledger(self._dir.fd)
        self._after_use()

    def rewind(self) -> int:
        """Hand out again every record not yet acknowledged (after the flusher forgot a batch);
        answer the floor below which nothing is handed out (`dropped_below`), read under the
        same lock: rows a reader held below it were given up, and are the reader's to count."""
        with self.lock:
            if self._segments.list:
                self._backlog.rewind()
            return self.dropped_below

    def sync(self, *, force: bool = False) -> None:
        """The flusher's turn at the disk: make written records survive a power loss at most
        `sync_interval` after the write, retry the ledger, and set up again a spool that could
        not be."""
        now = time.monotonic()
        self._index_found()
        with self.lock:
            if self._dir.released:
                return
            if self._dir.fd < 0:
                if now >= self._reopen_at:
                    self._open()
                return
            self._backlog.write_ledger(self._dir.fd)
            fd = self._segments.due_sync(now, self.sync_interval, force=force)
            if fd < 0:
                return
        try:
            fdatasync(fd)
        except OSError as exc:
            log.error("spool %s: fdatasync failed: %s", self.directory, exc.strerror or exc)
        finally:
            os.close(fd)

    def _index_found(self) -> None:
        """Learn the rows of each record of one segment found closed at start, reading it
        outside the lock (one a turn). A cap giving up part of such a segment needs them: done
        first here, the thrift side's append never reads a whole segment under the lock (about
        30 ms for 4 MB) when a cap drops rows from it."""
        if self._all_indexed:
            return
        with self.lock:
            if self._dir.fd < 0:
                return
            found = [(i, s) for i, s in enumerate(self._segments.list) if not s.indexed]
            if not found:
                self._all_indexed = True
                return
            index, segment = found[0]
            end_row = self._segments.end_row(index)
            try:
                fd = self._segments.open(segment.name, os.O_RDONLY)
            except OSError:
                return  # read at a later turn (or indexed where it is needed)
        try:
            counts = record_rows(fd, segment, end_row)
        finally:
            os.close(fd)
        with self.lock:
            if not segment.indexed and segment in self._segments.list:
                segment.counts, segment.indexed = counts, True

    # -- figures ----------------------------------------------------------------------------------

    def depth(self) -> tuple[int, int]:
        """Records waiting (in flight included) and the bytes their segments hold."""
        with self.lock:
            return self._backlog.waiting_records(), self._segments.bytes

    def pending_unread(self) -> int:
        """Records written and not yet handed to the flusher."""
        with self.lock:
            return max(0, self._segments.next_seq - self._cursor.seq)

    def waiting_rows(self, *, read: bool = True) -> int:
        """Rows accepted and not yet delivered or given up (read or not). Without `read` no
        file is read for it (the socket loop's status table): where a segment found at start
        would have to be, the last figure taken is answered."""
        with self.lock:
            return self._backlog.waiting_rows(read=read)

    def oldest_accepted_at(self) -> float | None:
        """When the oldest waiting record was accepted, if any waits (the flusher's: it may
        read a segment; the status table gets it from what the flusher publishes)."""
        with self.lock:
            known, seq, segment = self._backlog.oldest_accepted_at()
            if segment is None:
                return known
            if not self._usable():
                return None
            try:
                fd = self._segments.open(segment.name, os.O_RDONLY)
            except OSError:
                return None
            size = segment.size
        try:
            return self._backlog.found_oldest(seq, accepted_at(fd, size, seq))
        finally:
            os.close(fd)
            self._after_use()

    def close(self) -> None:
        with self.lock:
            if self._dir.fd >= 0:
                with contextlib.suppress(OSError):
                    self._backlog.write_ledger(self._dir.fd)
            self._segments.let_go()
            self._dir.close()
        self._group.leave(self)


__all__ = ["KIND_RESULT", "KIND_STATUS", "SEGMENT_SUFFIX", "Spool", "SpoolGroup", "SpoolLike",
           "SpooledRecord", "segment_files", "segment_name"]
