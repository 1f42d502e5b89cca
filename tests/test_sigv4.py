"""The SigV4 signature covers the body actually sent (PreparedBody swaps it in before signing).

A tiny local HTTP server keeps each request exactly as it arrived; the test signs it again
with botocore's SigV4Auth, the same credentials and the request's own time, and compares.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import botocore.auth
import pytest
from aws_kinesis_agg.deaggregator import deaggregate_records
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from osquery_aws_logger.counters import PluginCounters
from osquery_aws_logger.delivery.accumulator import Accumulator
from osquery_aws_logger.delivery.flusher import Flusher
from osquery_aws_logger.delivery.services import SERVICES
from osquery_aws_logger.settings import Settings
from osquery_aws_logger.spool.spool import KIND_RESULT, Spool

ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "eu-west-3"


@dataclass
class Captured:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    captured: list[Captured]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.captured.append(Captured("POST", self.path, dict(self.headers.items()), body))
        records = json.loads(body)["Records"]
        if "Firehose" in self.headers.get("X-Amz-Target", ""):
            answer = {"FailedPutCount": 0, "Encrypted": False,
                      "RequestResponses": [{"RecordId": str(i)} for i in range(len(records))]}
        else:
            answer = {"FailedRecordCount": 0,
                      "Records": [{"SequenceNumber": str(i), "ShardId": "shardId-0"}
                                  for i in range(len(records))]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[Captured]]]:
    captured: list[Captured] = []
    handler = type("Handler", (_Handler,), {"captured": captured})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", captured
    finally:
        httpd.shutdown()
        httpd.server_close()


def resign(request: Captured, url: str, service: str, monkeypatch: pytest.MonkeyPatch,
           body: bytes | None = None) -> str:
    """The signature botocore's SigV4Auth gives this request, at the time it was signed."""
    auth = request.headers["Authorization"]
    signed = re.search(r"SignedHeaders=([^,]+)", auth)
    assert signed
    names = signed.group(1).split(";")
    headers = {k: v for k, v in request.headers.items() if k.lower() in names}
    when = datetime.datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)
    again = AWSRequest(method=request.method, url=url + request.path, headers=headers,
                       data=request.body if body is None else body)
    botocore.auth.SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), service, REGION).add_auth(again)
    found = re.search(r"Signature=([0-9a-f]{64})", again.headers["Authorization"])
    assert found
    return found.group(1)


def sent_rows(service: str, request: Captured) -> list[int]:
    rows = []
    for record in json.loads(request.body)["Records"]:
        data = base64.b64decode(record["Data"])
        if service == "kinesis":
            event = {"kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": record["PartitionKey"],
                                 "sequenceNumber": "1", "data": record["Data"],
                                 "approximateArrivalTimestamp": 0}}
            parts = [base64.b64decode(r["kinesis"]["data"]) for r in deaggregate_records([event])]
        else:
            parts = data.splitlines()
        rows += [json.loads(part)["columns"]["i"] for part in parts]
    return rows


@pytest.mark.parametrize("service", ["kinesis", "firehose"])
@pytest.mark.parametrize("many_rows_per_record", [False, True])
def test_the_signature_covers_the_body_as_sent(
        tmp_path: Path, server: tuple[str, list[Captured]], monkeypatch: pytest.MonkeyPatch,
        service: str, many_rows_per_record: bool) -> None:
    url, captured = server
    option = "aws_kinesis_aggregate" if service == "kinesis" else "aws_firehose_pack"
    settings = Settings(**{f"aws_{service}_stream": "signed", f"aws_{service}_endpoint": url,
                           option: many_rows_per_record, "aws_region": REGION,
                           "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY})
    counters = PluginCounters()
    spool = Spool(tmp_path / service, max_records=10_000, max_bytes=1 << 30, on_drop=counters.drop)
    accumulator = Accumulator(f"aws_{service}", SERVICES[service], spool, counters, settings,
                              host_identifier="host")
    flusher = Flusher([accumulator], settings)
    for i in range(700):  # two calls without packing
        row = {"name": "q", "hostIdentifier": "h\u00e9", "columns": {"i": i, "s": "\u00fc" * 40}}
        spool.append(KIND_RESULT, json.dumps(row).encode())
    while accumulator.waiting():
        sent, _ = flusher.turn(0.0, draining=True)
        assert sent
    assert counters.delivered == 700
    assert [row for r in captured for row in sent_rows(service, r)] == list(range(700))
    assert len(captured) == (1 if many_rows_per_record else 2)
    for request in captured:
        claimed = re.search(r"Signature=([0-9a-f]{64})", request.headers["Authorization"])
        assert claimed
        assert f"Credential={ACCESS_KEY}/" in request.headers["Authorization"]
        assert f"/{REGION}/{service}/aws4_request" in request.headers["Authorization"]
        assert resign(request, url, service, monkeypatch) == claimed.group(1)
        # The comparison can fail: a body differing by one byte is signed differently.
        tampered = request.body.replace(b'"signed"', b'"signes"', 1)
        assert resign(request, url, service, monkeypatch, body=tampered) != claimed.group(1)
