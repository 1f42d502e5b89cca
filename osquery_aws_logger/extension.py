"""The extension's lifecycle: start, register, serve, watch osqueryd, stop (the stages put together).

osquery-python's start_extension exits on any flag it does not know and ends the process with
os._exit (no cleanup) from its watcher and shutdown; this module uses its generated Thrift
types and clients (``_manager``) but runs its own server loop (``_server``) and lifecycle, so
a stop always flushes. Nothing about the spool ends the process: a spool that cannot be set up
is reported and retried while the plugins stay registered and answer every call.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from thrift.transport import TTransport

from .counters import PluginCounters
from .delivery.accumulator import Accumulator
from .delivery.flusher import Flusher, local_host_identifier
from .delivery.router import ROUTED_DIR, migrate_line
from .delivery.services import SERVICES, Service
from .errors import RegistrationError
from .logs import note_settings
from .ops.status import TABLE_NAME, StatusReport, StatusTable
from .osquery.manager import (
    EXTENSION_NAME,
    ManagerClient,
    describe_failure,
    manager_gone,
    os_error_of,
)
from .osquery.plugins import Handler, LoggerPlugin
from .osquery.server import Server
from .platform import RESOURCE_ERRNOS, raise_descriptor_limit, tune_memory
from .settings import (
    ServiceSettings,
    Settings,
    describe_unknown,
    parse_settings,
    unknown_options,
)
from .spool.directories import SpoolDirectories
from .spool.spool import Spool, SpoolGroup
from .version import __version__

log = logging.getLogger("osquery_aws_logger")

#: Suffix used when osqueryd already has plugins of the base names.
CLASH_SUFFIX: Final = "_ext"
#: The tables the extension registers, with their columns.
TABLES: Final = {TABLE_NAME: StatusTable.routes()}
#: At most one line per this many seconds about pings to osqueryd that fail but do not mean
#: it is gone.
WATCH_LOG_SECONDS: Final = 60.0

def plugin_names(suffix: str) -> dict[str, str]:
    """Each service's logger plugin name (osquery's own AWS loggers' names), with `suffix`."""
    return {service.name: service.plugin + suffix for service in SERVICES.values()}


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
        self._directories = SpoolDirectories(Path(args.socket).parent)
        self._earlier: list[Path] = []

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
        group = SpoolGroup()
        root = Path(self.settings.aws_logger_spool_dir)
        self._directories = SpoolDirectories(Path(self.args.socket).parent)
        self._earlier = [d for d in self._directories.read() if d != root]
        for service in SERVICES.values():
            counters = PluginCounters()
            spool = self._spool(root / service.name, counters, group, releasable=False)
            earlier = tuple(self._earlier_spools(service.name, counters, group))
            channels.append(Accumulator(service.plugin, service, spool, counters, self.settings,
                                        host_identifier=host, now=time.monotonic(),
                                        earlier=earlier))
        self._tell_earlier(channels)
        self.flusher = Flusher(channels, self.settings, problems=self.problems)
        try:
            names = self._register(suffix)
        except RegistrationError as exc:
            log.error("osqueryd refused to register the extension: %s", exc)
            self.flusher.stop(0)
            return 1
        for channel, name in zip(channels, names.values(), strict=True):
            channel.plugin = name
            self.plugins[name] = LoggerPlugin(
                name, self._view_of(channel.service), channel.intake, channel.counters,
                self.flusher.wake, lambda: self._version, host, channel.service.limits.max_records)
        report = StatusReport(self.flusher)
        self.flusher.on_report = report.write
        self.server = Server(f"{self.args.socket}.{self.uuid}", Handler(
            self.plugins, self._reread.set, self.stopping.set,
            {TABLE_NAME: StatusTable(report.rows)}))
        self.flusher.start()
        threading.Thread(target=self._watch, name="aws-logger-watcher", daemon=True).start()
        log.info("registered extension %s %s (uuid %d) with logger plugins %s; serving on %s",
                 EXTENSION_NAME, __version__, self.uuid, ", ".join(names.values()),
                 self.server.path)
        return 0

    def _view_of(self, service: Service) -> Callable[[], ServiceSettings]:
        """The service's typed options as the settings are at each call (they change)."""
        return lambda: service.settings(self.settings)

    def _spool(self, directory: Path, counters: PluginCounters, group: SpoolGroup, *,
               releasable: bool) -> Spool:
        return Spool(directory, max_records=self.settings.buffered_log_max,
                     max_bytes=self.settings.aws_logger_spool_max_bytes, on_drop=counters.drop,
                     group=group, releasable=releasable, migrate=migrate_line)

    def _earlier_spools(self, service: str, counters: PluginCounters,
                        group: SpoolGroup) -> list[Spool]:
        """This plugin's spools in earlier spool directories that still hold rows."""
        found = []
        for root in self._earlier:
            directory = root / service
            # os.path answers False where it cannot look (a foreign owner), never raises.
            if not os.path.isdir(directory) or os.path.islink(directory):
                continue
            spool = self._spool(directory, counters, group, releasable=True)
            if spool.depth()[0] or spool.children(ROUTED_DIR):
                found.append(spool)
            else:
                spool.close()
        return found

    def _tell_earlier(self, channels: list[Accumulator]) -> None:
        """Say once, loudly, where rows were left by an earlier aws_logger_spool_dir and that
        they are being drained; keep the list of directories for the next start."""
        waiting: dict[str, int] = {}
        for channel in channels:
            channel.publish(figures=True)
            for directory, rows in channel.published.figures.draining:
                waiting[directory] = waiting.get(directory, 0) + rows
        for directory, rows in waiting.items():
            log.warning("aws_logger_spool_dir changed: %d rows wait in the earlier spool "
                        "directory %s; delivering them first through the current settings "
                        "(`osquery-aws-logger status` shows them under draining)", rows,
                        directory)
        root = Path(self.settings.aws_logger_spool_dir)
        self._directories.write([root, *(Path(d) for d in waiting)])

    def _register(self, suffix: str) -> dict[str, str]:
        names = plugin_names(suffix)
        try:
            self.uuid = self.manager.register(list(names.values()), TABLES)
            return names
        except RegistrationError as exc:
            if not exc.name_clash or suffix:
                raise
        names = plugin_names(CLASH_SUFFIX)
        log.warning(
            "osqueryd already has logger plugins named %s (stock osquery builds compile in its "
            "own AWS loggers). Registered this extension's as "
            "%s instead: use --logger_plugin=%s, or build osqueryd with -DOSQUERY_BUILD_AWS=OFF "
            "to use the plain names. Set custom_aws_logger_plugin_suffix to choose the suffix.",
            " and ".join(plugin_names("").values()), " and ".join(names.values()),
            ",".join(names.values()))
        self.uuid = self.manager.register(list(names.values()), TABLES)
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
            snapshot = {**channel.counters.snapshot(), "state": channel.state()}
            log.info("%s: counters %s", channel.plugin, json.dumps(snapshot, sort_keys=True))
            for reason, count in channel.counters.dropped.items():
                if count:
                    dropped[reason] = dropped.get(reason, 0) + count
        parts = [f"{left} records stay spooled for the next start" if left
                 else "nothing left undelivered in the spool"]
        if dropped:
            parts.append(f"{sum(dropped.values())} dropped since start ("
                         + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) + ")")
        still = {d for c in self.flusher.accumulators for d, _ in c.published.figures.draining}
        self._directories.write([Path(self.settings.aws_logger_spool_dir),
                                 *(Path(d) for d in still)])
        unusable = [c.intake.problem for c in self.flusher.accumulators if c.intake.problem]
        if unusable:
            parts.append("; ".join(unusable))
        log.info("stopped: %s", "; ".join(parts) if left or dropped or unusable
                 else "everything accepted was delivered")
        return 0


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
