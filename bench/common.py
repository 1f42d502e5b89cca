# ruff: noqa: PLR0917  (the driver function is sent to other processes with its arguments)
"""What every part of `make bench` shares: /proc readings, kinesalite, the extensions under test,
and the driver processes that call them exactly as the osqueryd stand-in does."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from osquery_aws_logger.spool.ledger import Ledger
from tests.harness import RunningExtension, wait_for
from tests.localaws import free_port, make_client
from tests.osqueryd_standin import OsquerydStandIn

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"  # scratch (gitignored): spools, logs, sockets' work dirs
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- /proc ------------------------------------------------------------------------------------

def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of one process (its threads included, its children not)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime (fields 14, 15)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process."""
    return sum(cpu_split(pid))


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS since start) in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": sys.version.split()[0],
            "kernel": os.uname().release}


def source_state() -> dict[str, Any]:
    """Which extension code is measured: the commit, and a digest of the package's files as
    they are on disk (each extension process imports them when it starts)."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "osquery_aws_logger").rglob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "osquery_aws_logger"], cwd=ROOT,
                           capture_output=True, text=True, check=False).stdout.strip()
    return {"commit": commit, "package_uncommitted_changes": bool(dirty),
            "package_digest": digest.hexdigest()[:16]}


def dir_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (their sizes, as the spool counts them)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- kinesalite ---------------------------------------------------------------------------------

class Kinesalite:
    """kinesalite (npm, bench/node_modules) with the service-side counters of bench/kinesalite.js."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    def __enter__(self) -> Kinesalite:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["node", str(BENCH / "kinesalite.js"), str(self.port)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        wait_for(self._answers, 15, "kinesalite to listen")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"kinesalite exited with {self.proc.returncode}; see {self.log}")
        try:
            self.stats()
            return True
        except OSError:
            return False

    def _bench(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)

    def stats(self) -> dict[str, Any]:
        return dict(self._bench("/__bench/stats"))

    def reset(self) -> None:
        self._bench("/__bench/reset", "POST")

    def listen(self, port: int) -> None:
        """Serve the same streams on `port` too: the endpoint that was down comes back."""
        self._bench(f"/__bench/listen?port={port}", "POST")

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client("kinesis", self.url)
        return self._client

    def create_stream(self, name: str) -> None:
        self.client.create_stream(StreamName=name, ShardCount=1)
        wait_for(lambda: self.client.describe_stream_summary(StreamName=name)
                 ["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE", 10, f"stream {name}")


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    port = free_port()
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        raise RuntimeError(f"port {port} answered")
    return port


# -- the extensions under test ------------------------------------------------------------------

def bare_ext(directory: Path) -> Path:
    """An autoloadable .ext that execs the bare osquery-python logger (bench/bare_logger.py)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bare-logger.ext"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{BENCH / "bare_logger.py"}" "$@"\n')
    path.chmod(0o755)
    return path


class Extension(RunningExtension):
    """tests.harness.RunningExtension (stand-in + the real process), for a bench.

    `bare=True` runs bench/bare_logger.py instead of osquery-aws-logger. The stand-in keeps
    every call it makes in a list; the drivers here call from their own processes, so that list
    stays empty.
    """

    def __init__(self, work: Path, *, bare: bool = False, **kwargs: Any) -> None:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        super().__init__(work, **kwargs)
        if bare:
            self.ext = bare_ext(work / "bin")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def cpu_split(self) -> tuple[float, float]:
        return cpu_split(self.pid)

    def memory(self) -> dict[str, int]:
        return memory(self.pid)

    def acked(self, service: str) -> int:
        """The highest spool sequence number the extension has delivered."""
        return acked_seq(self.spool_dir / service)

    def stop(self, timeout: float = 20) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def acked_seq(spool: Path) -> int:
    """The highest sequence number a spool directory's ledger says was delivered (read as the
    spool reads it at start); 0 when there is none yet."""
    try:
        fd = os.open(spool, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return 0
    try:
        position = Ledger().read(fd)
    except OSError:
        return 0
    finally:
        os.close(fd)
    return position[0] if position is not None else 0


# -- drivers --------------------------------------------------------------------------------------

LINE_NAME = "pack_bench_query"


def line_template(line_bytes: int) -> str:
    """One osquery result line of exactly `line_bytes` bytes, with fixed-width slots for the
    line's number and its send time (so formatting a line costs the drivers almost nothing)."""
    standin = OsquerydStandIn(Path("/tmp"))
    return standin.result_line(LINE_NAME, {"i": "#" * 10, "sent": "@" * 17, "pid": "1234",
                                           "path": "/usr/bin/example"}, pad_to=line_bytes)


def make_line(template: str, index: int, sent: float = 0.0) -> str:
    return template.replace("#" * 10, f"{index:010d}", 1).replace("@" * 17, f"{sent:17.6f}", 1)


def _drive(socket_dir: str, uuid: int, plugins: list[str], indices: range, line_bytes: int,
           start_at: float, rate: float) -> dict[str, Any]:
    """One driver process: log lines `indices` to each plugin in turn, exactly as osqueryd's
    callExtension() does (OsquerydStandIn.log_string: fresh connection + ping, then a fresh
    connection + call). With `rate` > 0, line i is due at start_at + i/rate (open loop: a late
    line is sent at once, never skipped); answers when each line was accepted.
    `indices` must start at the first line of the whole run (its step is the process count)."""
    standin = OsquerydStandIn(Path(socket_dir))
    standin.calls = collections.deque(maxlen=1)  # type: ignore[assignment]
    template = line_template(line_bytes)
    accepted: list[tuple[int, float]] = []
    late = 0.0
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    began = time.time()
    for index in indices:
        if rate:
            due = start_at + (index - indices.start) / rate
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
            else:
                late = max(late, -wait)
        line = make_line(template, index, time.time())
        for plugin in plugins:
            standin.log_string(uuid, plugin, line)
        if rate:
            accepted.append((index, time.time()))
    return {"accepted": accepted, "seconds": time.time() - began, "max_late": late}


class Drivers:
    """A pool of driver processes (spawned, so none shares the bench's threads or its CPU)."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.pool = ProcessPoolExecutor(processes, mp_context=get_context("spawn"))
        # Import everything in every worker now, not inside a measurement.
        list(self.pool.map(line_template, [64] * processes))

    def __enter__(self) -> Drivers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown()

    def send(self, ext: Extension, count: int, *, first: int = 0, line_bytes: int = 1024,
             services: tuple[str, ...] = ("kinesis", "firehose"), rate: float = 0.0,
             lead: float = 0.5) -> dict[str, Any]:
        """Log lines first..first+count-1 to `services`' plugins; answers when it is done.

        Lines are dealt round-robin to the processes (with `rate`, the open-loop schedule is
        kept across all of them)."""
        plugins = [ext.plugins[s] for s in services]
        start_at = time.time() + lead
        futures = [
            self.pool.submit(_drive, str(ext.socket_dir), ext.uuid, plugins,
                             range(first + k, first + count, self.processes), line_bytes,
                             start_at + (k / rate if rate else 0.0), rate)
            for k in range(self.processes)]
        results = [f.result() for f in futures]
        accepted = sorted(a for r in results for a in r["accepted"])
        return {"accepted": accepted, "seconds": max(r["seconds"] for r in results),
                "max_late": max(r["max_late"] for r in results), "start_at": start_at}
