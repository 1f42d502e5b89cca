"""The spools of one extension together: the room they share on each filesystem (given back
oldest first across all of them) and how many of them hold descriptors open."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Final, Protocol

log = logging.getLogger("osquery_aws_logger.spool")

#: Keep this much of the filesystem free (or 5 % of it, if less): below it the oldest waiting
#: segment goes early, so the newest lines and the ledger can still be written.
HEADROOM_BYTES: Final = 32 << 20
HEADROOM_SHARE: Final = 0.05
class Member(Protocol):
    """What the group asks of a spool (the on-disk `Spool` answers all of it)."""

    directory: Path
    releasable: bool
    lock: threading.Lock

    @property
    def device(self) -> int: ...
    def release(self) -> None: ...
    def depth(self) -> tuple[int, int]: ...
    def statvfs(self) -> os.statvfs_result | None: ...
    def take_write_errors(self) -> int: ...
    def oldest_closed_segment_at(self) -> float | None: ...
    def locked_oldest_closed_segment_at(self) -> float | None: ...
    def give_up_oldest_segment(self, reason: str) -> tuple[int, int]: ...
    def locked_give_up_oldest_segment(self, reason: str) -> tuple[int, int]: ...



class SpoolGroup:
    """The spools of one extension: the room they share on each filesystem, and how many hold
    descriptors open.

    Free space is taken back oldest first across every spool on the filesystem (two plugins,
    their routed destinations): whichever spool holds the oldest waiting segment gives it up.
    At most `max_open` spools that may let go of their descriptors keep them.
    """

    def __init__(self, max_open: int = 64) -> None:
        self.max_open = max_open
        self._lock = threading.Lock()
        self._members: list[Member] = []
        self._open: dict[int, Member] = {}  # releasable spools holding descriptors, LRU first

    def join(self, spool: Member) -> None:
        with self._lock:
            self._members.append(spool)

    def leave(self, spool: Member) -> None:
        with self._lock:
            if spool in self._members:
                self._members.remove(spool)
            self._open.pop(id(spool), None)

    def members(self) -> list[Member]:
        with self._lock:
            return list(self._members)

    def opened(self, spool: Member) -> list[Member]:
        """`spool` holds descriptors again: answer the least recently used ones to release."""
        if not spool.releasable:
            return []
        with self._lock:
            self._open.pop(id(spool), None)
            self._open[id(spool)] = spool
            excess = len(self._open) - self.max_open
            if excess <= 0:
                return []
            return [s for s in list(self._open.values())[:excess] if s is not spool]

    def closed(self, spool: Member) -> None:
        with self._lock:
            self._open.pop(id(spool), None)

    def free_oldest(self, requester: Member) -> bool:
        """Give up the oldest waiting closed segment among the spools on `requester`'s
        filesystem (counted as disk_full); False when none can go. `requester`'s lock is held
        by the caller; the others are only tried, never waited for."""
        candidates: list[tuple[float, Member]] = []
        taken: list[Member] = []
        try:
            for spool in self.members():
                if spool is not requester:
                    if spool.device != requester.device or not spool.lock.acquire(blocking=False):
                        continue
                    taken.append(spool)
                at = spool.oldest_closed_segment_at()
                if at is not None:
                    candidates.append((at, spool))
            if not candidates:
                return False
            _, oldest = min(candidates, key=lambda found: found[0])
            oldest.give_up_oldest_segment("disk_full")
            return True
        finally:
            for spool in taken:
                spool.lock.release()

    def keep_headroom(self) -> None:
        """The flusher's turn: where a filesystem is nearly full because of the spools (they
        hold more than the reserve) or a line could not be written, give up the oldest waiting
        segments across them until the reserve is free again."""
        by_device: dict[int, list[Member]] = {}
        for spool in self.members():
            if spool.device >= 0:
                by_device.setdefault(spool.device, []).append(spool)
        for spools in by_device.values():
            self._headroom(spools)

    def _headroom(self, spools: list[Member]) -> None:
        info = None
        for spool in spools:
            info = spool.statvfs()
            if info is not None:
                break
        if info is None:
            return
        free = info.f_bavail * info.f_frsize
        reserve = min(HEADROOM_BYTES, HEADROOM_SHARE * info.f_blocks * info.f_frsize)
        failed = sum(spool.take_write_errors() for spool in spools)
        held = sum(spool.depth()[1] for spool in spools)
        # Only when the spools are what fills the disk (they hold more than the reserve), or a
        # line could not be written: a disk filled by others is no reason to give up backlog.
        if free >= reserve or not (held > reserve or failed):
            return
        freed_records = 0
        for _ in range(64):
            if free >= reserve:
                break
            candidates = [(at, spool) for spool in spools
                          if (at := spool.locked_oldest_closed_segment_at()) is not None]
            if not candidates:
                break
            _, oldest = min(candidates, key=lambda found: found[0])
            size, records = oldest.locked_give_up_oldest_segment("disk_full")
            free += size
            freed_records += records
        if freed_records:
            log.error("spools under %s: the filesystem is nearly full (%d bytes free before); "
                      "gave up the oldest %d waiting records across them (disk_full)",
                      spools[0].directory.parent, info.f_bavail * info.f_frsize, freed_records)
