"""The chart of a `make simulate` run (matplotlib, from the bench extra), optionally beside an
earlier run (`--baseline`): the outage's recovery, the steady and hot-shard delays, the
rollout's STS calls and the simulator's own cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sim.table import commits

BEFORE = "#999999"
AFTER = "#1f77b4"


def _runs(results: dict[str, Any], baseline: dict[str, Any] | None) -> list[tuple[str, str, dict[str, Any]]]:
    runs = []
    if baseline is not None:
        runs.append((f"before ({commits(baseline)})", BEFORE, baseline))
    runs.append((f"after ({commits(results)})" if baseline else commits(results), AFTER, results))
    return runs


def _outage(axes: Any, runs: list[tuple[str, str, dict[str, Any]]]) -> None:
    waiting, rate = axes
    for label, colour, run in runs:
        outage = run["scenarios"].get("outage")
        if not outage:
            continue
        series = outage["series"]
        points = series["waiting"]
        waiting.plot([t / 3600 for t, _ in points], [v / 1e6 for _, v in points], color=colour,
                     label=label)
        step = series["step_s"]
        hours = [i * step / 3600 for i in range(len(series["accepted_rows_per_s"]))]
        rate.plot(hours, series["accepted_rows_per_s"], color=colour, label=f"taken, {label}")
        rate.plot(hours, series["throttled_entries_per_s"], color=colour, linestyle=":",
                  label=f"throttled, {label}")
        rate.axhline(series["capacity_rows_per_s"], color="black", linewidth=0.8)
    config = runs[-1][2]["scenarios"].get("outage", {}).get("config", {})
    waiting.set_title(f"Outage of {config.get('outage_s', 0) / 3600:g} h, {config.get('hosts')} hosts, "
                      f"{config.get('shards')} shards: rows waiting", fontsize=9)
    waiting.set_xlabel("hours (virtual)")
    waiting.set_ylabel("million rows")
    waiting.legend(fontsize=7)
    rate.set_title("Rows/s taken and entries/s throttled (line: capacity)", fontsize=9)
    rate.set_xlabel("hours (virtual)")
    rate.set_yscale("symlog", linthresh=100)
    rate.set_ylim(bottom=0)
    rate.legend(fontsize=6)


def _bars(axis: Any, runs: list[tuple[str, str, dict[str, Any]]], groups: list[tuple[str, str, str]],
          title: str) -> None:
    """Bars of p50 and p99 delay for (label, scenario, key inside it or '') groups."""
    width = 0.8 / (2 * len(runs))
    for r, (label, colour, run) in enumerate(runs):
        for g, (_, scenario, key) in enumerate(groups):
            figures = run["scenarios"].get(scenario)
            if not figures:
                continue
            figures = figures[key] if key else figures
            for q, (name, alpha) in enumerate((("delay_p50_s", 0.5), ("delay_p99_s", 1.0))):
                value = figures.get(name) or 0
                x = g + (2 * r + q - len(runs)) * width + width / 2
                axis.bar(x, value, width, color=colour, alpha=alpha,
                         label=f"{name[6:9]}, {label}" if g == 0 else None)
    axis.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=7)
    axis.set_yscale("log")
    axis.set_ylabel("seconds from accepted to taken by AWS")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=6)


def _rollout(axis: Any, runs: list[tuple[str, str, dict[str, Any]]]) -> None:
    for label, colour, run in runs:
        rollout = run["scenarios"].get("rollout")
        if rollout and "sts_calls_per_s" in rollout:
            axis.plot(rollout["sts_calls_per_s"], color=colour, label=label)
    axis.axhline(600, color="black", linewidth=0.8)
    config = runs[-1][2]["scenarios"].get("rollout", {}).get("config", {})
    axis.set_title(f"Rollout of {config.get('hosts')} extensions in {config.get('start_window_s', 0):g} s: "
                   "AssumeRole/s (line: STS quota)", fontsize=9)
    axis.set_xlabel("seconds (virtual)")
    axis.legend(fontsize=7)


def _cost(axis: Any, runs: list[tuple[str, str, dict[str, Any]]]) -> None:
    for label, colour, run in runs:
        cost = run.get("cost") or []
        if cost:
            axis.plot([c["hosts"] for c in cost], [c["cpu_s"] for c in cost], "o-", color=colour,
                      label=label)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("hosts")
    axis.set_ylabel("CPU seconds (1 core of 2, shared)")
    axis.set_title("The simulator's cost: 10 virtual minutes, 1 row/s per host", fontsize=9)
    axis.legend(fontsize=7)


def draw(results: dict[str, Any], path: Path, *, baseline: dict[str, Any] | None = None) -> None:
    runs = _runs(results, baseline)
    figure, grid = plt.subplots(2, 3, figsize=(16, 9))
    _outage((grid[0][0], grid[0][1]), runs)
    _bars(grid[0][2], runs, [("steady 50 %", "steady_50", ""), ("restart, 50 %", "restart_50", ""),
                             ("steady 90 %", "steady_90", ""),
                             ("90 %, random key", "steady_90_random_key", ""),
                             ("outage", "outage", "")], "Delay per row")
    _bars(grid[1][0], runs, [("hot", "hot_host_key", "hot_hosts"),
                             ("neighbours", "hot_host_key", "hot_shard_hosts"),
                             ("others", "hot_host_key", "other_hosts"),
                             ("hot\n(random)", "hot_random_key", "hot_hosts"),
                             ("neighbours\n(random)", "hot_random_key", "hot_shard_hosts"),
                             ("others\n(random)", "hot_random_key", "other_hosts")],
          "Hot shards: 1 % of hosts at 20x, host key vs random key")
    _rollout(grid[1][1], runs)
    _cost(grid[1][2], runs)
    figure.suptitle("osquery-aws-logger fleet simulation (virtual time; the extension's own "
                    "delivery code on every host)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


if __name__ == "__main__":
    # Draw again from results files, without running anything: results [baseline].
    import json
    import sys

    paths = [Path(arg) for arg in sys.argv[1:]]
    draw(json.loads(paths[0].read_text()), paths[0].with_suffix(".png"),
         baseline=json.loads(paths[1].read_text()) if len(paths) > 1 else None)

