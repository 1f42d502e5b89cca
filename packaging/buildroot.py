"""Freeze the extension for another architecture (arm64 on this amd64 machine): PyInstaller
cannot cross-freeze, so it runs inside a Debian userland of that architecture, under qemu-user
through binfmt_misc (`make package ARCH=arm64` sets both up).

The userland is Debian 12 (bookworm), like this build machine: Python 3.11 from Debian, and the
glibc that packaging/build.py then bundles is bookworm's. It is made once with debootstrap
under build/chroots/ (tests/chroot.py: reused while it is there, remade when it is not; never
needed between runs), with a venv holding packaging/requirements.txt, remade when that file
changes. The repository is bound at /src in it, so PyInstaller writes its tree straight into
build/pyinstaller-<arch>/ here. Everything else (bundling glibc, patchelf, nfpm) runs on this
machine, on that tree.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.chroot import Root, binfmt_ready, debootstrap  # noqa: E402

SUITE = "bookworm"
# Python with its shared libpython (PyInstaller's need), a C/C++ compiler for the sdists in
# requirements.txt (thrift's fastbinary), and binutils for PyInstaller.
PACKAGES = ("python3", "python3-venv", "python3-dev", "g++", "binutils")
VENV = "/opt/build-venv"
MACHINES = {"arm64": "aarch64", "amd64": "x86_64"}


def _pip_env(root: Root) -> dict[str, str]:
    """This machine's pip settings that make sense inside the root: its CA bundle (copied in;
    a TLS-inspecting network needs it) and its timeouts. Names no index: pip's default."""
    env = {k: v for k, v in os.environ.items()
           if k in ("PIP_DEFAULT_TIMEOUT", "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_INDEX_URL")}
    ca = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    if Path(ca).is_file():
        shutil.copyfile(ca, root.inside("/etc/ssl/build-ca.crt"))
        env["PIP_CERT"] = "/etc/ssl/build-ca.crt"
    return env


def freeze_in_buildroot(arch: str, repo: Path) -> Path:
    """Run `packaging/build.py --arch ARCH --freeze-only` in the ARCH build root; answers the
    root, whose glibc is the one to bundle."""
    if not binfmt_ready(MACHINES[arch]):
        raise SystemExit(f"this kernel runs no {arch} programs: mount binfmt_misc and enable "
                         f"qemu-{MACHINES[arch]} (`make package ARCH={arch}` does both)")
    started = time.monotonic()
    path = debootstrap(SUITE, arch, PACKAGES)
    print(f"build root {path.name}: {time.monotonic() - started:.0f} s", flush=True)
    requirements = (repo / "packaging" / "requirements.txt").read_bytes()
    stamp_text = hashlib.sha256(requirements).hexdigest()
    with Root(path) as root:
        root.bind_dev()
        root.mount_proc()
        root.bind(repo, "/src")
        shutil.copyfile("/etc/resolv.conf", root.inside("/etc/resolv.conf"))
        stamp = root.inside(f"{VENV}/.requirements-sha256")
        if not stamp.is_file() or stamp.read_text() != stamp_text:
            step = time.monotonic()
            root.run("rm", "-rf", VENV)
            root.run("python3", "-m", "venv", VENV)
            root.run(f"{VENV}/bin/pip", "install", "-q", "-r", "/src/packaging/requirements.txt",
                     env=_pip_env(root))
            stamp.write_text(stamp_text)
            print(f"build venv: {time.monotonic() - step:.0f} s", flush=True)
        step = time.monotonic()
        result = root.run(f"{VENV}/bin/python", "/src/packaging/build.py", "--arch", arch,
                          "--freeze-only", cwd="/")
        sys.stdout.write(result.stdout + result.stderr)
        print(f"PyInstaller under qemu-user: {time.monotonic() - step:.0f} s", flush=True)
    return path
