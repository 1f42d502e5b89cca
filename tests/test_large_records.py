"""Large Kinesis records (aws_kinesis_max_record_size_kib), end to end through the real extension.

moto refuses every record over 1 MiB, so a stream raised to 10 MiB is played by the fault
proxy's large-record mode, which enforces AWS's rules for such streams and keeps what it took
(`FaultProxy.large_records`); the 1 MiB default is tested against moto itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from osquery_aws_logger.delivery.aggregate import KPL_MAGIC
from tests.conftest import Aws
from tests.harness import RunningExtension, result_lines, wait_for
from tests.localaws import make_client

Factory = type[RunningExtension]
MIB = 1024 * 1024


def table(ext: RunningExtension) -> dict[str, dict[str, str]]:
    answer = ext.standin.call(ext.uuid, "table", "aws_logger_status", {"action": "generate"})
    return {row["service"]: row for row in answer.response}


def test_the_large_record_stand_in_enforces_awss_rules(aws: Aws) -> None:
    aws.proxy.large_records(aws.stream, 2048)
    kinesis = make_client("kinesis", aws.proxy.url)
    ok = kinesis.put_records(StreamName=aws.stream, Records=[
        {"Data": b"a" * (2 * MIB - 1), "PartitionKey": "k"}])
    assert ok["FailedRecordCount"] == 0 and len(ok["Records"]) == 1
    with pytest.raises(ClientError, match=r"records.1.member.data"):
        kinesis.put_records(StreamName=aws.stream, Records=[{"Data": b"a" * (2 * MIB), "PartitionKey": "k"}])
    aws.proxy.large_records(aws.stream, 10240)
    with pytest.raises(ClientError, match="exceeds 10485760 bytes"):
        kinesis.put_records(StreamName=aws.stream, Records=[
            {"Data": b"b" * (5 * MIB), "PartitionKey": "k"}, {"Data": b"c" * (5 * MIB), "PartitionKey": "k"}])
    kinesis.put_records(StreamName=aws.stream, Records=[
        {"Data": b"d" * (5 * MIB - 1), "PartitionKey": "k"},
        {"Data": b"e" * (5 * MIB - 1), "PartitionKey": "k"}])
    kept = aws.proxy.large_stream_records(aws.stream)
    assert [(len(data), key) for data, key in kept] == [
        (2 * MIB - 1, "k"), (5 * MIB - 1, "k"), (5 * MIB - 1, "k")]
    # Other streams are still moto's own, with its 1 MiB limit.
    with pytest.raises(ClientError):
        kinesis.put_records(StreamName="elsewhere", Records=[{"Data": b"x", "PartitionKey": "k"}])


def test_a_5_mib_line_reaches_a_large_record_stream_and_oversize_follows_the_option(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    aws.proxy.large_records(aws.stream, 10240)
    options = aws.options(aws_kinesis_max_record_size_kib="10240")
    with extension_factory(tmp_path, options=options) as ext:
        small = result_lines(ext.standin, 4)
        big = ext.standin.result_line("pack_big_query", pad_to=5 * MIB)
        huge = ext.standin.result_line("pack_huge_query", pad_to=10 * MIB + 1)
        two_mib = ext.standin.result_line("pack_two_mib", pad_to=2 * MIB)
        for line in (small[0], big, small[1], huge, small[2], small[3]):
            ext.log("kinesis", line)
        ext.log("firehose", two_mib)  # Firehose keeps its own 1,000 KiB limit
        ext.log("firehose", small[0])
        wait_for(lambda: len(aws.proxy.large_stream_records(aws.stream)) >= 5, 60,
                 "the large-record stream's records")
        wait_for(lambda: len(aws.firehose_lines()) >= 1, 30, "Firehose's small line")
        row = table(ext)
        assert row["kinesis"]["dropped_oversize"] == "1"
        assert row["firehose"]["dropped_oversize"] == "1"
        assert ext.terminate() == 0
    kept = aws.proxy.large_stream_records(aws.stream)
    records = [json.loads(data) for data, _ in kept]
    assert [r["columns"].get("i", r["name"]) for r in records] == [0, "pack_big_query", 1, 2, 3]
    sent_big = kept[1][0]
    assert sent_big == b'{"log_type":"result",' + big.encode()[1:]  # the line as osquery wrote it
    assert len(sent_big) > 5 * MIB - 1024
    err = ext.stderr()
    assert re.search(r"aws_kinesis: dropped a record \(oversize\): a \d+-byte line, over the "
                     r"10485760-byte kinesis record limit", err)
    assert "1024000-byte firehose record limit" in err
    assert aws.kinesis_records() == []  # nothing went to moto, which would have refused it


def test_aggregates_stay_at_1_mib_on_a_large_record_stream_and_a_big_row_goes_alone(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    aws.proxy.large_records(aws.stream, 4096)
    options = aws.options(aws_kinesis_max_record_size_kib="4096", aws_kinesis_aggregate="true")
    with extension_factory(tmp_path, options=options) as ext:
        for line in result_lines(ext.standin, 300, pad_to=8 * 1024):
            ext.log("kinesis", line)
        ext.log("kinesis", ext.standin.result_line("pack_three_mib", pad_to=3 * MIB))
        wait_for(lambda: any(not data.startswith(KPL_MAGIC)
                             for data, _ in aws.proxy.large_stream_records(aws.stream)), 60,
                 "the 3 MiB row")
        assert ext.terminate() == 0
    kept = aws.proxy.large_stream_records(aws.stream)
    aggregates = [data for data, _ in kept if data.startswith(KPL_MAGIC)]
    plain = [data for data, _ in kept if not data.startswith(KPL_MAGIC)]
    assert len(aggregates) >= 3  # 300 rows of 8 KiB: 2.4 MiB, in aggregates of at most 1 MiB
    assert all(len(data) + len(key.encode()) <= MIB for data, key in kept if data.startswith(KPL_MAGIC))
    assert [json.loads(data)["name"] for data in plain] == ["pack_three_mib"]


def test_the_1_mib_default_ships_a_record_up_to_the_limit_to_moto_itself(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    with extension_factory(tmp_path, options=aws.options()) as ext:
        host_key = len(ext.standin.host_identifier.encode())
        # The record is the line plus '"log_type":"result",' (20 bytes), plus the key: 1 MiB.
        line = ext.standin.result_line("pack_at_the_limit", pad_to=MIB - 20 - host_key)
        over = ext.standin.result_line("pack_one_over", pad_to=MIB - 20 - host_key + 1)
        ext.log("kinesis", over)
        ext.log("kinesis", line)
        wait_for(aws.kinesis_records, 30, "the record at the limit in moto")
        assert table(ext)["kinesis"]["dropped_oversize"] == "1"
    (data, key), = aws.kinesis_records()
    assert len(data) + len(key.encode()) == MIB and json.loads(data)["name"] == "pack_at_the_limit"
