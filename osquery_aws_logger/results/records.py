"""osquery's result and status lines as the records sent: `log_type` added, the line's own bytes
kept (every value keeps the JSON type osquery wrote), ids and partition keys. Pure."""

from __future__ import annotations

import json
import random
from typing import Final

from .scan import Unshippable, loads

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
    # Kinesis allows 1-256 Unicode characters, and they must encode as UTF-8 (ASCII always does).
    key = host_identifier[:256]
    return key if key.isascii() else safe_text(key)
