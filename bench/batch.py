# ruff: noqa: RUF001  (the table prints the multiplication sign, as the rest of the bench does)
"""`make bench` section 8 (issue 13): CPU per delivered row with osquery's batch result format.

With ``--logger_event_type=false`` osqueryd makes one log call per query run instead of one per
row; with ``aws_logger_results_as_events`` the extension expands each run's line into the usual
one record per row. This measures the extension's CPU per row, all in (the calls, the spool,
the expansion and shipping every row to Kinesis on kinesalite and Firehose on moto), at 1, 10
and 100 rows per run, side by side in one run with:

- the floor: a bare osquery-python logger that does nothing, answering one call per event row
  (what osqueryd's default event format costs any extension per row);
- today's event-format cost: the extension taking one event line per row.

Rows are ~1 KiB event rows, like section 1's lines. Every kind sends the same rows to both
plugins, and the CPU counted runs from the first call to the last row acknowledged.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path
from statistics import median
from typing import Any

from bench.common import Drivers, Extension, Kinesalite
from tests.harness import wait_for
from tests.localaws import MotoServer
from tests.osqueryd_standin import OsquerydStandIn
from tests.query_log import QueryRun, batch_line, event_lines

OUT = Path(__file__).resolve().parent / "out"
BOTH = ("kinesis", "firehose")
ROWS_PER_RUN = (1, 10, 100)
TARGETS = {10: 0.1, 100: 0.02}


def _run(index: int, rows: int) -> QueryRun:
    """Run `index` of a query returning `rows` rows of about 1 KiB each as event lines."""
    return QueryRun(
        name="pack_bench_batch", epoch=1, counter=index,
        decorations={"host_uuid": "00000000-0000-0000-0000-000000000000"},
        added=[{"path": f"/usr/lib/x86_64-linux-gnu/lib{index}-{row}.so", "pid": str(row),
                "padding": "x" * 700} for row in range(rows)])


def _drive(socket_dir: str, uuid: int, plugins: list[str], indices: range, *, rows: int,
           events: bool) -> float:
    """One driver process: runs `indices` to each plugin, as batch lines or as event lines
    (one call per row), each call the way osqueryd makes it (ping + call, fresh connections)."""
    standin = OsquerydStandIn(Path(socket_dir))
    standin.calls = collections.deque(maxlen=1)  # type: ignore[assignment]
    began = time.time()
    for index in indices:
        run = _run(index, rows)
        lines = event_lines(run) if events else [batch_line(run)]
        for line in lines:
            for plugin in plugins:
                standin.log_string(uuid, plugin, line)
    return time.time() - began


def _send(drivers: Drivers, ext: Extension, first: int, runs: int, rows: int, *,
          events: bool) -> float:
    plugins = [ext.plugins[s] for s in BOTH]
    futures = [drivers.pool.submit(_drive, str(ext.socket_dir), ext.uuid, plugins,
                                   range(first + k, first + runs, drivers.processes), rows=rows,
                                   events=events)
               for k in range(drivers.processes)]
    return max(f.result() for f in futures)


def _measure(kind: str, rows: int, total_rows: int, rep: int, *, drivers: Drivers,
             kinesalite: Kinesalite, moto: MotoServer) -> dict[str, Any]:
    bare, events = kind == "bare", kind in ("bare", "event")
    stream = f"batch-{kind}-{rows}-{rep}"
    kinesalite.create_stream(stream)
    moto.reset()
    moto.create_delivery_stream(stream, f"batch-bucket-{rep}")
    options = {"aws_kinesis_stream": stream, "aws_kinesis_endpoint": kinesalite.url,
               "aws_kinesis_period": "1", "aws_firehose_stream": stream,
               "aws_firehose_endpoint": moto.url, "aws_firehose_period": "1",
               "aws_region": "us-east-1",
               "aws_logger_results_as_events": "false" if events else "true"}
    runs = max(1, total_rows // rows)
    warm = max(1, min(runs // 10, 200 // rows or 1))
    lines_per_run = rows if events else 1
    with Extension(OUT / f"batch-{kind}-{rows}", bare=bare, options=options) as ext:
        time.sleep(1.0)

        def delivered(lines: int) -> bool:
            return bare or all(ext.acked(s) >= lines for s in BOTH)

        _send(drivers, ext, 0, warm, rows, events=events)
        wait_for(lambda: delivered(warm * lines_per_run), 120, "the warm-up rows delivered")
        time.sleep(0.5)
        cpu0 = ext.cpu()
        seconds = _send(drivers, ext, warm, runs, rows, events=events)
        wait_for(lambda: delivered((warm + runs) * lines_per_run), 300,
                 "every row delivered to Kinesis and Firehose", 0.01)
        cpu1 = ext.cpu()
        if not bare:
            ext.stop()
    return {"kind": kind, "rows_per_run": rows, "rep": rep, "runs": runs, "rows": runs * rows,
            "calls": runs * lines_per_run * 2, "send_s": seconds, "cpu_s": cpu1 - cpu0,
            "cpu_us_per_row": (cpu1 - cpu0) / (runs * rows) * 1e6}


def section_batch(args: argparse.Namespace, drivers: Drivers) -> dict[str, Any]:
    measured = []
    kinds = [("bare", 1), ("event", 1), *(("batch", rows) for rows in ROWS_PER_RUN)]
    with Kinesalite(OUT / "kinesalite-batch.log") as kinesalite, MotoServer() as moto:
        for rep in range(args.batch_reps):
            order = kinds if rep % 2 == 0 else list(reversed(kinds))
            for kind, rows in order:
                total = args.batch_event_rows if kind in ("bare", "event") else args.batch_rows
                run = _measure(kind, rows, total, rep, drivers=drivers, kinesalite=kinesalite,
                               moto=moto)
                print(f"[batch] rep {rep} {kind} {rows} rows/run: "
                      f"{run['cpu_us_per_row']:.1f} µs CPU per row", flush=True)
                measured.append(run)

    def per_row(kind: str, rows: int) -> float:
        return median([r["cpu_us_per_row"] for r in measured
                       if r["kind"] == kind and r["rows_per_run"] == rows])

    bare, event = per_row("bare", 1), per_row("event", 1)
    figures = {}
    for rows in ROWS_PER_RUN:
        value = per_row("batch", rows)
        target = TARGETS.get(rows)
        figures[str(rows)] = {
            "cpu_us_per_row": value, "ratio_to_bare": value / bare, "target_ratio": target,
            "met": (value / bare <= target) if target else value <= event}
    return {"runs": measured, "bare_us_per_row": bare, "event_format_us_per_row": event,
            "batch": figures}


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    bare, event = result["bare_us_per_row"], result["event_format_us_per_row"]
    rows = [("8. CPU per row, event format, all in (µs)", f"{event:.0f}",
             f"{bare:.0f} bare osquery-python, a call per row", f"{event / bare:.2f}×", "")]
    for count, figure in result["batch"].items():
        target = figure["target_ratio"]
        goal = f"≤ {target}×" if target else f"≤ event format ({event:.0f} µs)"
        rows.append((f"   batch format, {count} rows per run (µs per row)",
                     f"{figure['cpu_us_per_row']:.1f}", "", f"{figure['ratio_to_bare']:.3f}× ({goal})",
                     "met" if figure["met"] else "NOT met"))
    return rows


def chart_points(result: dict[str, Any]) -> dict[str, float]:
    """Label → µs per row, for the chart."""
    points = {"bare, call per row": result["bare_us_per_row"],
              "event format": result["event_format_us_per_row"]}
    for count, figure in result["batch"].items():
        points[f"batch, {count}/run"] = figure["cpu_us_per_row"]
    return points


__all__ = ["chart_points", "section_batch", "table_rows"]

if __name__ == "__main__":  # a quick look at one batch line
    print(json.dumps(json.loads(batch_line(_run(0, 2))), indent=1)[:400])
