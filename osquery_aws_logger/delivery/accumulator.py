"""The accumulator: one plugin's rows, from its spools to batches ready to send. No network here.

It coordinates the parts: the shaper (a line to rows, `_shaper`), one lane per destination
stream (pending rows and the acknowledgement ledger, `_lane`), the router (rows to their
destinations' own spools, `_router`) and each destination's health (`_health`). It answers
`ready(now)`: which (destination, batch) pairs may be sent now and when to look again; the
sender reports each outcome back (`completed`, `failed`). Destinations are independent: each has
its own backoff and health (rate limits as data, as sentry keeps them per category), so one
that throttles or fails waits and the others go on.

- With one destination (no routes, no status stream: the usual case) the plugin's spool *is*
  that destination's spool: lines are read, shaped, sent and acknowledged in place.
- With several, the plugin's spool is only an intake, routed to a spool per destination.
- A spool left in an earlier spool directory is drained too: its lines are read like the
  intake's, its routed spools are orphans (their rows go through the current routes).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ..counters import PluginCounters
from ..errors import DeliveryError
from ..settings import ServiceSettings, Settings
from ..spool.spool import SpoolLike
from .batching import Entry
from .health import HEALTH_LOG_INTERVAL_SECONDS, STATES, Health, RateLimit, worst
from .lane import Builder, Lane
from .retry import is_throttling
from .router import (
    ROUTE_CHUNK_ROWS,
    ROUTED_DIR,
    Intake,
    Router,
    migrate_routed,
    routed_dir_name,
    routed_stream_name,
)
from .services import Service
from .shaper import Rules

log = logging.getLogger("osquery_aws_logger.flusher")

__all__ = ["ROUTED_DIR", "STATES", "Accumulator", "Batch", "DeliverySnapshot", "Health", "Ready",
           "SpoolFigures"]

#: How often the oldest waiting record's age is looked up again (it may read a segment).
OLDEST_REFRESH_SECONDS: Final = 5.0


@dataclass(frozen=True, slots=True)
class Batch:
    """Entries for one put call to one destination, as `ready` hands them out."""

    destination: str
    entries: tuple[Entry, ...]
    _lane: Lane = field(repr=False, compare=False)
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


@dataclass(frozen=True, slots=True)
class SpoolFigures:
    """What a plugin's spools hold, taken by the flusher's thread (it may read a segment)."""

    records: int = 0  # records (lines) waiting in all the plugin's spools
    rows: int = 0
    bytes: int = 0
    oldest_at: float | None = None  # when the oldest waiting record was accepted
    #: Earlier spool directories still being drained: (directory, rows waiting there).
    draining: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class DeliverySnapshot:
    """What status shows of a plugin, published by the flusher's thread (other threads read
    it whole, and never touch a spool's files for it)."""

    plugin: str
    service: str
    stream: str
    endpoint: str
    state: str
    problem: str = ""  # why the plugin's spool cannot be used, if it cannot
    #: The plugin's spools, for their own live, locked, in-memory figures (depth, rows).
    spools: tuple[SpoolLike, ...] = ()
    figures: SpoolFigures = SpoolFigures()
    destinations: tuple[DestinationSnapshot, ...] = ()


class Accumulator:
    """One logger plugin's delivery state. Only the flusher thread calls it; other threads read
    `published` (a snapshot replaced whole) and the counters, nothing else."""

    def __init__(self, plugin: str, service: Service, intake: SpoolLike, counters: PluginCounters,
                 settings: Settings, *, host_identifier: str, now: float = 0.0,
                 earlier: tuple[SpoolLike, ...] = ()) -> None:
        self.plugin = plugin
        self.service = service
        self.intake = intake
        self.counters = counters
        self.host_identifier = host_identifier
        self.settings = settings
        self.view: ServiceSettings = service.settings(settings)
        self.limits = service.limits_for(self.view)
        self._intakes = [Intake(intake), *(Intake(spool) for spool in earlier)]
        self._routed: dict[str, Lane] = {}
        self._foreign: list[Lane] = []  # routed spools of earlier directories: always orphans
        self._direct: list[Lane] = []
        self._health: dict[str, Health] = {}
        self._drop_logs = RateLimit(HEALTH_LOG_INTERVAL_SECONDS)
        self._router = Router(self._routed_spool)
        self._rules = self._make_rules()
        self._oldest: tuple[float, float | None] = (-math.inf, None)
        #: Why the plugin may not ship now (see set_problem); "" when it may.
        self.problem = ""
        #: Earlier spool directories emptied since start (the extension forgets them).
        self.drained: list[Path] = []
        self._open_routed_spools()
        self._configure(now)
        self.published = self._snapshot(SpoolFigures())

    # -- configuration ------------------------------------------------------------------------

    def _make_rules(self) -> Rules:
        return Rules(limits=self.limits,
                     results_as_events=self.settings.aws_logger_results_as_events,
                     record_ids=self.settings.aws_logger_record_ids,
                     random_key=self.view.random_partition_key,
                     host_identifier=self.host_identifier, route=self.view.route)

    def _builder(self, key: str) -> Builder | None:
        return self.service.builder(self.view, key)

    def _slot(self, key: str) -> str:
        return self.service.slot(self.view, key)

    @property
    def single(self) -> bool:
        """Whether the plugin's spool is read in place (one destination) or only routed."""
        return self.view.single_destination()

    def _targets(self) -> set[str]:
        view = self.view
        return {view.stream, view.status_stream or view.stream,
                *(stream for stream, _ in view.routes)}

    def _label(self, stream: str) -> str:
        return self.plugin if stream == self.view.stream else f"{self.plugin} ({stream})"

    def _health_of(self, stream: str) -> Health:
        health = self._health.get(stream)
        if health is None:
            health = self._health[stream] = Health()
        return health

    def _spool_under(self, parent: SpoolLike, stream: str) -> SpoolLike:
        return parent.child(ROUTED_DIR, routed_dir_name(stream), migrate=migrate_routed)

    def _routed_spool(self, stream: str) -> SpoolLike:
        """A destination's spool under the plugin's own, made on first use."""
        lane = self._routed.get(stream)
        if lane is None:
            lane = self._routed[stream] = Lane(stream, self._spool_under(self.intake, stream),
                                               routed=True, health=self._health_of(stream))
            lane.next_flush_at = time.monotonic() + self.view.period
        return lane.spool

    def _open_routed_spools(self) -> None:
        """Destination spools left by an earlier run (or directory): those that hold rows."""
        for index, intake in enumerate(self._intakes):
            for directory in intake.spool.children(ROUTED_DIR):
                try:
                    stream = routed_stream_name(directory)
                except ValueError:
                    continue
                spool = self._spool_under(intake.spool, stream)
                if not spool.depth()[0]:
                    spool.close()
                    continue
                lane = Lane(stream, spool, routed=True, health=self._health_of(stream))
                if index == 0:
                    self._routed[stream] = lane
                else:
                    self._foreign.append(lane)

    def _configure(self, now: float) -> None:
        self._rules = self._make_rules()
        if self.single:
            if len(self._direct) != len(self._intakes):
                health = self._health_of(self.view.stream)
                self._direct = [Lane(self.view.stream, intake.spool, routed=False, health=health)
                                for intake in self._intakes]
                for lane in self._direct:
                    lane.next_flush_at = now + self.view.period
            for lane in self._direct:
                lane.stream = self.view.stream
                lane.health = self._health_of(self.view.stream)
        else:
            self._direct = []

    def apply(self, settings: Settings, now: float) -> None:
        """New settings: caps in force at once, everything read is read again and reshaped."""
        old_stream = self.view.stream
        self.settings, self.view = settings, self.service.settings(settings)
        self.limits = self.service.limits_for(self.view)
        for spool in self.spools():
            spool.set_caps(settings.buffered_log_max, settings.aws_logger_spool_max_bytes)
        if self.view.stream != old_stream and old_stream in self._health \
                and self.view.stream not in self._health:
            # The plugin's own stream was renamed (fixed): its health carries over, so the
            # recovery is told.
            self._health[self.view.stream] = self._health.pop(old_stream)
        for health in self._health.values():
            health.backoff.succeeded()
        self._reset_all()
        self._configure(now)
        for lane in self._lanes():
            lane.next_flush_at = min(lane.next_flush_at, now + self.view.period)
        self._prune()

    def recover(self, now: float) -> None:
        """After an unexpected error: forget everything read and read it again from the last
        acknowledgement (rows may go twice, none is lost)."""
        self._reset_all()
        self._configure(now)

    def _reset_all(self) -> None:
        for lane in self._all_lanes():
            self._count_forgotten(*lane.forget_dropped())  # counted before they are forgotten
            lane.reset()
        for intake in self._intakes:
            self._count_forgotten(*intake.forget_dropped())
            intake.reset()

    # -- figures ------------------------------------------------------------------------------

    def _lanes(self) -> list[Lane]:
        """The lanes that deliver: the direct ones, and the routed ones still configured."""
        targets = self._targets()
        return [*self._direct, *(lane for stream, lane in self._routed.items() if stream in targets)]

    def _orphans(self) -> list[Lane]:
        targets = self._targets()
        return [*(lane for stream, lane in self._routed.items() if stream not in targets),
                *self._foreign]

    def _all_lanes(self) -> list[Lane]:
        return [*self._direct, *self._routed.values(), *self._foreign]

    def spools(self) -> list[SpoolLike]:
        return [*(intake.spool for intake in self._intakes),
                *(lane.spool for lane in self._routed.values()),
                *(lane.spool for lane in self._foreign)]

    def depth(self) -> tuple[int, int]:
        """Records waiting in all this plugin's spools, and the bytes those hold."""
        depths = [spool.depth() for spool in self.spools()]
        return sum(r for r, _ in depths), sum(b for _, b in depths)

    def waiting(self) -> int:
        """Rows held and records not yet read, in every spool of the plugin."""
        total = sum(lane.waiting() for lane in self._all_lanes())
        if not self.single:
            total += sum(sum(s.left for s in i.sources) + i.spool.pending_unread()
                         for i in self._intakes)
        elif len(self._direct) != len(self._intakes):
            total += sum(i.spool.pending_unread() for i in self._intakes)
        return total

    def state(self) -> str:
        """The plugin's state, decided here alone: "disabled" while it may not ship, else the
        worst of its destinations' (each destination's Health tracks its own)."""
        if self.problem:
            return "disabled"
        return worst([h.state for h in self._health.values()])

    def set_problem(self, problem: str) -> bool:
        """Why the plugin may not ship now ("" when it may), as the flusher finds it (settings,
        an unusable spool); told once when it changes. Answers whether there is one."""
        if problem and problem != self.problem:
            log.error("%s: not shipping, records stay spooled: %s", self.plugin, problem)
            self.counters.record_error(problem)
        self.problem = problem
        return bool(problem)

    def _snapshot(self, figures: SpoolFigures) -> DeliverySnapshot:
        return DeliverySnapshot(
            plugin=self.plugin, service=self.service.name, stream=self.view.stream,
            endpoint=self.view.endpoint, state=self.state(), problem=self.intake.problem,
            spools=tuple(self.spools()), figures=figures,
            destinations=tuple(DestinationSnapshot(d.stream, d.health.state, d.pending_rows,
                                                   d.health.last_error) for d in self._lanes()))

    def publish(self, *, figures: bool = False, now: float | None = None) -> None:
        """Publish the state; with `figures` also what the spools hold and the oldest waiting
        record's time (which may read a segment: the flusher's thread only)."""
        if not figures:
            self.published = self._snapshot(self.published.figures)
            return
        now = time.monotonic() if now is None else now
        spools = self.spools()
        depths = [spool.depth() for spool in spools]
        records = sum(r for r, _ in depths)
        refreshed_at, oldest = self._oldest
        if now - refreshed_at >= OLDEST_REFRESH_SECONDS or not self.published.figures.records:
            found = [at for spool, (held, _) in zip(spools, depths, strict=True)
                     if held and (at := spool.oldest_accepted_at()) is not None]
            oldest = min(found, default=None)
            self._oldest = (now, oldest)
        draining = tuple(
            (str(i.spool.directory.parent), i.spool.waiting_rows() + sum(
                lane.spool.waiting_rows() for lane in self._foreign
                if lane.spool.directory.is_relative_to(i.spool.directory)))
            for i in self._intakes[1:])
        self.published = self._snapshot(SpoolFigures(
            records=records, rows=sum(spool.waiting_rows() for spool in spools),
            bytes=sum(b for _, b in depths), oldest_at=oldest if records else None,
            draining=draining))

    def sync(self) -> None:
        for spool in self.spools():
            spool.sync()

    def close(self) -> None:
        for lane in self._all_lanes():
            self._count_forgotten(*lane.forget_dropped())  # held, given up: counted, never sent
        for intake in self._intakes:
            self._count_forgotten(*intake.forget_dropped())
        for spool in self.spools():
            spool.close()

    # -- drops --------------------------------------------------------------------------------

    def _drop(self, reason: str, rows: int, detail: str) -> None:
        """Rows given up while shaping: counted, and told at most once per interval a reason."""
        if rows <= 0:
            return
        self.counters.drop(reason, rows)
        now = time.monotonic()
        if self._drop_logs.allow(reason, now):
            more = self._drop_logs.suppressed.pop(reason, 0)
            log.warning("%s: dropped %s (%s): %s%s", self.plugin,
                        "a record" if rows == 1 else f"a line of {rows} rows", reason, detail,
                        f" ({more} more since the last such line)" if more else "")

    def _count_forgotten(self, rows: int, reason: str) -> None:
        if rows:
            self.counters.drop(reason, rows)

    # -- what may go --------------------------------------------------------------------------

    def _due(self, lane: Lane, now: float, *, draining: bool) -> bool:
        if lane.in_flight or not lane.health.backoff.ready(now) or not lane.waiting():
            return False
        if draining or lane.waiting() >= self.limits.max_records:
            return True
        return now >= lane.next_flush_at

    def _route(self) -> int:
        """Move rows to the destinations' spools: the intakes' (several destinations), and the
        orphans' (destinations no longer configured) back through the current routes."""
        moved = 0
        if not self.single:
            for intake in self._intakes:
                self._count_forgotten(*intake.forget_dropped())
            moved, made = self._router.route(self._intakes, self._rules, self._drop)
            self.counters.expanded += made
        for orphan in self._orphans():
            if moved >= ROUTE_CHUNK_ROWS:
                break
            if orphan.in_flight:
                continue
            if orphan.pending or orphan.sources or orphan.open:
                self._count_forgotten(*orphan.forget_dropped())
                orphan.reset()  # what it held is read again, to be routed
            moved += self._router.reroute(orphan.spool, self._rules, ROUTE_CHUNK_ROWS - moved)
        return moved

    def _more_to_route(self) -> bool:
        if not self.single and any(i.sources or i.spool.pending_unread() for i in self._intakes):
            return True
        return any(o.spool.pending_unread() for o in self._orphans())

    def ready(self, now: float, *, draining: bool = False) -> Ready:
        """The batches that may be sent now (at most one per destination) and when to wake.

        A destination is due when its period is up or a full batch waits (at once when
        draining), unless it is backing off. A batch handed out stays the head of its
        destination's queue until `completed` or `failed` reports on it.
        """
        moved = self._route()
        batches = []
        # More to route than one turn takes: come back at once.
        wake = now if moved and self._more_to_route() else math.inf
        limits = self.limits
        for lane in self._lanes():
            if lane.in_flight:
                continue  # its head is out; nothing of it changes until the outcome
            self._count_forgotten(*lane.forget_dropped())
            if self._due(lane, now, draining=draining):
                self.counters.expanded += lane.fill(self._rules, self._drop,
                                                    builder=self._builder, slot=self._slot)
                lane.close_all(limits, self._builder, self._drop)  # goes now, as full as it got
                lane.ledger.acknowledge(lane.spool)  # drops may complete a prefix
                if lane.pending:
                    batches.append(Batch(lane.stream, lane.batch(limits), lane, lane.generation))
                    lane.in_flight = True
                    continue
                lane.next_flush_at = now + self.view.period
            else:
                lane.ledger.acknowledge(lane.spool)
            wake = min(wake, lane.wake_at(limits, now))
        self._prune()
        self.publish()
        return Ready(tuple(batches), wake)

    def _prune(self) -> None:
        """Close destination spools that are empty and no longer routed to, and earlier spool
        directories once drained."""
        targets = set() if self.single else self._targets()  # single: nothing routes into them
        for stream, lane in list(self._routed.items()):
            if stream not in targets and not lane.waiting() and not lane.spool.depth()[0]:
                lane.spool.close()
                del self._routed[stream]
        for lane in list(self._foreign):
            if not lane.waiting() and not lane.spool.depth()[0]:
                lane.spool.close()
                self._foreign.remove(lane)
        for intake in list(self._intakes[1:]):
            if not intake.sources and not intake.spool.depth()[0] and not any(
                    lane.spool is intake.spool and lane.waiting() for lane in self._direct) and \
                    not any(lane.spool.directory.is_relative_to(intake.spool.directory)
                            for lane in self._foreign):
                log.info("%s: the earlier spool %s is drained", self.plugin,
                         intake.spool.directory)
                self.drained.append(intake.spool.directory)
                intake.spool.close()
                self._intakes.remove(intake)
                self._direct = [lane for lane in self._direct if lane.spool is not intake.spool]
        keep = {lane.stream for lane in self._all_lanes()} | {self.view.stream}
        for stream in [s for s in self._health if s not in keep]:
            del self._health[stream]

    # -- outcomes -----------------------------------------------------------------------------

    def _current(self, batch: Batch) -> Lane | None:
        lane = batch._lane
        if lane.generation != batch._generation or lane not in self._all_lanes():
            return None  # reshaped since: its rows will be read again
        return lane

    def completed(self, batch: Batch, codes: list[str | None], now: float) -> None:
        """The put call answered: `codes` has each entry's error code, None where accepted.
        Only the failed entries go again, first, in order."""
        self.counters.put_calls += 1
        lane = self._current(batch)
        if lane is None:
            return
        delivered, failed = lane.completed(batch.entries, codes)
        self.counters.delivered += delivered
        if delivered:
            self.counters.last_success = time.time()
        health = lane.health
        if failed:
            failed_rows = sum(entry.rows for entry in failed)
            throttled = sum(entry.rows for entry, code in zip(batch.entries, codes, strict=True)
                            if code and is_throttling(code))
            self.counters.retried += failed_rows
            self.counters.throttled += throttled
            health.backoff.failed(now)
            message = (f"{len(failed)} of {len(batch.entries)} records failed "
                       f"({next(code for code in codes if code)})")
            self.counters.record_error(message)
            health.set_state(self._label(lane.stream), "throttled" if throttled else "retrying",
                             message, now)
        else:
            health.backoff.succeeded()
            health.set_state(self._label(lane.stream), "ok", "", now)
        if lane.waiting() < self.limits.max_records:
            # The period's flush is done once no full batch is left: the remainder waits for
            # the next period (or a full batch), instead of trickling out in tiny calls.
            lane.next_flush_at = now + self.view.period
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
        self.publish()
