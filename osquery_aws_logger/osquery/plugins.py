"""The logger plugins osqueryd calls, and the Extension service they answer through.

A plugin only hands each line to its spool and returns: string, snapshot and status calls are
answered 0 whatever happens (osqueryd treats anything else on a result line as fatal, and has
already forgotten the rows), and nothing here waits on the network. Counting is done here, in
rows, before the spool: whatever becomes of a line later is counted in the same unit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ..counters import PluginCounters
from ..results.records import status_record
from ..results.scan import Unshippable, count_rows, loads
from ..settings import ServiceSettings
from ..spool.spool import KIND_RESULT, KIND_STATUS, SpoolLike
from .wire import OK_RESPONSE, no_such_plugin, quote, response

log = logging.getLogger("osquery_aws_logger")

#: osqueryd's LoggerFeatures bits, read from the status code of {"action": "features"}.
FEATURE_LOGSTATUS: Final = 1


class Table(Protocol):
    """A table plugin: answers osqueryd's generate and columns calls."""

    def handle(self, request: dict[str, str]) -> Any: ...


_OK: Final = OK_RESPONSE.status


def _ok() -> Any:
    return OK_RESPONSE


def _fail(message: str) -> Any:
    return response(1, message)


@dataclass
class LoggerPlugin:
    """One registered logger plugin: it only hands lines to its spool and returns."""

    name: str
    #: The plugin's service's typed options, as they are now (settings change at run time).
    view: Callable[[], ServiceSettings]
    spool: SpoolLike
    counters: PluginCounters
    flusher_wake: Callable[[], None]
    version: Callable[[], str]
    host_identifier: str
    #: Records a full batch holds (the service's limit): each one waiting wakes the flusher.
    batch_records: int

    def forwards_status(self) -> bool:
        return self.view().forwards_status

    def _spool(self, kind: int, data: bytes | memoryview, rows: int = 1) -> None:
        """Count the line accepted (in rows) and spool it; a line that cannot be spooled is
        counted dropped, so whatever becomes of it is counted once, in rows."""
        self.counters.accepted += 1
        self.counters.accepted_rows += rows
        try:
            waiting = self.spool.append(kind, data, rows=rows)
        except Exception:
            self.counters.drop("spool_error", rows)
            log.exception("%s: could not spool a line", self.name)
            return
        if waiting and waiting % self.batch_records == 0:
            # Each full batch wakes the flusher once; waking it per line past the first batch
            # would cost a loop turn per line while it is backing off.
            self.flusher_wake()

    def log_bytes(self, line: bytes | memoryview) -> None:
        """A result or snapshot line as osqueryd sent it: spool it and return."""
        try:
            # Counted now, in rows, so whatever becomes of the line (a cap, a full disk) is
            # counted in rows too, read or not.
            rows = count_rows(line)
        except Exception:  # never expected (count_rows answers 1 for what it cannot read)
            log.exception("%s: could not count the rows of a line; counted as one", self.name)
            rows = 1
        self._spool(KIND_RESULT, line, rows)

    def log_line(self, line: str) -> None:
        self.log_bytes(line.encode("utf-8", "surrogateescape"))

    def log_status(self, text: str) -> None:
        if not self.forwards_status():
            return
        try:
            entries = loads(text.encode("utf-8", "surrogateescape"))
        except Unshippable as exc:  # not JSON, too deep, not UTF-8: one row, dropped
            self._refused_status(exc.reason, f"a status log batch that is not JSON "
                                 f"({exc.reason})")
            return
        if not isinstance(entries, list):
            entries = [entries]
        version = self.version()
        for entry in entries:
            if not isinstance(entry, dict):
                self._refused_status("not_json", "a status log entry that is not an object")
                continue
            if not entry.get("h"):
                entry["h"] = self.host_identifier
            try:
                record = status_record(entry, version)
            except Exception as exc:  # a value json cannot write back (a hostile entry)
                self._refused_status("malformed", f"a status log entry ({type(exc).__name__})")
                continue
            self._spool(KIND_STATUS, record)

    def _refused_status(self, reason: str, what: str) -> None:
        self.counters.accepted += 1
        self.counters.accepted_rows += 1
        self.counters.drop(reason)
        log.warning("%s: %s; dropped", self.name, what)

    def handle(self, request: Mapping[str, str]) -> Any:
        """Answer one call of osqueryd's logger registry.

        string/snapshot/status are answered 0 whatever happens: osqueryd treats anything
        else on a result line as fatal and has already forgotten the rows.
        """
        if "string" in request or "snapshot" in request:
            try:
                self.log_line(request["string"] if "string" in request else request["snapshot"])
            except Exception:
                self.counters.drop("spool_error")
                log.exception("%s: could not spool a line", self.name)
            return _ok()
        if "status" in request:
            try:
                self.log_status(request.get("log", "[]"))
            except Exception:
                self.counters.drop("spool_error")
                log.exception("%s: could not spool status logs", self.name)
            return _ok()
        if "init" in request:
            return _ok()
        if request.get("action") == "features":
            code = FEATURE_LOGSTATUS if self.forwards_status() else 0
            return response(code)
        if "health" in request:
            return _ok()
        keys = ", ".join(quote(key) for key in sorted(request)[:5])
        more = f" and {len(request) - 5} more" if len(request) > 5 else ""
        return _fail(f"{self.name}: unknown logger request with keys {keys}{more}")


class Handler:
    """The Extension service osqueryd calls: ping, call and shutdown."""

    def __init__(self, plugins: dict[str, LoggerPlugin], on_init: Callable[[], None],
                 on_shutdown: Callable[[], None], tables: Mapping[str, Table] | None = None) -> None:
        self.plugins = plugins
        self.tables = dict(tables or {})
        self._on_init = on_init
        self._on_shutdown = on_shutdown

    def ping(self) -> Any:
        return _OK

    def log_line(self, item: str, line: bytes | memoryview) -> bool:
        """The fast path's log call: False when no plugin has that name."""
        plugin = self.plugins.get(item)
        if plugin is None:
            return False
        plugin.log_bytes(line)
        return True

    def shutdown(self) -> Any:
        log.info("osqueryd asked the extension to shut down")
        self._on_shutdown()
        return _OK

    def call(self, registry: str, item: str, request: dict[str, str]) -> Any:
        table = self.tables.get(item) if registry == "table" else None
        if table is not None:
            try:
                return table.handle(request)
            except Exception:
                log.exception("%s: could not answer a query", item)
                return _fail(f"{item}: internal error")
        plugin = self.plugins.get(item) if registry == "logger" else None
        if plugin is None:
            return no_such_plugin(registry, item)
        if "init" in request:
            self._on_init()
        return plugin.handle(request)



