"""The fleet scenarios at a small size (50 hosts, about two minutes of virtual time each): every
row is delivered once or dropped and counted, never both, whatever happens to the fleet."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from sim.host import quiet_extension_logs
from sim.scenarios import SCENARIOS, Scale

SMALL = Scale(hosts=50, steady_s=150.0, warmup_s=30.0, outage_start_s=60.0, outage_s=60.0,
              outage_cap=1_000_000, rollout_hosts=100, rollout_window_s=30.0, rollout_s=120.0,
              hot_s=120.0)


@pytest.fixture(autouse=True)
def _quiet() -> None:
    quiet_extension_logs()


def balanced(figures: dict[str, Any]) -> None:
    totals = figures["conservation"]
    assert totals["appended"] == totals["accepted"] > 0
    assert totals["waiting"] == 0, "the run drains: nothing left waiting"
    assert totals["delivered_twice"] == 0, "no row taken by AWS twice"
    assert totals["delivered_seen"] == totals["delivered_counted"], "the counters agree with AWS"
    assert totals["dropped_counted"] == totals["given_up_undelivered"], \
        "each drop counted once, and only rows never delivered"
    assert totals["appended"] == totals["delivered_seen"] + totals["dropped_counted"]
    assert totals["balanced"]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_row_is_delivered_once_or_dropped_and_counted(name: str) -> None:
    figures = SCENARIOS[name](SMALL)
    balanced(figures)
    assert figures["cost"]["wall_s"] < 20


def test_an_outage_drops_rows_only_at_the_hosts_whose_cap_it_filled_and_counts_them() -> None:
    figures = SCENARIOS["outage"](replace(SMALL, outage_cap=400))
    balanced(figures)
    assert figures["dropped_rows"] > 0
    assert 0 < figures["hosts_dropping"] == figures["hosts_over_cap"] < 50, \
        "the quiet hosts' spools held the outage; the busiest ones dropped their oldest rows"


def test_the_backlog_never_drains_faster_than_the_stream_allows() -> None:
    figures = SCENARIOS["outage"](replace(SMALL, outage_s=120.0))
    balanced(figures)
    assert figures["backlog_rows"] > 0.8 * 120 * figures["load_rows_per_s"]
    assert figures["catch_up_s"] >= 0.95 * figures["bound_s"], "the model keeps the shard limit"
    assert figures["outage"]["error_calls"] == figures["outage"]["calls"] > 0


def test_a_rollout_assumes_the_role_once_per_host_and_delivers_from_every_host() -> None:
    figures = SCENARIOS["rollout"](SMALL)
    balanced(figures)
    assert figures["sts_calls"] == SMALL.rollout_hosts
    assert figures["hosts_without_delivery"] == 0
    assert figures["first_delivery_max_s"] < 60


def test_random_keys_take_the_load_off_the_hot_shards() -> None:
    host_key = SCENARIOS["hot_host_key"](replace(SMALL, hosts=100))
    random_key = SCENARIOS["hot_random_key"](replace(SMALL, hosts=100))
    assert host_key["config"]["hot_hosts"] == 1
    assert host_key["hot_hosts"]["delay_p99_s"] > 1.5 * random_key["hot_hosts"]["delay_p99_s"]
    assert host_key["hot_hosts"]["delay_p50_s"] > 3 * random_key["hot_hosts"]["delay_p50_s"]
    assert host_key["entries_throttled"] > 10 * random_key["entries_throttled"]


def test_a_run_repeats_exactly_with_its_seed_and_differs_with_another() -> None:
    first = SCENARIOS["steady_90"](SMALL)
    again = SCENARIOS["steady_90"](SMALL)
    other = SCENARIOS["steady_90"](replace(SMALL, seed=2))
    for key in ("delay_p50_s", "delay_p99_s", "calls", "entries_throttled", "conservation"):
        assert first[key] == again[key]
    assert first["conservation"]["appended"] != other["conservation"]["appended"]
    assert math.isfinite(first["delay_p99_s"])
