"""osquery's batch result lines, expanded into the event lines osqueryd would have written.

With ``--logger_event_type=false`` osqueryd sends one line per query run,
``{"diffResults": {"removed": [rows], "added": [rows]}, <legacy fields>}``, and a snapshot run
is always one ``{"snapshot": [rows], "action": "snapshot", <legacy fields>}`` line unless
``--logger_snapshot_event_type=true``: one call per run instead of one per row. Consumers
mostly want one record per row, so with ``aws_logger_results_as_events`` the flusher expands
such a line into exactly the lines ``serializeQueryLogItemAsEvents`` (osquery/core/query.cpp)
makes: for each action in the line's order, for each of its rows in order, the legacy fields
and decorations as the line has them (``name, hostIdentifier, calendarTime, unixTime, epoch,
counter, numerics``, then ``decorations`` nested or each decoration at the top level), then
``"columns": row`` and ``"action": <action>``. Values are copied, never re-typed.

Pure: no I/O. The spool keeps the batch line as it arrived; the expansion happens when the
flusher reads it, so the Thrift side stays O(1) per line.
"""

from __future__ import annotations

from typing import Any, Final

#: Keys of a batch line that carry its rows rather than the fields every event repeats.
_ROW_KEYS: Final = frozenset({"diffResults", "snapshot", "action"})


def batch_rows(line: dict[str, Any]) -> list[tuple[str, list[Any]]] | None:
    """The (action, rows) pairs of a batch-format result line, in the line's order, or None
    when the line is not in batch format (an event line, or anything else: passed on as is)."""
    diff = line.get("diffResults")
    if isinstance(diff, dict):
        if not all(isinstance(rows, list) for rows in diff.values()):
            return None
        return [(str(action), rows) for action, rows in diff.items()]
    snapshot = line.get("snapshot")
    if isinstance(snapshot, list) and line.get("action") == "snapshot":
        return [("snapshot", snapshot)]
    return None


def expand(line: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The event lines of a batch-format result line (one per row), or None when `line` is
    not in batch format. A run with no rows expands to no events."""
    actions = batch_rows(line)
    if actions is None:
        return None
    legacy = {key: value for key, value in line.items() if key not in _ROW_KEYS}
    events = []
    for action, rows in actions:
        for row in rows:
            event = dict(legacy)
            event["columns"] = row
            event["action"] = action
            events.append(event)
    return events


__all__ = ["batch_rows", "expand"]
