"""The fleet in virtual time: hosts, their query runs, and the calls between them and AWS.

A discrete-event simulation: one heap of timed events, handled in time order (ties in the order
they were scheduled), with nothing but the event's own time as the clock. Every random draw
comes from generators seeded by `FleetConfig.seed` (the extension's own draws, backoff jitter
and random partition keys, from the `random` module, seeded here), so a run is reproducible.

Each host's flusher loop is replayed pass by pass (`sim/host.py`): a pass at each wake the
accumulator asks for, right after each answer, and when the thrift side wakes it (a full batch
waiting). The real loop also passes every second while idle (`MAX_WAIT_SECONDS`); such a pass
changes nothing unless rows arrived since the last one, so the simulation makes the one-second
pass only then, at the next second of the loop's own rhythm.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from sim.host import Host, Settings
from sim.model import Firehose, Kinesis, Network, Outage, Script, Sts
from sim.stats import Histogram

# Event kinds.
START: Final = 0
ARRIVAL: Final = 1
WAKE: Final = 2
PUT_ARRIVES: Final = 3
PUT_ANSWERED: Final = 4
STS_ARRIVES: Final = 5
STS_ANSWERED: Final = 6
SAMPLE: Final = 7
OUTAGE_ENDS: Final = 8

#: What osquery adds before its result line reaches the service: `"log_type":"result",`.
RECORD_PREFIX_BYTES: Final = 20
#: A host has caught up when its oldest waiting row is younger than this many periods.
FRESH_PERIODS: Final = 3
#: Host classes for the hot-shard figures.
CLASSES: Final = ("hot", "hot_shard", "other")
ROLE_ARN: Final = "arn:aws:iam::123456789012:role/osquery-logger"


@dataclass
class FleetConfig:
    """One run: the fleet, the stream, the load and what happens to them."""

    hosts: int = 50
    service: str = "kinesis"
    shards: int = 1
    firehose_mib: float = 5.0
    #: The fleet's mean write load as a share of the stream's capacity; host rates follow,
    #: unless `quiet_rate` gives them in rows/s (a busy host: `busy_factor` times that).
    load: float = 0.5
    quiet_rate: float | None = None
    busy_share: float = 0.2
    busy_factor: float = 10.0  # a busy host writes this many times a quiet one's rows
    rate_sigma: float = 0.3  # and each host's rate varies around its class's (lognormal)
    hot_share: float = 0.0
    hot_factor: float = 20.0  # a hot host writes this many times the mean host's rows
    line_bytes: int = 700
    run_interval: float = 10.0  # mean seconds between one host's query runs (exponential)
    start_window: float = 10.0  # hosts start at uniform times in [0, start_window)
    rows_until: float = 120.0  # query runs stop here (and later if a catch-up is under way)
    measure_from: float = 30.0  # delays are counted for rows accepted from here
    outage_start: float = math.inf
    outage_length: float = 0.0
    role: bool = False  # assume an STS role (aws_sts_arn_role)
    random_key: bool = False  # aws_kinesis_random_partition_key
    aggregate: bool = False  # aws_kinesis_aggregate / aws_firehose_pack
    spool_cap_records: int = 1_000_000  # buffered_log_max
    period: int = 10  # aws_kinesis_period / aws_firehose_period
    sts_rate: float = 600.0
    rtt_median: float = 0.030
    rtt_sigma: float = 0.5
    uplink_bps: float = 100e6
    stream: str = "osquery-results"
    seed: int = 1
    drain_limit: float = 4 * 3600.0  # after rows stop, how long to wait for the rest
    time_limit: float = math.inf  # stop here whatever is left (a fleet that never catches up)
    sample_every: float = 5.0
    #: For the check against the real peers: a fixed fault pattern instead of the limits,
    #: and (time, lines) arrivals for host 0 instead of query runs.
    script: Script | None = None
    arrivals: list[tuple[float, int]] | None = None
    lines: list[bytes] | None = None


@dataclass
class _HostState:
    host: Host | None
    rate: float
    klass: str
    start: float
    busy: bool = False
    token: int = 0
    wake_at: float = math.inf
    last_pass: float = 0.0
    carry: float = 0.0
    #: Rows waiting when the outage ended, and when the host's rows were fresh again.
    waiting_at_outage_end: int = 0
    #: The most rows seen waiting at once (sampled every `sample_every` seconds).
    peak_waiting: int = 0
    caught_up_at: float | None = None


@dataclass
class Series:
    """Per second of virtual time (index = second)."""

    calls: list[int] = field(default_factory=list)
    needed: list[float] = field(default_factory=list)  # calls' accepted share, summed
    throttled_calls: list[int] = field(default_factory=list)
    error_calls: list[int] = field(default_factory=list)
    sent_entries: list[int] = field(default_factory=list)
    accepted_entries: list[int] = field(default_factory=list)
    accepted_rows: list[int] = field(default_factory=list)
    accepted_bytes: list[int] = field(default_factory=list)
    throttled_entries: list[int] = field(default_factory=list)
    sts_calls: list[int] = field(default_factory=list)
    sts_throttled: list[int] = field(default_factory=list)

    def grow(self, second: int) -> None:
        while len(self.calls) <= second:
            for values in (self.calls, self.throttled_calls, self.error_calls, self.sent_entries,
                           self.accepted_entries, self.accepted_rows, self.accepted_bytes,
                           self.throttled_entries, self.sts_calls, self.sts_throttled):
                values.append(0)
            self.needed.append(0.0)

    def window(self, name: str, start: float, end: float) -> float:
        values: list[Any] = getattr(self, name)
        return float(sum(values[max(0, int(start)):max(0, math.ceil(end))]))


def host_identifier(rng: random.Random) -> str:
    text = f"{rng.getrandbits(128):032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def result_lines(host: str, rng: random.Random, mean_bytes: int, count: int = 4) -> list[bytes]:
    """`count` osquery event-format result lines of this host, sizes spread ±30 % around
    `mean_bytes` (what `--logger_event_type=true` writes, one line per row)."""
    lines = []
    for index in range(count):
        target = max(300, int(mean_bytes * rng.uniform(0.7, 1.3)))
        row = {"name": f"pack_fleet_q{index}", "hostIdentifier": host,
               "calendarTime": "Mon Jan  5 12:00:00 2026 UTC", "unixTime": 1767614400,
               "epoch": 0, "counter": index, "numerics": False,
               "decorations": {"host_uuid": host, "hostname": f"h-{host[:8]}"},
               "columns": {"pid": str(1000 + index), "path": "", "cmdline": ""},
               "action": "added"}
        base = len(json.dumps(row, separators=(",", ":")))
        row["columns"]["path"] = "/usr/bin/" + "x" * max(0, (target - base) // 2)  # type: ignore[index]
        row["columns"]["cmdline"] = "y" * max(0, target - base - (target - base) // 2 - 9)  # type: ignore[index]
        lines.append(json.dumps(row, separators=(",", ":")).encode())
    return lines


class Fleet:
    """Runs one `FleetConfig` and gathers its figures."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = c = config
        self.rng = random.Random(c.seed)
        # The extension's own random draws (backoff jitter, random partition keys).
        random.seed(c.seed * 7919 + 1)
        end = c.outage_start + c.outage_length
        self.outage = Outage(c.outage_start, end) if c.outage_length > 0 else Outage()
        self.kinesis: Kinesis | None = None
        self.service: Kinesis | Firehose | Script
        if c.script is not None:
            self.service = c.script
        elif c.service == "kinesis":
            self.service = self.kinesis = Kinesis(c.shards, outage=self.outage)
        else:
            self.service = Firehose(c.firehose_mib, outage=self.outage)
        self.sts: Sts | Script = c.script if c.script is not None else Sts(c.sts_rate)
        self.network = Network(random.Random(c.seed + 1), c.rtt_median, c.rtt_sigma, c.uplink_bps)
        self.settings = self._settings()
        self.delays = {klass: Histogram() for klass in CLASSES}
        self.series = Series()
        self.waiting_samples: list[tuple[float, int]] = []
        self.events: list[tuple[float, int, int, int, Any]] = []
        self._order = 0
        self.now = 0.0
        self.handled = 0
        self.rows_until = c.rows_until
        self.steady_waiting = 0.0
        self.backlog = 0.0
        self.outage_over = False
        self.fleet_caught_up_at: float | None = None
        self.slowest_caught_up_at: float | None = None
        self.states: list[_HostState] = []
        self.names: list[str] = []
        self.lines: list[list[bytes]] = []
        self.capacity_rows = 0.0
        self._plan()

    # -- set-up -------------------------------------------------------------------------------

    def _settings(self) -> Settings:
        c = self.config
        svc = c.service
        options: dict[str, Any] = {
            f"aws_{svc}_stream": c.stream, f"aws_{svc}_period": c.period,
            "buffered_log_max": c.spool_cap_records, "aws_region": "us-east-1"}
        if svc == "kinesis":
            options["aws_kinesis_random_partition_key"] = c.random_key
            options["aws_kinesis_aggregate"] = c.aggregate
        else:
            options["aws_firehose_pack"] = c.aggregate
        if c.role:
            options["aws_sts_arn_role"] = ROLE_ARN
        return Settings(**options)

    def _row_costs(self, lines: list[bytes], key: int) -> tuple[float, float]:
        """(entries per row, bytes per row) as the stream counts them, for the load's rates."""
        record = sum(len(line) for line in lines) / len(lines) + RECORD_PREFIX_BYTES
        if self.config.aggregate:
            return 1 / 200, record + 6  # a KPL record / pack holds hundreds of rows
        return 1.0, record + key + (1 if self.config.service == "firehose" else 0)

    def _plan(self) -> None:
        """Each host's identity, lines, class, start and rate (rates scaled to the load)."""
        c, rng = self.config, self.rng
        weights = []
        for index in range(c.hosts):
            name = host_identifier(rng)
            self.names.append(name)
            self.lines.append(c.lines if c.lines is not None else result_lines(name, rng, c.line_bytes))
            weight = c.busy_factor if rng.random() < c.busy_share else 1.0
            weights.append(weight * math.exp(rng.gauss(0.0, c.rate_sigma)))
            del index
        mean_weight = sum(weights) / max(1, len(weights))
        hot_count = max(1, round(c.hosts * c.hot_share)) if c.hot_share else 0
        hot = set(rng.sample(range(c.hosts), hot_count))
        for index in hot:
            weights[index] = c.hot_factor * mean_weight
        entries_per_row, bytes_per_row = self._row_costs(
            [line for lines in self.lines for line in lines], 0 if c.service == "firehose" else 36)
        records_per_s, bytes_per_s = self._capacity()
        self.capacity_rows = min(records_per_s / entries_per_row, bytes_per_s / bytes_per_row)
        if c.quiet_rate is not None:
            per_weight = c.quiet_rate
        else:
            per_weight = c.load * self.capacity_rows / sum(weights) if weights else 0.0
        hot_shards: set[int] = set()
        if self.kinesis is not None and hot:
            hot_shards = {self.kinesis.shard_of(self.names[i]) for i in hot}
        for index in range(c.hosts):
            if index in hot:
                klass = "hot"
            elif self.kinesis is not None and self.kinesis.shard_of(self.names[index]) in hot_shards:
                klass = "hot_shard"
            else:
                klass = "other"
            start = rng.uniform(0.0, c.start_window) if c.start_window > 0 else 0.0
            self.states.append(_HostState(None, weights[index] * per_weight, klass, start))
            self._push(start, START, index, None)
        if c.outage_length > 0:
            self._push(c.outage_start + c.outage_length, OUTAGE_ENDS, -1, None)
        self._push(0.0, SAMPLE, -1, None)

    def _capacity(self) -> tuple[float, float]:
        if isinstance(self.service, Script):
            return math.inf, math.inf
        return self.service.capacity()

    # -- the event loop -----------------------------------------------------------------------

    def _push(self, at: float, kind: int, index: int, payload: Any) -> None:
        self._order += 1
        heapq.heappush(self.events, (at, self._order, kind, index, payload))

    def run(self) -> dict[str, Any]:
        wall, cpu = time.perf_counter(), time.process_time()
        handlers: dict[int, Callable[[int, Any], None]] = {
            START: self._start, ARRIVAL: self._arrival, WAKE: self._wake,
            PUT_ARRIVES: self._put_arrives, PUT_ANSWERED: self._put_answered,
            STS_ARRIVES: self._sts_arrives, STS_ANSWERED: self._sts_answered,
            SAMPLE: self._sample, OUTAGE_ENDS: self._outage_ends}
        events = self.events
        drain, limit = self.config.drain_limit, self.config.time_limit
        while events:
            at, _, kind, index, payload = heapq.heappop(events)
            if at > self.rows_until + drain or at > limit:
                break
            self.now = at
            handlers[kind](index, payload)
            self.handled += 1
        return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                "events": self.handled, "end_s": self.now,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    def _start(self, index: int, _: Any) -> None:
        state = self.states[index]
        c = self.config
        delays = self.delays[state.klass]
        state.host = Host(self.names[index], c.service, self.settings, self.lines[index],
                          now=self.now, delays=delays, measure_from=c.measure_from)
        state.last_pass = self.now
        if c.arrivals is not None:
            if index == 0:
                for at, count in c.arrivals:
                    self._push(max(at, self.now), ARRIVAL, index, count)
            return
        self._push(self.now + self.rng.expovariate(1 / c.run_interval), ARRIVAL, index, None)

    def _arrival(self, index: int, count: Any) -> None:
        state = self.states[index]
        host = state.host
        assert host is not None
        now = self.now
        if count is None:
            if now >= self.rows_until:
                return
            gap = self.rng.expovariate(1 / self.config.run_interval)
            self._push(now + gap, ARRIVAL, index, None)
            # The rows this run found: the host's rate over the time since its last run.
            state.carry += state.rate * gap
            count = int(state.carry)
            state.carry -= count
            if not count:
                return
        woke = host.log(count, now)
        if state.busy:
            return  # the loop goes round right after the call it is in
        if woke:
            self._pass(index)
            return
        # The loop's next one-second pass, on its own rhythm since its last pass.
        tick = state.last_pass + math.ceil(now - state.last_pass)
        if tick < state.wake_at:
            state.token += 1
            state.wake_at = tick
            self._push(tick, WAKE, index, state.token)

    def _wake(self, index: int, token: Any) -> None:
        state = self.states[index]
        if token == state.token and not state.busy:
            self._pass(index)

    def _pass(self, index: int) -> None:
        """One pass of this host's flusher loop at `now`."""
        state = self.states[index]
        host = state.host
        assert host is not None
        now = self.now
        state.last_pass = now
        state.token += 1
        state.wake_at = math.inf
        batch, wake_at = host.turn(now)
        if batch is not None:
            state.busy = True
            if host.needs_credentials(now):
                up, down = self.network.round_trip(2048)
                self._push(now + up, STS_ARRIVES, index, (batch, now, down))
            else:
                self._put(index, batch, now)
        elif wake_at < math.inf:
            state.wake_at = wake_at
            self._push(wake_at, WAKE, index, state.token)

    def _put(self, index: int, batch: Any, turn_began: float) -> None:
        host = self.states[index].host
        assert host is not None
        entries = host.entries(batch)
        if self.kinesis is not None:
            shard_of = self.kinesis.shard_of
            counted = [(shard_of(key), size) for key, size in entries]
        else:
            counted = [(0, size) for _, size in entries]
        # Base64 data in JSON, plus the keys and framing.
        request_bytes = sum(size for _, size in counted) * 4 // 3 + 40 * len(counted) + 200
        up, down = self.network.round_trip(request_bytes)
        self._push(self.now + up, PUT_ARRIVES, index, (batch, turn_began, counted, down))

    def _put_arrives(self, index: int, payload: Any) -> None:
        batch, turn_began, counted, down = payload
        now = self.now
        answer = self.service.put(now, counted)
        series = self.series
        second = int(now)
        series.grow(second)
        series.calls[second] += 1
        series.sent_entries[second] += len(counted)
        if answer.error is not None:
            series.error_calls[second] += 1
            if answer.error[0] != "InternalFailure":
                series.throttled_calls[second] += 1
                series.throttled_entries[second] += len(counted)
        else:
            accepted = rows = volume = throttled = 0
            for entry, (_, size), code in zip(batch.entries, counted, answer.codes, strict=True):
                if code is None:
                    accepted += 1
                    rows += entry.rows
                    volume += size
                else:
                    throttled += 1
            series.accepted_entries[second] += accepted
            series.accepted_rows[second] += rows
            series.accepted_bytes[second] += volume
            series.throttled_entries[second] += throttled
            if throttled:
                series.throttled_calls[second] += 1
            series.needed[second] += accepted / len(counted) if counted else 1.0
        self._push(now + down, PUT_ANSWERED, index, (batch, turn_began, answer, now))

    def _put_answered(self, index: int, payload: Any) -> None:
        batch, turn_began, answer, taken_at = payload
        state = self.states[index]
        host = state.host
        assert host is not None
        host.answered(batch, turn_began, answer, taken_at)
        state.busy = False
        self._pass(index)

    def _sts_arrives(self, index: int, payload: Any) -> None:
        batch, turn_began, down = payload
        error = self.sts.assume_role(self.now)
        second = int(self.now)
        self.series.grow(second)
        self.series.sts_calls[second] += 1
        if error is not None:
            self.series.sts_throttled[second] += 1
        self._push(self.now + down, STS_ANSWERED, index, (batch, turn_began, error))

    def _sts_answered(self, index: int, payload: Any) -> None:
        batch, turn_began, error = payload
        state = self.states[index]
        host = state.host
        assert host is not None
        if host.assumed_role(batch, turn_began, self.now, error):
            self._put(index, batch, turn_began)
            return
        state.busy = False
        self._pass(index)

    def _sample(self, _: int, __: Any) -> None:
        total = 0
        for state in self.states:
            if state.host is not None:
                waiting = state.host.waiting()
                total += waiting
                state.peak_waiting = max(state.peak_waiting, waiting)
        self.waiting_samples.append((self.now, total))
        if self.outage_over:
            self._catch_up(total)
        busy = any(state.busy for state in self.states) or total
        if self.now < self.rows_until or busy:
            self._push(self.now + self.config.sample_every, SAMPLE, -1, None)

    # -- the outage's catch-up ----------------------------------------------------------------

    def _outage_ends(self, _: int, __: Any) -> None:
        """The backlog is what waits beyond the steady level; it must drain at no more than
        the stream's spare capacity. Rows keep coming at the steady load until it has."""
        start = self.config.outage_start
        steady = [value for at, value in self.waiting_samples if start / 2 <= at < start]
        self.steady_waiting = sum(steady) / len(steady) if steady else 0.0
        total = 0
        for state in self.states:
            if state.host is not None:
                state.waiting_at_outage_end = state.host.waiting()
                total += state.waiting_at_outage_end
        self.backlog = max(0.0, total - self.steady_waiting)
        self.outage_over = True
        self.rows_until = math.inf

    def _catch_up(self, total: int) -> None:
        """Caught up: the fleet when its waiting rows are back within 1 % of the backlog of
        their steady level; a host when its oldest waiting row is again younger than
        `FRESH_PERIODS` periods (what it is in steady state)."""
        now = self.now
        if self.fleet_caught_up_at is None and \
                total <= self.steady_waiting + 0.01 * self.backlog:
            self.fleet_caught_up_at = now
        fresh = FRESH_PERIODS * self.config.period
        late = 0
        for state in self.states:
            host = state.host
            if host is None or state.caught_up_at is not None:
                continue
            oldest = host.spool.oldest_accepted_at()
            if oldest is None or now - oldest <= fresh:
                state.caught_up_at = now
            else:
                late += 1
        if not late and self.fleet_caught_up_at is not None and self.slowest_caught_up_at is None:
            self.slowest_caught_up_at = now
            self.outage_over = False
            # Caught up: a few more minutes of steady load, then the rows stop.
            self.rows_until = now + 300.0

    # -- checks -------------------------------------------------------------------------------

    def conservation(self) -> dict[str, int]:
        """Summed over the hosts: see `Host.conservation`."""
        total: dict[str, int] = {}
        for state in self.states:
            if state.host is None:
                continue
            for key, value in state.host.conservation().items():
                total[key] = total.get(key, 0) + value
        total["hosts_dropping"] = sum(1 for s in self.states if s.host is not None
                                      and any(s.host.counters.dropped.values()))
        total["hosts_over_cap"] = sum(1 for s in self.states if s.host is not None
                                      and s.host.spool.given_up)
        return total
