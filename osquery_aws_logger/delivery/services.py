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

from ..results.records import partition_key
from ..settings import ServiceSettings, Settings
from .aggregate import FirehosePack, KplAggregate
from .aws import AwsClients, Endpoint, fips_custom_refusal
from .batching import FIREHOSE_LIMITS, KINESIS_LIMITS, Entry, ServiceLimits, kinesis_limits

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
    """One AWS service a plugin delivers to: all that differs between services."""

    #: botocore's name for the service (its client, its endpoint data).
    name: str
    #: The logger plugin osqueryd knows it as (osquery's own AWS logger of the same name).
    plugin: str
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

    def endpoint(self, settings: Settings) -> Endpoint:
        """Where this service's client goes, as the settings say."""
        view = self.settings(settings)
        return Endpoint(self.name, view.region, view.region_option, view.endpoint,
                        view.endpoint_option)

    def problem(self, settings: Settings) -> str | None:
        """Why this service cannot ship with these settings, if it cannot (records wait)."""
        view = self.settings(settings)
        if not view.stream:
            return f"{view.stream_option} is empty: set it to the {self.name} stream to deliver to"
        proxy = settings.proxy_problem()
        if proxy:
            return proxy
        if settings.aws_enforce_fips:
            # A custom endpoint cannot be checked to be FIPS: refused, as osquery refuses it
            # (STS's counts when a role is assumed).
            custom = [(view.endpoint_option, view.endpoint)]
            if settings.aws_sts_arn_role:
                custom.append(("aws_sts_endpoint", settings.aws_sts_endpoint))
            for option, value in custom:
                if value:
                    return fips_custom_refusal(option)
        return None

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


def _kinesis(settings: Settings) -> ServiceSettings:
    return ServiceSettings(
        service="kinesis", stream=settings.aws_kinesis_stream, period=settings.aws_kinesis_period,
        endpoint=settings.aws_kinesis_endpoint, region=settings.aws_kinesis_region,
        routes=settings.aws_kinesis_routes, status_stream=settings.aws_kinesis_status_stream,
        forwards_status=not settings.aws_kinesis_disable_log_status,
        many_rows_per_record=settings.aws_kinesis_aggregate, compression="",
        random_partition_key=settings.aws_kinesis_random_partition_key,
        max_record_kib=settings.aws_kinesis_max_record_size_kib,
        stream_option="aws_kinesis_stream", region_option="aws_kinesis_region",
        endpoint_option="aws_kinesis_endpoint")


def _firehose(settings: Settings) -> ServiceSettings:
    return ServiceSettings(
        service="firehose", stream=settings.aws_firehose_stream,
        period=settings.aws_firehose_period, endpoint=settings.aws_firehose_endpoint,
        region=settings.aws_firehose_region, routes=settings.aws_firehose_routes,
        status_stream=settings.aws_firehose_status_stream, forwards_status=True,
        many_rows_per_record=settings.aws_firehose_pack,
        compression=settings.aws_firehose_compression, random_partition_key=False,
        stream_option="aws_firehose_stream", region_option="aws_firehose_region",
        endpoint_option="aws_firehose_endpoint")


KINESIS: Final = Service(
    name="kinesis", plugin="aws_kinesis", limits=KINESIS_LIMITS, operation="PutRecords",
    _method="put_records", _stream_field="StreamName", _answer_records="Records",
    _failed_count="FailedRecordCount", _describe=_describe_kinesis, _view=_kinesis,
    _limits_for=lambda view: kinesis_limits(view.max_record_kib))
FIREHOSE: Final = Service(
    name="firehose", plugin="aws_firehose", limits=FIREHOSE_LIMITS, operation="PutRecordBatch",
    _method="put_record_batch", _stream_field="DeliveryStreamName",
    _answer_records="RequestResponses", _failed_count="FailedPutCount",
    _describe=_describe_firehose, _view=_firehose,
    # Firehose's record limit is fixed (1,000 KiB); only Kinesis streams can raise theirs.
    _limits_for=lambda view: FIREHOSE_LIMITS)
#: The services a plugin can deliver to, in the order their plugins are registered.
SERVICES: Final = {s.name: s for s in (KINESIS, FIREHOSE)}


def clients_for(settings: Settings, services: Sequence[Service] = tuple(SERVICES.values()),
                **kwargs: Any) -> AwsClients:
    """The AWS clients for these settings, knowing where each service's client goes."""
    return AwsClients(settings, {service.name: service.endpoint(settings) for service in services},
                      **kwargs)
