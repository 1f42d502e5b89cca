"""Tests for the local AWS test support: each FaultProxy control, against a real moto server.

The clients here use ``total_max_attempts=1``: botocore's ``retries={"max_attempts": 1}`` means
*one retry* (two attempts), which would hide a single injected fault -- see
``test_max_attempts_1_still_retries_once``.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from tests import localaws_fixtures
from tests.localaws import FaultProxy, MotoServer, make_client

# The fixtures, until a conftest.py imports them for every test module.
moto_server = localaws_fixtures.moto_server
fault_proxy = localaws_fixtures.fault_proxy

NO_RETRIES = Config(
    retries={"total_max_attempts": 1, "mode": "standard"},
    connect_timeout=2,
    read_timeout=10,
)


def client(proxy: FaultProxy, service: str, **config: Any) -> Any:
    return make_client(service, proxy.url, NO_RETRIES.merge(Config(**config)))


def batch(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [{"Data": f"{prefix}{i}".encode(), "PartitionKey": f"k{i}"} for i in range(n)]


def error_code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def http_status(exc: ClientError) -> int:
    return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])


# -- pass-through ------------------------------------------------------------------------------


def test_kinesis_records_land(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    moto_server.create_stream("s", shards=2)
    kinesis = client(fault_proxy, "kinesis")
    resp = kinesis.put_records(StreamName="s", Records=batch(5))
    assert resp["FailedRecordCount"] == 0
    stored = moto_server.read_stream("s")
    assert sorted(stored) == sorted((r["Data"], r["PartitionKey"]) for r in batch(5))
    (call,) = fault_proxy.calls
    assert (call.operation, call.service, call.entries, call.status, call.faulted) == (
        "PutRecords",
        "kinesis",
        5,
        200,
        False,
    )
    assert [r["Data"] for r in call.records()] == [r["Data"] for r in batch(5)]


def test_firehose_records_land(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    moto_server.create_delivery_stream("d", "bucket")
    firehose = client(fault_proxy, "firehose")
    resp = firehose.put_record_batch(DeliveryStreamName="d", Records=[{"Data": b"a\n"}, {"Data": b"b\n"}])
    assert resp["FailedPutCount"] == 0
    assert moto_server.read_bucket("bucket") == [b"a\nb\n"]
    assert fault_proxy.calls[0].operation == "PutRecordBatch"
    assert fault_proxy.calls[0].entries == 2


def test_keep_alive_connection_is_reused(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    moto_server.create_stream("s")
    kinesis = client(fault_proxy, "kinesis")
    for i in range(5):
        kinesis.put_records(StreamName="s", Records=batch(2, prefix=f"c{i}-"))
    assert fault_proxy.connections_accepted == 1
    assert len(moto_server.read_stream("s")) == 10


# -- throttle ----------------------------------------------------------------------------------


def test_throttle_kinesis(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    moto_server.create_stream("s")
    kinesis = client(fault_proxy, "kinesis")
    fault_proxy.throttle(2, target="PutRecords")
    for i in range(2):
        with pytest.raises(kinesis.exceptions.ProvisionedThroughputExceededException) as info:
            kinesis.put_records(StreamName="s", Records=batch(1, prefix=f"t{i}-"))
        assert http_status(info.value) == 400
    # Other operations are not matched by target="PutRecords".
    kinesis.describe_stream_summary(StreamName="s")
    kinesis.put_records(StreamName="s", Records=batch(1, prefix="ok"))
    assert moto_server.read_stream("s") == [(b"ok0", "k0")]
    assert [(c.operation, c.status, c.fault) for c in fault_proxy.calls] == [
        ("PutRecords", 400, "throttle"),
        ("PutRecords", 400, "throttle"),
        ("DescribeStreamSummary", 200, None),
        ("PutRecords", 200, None),
    ]


def test_throttle_firehose_is_service_unavailable(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    moto_server.create_delivery_stream("d", "bucket")
    firehose = client(fault_proxy, "firehose")
    fault_proxy.throttle(1)
    with pytest.raises(firehose.exceptions.ServiceUnavailableException) as info:
        firehose.put_record_batch(DeliveryStreamName="d", Records=[{"Data": b"x"}])
    assert http_status(info.value) == 503
    assert moto_server.read_bucket("bucket") == []


def test_throttle_custom_code(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    moto_server.create_delivery_stream("d", "bucket")
    firehose = client(fault_proxy, "firehose")
    fault_proxy.throttle(1, code="ThrottlingException")
    with pytest.raises(ClientError) as info:
        firehose.put_record(DeliveryStreamName="d", Record={"Data": b"x"})
    assert (error_code(info.value), http_status(info.value)) == ("ThrottlingException", 400)


def test_throttle_sts_speaks_query_xml(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    sts = client(fault_proxy, "sts")
    role = "arn:aws:iam::123456789012:role/r"
    fault_proxy.throttle(1, target="AssumeRole")
    with pytest.raises(ClientError) as info:
        sts.assume_role(RoleArn=role, RoleSessionName="s1")
    assert (error_code(info.value), http_status(info.value)) == ("Throttling", 400)
    creds = sts.assume_role(RoleArn=role, RoleSessionName="s1")["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA")
    assert [c.operation for c in fault_proxy.calls] == ["AssumeRole", "AssumeRole"]


# -- fail_entries ------------------------------------------------------------------------------


def test_fail_entries_kinesis(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    moto_server.create_stream("s")
    kinesis = client(fault_proxy, "kinesis")
    fault_proxy.fail_entries({1, 3})
    records = batch(5)
    resp = kinesis.put_records(StreamName="s", Records=records)
    assert resp["FailedRecordCount"] == 2
    assert len(resp["Records"]) == 5
    for i, entry in enumerate(resp["Records"]):
        if i in (1, 3):
            assert entry["ErrorCode"] == "ProvisionedThroughputExceededException"
            assert entry["ErrorMessage"]
            assert "SequenceNumber" not in entry
        else:
            assert entry["SequenceNumber"] and entry["ShardId"]
            assert "ErrorCode" not in entry
    assert moto_server.read_stream("s") == [(b"r0", "k0"), (b"r2", "k2"), (b"r4", "k4")]
    call = fault_proxy.calls[-1]
    assert (call.entries, call.failed_indices, call.fault) == (5, (1, 3), "fail_entries")

    # times=1: the retry of the failed entries goes through.
    retry = [records[1], records[3]]
    assert kinesis.put_records(StreamName="s", Records=retry)["FailedRecordCount"] == 0
    assert len(moto_server.read_stream("s")) == 5


def test_fail_entries_every_entry(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    moto_server.create_stream("s")
    kinesis = client(fault_proxy, "kinesis")
    fault_proxy.fail_entries({0, 1, 7}, times=2, code="InternalFailure")
    for _ in range(2):
        resp = kinesis.put_records(StreamName="s", Records=batch(2))
        assert resp["FailedRecordCount"] == 2
        assert [r["ErrorCode"] for r in resp["Records"]] == ["InternalFailure"] * 2
    assert moto_server.read_stream("s") == []
    assert [c.failed_indices for c in fault_proxy.calls] == [(0, 1), (0, 1)]


def test_fail_entries_firehose(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    moto_server.create_delivery_stream("d", "bucket")
    firehose = client(fault_proxy, "firehose")
    fault_proxy.fail_entries({0, 2}, target="PutRecordBatch")
    records = [{"Data": f"{i}\n".encode()} for i in range(4)]
    resp = firehose.put_record_batch(DeliveryStreamName="d", Records=records)
    assert resp["FailedPutCount"] == 2
    codes = [r.get("ErrorCode") for r in resp["RequestResponses"]]
    assert codes == ["ServiceUnavailableException", None, "ServiceUnavailableException", None]
    assert all("RecordId" in r for i, r in enumerate(resp["RequestResponses"]) if i in (1, 3))
    assert moto_server.read_bucket("bucket") == [b"1\n3\n"]


def test_fail_entries_rejects_other_targets(fault_proxy: FaultProxy) -> None:
    with pytest.raises(ValueError):
        fault_proxy.fail_entries({0}, target="DescribeStream")


# -- error, drop, delay, down ------------------------------------------------------------------


def test_error_500(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    moto_server.create_stream("s")
    kinesis = client(fault_proxy, "kinesis")
    fault_proxy.error(1)
    with pytest.raises(ClientError) as info:
        kinesis.put_records(StreamName="s", Records=batch(1))
    assert (error_code(info.value), http_status(info.value)) == ("InternalFailure", 500)
    fault_proxy.error(1, status=503, target="PutRecordBatch")
    kinesis.put_records(StreamName="s", Records=batch(1))  # not a PutRecordBatch
    assert len(moto_server.read_stream("s")) == 1


def test_drop_closes_connection(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    moto_server.create_stream("s")
    kinesis = client(fault_proxy, "kinesis")
    kinesis.put_records(StreamName="s", Records=batch(1, prefix="a"))  # pools a connection
    fault_proxy.drop(1)
    with pytest.raises(ConnectionClosedError):
        kinesis.put_records(StreamName="s", Records=batch(1, prefix="b"))
    # The client recovers on a new connection; the dropped call never reached moto.
    kinesis.put_records(StreamName="s", Records=batch(1, prefix="c"))
    assert [d for d, _ in moto_server.read_stream("s")] == [b"a0", b"c0"]
    assert [c.status for c in fault_proxy.calls] == [200, None, 200]
    assert fault_proxy.connections_accepted == 2


def test_delay_past_read_timeout(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    moto_server.create_stream("s")
    kinesis = client(fault_proxy, "kinesis", read_timeout=0.3)
    fault_proxy.delay(1, 1.0, target="PutRecords")
    with pytest.raises(ReadTimeoutError):
        kinesis.put_records(StreamName="s", Records=batch(1))
    # The delayed call is still forwarded: the write lands although the client timed out.
    (call,) = fault_proxy.wait_for_calls(1, operation="PutRecords")
    assert (call.status, call.fault) == (200, "delay")
    assert moto_server.read_stream("s") == [(b"r0", "k0")]


def test_short_delay_succeeds(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    moto_server.create_stream("s")
    kinesis = client(fault_proxy, "kinesis", read_timeout=5)
    fault_proxy.delay(1, 0.2)
    assert kinesis.put_records(StreamName="s", Records=batch(1))["FailedRecordCount"] == 0


def test_down_refuses_connections(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    moto_server.create_stream("s")
    kinesis = client(fault_proxy, "kinesis")
    kinesis.put_records(StreamName="s", Records=batch(1, prefix="a"))  # pooled keep-alive
    url = fault_proxy.url
    fault_proxy.set_down(True)
    assert fault_proxy.is_down
    for _ in range(2):
        with pytest.raises(EndpointConnectionError):
            kinesis.put_records(StreamName="s", Records=batch(1, prefix="b"))
    fault_proxy.set_down(False)
    assert fault_proxy.url == url
    kinesis.put_records(StreamName="s", Records=batch(1, prefix="c"))
    assert [d for d, _ in moto_server.read_stream("s")] == [b"a0", b"c0"]


def test_down_reset_mode(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    moto_server.create_stream("s")
    kinesis = client(fault_proxy, "kinesis")
    kinesis.put_records(StreamName="s", Records=batch(1, prefix="a"))
    fault_proxy.set_down(True, mode="reset")
    with pytest.raises(ConnectionClosedError):
        kinesis.put_records(StreamName="s", Records=batch(1, prefix="b"))
    fault_proxy.set_down(False)
    kinesis.put_records(StreamName="s", Records=batch(1, prefix="c"))
    assert [d for d, _ in moto_server.read_stream("s")] == [b"a0", b"c0"]
    assert [c.fault for c in fault_proxy.calls] == [None, "down", None]


# -- composition, concurrency, retries ---------------------------------------------------------


def test_controls_apply_in_order(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    moto_server.create_stream("s")
    kinesis = client(fault_proxy, "kinesis")
    fault_proxy.throttle(1, target="PutRecords")
    fault_proxy.fail_entries({0})
    with pytest.raises(ClientError):
        kinesis.put_records(StreamName="s", Records=batch(2))
    assert kinesis.put_records(StreamName="s", Records=batch(2))["FailedRecordCount"] == 1
    assert kinesis.put_records(StreamName="s", Records=batch(2))["FailedRecordCount"] == 0
    assert fault_proxy.pending_faults() == 0
    assert [c.fault for c in fault_proxy.calls] == ["throttle", "fail_entries", None]
    fault_proxy.clear()
    assert fault_proxy.calls == []


def test_concurrent_calls_consume_exactly_n_faults(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    # Read-only calls: moto loses records when several writers hit one shard at once.
    moto_server.create_stream("s")
    fault_proxy.throttle(5, target="DescribeStreamSummary")
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        kinesis = client(fault_proxy, "kinesis")
        for _ in range(4):
            try:
                kinesis.describe_stream_summary(StreamName="s")
                result = "ok"
            except ClientError as exc:
                result = error_code(exc)
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes).count("ProvisionedThroughputExceededException") == 5
    assert outcomes.count("ok") == 15
    assert len(fault_proxy.calls) == 20


def test_max_attempts_1_still_retries_once(moto_server: MotoServer, fault_proxy: FaultProxy) -> None:
    """botocore's ``max_attempts`` counts retries, not attempts: 1 means two calls."""
    moto_server.create_stream("s")
    kinesis = make_client("kinesis", fault_proxy.url, Config(retries={"max_attempts": 1, "mode": "standard"}))
    fault_proxy.error(1, target="PutRecords")
    assert kinesis.put_records(StreamName="s", Records=batch(1))["FailedRecordCount"] == 0
    assert [c.status for c in fault_proxy.calls] == [500, 200]
