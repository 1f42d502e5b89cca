# ruff: noqa: RUF001  (the multiplication sign is meant)
"""Where the extension's time goes per line: py-spy samples the running extension while the
drivers log lines to both plugins (as in the cost runs), and bench/PROFILE.md gets the top items.

py-spy (PyPI) reads the process from outside, so the extension runs unchanged; samples of threads
that wait (in accept, recv, the flusher's Event) are left out, so the shares are of CPU time.
"""

from __future__ import annotations

import argparse
import collections
import json
import linecache
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import BENCH, OUT, ROOT, Drivers, Extension, Kinesalite
from tests.harness import wait_for
from tests.localaws import MotoServer

PROFILE_MD = BENCH / "PROFILE.md"
RATE = 250  # samples a second
_LINE = re.compile(r"^thread \((\d+)\): (.*) (\d+)$")
_FRAME = re.compile(r"^(.*) \((.*?)(?::(\d+))?\)$")

#: (category, test on the file of the innermost frame), first match wins.
CATEGORIES: tuple[tuple[str, Any], ...] = (
    ("Thrift binary protocol (pure Python)", lambda f: "thrift/protocol/" in f),
    ("Thrift transports (TSocket, TBufferedTransport)", lambda f: "thrift/transport/" in f),
    ("Thrift server/processor glue", lambda f: "thrift/" in f),
    ("osquery-python generated Thrift code", lambda f: "osquery/extensions/" in f),
    ("socket accept/close (stdlib socket.py)", lambda f: f.endswith("socket.py")),
    ("JSON (stdlib json)", lambda f: "json/" in f),
    ("osquery side: socket loop, wire, plugins (osquery_aws_logger/osquery/)",
     lambda f: "osquery_aws_logger/osquery/" in f),
    ("spool (osquery_aws_logger/spool/)", lambda f: "osquery_aws_logger/spool/" in f),
    ("results: rows counted, records (osquery_aws_logger/results/)",
     lambda f: "osquery_aws_logger/results/" in f),
    ("delivery: shaping, lanes, flusher, sender (osquery_aws_logger/delivery/)",
     lambda f: "osquery_aws_logger/delivery/" in f),
    ("osquery_aws_logger, other", lambda f: "osquery_aws_logger/" in f),
    ("boto3/botocore (request build, signing, parsing)", lambda f: "botocore/" in f or "boto3/" in f),
    ("urllib3/http.client (HTTP to the service)", lambda f: "urllib3/" in f or "http/client" in f),
    ("logging", lambda f: "logging/" in f),
    ("threading/queue", lambda f: f.endswith(("threading.py", "queue.py"))),
)


def categorize(path: str) -> str:
    for name, test in CATEGORIES:
        if test(path):
            return name
    return f"other ({Path(path).name})"


def parse_raw(text: str) -> list[tuple[str, list[tuple[str, str, int]], int]]:
    """py-spy's raw (collapsed) output: (thread name, [(function, file, line)...] outermost
    first, count)."""
    stacks = []
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        parts = match[2].split(";")
        frames = []
        for part in parts[1:]:
            frame = _FRAME.match(part)
            frames.append((frame[1], frame[2], int(frame[3] or 0)) if frame else (part, "", 0))
        stacks.append((parts[0], frames, int(match[3])))
    return stacks


def summarize(stacks: list[tuple[str, list[tuple[str, str, int]], int]]) -> dict[str, Any]:
    total = sum(count for _, _, count in stacks) or 1
    by_thread: collections.Counter[str] = collections.Counter()
    by_category: collections.Counter[str] = collections.Counter()
    by_category_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    by_function: collections.Counter[str] = collections.Counter()
    by_line: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for thread, frames, count in stacks:
        thread_kind = "flusher" if "flusher" in thread else ("thrift server" if thread == "MainThread"
                                                              else thread)
        by_thread[thread_kind] += count
        if not frames:
            continue
        function, path, line = frames[-1]
        category = categorize(path)
        by_category[category] += count
        by_category_thread[thread_kind][category] += count
        by_function[f"{function} ({_short(path)})"] += count
        source = linecache.getline(path, line).strip() if line else ""
        by_line[f"{function} ({_short(path)}:{line}) `{source[:70]}`"] += count
        for seen in {f"{f} ({_short(p)})" for f, p, _ in frames}:
            inclusive[seen] += count

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(k, v / total) for k, v in counter.most_common()]

    return {"samples": total, "threads": share(by_thread), "categories": share(by_category),
            "categories_by_thread": {t: share(c) for t, c in by_category_thread.items()},
            "self": share(by_function)[:20], "self_lines": share(by_line)[:20],
            "inclusive": share(inclusive)[:25]}


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def accelerated_check() -> str:
    """Whether osquery-python's generated code works with thrift's C-accelerated binary protocol."""
    code = r"""
from thrift.protocol import TBinaryProtocol
from thrift.transport import TTransport
from osquery.extensions.ttypes import ExtensionResponse, ExtensionStatus
from osquery.extensions.Extension import call_args
try:
    from thrift.protocol import fastbinary  # noqa: F401
except ImportError as e:
    print("thrift's fastbinary C module is not installed:", e); raise SystemExit
factory = TBinaryProtocol.TBinaryProtocolAcceleratedFactory()
def roundtrip(obj, cls):
    out = TTransport.TMemoryBuffer()
    obj.write(factory.getProtocol(out))
    back = cls()
    back.read(factory.getProtocol(TTransport.TMemoryBuffer(out.getvalue())))
    return back
for name, obj, cls in (
        ("ExtensionResponse",
         ExtensionResponse(status=ExtensionStatus(code=0, message="OK"), response=[]), ExtensionResponse),
        ("call_args", call_args(registry="logger", item="aws_kinesis", request={"string": "{}"}), call_args)):
    try:
        back = roundtrip(obj, cls)
        print(f"{name}: round trip {'equal' if back == obj else 'DIFFERENT: ' + repr(back)}")
    except Exception as e:
        print(f"{name}: {type(e).__name__}: {e}")
"""
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            check=False)
    return (answer.stdout + answer.stderr).strip()


MODES = {
    # Only the thread holding the GIL is sampled: Python code and C code that keeps the GIL
    # (json's scanner, base64, struct, small zlib calls). System calls are not in it.
    "gil": ["--gil", "--nonblocking"],
    # Every thread the kernel has running or runnable, without pausing the process: system
    # calls included, but a thread woken and waiting for a core counts too.
    "oncpu": ["--nonblocking"],
}


def profile_extension(args: argparse.Namespace, drivers: Drivers) -> dict[str, Any]:
    raws = {mode: OUT / f"profile.{mode}.txt" for mode in MODES}
    seconds = int(args.profile_seconds)
    with Kinesalite(OUT / "kinesalite-profile.log") as kinesalite, MotoServer() as moto:
        kinesalite.create_stream("profile")
        moto.create_delivery_stream("profile", "profile-bucket")
        options = {"aws_kinesis_stream": "profile", "aws_kinesis_endpoint": kinesalite.url,
                   "aws_kinesis_period": "1", "aws_firehose_stream": "profile",
                   "aws_firehose_endpoint": moto.url, "aws_firehose_period": "1",
                   "aws_region": "us-east-1"}
        with Extension(OUT / "profile", options=options) as ext:
            drivers.send(ext, args.warmup_lines)
            spies = [subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(ext.pid),
                 "--rate", str(RATE), *flags, "--format", "raw", "--threads", "--full-filenames",
                 "--output", str(raws[mode]), "--duration", str(seconds)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for mode, flags in MODES.items()]
            time.sleep(1.0)  # py-spy attaches
            cpu0, wall0 = ext.cpu(), time.time()
            sent = args.warmup_lines
            while any(spy.poll() is None for spy in spies):
                drivers.send(ext, 1000, first=sent, lead=0.05)
                sent += 1000
            cpu_share = (ext.cpu() - cpu0) / (time.time() - wall0)
            for spy in spies:
                _, err = spy.communicate()
                if spy.returncode != 0:
                    raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')}")
            wait_for(lambda: all(ext.acked(s) >= sent for s in ("kinesis", "firehose")), 120,
                     "the profiled lines delivered")
            ext.stop()
    result: dict[str, Any] = {mode: summarize(parse_raw(raws[mode].read_text())) for mode in MODES}
    for mode in MODES:
        result[mode]["wall_fraction"] = result[mode]["samples"] / (RATE * seconds)
    result.update({"lines_sent": sent, "seconds": seconds, "rate_hz": RATE, "cpu_share": cpu_share,
                   "accelerated_protocol": accelerated_check()})
    return result


def write_markdown(results: dict[str, Any], path: Path = PROFILE_MD) -> None:
    profile = results["profile"]
    cost = results.get("cost")
    machine = results["machine"]
    out = ["# Where the extension's CPU goes per line", "",
           f"Written by `make bench` (bench/profile.py) on {results['started']} for "
           f"osquery_aws_logger at {results.get('source', {}).get('commit', '?')}, "
           f"{machine['nproc']} × {machine['cpu_model']}, Python {machine['python']}. "
           f"Two py-spy samplers ({profile['rate_hz']} Hz, {profile['seconds']} s, at the same "
           f"time, both --nonblocking so neither pauses the process) watched the running "
           f"extension while driver processes logged ~1 KiB lines to both plugins through the "
           f"osqueryd stand-in's call pattern (fresh connection + ping, then fresh connection + "
           f"call, per plugin) and the flusher shipped them to kinesalite (Kinesis) and moto (Firehose).", ""]
    if cost:
        out += ["## CPU per line, from /proc (the cost runs of the same bench, medians)", "",
                "| | user µs | system µs | total µs per line (2 calls) |", "|---|---:|---:|---:|",
                f"| osquery-aws-logger | {cost['extension_user_us_per_line']:.0f} | "
                f"{cost['extension_sys_us_per_line']:.0f} | {cost['extension_us_per_line']:.0f} |",
                f"| bare osquery-python logger | {cost['bare_user_us_per_line']:.0f} | "
                f"{cost['bare_sys_us_per_line']:.0f} | {cost['bare_us_per_line']:.0f} |", "",
                "System time is the kernel's side of the system calls: per call, osqueryd's "
                "pattern costs two accepts, two reads and writes and two closes on the extension's "
                "socket; the spool adds a write, and shipping adds the HTTP exchange.", ""]

    def rows(items: list[tuple[str, float]], limit: int, per_line: float | None = None) -> list[str]:
        if per_line is None:
            lines = ["| item | share of samples |", "|---|---:|"]
        else:
            lines = ["| item | share of samples | ≈ user µs per line |", "|---|---:|---:|"]
        for name, share in items[:limit]:
            extra = "" if per_line is None else f" {share * per_line:.0f} |"
            lines.append(f"| {name.replace('|', '/')} | {share:.1%} |{extra}")
        return lines

    titles = {
        "gil": ("Python time: the thread holding the GIL",
                "Python code and C code that keeps the GIL (json's scanner, base64, struct, small "
                "zlib calls); system calls release the GIL and are not here, so this is the "
                "process's user time, and the µs column apportions the user µs per line measured "
                "above. A thread held the GIL {wall:.0%} of the wall time."),
        "oncpu": ("Every thread running or runnable (system calls included)",
                  "{active:.2f} threads were seen active per sample on average, while /proc "
                  "says the process used {cpu:.2f} CPU-seconds per second: the excess is "
                  "threads woken and waiting for a core, which this sampler cannot tell from "
                  "running. Read the shares of the lines right after a blocking call (accept, "
                  "os.read) as upper bounds. Time inside a C call (os.read, os.write, "
                  "accept, close, fdatasync) is charged to the Python line that made it."),
    }
    for mode, (title, note) in titles.items():
        summary = profile[mode]
        cpu = profile.get("cpu_share", float("nan"))
        out += [f"## {title}", "", note.format(wall=summary["wall_fraction"],
                                               active=summary["wall_fraction"], cpu=cpu) +
                f" {summary['samples']} samples.", ""]
        # GIL-held time is the process's user time: apportion the measured user µs per line.
        per_line = cost["extension_user_us_per_line"] if cost and mode == "gil" else None
        out += ["### By thread", "", *rows(summary["threads"], 6, per_line), ""]
        out += ["### By component (the innermost frame's module)", "",
                *rows(summary["categories"], 14, per_line), ""]
        out += ["### Top lines, self time", "", *rows(summary["self_lines"], 15, per_line), ""]
        if mode == "oncpu":
            out += ["### Top functions, inclusive", "", *rows(summary["inclusive"], 20), ""]
    out += ["## thrift's C-accelerated binary protocol with osquery-python's generated code", "",
            "Round trip of an `ExtensionResponse` and of `Extension.call` arguments through "
            "`TBinaryProtocolAccelerated` (thrift's fastbinary), as installed here:", "", "```",
            profile["accelerated_protocol"], "```", "",
            "The generated code (osquery-python 3.1.1) carries thrift_spec tuples of the old "
            "layout, which the installed fastbinary rejects; the pure-Python protocol is the "
            "only one that works with it as shipped.", ""]
    path.write_text("\n".join(out))


def main() -> None:
    """Summarize the raw py-spy files of the last run again (new categories) into
    bench/results.json and bench/PROFILE.md, without measuring anything."""
    results_path = BENCH / "results.json"
    results = json.loads(results_path.read_text())
    for mode in MODES:
        raw = OUT / f"profile.{mode}.txt"
        summary = summarize(parse_raw(raw.read_text()))
        summary["wall_fraction"] = summary["samples"] / (RATE * results["profile"]["seconds"])
        results["profile"][mode] = summary
    results_path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    write_markdown(results)


if __name__ == "__main__":
    main()
