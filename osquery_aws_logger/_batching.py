"""Pure record shaping and batching: what each service accepts, with no I/O anywhere here."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ._scan import Unshippable, loads


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


RESULT_PREFIX: Final = b'{"log_type":"result",'


def with_fields(record: bytes, fields: dict[str, str]) -> bytes:
    """`record` (a JSON object with at least one member) with `fields` added first."""
    if not fields:
        return record
    head = json.dumps(fields, separators=(",", ":")).encode()
    return head[:-1] + b"," + record[1:]


def record_id(parsed: dict[str, object], seq: int, host: str, row: int | None = None) -> str:
    """A stable id for one row: host, query name, epoch, counter and its spool position (and,
    for a row expanded from a batch-format line, its index in that line).

    The position is fixed when the row is spooled, so every resend carries the same id and a
    consumer can drop the duplicates that at-least-once delivery creates.
    """
    name = parsed.get("name") or ("status" if parsed.get("log_type") == "status" else "")
    at = f"{seq}" if row is None else f"{seq}.{row}"
    return f"{host}:{name}:{parsed.get('epoch', 0)}:{parsed.get('counter', 0)}:{at}"


def result_record(line: bytes) -> tuple[bytes, dict[str, object]]:
    """The record for one osquery result line: the line with ``"log_type": "result"`` added.

    The line's own bytes are kept, so every value keeps the JSON type osquery wrote (osquery's
    own AWS loggers re-serialise through a tree that turns numbers into strings). Returns the
    record and the parsed line (for its host identifier and query name).
    """
    # orjson parses a line in a fifth of json's time (and checks UTF-8 as it goes); what it
    # refuses but json takes (integers past 64 bits, lone surrogates) still goes through json.
    parsed = loads(line)
    if not isinstance(parsed, dict):
        raise Unshippable("not_json", f"a JSON {type(parsed).__name__}, not an object")
    if "log_type" in parsed:
        parsed["log_type"] = "result"
        return json.dumps(parsed, separators=(",", ":")).encode(), parsed
    body = line.strip()
    if not parsed:
        return b'{"log_type":"result"}', parsed
    return RESULT_PREFIX + body[1:], parsed


def status_record(entry: dict[str, object], version: str) -> bytes:
    """The record for one entry of osqueryd's status log array, with osquery's AWS field names.

    osqueryd serialises each entry with short keys (serializeIntermediateLog); osquery's AWS
    loggers send these long names, which consumers of those loggers already parse.
    """
    record = {
        "hostIdentifier": entry.get("h", ""),
        "calendarTime": entry.get("c", ""),
        "unixTime": entry.get("u", 0),
        "severity": entry.get("s", 0),
        "filename": entry.get("f", ""),
        "line": entry.get("i", 0),
        "message": entry.get("m", ""),
        "version": version,
        "log_type": "status",
    }
    return json.dumps(record, separators=(",", ":")).encode()


def safe_text(text: str) -> str:
    """`text` with any lone surrogate (a JSON escape like \\ud800 that names no character)
    replaced by U+FFFD, so it encodes as UTF-8: a partition key must."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def partition_key(host_identifier: str, *, random_key: bool) -> str:
    """The Kinesis partition key: the host identifier, or a random one per record."""
    if random_key or not host_identifier:
        return f"{random.getrandbits(128):032x}"
    # Kinesis allows 1-256 Unicode characters, and they must encode as UTF-8.
    return safe_text(host_identifier[:256])


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
