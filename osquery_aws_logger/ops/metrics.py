"""The status table's counters and gauges as a Prometheus text file, for node_exporter.

node_exporter's textfile collector (and Vector's, Fluent Bit's, the Grafana agent's) reads every
``*.prom`` file in a directory. The file is rewritten whole, atomically (never half a file to a
scraper) and world-readable (0644: the collector often runs as another user), each time the
plugins' state.json files are. No port is opened: the fleet's own agent does the serving.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from ..delivery.health import STATES
from ..files import atomic_write
from ..redact import redact

log = logging.getLogger("osquery_aws_logger.metrics")

PREFIX: Final = "osquery_aws_logger_"

#: (metric, type, help, row column) for the figures that are one number per plugin.
SERIES: Final[tuple[tuple[str, str, str, str], ...]] = (
    ("accepted_total", "counter", "Lines (log calls) taken from osqueryd since start.", "accepted"),
    ("accepted_rows_total", "counter", "Rows in the lines taken since start.", "accepted_rows"),
    ("delivered_total", "counter", "Rows AWS accepted since start.", "delivered"),
    ("expanded_rows_total", "counter", "Rows made from batch-format lines since start.",
     "expanded_rows"),
    ("retried_total", "counter", "Rows sent again after a failure.", "retried"),
    ("throttled_total", "counter", "Rows refused for throughput.", "throttled"),
    ("put_calls_total", "counter", "PutRecords/PutRecordBatch calls made.", "put_calls"),
    ("spool_records", "gauge", "Records (lines) waiting in the spools.", "spool_records"),
    ("waiting_rows", "gauge", "Rows waiting in the spools.", "waiting_rows"),
    ("spool_bytes", "gauge", "Bytes the spool holds.", "spool_bytes"),
    ("oldest_age_seconds", "gauge", "Age of the oldest undelivered record.",
     "oldest_age_seconds"),
    ("last_success_timestamp_seconds", "gauge", "Unix time of the last delivery, 0 if none.",
     "last_success"),
    ("last_error_timestamp_seconds", "gauge", "Unix time of the last error, 0 if none.",
     "last_error_time"),
    ("credential_expires_timestamp_seconds", "gauge",
     "Unix time the assumed-role credentials expire, 0 if not applicable.", "credential_expires"),
    ("updated_timestamp_seconds", "gauge", "Unix time these figures were taken.", "updated"),
)
#: dropped_total{reason=...}: the table's dropped_* columns.
DROP_COLUMNS: Final = (("oversize", "dropped_oversize"), ("cap", "dropped_cap"),
                       ("invalid", "dropped_invalid"), ("other", "dropped_other"))


def _label(value: object) -> str:
    """A label value as the text format wants it: backslash, quote and newline escaped."""
    text = redact(str(value))
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(row: dict[str, Any], **extra: str) -> str:
    pairs = {"plugin": row.get("plugin", ""), "service": row.get("service", ""),
             "stream": row.get("stream", ""), **extra}
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in pairs.items()) + "}"


def _number(value: object) -> str:
    try:
        return str(int(value))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return "0"


def render(rows: Iterable[dict[str, Any]]) -> str:
    """The Prometheus text exposition of the status rows, one series per plugin."""
    rows = list(rows)
    lines: list[str] = []

    def family(name: str, kind: str, text: str) -> None:
        lines.append(f"# HELP {PREFIX}{name} {text}")
        lines.append(f"# TYPE {PREFIX}{name} {kind}")

    for name, kind, text, column in SERIES:
        family(name, kind, text)
        lines.extend(f"{PREFIX}{name}{_labels(row)} {_number(row.get(column))}" for row in rows)
    family("dropped_total", "counter", "Rows dropped, by reason.")
    for row in rows:
        lines.extend(f"{PREFIX}dropped_total{_labels(row, reason=reason)} "
                     f"{_number(row.get(column))}" for reason, column in DROP_COLUMNS)
    family("state", "gauge", "1 for the plugin's current state, 0 for the others.")
    for row in rows:
        lines.extend(f"{PREFIX}state{_labels(row, state=state)} "
                     f"{1 if row.get('state') == state else 0}" for state in STATES)
    return "\n".join(lines) + "\n"


class MetricsFile:
    """Writes the .prom file; a failure costs one warning per distinct error, never raises."""

    def __init__(self) -> None:
        self._last_problem = ""

    def write(self, path: str, rows: Iterable[dict[str, Any]]) -> None:
        if not path:
            return
        target = Path(path)
        try:
            atomic_write(target.parent, target.name, render(rows).encode(), mode=0o644)
        except OSError as exc:
            problem = f"{path}: {exc.strerror or exc}"
            if problem != self._last_problem:
                log.warning("could not write the metrics file %s", problem)
            self._last_problem = problem
            return
        if self._last_problem:
            log.info("metrics file %s written again", path)
            self._last_problem = ""


__all__ = ["MetricsFile", "render"]
