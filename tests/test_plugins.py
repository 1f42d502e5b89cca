"""The logger plugin's own accounting, in process: whatever osqueryd hands it, every line is
counted accepted in rows and each row ends up spooled or counted dropped, and nothing raises."""

from __future__ import annotations

import json
from pathlib import Path

from osquery_aws_logger.counters import PluginCounters
from osquery_aws_logger.delivery.services import KINESIS
from osquery_aws_logger.osquery.plugins import LoggerPlugin
from osquery_aws_logger.settings import Settings
from osquery_aws_logger.spool.memory import MemorySpool
from osquery_aws_logger.spool.record import KIND_STATUS


class _FailingSpool(MemorySpool):
    def append(self, kind: int, data: bytes | memoryview, *, rows: int = 1, key: str = "") -> int:
        raise OSError(5, "Input/output error")


def _plugin(spool: MemorySpool) -> tuple[LoggerPlugin, PluginCounters]:
    counters = PluginCounters()
    view = KINESIS.settings(Settings(aws_kinesis_stream="s"))
    return LoggerPlugin("aws_kinesis", lambda: view, spool, counters, lambda: None,
                        lambda: "5.23.0", "host-1", 500), counters


def _spool() -> MemorySpool:
    return MemorySpool(Path("/nonexistent/plugin"), max_records=1000, max_bytes=1 << 30,
                       on_drop=lambda reason, rows: None)


def test_hostile_status_batches_are_counted_one_row_each_and_the_good_entries_spooled() -> None:
    spool = _spool()
    plugin, counters = _plugin(spool)
    good = {"s": 0, "f": "a.cpp", "i": 1, "m": "hello", "h": "h", "c": "now", "u": 1}
    plugin.log_status("[" * 100_000)  # deeper than any parser's recursion: not a RecursionError
    plugin.log_status("not json")
    plugin.log_status("\udcff")  # a lone surrogate, as a str from a peer can hold
    plugin.log_status(json.dumps([good, 7, "text", good]))  # two entries that are not objects
    records = spool.read(100)
    assert [r.kind for r in records] == [KIND_STATUS, KIND_STATUS]
    assert counters.accepted_rows == 7
    assert sum(counters.dropped.values()) == 5 and counters.dropped["not_json"] >= 4
    assert counters.accepted_rows == len(records) + sum(counters.dropped.values())


def test_a_line_the_spool_cannot_take_is_counted_dropped_in_its_rows() -> None:
    plugin, counters = _plugin(_FailingSpool(Path("/nonexistent/failing"), max_records=10,
                                             max_bytes=1 << 30, on_drop=lambda *_: None))
    batch = json.dumps({"name": "q", "hostIdentifier": "h", "calendarTime": "t", "unixTime": 1,
                        "epoch": 0, "counter": 0, "numerics": False,
                        "snapshot": [{"a": str(i)} for i in range(40)], "action": "snapshot"})
    plugin.log_bytes(batch.encode())
    assert counters.accepted_rows == 40 and counters.dropped["spool_error"] == 40
