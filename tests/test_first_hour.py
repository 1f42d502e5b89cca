"""The operator's first hour (issue 14): check speaks osquery's files, errors name their cause,
log lines carry a time, metrics reach monitoring, TLS trusts the host, messages say what is so."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from botocore.exceptions import EndpointConnectionError

from osquery_aws_logger.delivery.aws import ca_bundle
from osquery_aws_logger.delivery.flusher import delivery_error
from osquery_aws_logger.delivery.services import clients_for
from osquery_aws_logger.settings import Settings
from tests.conftest import Aws
from tests.harness import EXTENSION_COMMAND, RunningExtension, env_without_aws, result_lines, wait_for
from tests.localaws import free_port
from tests.localtls import TlsFront
from tests.test_status import rows, run_cli

Factory = type[RunningExtension]
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def aws_config(aws: Aws, **extra: object) -> dict[str, object]:
    return {"custom_aws_kinesis_stream": aws.stream, "custom_aws_kinesis_endpoint": aws.proxy.url,
            "aws_region": "us-east-1", **extra}


# -- 1, 2: check reads osquery's own config and flagfile -------------------------------------

def test_check_takes_a_config_with_osquery_comment_lines(tmp_path: Path, aws: Aws) -> None:
    config = tmp_path / "osquery.conf"
    body = json.dumps({"options": aws_config(aws)}, indent=2).splitlines()
    config.write_text("\n".join(["// osquery strips these", "# and these", body[0],
                                 "  // an indented comment", *body[1:-1], "    # another",
                                 body[-1]]))
    result = run_cli("check", "--config", str(config), env=CREDS)
    assert result.returncode == 0, result.stdout
    assert f"ok   kinesis '{aws.stream}' in us-east-1: ACTIVE" in result.stdout


def test_check_reads_osquerys_flagfile_and_the_config_it_names(tmp_path: Path, aws: Aws) -> None:
    config = tmp_path / "osquery.conf"
    config.write_text("# managed by config management\n" + json.dumps(
        {"options": {"custom_aws_kinesis_endpoint": aws.proxy.url}, "schedule": {}}))
    flagfile = tmp_path / "osquery.flags"
    flagfile.write_text(
        f"# osqueryd's flags\n--config_path={config}\n--config_plugin=filesystem\n"
        "--logger_plugin=aws_kinesis,filesystem\n--extensions_autoload=/etc/osquery/extensions.load\n"
        f"--aws_kinesis_stream={aws.stream}\n--aws_region=us-east-1\n--disable_events\n"
        "--host_identifier=hostname\n\n--watchdog_level=0\n")
    result = run_cli("check", "--flagfile", str(flagfile), env=CREDS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "usage:" not in result.stdout + result.stderr
    assert (f"ok   flagfile {flagfile}: 2 options of this extension, 6 other flags ignored, "
            f"config at {config}") in result.stdout
    assert f"ok   kinesis '{aws.stream}' in us-east-1: ACTIVE" in result.stdout


# -- 9: every stream a plugin may write to -----------------------------------------------------

def test_check_checks_routed_and_status_streams(tmp_path: Path, aws: Aws) -> None:
    aws.moto.create_stream("routed-stream")
    config = tmp_path / "osquery.conf"
    config.write_text(json.dumps({"options": aws_config(
        aws, custom_aws_kinesis_status_stream="missing-status-stream",
        custom_aws_kinesis_routes=json.dumps({"routed-stream": ["pack_x_*"]}))}))
    result = run_cli("check", "--config", str(config), env=CREDS)
    assert result.returncode == 1
    assert "ok   kinesis 'routed-stream' in us-east-1: ACTIVE" in result.stdout
    assert re.search(r"FAIL kinesis 'missing-status-stream' in us-east-1: "
                     r"ResourceNotFoundException", result.stdout), result.stdout
    described = [json.loads(c.body)["StreamName"] for c in aws.proxy.calls
                 if c.operation == "DescribeStreamSummary"]
    assert sorted(described) == sorted([aws.stream, "routed-stream", "missing-status-stream"])


# -- 3: connection errors name the URL and the reason -----------------------------------------

def test_a_refused_endpoint_is_named_with_its_url_everywhere(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with extension_factory(tmp_path, options=aws.options(aws_kinesis_endpoint=dead)) as ext:
        ext.log("kinesis", result_lines(ext.standin, 1)[0])
        wait_for(lambda: "refused" in rows(ext)["aws_kinesis"]["last_error"], 20, "the error")
        error = rows(ext)["aws_kinesis"]["last_error"]
        assert error.startswith(f"EndpointConnectionError: refused: connection to {dead}/ refused")
        wait_for(lambda: f"connection to {dead}/ refused" in ext.stderr(), 10, "the log line")
        state = ext.spool_dir / "kinesis" / "state.json"
        wait_for(lambda: state.exists() and "refused" in state.read_text(), 10, "state.json")
        status = run_cli("status", "--aws_logger_spool_dir", str(ext.spool_dir))
        assert f"connection to {dead}/ refused" in status.stdout
    config = tmp_path / "osquery.conf"
    config.write_text(json.dumps({"options": aws_config(aws, custom_aws_kinesis_endpoint=dead)}))
    check = run_cli("check", "--config", str(config), env=CREDS)
    assert check.returncode == 1
    assert f"connection to {dead}/ refused: nothing listens there" in check.stdout


def test_a_dead_proxy_is_named_as_the_cause_without_its_password(tmp_path: Path, aws: Aws) -> None:
    port = free_port()
    config = tmp_path / "osquery.conf"
    config.write_text(json.dumps({"options": aws_config(
        aws, custom_aws_enable_proxy=True, custom_aws_proxy_scheme="http",
        custom_aws_proxy_host="127.0.0.1", custom_aws_proxy_port=port,
        custom_aws_proxy_username="op", custom_aws_proxy_password="proxy-secret-5511")}))
    check = run_cli("check", "--config", str(config), env=CREDS)
    assert check.returncode == 1
    assert "ProxyConnectionError: proxy: cannot connect through the proxy " in check.stdout
    assert f"127.0.0.1:{port}" in check.stdout
    assert "proxy-secret-5511" not in check.stdout + check.stderr


def test_timeouts_and_dns_failures_say_so(aws: Aws) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings = Settings(aws_kinesis_endpoint=url, aws_region="us-east-1")
        clients = clients_for(settings, environ=CREDS, read_timeout=1.0)
        with pytest.raises(Exception) as caught:
            clients.client("kinesis").describe_stream_summary(StreamName="s")
        error = delivery_error(caught.value, read_timeout=1.0)
        assert str(error) == f"ReadTimeoutError: timeout: no answer from {url}/ within 1s"
        assert error.retriable
    finally:
        silent.close()
    # Resolving a name would leave the loopback; the classification is what is tested here.
    dns = EndpointConnectionError(endpoint_url="https://kinesis.nowhere.invalid/",
                                  error=socket.gaierror(-2, "Name or service not known"))
    assert str(delivery_error(dns)) == (
        "EndpointConnectionError: DNS: cannot resolve kinesis.nowhere.invalid (for "
        "https://kinesis.nowhere.invalid/): [Errno -2] Name or service not known")


# -- 10: TLS trust --------------------------------------------------------------------------------

def test_tls_trusts_the_ca_bundle_option_or_aws_ca_bundle_and_names_a_tls_failure(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    with TlsFront(tmp_path, aws.proxy.port) as front:
        config = tmp_path / "osquery.conf"
        config.write_text(json.dumps({"options": aws_config(
            aws, custom_aws_kinesis_endpoint=front.url)}))
        untrusted = run_cli("check", "--config", str(config), env=CREDS)
        assert untrusted.returncode == 1
        assert f"TLS to {front.url}/ failed: [SSL: CERTIFICATE_VERIFY_FAILED]" in untrusted.stdout
        for how in (["--aws_logger_ca_bundle", str(front.ca)], []):
            env = {**CREDS, **({} if how else {"AWS_CA_BUNDLE": str(front.ca)})}
            trusted = run_cli("check", "--config", str(config), *how, env=env)
            assert trusted.returncode == 0, trusted.stdout
            assert f"ok   kinesis '{aws.stream}' in us-east-1: ACTIVE" in trusted.stdout
        options = aws.options(aws_kinesis_endpoint=front.url, aws_logger_ca_bundle=str(front.ca))
        with extension_factory(tmp_path / "ext", options=options) as ext:
            for line in result_lines(ext.standin, 3):
                ext.log("kinesis", line)
            wait_for(lambda: len(aws.kinesis_records()) == 3, 30, "delivery over TLS")


def test_the_host_trust_store_is_used_unless_aws_ca_bundle_or_the_option_says_otherwise(
        tmp_path: Path) -> None:
    host = "/etc/ssl/certs/ca-certificates.crt"
    if not os.path.isfile(host):
        pytest.skip("this host has no Debian-style trust store")
    assert ca_bundle(Settings(), {}) == host
    assert ca_bundle(Settings(), {"AWS_CA_BUNDLE": "/env.pem"}) == "/env.pem"
    assert ca_bundle(Settings(aws_logger_ca_bundle="/opt.pem"), {"AWS_CA_BUNDLE": "/e"}) == "/opt.pem"


# -- 4, 5: a quiet first start, and a time on every line -----------------------------------------

def run_extension(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXTENSION_COMMAND), "--socket", "/tmp/no-osqueryd-here.em",
                           "--timeout", "1", *args], capture_output=True, text=True, timeout=30,
                          env=env_without_aws(), check=False)


def test_the_first_start_without_osqueryd_says_one_thing_with_a_utc_time() -> None:
    result = run_extension()
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert ISO_UTC.match(lines[0]), lines[0]
    assert "no osquery extension manager answered on /tmp/no-osqueryd-here.em" in lines[0]
    stamp = lines[0].split(" ", 1)[0]
    taken = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert abs(taken - time.time()) < 60, "UTC, not local time"
    verbose = run_extension("--verbose")
    assert "thrift.transport.TSocket" not in verbose.stderr


def test_json_log_lines_from_the_command_line_or_osquerys_config(
        tmp_path: Path, extension_factory: Factory) -> None:
    result = run_extension("--aws_logger_log_format=json")
    (line,) = result.stderr.splitlines()
    document = json.loads(line)
    assert document["level"] == "ERROR" and document["time"].endswith("Z")
    assert "no osquery extension manager" in document["message"]
    with extension_factory(tmp_path, options={"aws_logger_log_format": "json"}) as ext:
        wait_for(lambda: "registered extension" in ext.stderr(), 10, "the registration line")
        assert ext.terminate() == 0
    lines = ext.stderr().splitlines()
    registered = [json.loads(x) for x in lines if "registered extension" in x]
    assert registered and registered[0]["logger"] == "osquery_aws_logger"
    assert all(ISO_UTC.match(x) or json.loads(x)["time"] for x in lines)


# -- 6: the metrics file ------------------------------------------------------------------------

def test_the_metrics_file_has_the_table_figures_in_prometheus_text_format(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    target = tmp_path / "textfile" / "osquery_aws_logger.prom"
    target.parent.mkdir()
    options = aws.options(aws_logger_metrics_file=str(target))
    with extension_factory(tmp_path, options=options) as ext:
        for line in result_lines(ext.standin, 5):
            ext.log("kinesis", line)
        ext.log("kinesis", "not json")
        series = ('osquery_aws_logger_delivered_total{plugin="aws_kinesis",service="kinesis",'
                  f'stream="{aws.stream}"}} 5')
        wait_for(lambda: target.exists() and series in target.read_text(), 30, "the metrics")
        first = target.stat().st_mtime_ns
        wait_for(lambda: target.stat().st_mtime_ns != first, 15, "a rewrite")
        assert ext.terminate() == 0
    text = target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == [target.name], "no temporary left"
    assert ('osquery_aws_logger_dropped_total{plugin="aws_kinesis",service="kinesis",'
            f'stream="{aws.stream}",reason="invalid"}} 1') in text
    assert ('osquery_aws_logger_state{plugin="aws_kinesis",service="kinesis",'
            f'stream="{aws.stream}",state="ok"}} 1') in text
    assert "# TYPE osquery_aws_logger_delivered_total counter" in text
    assert "# TYPE osquery_aws_logger_spool_records gauge" in text
    sample = re.compile(r'^osquery_aws_logger_[a-z_]+\{(?:[a-z_]+="[^"\n]*",?)+\} -?\d+$')
    for line in text.splitlines():
        assert line.startswith("# ") or sample.match(line), line


# -- 8: messages that say what is so -------------------------------------------------------------

def test_check_says_which_half_of_a_key_pair_is_missing_and_where_keys_came_from(
        tmp_path: Path, aws: Aws) -> None:
    half = tmp_path / "half.conf"
    half.write_text(json.dumps({"options": aws_config(aws, custom_aws_access_key_id="AKIAHALF")}))
    env = {**{k: "" for k in CREDS}, "HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_CONFIG_FILE": str(tmp_path / "none")}
    result = run_cli("check", "--config", str(half), env=env)
    assert result.returncode == 1
    assert ("FAIL credentials: incomplete key pair (flags: aws_access_key_id is set but "
            "aws_secret_access_key is missing)") in result.stdout
    whole = tmp_path / "whole.conf"
    whole.write_text(json.dumps({"options": aws_config(
        aws, custom_aws_access_key_id="AKIAWHOLE", custom_aws_secret_access_key="s3cr3t-value")}))
    result = run_cli("check", "--config", str(whole), env=env)
    assert "ok   credentials from the config's options (custom_aws_access_key_id)" in result.stdout
    result = run_cli("check", "--config", str(whole), "--aws_access_key_id", "AKIACLI", env=env)
    assert "ok   credentials from check's command line (--aws_access_key_id)" in result.stdout


def test_help_is_a_command_and_help_says_each_default_once() -> None:
    result = run_cli("help")
    assert result.returncode == 0 and "check" in result.stdout and "status" in result.stdout
    assert "--flagfile" in run_cli("help", "check").stdout
    usage = " ".join(run_cli("--help").stdout.split())
    assert "Stream for status logs (default: aws_kinesis_stream) --" in usage
    for name in ("aws_kinesis_status_stream", "aws_firehose_status_stream"):
        text = usage.split(f"--{name} VALUE ", 1)[1].split(" --", 1)[0]
        assert text.count("default") == 1, text


def test_status_says_0s_for_a_state_file_written_this_second(tmp_path: Path) -> None:
    directory = tmp_path / "spool" / "kinesis"
    directory.mkdir(parents=True)
    (directory / "state.json").write_text(json.dumps(
        {"plugin": "aws_kinesis", "service": "kinesis", "state": "ok", "updated": int(time.time()),
         "delivered": 1, "dropped": 0}))
    result = run_cli("status", "--aws_logger_spool_dir", str(tmp_path / "spool"))
    line = next(x for x in result.stdout.splitlines() if x.startswith("aws_kinesis"))
    assert re.search(r"\s[01]s\s", line), line


# -- 12: removal keeps the spool and says so -------------------------------------------------------

PREREMOVE = Path(__file__).resolve().parent.parent / "packaging" / "scripts" / "preremove.sh"


@pytest.mark.parametrize(("args", "told"), [(["remove"], True), (["0"], True),
                                            (["upgrade", "0.2"], False), (["1"], False)])
def test_removal_says_the_spool_is_kept(tmp_path: Path, args: list[str], told: bool) -> None:
    load = tmp_path / "extensions.load"
    load.write_text("/opt/osquery-aws-logger/osquery-aws-logger.ext\n")
    result = subprocess.run(["sh", str(PREREMOVE), *args], capture_output=True, text=True,
                            env={**os.environ, "OSQUERY_EXTENSIONS_LOAD": str(load)}, check=True)
    assert ("spool of undelivered records (/var/osquery/aws_logger" in result.stdout) is told


# -- make demo: plain progress lines when stdout is not a terminal ----------------------------------

def test_demo_progress_is_plain_lines_in_a_pipe(capsys: pytest.CaptureFixture[str]) -> None:
    from tests import demo  # noqa: PLC0415 - the demo module is a script, imported only here

    class Landed:
        def kinesis_records(self) -> list[object]:
            return [object()] * 3

        def firehose_lines(self) -> list[bytes]:
            return [b"{}"] * 3

    started = time.monotonic()
    for sent in (1, 2, 3):
        demo.progress(sent, Landed(), started)  # type: ignore[arg-type]
    demo.end_progress()
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert lines and all("lines sent" in line for line in lines)
    assert lines[-1].split()[3] == "3", "the finished state is always printed"
