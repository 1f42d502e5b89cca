"""The accumulator: one plugin's rows, from its spool to batches ready to send. No network here.

It reads the spool, shapes each line into a record, routes it to its destination (a stream or
delivery stream), gathers rows into KPL aggregates or Firehose packs, keeps the acknowledgement
bookkeeping, and answers `ready(now)`: which (destination, batch) pairs may be sent now and
when to look again. The sender reports each outcome back (`completed`, `failed`). Its only I/O
is the spool's (reading, acknowledging, and moving routed rows, below).

Destinations are independent. Each has its own backoff and health (rate limits as data, as
sentry keeps them per category): a destination that throttles or fails waits, the others go on.

Why a spool per destination once routed: a spool is a FIFO acknowledged by prefix, so one
spool shared by several destinations lets an undeliverable row at its head hold back every
other destination's acknowledgements, and the reader must either stop (stalling the others) or
hold the blocked rows in memory (without bound). So:

- With one destination (no routes, no status stream: the usual case) the plugin's spool *is*
  that destination's spool: rows are read, sent and acknowledged in place, with no copy.
- With several, the plugin's spool is only an intake. Every row is shaped, routed and appended
  to its destination's own spool (``<plugin spool>/routed/<stream>/``, the same `Spool`, the
  same caps); those are synced to disk, then the intake is acknowledged. Each destination then
  reads, sends and acknowledges its own spool. A blocked destination's spool fills up to the
  caps and then drops its oldest rows (counted as ``cap_records``/``cap_bytes``), exactly like a
  plugin's spool in an outage; no other destination notices. Rows are shaped once, at routing,
  so a row's ``log_id`` (from its place in the intake) never changes.
- A destination spool left over from an earlier configuration is drained to its stream and
  then closed; one found empty and no longer routed to is ignored.
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ._batching import (
    RESULT_PREFIX,
    Entry,
    Unshippable,
    batch_length,
    event_records,
    oversize,
    record_id,
    result_record,
    with_fields,
)
from ._counters import PluginCounters
from ._errors import DeliveryError
from ._pacing import Pacing, first_flush_delay
from ._retry import Backoff, is_throttling
from ._service import Builder, Service
from ._settings import ServiceSettings, Settings
from ._spool import KIND_RESULT, KIND_STATUS, SEGMENT_SUFFIX, Spool

log = logging.getLogger("osquery_aws_logger.flusher")

#: Most rows moved from the intake to destination spools per turn of the loop.
ROUTE_CHUNK_RECORDS: Final = 4096
ROUTE_CHUNK_BYTES: Final = 8 << 20
#: At most one health line (state change) per destination per this many seconds.
HEALTH_LOG_INTERVAL_SECONDS: Final = 10.0
#: States from best to worst: a plugin shows its worst destination's.
STATES: Final = ("ok", "retrying", "throttled", "failing")

#: The directory, inside a plugin's spool, holding one spool per destination once routed.
ROUTED_DIR: Final = "routed"
_KEY_LENGTH: Final = struct.Struct("<H")
_SAFE_NAME: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


def routed_dir_name(stream: str) -> str:
    """The directory of a destination's spool: the stream's name, or its hex when the name is
    not a plain Kinesis/Firehose name (so a route can never name a path)."""
    return stream if _SAFE_NAME.fullmatch(stream) else "~" + stream.encode().hex()


def routed_stream_name(directory: str) -> str:
    return bytes.fromhex(directory[1:]).decode() if directory.startswith("~") else directory


class RateLimit:
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


class Health:
    """One destination's backoff, pacing and state, and the rate-limited lines that tell its
    changes."""

    def __init__(self) -> None:
        self.backoff = Backoff()
        self.pacing = Pacing()
        self.state = "ok"
        self.last_error = ""
        self._last_error_code = ""
        self._logged_state = "ok"
        self._logs = RateLimit(HEALTH_LOG_INTERVAL_SECONDS)

    def set_state(self, label: str, state: str, message: str, now: float) -> None:
        """Take `state`; log a line (naming the destination as `label`) when that is news."""
        changed = state != self.state
        code = message.split(":", 1)[0]
        if message:
            self.last_error = message
        news = changed or (state != "ok" and code != self._last_error_code)
        # One line per change of state or of error, not one per retry, and at most one per
        # HEALTH_LOG_INTERVAL_SECONDS while it flaps; but a recovery after a logged failure is
        # always told, so the log never ends on a failure that is over.
        recovery = state == "ok" and self._logged_state != "ok"
        if news and (recovery or self._logs.allow("health", now)):
            self._logged_state = state
            level = logging.INFO if state == "ok" else logging.WARNING
            more = self._logs.suppressed.pop("health", 0)
            log.log(level, "%s: %s%s%s", label, state, f": {message}" if message else "",
                    f" ({more} changes since the last such line)" if more else "")
        self._last_error_code = code if state != "ok" else ""
        self.state = state


class _Ledger:
    """Acknowledgement bookkeeping of one spool: the rows read, in spool order, and which of
    them are finished (delivered or dropped for good). The spool is acknowledged up to the
    first unfinished row, never past it, so a restart re-reads everything not finished."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.outstanding: deque[int] = deque()
        self.finished: set[int] = set()
        #: Rows still unfinished of the records that became more than one row (a batch-format
        #: line expanded into events); a record absent here is one row.
        self.parts: dict[int, int] = {}
        self.floor = 0  # the spool's dropped_below last acted on

    def expect(self, seq: int, rows: int) -> None:
        """Record `seq` became `rows` rows: it is finished when all of them are."""
        if rows == 0:
            self.finished.add(seq)
        elif rows > 1:
            self.parts[seq] = rows

    def finish(self, seqs: Iterable[int]) -> None:
        """One row finished per sequence number given (a record's rows share its number)."""
        parts = self.parts
        for seq in seqs:
            left = parts.pop(seq, 1) - 1
            if left > 0:
                parts[seq] = left
            else:
                self.finished.add(seq)

    def acknowledge(self) -> None:
        last = 0
        while self.outstanding and self.outstanding[0] in self.finished:
            last = self.outstanding.popleft()
            self.finished.discard(last)
        if last:
            self.spool.ack(last)

    def reset(self) -> None:
        self.outstanding.clear()
        self.finished.clear()
        self.parts.clear()
        self.spool.rewind()


class _Open:
    """An aggregate or pack being filled, and the rows in it (kept to split it if need be)."""

    def __init__(self, slot: str, builder: Builder, key: str) -> None:
        self.slot = slot
        self.builder = builder
        self.key = key
        self.rows: list[tuple[int, bytes]] = []
        self.row_bytes = 0


@dataclass(frozen=True, slots=True)
class Batch:
    """Entries for one put call to one destination, as `ready` hands them out."""

    destination: str
    entries: tuple[Entry, ...]
    _lane: _Destination = field(repr=False, compare=False)
    _generation: int = field(repr=False, compare=False)

    @property
    def rows(self) -> int:
        return sum(entry.rows for entry in self.entries)


@dataclass(frozen=True, slots=True)
class Ready:
    """What may be sent now, and when the accumulator next needs a turn (inf: not by itself)."""

    batches: tuple[Batch, ...]
    wake_at: float


@dataclass(frozen=True, slots=True)
class DestinationSnapshot:
    stream: str
    state: str
    waiting: int
    last_error: str


@dataclass(frozen=True)
class DeliverySnapshot:
    """What status shows of a plugin, published by the accumulator (read by other threads).

    The spools are there for their own locked, live figures (depth, oldest record)."""

    plugin: str
    service: str
    stream: str
    endpoint: str
    state: str
    spools: tuple[Spool, ...]
    destinations: tuple[DestinationSnapshot, ...] = ()


class _Destination:
    """One stream's lane: the spool it reads (the intake, or its own once routed), what was
    read and not yet delivered, and its health."""

    def __init__(self, stream: str, spool: Spool, *, routed: bool, health: Health) -> None:
        self.stream = stream
        self.spool = spool
        self.routed = routed
        self.ledger = _Ledger(spool)
        self.health = health
        self.pending: deque[Entry] = deque()
        self.open: dict[str, _Open] = {}
        self.pending_rows = 0  # rows in pending entries and open builders
        self.pending_bytes = 0
        self.next_flush_at = 0.0
        self.generation = 0
        self.in_flight = False  # a batch was handed out and not yet reported on

    def waiting(self) -> int:
        """Rows accepted and not yet delivered or dropped (read or not)."""
        return self.pending_rows + self.spool.pending_unread()

    def reset(self) -> None:
        """Forget what was read and read it again (new settings may key or pack it differently).
        Rows delivered behind an undelivered one may go twice (at least once)."""
        self.pending.clear()
        self.open.clear()
        self.pending_rows = self.pending_bytes = 0
        self.generation += 1
        self.in_flight = False
        self.ledger.reset()


class Accumulator:
    """One logger plugin's delivery state. Only the flusher thread calls it; other threads read
    `published` (a snapshot replaced whole) and the counters, nothing else."""

    def __init__(self, plugin: str, service: Service, intake: Spool, counters: PluginCounters,
                 settings: Settings, *, host_identifier: str, now: float = 0.0) -> None:
        self.plugin = plugin
        self.service = service
        self.intake = intake
        self.counters = counters
        self.host_identifier = host_identifier
        self.settings = settings
        self.view: ServiceSettings = service.settings(settings)
        self._router = _Ledger(intake)
        self._routed: dict[str, _Destination] = {}
        self._direct: _Destination | None = None
        self._health: dict[str, Health] = {}
        self._drop_logs = RateLimit(HEALTH_LOG_INTERVAL_SECONDS)
        self._open_routed_spools()
        self._configure(now)
        self.published = self._snapshot()

    # -- configuration ------------------------------------------------------------------------

    @property
    def single(self) -> bool:
        """Whether the plugin's spool is read in place (one destination) or only routed."""
        return self.view.single_destination()

    def _label(self, stream: str) -> str:
        return self.plugin if stream == self.view.stream else f"{self.plugin} ({stream})"

    def _health_of(self, stream: str) -> Health:
        health = self._health.get(stream)
        if health is None:
            health = self._health[stream] = Health()
        return health

    def _routed_spool(self, stream: str) -> Spool:
        return Spool(self.intake.directory / ROUTED_DIR / routed_dir_name(stream),
                     max_records=self.settings.buffered_log_max,
                     max_bytes=self.settings.aws_logger_spool_max_bytes, on_drop=self.counters.drop,
                     sync_interval=self.intake.sync_interval)

    def _open_routed_spools(self) -> None:
        """Destination spools left by an earlier run: drain those that hold rows."""
        root = self.intake.directory / ROUTED_DIR
        if not root.is_dir():
            return
        for directory in sorted(root.iterdir()):
            if not directory.is_dir() or directory.is_symlink():
                continue
            try:
                stream = routed_stream_name(directory.name)
            except ValueError:
                continue
            if not _holds_segments(directory):
                continue
            spool = self._routed_spool(stream)
            if spool.depth()[0]:
                self._routed[stream] = _Destination(stream, spool, routed=True,
                                                    health=self._health_of(stream))
            else:
                spool.close()

    def _configure(self, now: float) -> None:
        if self.single:
            if self._direct is None:
                self._direct = _Destination(self.view.stream, self.intake, routed=False,
                                            health=self._health_of(self.view.stream))
                self._direct.next_flush_at = now + first_flush_delay(self.view.period)
            self._direct.stream = self.view.stream
        else:
            self._direct = None

    def apply(self, settings: Settings, now: float) -> None:
        """New settings: caps in force at once, everything read is read again and reshaped."""
        old_stream = self.view.stream
        self.settings, self.view = settings, self.service.settings(settings)
        for spool in self.spools():
            spool.set_caps(settings.buffered_log_max, settings.aws_logger_spool_max_bytes)
        if self.view.stream != old_stream and old_stream in self._health \
                and self.view.stream not in self._health:
            # The plugin's own stream was renamed (fixed): its health carries over, so the
            # recovery is told.
            self._health[self.view.stream] = self._health.pop(old_stream)
        for health in self._health.values():
            health.backoff.succeeded()
        for destination in self._lanes():
            self._forget_dropped(destination)  # counted before they are forgotten with the rest
            destination.reset()
        self._router.reset()
        self._configure(now)
        for destination in self._lanes():
            destination.next_flush_at = min(destination.next_flush_at, now + self.view.period)
        self._prune()
        self._refresh_state()

    # -- figures ------------------------------------------------------------------------------

    def _lanes(self) -> list[_Destination]:
        lanes = list(self._routed.values())
        if self._direct is not None:
            lanes.insert(0, self._direct)
        return lanes

    def depth(self) -> tuple[int, int]:
        """Records waiting in all this plugin's spools, and the bytes those hold."""
        depths = [spool.depth() for spool in self.spools()]
        return sum(r for r, _ in depths), sum(b for _, b in depths)

    def spools(self) -> list[Spool]:
        return [self.intake, *(d.spool for d in self._routed.values())]

    def waiting(self) -> int:
        """Rows accepted and not yet delivered or dropped."""
        total = sum(d.waiting() for d in self._lanes())
        if self._direct is None:
            total += self.intake.pending_unread()
        return total

    def state(self) -> str:
        """The worst state among the destinations."""
        return max((h.state for h in self._health.values()), key=STATES.index, default="ok")

    def _refresh_state(self) -> None:
        if self.counters.state != "disabled":
            self.counters.state = self.state()

    def _snapshot(self) -> DeliverySnapshot:
        return DeliverySnapshot(
            plugin=self.plugin, service=self.service.name, stream=self.view.stream,
            endpoint=self.view.endpoint, state=self.state(), spools=tuple(self.spools()),
            destinations=tuple(DestinationSnapshot(d.stream, d.health.state, d.pending_rows,
                                                   d.health.last_error) for d in self._lanes()))

    def publish(self) -> None:
        self.published = self._snapshot()

    def sync(self) -> None:
        for spool in self.spools():
            spool.sync()

    def close(self) -> None:
        for lane in self._lanes():
            self._forget_dropped(lane)  # rows held that the spool gave up: counted, never sent
        for spool in self.spools():
            spool.close()

    # -- shaping and routing ------------------------------------------------------------------

    def _drop(self, reason: str, detail: str, now: float) -> None:
        self.counters.drop(reason)
        if self._drop_logs.allow(reason, now):
            more = self._drop_logs.suppressed.pop(reason, 0)
            log.warning("%s: dropped a record (%s): %s%s", self.plugin, reason, detail,
                        f" ({more} more since the last such line)" if more else "")

    def _shape(self, seq: int, kind: int, data: bytes, now: float) -> list[tuple[bytes, str, str]]:
        """A spooled line as its rows, each (record, partition key, destination stream): one,
        or one per row of a batch-format line with aws_logger_results_as_events; none if the
        line is dropped. A row too large is dropped on its own; its siblings still ship."""
        limits = self.service.limits
        if kind == KIND_RESULT and len(data) > limits.max_record_bytes and \
                not self.settings.aws_logger_results_as_events and \
                len(data.strip()) + len(RESULT_PREFIX) - 1 > limits.max_record_bytes:
            # Too big whatever it holds: dropped unparsed, since parsing a multi-MB line (a big
            # snapshot) costs ten times its size in memory for a moment, near the watchdog's
            # limit. Expanded into rows, though, each row may fit: that case is parsed.
            self._drop("oversize", f"a {len(data)}-byte line, over the "
                       f"{limits.max_record_bytes}-byte {limits.service} record limit", now)
            return []
        try:
            if kind == KIND_STATUS:
                records, parsed, expanded = [data], _status_fields(data), False
            elif self.settings.aws_logger_results_as_events:
                records, parsed, expanded = event_records(data)
            else:
                record, parsed = result_record(data)
                records, expanded = [record], False
        except Unshippable as exc:
            self._drop(exc.reason, exc.detail, now)
            return []
        if expanded:
            self.counters.expanded += len(records)
        # The rows of one line share its host, query name and so its key and stream.
        host = parsed.get("hostIdentifier") or self.host_identifier
        if not isinstance(host, str):
            host = str(host)
        key = self.service.partition_key(host, self.view)
        room = limits.max_record_bytes - len(key.encode()) - len(limits.record_suffix)
        stream = self.view.route(kind == KIND_STATUS, str(parsed.get("name") or ""))
        ids = self.settings.aws_logger_record_ids
        if len(records) == 1 and not ids and len(records[0]) <= room:
            return [(records[0] + limits.record_suffix, key, stream)]  # the usual line
        shaped = []
        for index, plain in enumerate(records):
            record = plain if not ids else with_fields(plain, {"log_id": record_id(
                parsed, seq, host, index if expanded else None)})
            if len(record) > room:
                self._drop("oversize", f"{len(record) + limits.max_record_bytes - room} bytes "
                           f"over the {limits.max_record_bytes}-byte {limits.service} record "
                           f"limit, query {parsed.get('name', '?')}", now)
                continue
            shaped.append((record + limits.record_suffix, key, stream))
        return shaped

    def _route(self, now: float) -> int:
        """Move rows from the intake to their destinations' spools (several destinations);
        answer how many were read."""
        records = self.intake.read(ROUTE_CHUNK_RECORDS, ROUTE_CHUNK_BYTES)
        if not records:
            return 0
        touched: dict[str, Spool] = {}
        for record in records:
            for row, key, stream in self._shape(record.seq, record.kind, record.data, now):
                self._route_row(row, key, stream, now, touched)
        for spool in touched.values():
            spool.sync(force=True)  # on disk there before the intake forgets them
        self.intake.ack(records[-1].seq)
        return len(records)

    def _route_row(self, row: bytes, key: str, stream: str, now: float,
                   touched: dict[str, Spool]) -> None:
        """Append one shaped row to its destination's own spool."""
        destination = self._routed.get(stream)
        if destination is None:
            destination = self._routed[stream] = _Destination(
                stream, self._routed_spool(stream), routed=True, health=self._health_of(stream))
            destination.next_flush_at = now + self.view.period
        encoded = key.encode()
        destination.spool.append(KIND_RESULT, _KEY_LENGTH.pack(len(encoded)) + encoded + row)
        touched[stream] = destination.spool

    def _fill(self, lane: _Destination, now: float) -> None:
        """Read from the lane's spool until a call's worth is pending (or the spool is empty)."""
        limits = self.service.limits
        while not self._enough_read(lane):
            # Bounded by bytes too: a call's worth of big rows must not mean 500 of them in memory.
            records = lane.spool.read(limits.max_records,
                                      max(1, limits.max_call_bytes - lane.pending_bytes))
            if not records:
                return
            for record in records:
                lane.ledger.outstanding.append(record.seq)
                if lane.routed:
                    framed = _unframe(record.data)
                    if framed is None:
                        self._drop("corrupt", "a routed record without its partition key", now)
                        lane.ledger.finish((record.seq,))
                        continue
                    self._add(lane, record.seq, *framed, now)
                    continue
                shaped = self._shape(record.seq, record.kind, record.data, now)
                lane.ledger.expect(record.seq, len(shaped))
                for row, key, _ in shaped:
                    self._add(lane, record.seq, row, key, now)

    def _enough_read(self, lane: _Destination) -> bool:
        limits = self.service.limits
        entries = len(lane.pending) + len(lane.open)
        return entries >= limits.max_records or lane.pending_bytes >= limits.max_call_bytes

    def _add(self, lane: _Destination, seq: int, row: bytes, key: str, now: float) -> None:
        if not self.view.many_rows_per_record:
            self._queue(lane, Entry((seq,), row, key, lane.stream))  # one row per record
            return
        slot = self.service.slot(self.view, key)
        current = lane.open.get(slot)
        if current is not None and current.builder.add(row):
            self._took(lane, current, seq, row)
            return
        if current is not None:
            self._close(lane, current, now)  # full: the row starts the next one
        builder = self.service.builder(self.view, key)
        if builder is not None and builder.add(row):
            current = lane.open[slot] = _Open(slot, builder, key)
            self._took(lane, current, seq, row)
            return
        # One row per record, or a row too big to wrap in an aggregate: a plain record.
        self._queue(lane, Entry((seq,), row, key, lane.stream))

    @staticmethod
    def _took(lane: _Destination, builder: _Open, seq: int, row: bytes) -> None:
        builder.rows.append((seq, row))
        builder.row_bytes += len(row)
        lane.pending_rows += 1
        lane.pending_bytes += len(row)

    @staticmethod
    def _queue(lane: _Destination, entry: Entry) -> None:
        lane.pending.append(entry)
        lane.pending_rows += entry.rows
        lane.pending_bytes += len(entry.data)

    def _close(self, lane: _Destination, builder: _Open, now: float) -> None:
        """Close a builder into a record, checked against the record limit before it is sent."""
        del lane.open[builder.slot]
        lane.pending_rows -= len(builder.rows)
        lane.pending_bytes -= builder.row_bytes
        entry = Entry(tuple(seq for seq, _ in builder.rows), builder.builder.data(), builder.key,
                      lane.stream)
        if not oversize(entry, self.service.limits):
            self._queue(lane, entry)
            return
        # Only gzip can grow a record past what was counted: send each row on its own.
        for seq, row in builder.rows:
            single = self.service.builder(self.view, builder.key)
            if single is not None and single.add(row):
                alone = Entry((seq,), single.data(), builder.key, lane.stream)
                if not oversize(alone, self.service.limits):
                    self._queue(lane, alone)
                    continue
                if not self.service.limits.uses_partition_key:
                    # A plain row in a stream of gzip members would corrupt the S3 object.
                    self._drop("oversize", f"{len(alone.data)} bytes gzipped, over the "
                               f"{self.service.limits.max_record_bytes}-byte record limit", now)
                    lane.ledger.finish((seq,))
                    continue
            self._queue(lane, Entry((seq,), row, builder.key, lane.stream))

    def _close_all(self, lane: _Destination, now: float) -> None:
        for builder in list(lane.open.values()):
            self._close(lane, builder, now)

    def _forget_dropped(self, lane: _Destination) -> None:
        """Let go of rows the spool gave up (a cap, a full disk) after they were read, and
        count them: the spool counts only those it never handed out. Rows delivered first
        were counted delivered, and are not counted again."""
        floor = lane.spool.dropped_below
        if floor <= lane.ledger.floor:
            return
        lane.ledger.floor = floor
        forgotten = 0
        for slot, builder in list(lane.open.items()):
            if builder.rows and builder.rows[-1][0] < floor:
                del lane.open[slot]
                lane.ledger.finish(seq for seq, _ in builder.rows)
                lane.pending_rows -= len(builder.rows)
                lane.pending_bytes -= builder.row_bytes
                forgotten += len(builder.rows)
        # Entries are in spool order: the dropped ones lead.
        while lane.pending and lane.pending[0].seqs[-1] < floor:
            entry = lane.pending.popleft()
            lane.ledger.finish(entry.seqs)
            lane.pending_rows -= entry.rows
            lane.pending_bytes -= len(entry.data)
            forgotten += entry.rows
        if forgotten:
            self.counters.drop(lane.spool.dropped_reason, forgotten)

    def _prune(self) -> None:
        """Close destination spools that are empty and no longer routed to."""
        targets = set() if self.single else {self.view.stream, self.view.status_stream,
                                             *(stream for stream, _ in self.view.routes)}
        for stream, lane in list(self._routed.items()):
            if stream not in targets and not lane.waiting() and not lane.spool.depth()[0]:
                lane.spool.close()
                del self._routed[stream]
        keep = {d.stream for d in self._lanes()} | {self.view.stream}
        for stream in [s for s in self._health if s not in keep]:
            del self._health[stream]

    # -- what may go --------------------------------------------------------------------------

    def _due(self, lane: _Destination, now: float, *, draining: bool) -> bool:
        if lane.in_flight or not lane.health.backoff.ready(now) or \
                not lane.health.pacing.ready(now) or not lane.waiting():
            return False
        if draining or lane.waiting() >= self.service.limits.max_records:
            return True
        return now >= lane.next_flush_at

    def _wake_at(self, lane: _Destination, now: float) -> float:
        waiting = lane.waiting()
        if not waiting:
            return math.inf  # the thrift side wakes the loop once a full batch is waiting
        if not lane.health.backoff.ready(now) or not lane.health.pacing.ready(now):
            return max(lane.health.backoff.retry_at, lane.health.pacing.allowed_at)
        if waiting >= self.service.limits.max_records:
            return now
        return lane.next_flush_at

    def ready(self, now: float, *, draining: bool = False) -> Ready:
        """The batches that may be sent now (at most one per destination) and when to wake.

        A destination is due when its period is up or a full batch waits (at once when
        draining), unless it is backing off. A batch handed out stays the head of its
        destination's queue until `completed` or `failed` reports on it.
        """
        routed = self._route(now) if self._direct is None else 0
        batches = []
        # More to route than one turn takes: come back at once.
        wake = now if routed and self.intake.pending_unread() else math.inf
        for lane in self._lanes():
            if lane.in_flight:
                continue  # its head is out; nothing of it changes until the outcome
            self._forget_dropped(lane)
            if self._due(lane, now, draining=draining):
                self._fill(lane, now)
                self._close_all(lane, now)  # what was read goes out now, as full as it got
                lane.ledger.acknowledge()  # drops may complete a prefix
                if lane.pending:
                    count = min(batch_length(lane.pending, self.service.limits),
                                lane.health.pacing.limit(self.service.limits.max_records,
                                                         self.view.period))
                    batches.append(Batch(lane.stream, tuple(lane.pending[i] for i in range(count)),
                                         lane, lane.generation))
                    lane.in_flight = True
                    continue
                lane.next_flush_at = now + self.view.period
            else:
                lane.ledger.acknowledge()
            wake = min(wake, self._wake_at(lane, now))
        self._prune()
        self.publish()
        return Ready(tuple(batches), wake)

    # -- outcomes -----------------------------------------------------------------------------

    def _current(self, batch: Batch) -> _Destination | None:
        lane = batch._lane
        if lane.generation != batch._generation or lane not in self._lanes():
            return None  # reshaped since: its rows will be read again
        return lane

    def completed(self, batch: Batch, codes: list[str | None], now: float) -> None:
        """The put call answered: `codes` has each entry's error code, None where accepted.
        Only the failed entries go again, first, in order."""
        self.counters.put_calls += 1
        lane = self._current(batch)
        if lane is None:
            return
        lane.in_flight = False
        entries = batch.entries
        for _ in entries:
            lane.pending.popleft()
        failed = [entry for entry, code in zip(entries, codes, strict=True) if code]
        lane.pending.extendleft(reversed(failed))
        delivered = 0
        for entry, code in zip(entries, codes, strict=True):
            if not code:
                lane.ledger.finish(entry.seqs)
                delivered += entry.rows
                lane.pending_rows -= entry.rows
                lane.pending_bytes -= len(entry.data)
        lane.ledger.acknowledge()
        self.counters.delivered += delivered
        if delivered:
            self.counters.last_success = time.time()
        health = lane.health
        health.pacing.answered(now, len(entries), len(entries) - len(failed),
                               sum(1 for code in codes if code and is_throttling(code)))
        if failed:
            failed_rows = sum(entry.rows for entry in failed)
            throttled = sum(entry.rows for entry, code in zip(entries, codes, strict=True)
                            if code and is_throttling(code))
            self.counters.retried += failed_rows
            self.counters.throttled += throttled
            health.backoff.failed(now)
            message = (f"{len(failed)} of {len(entries)} records failed "
                       f"({next(code for code in codes if code)})")
            self.counters.record_error(message)
            health.set_state(self._label(lane.stream), "throttled" if throttled else "retrying",
                             message, now)
        else:
            health.backoff.succeeded()
            health.set_state(self._label(lane.stream), "ok", "", now)
        if lane.waiting() < self.service.limits.max_records:
            # The period's flush is done once no full batch is left: the remainder waits for
            # the next period (or a full batch), instead of trickling out in tiny calls.
            lane.next_flush_at = now + self.view.period
        self._refresh_state()
        self.publish()

    def failed(self, batch: Batch, error: DeliveryError, now: float) -> None:
        """The whole put call failed: every entry stays queued, the destination backs off."""
        self.counters.put_calls += 1
        rows = batch.rows
        self.counters.retried += rows
        if error.throttled:
            self.counters.throttled += rows
        lane = self._current(batch)
        if lane is not None:
            lane.in_flight = False
        health = lane.health if lane is not None else self._health_of(batch.destination)
        health.pacing.failed(now, len(batch.entries), throttled=error.throttled,
                             expired=error.expired_credentials)
        if error.retriable:
            delay = health.backoff.failed(now)
            message = f"{error} (next try in {delay:.1f}s)"
            state = "throttled" if error.throttled else "retrying"
        else:
            health.backoff.give_up_for_now(now)
            message = (f"{error}: records stay spooled; fix the cause (stream name, "
                       f"permissions, region) and they are sent")
            state = "failing"
        self.counters.record_error(message)
        health.set_state(self._label(batch.destination), state, message, now)
        self._refresh_state()
        self.publish()


def _holds_segments(directory: Path) -> bool:
    return any(path.name.endswith(SEGMENT_SUFFIX) for path in directory.iterdir())


def _unframe(data: bytes) -> tuple[bytes, str] | None:
    """A routed record's row and partition key."""
    if len(data) < _KEY_LENGTH.size:
        return None
    (length,) = _KEY_LENGTH.unpack_from(data)
    end = _KEY_LENGTH.size + length
    if len(data) <= end:
        return None
    try:
        key = data[_KEY_LENGTH.size:end].decode()
    except UnicodeDecodeError:
        return None
    return data[end:], key


def _status_fields(data: bytes) -> dict[str, object]:
    """A status record's own fields (we wrote it, so it parses; but never trust a disk)."""
    try:
        parsed = json.loads(data)
    except ValueError:
        raise Unshippable("not_json", "a spooled status record") from None
    if not isinstance(parsed, dict):
        raise Unshippable("not_json", "a spooled status record")
    return parsed
