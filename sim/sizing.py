"""How much busier than the mean the busiest shard is, with the host as partition key.

    python -m sim.sizing [--hosts 1000] [--seeds 20]

For the simulation's fleet (80 % quiet hosts, 20 % busy at 10x, each rate spread lognormally)
spread over shards by the MD5 of each host's identifier, as Kinesis does: the busiest shard's
offered load over the mean shard's, at several hosts per shard, over many seeds (fleets). No
simulation runs; only the fleets are drawn. The README's shard sizing comes from its output.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from sim.fleet import Fleet, FleetConfig

HOSTS_PER_SHARD = (500, 250, 100, 50, 20)
RATES = (0.5, 1, 2, 5, 10, 20)
SHARD_ROWS = 1000
#: The busiest shard's share of its capacity to size for (90 %: the steady runs' delays stay
#: at their 50 % level up to there).
HEADROOM = 0.9


def busiest_over_mean(hosts: int, hosts_per_shard: int, seed: int) -> float:
    fleet = Fleet(FleetConfig(hosts=hosts, shards=max(1, round(hosts / hosts_per_shard)),
                              seed=seed, quiet_rate=1.0))
    assert fleet.kinesis is not None
    loads = [0.0] * fleet.kinesis.shards
    for index, state in enumerate(fleet.states):
        loads[fleet.kinesis.shard_of(fleet.names[index])] += state.rate
    return max(loads) / statistics.fmean(loads)


def shard_loads(hosts: int, shards: int, seed: int, rate: float) -> list[float]:
    """Rows/s offered to each shard by a fleet whose hosts send `rate` rows/s on average."""
    fleet = Fleet(FleetConfig(hosts=hosts, shards=shards, seed=seed, quiet_rate=1.0))
    assert fleet.kinesis is not None
    loads = [0.0] * shards
    for index, state in enumerate(fleet.states):
        loads[fleet.kinesis.shard_of(fleet.names[index])] += state.rate
    scale = rate * hosts / sum(loads)
    return [load * scale for load in loads]


def shards_needed(hosts: int, rate: float, seeds: int, headroom: float) -> int:
    """The fewest shards at which the busiest shard stays under `headroom` of 1,000 rows/s in
    nine fleets out of ten."""
    shards = max(1, int(rate * hosts / (SHARD_ROWS * headroom)))
    while True:
        busiest = sorted(max(shard_loads(hosts, shards, seed, rate)) for seed in range(1, seeds + 1))
        if busiest[int(0.9 * (seeds - 1))] <= SHARD_ROWS * headroom:
            return shards
        shards += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.sizing", description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"{args.hosts} hosts, {args.seeds} fleets each: the busiest shard's load / the mean's")
    print("| hosts per shard | shards | median | 90th percentile | worst |")
    print("|---|---|---|---|---|")
    for per_shard in HOSTS_PER_SHARD:
        ratios = sorted(busiest_over_mean(args.hosts, per_shard, seed)
                        for seed in range(1, args.seeds + 1))
        print(f"| {per_shard} | {max(1, round(args.hosts / per_shard))} | "
              f"{statistics.median(ratios):.2f} | {ratios[int(0.9 * (len(ratios) - 1))]:.2f} | "
              f"{ratios[-1]:.2f} |")
    print()
    print(f"Shards per {args.hosts} hosts (rows up to ~1 KiB: 1,000 rows/s a shard), the busiest "
          f"shard at most {HEADROOM:.0%} busy in 9 fleets of 10")
    print("| rows/s per host (mean) | host as partition key | random partition keys |")
    print("|---|---|---|")
    for rate in RATES:
        random_keys = max(1, -(-int(rate * args.hosts) // int(SHARD_ROWS * HEADROOM)))
        print(f"| {rate:g} | {shards_needed(args.hosts, rate, args.seeds, HEADROOM)} | "
              f"{random_keys} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
