# ruff: noqa: RUF001  (the table prints the multiplication sign, as the rest of the bench does)
"""`make bench` section 9 (issue 18): every row on every path, at the sizes osquery sends.

- A big snapshot as events: a snapshot line of ~20 MB and 250,000 rows sent to both plugins
  with aws_logger_results_as_events (KPL aggregation and Firehose packing on, so moto's pace is
  not what is measured): the extension's peak resident size (VmHWM), and the time until every
  row is delivered in both services.
- The status table and the socket loop: log calls (a ping and a call, each on a fresh
  connection, as osqueryd makes them) timed with nothing else going on, and again while another
  process queries aws_logger_status 20 times a second (far more than any schedule); the
  backlog's oldest record sits deep in a 16 MiB segment (the case that used to read the
  segment on the loop for every query, 23-32 ms each). And a query's own answer time. Then
  the same with 500,000 records waiting (issue 20), spooled before the extension starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from osquery.extensions import Extension
from thrift.protocol import TBinaryProtocol
from thrift.transport import TTransport

from osquery_aws_logger.spool import KIND_RESULT, Spool
from tests.conftest import Aws
from tests.harness import RunningExtension, result_lines, wait_for
from tests.localaws import FaultProxy, MotoServer
from tests.query_log import QueryRun, batch_line
from tests.test_hardening import call_bytes, ping_bytes, read_reply

OUT = Path(__file__).resolve().parent / "out"
#: The issue's bound for the big snapshot, both plugins (osquery's watchdog kills at 200 MB).
PEAK_TARGET_MB = 100


def _vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def _snapshot_line(rows: int) -> str:
    run = QueryRun(name="pack_processes_snapshot", snapshot=[
        {"pid": str(i), "name": f"proc-{i:06d}", "path": f"/usr/bin/p{i}",
         "cmdline": f"/usr/bin/p{i} --flag"} for i in range(rows)])
    return batch_line(run)


def _big_snapshot(args: argparse.Namespace, aws: Aws) -> dict[str, Any]:
    work = OUT / "rows-snapshot"
    shutil.rmtree(work, ignore_errors=True)
    line = _snapshot_line(args.snapshot_rows)
    options = aws.options(aws_logger_results_as_events="true", aws_kinesis_aggregate="true",
                          aws_firehose_pack="true")
    with RunningExtension(work, options=options) as ext:
        assert ext.proc is not None
        time.sleep(1.0)
        rest = _vm(ext.proc.pid, "VmRSS")
        began = time.monotonic()
        for service in ("kinesis", "firehose"):
            assert ext.standin.log_snapshot(ext.uuid, ext.plugins[service], line).status.code == 0

        def delivered() -> list[dict[str, str]] | None:
            rows = ext.standin.call(ext.uuid, "table", "aws_logger_status",
                                    {"action": "generate"}).response
            done = all(int(r["delivered"]) + int(r["dropped"]) >= args.snapshot_rows for r in rows)
            return rows if done else None

        rows = wait_for(delivered, 600, "every row of the snapshot", step=0.5)
        seconds = time.monotonic() - began
        peak = _vm(ext.proc.pid, "VmHWM")
    shutil.rmtree(work, ignore_errors=True)
    return {"line_bytes": len(line), "rows": args.snapshot_rows, "rss_rest": rest,
            "rss_peak": peak, "delivered_s": seconds,
            "delivered": {r["plugin"]: int(r["delivered"]) for r in rows},
            "dropped": {r["plugin"]: int(r["dropped"]) for r in rows}}


def _log_call(path: str, request: bytes, ping: bytes) -> float:
    began = time.perf_counter()
    for message, method in ((ping, "ping"), (request, "call")):
        with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(message)
            read_reply(sock, method)
    return time.perf_counter() - began


def _table_call() -> bytes:
    buffer = TTransport.TMemoryBuffer()
    Extension.Client(TBinaryProtocol.TBinaryProtocol(buffer)).send_call(
        "table", "aws_logger_status", {"action": "generate"})
    return bytes(buffer.getvalue())


def _query_table(path: str, stop: Any, queries: Any, answers: Any, rate: float) -> None:
    """Query aws_logger_status `rate` times a second, each on a fresh connection, until told to
    stop; add up the answer times (seconds) in `answers`."""
    message = _table_call()
    next_at = time.monotonic()
    while not stop.is_set():
        began = time.perf_counter()
        with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(message)
            read_reply(sock, "call")
        with queries.get_lock():
            queries.value += 1
            answers.value += time.perf_counter() - began
        next_at += 1.0 / rate
        time.sleep(max(0.0, next_at - time.monotonic()))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _timed_calls(ext: RunningExtension, line: str, args: argparse.Namespace) -> dict[str, Any]:
    """Log calls timed alone, then while another process queries the status table."""
    path = ext.standin.extension_socket(ext.uuid)
    request = call_bytes(ext.plugins["kinesis"], {"string": line})
    ping = ping_bytes()
    quiet = [_log_call(path, request, ping) for _ in range(args.table_calls)]
    # The queries come from a process of their own, as osqueryd's would (a thread here
    # would share this process's interpreter lock with the timing).
    stop = multiprocessing.Event()
    queries = multiprocessing.Value("i", 0)
    answers = multiprocessing.Value("d", 0.0)
    hammer = multiprocessing.Process(target=_query_table,
                                     args=(path, stop, queries, answers, args.table_rate))
    hammer.start()
    try:
        wait_for(lambda: queries.value > 3, 30, "the table queries")
        busy = [_log_call(path, request, ping) for _ in range(args.table_calls)]
    finally:
        stop.set()
        hammer.join(30)
    result = {"calls": args.table_calls, "table_queries": queries.value,
              "table_rate": args.table_rate,
              "table_answer_ms": answers.value / max(1, queries.value) * 1e3,
              "quiet_p50_ms": _percentile(quiet, 0.5) * 1e3,
              "quiet_p99_ms": _percentile(quiet, 0.99) * 1e3,
              "queried_p50_ms": _percentile(busy, 0.5) * 1e3,
              "queried_p99_ms": _percentile(busy, 0.99) * 1e3}
    result["p99_ratio"] = result["queried_p99_ms"] / result["quiet_p99_ms"]
    return result


def _table_stall(args: argparse.Namespace, aws: Aws) -> dict[str, Any]:
    work = OUT / "rows-table"
    shutil.rmtree(work, ignore_errors=True)
    with RunningExtension(work, options=aws.options(aws_kinesis_period="1")) as ext:
        padded = result_lines(ext.standin, args.table_backlog, pad_to=2000)
        half = len(padded) // 2
        for line in padded[:half]:  # delivered: the ledger moves deep into the segment
            ext.log("kinesis", line)
        wait_for(lambda: len(aws.kinesis_records()) >= half, 120, "the first half delivered")
        aws.proxy.set_down(True)  # the rest waits, oldest in the middle of a 16 MiB segment
        for line in padded[half:]:
            ext.log("kinesis", line)
        result = _timed_calls(ext, padded[0], args)
    shutil.rmtree(work, ignore_errors=True)
    return {"backlog_lines": len(padded) - half, **result}


def _big_backlog(args: argparse.Namespace, aws: Aws) -> dict[str, Any]:
    """The same with `args.backlog_records` records waiting (issue 20: 500,000), spooled
    before the extension starts (logging them one call at a time would take minutes) with
    Kinesis down, so none of them drains while the calls are timed."""
    work = OUT / "rows-backlog"
    shutil.rmtree(work, ignore_errors=True)
    line = json.dumps({"name": "pack_bench_backlog", "hostIdentifier": "bench-host",
                       "calendarTime": "Sun Dec  6 12:00:00 2026 UTC", "unixTime": 1796558400,
                       "epoch": 0, "counter": 0, "numerics": False,
                       "columns": {"pid": "4242", "path": "/usr/sbin/sshd", "uid": "0"},
                       "action": "added"}).encode()
    spool = Spool(work / "spool" / "kinesis", max_records=args.backlog_records * 2,
                  max_bytes=1 << 30, on_drop=lambda *_: None)
    for _ in range(args.backlog_records):
        spool.append(KIND_RESULT, line)
    spool.sync(force=True)
    spool.close()
    aws.proxy.set_down(True)
    options = aws.options(aws_kinesis_period="1", buffered_log_max=str(args.backlog_records * 2))
    with RunningExtension(work, options=options) as ext:
        def waiting() -> int | None:
            rows = ext.standin.call(ext.uuid, "table", "aws_logger_status",
                                    {"action": "generate"}).response
            found = sum(int(r["waiting_rows"]) for r in rows if r["plugin"].startswith("aws_kin"))
            return found if found >= args.backlog_records else None

        backlog = wait_for(waiting, 120, "the backlog in the status table")
        result = _timed_calls(ext, line.decode(), args)
    shutil.rmtree(work, ignore_errors=True)
    return {"backlog_records": backlog, **result}


def section_rows(args: argparse.Namespace, _drivers: Any) -> dict[str, Any]:
    with MotoServer() as moto, FaultProxy(moto.url) as proxy:
        snapshot = _big_snapshot(args, Aws(moto, proxy))
        moto.reset()
        with FaultProxy(moto.url) as table_proxy:
            stall = _table_stall(args, Aws(moto, table_proxy))
        moto.reset()
        with FaultProxy(moto.url) as backlog_proxy:
            backlog = _big_backlog(args, Aws(moto, backlog_proxy))
    return {"snapshot": snapshot, "table": stall, "backlog": backlog}


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    snap, stall = result["snapshot"], result["table"]
    peak_mb = snap["rss_peak"] / 1e6
    every = all(v == snap["rows"] for v in snap["delivered"].values())
    rows = [
        (f"9. a {snap['line_bytes'] / 1e6:.1f} MB snapshot of {snap['rows']:,} rows as events, "
         f"both plugins: peak RSS (MB)", f"{peak_mb:.1f}", f"{snap['rss_rest'] / 1e6:.1f} at rest",
         f"≤ {PEAK_TARGET_MB} MB", "met" if peak_mb <= PEAK_TARGET_MB else "NOT met"),
        ("   every row delivered in both services (s)", f"{snap['delivered_s']:.1f}",
         "", "all rows", "met" if every else "NOT met"),
        (f"   log-call p99 while the table is queried {stall['table_rate']:g}/s (ms)",
         f"{stall['queried_p99_ms']:.2f}", f"{stall['quiet_p99_ms']:.2f} unqueried",
         f"{stall['p99_ratio']:.2f}× (≤ 1.5×)", "met" if stall["p99_ratio"] <= 1.5 else "NOT met"),
        ("   a table query's answer, mean (ms)", f"{stall['table_answer_ms']:.2f}",
         "23-32 before issue 18", "", ""),
    ]
    backlog = result.get("backlog")
    if backlog:
        rows += [
            (f"   same with {backlog['backlog_records']:,} records waiting: log-call p99 while "
             f"queried (ms)", f"{backlog['queried_p99_ms']:.2f}",
             f"{backlog['quiet_p99_ms']:.2f} unqueried", f"{backlog['p99_ratio']:.2f}× (≤ 1.5×)",
             "met" if backlog["p99_ratio"] <= 1.5 else "NOT met"),
            ("   a table query's answer with that backlog, mean (ms)",
             f"{backlog['table_answer_ms']:.2f}", "", "", ""),
        ]
    return rows
