"""The .deb and .rpm that `make package` builds: contents, the bundled C library (the glibc
floor), the packaged extension under the osqueryd stand-in in an empty root, real installs with
dpkg and rpm into Debian 11, the package linters, and the install/remove scripts. Run by
`make package-test` as root (marker ``package``; plain `make test` deselects it because it needs
fresh packages in dist/, debootstrap, mount and chroot)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.chroot import CHROOTS, Root, debootstrap, fresh_copy, remove_tree
from tests.harness import wait_for
from tests.localaws import MotoServer
from tests.osqueryd_standin import OsquerydStandIn
from tests.package_run import (
    EXT,
    INTERNAL,
    LINK,
    LOAD,
    LOADERS,
    Launched,
    Launcher,
    children,
    kinesis_options,
    mapped_files,
    ship,
    status_kb,
)

pytestmark = pytest.mark.package

REPO = Path(__file__).resolve().parent.parent
# pyproject's [project] version (a regex: tomllib is not in Python 3.10, the project's floor).
_VERSION = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
assert _VERSION
VERSION = _VERSION.group(1)
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}[os.uname().machine]
# The packages under test: this machine's architecture, or PACKAGE_ARCH=arm64 (make
# package-test-arm64, which runs the ones that need no host of that architecture).
DEB_ARCH = os.environ.get("PACKAGE_ARCH", HOST_ARCH)
RPM_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}[DEB_ARCH]
# Another architecture's packages run under qemu-user (binfmt_misc): the process is the
# emulator running the .ext (still one pid, no child), and it is slower, so fewer lines.
EMULATED = DEB_ARCH != HOST_ARCH
INSTALL_LINES = 200 if EMULATED else 1000
DEB = REPO / "dist" / f"osquery-aws-logger_{VERSION}_{DEB_ARCH}.deb"
RPM = REPO / "dist" / f"osquery-aws-logger-{VERSION}-1.{RPM_ARCH}.rpm"

DOC = "/usr/share/doc/osquery-aws-logger"
DOC_FILES = {"README", "copyright", "osquery.conf.example", "osquery.custom.conf.example",
             "osquery.flags.example", "osquery.no-aws.flags.example"}
# Directories the deb lists on the way to its own (dpkg shares them; the rpm leaves them out,
# since `filesystem` owns them there with other modes).
SHARED_DIRS = {"/opt", "/usr", "/usr/bin", "/usr/share", "/usr/share/doc", "/usr/share/lintian",
               "/usr/share/lintian/overrides"}
# The .deb's lintian exceptions (packaging/lintian-overrides); the .rpm has none of it.
LINTIAN_OVERRIDES = "/usr/share/lintian/overrides/osquery-aws-logger"


def run(*argv: str | Path, **kwargs: Any) -> str:
    out: str = subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True,
                              **kwargs).stdout
    return out


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """Print a measurement in the test run's output, past pytest's capture."""
    with capsys.disabled():
        print(f"\n[package] {line}")


# -- what the packages hold ----------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    path: str  # absolute, no trailing slash
    kind: str  # "d", "-" or "l"
    mode: int  # permission bits, setuid/setgid/sticky included
    owner: str
    group: str
    target: str = ""  # symlinks only


def _mode(text: str) -> int:
    """`-rwxr-xr-x` -> 0o755, with s/S/t/T read as the special bits they are."""
    bits = 0
    for index, char in enumerate(text[1:10]):
        if char != "-":
            bits |= 1 << (8 - index)
    special = {3: stat.S_ISUID, 6: stat.S_ISGID, 9: stat.S_ISVTX}
    for index, flag in special.items():
        if text[index] in "sStT":
            bits |= flag
            if text[index] in "ST":  # capital: the special bit without execute
                bits &= ~(1 << (9 - index))
    return bits


def deb_entries(deb: Path) -> list[Entry]:
    """`dpkg-deb -c`: perms owner/group size date time ./path[/] [-> target]."""
    entries = []
    for line in run("dpkg-deb", "-c", deb).splitlines():
        match = re.match(r"(\S{10}) (\S+)/(\S+) +\d+ \S+ \S+ \.(/\S*?)/?(?: -> (\S+))?$", line)
        assert match, f"unexpected dpkg-deb -c line: {line!r}"
        perms, owner, group, path, target = match.groups()
        if path in ("", "/"):
            continue  # the archive's own "./"
        entries.append(Entry(path, perms[0], _mode(perms), owner, group, target or ""))
    return entries


def rpm_entries(rpm: Path) -> list[Entry]:
    """`rpm -qlpv`: perms nlink owner group size month day time path [-> target]."""
    entries = []
    for line in run("rpm", "-qlpv", rpm).splitlines():
        match = re.match(r"(\S{10}) +\d+ +(\S+) +(\S+) +\d+ \S+ +\d+ +\S+ (/\S*)(?: -> (\S+))?$",
                         line)
        assert match, f"unexpected rpm -qlpv line: {line!r}"
        perms, owner, group, path, target = match.groups()
        entries.append(Entry(path, perms[0], _mode(perms), owner, group, target or ""))
    return entries


@pytest.fixture(scope="module")
def packages() -> tuple[Path, Path]:
    for path in (DEB, RPM):
        assert path.is_file(), f"{path} is missing: run `make package` (or `make package-test`)"
    return DEB, RPM


def check_entries(entries: list[Entry]) -> dict[str, Entry]:
    """The rules both packages follow; answers the entries by path."""
    by_path = {e.path: e for e in entries}
    assert len(by_path) == len(entries), "a path listed twice"
    for e in entries:
        where = f"{e.path} ({e.kind}{e.mode:o} {e.owner}:{e.group})"
        assert (e.owner, e.group) == ("root", "root"), where
        assert not e.mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), where
        if e.kind == "l":
            assert (e.path, e.target) == (LINK, EXT), where
            continue
        assert not e.mode & stat.S_IWOTH and not e.mode & stat.S_IWGRP, where
        assert e.mode in ((0o755,) if e.kind == "d" else (0o755, 0o644)), where
        inside = e.path.startswith(("/opt/osquery-aws-logger", f"{DOC}"))
        assert inside or e.path in SHARED_DIRS | {LINTIAN_OVERRIDES}, \
            f"{where}: outside the package's own places"
    ext = by_path[EXT]
    assert (ext.kind, ext.mode) == ("-", 0o755)
    assert by_path["/opt/osquery-aws-logger"].kind == "d"
    assert {p.rsplit("/", 1)[1] for p in by_path if p.startswith(f"{DOC}/")} == DOC_FILES
    internal = [p for p in by_path if p.startswith("/opt/osquery-aws-logger/_internal/")]
    assert any(re.search(r"/libpython3\.\d+\.so", p) for p in internal), "no bundled CPython"
    assert "/opt/osquery-aws-logger/_internal/botocore/data/kinesis" in by_path
    assert "/opt/osquery-aws-logger/_internal/botocore/data/firehose" in by_path
    return by_path


def test_deb_lists_every_path_owned_by_root_with_safe_modes(packages: tuple[Path, Path]) -> None:
    deb, _ = packages
    by_path = check_entries(deb_entries(deb))
    assert set(by_path) - {p for p in by_path if p.startswith(("/opt/osquery-aws-logger", DOC))} \
        == SHARED_DIRS | {LINK, LINTIAN_OVERRIDES}
    assert by_path[LINK].mode == 0o777  # what ln -s makes; a link's own mode is never used
    fields = {name: run("dpkg-deb", "-f", deb, name).strip()
              for name in ("Package", "Version", "Architecture", "Depends")}
    assert fields["Package"] == "osquery-aws-logger"
    assert fields["Version"] == f"{VERSION}-1"
    assert fields["Architecture"] == DEB_ARCH
    # It carries its own C library: it depends on nothing (and so installs on any glibc).
    assert fields["Depends"] == ""
    assert "Pre-Depends" not in run("dpkg-deb", "-I", deb)


def test_rpm_lists_the_same_paths_owned_by_root_with_safe_modes(
        packages: tuple[Path, Path]) -> None:
    deb, rpm = packages
    by_path = check_entries(rpm_entries(rpm))
    deb_paths = {e.path: e for e in deb_entries(deb)}
    assert set(by_path) == set(deb_paths) - SHARED_DIRS - {LINTIAN_OVERRIDES}, \
        "the rpm claims no shared directory"
    for path, entry in by_path.items():
        if entry.kind != "l":
            assert (entry.kind, entry.mode) == (deb_paths[path].kind, deb_paths[path].mode), path
    query = run("rpm", "-qp", "--qf", "%{NAME} %{VERSION} %{ARCH}", rpm)
    assert query == f"osquery-aws-logger {VERSION} {RPM_ARCH}"
    requires = run("rpm", "-qpR", rpm)
    # Only rpm's own feature tags: no glibc, no library sonames (nothing rpm would look for).
    assert all(r.startswith("rpmlib(") for r in requires.splitlines()), requires
    assert run("rpm", "-qp", "--qf", "%{POSTINPROG} %{PREUNPROG}", rpm) == "/bin/sh /bin/sh"


def test_shipped_examples_match_each_kind_of_osquery_build(
        tmp_path: Path, packages: tuple[Path, Path]) -> None:
    root = unpack_deb(tmp_path)
    doc = root / DOC.lstrip("/")
    stock = json.loads((doc / "osquery.conf.example").read_text())
    custom = json.loads((doc / "osquery.custom.conf.example").read_text())
    # The seed's sample options, and the same under custom_ names for builds without AWS.
    assert stock["options"]["aws_kinesis_stream"] == "foo_stream"
    assert custom["options"] == {
        (f"custom_{k}" if k.startswith("aws_") else k): v for k, v in stock["options"].items()}
    assert custom["schedule"] == stock["schedule"]
    for name, plugins in (("osquery.flags.example", "aws_kinesis_ext,aws_firehose_ext"),
                          ("osquery.no-aws.flags.example", "aws_kinesis,aws_firehose")):
        flags = [ln for ln in (doc / name).read_text().splitlines() if ln and ln[0] not in "#;"]
        assert "--extensions_autoload=/etc/osquery/extensions.load" in flags, name
        assert "--extensions_require=aws_logger" in flags, name
        assert f"--logger_plugin={plugins}" in flags, name


# -- what a host must give it: nothing but a kernel --------------------------------------------------


def glibc_versions(text: str, section: str) -> set[tuple[int, int]]:
    """GLIBC_x.y names in one section of `readelf -V` output."""
    part = text.split(section, 1)[1] if section in text else ""
    part = part.split("Version needs section")[0] if "definition" in section else part
    return {(int(a), int(b)) for a, b in re.findall(r"Name: GLIBC_(\d+)\.(\d+)", part)}


def test_every_elf_file_runs_on_the_bundled_loader_and_libc(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, packages: tuple[Path, Path]) -> None:
    """The glibc floor, by bundling: the .ext's interpreter is the bundled loader at its install
    path, every ELF file finds each library it names in _internal/ (through its RUNPATH), asks
    only for glibc versions the bundled libc defines, and asks for no newer kernel than 3.10."""
    root = unpack_deb(tmp_path)
    internal = root / INTERNAL.lstrip("/")
    loader = internal / LOADERS[DEB_ARCH]
    libc = internal / "libc.so.6"
    assert loader.is_file() and libc.is_file()
    # Loader and libc of one glibc build (they share GLIBC_PRIVATE internals).
    release = re.search(rb"GNU C Library \(([^)]+)\) (?:stable )?release version (\d+\.\d+)",
                        libc.read_bytes())
    assert release, "no version banner in the bundled libc"
    assert release.group(1) in loader.read_bytes(), "loader and libc from different builds"
    defined = glibc_versions(run("readelf", "-VW", libc), "Version definition section")
    assert max(defined) == tuple(int(x) for x in release.group(2).split(b"."))

    ext = root / EXT.lstrip("/")
    headers = run("readelf", "-lW", ext)
    assert f"[Requesting program interpreter: {INTERNAL}/{LOADERS[DEB_ARCH]}]" in headers
    present = {p.name for p in internal.iterdir()}
    elves, newest, kernel = 0, (2, 0), (0,)
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.read_bytes()[:4] != b"\x7fELF":
            continue
        elves += 1
        where = path.relative_to(root)
        dynamic = run("readelf", "-dW", path)
        needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic))
        assert needed <= present, f"{where} needs {sorted(needed - present)}, not bundled"
        runpath = re.search(r"\((?:RUNPATH|RPATH)\)\s+Library r\w*path: \[([^\]]+)\]", dynamic)
        if path == ext:
            assert runpath and runpath.group(1) == INTERNAL, where
        elif not re.match(r"(ld-linux\S*|lib(c|m|dl|pthread|rt|util)\.so\.\d+)$", path.name):
            assert runpath, f"{where} has no RUNPATH: it would look for libc on the host"
            resolved = runpath.group(1).replace("$ORIGIN", str(path.parent))
            assert Path(os.path.normpath(resolved)) == internal, (where, runpath.group(1))
        asked = glibc_versions(run("readelf", "-VW", path), "Version needs section")
        assert asked <= defined, f"{where} needs {sorted(asked - defined)}"
        if path.parent != internal or path.name != "libc.so.6":
            newest = max(newest, *asked) if asked else newest
        note = re.search(r"OS: Linux, ABI: ([\d.]+)", run("readelf", "-nW", path))
        if note:
            kernel = max(kernel, tuple(int(x) for x in note.group(1).split(".")))
    assert elves > 30  # CPython's modules, its libraries, glibc's
    assert kernel <= (3, 10), f"an ELF file asks for Linux {kernel}"
    report(capsys, f"{elves} ELF files; bundled glibc {release.group(2).decode()} "
                   f"({release.group(1).decode()}); the rest asks for GLIBC_{newest[0]}.{newest[1]} "
                   f"at most; ABI notes ask for Linux {'.'.join(map(str, kernel))} at most")


def unpack_deb(into: Path) -> Path:
    root = into / "root"
    root.mkdir()
    run("dpkg-deb", "-x", DEB, root)
    return root


@pytest.fixture
def empty_root(tmp_path: Path) -> Iterator[Root]:
    """A root holding only the .deb's files, /dev and /proc: no libc, no shell, no Python.
    (pytest's tmp directories carry no sticky bit, as osquery requires of the .ext's.)"""
    assert DEB.is_file(), f"{DEB} is missing: run `make package`"
    with Root(unpack_deb(tmp_path)) as root:
        root.bind_dev()
        root.mount_proc()
        yield root


@pytest.fixture
def standin_dir() -> Iterator[Path]:
    # AF_UNIX paths are short: the stand-in's socket lives outside pytest's long tmp path.
    path = Path(tempfile.mkdtemp(prefix="oq", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def host_env() -> dict[str, str]:
    """The test's environment with a system PATH: no venv's bin/ (and its python) on it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def autoload_reader() -> OsquerydStandIn:
    """A stand-in that is never started, only asked to read autoload files."""
    return OsquerydStandIn(Path(tempfile.gettempdir()) / "oq-unused")


@pytest.fixture
def launcher(tmp_path: Path, standin_dir: Path) -> Iterator[Launcher]:
    """launcher.start(root, ...): the .ext in `root` registered with a stand-in; all stopped
    (the extension killed by pid) after the test, before the root's mounts go."""
    launcher = Launcher(standin_dir, tmp_path)
    yield launcher
    launcher.close()


def one_process_on_its_own_runtime(ext: Launched) -> str:
    """The pid osqueryd started is the extension (exec'd in place: no bootloader or wrapper
    parent waiting on a child), its argv is osqueryd's, it has no children, and every shared
    object it maps is the package's own: bundled loader, libc and CPython, none of the root's.
    Answers the libc it mapped."""
    pid, root = ext.proc.pid, ext.root
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    if EMULATED:  # binfmt_misc runs `qemu <path> <argv...>` in the same process
        assert "qemu" in Path(f"/proc/{pid}/exe").resolve().name
        assert argv[-len(ext.argv):] == [a.encode() for a in ext.argv]
    else:
        assert Path(f"/proc/{pid}/exe").resolve() == root.inside(EXT).resolve()
        assert argv == [a.encode() for a in ext.argv]
    assert children(pid) == []
    objects = {f for f in mapped_files(pid) if re.search(r"\.so(\.|$)", f)}
    mine = str(root.inside(INTERNAL))
    assert objects and all(f.startswith(mine + "/") for f in objects), sorted(objects)
    libc = [f for f in objects if f.endswith("/libc.so.6")]
    assert libc == [f"{mine}/libc.so.6"]
    assert f"{mine}/{LOADERS[DEB_ARCH]}" in objects
    assert any(re.search(r"/libpython3\.\d+\.so", f) for f in objects)
    return libc[0]


def test_packaged_ext_in_an_empty_root_autoloads_runs_as_one_process_and_ships_to_kinesis(
        capsys: pytest.CaptureFixture[str], empty_root: Root, launcher: Launcher,
        moto_server: MotoServer) -> None:
    # The autoload file as the package's postinstall leaves it.
    load = empty_root.inside(LOAD)
    load.parent.mkdir(parents=True)
    load.write_text(f"# autoload\n{EXT}\n")
    probe = autoload_reader()
    assert probe.read_autoload_file(load, check=False) == [Path(EXT)]
    probe.autoload_check(empty_root.inside(EXT))
    assert not (empty_root.path / "lib").exists() and not (empty_root.path / "bin").exists()

    moto_server.reset()
    moto_server.create_stream("pkg-stream")
    ext = launcher.start(empty_root, custom_options=kinesis_options(
        moto_server, "pkg-stream", "/var/spool/osquery-aws-logger"), register_timeout=60)
    standin, pid = ext.standin, ext.proc.pid
    info, routes = standin.registered[ext.uuid]
    assert info.name == "aws_logger" and info.version == VERSION
    assert sorted(routes["logger"]) == ["aws_firehose", "aws_kinesis"]
    one_process_on_its_own_runtime(ext)

    took = ship(ext, moto_server, "pkg-stream", count=100)
    assert children(pid) == []
    assert any(empty_root.inside("/var/spool/osquery-aws-logger").iterdir()), "spooled nowhere"

    time.sleep(3)  # let it settle: a flush period or two, idle
    rss_mb = status_kb(pid, "VmRSS") / 1024
    threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
    report(capsys, f"empty root: startup (spawn -> registered, socket up) {ext.startup_s:.2f} s; "
                    f"100 lines shipped in {took:.1f} s; RSS at rest {rss_mb:.1f} MB; "
                    f"{threads} threads; one process (pid {pid})")
    assert ext.startup_s < (60 if EMULATED else 10)
    assert rss_mb < (400 if EMULATED else 150), "osquery's extension watchdog allows 200 MB of growth"

    ext.proc.send_signal(signal.SIGTERM)
    assert ext.proc.wait(15) == 0, ext.stderr()


def launch_on_stock_build(root: Root, launcher: Launcher, moto_server: MotoServer) -> Launched:
    moto_server.reset()
    moto_server.create_stream("stock-stream")
    # A stock osqueryd holds the seed config's aws_* options as its own flags (every other aws_*
    # flag at osquery's default, as options() reports them).
    return launcher.start(root, builtin_aws=True, flags={
        "aws_kinesis_stream": "stock-stream", "aws_kinesis_endpoint": moto_server.url,
        "aws_kinesis_period": "1", "aws_region": "us-east-1",
    }, custom_options={"custom_aws_logger_spool_dir": "/var/spool/osquery-aws-logger"})


def test_packaged_ext_takes_the_ext_names_and_ships_on_a_stock_build(
        empty_root: Root, launcher: Launcher, moto_server: MotoServer) -> None:
    ext = launch_on_stock_build(empty_root, launcher, moto_server)
    assert sorted(ext.standin.registered[ext.uuid][1]["logger"]) == [
        "aws_firehose_ext", "aws_kinesis_ext"]
    assert "--logger_plugin=aws_kinesis_ext,aws_firehose_ext" in ext.stderr()
    line = ext.standin.result_line("pack_stock")
    assert ext.standin.log_string(ext.uuid, "aws_kinesis_ext", line).status.code == 0
    records = wait_for(lambda: moto_server.read_stream("stock-stream"), 10, "the Kinesis record")
    assert json.loads(records[0][0])["name"] == "pack_stock"
    assert "settings unusable" not in ext.stderr()


def test_packaged_ext_and_its_path_link_need_no_python(empty_root: Root) -> None:
    # /usr/bin/osquery-aws-logger is a link to the .ext: the bootloader finds _internal/ through it.
    assert os.readlink(empty_root.inside(LINK)) == EXT
    for path in (EXT, LINK):
        out = empty_root.run(path, "--version", env={"PATH": "/nonexistent"}).stdout
        assert out.strip() == f"osquery-aws-logger {VERSION}"


# -- installed by the real package managers, in Debian 11 -------------------------------------------


@pytest.fixture(scope="module")
def bullseye() -> Path:
    """Debian 11 (glibc 2.31), minbase, made by debootstrap once per run (build/chroots/)."""
    return debootstrap("bullseye", DEB_ARCH)


@pytest.fixture
def bullseye_root(bullseye: Path, tmp_path: Path) -> Iterator[Root]:
    copy = fresh_copy(bullseye, CHROOTS / "work" / f"bullseye-{DEB_ARCH}")
    with Root(copy) as root:
        root.bind_dev()
        root.mount_proc()
        yield root
    remove_tree(copy)


def install_ship_remove(capsys: pytest.CaptureFixture[str], root: Root, launcher: Launcher,
                        moto: MotoServer, *, kind: str, lines: int, install: Callable[[], None],
                        remove: Callable[[], None]) -> None:
    """Install with the real package manager; the autoload file then lists the .ext, which
    osqueryd would accept; started from there it registers, ships `lines` lines to moto as one
    process on its own libc, and exits 0 on SIGTERM; removing the package takes the line out
    and the files away."""
    assert not root.inside("/opt/osquery-aws-logger").exists()
    root_libc = root.run("sh", "-c", "ls /lib/*/libc.so.6 /lib*/libc.so.6 2>/dev/null; "
                                     "getconf GNU_LIBC_VERSION").stdout.split()
    install()
    probe = autoload_reader()
    assert probe.read_autoload_file(root.inside(LOAD), check=False) == [Path(EXT)]
    probe.autoload_check(root.inside(EXT))

    moto.reset()
    moto.create_stream("install-stream")
    ext = launcher.start(root, custom_options=kinesis_options(
        moto, "install-stream", "/var/spool/osquery-aws-logger"),
        register_timeout=60 if EMULATED else 20)
    took = ship(ext, moto, "install-stream", count=lines, timeout=120)
    libc = one_process_on_its_own_runtime(ext)
    ext.proc.send_signal(signal.SIGTERM)
    assert ext.proc.wait(30) == 0, ext.stderr()
    report(capsys, f"{kind} in {' '.join(root_libc[-2:])} userland ({root.path.name}): registered "
                   f"in {ext.startup_s:.1f} s, {lines} lines shipped in {took:.1f} s, ran on {libc}")

    remove()
    assert EXT not in root.inside(LOAD).read_text().split("\n")
    assert not root.inside("/opt/osquery-aws-logger").exists()
    assert not root.inside(LINK).exists() and not root.inside(LINK).is_symlink()


def test_dpkg_installs_ships_and_removes_in_debian_11(
        capsys: pytest.CaptureFixture[str], bullseye_root: Root, launcher: Launcher,
        moto_server: MotoServer) -> None:
    root = bullseye_root
    shutil.copy(DEB, root.inside("/tmp"))

    def install() -> None:
        root.run("dpkg", "-i", f"/tmp/{DEB.name}")
        status = root.run("dpkg-query", "-W", "-f", "${Status} ${Version} ${Depends}",
                          "osquery-aws-logger").stdout
        assert status == f"install ok installed {VERSION}-1 ", status

    def remove() -> None:
        root.run("dpkg", "-r", "osquery-aws-logger")
        assert root.run("dpkg-query", "-W", "-f", "${Status}", "osquery-aws-logger",
                        check=False).stdout in ("", "deinstall ok config-files",
                                                "unknown ok not-installed")

    install_ship_remove(capsys, root, launcher, moto_server, kind="dpkg -i", lines=INSTALL_LINES,
                        install=install, remove=remove)


def test_rpm_installs_ships_and_removes_in_an_rpm_database_over_debian_11(
        capsys: pytest.CaptureFixture[str], bullseye_root: Root, launcher: Launcher,
        moto_server: MotoServer) -> None:
    """rpm --root: the rpm database lives in the root (var/lib/rpm) and the scriptlets run
    chrooted there, with the root's /bin/sh; dependencies are checked against that database,
    which holds nothing else: the package must need nothing."""
    root = bullseye_root
    rpm = ["rpm", "--root", str(root.path)]

    def install() -> None:
        run(*rpm, "--initdb")
        # This machine's rpm knows only its own architecture; under qemu-user the root is arm64.
        run(*rpm, "-i", *(["--ignorearch"] if EMULATED else []), RPM)
        assert run(*rpm, "-q", "osquery-aws-logger").strip() == \
            f"osquery-aws-logger-{VERSION}-1.{RPM_ARCH}"
        run(*rpm, "-V", "osquery-aws-logger")  # every file as the package has it

    def remove() -> None:
        run(*rpm, "-e", "osquery-aws-logger")
        assert run(*rpm, "-qa").strip() == ""

    install_ship_remove(capsys, root, launcher, moto_server, kind="rpm -i", lines=INSTALL_LINES,
                        install=install, remove=remove)


# -- the package linters -----------------------------------------------------------------------------


def test_deb_passes_lintian_with_only_the_named_exceptions(packages: tuple[Path, Path]) -> None:
    """lintian with no error or warning left but those packaging/lintian-overrides names (with
    its reasons), and every one of those still used."""
    deb, _ = packages
    # (--show-overrides would make lintian count the overridden hints as failures.)
    result = subprocess.run(["lintian", "--no-cfg", "--display-info", "--fail-on", "error,warning",
                             str(deb)], capture_output=True, text=True, check=False)
    lines = result.stdout.splitlines()
    problems = [ln for ln in lines if ln.startswith(("E: ", "W: "))]
    assert result.returncode == 0 and not problems, "\n".join(problems) + result.stderr
    stale = [ln for ln in lines if "unused-override" in ln or "mismatched-override" in ln]
    assert not stale, "an exception in packaging/lintian-overrides matches nothing:\n" + \
        "\n".join(stale)


def test_rpm_passes_rpmlint_with_only_the_named_exceptions(packages: tuple[Path, Path]) -> None:
    """rpmlint with packaging/rpmlintrc's filters (and their reasons): no error or warning left,
    and no filter that matches nothing (rpmlint reports that as an error itself)."""
    _, rpm = packages
    result = subprocess.run(["rpmlint", "-r", str(REPO / "packaging" / "rpmlintrc"), str(rpm)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b0 errors, 0 warnings\b", result.stdout), result.stdout


# -- install and remove scripts --------------------------------------------------------------------

OTHER_LINES = [
    "# extensions osqueryd autoloads",
    "; an old comment style osquery also skips",
    "/usr/local/osquery/ext/tables.ext",
    "",
    "   /opt/other/other.ext",
    "/opt/last/last.ext",  # written without a final newline
]


@dataclass(frozen=True)
class Scripts:
    """One package's postinstall and preremove, run the way its package manager runs them."""

    kind: str
    postinstall: Path
    preremove: Path

    def run(self, script: Path, args: list[str], load: Path) -> str:
        env = {**host_env(), "OSQUERY_EXTENSIONS_LOAD": str(load)}
        # dpkg execs the maintainer script (its #! line); rpm runs `/bin/sh <scriptlet> <count>`.
        argv = [str(script), *args] if self.kind == "deb" else ["/bin/sh", str(script), *args]
        return subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout

    # The calls each package manager makes.
    def install(self, load: Path) -> None:
        self.run(self.postinstall, ["configure"] if self.kind == "deb" else ["1"], load)

    def upgrade(self, load: Path) -> None:
        """Old package's remove script told "upgrade", and the new one's postinstall, in each
        manager's order (deb: old prerm, then new postinst; rpm: new %post, then old %preun)."""
        if self.kind == "deb":
            self.run(self.preremove, ["upgrade", "9.9.9"], load)
            self.run(self.postinstall, ["configure", VERSION], load)
        else:
            self.run(self.postinstall, ["2"], load)
            self.run(self.preremove, ["1"], load)

    def remove(self, load: Path) -> None:
        self.run(self.preremove, ["remove"] if self.kind == "deb" else ["0"], load)


@pytest.fixture(scope="module", params=["deb", "rpm"])
def scripts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Scripts:
    """The scripts as shipped inside each built package (not the source files)."""
    where = tmp_path_factory.mktemp(f"scripts-{request.param}")
    if request.param == "deb":
        assert DEB.is_file(), f"{DEB} is missing: run `make package`"
        run("dpkg-deb", "-e", DEB, where / "control")
        return Scripts("deb", where / "control" / "postinst", where / "control" / "prerm")
    assert RPM.is_file(), f"{RPM} is missing: run `make package`"
    post = where / "post.sh"
    post.write_text(run("rpm", "-qp", "--qf", "%{POSTIN}", RPM))
    preun = where / "preun.sh"
    preun.write_text(run("rpm", "-qp", "--qf", "%{PREUN}", RPM))
    return Scripts("rpm", post, preun)


def lines_of(load: Path) -> list[str]:
    return load.read_text().split("\n")


def test_install_adds_the_ext_once_and_keeps_every_other_line(tmp_path: Path, scripts: Scripts) -> None:
    load = tmp_path / "extensions.load"
    load.write_text("\n".join(OTHER_LINES))
    load.chmod(0o640)
    scripts.install(load)
    assert lines_of(load) == [*OTHER_LINES, EXT, ""]
    assert stat.S_IMODE(load.stat().st_mode) == 0o640
    # osqueryd reads it as before, plus the extension.
    listed = autoload_reader().read_autoload_file(load, check=False)
    assert [str(p) for p in listed] == sorted(
        ["/usr/local/osquery/ext/tables.ext", "/opt/other/other.ext", "/opt/last/last.ext", EXT])

    before = load.read_bytes()
    scripts.install(load)  # reinstall
    scripts.upgrade(load)
    scripts.upgrade(load)
    assert load.read_bytes() == before, "reinstall and upgrade keep exactly one line"


def test_remove_takes_out_only_that_line_and_keeps_the_file(tmp_path: Path, scripts: Scripts) -> None:
    load = tmp_path / "extensions.load"
    load.write_text("\n".join(OTHER_LINES[:3]) + f"\n  {EXT}  \n" + "\n".join(OTHER_LINES[3:]) + "\n")
    load.chmod(0o600)
    scripts.install(load)  # already there (with spaces, which osqueryd trims): nothing added
    assert lines_of(load).count(f"  {EXT}  ") == 1 and EXT not in lines_of(load)
    scripts.remove(load)
    assert lines_of(load) == [*OTHER_LINES, ""]
    assert stat.S_IMODE(load.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["extensions.load"], "no temporary left"

    before, mtime = load.read_bytes(), load.stat().st_mtime_ns
    scripts.remove(load)  # not listed any more: the file is not even rewritten
    assert (load.read_bytes(), load.stat().st_mtime_ns) == (before, mtime)


def test_upgrade_and_deb_non_remove_calls_keep_the_line(tmp_path: Path, scripts: Scripts) -> None:
    load = tmp_path / "extensions.load"
    load.write_text("/opt/other/other.ext\n")
    scripts.install(load)
    scripts.upgrade(load)
    assert lines_of(load) == ["/opt/other/other.ext", EXT, ""]
    keep = [["deconfigure", "removing", "x"], ["failed-upgrade", "0.0.1"]] if scripts.kind == "deb" \
        else [["1"], ["2"]]
    for args in keep:
        scripts.run(scripts.preremove, args, load)
        assert lines_of(load) == ["/opt/other/other.ext", EXT, ""], args
    scripts.remove(load)
    assert lines_of(load) == ["/opt/other/other.ext", ""]


def test_install_creates_the_directory_and_file(tmp_path: Path, scripts: Scripts) -> None:
    load = tmp_path / "etc" / "osquery" / "extensions.load"
    scripts.install(load)
    assert load.read_text() == f"{EXT}\n"
    assert stat.S_IMODE(load.stat().st_mode) == 0o644
    assert stat.S_IMODE(load.parent.stat().st_mode) == 0o755
    scripts.remove(load)
    assert load.read_text() == "" and load.exists()
    scripts.remove(load)  # a second remove, or a remove where nothing was installed: no error
    (tmp_path / "absent").mkdir()
    scripts.remove(tmp_path / "absent" / "extensions.load")
    assert not (tmp_path / "absent" / "extensions.load").exists()
