"""`make bench` section 10 (issue 20): a row's way from its spool to a put call's body, counted.

In process, no network: one plugin's accumulator over a real spool of one-row result lines, a
client whose put answers "all accepted" without sending anything. Two figures:

- the calls a row makes into the package on its way (a profiler hook counts each Python call
  whose module is ours while 500 rows go from the spool to one PutRecords body, divided by 500),
  the times its way changes module, and the times it enters the accumulator (the coordinator);
- the drain's cost per row: 50,000 rows read, shaped, batched, put and acknowledged (best of 3).

docs/ARCHITECTURE.md gives the figures before and after the stage packages.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from osquery_aws_logger import Settings
from osquery_aws_logger.counters import PluginCounters
from osquery_aws_logger.delivery.accumulator import Accumulator
from osquery_aws_logger.delivery.services import KINESIS
from osquery_aws_logger.spool import KIND_RESULT, Spool

PACKAGE = "osquery_aws_logger"
LINE = json.dumps({"name": "pack_x", "hostIdentifier": "host-1", "calendarTime": "x",
                   "unixTime": 1, "epoch": 0, "counter": 0, "numerics": False,
                   "columns": {"a": "1", "path": "/usr/bin/xyz", "pid": "123"},
                   "action": "added"}).encode()


class _AcceptingClients:
    """Answers every put with no failed record (nothing is sent)."""

    read_timeout = 1.0

    def put_prepared(self, *_: Any) -> dict[str, int]:
        return {"FailedRecordCount": 0}


def _accumulator(directory: Path, rows: int) -> Accumulator:
    counters = PluginCounters()
    spool = Spool(directory, max_records=max(1000, rows * 2), max_bytes=1 << 30,
                  on_drop=counters.drop)
    for _ in range(rows):
        spool.append(KIND_RESULT, LINE)
    return Accumulator("aws_kinesis", KINESIS, spool, counters,
                       Settings(aws_kinesis_stream="bench"), host_identifier="bench-host")


def _trace(directory: Path, rows: int) -> dict[str, float]:
    accumulator = _accumulator(directory, rows)
    calls = changes = entries = 0
    last = ""

    def count(frame: FrameType, event: str, _arg: Any) -> None:
        nonlocal calls, changes, entries, last
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(PACKAGE):
            return
        calls += 1
        if module != last:
            changes += 1
            entries += module.endswith(".accumulator")
            last = module

    sys.setprofile(count)
    try:
        ready = accumulator.ready(0.0, draining=True)
        for batch in ready.batches:
            KINESIS.put(_AcceptingClients(), batch.destination, batch.entries)  # type: ignore[arg-type]
    finally:
        sys.setprofile(None)
    sent = sum(batch.rows for batch in ready.batches)
    return {"rows": sent, "calls_per_row": calls / sent, "module_changes_per_row": changes / sent,
            "accumulator_entries": entries}


def _drain(directory: Path, rows: int) -> float:
    accumulator = _accumulator(directory, rows)
    clients = _AcceptingClients()
    began = time.perf_counter()
    done = 0
    while done < rows:
        for batch in accumulator.ready(0.0, draining=True).batches:
            answer = KINESIS.put(clients, batch.destination, batch.entries)  # type: ignore[arg-type]
            accumulator.completed(batch, answer, 0.0)
            done += batch.rows
    return (time.perf_counter() - began) / rows * 1e6


def section_hops(args: argparse.Namespace, _drivers: Any) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-hops-"))
    try:
        trace = _trace(work / "trace", 500)
        drains = [_drain(work / f"drain-{rep}", args.hops_rows) for rep in range(3)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {**trace, "drain_rows": args.hops_rows, "drain_us_per_row": min(drains),
            "drain_us_per_row_all": drains}


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    return [
        ("10. a row's way, spool to put body: calls into the package per row",
         f"{result['calls_per_row']:.1f}", "16.4 flat layout", "", ""),
        ("    module changes per row", f"{result['module_changes_per_row']:.1f}",
         "9.0 flat layout", "", ""),
        (f"    entries into the accumulator for {result['rows']} rows",
         f"{result['accumulator_entries']}", "1,506 flat layout", "", ""),
        (f"    in-process drain of {result['drain_rows']:,} rows (µs per row, best of 3)",
         f"{result['drain_us_per_row']:.1f}", "", "", ""),
    ]
