"""Shaping: a spooled line becomes the records one service takes, a call's worth at a time.

Pure apart from reading a big line's bytes again from the spool (`ReadSpan`). A line becomes a
`LineRows`: its partition key, its destination stream and the rows still to take. An event
line, a status record or a batch line shipped whole is one record; with
``aws_logger_results_as_events`` a batch-format line gives one record per row, exactly the
event line osqueryd would have written (see ``results.scan`` for how a big line is walked
without being parsed, and ``results.expand`` for the format), and its rows are made only as they
are taken, so a 20 MB snapshot never becomes 250,000 objects in memory at once.

Nothing a line holds can cost another line: every failure while shaping or taking rows is
contained to that line, whose rows still to take are counted as dropped under a reason
(`not_json`, `invalid_utf8`, `oversize`, or `malformed` for anything unexpected) and logged with
its query name, never its content.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ..results.records import RESULT_PREFIX, partition_key, record_id, result_record, with_fields
from ..results.scan import (
    PARSE_WHOLE_BELOW,
    BatchLine,
    RowArray,
    Unshippable,
    loads,
    read_batch,
    row_spans,
    top_fields,
)
from ..spool.record import KIND_STATUS, SpooledRecord
from .batching import ServiceLimits

#: A line bigger than this is not kept in memory while its rows are taken: each call's worth
#: is read again from its segment.
HOLD_BELOW: Final = 4 << 20
#: (reason, rows, detail): rows of a line given up while shaping; detail names no content.
Drop = Callable[[str, int, str], None]
#: Reads bytes `start` to `end` of a spooled record's payload again (None: the segment went).
ReadSpan = Callable[[SpooledRecord, int, int], "bytes | None"]

_EVENT_FIELDS: Final = frozenset({"name", "hostIdentifier", "epoch", "counter", "log_type"})


@dataclass(frozen=True, slots=True)
class Rules:
    """What shaping needs to know: the service's limits and the options that change records."""

    limits: ServiceLimits
    results_as_events: bool
    record_ids: bool
    random_key: bool
    host_identifier: str
    #: The stream a row goes to: (is a status record, query name) -> stream.
    route: Callable[[bool, str], str]


def _key(host: str, rules: Rules) -> str:
    """The record's partition key ("" for a service without one)."""
    if not rules.limits.uses_partition_key:
        return ""
    return partition_key(host, random_key=rules.random_key)


class LineRows:
    """The rows of one line still to take. `take` appends (record, rows it carries, key)."""

    seq: int
    key: str
    stream: str
    name: str
    total: int  # rows the line holds, as found in it
    left: int  # rows not yet taken nor dropped
    made: int = 0  # rows made by expanding a batch-format line (taken or dropped)

    def take(self, out: list[tuple[bytes, int, str]], max_rows: int, max_bytes: int,
             drop: Drop) -> None:
        raise NotImplementedError


class _Whole(LineRows):
    """A line that is one record: an event line, a status record, a batch line shipped whole."""

    def __init__(self, seq: int, record: bytes, rows: int, *, key: str, stream: str,
                 name: str) -> None:
        self.seq, self.key, self.stream, self.name = seq, key, stream, name
        self._record = record
        self._rows = self.total = rows
        self.left = max(1, rows)  # an empty batch run shipped whole is still one record

    def take(self, out: list[tuple[bytes, int, str]], max_rows: int, max_bytes: int,
             drop: Drop) -> None:
        if self.left:
            out.append((self._record, self._rows, self.key))
            self.left = 0


class _BatchRows(LineRows):
    """A batch-format line's rows, made as they are taken (see the module's docstring)."""

    def __init__(self, record: SpooledRecord, batch: BatchLine, rules: Rules, *,
                 read_span: ReadSpan, host: str, stream: str) -> None:
        self.seq, self.stream = record.seq, stream
        self.name = str(batch.legacy.get("name") or "")
        # The walk finds the rows counted when the line was spooled (one rule on both sides);
        # were they ever to differ, the line's own rows are the ones sent, none skipped.
        self.left = self.total = batch.rows
        self._rules = rules
        self._host = host
        self._legacy = batch.legacy
        self._arrays = batch.arrays
        self._read_span = read_span
        held = len(record.data) < HOLD_BELOW
        # A big line's bytes are let go of: each call's worth is read again from its segment.
        self._record = record if held else record._replace(data=b"")
        self._held = held
        self._index = 0
        self._window_bytes = 1 << 20
        self._cache: tuple[int, bytes] = (0, b"")  # (line offset, bytes) last read
        self._pos = self._arrays[0].start if self._arrays else 0
        self._in_array = 0  # rows taken from the current array
        self._row = 0  # rows taken from the line (its events' index)
        # "log_type" first, then the legacy fields (a line's own log_type gives way to it).
        # A line's own "columns" gives way to each row's, as in the reference expansion.
        shared = {k: v for k, v in batch.legacy.items() if k not in ("log_type", "columns")}
        self._head = RESULT_PREFIX + (_dump(shared)[1:-1] + b"," if shared else b"") + b'"columns":'
        self._tails = [b',"action":' + _dump(array.action) + b"}" for array in self._arrays]
        self.key = _key(host, rules)

    def take(self, out: list[tuple[bytes, int, str]], max_rows: int, max_bytes: int,
             drop: Drop) -> None:
        rules = self._rules
        limits = rules.limits
        taken_bytes = 0
        while self.left and max_rows > 0 and taken_bytes < max_bytes \
                and self._index < len(self._arrays):
            array = self._arrays[self._index]
            rows: Iterator[bytes]
            if array.values is not None:  # a small line, parsed: its rows are values
                rows = map(_dump, itertools.islice(array.values, self._in_array, None))
                final = fresh = True
            else:
                try:
                    window, base, final, fresh = self._window(array, max_bytes)
                except OSError:  # out of descriptors or memory for now: the rest goes later
                    return
                if window is None:
                    raise Unshippable("corrupt", f"query {self.name or '?'}: its segment could "
                                      f"not be read again")
                rows = self._spans(window, base, array, final)
            progress = False
            for row in rows:
                progress = True
                self._in_array += 1
                self.left -= 1
                self.made += 1
                index, self._row = self._row, self._row + 1
                key = _key(self._host, rules) if rules.random_key else self.key
                record = self._head + row + self._tails[self._index]
                if rules.record_ids:
                    record = with_fields(record, {"log_id": record_id(
                        self._legacy, self.seq, self._host, index)})
                room = limits.max_record_bytes - len(key.encode()) - len(limits.record_suffix)
                if len(record) > room:
                    drop("oversize", 1, f"{len(record) + limits.max_record_bytes - room} bytes "
                         f"over the {limits.max_record_bytes}-byte {limits.service} record "
                         f"limit, query {self.name or '?'}")
                else:
                    out.append((record + limits.record_suffix, 1, key))
                    taken_bytes += len(record)
                    max_rows -= 1
                if not self.left or max_rows <= 0 or taken_bytes >= max_bytes:
                    break
            if self._in_array >= array.rows:
                self._index += 1
                self._in_array = 0
                if self._index < len(self._arrays):
                    self._pos = self._arrays[self._index].start
            elif not progress:
                if final:
                    raise Unshippable("malformed", f"a row of query {self.name or '?'} could "
                                      f"not be read back")
                if fresh:
                    self._window_bytes *= 2  # a row wider than a whole window: widen it
                self._cache = (0, b"")  # read on from the row that did not fit
        if self.left and self._index >= len(self._arrays):
            # Fewer rows than counted when it was spooled: say so, count the rest.
            drop("malformed", self.left, f"query {self.name or '?'}: fewer rows than counted")
            self.left = 0

    def _spans(self, window: bytes, base: int, array: RowArray, final: bool) -> Iterator[bytes]:
        """The rows of `array` in `window` from the read position on, which follows them."""
        for start, end in row_spans(window, self._pos - base, array.end - base,
                                    after_row=self._in_array > 0, final=final):
            self._pos = base + end
            yield window[start:end]

    def _window(self, array: Any, max_bytes: int) -> tuple[bytes | None, int, bool, bool]:
        """The bytes rows are read from, the line offset of their first byte, whether they
        reach the end of the array, and whether they were just read."""
        if self._held:
            return self._record.data, 0, True, True
        start, cached = self._cache
        if start <= self._pos < start + len(cached):
            # Still inside the window read last time: a call's worth of small rows is a sliver
            # of it, so it is read once for many calls, not once per call.
            return cached, start, start + len(cached) >= array.end, False
        size = max(self._window_bytes, max_bytes + (64 << 10))
        end = min(array.end, self._pos + size)
        window = self._read_span(self._record, self._pos, end)
        if window is not None:
            self._cache = (self._pos, window)
        return window, self._pos, end == array.end, True


def _dump(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer past 64 bits, or a lone surrogate, read by json
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        except UnicodeEncodeError:  # a lone surrogate has no UTF-8: written as its escape
            return json.dumps(value, separators=(",", ":")).encode()


def _status_fields(data: bytes) -> dict[str, Any]:
    """A status record's own fields (we wrote it, so it parses; but never trust a disk)."""
    parsed = loads(data)
    if not isinstance(parsed, dict):
        raise Unshippable("not_json", "a spooled status record")
    return parsed


def _host(fields: dict[str, Any], rules: Rules) -> str:
    host = fields.get("hostIdentifier") or rules.host_identifier
    return host if isinstance(host, str) else str(host)


def _event_line(record: SpooledRecord, rules: Rules) -> tuple[bytes, dict[str, Any]]:
    """A line shipped as one record: ``"log_type": "result"`` added, its own bytes kept."""
    data = record.data
    limits = rules.limits
    if len(data) > limits.max_record_bytes and \
            len(data.strip()) + len(RESULT_PREFIX) - 1 > limits.max_record_bytes:
        # Too big whatever it holds: dropped unparsed.
        raise Unshippable("oversize", f"a {len(data)}-byte line, over the "
                          f"{limits.max_record_bytes}-byte {limits.service} record limit")
    if len(data) < PARSE_WHOLE_BELOW:
        return result_record(data)
    # A big line: validated and its few needed fields read, its big values never built.
    fields = top_fields(data, _EVENT_FIELDS)
    if "log_type" in fields:
        raise Unshippable("malformed", "a line over 1 MiB that carries its own log_type")
    body = data.strip()
    return (RESULT_PREFIX + body[1:] if body != b"{}" else b'{"log_type":"result"}'), fields


def shape(record: SpooledRecord, rules: Rules, read_span: ReadSpan, drop: Drop) -> LineRows | None:
    """The rows of one spooled line, or None when it gives none (its rows counted dropped
    through `drop`). Never raises: whatever a line holds costs only that line."""
    try:
        if record.kind == KIND_STATUS:
            fields = _status_fields(record.data)
            host = _host(fields, rules)
            body = record.data
            if rules.record_ids:
                body = with_fields(body, {"log_id": record_id(fields, record.seq, host)})
            return _whole(record, body, host, rules, stream=rules.route(True, ""), name="status")
        if rules.results_as_events:
            batch = read_batch(record.data)
            if batch is not None:
                host = _host(batch.legacy, rules)
                stream = rules.route(False, str(batch.legacy.get("name") or ""))
                return _BatchRows(record, batch, rules, read_span=read_span, host=host,
                                  stream=stream) if batch.rows else None
        body, fields = _event_line(record, rules)
        host = fields.get("hostIdentifier") or rules.host_identifier
        if not isinstance(host, str):
            host = str(host)
        if rules.record_ids:
            body = with_fields(body, {"log_id": record_id(fields, record.seq, host)})
        name = fields.get("name") or ""
        if not isinstance(name, str):
            name = str(name)
        return _whole(record, body, host, rules, stream=rules.route(False, name), name=name)
    except Unshippable as exc:
        drop(exc.reason, record.rows, exc.detail)
    except Exception as exc:  # a line that trips something unforeseen: it alone is given up
        drop("malformed", record.rows, f"{type(exc).__name__} while shaping a line")
    return None


def _whole(record: SpooledRecord, body: bytes, host: str, rules: Rules, *, stream: str,
           name: str) -> _Whole:
    """A line that goes as one record, keyed and checked against the record limit."""
    limits = rules.limits
    key = partition_key(host, random_key=rules.random_key) if limits.uses_partition_key else ""
    body += limits.record_suffix
    size = len(body) + (len(key) if key.isascii() else len(key.encode()))
    if size > limits.max_record_bytes:
        raise Unshippable("oversize", f"{size - limits.max_record_bytes} bytes over the "
                          f"{limits.max_record_bytes}-byte {limits.service} record limit, "
                          f"query {name or '?'}")
    return _Whole(record.seq, body, record.rows, key=key, stream=stream, name=name)


__all__ = ["HOLD_BELOW", "LineRows", "Rules", "shape"]
