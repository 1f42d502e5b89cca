"""A result line walked as bytes: how many rows it holds and where they are, without parsing it.

osquery's batch format puts a whole query run in one line (``{"diffResults": {"removed": [..],
"added": [..]}, <legacy fields>}`` or ``{"snapshot": [..], "action": "snapshot", <legacy
fields>}``), and a snapshot line can be tens of MB. Parsing such a line into Python objects
costs ten times its size in memory, past osquery's watchdog limit, and its rows are wanted one
call's worth at a time anyway. So the line is walked here with compiled patterns over its bytes:
every row's byte span is found (one pattern match for osquery's flat rows), the fields every
row shares are parsed (they are small), and nothing else is built. The walk validates the
whole line as JSON (RFC 8259, as strict as orjson except that lone surrogate escapes and big
numbers pass, as they do for ``json``), so a line either yields all its rows or none.

The thrift side counts a line's rows with `count_rows` before spooling it (so caps and drops
count rows even for lines the flusher never read); the flusher reads it again with `read_batch`
and takes its rows with `row_spans`. Both read a line the same way (a small line parsed by
orjson, as an event line is; a big one, or one orjson refuses, walked), so they agree on every
line.

Pure: no I/O, no recursion (nesting depth is counted, not recursed into).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator
from typing import Any, Final, NamedTuple

import orjson

#: Deepest nesting accepted, as orjson's own limit: deeper JSON is refused as not_json.
MAX_DEPTH: Final = 1024
#: Lines up to this size are parsed whole by orjson (fast, and the memory is small); bigger
#: ones are walked here and only their small fields parsed.
PARSE_WHOLE_BELOW: Final = 1 << 20
#: The same for batch lines, whose parsed rows are held until they are all taken: a quarter
#: MiB parses to about a MiB of objects, less than the raw bytes a bigger line holds
#: (`delivery.shaper.HOLD_BELOW`). The usual query run (tens of rows) is far below it, and
#: parsing costs a few µs where walking costs tens.
PARSE_BATCH_BELOW: Final = 256 << 10
#: Bytes of a non-ASCII line checked as UTF-8 at a time (never a copy of the whole line).
_UTF8_CHUNK: Final = 1 << 20

_WS = rb"[ \t\n\r]*"
_STRING = rb'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"'
_NUMBER = rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
_SCALAR = rb"(?:" + _STRING + rb"|" + _NUMBER + rb"|true|false|null)"
_MEMBER = _STRING + _WS + rb":" + _WS + _SCALAR
#: An object of scalars only: every osquery row, and most decorations.
_FLAT_OBJECT = re.compile(rb"\{" + _WS + rb"(?:" + _MEMBER + _WS + rb"(?:," + _WS + _MEMBER
                          + _WS + rb")*)?\}")
_STRING_AT = re.compile(_STRING)
_OTHER_SCALAR = re.compile(_NUMBER + rb"|true|false|null")
_SPACE = re.compile(_WS)
_KEY = re.compile(rb"(" + _STRING + rb")" + _WS + rb":" + _WS)
#: The keys that make a batch line, as keys (followed by a colon): an event line's
#: ``"action":"snapshot"`` is a value, and is not mistaken for one.
_BATCH_KEY = re.compile(rb'"(?:diffResults|snapshot)"' + _WS + rb":")

#: 19 digits in a row may be an integer past 64 bits, which orjson reads as a float (losing
#: digits) where a row's bytes keep it: such a line is walked (a long digit string too). Found
#: in a copy of the line with every digit made "9", every opening bracket "{" (counted for
#: `_PARSED_NESTING`) and the rest " " (a pattern costs ten times more).
_MARKS: Final = bytes(0x39 if 0x30 <= byte <= 0x39 else 0x7B if byte in b"{[" else 0x20
                      for byte in range(256))
_LONG_DIGITS: Final = b"9" * 19

#: Brackets a parsed batch line may hold beyond one per row (orjson.dumps writes 254 levels).
_PARSED_NESTING: Final = 200

_QUOTE, _LBRACE, _RBRACE, _LBRACKET, _RBRACKET, _COMMA = b'"{}[],'

#: Keys of a batch line that carry its rows rather than the fields every row repeats.
ROW_KEYS: Final = frozenset({"diffResults", "snapshot", "action"})


class Unshippable(ValueError):
    """A line that can never be sent; `reason` is a drop reason of the counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class _Invalid(Exception):
    """Not JSON at byte `at`."""

    def __init__(self, at: int, what: str) -> None:
        self.at = at
        super().__init__(what)


class RowArray(NamedTuple):
    """One array of rows in a batch line: its action and the bytes between its brackets, or
    the rows themselves when the line was parsed whole (`read_batch`). A tuple: one or two
    are made for every batch line, on the thrift side too."""

    action: str
    start: int  # the first byte after "[" (0 when parsed)
    end: int  # the "]" (0 when parsed)
    rows: int
    values: list[Any] | None = None


class BatchLine(NamedTuple):
    """A batch-format line: the fields every row's event repeats, and where its rows are."""

    legacy: dict[str, Any]
    arrays: tuple[RowArray, ...]

    @property
    def rows(self) -> int:
        return sum(array.rows for array in self.arrays)


def _not_json_constant(name: str) -> Any:
    """NaN and Infinity: Python's json reads them, JSON has no such values (a record holding
    one is not JSON to its consumers, and the byte walker refuses them too)."""
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes | memoryview) -> Any:
    """One JSON value: orjson, or json for what orjson refuses but JSON allows (integers past
    64 bits, lone surrogate escapes). Too deep, or not JSON: Unshippable("not_json")."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unshippable("invalid_utf8", f"byte {exc.start}") from None
    try:
        return json.loads(text, parse_constant=_not_json_constant)
    except RecursionError:
        raise Unshippable("not_json", f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise Unshippable("not_json", f"{type(exc).__name__} at char "
                          f"{getattr(exc, 'pos', '?')}") from None


def check_utf8(line: bytes | memoryview) -> None:
    """Raise Unshippable("invalid_utf8") unless `line` is UTF-8, a chunk at a time."""
    if isinstance(line, bytes) and line.isascii():
        return
    view = memoryview(line)
    decoder = codecs.getincrementaldecoder("utf-8")()
    for start in range(0, len(view), _UTF8_CHUNK):
        try:
            decoder.decode(view[start:start + _UTF8_CHUNK])
        except UnicodeDecodeError as exc:
            raise Unshippable("invalid_utf8", f"byte {start + exc.start}") from None
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise Unshippable("invalid_utf8", f"byte {len(view) - 1 + exc.start}") from None


def _space(buffer: bytes | memoryview, pos: int, size: int | None = None) -> int:
    match = _SPACE.match(buffer, pos, len(buffer) if size is None else size)
    return match.end() if match else pos


def _string_end(buffer: bytes | memoryview, pos: int, size: int) -> int:
    match = _STRING_AT.match(buffer, pos, size)
    if match is None:
        raise _Invalid(pos, "a malformed string")
    return match.end()


def _key(buffer: bytes | memoryview, pos: int, size: int | None = None) -> tuple[int, int, int]:
    """A member's key at `pos`: its span (quotes included) and where its value starts."""
    match = _KEY.match(buffer, pos, len(buffer) if size is None else size)
    if match is None:
        raise _Invalid(pos, "a malformed object member")
    return match.start(1), match.end(1), match.end()


def skip_value(buffer: bytes | memoryview, pos: int, end: int | None = None) -> int:
    """Where the JSON value starting at `pos` ends (whitespace before it skipped), looking no
    further than `end`. Raises _Invalid for anything that is not one whole value there, or
    nested deeper than MAX_DEPTH."""
    size = len(buffer) if end is None else end
    closers = bytearray()  # the closing bracket of each open container
    pos = _space(buffer, pos, size)
    while True:
        # A value starts at pos.
        head = buffer[pos] if pos < size else -1
        if head == _QUOTE:
            pos = _string_end(buffer, pos, size)
        elif head == _LBRACE and (flat := _FLAT_OBJECT.match(buffer, pos, size)) is not None:
            pos = flat.end()
        elif head in (_LBRACE, _LBRACKET):
            if len(closers) >= MAX_DEPTH:
                raise _Invalid(pos, f"nested deeper than {MAX_DEPTH} levels")
            closers.append(_RBRACE if head == _LBRACE else _RBRACKET)
            pos = _space(buffer, pos + 1, size)
            if pos < size and buffer[pos] == closers[-1]:
                closers.pop()
                pos += 1
            elif head == _LBRACE:
                pos = _space(buffer, _key(buffer, pos, size)[2], size)
                continue
            else:
                continue
        else:
            scalar = _OTHER_SCALAR.match(buffer, pos, size)
            if scalar is None:
                raise _Invalid(pos, "not a JSON value")
            pos = scalar.end()
        # After a value: a separator, or the end of one or more containers.
        while closers:
            pos = _space(buffer, pos, size)
            after = buffer[pos] if pos < size else -1
            if after == _COMMA:
                pos = _space(buffer, pos + 1, size)
                if closers[-1] == _RBRACE:
                    pos = _space(buffer, _key(buffer, pos, size)[2], size)
                break
            if after != closers[-1]:
                raise _Invalid(pos, "a malformed array or object")
            closers.pop()
            pos += 1
        else:
            return pos


def row_spans(buffer: bytes | memoryview, pos: int, end: int, *, after_row: bool = False,
              final: bool = True) -> Iterator[tuple[int, int]]:
    """The (start, end) byte spans of the elements of an array, read from `pos` up to `end`
    (its "]" when `final`, else the end of a window of it): a row each. `after_row` says `pos`
    follows an element (a comma comes first). Stops early, without raising, at an element that
    does not end inside the window (or is not JSON), so a caller can read on from there; in a
    window that is not `final`, an element is only taken once what follows it is seen."""
    size = min(end, len(buffer))
    first = not after_row
    flat = _FLAT_OBJECT.match
    while True:
        pos = _space(buffer, pos, size)
        if pos >= size:
            return
        if not first:
            if buffer[pos] != _COMMA:
                return
            pos = _space(buffer, pos + 1, size)
        first = False
        match = flat(buffer, pos, size)
        if match is not None:
            stop = match.end()
        else:
            try:
                stop = skip_value(buffer, pos, size)
            except _Invalid:
                return
        if not final and _space(buffer, stop, size) >= size:
            return  # may go on past the window (a number cut short looks whole)
        yield pos, stop
        pos = stop


def _walk_array(buffer: bytes | memoryview, pos: int) -> tuple[int, int, int]:
    """An array of rows at `pos` ("[" there): its content's start, its "]" and its rows."""
    start = pos + 1
    rows = 0
    cursor = _space(buffer, start)
    size = len(buffer)
    if cursor < size and buffer[cursor] == _RBRACKET:
        return start, cursor, 0
    flat = _FLAT_OBJECT.match
    while True:
        match = flat(buffer, cursor)
        cursor = match.end() if match is not None else skip_value(buffer, cursor)
        rows += 1
        cursor = _space(buffer, cursor)
        after = buffer[cursor] if cursor < size else -1
        if after == _RBRACKET:
            return start, cursor, rows
        if after != _COMMA:
            raise _Invalid(cursor, "a malformed array of rows")
        cursor = _space(buffer, cursor + 1)


def _key_text(buffer: bytes | memoryview, start: int, end: int) -> str:
    raw = bytes(buffer[start + 1:end - 1])
    if b"\\" not in raw:
        return raw.decode("utf-8", "surrogateescape")
    return str(loads(bytes(buffer[start:end])))


def _walk_object(line: bytes | memoryview, pos: int, value: Callable[[str, int], int]) -> int:
    """Walk the members of the object whose brace is at `pos`: `value(key, start)` reads or
    skips each member's value and answers where it ends. Answers the offset after the object."""
    size = len(line)
    pos = _space(line, pos + 1)
    if pos < size and line[pos] == _RBRACE:
        return pos + 1
    while True:
        key_start, key_end, pos = _key(line, pos)
        pos = _space(line, value(_key_text(line, key_start, key_end), pos))
        after = line[pos] if pos < size else -1
        if after == _RBRACE:
            return pos + 1
        if after != _COMMA:
            raise _Invalid(pos, "a malformed object")
        pos = _space(line, pos + 1)


def might_be_batch(line: bytes | memoryview) -> bool:
    """Whether a line may be in batch format: the cheap test both sides apply first (a key
    spelt with escapes is not looked for, on either side). A view is searched in place."""
    return _BATCH_KEY.search(line) is not None


def scan_line(line: bytes | memoryview) -> BatchLine | None:
    """The batch-format layout of a result line, or None when it is not in batch format (an
    event line, or anything else: sent as it is). A batch line that is not valid JSON or UTF-8
    raises Unshippable, so such a line is one bad row, never a few good rows and a bad rest."""
    return _walked(line) if might_be_batch(line) else None


def _walked(line: bytes | memoryview) -> BatchLine | None:
    check_utf8(line)
    try:
        return _scan(line)
    except _Invalid as exc:
        raise Unshippable("not_json", f"{exc} at byte {exc.at}") from None


def _scan(line: bytes | memoryview) -> BatchLine | None:
    size = len(line)
    pos = _space(line, 0)
    if pos >= size or line[pos] != _LBRACE:
        return None  # not an object: the event path refuses it
    members: dict[str, tuple[int, int]] = {}
    diff_arrays: list[tuple[str, int, int, int]] | None = None
    diff_is_arrays = False
    snapshot: tuple[int, int, int] | None = None

    def value(key: str, pos: int) -> int:
        nonlocal diff_arrays, diff_is_arrays, snapshot
        value_end: int
        if key == "snapshot" and pos < size and line[pos] == _LBRACKET:
            snapshot = _walk_array(line, pos)
            value_end = snapshot[1] + 1
        elif key == "diffResults" and pos < size and line[pos] == _LBRACE:
            diff_arrays, diff_is_arrays, value_end = _walk_diff(line, pos)
        else:
            value_end = skip_value(line, pos)
            if key == "snapshot":
                snapshot = None
            elif key == "diffResults":
                diff_arrays, diff_is_arrays = None, False
        members.pop(key, None)  # a repeated key: the last one counts, as in json
        members[key] = (pos, value_end)
        return value_end

    pos = _walk_object(line, pos, value)
    if _space(line, pos) != size:
        raise _Invalid(pos, "bytes after the JSON value")
    arrays: tuple[RowArray, ...]
    if diff_arrays is not None or "diffResults" in members:
        if diff_arrays is None or not diff_is_arrays:
            return None
        arrays = tuple(RowArray(*found) for found in diff_arrays)
    elif snapshot is not None and _parsed(line, members.get("action")) == "snapshot":
        arrays = (RowArray("snapshot", *snapshot),)
    else:
        return None
    legacy = {key: _parsed(line, span) for key, span in members.items() if key not in ROW_KEYS}
    return BatchLine(legacy, arrays)


def _walk_diff(line: bytes | memoryview, pos: int) -> tuple[list[tuple[str, int, int, int]], bool, int]:
    """diffResults' object at `pos`: its arrays in order, whether every member is an array,
    and where the object ends."""
    size = len(line)
    found: dict[str, tuple[str, int, int, int]] = {}
    all_arrays = True
    pos = _space(line, pos + 1)
    if pos < size and line[pos] == _RBRACE:
        return [], True, pos + 1
    while True:
        key_start, key_end, pos = _key(line, pos)
        action = _key_text(line, key_start, key_end)
        found.pop(action, None)
        if pos < size and line[pos] == _LBRACKET:
            start, close, rows = _walk_array(line, pos)
            found[action] = (action, start, close, rows)
            pos = close + 1
        else:
            pos = skip_value(line, pos)
            all_arrays = False
        pos = _space(line, pos)
        after = line[pos] if pos < size else -1
        if after == _RBRACE:
            return list(found.values()), all_arrays, pos + 1
        if after != _COMMA:
            raise _Invalid(pos, "a malformed diffResults object")
        pos = _space(line, pos + 1)


def _parsed(line: bytes | memoryview, span: tuple[int, int] | None) -> Any:
    if span is None:
        return None
    return loads(line[span[0]:span[1]])


def top_fields(line: bytes | memoryview, names: frozenset[str]) -> dict[str, Any]:
    """The members `names` of a line's top-level object (the whole line validated, every other
    value skipped unparsed): what a big event line is shipped by. Raises Unshippable."""
    check_utf8(line)
    size = len(line)
    try:
        pos = _space(line, 0)
        if pos >= size or line[pos] != _LBRACE:
            raise Unshippable("not_json", "not a JSON object")
        fields: dict[str, Any] = {}

        def value(key: str, pos: int) -> int:
            value_end = skip_value(line, pos)
            if key in names:
                fields[key] = loads(line[pos:value_end])
            return value_end

        pos = _walk_object(line, pos, value)
        if _space(line, pos) != size:
            raise _Invalid(pos, "bytes after the JSON value")
    except _Invalid as exc:
        raise Unshippable("not_json", f"{exc} at byte {exc.at}") from None
    return fields


def read_batch(line: bytes | memoryview) -> BatchLine | None:
    """`scan_line`'s answer, from orjson for a line under PARSE_BATCH_BELOW (its arrays carry
    their rows as values): what both sides use, so the thrift side's count and the flusher's
    rows come from the same reading of each line. What orjson refuses (lone surrogate escapes
    and everything that is not JSON) or could read as a float (19 digits or more) is walked,
    which refuses or reads it as JSON's rules say; what orjson reads, the walk reads the same
    (tests/test_scan.py), but for a key repeated in one object, which JSON leaves open: parsed,
    the last value in the first key's place (as json reads it); walked, the last in the last."""
    if not might_be_batch(line):
        return None
    if len(line) < PARSE_BATCH_BELOW:
        raw = line if isinstance(line, bytes) else bytes(line)
        marks = raw.translate(_MARKS)
        if _LONG_DIGITS not in marks:
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                pass
            else:
                batch = _parsed_batch(parsed)
                # A row is written back with orjson.dumps, which refuses 255 levels of nesting:
                # a line with enough brackets beyond one per row to nest a row that deep is
                # walked, and its rows go out as the bytes they came in.
                if batch is None or marks.count(b"{") - batch.rows < _PARSED_NESTING:
                    return batch
    return _walked(line)


def _parsed_batch(line: Any) -> BatchLine | None:
    """`_scan`'s rules, on a parsed line."""
    if not isinstance(line, dict):
        return None
    arrays: tuple[RowArray, ...]
    if "diffResults" in line:
        diff = line["diffResults"]
        if not isinstance(diff, dict):
            return None
        found = []
        for action, rows in diff.items():
            if not isinstance(rows, list):
                return None
            found.append(RowArray(action, 0, 0, len(rows), rows))
        arrays = tuple(found)
    elif isinstance(snapshot := line.get("snapshot"), list) and line.get("action") == "snapshot":
        arrays = (RowArray("snapshot", 0, 0, len(snapshot), snapshot),)
    else:
        return None
    for key in ROW_KEYS:  # what is left is the fields every row repeats (the line is ours)
        line.pop(key, None)
    return BatchLine(line, arrays)


def count_rows(line: bytes | memoryview) -> int:
    """The rows a result line holds: a valid batch line's rows (0 for an empty run), else 1
    (an event line, or a line that is refused: one row dropped)."""
    try:
        batch = read_batch(line)
    except Unshippable:
        return 1
    return 1 if batch is None else batch.rows


__all__ = ["MAX_DEPTH", "PARSE_BATCH_BELOW", "ROW_KEYS", "BatchLine", "RowArray", "Unshippable",
           "count_rows", "loads", "might_be_batch", "read_batch", "row_spans", "scan_line",
           "skip_value", "top_fields"]
