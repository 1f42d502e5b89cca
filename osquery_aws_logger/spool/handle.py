"""A spool's directory descriptor: every file of the spool is opened relative to it, never
through a link, and it is let go while the spool is idle (thousands of routed destinations fit a
process limit of 1,024 descriptors)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..files import UnsafePath, open_directory, parent_problem


class DirectoryHandle:
    """The descriptor of one spool directory: opened with ``O_NOFOLLOW`` after its ancestors are
    checked as osquery checks extension paths, let go on request, and taken again only while
    the path still names the same directory. Its owner holds the lock around every call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1
        #: Let go of until next used (`take_again`); false for a directory never or no longer open.
        self.released = False
        self.device = -1  # st_dev of the directory, once open
        self.fs_bytes = 0  # the size of the filesystem the spool is on, once open
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the directory

    def open(self) -> None:
        """Open (and make) the directory. Raises OSError or ValueError (UnsafePath among them);
        the descriptor, once taken, stays for `close` even then."""
        problem = parent_problem(self.path)
        if problem:
            raise UnsafePath(problem)
        self.fd = open_directory(self.path, create=True, mode=0o700)
        info = os.fstat(self.fd)
        self._identity, self.device = (info.st_dev, info.st_ino), info.st_dev
        with contextlib.suppress(OSError):
            fs = os.statvfs(self.fd)
            self.fs_bytes = fs.f_blocks * fs.f_frsize
        self.released = False

    def take_again(self) -> Exception | None:
        """After `release`: open the directory again if its path still names the same one.
        Answers why it cannot be (None when it is open)."""
        try:
            problem = parent_problem(self.path)
            if problem:
                raise UnsafePath(problem)
            fd = open_directory(self.path, create=False, mode=0o700)
        except (OSError, ValueError) as exc:
            self.released = False
            return exc
        info = os.fstat(fd)
        self.released = False
        if (info.st_dev, info.st_ino) != self._identity:
            os.close(fd)
            return UnsafePath(f"{self.path} was replaced by another directory")
        self.fd = fd
        return None

    def release(self) -> None:
        """Let go of the descriptor until `take_again`."""
        self.close()
        self.released = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.released = False

    def present(self) -> bool:
        """Whether the directory is still where it was (not removed by hand)."""
        try:
            return os.fstat(self.fd).st_nlink > 0
        except OSError:
            return False

    def statvfs(self) -> os.statvfs_result | None:
        if self.fd < 0:
            return None
        try:
            return os.statvfs(self.fd)
        except OSError:
            return None


__all__ = ["DirectoryHandle"]
