"""A lane: one destination stream's rows between its spool and a put call.

A lane reads one spool (a plugin's own, read in place, or a routed destination's), holds the
lines it read as `LineRows` (rows made as they are taken), the records ready to send and the
records being filled with many rows (KPL aggregates, Firehose packs), and keeps the
acknowledgement ledger: the spool is acknowledged up to the first line not finished (every row
delivered or dropped), never past it, so a restart re-reads everything not finished.

The lane alone changes its pending counts (`_took`, `_queue`, `_release`), and every row it
lets go of is counted once: delivered (`delivered`), dropped while shaping (`drop`), or dropped
because its spool gave it up (`forget_dropped`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Final

from ..spool.spool import SpooledRecord, SpoolLike
from .aggregate import FirehosePack, KplAggregate
from .batching import Entry, ServiceLimits, batch_length, oversize
from .health import Health
from .shaper import Drop, LineRows, Rules, shape

#: A record being filled with many rows: a KPL aggregate or a Firehose newline pack.
Builder = KplAggregate | FirehosePack
#: Makes an empty builder for a partition key (None: rows go one per record).
BuilderFactory = Callable[[str], "Builder | None"]
#: Rows that share a builder: one slot per partition key (random keys: any slot serves).
SlotOf = Callable[[str], str]

#: Records (lines) read from a spool at a time while a lane fills a call.
READ_RECORDS: Final = 500


class Ledger:
    """Acknowledgement bookkeeping of one spool: the lines read, in spool order, and which of
    them are finished (every row delivered, routed or dropped). A line absent from `parts` and
    not finished has one row unfinished.

    Across a rewind it keeps `credit`: the rows of each line, not yet acknowledged, whose
    outcome was already counted. Reading such a line again, a line wholly counted is finished
    at once (not sent again), and the first rows of a partly counted one to finish again are
    not counted again (`fresh`): delivered + dropped stays equal to accepted whatever is read
    twice."""

    def __init__(self) -> None:
        self.outstanding: deque[int] = deque()
        self.finished: set[int] = set()
        self.parts: dict[int, int] = {}
        self.totals: dict[int, int] = {}  # rows of each outstanding line of more than one row
        self.credit: dict[int, int] = {}
        self.floor = 0  # the spool's dropped_below last acted on

    def expect(self, seq: int, rows: int) -> bool:
        """Line `seq` was read: it is finished when `rows` rows are. Answers False for a line
        whose every row was counted before a rewind: finished now, not to be sent again."""
        self.outstanding.append(seq)
        if self.credit and self.credit.get(seq, 0) >= max(rows, 1):
            del self.credit[seq]
            self.finished.add(seq)
            return False
        if rows <= 0:
            self.finished.add(seq)
        elif rows > 1:
            self.parts[seq] = self.totals[seq] = rows
        return True

    def fresh(self, seq: int, rows: int) -> int:
        """Of `rows` rows of line `seq` finishing now, how many were not counted before a
        rewind (to be counted now); the rest use up the line's credit."""
        credit = self.credit
        if not credit:
            return rows
        held = credit.get(seq, 0)
        if not held:
            return rows
        used = min(held, rows)
        if held > used:
            credit[seq] = held - used
        else:
            del credit[seq]
        return rows - used

    def finish(self, seqs: Iterable[int]) -> None:
        """One row finished per sequence number given (a line's rows share its number)."""
        parts = self.parts
        for seq in seqs:
            left = parts.pop(seq, 1) - 1
            if left > 0:
                parts[seq] = left
            else:
                self.finished.add(seq)

    def correct(self, seq: int, rows: int) -> None:
        """Line `seq`, read and not yet finished in part, holds `rows` rows after all."""
        self.parts.pop(seq, None)
        self.totals.pop(seq, None)
        self.finished.discard(seq)
        if rows <= 0:
            self.finished.add(seq)
        elif rows > 1:
            self.parts[seq] = self.totals[seq] = rows

    def finish_rows(self, seq: int, rows: int) -> None:
        if rows > 0:
            self.finish([seq] * rows)

    def acknowledge(self, spool: SpoolLike) -> None:
        last = 0
        while self.outstanding and self.outstanding[0] in self.finished:
            last = self.outstanding.popleft()
            self.finished.discard(last)
            self.totals.pop(last, None)
        if last:
            spool.ack(last)

    def rewound(self, floor: int) -> None:
        """The spool was rewound to its first unacknowledged line, nothing below `floor`
        handed out again: forget what was read, and keep as credit what of the lines to be read
        again was counted (this reading's finished rows, and credit not yet used up)."""
        credit = {seq: rows for seq, rows in self.credit.items() if seq >= floor}
        for seq in self.outstanding:
            if seq < floor:
                continue
            total = self.totals.get(seq, 1)
            done = total if seq in self.finished else total - self.parts.get(seq, 1)
            if done > 0:
                credit[seq] = credit.get(seq, 0) + done
        self.outstanding.clear()
        self.finished.clear()
        self.parts.clear()
        self.totals.clear()
        self.credit = credit
        self.floor = max(self.floor, floor)

    def uncredit_below(self, floor: int) -> int:
        """Credit of lines below `floor`: given up by the spool before they were read again,
        and so counted dropped by the spool in full; answers the rows counted twice."""
        gone = [seq for seq in self.credit if seq < floor]
        return sum(self.credit.pop(seq) for seq in gone)


class _Open:
    """An aggregate or pack being filled, and the rows in it (kept to split it if need be)."""

    def __init__(self, slot: str, builder: Builder, key: str) -> None:
        self.slot = slot
        self.builder = builder
        self.key = key
        self.rows: list[tuple[int, int, bytes]] = []  # (seq, rows it carries, record)
        self.row_bytes = 0

    @property
    def row_count(self) -> int:
        return sum(rows for _, rows, _ in self.rows)

    def seqs(self) -> tuple[int, ...]:
        return tuple(seq for seq, rows, _ in self.rows for _ in range(rows))


class Lane:
    """One destination stream: the spool it reads, what was read and not yet delivered, and
    its health."""

    def __init__(self, stream: str, spool: SpoolLike, *, routed: bool, health: Health) -> None:
        self.stream = stream
        self.spool = spool
        self.routed = routed
        self.health = health
        self.ledger = Ledger()
        self.pending: deque[Entry] = deque()
        self.open: dict[str, _Open] = {}
        self.sources: deque[LineRows] = deque()
        self.pending_rows = 0  # rows in pending entries and open builders
        self.pending_bytes = 0
        self.next_flush_at = 0.0
        self.generation = 0
        self.in_flight = False  # a batch was handed out and not yet reported on

    def waiting(self) -> int:
        """Rows held and not yet delivered or dropped, plus records not yet read."""
        return self.pending_rows + sum(s.left for s in self.sources) + self.spool.pending_unread()

    def reset(self) -> tuple[int, str]:
        """Forget what was read and read it again (new settings may key, pack or route it
        differently). Answers the rows it held that the spool gave up meanwhile, to be counted
        dropped (the floor is read with the rewind, under the spool's lock: a cap dropping rows
        from the other thread at that moment cannot slip between). Lines wholly delivered
        behind an undelivered one are not sent again; rows of a line partly delivered may go
        twice (at least once), and are counted once (`Ledger.credit`)."""
        floor = self.spool.rewind()
        fresh = self.ledger.fresh
        given_up = sum(fresh(seq, 1) for entry in self.pending for seq in entry.seqs
                       if seq < floor)
        given_up += sum(fresh(seq, rows) for builder in self.open.values()
                        for seq, rows, _ in builder.rows if seq < floor)
        given_up += sum(fresh(source.seq, source.left) for source in self.sources
                        if source.seq < floor)
        given_up -= self.ledger.uncredit_below(floor)
        self.pending.clear()
        self.open.clear()
        self.sources.clear()
        self.pending_rows = self.pending_bytes = 0
        self.generation += 1
        self.in_flight = False
        self.ledger.rewound(floor)
        return given_up, self.spool.dropped_reason

    # -- filling ------------------------------------------------------------------------------

    def enough(self, limits: ServiceLimits) -> bool:
        entries = len(self.pending) + len(self.open)
        return entries >= limits.max_records or self.pending_bytes >= limits.max_call_bytes

    def fill(self, rules: Rules, drop: Drop, *, builder: BuilderFactory | None,
             slot: SlotOf) -> int:
        """Read and shape from the spool until a call's worth is pending (or it is empty);
        answer how many rows were made by expanding batch-format lines. `builder` is None
        when rows go one per record (no slot is asked for then)."""
        limits = rules.limits
        max_records, max_call_bytes = limits.max_records, limits.max_call_bytes
        made = 0
        taken: list[tuple[bytes, int, str]] = []
        sources, pending, open_ = self.sources, self.pending, self.open
        # Per row, this loop is the hot path of delivery: the checks of `enough` are inline.
        while len(pending) + len(open_) < max_records and self.pending_bytes < max_call_bytes:
            if not sources:
                if not self._read(rules, drop):
                    break
                continue  # what was read may all have been dropped: read on
            source = sources[0]
            seq = source.seq
            before, left = source.made, source.left
            room_rows = max_records - len(pending) - len(open_)
            room_bytes = max(1, max_call_bytes - self.pending_bytes)
            taken.clear()
            try:
                source.take(taken, room_rows, room_bytes, partial(self._line_dropped, seq, drop))
            except Exception as exc:  # contained to this line: its rest is given up, counted
                reason = getattr(exc, "reason", "malformed")
                self._line_dropped(seq, drop, reason, source.left, f"{type(exc).__name__} "
                                   f"while taking rows of query {source.name or '?'}")
                source.left = 0
            if builder is None:
                stream = self.stream
                for record, rows, key in taken:
                    self._queue(Entry((seq,) * rows, record, key, stream))
            else:
                for item in taken:
                    self._add(seq, item, limits, drop, builder=builder, slot=slot)
            made += source.made - before
            if not source.left:
                sources.popleft()
            elif not taken and source.left == left:
                break  # it could not be read now (out of descriptors): at a later turn
        return made

    def _read(self, rules: Rules, drop: Drop) -> bool:
        """Read the next lines into sources; False when the spool has none."""
        limits = rules.limits
        records = self.spool.read(READ_RECORDS, max(1, limits.max_call_bytes - self.pending_bytes))
        expect, read_span, sources = self.ledger.expect, self.spool.read_span, self.sources
        for record in records:
            if not expect(record.seq, record.rows):
                continue  # wholly delivered (or dropped) before a rewind: not again
            if self.routed:
                # A routed record is one finished row already shaped; its key travels with it.
                source: LineRows | None = _Routed(record)
            else:
                source = shape(record, rules, read_span,
                               partial(self._line_dropped, record.seq, drop))
            if source is not None:
                if source.total != record.rows:
                    self.ledger.correct(record.seq, source.total)
                sources.append(source)
        return bool(records)

    def _line_dropped(self, seq: int, drop: Drop, reason: str, rows: int, detail: str) -> None:
        """`rows` of line `seq` given up: counted through `drop`, and finished in the ledger.
        (Bound per line with `partial`: made for every line, called only on a drop.)"""
        drop(reason, self.ledger.fresh(seq, rows), detail)
        self.ledger.finish_rows(seq, rows)

    def _add(self, seq: int, item: tuple[bytes, int, str], limits: ServiceLimits, drop: Drop, *,
             builder: BuilderFactory, slot: SlotOf) -> None:
        """One taken record (record, rows it carries, partition key) into a builder, or queued
        alone when rows go one per record or it is too big to wrap."""
        record, rows, key = item
        name = slot(key)
        current = self.open.get(name)
        if current is not None and current.builder.add(record):
            self._took(current, seq, rows, record)
            return
        if current is not None:
            self.close(current, limits, builder, drop)  # full: the row starts the next one
        fresh = builder(key)
        if fresh is not None and fresh.add(record):
            current = self.open[name] = _Open(name, fresh, key)
            self._took(current, seq, rows, record)
            return
        # One row per record, or a row too big to wrap in an aggregate: a plain record.
        self._queue(Entry((seq,) * rows, record, key, self.stream))

    def _took(self, builder: _Open, seq: int, rows: int, record: bytes) -> None:
        builder.rows.append((seq, rows, record))
        builder.row_bytes += len(record)
        self.pending_rows += rows
        self.pending_bytes += len(record)

    def _queue(self, entry: Entry) -> None:
        self.pending.append(entry)
        self.pending_rows += entry.rows
        self.pending_bytes += len(entry.data)

    def _release(self, rows: int, size: int) -> None:
        self.pending_rows -= rows
        self.pending_bytes -= size

    def close(self, builder: _Open, limits: ServiceLimits, make: BuilderFactory,
              drop: Drop) -> None:
        """Close a builder into a record, checked against the record limit before it is sent."""
        del self.open[builder.slot]
        self._release(builder.row_count, builder.row_bytes)
        entry = Entry(builder.seqs(), builder.builder.data(), builder.key, self.stream)
        if not oversize(entry, limits):
            self._queue(entry)
            return
        # Only gzip can grow a record past what was counted: send each row on its own.
        for seq, rows, record in builder.rows:
            single = make(builder.key)
            if single is not None and single.add(record):
                alone = Entry((seq,) * rows, single.data(), builder.key, self.stream)
                if not oversize(alone, limits):
                    self._queue(alone)
                    continue
                if not limits.uses_partition_key:
                    # A plain row in a stream of gzip members would corrupt the S3 object.
                    self._line_dropped(seq, drop, "oversize", rows, f"{len(alone.data)} bytes "
                                       f"gzipped, over the {limits.max_record_bytes}-byte "
                                       f"record limit")
                    continue
            self._queue(Entry((seq,) * rows, record, builder.key, self.stream))

    def close_all(self, limits: ServiceLimits, make: BuilderFactory, drop: Drop) -> None:
        for builder in list(self.open.values()):
            self.close(builder, limits, make, drop)

    def batch(self, limits: ServiceLimits, most: int) -> tuple[Entry, ...]:
        """The entries of the next put: what fits one call, at most `most` (pacing's limit)."""
        count = min(batch_length(self.pending, limits), most)
        return tuple(self.pending[i] for i in range(count))

    # -- outcomes -----------------------------------------------------------------------------

    def completed(self, entries: tuple[Entry, ...], codes: list[str | None]) -> tuple[int, list[Entry]]:
        """The put answered: rows delivered, and the failed entries (put back first, in order)."""
        self.in_flight = False
        for _ in entries:
            self.pending.popleft()
        failed = [entry for entry, code in zip(entries, codes, strict=True) if code]
        self.pending.extendleft(reversed(failed))
        delivered = released = released_bytes = 0
        ledger = self.ledger
        for entry, code in zip(entries, codes, strict=True):
            if not code:
                ledger.finish(entry.seqs)
                rows = len(entry.seqs)
                released += rows
                released_bytes += len(entry.data)
                # After a rewind, rows counted before are not counted again.
                delivered += sum(ledger.fresh(seq, 1) for seq in entry.seqs) \
                    if ledger.credit else rows
        self._release(released, released_bytes)
        self.ledger.acknowledge(self.spool)
        return delivered, failed

    def forget_dropped(self) -> tuple[int, str]:
        """Let go of rows the spool gave up (a cap, a full disk) after they were read: answer
        how many and why. The spool counts only those it never handed out; rows delivered first
        were counted delivered, and are not counted again."""
        floor = self.spool.dropped_below
        ledger = self.ledger
        if floor <= ledger.floor:
            return 0, ""
        ledger.floor = floor
        fresh = ledger.fresh
        forgotten = 0
        for name, builder in list(self.open.items()):
            if builder.rows and builder.rows[-1][0] < floor:
                del self.open[name]
                ledger.finish(builder.seqs())
                self._release(builder.row_count, builder.row_bytes)
                forgotten += sum(fresh(seq, rows) for seq, rows, _ in builder.rows)
        # Entries are in spool order: the dropped ones lead. One that also holds rows above
        # the floor (an aggregate) is sent: its rows below are delivered with it.
        while self.pending and self.pending[0].seqs and self.pending[0].seqs[-1] < floor:
            entry = self.pending.popleft()
            ledger.finish(entry.seqs)
            self._release(entry.rows, len(entry.data))
            forgotten += sum(fresh(seq, 1) for seq in entry.seqs)
        while self.sources and self.sources[0].seq < floor:
            source = self.sources.popleft()
            ledger.finish_rows(source.seq, source.left)
            forgotten += fresh(source.seq, source.left)
        forgotten -= ledger.uncredit_below(floor)
        return forgotten, self.spool.dropped_reason

    def wake_at(self, limits: ServiceLimits, now: float) -> float:
        waiting = self.waiting()
        if not waiting:
            return math.inf  # the thrift side wakes the loop once a full batch is waiting
        backoff, pacing = self.health.backoff, self.health.pacing
        if not backoff.ready(now) or not pacing.ready(now):
            return max(backoff.retry_at, pacing.allowed_at)
        if waiting >= limits.max_records:
            return now
        return self.next_flush_at


class _Routed(LineRows):
    """A routed record: one row, shaped when it was routed, with its partition key."""

    def __init__(self, record: SpooledRecord) -> None:
        self.seq, self.key, self.stream, self.name = record.seq, record.key, "", ""
        self._data = record.data
        self._rows = self.total = record.rows
        self.left = max(1, record.rows)

    def take(self, out: list[tuple[bytes, int, str]], max_rows: int, max_bytes: int,
             drop: Drop) -> None:
        if self.left:
            out.append((self._data, self._rows, self.key))
            self.left = 0




@dataclass(frozen=True, slots=True)
class Batch:
    """Entries for one put call to one destination, as `ready` hands them out."""

    destination: str
    entries: tuple[Entry, ...]
    lane: Lane = field(repr=False, compare=False)
    generation: int = field(repr=False, compare=False)

    @property
    def rows(self) -> int:
        return sum(entry.rows for entry in self.entries)


@dataclass(frozen=True, slots=True)
class Ready:
    """What may be sent now, and when the accumulator next needs a turn (inf: not by itself)."""

    batches: tuple[Batch, ...]
    wake_at: float


__all__ = ["READ_RECORDS", "Batch", "Builder", "BuilderFactory", "Lane", "Ledger", "Ready", "SlotOf"]
