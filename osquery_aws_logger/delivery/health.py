"""A destination's health: its backoff, its state, and the rate-limited lines that tell changes."""

from __future__ import annotations

import logging
import time
from typing import Final

from ..counters import PluginCounters
from ..errors import DeliveryError
from .pacing import Pacing
from .retry import Backoff, is_throttling

log = logging.getLogger("osquery_aws_logger.flusher")

#: Every state a plugin or destination can be in, from best to worst: a plugin shows its worst
#: destination's; "disabled" is a plugin's that may not ship at all (settings, spool).
STATES: Final = ("ok", "retrying", "throttled", "failing", "disabled")
#: At most one health line (state change) per destination per this many seconds.
HEALTH_LOG_INTERVAL_SECONDS: Final = 10.0


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

    def answered(self, label: str, codes: list[str | None], counters: PluginCounters,
                 rows_of: list[int], now: float) -> None:
        """A put call answered with each entry's code (None: accepted, with `rows_of` rows
        each): back off after failed entries, else recover; count what went again; pace."""
        failed = [(code, rows) for code, rows in zip(codes, rows_of, strict=True) if code]
        self.pacing.answered(now, len(codes), len(codes) - len(failed),
                             sum(1 for code, _ in failed if is_throttling(code or "")))
        if not failed:
            self.backoff.succeeded()
            self.set_state(label, "ok", "", now)
            return
        throttled = sum(rows for code, rows in failed if is_throttling(code or ""))
        counters.retried += sum(rows for _, rows in failed)
        counters.throttled += throttled
        self.backoff.failed(now)
        message = f"{len(failed)} of {len(codes)} records failed ({failed[0][0]})"
        counters.record_error(message)
        self.set_state(label, "throttled" if throttled else "retrying", message, now)

    def call_failed(self, label: str, error: DeliveryError, counters: PluginCounters,
                    now: float, *, rows: int, entries: int) -> None:
        """A whole put call of `entries` records holding `rows` rows failed: every entry goes
        again, after a backoff (the cap for an error only an operator can fix), and the next
        put is a probe unless it was throttled or only the credentials had run out."""
        self.pacing.failed(now, entries, throttled=error.throttled,
                           expired=error.expired_credentials)
        counters.retried += rows
        if error.throttled:
            counters.throttled += rows
        if error.retriable:
            delay = self.backoff.failed(now)
            message = f"{error} (next try in {delay:.1f}s)"
            state = "throttled" if error.throttled else "retrying"
        else:
            self.backoff.give_up_for_now(now)
            message = (f"{error}: records stay spooled; fix the cause (stream name, "
                       f"permissions, region) and they are sent")
            state = "failing"
        counters.record_error(message)
        self.set_state(label, state, message, now)


def worst(states: list[str]) -> str:
    """The worst of `states` ("ok" for none)."""
    return max(states, key=STATES.index, default="ok")




class DropLog:
    """Rows one plugin gives up: each counted under its reason, and told at most once per
    interval a reason (with a detail that names no content: a query name, a size)."""

    def __init__(self, plugin: str, counters: PluginCounters) -> None:
        self.plugin = plugin
        self.counters = counters
        self._logs = RateLimit(HEALTH_LOG_INTERVAL_SECONDS)

    def __call__(self, reason: str, rows: int, detail: str) -> None:
        """Rows given up while shaping."""
        if rows <= 0:
            return
        self.counters.drop(reason, rows)
        if self._logs.allow(reason, time.monotonic()):
            more = self._logs.suppressed.pop(reason, 0)
            log.warning("%s: dropped %s (%s): %s%s", self.plugin,
                        "a record" if rows == 1 else f"a line of {rows} rows", reason, detail,
                        f" ({more} more since the last such line)" if more else "")

    def forgotten(self, rows: int, reason: str) -> None:
        """Rows the spool gave up after they were read (the spool logged why)."""
        if rows:
            self.counters.drop(reason, rows)


__all__ = ["HEALTH_LOG_INTERVAL_SECONDS", "STATES", "DropLog", "Health", "RateLimit", "worst"]
