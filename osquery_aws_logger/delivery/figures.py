"""What the status table shows of a plugin, published by the flusher's thread.

Other threads (the socket loop answering aws_logger_status) read a snapshot replaced whole, and
the spools' own locked, in-memory bookkeeping; never a spool's files. The figures that do read
a file (the oldest waiting record's time) are taken here, on the flusher's thread, at most every
OLDEST_REFRESH_SECONDS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from ..spool.spool import SpoolLike

#: How often the oldest waiting record's age is looked up again (it may read a segment).
OLDEST_REFRESH_SECONDS: Final = 5.0


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
    """What status shows of a plugin."""

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


class FigureTaker:
    """Takes the spools' figures; remembers when it last looked up the oldest record."""

    def __init__(self) -> None:
        self._oldest: tuple[float, float | None] = (-math.inf, None)

    def take(self, spools: list[SpoolLike], draining: tuple[tuple[str, int], ...], now: float,
             *, had_records: bool) -> SpoolFigures:
        depths = [spool.depth() for spool in spools]
        records = sum(held for held, _ in depths)
        refreshed_at, oldest = self._oldest
        if now - refreshed_at >= OLDEST_REFRESH_SECONDS or not had_records:
            found = [at for spool, (held, _) in zip(spools, depths, strict=True)
                     if held and (at := spool.oldest_accepted_at()) is not None]
            oldest = min(found, default=None)
            self._oldest = (now, oldest)
        return SpoolFigures(records=records, rows=sum(spool.waiting_rows() for spool in spools),
                            bytes=sum(size for _, size in depths),
                            oldest_at=oldest if records else None, draining=draining)


__all__ = ["DeliverySnapshot", "DestinationSnapshot", "FigureTaker", "SpoolFigures"]
