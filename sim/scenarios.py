"""The scenarios of issue 21 and their figures, each one or two `Fleet` runs.

Sizes follow `Scale`: the defaults are the issue's (1,000 hosts, a one-hour outage, 10,000
hosts rolled out in 5 minutes); `make test` runs the same code at 50 hosts and about two
minutes of virtual time. Streams are sized from the host count so that a scenario means the
same at any size: the steady scenarios give a shard to 250 hosts, the outage and rollout ones
500, the hot one 20 (so that a host at 20x its fleet's mean rate can make its shard hot at all).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sim.fleet import CLASSES, Fleet, FleetConfig

Figures = dict[str, Any]


@dataclass(frozen=True)
class Scale:
    hosts: int = 1000
    service: str = "kinesis"
    seed: int = 1
    steady_s: float = 600.0  # rows for this long in the steady scenarios
    warmup_s: float = 120.0  # left out of the steady figures
    outage_start_s: float = 300.0
    outage_s: float = 3600.0
    #: A spool cap (records) small enough that the busiest hosts reach it in the outage.
    outage_cap: int = 15_000
    rollout_hosts: int = 10_000
    rollout_window_s: float = 300.0
    rollout_s: float = 600.0  # rows for this long in the rollout
    hot_s: float = 300.0
    shards: int = 0  # 0: sized from the hosts, per scenario
    firehose_mib: float = 0.0  # 0: sized like the shards (1 MiB/s per shard's worth)
    quiet_rate: float = 0.0  # rows/s of a quiet host; 0: scaled to the scenario's load
    busy_factor: float = 10.0
    busy_share: float = 0.2
    line_bytes: int = 700
    aggregate: bool = False

    def base(self, hosts_per_shard: int, **changes: Any) -> FleetConfig:
        hosts = changes.get("hosts", self.hosts)
        shards = self.shards or max(1, round(hosts / hosts_per_shard))
        config = FleetConfig(hosts=self.hosts, service=self.service, shards=shards,
                             firehose_mib=self.firehose_mib or float(shards), seed=self.seed,
                             quiet_rate=self.quiet_rate or None, busy_factor=self.busy_factor,
                             busy_share=self.busy_share, line_bytes=self.line_bytes,
                             aggregate=self.aggregate)
        return replace(config, **changes)


def _percentiles(fleet: Fleet, classes: tuple[str, ...] = CLASSES) -> dict[str, float]:
    merged = fleet.delays[classes[0]].__class__()
    for klass in classes:
        merged.merge(fleet.delays[klass])
    return {"delay_p50_s": merged.percentile(50), "delay_p99_s": merged.percentile(99),
            "delay_max_s": merged.percentile(100), "rows_measured": merged.count}


def _counters(fleet: Fleet) -> dict[str, int]:
    retried = delivered = throttled = 0
    for state in fleet.states:
        if state.host is not None:
            retried += state.host.counters.retried
            delivered += state.host.counters.delivered
            throttled += state.host.counters.throttled
    return {"retried": retried, "delivered": delivered, "throttled": throttled}


def _window(fleet: Fleet, start: float, end: float) -> Figures:
    """Calls and entries at the service between `start` and `end`."""
    series = fleet.series
    calls = series.window("calls", start, end)
    needed = series.window("needed", start, end)
    accepted_rows = series.window("accepted_rows", start, end)
    span = max(1e-9, end - start)
    return {
        "calls": int(calls),
        "throttled_calls": int(series.window("throttled_calls", start, end)),
        "error_calls": int(series.window("error_calls", start, end)),
        "entries_sent": int(series.window("sent_entries", start, end)),
        "entries_throttled": int(series.window("throttled_entries", start, end)),
        # Calls sent / calls needed: a call is needed in the share of its entries AWS took.
        "retry_amplification": calls / needed if needed else math.inf,
        "rows_per_s": accepted_rows / span,
        "utilization": accepted_rows / span / fleet.capacity_rows,
    }


def _oscillation(fleet: Fleet, start: float, end: float, step: int = 10) -> Figures:
    """How steady the stream's throughput was: utilization per `step` seconds."""
    rows = fleet.series.accepted_rows
    shares = [sum(rows[t:t + step]) / step / fleet.capacity_rows
              for t in range(int(start), int(end) - step + 1, step)]
    if len(shares) < 2:
        return {"utilization_cv": 0.0, "utilization_min": shares[0] if shares else 0.0}
    mean = statistics.fmean(shares)
    return {"utilization_cv": statistics.pstdev(shares) / mean if mean else 0.0,
            "utilization_min": min(shares), "utilization_max": max(shares)}


def _conservation(fleet: Fleet) -> Figures:
    totals = fleet.conservation()
    totals["balanced"] = (
        totals["appended"] == totals["delivered_seen"] + totals["dropped_counted"] + totals["waiting"]
        and totals["delivered_seen"] == totals["delivered_counted"]
        and totals["delivered_twice"] == 0
        and totals["given_up_undelivered"] == totals["dropped_counted"]
        and totals["hosts_dropping"] <= totals["hosts_over_cap"])
    return totals


def _series(fleet: Fleet, step: int = 10) -> Figures:
    """Time series for the chart, `step`-second bins."""
    s = fleet.series
    bins = range(0, len(s.calls), step)
    return {
        "step_s": step,
        "accepted_rows_per_s": [sum(s.accepted_rows[t:t + step]) / step for t in bins],
        "throttled_entries_per_s": [sum(s.throttled_entries[t:t + step]) / step for t in bins],
        "calls_per_s": [sum(s.calls[t:t + step]) / step for t in bins],
        "waiting": [[round(at, 1), value] for at, value in fleet.waiting_samples[::2]],
        "capacity_rows_per_s": fleet.capacity_rows,
    }


def run_fleet(config: FleetConfig) -> tuple[Fleet, Figures]:
    fleet = Fleet(config)
    cost = fleet.run()
    cost["rows"] = sum(s.host.appended for s in fleet.states if s.host is not None)
    cost["hosts"] = config.hosts
    cost["virtual_s"] = fleet.now
    return fleet, cost


def steady(scale: Scale, load: float, start_window: float = 10.0,
           random_key: bool = False) -> Figures:
    """Rows at `load` of the stream's capacity; the hosts start within `start_window` seconds
    (within a second: a fleet-wide restart, say an osqueryd upgrade pushed at once)."""
    config = scale.base(250, load=load, start_window=start_window, rows_until=scale.steady_s,
                        measure_from=scale.warmup_s, random_key=random_key)
    fleet, cost = run_fleet(config)
    counters = _counters(fleet)
    return {
        "config": {"hosts": config.hosts, "shards": config.shards, "load": load,
                   "service": config.service, "seconds": scale.steady_s,
                   "start_window_s": start_window, "random_partition_key": random_key,
                   "busiest_shard_load": _busiest_shard_load(fleet)},
        **_percentiles(fleet),
        "retries_per_row": counters["retried"] / max(1, counters["delivered"]),
        **_window(fleet, scale.warmup_s, scale.steady_s),
        **_oscillation(fleet, scale.warmup_s, scale.steady_s),
        "conservation": _conservation(fleet),
        "cost": cost,
    }


def outage(scale: Scale) -> Figures:
    start, length = scale.outage_start_s, scale.outage_s
    end = start + length
    config = scale.base(500, load=0.5, start_window=10.0, rows_until=end,
                        outage_start=start, outage_length=length,
                        measure_from=start + length, spool_cap_records=scale.outage_cap,
                        time_limit=end + 8 * length + 600)
    fleet, cost = run_fleet(config)
    load = _window(fleet, min(60.0, start / 2), start)["rows_per_s"]  # steady, before the outage
    capacity = fleet.capacity_rows
    bound = fleet.backlog / (capacity - load) if capacity > load else math.inf
    caught = fleet.fleet_caught_up_at
    slowest = fleet.slowest_caught_up_at
    catch_up = caught - end if caught is not None else math.inf
    slowest_s = slowest - end if slowest is not None else math.inf
    recovery = _window(fleet, end, slowest if slowest is not None else fleet.now)
    counters = _counters(fleet)
    drops = _conservation(fleet)
    return {
        "config": {"hosts": config.hosts, "shards": config.shards, "load": 0.5,
                   "service": config.service, "outage_s": length,
                   "spool_cap_records": scale.outage_cap},
        "load_rows_per_s": load,
        "capacity_rows_per_s": capacity,
        "steady_waiting_rows": fleet.steady_waiting,
        "backlog_rows": fleet.backlog,
        "bound_s": bound,
        "bound_busiest_shard_s": _busiest_shard_bound(fleet, capacity, load),
        "catch_up_s": catch_up,
        "catch_up_over_bound": catch_up / bound if bound else math.inf,
        "slowest_host_catch_up_s": slowest_s,
        "slowest_over_bound": slowest_s / bound if bound else math.inf,
        "outage": _window(fleet, start, end),
        "recovery": recovery,
        **_oscillation(fleet, end, caught if caught is not None else fleet.now),
        "retries_per_row": counters["retried"] / max(1, counters["delivered"]),
        **_percentiles(fleet),
        "dropped_rows": drops["dropped_counted"],
        "hosts_dropping": drops["hosts_dropping"],
        "hosts_over_cap": drops["hosts_over_cap"],
        # The operator's rule: a host fills its cap when its rate times the outage passes it.
        "hosts_expected_over_cap": sum(1 for state in fleet.states
                                       if state.rate * length > scale.outage_cap),
        # How far past rate x outage a host's spool peaks (the recovery adds to it), among
        # the hosts whose cap was not reached: what a cap must allow for.
        "peak_over_rate_outage": _spread([state.peak_waiting / (state.rate * length)
                                          for state in fleet.states if state.rate > 0
                                          and state.peak_waiting < scale.outage_cap]),
        "conservation": drops,
        "series": _series(fleet),
        "cost": cost,
    }


def _spread(values: list[float]) -> Figures:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {"p50": ordered[len(ordered) // 2],
            "p99": ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)],
            "max": ordered[-1]}


def _busiest_shard_load(fleet: Fleet) -> float:
    """The offered load of the busiest shard over its capacity (host keys: a host's rows all
    go to one shard, so shards differ; random keys spread every host over all of them)."""
    if fleet.kinesis is None:
        return math.nan
    shards = fleet.kinesis.shards
    if fleet.config.random_key:
        return sum(state.rate for state in fleet.states) / fleet.capacity_rows
    rates = [0.0] * shards
    for index, state in enumerate(fleet.states):
        rates[fleet.kinesis.shard_of(fleet.names[index])] += state.rate
    return max(rates) / (fleet.capacity_rows / shards)


def _busiest_shard_bound(fleet: Fleet, capacity: float, load: float) -> float:
    """The bound for the shard with the most to catch up (host keys put a host on one shard)."""
    if fleet.kinesis is None or fleet.config.random_key or not fleet.backlog:
        return math.nan
    shards = fleet.kinesis.shards
    waiting = [0.0] * shards
    rates = [0.0] * shards
    for index, state in enumerate(fleet.states):
        shard = fleet.kinesis.shard_of(fleet.names[index])
        waiting[shard] += state.waiting_at_outage_end
        rates[shard] += state.rate
    total_rate = sum(rates)
    per_shard = capacity / shards
    bounds = []
    for shard in range(shards):
        shard_load = load * rates[shard] / total_rate
        backlog = waiting[shard] - fleet.steady_waiting * rates[shard] / total_rate
        bounds.append(backlog / (per_shard - shard_load) if per_shard > shard_load else math.inf)
    return max(bounds)


def rollout(scale: Scale) -> Figures:
    hosts = scale.rollout_hosts
    config = scale.base(500, hosts=hosts, load=0.5, role=True,
                        start_window=scale.rollout_window_s, rows_until=scale.rollout_s,
                        measure_from=0.0)
    fleet, cost = run_fleet(config)
    series = fleet.series
    window = int(scale.rollout_window_s) + 60
    sts = series.sts_calls[:window]
    # From the host's first row (what the extension adds; osqueryd's own first row comes when
    # its first scheduled query runs).
    first = sorted(s.host.first_taken_at - s.host.appended_at[0] for s in fleet.states
                   if s.host is not None and s.host.first_taken_at is not None)
    never = sum(1 for s in fleet.states if s.host is None or s.host.first_taken_at is None)

    def rank(q: float) -> float:
        return first[min(len(first) - 1, max(0, math.ceil(q / 100 * len(first)) - 1))] if first else math.nan

    return {
        "config": {"hosts": hosts, "shards": config.shards, "load": 0.5, "role": True,
                   "start_window_s": scale.rollout_window_s, "service": config.service},
        "sts_calls": sum(series.sts_calls),
        "sts_calls_per_s_max": max(sts, default=0),
        "sts_calls_per_s_mean": sum(sts) / max(1, min(window, len(sts))),
        "sts_throttled": sum(series.sts_throttled),
        "first_delivery_p50_s": rank(50),
        "first_delivery_p99_s": rank(99),
        "first_delivery_max_s": first[-1] if first else math.nan,
        "hosts_without_delivery": never,
        "sts_calls_per_s": series.sts_calls[:window],
        **_window(fleet, 0.0, scale.rollout_s),
        **_percentiles(fleet),
        "conservation": _conservation(fleet),
        "cost": cost,
    }


def hot(scale: Scale, random_key: bool) -> Figures:
    config = scale.base(20, load=0.5, hot_share=0.01, hot_factor=20.0, random_key=random_key,
                        start_window=10.0, rows_until=scale.hot_s,
                        measure_from=min(60.0, scale.hot_s / 4))
    fleet, cost = run_fleet(config)
    classes = {klass: _percentiles(fleet, (klass,)) for klass in CLASSES}
    return {
        "config": {"hosts": config.hosts, "shards": config.shards, "load": 0.5,
                   "hot_hosts": sum(1 for s in fleet.states if s.klass == "hot"),
                   "hosts_on_hot_shards": sum(1 for s in fleet.states if s.klass == "hot_shard"),
                   "random_partition_key": random_key, "service": config.service},
        "hot_hosts": classes["hot"],
        "hot_shard_hosts": classes["hot_shard"],
        "other_hosts": classes["other"],
        **_window(fleet, config.measure_from, scale.hot_s),
        "conservation": _conservation(fleet),
        "cost": cost,
    }


SCENARIOS: dict[str, Callable[[Scale], Figures]] = {
    "steady_50": lambda scale: steady(scale, 0.5),
    "steady_90": lambda scale: steady(scale, 0.9),
    "steady_90_random_key": lambda scale: steady(scale, 0.9, random_key=True),
    "restart_50": lambda scale: steady(scale, 0.5, start_window=1.0),
    "outage": outage,
    "rollout": rollout,
    "hot_host_key": lambda scale: hot(scale, False),
    "hot_random_key": lambda scale: hot(scale, True),
}
