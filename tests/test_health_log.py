"""Health lines: one per change, rate-limited while flapping, recoveries always told."""

from __future__ import annotations

import logging

import pytest

from osquery_aws_logger.delivery.accumulator import Health


def test_flapping_is_rate_limited_and_the_recovery_is_always_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="osquery_aws_logger.flusher")
    health = Health()
    health.set_state("aws_kinesis", "retrying", "EndpointConnectionError: down", 0.0)
    health.set_state("aws_kinesis", "retrying", "EndpointConnectionError: down", 0.1)  # no news
    health.set_state("aws_kinesis", "ok", "", 0.2)
    for step in range(5):  # flapping within the interval: at most one more failure line
        health.set_state("aws_kinesis", "throttled", "ProvisionedThroughputExceededException: slow",
                         0.3 + step / 10)
        health.set_state("aws_kinesis", "ok", "", 0.35 + step / 10)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("aws_kinesis: retrying: EndpointConnectionError")
    assert lines[1] == "aws_kinesis: ok"
    assert len(lines) <= 2 + 2
    assert lines[-1].startswith("aws_kinesis: ok"), "the log never ends on a failure that is over"
    assert health.state == "ok"
