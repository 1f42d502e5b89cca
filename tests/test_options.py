"""One option table: Settings, the flags, the typed per-service views and the README agree with it.
Also the package's import graph (no cycles, TYPE_CHECKING included) and the retry code lists."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest
from botocore.retries import standard

from osquery_aws_logger.delivery.retry import THROTTLING_CODES, TRANSIENT_CODES, is_retriable, is_throttling
from osquery_aws_logger.delivery.services import FIREHOSE, KINESIS
from osquery_aws_logger.flags import add_option_flags
from osquery_aws_logger.settings import OPTIONS, Settings, option_default, parse_settings

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "osquery_aws_logger"


def test_settings_declare_exactly_the_tables_options_with_its_defaults() -> None:
    fields = dataclasses.fields(Settings)
    assert [f.name for f in fields] == [spec.name for spec in OPTIONS]
    for f in fields:
        assert f.default == option_default(f.name), f.name
    assert parse_settings({}, {}) == (Settings(), [])


def test_every_option_is_a_flag_and_booleans_take_a_bare_flag() -> None:
    parser = argparse.ArgumentParser()
    add_option_flags(parser)
    args = parser.parse_args(["--aws_kinesis_aggregate", "--aws_kinesis_period", "3"])
    assert args.aws_kinesis_aggregate == "true" and args.aws_kinesis_period == "3"
    assert {a.dest for a in parser._actions} >= {spec.name for spec in OPTIONS}


def readme_options() -> dict[str, tuple[str, bool]]:
    """The README's options table: each option's default and whether it is marked as ours (*)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Options", 1)[1].split("\n\n", 2)[1]
    found: dict[str, tuple[str, bool]] = {}
    for row in section.splitlines()[2:]:
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        names = re.findall(r"`([a-z0-9_]+)`", cells[0])
        default = cells[1].strip("`")
        for name in names:
            assert name not in found, f"{name} twice in the README"
            found[name] = (default, cells[0].endswith("*"))
    return found


def test_the_readme_option_table_matches_the_option_table() -> None:
    documented = readme_options()
    assert set(documented) == {spec.name for spec in OPTIONS}
    for spec in OPTIONS:
        default, ours = documented[spec.name]
        assert default == spec.default, spec.name
        assert ours == (not spec.osquery), spec.name


def test_each_service_has_a_typed_view_of_its_options() -> None:
    settings, problems = parse_settings({
        "custom_aws_kinesis_stream": "k", "aws_kinesis_period": "3",
        "custom_aws_kinesis_routes": '{"sec": ["pack_sec_*"]}',
        "custom_aws_firehose_stream": "f", "custom_aws_firehose_pack": "true",
        "custom_aws_firehose_compression": "gzip", "custom_aws_firehose_status_stream": "st"}, {})
    assert problems == []
    kinesis, firehose = KINESIS.settings(settings), FIREHOSE.settings(settings)
    assert (kinesis.stream, kinesis.period, kinesis.many_rows_per_record) == ("k", 3, False)
    assert kinesis.route(False, "pack_sec_x") == "sec" and kinesis.route(False, "other") == "k"
    assert not kinesis.single_destination() and kinesis.route(True, "") == "k"
    assert (firehose.stream, firehose.compression, firehose.many_rows_per_record) == ("f", "gzip", True)
    assert firehose.route(True, "") == "st" and not firehose.single_destination()
    assert (kinesis.stream_option, firehose.endpoint_option) == \
        ("aws_kinesis_stream", "aws_firehose_endpoint")


@pytest.mark.parametrize("code", ["Throttling", "ThrottledException", "RequestThrottledException",
                                  "BandwidthLimitExceeded", "TransactionInProgressException",
                                  "ProvisionedThroughputExceededException", "KMSThrottlingException",
                                  "ServiceUnavailableException"])
def test_botocores_throttles_and_the_services_own_are_throttles(code: str) -> None:
    assert is_throttling(code) and is_retriable(code, 400)


def test_the_code_lists_contain_botocores_own() -> None:
    assert set(standard.ThrottledRetryableChecker._THROTTLED_ERROR_CODES) - {
        "PriorRequestNotComplete"} <= THROTTLING_CODES
    assert set(standard.TransientRetryableChecker._TRANSIENT_ERROR_CODES) <= TRANSIENT_CODES
    assert is_retriable("Anything", 502) and is_retriable("Anything", 509)
    assert is_throttling("Anything", 429)
    for code in ("ResourceNotFoundException", "AccessDeniedException", "ValidationException"):
        assert not is_retriable(code, 400) and not is_throttling(code, 400)
