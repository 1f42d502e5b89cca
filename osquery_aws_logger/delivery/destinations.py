"""One plugin's destinations: the lane of each stream, each stream's health, the intakes, and
which lanes deliver and which are orphans.

- With one destination (no routes, no status stream: the usual case) the plugin's spool *is*
  that destination's spool: a direct lane reads it in place.
- With several, the plugin's spool is an intake the router moves rows out of, to a spool per
  destination (`<plugin spool>/routed/<stream>/`), each read by its own lane.
- A routed spool whose stream is no longer configured, or one left in an earlier spool
  directory, is an orphan: the router moves its rows back through the current routes.
- The spool of an earlier spool directory is one more intake, drained like the plugin's, and
  forgotten once empty.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..settings import ServiceSettings
from ..spool.spool import SpoolLike
from .health import DropLog, Health
from .lane import Lane, Ledger
from .pacing import first_flush_delay
from .router import (
    ROUTE_CHUNK_ROWS,
    ROUTED_DIR,
    Intake,
    Router,
    migrate_routed,
    routed_dir_name,
    routed_stream_name,
)
from .shaper import Rules

log = logging.getLogger("osquery_aws_logger.flusher")


class Destinations:
    """The lanes, healths and intakes of one plugin; only the flusher thread uses it."""

    def __init__(self, plugin: str, intake: SpoolLike, earlier: tuple[SpoolLike, ...]) -> None:
        self.plugin = plugin
        self.intake = intake
        self.intakes = [Intake(intake), *(Intake(spool) for spool in earlier)]
        self.routed: dict[str, Lane] = {}
        self.foreign: list[Lane] = []  # routed spools of earlier directories: always orphans
        self.direct: list[Lane] = []
        self.health: dict[str, Health] = {}
        self.view: ServiceSettings | None = None
        self.router = Router(self._routed_spool)
        #: Earlier spool directories emptied since start (the extension forgets them).
        self.drained: list[Path] = []
        self._open_routed_spools()

    # -- which lanes ----------------------------------------------------------------------------

    @property
    def single(self) -> bool:
        """Whether the plugin's spool is read in place (one destination) or only routed."""
        return self.view is not None and self.view.single_destination()

    def targets(self) -> set[str]:
        view = self.view
        if view is None:
            return set()
        return {view.stream, view.status_stream or view.stream,
                *(stream for stream, _ in view.routes)}

    def lanes(self) -> list[Lane]:
        """The lanes that deliver: the direct ones, and the routed ones still configured."""
        targets = self.targets()
        return [*self.direct, *(lane for stream, lane in self.routed.items() if stream in targets)]

    def orphans(self) -> list[Lane]:
        targets = self.targets()
        return [*(lane for stream, lane in self.routed.items() if stream not in targets),
                *self.foreign]

    def all_lanes(self) -> list[Lane]:
        return [*self.direct, *self.routed.values(), *self.foreign]

    def spools(self) -> list[SpoolLike]:
        return [*(intake.spool for intake in self.intakes),
                *(lane.spool for lane in self.routed.values()),
                *(lane.spool for lane in self.foreign)]

    def label(self, stream: str) -> str:
        """How log lines name a destination: the plugin, and a routed stream in brackets."""
        own = self.view.stream if self.view is not None else ""
        return self.plugin if stream == own else f"{self.plugin} ({stream})"

    def health_of(self, stream: str) -> Health:
        health = self.health.get(stream)
        if health is None:
            health = self.health[stream] = Health()
        return health

    def waiting(self) -> int:
        """Rows held and records not yet read, in every spool of the plugin."""
        total = sum(lane.waiting() for lane in self.all_lanes())
        if not self.single:
            total += sum(sum(s.left for s in i.sources) + i.spool.pending_unread()
                         for i in self.intakes)
        return total

    # -- set-up -------------------------------------------------------------------------------

    def _spool_under(self, parent: SpoolLike, stream: str) -> SpoolLike:
        return parent.child(ROUTED_DIR, routed_dir_name(stream), migrate=migrate_routed)

    def _routed_spool(self, stream: str) -> SpoolLike:
        """A destination's spool under the plugin's own, made on first use."""
        lane = self.routed.get(stream)
        if lane is None:
            lane = self.routed[stream] = Lane(stream, self._spool_under(self.intake, stream),
                                              routed=True, health=self.health_of(stream))
            lane.next_flush_at = time.monotonic() + \
                (first_flush_delay(self.view.period) if self.view else 0)
        return lane.spool

    def _open_routed_spools(self) -> None:
        """Destination spools left by an earlier run (or directory): those that hold rows."""
        for index, intake in enumerate(self.intakes):
            for directory in intake.spool.children(ROUTED_DIR):
                try:
                    stream = routed_stream_name(directory)
                except ValueError:
                    continue
                spool = self._spool_under(intake.spool, stream)
                if not spool.depth()[0]:
                    spool.close()
                    continue
                lane = Lane(stream, spool, routed=True, health=self.health_of(stream))
                if index == 0:
                    self.routed[stream] = lane
                else:
                    self.foreign.append(lane)

    def configure(self, view: ServiceSettings, now: float, drops: DropLog) -> None:
        """New options: a renamed (fixed) stream keeps its health, so its recovery is told; the
        direct lanes follow the plugin's stream, or go when rows are routed. Where the plugin
        goes from one destination to several (or back), what the lanes (or the intakes) read
        is let go of and counted, and their credit passes to whoever reads the spool now, so
        rows delivered (or routed) are neither sent again in full nor counted twice."""
        old = self.view
        if old is not None and view.stream != old.stream and old.stream in self.health \
                and view.stream not in self.health:
            self.health[view.stream] = self.health.pop(old.stream)
        self.view = view
        if not self.single:
            for lane, intake in zip(self.direct, self.intakes, strict=False):
                drops.forgotten(*lane.reset())
                _pass_credit(lane.ledger, intake.ledger)
            self.direct = []
            return
        if len(self.direct) != len(self.intakes):
            self.direct = [Lane(view.stream, intake.spool, routed=False,
                                health=self.health_of(view.stream)) for intake in self.intakes]
            for lane, intake in zip(self.direct, self.intakes, strict=True):
                drops.forgotten(*intake.reset())
                _pass_credit(intake.ledger, lane.ledger)
                lane.next_flush_at = now + first_flush_delay(view.period)
        for lane in self.direct:
            lane.stream, lane.health = view.stream, self.health_of(view.stream)

    def reset(self, drops: DropLog) -> None:
        """Forget everything read (counting what the spools gave up meanwhile), to read it again."""
        for lane in self.all_lanes():
            drops.forgotten(*lane.reset())
        for intake in self.intakes:
            drops.forgotten(*intake.reset())

    # -- routing --------------------------------------------------------------------------------

    def route(self, rules: Rules, drops: DropLog) -> tuple[int, int]:
        """Move rows to the destinations' spools: the intakes' (several destinations), and the
        orphans' back through the current routes. Answers the rows moved, and those made by
        expanding batch-format lines."""
        moved = made = 0
        if not self.single:
            for intake in self.intakes:
                drops.forgotten(*intake.forget_dropped())
            moved, made = self.router.route(self.intakes, rules, drops)
        for orphan in self.orphans():
            if moved >= ROUTE_CHUNK_ROWS:
                break
            if orphan.in_flight:
                continue
            if orphan.pending or orphan.sources or orphan.open:
                drops.forgotten(*orphan.reset())  # what it held is read again, to be routed
            moved += self.router.reroute(orphan.spool, rules, ROUTE_CHUNK_ROWS - moved,
                                         orphan.ledger)
        return moved, made

    def more_to_route(self) -> bool:
        if not self.single and any(i.sources or i.spool.pending_unread() for i in self.intakes):
            return True
        return any(o.spool.pending_unread() for o in self.orphans())

    def prune(self) -> None:
        """Close destination spools that are empty and no longer routed to, and earlier spool
        directories once drained."""
        targets = set() if self.single else self.targets()  # single: nothing routes into them
        for stream, lane in list(self.routed.items()):
            if stream not in targets and not lane.waiting() and not lane.spool.depth()[0]:
                lane.spool.close()
                del self.routed[stream]
        for lane in list(self.foreign):
            if not lane.waiting() and not lane.spool.depth()[0]:
                lane.spool.close()
                self.foreign.remove(lane)
        for intake in list(self.intakes[1:]):
            if not intake.sources and not intake.spool.depth()[0] and not any(
                    lane.spool is intake.spool and lane.waiting() for lane in self.direct) and \
                    not any(lane.spool.directory.is_relative_to(intake.spool.directory)
                            for lane in self.foreign):
                log.info("%s: the earlier spool %s is drained", self.plugin,
                         intake.spool.directory)
                self.drained.append(intake.spool.directory)
                intake.spool.close()
                self.intakes.remove(intake)
                self.direct = [lane for lane in self.direct if lane.spool is not intake.spool]
        keep = {lane.stream for lane in self.all_lanes()} | ({self.view.stream} if self.view else set())
        for stream in [s for s in self.health if s not in keep]:
            del self.health[stream]

    def draining(self) -> tuple[tuple[str, int], ...]:
        """Earlier spool directories still being drained, and the rows waiting in each."""
        return tuple(
            (str(i.spool.directory.parent), i.spool.waiting_rows() + sum(
                lane.spool.waiting_rows() for lane in self.foreign
                if lane.spool.directory.is_relative_to(i.spool.directory)))
            for i in self.intakes[1:])

    def close(self, drops: DropLog) -> None:
        for lane in self.all_lanes():
            drops.forgotten(*lane.forget_dropped())  # held, given up: counted, never sent
        for intake in self.intakes:
            drops.forgotten(*intake.forget_dropped())
        for spool in self.spools():
            spool.close()


def _pass_credit(source: Ledger, target: Ledger) -> None:
    """What was counted of a spool's lines, from the reader that let go of it to the next."""
    for seq, rows in source.credit.items():
        target.credit[seq] = max(target.credit.get(seq, 0), rows)
    source.credit.clear()
    target.floor = max(target.floor, source.floor)


__all__ = ["Destinations"]
