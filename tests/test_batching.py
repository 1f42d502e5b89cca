"""Pure record shaping, batching and retry decisions: no I/O, no services."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from osquery_aws_logger.delivery.batching import (
    FIREHOSE_LIMITS,
    KINESIS_LIMITS,
    Entry,
    batch_length,
    oversize,
)
from osquery_aws_logger.delivery.retry import Backoff, is_retriable, is_throttling
from osquery_aws_logger.results.records import partition_key, result_record
from osquery_aws_logger.results.scan import Unshippable


def test_result_record_adds_log_type_and_keeps_every_json_type() -> None:
    line = b'{"name":"q","unixTime":1795960800,"numerics":true,"columns":{"n":5,"f":1.5,"s":"x","z":null}}'
    record, parsed = result_record(line)
    decoded = json.loads(record)
    assert decoded["log_type"] == "result"
    assert decoded["unixTime"] == 1795960800 and decoded["numerics"] is True
    assert decoded["columns"] == {"n": 5, "f": 1.5, "s": "x", "z": None}
    assert parsed["name"] == "q"


def test_result_record_replaces_a_log_type_the_line_already_has() -> None:
    record, _ = result_record(b'{"log_type":"other","a":1}')
    assert json.loads(record) == {"log_type": "result", "a": 1}
    assert json.loads(result_record(b"  {}  ")[0]) == {"log_type": "result"}


@pytest.mark.parametrize(("line", "reason"), [
    (b"not json", "not_json"), (b"[1]", "not_json"), (b"", "not_json"), (b'"s"', "not_json"),
    (b'{"a":"\xff"}', "invalid_utf8"),
])
def test_lines_that_cannot_be_records_say_why(line: bytes, reason: str) -> None:
    with pytest.raises(Unshippable) as caught:
        result_record(line)
    assert caught.value.reason == reason


# JSON has no NaN or Infinity (which json.dumps would write): floats that JSON can hold.
@given(st.dictionaries(st.text(max_size=10), st.one_of(
    st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(), st.booleans(),
    st.none()), max_size=8))
def test_any_json_object_round_trips_with_log_type(obj: dict[str, object]) -> None:
    obj.pop("log_type", None)
    record, _ = result_record(json.dumps(obj).encode())
    assert json.loads(record) == {"log_type": "result", **obj}


def test_partition_key_is_the_host_or_random_per_record() -> None:
    assert partition_key("host-1", random_key=False) == "host-1"
    assert len(partition_key("h" * 300, random_key=False)) == 256
    keys = {partition_key("host-1", random_key=True) for _ in range(100)}
    assert len(keys) == 100
    assert partition_key("", random_key=False)  # never empty: Kinesis needs 1-256 characters


def test_kinesis_record_size_counts_the_partition_key() -> None:
    limit = KINESIS_LIMITS.max_record_bytes
    assert not oversize(Entry((1,), b"x" * (limit - 4), "abcd"), KINESIS_LIMITS)
    assert oversize(Entry((1,), b"x" * (limit - 3), "abcd"), KINESIS_LIMITS)


def test_firehose_record_limit_is_1000_kib_with_the_newline() -> None:
    assert FIREHOSE_LIMITS.record_suffix == b"\n"
    assert not oversize(Entry((1,), b"x" * 1_024_000), FIREHOSE_LIMITS)
    assert oversize(Entry((1,), b"x" * 1_024_001), FIREHOSE_LIMITS)


@given(sizes=st.lists(st.integers(1, 1_000_000), min_size=1, max_size=1200),
       service=st.sampled_from([KINESIS_LIMITS, FIREHOSE_LIMITS]))
def test_a_batch_is_the_longest_prefix_within_every_call_limit(sizes: list[int], service) -> None:  # type: ignore[no-untyped-def]
    entries = [Entry((i,), b"x" * size, "key" if service.uses_partition_key else "")
               for i, size in enumerate(sizes)]
    count = batch_length(entries, service)
    assert 1 <= count <= service.max_records
    assert sum(e.size() for e in entries[:count]) <= service.max_call_bytes
    if count < len(entries):  # it stopped for a reason: one more would break a limit
        assert (count == service.max_records
                or sum(e.size() for e in entries[:count + 1]) > service.max_call_bytes)


def test_full_batches_of_small_records_are_500() -> None:
    entries = [Entry((i,), b"x" * 1000, "k") for i in range(1200)]
    assert batch_length(entries, KINESIS_LIMITS) == 500
    big = [Entry((i,), b"x" * 12_000) for i in range(500)]
    assert batch_length(big, FIREHOSE_LIMITS) == 4 * 1024 * 1024 // 12_000


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    backoff = Backoff(base_seconds=0.5, cap_seconds=60, _random=random.Random(7))
    delays = [backoff.failed(now=100.0) for _ in range(12)]
    ceilings = [min(60, 0.5 * 2**n) for n in range(12)]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert not backoff.ready(backoff.retry_at - 0.001) and backoff.ready(backoff.retry_at)
    assert max(delays) <= 60
    backoff.succeeded()
    assert backoff.ready(0) and backoff.failures == 0


def test_backoff_jitter_differs_between_backoffs_and_repeats_under_a_seeded_random_module() -> None:
    def delays() -> list[list[float]]:
        backoffs = [Backoff(), Backoff()]
        return [[b.failed(now=0.0) for _ in range(8)] for b in backoffs]

    random.seed(21)
    first = delays()
    random.seed(21)
    assert delays() == first, "the simulation's --seed makes a run repeatable"
    assert first[0] != first[1], "two destinations never back off in step"


def test_errors_an_operator_must_fix_are_not_retried_as_transient() -> None:
    for code in ("ProvisionedThroughputExceededException", "ThrottlingException",
                 "ServiceUnavailableException", "InternalFailure", "ExpiredTokenException"):
        assert is_retriable(code)
    assert is_retriable("Whatever", 503)
    for code in ("ResourceNotFoundException", "AccessDeniedException", "ValidationException",
                 "InvalidArgumentException", "UnrecognizedClientException"):
        assert not is_retriable(code, 400)
    assert is_throttling("ProvisionedThroughputExceededException")
    assert not is_throttling("InternalFailure")
