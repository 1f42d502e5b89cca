"""osqueryd's two result-line serialisers, for the stand-in, written from osquery/core/query.cpp.

``batch_line`` is serializeQueryLogItemJSON (``--logger_event_type=false``, and every snapshot
run unless ``--logger_snapshot_event_type=true``); ``event_lines`` is
serializeQueryLogItemAsEventsJSON (one line per row). Both write compact JSON with rapidjson's
key order, which is insertion order:

- batch: ``diffResults`` {``removed``, ``added``} (both always present) when the run changed
  anything, else ``snapshot`` [rows] and ``"action": "snapshot"``; then the legacy fields.
- event: the legacy fields, then ``columns`` (the row), then ``action``.
- legacy fields (addLegacyFieldsAndDecorations): ``name, hostIdentifier, calendarTime,
  unixTime, epoch, counter, numerics``, then the decorations (a std::map, so sorted by name):
  nested under ``decorations``, or each at the top level with ``--decorations_top_level``;
  nothing when there are none.

Row values are strings unless ``--logger_numerics`` (then the typed columns are numbers); a
run's rows are given here already as they serialise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class QueryRun:
    """One scheduled query run, as QueryLogItem holds it."""

    name: str
    host_identifier: str = "standin-host"
    calendar_time: str = "Mon Nov 30 09:00:00 2026 UTC"
    unix_time: int = 1796029200
    epoch: int = 0
    counter: int = 0
    numerics: bool = False
    decorations: dict[str, str] = field(default_factory=dict)
    decorations_top_level: bool = False
    removed: list[dict[str, Any]] = field(default_factory=list)
    added: list[dict[str, Any]] = field(default_factory=list)
    #: A snapshot run's rows (a scheduled query with "snapshot": true).
    snapshot: list[dict[str, Any]] | None = None


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def _legacy(run: QueryRun, document: dict[str, Any]) -> None:
    document["name"] = run.name
    document["hostIdentifier"] = run.host_identifier
    document["calendarTime"] = run.calendar_time
    document["unixTime"] = run.unix_time
    document["epoch"] = run.epoch
    document["counter"] = run.counter
    document["numerics"] = run.numerics
    if run.decorations:
        decorations = dict(sorted(run.decorations.items()))
        if run.decorations_top_level:
            document.update(decorations)
        else:
            document["decorations"] = decorations


def batch_line(run: QueryRun) -> str:
    """serializeQueryLogItemJSON: the one line of a run."""
    document: dict[str, Any] = {}
    if run.snapshot is None and (run.added or run.removed):
        document["diffResults"] = {"removed": list(run.removed), "added": list(run.added)}
    else:
        document["snapshot"] = list(run.snapshot or [])
        document["action"] = "snapshot"
    _legacy(run, document)
    return _dump(document)


def event_lines(run: QueryRun) -> list[str]:
    """serializeQueryLogItemAsEventsJSON: one line per row, actions in the diff's order."""
    if run.snapshot is None:
        actions = [("removed", run.removed), ("added", run.added)]
    else:
        actions = [("snapshot", run.snapshot)]
    lines = []
    for action, rows in actions:
        for row in rows:
            document: dict[str, Any] = {}
            _legacy(run, document)
            document["columns"] = dict(row)
            document["action"] = action
            lines.append(_dump(document))
    return lines
