"""The extension's logger plugins and lifecycle: start, register, serve, watch osqueryd, stop.

osquery-python's start_extension exits on any flag it does not know and ends the process with
os._exit (no cleanup) from its watcher and shutdown; this module uses its generated Thrift
types and clients (``_manager``) but runs its own server loop (``_server``) and lifecycle, so
a stop always flushes. Nothing about the spool ends the process: a spool that cannot be set up
is reported and retried while the plugins stay registered and answer every call.
"""

from __future__ import annotations

import json
import logging
import resource
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from thrift.transport import TTransport

from . import __version__
from ._accumulator import Accumulator
from ._batching import status_record
from ._counters import PluginCounters
from ._errors import RegistrationError
from ._flusher import Flusher, local_host_identifier
from ._logs import note_settings
from ._manager import (
    EXTENSION_NAME,
    RESOURCE_ERRNOS,
    ManagerClient,
    describe_failure,
    manager_gone,
    os_error_of,
)
from ._server import Server, tune_memory
from ._service import SERVICES
from ._settings import Settings, describe_unknown, parse_settings, unknown_options
from ._spool import KIND_RESULT, KIND_STATUS, Spool
from ._status import TABLE_NAME, StatusTable
from ._wire import OK_RESPONSE, no_such_plugin, quote, response

log = logging.getLogger("osquery_aws_logger")

#: The names osquery's own AWS loggers have; stock builds compile them in.
BASE_PLUGIN_NAMES: Final = {"kinesis": "aws_kinesis", "firehose": "aws_firehose"}
#: Suffix used when osqueryd already has plugins of the base names.
CLASH_SUFFIX: Final = "_ext"
#: osqueryd's LoggerFeatures bits, read from the status code of {"action": "features"}.
FEATURE_LOGSTATUS: Final = 1
#: At most one line per this many seconds about pings to osqueryd that fail but do not mean
#: it is gone.
WATCH_LOG_SECONDS: Final = 60.0

_OK: Final = OK_RESPONSE.status


def _ok() -> Any:
    return OK_RESPONSE


def _fail(message: str) -> Any:
    return response(1, message)


@dataclass
class LoggerPlugin:
    """One registered logger plugin: it only hands lines to its spool and returns."""

    name: str
    service: str
    spool: Spool
    counters: PluginCounters
    flusher_wake: Callable[[], None]
    version: Callable[[], str]
    settings: Callable[[], Settings]
    host_identifier: str
    batch_records: int = 500

    def forwards_status(self) -> bool:
        return not (self.service == "kinesis" and self.settings().aws_kinesis_disable_log_status)

    def _spool(self, kind: int, data: bytes | memoryview) -> None:
        self.counters.accepted += 1
        waiting = self.spool.append(kind, data)
        if waiting and waiting % self.batch_records == 0:
            # Each full batch wakes the flusher once; waking it per line past the first batch
            # would cost a loop turn per line while it is backing off.
            self.flusher_wake()

    def log_bytes(self, line: bytes | memoryview) -> None:
        """A result or snapshot line as osqueryd sent it: spool it and return."""
        try:
            self._spool(KIND_RESULT, line)
        except Exception:
            self.counters.drop("spool_error")
            log.exception("%s: could not spool a line", self.name)

    def log_line(self, line: str) -> None:
        self.log_bytes(line.encode("utf-8", "surrogateescape"))

    def log_status(self, text: str) -> None:
        if not self.forwards_status():
            return
        try:
            entries = json.loads(text)
        except ValueError:
            self.counters.accepted += 1
            self.counters.drop("not_json")
            log.warning("%s: a status log batch was not JSON; dropped", self.name)
            return
        if not isinstance(entries, list):
            entries = [entries]
        version = self.version()
        for entry in entries:
            if isinstance(entry, dict):
                if not entry.get("h"):
                    entry["h"] = self.host_identifier
                self._spool(KIND_STATUS, status_record(entry, version))
            else:
                self.counters.accepted += 1
                self.counters.drop("not_json")

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
                 on_shutdown: Callable[[], None], table: StatusTable | None = None) -> None:
        self.plugins = plugins
        self.table = table
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
        if registry == "table" and item == TABLE_NAME and self.table is not None:
            try:
                return self.table.handle(request)
            except Exception:
                log.exception("%s: could not answer a query", TABLE_NAME)
                return _fail(f"{TABLE_NAME}: internal error")
        plugin = self.plugins.get(item) if registry == "logger" else None
        if plugin is None:
            return no_such_plugin(registry, item)
        if "init" in request:
            self._on_init()
        return plugin.handle(request)


def plugin_names(suffix: str) -> dict[str, str]:
    return {service: name + suffix for service, name in BASE_PLUGIN_NAMES.items()}


@dataclass
class ExtensionArgs:
    socket: str
    timeout: float
    interval: float
    verbose: bool
    command_line: dict[str, str]


class LoggerExtension:
    """The running extension: settings, spools, flusher, server and watcher."""

    def __init__(self, args: ExtensionArgs) -> None:
        self.args = args
        self.manager = ManagerClient(args.socket)
        self.stopping = threading.Event()
        self._reread = threading.Event()
        self._version = ""
        self.settings = Settings()
        self.problems: list[str] = []
        self._unknown: list[tuple[str, str | None]] = []
        self.plugins: dict[str, LoggerPlugin] = {}
        self.flusher: Flusher | None = None
        self.server: Server | None = None
        self.uuid = 0

    # -- settings -----------------------------------------------------------------------------

    def read_settings(self) -> tuple[Settings, list[str]]:
        try:
            options = self.manager.options()
        except (TTransport.TTransportException, OSError):
            options = None
        settings, problems = parse_settings(options or {}, self.args.command_line)
        note_settings(settings)  # log format and the secrets to redact, before any use
        # Read again at every logger init: say it once, and again only when the set changes
        # (a failed read changes nothing).
        unknown = self._unknown if options is None else unknown_options(options)
        if unknown and unknown != self._unknown:
            log.warning("ignoring options this extension does not know: %s", describe_unknown(unknown))
        self._unknown = unknown
        return settings, problems

    def _announce_problems(self, problems: list[str]) -> None:
        if problems:
            log.error("settings unusable, nothing ships until they are fixed (lines are kept in "
                      "the spool): %s", "; ".join(problems))

    # -- start --------------------------------------------------------------------------------

    def start(self) -> int:
        if not self.manager.wait_until_up(self.args.timeout):
            log.error("no osquery extension manager answered on %s within %ss (%s)",
                      self.args.socket, self.args.timeout, self.manager.last_error)
            return 1
        # Before any spool or the server takes a descriptor; said only once osqueryd answered,
        # so a first start by hand without it still prints one line.
        raise_descriptor_limit()
        self.settings, self.problems = self.read_settings()
        self._announce_problems(self.problems)
        try:
            self._version = self.manager.osquery_version()
        except (TTransport.TTransportException, OSError):
            self._version = ""
        host = local_host_identifier()
        channels = []
        suffix = self.settings.aws_logger_plugin_suffix
        for service, name in plugin_names("").items():
            directory = Path(self.settings.aws_logger_spool_dir) / service
            counters = PluginCounters()
            spool = Spool(directory, max_records=self.settings.buffered_log_max,
                          max_bytes=self.settings.aws_logger_spool_max_bytes,
                          on_drop=counters.drop)
            channels.append(Accumulator(name, SERVICES[service], spool, counters, self.settings,
                                        host_identifier=host, now=time.monotonic()))
        self.flusher = Flusher(channels, self.settings, problems=self.problems)
        try:
            names = self._register(suffix)
        except RegistrationError as exc:
            log.error("osqueryd refused to register the extension: %s", exc)
            self.flusher.stop(0)
            return 1
        for channel, (service, name) in zip(channels, names.items(), strict=True):
            channel.plugin = name
            self.plugins[name] = LoggerPlugin(
                name, service, channel.intake, channel.counters, self.flusher.wake,
                lambda: self._version, lambda: self.settings, host)
        self.server = Server(f"{self.args.socket}.{self.uuid}", Handler(
            self.plugins, self._reread.set, self.stopping.set, StatusTable(self.flusher.rows)))
        self.flusher.start()
        threading.Thread(target=self._watch, name="aws-logger-watcher", daemon=True).start()
        log.info("registered extension %s %s (uuid %d) with logger plugins %s; serving on %s",
                 EXTENSION_NAME, __version__, self.uuid, ", ".join(names.values()),
                 self.server.path)
        return 0

    def _register(self, suffix: str) -> dict[str, str]:
        names = plugin_names(suffix)
        try:
            self.uuid = self.manager.register(list(names.values()))
            return names
        except RegistrationError as exc:
            if not exc.name_clash or suffix:
                raise
        names = plugin_names(CLASH_SUFFIX)
        log.warning(
            "osqueryd already has logger plugins named aws_kinesis and aws_firehose (stock "
            "osquery builds compile in its own AWS loggers). Registered this extension's as "
            "%s instead: use --logger_plugin=%s, or build osqueryd with -DOSQUERY_BUILD_AWS=OFF "
            "to use the plain names. Set custom_aws_logger_plugin_suffix to choose the suffix.",
            " and ".join(names.values()), ",".join(names.values()))
        self.uuid = self.manager.register(list(names.values()))
        return names

    # -- run and stop ---------------------------------------------------------------------------

    def _watch(self) -> None:
        """Ping osqueryd every interval; stop when it is gone or has dropped the extension.

        Gone means a refused connection or no socket, or osqueryd no longer listing this
        extension. Any other failure (out of descriptors or memory here, a timeout) is this
        process's trouble or a passing one: logged, at most once a minute, and watched again.
        """
        logged_at = -WATCH_LOG_SECONDS
        unlogged = 0
        while not self.stopping.is_set():
            if self._reread.wait(self.args.interval):
                self._reread.clear()
                self._apply_settings()
                continue
            try:
                if not self.manager.ping_ok() or not self.manager.registered(self.uuid):
                    log.warning("osqueryd no longer lists this extension; stopping")
                    self.stopping.set()
            except Exception as exc:
                if manager_gone(exc):
                    log.warning("osqueryd's extension manager is gone (%s); stopping",
                                describe_failure(exc))
                    self.stopping.set()
                    continue
                now = time.monotonic()
                if now - logged_at < WATCH_LOG_SECONDS:
                    unlogged += 1
                    continue
                error = os_error_of(exc)
                here = " (a shortage in this process)" if error is not None and \
                    error.errno in RESOURCE_ERRNOS else ""
                log.warning("could not ping osqueryd's extension manager: %s%s; not taken for "
                            "osqueryd gone (only a refused connection or a missing socket is), "
                            "still watching%s", describe_failure(exc), here,
                            f" ({unlogged} more failed pings since the last such line)"
                            if unlogged else "")
                logged_at, unlogged = now, 0
        if self.server is not None:
            self.server.stop()

    def _apply_settings(self) -> None:
        settings, problems = self.read_settings()
        if problems != self.problems:
            self._announce_problems(problems)
        self.settings, self.problems = settings, problems
        if self.flusher is not None:
            self.flusher.apply(settings, problems)

    def serve(self) -> None:
        assert self.server is not None
        self.server.serve()

    def stop(self) -> int:
        self.stopping.set()
        if self.server is not None:
            self.server.stop()
        if self.flusher is None:
            return 0
        timeout = float(self.settings.aws_logger_shutdown_timeout)
        self.flusher.stop(timeout)
        left = sum(c.depth()[0] for c in self.flusher.accumulators)
        dropped: dict[str, int] = {}
        for channel in self.flusher.accumulators:
            # One machine-readable line per plugin, so the last figures survive in the log.
            snapshot = channel.counters.snapshot()
            log.info("%s: counters %s", channel.plugin, json.dumps(snapshot, sort_keys=True))
            for reason, count in channel.counters.dropped.items():
                if count:
                    dropped[reason] = dropped.get(reason, 0) + count
        parts = [f"{left} records stay spooled for the next start" if left
                 else "nothing left undelivered in the spool"]
        if dropped:
            parts.append(f"{sum(dropped.values())} dropped since start ("
                         + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) + ")")
        unusable = [c.intake.problem for c in self.flusher.accumulators if c.intake.problem]
        if unusable:
            parts.append("; ".join(unusable))
        log.info("stopped: %s", "; ".join(parts) if left or dropped or unusable
                 else "everything accepted was delivered")
        return 0


def _limit_text(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def raise_descriptor_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit, and say so in one line.

    systemd starts services with a soft limit of 1,024 and a far higher hard one, on the
    understanding that a program needing more raises its own: each routed destination's
    spool and each connection takes descriptors, and running out stops the socket accepting.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError) as exc:
        log.warning("open file descriptors (RLIMIT_NOFILE): cannot read the limit: %s", exc)
        return
    target = hard
    if hard == resource.RLIM_INFINITY:
        # No system grants unlimited descriptors; Linux stops at fs.nr_open.
        try:
            with open("/proc/sys/fs/nr_open") as nr_open:
                target = int(nr_open.read())
        except (OSError, ValueError):
            target = soft
    if soft == resource.RLIM_INFINITY or soft >= target:
        log.info("open file descriptors (RLIMIT_NOFILE): soft limit %s, already the hard limit",
                 _limit_text(soft))
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.warning("open file descriptors (RLIMIT_NOFILE): could not raise the soft limit from "
                    "%s to %s: %s", _limit_text(soft), _limit_text(target), exc)
        return
    log.info("open file descriptors (RLIMIT_NOFILE): raised the soft limit from %s to %s",
             _limit_text(soft), _limit_text(target))


def run(args: ExtensionArgs) -> int:
    """Run the extension until osqueryd goes away, asks it to stop, or a signal arrives."""
    extension = LoggerExtension(args)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        extension.stopping.set()
        if extension.server is not None:
            extension.server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    tune_memory()
    code = extension.start()
    if code != 0:
        return code

    def stop_server_when_asked() -> None:
        extension.stopping.wait()
        if extension.server is not None:
            extension.server.stop()

    threading.Thread(target=stop_server_when_asked, daemon=True).start()
    extension.serve()
    return extension.stop()


__all__ = ["ExtensionArgs", "LoggerExtension", "run"]
