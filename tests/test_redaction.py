"""One redaction of the known secrets: an endpoint that echoes them leaks them nowhere."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

from osquery_aws_logger import redact as _redact
from tests.conftest import Aws
from tests.harness import RunningExtension, result_lines, wait_for
from tests.test_status import rows, run_cli

Factory = type[RunningExtension]
ROLE_ARN = "arn:aws:iam::123456789012:role/osquery-shipper"

SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYSECRETKEY1"
SESSION_TOKEN = "FwoGZXIvYXdzEJr//////////SESSIONTOKEN+abc/def=="
PROXY_USER = "shipper"
PROXY_PASSWORD = "p@ss w/rd:ü%7"  # every character URL encoding changes


def forms(secret: str) -> list[str]:
    return [secret, quote(secret, safe=""), quote(secret), quote_plus(secret)]


def echoed_secrets() -> str:
    """What a hostile or broken endpoint answers: the secrets, plain and URL-encoded."""
    basic = base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
    return (f"key={SECRET_KEY} token={SESSION_TOKEN} proxy={PROXY_PASSWORD} "
            f"proxy-url=http://{PROXY_USER}:{quote(PROXY_PASSWORD, safe='')}@proxy:3128 "
            f"proxy+={quote_plus(PROXY_PASSWORD)} basic={basic}")


def assert_nowhere(secrets: list[str], texts: dict[str, str]) -> None:
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret ({secret[:4]}...) reached {where}"


def test_redact_hides_every_form_of_a_remembered_secret_and_nothing_else() -> None:
    _redact.forget_all()
    try:
        _redact.remember(SECRET_KEY, "", None, "ab")
        _redact.remember_basic_auth(PROXY_USER, PROXY_PASSWORD)
        text = _redact.redact(echoed_secrets() + " stream=osquery-results ab")
        assert_nowhere(forms(SECRET_KEY) + forms(PROXY_PASSWORD), {"redacted": text})
        assert text.count(_redact.MASK) >= 5
        assert "stream=osquery-results ab" in text, "other text, and too-short values, stay"
        assert json.dumps(SECRET_KEY) not in _redact.redact(json.dumps({"k": SECRET_KEY}))
    finally:
        _redact.forget_all()


def test_an_endpoint_echoing_the_secrets_leaks_them_nowhere(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    metrics = tmp_path / "metrics" / "aws_logger.prom"
    metrics.parent.mkdir()
    options = aws.options(aws_access_key_id="AKIAECHOTEST", aws_secret_access_key=SECRET_KEY,
                          aws_session_token=SESSION_TOKEN, aws_proxy_username=PROXY_USER,
                          aws_proxy_password=PROXY_PASSWORD, aws_proxy_host="127.0.0.1",
                          aws_proxy_port="3128", aws_enable_proxy="false",
                          aws_logger_metrics_file=str(metrics))
    aws.proxy.echo(1000, target=("PutRecords", "PutRecordBatch", "DescribeStreamSummary",
                                 "DescribeDeliveryStream"), extra=echoed_secrets)
    with extension_factory(tmp_path, options=options, verbose=True) as ext:
        for line in result_lines(ext.standin, 3):
            ext.log("kinesis", line)
            ext.log("firehose", line)
        state = ext.spool_dir / "kinesis" / "state.json"
        wait_for(lambda: state.exists() and "<redacted>" in state.read_text(), 30,
                 "the echoed error in state.json")
        wait_for(metrics.exists, 10, "the metrics file")
        table = json.dumps(rows(ext))
        assert "<redacted>" in table and "InternalFailure" in table
        echoed = [c for c in aws.proxy.calls if c.fault == "echo"]
        assert echoed and SESSION_TOKEN.encode() in echoed[0].answer, "the endpoint did echo"
        status = run_cli("status", "--aws_logger_spool_dir", str(ext.spool_dir))
        assert ext.terminate() == 0
    config = tmp_path / "osquery.conf"
    config.write_text(json.dumps({"options": {f"custom_{k}": v for k, v in options.items()}}))
    check = run_cli("check", "--config", str(config))
    assert check.returncode == 1 and "<redacted>" in check.stdout, check.stdout
    secrets = forms(SECRET_KEY) + forms(SESSION_TOKEN) + forms(PROXY_PASSWORD)
    secrets.append(base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode())
    texts = {"stderr": ext.stderr(), "table": table, "metrics": metrics.read_text(),
             "status": status.stdout + status.stderr, "check": check.stdout + check.stderr}
    texts |= {str(p): p.read_text(errors="replace") for p in ext.spool_dir.rglob("state.json")}
    assert "InternalFailure" in texts["stderr"] and "<redacted>" in texts["stderr"]
    assert_nowhere(secrets, texts)


def test_assumed_role_secrets_are_redacted_too(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    options = aws.options(aws_sts_arn_role=ROLE_ARN, aws_sts_endpoint=aws.proxy.url)
    aws.proxy.echo(1000, target="PutRecords", extra=lambda: " ".join(aws.sts_secrets()))
    with extension_factory(tmp_path, options=options, verbose=True) as ext:
        ext.log("kinesis", result_lines(ext.standin, 1)[0])
        state = ext.spool_dir / "kinesis" / "state.json"
        wait_for(lambda: state.exists() and "<redacted>" in state.read_text(), 30,
                 "the echoed error in state.json")
        table = json.dumps(rows(ext))
        assert ext.terminate() == 0
    issued = aws.sts_secrets()
    assert len(issued) >= 2 and all(len(s) >= 16 for s in issued)
    assert_nowhere(issued, {"stderr": ext.stderr(), "table": table,
                            "state.json": state.read_text()})


def test_uncaught_exceptions_go_through_the_log_handler_redacted(tmp_path: Path) -> None:
    # In a process of its own: configure() takes over the root logger and the except hooks.
    script = (
        "import threading\n"
        "from osquery_aws_logger import logs as _logs, redact as _redact\n"
        "_logs.configure(20)\n"
        f"_redact.remember({SECRET_KEY!r})\n"
        f"def fail():\n    raise ValueError({SECRET_KEY!r})\n"
        "t = threading.Thread(target=fail)\n"
        "t.start(); t.join()\n"
        f"raise RuntimeError('token ' + {SECRET_KEY!r})\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 1
    assert SECRET_KEY not in result.stderr
    assert "uncaught exception in thread" in result.stderr and "ValueError: <redacted>" in result.stderr
    assert "RuntimeError: token <redacted>" in result.stderr
    assert re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z osquery-aws-logger CRITICAL", result.stderr)
