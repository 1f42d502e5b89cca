"""Paying less per row, end to end: KPL aggregation, Firehose packing and gzip, routing, ids."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

from aws_kinesis_agg.deaggregator import deaggregate_records

from tests.conftest import Aws
from tests.harness import RunningExtension, result_lines, wait_for

Factory = type[RunningExtension]


def deaggregated(records: list[tuple[bytes, str]]) -> list[tuple[dict[str, Any], str]]:
    events = [{"kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": key, "sequenceNumber": "1",
                           "data": base64.b64encode(data).decode(),
                           "approximateArrivalTimestamp": 0}} for data, key in records]
    return [(json.loads(base64.b64decode(r["kinesis"]["data"])), r["kinesis"]["partitionKey"])
            for r in deaggregate_records(events)]


def test_kinesis_aggregation_puts_many_rows_per_record_and_consumers_get_each_back_in_order(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    with extension_factory(tmp_path, options=aws.options(aws_kinesis_aggregate="true")) as ext:
        lines = result_lines(ext.standin, 3000, pad_to=500)
        for line in lines:
            ext.log("kinesis", line)
        ext.log_status("kinesis", ["after the rows"])
        wait_for(lambda: len(deaggregated(aws.kinesis_records())) == 3001, 60, "every row")
        assert ext.terminate() == 0
    records = aws.kinesis_records()
    assert len(records) <= 10, f"{len(records)} records for 3,001 rows"
    rows = deaggregated(records)
    results = [row for row, _ in rows if row["log_type"] == "result"]
    assert [row["columns"]["i"] for row in results] == list(range(3000)), "every row, in order"
    assert {key for _, key in rows} == {"standin-host"}
    assert all(len(data) + len(key) <= 1024 * 1024 for data, key in records)
    assert rows[-1][0]["message"] == "after the rows"


def test_firehose_packing_writes_the_same_newline_delimited_json_in_fewer_records(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    with extension_factory(tmp_path, options=aws.options(aws_firehose_pack="true")) as ext:
        for line in result_lines(ext.standin, 3000, pad_to=500):
            ext.log("firehose", line)
        wait_for(lambda: len(aws.firehose_lines()) == 3000, 60, "every row in S3")
    indices = sorted(json.loads(line)["columns"]["i"] for line in aws.firehose_lines())
    assert indices == list(range(3000))
    entries = sum(call.entries for call in aws.proxy.calls if call.operation == "PutRecordBatch")
    assert entries <= 10, f"{entries} Firehose records for 3,000 rows"


def test_gzipped_firehose_packs_decompress_to_the_rows(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    options = aws.options(aws_firehose_pack="true", aws_firehose_compression="gzip")
    with extension_factory(tmp_path, options=options) as ext:
        for line in result_lines(ext.standin, 500, pad_to=500):
            ext.log("firehose", line)
        wait_for(lambda: aws.moto.read_bucket(aws.bucket), 30, "an S3 object")
        wait_for(lambda: len(gzip.decompress(b"".join(aws.moto.read_bucket(aws.bucket)))
                             .splitlines()) == 500, 30, "every row")
    raw = b"".join(aws.moto.read_bucket(aws.bucket))
    text = gzip.decompress(raw)
    assert len(raw) < len(text) / 3
    assert sorted(json.loads(line)["columns"]["i"] for line in text.splitlines()) == list(range(500))


def test_routes_send_chosen_queries_and_status_logs_to_their_own_streams(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    for name in ("security-stream", "status-stream"):
        aws.moto.create_stream(name)
    routes = json.dumps({"security-stream": ["pack_incident_*", "file_events"]})
    options = aws.options(aws_kinesis_routes=routes, aws_kinesis_status_stream="status-stream")
    with extension_factory(tmp_path, options=options) as ext:
        for name in ("pack_incident_processes", "pack_other_time", "file_events", "pack_x"):
            ext.log("kinesis", ext.standin.result_line(name))
        ext.log_status("kinesis", ["a status line"])
        wait_for(lambda: len(aws.moto.read_stream("security-stream")) == 2
                 and len(aws.kinesis_records()) == 2
                 and len(aws.moto.read_stream("status-stream")) == 1, 30, "every stream")
    security = sorted(json.loads(d)["name"] for d, _ in aws.moto.read_stream("security-stream"))
    assert security == ["file_events", "pack_incident_processes"]
    main = sorted(json.loads(d)["name"] for d, _ in aws.kinesis_records())
    assert main == ["pack_other_time", "pack_x"]
    (status, _), = aws.moto.read_stream("status-stream")
    assert json.loads(status)["log_type"] == "status"


def test_a_bad_routes_option_is_named(tmp_path: Path, extension_factory: Factory) -> None:
    with extension_factory(tmp_path, options={"aws_kinesis_routes": "[1,2]"}) as ext:
        wait_for(lambda: "aws_kinesis_routes='[1,2]'" in ext.stderr(), 10, "the error")


def test_record_ids_are_stable_across_a_resend_and_unique_per_row(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    aws.proxy.drop(1, target="PutRecords")  # the first call may or may not have landed
    with extension_factory(tmp_path, options=aws.options(aws_logger_record_ids="true")) as ext:
        for line in result_lines(ext.standin, 20):
            ext.log("kinesis", line)
        wait_for(lambda: len({json.loads(d)["log_id"] for d, _ in aws.kinesis_records()}) == 20,
                 30, "every row")
        ext.kill9()
        ext.spawn()  # a restart re-reads nothing delivered, but ids must not change if it did
        ext.log("kinesis", result_lines(ext.standin, 21)[20])
        wait_for(lambda: len({json.loads(d)["log_id"] for d, _ in aws.kinesis_records()}) == 21,
                 30, "the last row")
    records = [json.loads(d) for d, _ in aws.kinesis_records()]
    by_index: dict[int, set[str]] = {}
    for record in records:
        by_index.setdefault(record["columns"]["i"], set()).add(record["log_id"])
        assert record["log_id"].startswith("standin-host:pack_test_q:0:0:")
    assert all(len(ids) == 1 for ids in by_index.values()), "a resent row keeps its id"
    assert len({next(iter(ids)) for ids in by_index.values()}) == 21
