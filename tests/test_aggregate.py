"""KPL aggregation and Firehose packing, decoded by the libraries consumers use."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
from typing import Any

import pytest
from aws_kinesis_agg.deaggregator import deaggregate_records
from hypothesis import given, settings
from hypothesis import strategies as st

from osquery_aws_logger.delivery import aggregate as _aggregate
from osquery_aws_logger.delivery.aggregate import KPL_MAGIC, FirehosePack, KplAggregate
from osquery_aws_logger.delivery.batching import FIREHOSE_LIMITS, KINESIS_LIMITS


def deaggregate(data: bytes, key: str) -> list[tuple[bytes, str]]:
    event = {"kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": key,
                         "sequenceNumber": "1", "data": base64.b64encode(data).decode(),
                         "approximateArrivalTimestamp": 0}}
    return [(base64.b64decode(r["kinesis"]["data"]), r["kinesis"]["partitionKey"])
            for r in deaggregate_records([event])]


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(st.binary(min_size=0, max_size=3000), min_size=1, max_size=60),
       key=st.text(min_size=1, max_size=40))
def test_kpl_aggregates_split_back_into_every_row_in_order(rows: list[bytes], key: str) -> None:
    aggregate = KplAggregate(key, KINESIS_LIMITS.max_record_bytes)
    for row in rows:
        assert aggregate.add(row)
    data = aggregate.data()
    assert data.startswith(KPL_MAGIC)
    assert aggregate.size() == len(data) + len(key.encode())
    assert deaggregate(data, key) == [(row, key) for row in rows]


def test_an_aggregate_never_passes_the_record_limit() -> None:
    aggregate = KplAggregate("host-1", 10_000)
    taken = 0
    while aggregate.add(b"x" * 500):
        taken += 1
    assert aggregate.size() <= 10_000 and taken == aggregate.rows
    assert aggregate.size() + 520 > 10_000, "it stopped only when the next row would not fit"
    assert len(deaggregate(aggregate.data(), "host-1")) == taken


def test_a_row_too_big_to_wrap_is_refused_even_by_an_empty_aggregate() -> None:
    # The accumulator then sends it as a plain record (KPL consumers take both).
    aggregate = KplAggregate("k", 100)
    assert not aggregate.add(b"y" * 500) and aggregate.rows == 0


@settings(max_examples=50, deadline=None)
@given(key_length=st.integers(1, 256), slack=st.integers(-40, 40))
def test_an_aggregate_of_one_row_is_sized_exactly_whatever_the_key(key_length: int,
                                                                   slack: int) -> None:
    # A UUID host identifier is 36 characters; a row that fits plain may not fit wrapped.
    key = "k" * key_length
    limit = KINESIS_LIMITS.max_record_bytes
    probe = KplAggregate(key, limit)
    assert probe.add(b"")
    overhead = probe.size() + 1  # the row's length varint grows by one byte past 127 bytes
    row = b"r" * (limit - overhead - slack - 3)
    aggregate = KplAggregate(key, limit)
    taken = aggregate.add(row)
    exact = len(aggregate.data()) + len(key) if taken else None
    assert taken == (exact is not None)
    if taken:
        assert exact == aggregate.size() <= limit
    else:
        assert KplAggregate(key, 1 << 30).add(row)
        unlimited = KplAggregate(key, 1 << 30)
        unlimited.add(row)
        assert unlimited.size() > limit, "refused only when it would pass the limit"


def test_firehose_packs_keep_newline_delimited_rows() -> None:
    pack = FirehosePack(FIREHOSE_LIMITS.max_record_bytes)
    rows = [b'{"i":%d}\n' % i for i in range(1000)]
    assert all(pack.add(row) for row in rows)
    assert pack.data().split(b"\n")[:-1] == [row[:-1] for row in rows]


def test_gzipped_packs_decompress_to_the_rows_and_stay_under_the_limit() -> None:
    pack = FirehosePack(FIREHOSE_LIMITS.max_record_bytes, compress=True)
    incompressible = [os.urandom(5000).hex().encode() + b"\n" for _ in range(400)]
    added = [row for row in incompressible if pack.add(row)]
    data = pack.data()
    assert len(data) <= FIREHOSE_LIMITS.max_record_bytes
    assert gzip.decompress(data) == b"".join(added)
    # Concatenated members (as S3 holds several records) are one valid gzip stream.
    assert gzip.decompress(data + data) == b"".join(added) * 2


def test_the_kpl_checksum_works_on_a_fips_mode_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """With OpenSSL in FIPS mode, hashlib.md5() raises unless declared usedforsecurity=False
    (the checksum only guards the aggregate against corruption): play that hashlib."""
    real_md5 = hashlib.md5

    def fips_md5(data: bytes = b"", *, usedforsecurity: bool = True) -> Any:
        if usedforsecurity:
            raise ValueError("[digital envelope routines] unsupported: md5 is not FIPS-approved")
        return real_md5(data, usedforsecurity=False)

    monkeypatch.setattr(_aggregate.hashlib, "md5", fips_md5)
    aggregate = KplAggregate("host-1", KINESIS_LIMITS.max_record_bytes)
    assert aggregate.add(b'{"row":1}')
    data = aggregate.data()
    monkeypatch.undo()  # consumers check the digest with a plain md5() of their own
    assert deaggregate(data, "host-1") == [(b'{"row":1}', "host-1")]
