"""Adaptive pacing of one destination: how many records a put may carry and when it may go.

Why: a fleet shares its stream. Backoff spaces one host's retries, but after an outage every
host has a backlog, and once its first put succeeds it sends full batches back to back: the
shards take 1,000 records/s each, the fleet offers many times that, and most entries come back
throttled and go again, over three attempts per row in the fleet simulation's recovery from an
hour's outage (`make simulate`, README "Fleet at scale"). Pacing has a host that keeps being
throttled send at the rate its stream actually takes from it:

- Unpaced until `ENGAGE_AFTER` puts in a row come back throttled (an entry or the whole call):
  fewer is a burst, which the backoff's jitter spreads well enough.
- Then a rate in records per second, the unit a shard counts: first what the stream took from
  this host over those puts; after each answer, cut when AWS took less than `TARGET_TAKEN` of
  the put (by the share taken over the target, at most halved), raised by half per period when
  puts use their whole allowance and are taken: cut on throttling, raise on success, as the AWS
  SDKs' adaptive retry mode and Vector's adaptive request concurrency do. The rise is per
  period, not per put, so a host making many puts grows no faster than one making one.
- A put carries at most a period's worth at that rate (smaller batches while throttled), and
  the next goes when that many records' time has passed, at most a period, jittered so hosts
  cut at the same moment do not come back together. A host paced to a few records a second
  still makes one put a period, as in steady state: a Firehose stream's requests/s quota sees
  no more calls than usual.
- Unpaced again above `UNPACED_RATE` (more than a host gets from any shard), or after
  `UNPACE_AFTER_S` without a throttle while it has no backlog.
- A put that failed whole for another reason (an outage's 5xx, timeouts) makes the next put a
  probe of `PROBE_RECORDS` record, until one goes through: an hour's outage costs each host a
  one-record call per backoff instead of a full batch each.

Kinesis and Firehose send no Retry-After: the answers' shares are the only hint there is.

Pure state, with `now` passed in: the accumulator asks `ready`, `allowed_at` and `limit` and
reports each answer. `first_flush_delay` spreads the first flush of hosts started together.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Final

from .retry import jitter_source

#: Throttled puts in a row that make congestion rather than a burst.
ENGAGE_AFTER: Final = 3
#: The share of a put a saturated stream should take (its inverse: attempts per record): below
#: it the rate is cut, at or above it the rate may rise.
TARGET_TAKEN: Final = 0.7
#: The deepest cut one answer makes.
DECREASE_FLOOR: Final = 0.5
#: The rise per period of puts that use their whole allowance.
INCREASE: Final = 1.5
#: Never slower than this (records/s): a host keeps probing for its share.
MIN_RATE: Final = 0.05
#: Faster than this no host needs pacing: a shard takes 1,000 records/s.
UNPACED_RATE: Final = 5000.0
#: Unpaced again after this long without a throttle, once the host has no backlog.
UNPACE_AFTER_S: Final = 60.0
#: A paced wait is drawn from (1 - JITTER, 1 + JITTER) times its length.
JITTER: Final = 0.5
#: Records in the put that follows a put failed whole (not throttled).
PROBE_RECORDS: Final = 1


@dataclass
class Pacing:
    """One destination's sending rate (records/s, infinite while unpaced) and next put time."""

    rate: float = math.inf
    allowed_at: float = 0.0
    probing: bool = False
    last_put: float | None = None
    last_throttled: float = -math.inf
    throttled_in_a_row: int = 0
    #: When the current run of throttled puts began, and the records AWS took during it.
    run_start: float = 0.0
    run_taken: int = 0
    #: The allowance of the put last handed out, and the period it was for.
    given: int = 0
    period: float = 10.0
    _random: random.Random = field(default_factory=jitter_source, repr=False)

    def ready(self, now: float) -> bool:
        return now >= self.allowed_at

    def limit(self, most: int, period: float) -> int:
        """Records the next put may carry: `most` (the service's limit) while unpaced, a
        period's worth while paced, one after a put that failed whole."""
        self.period = period
        if self.probing:
            self.given = min(most, PROBE_RECORDS)
        elif math.isinf(self.rate):
            self.given = most
        else:
            self.given = max(1, min(most, int(self.rate * period)))
        return self.given

    def answered(self, now: float, sent: int, taken: int, throttled: int) -> None:
        """A put of `sent` records, made at `now`, was answered: AWS took `taken` and refused
        `throttled` of the rest for the stream's rate."""
        since = now - self.last_put if self.last_put is not None else math.inf
        self.last_put = now
        self.probing = False
        if throttled:
            if not self.throttled_in_a_row:
                self.run_start, self.run_taken = now, 0
            self.throttled_in_a_row += 1
            self.run_taken += taken
            self.last_throttled = now
            if math.isinf(self.rate) and self.throttled_in_a_row >= ENGAGE_AFTER:
                self.rate = self.run_taken / max(now - self.run_start, 0.1)
        else:
            self.throttled_in_a_row = 0
        if math.isfinite(self.rate):
            self._adjust(now, since, sent, taken / max(1, sent), bool(throttled))
        if math.isinf(self.rate):
            self.allowed_at = now
        else:
            wait = min(sent / self.rate, self.period)
            self.allowed_at = now + wait * self._random.uniform(1 - JITTER, 1 + JITTER)

    def _adjust(self, now: float, since: float, sent: int, share: float, throttled: bool) -> None:
        if throttled and share < TARGET_TAKEN:
            self.rate *= max(DECREASE_FLOOR, share / TARGET_TAKEN)
        elif sent >= self.given:
            self.rate *= INCREASE ** (min(since, self.period) / self.period)
        elif not throttled and now - self.last_throttled >= UNPACE_AFTER_S:
            self.rate = math.inf  # no backlog and no throttle for a while: congestion is over
            return
        self.rate = max(MIN_RATE, self.rate)
        if self.rate > UNPACED_RATE:
            self.rate = math.inf

    def failed(self, now: float, sent: int, *, throttled: bool, expired: bool = False) -> None:
        """A put of `sent` records, made at `now`, failed whole. After credentials that ran
        out (`expired`: renewed before the next put) the next put need not be a probe."""
        if throttled:
            self.answered(now, sent, 0, sent)
            return
        self.last_put = now
        self.probing = self.probing or not expired


def first_flush_delay(period: float) -> float:
    """Seconds from start to a destination's first flush: a period on average, drawn over a
    whole period's width. Hosts started together (a fleet-wide restart, an upgrade pushed at
    once) would otherwise flush in step every period, each flush a burst at the shards."""
    return period * random.uniform(0.5, 1.5)
