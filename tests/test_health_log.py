"""Health lines: one per change, rate-limited while flapping, recoveries always told."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from osquery_aws_logger._counters import PluginCounters
from osquery_aws_logger._flusher import KINESIS, Channel
from osquery_aws_logger._settings import Settings
from osquery_aws_logger._spool import Spool


def channel(tmp_path: Path) -> Channel:
    counters = PluginCounters()
    spool = Spool(tmp_path / "s", max_records=100, max_bytes=1 << 20, on_drop=counters.drop)
    return Channel("aws_kinesis", KINESIS, spool, counters, Settings(), host_identifier="h")


def test_flapping_is_rate_limited_and_the_recovery_is_always_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="osquery_aws_logger.flusher")
    ch = channel(tmp_path)
    ch._set_state("retrying", "EndpointConnectionError: down")
    ch._set_state("retrying", "EndpointConnectionError: down")  # same error: no new line
    ch._set_state("ok", "")
    for _ in range(5):  # flapping within the interval: at most one more failure line
        ch._set_state("throttled", "ProvisionedThroughputExceededException: slow")
        ch._set_state("ok", "")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("aws_kinesis: retrying: EndpointConnectionError")
    assert lines[1] == "aws_kinesis: ok"
    assert len(lines) <= 2 + 2
    assert lines[-1].startswith("aws_kinesis: ok"), "the log never ends on a failure that is over"
    assert ch.counters.state == "ok"
