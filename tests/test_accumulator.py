"""The accumulator in process, outcomes reported by hand, no network: every test runs twice, on
real spools in tmp_path and on the in-memory spool that ships as their test double (no disk)."""

from __future__ import annotations

import base64
import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest
from aws_kinesis_agg.deaggregator import deaggregate_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osquery_aws_logger.counters import PluginCounters
from osquery_aws_logger.delivery.accumulator import ROUTED_DIR, Accumulator, Batch
from osquery_aws_logger.delivery.services import FIREHOSE, KINESIS, Service
from osquery_aws_logger.errors import DeliveryError
from osquery_aws_logger.results.records import result_record
from osquery_aws_logger.settings import Settings
from osquery_aws_logger.spool.memory import MemorySpool, MemoryStore
from osquery_aws_logger.spool.spool import KIND_RESULT, KIND_STATUS, Spool, SpoolLike

HOST = "0f8b1c5e-3d2a-4c1b-9e7f-6a5b4c3d2e1f"  # a UUID host identifier, 36 bytes


def line(index: int, name: str = "pack_test_q", pad: int = 0) -> bytes:
    row = {"name": name, "hostIdentifier": HOST, "columns": {"i": index, "pad": "x" * pad}}
    return json.dumps(row, separators=(",", ":")).encode()


class Spools:
    """Makes the spools of a test: on disk, or in memory (one store, so a spool made again on
    the same directory finds what was left, as after a restart)."""

    kind = "disk"
    store = MemoryStore()


@pytest.fixture(autouse=True, params=["disk", "memory"])
def spool_kind(request: pytest.FixtureRequest) -> str:
    Spools.kind, Spools.store = request.param, MemoryStore()
    return str(request.param)


def new_spool(path: Path, counters: PluginCounters, *, max_records: int,
              max_bytes: int = 1 << 30) -> SpoolLike:
    if Spools.kind == "memory":
        return MemorySpool(path, max_records=max_records, max_bytes=max_bytes,
                           on_drop=counters.drop, store=Spools.store)
    return Spool(path, max_records=max_records, max_bytes=max_bytes, on_drop=counters.drop)


def make(tmp_path: Path, service: Service = KINESIS, *, spool_cap: int = 100_000,
         **options: Any) -> tuple[Accumulator, SpoolLike, PluginCounters]:
    counters = PluginCounters()
    stream = options.pop(f"aws_{service.name}_stream", "main")
    settings = Settings(**{f"aws_{service.name}_stream": stream, "buffered_log_max": spool_cap,
                           **options})
    spool = new_spool(tmp_path / service.name, counters, max_records=settings.buffered_log_max,
                      max_bytes=settings.aws_logger_spool_max_bytes)
    accumulator = Accumulator(f"aws_{service.name}", service, spool, counters, settings,
                              host_identifier="local-host")
    return accumulator, spool, counters


def rows_of(batch: Batch) -> list[int]:
    """The row indices a batch carries (plain records)."""
    return [json.loads(entry.data)["columns"]["i"] for entry in batch.entries]


def deliver_all(accumulator: Accumulator, now: float = 1000.0) -> list[int]:
    """Send every batch ready, all accepted; answer the row indices, in the order sent."""
    sent: list[int] = []
    for _ in range(100):
        ready = accumulator.ready(now, draining=True)
        if not ready.batches:
            return sent
        for batch in ready.batches:
            sent += rows_of(batch)
            accumulator.completed(batch, [None] * len(batch.entries), now)
    raise AssertionError("never drained")


def test_rows_wait_for_the_period_unless_a_full_batch_is_waiting(tmp_path: Path) -> None:
    accumulator, spool, _ = make(tmp_path, aws_kinesis_period=10)
    for i in range(3):
        spool.append(KIND_RESULT, line(i))
    ready = accumulator.ready(1.0)
    # The first flush: a period after start, drawn over a period's width (hosts started
    # together must not flush in step).
    assert ready.batches == () and 5.0 <= ready.wake_at <= 15.0
    for i in range(3, 503):
        spool.append(KIND_RESULT, line(i))
    (batch,) = accumulator.ready(2.0).batches
    assert rows_of(batch) == list(range(500)), "a full batch goes before the period ends"
    assert accumulator.ready(2.5).batches == (), "nothing more until the batch is reported"
    accumulator.completed(batch, [None] * 500, 2.5)
    assert accumulator.ready(3.0).batches == (), "the rest waits for the next period"
    assert accumulator.ready(12.4).batches == ()
    (rest,) = accumulator.ready(12.5).batches
    assert rows_of(rest) == [500, 501, 502]


def test_partial_failures_resend_only_the_failed_entries_in_order(tmp_path: Path) -> None:
    accumulator, spool, counters = make(tmp_path)
    for i in range(10):
        spool.append(KIND_RESULT, line(i))
    (batch,) = accumulator.ready(0.0, draining=True).batches
    codes = [None] * 10
    for i in (1, 3, 7):
        codes[i] = "ProvisionedThroughputExceededException"
    accumulator.completed(batch, codes, 0.0)
    assert counters.delivered == 7 and counters.retried == 3 and counters.throttled == 3
    assert accumulator.state() == "throttled"
    retry_at = accumulator.ready(0.0, draining=True)
    assert retry_at.batches == () and 0.0 <= retry_at.wake_at <= 0.5, "backing off, with jitter"
    (again,) = accumulator.ready(1.0, draining=True).batches
    assert rows_of(again) == [1, 3, 7]
    accumulator.completed(again, [None] * 3, 1.0)
    assert counters.delivered == 10 and accumulator.state() == "ok"
    assert spool.depth()[0] == 0, "everything acknowledged"


def test_the_ack_never_passes_an_undelivered_row(tmp_path: Path) -> None:
    accumulator, spool, _ = make(tmp_path)
    for i in range(5):
        spool.append(KIND_RESULT, line(i))
    (batch,) = accumulator.ready(0.0, draining=True).batches
    accumulator.completed(batch, [None, "InternalFailure", None, None, None], 0.0)
    assert spool.depth()[0] == 4, "rows 1..4 stay on disk: row 1 is not delivered"
    accumulator.close()
    counters = PluginCounters()
    reopened = new_spool(tmp_path / "kinesis", counters, max_records=100)
    restarted = Accumulator("aws_kinesis", KINESIS, reopened, counters,
                            Settings(aws_kinesis_stream="main"), host_identifier="h")
    assert deliver_all(restarted) == [1, 2, 3, 4], "after a restart: at least once, in order"


def test_unusable_lines_are_dropped_counted_and_acknowledged(tmp_path: Path) -> None:
    accumulator, spool, counters = make(tmp_path)
    spool.append(KIND_RESULT, b"not json")
    spool.append(KIND_RESULT, b'{"a":"\xff"}')
    spool.append(KIND_RESULT, line(0))
    spool.append(KIND_RESULT, line(1, pad=1024 * 1024))
    assert deliver_all(accumulator) == [0]
    assert counters.dropped["not_json"] == counters.dropped["invalid_utf8"] == 1
    assert counters.dropped["oversize"] == 1
    assert spool.depth()[0] == 0


def test_a_failing_route_does_not_hold_back_the_plugins_stream(tmp_path: Path) -> None:
    routes = (("typo-stream", ("pack_sec_*",)),)
    accumulator, spool, counters = make(tmp_path, aws_kinesis_routes=routes)
    for i in range(100):
        spool.append(KIND_RESULT, line(i))
        spool.append(KIND_RESULT, line(1000 + i, name="pack_sec_x"))
    now = 0.0
    delivered: list[int] = []
    for attempt in range(10):
        now = attempt * 61.0  # past any backoff
        spool.append(KIND_RESULT, line(100 + attempt))
        for batch in accumulator.ready(now, draining=True).batches:
            if batch.destination == "typo-stream":
                accumulator.failed(batch, DeliveryError("ResourceNotFoundException", "no stream",
                                                        retriable=False), now)
            else:
                delivered += rows_of(batch)
                accumulator.completed(batch, [None] * len(batch.entries), now)
    assert delivered == list(range(110)), "every row of the main stream, in order"
    assert spool.depth()[0] == 0, "the intake is acknowledged: routed rows wait in their own spool"
    routed = new_spool(tmp_path / "kinesis" / ROUTED_DIR / "typo-stream", counters,
                       max_records=1000)
    assert routed.depth()[0] == 100
    assert accumulator.state() == "failing"
    states = {d.stream: d.state for d in accumulator.published.destinations}
    assert states == {"main": "ok", "typo-stream": "failing"}


def test_a_blocked_destination_is_bounded_by_the_caps_and_drops_its_oldest(tmp_path: Path) -> None:
    options = {"aws_kinesis_status_stream": "status-stream"}
    accumulator, spool, counters = make(tmp_path, spool_cap=64, **options)
    out = []
    for i in range(300):
        spool.append(KIND_STATUS, json.dumps({"log_type": "status", "message": str(i)}).encode())
        out += accumulator.ready(float(i)).batches  # routed as they come; nothing delivered
    records, _ = accumulator.depth()
    assert records <= 64 and spool.depth()[0] == 0
    # The batch out holds rows the cap has since given up: they count once it is let go of.
    for batch in out:
        accumulator.failed(batch, DeliveryError("InternalFailure", "x", retriable=True), 300.0)
    accumulator.ready(400.0)
    assert counters.dropped["cap_records"] == 300 - accumulator.depth()[0]


def test_lowering_a_cap_drops_the_oldest_at_once_and_counts_them(tmp_path: Path) -> None:
    accumulator, spool, counters = make(tmp_path, spool_cap=1_000_000)
    for i in range(3000):
        spool.append(KIND_RESULT, line(i))
    (batch,) = accumulator.ready(0.0, draining=True).batches  # a batch read into memory
    accumulator.failed(batch, DeliveryError("InternalFailure", "x", retriable=True), 0.5)
    accumulator.apply(Settings(aws_kinesis_stream="main", buffered_log_max=64), 1.0)
    assert spool.depth()[0] == 64
    accumulator.ready(1.0)  # the rows it held below the new floor are let go of, counted
    assert counters.dropped["cap_records"] == 3000 - 64
    assert deliver_all(accumulator) == list(range(3000 - 64, 3000)), "the newest are kept"


def test_new_settings_reshape_what_was_read(tmp_path: Path) -> None:
    accumulator, spool, _ = make(tmp_path, aws_kinesis_aggregate=True)
    for i in range(20):
        spool.append(KIND_RESULT, line(i))
    (batch,) = accumulator.ready(0.0, draining=True).batches
    assert len(batch.entries) == 1 and batch.rows == 20, "one aggregate"
    accumulator.apply(Settings(aws_kinesis_stream="main"), 0.0)
    assert deliver_all(accumulator) == list(range(20)), "read again, one row per record"


def deaggregated(data: bytes, key: str) -> list[bytes]:
    event = {"kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": key, "sequenceNumber": "1",
                         "data": base64.b64encode(data).decode(), "approximateArrivalTimestamp": 0}}
    return [base64.b64decode(r["kinesis"]["data"]) for r in deaggregate_records([event])]


def test_aggregates_with_long_host_keys_never_pass_the_record_limit(tmp_path: Path) -> None:
    accumulator, spool, _ = make(tmp_path, aws_kinesis_aggregate=True)
    limit = KINESIS.limits.max_record_bytes
    # Rows just under the limit as plain records: too big to wrap with a 36-byte key.
    plain = len(result_record(line(0))[0]) + len(HOST)
    for i in range(3):
        spool.append(KIND_RESULT, line(i, pad=limit - plain - i * 20))
    for i in range(3, 400):
        spool.append(KIND_RESULT, line(i, pad=9000))
    seen: list[int] = []
    for _ in range(20):
        ready = accumulator.ready(0.0, draining=True)
        if not ready.batches:
            break
        for batch in ready.batches:
            for entry in batch.entries:
                assert entry.size() <= limit
                assert entry.partition_key == HOST
                rows = deaggregated(entry.data, entry.partition_key)
                seen += [json.loads(row)["columns"]["i"] for row in rows]
            accumulator.completed(batch, [None] * len(batch.entries), 0.0)
    assert seen == list(range(400))


def test_gzipped_packs_are_checked_once_closed(tmp_path: Path) -> None:
    accumulator, spool, counters = make(tmp_path, FIREHOSE, aws_firehose_pack=True,
                                        aws_firehose_compression="gzip")
    for i in range(50):
        spool.append(KIND_RESULT, line(i, pad=30_000))
    ready = accumulator.ready(0.0, draining=True)
    for batch in ready.batches:
        for entry in batch.entries:
            assert entry.size() <= FIREHOSE.limits.max_record_bytes
    assert sum(b.rows for b in ready.batches) == 50 and counters.dropped["oversize"] == 0


ROUTED = {"aws_kinesis_routes": (("side", ("pack_side_*",)),)}


@pytest.mark.parametrize("options", [{}, ROUTED], ids=["in place", "routed"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.integers(0, 40),  # rows appended
                                st.lists(st.booleans(), max_size=60),  # entry outcomes
                                st.booleans()),  # restart afterwards
                      min_size=1, max_size=8))
def test_across_restarts_every_row_is_delivered_and_nothing_unsent_is_acknowledged(
        tmp_path_factory: Any, options: dict[str, Any],
        steps: list[tuple[int, list[bool], bool]]) -> None:
    directory = tmp_path_factory.mktemp("acc")

    def start() -> tuple[Accumulator, SpoolLike]:
        counters = PluginCounters()
        spool = new_spool(directory / "kinesis", counters, max_records=100_000)
        return Accumulator("aws_kinesis", KINESIS, spool, counters,
                           Settings(aws_kinesis_stream="main", **options),
                           host_identifier="h"), spool

    accumulator, spool = start()
    appended = 0
    delivered: set[int] = set()
    for count, outcomes, restart in steps:
        for _ in range(count):
            spool.append(KIND_RESULT, line(appended, name=f"pack_{'side' if appended % 3 else 'm'}_q"))
            appended += 1
        for batch in accumulator.ready(1e9, draining=True).batches:
            codes = [None if (outcomes[i] if i < len(outcomes) else True) else "InternalFailure"
                     for i in range(len(batch.entries))]
            delivered.update(i for i, c in zip(rows_of(batch), codes, strict=True) if c is None)
            accumulator.completed(batch, codes, 1e9)
        if restart:
            accumulator.close()
            accumulator, spool = start()
            # What the spools still hold is at least every row not yet delivered.
            assert accumulator.depth()[0] >= appended - len(delivered)
    accumulator.close()
    accumulator, spool = start()
    delivered.update(deliver_all(accumulator, now=2e9))
    assert delivered == set(range(appended))
    assert accumulator.depth()[0] == 0


def test_rows_routed_to_a_destination_no_longer_configured_go_through_the_current_routes(
        tmp_path: Path) -> None:
    accumulator, spool, counters = make(tmp_path, **ROUTED)
    for i in range(6):
        spool.append(KIND_RESULT, line(i, name="pack_side_q" if i % 2 else "pack_m_q"))
    for batch in accumulator.ready(0.0, draining=True).batches:
        accumulator.failed(batch, DeliveryError("InternalFailure", "x", retriable=True), 0.0)
    accumulator.close()
    # Restarted with the route gone: the side stream's rows now go where the settings say
    # (here the plugin's own stream), never stranded in a spool nothing delivers.
    reopened = new_spool(tmp_path / "kinesis", counters, max_records=100)
    plain = Accumulator("aws_kinesis", KINESIS, reopened, counters,
                        Settings(aws_kinesis_stream="main"), host_identifier="h")
    sent: dict[str, list[int]] = {}
    for _ in range(5):
        for batch in plain.ready(100.0, draining=True).batches:
            sent.setdefault(batch.destination, []).extend(rows_of(batch))
            plain.completed(batch, [None] * len(batch.entries), 100.0)
    assert sorted(sent["main"]) == [0, 1, 2, 3, 4, 5] and set(sent) == {"main"}
    assert plain.depth()[0] == 0
    assert [d.stream for d in plain.published.destinations] == ["main"], "the empty one is closed"


def test_a_cap_dropping_rows_of_the_batch_out_leaves_the_queue_consistent(tmp_path: Path) -> None:
    accumulator, spool, counters = make(tmp_path)
    for i in range(600):
        spool.append(KIND_RESULT, line(i))
    (batch,) = accumulator.ready(0.0, draining=True).batches
    spool.set_caps(50, 1 << 30)  # drops rows 0..549, most of them in the batch that is out
    assert accumulator.ready(0.0, draining=True).batches == ()
    accumulator.completed(batch, [None] * len(batch.entries), 0.0)  # AWS took them anyway
    sent = deliver_all(accumulator)
    assert sent == list(range(550, 600))
    # Each row is counted once: those AWS took as delivered (it had them before the cap came),
    # the rest as dropped.
    assert counters.delivered == 550 and counters.dropped["cap_records"] == 50
    assert accumulator.depth()[0] == 0


def test_a_destination_throttled_put_after_put_sends_smaller_puts_at_the_streams_rate(
        tmp_path: Path) -> None:
    random.seed(3)  # the backoff's and the pacing's jitter: the same run every time
    accumulator, spool, counters = make(tmp_path)
    for i in range(3000):
        spool.append(KIND_RESULT, line(i))
    now, puts, taken = 0.0, [], []
    while len(puts) < 14:
        ready = accumulator.ready(now, draining=True)
        if not ready.batches:
            now = ready.wake_at
            continue
        (batch,) = ready.batches
        puts.append((now, len(batch.entries)))
        # The stream takes ten records of each put and throttles the rest.
        codes: list[str | None] = [None] * 10 + \
            ["ProvisionedThroughputExceededException"] * (len(batch.entries) - 10)
        taken += rows_of(batch)[:10]
        accumulator.completed(batch, codes, now)
        now += 0.05
    sizes = [size for _, size in puts]
    assert sizes[:3] == [500, 500, 500], "a burst is the backoff's: full puts"
    assert sizes[-1] < 30 and max(sizes[-4:]) < 30, \
        "congestion: a period's worth at the rate the stream takes, settled near its ten a put"
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(puts[3:])]
    assert min(gaps) > 0.5, "and the puts spaced by those records' time"
    while accumulator.waiting():
        ready = accumulator.ready(now, draining=True)
        for batch in ready.batches:
            taken += rows_of(batch)
            accumulator.completed(batch, [None] * len(batch.entries), now)
        now = max(now, ready.wake_at)
    assert taken == list(range(3000)), "every row once, in order: pacing loses and reorders none"
    assert counters.delivered == 3000


def test_after_a_put_failed_whole_one_record_probes_before_the_rest_go(tmp_path: Path) -> None:
    accumulator, spool, counters = make(tmp_path)
    for i in range(20):
        spool.append(KIND_RESULT, line(i))
    (batch,) = accumulator.ready(0.0, draining=True).batches
    accumulator.failed(batch, DeliveryError("InternalFailure", "down", retriable=True), 0.0)
    (probe,) = accumulator.ready(100.0, draining=True).batches
    assert rows_of(probe) == [0], "the service failed whole: one record probes first"
    accumulator.completed(probe, [None], 100.0)
    (rest,) = accumulator.ready(100.0, draining=True).batches
    assert rows_of(rest) == list(range(1, 20))
    accumulator.completed(rest, [None] * 19, 100.0)
    assert counters.delivered == 20 and spool.depth()[0] == 0
