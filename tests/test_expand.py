"""Batch-format result lines expand into exactly osqueryd's event lines (fidelity, pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osquery_aws_logger.delivery.batching import KINESIS_LIMITS
from osquery_aws_logger.delivery.shaper import Rules, shape
from osquery_aws_logger.results.expand import expand
from osquery_aws_logger.results.scan import count_rows
from osquery_aws_logger.spool.record import KIND_RESULT, SpooledRecord
from tests.query_log import QueryRun, batch_line, event_lines

names = st.text(min_size=1, max_size=12)
texts = st.text(max_size=16)  # unicode and empty values included


def rows(numerics: bool) -> st.SearchStrategy[list[dict[str, Any]]]:
    value = st.one_of(texts, st.integers(-(1 << 63), (1 << 63) - 1),
                      st.floats(allow_nan=False, allow_infinity=False)) if numerics else texts
    return st.lists(st.dictionaries(names, value, max_size=6), max_size=8)


@st.composite
def runs(draw: st.DrawFn) -> QueryRun:
    numerics = draw(st.booleans())
    snapshot = draw(st.booleans())
    run = QueryRun(
        name=draw(names), host_identifier=draw(texts), epoch=draw(st.integers(0, 1 << 32)),
        counter=draw(st.integers(0, 1 << 32)), unix_time=draw(st.integers(0, 1 << 33)),
        numerics=numerics,
        # Decoration names that are not legacy field names (osquery would write both keys).
        decorations=draw(st.dictionaries(names.filter(lambda n: n not in {
            "name", "hostIdentifier", "calendarTime", "unixTime", "epoch", "counter",
            "numerics", "decorations", "columns", "action", "diffResults", "snapshot"}),
            texts, max_size=3)),
        decorations_top_level=draw(st.booleans()))
    if snapshot:
        run.snapshot = draw(rows(numerics))
    else:
        run.removed = draw(rows(numerics))
        run.added = draw(rows(numerics))
    return run


def dump(document: Any) -> str:
    # Key order counts: compare the JSON text, as osquery writes it.
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


@settings(max_examples=500, deadline=None)
@given(run=runs())
def test_a_batch_line_expands_into_exactly_the_event_lines(run: QueryRun) -> None:
    events = expand(json.loads(batch_line(run)))
    assert events is not None
    assert [dump(event) for event in events] == event_lines(run)


@given(run=runs())
def test_event_lines_pass_unchanged(run: QueryRun) -> None:
    for line in event_lines(run):
        assert expand(json.loads(line)) is None


def test_a_line_that_only_looks_like_a_batch_is_left_alone() -> None:
    assert expand({"name": "q", "snapshot": [{"a": "1"}]}) is None  # no action "snapshot"
    assert expand({"name": "q", "diffResults": {"added": "not rows"}}) is None
    assert expand({"name": "q", "diffResults": {"removed": [], "added": []}}) == []


def shaped_events(line: bytes, *, reads: list[int] | None = None) -> list[bytes]:
    """Every record the shaper makes of a batch line with results as events (no I/O); the
    bytes of each read of the line again are added to `reads`."""
    rules = Rules(limits=KINESIS_LIMITS, results_as_events=True, record_ids=False,
                  random_key=False, host_identifier="h", route=lambda status, name: "s")
    record = SpooledRecord(1, 0, count_rows(line), KIND_RESULT, "", line, 0.0)
    drops: list[tuple[str, int, str]] = []
    def read_span(_: SpooledRecord, start: int, end: int) -> bytes:
        if reads is not None:
            reads.append(end - start)
        return line[start:end]

    source = shape(record, rules, read_span, lambda *drop: drops.append(drop))
    assert not drops
    out: list[tuple[bytes, int, str]] = []
    while source is not None and source.left:
        source.take(out, 7, 2000, lambda *drop: drops.append(drop))  # a few rows at a time
    assert not drops
    return [record for record, _, _ in out]


@settings(max_examples=300, deadline=None)
@given(run=runs())
def test_the_flusher_s_byte_form_is_the_same_json(run: QueryRun) -> None:
    line = batch_line(run).encode()
    assert count_rows(line) == len(event_lines(run))
    events = shaped_events(line)
    # log_type first, then exactly osqueryd's event line (orjson may spell a float differently:
    # 1e16 for 1e+16, so compared parsed, with key order).
    assert [dump(json.loads(event)) for event in events] == [
        dump({"log_type": "result", **json.loads(e)}) for e in event_lines(run)]


def test_a_big_line_read_again_in_windows_gives_the_same_records_reading_it_about_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Rows of every size, one far wider than a window, across many window edges.
    snapshot = [{"i": str(i), "pad": "p" * (i % 97)} for i in range(6000)]
    snapshot[2500]["blob"] = "b" * 300_000
    line = batch_line(QueryRun(name="pack_big", snapshot=snapshot)).encode()
    held = shaped_events(line)
    monkeypatch.setattr("osquery_aws_logger.delivery.shaper.HOLD_BELOW", 0)  # every line read again
    reads: list[int] = []
    windowed = shaped_events(line, reads=reads)
    assert windowed == held and len(held) == 6000
    assert sum(reads) <= 3 * len(line), "each call's worth is a slice of a window read once"


def test_a_row_nested_deeper_than_orjson_writes_ships_as_the_bytes_it_came_in() -> None:
    # A small line is parsed and its rows written back with orjson.dumps, which stops at 255
    # levels (json's fallback at the recursion limit): such a line is walked instead.
    deep = b"[" * 1000 + b"]" * 1000
    line = b'{"snapshot":[{"a":"x"},' + deep + b'],"action":"snapshot","name":"q"}'
    events = shaped_events(line)
    assert len(events) == 2 and deep in events[1]
    assert count_rows(line) == 2
