"""Per-plugin counters: what went in, what was delivered, retried, throttled and dropped (by reason)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Final

from .redact import redact

#: Every reason a record can be dropped; each drop is counted under exactly one of them.
DROP_REASONS: Final = (
    "not_json",  # a result line that does not parse as a JSON object
    "invalid_utf8",  # a line whose bytes are not UTF-8
    "oversize",  # larger than the service's record limit
    "cap_records",  # the spool held buffered_log_max records; the oldest went
    "cap_bytes",  # the spool held aws_logger_spool_max_bytes; the oldest went
    "spool_error",  # the spool could not be written (disk full, permissions, unusable path)
    "disk_full",  # the filesystem was (nearly) full: the oldest waiting segment went early
    "corrupt",  # a spooled record failed its checksum when read back
    "malformed",  # a line that parsed but could not be shaped (an unexpected error, logged)
)


@dataclass
class PluginCounters:
    """Counters of one logger plugin: integers that only grow, and the last success and error.
    (The plugin's state is its accumulator's to say.)"""

    accepted: int = 0  # lines (log calls, status entries) from osqueryd
    accepted_rows: int = 0  # rows in them: a batch-format line's rows, else one per line
    delivered: int = 0  # rows AWS accepted (every count below is in rows too)
    expanded: int = 0  # rows made from batch-format lines (aws_logger_results_as_events)
    retried: int = 0
    throttled: int = 0
    put_calls: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    last_success: float = 0.0
    last_error: str = ""
    last_error_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def drop(self, reason: str, rows: int = 1) -> None:
        # Drops are counted from both the thrift thread (spool caps) and the flusher.
        with self._lock:
            self.dropped[reason] += rows

    def record_error(self, message: str) -> None:
        # The one place errors are recorded: whatever a service said, no secret is kept.
        self.last_error = redact(message)
        self.last_error_at = time.time()

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            dropped = dict(self.dropped)
        return {
            "accepted": self.accepted,
            "accepted_rows": self.accepted_rows,
            "delivered": self.delivered,
            "expanded": self.expanded,
            "retried": self.retried,
            "throttled": self.throttled,
            "put_calls": self.put_calls,
            "dropped": dropped,
            "last_success": self.last_success,
            "last_error": self.last_error,
        }
