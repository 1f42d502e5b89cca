"""A spool read without changing anything: for `osquery-aws-logger status`, which may run
while the extension writes the same spool."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from ..files import DIR_FLAGS, FILE_FLAGS
from .ledger import Ledger
from .record import FILE_MAGIC, Reader, SpooledRecord
from .segments import segment_files, segment_name


def inspect_spool(directory: Path) -> tuple[int, int, int, float | None]:
    """Records and rows waiting, bytes held and the oldest waiting record's time, without
    changing anything (for `osquery-aws-logger status` while the extension may be running)."""
    try:
        dir_fd = os.open(directory, DIR_FLAGS)
    except OSError:
        return 0, 0, 0, None
    try:
        position = None
        with contextlib.suppress(OSError):
            position = Ledger().read(dir_fd)
        acked, acked_row = position or (0, 0)
        files = []
        for first, first_row in segment_files(dir_fd):
            name = segment_name(first, first_row)
            with contextlib.suppress(OSError):
                files.append((first, first_row, name,
                              os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_size))
        if not files:
            return 0, 0, 0, None
        first_waiting = max(acked + 1, files[0][0])
        first_waiting_row = max(acked_row, files[0][1])
        last_seq, last_row = files[-1][0] - 1, files[-1][1]
        for found in _records_of(dir_fd, files[-1][2], files[-1][3]):
            last_seq, last_row = max(last_seq, found.seq), max(last_row, found.end_row)
        records = max(0, last_seq + 1 - first_waiting)
        if not records:
            return 0, 0, sum(f[3] for f in files), None
        holding = [f for f in files if f[0] <= first_waiting] or files[:1]
        _, _, name, size = holding[-1]
        oldest = next((r.accepted_at for r in _records_of(dir_fd, name, size)
                       if r.seq >= first_waiting), None)
        return records, max(0, last_row - first_waiting_row), sum(f[3] for f in files), oldest
    finally:
        os.close(dir_fd)


def _records_of(dir_fd: int, name: str, size: int) -> Iterable[SpooledRecord]:
    """The intact records of one segment, read-only (nothing if it cannot be opened)."""
    try:
        fd = os.open(name, os.O_RDONLY | FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return
    try:
        reader = Reader(fd, len(FILE_MAGIC), size)
        while (found := reader.next()) is not None:
            yield found
    finally:
        os.close(fd)


__all__ = ["inspect_spool"]
