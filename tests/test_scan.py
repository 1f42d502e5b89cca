"""A result line walked as bytes: rows counted and found exactly as osquery's format has them,
hostile lines refused whole, and a window of a line read as the whole line would be (pure)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osquery_aws_logger.results.scan import (
    PARSE_BATCH_BELOW,
    BatchLine,
    Unshippable,
    count_rows,
    read_batch,
    row_spans,
    scan_line,
    top_fields,
)
from tests.query_log import QueryRun, batch_line, event_lines
from tests.test_expand import runs


@settings(max_examples=200, deadline=None)
@given(run=runs())
def test_a_batch_line_s_rows_are_counted_and_found_as_osquery_wrote_them(run: QueryRun) -> None:
    line = batch_line(run).encode()
    events = [json.loads(e) for e in event_lines(run)]
    assert count_rows(line) == len(events)
    batch = scan_line(line)
    assert batch is not None and batch.rows == len(events)
    found = [json.loads(line[start:end]) for array in batch.arrays
             for start, end in row_spans(line, array.start, array.end)]
    assert found == [event["columns"] for event in events]
    for event in event_lines(run):  # an event line is one row, never walked as a batch
        assert count_rows(event.encode()) == 1 and scan_line(event.encode()) is None


@settings(max_examples=60, deadline=None)
@given(run=runs(), data=st.data())
def test_a_truncated_batch_line_is_one_bad_row_never_some_of_its_rows(run: QueryRun,
                                                                     data: st.DataObject) -> None:
    line = batch_line(run).encode()
    cut = data.draw(st.integers(1, len(line) - 1))
    truncated = line[:cut]
    assert count_rows(truncated) == 1
    try:
        assert scan_line(truncated) is None  # cut before the key that makes it a batch line
    except Unshippable as exc:
        assert exc.reason in ("not_json", "invalid_utf8")


@pytest.mark.parametrize(("line", "reason"), [
    (b'{"snapshot":[' + b"[" * 1100 + b"]" * 1100 + b'],"action":"snapshot"}', "not_json"),
    (b'{"snapshot":[{"a":"x\x00y"}],"action":"snapshot"}', "not_json"),  # a raw NUL in a string
    (b'{"snapshot":[{"a":"\xff"}],"action":"snapshot"}', "invalid_utf8"),
    (b'{"snapshot":[{"a":1}],"action":"snapshot"} trailing', "not_json"),
    (b'{"diffResults":{"added":[{"a":1},]}}', "not_json"),
])
def test_hostile_batch_lines_are_refused_whole(line: bytes, reason: str) -> None:
    with pytest.raises(Unshippable) as refused:
        scan_line(line)
    assert refused.value.reason == reason
    assert count_rows(line) == 1


def test_what_json_allows_is_walked_as_json_reads_it() -> None:
    huge = b'{"snapshot":[{"n":123456789012345678901234567890}],"action":"snapshot"}'
    assert count_rows(huge) == 1 and scan_line(huge) is not None
    surrogate = b'{"snapshot":[{"a":"\\ud800"}],"action":"snapshot","hostIdentifier":"h\\ud800"}'
    batch = scan_line(surrogate)
    assert batch is not None and batch.legacy["hostIdentifier"] == "h\ud800"
    # A repeated key: the last one counts, as json and orjson read it.
    repeated = b'{"diffResults":{"added":[{"a":1}]},"diffResults":{"added":[{"a":1},{"a":2}]}}'
    assert count_rows(repeated) == 2
    # Not objects, or not batch-shaped: one row, sent as it is (or refused by the event path).
    for line in (b'["snapshot"]', b'{"snapshot":[{"a":1}]}', b'{"diffResults":{"added":"x"}}',
                 b'{"name":"q","action":"snapshot","columns":{"snapshot":"1"}}'):
        assert count_rows(line) == 1 and scan_line(line) is None
    assert count_rows(b'{"diffResults":{"removed":[],"added":[]}}') == 0


def _layout(read: Callable[[bytes | memoryview], BatchLine | None], line: bytes | memoryview) -> object:
    """What a reading of a line answers, comparable across readings: a refusal's reason, None,
    or the shared fields and each array's action and rows (parsed from the walk's spans)."""
    try:
        batch = read(line)
    except Unshippable as exc:
        return exc.reason
    if batch is None:
        return None
    return batch.legacy, [(array.action, array.rows, array.values if array.values is not None
                           else [json.loads(bytes(line[start:end]))
                                 for start, end in row_spans(line, array.start, array.end)])
                          for array in batch.arrays]


_SHAPES = [
    b'{"snapshot":[{"n":123456789012345678901234567890}],"action":"snapshot"}',
    b'{"snapshot":[{"a":"\\ud800"}],"action":"snapshot","hostIdentifier":"h\\ud800"}',
    b'{"snapshot":[1,"x",[2],{"b":{"c":null}},true],"action":"snapshot","name":"q"}',
    b'{"snapshot":[{"a":1}]}', b'{"snapshot":{"a":1},"action":"snapshot"}',
    b'{"snapshot":[],"action":"snapshot"}', b'{"diffResults":{}}', b'{"diffResults":[]}',
    b'{"diffResults":{"added":"x"}}', b'{"diffResults":{"removed":[{"a":"1"}],"added":[]},'
    b'"snapshot":[{"b":1}],"action":"snapshot"}', b'["snapshot"]', b'"snapshot"',
    b'{"name":"q","action":"snapshot","columns":{"snapshot":"1"}}',
    b'{"snapshot":[{"a":NaN}],"action":"snapshot"}', b'{"snapshot":[{"a":1}],"action":"snapshot"}x',
    b'{"snapshot":[{"a":"\xff"}],"action":"snapshot"}', b' {"diffResults" : {"added" : [ {} ] } } ',
    b'{"snapshot":[' + b"[" * 1100 + b"]" * 1100 + b'],"action":"snapshot"}',
    b'{"snapshot":[' + b"[" * 1000 + b"]" * 1000 + b'],"action":"snapshot"}',
]


@settings(max_examples=150, deadline=None)
@given(run=runs(), data=st.data())
def test_a_small_line_parsed_whole_reads_as_the_walk_reads_it(run: QueryRun,
                                                             data: st.DataObject) -> None:
    # Both sides read a small batch line with orjson and a big one (or one orjson refuses) by
    # the walk: the two readings agree on every line, whole, truncated or hostile.
    line = batch_line(run).encode()
    cut = data.draw(st.integers(1, len(line)))
    for candidate in (line, line[:cut], *_SHAPES):
        assert len(candidate) < PARSE_BATCH_BELOW
        assert _layout(read_batch, candidate) == _layout(scan_line, candidate), candidate[:200]
        assert _layout(read_batch, memoryview(candidate)) == _layout(scan_line, candidate)
    batch = read_batch(line)
    parsed = re.search(rb"[0-9]{19}", line) is None  # else a number may be past 64 bits: walked
    assert batch is not None and all((array.values is not None) == parsed for array in batch.arrays)


def test_a_line_past_the_parse_limit_is_walked() -> None:
    rows = [{"i": str(i), "pad": "p" * 200} for i in range(PARSE_BATCH_BELOW // 200)]
    line = batch_line(QueryRun(name="pack_big", snapshot=rows)).encode()
    batch = read_batch(line)
    assert len(line) >= PARSE_BATCH_BELOW and batch is not None and batch.rows == len(rows)
    assert all(array.values is None for array in batch.arrays)
    assert _layout(read_batch, line) == _layout(scan_line, line)


def test_rows_of_any_shape_are_skipped_without_recursion() -> None:
    nested = b'{"a":' * 900 + b"1" + b"}" * 900
    line = b'{"snapshot":[' + nested + b',{"b":[1,{"c":"}]"}]}],"action":"snapshot"}'
    batch = scan_line(line)
    assert batch is not None and batch.rows == 2


def test_top_fields_reads_only_what_is_asked_of_a_big_line() -> None:
    line = b'{"name":"q","columns":{"blob":"' + b"x" * (2 << 20) + b'"},"hostIdentifier":"h"}'
    assert top_fields(line, frozenset({"name", "hostIdentifier"})) == {"name": "q",
                                                                       "hostIdentifier": "h"}
    with pytest.raises(Unshippable):
        top_fields(line[:-1], frozenset({"name"}))


@settings(max_examples=100, deadline=None)
@given(run=runs(), data=st.data())
def test_a_window_of_an_array_gives_the_rows_the_whole_line_gives(run: QueryRun,
                                                                  data: st.DataObject) -> None:
    line = batch_line(run).encode()
    batch = scan_line(line)
    assert batch is not None
    for array in batch.arrays:
        whole = list(row_spans(line, array.start, array.end))
        # Read in windows of a random size, as a big line is read again from its segment.
        pos, after, got = array.start, False, []
        width = data.draw(st.integers(1, 64))
        while len(got) < len(whole):
            end = min(array.end, pos + width)
            window = line[pos:end]
            spans = list(row_spans(window, 0, len(window), after_row=after,
                                   final=end == array.end))
            if not spans:
                width *= 2  # a row wider than the window: widen it
                continue
            got += [(pos + a, pos + b) for a, b in spans]
            pos, after = got[-1][1], True
        assert got == whole
