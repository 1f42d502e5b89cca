"""Each option's parser (issue 14, item 7): an unusable value is refused naming the option and
what is expected; the reason never quotes the value, and secrets stay redacted."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from osquery_aws_logger.settings import (
    MAX_BUFFERED_LOG,
    MAX_PERIOD_SECONDS,
    MAX_SHUTDOWN_SECONDS,
    MAX_SPOOL_BYTES,
    OPTIONS,
    SHOWN_VALUE_CHARS,
    Settings,
    describe_unknown,
    option_default,
    parse_settings,
    unknown_options,
)
from tests.osqueryd_standin import _AWS_FLAGS, _CORE_FLAGS
from tests.test_status import run_cli

# (option, unusable value, what the message must say is expected)
REFUSED = [
    ("aws_kinesis_endpoint", "http://", "no host"),
    ("aws_kinesis_endpoint", "https://:99999", "port 1-65535"),
    ("aws_firehose_endpoint", "http://[::1", "does not parse as a URL"),
    ("aws_sts_endpoint", "http://localhost:0", "port 0"),
    ("aws_kinesis_endpoint", "http://local_aws:4566", "not a DNS name or IP address"),
    ("aws_kinesis_endpoint", "http://bad host", "spaces or control characters"),
    ("aws_kinesis_endpoint", "ftp://example.com", "not http or https"),
    ("aws_region", "us east 1!!/../", "AWS region name like us-east-1"),
    ("aws_kinesis_region", "US-EAST-1", "AWS region name like us-east-1"),
    ("aws_firehose_region", "eu-west", "AWS region name like us-east-1"),
    ("aws_sts_region", "https://sts.amazonaws.com", "AWS region name like us-east-1"),
    ("aws_kinesis_period", str(10**20), "from 1 to 86400"),
    ("aws_firehose_period", "0", "from 1 to 86400"),
    ("aws_kinesis_period", "-5", "whole number of seconds"),
    ("aws_kinesis_period", "1_000", "whole number of seconds"),
    ("buffered_log_max", str(10**40), "from 1 to 1000000000"),
    ("aws_logger_spool_max_bytes", str((1 << 40) + 1), "from 1 to 1099511627776"),
    ("aws_logger_shutdown_timeout", "3601", "from 1 to 3600"),
    ("aws_logger_shutdown_timeout", "9" * 5000, "from 1 to 3600"),
    ("aws_logger_spool_dir", "spool", "absolute directory path"),
    ("aws_logger_spool_dir", "  ", "empty"),
    ("aws_logger_spool_dir", "./var/osquery", "absolute directory path"),
    ("aws_logger_metrics_file", "metrics.prom", "absolute path of a .prom file"),
    ("aws_logger_metrics_file", "/var/lib/node_exporter/osquery.txt", "absolute path of a .prom file"),
    ("aws_logger_ca_bundle", "certs/ca.pem", "absolute path to a PEM CA bundle"),
    ("aws_logger_log_format", "xml", "text or json"),
]


@pytest.mark.parametrize(("name", "value", "expected"), REFUSED)
def test_an_unusable_value_is_refused_naming_the_option_and_what_is_expected(
        name: str, value: str, expected: str) -> None:
    # The custom_ form, as a config file on a build without AWS support writes it.
    settings, problems = parse_settings({"custom_" + name: value}, {})
    assert len(problems) == 1, problems
    shown = value if len(value) <= SHOWN_VALUE_CHARS else value[:SHOWN_VALUE_CHARS] + "..."
    assert problems[0].startswith(f"{name}={shown!r}: "), problems[0]
    assert expected in problems[0]
    assert "expected" in problems[0]
    # An unusable option keeps its default; nothing else changes.
    assert getattr(settings, name) == option_default(name)


@pytest.mark.parametrize(("name", "value"), [
    ("aws_kinesis_endpoint", "http://[MARK"), ("aws_kinesis_endpoint", "https://MARK_X:1"),
    ("aws_kinesis_endpoint", "ftp://MARK"), ("aws_kinesis_endpoint", "https://MARK:99999"),
    ("aws_kinesis_endpoint", "http://MARK x"), ("aws_region", "MARK region"),
    ("aws_kinesis_period", "MARK"), ("buffered_log_max", "MARK"),
    ("aws_logger_spool_dir", "MARK/dir"), ("aws_logger_metrics_file", "/MARK.txt"),
    ("aws_logger_ca_bundle", "MARK.pem"), ("aws_sts_endpoint", "http://[::MARK]")])
def test_the_reason_never_quotes_the_value(name: str, value: str) -> None:
    # The value is quoted once, after the option's name, where redaction applies to secrets;
    # parsers' own texts (urllib's, int()'s) would quote it again, unredacted.
    _, problems = parse_settings({"custom_" + name: value}, {})
    assert len(problems) == 1
    assert "MARK" not in problems[0].split(": ", 1)[1], problems[0]


ACCEPTED = [
    ("aws_kinesis_endpoint", "https://kinesis.us-east-1.amazonaws.com"),
    ("aws_kinesis_endpoint", "http://127.0.0.1:4566/"),
    ("aws_firehose_endpoint", "http://[::1]:4566"),
    ("aws_sts_endpoint", "https://sts.us-gov-west-1.amazonaws.com:443/path"),
    ("aws_kinesis_endpoint", "HTTP://LocalStack:4566"),
    *(("aws_region", region) for region in (
        "us-east-1", "eu-central-2", "us-gov-west-1", "cn-north-1", "ap-southeast-5",
        "us-isob-east-1", "eu-isoe-west-1", "mx-central-1", "")),
    ("aws_kinesis_period", str(MAX_PERIOD_SECONDS)),
    ("aws_firehose_period", "1"),
    ("buffered_log_max", str(MAX_BUFFERED_LOG)),
    ("aws_logger_spool_max_bytes", str(MAX_SPOOL_BYTES)),
    ("aws_logger_shutdown_timeout", str(MAX_SHUTDOWN_SECONDS)),
    ("aws_logger_spool_dir", "/srv/spool"),
    ("aws_logger_metrics_file", "/var/lib/node_exporter/textfile_collector/osquery.prom"),
    ("aws_logger_metrics_file", ""),
    ("aws_logger_ca_bundle", "/etc/pki/custom/ca.pem"),
    ("aws_logger_ca_bundle", ""),
]


@pytest.mark.parametrize(("name", "value"), ACCEPTED)
def test_usable_values_pass_up_to_each_bound(name: str, value: str) -> None:
    settings, problems = parse_settings({"custom_" + name: value}, {})
    assert problems == []
    parsed = getattr(settings, name)
    assert str(parsed) == value if value else parsed == option_default(name)


@pytest.mark.parametrize("endpoint", [v for n, v in ACCEPTED if n.endswith("_endpoint")])
def test_every_endpoint_accepted_here_makes_a_botocore_client(endpoint: str) -> None:
    # botocore refuses a bad endpoint only when a client is built; that is where a half-parsed
    # URL used to fail (and be retried for ever).
    boto3.session.Session(aws_access_key_id="a", aws_secret_access_key="b").client(
        "kinesis", region_name="us-east-1", endpoint_url=endpoint)


@pytest.mark.parametrize("endpoint", ["http://", "https://:99999", "http://[::1",
                                      "http://local_aws:4566"])
def test_the_endpoints_refused_here_are_ones_botocore_cannot_use(endpoint: str) -> None:
    with pytest.raises(ValueError):
        boto3.session.Session(aws_access_key_id="a", aws_secret_access_key="b").client(
            "kinesis", region_name="us-east-1", endpoint_url=endpoint)
    assert parse_settings({"custom_aws_kinesis_endpoint": endpoint}, {})[1]


def test_secrets_stay_redacted_beside_refused_values() -> None:
    options = {"custom_aws_secret_access_key": "SECRET-abc-123", "aws_proxy_password": "PW-xyz-789",
               "custom_aws_region": "us east 1!!/../", "custom_aws_kinesis_endpoint": "http://",
               "custom_aws_kinesis_period": str(10**20)}
    settings, problems = parse_settings(options, {})
    assert len(problems) == 3
    text = repr(problems) + repr(settings) + repr(settings.dump())
    assert "SECRET-abc-123" not in text and "PW-xyz-789" not in text
    assert settings.aws_secret_access_key == "SECRET-abc-123"


def test_a_long_unusable_value_is_quoted_by_its_start_only() -> None:
    _, problems = parse_settings({"custom_aws_kinesis_period": "7" * 5000}, {})
    assert problems == [f"aws_kinesis_period='{'7' * SHOWN_VALUE_CHARS}...': out of range: "
                        "expected a whole number of seconds from 1 to 86400"]


def test_the_defaults_pass_their_own_parsers() -> None:
    assert parse_settings({}, {}) == (Settings(), [])
    for spec in OPTIONS:
        spec.parse(spec.default)


def test_osquerys_own_flags_are_never_unknown() -> None:
    # Everything a stock osqueryd reports (the stand-in models osquery 5.x's flag table).
    assert unknown_options([*_AWS_FLAGS, *_CORE_FLAGS]) == []
    assert unknown_options(["custom_" + spec.name for spec in OPTIONS]) == []


def test_unknown_aws_options_are_named_with_the_closest_known_one() -> None:
    found = unknown_options([
        "custom_aws_kinesis_strem", "aws_kinesis_perod", "custom_aws_secret_acess_key",
        "custom_aws_debug", "custom_aws_zzzzzzzz", "custom_other_extension_option", "config_path"])
    assert found == [
        ("aws_kinesis_perod", "aws_kinesis_period"),
        ("custom_aws_kinesis_strem", "custom_aws_kinesis_stream"),
        ("custom_aws_secret_acess_key", "custom_aws_secret_access_key"),
        ("custom_aws_zzzzzzzz", None),
    ]
    assert describe_unknown(found[1:2] + found[3:]) == (
        "custom_aws_kinesis_strem (did you mean custom_aws_kinesis_stream?); custom_aws_zzzzzzzz")


def test_check_names_each_refused_value_and_unknown_option(tmp_path: Path) -> None:
    config = tmp_path / "osquery.conf"
    config.write_text(json.dumps({"options": {
        "custom_aws_kinesis_stream": "s", "custom_aws_kinesis_endpoint": "http://",
        "aws_region": "us east 1!!/../", "custom_aws_firehose_period": str(10**20),
        "custom_aws_logger_spool_dir": "spool", "custom_aws_kinesis_strem": "typo",
        "custom_aws_secret_access_key": "TOP-SECRET-7",
        # osquery 5.x's own flags, read like the others: not unknown.
        "aws_debug": False, "aws_enforce_fips": False}}))
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 1
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL ")]
    assert fails == [
        "FAIL custom_aws_kinesis_strem: not an option of this extension "
        "(did you mean custom_aws_kinesis_stream?)",
        "FAIL aws_kinesis_endpoint='http://': no host: expected an http:// or https:// URL with "
        "a host and, if any, a port 1-65535, like https://kinesis.us-east-1.amazonaws.com",
        "FAIL aws_firehose_period='100000000000000000000': out of range: expected a whole "
        "number of seconds from 1 to 86400",
        "FAIL aws_region='us east 1!!/../': expected an AWS region name like us-east-1, "
        "eu-central-2 or us-gov-west-1, or empty",
        "FAIL aws_logger_spool_dir='spool': expected an absolute directory path, like "
        "/var/osquery/aws_logger",
    ]
    assert "TOP-SECRET-7" not in result.stdout + result.stderr
