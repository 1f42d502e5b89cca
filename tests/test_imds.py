"""Instance metadata under osquery 5.x's flags: IMDSv2 token attempts and their waits, and no
IMDSv1 request at all with aws_disable_imdsv1_fallback, against a real local IMDS stand-in."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import MetadataRetrievalError

from osquery_aws_logger.delivery.aws import ImdsFetcher, resolve_credentials, service_region, sts_endpoint
from osquery_aws_logger.delivery.services import SERVICES
from osquery_aws_logger.settings import Settings
from tests.conftest import Aws
from tests.harness import RunningExtension, result_lines, wait_for
from tests.localnet import ImdsV2

Factory = type[RunningExtension]


def no_files(tmp_path: Path, imds: ImdsV2) -> dict[str, str]:
    """An environment whose only credential source is the IMDS stand-in."""
    return {"HOME": str(tmp_path), "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url,
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "AWS_CONFIG_FILE": str(tmp_path / "none")}


@pytest.mark.parametrize(("attempts", "interval", "waits"), [
    (3, 3, [3.0, 9.0]),            # osquery's defaults: 3 s, then 3 x 3
    (4, 2, [2.0, 4.0, 8.0]),
    (1, 5, []),
    (3, 0, [0.0, 0.0]),
    (5, 60, [60.0, 60.0, 60.0, 60.0]),  # a single wait is capped at a minute
])
def test_token_attempts_wait_as_osquery_does(tmp_path: Path, attempts: int, interval: int,
                                             waits: list[float]) -> None:
    slept: list[float] = []
    with ImdsV2(token_status=500) as imds:
        settings = Settings(aws_imdsv2_request_attempts=attempts,
                            aws_imdsv2_request_interval=interval, aws_disable_imdsv1_fallback=True)
        fetcher = ImdsFetcher(settings, no_files(tmp_path, imds), sleep=slept.append)
        # botocore's own refusal of a tokenless request, before anything is sent.
        with pytest.raises(MetadataRetrievalError, match="IMDSv1 has been disabled"):
            fetcher.retrieve_iam_role_credentials()
        assert slept == waits
        assert fetcher.token_requests == imds.token_requests == attempts
        assert imds.v1_requests == imds.v2_requests == 0


def test_a_token_that_comes_late_is_used_with_no_imdsv1_request(tmp_path: Path) -> None:
    with ImdsV2(token_status=503) as imds:
        slept: list[float] = []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            imds.token_status = None  # IMDS answers from the second attempt on

        settings = Settings(aws_disable_imdsv1_fallback=True)
        fetcher = ImdsFetcher(settings, no_files(tmp_path, imds), sleep=sleep)
        found = fetcher.retrieve_iam_role_credentials()
        assert found["access_key"] == "ASIAIMDSEXAMPLE"
        assert (imds.token_requests, slept, imds.v1_requests) == (2, [3.0], 0)


def test_without_a_token_imdsv1_is_used_only_when_the_fallback_is_allowed(tmp_path: Path) -> None:
    quick = {"aws_imdsv2_request_attempts": 2, "aws_imdsv2_request_interval": 0}
    # An instance that still serves IMDSv1 (and refuses tokens, as behind a hop limit).
    with ImdsV2(token_status=403, serve_v1=True) as imds:
        found = resolve_credentials(Settings(**quick), no_files(tmp_path, imds))
        assert found is not None and found.source == "instance-metadata"
        assert imds.v1_requests == 2 and imds.token_requests == 2  # the stand-in can tell
    with ImdsV2(token_status=403, serve_v1=True) as imds:
        found = resolve_credentials(Settings(aws_disable_imdsv1_fallback=True, **quick),
                                    no_files(tmp_path, imds))
        assert found is None
        assert imds.v1_requests == 0 and imds.v2_requests == 0 and imds.token_requests == 2


def test_the_region_is_never_looked_up_in_instance_metadata(tmp_path: Path) -> None:
    # osquery's loggers take the region from the flags, the profile, else us-east-1
    # (getAWSRegion); the IMDS identity document serves only its EC2 tables.
    with ImdsV2() as imds:
        environ = no_files(tmp_path, imds)
        for target in (*(s.endpoint(Settings()) for s in SERVICES.values()),
                       sts_endpoint(Settings())):
            assert service_region(target, Settings(), environ) == "us-east-1"
        assert imds.requests == []


def test_the_extension_makes_no_imdsv1_request_and_keeps_lines_spooled(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    with ImdsV2(token_status=403, serve_v1=True) as imds:
        env = {**no_files(tmp_path, imds), "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
               "AWS_EC2_METADATA_DISABLED": "false"}
        options = aws.options(aws_disable_imdsv1_fallback="true", aws_imdsv2_request_attempts="2",
                              aws_imdsv2_request_interval="1")
        with extension_factory(tmp_path, options=options, env=env, builtin_aws=True) as ext:
            for line in result_lines(ext.standin, 3):
                ext.log("kinesis", line)
            wait_for(lambda: "NoCredentials" in ext.stderr(), 30, "the credentials error")
            wait_for(lambda: imds.token_requests >= 2, 10, "two token attempts")
            err = ext.stderr()
            assert "no IMDSv2 token from" in err and "after 2 attempts" in err
            assert "no instance metadata request is made without one" in err
            assert ext.terminate() == 0
        assert imds.v1_requests == 0 and imds.v2_requests == 0
        assert {path for _, path in imds.requests} == {"/latest/api/token"}
        # Each resolution: two attempts a second apart (the interval), never back to back.
        first, second = imds.token_times[:2]
        assert second - first >= 0.9
    assert aws.kinesis_records() == []
