"""AWS as the simulated hosts meet it: Kinesis shards, a Firehose delivery stream, STS, the network.

Only this is modelled; everything on the hosts is the extension's own code (`sim/host.py`).
Each limit is AWS's documented one (the README's "Fleet at scale" cites the pages):

- Kinesis Data Streams: each shard takes 1,000 records/s and 1 MiB/s of writes, a record's
  size counting its partition key; a partition key maps to a shard by the MD5 of the key as a
  128-bit number, the hash space split evenly between the shards (what CreateStream with a
  shard count makes). PutRecords is answered per entry: a record over its shard's limit gets
  ``ProvisionedThroughputExceededException`` and the others are taken (HTTP 200,
  FailedRecordCount). AWS enforces the limits per second ("micro spikes" throttle although the
  minute's average is under the limit): here a token bucket per shard holding one second's
  worth, refilled continuously.
- Firehose (Direct PUT): per delivery stream, records/s, requests/s and MiB/s quotas, which
  scale together (us-east-1: 500,000 records/s, 2,000 requests/s, 5 MiB/s). A call over the
  request rate is refused whole with ``ServiceUnavailableException`` (HTTP 503); records over
  the record or byte rate fail one by one with the same code.
- STS: 600 requests/s per account and Region shared by AssumeRole and its siblings, a token
  bucket refilled every second (AWS's description); over it, ``Throttling`` (HTTP 400).
- The network: a round trip drawn from a lognormal (median 30 ms, sigma 0.5: p99 about 100 ms),
  plus the request's bytes at the host's uplink (100 Mbit/s). AWS publishes no PutRecords
  latency; this is an assumption and a flag, and delays are reported in seconds where 100 ms
  hardly shows.
- An outage: every call in [start, end) is answered ``InternalFailure`` (HTTP 500), as a
  Region's failing front ends answer; STS keeps working (it is another service).

No I/O and no import of the extension: the host adapter turns these answers into what botocore
would have given the extension.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

MIB: Final = 1 << 20
#: Kinesis Data Streams, per shard (Quotas and limits).
SHARD_RECORDS_PER_S: Final = 1000
SHARD_BYTES_PER_S: Final = MIB
#: Firehose Direct PUT in us-east-1, us-west-2, eu-west-1 (Amazon Data Firehose Quota); the
#: three scale together when raised, so a stream is described by its MiB/s.
FIREHOSE_MIB_PER_S: Final = 5.0
FIREHOSE_RECORDS_PER_MIB: Final = 500_000 / 5
FIREHOSE_REQUESTS_PER_MIB: Final = 2_000 / 5
#: STS: requests per second per account per Region (IAM and AWS STS quotas).
STS_REQUESTS_PER_S: Final = 600

THROTTLED_KINESIS: Final = "ProvisionedThroughputExceededException"
THROTTLED_FIREHOSE: Final = "ServiceUnavailableException"
THROTTLED_STS: Final = "Throttling"
OUTAGE_CODE: Final = "InternalFailure"


class TokenBucket:
    """`rate` tokens a second, at most `capacity` saved up; starts full."""

    __slots__ = ("capacity", "last", "level", "rate")

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.last = 0.0

    def refill(self, now: float) -> None:
        if now > self.last:
            self.level = min(self.capacity, self.level + (now - self.last) * self.rate)
            self.last = now


@dataclass(slots=True)
class Answer:
    """What a put call got: a whole-call error (code, HTTP status), or one code per entry
    (None: taken)."""

    error: tuple[str, int] | None
    codes: list[str | None]


@dataclass(frozen=True, slots=True)
class Outage:
    start: float = math.inf
    end: float = math.inf

    def down(self, now: float) -> bool:
        return self.start <= now < self.end


class Kinesis:
    """One stream of `shards` shards."""

    name: Final = "kinesis"

    def __init__(self, shards: int, *, outage: Outage = Outage()) -> None:
        self.shards = shards
        self.outage = outage
        self.records = [TokenBucket(SHARD_RECORDS_PER_S, SHARD_RECORDS_PER_S) for _ in range(shards)]
        self.bytes = [TokenBucket(SHARD_BYTES_PER_S, SHARD_BYTES_PER_S) for _ in range(shards)]
        self._shard_of: dict[str, int] = {}

    def shard_of(self, key: str) -> int:
        """The shard a partition key lands on (cached: a host's key recurs)."""
        shard = self._shard_of.get(key)
        if shard is None:
            digest = int.from_bytes(hashlib.md5(key.encode(), usedforsecurity=False).digest())
            shard = (digest * self.shards) >> 128
            if len(self._shard_of) < 1_000_000:  # random keys never recur: don't keep them all
                self._shard_of[key] = shard
        return shard

    def capacity(self) -> tuple[float, float]:
        """(records/s, bytes/s) of the whole stream."""
        return self.shards * SHARD_RECORDS_PER_S, self.shards * SHARD_BYTES_PER_S

    def put(self, now: float, entries: Sequence[tuple[int, int]]) -> Answer:
        """A PutRecords call arriving at `now`: entries as (shard, bytes incl. the key)."""
        if self.outage.down(now):
            return Answer((OUTAGE_CODE, 500), [])
        codes: list[str | None] = []
        records, sizes = self.records, self.bytes
        for shard, size in entries:
            count, volume = records[shard], sizes[shard]
            count.refill(now)
            volume.refill(now)
            if count.level >= 1 and volume.level >= size:
                count.level -= 1
                volume.level -= size
                codes.append(None)
            else:
                codes.append(THROTTLED_KINESIS)
        return Answer(None, codes)


class Firehose:
    """One delivery stream with a throughput quota of `mib_per_s` (the other two scale)."""

    name: Final = "firehose"

    def __init__(self, mib_per_s: float = FIREHOSE_MIB_PER_S, *, outage: Outage = Outage()) -> None:
        self.mib_per_s = mib_per_s
        self.outage = outage
        records = mib_per_s * FIREHOSE_RECORDS_PER_MIB
        requests = mib_per_s * FIREHOSE_REQUESTS_PER_MIB
        self.records = TokenBucket(records, records)
        self.requests = TokenBucket(requests, requests)
        self.bytes = TokenBucket(mib_per_s * MIB, mib_per_s * MIB)

    def capacity(self) -> tuple[float, float]:
        return self.records.rate, self.bytes.rate

    def put(self, now: float, entries: Sequence[tuple[int, int]]) -> Answer:
        """A PutRecordBatch call arriving at `now` (the shard of each entry is ignored)."""
        if self.outage.down(now):
            return Answer((OUTAGE_CODE, 500), [])
        self.requests.refill(now)
        if self.requests.level < 1:
            return Answer((THROTTLED_FIREHOSE, 503), [])
        self.requests.level -= 1
        self.records.refill(now)
        self.bytes.refill(now)
        codes: list[str | None] = []
        for _, size in entries:
            if self.records.level >= 1 and self.bytes.level >= size:
                self.records.level -= 1
                self.bytes.level -= size
                codes.append(None)
            else:
                codes.append(THROTTLED_FIREHOSE)
        return Answer(None, codes)


class Sts:
    """The account's STS request rate in one Region."""

    def __init__(self, requests_per_s: float = STS_REQUESTS_PER_S) -> None:
        self.bucket = TokenBucket(requests_per_s, requests_per_s)

    def assume_role(self, now: float) -> tuple[str, int] | None:
        """None when the call is served, else its error (code, HTTP status)."""
        self.bucket.refill(now)
        if self.bucket.level < 1:
            return THROTTLED_STS, 400
        self.bucket.level -= 1
        return None


@dataclass
class Network:
    """Round trips: lognormal around `median_s` plus the request's bytes at `uplink_bps`."""

    rng: random.Random
    median_s: float = 0.030
    sigma: float = 0.5
    uplink_bps: float = 100e6

    def round_trip(self, request_bytes: int) -> tuple[float, float]:
        """(time to reach the service, time for the answer to come back)."""
        rtt = self.median_s * math.exp(self.sigma * self.rng.gauss(0.0, 1.0))
        return rtt / 2 + request_bytes * 8 / self.uplink_bps, rtt / 2


@dataclass
class Script:
    """A fixed pattern of faults by call, exactly as `tests/localaws.FaultProxy` plays them:
    each call takes the first rule (in the order given) that matches its operation and has calls
    left; a call no rule matches is served. For checking the model against the real peers."""

    service: str
    rules: list[list[object]] = field(default_factory=list)
    #: Every call as the proxy records it: (operation, entries).
    calls: list[tuple[str, int]] = field(default_factory=list)

    def throttle(self, n: int, target: str) -> None:
        self.rules.append(["throttle", n, target])

    def fail_entries(self, indices: Sequence[int], times: int = 1) -> None:
        self.rules.append(["fail_entries", times, "put", frozenset(indices)])

    def error(self, n: int, status: int = 500, target: str = "put") -> None:
        self.rules.append(["error", n, target, status])

    def _take(self, target: str) -> list[object] | None:
        for rule in self.rules:
            remaining = rule[1]
            assert isinstance(remaining, int)
            if remaining > 0 and rule[2] == target:
                rule[1] = remaining - 1
                return rule
        return None

    def put(self, now: float, entries: Sequence[tuple[int, int]]) -> Answer:
        del now
        self.calls.append(("PutRecords" if self.service == "kinesis" else "PutRecordBatch",
                           len(entries)))
        rule = self._take("put")
        throttled = THROTTLED_KINESIS if self.service == "kinesis" else THROTTLED_FIREHOSE
        if rule is None:
            return Answer(None, [None] * len(entries))
        if rule[0] == "throttle":
            return Answer((throttled, 400 if self.service == "kinesis" else 503), [])
        if rule[0] == "error":
            status = rule[3]
            assert isinstance(status, int)
            return Answer(("ServiceUnavailable" if status == 503 else OUTAGE_CODE, status), [])
        indices = rule[3]
        assert isinstance(indices, frozenset)
        return Answer(None, [throttled if i in indices else None for i in range(len(entries))])

    def assume_role(self, now: float) -> tuple[str, int] | None:
        del now
        self.calls.append(("AssumeRole", 0))
        rule = self._take("sts")
        return None if rule is None else (THROTTLED_STS, 400)
