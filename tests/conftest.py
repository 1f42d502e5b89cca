"""Fixtures shared by the tests: local AWS services, the fault proxy, and the extension harness."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import RunningExtension
from tests.localaws import FaultProxy, MotoServer
from tests.localaws_fixtures import fault_proxy, moto_server

__all__ = ["aws", "fault_proxy", "moto_server"]


class Aws:
    """A fresh Kinesis stream and Firehose delivery stream (into S3) behind the fault proxy."""

    def __init__(self, moto: MotoServer, proxy: FaultProxy) -> None:
        self.moto = moto
        self.proxy = proxy
        self.stream = "osquery-results"
        self.delivery_stream = "osquery-firehose"
        self.bucket = "osquery-logs"
        moto.create_stream(self.stream)
        moto.create_delivery_stream(self.delivery_stream, self.bucket)

    def options(self, **extra: str) -> dict[str, str]:
        """osquery options that point both plugins at the local services, flushing every second."""
        return {
            "aws_kinesis_stream": self.stream,
            "aws_kinesis_endpoint": self.proxy.url,
            "aws_kinesis_period": "1",
            "aws_firehose_stream": self.delivery_stream,
            "aws_firehose_endpoint": self.proxy.url,
            "aws_firehose_period": "1",
            "aws_region": "us-east-1",
            **extra,
        }

    def sts_secrets(self) -> list[str]:
        """The secret keys and session tokens STS (moto) handed out, read from its answers."""
        found = []
        for call in self.proxy.calls:
            if call.operation == "AssumeRole" and call.answer:
                text = call.answer.decode()
                found += re.findall(r"<SecretAccessKey>([^<]+)</SecretAccessKey>", text)
                found += re.findall(r"<SessionToken>([^<]+)</SessionToken>", text)
        return found

    def kinesis_records(self) -> list[tuple[bytes, str]]:
        return self.moto.read_stream(self.stream)

    def firehose_lines(self) -> list[bytes]:
        """Every record Firehose delivered to S3, split on the newline each record ends with."""
        joined = b"".join(self.moto.read_bucket(self.bucket))
        assert not joined or joined.endswith(b"\n")
        return joined.split(b"\n")[:-1] if joined else []


@pytest.fixture
def aws(moto_server: MotoServer, fault_proxy: FaultProxy) -> Aws:
    return Aws(moto_server, fault_proxy)


@pytest.fixture
def extension_factory(tmp_path: Path) -> Iterator[type[RunningExtension]]:
    """Start RunningExtension(...) objects that are closed (and their processes killed) after."""
    started: list[RunningExtension] = []

    class Tracked(RunningExtension):
        def __enter__(self) -> RunningExtension:
            started.append(self)
            return super().__enter__()

    yield Tracked
    for running in started:
        running.close()
