"""A third destination takes one `Service` declaration and nothing else: the plugin, the spool,
the accumulator, the flusher and the status table carry it as they carry Kinesis and Firehose.

The toy service's calls go to a recorder standing in for its AWS client (a pure unit test of the
machinery: no AWS service of that name exists to run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from osquery_aws_logger.counters import PluginCounters
from osquery_aws_logger.delivery.accumulator import Accumulator
from osquery_aws_logger.delivery.batching import ServiceLimits
from osquery_aws_logger.delivery.flusher import Flusher
from osquery_aws_logger.delivery.services import Service
from osquery_aws_logger.ops.status import status_row
from osquery_aws_logger.osquery.plugins import LoggerPlugin
from osquery_aws_logger.settings import ServiceSettings, Settings
from osquery_aws_logger.spool.memory import MemorySpool

#: Three records a call, 200 bytes a record: small enough to see the batching at work.
TOY_LIMITS = ServiceLimits("toy", 3, 10_000, 200, False, b"\n")


def toy_view(settings: Settings) -> ServiceSettings:
    return ServiceSettings(
        service="toy", stream="toy-stream", period=1, endpoint="", region="", routes=(),
        status_stream="", forwards_status=False, many_rows_per_record=False, compression="",
        random_partition_key=False, stream_option="aws_toy_stream")


TOY = Service(name="toy", plugin="aws_toy", limits=TOY_LIMITS, operation="PutToys",
              _method="put_toys", _stream_field="ToyStream", _answer_records="Answers",
              _failed_count="Failed", _describe=lambda client, stream: "ACTIVE", _view=toy_view,
              _limits_for=lambda view: TOY_LIMITS)


class ToyClients:
    """What the flusher's sender asks of its clients, answering every toy put."""

    read_timeout = 1.0
    credential_source = ""
    expires_at = None

    def __init__(self, _: Settings) -> None:
        self.calls: list[dict[str, Any]] = []
        self.regions: dict[str, str] = {}
        self.endpoints: dict[str, str] = {}

    def put_prepared(self, service: str, method: str, params: dict[str, Any], body: bytes) -> Any:
        assert (service, method) == ("toy", "put_toys")
        self.calls.append(json.loads(body))
        return {"Failed": 0}

    def invalidate(self) -> None:
        return None


def test_a_toy_destination_is_one_service_declaration(tmp_path: Path) -> None:
    counters = PluginCounters()
    settings = Settings()
    spool = MemorySpool(tmp_path / "toy", max_records=100, max_bytes=1 << 20,
                        on_drop=counters.drop)
    plugin = LoggerPlugin("aws_toy", lambda: TOY.settings(settings), spool, counters,
                          lambda: None, lambda: "5.23.0", "host", TOY.limits.max_records)
    for i in range(7):
        assert plugin.handle({"string": json.dumps({"name": "q", "columns": {"i": i}})}) \
            .status.code == 0
    plugin.handle({"string": json.dumps({"name": "big", "x": "x" * 300})})  # over 200 bytes
    assert plugin.handle({"action": "features"}).status.code == 0  # its view: no status logs
    accumulator = Accumulator("aws_toy", TOY, spool, counters, settings, host_identifier="host")
    clients = ToyClients(settings)
    flusher = Flusher([accumulator], settings,
                      clients_factory=lambda _: clients)  # type: ignore[arg-type,return-value]
    for _ in range(10):
        flusher.turn(100.0, draining=True)
    # Batches of at most three records to the toy stream, every row once, the big one counted.
    assert all(call["ToyStream"] == "toy-stream" and len(call["Records"]) <= 3
               for call in clients.calls)
    assert len(clients.calls) == 3 and counters.delivered == 7
    assert counters.dropped["oversize"] == 1 and counters.accepted_rows == 8
    row = status_row(accumulator.published, counters, region="", credential_source="",
                     credential_expires=0)
    assert (row["plugin"], row["service"], row["stream"], row["delivered"]) == \
        ("aws_toy", "toy", "toy-stream", 7)
