"""The sender in process: a scripted stand-in for the AWS clients, answers reported back."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, EndpointConnectionError

from osquery_aws_logger.counters import PluginCounters
from osquery_aws_logger.delivery.accumulator import Accumulator
from osquery_aws_logger.delivery.flusher import Flusher
from osquery_aws_logger.delivery.services import KINESIS
from osquery_aws_logger.ops.status import StatusReport
from osquery_aws_logger.settings import Settings
from osquery_aws_logger.spool.spool import KIND_RESULT, Spool

Answer = Callable[[str, list[dict[str, Any]]], Any]


class ScriptedClients:
    """Plays AwsClients' put path: each call takes the next scripted answer (or raises it)."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.calls: list[tuple[str, list[int]]] = []
        self.invalidated = 0
        self.regions = {"kinesis": "us-east-1"}
        self.endpoints = {"kinesis": "https://kinesis.us-east-1.amazonaws.com"}
        self.credential_source = "scripted"
        self.expires_at = None
        self.read_timeout = 10.0

    def put_prepared(self, service: str, method: str, params: dict[str, Any], body: bytes) -> Any:
        document = json.loads(body)
        stream = document.get("StreamName") or document.get("DeliveryStreamName")
        rows = [json.loads(base64.b64decode(r["Data"]))["columns"]["i"] for r in document["Records"]]
        self.calls.append((stream, rows))
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer(stream, document["Records"])

    def invalidate(self) -> None:
        self.invalidated += 1


def accepted(_: str, records: list[dict[str, Any]]) -> Any:
    return {"FailedRecordCount": 0, "Records": [{"SequenceNumber": "1"} for _ in records]}


def failing(*indices: int) -> Answer:
    def answer(_: str, records: list[dict[str, Any]]) -> Any:
        return {"FailedRecordCount": len(indices), "Records": [
            {"ErrorCode": "InternalFailure"} if i in indices else {"SequenceNumber": "1"}
            for i in range(len(records))]}
    return answer


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutRecords")


def setup(tmp_path: Path, script: list[Any], rows: int = 5) -> tuple[Flusher, ScriptedClients,
                                                                        PluginCounters]:
    settings = Settings(aws_kinesis_stream="main")
    counters = PluginCounters()
    spool = Spool(tmp_path / "kinesis", max_records=1000, max_bytes=1 << 30, on_drop=counters.drop)
    for i in range(rows):
        spool.append(KIND_RESULT, json.dumps({"name": "q", "columns": {"i": i}}).encode())
    accumulator = Accumulator("aws_kinesis", KINESIS, spool, counters, settings,
                              host_identifier="h")
    clients = ScriptedClients(script)
    return Flusher([accumulator], settings, clients_factory=lambda _: clients), clients, counters


def test_the_answer_of_each_entry_is_reported_and_only_failed_ones_go_again(tmp_path: Path) -> None:
    flusher, clients, counters = setup(tmp_path, [failing(0, 4), accepted])
    flusher.turn(0.0, draining=True)
    flusher.turn(100.0, draining=True)
    assert clients.calls == [("main", [0, 1, 2, 3, 4]), ("main", [0, 4])]
    assert counters.delivered == 5 and counters.retried == 2 and counters.put_calls == 2


def test_a_failed_call_backs_off_and_expired_credentials_are_renewed(tmp_path: Path) -> None:
    script = [client_error("ExpiredTokenException"), EndpointConnectionError(endpoint_url="x"),
              accepted, accepted]
    flusher, clients, counters = setup(tmp_path, script)
    sent, _ = flusher.turn(0.0, draining=True)
    assert sent and clients.invalidated == 1 and flusher.accumulators[0].state() == "retrying"
    assert flusher.turn(0.0, draining=True)[0] is False, "backing off"
    flusher.turn(1000.0, draining=True)
    assert flusher.accumulators[0].state() == "retrying" and "EndpointConnectionError" in counters.last_error
    flusher.turn(2000.0, draining=True)
    flusher.turn(2000.0, draining=True)
    assert counters.delivered == 5 and flusher.accumulators[0].state() == "ok" and counters.retried == 10
    # Renewed credentials go again with the whole batch; after a call failed for the service's
    # trouble, one record probes first (pacing), then the rest go.
    assert [rows for _, rows in clients.calls] == [[0, 1, 2, 3, 4]] * 2 + [[0], [1, 2, 3, 4]]


def test_an_error_only_an_operator_can_fix_waits_the_whole_cap(tmp_path: Path) -> None:
    flusher, _, counters = setup(tmp_path, [client_error("AccessDeniedException"), accepted,
                                            accepted])
    flusher.turn(0.0, draining=True)
    assert flusher.accumulators[0].state() == "failing"
    sent, wake = flusher.turn(59.0, draining=True)
    assert not sent and wake == 60.0
    assert flusher.turn(60.0, draining=True)[0] and flusher.accumulators[0].state() == "ok"
    assert counters.delivered == 1, "one record probes first"
    flusher.turn(60.0, draining=True)
    rows = StatusReport(flusher).rows()
    assert rows[0]["state"] == "ok" and rows[0]["credential_source"] == "scripted"
    assert rows[0]["endpoint"] == "https://kinesis.us-east-1.amazonaws.com"  # the client's own
    assert rows[0]["spool_records"] == 0 and rows[0]["delivered"] == 5
