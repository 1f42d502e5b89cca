"""The real extension process under the osqueryd stand-in: registration, calls, settings, lifecycle."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from osquery.extensions.Extension import Client
from thrift.protocol import TBinaryProtocol
from thrift.transport import TSocket, TTransport

from osquery_aws_logger import parse_settings
from osquery_aws_logger.results.records import status_record
from tests.harness import RunningExtension, wait_for
from tests.osqueryd_standin import FatalLoggerAnswer

Factory = type[RunningExtension]


def test_registers_both_plugins_with_osquery_argv_on_a_build_without_aws(
        tmp_path: Path, extension_factory: Factory) -> None:
    with extension_factory(tmp_path) as ext:
        info, registry = ext.standin.registered[ext.uuid]
        assert info.name == "aws_logger"
        assert info.version == "0.1.0"
        assert sorted(registry["logger"]) == ["aws_firehose", "aws_kinesis"]
        assert os.path.exists(ext.standin.extension_socket(ext.uuid))
        assert ext.proc is not None
        cmdline = Path(f"/proc/{ext.proc.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert cmdline[-6:] == [b"--socket", ext.standin.socket_path.encode(), b"--timeout",
                                b"3", b"--interval", b"1"]


def test_stock_build_name_clash_registers_the_ext_names_and_says_what_to_do(
        tmp_path: Path, extension_factory: Factory) -> None:
    with extension_factory(tmp_path, builtin_aws=True) as ext:
        assert sorted(ext.standin.registered[ext.uuid][1]["logger"]) == [
            "aws_firehose_ext", "aws_kinesis_ext"]
        refused = ext.standin.register_answers[0]
        assert refused.code != 0 and "conflicts with another item" in refused.message
        assert "--logger_plugin=aws_kinesis_ext,aws_firehose_ext" in ext.stderr()


def test_plugin_suffix_option_chooses_the_registered_names(
        tmp_path: Path, extension_factory: Factory) -> None:
    with extension_factory(tmp_path, builtin_aws=True,
                           options={"aws_logger_plugin_suffix": "_py"}) as ext:
        assert sorted(ext.standin.registered[ext.uuid][1]["logger"]) == [
            "aws_firehose_py", "aws_kinesis_py"]
        assert len(ext.standin.register_answers) == 1


def test_features_ask_for_status_logs_unless_kinesis_status_is_disabled(
        tmp_path: Path, extension_factory: Factory) -> None:
    with extension_factory(tmp_path) as ext:
        assert ext.standin.features(ext.uuid, "aws_kinesis") == 1
        assert ext.standin.features(ext.uuid, "aws_firehose") == 1
    with extension_factory(tmp_path / "2",
                           options={"aws_kinesis_disable_log_status": "true"}) as ext:
        assert ext.standin.features(ext.uuid, "aws_kinesis") == 0
        assert ext.standin.features(ext.uuid, "aws_firehose") == 1


def test_log_calls_answer_zero_quickly_whatever_the_line(
        tmp_path: Path, extension_factory: Factory) -> None:
    with extension_factory(tmp_path) as ext:
        bad_lines = ["", "not json", "[1,2]", "{", "\udcff\udcfe", "x" * 3_000_000]
        for line in [ext.standin.result_line(), *bad_lines]:
            for plugin in ("aws_kinesis", "aws_firehose"):
                started = time.monotonic()
                answer = ext.standin.log_string(ext.uuid, plugin, line)
                assert answer.status.code == 0
                assert time.monotonic() - started < 1.0
        assert ext.standin.log_snapshot(ext.uuid, "aws_kinesis", "{}").status.code == 0
        answer = ext.standin.call(ext.uuid, "logger", "aws_kinesis",
                                  {"status": "true", "log": "not json"})
        assert answer.status.code == 0
        assert ext.proc is not None and ext.proc.poll() is None


def test_init_and_health_answer_zero_and_unknown_requests_do_not(
        tmp_path: Path, extension_factory: Factory) -> None:
    with extension_factory(tmp_path) as ext:
        assert ext.standin.init(ext.uuid, "aws_kinesis").status.code == 0
        health = ext.standin.call(ext.uuid, "logger", "aws_firehose", {"health": "{}"})
        assert health.status.code == 0
        unknown = ext.standin.call(ext.uuid, "logger", "aws_kinesis", {"bogus": "1"})
        assert unknown.status.code != 0 and "unknown logger request" in unknown.status.message
        other = ext.standin.call(ext.uuid, "table", "aws_kinesis", {"action": "generate"})
        assert other.status.code != 0


_request_keys = st.sampled_from(["string", "snapshot", "status", "log", "category", "init",
                                 "action", "health", "event", "x"])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(requests=st.lists(st.dictionaries(_request_keys, st.text(max_size=300), max_size=4),
                         min_size=1, max_size=5))
def test_no_request_map_makes_a_log_call_fail_or_the_extension_die(
        running: RunningExtension, requests: list[dict[str, str]]) -> None:
    for request in requests:
        for plugin in ("aws_kinesis", "aws_firehose"):
            answer = running.standin.call(running.uuid, "logger", plugin, request)
            if any(key in request for key in ("string", "snapshot", "status")):
                assert answer.status.code == 0, (request, answer)
    assert running.proc is not None and running.proc.poll() is None


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with RunningExtension(tmp_path_factory.mktemp("fuzz")) as ext:
        yield ext


def test_invalid_options_are_named_with_secrets_redacted_and_the_extension_keeps_serving(
        tmp_path: Path, extension_factory: Factory) -> None:
    options = {"aws_kinesis_stream": "s", "aws_sts_timeout": "60", "aws_kinesis_period": "soon",
               "aws_proxy_port": "eighty", "aws_proxy_scheme": "gopher",
               "aws_secret_access_key": "SECRETKEY123", "aws_kinesis_endpoint": "ftp://x"}
    with extension_factory(tmp_path, options=options) as ext:
        assert ext.log("kinesis", ext.standin.result_line()).status.code == 0
        wait_for(lambda: "aws_proxy_scheme" in ext.stderr(), 5, "the settings error")
        err = ext.stderr()
        for expected in ("aws_sts_timeout='60'", "aws_kinesis_period='soon'",
                         "aws_proxy_port='eighty'", "aws_proxy_scheme='gopher'",
                         "aws_kinesis_endpoint='ftp://x'"):
            assert expected in err
        assert "SECRETKEY123" not in err
        assert ext.proc is not None and ext.proc.poll() is None


def test_settings_come_from_custom_options_core_flags_and_the_command_line_in_that_order(
        ) -> None:
    options = {"aws_kinesis_stream": "core", "custom_aws_kinesis_stream": "custom",
               "aws_firehose_stream": "core-only", "custom_aws_region": "eu-west-1"}
    settings, problems = parse_settings(options, {"aws_region": "ap-south-1"})
    assert problems == []
    assert settings.aws_kinesis_stream == "custom"
    assert settings.aws_firehose_stream == "core-only"
    assert settings.aws_region == "ap-south-1"
    assert settings.aws_kinesis_period == 10 and settings.aws_sts_timeout == 3600


@pytest.mark.parametrize("how", ["sigterm", "sigint", "shutdown", "osqueryd_gone", "deregistered"])
def test_the_extension_exits_zero_promptly_however_it_is_stopped(
        tmp_path: Path, extension_factory: Factory, how: str) -> None:
    with extension_factory(tmp_path, interval=1) as ext:
        assert ext.proc is not None
        started = time.monotonic()
        if how == "sigterm":
            ext.proc.send_signal(signal.SIGTERM)
        elif how == "sigint":
            ext.proc.send_signal(signal.SIGINT)
        elif how == "shutdown":
            sock = TSocket.TSocket(unix_socket=ext.standin.extension_socket(ext.uuid))
            transport = TTransport.TBufferedTransport(sock)
            transport.open()
            Client(TBinaryProtocol.TBinaryProtocol(transport)).shutdown()
            transport.close()
        elif how == "osqueryd_gone":
            ext.standin.stop()
        else:
            ext.standin.deregister(ext.uuid)
        # 2 x interval to notice, plus the bounded flush (nothing waits here).
        assert ext.wait_exit(timeout=10) == 0
        assert time.monotonic() - started < 2 * ext.interval + 3


def test_a_non_zero_answer_would_be_fatal_in_the_standin(
        tmp_path: Path, extension_factory: Factory) -> None:
    # The harness really plays osqueryd's rule: a refused log call raises.
    with extension_factory(tmp_path) as ext, pytest.raises(FatalLoggerAnswer):
        ext.standin.log_string(ext.uuid, "no_such_plugin", "{}")


def test_status_logs_become_status_records_with_osquery_aws_fields(
        tmp_path: Path, extension_factory: Factory) -> None:
    entry = {"s": 1, "f": "a.cpp", "i": 7, "m": "hello", "h": "host1",
             "c": "Sun Nov 29 14:00:00 2026 UTC", "u": 1795960800}
    record = json.loads(status_record(entry, "5.23.0"))
    assert record == {"hostIdentifier": "host1", "calendarTime": "Sun Nov 29 14:00:00 2026 UTC",
                      "unixTime": 1795960800, "severity": 1, "filename": "a.cpp", "line": 7,
                      "message": "hello", "version": "5.23.0", "log_type": "status"}


# -- issue 14, item 7: strict settings at run time ---------------------------------------------

def test_an_unusable_endpoint_region_or_number_is_refused_and_the_extension_keeps_serving(
        tmp_path: Path, extension_factory: Factory) -> None:
    options = {"aws_kinesis_stream": "s", "aws_kinesis_endpoint": "https://:99999",
               "aws_firehose_endpoint": "http://[::1", "aws_region": "us east 1!!/../",
               "aws_kinesis_period": str(10**20), "buffered_log_max": str(10**40)}
    with extension_factory(tmp_path, options=options) as ext:
        assert ext.log("kinesis", ext.standin.result_line()).status.code == 0
        line = wait_for(lambda: [ln for ln in ext.stderr().splitlines()
                                 if "settings unusable" in ln], 5, "the settings error")[0]
        for expected in ("aws_kinesis_endpoint='https://:99999': does not parse as a URL",
                         "aws_firehose_endpoint='http://[::1': does not parse as a URL",
                         "a port 1-65535",
                         "aws_region='us east 1!!/../': expected an AWS region name like us-east-1",
                         f"aws_kinesis_period='{10**20}': out of range: expected a whole number "
                         "of seconds from 1 to 86400",
                         f"buffered_log_max='{10**40}': out of range: expected a whole number of "
                         "records from 1 to 1000000000"):
            assert expected in line
        # Nothing is tried with them: no "unexpected failure" retried for ever.
        assert "unexpected failure" not in ext.stderr()
        assert ext.proc is not None and ext.proc.poll() is None


def test_a_relative_spool_dir_is_refused_when_osqueryd_changes_it(
        tmp_path: Path, extension_factory: Factory) -> None:
    relative = "spool-of-issue-14-item-7"
    with extension_factory(tmp_path, options={"aws_kinesis_stream": "s"}) as ext:
        assert ext.proc is not None
        cwd = Path(os.readlink(f"/proc/{ext.proc.pid}/cwd"))
        ext.standin.set_custom_option("custom_aws_logger_spool_dir", relative)
        ext.init()
        wait_for(lambda: f"aws_logger_spool_dir='{relative}'" in ext.stderr(), 5, "the refusal")
        assert (f"aws_logger_spool_dir='{relative}': expected an absolute directory path"
                in ext.stderr())
        # The spool stays where it was opened; nothing lands in the working directory.
        assert ext.log("kinesis", ext.standin.result_line()).status.code == 0
        assert not (cwd / relative).exists()
        assert any((ext.spool_dir / "kinesis").iterdir())
        assert ext.proc.poll() is None


def reread(ext: RunningExtension, options_calls: Callable[[], int]) -> None:
    """Send init and wait until the extension has asked osqueryd for its options again."""
    before = options_calls()
    ext.init()
    wait_for(lambda: options_calls() > before, 5, "the settings read again")


def test_unknown_aws_options_are_named_once_with_the_closest_known_one(
        tmp_path: Path, extension_factory: Factory) -> None:
    # A stock build: the stand-in reports every aws_* flag osquery defines, those this
    # extension does not read among them (aws_debug, aws_enforce_fips, aws_imdsv2_*...).
    ext = extension_factory(tmp_path, builtin_aws=True,
                            options={"aws_kinesis_stream": "s", "aws_logger_spool_dri": "/x"})
    ext.standin.set_custom_option("custom_aws_secret_acess_key", "MISSPELT-SECRET-42")
    prefix = "ignoring options this extension does not know: "

    def lines() -> list[str]:
        return [ln.split(prefix, 1)[1] for ln in ext.stderr().splitlines() if prefix in ln]

    def options_calls() -> int:
        return sum(1 for r in ext.standin.manager_requests if r[0] == "options")

    with ext:
        wait_for(lines, 5, "the unknown options line")
        assert lines() == [
            "custom_aws_logger_spool_dri (did you mean custom_aws_logger_spool_dir?); "
            "custom_aws_secret_acess_key (did you mean custom_aws_secret_access_key?)"]
        # Settings are read again at every init; the same unknown set is not said again.
        for _ in range(2):
            reread(ext, options_calls)
        assert len(lines()) == 1
        ext.standin.set_custom_option("custom_aws_kinesis_perod", "5")
        ext.init()
        wait_for(lambda: len(lines()) == 2, 5, "the changed set")
        assert "custom_aws_kinesis_perod (did you mean custom_aws_kinesis_period?)" in lines()[1]
        assert "MISSPELT-SECRET-42" not in ext.stderr()
        assert ext.proc is not None and ext.proc.poll() is None
