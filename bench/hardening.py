# ruff: noqa: RUF001  (the table prints the multiplication sign, as the rest of the bench does)
"""`make bench` section 7 (issue 11): a giant line and stalled peers, against the real process.

- The answer time of a 60 MB snapshot line, from its last byte sent (in 64 KB chunks, as a
  socket buffer hands it over) to its whole answer read; and the resident size before and
  after it.
- The latency of a ping on a fresh connection (connect, ping, close: what osqueryd does before
  every call), with the server idle and with 50 connections open that send nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from tests.harness import RunningExtension
from tests.test_hardening import CHUNK, call_bytes, ping_bytes, read_reply, rss_kb

OUT = Path(__file__).resolve().parent / "out"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _pings(path: str, count: int) -> list[float]:
    ping = ping_bytes()
    out = []
    for _ in range(count):
        began = time.perf_counter()
        with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as sock:
            sock.connect(path)
            sock.settimeout(10)
            sock.sendall(ping)
            read_reply(sock, "ping")
        out.append(time.perf_counter() - began)
    return out


def section_hardening(args: argparse.Namespace, _drivers: Any) -> dict[str, Any]:
    work = OUT / "hardening"
    shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {}
    with RunningExtension(work) as ext:
        assert ext.proc is not None
        path = ext.standin.extension_socket(ext.uuid)
        plugin = ext.plugins["kinesis"]
        time.sleep(1.0)
        rest = rss_kb(ext.proc.pid)
        size = args.giant_line_mb << 20
        message = call_bytes(plugin, {"snapshot": json.dumps({"name": "giant", "x": "x" * size})})
        answers = []
        for _ in range(args.giant_reps):
            with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as sock:
                sock.connect(path)
                sock.settimeout(120)
                chunks = [message[i:i + CHUNK] for i in range(0, len(message), CHUNK)]
                for chunk in chunks[:-1]:
                    sock.sendall(chunk)
                sock.sendall(chunks[-1])
                del chunks
                began = time.perf_counter()
                code = read_reply(sock, "call").status.code
                answers.append(time.perf_counter() - began)
                assert code == 0
        del message
        time.sleep(1.0)
        after = rss_kb(ext.proc.pid)
        result["giant"] = {"line_mb": args.giant_line_mb, "answer_s": answers,
                           "answer_s_median": sorted(answers)[len(answers) // 2],
                           "rss_rest_kb": rest, "rss_after_kb": after}
        idle = _pings(path, args.ping_count)
        socks = []
        try:
            for _ in range(args.idle_connections):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(path)
                socks.append(sock)
            busy = _pings(path, args.ping_count)
        finally:
            for sock in socks:
                sock.close()
        result["ping"] = {"count": args.ping_count, "idle_connections": args.idle_connections,
                          "idle_p50_ms": _percentile(idle, 0.5) * 1e3,
                          "idle_p99_ms": _percentile(idle, 0.99) * 1e3,
                          "stalled_p50_ms": _percentile(busy, 0.5) * 1e3,
                          "stalled_p99_ms": _percentile(busy, 0.99) * 1e3}
        result["ping"]["p99_ratio"] = result["ping"]["stalled_p99_ms"] / result["ping"]["idle_p99_ms"]
    shutil.rmtree(work, ignore_errors=True)
    return result


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    giant, ping = result["giant"], result["ping"]
    return [
        (f"7. answer to a {giant['line_mb']} MB line after its last byte (s)",
         f"{giant['answer_s_median']:.2f}", "34 s before issue 11", "≤ 2 s",
         "met" if giant["answer_s_median"] <= 2 else "NOT met"),
        ("   RSS at rest → after it (MB)",
         f"{giant['rss_rest_kb'] / 1024:.1f} → {giant['rss_after_kb'] / 1024:.1f}", "",
         "≤ +20 MB", "met" if giant["rss_after_kb"] - giant["rss_rest_kb"] <= 20 * 1024 else "NOT met"),
        (f"   ping p99 with {ping['idle_connections']} idle connections open (ms)",
         f"{ping['stalled_p99_ms']:.2f}", f"{ping['idle_p99_ms']:.2f} idle",
         f"{ping['p99_ratio']:.2f}× (≤ 2×)", "met" if ping["p99_ratio"] <= 2 else "NOT met"),
    ]
