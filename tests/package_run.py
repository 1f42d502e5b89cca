"""The packaged extension run as osqueryd runs it, inside a root (an empty root holding only the
package's files, or a Debian userland the package was installed into), for tests/test_package*.py.

The stand-in (tests/osqueryd_standin.py) runs on the host; its socket directory is bound into the
root at the same path, and the extension is exec'd through chroot(8), which execs in place: the
pid the stand-in started is the extension itself. moto runs on the host too, reached over
loopback (a chroot shares the host's network).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from tests.chroot import Root
from tests.harness import wait_for
from tests.localaws import MotoServer
from tests.osqueryd_standin import OsquerydStandIn

EXT = "/opt/osquery-aws-logger/osquery-aws-logger.ext"
INTERNAL = "/opt/osquery-aws-logger/_internal"
LINK = "/usr/bin/osquery-aws-logger"
LOAD = "/etc/osquery/extensions.load"
LOADERS = {"amd64": "ld-linux-x86-64.so.2", "arm64": "ld-linux-aarch64.so.1"}
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_EC2_METADATA_DISABLED": "true"}
# What osqueryd's environment might hold on a host; the extension gets nothing else.
EXT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **AWS_ENV}


class Launched:
    """The installed .ext spawned in `root` as osqueryd's launchExtension does (after the same
    autoload safety check, on the file as the root holds it); killed by pid at the end."""

    def __init__(self, standin: OsquerydStandIn, root: Root, stderr_path: Path,
                 *, timeout: int = 3, interval: int = 3) -> None:
        self.standin = standin
        self.root = root
        self.stderr_path = stderr_path
        standin.autoload_check(root.inside(EXT))
        self.argv = [EXT, "--socket", standin.socket_path, "--timeout", str(timeout),
                     "--interval", str(interval)]
        # As the stand-in's spawn(): OSQUERY_EXTENSION is the extension's own pid ($$ of a shell
        # that execs chroot, which execs the .ext: one pid all along).
        shim = 'OSQUERY_EXTENSION=$$; export OSQUERY_EXTENSION; exec "$0" "$@"'
        self.started = time.monotonic()
        with open(stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", shim, "/usr/sbin/chroot", str(root.path), *self.argv],
                env=EXT_ENV, stdin=subprocess.DEVNULL, stderr=stderr)
        self.uuid = 0
        self.startup_s = 0.0

    def wait_registered(self, timeout: float = 20) -> None:
        try:
            self.uuid = self.standin.wait_registered(timeout=timeout)
        except TimeoutError as exc:
            raise AssertionError(f"not registered; its stderr:\n{self.stderr()}") from exc
        wait_for(lambda: os.path.exists(self.standin.extension_socket(self.uuid)), 10,
                 "the extension's socket")
        self.startup_s = time.monotonic() - self.started

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class Launcher:
    """Stand-ins and extensions started by a test, all stopped by close()."""

    def __init__(self, standin_dir: Path, tmp_path: Path) -> None:
        self.standin_dir = standin_dir
        self.tmp_path = tmp_path
        self.stand_ins: list[OsquerydStandIn] = []
        self.extensions: list[Launched] = []

    def start(self, root: Root, *, builtin_aws: bool = False,
              flags: dict[str, str] | None = None,
              custom_options: dict[str, str] | None = None,
              register_timeout: float = 60) -> Launched:
        """A stand-in on a short socket path, its directory bound into `root`, and the .ext
        started in `root` and registered with it."""
        standin = OsquerydStandIn(self.standin_dir, builtin_aws=builtin_aws, flags=flags,
                                  custom_options=custom_options)
        standin.start()
        self.stand_ins.append(standin)
        root.bind(self.standin_dir)
        launched = Launched(standin, root, self.tmp_path / f"extension{len(self.extensions)}.stderr")
        self.extensions.append(launched)
        launched.wait_registered(register_timeout)
        return launched

    def close(self) -> None:
        for launched in self.extensions:
            launched.close()
        for standin in self.stand_ins:
            standin.stop()


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def status_kb(pid: int, field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert match, field
    return int(match.group(1))


def kinesis_options(moto: MotoServer, stream: str, spool: str) -> dict[str, str]:
    """custom_ options (a build without AWS) that send aws_kinesis to `stream` on moto."""
    return {
        "custom_aws_kinesis_stream": stream,
        "custom_aws_kinesis_endpoint": moto.url,
        "custom_aws_kinesis_period": "1",
        "custom_aws_logger_spool_dir": spool,
        "custom_aws_region": "us-east-1",
    }


def ship(ext: Launched, moto: MotoServer, stream: str, *, count: int, plugin: str = "aws_kinesis",
         timeout: float = 60) -> float:
    """`count` result lines through the stand-in's logger calls (ping + call each, as osqueryd
    makes them); waits until moto holds exactly those lines. Answers seconds taken."""
    standin = ext.standin
    started = time.monotonic()
    standin.init(ext.uuid, plugin)
    sent = []
    for index in range(count):
        line = standin.result_line(f"pkg_{index:05d}", {"n": str(index)})
        sent.append({**json.loads(line), "log_type": "result"})
        assert standin.log_string(ext.uuid, plugin, line).status.code == 0, index

    def all_there() -> list[tuple[bytes, str]] | None:
        records = moto.read_stream(stream)
        return records if len(records) >= count else None

    records = wait_for(all_there, timeout, f"{count} Kinesis records", step=0.5)
    got = sorted((json.loads(data) for data, _ in records), key=lambda r: r["name"])
    assert got == sent, "moto holds other lines than were sent"
    assert {key for _, key in records} == {standin.host_identifier}
    return time.monotonic() - started


def mapped_files(pid: int) -> set[str]:
    """The files a process has mapped (as the host sees their paths)."""
    return set(re.findall(r"\s(/\S+)$", Path(f"/proc/{pid}/maps").read_text(), re.M))
