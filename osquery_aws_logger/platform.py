"""What differs between the platforms osquery runs on, in one place, each with a fallback.

The extension is built and tested on Linux (glibc, amd64 and arm64). Everything here that only
Linux or glibc has is optional: on macOS (kqueue, libSystem's allocator) or another POSIX system
each call falls back to the portable way, slower or coarser, never wrong. docs/platforms.md says
what else a macOS or Windows build would need.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
import sys
from typing import Any, Final

log = logging.getLogger("osquery_aws_logger")

#: glibc's mallopt parameter for the size from which allocations get their own mapping.
#: Shortages of this process (out of descriptors or memory), not faults of what it was
#: opening: whatever failed with one of these is there, and is tried again later.
RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_M_MMAP_THRESHOLD: Final = -3


def _libc() -> Any:
    # dlopen(NULL): the process's own symbols, glibc's among them. ctypes.util.find_library
    # would start a subprocess (ldconfig) to find the same library.
    try:
        library = ctypes.CDLL(None)
    except OSError:
        return None
    return library if hasattr(library, "malloc_trim") and hasattr(library, "mallopt") else None


_GLIBC: Final = _libc()


def tune_memory() -> None:
    """Give every allocation of 256 KiB or more its own mapping, returned to the system on
    free. glibc raises that threshold each time a big block is freed (up to 32 MiB), after
    which the buffers of one giant line stay in the heap for good; fixing it keeps the
    resident size near its resting level after a multi-MB snapshot line. Elsewhere: nothing
    (other allocators return big blocks by themselves)."""
    if _GLIBC is not None:
        _GLIBC.mallopt(_M_MMAP_THRESHOLD, 256 << 10)


def release_memory() -> None:
    """Hand freed heap memory back to the system (after a big message); glibc only."""
    if _GLIBC is not None:
        _GLIBC.malloc_trim(0)


def fdatasync(fd: int) -> None:
    """Make a file's data durable: fdatasync where there is one (Linux), fsync elsewhere."""
    sync = getattr(os, "fdatasync", None)
    if sync is not None:
        sync(fd)
    else:
        os.fsync(fd)


def wake_pipe() -> tuple[int, int]:
    """A non-blocking, close-on-exec pipe for waking a loop from another thread."""
    pipe2 = getattr(os, "pipe2", None)
    if pipe2 is not None:
        read_end, write_end = pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        return int(read_end), int(write_end)
    read_end, write_end = os.pipe()  # close-on-exec already (PEP 446)
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    return read_end, write_end


def accept_with_timeout(listener: socket.socket, seconds: float) -> bool:
    """Make a blocking accept() on `listener` give up after `seconds`, if the kernel can (Linux
    honours SO_RCVTIMEO on a listening socket); answer whether it did. Where it did, a loop
    with no connection open can wait in accept() itself, a system call less per connection."""
    if not sys.platform.startswith("linux"):
        return False
    whole = int(seconds)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("ll", whole, int((seconds - whole) * 1_000_000)))
    return True


def _limit_text(value: int) -> str:
    return "unlimited" if value < 0 or value >= 1 << 62 else str(value)  # RLIM_INFINITY


def raise_descriptor_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit, and say so in one line.

    systemd starts services with a soft limit of 1,024 and a far higher hard one, on the
    understanding that a program needing more raises its own: each routed destination's
    spool and each connection takes descriptors, and running out stops the socket accepting.
    """
    try:
        import resource  # noqa: PLC0415 - POSIX only: elsewhere there is no such limit
    except ImportError:
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError) as exc:
        log.warning("open file descriptors (RLIMIT_NOFILE): cannot read the limit: %s", exc)
        return
    target = hard
    if hard == resource.RLIM_INFINITY:
        # No system grants unlimited descriptors; Linux stops at fs.nr_open.
        try:
            with open("/proc/sys/fs/nr_open") as nr_open:
                target = int(nr_open.read())
        except (OSError, ValueError):
            target = soft
    if soft == resource.RLIM_INFINITY or soft >= target:
        log.info("open file descriptors (RLIMIT_NOFILE): soft limit %s, already the hard limit",
                 _limit_text(soft))
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.warning("open file descriptors (RLIMIT_NOFILE): could not raise the soft limit from "
                    "%s to %s: %s", _limit_text(soft), _limit_text(target), exc)
        return
    log.info("open file descriptors (RLIMIT_NOFILE): raised the soft limit from %s to %s",
             _limit_text(soft), _limit_text(target))


__all__ = ["accept_with_timeout", "fdatasync", "raise_descriptor_limit", "release_memory",
           "tune_memory", "wake_pipe"]
