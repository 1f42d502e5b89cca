"""Pure batching: what one put call of each service accepts, and how many records fit one. No I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    """What one put call of a service accepts. Kinesis and Firehose differ only in these."""

    service: str
    max_records: int
    max_call_bytes: int
    #: Largest record, counting the partition key (Kinesis) or the trailing newline (Firehose).
    max_record_bytes: int
    uses_partition_key: bool
    #: Appended to every record: Firehose concatenates records in S3, so each ends a line.
    record_suffix: bytes
    #: Largest record made of many rows (KPL aggregate, Firehose pack); 0: max_record_bytes.
    max_aggregate_bytes: int = 0

    @property
    def aggregate_bytes(self) -> int:
        return self.max_aggregate_bytes or self.max_record_bytes


MIB: Final = 1024 * 1024
#: PutRecords: 500 records, 5 MiB per call, 1 MiB per record counting its partition key.
KINESIS_LIMITS: Final = ServiceLimits("kinesis", 500, 5 * MIB, MIB, True, b"")
#: PutRecords to a stream whose MaxRecordSizeInKiB was raised ("large records"): AWS doubled the
#: request limit to 10 MiB with them; a record counts its partition key as before.
KINESIS_LARGE_CALL_BYTES: Final = 10 * MIB
#: A KPL aggregate stays within 1 MiB whatever the stream takes: the KPL's own
#: AggregationMaxSize stops there, and AWS means large records to be intermittent (a shard
#: still writes 1 MiB/s; every aggregate a large record would spend the burst on small rows).
KPL_MAX_AGGREGATE_BYTES: Final = MIB


def kinesis_limits(max_record_kib: int) -> ServiceLimits:
    """PutRecords' limits for a stream whose MaxRecordSizeInKiB is `max_record_kib`."""
    if max_record_kib <= KINESIS_LIMITS.max_record_bytes // 1024:
        return KINESIS_LIMITS
    return ServiceLimits("kinesis", KINESIS_LIMITS.max_records, KINESIS_LARGE_CALL_BYTES,
                         max_record_kib * 1024, True, b"", KPL_MAX_AGGREGATE_BYTES)

#: PutRecordBatch: 500 records, 4 MiB per call, 1,000 KiB per record counting the newline.
FIREHOSE_LIMITS: Final = ServiceLimits("firehose", 500, 4 * 1024 * 1024, 1000 * 1024, False, b"\n")


@dataclass(slots=True)
class Entry:
    """A record ready to send: the spool sequence numbers of the rows in it, its payload, its
    partition key (Kinesis) and the stream it goes to."""

    seqs: tuple[int, ...]
    data: bytes
    partition_key: str = ""
    stream: str = ""

    @property
    def rows(self) -> int:
        return len(self.seqs)

    def size(self) -> int:
        # Kinesis counts the partition key's UTF-8 bytes against the record and the call.
        return len(self.data) + len(self.partition_key.encode())


def oversize(entry: Entry, limits: ServiceLimits) -> bool:
    """Whether the service would refuse this record for its size, whatever else is in the call."""
    return entry.size() > limits.max_record_bytes


def batch_length(entries: Sequence[Entry], limits: ServiceLimits) -> int:
    """How many entries from the front fit in one put call (every entry must not be oversize)."""
    total = 0
    count = 0
    for entry in entries:
        if count == limits.max_records:
            break
        size = entry.size()
        if total + size > limits.max_call_bytes:
            break
        total += size
        count += 1
    return count
