"""A stand-in for osqueryd's extension manager, for tests that need "osqueryd" without osqueryd.

It serves osquery's real Thrift ``ExtensionManager`` service (osquery-python's generated
Processor) on a UNIX socket, and calls extensions the way osqueryd's ``callExtension()`` does.
What it mirrors comes from osquery 5.23 (``osquery/osquery``) and is cited next to each rule:

* ``registerExtension`` refuses a duplicate extension name, an SDK older than 1.7.7, and any
  plugin name that already exists (core plugins, ``aws_kinesis``/``aws_firehose`` on a stock
  build, and every plugin of a live extension), with osquery's exact messages.
  (``osquery/extensions/interface.cpp``, ``osquery/registry/registry_factory.cpp``)
* ``options()`` answers ``{name: InternalOptionInfo(value, default_value, type)}`` for the flags
  osqueryd defines plus ``custom_*`` config options, read live. (``osquery/core/flags.cpp``)
* ``call()`` opens a new connection and pings (10 s timeout), closes it, then opens another new
  connection for the call and closes that; failures become status code 1 with osquery's
  messages, never exceptions. (``osquery/extensions/extensions.cpp``)
* A non-zero answer to a ``string``/``snapshot`` logger call is fatal to osqueryd
  (``requestShutdown(EXIT_CATASTROPHIC)`` in ``osquery/dispatcher/scheduler.cpp``): here it
  raises :class:`FatalLoggerAnswer`.
* Autoload safety and the launch command line follow ``isFileSafe``/``safePermissions``
  (``osquery/extensions/extensions.cpp``, ``osquery/filesystem/filesystem.cpp``,
  ``osquery/filesystem/posix/fileops.cpp``) and ``launchExtension``
  (``osquery/process/posix/process.cpp``).

Not modelled: osqueryd's own pinging of extensions (use :meth:`OsquerydStandIn.deregister`),
respawning, the watchdog, and any real SQL (``query()`` knows a few tables, see ``_TABLES``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import select
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from osquery.extensions import Extension, ExtensionManager
from osquery.extensions.ttypes import (
    ExtensionResponse,
    ExtensionStatus,
    InternalExtensionInfo,
    InternalOptionInfo,
)
from thrift.protocol import TBinaryProtocol
from thrift.transport import TSocket, TTransport

__all__ = [
    "BUILTIN_AWS_PLUGINS",
    "AutoloadRefused",
    "FatalLoggerAnswer",
    "OsquerydStandIn",
]

EXT_SUCCESS = 0  # osquery's ExtensionCode::EXT_SUCCESS
EXT_FAILED = 1  # osquery's ExtensionCode::EXT_FAILED

#: Logger plugins compiled into stock osqueryd builds (OSQUERY_BUILD_AWS=ON, cmake/options.cmake).
BUILTIN_AWS_PLUGINS = ("aws_kinesis", "aws_firehose")

# interface.cpp kSDKVersionChanges: an extension reporting an older sdk_version is refused.
_MIN_SDK_VERSION = "1.7.7"

# Plugins every Linux osqueryd has (REGISTER(...) in plugins/). Names here conflict with an
# extension's plugins exactly like the AWS ones do. Tables are a token few of the hundreds.
_CORE_PLUGINS: dict[str, frozenset[str]] = {
    "logger": frozenset({"filesystem", "stdout", "syslog", "tls", "kafka_producer"}),
    "config": frozenset({"filesystem", "tls", "update"}),
    "table": frozenset({"osquery_info", "osquery_flags", "osquery_extensions", "system_info"}),
}
# Registries osqueryd creates; broadcasting another one is refused ("Unknown registry: X").
_CORE_REGISTRIES = frozenset(
    {
        "config",
        "config_parser",
        "database",
        "distributed",
        "enroll",
        "event_publisher",
        "event_subscriber",
        "killswitch",
        "logger",
        "numeric_monitoring",
        "sql",
        "table",
    }
)

# name -> (gflags type, default, cli_only). Types are gflags' spellings, which is what
# options() reports. CLI-only flags (CLI_FLAG) cannot be changed by a config update.
_CORE_FLAGS: dict[str, tuple[str, str, bool]] = {
    "allow_unsafe": ("bool", "false", False),
    "config_plugin": ("string", "filesystem", True),
    "config_refresh": ("uint64", "0", True),
    "decorations_top_level": ("bool", "false", False),
    "disable_extensions": ("bool", "false", True),
    "disable_logging": ("bool", "false", False),
    "disable_watchdog": ("bool", "false", True),
    "enable_extensions_watchdog": ("bool", "false", True),
    "ephemeral": ("bool", "false", False),
    "extensions_autoload": ("string", "/etc/osquery/extensions.load", True),
    "extensions_interval": ("string", "3", True),
    "extensions_require": ("string", "", True),
    "extensions_socket": ("string", "/var/osquery/osquery.em", True),
    "extensions_timeout": ("string", "3", True),
    "host_identifier": ("string", "hostname", False),
    "logger_event_type": ("bool", "true", False),
    "logger_min_status": ("int32", "0", False),
    "logger_min_stderr": ("int32", "0", False),
    "logger_mode": ("string", "0640", True),
    "logger_numerics": ("bool", "false", False),
    "logger_path": ("string", "/var/log/osquery/", False),
    "logger_plugin": ("string", "filesystem", True),
    "logger_snapshot_event_type": ("bool", "false", False),
    "logger_stderr": ("bool", "true", True),
    "logger_tls_endpoint": ("string", "", False),
    "logger_tls_period": ("uint64", "4", False),
    "schedule_default_interval": ("uint64", "3600", False),
    "schedule_splay_percent": ("uint64", "10", False),
    "specified_identifier": ("string", "", False),
    "thrift_timeout": ("uint32", "300", False),
    "tls_hostname": ("string", "", True),
    "verbose": ("bool", "false", False),
    "watchdog_level": ("int32", "0", True),
    # plugins/logger/buffered.cpp is built with or without AWS (the TLS logger uses it too).
    "buffered_log_max": ("uint64", "1000000", False),
}

# The aws_* flags exist only on builds with OSQUERY_BUILD_AWS=ON
# (osquery/utils/aws/aws_util.cpp, plugins/logger/aws_kinesis.cpp, aws_firehose.cpp).
_AWS_FLAGS: dict[str, tuple[str, str, bool]] = {
    "aws_access_key_id": ("string", "", False),
    "aws_secret_access_key": ("string", "", False),
    "aws_session_token": ("string", "", False),
    "aws_profile_name": ("string", "", False),
    "aws_region": ("string", "", False),
    "aws_sts_arn_role": ("string", "", False),
    "aws_sts_region": ("string", "", False),
    "aws_sts_session_name": ("string", "default", False),
    "aws_sts_timeout": ("uint64", "3600", False),
    "aws_enable_proxy": ("bool", "false", False),
    "aws_proxy_scheme": ("string", "https", False),
    "aws_proxy_host": ("string", "", False),
    "aws_proxy_port": ("uint32", "0", False),
    "aws_proxy_username": ("string", "", False),
    "aws_proxy_password": ("string", "", False),
    "aws_debug": ("bool", "false", False),
    "aws_imdsv2_request_attempts": ("uint32", "3", False),
    "aws_imdsv2_request_interval": ("uint32", "3", False),
    "aws_disable_imdsv1_fallback": ("bool", "false", False),
    "aws_enforce_fips": ("bool", "false", True),
    "aws_kinesis_stream": ("string", "", False),
    "aws_kinesis_period": ("uint64", "10", False),
    "aws_kinesis_random_partition_key": ("bool", "false", False),
    "aws_kinesis_disable_log_status": ("bool", "false", False),
    "aws_kinesis_endpoint": ("string", "", False),
    "aws_kinesis_region": ("string", "", False),
    "aws_firehose_stream": ("string", "", False),
    "aws_firehose_period": ("uint64", "10", False),
    "aws_firehose_endpoint": ("string", "", False),
    "aws_firehose_region": ("string", "", False),
}

# sockaddr_un.sun_path is 108 bytes including the NUL; the longest extension socket is ".65535".
_MAX_UNIX_PATH = 107
_PING_TIMEOUT_S = 10.0  # extensionPathActive(): "Create a client with a 10-second receive timeout"
_POLL_S = 0.1


class FatalLoggerAnswer(Exception):
    """osqueryd would call requestShutdown(EXIT_CATASTROPHIC): a string/snapshot call answered
    non-zero or raised."""

    def __init__(self, message: str, response: Any = None) -> None:
        super().__init__(message)
        self.response = response


class AutoloadRefused(Exception):
    """osqueryd would not autoload (or respawn) this extension binary; the message says why."""


# ---------------------------------------------------------------------------------------------
# Thrift plumbing


class _BytesFaithfulProtocol(TBinaryProtocol.TBinaryProtocol):  # type: ignore[misc]
    """osqueryd's C++ client sends a std::string's bytes as they are, valid UTF-8 or not; a test
    passes such bytes as a str with surrogate escapes ("\\udcff" for the byte 0xff)."""

    def writeString(self, value: str) -> None:
        self.writeBinary(value.encode("utf-8", "surrogateescape"))


@contextlib.contextmanager
def _extension_client(path: str, timeout_s: float) -> Iterator[Any]:
    """One fresh connection to an extension socket, closed afterwards, like osquery's
    ExtensionClient (TBufferedTransport + TBinaryProtocol, send and receive timeouts)."""
    sock = TSocket.TSocket(unix_socket=path)
    sock.setTimeout(int(timeout_s * 1000))
    transport = TTransport.TBufferedTransport(sock)
    client = Extension.Client(_BytesFaithfulProtocol(transport))
    transport.open()
    try:
        yield client
    finally:
        transport.close()


class _ManagerHandler(ExtensionManager.Iface):  # type: ignore[misc]
    """The ExtensionManager service; every answer is built by the stand-in under its lock."""

    def __init__(self, standin: OsquerydStandIn) -> None:
        self._s = standin

    def ping(self) -> Any:
        self._s._note("ping")
        # ExtensionHandler::ping on the manager: code 0, uuid 0 (the core), message "pong".
        return ExtensionStatus(code=EXT_SUCCESS, message="pong", uuid=0)

    def call(self, registry: str, item: str, request: dict[str, str]) -> Any:
        self._s._note("call", registry, item, request)
        # Extensions calling into osqueryd's own registries is not modelled.
        return _response(EXT_FAILED, f"stand-in does not route core registry calls: {registry}")

    def shutdown(self) -> None:
        self._s._note("shutdown")  # ExtensionHandler::shutdown() is empty in impl_thrift.cpp

    def extensions(self) -> dict[int, Any]:
        self._s._note("extensions")
        return self._s._extensions()

    def options(self) -> dict[str, Any]:
        self._s._note("options")
        return self._s._options()

    def registerExtension(self, info: Any, registry: Any) -> Any:
        self._s._note("registerExtension", info, registry)
        return self._s._register(info, registry)

    def deregisterExtension(self, uuid: int) -> Any:
        self._s._note("deregisterExtension", uuid)
        return self._s._deregister_rpc(uuid)

    def query(self, sql: str) -> Any:
        self._s._note("query", sql)
        return self._s._query(sql, columns_only=False)

    def getQueryColumns(self, sql: str) -> Any:
        self._s._note("getQueryColumns", sql)
        return self._s._query(sql, columns_only=True)


def _response(code: int, message: str, rows: list[dict[str, str]] | None = None) -> Any:
    # C++ Thrift writes every default-requiredness field, so a failed status still carries uuid 0.
    return ExtensionResponse(status=ExtensionStatus(code=code, message=message, uuid=0), response=rows or [])


def _version_at_least(required: str, given: str) -> bool:
    """osquery's versionAtLeast (osquery/utils/info/version.cpp), chunk by chunk."""
    if required == "0.0.0" or given == "0.0.0":
        return True
    req = [c.strip() for c in required.split(".") if c]
    for index, chunk in enumerate(c.strip() for c in given.split(".") if c):
        if index >= len(req):
            return True
        try:
            if int(chunk) < int(req[index]):
                return False
            if int(chunk) > int(req[index]):
                return True
        except ValueError:
            if chunk < req[index]:
                return False
    return True


# ---------------------------------------------------------------------------------------------
# The stand-in


class OsquerydStandIn:
    """osqueryd's extension manager on ``directory / "osquery.em"``.

    ``builtin_aws=True`` models a stock build (AWS loggers and aws_* flags compiled in);
    ``False`` a build made with ``-DOSQUERY_BUILD_AWS=OFF``. ``flags`` are osqueryd command-line
    flags (a name osqueryd does not define raises ValueError, as osqueryd refuses to start);
    ``custom_options`` are ``custom_*`` config options.
    """

    def __init__(
        self,
        directory: Path,
        *,
        builtin_aws: bool = False,
        flags: dict[str, str] | None = None,
        custom_options: dict[str, str] | None = None,
        version: str = "5.23.0",
        host_identifier: str = "standin-host",
    ) -> None:
        self.directory = Path(directory)
        self.socket_path: str = str(self.directory / "osquery.em")
        if len(os.fsencode(self.socket_path + ".65535")) > _MAX_UNIX_PATH:
            raise ValueError(f"socket path too long for AF_UNIX: {self.socket_path}")
        self.builtin_aws = builtin_aws
        self.version = version
        self.host_identifier = host_identifier

        self._flag_table = dict(_CORE_FLAGS)
        if builtin_aws:
            self._flag_table.update(_AWS_FLAGS)
        # The socket flag reports where this manager actually listens.
        self._flag_values: dict[str, str] = {"extensions_socket": self.socket_path}
        for name, value in (flags or {}).items():
            if name not in self._flag_table:
                raise ValueError(
                    f"osqueryd defines no flag {name!r}"
                    + ("" if builtin_aws else " (aws_* flags need builtin_aws=True)")
                )
            self._flag_values[name] = value
        self._custom: dict[str, str] = {}
        self.registered: dict[int, tuple[Any, dict[str, dict[str, list[Any]]]]] = {}
        self.register_answers: list[Any] = []
        #: every RPC the manager served, in order: (method, args...)
        self.manager_requests: list[tuple[Any, ...]] = []
        #: every call() made: (uuid, registry, item, request, response)
        self.calls: list[tuple[int, str, str, dict[str, str], Any]] = []
        #: reasons read_autoload_file() dropped entries, as (path, reason)
        self.autoload_refusals: list[tuple[Path, str]] = []

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._uuids = random.Random()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._connections: dict[socket.socket, threading.Thread] = {}
        for name, value in (custom_options or {}).items():
            self.set_custom_option(name, value)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on :attr:`socket_path`; one thread per connection (the extension's watcher keeps
        a connection open and pings on it while other connections come and go)."""
        if self._listener is not None:
            raise RuntimeError("already started")
        self.directory.mkdir(parents=True, exist_ok=True)
        # ExtensionRunnerCore::startServer removes stale sockets (manager and manager.*) first.
        for stale in [self.socket_path, *map(str, self.directory.glob("osquery.em.*"))]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.socket_path)
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        self._stopping.clear()
        with self._lock:
            # A restarted osqueryd (new worker) has a new manager that knows no extensions.
            self.registered.clear()
        self._listener = listener
        self._acceptor = threading.Thread(
            target=self._accept_loop, args=(listener,), name="standin-accept", daemon=True
        )
        self._acceptor.start()

    def stop(self) -> None:
        """Go away like a dead osqueryd: the socket file disappears (connect fails) and open
        connections are cut (so an extension's watcher ping fails)."""
        self._stopping.set()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
            self._acceptor = None
        self._listener = None
        with self._lock:
            connections = list(self._connections.items())
        for conn, _ in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _, thread in connections:
            thread.join(timeout=5)

    def __enter__(self) -> OsquerydStandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self, listener: socket.socket) -> None:
        # poll, not select: a test process past 1,024 descriptors (a test that leaked some)
        # must not take every later test's stand-in down with it.
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        try:
            while not self._stopping.is_set():
                # Poll rather than block in accept(): closing a socket another thread is
                # blocked on does not reliably wake it.
                if not poller.poll(_POLL_S * 1000):
                    continue
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                conn.setblocking(True)
                thread = threading.Thread(
                    target=self._serve_connection, args=(conn,), name="standin-conn", daemon=True
                )
                with self._lock:
                    self._connections[conn] = thread
                thread.start()
        finally:
            listener.close()

    def _serve_connection(self, conn: socket.socket) -> None:
        handle = TSocket.TSocket()
        handle.setHandle(conn)
        transport = TTransport.TBufferedTransport(handle)
        protocol = TBinaryProtocol.TBinaryProtocol(transport)
        processor = ExtensionManager.Processor(_ManagerHandler(self))
        try:
            while not self._stopping.is_set():
                processor.process(protocol, protocol)
        except (TTransport.TTransportException, OSError, EOFError):
            pass  # the client hung up, or stop() cut the connection
        finally:
            conn.close()
            with self._lock:
                self._connections.pop(conn, None)

    def _note(self, method: str, *args: Any) -> None:
        with self._lock:
            self.manager_requests.append((method, *args))

    # -- flags and options ------------------------------------------------------------------------

    def set_flag(self, name: str, value: str) -> None:
        """A config update setting a flag osqueryd defines; later options() calls see it.

        Like osquery's options parser: an empty value is skipped, an unknown name or a
        CLI-only flag (e.g. logger_plugin) cannot be set this way (ValueError here)."""
        if name.startswith("custom_"):
            self.set_custom_option(name, value)
            return
        if name not in self._flag_table:
            raise ValueError(f"Cannot set unknown or invalid flag: {name}")
        if self._flag_table[name][2]:
            raise ValueError(f"The CLI only flag --{name} set via config file will be ignored")
        if value == "":
            return
        with self._lock:
            self._flag_values[name] = value

    def set_custom_option(self, name: str, value: str) -> None:
        """A ``custom_*`` config option; osquery keeps those although it defines no such flag."""
        if not name.startswith("custom_"):
            raise ValueError(f"Cannot set unknown or invalid flag: {name}")
        if value == "":
            return  # OptionsConfigParserPlugin::update skips empty values
        with self._lock:
            self._custom[name] = value

    def flag(self, name: str) -> str:
        """The current value osqueryd would report for a flag or custom option."""
        with self._lock:
            if name in self._custom:
                return self._custom[name]
            if name in self._flag_values:
                return self._flag_values[name]
            return self._flag_table[name][1]

    def _options(self) -> dict[str, Any]:
        with self._lock:
            options = {
                name: InternalOptionInfo(
                    value=self._flag_values.get(name, default), default_value=default, type=kind
                )
                for name, (kind, default, _) in self._flag_table.items()
            }
            # Flag::flags(): custom options are {"string", default "", value}.
            for name, value in self._custom.items():
                options[name] = InternalOptionInfo(value=value, default_value="", type="string")
            return options

    # -- registration ---------------------------------------------------------------------------

    def _existing_plugins(self) -> dict[str, set[str]]:
        names = {registry: set(items) for registry, items in _CORE_PLUGINS.items()}
        if self.builtin_aws:
            names["logger"].update(BUILTIN_AWS_PLUGINS)
        for _, routes in self.registered.values():
            for registry, items in routes.items():
                names.setdefault(registry, set()).update(items)
        return names

    def _register(self, info: Any, registry: Any) -> Any:
        routes: dict[str, dict[str, list[Any]]] = {
            str(r): dict(items or {}) for r, items in (registry or {}).items()
        }
        with self._lock:
            status = self._register_status(info, routes)
            self.register_answers.append(status)
            self._changed.notify_all()
            return status

    def _register_status(self, info: Any, routes: dict[str, dict[str, list[Any]]]) -> Any:
        # Order and wording of ExtensionManagerInterface::registerExtension + addBroadcast.
        if any(known.name == info.name for known, _ in self.registered.values()):
            return ExtensionStatus(code=EXT_FAILED, message="Duplicate extension registered", uuid=0)
        if not _version_at_least(_MIN_SDK_VERSION, info.sdk_version or ""):
            return ExtensionStatus(code=EXT_FAILED, message="Incompatible extension SDK version", uuid=0)
        existing = self._existing_plugins()
        # addBroadcast walks std::maps: registries, then items, in sorted order.
        for registry in sorted(routes):
            for item in sorted(routes[registry]):
                if registry in _CORE_REGISTRIES and item in existing.get(registry, ()):
                    return ExtensionStatus(
                        code=EXT_FAILED,
                        message="Failed adding registry: Registry item "
                        f"{item} conflicts with another item of the same name.",
                        uuid=0,
                    )
        for registry in sorted(routes):
            if registry not in _CORE_REGISTRIES:
                return ExtensionStatus(
                    code=EXT_FAILED,
                    message=f"Failed adding registry: Unknown registry: {registry}",
                    uuid=0,
                )
        # UuidGenerator: uint16(rand() + 1), redrawn while in use.
        uuid = self._uuids.randint(1, 65535)
        while uuid in self.registered:
            uuid = self._uuids.randint(1, 65535)
        self.registered[uuid] = (info, routes)
        return ExtensionStatus(code=EXT_SUCCESS, message="OK", uuid=uuid)

    def wait_registered(self, timeout: float = 10.0) -> int:
        """The uuid of the earliest-registered live extension; TimeoutError if none in time."""
        with self._changed:
            if not self._changed.wait_for(lambda: bool(self.registered), timeout=timeout):
                raise TimeoutError(f"no extension registered within {timeout} s")
            first: int = next(iter(self.registered))
            return first

    def extension_socket(self, uuid: int) -> str:
        """Where extension ``uuid`` serves (getExtensionSocket: manager path + "." + uuid)."""
        return f"{self.socket_path}.{uuid}"

    def deregister(self, uuid: int) -> None:
        """Drop an extension as osqueryd's watcher does after a failed ping (removeBroadcast)."""
        with self._lock:
            del self.registered[uuid]
            self._changed.notify_all()

    def _deregister_rpc(self, uuid: int) -> Any:
        with self._lock:
            if uuid not in self.registered:
                return ExtensionStatus(code=EXT_FAILED, message="No extension UUID found", uuid=0)
            del self.registered[uuid]
            self._changed.notify_all()
        # On success osquery answers with the *manager's* uuid (0), not the removed one.
        return ExtensionStatus(code=EXT_SUCCESS, message="OK", uuid=0)

    def _extensions(self) -> dict[int, Any]:
        with self._lock:
            return {
                uuid: InternalExtensionInfo(
                    name=info.name,
                    version=info.version,
                    sdk_version=info.sdk_version,
                    min_sdk_version=info.min_sdk_version,
                )
                for uuid, (info, _) in self.registered.items()
            }

    # -- query ----------------------------------------------------------------------------------

    def _table_rows(self, table: str) -> list[dict[str, str]] | None:
        if table == "osquery_info":
            return [
                {
                    "pid": str(os.getpid()),
                    "uuid": "00000000-0000-0000-0000-000000000000",
                    "instance_id": "00000000-0000-0000-0000-000000000001",
                    "version": self.version,
                    "config_hash": "",
                    "config_valid": "1",
                    "extensions": "active",
                    "build_platform": "linux",
                    "build_distro": "centos7",
                    "start_time": str(int(time.time())),
                    "watcher": "-1",
                    "platform_mask": "9",
                }
            ]
        if table == "system_info":
            return [
                {
                    "hostname": self.host_identifier,
                    "uuid": "00000000-0000-0000-0000-000000000000",
                    "computer_name": self.host_identifier,
                    "local_hostname": self.host_identifier,
                }
            ]
        if table == "osquery_flags":
            return [
                {
                    "name": name,
                    "type": option.type,
                    "description": "",
                    "default_value": option.default_value,
                    "value": option.value,
                    "shell": "0",
                }
                for name, option in sorted(self._options().items())
            ]
        if table == "osquery_extensions":
            rows = [
                {
                    "uuid": "0",
                    "name": "core",
                    "version": self.version,
                    "sdk_version": "0.0.0",
                    "path": self.socket_path,
                    "type": "core",
                }
            ]
            for uuid, info in sorted(self._extensions().items()):
                rows.append(
                    {
                        "uuid": str(uuid),
                        "name": info.name,
                        "version": info.version,
                        "sdk_version": info.sdk_version,
                        "path": self.extension_socket(uuid),
                        "type": "extension",
                    }
                )
            return rows
        return None

    _SELECT = re.compile(
        r"^\s*select\s+(?P<cols>.+?)\s+from\s+(?P<table>\w+)"
        r"(?:\s+where\s+(?P<wcol>\w+)\s*=\s*'(?P<wval>[^']*)')?\s*;?\s*$",
        re.IGNORECASE | re.DOTALL,
    )

    def _query(self, sql: str, *, columns_only: bool) -> Any:
        """``SELECT cols FROM table [WHERE col = 'v']`` over the tables in ``_table_rows``."""
        match = self._SELECT.match(sql)
        if match is None:
            return _response(EXT_FAILED, f"stand-in cannot run this SQL: {sql}")
        table = match["table"].lower()
        with self._lock:
            rows = self._table_rows(table)
        if rows is None:
            return _response(EXT_FAILED, f"no such table: {table}")
        known = list(rows[0]) if rows else []
        wanted = [c.strip() for c in match["cols"].split(",")]
        columns = known if wanted == ["*"] else wanted
        for column in [*columns, *([match["wcol"]] if match["wcol"] else [])]:
            if column not in known:
                return _response(EXT_FAILED, f"no such column: {column}")
        if columns_only:
            return _response(EXT_SUCCESS, "OK", [{c: "TEXT"} for c in columns])
        if match["wcol"]:
            rows = [r for r in rows if r[match["wcol"]] == match["wval"]]
        return _response(EXT_SUCCESS, "OK", [{c: r[c] for c in columns} for r in rows])

    # -- calling an extension -------------------------------------------------------------------

    def call(
        self,
        uuid: int,
        registry: str,
        item: str,
        request: dict[str, str],
        timeout: float = 10.0,
    ) -> Any:
        """Call extension ``uuid`` exactly as osqueryd's callExtension() does; return the
        ExtensionResponse. Failures become status 1 with osquery's messages, not exceptions.

        ``timeout`` is the call connection's send/receive timeout (osquery uses --thrift_timeout,
        300 s; shorter here so a hung test fails quickly)."""
        path = self.extension_socket(uuid)
        response = self._call_extension(path, registry, item, request, timeout)
        with self._lock:
            self.calls.append((uuid, registry, item, dict(request), response))
        return response

    def _call_extension(
        self, path: str, registry: str, item: str, request: dict[str, str], timeout: float
    ) -> Any:
        # extensionPathActive(path, use_timeout=false): socketExists (present and writable),
        # then a ping on its own connection; one attempt, any failure is "not available".
        unavailable = _response(EXT_FAILED, f"Extension socket not available: {path}")
        if not (os.path.exists(path) and os.access(path, os.W_OK)):
            return unavailable
        try:
            with _extension_client(path, _PING_TIMEOUT_S) as client:
                client.ping()  # its answer is ignored: any answer means "active"
        except Exception:
            return unavailable
        # Then a second, new connection for the call itself.
        try:
            with _extension_client(path, timeout) as client:
                response = client.call(registry, item, request)
        except Exception as e:
            return _response(EXT_FAILED, f"Extension call failed: {e}")
        if response.status is None:
            # A C++ client reads a missing status as a default-constructed one: code 0.
            response.status = ExtensionStatus(code=EXT_SUCCESS, message="", uuid=0)
        if response.response is None:
            response.response = []
        return response

    def _fatal_call(self, uuid: int, plugin: str, request: dict[str, str]) -> Any:
        response = self.call(uuid, "logger", plugin, request)
        if response.status.code != EXT_SUCCESS:
            raise FatalLoggerAnswer(
                f"Error logging the results of query: code {response.status.code}: {response.status.message}",
                response,
            )
        return response

    def log_string(self, uuid: int, plugin: str, line: str, category: str = "event") -> Any:
        """A result line (logString); non-zero or failed answers raise FatalLoggerAnswer."""
        return self._fatal_call(uuid, plugin, {"string": line, "category": category})

    def log_snapshot(self, uuid: int, plugin: str, line: str) -> Any:
        """A snapshot line (logSnapshotQuery); same fatal rule as log_string."""
        return self._fatal_call(uuid, plugin, {"snapshot": line})

    def log_status(self, uuid: int, plugin: str, entries: list[dict[str, Any]]) -> Any:
        """Buffered status logs (relayStatusLogs); osqueryd ignores the answer."""
        log = json.dumps(entries, separators=(",", ":"), ensure_ascii=False)
        return self.call(uuid, "logger", plugin, {"status": "true", "log": log})

    def init(self, uuid: int, plugin: str, name: str = "osqueryd") -> Any:
        """initLogger's ``{"init": <process name>}``; osqueryd ignores the answer."""
        return self.call(uuid, "logger", plugin, {"init": name})

    def features(self, uuid: int, plugin: str) -> int:
        """initLogger's features request: the status code, read as a bitmask (1 = status logs,
        2 = events). Note a failed call's code 1 also reads as "send me status logs"."""
        return int(self.call(uuid, "logger", plugin, {"action": "features"}).status.code)

    # -- realistic payloads ---------------------------------------------------------------------

    @staticmethod
    def _calendar_time(unix_time: int) -> str:
        # toAsciiTime: asctime() of gmtime, trimmed, plus " UTC" ("Sun Nov  1 ..." keeps asctime's
        # space-padded day).
        return time.asctime(time.gmtime(unix_time)) + " UTC"

    def status_entry(
        self, message: str, severity: int = 0, filename: str = "x.cpp", line: int = 1
    ) -> dict[str, Any]:
        """One status-array entry, keys in serializeIntermediateLog's order: s,f,i,m,h,c,u."""
        now = int(time.time())
        return {
            "s": severity,
            "f": filename,
            "i": line,
            "m": message,
            "h": self.host_identifier,
            "c": self._calendar_time(now),
            "u": now,
        }

    def result_line(
        self,
        name: str = "pack_x_time",
        columns: dict[str, str] | None = None,
        *,
        pad_to: int = 0,
        action: str = "added",
        decorations: dict[str, str] | None = None,
        epoch: int = 0,
        counter: int = 0,
    ) -> str:
        """One event-format result line as serializeQueryLogItemAsEventsJSON writes it (compact
        JSON, osquery's key order). With ``pad_to``, a ``padding`` column grows the line to
        exactly ``pad_to`` UTF-8 bytes when it is shorter."""
        now = int(time.time())
        cols = dict(columns) if columns is not None else {"hour": "14", "minutes": "0"}
        record: dict[str, Any] = {
            "name": name,
            "hostIdentifier": self.host_identifier,
            "calendarTime": self._calendar_time(now),
            "unixTime": now,
            "epoch": epoch,
            "counter": counter,
            "numerics": self.flag("logger_numerics") == "true",
        }
        decos = {"host_uuid": "00000000-0000-0000-0000-000000000000"}
        if decorations is not None:
            decos = decorations
        if decos:  # osquery omits the key when there are no decorations
            record["decorations"] = decos
        record["columns"] = cols
        record["action"] = action

        def dump() -> str:
            return json.dumps(record, separators=(",", ":"), ensure_ascii=False)

        if pad_to:
            cols["padding"] = ""
            short = len(dump().encode())
            cols["padding"] = "x" * max(0, pad_to - short)
        return dump()

    # -- autoload -------------------------------------------------------------------------------

    def autoload_check(self, path: Path) -> None:
        """Raise AutoloadRefused unless osqueryd would autoload ``path`` (isFileSafe with
        safePermissions(parent, path, executable=true), checked in osquery's order).

        Faithful details: the file owner must be root or the *real* uid (``getuid()``, not
        euid); group-writable is allowed (only S_IWOTH is refused); the sticky-bit test is on
        the parent as written, so a bare relative name (parent "") is refused; symlinks are
        followed for owner and mode."""
        text = str(path).strip()
        unsafe = f"Will not autoload extension with unsafe directory permissions: {text}"
        if os.path.isdir(text):
            raise AutoloadRefused(f"Cannot autoload extension from directory: {text}")
        if not os.path.lexists(text):
            raise AutoloadRefused(f"extension doesn't exist at: {text}")
        parent = os.path.dirname(text)
        try:
            parent_mode = os.stat(parent).st_mode
        except OSError as e:
            raise AutoloadRefused(f"{unsafe} (cannot stat directory {parent!r}: {e})") from e
        if parent_mode & stat.S_ISVTX:
            raise AutoloadRefused(f"{unsafe} (directory has the sticky bit)")
        try:
            fd = os.open(text, os.O_RDONLY)
        except OSError as e:
            raise AutoloadRefused(f"{unsafe} (cannot open: {e})") from e
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise AutoloadRefused(f"{unsafe} (a directory)")
        if st.st_uid not in (0, os.getuid()):
            raise AutoloadRefused(f"{unsafe} (owner uid {st.st_uid} is neither root nor us)")
        if not st.st_mode & stat.S_IXUSR:
            raise AutoloadRefused(f"{unsafe} (owner-execute bit not set)")
        if st.st_mode & stat.S_IWOTH:
            raise AutoloadRefused(f"{unsafe} (world-writable)")
        if os.path.splitext(text)[1] != ".ext":
            raise AutoloadRefused(f"Will not autoload extension not ending in one of '.ext': {text}")

    def read_autoload_file(self, path: Path, *, check: bool = True) -> list[Path]:
        """The binaries osqueryd would autoload from an ``--extensions_autoload`` file
        (loadExtensions): lines are trimmed, blank/``#``/``;`` lines skipped, a directory is
        expanded recursively (no dot-files, as glob(3) does). With ``check``, unsafe entries are
        dropped and their reasons appended to :attr:`autoload_refusals`. Sorted and
        de-duplicated, as osquery keeps them in a std::set; a missing file gives []."""
        try:
            content = Path(path).read_text()
        except OSError:
            return []
        candidates: list[str] = []
        for raw in content.split("\n"):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if os.path.isdir(line):
                for root, dirs, files in os.walk(line):
                    dirs[:] = [d for d in dirs if not d.startswith(".")]
                    candidates += [os.path.join(root, f) for f in files if not f.startswith(".")]
            else:
                candidates.append(line)
        accepted: set[str] = set()
        for candidate in candidates:
            if check:
                try:
                    self.autoload_check(Path(candidate))
                except AutoloadRefused as refused:
                    self.autoload_refusals.append((Path(candidate), str(refused)))
                    continue
            accepted.add(candidate)
        return [Path(p) for p in sorted(accepted)]

    def spawn(
        self,
        path: Path,
        *,
        verbose: bool = False,
        timeout: int = 3,
        interval: int = 3,
        env: dict[str, str] | None = None,
        stderr: Any = None,
    ) -> subprocess.Popen[bytes]:
        """Launch an extension as osqueryd's watcher does (createExtension/launchExtension):
        safety check on the absolute path, then exec
        ``path [--verbose] --socket S --timeout T --interval I`` with this environment (plus
        ``env``) and ``OSQUERY_EXTENSION`` set to the extension's own pid.

        osquery sets OSQUERY_EXTENSION to getpid() in the forked child before execve, i.e. the
        extension's pid. A /bin/sh that execs in place keeps its pid, so ``$$`` is that pid and
        the extension ends as a single process whose argv is exactly the list above."""
        exec_path = os.path.abspath(path)  # fs::system_complete: absolute, symlinks kept
        self.autoload_check(Path(exec_path))
        argv = [exec_path, *(["--verbose"] if verbose else [])]
        argv += ["--socket", self.socket_path, "--timeout", str(timeout)]
        argv += ["--interval", str(interval)]
        child_env = dict(os.environ)
        child_env.update(env or {})
        shim = 'OSQUERY_EXTENSION=$$; export OSQUERY_EXTENSION; exec "$0" "$@"'
        return subprocess.Popen(
            ["/bin/sh", "-c", shim, *argv],
            env=child_env,
            stdin=subprocess.DEVNULL,
            stderr=stderr,
        )
