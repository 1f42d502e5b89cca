"""Issue 18: every row delivered or counted, on every path, and the extension keeps running.

One test (or a few) per item of the issue, against the real extension process under the
osqueryd stand-in wherever the item is about the process, each under the fault that broke the
promise: hostile lines among good ones, a 20 MB snapshot as events, a cap lowered while rows
wait, 10,000 route targets under 1,024 descriptors, typos fixed by a config change, a moved
spool, a foreign spool without CAP_DAC_OVERRIDE, the table on the socket loop, a 10 MB plugin
name, and full filesystems of 2 MiB and 64 MiB. The invariant everywhere, counted in rows:
delivered + dropped (+ still waiting) == rows sent.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import struct
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_kinesis_agg.deaggregator import deaggregate_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osquery_aws_logger.counters import PluginCounters
from osquery_aws_logger.delivery.accumulator import Accumulator
from osquery_aws_logger.delivery.flusher import Flusher
from osquery_aws_logger.delivery.services import FIREHOSE, KINESIS, Service
from osquery_aws_logger.ops.status import StatusReport
from osquery_aws_logger.settings import Settings
from osquery_aws_logger.spool.spool import KIND_RESULT, Spool
from tests.conftest import Aws
from tests.harness import RunningExtension, result_lines, tmpfs, wait_for
from tests.osqueryd_standin import FatalLoggerAnswer
from tests.query_log import QueryRun, batch_line, event_lines
from tests.test_hardening import connect, ping_bytes, read_reply

Factory = type[RunningExtension]
SERVICES = ("kinesis", "firehose")
#: The capabilities a hardened unit drops (CapabilityBoundingSet=~CAP_DAC_OVERRIDE ...).
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
#: Bits of CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2) in /proc/PID/status CapEff.
DAC_BITS = (1 << 1) | (1 << 2)


# -- what the tests read -------------------------------------------------------------------------

def table(ext: RunningExtension) -> dict[str, dict[str, str]]:
    """The aws_logger_status rows by service, as osqueryd's query would get them."""
    answer = ext.standin.call(ext.uuid, "table", "aws_logger_status", {"action": "generate"})
    assert answer.status.code == 0, answer.status.message
    return {row["service"]: row for row in answer.response}


def column(row: dict[str, str], name: str) -> int:
    """A count column; the columns issue 18 adds fail clearly on a table without them."""
    assert name in row, f"the table has no column {name!r} (added by issue 18)"
    return int(row[name])


def figures(service: str, sent: int, row: dict[str, str]) -> str:
    delivered, dropped = int(row["delivered"]), int(row["dropped"])
    return (f"{service}: {sent} rows sent; delivered {delivered}, dropped {dropped} (oversize "
            f"{row['dropped_oversize']}, cap {row['dropped_cap']}, invalid "
            f"{row['dropped_invalid']}, other {row['dropped_other']}), spool_records "
            f"{row['spool_records']}, waiting_rows {row.get('waiting_rows', 'n/a')}, state "
            f"{row['state']}: {sent - delivered - dropped} rows neither delivered nor dropped")


def wait_accounted(ext: RunningExtension, sent: dict[str, int], timeout: float,
                   quiet: float = 20.0, sample: Callable[[], object] = lambda: None
                   ) -> dict[str, dict[str, str]]:
    """Wait until every row sent to each service is delivered or dropped, and answer the table.

    Gives up early when no figure has moved for `quiet` seconds (nothing left to do), and
    fails with the figures either way."""
    deadline = time.monotonic() + timeout
    last: dict[str, dict[str, str]] = {}
    moved_at = time.monotonic()
    seen: tuple[tuple[str, ...], ...] = ()
    while True:
        sample()
        last = table(ext)
        now = time.monotonic()
        if all(int(last[s]["delivered"]) + int(last[s]["dropped"]) >= n for s, n in sent.items()):
            return last
        state = tuple((r["delivered"], r["dropped"], r["spool_records"]) for r in last.values())
        if state != seen:
            seen, moved_at = state, now
        if now >= deadline or now - moved_at >= quiet:
            raise AssertionError("; ".join(figures(s, n, last[s]) for s, n in sent.items()))
        time.sleep(0.5)


def assert_accounted(row: dict[str, str], service: str, sent: int) -> None:
    """delivered + dropped + waiting_rows == rows sent, exactly (rows, not lines)."""
    delivered, dropped = int(row["delivered"]), int(row["dropped"])
    assert delivered + dropped <= sent, figures(service, sent, row)
    waiting = column(row, "waiting_rows")
    assert delivered + dropped + waiting == sent, figures(service, sent, row)


def assert_alive(ext: RunningExtension) -> None:
    """The process runs, answers a ping on a fresh connection and a table query."""
    assert ext.proc is not None
    code = ext.proc.poll()
    assert code is None, f"the extension exited with {code}: ...{ext.stderr()[-2000:]}"
    with contextlib.closing(connect(ext.standin.extension_socket(ext.uuid), timeout=10)) as sock:
        sock.sendall(ping_bytes())
        assert read_reply(sock, "ping").code == 0
    table(ext)


def arrivals(read: Callable[[], list[Any]], count: int, timeout: float) -> list[Any]:
    """What `read` answers once it holds `count` items, or after `timeout`, whichever is first
    (the caller asserts on it, so a shortfall is reported with its figures)."""
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if len(found) >= count or time.monotonic() >= deadline:
            return found
        time.sleep(0.5)


def answers(ext: RunningExtension) -> bool:
    """Whether a log call (a ping and a call on fresh connections, as osqueryd makes them) is
    answered 0 now."""
    try:
        return bool(ext.log("kinesis", result_lines(ext.standin, 1, name="probe")[0]).status.code == 0)
    except FatalLoggerAnswer:
        return False


def proc_status(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most memory the process has held resident since it started."""
    return int(proc_status(pid, "VmHWM").split()[0]) / 1024


def nofile_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no Max open files")


def kinesis_rows(records: list[tuple[bytes, str]]) -> list[tuple[bytes, str]]:
    """Rows of Kinesis records, KPL aggregates split back as a consumer does (aws-kinesis-agg)."""
    events = [{"kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": key,
                           "sequenceNumber": "1", "data": base64.b64encode(data).decode(),
                           "approximateArrivalTimestamp": 0}} for data, key in records]
    return [(base64.b64decode(r["kinesis"]["data"]), r["kinesis"]["partitionKey"])
            for r in deaggregate_records(events)]


# -- 1. poison lines ---------------------------------------------------------------------------

def hostile_lines(standin_line: str, batch: str) -> dict[str, str]:
    """Lines a buggy table, a hostile value or a torn write can put among good ones, by kind.
    Strings stand for the bytes osqueryd sends ("\\udcff" is the byte 0xff)."""
    deep = "[" * 1100 + "]" * 1100
    return {
        "deep_array": '{"name":"poison_deep","hostIdentifier":"h","columns":{"v":' + deep
                      + '},"action":"added"}',
        "deep_object": '{"name":"poison_deep_object","columns":' + '{"a":' * 1100 + "1"
                       + "}" * 1100 + "}",
        "lone_surrogate_host": '{"name":"poison_surrogate","hostIdentifier":"h\\ud800",'
                               '"columns":{"a":"1"},"action":"added"}',
        "raw_nul": '{"name":"poison_nul","columns":{"a":"x\x00y"},"action":"added"}',
        "escaped_nul": '{"name":"poison_nul_escaped","columns":{"a":"x\\u0000y"}}',
        "huge_float": '{"name":"poison_inf","columns":{"n":1e999999},"action":"added"}',
        "huge_int": '{"name":"poison_bigint","columns":{"n":' + "9" * 5000 + "}}",
        "int_past_64_bits": '{"name":"poison_u70","columns":{"n":' + str(2**70) + "}}",
        "duplicate_keys": '{"name":"poison_dup","name":"poison_dup2","hostIdentifier":"a",'
                          '"hostIdentifier":"b","columns":{}}',
        "array": "[1,2,3]",
        "string": '"a string"',
        "null": "null",
        "number": "42",
        "empty": "",
        "truncated_event": standin_line[:len(standin_line) // 2],
        "truncated_batch": batch[:len(batch) * 2 // 3],
        "invalid_utf8": '{"name":"poison_utf8","columns":{"a":"\udcff\udcfe"}}',
        "host_not_a_string": '{"name":"poison_host","hostIdentifier":{"a":[1]},"columns":{}}',
        "name_not_a_string": '{"name":["good_routed"],"columns":{}}',
    }


def interleave(good: list[str], bad: list[str]) -> list[str]:
    """Bad lines spread evenly among the good ones, with good lines after the last."""
    step = len(good) // (len(bad) + 1)
    left = iter(bad)
    out: list[str] = []
    for index, line in enumerate(good, start=1):
        out.append(line)
        if index % step == 0 and (poison := next(left, None)) is not None:
            out.append(poison)
    assert len(out) == len(good) + len(bad)
    return out


def delivered_documents(aws: Aws, service: str, streams: tuple[str, ...]) -> list[tuple[Any, str]]:
    """What each service holds as (parsed record or raw bytes, partition key)."""
    raw: list[tuple[bytes, str]] = []
    if service == "kinesis":
        for stream in streams:
            raw += aws.moto.read_stream(stream)
    else:
        raw = [(line, "") for line in aws.firehose_lines()]
    out: list[tuple[Any, str]] = []
    for data, key in raw:
        try:
            out.append((json.loads(data), key))
        except ValueError:
            out.append((data, key))
    return out


def good_indices(documents: list[tuple[Any, str]]) -> list[int]:
    return sorted(d["columns"]["i"] for d, _ in documents
                  if isinstance(d, dict) and d.get("name") in ("good", "good_routed"))


def check_poison_outcome(ext: RunningExtension, aws: Aws, service: str, *,
                         streams: tuple[str, ...], good: int, bad: int) -> None:
    row = wait_accounted(ext, {service: good + bad}, timeout=90)[service]
    documents = delivered_documents(aws, service, streams)
    assert good_indices(documents) == list(range(good)), \
        f"{service}: good lines missing: {sorted(set(range(good)) - set(good_indices(documents)))[:20]}"
    assert len(documents) == int(row["delivered"]), "one row per record, each counted delivered"
    bad_delivered = len(documents) - good
    assert bad_delivered + int(row["dropped"]) == bad, figures(service, good + bad, row)
    names = [d.get("name") for d, _ in documents if isinstance(d, dict)]
    assert "poison_deep" not in names and "poison_deep_object" not in names
    if service == "kinesis":
        keys = {key for d, key in documents if isinstance(d, dict) and d.get("name") == "poison_surrogate"}
        assert keys == {"h\ufffd"}, f"the lone surrogate host shipped with keys {keys}"
    assert int(row["dropped_invalid"]) >= 2, "nesting deeper than the parser takes is not_json"
    assert row["state"] == "ok", figures(service, good + bad, row)
    assert_accounted(row, service, good + bad)


def test_item1_poison_lines_cost_no_other_line_and_each_is_counted_once(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    with extension_factory(tmp_path, options=aws.options()) as ext:
        good = result_lines(ext.standin, 300, name="good")
        batch = batch_line(QueryRun(name="pack_b", added=[{"a": "1"}, {"a": "2"}]))
        bad = list(hostile_lines(good[0], batch).values())
        for line in interleave(good, bad):
            for service in SERVICES:
                assert ext.log(service, line).status.code == 0
        for service in SERVICES:
            check_poison_outcome(ext, aws, service, streams=(aws.stream,), good=len(good),
                                 bad=len(bad))
        assert_alive(ext)


def test_item1_poison_lines_with_routes_cost_no_routed_line(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    aws.moto.create_stream("routed-stream")
    options = aws.options(aws_kinesis_routes=json.dumps({"routed-stream": ["good_routed"]}))
    with extension_factory(tmp_path, options=options) as ext:
        plain = result_lines(ext.standin, 300, name="good")
        routed = result_lines(ext.standin, 300, name="good_routed")
        good = [routed[i] if i % 2 else plain[i] for i in range(300)]
        batch = batch_line(QueryRun(name="good_routed", added=[{"a": "1"}]))
        bad = list(hostile_lines(good[0], batch).values())
        for line in interleave(good, bad):
            assert ext.log("kinesis", line).status.code == 0
        check_poison_outcome(ext, aws, "kinesis", streams=(aws.stream, "routed-stream"),
                             good=len(good), bad=len(bad))
        routed = [json.loads(d) for d, _ in aws.moto.read_stream("routed-stream")]
        assert sorted(r["columns"]["i"] for r in routed if r.get("name") == "good_routed") == \
            list(range(1, 300, 2)), "each routed line at its route's stream"
        assert_alive(ext)


# -- 1. the same, as a property of the accumulator (in process) ---------------------------------

GOOD_NAMES = ("good", "good_routed")


def good_event(marker: str, name: str, host: str) -> bytes:
    return json.dumps({"name": name, "hostIdentifier": host, "calendarTime": "x", "unixTime": 1,
                       "epoch": 0, "counter": 0, "numerics": False, "columns": {"g": marker},
                       "action": "added"}, separators=(",", ":")).encode()


def spec_rows(line: bytes) -> int:
    """Rows in a line as issue 18 counts them: a valid batch-format line's rows, else 1."""
    try:
        # Strict UTF-8 first: json.loads(bytes) would let a surrogate's bytes through
        # ("surrogatepass"), which no JSON text may hold (RFC 8259: UTF-8; RFC 3629).
        parsed = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return 1
    if not isinstance(parsed, dict):
        return 1
    diff = parsed.get("diffResults")
    if isinstance(diff, dict) and all(isinstance(rows, list) for rows in diff.values()):
        return sum(len(rows) for rows in diff.values())
    snapshot = parsed.get("snapshot")
    if isinstance(snapshot, list) and parsed.get("action") == "snapshot":
        return len(snapshot)
    return 1


def _osquery_shapes() -> list[bytes]:
    run = QueryRun(name="pack_shape", decorations={"host_uuid": "u"},
                   added=[{"a": "1"}, {"a": "2"}], removed=[{"a": "0"}])
    snapshot = QueryRun(name="pack_snap", snapshot=[{"p": "1"}, {"p": "2"}])
    status = json.dumps({"hostIdentifier": "h", "calendarTime": "c", "unixTime": 1,
                         "severity": 0, "filename": "f.cpp", "line": 1, "message": "m"})
    return [s.encode() for s in (batch_line(run), batch_line(snapshot), event_lines(run)[0], status)]


SHAPES = _osquery_shapes()


@st.composite
def hostile(draw: st.DrawFn, batches: bool) -> bytes:
    """One hostile line: deep nesting, lone surrogates, NUL bytes, huge numbers, duplicate keys,
    non-object JSON, or one of osquery's shapes truncated at any byte."""
    depth = draw(st.integers(500, 1300))
    name = draw(st.sampled_from(["poison", "good_routed", "pack_x"]))
    surrogate = draw(st.integers(0xD800, 0xDFFF))
    kind = draw(st.sampled_from(["deep", "deep_object", "surrogate_host", "surrogate_name",
                                 "raw_nul", "escaped_nul", "huge", "duplicate", "not_object",
                                 "truncated", "invalid_utf8", "log_type_deep", "odd_types",
                                 *(["hostile_batch"] if batches else [])]))
    if kind == "deep":
        return b'{"name":"%s","columns":{"v":%s%s}}' % (name.encode(), b"[" * depth, b"]" * depth)
    if kind == "deep_object":
        return b'{"name":"%s","columns":%s1%s}' % (name.encode(), b'{"a":' * depth, b"}" * depth)
    if kind == "log_type_deep":
        return b'{"log_type":"x","name":"%s","c":%s%s}' % (name.encode(), b"[" * depth, b"]" * depth)
    if kind == "surrogate_host":
        return b'{"name":"%s","hostIdentifier":"h\\u%04x","columns":{}}' % (name.encode(), surrogate)
    if kind == "surrogate_name":
        return b'{"name":"%s\\u%04x","hostIdentifier":"h","columns":{}}' % (name.encode(), surrogate)
    if kind == "raw_nul":
        base = draw(st.sampled_from(SHAPES))
        at = draw(st.integers(0, len(base)))
        return base[:at] + b"\x00" + base[at:]
    if kind == "escaped_nul":
        return b'{"name":"%s","hostIdentifier":"\\u0000","columns":{"a":"\\u0000"}}' % name.encode()
    if kind == "huge":
        number = draw(st.sampled_from([b"1e999999", b"-1e999999", b"9" * 5000, b"1" + b"0" * 25,
                                       str(2**64).encode(), b"-" + str(2**63 + 1).encode(),
                                       b"1.5e-999999", b"0." + b"0" * 400 + b"1"]))
        where = draw(st.sampled_from(["column", "host", "epoch"]))
        if where == "host":
            return b'{"name":"%s","hostIdentifier":%s,"columns":{}}' % (name.encode(), number)
        if where == "epoch":
            return b'{"name":"%s","epoch":%s,"counter":%s,"columns":{}}' % (name.encode(), number, number)
        return b'{"name":"%s","columns":{"n":%s}}' % (name.encode(), number)
    if kind == "duplicate":
        return (b'{"name":"%s","name":"good","hostIdentifier":"a","hostIdentifier":"b",'
                b'"columns":{"g":"dup"},"columns":{}}' % name.encode())
    if kind == "not_object":
        return draw(st.sampled_from([b"[]", b"[1,2]", b"1", b'"s"', b"null", b"true", b"  ",
                                     b"[" * depth + b"]" * depth]))
    if kind == "truncated":
        base = draw(st.sampled_from(SHAPES))
        return base[:draw(st.integers(0, len(base) - 1))]
    if kind == "invalid_utf8":
        base = draw(st.sampled_from(SHAPES))
        at = draw(st.integers(0, len(base)))
        return base[:at] + draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc3", b"\x80"])) + base[at:]
    if kind == "odd_types":
        value = draw(st.sampled_from([b"null", b"[]", b"{}", b"1.5", b"true", b'"' + b"x" * 300 + b'"']))
        return b'{"name":%s,"hostIdentifier":%s,"columns":%s}' % (value, value, value)
    # hostile_batch: a valid batch-format line whose legacy fields and rows are hostile
    rows = draw(st.sampled_from([b"[1,null,\"x\",[]]", b"[{\"a\":\"\\ud800\"}]", b"[]",
                                 b"[" + b"[" * depth + b"]" * depth + b"]"]))
    host = draw(st.sampled_from([b'"h\\udfff"', b"12", b"null", b'"' + b"h" * 400 + b'"']))
    return b'{"diffResults":{"removed":[],"added":%s},"name":"%s","hostIdentifier":%s}' % (
        rows, name.encode(), host)


def rows_of_entry(service: Service, entry: Any, aggregate: bool) -> list[bytes]:
    """The rows a sent record carries, split as a consumer would."""
    data: bytes = entry.data
    if service is KINESIS:
        if aggregate:
            return [row for row, _ in kinesis_rows([(data, entry.partition_key)])]
        return [data]
    assert data.endswith(b"\n"), "every Firehose row ends its line"
    return data[:-1].split(b"\n")


def good_marker(row: bytes) -> str | None:
    try:
        parsed = json.loads(row)
    except (ValueError, RecursionError):
        return None
    if isinstance(parsed, dict) and parsed.get("name") in GOOD_NAMES and \
            isinstance(parsed.get("columns"), dict):
        marker = parsed["columns"].get("g")
        return marker if isinstance(marker, str) and marker.startswith("m") else None
    return None


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), service=st.sampled_from([KINESIS, FIREHOSE]), routes=st.booleans(),
       as_events=st.booleans(), many=st.booleans())
def test_item1_property_good_lines_arrive_and_bad_ones_are_counted_exactly_once(
        data: st.DataObject, service: Service, routes: bool, as_events: bool, many: bool) -> None:
    name = service.name
    options: dict[str, Any] = {f"aws_{name}_stream": "main", "aws_logger_results_as_events": as_events,
                               "aws_kinesis_aggregate" if service is KINESIS else "aws_firehose_pack": many}
    if routes:
        options[f"aws_{name}_routes"] = (("routed", ("good_routed", "pack_*")),)
    lines: list[bytes] = []
    expected: Counter[str] = Counter()
    for index in range(data.draw(st.integers(1, 12), label="groups")):
        for good in range(data.draw(st.integers(0, 4), label="good lines")):
            marker = f"m{index}.{good}"
            line_name = data.draw(st.sampled_from(GOOD_NAMES))
            host = data.draw(st.sampled_from(["host-a", "", "h" * 300]))
            rows = data.draw(st.integers(0, 3)) if as_events else -1
            if rows < 0 or data.draw(st.booleans()):
                lines.append(good_event(marker, line_name, host))
                expected[marker] += 1
            else:
                run = QueryRun(name=line_name, host_identifier=host,
                               added=[{"g": f"{marker}.{r}"} for r in range(rows)])
                lines.append(batch_line(run).encode())
                expected.update(f"{marker}.{r}" for r in range(rows))
        lines += data.draw(st.lists(hostile(as_events), min_size=1, max_size=2), label="hostile")
    total = sum(spec_rows(line) for line in lines)
    with tempfile.TemporaryDirectory() as directory:
        counters = PluginCounters()
        spool = Spool(Path(directory) / name, max_records=100_000, max_bytes=1 << 30,
                      on_drop=counters.drop)
        accumulator = Accumulator(f"aws_{name}", service, spool, counters, Settings(**options),
                                  host_identifier="local-host")
        for line in lines:
            spool.append(KIND_RESULT, line)
        got: Counter[str] = Counter()
        sent_rows = 0
        errors: list[str] = []
        now = 0.0
        for _ in range(200):
            try:
                ready = accumulator.ready(now, draining=True)
            except Exception as exc:  # the flusher logs these and carries on: so does this
                errors.append(f"{type(exc).__name__}: {str(exc)[:80]}")
                now += 1.0
                continue
            if not ready.batches and not accumulator.waiting():
                break
            for batch in ready.batches:
                sent_rows += batch.rows
                for entry in batch.entries:
                    got.update(m for m in map(good_marker, rows_of_entry(service, entry, many)) if m)
                accumulator.completed(batch, [None] * len(batch.entries), now)
            now += 1.0
        accumulator.close()
    dropped = sum(counters.dropped.values())
    summary = (f"{total} rows sent, delivered {counters.delivered}, dropped {dropped} "
               f"({ {k: v for k, v in counters.dropped.items() if v} }), errors {errors}")
    assert got == expected, f"good rows lost or repeated: {expected - got} / {got - expected}; {summary}"
    assert counters.delivered == sent_rows, summary
    assert counters.delivered + dropped == total, summary
    assert not errors, summary


# -- 2/3. a big snapshot as events, in bounded memory -------------------------------------------

def snapshot_of(rows: int, size: int) -> str:
    """A snapshot line of `rows` rows, `size` bytes (within a few), as osqueryd writes it."""
    base = [{"path": f"/usr/lib/{i:06d}", "size": str(i), "pad": ""}
            for i in range(rows)]
    bare = len(batch_line(QueryRun(name="pack_files_snapshot", snapshot=base)).encode())
    pad = max(0, (size - bare) // rows)
    for row in base:
        row["pad"] = "p" * pad
    return batch_line(QueryRun(name="pack_files_snapshot", snapshot=base))


def big_snapshot_ships_every_row_in_bounded_memory(
        tmp_path: Path, extension_factory: Factory, aws: Aws, rows: int, size: int) -> None:
    line = snapshot_of(rows, size)
    assert abs(len(line.encode()) - size) < rows
    aws.proxy.keep_bodies = False
    options = aws.options(aws_logger_results_as_events="true", aws_kinesis_aggregate="true",
                          aws_firehose_pack="true")
    with extension_factory(tmp_path, options=options) as ext:
        assert ext.proc is not None
        pid = ext.proc.pid
        for service in SERVICES:
            answer = ext.standin.log_snapshot(ext.uuid, ext.plugins[service], line)
            assert answer.status.code == 0
        del line
        peak = 0.0

        def sample() -> None:
            nonlocal peak
            if ext.proc is not None and ext.proc.poll() is None:
                peak = max(peak, peak_rss_mb(pid))

        stalled = ""
        try:
            wait_accounted(ext, dict.fromkeys(SERVICES, rows), timeout=600, quiet=30,
                           sample=sample)
        except AssertionError as exc:
            stalled = f"stalled: {exc}"  # the assertions below say what was missing
        sample()
        found = table(ext) if ext.proc.poll() is None else {}
        print(f"peak RSS {peak:.0f} MB; {stalled}; "
              + "; ".join(figures(s, rows, found[s]) for s in found))
        assert_alive(ext)
        for service in SERVICES:
            assert int(found[service]["delivered"]) == rows, figures(service, rows, found[service])
        kinesis = [json.loads(r)["columns"]["path"] for r, _ in kinesis_rows(aws.kinesis_records())]
        assert len(kinesis) == rows and len(set(kinesis)) == rows
        firehose = [json.loads(r)["columns"]["path"] for r in aws.firehose_lines()]
        assert len(firehose) == rows and len(set(firehose)) == rows
        assert peak <= 100, f"peak RSS {peak:.0f} MB, over 100 MB"
        for service in SERVICES:
            assert column(found[service], "accepted_rows") == rows
            assert_accounted(found[service], service, rows)


@pytest.mark.slow
def test_item2_a_snapshot_under_16_mib_of_250k_rows_as_events_stays_within_100_mb(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    big_snapshot_ships_every_row_in_bounded_memory(tmp_path, extension_factory, aws,
                                                   rows=250_000, size=15_500_000)


@pytest.mark.slow
def test_item3_a_20_mb_snapshot_of_250k_rows_as_events_ships_every_row_within_100_mb(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    big_snapshot_ships_every_row_in_bounded_memory(tmp_path, extension_factory, aws,
                                                   rows=250_000, size=20_000_000)


# -- 4. caps lowered with results as events -------------------------------------------------------

@pytest.mark.slow
def test_item4_a_cap_lowered_while_batch_lines_wait_counts_every_row(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    lines, per_line = 600, 100
    options = aws.options(aws_logger_results_as_events="true")
    with extension_factory(tmp_path, options=options) as ext:
        aws.proxy.set_down(True)
        for index in range(lines):
            run = QueryRun(name=f"pack_q_{index}",
                           added=[{"line": str(index), "row": str(r)} for r in range(per_line)])
            assert ext.log("kinesis", batch_line(run)).status.code == 0
        wait_for(lambda: "aws_kinesis: retrying" in ext.stderr(), 30, "a failed send")
        ext.standin.set_custom_option("custom_buffered_log_max", "10")
        ext.init()
        wait_for(lambda: int(table(ext)["kinesis"]["spool_records"]) <= 10, 30, "the lower cap")
        aws.proxy.set_down(False)
        sent = lines * per_line
        row = wait_accounted(ext, {"kinesis": sent}, timeout=120)["kinesis"]
        delivered, cap = int(row["delivered"]), int(row["dropped_cap"])
        assert delivered + cap == sent, figures("kinesis", sent, row)
        assert int(row["dropped"]) == cap, figures("kinesis", sent, row)
        assert len(aws.kinesis_records()) == delivered
        assert column(row, "accepted_rows") == sent
        assert_accounted(row, "kinesis", sent)
        assert_alive(ext)


# -- 5. many route targets, few descriptors ---------------------------------------------------------

@pytest.mark.slow
def test_item5_ten_thousand_route_targets_run_under_1024_descriptors(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    targets = 10_000
    routes = json.dumps({f"route-target-{i:05d}": [f"pack_route_{i:05d}"] for i in range(targets)})
    # The targets' rows wait (a long period, no full batch): each target has work for the
    # whole test. The main stream's 500 rows make a full batch, sent at once.
    options = aws.options(aws_kinesis_routes=routes, aws_kinesis_period="3600")
    wrapper = ["prlimit", "--nofile=1024:1024", "--"]
    with extension_factory(tmp_path, options=options, wrapper=wrapper) as ext:
        assert ext.proc is not None
        assert nofile_limits(ext.proc.pid) == (1024, 1024)
        for index in range(targets):
            line = ext.standin.result_line(f"pack_route_{index:05d}")
            try:
                assert ext.log("kinesis", line).status.code == 0
            except FatalLoggerAnswer as exc:
                raise AssertionError(f"the log call for route target {index}: {exc}") from None
        for line in result_lines(ext.standin, 500, name="pack_main"):
            assert ext.log("kinesis", line).status.code == 0
        wait_for(lambda: len(aws.kinesis_records()) >= 500, 120, "the main stream's rows")
        time.sleep(5 * ext.interval)  # the watcher pings osqueryd meanwhile
        row = table(ext)["kinesis"]
        assert int(row["dropped"]) == 0, figures("kinesis", targets + 500, row)
        assert "stopping" not in ext.stderr()
        assert_alive(ext)
        assert ext.uuid in ext.standin._extensions()
        assert_accounted(row, "kinesis", targets + 500)


def test_item5_the_soft_descriptor_limit_is_raised_to_the_hard_one_and_logged(
        tmp_path: Path, extension_factory: Factory) -> None:
    wrapper = ["prlimit", "--nofile=256:4096", "--"]
    with extension_factory(tmp_path, wrapper=wrapper) as ext:
        assert ext.proc is not None
        assert nofile_limits(ext.proc.pid) == (4096, 4096)
        lines = [line for line in ext.stderr().splitlines()
                 if "RLIMIT_NOFILE" in line or "file descriptors" in line]
        assert len(lines) == 1 and "256" in lines[0] and "4096" in lines[0], lines


def test_item5_emfile_in_the_watcher_is_not_taken_for_osqueryd_gone(
        tmp_path: Path, extension_factory: Factory) -> None:
    with extension_factory(tmp_path) as ext:
        assert ext.proc is not None
        pid = ext.proc.pid
        soft, _ = nofile_limits(pid)
        in_use = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
        lowest_free = min(fd for fd in range(len(in_use) + 1) if fd not in in_use)
        # Every new descriptor now fails with EMFILE: the watcher's next pings too.
        subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={lowest_free}:"], check=True)
        try:
            time.sleep(5 * ext.interval)
            assert ext.proc.poll() is None, f"exited: ...{ext.stderr()[-1500:]}"
        finally:
            subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={soft}:"], check=False)
        assert "stopping" not in ext.stderr()
        wait_for(lambda: answers(ext), 30, "a log call answered again")
        assert_alive(ext)


# -- 6. fixing a typo strands nothing ----------------------------------------------------------

@pytest.mark.slow
def test_item6_rows_for_a_mistyped_stream_arrive_once_it_is_fixed_with_a_status_stream_set(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    aws.moto.create_stream("status-stream")
    options = aws.options(aws_kinesis_stream="osquery-resultz",
                          aws_kinesis_status_stream="status-stream")
    with extension_factory(tmp_path, options=options) as ext:
        for line in result_lines(ext.standin, 300):
            assert ext.log("kinesis", line).status.code == 0
        wait_for(lambda: "ResourceNotFoundException" in ext.stderr(), 30, "the failing stream")
        ext.standin.set_custom_option("custom_aws_kinesis_stream", aws.stream)
        ext.init()
        got = sorted(json.loads(d)["columns"]["i"] for d, _ in arrivals(aws.kinesis_records, 300, 60))
        assert got == list(range(300)), f"{len(got)} of 300 rows at the fixed stream"
        row = wait_accounted(ext, {"kinesis": 300}, timeout=30)["kinesis"]
        assert_accounted(row, "kinesis", 300)
        assert_alive(ext)


@pytest.mark.slow
def test_item6_rows_for_a_mistyped_route_target_arrive_at_the_corrected_one(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    aws.moto.create_stream("security-stream")
    typo = json.dumps({"security-strem": ["pack_incident_*"]})
    with extension_factory(tmp_path, options=aws.options(aws_kinesis_routes=typo)) as ext:
        for line in result_lines(ext.standin, 200, name="pack_incident_procs"):
            assert ext.log("kinesis", line).status.code == 0
        wait_for(lambda: "ResourceNotFoundException" in ext.stderr(), 30, "the failing target")
        ext.standin.set_custom_option("custom_aws_kinesis_routes",
                                      json.dumps({"security-stream": ["pack_incident_*"]}))
        ext.init()
        records = arrivals(lambda: aws.moto.read_stream("security-stream"), 200, 60)
        got = sorted(json.loads(d)["columns"]["i"] for d, _ in records)
        assert got == list(range(200)), f"{len(got)} of 200 rows at the corrected target"
        assert aws.kinesis_records() == []
        row = wait_accounted(ext, {"kinesis": 200}, timeout=30)["kinesis"]
        assert_accounted(row, "kinesis", 200)
        assert_alive(ext)


# -- 7. a changed spool directory ----------------------------------------------------------------

@pytest.mark.slow
def test_item7_a_changed_spool_dir_drains_the_old_one_and_says_so(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    old, new = tmp_path / "old-spool", tmp_path / "new-spool"
    with extension_factory(tmp_path, options=aws.options(aws_logger_spool_dir=str(old))) as ext:
        aws.proxy.set_down(True)
        for line in result_lines(ext.standin, 600):
            assert ext.log("kinesis", line).status.code == 0
        assert ext.terminate() == 0
        aws.proxy.set_down(False)
        ext.standin.set_custom_option("custom_aws_logger_spool_dir", str(new))
        before = len(ext.stderr())
        ext.spawn()
        got = sorted(json.loads(d)["columns"]["i"] for d, _ in arrivals(aws.kinesis_records, 600, 60))
        assert got == list(range(600)), f"{len(got)} of the 600 rows left in the old spool"
        said = [line for line in ext.stderr()[before:].splitlines()
                if str(old) in line and "600" in line]
        assert len(said) == 1, said
        assert_alive(ext)


# -- 8. a spool owned by another user, without CAP_DAC_OVERRIDE -----------------------------------

def test_item8_a_foreign_spool_without_dac_capabilities_is_disabled_not_a_crash(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    spool = tmp_path / "foreign"
    spool.mkdir(mode=0o700)
    os.chown(spool, 65534, 65534)
    options = aws.options(aws_logger_spool_dir=str(spool))
    with extension_factory(tmp_path, options=options, wrapper=NO_DAC) as ext:
        assert ext.proc is not None
        assert int(proc_status(ext.proc.pid, "CapEff"), 16) & DAC_BITS == 0
        for line in result_lines(ext.standin, 10):
            for service in SERVICES:
                assert ext.log(service, line).status.code == 0
        rows = table(ext)
        for service in SERVICES:
            assert rows[service]["state"] == "disabled"
            assert str(spool) in rows[service]["last_error"]
            assert int(rows[service]["delivered"]) == 0
            assert_accounted(rows[service], service, 10)
        assert_alive(ext)


# -- 9. the table reads no file ----------------------------------------------------------------

def test_item9_the_tables_figures_are_answered_without_reading_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counters = PluginCounters()
    settings_ = Settings(aws_kinesis_stream="main")
    spool = Spool(tmp_path / "kinesis", max_records=1_000_000, max_bytes=1 << 30,
                  on_drop=counters.drop)
    accumulator = Accumulator("aws_kinesis", KINESIS, spool, counters, settings_,
                              host_identifier="h")
    for index in range(3000):
        spool.append(KIND_RESULT, good_event(f"m{index}", "good", "h"))
    # Deliver all but the last 100: the oldest waiting record sits deep in the segment.
    now = 0.0
    while counters.delivered < 2900:
        (batch,) = accumulator.ready(now, draining=True).batches
        keep = min(len(batch.entries), 2900 - counters.delivered)
        codes: list[str | None] = [None] * keep + ["InternalFailure"] * (len(batch.entries) - keep)
        accumulator.completed(batch, codes, now)
        now += 100.0
    flusher = Flusher([accumulator], settings_)
    opened: list[str] = []

    def refuse(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            opened.append(name)
            raise OSError(errno.EIO, f"{name}: no file is read to answer the table")
        return call

    with monkeypatch.context() as patch:
        for name in ("open", "pread", "read", "preadv", "readv"):
            patch.setattr(os, name, refuse(name))
        rows = StatusReport(flusher).rows()
    assert opened == [], f"the table's answer read files: {opened}"
    (row,) = rows
    assert row["spool_records"] == 100 and row["oldest_age_seconds"] >= 0
    assert row["delivered"] == 2900
    assert row.get("waiting_rows") == 100
    accumulator.close()


# -- 10. huge names -----------------------------------------------------------------------------

def raw_call(registry: bytes, item: bytes, request: dict[bytes, bytes], method: bytes = b"call",
             seqid: int = 1) -> bytes:
    """Extension.call(registry, item, request) in Thrift's strict binary encoding, from bytes
    (so names can be any bytes, UTF-8 or not, of any length)."""
    def string(value: bytes) -> bytes:
        return struct.pack(">i", len(value)) + value

    out = struct.pack(">I", 0x80010001) + string(method) + struct.pack(">i", seqid)
    out += struct.pack(">bh", 11, 1) + string(registry)
    out += struct.pack(">bh", 11, 2) + string(item)
    out += struct.pack(">bhbbi", 13, 3, 11, 11, len(request))
    for key, value in request.items():
        out += string(key) + string(value)
    return out + b"\x00"


def exchange(path: str, message: bytes, timeout: float = 60) -> int:
    """Send one message on a fresh connection; answer how many bytes came back until the
    extension closed it."""
    received = 0
    with contextlib.closing(connect(path, timeout=timeout)) as sock:
        sock.sendall(message)
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    return received


def test_item10_a_10_mb_invalid_utf8_plugin_name_gets_a_reply_under_1_kib(
        tmp_path: Path, extension_factory: Factory) -> None:
    with extension_factory(tmp_path) as ext:
        path = ext.standin.extension_socket(ext.uuid)
        message = raw_call(b"logger", b"\xff\xfe" * (5 << 20), {b"string": b'{"a":1}'})
        size = exchange(path, message)
        assert 0 < size < 1024, f"a {size}-byte reply to a 10 MB name"
        assert ext.log("kinesis", result_lines(ext.standin, 1)[0]).status.code == 0
        assert_alive(ext)


# -- 11. a tiny filesystem ----------------------------------------------------------------------

@pytest.mark.slow
def test_item11_a_spool_on_2_mib_recovers_after_it_filled(
        tmp_path: Path, extension_factory: Factory, aws: Aws) -> None:
    with tmpfs(tmp_path / "tiny", "2m") as mount:
        options = aws.options(aws_logger_spool_dir=str(mount / "spool"))
        with extension_factory(tmp_path, options=options) as ext:
            aws.proxy.set_down(True)
            sent = 0
            while int(table(ext)["kinesis"]["dropped"]) == 0:
                assert sent < 6000, "the 2 MiB filesystem never filled"
                for line in result_lines(ext.standin, 100, name=f"fill_{sent}", pad_to=1000):
                    assert ext.log("kinesis", line).status.code == 0
                sent += 100
            aws.proxy.set_down(False)
            row = wait_accounted(ext, {"kinesis": sent}, timeout=120)["kinesis"]
            kept = int(row["delivered"])
            assert kept > 0 and kept + int(row["dropped"]) == sent, figures("kinesis", sent, row)
            dropped = int(row["dropped"])
            for line in result_lines(ext.standin, 100, name="after"):
                assert ext.log("kinesis", line).status.code == 0
            row = wait_accounted(ext, {"kinesis": sent + 100}, timeout=120)["kinesis"]
            assert int(row["dropped"]) == dropped, figures("kinesis", sent + 100, row)
            after = [json.loads(d)["columns"]["i"] for d, _ in aws.kinesis_records()
                     if json.loads(d)["name"] == "after"]
            assert sorted(after) == list(range(100))
            assert_accounted(row, "kinesis", sent + 100)
            assert_alive(ext)


# -- 12. two plugins on one full disk ----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("older", SERVICES)
def test_item12_on_a_shared_full_disk_the_oldest_rows_across_both_plugins_go_first(
        tmp_path: Path, extension_factory: Factory, aws: Aws, older: str) -> None:
    newer = "firehose" if older == "kinesis" else "kinesis"
    aws.proxy.keep_bodies = False
    with tmpfs(tmp_path / "shared", "64m") as mount:
        options = aws.options(aws_logger_spool_dir=str(mount / "spool"))
        with extension_factory(tmp_path, options=options) as ext:
            aws.proxy.set_down(True)
            sent = {older: 0, newer: 0}
            # About 40 MB of the older plugin's rows, then the newer's until something gives.
            while sent[older] < 660:
                for line in result_lines(ext.standin, 60, name=f"{older}_{sent[older]}", pad_to=60_000):
                    assert ext.log(older, line).status.code == 0
                sent[older] += 60
            extra = 0
            while extra < 120:
                assert sent[newer] < 2000, "the 64 MiB filesystem never filled"
                for line in result_lines(ext.standin, 20, name=f"{newer}_{sent[newer]}", pad_to=60_000):
                    assert ext.log(newer, line).status.code == 0
                sent[newer] += 20
                rows = table(ext)
                if int(rows[older]["dropped"]) + int(rows[newer]["dropped"]):
                    extra += 20
            rows = table(ext)
            both = f"{figures(older, sent[older], rows[older])}; {figures(newer, sent[newer], rows[newer])}"
            assert int(rows[newer]["dropped"]) == 0, f"newer rows given up while older waited: {both}"
            assert int(rows[older]["dropped"]) > 0, both
            aws.proxy.set_down(False)
            rows = wait_accounted(ext, sent, timeout=180)
            for service in SERVICES:
                assert_accounted(rows[service], service, sent[service])
            assert_alive(ext)
