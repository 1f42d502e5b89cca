# ruff: noqa: RUF001  (the multiplication sign is meant)
"""bench/results.png: each figure of `make bench` beside its floor and its target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MB = 1e6
EXT, FLOOR, OTHER = "#1f77b4", "#9e9e9e", "#d62728"


def _bars(ax: Any, labels: list[str], values: list[float], colors: list[str], fmt: str) -> None:
    bars = ax.bar(labels, values, color=colors)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(fmt.format(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)


def _target(ax: Any, y: float, text: str) -> None:
    ax.axhline(y, color=OTHER, linestyle="--", linewidth=1)
    ax.annotate(text, (1.0, y), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                fontsize=8, color=OTHER)


def draw(results: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(3, 2, figsize=(12, 12.5))
    machine = results["machine"]
    source = results.get("source", {})
    fig.suptitle(f"osquery-aws-logger {source.get('commit', '')} `make bench` — {machine['nproc']} × "
                 f"{machine['cpu_model']}, {results['started']}", fontsize=11)

    ax = axes[0][0]
    cost = results.get("cost")
    if cost:
        _bars(ax, ["bare osquery-python\nno-op logger", "osquery-aws-logger\n(spool + ship)"],
              [cost["bare_us_per_line"], cost["extension_us_per_line"]], [FLOOR, EXT], "{:.0f} µs")
        _target(ax, cost["bare_us_per_line"] * 0.5, "target ≤ 0.5× bare")
        for run in cost["runs"]:
            x = 0 if run["kind"] == "bare" else 1
            ax.plot([x], [run["cpu_us_per_line"]], "k.", markersize=4)
    ax.set_title("1. CPU per line, all in (median; dots: repetitions)", fontsize=10)
    ax.set_ylabel("µs of extension CPU per line (2 calls)")

    ax = axes[0][1]
    drain = results.get("drain")
    if drain:
        builtin = results.get("builtin", {}).get("records_per_s", 50.0)
        _bars(ax, ["boto3 loop\n(500/call)", "osquery-aws-logger\n(backlog drain)",
                   "osquery built-in\n(computed)"],
              [drain["boto3_records_per_s"], drain["extension_records_per_s"], builtin],
              [FLOOR, EXT, "#ff7f0e"], "{:.0f}/s")
        _target(ax, drain["boto3_records_per_s"] * 0.9, "target ≥ 0.9× boto3 loop")
        ax.set_title(f"2. Backlog drain of {drain['lines']:,} records to kinesalite "
                     f"({drain['records_per_call']:.0f} records/call)", fontsize=10)
    ax.set_ylabel("records/s")

    ax = axes[1][0]
    latency = results.get("latency")
    if latency:
        for side, color, label in (("floor", FLOOR, "greedy boto3 batcher (no period)"),
                                   ("extension", EXT, "osquery-aws-logger, period 1 s")):
            samples = sorted(latency[side].get("samples", []))
            if samples:
                n = len(samples)
                ax.plot(samples, [(i + 1) / n for i in range(n)], color=color,
                        label=f"{label}: p50 {latency[side]['p50_s']:.2f} s, "
                              f"p99 {latency[side]['p99_s']:.2f} s")
        ax.axvline(2.0, color=OTHER, linestyle="--", linewidth=1)
        ax.annotate("target p99 ≤ 2 s ", (2.0, 0.55), ha="right", fontsize=8, color=OTHER)
        ax.axhline(0.99, color="k", linewidth=0.5, linestyle=":")
        ax.legend(fontsize=8, loc="upper left")
        ext = latency["extension"]
        ax.set_title(f"3. Accepted → readable in Kinesis at {ext['rate_sent']:.0f} lines/s "
                     f"(extension CPU {ext['cpu_share']:.0%})", fontsize=10)
    ax.set_xlabel("seconds")
    ax.set_ylabel("fraction of lines")

    ax = axes[1][1]
    labels, values, colors = [], [], []
    if cost:
        rest = sorted(r["rss_rest"] for r in cost["runs"] if r["kind"] == "bare")
        labels.append("bare\nat rest")
        values.append(rest[len(rest) // 2] / MB)
        colors.append(FLOOR)
        rest = sorted(r["rss_rest"] for r in cost["runs"] if r["kind"] == "extension")
        labels.append("extension\nat rest")
        values.append(rest[len(rest) // 2] / MB)
        colors.append(EXT)
    if drain:
        peaks = sorted(r["rss_peak_sampled"] for r in drain["runs"] if r["kind"] == "extension")
        labels.append("extension\ndraining")
        values.append(peaks[len(peaks) // 2] / MB)
        colors.append(EXT)
        first = next(r for r in drain["runs"] if r["kind"] == "extension")
        labels.append(f"extension\n{first['spool_bytes_filled'] / 2**30:.2f} GiB\nof 1-KiB lines")
        values.append(first["rss_filled"] / MB)
        colors.append(EXT)
    memory = results.get("memory")
    if memory:
        spooled = memory["spooled"]
        labels.append(f"extension\n{spooled['spool_bytes'] / 2**30:.2f} GiB\n"
                      f"of {spooled['line_bytes'] // 1024}-KiB lines")
        values.append(spooled["rss_after"] / MB)
        colors.append(EXT)
    if values:
        _bars(ax, labels, values, colors, "{:.1f} MB")
        ax.tick_params(axis="x", labelsize=8)
        _target(ax, 80, "target ≤ 80 MB")
    ax.set_title("4. Resident memory (RSS)", fontsize=10)
    ax.set_ylabel("MB")

    ax = axes[2][0]
    batch = results.get("batch")
    if batch:
        bare = batch["bare_us_per_row"]
        labels = ["bare osquery-python\na call per row", "extension\nevent format"]
        values = [bare, batch["event_format_us_per_row"]]
        for count, figure in batch["batch"].items():
            labels.append(f"extension\nbatch, {count}/run")
            values.append(figure["cpu_us_per_row"])
        _bars(ax, labels, values, [FLOOR] + [EXT] * (len(values) - 1), "{:.0f} µs")
        ax.set_yscale("log")
        _target(ax, bare * 0.1, "≤ 0.1× at 10/run")
        _target(ax, bare * 0.02, "≤ 0.02× at 100/run")
        ax.tick_params(axis="x", labelsize=8)
    ax.set_title("8. CPU per delivered row, all in: batch format (log scale)", fontsize=10)
    ax.set_ylabel("µs of extension CPU per row")

    ax = axes[2][1]
    hardening = results.get("hardening")
    if hardening:
        ping, giant = hardening["ping"], hardening["giant"]
        _bars(ax, ["ping p99\nidle", f"ping p99, {ping['idle_connections']}\nidle connections",
                   f"{giant['line_mb']} MB line:\nanswer after last byte"],
              [ping["idle_p99_ms"], ping["stalled_p99_ms"], giant["answer_s_median"] * 1e3],
              [FLOOR, EXT, EXT], "{:.2f} ms")
        ax.set_yscale("log")
        _target(ax, 2000, "target ≤ 2 s for the line")
    ax.set_title("7. Stalled peers and a giant line (log scale)", fontsize=10)
    ax.set_ylabel("ms")

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
