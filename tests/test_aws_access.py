"""AWS access: the seed's credential order source by source, regions, STS refresh, proxy, secrets."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from osquery_aws_logger.delivery.aws import resolve_credentials, service_region
from osquery_aws_logger.delivery.services import FIREHOSE, KINESIS, Service, clients_for
from osquery_aws_logger.settings import Settings
from tests.conftest import Aws
from tests.harness import RunningExtension, result_lines, wait_for
from tests.localaws import FaultProxy
from tests.localnet import ImdsV2, TinyProxy

Factory = type[RunningExtension]
ROLE_ARN = "arn:aws:iam::123456789012:role/osquery-shipper"


@pytest.fixture
def aws_home(tmp_path: Path) -> dict[str, str]:
    """An environment with AWS config files of its own and no instance metadata service."""
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = default-secret\n"
        "[ops]\naws_access_key_id = AKIAOPS\naws_secret_access_key = ops-secret\n"
        "[half]\naws_access_key_id = AKIAHALF\n")
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-north-1\n[profile ops]\nregion = ap-east-1\n"
                      "[profile cfgonly]\naws_access_key_id = AKIACFG\n"
                      "aws_secret_access_key = cfg-secret\n")
    return {"HOME": str(tmp_path), "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
            "AWS_CONFIG_FILE": str(config), "AWS_EC2_METADATA_DISABLED": "true"}


def source(settings: Settings, environ: dict[str, str]) -> tuple[str, str] | None:
    found = resolve_credentials(settings, environ)
    return None if found is None else (found.source, found.credentials.access_key)


FLAGS = Settings(aws_access_key_id="AKIAFLAGS", aws_secret_access_key="flag-secret")
ENV = {"AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "env-secret"}


def test_flags_come_first(aws_home: dict[str, str]) -> None:
    settings = Settings(aws_access_key_id="AKIAFLAGS", aws_secret_access_key="flag-secret",
                        aws_profile_name="ops")
    assert source(settings, {**aws_home, **ENV}) == ("flags", "AKIAFLAGS")


def test_the_named_profile_comes_second_and_only_when_named(aws_home: dict[str, str]) -> None:
    named = Settings(aws_profile_name="ops")
    assert source(named, {**aws_home, **ENV}) == ("profile:ops", "AKIAOPS")
    assert source(Settings(aws_profile_name="cfgonly"), aws_home) == ("profile:cfgonly", "AKIACFG")
    assert source(Settings(), {**aws_home, **ENV}) == ("environment", "AKIAENV")


def test_environment_comes_third_with_its_session_token(aws_home: dict[str, str]) -> None:
    env = {**aws_home, **ENV, "AWS_SESSION_TOKEN": "env-token"}
    found = resolve_credentials(Settings(aws_profile_name="missing"), env)
    assert found is not None and found.source == "environment"
    assert found.credentials.token == "env-token"


def test_the_default_profile_comes_fourth(aws_home: dict[str, str]) -> None:
    assert source(Settings(), aws_home) == ("profile:default", "AKIADEFAULT")


def test_instance_metadata_comes_last(tmp_path: Path) -> None:
    with ImdsV2() as imds:
        environ = {"HOME": str(tmp_path), "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url,
                   "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                   "AWS_CONFIG_FILE": str(tmp_path / "none")}
        found = resolve_credentials(Settings(), environ)
        assert found is not None and found.source == "instance-metadata"
        assert found.credentials.access_key == "ASIAIMDSEXAMPLE"
        assert found.credentials.token == "imds-session-token"
        assert ("PUT", "/latest/api/token") in imds.requests, "IMDSv2's token first"


def test_incomplete_sources_fall_through(aws_home: dict[str, str]) -> None:
    half_flags = Settings(aws_access_key_id="AKIAFLAGS")
    assert source(half_flags, {**aws_home, **ENV}) == ("environment", "AKIAENV")
    half_profile = Settings(aws_profile_name="half")
    assert source(half_profile, {**aws_home, "AWS_ACCESS_KEY_ID": "AKIAENV"}) == (
        "profile:default", "AKIADEFAULT")


def test_no_source_at_all_is_none(tmp_path: Path) -> None:
    environ = {"HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true",
               "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "x"), "AWS_CONFIG_FILE": str(tmp_path / "y")}
    assert resolve_credentials(Settings(), environ) is None


def test_region_is_the_service_flag_then_aws_region_then_profile_then_us_east_1(
        aws_home: dict[str, str]) -> None:
    def region(service: Service, settings: Settings, environ: dict[str, str]) -> str:
        return service_region(service.endpoint(settings), settings, environ)

    both = Settings(aws_kinesis_region="sa-east-1", aws_region="eu-west-3")
    assert region(KINESIS, both, aws_home) == "sa-east-1"
    assert region(FIREHOSE, both, aws_home) == "eu-west-3"
    assert region(KINESIS, Settings(aws_profile_name="ops"), aws_home) == "ap-east-1"
    assert region(KINESIS, Settings(), aws_home) == "eu-north-1"
    assert region(KINESIS, Settings(), {"AWS_CONFIG_FILE": "/nonexistent"}) == "us-east-1"
    assert region(KINESIS, Settings(aws_region="xx-future-9"), aws_home) == "xx-future-9"


def sts_settings(proxy: FaultProxy, **extra: Any) -> Settings:
    values: dict[str, Any] = {"aws_sts_timeout": 900, **extra}
    return Settings(aws_access_key_id="AKIABASE", aws_secret_access_key="base-secret",
                    aws_sts_arn_role=ROLE_ARN, aws_sts_endpoint=proxy.url,
                    aws_kinesis_endpoint=proxy.url, aws_kinesis_stream="s", **values)


def assume_role_calls(proxy: FaultProxy) -> int:
    return sum(1 for call in proxy.calls if call.operation == "AssumeRole")


def test_assumed_role_credentials_are_renewed_before_expiry_once_per_lifetime(
        aws: Aws) -> None:
    now = [time.time()]
    clients = clients_for(sts_settings(aws.proxy), clock=lambda: now[0],
                         environ={"AWS_EC2_METADATA_DISABLED": "true"})
    first = clients.client("kinesis")
    assert clients.credential_source == f"sts:{ROLE_ARN} via flags"
    assert assume_role_calls(aws.proxy) == 1
    assert clients.expires_at is not None
    lifetime = clients.expires_at - now[0]
    assert 890 <= lifetime <= 901
    # Steady state reuses the clients and their credentials.
    for _ in range(5):
        assert clients.client("kinesis") is first
        assert clients.client("firehose") is not None
    assert assume_role_calls(aws.proxy) == 1, "one AssumeRole for both services"
    for refreshes in range(1, 4):
        margin_point = clients.expires_at - min(300.0, 0.2 * lifetime)
        now[0] = margin_point - 1
        assert clients.client("kinesis") is not None
        now[0] = margin_point + 1  # inside the refresh margin, before expiry
        clients.client("kinesis")
        assert assume_role_calls(aws.proxy) == 1 + refreshes
        lifetime = clients.expires_at - now[0]
    assert clients.client("kinesis").put_records(
        StreamName=aws.stream, Records=[{"Data": b"{}", "PartitionKey": "k"}])["FailedRecordCount"] == 0


def test_assume_role_takes_session_name_and_duration(aws: Aws) -> None:
    clients = clients_for(sts_settings(aws.proxy, aws_sts_session_name="host-42",
                                      aws_sts_timeout=1800),
                         environ={"AWS_EC2_METADATA_DISABLED": "true"})
    clients.client("kinesis")
    (call,) = [c for c in aws.proxy.calls if c.operation == "AssumeRole"]
    body = call.body.decode()
    assert "RoleSessionName=host-42" in body and "DurationSeconds=1800" in body
    assert "RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fosquery-shipper" in body


def test_the_extension_ships_with_assumed_role_credentials_and_survives_sts_trouble(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    aws.proxy.throttle(2, target="AssumeRole")
    aws.proxy.throttle(1, target="PutRecords", code="ExpiredTokenException", status=400)
    options = aws.options(aws_sts_arn_role=ROLE_ARN, aws_sts_endpoint=aws.proxy.url)
    with extension_factory(tmp_path, options=options) as ext:
        for line in result_lines(ext.standin, 20):
            ext.log("kinesis", line)
            ext.log("firehose", line)
        wait_for(lambda: len(aws.kinesis_records()) >= 20 and len(aws.firehose_lines()) >= 20,
                 60, "delivery with assumed-role credentials")
        err = ext.stderr()
        assert f"AWS credentials from sts:{ROLE_ARN} via environment" in err
        assert "AssumeRole.Throttling" in err
    assert len(aws.kinesis_records()) == 20
    # Two throttled attempts, one success, then one forced renewal after ExpiredTokenException.
    assert assume_role_calls(aws.proxy) == 4


def test_every_aws_call_goes_through_the_proxy_with_basic_auth(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    with TinyProxy("shipper", "proxy-pass-771") as proxy:
        options = aws.options(aws_enable_proxy="true", aws_proxy_scheme="http",
                              aws_proxy_host="127.0.0.1", aws_proxy_port=str(proxy.port),
                              aws_proxy_username="shipper", aws_proxy_password="proxy-pass-771",
                              aws_sts_arn_role=ROLE_ARN, aws_sts_endpoint=aws.proxy.url)
        with extension_factory(tmp_path, options=options) as ext:
            for line in result_lines(ext.standin, 10):
                ext.log("kinesis", line)
                ext.log("firehose", line)
            wait_for(lambda: len(aws.kinesis_records()) >= 10 and len(aws.firehose_lines()) >= 10,
                     30, "delivery through the proxy")
        port = aws.proxy.url.rsplit(":", 1)[1].rstrip("/")
        requests = re.findall(rf"Request \(file descriptor \d+\): POST http://127\.0\.0\.1:{port}/",
                              proxy.log_text())
        assert len(requests) >= 3, proxy.log_text()[-2000:]  # STS, Kinesis and Firehose at least
        assert {c.operation for c in aws.proxy.calls} >= {"AssumeRole", "PutRecords",
                                                          "PutRecordBatch"}
        assert "proxy-pass-771" not in ext.stderr()


def test_a_wrong_proxy_password_delivers_nothing_and_never_shows_the_password(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    with TinyProxy("shipper", "right-pass") as proxy:
        options = aws.options(aws_enable_proxy="true", aws_proxy_scheme="http",
                              aws_proxy_host="127.0.0.1", aws_proxy_port=str(proxy.port),
                              aws_proxy_username="shipper", aws_proxy_password="wrong-pass-93")
        with extension_factory(tmp_path, options=options) as ext:
            ext.log("kinesis", result_lines(ext.standin, 1)[0])
            wait_for(lambda: "aws_kinesis: retrying" in ext.stderr(), 20, "the proxy refusal")
            assert aws.kinesis_records() == []
        assert "wrong-pass-93" not in ext.stderr()


def test_without_the_proxy_flag_no_proxy_is_used(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    with TinyProxy("shipper", "pw") as proxy:
        options = aws.options(aws_enable_proxy="false", aws_proxy_host="127.0.0.1",
                              aws_proxy_port=str(proxy.port))
        with extension_factory(tmp_path, options=options) as ext:
            ext.log("kinesis", result_lines(ext.standin, 1)[0])
            wait_for(aws.kinesis_records, 20, "direct delivery")
        assert "Request (file descriptor" not in proxy.log_text()


def test_secrets_never_reach_a_log_an_error_a_record_the_spool_or_the_process_listing(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    secrets = {"aws_secret_access_key": "SECRET-KEY-4b1f", "aws_session_token": "SESSION-TOKEN-9c2e",
               "aws_proxy_password": "PROXY-PASSWORD-7d3a"}
    options = aws.options(aws_access_key_id="AKIALEAKTEST", **secrets,
                          aws_proxy_username="someone", aws_proxy_host="127.0.0.1",
                          aws_proxy_port="1", aws_enable_proxy="true", aws_proxy_scheme="http")
    with extension_factory(tmp_path, options=options, verbose=True) as ext:
        for line in result_lines(ext.standin, 5):
            ext.log("kinesis", line)
        ext.log_status("kinesis", ["a status line"])
        wait_for(lambda: "aws_kinesis: retrying" in ext.stderr(), 20, "the proxy failure")
        assert ext.proc is not None
        listing = Path(f"/proc/{ext.proc.pid}/cmdline").read_bytes()
        # Now a broken value next to a secret: the error names the option, never the secret.
        ext.standin.set_custom_option("custom_aws_sts_timeout", "5")
        ext.init()
        wait_for(lambda: "aws_sts_timeout='5'" in ext.stderr(), 10, "the settings error")
        ext.standin.set_custom_option("custom_aws_enable_proxy", "false")
        ext.standin.set_custom_option("custom_aws_sts_timeout", "900")
        ext.init()
        wait_for(lambda: len(aws.kinesis_records()) >= 6, 30, "delivery without the proxy")
        assert ext.terminate() == 0
    written = [ext.stderr().encode(), listing]
    written += [p.read_bytes() for p in ext.spool_dir.rglob("*") if p.is_file()]
    written += [data for data, _ in aws.kinesis_records()]
    for name, secret in secrets.items():
        for blob in written:
            assert secret.encode() not in blob, name
    assert json.loads(aws.kinesis_records()[-1][0])["log_type"] == "status"


def test_settings_dumps_redact_secrets() -> None:
    settings = Settings(aws_secret_access_key="s1", aws_session_token="s2", aws_proxy_password="s3",
                        aws_access_key_id="AKIA")
    text = repr(settings) + json.dumps(settings.dump())
    assert "s1" not in text.replace("aws_s", "") and "'s2'" not in text and '"s3"' not in text
    assert settings.dump()["aws_secret_access_key"] == "<redacted>"
    assert settings.dump()["aws_access_key_id"] == "AKIA"


def test_no_credentials_anywhere_keeps_records_and_says_so(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "HOME": str(tmp_path),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true"}
    with extension_factory(tmp_path, options=aws.options(), env=env) as ext:
        ext.log("kinesis", result_lines(ext.standin, 1)[0])
        wait_for(lambda: "NoCredentials" in ext.stderr(), 20, "the credentials error")
        assert aws.kinesis_records() == []
        assert ext.terminate() == 0
    assert ext.spool_dir.exists() and os.listdir(ext.spool_dir / "kinesis")
