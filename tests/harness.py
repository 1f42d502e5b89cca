"""Runs the real osquery-aws-logger process under the osqueryd stand-in, as autoload would."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.osqueryd_standin import OsquerydStandIn

#: The console script installed beside the interpreter running the tests.
EXTENSION_COMMAND = Path(sys.executable).parent / "osquery-aws-logger"


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` ("2m") at `mount` (made here), unmounted afterwards whatever happened;
    the test is skipped where one cannot be mounted (not root)."""
    mount.mkdir(mode=0o755)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(mount)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll `predicate` until it answers something true; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def make_ext(directory: Path, command: Path = EXTENSION_COMMAND, wrapper: Sequence[str] = ()) -> Path:
    """An autoloadable .ext: a shell script that execs the extension in place (one process).

    `wrapper` is a command that itself execs the rest in place (``prlimit --nofile=1024:1024 --``,
    ``setpriv --bounding-set=-dac_override --``): the extension still ends as the one process
    osqueryd started, under the limits or privileges the wrapper set.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "osquery-aws-logger.ext"
    prefix = shlex.join(wrapper) + " " if wrapper else ""
    path.write_text(f'#!/bin/sh\nexec {prefix}"{command}" "$@"\n')
    path.chmod(0o755)
    return path


class RunningExtension:
    """osqueryd stand-in + the extension process, with the test's osquery options.

    `options` are the extension's settings under osquery's names; they reach it as custom_
    config options (a build without AWS) unless `builtin_aws` is set, in which case osquery's
    own aws_* names are core flags and the rest stay custom_.
    """

    def __init__(self, work: Path, *, options: dict[str, str] | None = None,
                 builtin_aws: bool = False, interval: int = 1, timeout: int = 3,
                 verbose: bool = False, env: dict[str, str] | None = None,
                 wrapper: Sequence[str] = ()) -> None:
        self.work = work
        # AF_UNIX paths are short (108 bytes): keep the socket out of pytest's long tmp path.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="oq", dir="/tmp"))
        self.spool_dir = work / "spool"
        self.options = {"aws_logger_spool_dir": str(self.spool_dir), **(options or {})}
        self.builtin_aws = builtin_aws
        self.interval = interval
        self.timeout = timeout
        self.verbose = verbose
        self.env = env or {}
        self.stderr_path = work / "extension.stderr"
        self.ext = make_ext(work / "bin", wrapper=wrapper)
        self.standin = self._make_standin()
        self.proc: subprocess.Popen[bytes] | None = None
        self.uuid = 0

    def _make_standin(self) -> OsquerydStandIn:
        flags: dict[str, str] = {}
        custom: dict[str, str] = {}
        for name, value in self.options.items():
            if self.builtin_aws and name.startswith("aws_") and not name.startswith(
                    ("aws_logger_", "aws_sts_endpoint")):
                flags[name] = value
            else:
                custom["custom_" + name] = value
        return OsquerydStandIn(self.socket_dir, builtin_aws=self.builtin_aws, flags=flags,
                               custom_options=custom)

    def __enter__(self) -> RunningExtension:
        self.standin.start()
        self.spawn()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spawn(self) -> None:
        self.standin.registered.clear()
        with open(self.stderr_path, "ab") as stderr:
            env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_EC2_METADATA_DISABLED": "true", **self.env}
            self.proc = self.standin.spawn(self.ext, verbose=self.verbose, timeout=self.timeout,
                                           interval=self.interval, env=env, stderr=stderr)
        self.uuid = self.standin.wait_registered(timeout=15)
        # The socket is bound just after registration answers (its name holds the uuid).
        wait_for(lambda: os.path.exists(self.standin.extension_socket(self.uuid)), 5,
                 "the extension's socket")

    @property
    def plugins(self) -> dict[str, str]:
        """The registered logger names by service ("kinesis"/"firehose")."""
        _, registry = self.standin.registered[self.uuid]
        names = sorted(registry.get("logger", {}))
        return {("kinesis" if "kinesis" in n else "firehose"): n for n in names}

    def log(self, service: str, line: str) -> Any:
        return self.standin.log_string(self.uuid, self.plugins[service], line)

    def log_status(self, service: str, messages: list[str]) -> Any:
        entries = [self.standin.status_entry(m) for m in messages]
        return self.standin.log_status(self.uuid, self.plugins[service], entries)

    def init(self) -> None:
        for name in self.plugins.values():
            self.standin.init(self.uuid, name)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def terminate(self, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.standin.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def result_lines(standin: OsquerydStandIn, count: int, *, name: str = "pack_test_q",
                 pad_to: int = 0) -> list[str]:
    """`count` distinct realistic result lines, each carrying its index as a JSON number."""
    lines = []
    for index in range(count):
        parsed = json.loads(standin.result_line(name, {"i": str(index)}, pad_to=pad_to))
        parsed["columns"]["i"] = index  # a number, so tests can see JSON types survive
        lines.append(json.dumps(parsed, separators=(",", ":")))
    return lines


def env_without_aws() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
