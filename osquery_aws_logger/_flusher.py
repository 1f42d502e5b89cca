"""One flusher thread for both plugins: it owns the network, the clients and the credentials.

Each plugin is a Channel: its spool, its counters, the records read but not yet delivered,
and its backoff. The loop sends a channel's batch when its period is up or a full batch waits,
and sleeps on one Event the thrift side sets when a full batch is waiting. Backoff is a time
the loop compares with the clock; nothing in here sleeps except that wait, so a stop request
is seen at once.
"""

from __future__ import annotations

import binascii
import gc
import json
import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from ._aggregate import FirehosePack, KplAggregate
from ._aws import AwsClients, connection_error
from ._batching import (
    FIREHOSE_LIMITS,
    KINESIS_LIMITS,
    Entry,
    ServiceLimits,
    Unshippable,
    batch_length,
    oversize,
    partition_key,
    record_id,
    result_record,
    with_fields,
)
from ._counters import PluginCounters
from ._errors import DeliveryError
from ._metrics import MetricsFile
from ._redact import redact
from ._retry import EXPIRED_CODES, Backoff, is_retriable, is_throttling
from ._settings import Settings
from ._spool import KIND_STATUS, Spool
from ._status import channel_row, write_state

log = logging.getLogger("osquery_aws_logger.flusher")

#: Longest the loop sleeps: the spool's fsync interval bounds what a power loss can take.
MAX_WAIT_SECONDS: Final = 1.0
#: Longest a plugin that cannot ship (settings) waits before its settings are checked again.
MAX_UNUSABLE_RECHECK: Final = 60.0
#: How often each plugin's figures are written beside its spool (for `status`).
STATE_INTERVAL_SECONDS: Final = 5.0
#: At most one health line (state change) per plugin per this many seconds.
HEALTH_LOG_INTERVAL_SECONDS: Final = 10.0
#: How often a line of counters is logged while something waits or fails.
REPORT_INTERVAL_SECONDS: Final = 60.0


@dataclass(frozen=True)
class Service:
    """Kinesis or Firehose: a limits record and the one API call that differs."""

    name: str
    limits: ServiceLimits
    put: Callable[[AwsClients, str, list[Entry]], list[str | None]]


def _json_text(value: str) -> bytes:
    return json.dumps(value).encode()


def _request_json(stream_field: bytes, stream: str, entries: list[Entry], *,
                  with_keys: bool) -> bytes:
    """The request body botocore would write: the stream, then the records with base64 data
    and JSON-escaped partition keys. Joined once, so a 5 MiB call is not copied again."""
    keys: dict[str, bytes] = {}
    parts = [b'{"' + stream_field + b'":' + _json_text(stream) + b',"Records":[']
    for index, entry in enumerate(entries):
        parts.append(b'{"Data":"' if not index else b',{"Data":"')
        parts.append(binascii.b2a_base64(entry.data, newline=False))
        if with_keys:
            key = keys.get(entry.partition_key)
            if key is None:
                key = keys[entry.partition_key] = _json_text(entry.partition_key)
            parts.append(b'","PartitionKey":' + key + b"}")
        else:
            parts.append(b'"}')
    parts.append(b"]}")
    return b"".join(parts)


def _put_kinesis(clients: AwsClients, stream: str, entries: list[Entry]) -> list[str | None]:
    body = _request_json(b"StreamName", stream, entries, with_keys=True)
    answer = clients.put_prepared("kinesis", "put_records",
                                  {"StreamName": stream, "Records": []}, body)
    if not answer.get("FailedRecordCount"):
        return [None] * len(entries)
    return [r.get("ErrorCode") for r in answer["Records"]]


def _put_firehose(clients: AwsClients, stream: str, entries: list[Entry]) -> list[str | None]:
    body = _request_json(b"DeliveryStreamName", stream, entries, with_keys=False)
    answer = clients.put_prepared("firehose", "put_record_batch",
                                  {"DeliveryStreamName": stream, "Records": []}, body)
    if not answer.get("FailedPutCount"):
        return [None] * len(entries)
    return [r.get("ErrorCode") for r in answer["RequestResponses"]]


KINESIS: Final = Service("kinesis", KINESIS_LIMITS, _put_kinesis)
FIREHOSE: Final = Service("firehose", FIREHOSE_LIMITS, _put_firehose)
SERVICES: Final = {s.name: s for s in (KINESIS, FIREHOSE)}


def delivery_error(exc: Exception, *, read_timeout: float | None = None) -> DeliveryError:
    """A botocore failure of a whole call, classified, with its cause: for connection trouble
    the URL and why (refused, DNS, TLS, proxy, timeout). Service and exception text is
    redacted of every known secret before it is cut to length (so no half secret survives)."""
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = redact(str(error.get("Code") or "ClientError"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return DeliveryError(code, redact(str(error.get("Message", "")))[:300],
                             retriable=is_retriable(code, status), throttled=is_throttling(code),
                             expired_credentials=code in EXPIRED_CODES)
    if isinstance(exc, BotoCoreError):
        # Connection refused/reset, DNS, timeouts, TLS, proxy: all worth retrying.
        cause, message = connection_error(exc, read_timeout=read_timeout)
        return DeliveryError(type(exc).__name__, f"{cause}: {message}", retriable=True)
    return DeliveryError(type(exc).__name__, "unexpected failure: " + redact(str(exc))[:200],
                         retriable=True)


class _RateLimit:
    """Lets a kind of log line through at most once per interval, counting the rest."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def allow(self, key: str, now: float) -> bool:
        if now - self._last.get(key, -self.interval) >= self.interval:
            self._last[key] = now
            return True
        self.suppressed[key] = self.suppressed.get(key, 0) + 1
        return False


class _Open:
    """An aggregate or pack being filled, and the spool sequence numbers of its rows."""

    def __init__(self, slot: tuple[str, str], builder: KplAggregate | FirehosePack, key: str,
                 stream: str) -> None:
        self.slot = slot
        self.builder = builder
        self.key = key
        self.stream = stream
        self.seqs: list[int] = []
        self.row_bytes = 0

    def entry(self) -> Entry:
        return Entry(tuple(self.seqs), self.builder.data(), self.key, self.stream)


class Channel:
    """One logger plugin's delivery state. Only the flusher thread touches it after start.

    Rows read from the spool become entries queued per destination stream: one row each, or
    many in a KPL aggregate (Kinesis) or a newline pack (Firehose) when those are on. A row is
    acknowledged to the spool once it is delivered or dropped for good, in spool order.
    """

    def __init__(self, plugin: str, service: Service, spool: Spool, counters: PluginCounters,
                 settings: Settings, *, host_identifier: str) -> None:
        self.plugin = plugin
        self.service = service
        self.spool = spool
        self.counters = counters
        self.host_identifier = host_identifier
        self.backoff = Backoff()
        self.settings = settings
        self.pending: dict[str, deque[Entry]] = {}
        self._open: dict[tuple[str, str], _Open] = {}
        self._pending_rows = 0  # rows in pending entries and open aggregates
        self._pending_bytes = 0
        self._dropped_below = 0  # the spool's cap floor last acted on
        self._outstanding: deque[int] = deque()  # sequence numbers read, in spool order
        self._finished: set[int] = set()  # of those, delivered or dropped for good
        self.next_flush_at = time.monotonic() + self.period
        self._last_error_code = ""
        self._logged_state = "ok"
        self._logs = _RateLimit(HEALTH_LOG_INTERVAL_SECONDS)

    @property
    def period(self) -> float:
        return float(getattr(self.settings, f"aws_{self.service.name}_period"))

    @property
    def stream(self) -> str:
        return str(getattr(self.settings, f"aws_{self.service.name}_stream"))

    def waiting(self) -> int:
        """Rows accepted and not yet delivered or dropped (read or not)."""
        return self._pending_rows + self.spool.pending_unread()

    def due(self, now: float, *, draining: bool) -> bool:
        if not self.backoff.ready(now) or not self.waiting():
            return False
        if draining or self.waiting() >= self.service.limits.max_records:
            return True
        return now >= self.next_flush_at

    def wake_at(self, now: float) -> float:
        """When this channel next needs the loop (infinity when nothing waits: the thrift side
        wakes the loop once a full batch is waiting)."""
        waiting = self.waiting()
        if not waiting:
            return math.inf
        if not self.backoff.ready(now):
            return self.backoff.retry_at
        if waiting >= self.service.limits.max_records:
            return now
        return self.next_flush_at

    def reshape(self) -> None:
        """Forget what was read and read it again: new settings may route, key or pack it
        differently. Rows delivered behind an undelivered one may go twice (at least once)."""
        self.pending.clear()
        self._open.clear()
        self._outstanding.clear()
        self._finished.clear()
        self._pending_rows = self._pending_bytes = 0
        self.spool.rewind()

    # -- reading and shaping ------------------------------------------------------------------

    def _enough_read(self) -> bool:
        limits = self.service.limits
        entries = sum(len(queue) for queue in self.pending.values()) + len(self._open)
        return entries >= limits.max_records or self._pending_bytes >= limits.max_call_bytes

    def _fill(self) -> None:
        """Read from the spool until a call's worth is pending (or the spool is empty)."""
        limits = self.service.limits
        while not self._enough_read():
            # Bounded by bytes too: a call's worth of big rows must not mean 500 of them in memory.
            records = self.spool.read(limits.max_records,
                                      max(1, limits.max_call_bytes - self._pending_bytes))
            if not records:
                return
            for record in records:
                self._outstanding.append(record.seq)
                self._shape(record.seq, record.kind, record.data)

    def _shape(self, seq: int, kind: int, data: bytes) -> None:
        settings = self.settings
        limits = self.service.limits
        try:
            if kind == KIND_STATUS:
                record, parsed = data, _status_fields(data)
            else:
                record, parsed = result_record(data)
        except Unshippable as exc:
            self._drop(seq, exc.reason, exc.detail)
            return
        host = str(parsed.get("hostIdentifier") or "") or self.host_identifier
        if settings.aws_logger_record_ids:
            record = with_fields(record, {"log_id": record_id(parsed, seq, host)})
        row = record + limits.record_suffix
        stream = self._route(kind, str(parsed.get("name") or ""))
        key = partition_key(host, random_key=settings.aws_kinesis_random_partition_key) \
            if limits.uses_partition_key else ""
        single = Entry((seq,), row, key, stream)
        if oversize(single, limits):
            self._drop(seq, "oversize",
                       f"{single.size()} bytes over the {limits.max_record_bytes}-byte "
                       f"{limits.service} record limit, query {parsed.get('name', '?')}")
            return
        builder = self._builder_for(stream, key, row)
        if builder is None:
            self._queue(single)
            return
        if not builder.builder.add(row):
            self._close(builder)
            builder = self._builder_for(stream, key, row)
            assert builder is not None
            builder.builder.add(row)
        builder.seqs.append(seq)
        builder.row_bytes += len(row)
        self._pending_rows += 1
        self._pending_bytes += len(row)

    def _route(self, kind: int, name: str) -> str:
        """The stream a row goes to: a route naming its query (or pack prefix), the status
        stream for status logs, else the plugin's stream."""
        service = self.service.name
        if kind == KIND_STATUS:
            return str(getattr(self.settings, f"aws_{service}_status_stream")) or self.stream
        for stream, names in getattr(self.settings, f"aws_{service}_routes"):
            for pattern in names:
                if name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1])):
                    return str(stream)
        return self.stream

    def _builder_for(self, stream: str, key: str, row: bytes) -> _Open | None:
        """The open aggregate this row joins, or None to send it on its own."""
        settings = self.settings
        limits = self.service.limits
        if limits.uses_partition_key:
            if not settings.aws_kinesis_aggregate:
                return None
            if len(row) + len(key.encode()) + 64 > limits.max_record_bytes:
                return None  # too big to wrap; KPL consumers take plain records too
            slot = (stream, "" if settings.aws_kinesis_random_partition_key else key)
            if slot not in self._open:
                aggregate = KplAggregate(key, limits.max_record_bytes)
                self._open[slot] = _Open(slot, aggregate, key, stream)
        else:
            if not settings.aws_firehose_pack:
                return None
            slot = (stream, "")
            if slot not in self._open:
                pack = FirehosePack(limits.max_record_bytes,
                                    compress=settings.aws_firehose_compression == "gzip")
                self._open[slot] = _Open(slot, pack, "", stream)
        return self._open[slot]

    def _close(self, builder: _Open) -> None:
        del self._open[builder.slot]
        if builder.seqs:
            entry = builder.entry()
            self.pending.setdefault(entry.stream, deque()).append(entry)
            # Its rows were counted as they were added; its bytes are now the record's own.
            self._pending_bytes += len(entry.data) - builder.row_bytes

    def _close_all(self) -> None:
        for builder in list(self._open.values()):
            self._close(builder)

    def _queue(self, entry: Entry) -> None:
        self.pending.setdefault(entry.stream, deque()).append(entry)
        self._pending_rows += entry.rows
        self._pending_bytes += len(entry.data)

    def _drop(self, seq: int, reason: str, detail: str) -> None:
        self.counters.drop(reason)
        self._finished.add(seq)
        if self._logs.allow(reason, time.monotonic()):
            more = self._logs.suppressed.pop(reason, 0)
            log.warning("%s: dropped a record (%s): %s%s", self.plugin, reason, detail,
                        f" ({more} more since the last such line)" if more else "")

    def _acknowledge(self) -> None:
        last = 0
        while self._outstanding and self._outstanding[0] in self._finished:
            last = self._outstanding.popleft()
            self._finished.discard(last)
        if last:
            self.spool.ack(last)

    # -- sending ------------------------------------------------------------------------------

    def _next_stream(self) -> str | None:
        """The stream whose next entry holds the oldest row, so order is kept where it can be."""
        heads = [(queue[0].seqs[0], stream) for stream, queue in self.pending.items() if queue]
        return min(heads)[1] if heads else None

    def _forget_dropped(self) -> None:
        """Let go of rows a spool cap dropped after they were read (counted by the spool)."""
        floor = self.spool.dropped_below
        if floor <= self._dropped_below:
            return
        self._dropped_below = floor
        for slot, builder in list(self._open.items()):
            if builder.seqs and builder.seqs[-1] < floor:
                del self._open[slot]
                self._finished.update(builder.seqs)
                self._pending_rows -= len(builder.seqs)
                self._pending_bytes -= builder.row_bytes
        for queue in self.pending.values():
            # Entries are in spool order within a stream: the dropped ones lead.
            while queue and queue[0].seqs[-1] < floor:
                entry = queue.popleft()
                self._finished.update(entry.seqs)
                self._pending_rows -= entry.rows
                self._pending_bytes -= len(entry.data)

    def flush_once(self, clients: AwsClients | None, now: float) -> None:
        """Send at most one put call's worth of records, to one stream."""
        self._forget_dropped()
        self._fill()
        self._close_all()  # what was read goes out now, aggregates as full as they got
        self._acknowledge()  # drops above may complete a prefix
        stream = self._next_stream()
        if stream is None:
            self.next_flush_at = now + self.period
            return
        if clients is None:
            return
        queue = self.pending[stream]
        count = batch_length(queue, self.service.limits)
        batch = [queue[i] for i in range(count)]
        rows = sum(entry.rows for entry in batch)
        self.counters.put_calls += 1
        error = None
        try:
            codes = self.service.put(clients, stream, batch)
        except Exception as exc:
            error = delivery_error(exc, read_timeout=clients.read_timeout)
        if error is not None:
            # A failed botocore call leaves exception-traceback-frame cycles holding its request
            # (a call's worth of bytes) until the cyclic collector happens to run; through an
            # outage they pile up, one per retry. Failures are rare and spaced by backoff.
            gc.collect()
            self._call_failed(error, clients, now, rows)
            return
        failed = [entry for entry, code in zip(batch, codes, strict=True) if code]
        for _ in range(count):
            queue.popleft()
        queue.extendleft(reversed(failed))  # only the failed entries go again, in order
        delivered = 0
        for entry, code in zip(batch, codes, strict=True):
            if not code:
                self._finished.update(entry.seqs)
                delivered += entry.rows
                self._pending_rows -= entry.rows
                self._pending_bytes -= len(entry.data)
        self.counters.delivered += delivered
        self._acknowledge()
        if delivered:
            self.counters.last_success = time.time()
        if failed:
            failed_rows = sum(entry.rows for entry in failed)
            throttled = sum(entry.rows for entry, code in zip(batch, codes, strict=True)
                            if code and is_throttling(code))
            self.counters.retried += failed_rows
            self.counters.throttled += throttled
            self.backoff.failed(now)
            self._set_state("throttled" if throttled else "retrying",
                            f"{len(failed)} of {count} records failed "
                            f"({next(code for code in codes if code)})")
        else:
            self.backoff.succeeded()
            self._set_state("ok", "")
        if self.waiting() < self.service.limits.max_records:
            # The period's flush is done once no full batch is left: the remainder waits for
            # the next period (or a full batch), instead of trickling out in tiny calls.
            self.next_flush_at = now + self.period

    def _call_failed(self, error: DeliveryError, clients: AwsClients, now: float,
                     count: int) -> None:
        self.counters.retried += count
        if error.throttled:
            self.counters.throttled += count
        if error.expired_credentials:
            clients.invalidate()
        if error.retriable:
            delay = self.backoff.failed(now)
            state = "throttled" if error.throttled else "retrying"
            self._set_state(state, f"{error} (next try in {delay:.1f}s)")
        else:
            self.backoff.give_up_for_now(now)
            self._set_state("failing", f"{error}: records stay spooled; fix the cause (stream "
                            f"name, permissions, region) and they are sent")

    def _set_state(self, state: str, message: str) -> None:
        counters = self.counters
        changed = state != counters.state
        code = message.split(":", 1)[0]
        if message:
            counters.record_error(message)
        news = changed or (state != "ok" and code != self._last_error_code)
        # One line per change of state or of error, not one per retry, and at most one per
        # HEALTH_LOG_INTERVAL_SECONDS while it flaps; but a recovery after a logged failure is
        # always told, so the log never ends on a failure that is over.
        recovery = state == "ok" and self._logged_state != "ok"
        if news and (recovery or self._logs.allow("health", time.monotonic())):
            self._logged_state = state
            level = logging.INFO if state == "ok" else logging.WARNING
            more = self._logs.suppressed.pop("health", 0)
            log.log(level, "%s: %s%s%s", self.plugin, state, f": {message}" if message else "",
                    f" ({more} changes since the last such line)" if more else "")
        self._last_error_code = code if state != "ok" else ""
        counters.state = state


def _status_fields(data: bytes) -> dict[str, object]:
    """A status record's own fields (we wrote it, so it parses; but never trust a disk)."""
    try:
        parsed = json.loads(data)
    except ValueError:
        raise Unshippable("not_json", "a spooled status record") from None
    if not isinstance(parsed, dict):
        raise Unshippable("not_json", "a spooled status record")
    return parsed


class Flusher:
    """The one background thread that ships every plugin's spool."""

    def __init__(self, channels: list[Channel], settings: Settings, *,
                 problems: list[str] | None = None,
                 clients_factory: Callable[[Settings], AwsClients] = AwsClients) -> None:
        self.channels = channels
        self._clients_factory = clients_factory
        self._settings = settings
        self._problems = list(problems or [])
        self._clients: AwsClients | None = None
        self._pending_settings: tuple[Settings, list[str]] | None = None
        self._wake = threading.Event()
        self._stop_deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="aws-logger-flusher", daemon=True)
        self._next_report = time.monotonic() + REPORT_INTERVAL_SECONDS
        self._next_state = 0.0
        self._lock = threading.Lock()
        self._metrics = MetricsFile()

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def apply(self, settings: Settings, problems: list[str]) -> None:
        """New settings (from the thrift or watcher side); the flusher switches at its next turn."""
        with self._lock:
            self._pending_settings = (settings, list(problems))
        self._wake.set()

    def stop(self, timeout: float) -> bool:
        """Flush for at most `timeout` seconds, then stop. Answers whether everything was sent."""
        self._stop_deadline = time.monotonic() + timeout
        self._wake.set()
        self._thread.join(timeout + 0.5)
        drained = not self._thread.is_alive() and not any(c.waiting() for c in self.channels)
        self.write_states()
        for channel in self.channels:
            channel.spool.close()
        return drained

    def _switch_settings(self) -> None:
        with self._lock:
            pending, self._pending_settings = self._pending_settings, None
        if pending is None:
            return
        settings, problems = pending
        if settings != self._settings or problems != self._problems:
            self._settings, self._problems = settings, problems
            self._clients = None  # rebuilt with the new credentials, endpoints and proxy
            for channel in self.channels:
                channel.settings = settings
                channel.reshape()
                channel.backoff.succeeded()
                channel.next_flush_at = min(channel.next_flush_at,
                                            time.monotonic() + channel.period)
                channel.spool.max_records = settings.buffered_log_max
                channel.spool.max_bytes = settings.aws_logger_spool_max_bytes

    def _usable(self, channel: Channel) -> bool:
        """Whether this channel may ship now; records of one that may not stay spooled."""
        problem = "; ".join(self._problems) or channel.settings.stream_problem(channel.service.name)
        if problem:
            if channel.counters.state != "disabled" or channel.counters.last_error != problem:
                log.error("%s: not shipping, records stay spooled: %s", channel.plugin, problem)
                channel.counters.record_error(problem)
                channel.counters.state = "disabled"
            return False
        if channel.counters.state == "disabled":
            channel.counters.state = "ok"
        return True

    def _run(self) -> None:
        while True:
            try:
                if self._turn():
                    return
            except Exception:  # pragma: no cover - a bug must not end delivery for good
                log.exception("flusher: unexpected error; carrying on")
                self._wake.wait(MAX_WAIT_SECONDS)

    def _turn(self) -> bool:
        """One pass of the loop; answers True when the flusher is done for good."""
        self._switch_settings()
        now = time.monotonic()
        stopping = self._stop_deadline is not None
        if self._stop_deadline is not None and (now >= self._stop_deadline or not self._work_left()):
            return True
        for channel in self.channels:
            channel.spool.sync()
        sent = False
        for channel in self.channels:
            if not channel.due(now, draining=stopping):
                continue
            if not self._usable(channel):
                # Look again next period (or at once when new settings arrive).
                channel.backoff.retry_at = now + min(channel.period, MAX_UNUSABLE_RECHECK)
                continue
            if self._clients is None:
                self._clients = self._clients_factory(self._settings)
            before = channel.counters.state
            channel.flush_once(self._clients, now)
            if channel.counters.state != before:
                # A change of health is on disk at once, for `status` after a crash.
                self._next_state = now
            sent = True
        self._report(now)
        if sent:
            return False  # go round again at once: more may be due (draining a backlog)
        wake = min([c.wake_at(now) for c in self.channels] + [now + MAX_WAIT_SECONDS])
        if self._stop_deadline is not None:
            wake = min(wake, self._stop_deadline)
        self._wake.wait(max(0.0, wake - now))
        self._wake.clear()
        return False

    def _work_left(self) -> bool:
        return any(c.waiting() and self._usable(c) for c in self.channels)

    def rows(self) -> list[dict[str, Any]]:
        """The aws_logger_status rows: read by the thrift side, never touching the network."""
        rows = []
        for channel in self.channels:
            row = channel_row(channel, self._clients)
            if self._problems or channel.settings.stream_problem(channel.service.name):
                row["state"] = "disabled"
            rows.append(row)
        return rows

    def write_states(self) -> None:
        rows = self.rows()
        for channel, row in zip(self.channels, rows, strict=True):
            write_state(channel.spool.directory, row)
        self._metrics.write(self._settings.aws_logger_metrics_file, rows)

    def _report(self, now: float) -> None:
        if now >= self._next_state:
            self._next_state = now + STATE_INTERVAL_SECONDS
            self.write_states()
        if now < self._next_report:
            return
        self._next_report = now + REPORT_INTERVAL_SECONDS
        for channel in self.channels:
            records, size = channel.spool.depth()
            if records or channel.counters.state != "ok":
                c = channel.counters
                log.info("%s: %s; waiting %d records (%d bytes); accepted %d delivered %d "
                         "retried %d throttled %d dropped %s", channel.plugin, c.state, records,
                         size, c.accepted, c.delivered, c.retried, c.throttled,
                         {k: v for k, v in c.dropped.items() if v} or 0)


def local_host_identifier() -> str:
    """The partition key for lines that carry no hostIdentifier of their own."""
    return socket.gethostname()
