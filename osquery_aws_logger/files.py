"""Files and directories touched without following symlinks: the spool's only way onto disk.

The extension runs as root and writes under a directory an operator chose; if anyone else can
write to that directory's parent, they can plant symlinks where the extension is about to
create a file and turn a write into an overwrite of something else. So: the spool's parent is
checked as osquery checks extension paths (not writable by others unless sticky, owned by root
or by us), the spool's own directory is opened with ``O_DIRECTORY|O_NOFOLLOW``, and every file
inside it is opened relative to that descriptor with ``O_NOFOLLOW``; temporary files are made
with ``O_EXCL``, so a planted name is never written through.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Final

DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS: Final = os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A spool path that others could redirect: refused, with the reason in the message."""


def parent_problem(path: Path) -> str | None:
    """Why the directories holding `path` are unsafe for a root-owned spool, if they are.

    As osquery checks the paths of extensions it runs: no existing ancestor may be writable by
    others unless it has the sticky bit (a stranger could rename the rest of the path away and
    plant links), and each must be owned by root or by this process's user.
    """
    me = os.geteuid()
    for ancestor in Path(os.path.abspath(path)).parents:
        try:
            info = os.stat(ancestor)
        except (FileNotFoundError, NotADirectoryError):
            continue  # made later; or under a file, which a nearer-root step reports
        except OSError as exc:
            return f"cannot inspect {ancestor}: {exc.strerror or exc}"
        if not stat.S_ISDIR(info.st_mode):
            return f"{ancestor} is not a directory"
        if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
            return (f"{ancestor} is writable by every user and has no sticky bit: anyone "
                    f"could plant links in the spool's path")
        if info.st_uid not in (0, me):
            return f"{ancestor} is owned by uid {info.st_uid}, not root or this process's user"
    return None


def spool_problem(root: Path) -> str | None:
    """Why the extension would refuse a spool under `root`, or why it cannot be read, as far
    as can be seen from outside (for `osquery-aws-logger status`, which never creates
    anything). Never raises."""
    problem = parent_problem(root / "kinesis")
    if problem:
        return problem
    if os.path.islink(root):
        return f"{root} is a symbolic link; the spool never follows one"
    if os.path.lexists(root) and not os.path.isdir(root):
        return f"{root} is not a directory"
    if os.path.isdir(root):
        try:
            os.close(os.open(root, DIR_FLAGS))
        except OSError as exc:
            return f"cannot read {root}: {exc.strerror or exc}"
    return None


def open_directory(path: Path, *, create: bool, mode: int = 0o700) -> int:
    """A descriptor of directory `path`, which must not itself be a symlink.

    With `create`, a missing directory (and missing parents) is made with `mode`. An existing
    directory owned by another user is refused; its permissions are set to `mode`.
    """
    path = Path(os.path.abspath(path))
    if create:
        missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, mode)
    try:
        fd = os.open(path, DIR_FLAGS)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafePath(f"{path} is a symbolic link; the spool never follows one") from None
        raise exc
    try:
        info = os.fstat(fd)
        if info.st_uid not in (0, os.geteuid()):
            raise UnsafePath(f"{path} is owned by uid {info.st_uid}, not root or this "
                             f"process's user")
        if stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def atomic_write(directory: Path | int, name: str, data: bytes, *, mode: int = 0o600) -> None:
    """Replace file `name` in `directory` (a path or a directory descriptor) with `data`.

    The bytes go to a fresh temporary file made with O_EXCL|O_NOFOLLOW, which is then renamed
    over `name`: a reader sees the old or the new file, never half of one, and a symlink
    planted at either name is replaced, never written through. Raises OSError (a full disk).
    """
    own = not isinstance(directory, int)
    dir_fd = os.open(directory, DIR_FLAGS) if not isinstance(directory, int) else directory
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)  # left by a crash of this same pid number
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | FILE_FLAGS, mode,
                     dir_fd=dir_fd)
        try:
            os.fchmod(fd, mode)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    finally:
        if own:
            os.close(dir_fd)
