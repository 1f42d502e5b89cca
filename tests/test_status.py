"""Health in osquery's terms: the aws_logger_status table, `status` and `check`."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from osquery_aws_logger.ops.status import COLUMN_NAMES
from tests.conftest import Aws
from tests.harness import EXTENSION_COMMAND, RunningExtension, result_lines, wait_for

Factory = type[RunningExtension]


def rows(ext: RunningExtension) -> dict[str, dict[str, str]]:
    answer = ext.standin.call(ext.uuid, "table", "aws_logger_status", {"action": "generate"})
    assert answer.status.code == 0
    return {row["plugin"]: row for row in answer.response}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXTENSION_COMMAND), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, check=False)


def test_the_table_is_registered_with_its_columns(
        tmp_path: Path, extension_factory: Factory) -> None:
    with extension_factory(tmp_path) as ext:
        registry = ext.standin.registered[ext.uuid][1]
        columns = [route["name"] for route in registry["table"]["aws_logger_status"]]
        assert tuple(columns) == COLUMN_NAMES
        answer = ext.standin.call(ext.uuid, "table", "aws_logger_status", {"action": "columns"})
        assert [r["name"] for r in answer.response] == list(COLUMN_NAMES)
        # No stream set: both plugins show as disabled, nothing waiting.
        for row in rows(ext).values():
            assert row["state"] == "disabled" and row["spool_records"] == "0"


def test_the_figures_follow_accepted_delivered_throttled_and_dropped(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    with extension_factory(tmp_path, options=aws.options(aws_kinesis_period="30")) as ext:
        for line in result_lines(ext.standin, 10):
            ext.log("kinesis", line)
        ext.log("kinesis", "not json")
        row = rows(ext)["aws_kinesis"]
        assert row["accepted"] == "11" and row["delivered"] == "0"
        assert row["spool_records"] == "11" and int(row["spool_bytes"]) > 10 * 250
        assert row["stream"] == aws.stream and row["endpoint"] == aws.proxy.url
        aws.proxy.throttle(1, target="PutRecords")
        ext.standin.set_custom_option("custom_aws_kinesis_period", "1")
        ext.init()
        wait_for(lambda: rows(ext)["aws_kinesis"]["delivered"] == "10", 30, "delivery")
        row = rows(ext)["aws_kinesis"]
        assert row["throttled"] == "10" and row["retried"] == "10", "the 10 JSON lines, once"
        assert row["dropped_invalid"] == "1" and row["dropped"] == "1"
        assert row["spool_records"] == "0" and row["state"] == "ok"
        assert int(row["last_success"]) >= int(time.time()) - 30
        assert "ProvisionedThroughputExceededException" in row["last_error"]
        assert row["credential_source"] == "environment" and row["region"] == "us-east-1"


def test_a_query_never_waits_on_a_slow_endpoint(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    aws.proxy.delay(1, 8.0, target="PutRecords")
    with extension_factory(tmp_path, options=aws.options()) as ext:
        ext.log("kinesis", result_lines(ext.standin, 1)[0])
        wait_for(lambda: any(c.operation == "PutRecords" for c in aws.proxy.calls)
                 or aws.proxy.pending_faults() == 0, 10, "the slow call to start")
        started = time.monotonic()
        row = rows(ext)["aws_kinesis"]
        assert time.monotonic() - started < 2.0, "answered while the put is in flight"
        assert row["spool_records"] == "1"


def test_status_reads_the_spool_on_disk_and_says_when_something_fails(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    with extension_factory(tmp_path, options=aws.options()) as ext:
        for line in result_lines(ext.standin, 5):
            ext.log("kinesis", line)
        wait_for(lambda: len(aws.kinesis_records()) == 5, 20, "delivery")
        assert ext.terminate() == 0
    healthy = run_cli("status", "--aws_logger_spool_dir", str(ext.spool_dir), "--json")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    by_plugin = {row["plugin"]: row for row in json.loads(healthy.stdout)}
    assert by_plugin["aws_kinesis"]["delivered"] == 5 and by_plugin["aws_kinesis"]["state"] == "ok"

    failing_dir = tmp_path / "failing"
    with extension_factory(failing_dir, options=aws.options(aws_kinesis_stream="gone")) as ext:
        for line in result_lines(ext.standin, 3):
            ext.log("kinesis", line)
        state_file = ext.spool_dir / "kinesis" / "state.json"
        # The state is written at every change of state; wait for it on disk, then crash.
        wait_for(lambda: state_file.exists() and '"failing"' in state_file.read_text(), 20,
                 "the failing state on disk")
        ext.kill9()  # osqueryd and the extension down: status still tells
    failing = run_cli("status", "--aws_logger_spool_dir", str(ext.spool_dir))
    assert failing.returncode == 1
    assert "failing" in failing.stdout and "ResourceNotFoundException" in failing.stdout
    assert "aws_kinesis" in failing.stdout
    assert run_cli("status", "--aws_logger_spool_dir", str(tmp_path / "nothing")).returncode == 1


def write_config(path: Path, options: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"options": options}))
    return path


def test_check_validates_resolves_credentials_and_sends_a_marked_test_record(
        tmp_path: Path, aws: Aws) -> None:
    config = write_config(tmp_path / "osquery.conf", {
        "custom_aws_kinesis_stream": aws.stream, "custom_aws_kinesis_endpoint": aws.proxy.url,
        "aws_firehose_stream": aws.delivery_stream, "aws_firehose_endpoint": aws.proxy.url,
        "aws_region": "us-east-1"})
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    result = run_cli("check", "--config", str(config), "--send-test", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   credentials from environment" in result.stdout
    assert f"ok   kinesis '{aws.stream}' in us-east-1: ACTIVE" in result.stdout
    assert "test record sent" in result.stdout
    (data, _), = aws.kinesis_records()
    assert json.loads(data)["log_type"] == "test"
    assert json.loads(aws.firehose_lines()[0])["log_type"] == "test"
    operations = [c.operation for c in aws.proxy.calls]
    assert "DescribeStreamSummary" in operations and "DescribeDeliveryStream" in operations


def test_check_fails_clearly_on_a_wrong_config_without_showing_secrets(
        tmp_path: Path, aws: Aws) -> None:
    config = write_config(tmp_path / "bad.conf", {
        "custom_aws_kinesis_stream": "no-such-stream", "custom_aws_kinesis_endpoint": aws.proxy.url,
        "custom_aws_sts_timeout": "12", "custom_aws_secret_access_key": "TOP-SECRET-1",
        "custom_aws_kinesis_strem": "typo"})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 1
    assert "aws_sts_timeout='12'" in result.stdout
    assert "custom_aws_kinesis_strem: not an option" in result.stdout
    assert "TOP-SECRET-1" not in result.stdout + result.stderr
    missing = write_config(tmp_path / "missing.conf", {
        "custom_aws_kinesis_stream": "no-such-stream", "custom_aws_kinesis_endpoint": aws.proxy.url,
        "custom_aws_access_key_id": "AKIA1", "custom_aws_secret_access_key": "TOP-SECRET-2"})
    result = run_cli("check", "--config", str(missing))
    assert result.returncode == 1
    assert "ResourceNotFoundException" in result.stdout
    assert "ok   credentials from the config's options (custom_aws_access_key_id)" in result.stdout
    assert "TOP-SECRET-2" not in result.stdout + result.stderr
    assert "aws_secret_access_key = <redacted>" in result.stdout
