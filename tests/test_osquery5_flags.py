"""osquery 5.x's later aws_* flags and large Kinesis records, in process: parsing, the endpoint
each client uses (FIPS), the limits a put call follows, and the redaction of the SDK's lines."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config

from osquery_aws_logger.delivery.aggregate import KplAggregate
from osquery_aws_logger.delivery.aws import (
    Endpoint,
    EndpointRefused,
    endpoint_for,
    fips_endpoint,
    fips_regions,
    standard_endpoint,
)
from osquery_aws_logger.delivery.batching import (
    FIREHOSE_LIMITS,
    KINESIS_LIMITS,
    MIB,
    Entry,
    batch_length,
    oversize,
)
from osquery_aws_logger.delivery.services import FIREHOSE, KINESIS
from osquery_aws_logger.redact import MASK, redact
from osquery_aws_logger.settings import (
    OPTION_NAMES,
    OSQUERY_AWS_FLAGS_NOT_READ,
    Settings,
    parse_settings,
)
from tests.osqueryd_standin import _AWS_FLAGS

OSQUERYS_FIPS_REGIONS = ["us-east-1", "us-east-2", "us-gov-east-1", "us-gov-west-1", "us-west-1",
                         "us-west-2"]


def test_every_aws_flag_a_stock_osqueryd_reports_is_read() -> None:
    assert set(_AWS_FLAGS) <= OPTION_NAMES
    assert frozenset() == OSQUERY_AWS_FLAGS_NOT_READ


def test_the_new_flags_take_osquerys_defaults_and_refuse_what_osquery_refuses() -> None:
    settings, problems = parse_settings({}, {})
    assert problems == []
    assert (settings.aws_enforce_fips, settings.aws_disable_imdsv1_fallback, settings.aws_debug,
            settings.aws_imdsv2_request_attempts, settings.aws_imdsv2_request_interval,
            settings.aws_kinesis_max_record_size_kib) == (False, False, False, 3, 3, 1024)
    # As a stock osqueryd reports them (core flags), and in their custom_ form.
    settings, problems = parse_settings({
        "aws_enforce_fips": "true", "aws_imdsv2_request_interval": "0",
        "custom_aws_imdsv2_request_attempts": "1", "custom_aws_debug": "on",
        "custom_aws_kinesis_max_record_size_kib": "10240"}, {})
    assert problems == []
    assert settings.aws_enforce_fips and settings.aws_debug
    assert (settings.aws_imdsv2_request_attempts, settings.aws_imdsv2_request_interval) == (1, 0)
    assert KINESIS.settings(settings).max_record_kib == 10240 and \
        FIREHOSE.settings(settings).max_record_kib == 0
    _, problems = parse_settings({
        "aws_imdsv2_request_attempts": "0",  # osquery's validator refuses 0 too
        "aws_imdsv2_request_interval": "-1", "custom_aws_kinesis_max_record_size_kib": "1023"}, {})
    assert problems == [
        "aws_imdsv2_request_attempts='0': out of range: expected a whole number of attempts "
        "from 1 to 10",
        "aws_imdsv2_request_interval='-1': expected a whole number of seconds (or 0) from 1 to 60",
        "aws_kinesis_max_record_size_kib='1023': expected the stream's MaxRecordSizeInKiB, a "
        "whole number from 1024 to 10240"]
    _, problems = parse_settings({"custom_aws_kinesis_max_record_size_kib": "10241"}, {})
    assert len(problems) == 1


def test_fips_endpoints_come_from_botocores_data_with_osquerys_govcloud_case() -> None:
    for service in ("kinesis", "firehose", "sts"):
        # botocore 1.44's data lists the same six regions as osquery's kAwsFipsRegions for these
        # three services; a newer botocore that lists more is followed without a change here.
        assert set(OSQUERYS_FIPS_REGIONS) <= set(fips_regions(service))
        assert fips_endpoint(service, "us-east-1") == f"https://{service}-fips.us-east-1.amazonaws.com"
        assert fips_endpoint(service, "eu-west-1") is None
        assert fips_endpoint(service, "cn-north-1") is None
    # GovCloud: Kinesis and STS's plain endpoints are their FIPS ones; Firehose has its own.
    assert fips_endpoint("kinesis", "us-gov-west-1") == "https://kinesis.us-gov-west-1.amazonaws.com"
    assert fips_endpoint("sts", "us-gov-east-1") == "https://sts.us-gov-east-1.amazonaws.com"
    assert fips_endpoint("firehose", "us-gov-west-1") == \
        "https://firehose-fips.us-gov-west-1.amazonaws.com"


@pytest.mark.parametrize("region", ["us-east-1", "us-west-2", "us-gov-west-1", "us-gov-east-1",
                                    "eu-west-1", "cn-north-1", "ap-southeast-7", "us-iso-east-1"])
def test_the_endpoint_shown_is_the_one_botocore_itself_resolves(region: str) -> None:
    session = boto3.session.Session(aws_access_key_id="a", aws_secret_access_key="b")
    for service in ("kinesis", "firehose", "sts"):
        assert session.client(service, region_name=region).meta.endpoint_url == \
            standard_endpoint(service, region) == endpoint_for(Endpoint(service), region, Settings())
        fips = fips_endpoint(service, region)
        if fips is not None:
            with_fips = session.client(service, region_name=region,
                                       config=Config(use_fips_endpoint=True))
            assert with_fips.meta.endpoint_url == fips == \
                endpoint_for(Endpoint(service), region, Settings(aws_enforce_fips=True))


def test_fips_refuses_a_region_without_one_and_any_custom_endpoint_naming_both_options() -> None:
    fips = Settings(aws_enforce_fips=True)
    with pytest.raises(EndpointRefused) as refused:
        endpoint_for(KINESIS.endpoint(fips), "eu-west-1", fips)
    assert "kinesis has no FIPS endpoint in eu-west-1" in str(refused.value)
    assert "us-east-1, us-east-2, us-gov-east-1" in str(refused.value)
    custom = Settings(aws_enforce_fips=True, aws_firehose_endpoint="https://firehose.example")
    with pytest.raises(EndpointRefused, match="aws_enforce_fips=true and aws_firehose_endpoint"):
        endpoint_for(FIREHOSE.endpoint(custom), "us-east-1", custom)
    assert "aws_firehose_endpoint" in (FIREHOSE.problem(Settings(
        aws_enforce_fips=True, aws_firehose_stream="f", aws_firehose_endpoint="https://x")) or "")
    role = Settings(aws_enforce_fips=True, aws_kinesis_stream="k", aws_sts_arn_role="arn:x",
                    aws_sts_endpoint="http://127.0.0.1:1")
    assert "aws_enforce_fips=true and aws_sts_endpoint" in (KINESIS.problem(role) or "")
    # Without the flag, custom endpoints are used as given.
    custom = Settings(aws_kinesis_endpoint="http://h:1")
    assert endpoint_for(KINESIS.endpoint(custom), "eu-west-1", custom) == \
        "http://h:1"


def test_limits_follow_the_streams_record_size_and_aws_rules_for_large_records() -> None:
    assert KINESIS.limits_for(KINESIS.settings(Settings())) is KINESIS_LIMITS
    large = KINESIS.limits_for(KINESIS.settings(Settings(aws_kinesis_max_record_size_kib=5120)))
    assert (large.max_records, large.max_call_bytes, large.max_record_bytes) == \
        (500, 10 * MIB, 5 * MIB)
    assert large.aggregate_bytes == MIB  # the KPL's AggregationMaxSize ceiling
    assert FIREHOSE.limits_for(FIREHOSE.settings(Settings(aws_kinesis_max_record_size_kib=10240))) is \
        FIREHOSE_LIMITS
    # A 5 MiB record goes alone or with up to 5 MiB more; never 10 MiB and a byte.
    entries = [Entry((i,), b"x" * (5 * MIB - 20), "host-identifier") for i in range(3)]
    assert batch_length(entries, large) == 2
    assert oversize(entries[0], KINESIS_LIMITS) and not oversize(entries[0], large)
    # Aggregates stay at 1 MiB even on a large-record stream; a bigger row goes as it is.
    view = KINESIS.settings(Settings(aws_kinesis_max_record_size_kib=10240,
                                     aws_kinesis_aggregate=True))
    builder = KINESIS.builder(view, "host")
    assert isinstance(builder, KplAggregate) and builder.max_bytes == MIB
    assert not builder.add(b"r" * MIB)


SDK_LINES = [
    # botocore.parsers, an STS answer before the extension has seen (and learnt) its secrets.
    "Response body:\nb'<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIAX"
    "</AccessKeyId><SecretAccessKey>fresh/Secret+Key9</SecretAccessKey><SessionToken>FwoGZXIv"
    "fresh-session-token==</SessionToken></Credentials></AssumeRoleResult></AssumeRoleResponse>'",
    # botocore.endpoint: the prepared request's headers.
    "Sending http request: <AWSPreparedRequest stream_output=False, method=POST, url=https://"
    "kinesis-fips.us-east-1.amazonaws.com/, headers={'X-Amz-Target': b'Kinesis_20131202.PutRecords',"
    " 'X-Amz-Security-Token': b'FwoGZXIvfresh-session-token==', 'Authorization': b'AWS4-HMAC-SHA256"
    " Credential=ASIAX/20261201/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=ab12'"
    ", 'Proxy-Authorization': b'Basic c2hpcHBlcjpwcm94eS1wYXNz'}>",
    # botocore.auth: the canonical request.
    "CanonicalRequest:\nPOST\n/\n\nhost:kinesis-fips.us-east-1.amazonaws.com\n"
    "x-amz-security-token:FwoGZXIvfresh-session-token==\n",
    # An instance metadata answer and a proxy URL with its userinfo.
    '{"Code": "Success", "AccessKeyId": "ASIAX", "SecretAccessKey": "fresh/Secret+Key9", '
    '"Token": "FwoGZXIvfresh-session-token==", "Expiration": "2026-12-01T00:00:00Z"}',
    "proxies: {'https': 'http://shipper:proxy-pass@127.0.0.1:3128'}",
]


def test_secrets_the_sdk_prints_are_masked_by_where_they_stand() -> None:
    for line in SDK_LINES:
        shown = redact(line)
        for secret in ("fresh/Secret+Key9", "fresh-session-token", "c2hpcHBlcjpwcm94eS1wYXNz",
                       "proxy-pass", "Signature=ab12"):
            assert secret not in shown, (secret, shown)
        assert MASK in shown
    # What is not a secret stays readable.
    assert "kinesis-fips.us-east-1.amazonaws.com" in redact(SDK_LINES[1])
    assert redact("NextToken: abc") == "NextToken: abc"
    assert redact("ExpiredTokenException: The security token included in the request is expired") == \
        "ExpiredTokenException: The security token included in the request is expired"
