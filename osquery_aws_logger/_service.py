"""Kinesis and Firehose as data: limits, the typed settings view, the record builder and the calls.

Everything that differs between the two services is in one `Service` record; the accumulator,
the sender, `status` and `check` hold a Service and never branch on a service's name.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ._aggregate import FirehosePack, KplAggregate
from ._aws import AwsClients
from ._batching import (
    FIREHOSE_LIMITS,
    KINESIS_LIMITS,
    Entry,
    ServiceLimits,
    kinesis_limits,
    partition_key,
)
from ._settings import ServiceSettings, Settings

#: A record being filled with many rows: a KPL aggregate or a Firehose newline pack.
Builder = KplAggregate | FirehosePack


def _json_text(value: str) -> bytes:
    return json.dumps(value).encode()


def request_body(stream_field: bytes, stream: str, entries: Sequence[Entry], *,
                 with_keys: bool) -> bytes:
    """The request body botocore would write: the stream, then the records with base64 data
    and JSON-escaped partition keys. Joined once, so a 5 MiB call is not copied again."""
    keys: dict[str, bytes] = {}
    parts = [b'{"' + stream_field + b'":' + _json_text(stream) + b',"Records":[']
    for index, entry in enumerate(entries):
        parts.append(b'{"Data":"' if not index else b',{"Data":"')
        parts.append(binascii.b2a_base64(entry.data, newline=False))
        if with_keys:
            key = keys.get(entry.partition_key)
            if key is None:
                key = keys[entry.partition_key] = _json_text(entry.partition_key)
            parts.append(b'","PartitionKey":' + key + b"}")
        else:
            parts.append(b'"}')
    parts.append(b"]}")
    return b"".join(parts)


@dataclass(frozen=True)
class Service:
    """One AWS service a plugin delivers to."""

    name: str
    #: The limits of a default stream; `limits_for` gives those the settings ask for.
    limits: ServiceLimits
    #: The put call (botocore's operation name, as the fault proxy and CloudTrail show it).
    operation: str
    _method: str
    _stream_field: str
    _answer_records: str
    _failed_count: str
    _describe: Callable[[Any, str], str]
    _view: Callable[[Settings], ServiceSettings]
    _limits_for: Callable[[ServiceSettings], ServiceLimits]

    def settings(self, settings: Settings) -> ServiceSettings:
        """This service's options, typed."""
        return self._view(settings)

    def limits_for(self, view: ServiceSettings) -> ServiceLimits:
        """What one put call takes with these settings (a Kinesis stream's raised record size)."""
        return self._limits_for(view)

    def builder(self, view: ServiceSettings, key: str) -> Builder | None:
        """An empty record to gather many rows in, or None when rows go one per record."""
        if not view.many_rows_per_record:
            return None
        limits = self.limits_for(view)
        if limits.uses_partition_key:
            return KplAggregate(key, limits.aggregate_bytes)
        return FirehosePack(limits.aggregate_bytes, compress=view.compression == "gzip")

    def slot(self, view: ServiceSettings, key: str) -> str:
        """Rows with the same slot share an open builder: one partition key per aggregate,
        except with random keys, where any key serves (the aggregate's first one is used)."""
        return "" if view.random_partition_key else key

    def put(self, clients: AwsClients, stream: str, entries: Sequence[Entry]) -> list[str | None]:
        """One put call: each entry's error code, None for those accepted. Raises what botocore
        raises when the whole call fails."""
        body = request_body(self._stream_field.encode(), stream, entries,
                            with_keys=self.limits.uses_partition_key)
        answer = clients.put_prepared(self.name, self._method,
                                      {self._stream_field: stream, "Records": []}, body)
        if not answer.get(self._failed_count):
            return [None] * len(entries)
        return [r.get("ErrorCode") for r in answer[self._answer_records]]

    def describe(self, clients: AwsClients, stream: str) -> str:
        """The stream's status (ACTIVE, CREATING, ...): for `check`, never at extension start
        (thousands of hosts starting at once would be rate-limited by it)."""
        return self._describe(clients.client(self.name), stream)

    def test_entry(self, record: bytes, host: str) -> Entry:
        """`record` made into one entry exactly as a row is (suffix, partition key)."""
        key = partition_key(host, random_key=False) if self.limits.uses_partition_key else ""
        return Entry((0,), record + self.limits.record_suffix, key)


def _describe_kinesis(client: Any, stream: str) -> str:
    return str(client.describe_stream_summary(StreamName=stream)
               ["StreamDescriptionSummary"]["StreamStatus"])


def _describe_firehose(client: Any, stream: str) -> str:
    return str(client.describe_delivery_stream(DeliveryStreamName=stream)
               ["DeliveryStreamDescription"]["DeliveryStreamStatus"])


KINESIS: Final = Service(
    name="kinesis", limits=KINESIS_LIMITS, operation="PutRecords", _method="put_records",
    _stream_field="StreamName", _answer_records="Records", _failed_count="FailedRecordCount",
    _describe=_describe_kinesis, _view=lambda settings: settings.kinesis,
    _limits_for=lambda view: kinesis_limits(view.max_record_kib))
FIREHOSE: Final = Service(
    name="firehose", limits=FIREHOSE_LIMITS, operation="PutRecordBatch",
    _method="put_record_batch", _stream_field="DeliveryStreamName",
    _answer_records="RequestResponses", _failed_count="FailedPutCount",
    _describe=_describe_firehose, _view=lambda settings: settings.firehose,
    # Firehose's record limit is fixed (1,000 KiB); only Kinesis streams can raise theirs.
    _limits_for=lambda view: FIREHOSE_LIMITS)
SERVICES: Final = {s.name: s for s in (KINESIS, FIREHOSE)}
