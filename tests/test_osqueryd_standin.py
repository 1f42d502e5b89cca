"""The osqueryd stand-in itself: registration, options, the two-connection call, fatal answers,
autoload safety and launch. If these are wrong, every extension test built on it is wrong."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from osquery import ExtensionClient
from osquery.extensions import Extension
from osquery.extensions.ttypes import ExtensionResponse, ExtensionStatus, InternalExtensionInfo
from thrift.protocol import TBinaryProtocol
from thrift.transport import TSocket, TTransport

from tests.osqueryd_standin import (
    BUILTIN_AWS_PLUGINS,
    AutoloadRefused,
    FatalLoggerAnswer,
    OsquerydStandIn,
)

CONFLICT = "Failed adding registry: Registry item {} conflicts with another item of the same name."


# -- helpers --------------------------------------------------------------------------------------


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[OsquerydStandIn]:
    with OsquerydStandIn(tmp_path) as s:
        yield s


@contextlib.contextmanager
def manager(path: str) -> Iterator[Any]:
    """An extension's view of the manager: osquery-python's own client."""
    client = ExtensionClient(path=path)
    assert client.open(timeout=2)
    try:
        yield client.extension_manager_client()
    finally:
        client.close()


def info(name: str = "aws_logger", sdk: str = "3.0.7") -> InternalExtensionInfo:
    return InternalExtensionInfo(name=name, version="0.1.0", sdk_version=sdk, min_sdk_version="1.8.0")


def loggers(*names: str) -> dict[str, dict[str, list[Any]]]:
    return {"logger": {n: [] for n in names}}


def register(s: OsquerydStandIn, name: str, *plugins: str) -> Any:
    with manager(s.socket_path) as em:
        return em.registerExtension(info(name), loggers(*plugins))


Answer = Callable[[dict[str, str]], ExtensionResponse]


def ok(code: int = 0, message: str = "OK") -> ExtensionResponse:
    return ExtensionResponse(status=ExtensionStatus(code=code, message=message), response=[])


class FakeExtension:
    """An extension server that is single-threaded like osquery-python's TSimpleServer and
    records, per accepted connection, the RPCs it received. Being single-threaded matters:
    a client that kept its ping connection open would make the call connection hang."""

    def __init__(self, path: str, answer: Answer) -> None:
        self.path = path
        self.answer = answer
        self.connections: list[list[str]] = []
        self.requests: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeExtension:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    # Extension.Iface
    def ping(self) -> ExtensionStatus:
        self.connections[-1].append("ping")
        return ExtensionStatus(code=0, message="OK")

    def call(self, registry: str, item: str, request: dict[str, str]) -> ExtensionResponse:
        self.connections[-1].append("call")
        self.requests.append(dict(request))
        return self.answer(request)

    def shutdown(self) -> None:
        pass

    def _serve(self) -> None:
        processor = Extension.Processor(self)
        while not self._stop.is_set():
            if not select.select([self._listener], [], [], 0.05)[0]:
                continue
            conn, _ = self._listener.accept()
            self.connections.append([])
            handle = TSocket.TSocket()
            handle.setHandle(conn)
            transport = TTransport.TBufferedTransport(handle)
            protocol = TBinaryProtocol.TBinaryProtocol(transport)
            try:
                while True:
                    processor.process(protocol, protocol)
            except (TTransport.TTransportException, OSError):
                pass  # client closed this connection: serve the next one
            finally:
                conn.close()


@contextlib.contextmanager
def fake_extension(s: OsquerydStandIn, answer: Answer | None = None) -> Iterator[tuple[int, FakeExtension]]:
    status = register(s, "fake", "fake_logger")
    assert status.code == 0
    with FakeExtension(s.extension_socket(status.uuid), answer or (lambda r: ok())) as fake:
        yield status.uuid, fake


def executable(path: Path, body: str = "#!/bin/sh\nexit 0\n", mode: int = 0o755) -> Path:
    path.write_text(body)
    path.chmod(mode)
    return path


# -- registration ---------------------------------------------------------------------------------


def test_registration_assigns_a_uuid_and_lists_the_extension(standin: OsquerydStandIn) -> None:
    status = register(standin, "aws_logger", *BUILTIN_AWS_PLUGINS)
    assert status.code == 0 and status.message == "OK"
    assert 1 <= status.uuid <= 65535
    assert standin.wait_registered(timeout=1) == status.uuid
    assert standin.register_answers == [status]
    assert standin.extension_socket(status.uuid) == f"{standin.socket_path}.{status.uuid}"
    with manager(standin.socket_path) as em:
        listed = em.extensions()
    assert list(listed) == [status.uuid]
    assert listed[status.uuid].name == "aws_logger" and listed[status.uuid].sdk_version == "3.0.7"
    registered_info, registry = standin.registered[status.uuid]
    assert registered_info.name == "aws_logger"
    assert set(registry["logger"]) == set(BUILTIN_AWS_PLUGINS)


def test_stock_build_refuses_the_builtin_aws_names(tmp_path: Path) -> None:
    with OsquerydStandIn(tmp_path, builtin_aws=True) as s:
        status = register(s, "aws_logger", "aws_kinesis", "aws_firehose")
        # std::map order: aws_firehose is checked (and reported) first.
        assert (status.code, status.message) == (1, CONFLICT.format("aws_firehose"))
        assert s.registered == {}
        assert register(s, "aws_logger", "custom_kinesis").code == 0


def test_a_name_held_by_a_live_extension_conflicts_until_it_is_gone(
    standin: OsquerydStandIn,
) -> None:
    first = register(standin, "one", "shared")
    refused = register(standin, "two", "shared")
    assert (refused.code, refused.message) == (1, CONFLICT.format("shared"))
    standin.deregister(first.uuid)
    with manager(standin.socket_path) as em:
        assert em.extensions() == {}
    assert register(standin, "two", "shared").code == 0


def test_other_refusals_use_osquery_wording(standin: OsquerydStandIn) -> None:
    assert register(standin, "dup", "a").code == 0
    duplicate = register(standin, "dup", "b")
    assert (duplicate.code, duplicate.message) == (1, "Duplicate extension registered")
    core = register(standin, "x", "filesystem")
    assert core.message == CONFLICT.format("filesystem")
    with manager(standin.socket_path) as em:
        old = em.registerExtension(info("old", sdk="1.7.6"), loggers("c"))
        unknown = em.registerExtension(info("y"), {"nonsense": {"d": []}})
    assert (old.code, old.message) == (1, "Incompatible extension SDK version")
    assert (unknown.code, unknown.message) == (1, "Failed adding registry: Unknown registry: nonsense")
    assert len(standin.register_answers) == 5


def test_deregister_rpc_answers_like_osquery(standin: OsquerydStandIn) -> None:
    uuid = register(standin, "e", "p").uuid
    with manager(standin.socket_path) as em:
        gone = em.deregisterExtension(uuid)
        again = em.deregisterExtension(uuid)
        pong = em.ping()
    assert (gone.code, gone.uuid) == (0, 0)  # the manager's uuid, not the removed one
    assert (again.code, again.message) == (1, "No extension UUID found")
    assert (pong.code, pong.message) == (0, "pong")
    assert standin.registered == {}


def test_wait_registered_times_out(standin: OsquerydStandIn) -> None:
    with pytest.raises(TimeoutError):
        standin.wait_registered(timeout=0.1)


# -- options and query ----------------------------------------------------------------------------


def test_options_report_core_flags_with_types_and_defaults(tmp_path: Path) -> None:
    s = OsquerydStandIn(tmp_path, flags={"logger_plugin": "aws_logger"})
    with s, manager(s.socket_path) as em:
        options = em.options()
    assert (options["logger_plugin"].value, options["logger_plugin"].default_value) == (
        "aws_logger",
        "filesystem",
    )
    assert options["host_identifier"].type == "string"
    assert (options["logger_event_type"].type, options["logger_event_type"].value) == ("bool", "true")
    assert options["extensions_socket"].value == s.socket_path
    assert not any(name.startswith("aws_") for name in options)  # not compiled in


def test_stock_build_reports_aws_flags_with_osquery_defaults(tmp_path: Path) -> None:
    s = OsquerydStandIn(tmp_path, builtin_aws=True, flags={"aws_kinesis_stream": "s"})
    with s, manager(s.socket_path) as em:
        options = em.options()
    assert options["aws_kinesis_stream"].value == "s"
    assert (options["aws_kinesis_period"].type, options["aws_kinesis_period"].value) == (
        "uint64",
        "10",
    )
    assert options["aws_sts_session_name"].default_value == "default"
    assert options["aws_kinesis_random_partition_key"].value == "false"


def test_unknown_flags_are_refused_like_osqueryd_would(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="builtin_aws"):
        OsquerydStandIn(tmp_path, flags={"aws_kinesis_stream": "s"})
    with pytest.raises(ValueError):
        OsquerydStandIn(tmp_path, custom_options={"kinesis_stream": "s"})


def test_custom_options_and_live_updates(tmp_path: Path) -> None:
    s = OsquerydStandIn(tmp_path, custom_options={"custom_aws_stream": "a"})
    with s, manager(s.socket_path) as em:
        custom = em.options()["custom_aws_stream"]
        assert (custom.value, custom.default_value, custom.type) == ("a", "", "string")
        s.set_custom_option("custom_aws_stream", "b")
        s.set_custom_option("custom_new", "c")
        s.set_flag("host_identifier", "uuid")
        s.set_custom_option("custom_new", "")  # empty values are skipped, as osquery does
        options = em.options()
        assert options["custom_aws_stream"].value == "b"
        assert options["custom_new"].value == "c"
        assert options["host_identifier"].value == "uuid"
        with pytest.raises(ValueError, match="CLI only"):
            s.set_flag("logger_plugin", "x")


def test_query_answers_version_and_host(tmp_path: Path) -> None:
    with (
        OsquerydStandIn(tmp_path, version="5.23.1", host_identifier="web-1") as s,
        manager(s.socket_path) as em,
    ):
        version = em.query("select version from osquery_info")
        host = em.query("SELECT hostname FROM system_info;")
        flag = em.query("select value from osquery_flags where name = 'logger_plugin'")
        missing = em.query("select * from nope")
    assert (version.status.code, version.response) == (0, [{"version": "5.23.1"}])
    assert host.response == [{"hostname": "web-1"}]
    assert flag.response == [{"value": "filesystem"}]
    assert (missing.status.code, missing.status.message) == (1, "no such table: nope")


# -- calling an extension -------------------------------------------------------------------------


def test_each_call_is_a_ping_connection_then_a_call_connection(standin: OsquerydStandIn) -> None:
    with fake_extension(standin) as (uuid, fake):
        response = standin.call(uuid, "logger", "fake_logger", {"init": "osqueryd"}, timeout=3)
        standin.log_string(uuid, "fake_logger", standin.result_line())
    assert response.status.code == 0
    assert fake.connections == [["ping"], ["call"], ["ping"], ["call"]]
    assert fake.requests[0] == {"init": "osqueryd"}
    assert fake.requests[1]["category"] == "event"
    assert [c[:3] for c in standin.calls] == [
        (uuid, "logger", "fake_logger"),
        (uuid, "logger", "fake_logger"),
    ]


def test_non_zero_string_or_snapshot_answers_are_fatal(standin: OsquerydStandIn) -> None:
    with fake_extension(standin, lambda r: ok(1, "no")) as (uuid, _):
        with pytest.raises(FatalLoggerAnswer) as fatal:
            standin.log_string(uuid, "fake_logger", "{}")
        assert fatal.value.response.status.message == "no"
        with pytest.raises(FatalLoggerAnswer):
            standin.log_snapshot(uuid, "fake_logger", "{}")
        # Status and init answers are ignored by osqueryd: returned, never raised.
        entry = standin.status_entry("hello")
        assert standin.log_status(uuid, "fake_logger", [entry]).status.code == 1
        assert standin.init(uuid, "fake_logger").status.code == 1


def test_an_extension_that_raises_is_fatal(standin: OsquerydStandIn) -> None:
    def boom(request: dict[str, str]) -> ExtensionResponse:
        raise RuntimeError("boom")

    with fake_extension(standin, boom) as (uuid, _), pytest.raises(FatalLoggerAnswer):
        standin.log_string(uuid, "fake_logger", "{}")


def test_a_missing_extension_socket_is_fatal_not_an_exception(standin: OsquerydStandIn) -> None:
    uuid = register(standin, "ghost", "ghost_logger").uuid
    response = standin.call(uuid, "logger", "ghost_logger", {"string": "{}"})
    assert (response.status.code, response.status.message) == (
        1,
        f"Extension socket not available: {standin.extension_socket(uuid)}",
    )
    with pytest.raises(FatalLoggerAnswer, match="not available"):
        standin.log_string(uuid, "ghost_logger", "{}")


def test_features_is_the_status_code(standin: OsquerydStandIn) -> None:
    with fake_extension(standin, lambda r: ok(3 if r.get("action") == "features" else 0)) as (
        uuid,
        _,
    ):
        assert standin.features(uuid, "fake_logger") == 3


def test_status_payload_is_a_json_array_of_osquery_entries(standin: OsquerydStandIn) -> None:
    with fake_extension(standin) as (uuid, fake):
        entries = [standin.status_entry("a", severity=2, filename="f.cpp", line=7)]
        standin.log_status(uuid, "fake_logger", entries)
    request = fake.requests[0]
    assert request["status"] == "true"
    (entry,) = json.loads(request["log"])
    assert list(entry) == ["s", "f", "i", "m", "h", "c", "u"]
    assert (entry["s"], entry["f"], entry["i"], entry["m"]) == (2, "f.cpp", 7, "a")
    assert entry["h"] == "standin-host"
    assert entry["c"].endswith(" UTC") and time.strptime(entry["c"], "%a %b %d %H:%M:%S %Y UTC")


def test_result_line_has_osquery_shape_and_pads_exactly(standin: OsquerydStandIn) -> None:
    line = standin.result_line("pack_p_q", {"pid": "1"})
    record = json.loads(line)
    assert list(record) == [
        "name",
        "hostIdentifier",
        "calendarTime",
        "unixTime",
        "epoch",
        "counter",
        "numerics",
        "decorations",
        "columns",
        "action",
    ]
    assert isinstance(record["unixTime"], int) and record["numerics"] is False
    assert record["columns"] == {"pid": "1"} and record["action"] == "added"
    assert " " not in line.split('"calendarTime"')[0]  # compact, like rapidjson's Writer
    padded = standin.result_line(pad_to=5000)
    assert len(padded.encode()) == 5000
    assert "decorations" not in json.loads(standin.result_line(decorations={}))


# -- stopping -------------------------------------------------------------------------------------


def test_stop_removes_the_socket_and_cuts_open_connections(tmp_path: Path) -> None:
    s = OsquerydStandIn(tmp_path)
    s.start()
    watcher = ExtensionClient(path=s.socket_path)
    assert watcher.open(timeout=2)
    try:
        assert watcher.extension_manager_client().ping().code == 0
        s.stop()
        assert not os.path.exists(s.socket_path)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with probe, pytest.raises(OSError):
            probe.connect(s.socket_path)
        # osquery-python's watcher pings on its one open connection: that must now fail.
        with pytest.raises((TTransport.TTransportException, OSError)):
            watcher.extension_manager_client().ping()
    finally:
        watcher.close()


# -- autoload -------------------------------------------------------------------------------------


@pytest.fixture
def ext_dir(tmp_path: Path) -> Path:
    d = tmp_path / "exts"
    d.mkdir(mode=0o755)
    return d


def test_a_safe_extension_passes(standin: OsquerydStandIn, ext_dir: Path) -> None:
    standin.autoload_check(executable(ext_dir / "ok.ext"))
    # Group-writable is allowed: osquery's hasSafePermissions only refuses S_IWOTH.
    standin.autoload_check(executable(ext_dir / "group.ext", mode=0o775))


@pytest.mark.parametrize(
    ("name", "mode", "reason"),
    [
        ("wrong.py", 0o755, "not ending in one of '.ext'"),
        ("noexec.ext", 0o644, "owner-execute"),
        ("groupexec.ext", 0o654, "owner-execute"),
        ("world.ext", 0o757, "world-writable"),
    ],
)
def test_unsafe_files_are_refused(
    standin: OsquerydStandIn, ext_dir: Path, name: str, mode: int, reason: str
) -> None:
    with pytest.raises(AutoloadRefused, match=reason):
        standin.autoload_check(executable(ext_dir / name, mode=mode))


def test_a_foreign_owner_is_refused(standin: OsquerydStandIn, ext_dir: Path) -> None:
    path = executable(ext_dir / "theirs.ext")
    try:
        os.chown(path, os.getuid() + 4242, -1)
    except PermissionError:
        pytest.skip("changing a file's owner needs root")
    with pytest.raises(AutoloadRefused, match="neither root nor us"):
        standin.autoload_check(path)


def test_sticky_directories_missing_files_and_directories_are_refused(
    standin: OsquerydStandIn, ext_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = executable(ext_dir / "tmp.ext")
    ext_dir.chmod(0o1777)
    with pytest.raises(AutoloadRefused, match="sticky"):
        standin.autoload_check(path)
    with pytest.raises(AutoloadRefused, match="doesn't exist"):
        standin.autoload_check(ext_dir / "absent.ext")
    with pytest.raises(AutoloadRefused, match="from directory"):
        standin.autoload_check(ext_dir)
    monkeypatch.chdir(ext_dir.parent)
    executable(Path("bare.ext"))
    with pytest.raises(AutoloadRefused, match="cannot stat directory"):
        standin.autoload_check(Path("bare.ext"))  # a safe file, but its parent is "" to osquery


def test_autoload_file_is_parsed_like_osquery(standin: OsquerydStandIn, tmp_path: Path) -> None:
    one = executable(tmp_path / "one.ext")
    sub = tmp_path / "more"
    (sub / "deeper").mkdir(parents=True)
    two = executable(sub / "deeper" / "two.ext")
    executable(sub / "notes.txt")
    executable(sub / ".hidden.ext")
    load = tmp_path / "extensions.load"
    load.write_text(f"# comment\n\n; also comment\n  {one}  \n{sub}\n{one}\n{tmp_path}/absent.ext\n")
    assert standin.read_autoload_file(load) == sorted([one, two])  # a std::set
    refused = {p.name for p, _ in standin.autoload_refusals}
    assert refused == {"notes.txt", "absent.ext"}
    assert standin.read_autoload_file(tmp_path / "none.load") == []
    unchecked = standin.read_autoload_file(load, check=False)
    assert {p.name for p in unchecked} == {"one.ext", "two.ext", "notes.txt", "absent.ext"}


def test_spawn_runs_the_exact_command_line_with_its_own_pid(standin: OsquerydStandIn, ext_dir: Path) -> None:
    out = ext_dir / "out.json"
    script = executable(
        ext_dir / "argv.ext",
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv, 'pid': os.getpid(), "
        f"'env': os.environ.get('OSQUERY_EXTENSION'), 'x': os.environ.get('X')}}, "
        f"open({str(out)!r}, 'w'))\n",
    )
    proc = standin.spawn(script, verbose=True, timeout=5, interval=2, env={"X": "y"})
    assert proc.wait(timeout=10) == 0
    seen = json.loads(out.read_text())
    assert seen["argv"] == [
        str(script),
        "--verbose",
        "--socket",
        standin.socket_path,
        "--timeout",
        "5",
        "--interval",
        "2",
    ]
    assert seen["pid"] == proc.pid and seen["env"] == str(proc.pid)  # one process, its own pid
    assert seen["x"] == "y"
    with pytest.raises(AutoloadRefused):
        standin.spawn(executable(ext_dir / "bad.sh"))


def test_a_real_osquery_python_extension_round_trip(standin: OsquerydStandIn, ext_dir: Path) -> None:
    """osquery-python's own start_extension against the stand-in: register, watcher pings on a
    kept-open connection while calls arrive, and the extension dies when the manager goes."""
    script = executable(
        ext_dir / "py_logger.ext",
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            """
            import osquery
            from osquery.extensions.ttypes import ExtensionStatus

            @osquery.register_plugin
            class Logger(osquery.LoggerPlugin):
                def name(self):
                    return "py_logger"

                def log_string(self, value):
                    return ExtensionStatus(code=0, message="OK")

            osquery.start_extension(name="py_logger_ext", version="1.0.0")
            """
        ),
    )
    proc = standin.spawn(script, interval=1)
    try:
        uuid = standin.wait_registered(timeout=15)
        deadline = time.monotonic() + 10
        while not os.path.exists(standin.extension_socket(uuid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(3):
            standin.log_string(uuid, "py_logger", standin.result_line())
        # osquery-python answers features with code 1: osqueryd reads "send me status logs".
        assert standin.features(uuid, "py_logger") == 1
        time.sleep(1.5)  # let the watcher ping at least once on its own connection
        assert sum(1 for r in standin.manager_requests if r[0] == "ping") >= 1
        standin.stop()
        assert proc.wait(timeout=10) == 1  # the watcher's os._exit(1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
