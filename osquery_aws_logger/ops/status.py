"""Health in osquery's terms: the aws_logger_status table, the state file, and `status`."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

from ..counters import PluginCounters
from ..delivery.accumulator import ROUTED_DIR, DeliverySnapshot
from ..delivery.flusher import Flusher
from ..osquery.wire import response
from ..redact import redact
from ..spool.inspect import inspect_spool
from ..spool.ledger import LEDGER_FILE
from ..spool.spool import SEGMENT_SUFFIX, SpoolLike
from .metrics import MetricsFile

TABLE_NAME: Final = "aws_logger_status"

STATE_FILE: Final = "state.json"

#: (column, osquery type, meaning): the table's schema, and the README's table.
COLUMNS: Final[tuple[tuple[str, str, str], ...]] = (
    ("plugin", "TEXT", "registered logger plugin name"),
    ("service", "TEXT", "kinesis or firehose"),
    ("stream", "TEXT", "stream or delivery stream name"),
    ("endpoint", "TEXT", "the URL the client sends to (custom, AWS's own or its FIPS one), once known"),
    ("region", "TEXT", "region the client uses"),
    ("state", "TEXT", "ok, retrying, throttled, failing or disabled"),
    ("accepted", "BIGINT", "lines (log calls, status entries) taken from osqueryd since start"),
    ("accepted_rows", "BIGINT", "rows in those lines: a batch-format line's rows, else one a line"),
    ("delivered", "BIGINT", "rows AWS accepted since start"),
    ("expanded_rows", "BIGINT", "rows made from batch-format lines (results as events)"),
    ("retried", "BIGINT", "rows sent again after a failure"),
    ("throttled", "BIGINT", "rows refused for throughput"),
    ("put_calls", "BIGINT", "PutRecords/PutRecordBatch calls made"),
    ("dropped", "BIGINT", "rows dropped, all reasons"),
    ("dropped_oversize", "BIGINT", "rows over the service's record limit"),
    ("dropped_cap", "BIGINT", "oldest rows dropped past buffered_log_max or the byte cap"),
    ("dropped_invalid", "BIGINT", "rows of lines not JSON, not UTF-8, or that could not be shaped"),
    ("dropped_other", "BIGINT", "rows lost to spool write errors, corrupt records, a full disk"),
    ("spool_records", "BIGINT", "records (lines) waiting in the spools"),
    ("waiting_rows", "BIGINT", "rows waiting in the spools"),
    ("spool_bytes", "BIGINT", "bytes the spools hold"),
    ("oldest_age_seconds", "BIGINT", "age of the oldest undelivered record"),
    ("draining", "TEXT", "earlier spool directories still being drained, and their rows"),
    ("last_success", "BIGINT", "unix time of the last delivery, 0 if none"),
    ("last_error", "TEXT", "the last error (no secrets)"),
    ("last_error_time", "BIGINT", "unix time of the last error, 0 if none"),
    ("credential_source", "TEXT", "where the AWS credentials came from"),
    ("credential_expires", "BIGINT", "unix time the assumed-role credentials expire, 0 if n/a"),
    ("updated", "BIGINT", "unix time these figures were taken"),
)
COLUMN_NAMES: Final = tuple(name for name, _, _ in COLUMNS)
#: States that make `osquery-aws-logger status` exit non-zero.
UNHEALTHY_STATES: Final = frozenset({"retrying", "failing"})
#: Waiting this long undelivered makes a plugin unhealthy whatever its state says.
STALE_SECONDS: Final = 900


def status_row(snapshot: DeliverySnapshot, counters: PluginCounters, *, region: str,
               credential_source: str, credential_expires: float,
               endpoint: str = "") -> dict[str, Any]:
    """The figures of one plugin: the snapshot the flusher published, its counters, and its
    spools' in-memory bookkeeping (read under their locks). No file is read for them: the table
    is answered on the socket loop, where a read would hold up osqueryd's calls. `endpoint` is
    the URL its client sends to, once the sender has made one (else the custom endpoint of the
    settings, if any)."""
    dropped = dict(counters.dropped)
    records = size = waiting = 0
    for spool in snapshot.spools:
        held, held_bytes = spool.depth()
        records += held
        size += held_bytes
        waiting += spool.waiting_rows(read=False) if held else 0
    now = time.time()
    oldest = snapshot.figures.oldest_at if records else None
    return {
        "plugin": snapshot.plugin,
        "service": snapshot.service,
        "stream": snapshot.stream,
        "endpoint": endpoint or snapshot.endpoint,
        "region": region,
        "state": snapshot.state,
        "accepted": counters.accepted,
        "accepted_rows": counters.accepted_rows,
        "delivered": counters.delivered,
        "expanded_rows": counters.expanded,
        "retried": counters.retried,
        "throttled": counters.throttled,
        "put_calls": counters.put_calls,
        "dropped": sum(dropped.values()),
        "dropped_oversize": dropped["oversize"],
        "dropped_cap": dropped["cap_records"] + dropped["cap_bytes"],
        "dropped_invalid": dropped["not_json"] + dropped["invalid_utf8"] + dropped["malformed"],
        "dropped_other": dropped["spool_error"] + dropped["corrupt"] + dropped["disk_full"],
        "spool_records": records,
        "waiting_rows": waiting,
        "spool_bytes": size,
        "oldest_age_seconds": max(0, int(now - oldest)) if oldest else 0,
        "draining": "; ".join(f"{directory}: {rows} rows"
                              for directory, rows in snapshot.figures.draining),
        "last_success": int(counters.last_success),
        "last_error": snapshot.problem or counters.last_error,
        "last_error_time": int(counters.last_error_at),
        "credential_source": credential_source,
        "credential_expires": int(credential_expires or 0),
        "updated": int(now),
    }


class StatusReport:
    """Every plugin's figures, as the operator sees them: the aws_logger_status rows, and the
    state.json and metrics file written from them (see Flusher.on_report). Read from what the
    flusher publishes, never touching the network or a spool's files."""

    def __init__(self, flusher: Flusher) -> None:
        self.flusher = flusher
        self._metrics = MetricsFile()

    def rows(self) -> list[dict[str, Any]]:
        clients = self.flusher.sender.clients
        rows = []
        for accumulator in self.flusher.accumulators:
            snapshot = accumulator.published
            rows.append(status_row(
                snapshot, accumulator.counters,
                region=clients.regions.get(snapshot.service, "") if clients else "",
                endpoint=clients.endpoints.get(snapshot.service, "") if clients else "",
                credential_source=clients.credential_source if clients else "",
                credential_expires=(clients.expires_at or 0) if clients else 0))
        return rows

    def write(self) -> None:
        """state.json beside each plugin's spool, and the metrics file if one is set."""
        rows = self.rows()
        for accumulator, row in zip(self.flusher.accumulators, rows, strict=True):
            write_state(accumulator.intake, row)
        self._metrics.write(self.flusher.settings.aws_logger_metrics_file, rows)


def _text(value: Any) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)


class StatusTable:
    """The table plugin osqueryd queries: one row per logger plugin, never a network call."""

    def __init__(self, rows: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self._rows = rows

    @staticmethod
    def routes() -> list[dict[str, str]]:
        return [{"id": "column", "name": name, "type": kind, "op": "0"}
                for name, kind, _ in COLUMNS]

    def handle(self, request: dict[str, str]) -> Any:
        action = request.get("action")
        if action == "generate":
            rows = [{k: redact(_text(v)) for k, v in row.items()} for row in self._rows()]
            return response(0, rows=rows)
        if action == "columns":
            return response(0, rows=self.routes())
        return response(1, "unknown table action")


def write_state(spool: SpoolLike, row: dict[str, Any]) -> None:
    """Keep the latest figures beside the spool, for `status` when osqueryd is down.

    Written through the spool's own directory descriptor (never through a link, and not at all
    for a spool refused or not set up). A full disk only costs this update: never raises.
    """
    safe = {k: redact(v) if isinstance(v, str) else v for k, v in row.items()}
    spool.write_file(STATE_FILE, json.dumps({**safe, "pid": os.getpid()}, sort_keys=True).encode())


def read_status(spool_dir: Path, now: float | None = None) -> list[dict[str, Any]]:
    """Each plugin's last figures from disk, with the spool's depth read afresh (read-only).

    Never raises: a spool directory that cannot be listed gives no rows (`spool_problem`
    says why), and a plugin's directory that cannot be read gives a row saying so in
    `last_error`, unhealthy (a spool owned by another user, without CAP_DAC_OVERRIDE)."""
    now = time.time() if now is None else now
    try:
        directories = sorted(p for p in spool_dir.iterdir() if p.is_dir()) \
            if spool_dir.is_dir() else []
    except OSError:
        return []
    rows = []
    for directory in directories:
        try:
            row = _plugin_row(directory, now)
        except OSError as exc:
            row = _unreadable_row(directory, exc)
        if row is not None:
            rows.append(row)
    return rows


def _plugin_row(directory: Path, now: float) -> dict[str, Any] | None:
    """One plugin's row, or None for a directory that holds no spool; OSError when the
    directory cannot be read."""
    names = set(os.listdir(directory))  # raises when it cannot be read: nothing is guessed
    if not any(name.endswith(SEGMENT_SUFFIX) for name in names) and STATE_FILE not in names \
            and LEDGER_FILE not in names:
        return None
    row: dict[str, Any] = {name: "" for name in COLUMN_NAMES}
    with contextlib.suppress(FileNotFoundError, ValueError):
        row.update(json.loads((directory / STATE_FILE).read_text()))
    records, waiting, size, oldest = _inspect_plugin(directory)
    row["service"] = row.get("service") or directory.name
    row["plugin"] = row.get("plugin") or f"aws_{directory.name}"
    row["spool_records"], row["waiting_rows"], row["spool_bytes"] = records, waiting, size
    row["oldest_age_seconds"] = int(now - oldest) if oldest else 0
    row["state"] = row.get("state") or "unknown"
    row["healthy"] = healthy(row)
    return row


def _unreadable_row(directory: Path, exc: OSError) -> dict[str, Any]:
    """A plugin directory `status` cannot read: what it holds is unknown, which is unhealthy."""
    row: dict[str, Any] = {name: "" for name in COLUMN_NAMES}
    row.update(service=directory.name, plugin=f"aws_{directory.name}", state="unknown",
               spool_records=0, waiting_rows=0, spool_bytes=0, oldest_age_seconds=0,
               last_error=f"cannot read {exc.filename or directory}: {exc.strerror or exc}",
               healthy=False)
    return row


def _inspect_plugin(directory: Path) -> tuple[int, int, int, float | None]:
    """A plugin's spool and, once it routes rows, its destinations' spools beside it."""
    records, waiting, size, oldest = inspect_spool(directory)
    routed = directory / ROUTED_DIR
    try:
        subs = sorted(routed.iterdir()) if routed.is_dir() else []
    except OSError:
        subs = []
    for sub in subs:
        if sub.is_dir() and not sub.is_symlink():
            more, rows, held, first = inspect_spool(sub)
            records += more
            waiting += rows
            size += held
            if first is not None and (oldest is None or first < oldest):
                oldest = first
    return records, waiting, size, oldest


def healthy(row: dict[str, Any]) -> bool:
    """Whether a plugin is shipping: not failing, and nothing waits longer than STALE_SECONDS."""
    if row.get("state") in UNHEALTHY_STATES:
        return False
    if row.get("state") == "disabled" and int(row.get("spool_records") or 0):
        return False
    return int(row.get("oldest_age_seconds") or 0) < STALE_SECONDS
