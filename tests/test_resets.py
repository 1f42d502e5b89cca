"""New settings while rows wait: what was read is let go of and read again (only when the new
options make records differently or send them elsewhere), and every row is still counted once:
delivered + dropped = accepted, in rows. In process, on the disk spool and on its memory double,
outcomes reported by hand.

Found by review, each failing before: a reset lost the rows of an aggregate or pack that the
spool had given up in part; going from one destination to several lost what the direct lane
held; a cap dropping rows between counting and rewinding lost them; a reset sent a partly
delivered snapshot line again and counted its delivered rows twice.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from osquery_aws_logger.counters import PluginCounters
from osquery_aws_logger.delivery.accumulator import Accumulator
from osquery_aws_logger.delivery.services import FIREHOSE, KINESIS, Service
from osquery_aws_logger.errors import DeliveryError
from osquery_aws_logger.results.scan import count_rows
from osquery_aws_logger.settings import Settings
from osquery_aws_logger.spool.memory import MemorySpool, MemoryStore
from osquery_aws_logger.spool.spool import KIND_RESULT, Spool

FAIL = DeliveryError("InternalFailure", "down", retriable=True)


class _Intruded:
    """Appends lines from "the thrift thread" just before the rewind: the moment a cap drop
    used to fall between counting what was held and rewinding."""

    lines: list[bytes] = []  # noqa: RUF012 (set by the test before the reset)

    def intrude(self, spool: Any, counters: PluginCounters) -> None:
        for data in self.lines:
            counters.accepted_rows += count_rows(data)
            spool.append(KIND_RESULT, data, rows=count_rows(data))
        self.lines = []


class _DiskSpool(Spool, _Intruded):
    counters: PluginCounters

    def rewind(self) -> int:
        self.intrude(self, self.counters)
        return super().rewind()


class _MemorySpool(MemorySpool, _Intruded):
    counters: PluginCounters

    def rewind(self) -> int:
        self.intrude(self, self.counters)
        return super().rewind()


@pytest.fixture(params=["disk", "memory"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Plugin:
    """An accumulator over one spool, with the thrift side's counting and a fake AWS."""

    def __init__(self, tmp_path: Path, kind: str, service: Service = KINESIS, *,
                 cap: int = 100_000, **options: Any) -> None:
        self.counters = PluginCounters()
        self.settings = Settings(**{f"aws_{service.name}_stream": "main",
                                    "buffered_log_max": cap, **options})
        directory = tmp_path / service.name
        self.spool: _DiskSpool | _MemorySpool
        if kind == "disk":
            self.spool = _DiskSpool(directory, max_records=cap, max_bytes=1 << 30,
                                    on_drop=self.counters.drop)
        else:
            self.spool = _MemorySpool(directory, max_records=cap, max_bytes=1 << 30,
                                      on_drop=self.counters.drop, store=MemoryStore())
        self.spool.counters = self.counters
        self.accumulator = Accumulator(f"aws_{service.name}", service, self.spool,
                                       self.counters, self.settings, host_identifier="h")
        self.rows_sent = 0

    def log(self, data: bytes) -> None:
        rows = count_rows(data)
        self.counters.accepted_rows += rows
        self.spool.append(KIND_RESULT, data, rows=rows)

    def change(self, **options: Any) -> None:
        self.settings = dataclasses.replace(self.settings, **options)
        self.accumulator.apply(self.settings, 1.0)

    def put(self, *, fail: bool, now: float = 0.0) -> None:
        """One turn: the batch that is ready fails whole, or is taken whole."""
        for batch in self.accumulator.ready(now, draining=True).batches:
            if fail:
                self.accumulator.failed(batch, FAIL, now)
            else:
                self.rows_sent += batch.rows
                self.accumulator.completed(batch, [None] * len(batch.entries), now)

    def deliver_all(self) -> None:
        now = 1000.0
        for _ in range(2000):
            if not self.accumulator.waiting():
                return
            ready = self.accumulator.ready(now, draining=True)
            for batch in ready.batches:
                self.rows_sent += batch.rows
                self.accumulator.completed(batch, [None] * len(batch.entries), now)
            now += 100.0
        raise AssertionError("rows still waiting")

    def gap(self) -> int:
        counters = self.counters
        return counters.accepted_rows - counters.delivered - sum(counters.dropped.values())


def event(i: int, name: str = "q") -> bytes:
    return json.dumps({"name": name, "hostIdentifier": "h", "columns": {"i": i}}).encode()


def snapshot(k: int, rows: int) -> bytes:
    return json.dumps({"name": f"q{k}", "hostIdentifier": "h", "action": "snapshot",
                       "snapshot": [{"i": str(i)} for i in range(rows)]}).encode()


@pytest.mark.parametrize(("service", "options"), [
    (KINESIS, {"aws_kinesis_aggregate": True}),
    (FIREHOSE, {"aws_firehose_pack": True}),
    (FIREHOSE, {"aws_firehose_pack": True, "aws_firehose_compression": "gzip"}),
])
def test_a_reset_counts_the_rows_a_cap_gave_up_inside_an_aggregate(
        tmp_path: Path, kind: str, service: Service, options: dict[str, Any]) -> None:
    plugin = Plugin(tmp_path, kind, service, cap=1000, aws_logger_results_as_events=True,
                    **options)
    for k in range(600):
        plugin.log(snapshot(k, 100))  # 60,000 rows; the caps keep the newest 1,000 lines
    plugin.put(fail=True)  # aggregates of ~100 rows each held, spanning line boundaries
    plugin.change(buffered_log_max=120, aws_logger_record_ids=True)  # a cap and a reshape
    plugin.deliver_all()
    assert plugin.gap() == 0
    assert plugin.counters.dropped["cap_records"] > 0 and plugin.counters.delivered > 0


@pytest.mark.parametrize("change", ["status_stream", "routes"])
def test_going_from_one_destination_to_several_counts_what_the_plugin_held(
        tmp_path: Path, kind: str, change: str) -> None:
    plugin = Plugin(tmp_path, kind, cap=1000)
    for i in range(600):
        plugin.log(event(i))
    plugin.put(fail=True)  # 500 rows held by the plugin's one lane
    for i in range(600, 1500):
        plugin.log(event(i))  # the cap gives up 500, which the lane held
    if change == "status_stream":
        plugin.change(aws_kinesis_status_stream="statuses")
    else:
        plugin.change(aws_kinesis_routes=(("other", ("q",)),))
    plugin.deliver_all()
    assert plugin.gap() == 0
    assert plugin.counters.dropped["cap_records"] == 500 and plugin.counters.delivered == 1000


def test_a_cap_that_drops_rows_as_the_reset_rewinds_loses_none(tmp_path: Path,
                                                                kind: str) -> None:
    plugin = Plugin(tmp_path, kind, cap=1000)
    for i in range(600):
        plugin.log(event(i))
    plugin.put(fail=True)
    plugin.spool.lines = [event(i) for i in range(600, 1500)]  # appended inside the rewind
    plugin.change(aws_logger_record_ids=True)
    plugin.deliver_all()
    assert plugin.gap() == 0 and plugin.counters.dropped["cap_records"] == 500


def test_a_reset_neither_counts_twice_nor_resends_what_was_delivered(tmp_path: Path,
                                                                      kind: str) -> None:
    plugin = Plugin(tmp_path, kind, aws_logger_results_as_events=True)
    plugin.log(snapshot(0, 1000))
    plugin.put(fail=False)  # 500 of the snapshot's rows delivered
    for i in range(300):
        plugin.log(event(i))
    plugin.change(aws_logger_record_ids=True)
    plugin.deliver_all()
    assert plugin.counters.delivered == 1300 and plugin.gap() == 0


def test_lines_delivered_behind_an_undelivered_one_are_not_sent_again(tmp_path: Path,
                                                                       kind: str) -> None:
    plugin = Plugin(tmp_path, kind)
    for i in range(600):
        plugin.log(event(i))
    (batch,) = plugin.accumulator.ready(0.0, draining=True).batches
    codes: list[str | None] = ["InternalFailure"] + [None] * (len(batch.entries) - 1)
    plugin.accumulator.completed(batch, codes, 0.0)  # 499 delivered behind the first line
    plugin.rows_sent = 0
    plugin.change(aws_logger_record_ids=True)
    plugin.deliver_all()
    assert plugin.rows_sent == 1 + 100, "the undelivered line and the unread ones, no more"
    assert plugin.counters.delivered == 600 and plugin.gap() == 0


def test_a_line_counted_before_a_reset_and_given_up_before_read_again_counts_once(
        tmp_path: Path, kind: str) -> None:
    plugin = Plugin(tmp_path, kind, cap=10, aws_logger_results_as_events=True)
    plugin.log(snapshot(0, 1000))
    plugin.put(fail=False)  # 500 rows delivered; the line waits, unfinished
    plugin.change(aws_logger_record_ids=True)  # read again later: 500 rows are credit
    for k in range(1, 20):
        plugin.log(snapshot(k, 2))  # the cap gives the snapshot line up before it is read
    plugin.deliver_all()
    assert plugin.gap() == 0
    assert plugin.counters.delivered == 500 + 10 * 2


def test_a_change_that_reshapes_nothing_leaves_what_was_read_in_place(tmp_path: Path,
                                                                       kind: str) -> None:
    plugin = Plugin(tmp_path, kind, aws_logger_results_as_events=True)
    plugin.log(snapshot(0, 1000))
    plugin.put(fail=False)
    plugin.rows_sent = 0
    plugin.change(aws_kinesis_period=30, buffered_log_max=50_000)
    plugin.deliver_all()
    assert plugin.rows_sent == 500, "the rest of the line, none of it again"
    assert plugin.counters.delivered == 1000 and plugin.gap() == 0
