"""`make simulate`: the fleet scenarios in virtual time; writes sim/results.json and a chart.

    python -m sim.run [--hosts N] [--scenario NAME ...] [--seed S] [--out FILE] ...

Each scenario runs in a child process of its own, one after the other (so its memory is its
own and the figures do not depend on the order), and its wall and CPU seconds are recorded
beside its figures. `--cost` also measures the simulator itself at several fleet sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sim.host import quiet_extension_logs
from sim.scenarios import SCENARIOS, Scale, run_fleet

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results.json"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _scenario(name: str, scale: Scale) -> dict[str, Any]:
    quiet_extension_logs()
    return SCENARIOS[name](scale)


#: The cost runs: the outage fleet's mix (a mean of 1 row/s per host) at every size.
COST_QUIET_RATE = 1 / (0.8 + 0.2 * Scale().busy_factor)


def _cost(hosts: int, seconds: float, seed: int) -> dict[str, Any]:
    """The simulator's own cost for `seconds` of a fleet of `hosts` at a fixed rate per host
    and a stream sized for it (a shard per 500 hosts, half busy)."""
    quiet_extension_logs()
    scale = Scale(hosts=hosts, seed=seed, steady_s=seconds, quiet_rate=COST_QUIET_RATE)
    _, cost = run_fleet(scale.base(500, start_window=10.0, rows_until=seconds,
                                   measure_from=seconds / 5))
    return cost


def in_child(function: Any, *args: Any) -> Any:
    """Run `function(*args)` in a forked child and answer what it returned."""
    context = multiprocessing.get_context("fork")
    with context.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(function, args)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "load_average_at_start": os.getloadavg()}


def source_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(HERE.parent), *args], capture_output=True,
                                  text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", "osquery_aws_logger", "sim"))}


def clean(value: Any) -> Any:
    """JSON has no infinity or NaN: they are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean(item) for item in value]
    return value


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = Scale()
    parser = argparse.ArgumentParser(prog="python -m sim.run", description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="run only these (repeatable; default: all)")
    parser.add_argument("--no-scenarios", action="store_true",
                        help="run no scenario (only the cost runs, with --merge)")
    parser.add_argument("--hosts", type=int, default=defaults.hosts)
    parser.add_argument("--rollout-hosts", type=int, default=defaults.rollout_hosts)
    parser.add_argument("--rollout-window", type=float, default=defaults.rollout_window_s,
                        help="seconds over which the rollout's extensions start")
    parser.add_argument("--service", choices=("kinesis", "firehose"), default=defaults.service)
    parser.add_argument("--shards", type=int, default=0,
                        help="Kinesis shards (default: sized from the hosts per scenario)")
    parser.add_argument("--firehose-mib", type=float, default=0.0,
                        help="Firehose throughput quota, MiB/s (records/s and requests/s scale "
                             "with it; default: 1 per 'shard' the scenario would use)")
    parser.add_argument("--quiet-rate", type=float, default=0.0,
                        help="rows/s of a quiet host (default: scaled to the scenario's load)")
    parser.add_argument("--busy-factor", type=float, default=defaults.busy_factor,
                        help="a busy host's rate over a quiet one's")
    parser.add_argument("--busy-share", type=float, default=defaults.busy_share)
    parser.add_argument("--line-bytes", type=int, default=defaults.line_bytes)
    parser.add_argument("--aggregate", action="store_true",
                        help="aws_kinesis_aggregate / aws_firehose_pack")
    parser.add_argument("--outage-start", type=float, default=defaults.outage_start_s)
    parser.add_argument("--outage-length", type=float, default=defaults.outage_s)
    parser.add_argument("--outage-cap", type=int, default=defaults.outage_cap,
                        help="buffered_log_max in the outage scenario")
    parser.add_argument("--rollout-seconds", type=float, default=defaults.rollout_s)
    parser.add_argument("--steady-seconds", type=float, default=defaults.steady_s)
    parser.add_argument("--hot-seconds", type=float, default=defaults.hot_s)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--cost", default="100,300,1000,3000",
                        help="fleet sizes at which to measure the simulator's own cost "
                             "(comma-separated; empty: none)")
    parser.add_argument("--cost-seconds", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="earlier results to draw beside these in the chart")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other scenarios and cost runs already in --out (each "
                             "scenario's figures record the commit they ran at)")
    return parser.parse_args(argv)


def scale_of(args: argparse.Namespace) -> Scale:
    return Scale(hosts=args.hosts, service=args.service, seed=args.seed,
                 steady_s=args.steady_seconds, outage_start_s=args.outage_start,
                 outage_s=args.outage_length, outage_cap=args.outage_cap,
                 rollout_hosts=args.rollout_hosts, rollout_window_s=args.rollout_window,
                 rollout_s=args.rollout_seconds,
                 hot_s=args.hot_seconds, shards=args.shards, firehose_mib=args.firehose_mib,
                 quiet_rate=args.quiet_rate, busy_factor=args.busy_factor,
                 busy_share=args.busy_share, line_bytes=args.line_bytes, aggregate=args.aggregate)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    scale = scale_of(args)
    started = time.perf_counter()
    command = "python -m sim.run " + " ".join(argv if argv is not None else sys.argv[1:])
    source = source_state()
    results: dict[str, Any] = {
        "generated_by": [command], "source": source, "machine": machine(),
        "scale": dataclasses.asdict(scale), "scenarios": {}, "cost": []}
    if args.merge and args.out.exists():
        earlier = json.loads(args.out.read_text())
        results["generated_by"] = [*earlier["generated_by"], command]
        results["scenarios"] = earlier["scenarios"]
        results["cost"] = earlier["cost"]
    for name in [] if args.no_scenarios else args.scenario or list(SCENARIOS):
        log(f"scenario {name}")
        figures = in_child(_scenario, name, scale)
        figures["source"] = source
        cost = figures["cost"]
        log(f"  {cost['hosts']} hosts, {cost['rows']:,} rows, {cost['virtual_s']:.0f} s virtual "
            f"in {cost['wall_s']:.1f} s wall ({cost['cpu_s']:.1f} s CPU), "
            f"peak RSS {cost['peak_rss_mb']:.0f} MB; conserved: {figures['conservation']['balanced']}")
        results["scenarios"][name] = figures
    sizes = [int(h) for h in args.cost.split(",") if h.strip()]
    # Merging keeps the other sizes' cost runs; a size measured again replaces its old run.
    results["cost"] = [c for c in results["cost"] if args.merge and c["hosts"] not in sizes]
    for hosts in sizes:
        log(f"simulator cost at {hosts} hosts, {args.cost_seconds:.0f} s virtual")
        cost = in_child(_cost, hosts, args.cost_seconds, args.seed)
        cost["us_per_row"] = cost["cpu_s"] / max(1, cost["rows"]) * 1e6
        cost["source"] = source
        log(f"  {cost['wall_s']:.1f} s wall, {cost['cpu_s']:.1f} s CPU, {cost['rows']:,} rows, "
            f"{cost['us_per_row']:.1f} us CPU per row, peak RSS {cost['peak_rss_mb']:.0f} MB")
        results["cost"].append(cost)
        results["cost"].sort(key=lambda c: c["hosts"])
    results["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(clean(results), indent=1) + "\n")
    log(f"wrote {args.out} ({results['wall_s']:.0f} s)")
    if not args.no_chart:
        # matplotlib comes with the bench extra (make simulate), not with make test's.
        from sim.chart import draw  # noqa: PLC0415

        chart = args.out.with_suffix(".png")
        draw(results, chart, baseline=json.loads(args.baseline.read_text()) if args.baseline else None)
        log(f"wrote {chart}")
    return 0 if all(f["conservation"]["balanced"] for f in results["scenarios"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
