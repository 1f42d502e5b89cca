"""aws_logger_results_as_events: osquery's batch result format in, one record per row out.

In process (the accumulator on real spools, outcomes reported by hand) and end to end (the
real extension under the stand-in, into moto's Kinesis and Firehose)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from osquery_aws_logger.counters import PluginCounters
from osquery_aws_logger.delivery.accumulator import Accumulator, Batch
from osquery_aws_logger.delivery.services import FIREHOSE, KINESIS, Service
from osquery_aws_logger.results.scan import count_rows
from osquery_aws_logger.settings import Settings
from osquery_aws_logger.spool.spool import KIND_RESULT, Spool
from tests.conftest import Aws
from tests.harness import RunningExtension, wait_for
from tests.query_log import QueryRun, batch_line, event_lines

Factory = type[RunningExtension]


def with_log_type(line: str) -> dict[str, Any]:
    """An event line as a record carries it: "log_type" first, then osquery's own keys."""
    return {"log_type": "result", **json.loads(line)}


def ordered(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def run_of(rows: int, name: str = "pack_fim_files", *, removed: int = 0, **kw: Any) -> QueryRun:
    return QueryRun(name=name, epoch=3, counter=7, decorations={"host_uuid": "abc", "site": "eu"},
                    added=[{"path": f"/etc/f{i}", "size": str(i)} for i in range(rows)],
                    removed=[{"path": f"/old/f{i}", "size": str(i)} for i in range(removed)],
                    **kw)


def make(tmp_path: Path, service: Service = KINESIS, **options: Any
         ) -> tuple[Accumulator, Spool, PluginCounters]:
    counters = PluginCounters()
    settings = Settings(**{f"aws_{service.name}_stream": "main",
                           "aws_logger_results_as_events": True, **options})
    spool = Spool(tmp_path / service.name, max_records=100_000, max_bytes=1 << 30,
                  on_drop=counters.drop)
    return Accumulator(f"aws_{service.name}", service, spool, counters, settings,
                       host_identifier="local-host"), spool, counters


def append_line(spool: Spool, line: str) -> None:
    """Spool a result line as the thrift side does: with the rows it holds."""
    data = line.encode()
    spool.append(KIND_RESULT, data, rows=count_rows(data))


def sent_records(batch: Batch) -> list[str]:
    return [entry.data.decode() for entry in batch.entries]


def test_a_batch_line_ships_as_its_event_lines_in_order(tmp_path: Path) -> None:
    accumulator, spool, counters = make(tmp_path)
    run = run_of(3, removed=2)
    append_line(spool, batch_line(run))
    (batch,) = accumulator.ready(0.0, draining=True).batches
    assert [json.loads(r) for r in sent_records(batch)] == [with_log_type(e) for e in event_lines(run)]
    assert sent_records(batch)[0] == ordered(with_log_type(event_lines(run)[0]))  # key order too
    accumulator.completed(batch, [None] * 5, 0.0)
    assert counters.delivered == 5 and counters.expanded == 5
    assert spool.depth()[0] == 0


def test_event_lines_and_status_pass_unchanged_and_the_option_off_keeps_the_line(
        tmp_path: Path) -> None:
    run = run_of(2)
    on, spool, _ = make(tmp_path / "on")
    append_line(spool, event_lines(run)[0])
    (batch,) = on.ready(0.0, draining=True).batches
    assert [json.loads(r) for r in sent_records(batch)] == [with_log_type(event_lines(run)[0])]
    off, spool, counters = make(tmp_path / "off", aws_logger_results_as_events=False)
    append_line(spool, batch_line(run))
    (batch,) = off.ready(0.0, draining=True).batches
    assert len(batch.entries) == 1 and "diffResults" in json.loads(batch.entries[0].data)
    assert counters.expanded == 0


def test_a_row_too_large_is_dropped_alone_and_its_siblings_ship(tmp_path: Path) -> None:
    accumulator, spool, counters = make(tmp_path, FIREHOSE)
    run = run_of(3)
    run.added[1]["blob"] = "x" * 1_100_000  # over Firehose's 1,000 KiB per record
    append_line(spool, batch_line(run))
    (batch,) = accumulator.ready(0.0, draining=True).batches
    paths = [json.loads(r)["columns"]["path"] for r in sent_records(batch)]
    assert paths == ["/etc/f0", "/etc/f2"]
    assert counters.dropped["oversize"] == 1
    accumulator.completed(batch, [None, None], 0.0)
    assert spool.depth()[0] == 0, "the line is done: two rows delivered, one dropped"


def test_a_line_is_acknowledged_only_when_every_row_is_delivered(tmp_path: Path) -> None:
    accumulator, spool, counters = make(tmp_path)
    run = run_of(4)
    append_line(spool, batch_line(run))
    (batch,) = accumulator.ready(0.0, draining=True).batches
    accumulator.completed(batch, [None, "InternalFailure", None, None], 0.0)
    assert spool.depth()[0] == 1, "one row undelivered: the line stays spooled"
    (again,) = accumulator.ready(5.0, draining=True).batches
    assert [json.loads(r)["columns"]["path"] for r in sent_records(again)] == ["/etc/f1"]
    accumulator.completed(again, [None], 5.0)
    assert spool.depth()[0] == 0 and counters.delivered == 4


def test_expanded_rows_get_record_ids_stable_per_row(tmp_path: Path) -> None:
    accumulator, spool, _ = make(tmp_path, aws_logger_record_ids=True)
    append_line(spool, batch_line(run_of(3)))
    (batch,) = accumulator.ready(0.0, draining=True).batches
    ids = [json.loads(r)["log_id"] for r in sent_records(batch)]
    assert len(set(ids)) == 3 and all(i.endswith(f":1.{n}") for n, i in enumerate(ids))


def test_end_to_end_both_services_ship_exactly_the_event_lines(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    runs = [run_of(1, "pack_a"), run_of(10, "pack_b", removed=3, numerics=True),
            run_of(100, "pack_c", decorations_top_level=True),
            QueryRun(name="pack_snap", snapshot=[{"pid": str(i)} for i in range(25)])]
    expected = [with_log_type(line) for run in runs for line in event_lines(run)]
    options = aws.options(aws_logger_results_as_events="true")
    with extension_factory(tmp_path, options=options) as ext:
        for run in runs:
            line = batch_line(run)
            for service in ("kinesis", "firehose"):
                plugin = ext.plugins[service]
                if run.snapshot is None:
                    ext.standin.log_string(ext.uuid, plugin, line)
                else:
                    ext.standin.log_snapshot(ext.uuid, plugin, line)
        wait_for(lambda: len(aws.kinesis_records()) == len(expected), 30, "kinesis records")
        wait_for(lambda: len(aws.firehose_lines()) == len(expected), 30, "firehose records")
        kinesis = [data.decode() for data, _ in aws.kinesis_records()]
        firehose = [line.decode() for line in aws.firehose_lines()]
        assert kinesis == [ordered(e) for e in expected]
        assert firehose == [ordered(e) for e in expected]
        answer = ext.standin.call(ext.uuid, "table", "aws_logger_status", {"action": "generate"})
        for row in answer.response:
            assert row["accepted"] == str(len(runs))
            assert row["delivered"] == row["expanded_rows"] == str(len(expected))


def test_odd_lines_neither_duplicate_a_key_nor_ship_values_json_lacks(tmp_path: Path) -> None:
    """Review nits: a batch line with a top-level "columns" made events with "columns" twice;
    a small line holding NaN (which Python's json reads) shipped a record that is not JSON."""
    accumulator, spool, counters = make(tmp_path)
    append_line(spool, '{"name":"q","columns":{"stale":"1"},"action":"snapshot",'
                       '"snapshot":[{"a":"1"},{"a":"2"}]}')
    append_line(spool, '{"name":"q","columns":{"a":NaN},"action":"added"}')
    (batch,) = accumulator.ready(0.0, draining=True).batches
    records = sent_records(batch)
    assert [r.count('"columns"') for r in records] == [1, 1]
    assert [json.loads(r)["columns"] for r in records] == [{"a": "1"}, {"a": "2"}]
    accumulator.completed(batch, [None] * len(batch.entries), 0.0)
    assert counters.delivered == 2 and counters.dropped["not_json"] == 1
