"""Adaptive pacing of a destination (_pacing.py): engaged by congestion, cut and raised by the
share AWS takes, smaller puts while throttled, probes after a failed call, spread first flushes."""

from __future__ import annotations

import math
import random

import pytest

from osquery_aws_logger.delivery.pacing import (
    DECREASE_FLOOR,
    ENGAGE_AFTER,
    INCREASE,
    MIN_RATE,
    PROBE_RECORDS,
    TARGET_TAKEN,
    UNPACE_AFTER_S,
    UNPACED_RATE,
    Pacing,
    first_flush_delay,
)

PERIOD = 10.0


def paced(rate: float) -> Pacing:
    """Paced at `rate`, its last put at 0 s."""
    pacing = Pacing(_random=random.Random(1), rate=rate, last_put=0.0)
    pacing.limit(500, PERIOD)
    return pacing


def test_unpaced_until_puts_come_back_throttled_several_times_in_a_row() -> None:
    pacing = Pacing(_random=random.Random(1))
    assert pacing.limit(500, PERIOD) == 500 and pacing.ready(0.0)
    pacing.answered(0.0, 500, 200, 300)
    pacing.answered(0.5, 500, 200, 300)
    pacing.answered(1.0, 500, 500, 0)  # a burst: the run of throttled puts is broken
    assert math.isinf(pacing.rate) and pacing.allowed_at == 1.0
    for turn in range(ENGAGE_AFTER):
        pacing.limit(500, PERIOD)
        pacing.answered(2.0 + turn, 500, 200, 300)
    # The stream took 600 records over the run's two seconds; the last put, under the target,
    # cuts that at once.
    assert pacing.rate == pytest.approx(300 * max(DECREASE_FLOOR, 0.4 / TARGET_TAKEN))
    assert pacing.limit(500, PERIOD) == 500, "a period's worth, at most a put's worth"


def test_a_paced_destination_sends_a_periods_worth_per_put_and_waits_for_its_rate() -> None:
    pacing = paced(3.0)
    assert pacing.limit(500, PERIOD) == 30, "smaller batches while throttled"
    pacing.answered(10.0, 30, 30, 0)
    assert pacing.rate == pytest.approx(3.0 * INCREASE), "its whole allowance, taken: a rise"
    wait = pacing.allowed_at - 10.0
    assert 0.5 * 30 / 4.5 <= wait <= 1.5 * 30 / 4.5, "those records' time at 4.5/s, jittered"
    assert not pacing.ready(10.0 + wait - 0.01) and pacing.ready(10.0 + wait)
    slow = paced(MIN_RATE)
    assert slow.limit(500, PERIOD) == 1
    slow.answered(0.0, 1, 1, 0)
    assert slow.allowed_at <= 1.5 * PERIOD, "never more than a period (jittered) between puts"


def test_a_put_taken_under_the_target_cuts_the_rate_by_the_share_at_most_by_half() -> None:
    pacing = paced(100.0)
    pacing.answered(0.0, 500, int(500 * TARGET_TAKEN * 0.8), 100)
    assert pacing.rate == pytest.approx(80.0), "80 % of the target taken: 80 % of the rate"
    pacing.limit(500, PERIOD)
    pacing.answered(1.0, 500, 5, 495)
    assert pacing.rate == pytest.approx(40.0), "next to nothing taken: halved, no more"
    for turn in range(40):
        pacing.limit(500, PERIOD)
        pacing.answered(2.0 + turn, 1, 0, 1)
    assert pacing.rate == MIN_RATE, "never below the floor: a host keeps probing"


def test_puts_that_use_their_allowance_raise_the_rate_by_half_a_period_however_many() -> None:
    few, many = paced(50.0), paced(50.0)
    for turn in range(1, 3):
        few.limit(500, PERIOD)
        few.answered(turn * 10.0, 500, 500, 0)
    for turn in range(1, 21):
        many.limit(500, PERIOD)
        many.answered(turn * 1.0, 500, 500, 0)
    assert few.rate == pytest.approx(50.0 * INCREASE**2)
    assert many.rate == pytest.approx(50.0 * INCREASE**2), "two periods of puts: two rises"
    throttled = paced(50.0)
    throttled.answered(10.0, 500, int(500 * TARGET_TAKEN) + 1, 100)
    assert throttled.rate > 50.0, "throttled a little, taken above the target: may still rise"
    idle = paced(50.0)
    idle.last_throttled = 5.0
    idle.answered(10.0, 20, 20, 0)
    assert idle.rate == 50.0, "a put under its allowance earns no rise"


def test_pacing_ends_when_congestion_is_over() -> None:
    pacing = paced(50.0)
    pacing.last_throttled = 0.0
    pacing.answered(30.0, 20, 20, 0)
    assert pacing.rate == 50.0, "no backlog, but throttled half a minute ago"
    pacing.limit(500, PERIOD)
    pacing.answered(UNPACE_AFTER_S + 1, 20, 20, 0)
    assert math.isinf(pacing.rate) and pacing.limit(500, PERIOD) == 500
    fast = paced(UNPACED_RATE / INCREASE + 1)
    fast.answered(20.0, 500, 500, 0)
    assert math.isinf(fast.rate), "past what any shard gives a host"


def test_a_put_failed_whole_is_followed_by_a_probe_until_one_goes_through() -> None:
    pacing = Pacing(_random=random.Random(1))
    pacing.failed(0.0, 500, throttled=False)
    assert pacing.limit(500, PERIOD) == PROBE_RECORDS == 1
    pacing.failed(30.0, 1, throttled=False)
    assert pacing.limit(500, PERIOD) == 1, "still down: still probing"
    pacing.answered(60.0, 1, 1, 0)
    assert pacing.limit(500, PERIOD) == 500
    renewed = Pacing(_random=random.Random(1))
    renewed.failed(0.0, 500, throttled=False, expired=True)
    assert renewed.limit(500, PERIOD) == 500, "expired credentials are renewed: no probe"
    whole = paced(100.0)
    whole.failed(0.0, 500, throttled=True)
    assert whole.rate == pytest.approx(100.0 * DECREASE_FLOOR), "a call throttled whole: halved"


def test_first_flushes_of_hosts_started_together_spread_over_a_period() -> None:
    random.seed(4)
    delays = [first_flush_delay(PERIOD) for _ in range(2000)]
    assert 5.0 <= min(delays) < 5.2 and 14.8 < max(delays) <= 15.0
    assert abs(sum(delays) / len(delays) - PERIOD) < 0.2, "a period on average"


def test_hosts_sharing_a_shard_converge_on_its_rate_without_wasting_calls() -> None:
    """Forty hosts with endless backlogs, one shard (1,000 records/s, a second's worth
    saved up), 30 ms round trips: the pacing alone must keep the shard busy and most entries
    taken at their first try, and starve nobody."""
    rng = random.Random(2)
    hosts = [Pacing(_random=random.Random(index)) for index in range(40)]
    level, last = 1000.0, 0.0
    ready_at = [rng.uniform(0.0, 1.0) for _ in hosts]
    sent = taken = 0
    got = [0] * len(hosts)
    now = 0.0
    while now < 600.0:
        index = min(range(len(hosts)), key=ready_at.__getitem__)
        now = ready_at[index]
        level = min(1000.0, level + (now - last) * 1000.0)
        last = now
        count = hosts[index].limit(500, PERIOD)
        took = min(count, int(level))
        level -= took
        hosts[index].answered(now, count, took, count - took)
        if now > 120.0:
            sent, taken, got[index] = sent + count, taken + took, got[index] + took
        ready_at[index] = max(now + 0.03, hosts[index].allowed_at)
    assert taken / 480.0 > 900, "the shard stays over 90 % busy"
    assert sent / taken < 1.6, "under 1.6 attempts per record"
    assert min(got) > 0.2 * taken / len(hosts), "no host starved"
