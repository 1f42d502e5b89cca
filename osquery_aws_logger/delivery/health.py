"""A destination's health: its backoff, its state, and the rate-limited lines that tell changes."""

from __future__ import annotations

import logging
from typing import Final

from .retry import Backoff

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
    """One destination's backoff and state, and the rate-limited lines that tell its changes."""

    def __init__(self) -> None:
        self.backoff = Backoff()
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


def worst(states: list[str]) -> str:
    """The worst of `states` ("ok" for none)."""
    return max(states, key=STATES.index, default="ok")


__all__ = ["HEALTH_LOG_INTERVAL_SECONDS", "STATES", "Health", "RateLimit", "worst"]
