"""aws_debug end to end: the SDK's debug lines appear in the extension's log with no secret in
them or anywhere else the extension writes, and the flag turns on and off at a logger init."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from tests.conftest import Aws
from tests.harness import RunningExtension, result_lines, wait_for
from tests.localnet import TinyProxy

Factory = type[RunningExtension]
ROLE_ARN = "arn:aws:iam::123456789012:role/osquery-shipper"
SECRET_KEY, SESSION_TOKEN = "DEBUG-SECRET-KEY-81f3", "DEBUG-SESSION-TOKEN-27aa"
PROXY_USER, PROXY_PASSWORD = "shipper", "DEBUG-PROXY-PASS-6e1d"
SDK_LINE = re.compile(r"^\S+ osquery-aws-logger DEBUG (botocore|urllib3|boto3)[\w.]*: ", re.MULTILINE)


def table(ext: RunningExtension) -> list[dict[str, str]]:
    answer = ext.standin.call(ext.uuid, "table", "aws_logger_status", {"action": "generate"})
    return list(answer.response)


def test_sdk_debug_lines_appear_without_a_secret_anywhere_and_turn_off_at_run_time(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    metrics = tmp_path / "metrics" / "aws_logger.prom"
    metrics.parent.mkdir()
    with TinyProxy(PROXY_USER, PROXY_PASSWORD) as proxy:
        options = aws.options(
            aws_debug="true", aws_access_key_id="AKIADEBUGTEST", aws_secret_access_key=SECRET_KEY,
            aws_session_token=SESSION_TOKEN, aws_sts_arn_role=ROLE_ARN,
            aws_sts_endpoint=aws.proxy.url, aws_enable_proxy="true", aws_proxy_scheme="http",
            aws_proxy_host="127.0.0.1", aws_proxy_port=str(proxy.port),
            aws_proxy_username=PROXY_USER, aws_proxy_password=PROXY_PASSWORD,
            aws_logger_metrics_file=str(metrics))
        with extension_factory(tmp_path, options=options) as ext:
            for line in result_lines(ext.standin, 5):
                ext.log("kinesis", line)
                ext.log("firehose", line)
            wait_for(lambda: len(aws.kinesis_records()) >= 5 and len(aws.firehose_lines()) >= 5,
                     60, "delivery with debug logging")
            wait_for(metrics.exists, 15, "the metrics file")
            err = ext.stderr()
            sdk = SDK_LINE.findall(err)
            assert {"botocore", "urllib3"} <= set(sdk), err[-3000:]
            # The calls and what carries secrets were logged, masked.
            assert "X-Amz-Security-Token" in err and "Authorization" in err
            assert "<SecretAccessKey><redacted></SecretAccessKey>" in err  # STS's answer
            rows = table(ext)

            # Off at the next logger init (a config refresh). The unknown option is a marker: its
            # warning is logged just after the new settings are taken, while nothing is in flight.
            ext.standin.set_custom_option("custom_aws_debug", "false")
            ext.standin.set_custom_option("custom_aws_debug_marker", "1")
            ext.init()
            wait_for(lambda: "custom_aws_debug_marker" in ext.stderr(), 15, "the settings re-read")
            mark = len(ext.stderr())
            ext.log("kinesis", result_lines(ext.standin, 6)[5])
            # The settings change rebuilds the clients: a new AssumeRole, then the put.
            wait_for(lambda: len(aws.kinesis_records()) >= 6, 60, "delivery after the switch")
            assert ext.terminate() == 0
        assert SDK_LINE.search(ext.stderr()[:mark])
        assert not SDK_LINE.search(ext.stderr()[mark:]), ext.stderr()[mark:][:2000]

    secrets = [SECRET_KEY, SESSION_TOKEN, PROXY_PASSWORD,
               base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode(),
               *aws.sts_secrets()]
    assert len(secrets) >= 6, "STS answered at least once with a key and a token"
    written = {"stderr": ext.stderr(), "table": json.dumps(rows), "metrics": metrics.read_text()}
    for path in ext.spool_dir.rglob("state.json"):
        written[str(path)] = path.read_text()
    assert any(name.endswith("state.json") for name in written)
    for name, text in written.items():
        for secret in secrets:
            assert secret not in text, (name, secret[:6])
