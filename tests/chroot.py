"""Roots for the package tests: Debian userlands made with debootstrap, empty roots, and the
mounts (/proc, /dev, binds) they need, always undone.

Everything here runs as root (debootstrap, mount, chroot). A Debian userland is made once per
run under build/chroots/ from the mirror this machine's apt already uses; a userland left there
by an earlier run is reused when it finished (a cache, never needed: delete build/ and it is
made again). Tests get a fresh copy of it, so a test that fails half way spoils nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHROOTS = REPO / "build" / "chroots"


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 .sources or one-line .list files)."""
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.is_file() and path.suffix in (".list", ".sources", ""):
            texts.append(path.read_text(errors="replace"))
    for text in texts:
        for url in re.findall(r"^(?:URIs:|deb)\s+(\S+)", text, re.M):
            if url.rstrip("/").endswith("/debian"):
                return url
    raise RuntimeError("no Debian mirror (a URI ending in /debian) in /etc/apt/sources.list*")


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    real = os.path.realpath(path)
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == real or point.startswith(real + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """rm -rf that refuses to go near a mount (a bound /dev below it would be emptied)."""
    if not path.exists():
        return
    if points := mounts_under(path):
        raise RuntimeError(f"refusing to delete {path}: still mounted there: {points}")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def debootstrap(suite: str, arch: str, include: tuple[str, ...] = ()) -> Path:
    """A minbase Debian `suite` userland for `arch` under build/chroots/ (made at most once;
    a foreign arch runs its second stage through qemu-user and binfmt_misc)."""
    name = f"{suite}-{arch}" + (f"-{len(include)}extra" if include else "")
    dest = CHROOTS / name
    done = dest / ".osquery-aws-logger-complete"
    if done.is_file():
        return dest
    remove_tree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    argv = ["debootstrap", "--variant=minbase", f"--arch={arch}"]
    if include:
        argv.append("--include=" + ",".join(include))
    started = time.monotonic()
    log = dest.parent / f"{name}.log"
    with open(log, "wb") as out:
        status = subprocess.run([*argv, suite, str(dest), apt_mirror()], stdout=out,
                                stderr=subprocess.STDOUT, check=False).returncode
    if status != 0:
        raise RuntimeError(f"debootstrap {suite} {arch} failed ({status}); see {log}")
    done.write_text(f"{time.monotonic() - started:.0f} s\n")
    return dest


class Root:
    """A directory used as a root file system, with the mounts made in it tracked and undone
    by close() (deepest first). Use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mounts: list[Path] = []

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def inside(self, path: str | Path) -> Path:
        """The host path of `path` (absolute inside this root)."""
        return self.path / str(path).lstrip("/")

    def _mount(self, argv: list[str], target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *argv, str(target)], check=True)
        self._mounts.append(target)

    def mount_proc(self) -> None:
        self._mount(["-t", "proc", "proc"], self.inside("/proc"))

    def bind_dev(self) -> None:
        self._mount(["--bind", "/dev"], self.inside("/dev"))

    def bind(self, host_dir: Path, inside: str | None = None) -> None:
        """The host directory at the same path (or at `inside`) in the root."""
        self._mount(["--bind", str(host_dir)], self.inside(inside or str(host_dir)))

    def close(self) -> None:
        while self._mounts:
            target = self._mounts.pop()
            if subprocess.run(["umount", str(target)], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", str(target)], check=True)

    def run(self, *argv: str, env: dict[str, str] | None = None, check: bool = True,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """`chroot ROOT argv...` with a plain environment, output captured as text."""
        base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
        result = subprocess.run(["/usr/sbin/chroot", str(self.path), *argv], env={**base, **(env or {})},
                                capture_output=True, text=True, check=False, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"chroot {self.path} {' '.join(argv)} -> {result.returncode}\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result


def fresh_copy(source: Path, dest: Path) -> Path:
    """A copy of a userland to spoil (cp -a keeps owners, modes and device nodes)."""
    remove_tree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(source), str(dest)], check=True)
    return dest


def binfmt_ready(machine: str) -> bool:
    """Whether this kernel runs `machine` binaries through qemu-user (binfmt_misc entry on,
    with the F flag, so a chroot needs no qemu binary of its own)."""
    entry = Path(f"/proc/sys/fs/binfmt_misc/qemu-{machine}")
    if not entry.is_file():
        return False
    text = entry.read_text()
    flags = re.search(r"^flags: (\S*)", text, re.M)
    return text.startswith("enabled") and flags is not None and "F" in flags.group(1)
