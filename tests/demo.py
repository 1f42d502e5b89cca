"""`make demo`: the extension shipping osquery lines to a local Kinesis and Firehose, end to end.

Nothing to configure: a local moto server plays Kinesis, Firehose and S3; the real
osquery-aws-logger process is registered with an osqueryd — a real one when `osqueryd` is on
the PATH (it runs the seed's `SELECT * FROM time` schedule), otherwise the project's osqueryd
stand-in replaying realistic result and status lines. It shows the lines arriving and stops
by itself within a minute with a summary; the exit code is 0 only if every line arrived.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import Aws
from tests.harness import EXTENSION_COMMAND, RunningExtension, make_ext, wait_for
from tests.localaws import FaultProxy, MotoServer

REPLAY_SECONDS = 20
QUERIES = ("pack_it_processes", "pack_it_listening_ports", "pack_ir_logged_in_users", "time")


#: A plain progress line at most this often when stdout is not a terminal.
PLAIN_EVERY_SECONDS = 2.0
_last_plain = [-PLAIN_EVERY_SECONDS]


def progress(sent: int, aws: Aws, started: float) -> tuple[int, int]:
    """One progress line: redrawn in place with \\r on a terminal; in a pipe or a CI log,
    where \\r would run every update into one line, a plain line every couple of seconds."""
    kinesis = len(aws.kinesis_records())
    firehose = len(aws.firehose_lines())
    elapsed = time.monotonic() - started
    text = (f"  {elapsed:5.1f}s  lines sent {sent:6d}   "
            f"Kinesis records {kinesis:6d}   Firehose records {firehose:6d}")
    if sys.stdout.isatty():
        print("\r" + text, end="", flush=True)
    elif elapsed - _last_plain[0] >= PLAIN_EVERY_SECONDS or (sent and (kinesis, firehose) >= (sent, sent)):
        _last_plain[0] = elapsed
        print(text, flush=True)
    return kinesis, firehose


def end_progress() -> None:
    """Finish the redrawn line on a terminal; plain lines need nothing."""
    if sys.stdout.isatty():
        print()


def replay_with_standin(aws: Aws, work: Path) -> int:
    """The stand-in plays osqueryd: both plugins get every line, as with
    --logger_plugin=aws_kinesis,aws_firehose; the options arrive as custom_ options."""
    sent = 0
    started = time.monotonic()
    with RunningExtension(work, options=aws.options()) as ext:
        print(f"extension registered with the osqueryd stand-in as {sorted(ext.plugins.values())}")
        standin = ext.standin
        counter = 0
        while time.monotonic() - started < REPLAY_SECONDS:
            for query in QUERIES:
                counter += 1
                columns = {"pid": str(1000 + counter), "name": f"proc{counter}", "port": "443"}
                line = standin.result_line(query, columns, counter=counter)
                ext.log("kinesis", line)
                ext.log("firehose", line)
                sent += 1
            if counter % 40 == 0:
                for service in ("kinesis", "firehose"):
                    ext.log_status(service, [f"demo status line {counter}"])
                sent += 1
                progress(sent, aws, started)
            time.sleep(0.02)
        wait_for(lambda: progress(sent, aws, started) >= (sent, sent), 30, "every line")
        ext.terminate()
    end_progress()
    return sent


def replay_with_osqueryd(aws: Aws, work: Path, osqueryd: str) -> int:
    """A real osqueryd with the seed's schedule; counts the lines it handed to the extension."""
    ext = make_ext(work / "bin", EXTENSION_COMMAND)
    autoload = work / "extensions.load"
    autoload.write_text(f"{ext}\n")
    config = work / "osquery.conf"
    options = {f"custom_{k}": v for k, v in aws.options().items()}
    options["custom_aws_logger_spool_dir"] = str(work / "spool")
    config.write_text(json.dumps({"options": options, "schedule": {
        "time": {"query": "SELECT * FROM time;", "interval": 2}}}))
    socket_dir = Path(tempfile.mkdtemp(prefix="oqd", dir="/tmp"))
    command = [osqueryd, "--ephemeral", "--disable_database", "--disable_watchdog",
               f"--config_path={config}", f"--extensions_socket={socket_dir / 'osquery.em'}",
               f"--extensions_autoload={autoload}", "--extensions_require=aws_logger",
               "--extensions_timeout=20", f"--pidfile={work / 'osqueryd.pid'}",
               f"--database_path={work / 'db'}", "--logger_plugin=aws_kinesis,aws_firehose"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    try:
        while time.monotonic() - started < REPLAY_SECONDS + 10 and proc.poll() is None:
            progress(0, aws, started)
            time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(socket_dir, ignore_errors=True)
    end_progress()
    results = [r for r in (json.loads(d) for d, _ in aws.kinesis_records())
               if r.get("log_type") == "result"]
    return len(results)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="osquery-aws-logger-demo-"))
    print("starting local Kinesis, Firehose and S3 (moto server) ...")
    with MotoServer() as moto, FaultProxy(moto.url, keep_bodies=False) as proxy:
        aws = Aws(moto, proxy)
        osqueryd = shutil.which("osqueryd")
        if osqueryd:
            print(f"using the real osqueryd at {osqueryd}")
            sent = replay_with_osqueryd(aws, work, osqueryd)
        else:
            print("no osqueryd on the PATH: the osqueryd stand-in replays realistic lines")
            sent = replay_with_standin(aws, work)
        kinesis = [json.loads(d) for d, _ in aws.kinesis_records()]
        firehose = [json.loads(line) for line in aws.firehose_lines()]
    kinds = {name: {kind: sum(1 for r in records if r["log_type"] == kind)
                    for kind in ("result", "status")}
             for name, records in (("Kinesis", kinesis), ("Firehose", firehose))}
    print(f"\nsummary: lines in {sent}")
    for name, counts in kinds.items():
        print(f"  {name:8s} records out {sum(counts.values()):6d}  "
              f"({counts['result']} results, {counts['status']} status)")
    ok = all(sum(counts.values()) == sent for counts in kinds.values()) and sent > 0
    print("every line arrived in both services" if ok else "LINES MISSING")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
