"""The accumulator: one plugin's rows, from its spools to batches ready to send. No network here.

It coordinates the parts, each the one owner of its state: the shaper (a line to rows), the
destinations (`Destinations`: a lane per stream with its pending rows and acknowledgement
ledger, each stream's health, the intakes, the router), the drops (`DropLog`) and the published
figures (`figures`). It answers `ready(now)`: which (destination, batch) pairs may be sent now
and when to look again; the sender reports each outcome back (`completed`, `failed`).
Destinations are independent: each has its own backoff and health (rate limits as data, as
sentry keeps them per category), so one that throttles or fails waits and the others go on.
"""

from __future__ import annotations

import logging
import math
import time

from ..counters import PluginCounters
from ..errors import DeliveryError
from ..settings import Settings
from ..spool.spool import SpoolLike
from .destinations import Destinations
from .figures import DeliverySnapshot, DestinationSnapshot, FigureTaker, SpoolFigures
from .health import STATES, DropLog, Health, worst
from .lane import Batch, Builder, Lane, Ready
from .router import ROUTED_DIR
from .services import Service
from .shaper import Rules

log = logging.getLogger("osquery_aws_logger.flusher")

__all__ = ["ROUTED_DIR", "STATES", "Accumulator", "Batch", "DeliverySnapshot", "Health", "Ready",
           "SpoolFigures"]


class Accumulator:
    """One logger plugin's delivery state. Only the flusher thread calls it; other threads read
    `published` (a snapshot replaced whole) and the counters, nothing else."""

    def __init__(self, plugin: str, service: Service, intake: SpoolLike, counters: PluginCounters,
                 settings: Settings, *, host_identifier: str, now: float = 0.0,
                 earlier: tuple[SpoolLike, ...] = ()) -> None:
        self.service, self.intake, self.counters = service, intake, counters
        self.host_identifier = host_identifier
        self.destinations = Destinations(plugin, intake, earlier)
        self.drops = DropLog(plugin, counters)
        self.problem = ""  # why the plugin may not ship now (see set_problem)
        self._figures = FigureTaker()
        self._configure(settings, now)
        self.published = self._snapshot(SpoolFigures())

    @property
    def plugin(self) -> str:
        return self.destinations.plugin

    @plugin.setter
    def plugin(self, name: str) -> None:  # the name osqueryd registered it under
        self.destinations.plugin = self.drops.plugin = name

    def _configure(self, settings: Settings, now: float) -> None:
        self.settings, self.view = settings, self.service.settings(settings)
        self.limits = self.service.limits_for(self.view)
        self._rules = Rules(limits=self.limits,
                            results_as_events=settings.aws_logger_results_as_events,
                            record_ids=settings.aws_logger_record_ids,
                            random_key=self.view.random_partition_key,
                            host_identifier=self.host_identifier, route=self.view.route)
        self.destinations.configure(self.view, now, self.drops)

    def _shaping(self) -> tuple[object, ...]:
        """What decides how a line read is made into records and where they go: when any of it
        changes, what was read is read again. Anything else (the period, caps, credentials,
        endpoints) leaves what was read to go as it was made."""
        view = self.view
        return (self.limits, self._rules.results_as_events, self._rules.record_ids,
                view.random_partition_key, view.many_rows_per_record, view.compression,
                view.routes, view.status_stream, view.forwards_status, self.destinations.single,
                None if self.destinations.single else view.stream)

    def _builder(self, key: str) -> Builder | None:
        return self.service.builder(self.view, key)

    def _slot(self, key: str) -> str:
        return self.service.slot(self.view, key)

    def apply(self, settings: Settings, now: float) -> None:
        """New settings: caps in force at once; what was read is read again and reshaped when
        the new options make records differently or send them elsewhere (`_shaping`)."""
        for spool in self.destinations.spools():
            spool.set_caps(settings.buffered_log_max, settings.aws_logger_spool_max_bytes)
        before = self._shaping()
        self._configure(settings, now)
        for health in self.destinations.health.values():
            health.backoff.succeeded()
        if self._shaping() != before:
            self.recover(now)
        for lane in self.destinations.lanes():
            lane.next_flush_at = min(lane.next_flush_at, now + self.view.period)
        self.destinations.prune()

    def recover(self, now: float) -> None:
        """After new settings or an unexpected error: forget everything read and read it again
        from the last acknowledgement (rows may go twice, none is lost)."""
        self.destinations.reset(self.drops)
        self.destinations.configure(self.view, now, self.drops)

    # -- figures ------------------------------------------------------------------------------

    def waiting(self) -> int:
        """Rows held and records not yet read, in every spool of the plugin."""
        return self.destinations.waiting()

    def depth(self) -> tuple[int, int]:
        """Records waiting in all this plugin's spools, and the bytes those hold."""
        depths = [spool.depth() for spool in self.destinations.spools()]
        return sum(r for r, _ in depths), sum(b for _, b in depths)

    def state(self) -> str:
        """The plugin's state, decided here alone: "disabled" while it may not ship, else the
        worst of its destinations' (each destination's Health tracks its own)."""
        if self.problem:
            return "disabled"
        return worst([h.state for h in self.destinations.health.values()])

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
            spools=tuple(self.destinations.spools()), figures=figures,
            destinations=tuple(DestinationSnapshot(d.stream, d.health.state, d.pending_rows,
                                                   d.health.last_error)
                               for d in self.destinations.lanes()))

    def publish(self, *, figures: bool = False, now: float | None = None) -> None:
        """Publish the state; with `figures` also what the spools hold (the flusher's thread
        only: it may read a segment)."""
        taken = self.published.figures if not figures else self._figures.take(
            self.destinations.spools(), self.destinations.draining(),
            time.monotonic() if now is None else now,
            had_records=bool(self.published.figures.records))
        self.published = self._snapshot(taken)

    def sync(self) -> None:
        for spool in self.destinations.spools():
            spool.sync()

    def close(self) -> None:
        self.destinations.close(self.drops)

    # -- what may go --------------------------------------------------------------------------

    def _due(self, lane: Lane, now: float, *, draining: bool) -> bool:
        health = lane.health
        if lane.in_flight or not health.backoff.ready(now) or not health.pacing.ready(now) or \
                not lane.waiting():
            return False
        return draining or lane.waiting() >= self.limits.max_records or now >= lane.next_flush_at

    def ready(self, now: float, *, draining: bool = False) -> Ready:
        """The batches that may be sent now (at most one per destination) and when to wake.

        A destination is due when its period is up or a full batch waits (at once when
        draining), unless it is backing off. A batch handed out stays the head of its
        destination's queue until `completed` or `failed` reports on it.
        """
        destinations, limits, batches = self.destinations, self.limits, []
        moved, made = destinations.route(self._rules, self.drops)
        self.counters.expanded += made
        # More to route than one turn takes: come back at once.
        wake = now if moved and destinations.more_to_route() else math.inf
        for lane in destinations.lanes():
            if lane.in_flight:
                continue  # its head is out; nothing of it changes until the outcome
            self.drops.forgotten(*lane.forget_dropped())
            if self._due(lane, now, draining=draining):
                builder = self._builder if self.view.many_rows_per_record else None
                self.counters.expanded += lane.fill(self._rules, self.drops, builder=builder,
                                                    slot=self._slot)
                lane.close_all(limits, self._builder, self.drops)  # goes as full as it got
                lane.ledger.acknowledge(lane.spool)  # drops may complete a prefix
                if lane.pending:
                    most = lane.health.pacing.limit(limits.max_records, self.view.period)
                    batches.append(Batch(lane.stream, lane.batch(limits, most), lane,
                                         lane.generation))
                    lane.in_flight = True
                    continue
                lane.next_flush_at = now + self.view.period
            else:
                lane.ledger.acknowledge(lane.spool)
            wake = min(wake, lane.wake_at(limits, now))
        destinations.prune()
        self.publish()
        return Ready(tuple(batches), wake)

    # -- outcomes -----------------------------------------------------------------------------

    def _current(self, batch: Batch) -> Lane | None:
        lane = batch.lane
        if lane.generation != batch.generation or lane not in self.destinations.all_lanes():
            return None  # reshaped since: its rows will be read again
        return lane

    def completed(self, batch: Batch, codes: list[str | None], now: float) -> None:
        """The put call answered: `codes` has each entry's error code, None where accepted.
        Only the failed entries go again, first, in order."""
        self.counters.put_calls += 1
        lane = self._current(batch)
        if lane is None:
            return
        delivered, _ = lane.completed(batch.entries, codes)
        self.counters.delivered += delivered
        if delivered:
            self.counters.last_success = time.time()
        lane.health.answered(self.destinations.label(lane.stream), codes, self.counters,
                             [entry.rows for entry in batch.entries], now)
        if lane.waiting() < self.limits.max_records:
            # The period's flush is done once no full batch is left: the remainder waits for
            # the next period (or a full batch), instead of trickling out in tiny calls.
            lane.next_flush_at = now + self.view.period
        self.publish()

    def failed(self, batch: Batch, error: DeliveryError, now: float) -> None:
        """The whole put call failed: every entry stays queued, the destination backs off."""
        self.counters.put_calls += 1
        lane = self._current(batch)
        if lane is not None:
            lane.in_flight = False
        health = lane.health if lane is not None else \
            self.destinations.health_of(batch.destination)
        health.call_failed(self.destinations.label(batch.destination), error, self.counters,
                           now, rows=batch.rows, entries=len(batch.entries))
        self.publish()
