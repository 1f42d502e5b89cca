# ruff: noqa: RUF001  (the dashes, minus and multiplication signs are meant: these tables go into the README)
"""The README's "Fleet at scale" tables, printed from results files (never typed in).

    python -m sim.table [--no-cost] sim/results-before.json [more results ...]

One column per file, in the order given, headed by the commit each ran at.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Figures = dict[str, Any]
Row = tuple[str, Callable[[Figures], str]]


def _s(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if value >= 100:
        return f"{value:,.0f} s"
    return f"{value:.1f} s" if value >= 1 else f"{value:.2f} s"


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def _delays(f: Figures) -> str:
    return f"{_s(f.get('delay_p50_s'))} / {_s(f.get('delay_p99_s'))}"


def _attempts(window: Figures) -> str:
    taken = window["entries_sent"] - window["entries_throttled"]
    return _x(window["entries_sent"] / taken) if taken else "–"


STEADY: list[Row] = [
    ("delay p50 / p99", _delays),
    ("retries per delivered row", lambda f: _n(f["retries_per_row"], 3)),
    ("attempts per row (entries sent ÷ taken)", _attempts),
    ("calls sent ÷ calls needed", lambda f: _x(f["retry_amplification"])),
    ("throttled calls / calls", lambda f: f"{_n(f['throttled_calls'])} / {_n(f['calls'])}"),
    ("stream utilization (busiest shard offered)",
     lambda f: f"{_pct(f['utilization'])} ({_pct(f['config'].get('busiest_shard_load'))})"),
]
OUTAGE: list[Row] = [
    ("backlog at the outage's end; bound = backlog ÷ (capacity − load)",
     lambda f: f"{_n(f['backlog_rows'])} rows; {_s(f['bound_s'])}"),
    ("fleet catch-up (÷ bound)", lambda f: f"{_s(f['catch_up_s'])} ({_x(f['catch_up_over_bound'])})"),
    ("slowest host's catch-up (÷ bound)",
     lambda f: f"{_s(f['slowest_host_catch_up_s'])} ({_x(f['slowest_over_bound'])})"),
    ("recovery: throttled calls / calls",
     lambda f: f"{_n(f['recovery']['throttled_calls'])} / {_n(f['recovery']['calls'])}"),
    ("recovery: calls sent ÷ calls needed", lambda f: _x(f["recovery"]["retry_amplification"])),
    ("recovery: attempts per row (entries sent ÷ taken)", lambda f: _attempts(f["recovery"])),
    ("recovery: stream utilization; its variation per 10 s (CV, lowest)",
     lambda f: f"{_pct(f['recovery']['utilization'])}; {f['utilization_cv']:.3f}, "
               f"{_pct(f['utilization_min'])}"),
    ("during the outage: calls; records sent in them",
     lambda f: f"{_n(f['outage']['calls'])}; {_n(f['outage']['entries_sent'])}"),
    ("rows dropped (hosts dropping / whose cap was reached / rate × outage over the cap)",
     lambda f: f"{_n(f['dropped_rows'])} ({f['hosts_dropping']} / {f['hosts_over_cap']} / "
               f"{f.get('hosts_expected_over_cap', '–')})"),
    ("a spool's peak ÷ (its rate × the outage), hosts under the cap: p50 / p99 / max",
     lambda f: " / ".join(f"{f['peak_over_rate_outage'][k]:.2f}" for k in ("p50", "p99", "max"))
     if f.get("peak_over_rate_outage") else "–"),
    ("delay p50 / p99 of rows accepted after the outage", _delays),
]
ROLLOUT: list[Row] = [
    ("AssumeRole calls: max per second, mean, throttled",
     lambda f: f"{_n(f['sts_calls_per_s_max'])}, {f['sts_calls_per_s_mean']:.0f}/s, "
               f"{_n(f['sts_throttled'])}"),
    ("first delivery after a host's first row: p50 / p99 / max",
     lambda f: f"{_s(f['first_delivery_p50_s'])} / {_s(f['first_delivery_p99_s'])} / "
               f"{_s(f['first_delivery_max_s'])}"),
    ("throttled calls / calls", lambda f: f"{_n(f['throttled_calls'])} / {_n(f['calls'])}"),
]
HOT: list[Row] = [
    ("the hot hosts: delay p50 / p99", lambda f: _delays(f["hot_hosts"])),
    ("their shards' other hosts", lambda f: _delays(f["hot_shard_hosts"])),
    ("everyone else", lambda f: _delays(f["other_hosts"])),
    ("attempts per row", _attempts),
]
SECTIONS: list[tuple[str, str, list[Row]]] = [
    ("steady_50", "Steady, 50 % of capacity", STEADY),
    ("restart_50", "Restart: every host started within a second, 50 %", STEADY),
    ("steady_90", "Steady, 90 % (Kinesis: the host as partition key)", STEADY),
    ("steady_90_random_key", "Steady, 90 %, random partition keys", STEADY),
    ("outage", "One-hour outage, then recovery at 50 %", OUTAGE),
    ("rollout", "Rollout with an STS role", ROLLOUT),
    ("hot_host_key", "Hot shards, host keys", HOT),
    ("hot_random_key", "Hot shards, random keys", HOT),
]


def describe(name: str, figures: Figures) -> str:
    c = figures["config"]
    stream = f"{c['shards']} MiB/s" if c.get("service") == "firehose" else f"{c['shards']} shards"
    text = f"{c['hosts']:,} hosts, {stream}"
    if name == "rollout":
        text += f", started over {c['start_window_s']:.0f} s"
    if name.startswith("hot"):
        text += f", {c['hot_hosts']} hot hosts at 20×"
    return text


def commits(results: Figures) -> str:
    """The commits a results file's scenarios ran at (several after --merge)."""
    found = [f["source"]["commit"] + ("+" if f["source"]["dirty"] else "")
             for f in results["scenarios"].values() if "source" in f]
    return ", ".join(dict.fromkeys(found)) or str(results["source"]["commit"])


def table(runs: list[Figures]) -> str:
    heads = [commits(run) for run in runs]
    lines = ["| scenario | figure | " + " | ".join(heads) + " |",
             "|---|---|" + "---|" * len(runs)]
    for key, title, rows in SECTIONS:
        present = [run["scenarios"].get(key) for run in runs]
        if not any(present):
            continue
        first = next(f for f in present if f)
        label = f"**{title}** ({describe(key, first)})"
        for index, (figure, show) in enumerate(rows):
            cells = [show(f) if f else "–" for f in present]
            lines.append(f"| {label if index == 0 else ''} | {figure} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(run: Figures) -> str:
    lines = ["| hosts | rows | events | wall | CPU | CPU per row | peak RSS |",
             "|---|---|---|---|---|---|---|"]
    for cost in run["cost"]:
        lines.append(f"| {cost['hosts']:,} | {cost['rows']:,} | {cost['events']:,} | "
                     f"{cost['wall_s']:.1f} s | {cost['cpu_s']:.1f} s | {cost['us_per_row']:.1f} µs | "
                     f"{cost['peak_rss_mb']:.0f} MB |")
    lines.append("")
    lines.append("| scenario | hosts | rows | virtual | wall | CPU | peak RSS |")
    lines.append("|---|---|---|---|---|---|---|")
    for name, figures in run["scenarios"].items():
        cost = figures["cost"]
        lines.append(f"| {name} | {cost['hosts']:,} | {cost['rows']:,} | {cost['virtual_s']:,.0f} s | "
                     f"{cost['wall_s']:.0f} s | {cost['cpu_s']:.0f} s | {cost['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Print the table of the results files given; `--no-cost` leaves the cost tables out."""
    paths = [arg for arg in argv if arg != "--no-cost"]
    runs = [json.loads(Path(path).read_text()) for path in paths]
    print(table(runs))
    if "--no-cost" not in argv:
        print()
        print(cost_table(runs[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
