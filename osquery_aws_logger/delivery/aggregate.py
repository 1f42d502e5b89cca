"""Many rows in one record: KPL aggregation for Kinesis, newline packing (and gzip) for Firehose.

AWS bills Kinesis per 25 KB PUT payload unit and Firehose per 5 KB of each record, and a shard
takes 1,000 records/s; osquery rows are a few hundred bytes, so one row per record pays for
mostly empty units. Pure code: builders that say whether a row still fits and the bytes they
make, no I/O.

The Kinesis Producer Library's aggregated record is: the magic bytes F3 89 9A C2, a protobuf
``AggregatedRecord`` and the MD5 digest of that protobuf::

    message AggregatedRecord { repeated string partition_key_table = 1;
                               repeated string explicit_hash_key_table = 2;
                               repeated Record records = 3; }
    message Record { required uint64 partition_key_index = 1;
                     optional uint64 explicit_hash_key_index = 2;
                     required bytes data = 3; repeated Tag tags = 4; }

KCL, the Lambda deaggregation libraries and ``aws-kinesis-agg`` split it back into rows. Every
aggregate here has one partition key (the host's), so all its rows land on one shard.
"""

from __future__ import annotations

import gzip
import hashlib
from typing import Final

KPL_MAGIC: Final = b"\xf3\x89\x9a\xc2"
_MD5_SIZE: Final = 16


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


#: Record.partition_key_index = 0 (field 1, varint): every row uses the aggregate's one key.
_KEY_INDEX_ZERO: Final = _varint(1 << 3 | 0) + _varint(0)


def _kpl_record(row: bytes) -> bytes:
    """One AggregatedRecord.records entry (field 3) holding `row`."""
    return _length_delimited(3, _KEY_INDEX_ZERO + _length_delimited(3, row))


class KplAggregate:
    """Rows gathered under one partition key, up to `max_bytes` counting the key (the limit
    Kinesis puts on a record, partition key included)."""

    def __init__(self, partition_key: str, max_bytes: int) -> None:
        self.partition_key = partition_key
        self._key = partition_key.encode()
        self._parts = [_length_delimited(1, self._key)]
        self._size = len(KPL_MAGIC) + len(self._parts[0]) + _MD5_SIZE + len(self._key)
        self.max_bytes = max_bytes
        self.rows = 0

    def size(self) -> int:
        """Bytes the record would count against the limit (partition key included): exactly
        ``len(self.data()) + len(partition key in UTF-8)``."""
        return self._size

    def add(self, row: bytes) -> bool:
        """Take `row` if the aggregate stays within its limit; answer whether it was taken.

        An empty aggregate refuses a row too big to wrap: the key is counted twice (in the
        key table and as the record's partition key), so a row that fits as a plain record
        may not fit aggregated. Send such a row as a plain record; KPL consumers take both.
        """
        part = _kpl_record(row)
        if self._size + len(part) > self.max_bytes:
            return False
        self._parts.append(part)
        self._size += len(part)
        self.rows += 1
        return True

    def data(self) -> bytes:
        body = b"".join(self._parts)
        return KPL_MAGIC + body + hashlib.md5(body, usedforsecurity=False).digest()


class FirehosePack:
    """Newline-terminated rows in one Firehose record up to `max_bytes`, optionally gzipped.

    Without gzip the S3 objects are the same newline-delimited JSON as one row per record. With
    gzip each record is one gzip member and S3 objects are concatenated members (what `gzip -d`
    and most readers accept); a Firehose transform Lambda or dynamic partitioning cannot read
    them, so only use it for a plain S3 destination.
    """

    #: Room kept for gzip's worst case on incompressible input (stored blocks: 5 bytes per
    #: 64 KiB plus the header and trailer), so a gzipped record never passes the limit.
    GZIP_HEADROOM: Final = 1024

    def __init__(self, max_bytes: int, *, compress: bool = False) -> None:
        self.max_bytes = max_bytes - self.GZIP_HEADROOM if compress else max_bytes
        self.compress = compress
        self._rows: list[bytes] = []
        self._size = 0

    @property
    def rows(self) -> int:
        return len(self._rows)

    def size(self) -> int:
        return self._size

    def add(self, row: bytes) -> bool:
        """`row` ends with its newline. An empty pack takes any row: a row the service takes
        alone fits a plain pack; a gzipped one is checked once closed (see the accumulator)."""
        if self._rows and self._size + len(row) > self.max_bytes:
            return False
        self._rows.append(row)
        self._size += len(row)
        return True

    def data(self) -> bytes:
        raw = b"".join(self._rows)
        if not self.compress:
            return raw
        return gzip.compress(raw, compresslevel=6, mtime=0)
