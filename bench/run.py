# ruff: noqa: RUF001 PLR0917  (the multiplication sign is meant; helpers take the shared pieces)
"""`make bench`: issue 6's figures, each measured beside its floor in the same run.

    python -m bench.run [--quick] [--reps N] [--only SECTION,...]  (sections: SECTIONS below) ...

Prints a table and writes bench/results.json, bench/results.png and bench/PROFILE.md.
See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.batch import section_batch
from bench.batch import table_rows as batch_rows
from bench.chart import draw
from bench.common import (
    BENCH,
    OUT,
    Drivers,
    Extension,
    Kinesalite,
    closed_port,
    dir_bytes,
    machine,
    memory,
    source_state,
)
from bench.hardening import section_hardening
from bench.hardening import table_rows as hardening_rows
from bench.hops import section_hops
from bench.hops import table_rows as hops_rows
from bench.profile import profile_extension, write_markdown
from bench.rows import section_rows
from bench.rows import table_rows as rows_rows
from bench.savings import section_savings
from bench.savings import table_rows as savings_rows
from osquery_aws_logger.spool.inspect import inspect_spool
from tests.harness import wait_for
from tests.localaws import MotoServer

MB = 1e6
MIB = 1 << 20
GIB = 1 << 30
KINESIS_ONLY = ("kinesis",)
BOTH = ("kinesis", "firehose")
REGION = {"aws_region": "us-east-1"}

#: osquery's own AWS loggers: 500 buffered lines read per period, 10 s period by default.
BUILTIN_RECORDS_PER_PERIOD = 500
BUILTIN_PERIOD_S = 10


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]  # nearest rank


class MemorySampler:
    """Samples a process's RSS every `interval` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                self.peak = max(self.peak, memory(self.pid)["VmRSS"])
                self.samples += 1
            except (FileNotFoundError, ProcessLookupError, KeyError):
                return
            if self._stop.wait(self.interval):
                return


def counters_at_stop(ext: Extension) -> dict[str, dict[str, Any]]:
    """The counters the extension logs at stop, by plugin (empty if it logged none)."""
    found = {}
    for match in re.finditer(r"(\S+): counters (\{.*\})", ext.stderr()):
        try:
            found[match[1]] = json.loads(match[2])
        except ValueError:
            continue
    return found


def spooled_records(directory: Path) -> int | None:
    """Records waiting in a spool directory, read as `osquery-aws-logger status` reads them."""
    return inspect_spool(directory)[0]


# -- 1. cost per line ---------------------------------------------------------------------------

def cost_run(kind: str, rep: int, args: argparse.Namespace, drivers: Drivers, kinesalite: Kinesalite,
             moto: MotoServer) -> dict[str, Any]:
    stream, delivery = f"cost-{kind}-{rep}", f"cost-{kind}-{rep}"
    kinesalite.create_stream(stream)
    moto.reset()
    moto.create_delivery_stream(delivery, f"cost-bucket-{rep}")
    options = {"aws_kinesis_stream": stream, "aws_kinesis_endpoint": kinesalite.url,
               "aws_kinesis_period": "1", "aws_firehose_stream": delivery,
               "aws_firehose_endpoint": moto.url, "aws_firehose_period": "1", **REGION}
    bare = kind == "bare"
    warm, count = args.warmup_lines, args.cost_lines
    with Extension(OUT / f"cost-{kind}-{rep}", bare=bare, options=options) as ext:
        time.sleep(1.0)
        rest = ext.memory()["VmRSS"]

        def delivered(total: int) -> Callable[[], bool]:
            return lambda: bare or all(ext.acked(s) >= total for s in BOTH)

        # Warm up: first connections, boto3 clients built, the first puts made.
        drivers.send(ext, warm)
        wait_for(delivered(warm), 60, "the warm-up lines delivered")
        time.sleep(0.5)
        (user0, sys0), wall0 = ext.cpu_split(), time.time()
        cpu0 = user0 + sys0
        sent = drivers.send(ext, count, first=warm)
        cpu_sent = ext.cpu()
        wait_for(delivered(warm + count), 120, "every line delivered to Kinesis and Firehose", 0.01)
        (user1, sys1), wall1 = ext.cpu_split(), time.time()
        cpu1 = user1 + sys1
        peak = ext.memory()["VmHWM"]
        if not bare:
            ext.stop()
    per_line = (cpu1 - cpu0) / count
    return {"kind": kind, "rep": rep, "lines": count, "calls": count * 2,
            "cpu_s": cpu1 - cpu0, "cpu_us_per_line": per_line * 1e6,
            "cpu_us_per_call": per_line / 2 * 1e6,
            "user_us_per_line": (user1 - user0) / count * 1e6,
            "sys_us_per_line": (sys1 - sys0) / count * 1e6,
            "cpu_us_per_line_while_sending": (cpu_sent - cpu0) / count * 1e6,
            "send_s": sent["seconds"], "lines_per_s": count / sent["seconds"],
            "delivered_after_s": wall1 - wall0, "rss_rest": rest, "rss_peak": peak}


def section_cost(args: argparse.Namespace, drivers: Drivers) -> dict[str, Any]:
    runs = []
    with Kinesalite(OUT / "kinesalite-cost.log") as kinesalite, MotoServer() as moto:
        for rep in range(args.reps):
            # Alternate which goes first, so neither always runs on a warmer machine.
            for kind in (("bare", "extension") if rep % 2 == 0 else ("extension", "bare")):
                run = cost_run(kind, rep, args, drivers, kinesalite, moto)
                log(f"cost rep {rep} {kind}: {run['cpu_us_per_line']:.0f} µs CPU per line "
                    f"({run['lines_per_s']:.0f} lines/s sent)")
                runs.append(run)
    ext = median([r["cpu_us_per_line"] for r in runs if r["kind"] == "extension"])
    bare = median([r["cpu_us_per_line"] for r in runs if r["kind"] == "bare"])
    split = {f"{kind}_{part}_us_per_line": median([r[f"{part}_us_per_line"] for r in runs
                                                   if r["kind"] == kind])
             for kind in ("extension", "bare") for part in ("user", "sys")}
    # Each repetition runs the two back to back: their ratio cancels load that drifts slowly.
    paired = [next(r["cpu_us_per_line"] for r in runs if r["rep"] == rep and r["kind"] == "extension")
              / next(r["cpu_us_per_line"] for r in runs if r["rep"] == rep and r["kind"] == "bare")
              for rep in range(args.reps)]
    return {"runs": runs, "extension_us_per_line": ext, "bare_us_per_line": bare, **split,
            "paired_ratios": paired, "paired_ratio_median": median(paired),
            "ratio": ext / bare, "target_ratio": 0.5, "met": ext / bare <= 0.5}


# -- 2. backlog drain -----------------------------------------------------------------------------

def service_rate(stats: dict[str, Any]) -> dict[str, Any]:
    seconds = (stats["last_ms"] - stats["first_ms"]) / 1000 if stats["calls"] else float("nan")
    return {"records": stats["records"], "calls": stats["calls"], "failed": stats["failed"],
            "errors": stats["errors"], "seconds": seconds,
            "records_per_s": stats["records"] / seconds if seconds else float("nan"),
            "records_per_call": stats["records"] / stats["calls"] if stats["calls"] else 0.0,
            "bytes_per_call": stats["bytes"] / stats["calls"] if stats["calls"] else 0.0,
            "min_records_per_call": min(stats["per_call"], default=0),
            "first_ms": stats["first_ms"]}


def drain_options(stream: str, endpoint: str) -> dict[str, str]:
    # Firehose is left unconfigured: nothing is logged to it here.
    return {"aws_kinesis_stream": stream, "aws_kinesis_endpoint": endpoint,
            "aws_kinesis_period": "1", "aws_logger_shutdown_timeout": "1", **REGION}


def drain_extension(ext: Extension, kinesalite: Kinesalite, count: int,
                    timeout: float) -> dict[str, Any]:
    cpu0 = ext.cpu()
    with MemorySampler(ext.pid) as sampler:
        wait_for(lambda: ext.acked("kinesis") >= count, timeout, "the backlog delivered", 0.02)
    cpu1 = ext.cpu()
    stats = kinesalite.stats()
    hwm = ext.memory()["VmHWM"]
    ext.stop()
    result = service_rate(stats)
    result.update({"rss_peak_sampled": sampler.peak, "rss_hwm": hwm,
                   "cpu_us_per_record": (cpu1 - cpu0) / count * 1e6,
                   "put_calls_counted_by_extension": counters_at_stop(ext)
                   .get(ext.plugins["kinesis"], {}).get("put_calls")})
    return result


def drain_baseline(kinesalite: Kinesalite, stream: str, count: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.floors", "drain", "--endpoint", kinesalite.url,
         "--stream", stream, "--count", str(count)],
        check=True, capture_output=True, text=True, cwd=BENCH.parent)
    client_view = json.loads(out.stdout)
    result = service_rate(kinesalite.stats())
    result["client_seconds"] = client_view["seconds"]
    return result


def section_drain(args: argparse.Namespace, drivers: Drivers) -> dict[str, Any]:
    count = args.drain_lines
    saved = OUT / "drain-backlog"
    runs: list[dict[str, Any]] = []

    def extension_rep(rep: int) -> None:
        with Kinesalite(OUT / f"kinesalite-drain-{rep}.log") as kinesalite:
            kinesalite.create_stream("drain")
            if rep == 0:
                # The service is unreachable while the lines are logged: the extension's endpoint
                # is a port nothing listens on, until kinesalite starts serving there too.
                port = closed_port()
                ext = Extension(OUT / "drain-0", options=drain_options(
                    "drain", f"http://127.0.0.1:{port}"))
                with ext:
                    rest = ext.memory()["VmRSS"]
                    cpu0 = ext.cpu()
                    with MemorySampler(ext.pid) as fill_sampler:
                        sent = drivers.send(ext, count, services=KINESIS_ONLY)
                    cpu1 = ext.cpu()
                    log(f"drain: {count} lines spooled in {sent['seconds']:.0f} s "
                        f"({count / sent['seconds']:.0f} lines/s) with the service down")
                    time.sleep(0.5)
                    filled = ext.memory()["VmRSS"]
                    filled_bytes = dir_bytes(ext.spool_dir / "kinesis")
                    shutil.rmtree(saved, ignore_errors=True)
                    shutil.copytree(ext.spool_dir / "kinesis", saved)
                    kinesalite.reset()
                    up = time.time()
                    kinesalite.listen(port)
                    run = drain_extension(ext, kinesalite, count, timeout=120 + count / 500)
                run.update({"how": "outage, then the service came back",
                            "resume_after_s": run["first_ms"] / 1000 - up,
                            "rss_rest": rest, "rss_peak_filling": fill_sampler.peak,
                            "rss_filled": filled, "spool_bytes_filled": filled_bytes,
                            "spool_cpu_us_per_line": (cpu1 - cpu0) / count * 1e6,
                            "spool_lines_per_s": count / sent["seconds"]})
            else:
                # The same backlog, spooled in rep 0, met by a restarted extension.
                ext = Extension(OUT / f"drain-{rep}", options=drain_options("drain", kinesalite.url))
                shutil.copytree(saved, ext.spool_dir / "kinesis")
                kinesalite.reset()
                with ext:
                    run = drain_extension(ext, kinesalite, count, timeout=120 + count / 500)
                run["how"] = "restart with the backlog spooled during the outage"
            run.update({"kind": "extension", "rep": rep})
            runs.append(run)
            log(f"drain rep {rep} extension: {run['records_per_s']:.0f} records/s, "
                f"{run['records_per_call']:.1f} records per PutRecords call")

    def baseline_rep(rep: int) -> None:
        with Kinesalite(OUT / f"kinesalite-drain-base-{rep}.log") as kinesalite:
            kinesalite.create_stream("drain")
            kinesalite.reset()
            base = drain_baseline(kinesalite, "drain", count)
            base.update({"kind": "boto3 loop", "rep": rep})
            runs.append(base)
            log(f"drain rep {rep} boto3 loop: {base['records_per_s']:.0f} records/s")

    for rep in range(args.drain_reps):
        # The backlog is spooled in rep 0; after that, alternate which side goes first.
        order = (extension_rep, baseline_rep) if rep % 2 == 0 else (baseline_rep, extension_rep)
        for side in order:
            side(rep)
    shutil.rmtree(saved, ignore_errors=True)
    ext_runs = [r for r in runs if r["kind"] == "extension"]
    ext_rate = median([r["records_per_s"] for r in ext_runs])
    base_rate = median([r["records_per_s"] for r in runs if r["kind"] == "boto3 loop"])
    per_call = median([r["records_per_call"] for r in ext_runs])
    return {"runs": runs, "lines": count, "extension_records_per_s": ext_rate,
            "boto3_records_per_s": base_rate, "ratio": ext_rate / base_rate, "target_ratio": 0.9,
            "records_per_call": per_call, "target_records_per_call": 450,
            "resume_after_s": ext_runs[0].get("resume_after_s"),
            "spool_cpu_us_per_line": ext_runs[0].get("spool_cpu_us_per_line"),
            "met": ext_rate / base_rate >= 0.9 and per_call >= 450}


# -- 3. latency -----------------------------------------------------------------------------------

_INDEX = re.compile(rb'"i":"(\d{10})"')


class Poller(threading.Thread):
    """Reads a one-shard stream from its start with GetRecords; notes when each line showed."""

    def __init__(self, client: Any, stream: str, poll_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.client, self.stream, self.poll_s = client, stream, poll_s
        self.seen: dict[int, float] = {}
        self.polls = 0
        self.halt = threading.Event()

    def run(self) -> None:
        shard = self.client.list_shards(StreamName=self.stream)["Shards"][0]["ShardId"]
        iterator = self.client.get_shard_iterator(
            StreamName=self.stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while not self.halt.is_set():
            page = self.client.get_records(ShardIterator=iterator, Limit=10000)
            now = time.time()
            self.polls += 1
            for record in page["Records"]:
                match = _INDEX.search(record["Data"])
                if match:
                    self.seen.setdefault(int(match[1]), now)
            iterator = page["NextShardIterator"]
            if not page["Records"]:
                self.halt.wait(self.poll_s)


def latencies(accepted: list[tuple[int, float]], seen: dict[int, float]) -> dict[str, Any]:
    values = [seen[i] - t for i, t in accepted if i in seen]
    missing = sum(1 for i, _ in accepted if i not in seen)
    return {"lines": len(accepted), "seen": len(values), "missing": missing,
            "p50_s": percentile(values, 50), "p99_s": percentile(values, 99),
            "max_s": max(values, default=float("nan")), "samples": values}


def section_latency(args: argparse.Namespace, drivers: Drivers) -> dict[str, Any]:
    count = int(args.latency_rate * args.latency_seconds)
    with Kinesalite(OUT / "kinesalite-latency.log") as kinesalite:
        kinesalite.create_stream("latency")
        options = drain_options("latency", kinesalite.url)
        with Extension(OUT / "latency", options=options) as ext:
            poller = Poller(kinesalite.client, "latency")
            poller.start()
            cpu0, wall0 = ext.cpu(), time.time()
            with MemorySampler(ext.pid) as sampler:
                sent = drivers.send(ext, count, services=KINESIS_ONLY, rate=args.latency_rate)
            cpu1, wall1 = ext.cpu(), time.time()
            try:
                wait_for(lambda: len(poller.seen) >= count, 30, "every line readable in Kinesis")
            finally:
                poller.halt.set()
                poller.join()
            ext.stop()
        measured = latencies(sent["accepted"], poller.seen)
        measured.update({
            "rate_asked": args.latency_rate, "seconds": args.latency_seconds,
            "rate_sent": count / sent["seconds"], "driver_max_late_s": sent["max_late"],
            "cpu_share": (cpu1 - cpu0) / (wall1 - wall0),
            "cpu_us_per_line": (cpu1 - cpu0) / count * 1e6, "rss_peak_sampled": sampler.peak})
        log(f"latency extension: p50 {measured['p50_s']:.3f} s, p99 {measured['p99_s']:.3f} s, "
            f"CPU share {measured['cpu_share']:.1%}")

        # The floor: a greedy boto3 batcher (sends whatever waits the moment its previous call
        # returned), read back by the same poller.
        kinesalite.create_stream("latency-floor")
        poller = Poller(kinesalite.client, "latency-floor")
        poller.start()
        accepted_path = OUT / "latency-floor-accepted.json"
        subprocess.run(
            [sys.executable, "-m", "bench.floors", "batcher", "--endpoint", kinesalite.url,
             "--stream", "latency-floor", "--rate", str(args.latency_rate), "--seconds",
             str(args.latency_floor_seconds), "--accepted", str(accepted_path)],
            check=True, capture_output=True, text=True, cwd=BENCH.parent)
        accepted = [tuple(a) for a in json.loads(accepted_path.read_text())]
        try:
            wait_for(lambda: len(poller.seen) >= len(accepted), 30, "the floor's lines readable")
        finally:
            poller.halt.set()
            poller.join()
        floor = latencies(accepted, poller.seen)  # type: ignore[arg-type]
        floor["seconds"] = args.latency_floor_seconds
        log(f"latency floor (greedy boto3 batcher): p50 {floor['p50_s']:.3f} s, "
            f"p99 {floor['p99_s']:.3f} s")
    return {"extension": measured, "floor": floor, "target_p99_s": 2.0,
            "met": measured["p99_s"] <= 2.0 and measured["missing"] == 0}


# -- 4. memory --------------------------------------------------------------------------------------

def section_memory(args: argparse.Namespace, drivers: Drivers) -> dict[str, Any]:
    result: dict[str, Any] = {}
    line_bytes = args.spool_line_bytes
    count = int(args.spool_gib * GIB) // line_bytes
    cap = int(args.spool_gib * GIB * 1.25)
    port = closed_port()
    # Both caps above what is logged: only the bytes cap is meant to be near, and not reached.
    options = {**drain_options("memory", f"http://127.0.0.1:{port}"),
               "aws_logger_spool_max_bytes": str(cap),
               "buffered_log_max": str(max(1_000_000, 2 * count))}
    with Extension(OUT / "memory", options=options) as ext:
        time.sleep(1.0)
        rest = ext.memory()["VmRSS"]
        with MemorySampler(ext.pid) as sampler:
            sent = drivers.send(ext, count, services=KINESIS_ONLY, line_bytes=line_bytes)
        time.sleep(1.0)
        after = ext.memory()
        on_disk = dir_bytes(ext.spool_dir / "kinesis")
        ext.stop()
    shutil.rmtree(ext.spool_dir, ignore_errors=True)  # the GiB spooled is no use after this
    result["spooled"] = {
        "lines": count, "line_bytes": line_bytes, "cap_bytes": cap, "spool_bytes": on_disk,
        "rss_rest": rest, "rss_peak_sampled": sampler.peak, "rss_after": after["VmRSS"],
        "rss_hwm": after["VmHWM"], "lines_per_s": count / sent["seconds"],
        "cap_honoured": on_disk <= cap}
    log(f"memory: {on_disk / GIB:.2f} GiB spooled, RSS {after['VmRSS'] / MB:.1f} MB "
        f"(peak {after['VmHWM'] / MB:.1f} MB)")

    # The caps: more than each cap is logged while the service is down.
    byte_cap, record_cap = args.cap_bytes, args.cap_records
    checks = {}
    for name, extra, lines, size in (
            ("bytes", {"aws_logger_spool_max_bytes": str(byte_cap)},
             int(byte_cap * 1.5) // 32768, 32768),
            ("records", {"buffered_log_max": str(record_cap)}, int(record_cap * 1.5), 1024)):
        options = {**drain_options("caps", f"http://127.0.0.1:{port}"), **extra}
        with Extension(OUT / f"cap-{name}", options=options) as ext:
            drivers.send(ext, lines, services=KINESIS_ONLY, line_bytes=size)
            time.sleep(0.5)
            ext.stop()
            spool = ext.spool_dir / "kinesis"
            on_disk, records = dir_bytes(spool), spooled_records(spool)
            counters = counters_at_stop(ext).get(ext.plugins["kinesis"], {})
        limit = byte_cap if name == "bytes" else record_cap
        value = on_disk if name == "bytes" else records
        checks[name] = {"cap": limit, "logged_lines": lines, "line_bytes": size,
                        "spool_bytes": on_disk, "spool_records": records,
                        "dropped": counters.get("dropped"),
                        "honoured": value is not None and value <= limit}
        log(f"cap {name}: {value} on disk for a cap of {limit}")
    result["caps"] = checks
    return result


# -- profile ---------------------------------------------------------------------------------------

def section_profile(args: argparse.Namespace, drivers: Drivers) -> dict[str, Any]:
    return profile_extension(args, drivers)


# -- report ------------------------------------------------------------------------------------------

def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str, str]] = []

    def ok(flag: bool | None) -> str:
        return "n/a" if flag is None else ("met" if flag else "NOT met")

    cost = results.get("cost")
    if cost:
        rows.append(("1. CPU per line, all in (µs)", f"{cost['extension_us_per_line']:.0f}",
                     f"{cost['bare_us_per_line']:.0f} bare osquery-python",
                     f"{cost['ratio']:.2f}× (≤ 0.5×)", ok(cost["met"])))
        rows.append(("   same, median of the per-repetition ratios", "", "",
                     f"{cost['paired_ratio_median']:.2f}× (" + ", ".join(
                         f"{r:.2f}" for r in cost["paired_ratios"]) + ")", ""))
    drain = results.get("drain")
    if drain:
        rows.append(("2. backlog drain (records/s)", f"{drain['extension_records_per_s']:.0f}",
                     f"{drain['boto3_records_per_s']:.0f} boto3 loop",
                     f"{drain['ratio']:.2f}× (≥ 0.9×)", ok(drain["ratio"] >= 0.9)))
        rows.append(("   records per PutRecords call", f"{drain['records_per_call']:.1f}", "500",
                     "≥ 450", ok(drain["records_per_call"] >= 450)))
        rows.append(("   first delivery after the service is back (s)",
                     f"{drain['resume_after_s']:.1f}", "", "backoff, capped at 60 s", ""))
        rows.append(("   CPU per line while spooling, one plugin (µs)",
                     f"{drain['spool_cpu_us_per_line']:.0f}", "", "service down", ""))
    latency = results.get("latency")
    if latency:
        ext, floor = latency["extension"], latency["floor"]
        rows.append(("3. latency p50 (s)", f"{ext['p50_s']:.3f}",
                     f"{floor['p50_s']:.3f} greedy boto3 batcher", "", ""))
        rows.append(("   latency p99 (s)", f"{ext['p99_s']:.3f}", f"{floor['p99_s']:.3f}",
                     "≤ 2 s", ok(latency["met"])))
        rows.append(("   extension CPU share", f"{ext['cpu_share']:.1%}",
                     f"at {ext['rate_sent']:.0f} lines/s", "", ""))
    memory_ = results.get("memory")
    if memory_ or cost:
        bare_rest = median([r["rss_rest"] for r in cost["runs"] if r["kind"] == "bare"]) if cost else None
        floor_text = f"{bare_rest / MB:.1f} bare at rest" if bare_rest else ""
        figures = []
        if cost:
            figures.append(("4. RSS at rest (MB)", median(
                [r["rss_rest"] for r in cost["runs"] if r["kind"] == "extension"])))
        if drain:
            figures.append(("   RSS during drain, peak (MB)", median(
                [r["rss_peak_sampled"] for r in drain["runs"] if r["kind"] == "extension"])))
        if drain:
            first = next(r for r in drain["runs"] if r["kind"] == "extension")
            figures.append((f"   RSS with {drain['lines']:,} 1-KiB lines spooled "
                            f"({first['spool_bytes_filled'] / GIB:.2f} GiB) (MB)", first["rss_filled"]))
        if memory_:
            spooled = memory_["spooled"]
            figures.append((f"   RSS with {spooled['spool_bytes'] / GIB:.2f} GiB of "
                            f"{spooled['line_bytes'] // 1024}-KiB lines spooled (MB)",
                            spooled["rss_after"]))
            figures.append(("   RSS peak while spooling it (MB)", spooled["rss_hwm"]))
        for label, value in figures:
            rows.append((label, f"{value / MB:.1f}", floor_text, "≤ 80 MB", ok(value <= 80 * MB)))
        if memory_:
            for name, check in memory_["caps"].items():
                value = check["spool_bytes"] if name == "bytes" else check["spool_records"]
                rows.append((f"   spool cap on {name}", f"{value} on disk", f"cap {check['cap']}",
                             "≤ cap", ok(check["honoured"])))
    if drain:
        builtin = BUILTIN_RECORDS_PER_PERIOD / BUILTIN_PERIOD_S
        rows.append(("5. osquery built-in AWS logger", f"{builtin:.0f} records/s (computed)",
                     "500 lines per 10 s period", f"extension drains "
                     f"{drain['extension_records_per_s'] / builtin:.0f}×", ""))
    if results.get("savings"):
        rows += savings_rows(results["savings"])
    if results.get("hardening"):
        rows += hardening_rows(results["hardening"])
    if results.get("batch"):
        rows += batch_rows(results["batch"])
    if results.get("rows"):
        rows += rows_rows(results["rows"])
    if results.get("hops"):
        rows += hops_rows(results["hops"])
    header = ("figure", "extension", "floor", "ratio / target", "")
    widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(5)]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def strip_samples(results: dict[str, Any]) -> dict[str, Any]:
    """results.json keeps summaries; latency samples become a histogram."""
    latency = results.get("latency")
    if latency:
        for side in ("extension", "floor"):
            samples = latency[side].pop("samples")
            latency[side]["histogram_ms"] = histogram([s * 1000 for s in samples])
    return results


def histogram(values_ms: list[float], width: int = 50) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values_ms:
        bucket = int(value // width) * width
        counts[str(bucket)] = counts.get(str(bucket), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: int(kv[0])))


SECTIONS = ("cost", "profile", "drain", "latency", "memory", "savings", "hardening", "batch", "rows",
            "hops")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help="comma-separated sections to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="scaled-down smoke run (seconds, not minutes); figures are not comparable")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the cost runs")
    parser.add_argument("--drivers", type=int, default=2, help="driver processes")
    parser.add_argument("--cost-lines", type=int, default=6000)
    parser.add_argument("--warmup-lines", type=int, default=500)
    parser.add_argument("--drain-lines", type=int, default=200_000)
    parser.add_argument("--drain-reps", type=int, default=3)
    parser.add_argument("--latency-rate", type=float, default=1000.0)
    parser.add_argument("--latency-seconds", type=float, default=60.0)
    parser.add_argument("--latency-floor-seconds", type=float, default=20.0)
    parser.add_argument("--spool-gib", type=float, default=1.0)
    parser.add_argument("--spool-line-bytes", type=int, default=32768)
    parser.add_argument("--cap-bytes", type=int, default=64 * MIB)
    parser.add_argument("--cap-records", type=int, default=2000)
    parser.add_argument("--profile-seconds", type=float, default=15.0)
    parser.add_argument("--giant-line-mb", type=int, default=60)
    parser.add_argument("--giant-reps", type=int, default=3)
    parser.add_argument("--ping-count", type=int, default=2000)
    parser.add_argument("--idle-connections", type=int, default=50)
    parser.add_argument("--batch-reps", type=int, default=3)
    parser.add_argument("--batch-rows", type=int, default=20_000,
                        help="rows per batch-format measurement")
    parser.add_argument("--batch-event-rows", type=int, default=6000,
                        help="rows per event-format (and bare) measurement")
    parser.add_argument("--snapshot-rows", type=int, default=250_000,
                        help="rows of the big snapshot (section rows)")
    parser.add_argument("--table-backlog", type=int, default=16_000,
                        help="2 KB lines, half delivered, half waiting (section rows)")
    parser.add_argument("--hops-rows", type=int, default=50_000,
                        help="rows of the in-process drain (section hops)")
    parser.add_argument("--backlog-records", type=int, default=500_000,
                        help="records waiting while the table is queried (section rows)")
    parser.add_argument("--table-calls", type=int, default=1500,
                        help="log calls timed with and without table queries (section rows)")
    parser.add_argument("--table-rate", type=float, default=20.0,
                        help="table queries a second while log calls are timed (section rows)")
    parser.add_argument("--output", help="results JSON (default bench/results.json for a full run, "
                                          "bench/out/results.json for a partial or --quick one)")
    parser.add_argument("--chart", help="chart PNG, '' for none (default beside --output's default)")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.cost_lines, args.warmup_lines = 1, 1000, 200
        args.drain_lines, args.drain_reps = 5000, 1
        args.latency_seconds, args.latency_floor_seconds = 5.0, 3.0
        args.spool_gib, args.cap_bytes, args.cap_records = 0.05, 4 * MIB, 500
        args.profile_seconds = 5.0
        args.giant_line_mb, args.giant_reps, args.ping_count = 8, 1, 200
        args.batch_reps, args.batch_rows, args.batch_event_rows = 1, 2000, 600
        args.snapshot_rows, args.table_backlog, args.table_calls = 20_000, 2000, 200
        args.backlog_records, args.hops_rows = 20_000, 10_000
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    # Only a full run replaces the committed results; partial and quick ones write to bench/out.
    home = BENCH if set(wanted) == set(SECTIONS) and not args.quick else OUT
    args.output = args.output or str(home / "results.json")
    args.chart = str(home / "results.png") if args.chart is None else args.chart
    args.profile_md = home / "PROFILE.md"

    OUT.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                               "source": source_state(),
                               "settings": {k: v for k, v in vars(args).items()
                                            if k not in ("output", "chart", "only", "profile_md")}}
    log(f"bench on {results['machine']['nproc']} × {results['machine']['cpu_model']}: "
        f"{', '.join(wanted)}")
    sections: dict[str, Callable[[argparse.Namespace, Drivers], dict[str, Any]]] = {
        "cost": section_cost, "profile": section_profile, "drain": section_drain,
        "latency": section_latency, "memory": section_memory, "savings": section_savings,
        "hardening": section_hardening, "batch": section_batch, "rows": section_rows,
        "hops": section_hops}
    with Drivers(args.drivers) as drivers:
        for name in SECTIONS:
            if name in wanted:
                began = time.time()
                results[name] = sections[name](args, drivers)
                results[name]["section_seconds"] = time.time() - began
    results["seconds"] = time.time() - started
    after = source_state()
    results["source"]["changed_during_run"] = after["package_digest"] != results["source"]["package_digest"]
    if results["source"]["changed_during_run"]:
        log(f"WARNING: osquery_aws_logger changed during the run ({results['source']['commit']} → "
            f"{after['commit']}): sections may have measured different code")
    if "drain" in results:
        results["builtin"] = {"records_per_s": BUILTIN_RECORDS_PER_PERIOD / BUILTIN_PERIOD_S,
                              "computed": True,
                              "how": "osquery's AWS loggers read 500 buffered lines per period; "
                                     "the period defaults to 10 s"}
    text = table(results)
    results["table"] = text.splitlines()
    if "profile" in results:
        write_markdown(results, args.profile_md)
    if args.chart:
        draw(results, Path(args.chart))
    Path(args.output).write_text(json.dumps(strip_samples(results), indent=1, default=float) + "\n")
    print()
    print(text)
    source = results["source"]
    print(f"\nmeasured osquery_aws_logger at {source['commit']}"
          + (" with uncommitted changes" if source["package_uncommitted_changes"] else "")
          + (" (CHANGED during the run)" if source["changed_during_run"] else ""))
    print(f"{results['seconds']:.0f} s in all; wrote {args.output}"
          + (f" and {args.chart}" if args.chart else ""))


if __name__ == "__main__":
    main()
