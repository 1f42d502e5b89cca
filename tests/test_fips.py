"""aws_enforce_fips end to end: the hosts the real extension asks a real forward proxy (tinyproxy)
to CONNECT to, the endpoint the status table and `check` show, and the refusals that send nothing.

No internet here: the proxy cannot reach AWS, so every call fails after its CONNECT and the
lines stay spooled; what is asserted is where the extension tried to go.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import Aws
from tests.harness import EXTENSION_COMMAND, RunningExtension, result_lines, wait_for
from tests.localnet import TinyProxy

Factory = type[RunningExtension]
ROLE_ARN = "arn:aws:iam::123456789012:role/osquery-shipper"
PROXY_USER, PROXY_PASSWORD = "shipper", "fips-proxy-pass-5150"


def table(ext: RunningExtension) -> dict[str, dict[str, str]]:
    answer = ext.standin.call(ext.uuid, "table", "aws_logger_status", {"action": "generate"})
    return {row["service"]: row for row in answer.response}


def fips_options(proxy: TinyProxy, **extra: str) -> dict[str, str]:
    """Both plugins on AWS's own endpoints (no custom endpoint), FIPS enforced, via the proxy."""
    return {"aws_kinesis_stream": "osquery-results", "aws_firehose_stream": "osquery-firehose",
            "aws_kinesis_period": "1", "aws_firehose_period": "1", "aws_region": "us-east-1",
            "aws_enforce_fips": "true", "aws_enable_proxy": "true", "aws_proxy_scheme": "http",
            "aws_proxy_host": "127.0.0.1", "aws_proxy_port": str(proxy.port),
            "aws_proxy_username": PROXY_USER, "aws_proxy_password": PROXY_PASSWORD, **extra}


def test_with_fips_enforced_every_call_goes_to_a_fips_host_through_the_proxy(
        tmp_path: Path, extension_factory: Factory) -> None:
    with TinyProxy(PROXY_USER, PROXY_PASSWORD) as proxy:
        # builtin_aws: aws_enforce_fips is one of osqueryd's own flags (a CLI flag) there.
        with extension_factory(tmp_path, options=fips_options(proxy), builtin_aws=True) as ext:
            for line in result_lines(ext.standin, 5):
                ext.log("kinesis", line)
                ext.log("firehose", line)
            wanted = {"kinesis-fips.us-east-1.amazonaws.com:443",
                      "firehose-fips.us-east-1.amazonaws.com:443"}
            wait_for(lambda: wanted <= set(proxy.connect_targets()), 30, "both FIPS hosts")
            # The proxy logs the CONNECT before the put fails and the flusher publishes it.
            wait_for(lambda: table(ext)["kinesis"]["state"] == "retrying", 10, "kinesis retrying")
            rows = table(ext)
            assert rows["kinesis"]["endpoint"] == "https://kinesis-fips.us-east-1.amazonaws.com"
            assert rows["firehose"]["endpoint"] == "https://firehose-fips.us-east-1.amazonaws.com"
            assert all(int(row["spool_records"]) == 5 for row in rows.values())
            assert rows["kinesis"]["state"] == "retrying" and "proxy" in rows["kinesis"]["last_error"]

            # GovCloud: Kinesis's plain endpoint is its FIPS one; Firehose has a -fips host.
            ext.standin.set_flag("aws_region", "us-gov-west-1")
            ext.init()
            wanted = {"kinesis.us-gov-west-1.amazonaws.com:443",
                      "firehose-fips.us-gov-west-1.amazonaws.com:443"}
            wait_for(lambda: wanted <= set(proxy.connect_targets()), 30, "GovCloud's FIPS hosts")
            wait_for(lambda: table(ext)["firehose"]["endpoint"] ==
                     "https://firehose-fips.us-gov-west-1.amazonaws.com", 10, "the new endpoint")

            # Assumed-role credentials come from STS's FIPS endpoint, before anything else.
            ext.standin.set_flag("aws_sts_arn_role", ROLE_ARN)
            ext.standin.set_flag("aws_sts_region", "us-east-1")
            ext.init()
            wait_for(lambda: "sts-fips.us-east-1.amazonaws.com:443" in proxy.connect_targets(), 30,
                     "STS's FIPS host")
            assert ext.terminate() == 0
        allowed = {"kinesis-fips.us-east-1.amazonaws.com:443",
                   "firehose-fips.us-east-1.amazonaws.com:443",
                   "kinesis.us-gov-west-1.amazonaws.com:443",
                   "firehose-fips.us-gov-west-1.amazonaws.com:443",
                   "sts-fips.us-east-1.amazonaws.com:443"}
        assert set(proxy.connect_targets()) == allowed
        # Nothing but CONNECTs: no plain HTTP request, no other host.
        assert all(request.startswith("CONNECT ") for request in proxy.requests())
        assert PROXY_PASSWORD not in ext.stderr()
    assert ext.spool_dir.exists()


def test_fips_refuses_a_region_without_a_fips_endpoint_and_a_custom_endpoint_sending_nothing(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    with TinyProxy(PROXY_USER, PROXY_PASSWORD) as proxy:
        options = fips_options(proxy, aws_region="eu-west-1")
        with extension_factory(tmp_path, options=options) as ext:
            for line in result_lines(ext.standin, 4):
                ext.log("kinesis", line)
                ext.log("firehose", line)
            # Each destination meets the refusal at its own first flush (jittered over a
            # period), and the table shows what the flusher last published: wait for both.
            wait_for(lambda: all(f"{service} has no FIPS endpoint in eu-west-1" in ext.stderr()
                                 for service in ("kinesis", "firehose")), 30, "both refusals")
            wait_for(lambda: table(ext)["kinesis"]["state"] == "failing", 10, "kinesis failing")
            rows = table(ext)
            assert "kinesis has no FIPS endpoint in eu-west-1" in rows["kinesis"]["last_error"]
            assert rows["kinesis"]["endpoint"] == ""  # none may be used
            assert all(int(row["spool_records"]) == 4 for row in rows.values())

            # A custom endpoint with the flag: refused naming both options, nothing sent.
            ext.standin.set_custom_option("custom_aws_region", "us-east-1")
            ext.standin.set_custom_option("custom_aws_kinesis_endpoint", aws.proxy.url)
            ext.init()
            wait_for(lambda: "aws_enforce_fips=true and aws_kinesis_endpoint cannot be used "
                     "together" in ext.stderr(), 30, "the custom endpoint's refusal")
            wait_for(lambda: table(ext)["kinesis"]["state"] == "disabled", 10, "disabled")
            assert int(table(ext)["kinesis"]["spool_records"]) == 4
            assert ext.terminate() == 0
        assert "CONNECT kinesis" not in " ".join(proxy.requests())
        assert [c for c in aws.proxy.calls if c.service == "kinesis"] == []
    assert proxy.requests() == [r for r in proxy.requests() if "firehose-fips.us-east-1" in r]


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIACHECK", "AWS_SECRET_ACCESS_KEY": "check-secret",
           "AWS_EC2_METADATA_DISABLED": "true"}
    return subprocess.run([str(EXTENSION_COMMAND), "check", *args], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


def test_check_shows_each_endpoint_and_refuses_what_fips_refuses() -> None:
    result = run_check("--aws_enforce_fips", "--aws_kinesis_stream", "s",
                       "--aws_firehose_stream", "f", "--aws_region", "us-gov-west-1",
                       "--aws_sts_arn_role", ROLE_ARN, "--aws_kinesis_endpoint", "")
    lines = result.stdout.splitlines()
    assert "ok   kinesis endpoint in us-gov-west-1: https://kinesis.us-gov-west-1.amazonaws.com (FIPS)" \
        in lines
    assert "ok   firehose endpoint in us-gov-west-1: " \
        "https://firehose-fips.us-gov-west-1.amazonaws.com (FIPS)" in lines
    assert "ok   sts endpoint in us-gov-west-1: https://sts.us-gov-west-1.amazonaws.com (FIPS)" in lines
    refused = run_check("--aws_enforce_fips", "--aws_kinesis_stream", "s",
                        "--aws_region", "ap-southeast-2")
    assert refused.returncode == 1
    assert any(line.startswith("FAIL kinesis endpoint: aws_enforce_fips=true: kinesis has no FIPS "
                               "endpoint in ap-southeast-2") for line in refused.stdout.splitlines())
    assert "credentials" not in refused.stdout  # nothing more is tried
    plain = run_check("--aws_kinesis_stream", "s", "--aws_region", "eu-west-1",
                      "--aws_kinesis_endpoint", "http://127.0.0.1:1")
    assert "ok   kinesis endpoint in eu-west-1: http://127.0.0.1:1" in plain.stdout.splitlines()
