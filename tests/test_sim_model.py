"""The simulator's model of AWS keeps the documented limits (sim/model.py)."""

from __future__ import annotations

import random
from collections import Counter

from sim.model import MIB, Firehose, Kinesis, Network, Outage, Script, Sts

PTEE = "ProvisionedThroughputExceededException"


def test_a_shard_takes_1000_records_a_second_and_refuses_the_rest_entry_by_entry() -> None:
    stream = Kinesis(1)
    first = stream.put(0.0, [(0, 100)] * 600)
    second = stream.put(0.0, [(0, 100)] * 600)
    assert first.error is None and first.codes == [None] * 600
    assert second.codes == [None] * 400 + [PTEE] * 200, "the second's last 200 are over 1,000/s"
    assert stream.put(0.1, [(0, 100)] * 200).codes == [None] * 100 + [PTEE] * 100, "0.1 s refills 100"
    assert stream.put(1.5, [(0, 100)] * 1000).codes == [None] * 1000, "a second's worth again"


def test_a_shard_takes_a_mebibyte_a_second() -> None:
    stream = Kinesis(1)
    answer = stream.put(0.0, [(0, 300_000)] * 4)
    assert answer.codes == [None, None, None, PTEE], "1 MiB holds three 300 kB records"
    assert stream.put(0.2, [(0, 300_000)] * 2).codes == [None, PTEE], "0.2 s refills 210 kB"


def test_shards_are_independent_and_keys_spread_evenly() -> None:
    stream = Kinesis(4)
    rng = random.Random(3)
    spread = Counter(stream.shard_of(f"{rng.getrandbits(128):032x}") for _ in range(20_000))
    assert set(spread) == {0, 1, 2, 3}
    assert all(abs(count - 5000) < 300 for count in spread.values())
    assert stream.shard_of("host-a") == stream.shard_of("host-a")
    full = stream.put(0.0, [(0, 10)] * 1000 + [(1, 10)] * 1000)
    assert full.codes == [None] * 2000, "two shards, a thousand each"


def test_firehose_refuses_a_call_over_its_request_rate_whole_and_records_one_by_one() -> None:
    stream = Firehose(5.0)
    assert stream.capacity() == (500_000.0, 5.0 * MIB)
    for _ in range(2000):
        assert stream.put(0.0, [(0, 10)]).error is None
    refused = stream.put(0.0, [(0, 10)])
    assert refused.error == ("ServiceUnavailableException", 503), "2,000 requests/s at 5 MiB/s"
    big = Firehose(1.0)  # 1 MiB/s: 100,000 records/s, 400 requests/s
    answer = big.put(0.0, [(0, 400_000)] * 3)
    assert answer.codes == [None, None, "ServiceUnavailableException"]


def test_sts_serves_600_calls_a_second_per_account() -> None:
    sts = Sts()
    assert all(sts.assume_role(0.0) is None for _ in range(600))
    assert sts.assume_role(0.0) == ("Throttling", 400)
    assert sts.assume_role(0.5) is None


def test_an_outage_fails_every_call_whole_and_ends() -> None:
    stream = Kinesis(1, outage=Outage(10.0, 20.0))
    assert stream.put(9.9, [(0, 10)]).error is None
    assert stream.put(10.0, [(0, 10)]).error == ("InternalFailure", 500)
    assert stream.put(20.0, [(0, 10)]).error is None


def test_round_trips_spread_around_the_median_and_grow_with_the_request() -> None:
    network = Network(random.Random(1))
    trips = sorted(sum(network.round_trip(0)) for _ in range(10_000))
    assert 0.027 < trips[5000] < 0.033
    assert 0.08 < trips[9900] < 0.12, "p99 about 3x the median"
    up, _ = Network(random.Random(1), sigma=0.0).round_trip(5 * MIB)
    assert 0.43 < up < 0.44, "5 MiB at 100 Mbit/s"


def test_a_script_plays_rules_in_order_as_the_fault_proxy_does() -> None:
    script = Script("kinesis")
    script.throttle(1, "put")
    script.fail_entries([0, 2], times=2)
    script.error(1, 500)
    script.throttle(1, "sts")
    entries = [(0, 10)] * 3
    assert script.put(0, entries).error == (PTEE, 400)
    assert script.put(0, entries).codes == [PTEE, None, PTEE]
    assert script.put(0, entries).codes == [PTEE, None, PTEE]
    assert script.put(0, entries).error == ("InternalFailure", 500)
    assert script.put(0, entries).codes == [None] * 3
    assert script.assume_role(0) == ("Throttling", 400)
    assert script.assume_role(0) is None
