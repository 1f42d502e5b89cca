"""Routing: rows from a plugin's intake to their destinations' own spools.

Why a spool per destination once routed: a spool is a FIFO acknowledged by prefix, so one
spool shared by several destinations lets an undeliverable row at its head hold back every
other destination's acknowledgements. So with several destinations (routes, a status stream)
the plugin's spool is only an intake: every line is shaped, its rows routed and appended to
their destination's spool (``<plugin spool>/routed/<stream>/``, the same `Spool`, the same
caps), those are synced, then the intake is acknowledged up to the last line wholly routed. A
big line is routed a chunk of rows per turn, so it never sits whole in memory.

Nothing is stranded: a destination spool whose stream is no longer configured (a typo fixed,
a route removed, a status stream unset), or one left in an earlier spool directory, is an
orphan: its rows go back through the current routes (or to the plugin's stream) and it is
closed once empty.
"""

from __future__ import annotations

import contextlib
import re
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from ..results.scan import count_rows, loads
from ..spool.spool import KIND_RESULT, SpoolLike
from .lane import READ_RECORDS, Ledger
from .shaper import Drop, LineRows, Rules, shape

#: Most rows moved from the intakes to destination spools per turn of the loop.
ROUTE_CHUNK_ROWS: Final = 4096
ROUTE_CHUNK_BYTES: Final = 8 << 20

#: The directory, inside a plugin's spool, holding one spool per destination once routed.
ROUTED_DIR: Final = "routed"
_SAFE_NAME: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")

#: A destination's own spool, made (or found) on first use.
SpoolFor = Callable[[str], SpoolLike]


def routed_dir_name(stream: str) -> str:
    """The directory of a destination's spool: the stream's name, or its hex when the name is
    not a plain Kinesis/Firehose name (so a route can never name a path)."""
    return stream if _SAFE_NAME.fullmatch(stream) else "~" + stream.encode().hex()


def routed_stream_name(directory: str) -> str:
    return bytes.fromhex(directory[1:]).decode() if directory.startswith("~") else directory


@dataclass
class Intake:
    """A spool of lines to route, and the lines read from it and not yet wholly routed."""

    spool: SpoolLike
    ledger: Ledger = field(default_factory=Ledger)
    sources: deque[LineRows] = field(default_factory=deque)

    def reset(self) -> tuple[int, str]:
        """Forget what was read and read it again (see Lane.reset): answers the rows it held
        that the spool gave up meanwhile. Rows already routed are not routed again."""
        floor = self.spool.rewind()
        ledger = self.ledger
        given_up = sum(ledger.fresh(source.seq, source.left) for source in self.sources
                       if source.seq < floor) - ledger.uncredit_below(floor)
        self.sources.clear()
        ledger.rewound(floor)
        return given_up, self.spool.dropped_reason

    def forget_dropped(self) -> tuple[int, str]:
        """Let go of lines the spool gave up after they were read (see Lane.forget_dropped)."""
        floor = self.spool.dropped_below
        ledger = self.ledger
        if floor <= ledger.floor:
            return 0, ""
        ledger.floor = floor
        forgotten = 0
        while self.sources and self.sources[0].seq < floor:
            source = self.sources.popleft()
            ledger.finish_rows(source.seq, source.left)
            forgotten += ledger.fresh(source.seq, source.left)
        forgotten -= ledger.uncredit_below(floor)
        return forgotten, self.spool.dropped_reason


class Router:
    """Moves rows to destination spools; one per plugin, driven by the flusher."""

    def __init__(self, spool_for: SpoolFor) -> None:
        self._spool_for = spool_for

    def route(self, intakes: list[Intake], rules: Rules, drop: Drop) -> tuple[int, int]:
        """Route up to a chunk of rows from `intakes`; answer how many rows were moved, and how
        many of them were made by expanding batch-format lines."""
        moved = made = 0
        touched: dict[int, SpoolLike] = {}
        taken: list[tuple[bytes, int, str]] = []
        for intake in intakes:
            budget = ROUTE_CHUNK_ROWS - moved
            budget_bytes = ROUTE_CHUNK_BYTES
            while budget > 0 and budget_bytes > 0:
                if not intake.sources:
                    if not self._read(intake, rules, drop):
                        break
                    continue  # what was read may all have been dropped: read on
                source = intake.sources[0]
                before, left = source.made, source.left
                dropper = _dropper(intake.ledger, source.seq, drop)
                taken.clear()
                try:
                    source.take(taken, budget, budget_bytes, dropper)
                except Exception as exc:  # contained to this line: its rest is counted
                    dropper(getattr(exc, "reason", "malformed"), source.left,
                            f"{type(exc).__name__} while routing query {source.name or '?'}")
                    source.left = 0
                for record, rows, key in taken:
                    if intake.ledger.fresh(source.seq, rows):  # else routed before a rewind
                        target = self._spool_for(source.stream)
                        target.append(KIND_RESULT, record, rows=rows, key=key)
                        touched[id(target)] = target
                    intake.ledger.finish_rows(source.seq, rows)
                    budget_bytes -= len(record)
                budget -= max(1, len(taken))
                moved += len(taken)
                made += source.made - before
                if not source.left:
                    intake.sources.popleft()
                elif not taken and source.left == left:
                    break  # it could not be read now (out of descriptors): at a later turn
        for spool in touched.values():
            spool.sync(force=True)  # on disk there before the intake forgets them
        for intake in intakes:
            intake.ledger.acknowledge(intake.spool)
        return moved, made

    def _read(self, intake: Intake, rules: Rules, drop: Drop) -> bool:
        records = intake.spool.read(READ_RECORDS, ROUTE_CHUNK_BYTES)
        for record in records:
            if not intake.ledger.expect(record.seq, record.rows):
                continue  # wholly routed (or dropped) before a rewind
            source = shape(record, rules, intake.spool.read_span,
                           _dropper(intake.ledger, record.seq, drop))
            if source is not None:
                if source.total != record.rows:
                    intake.ledger.correct(record.seq, source.total)
                intake.sources.append(source)
        return bool(records)

    def reroute(self, orphan: SpoolLike, rules: Rules, budget: int, ledger: Ledger) -> int:
        """Move up to `budget` rows of a destination no longer configured back through the
        current routes; answer how many. Records its lane delivered before it let go of them
        (`ledger`'s credit: behind one not delivered, so not yet acknowledged) stay delivered."""
        records = orphan.read(min(budget, READ_RECORDS), ROUTE_CHUNK_BYTES)
        touched: dict[int, SpoolLike] = {}
        for record in records:
            if not ledger.fresh(record.seq, max(1, record.rows)):
                continue
            target = self._spool_for(_route_of(record.data, rules))
            target.append(record.kind, record.data, rows=record.rows, key=record.key)
            touched[id(target)] = target
        for spool in touched.values():
            spool.sync(force=True)
        if records:
            orphan.ack(records[-1].seq)
        return len(records)


def migrate_line(kind: int, data: bytes) -> tuple[bytes, str, int]:
    """A plugin spool's record of the previous spool format: its rows counted now."""
    return data, "", count_rows(data) if kind == KIND_RESULT else 1


_V2_KEY_LENGTH: Final = struct.Struct("<H")


def migrate_routed(kind: int, data: bytes) -> tuple[bytes, str, int]:
    """A routed record of the previous spool format: the partition key was framed inside the
    payload (``<H keylen><key><row>``); it is a record field now."""
    if len(data) >= _V2_KEY_LENGTH.size:
        (length,) = _V2_KEY_LENGTH.unpack_from(data)
        end = _V2_KEY_LENGTH.size + length
        if len(data) > end:
            with contextlib.suppress(UnicodeDecodeError):
                return data[end:], data[_V2_KEY_LENGTH.size:end].decode(), 1
    return data, "", 1


def _route_of(row: bytes, rules: Rules) -> str:
    """Where a shaped row goes now: by its log_type and query name, as when first routed."""
    try:
        fields = loads(row.rstrip(b"\n"))
    except Exception:  # a packed or odd row: the plugin's own stream takes it
        return rules.route(False, "")
    if not isinstance(fields, dict):
        return rules.route(False, "")
    return rules.route(fields.get("log_type") == "status", str(fields.get("name") or ""))


def _dropper(ledger: Ledger, seq: int, drop: Drop) -> Drop:
    def dropped(reason: str, rows: int, detail: str) -> None:
        drop(reason, ledger.fresh(seq, rows), detail)
        ledger.finish_rows(seq, rows)
    return dropped


__all__ = ["ROUTED_DIR", "ROUTE_CHUNK_BYTES", "ROUTE_CHUNK_ROWS", "Intake", "Router",
           "migrate_line", "migrate_routed", "routed_dir_name", "routed_stream_name"]
