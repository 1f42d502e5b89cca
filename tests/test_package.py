"""The .deb and .rpm that `make package` builds: contents, the packaged extension under the
osqueryd stand-in, and the install/remove scripts. Run by `make package-test` (marker
``package``; plain `make test` deselects it because it needs fresh packages in dist/)."""

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

from tests.harness import wait_for
from tests.localaws import MotoServer
from tests.osqueryd_standin import OsquerydStandIn

pytestmark = pytest.mark.package

REPO = Path(__file__).resolve().parent.parent
# pyproject's [project] version (a regex: tomllib is not in Python 3.10, the project's floor).
_VERSION = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
assert _VERSION
VERSION = _VERSION.group(1)
DEB_ARCH, RPM_ARCH = {"x86_64": ("amd64", "x86_64"), "aarch64": ("arm64", "aarch64")}[os.uname().machine]
DEB = REPO / "dist" / f"osquery-aws-logger_{VERSION}_{DEB_ARCH}.deb"
RPM = REPO / "dist" / f"osquery-aws-logger-{VERSION}.{RPM_ARCH}.rpm"

EXT = "/opt/osquery-aws-logger/osquery-aws-logger.ext"
DOC = "/usr/share/doc/osquery-aws-logger"
DOC_FILES = {"README", "osquery.conf.example", "osquery.custom.conf.example",
             "osquery.flags.example", "osquery.no-aws.flags.example"}
LINK = "/usr/bin/osquery-aws-logger"
# Directories the deb lists on the way to its own (dpkg shares them; the rpm leaves them out,
# since `filesystem` owns them there with other modes).
SHARED_DIRS = {"/opt", "/usr", "/usr/bin", "/usr/share", "/usr/share/doc"}
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_EC2_METADATA_DISABLED": "true"}


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
        assert inside or e.path in SHARED_DIRS, f"{where}: outside the package's own places"
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
        == SHARED_DIRS | {LINK}
    assert by_path[LINK].mode == 0o777  # what ln -s makes; a link's own mode is never used
    fields = {name: run("dpkg-deb", "-f", deb, name).strip()
              for name in ("Package", "Version", "Architecture", "Depends")}
    assert fields["Package"] == "osquery-aws-logger"
    assert fields["Version"] == f"{VERSION}-1"
    assert fields["Architecture"] == DEB_ARCH
    assert re.fullmatch(r"libc6 \(>= 2\.\d+\)", fields["Depends"])


def test_rpm_lists_the_same_paths_owned_by_root_with_safe_modes(
        packages: tuple[Path, Path]) -> None:
    deb, rpm = packages
    by_path = check_entries(rpm_entries(rpm))
    deb_paths = {e.path: e for e in deb_entries(deb)}
    assert set(by_path) == set(deb_paths) - SHARED_DIRS, "the rpm claims no shared directory"
    for path, entry in by_path.items():
        if entry.kind != "l":
            assert (entry.kind, entry.mode) == (deb_paths[path].kind, deb_paths[path].mode), path
    query = run("rpm", "-qp", "--qf", "%{NAME} %{VERSION} %{ARCH}", rpm)
    assert query == f"osquery-aws-logger {VERSION} {RPM_ARCH}"
    requires = run("rpm", "-qpR", rpm)
    assert re.search(r"^glibc >= 2\.\d+$", requires, re.M)
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


# -- the packaged extension under the osqueryd stand-in --------------------------------------------


def unpack_deb(into: Path) -> Path:
    root = into / "root"
    root.mkdir()
    run("dpkg-deb", "-x", DEB, root)
    return root


@pytest.fixture
def packaged_ext(tmp_path: Path) -> Path:
    """The .deb unpacked into a temporary root: the .ext as the package installs it."""
    assert DEB.is_file(), f"{DEB} is missing: run `make package`"
    ext = unpack_deb(tmp_path) / EXT.lstrip("/")
    # pytest's tmp directories carry no sticky bit (only /tmp itself does), as osquery requires.
    assert not ext.parent.stat().st_mode & stat.S_ISVTX
    return ext


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


class Launched:
    """The packaged .ext spawned by the stand-in as osqueryd would, killed by pid at the end."""

    def __init__(self, standin: OsquerydStandIn, ext: Path, stderr_path: Path,
                 env: dict[str, str]) -> None:
        self.standin = standin
        self.stderr_path = stderr_path
        self.started = time.monotonic()
        with open(stderr_path, "wb") as stderr:
            self.proc = standin.spawn(ext, timeout=3, interval=3, env=env, stderr=stderr)
        self.uuid = 0
        self.startup_s = 0.0

    def wait_registered(self) -> None:
        try:
            self.uuid = self.standin.wait_registered(timeout=20)
        except TimeoutError as exc:
            raise AssertionError(f"not registered; its stderr:\n{self.stderr()}") from exc
        wait_for(lambda: os.path.exists(self.standin.extension_socket(self.uuid)), 10,
                 "the extension's socket")
        self.startup_s = time.monotonic() - self.started

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def launch(tmp_path: Path, standin_dir: Path) -> Iterator[Callable[..., Launched]]:
    """start(ext, ...): a stand-in on a short socket path and the extension registered with it;
    both are stopped (the extension killed by pid) after the test."""

    def start(ext: Path, *, builtin_aws: bool = False, flags: dict[str, str] | None = None,
              custom_options: dict[str, str] | None = None) -> Launched:
        standin = OsquerydStandIn(standin_dir, builtin_aws=builtin_aws, flags=flags,
                                  custom_options=custom_options)
        standin.start()
        stand_ins.append(standin)
        # spawn() layers this over the test's environment; the PATH leaves out the venv.
        env = {"PATH": host_env()["PATH"], **AWS_ENV}
        launched = Launched(standin, ext, tmp_path / "extension.stderr", env)
        extensions.append(launched)
        launched.wait_registered()
        return launched

    stand_ins: list[OsquerydStandIn] = []
    extensions: list[Launched] = []
    yield start
    for launched in extensions:
        launched.close()
    for standin in stand_ins:
        standin.stop()


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def status_kb(pid: int, field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert match, field
    return int(match.group(1))


def test_packaged_ext_autoloads_runs_as_one_process_and_ships_a_line_to_kinesis(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, packaged_ext: Path,
        launch: Callable[..., Launched], moto_server: MotoServer) -> None:
    # The autoload file as the package's postinstall leaves it, pointed at the unpacked root.
    load = tmp_path / "extensions.load"
    load.write_text(f"# autoload\n{packaged_ext}\n")
    probe = autoload_reader()
    assert probe.read_autoload_file(load) == [packaged_ext], probe.autoload_refusals

    moto_server.reset()
    moto_server.create_stream("pkg-stream")
    ext = launch(packaged_ext, custom_options={
        "custom_aws_kinesis_stream": "pkg-stream",
        "custom_aws_kinesis_endpoint": moto_server.url,
        "custom_aws_kinesis_period": "1",
        "custom_aws_logger_spool_dir": str(tmp_path / "spool"),
        "custom_aws_region": "us-east-1",
    })
    standin, pid = ext.standin, ext.proc.pid
    info, routes = standin.registered[ext.uuid]
    assert info.name == "aws_logger" and info.version == VERSION
    assert sorted(routes["logger"]) == ["aws_firehose", "aws_kinesis"]

    # One process: the pid osqueryd started is the extension (exec'd in place, no bootloader
    # parent waiting on a child), its argv is osqueryd's, and it has no children.
    assert Path(f"/proc/{pid}/exe").resolve() == packaged_ext.resolve()
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert argv == [str(packaged_ext).encode(), b"--socket", standin.socket_path.encode(),
                    b"--timeout", b"3", b"--interval", b"3"]
    assert children(pid) == []
    # Self-contained: the CPython it runs is the bundled one, none of the host's.
    maps = Path(f"/proc/{pid}/maps").read_text()
    libpython = {m for m in re.findall(r"(/\S*libpython3\.\d+\.so\S*)", maps)}
    assert libpython and all(p.startswith(str(packaged_ext.parent)) for p in libpython), libpython

    standin.init(ext.uuid, "aws_kinesis")
    line = standin.result_line("pack_pkg_time", {"hour": "14", "minutes": "7"})
    assert standin.log_string(ext.uuid, "aws_kinesis", line).status.code == 0
    records = wait_for(lambda: moto_server.read_stream("pkg-stream"), 20, "the Kinesis record")
    assert [json.loads(data) for data, _ in records] == [{**json.loads(line), "log_type": "result"}]
    assert records[0][1] == standin.host_identifier
    assert children(pid) == []

    time.sleep(3)  # let it settle: a flush period or two, idle
    rss_mb = status_kb(pid, "VmRSS") / 1024
    threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
    report(capsys, f"startup (spawn -> registered, socket up): {ext.startup_s:.2f} s; "
                    f"RSS at rest {rss_mb:.1f} MB; {threads} threads; one process (pid {pid})")
    assert ext.startup_s < 10
    assert rss_mb < 150, "osquery's extension watchdog allows 200 MB of growth"

    ext.proc.send_signal(signal.SIGTERM)
    assert ext.proc.wait(15) == 0, ext.stderr()


def launch_on_stock_build(tmp_path: Path, packaged_ext: Path, launch: Callable[..., Launched],
                          moto_server: MotoServer) -> Launched:
    moto_server.reset()
    moto_server.create_stream("stock-stream")
    # A stock osqueryd holds the seed config's aws_* options as its own flags (every other aws_*
    # flag at osquery's default, as options() reports them).
    return launch(packaged_ext, builtin_aws=True, flags={
        "aws_kinesis_stream": "stock-stream", "aws_kinesis_endpoint": moto_server.url,
        "aws_kinesis_period": "1", "aws_region": "us-east-1",
    }, custom_options={"custom_aws_logger_spool_dir": str(tmp_path / "spool")})


def test_packaged_ext_takes_the_ext_names_on_a_stock_build(
        tmp_path: Path, packaged_ext: Path, launch: Callable[..., Launched],
        moto_server: MotoServer) -> None:
    ext = launch_on_stock_build(tmp_path, packaged_ext, launch, moto_server)
    assert sorted(ext.standin.registered[ext.uuid][1]["logger"]) == [
        "aws_firehose_ext", "aws_kinesis_ext"]
    assert "--logger_plugin=aws_kinesis_ext,aws_firehose_ext" in ext.stderr()


def test_packaged_ext_ships_on_a_stock_build(
        tmp_path: Path, packaged_ext: Path, launch: Callable[..., Launched],
        moto_server: MotoServer) -> None:
    ext = launch_on_stock_build(tmp_path, packaged_ext, launch, moto_server)
    line = ext.standin.result_line("pack_stock")
    assert ext.standin.log_string(ext.uuid, "aws_kinesis_ext", line).status.code == 0
    records = wait_for(lambda: moto_server.read_stream("stock-stream"), 10, "the Kinesis record")
    assert json.loads(records[0][0])["name"] == "pack_stock"
    assert "settings unusable" not in ext.stderr()


def test_packaged_ext_and_its_path_link_need_no_python(tmp_path: Path, packaged_ext: Path) -> None:
    env = {"PATH": "/nonexistent", "HOME": str(tmp_path)}
    assert run(packaged_ext, "--version", env=env).strip() == f"osquery-aws-logger {VERSION}"
    # /usr/bin/osquery-aws-logger is a link to the .ext: the bootloader finds _internal/ through it.
    link = tmp_path / "osquery-aws-logger"
    link.symlink_to(packaged_ext)
    assert run(link, "--version", env=env).strip() == f"osquery-aws-logger {VERSION}"


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
