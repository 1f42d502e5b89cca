# ruff: noqa: RUF001  (the table prints the multiplication sign, as the rest of the bench does)
"""`make bench` section 6 (issue 8): records, bytes and billable units per 10,000 rows, with
and without KPL aggregation (Kinesis) and packing (Firehose).

The same ~500-byte osquery rows go through the real extension to moto behind the fault proxy,
which keeps every PutRecords/PutRecordBatch body; the figures are read from those bodies, so
they are what AWS would have been sent. Billing rules (AWS pricing pages): Kinesis Data Streams
charges PUT payload units of 25 KB per record (a 5 KB record is 1 unit, a 45 KB one 2); Data
Firehose bills ingestion per record rounded up to the next 5 KB.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

from bench.common import acked_seq
from tests.harness import RunningExtension, wait_for
from tests.localaws import FaultProxy, MotoServer

OUT = Path(__file__).resolve().parent / "out"
KINESIS_UNIT = 25 * 1024
FIREHOSE_UNIT = 5 * 1024
OPERATIONS = {"kinesis": "PutRecords", "firehose": "PutRecordBatch"}


def _calls(proxy: FaultProxy, service: str) -> list[list[int]]:
    """The size of every record of every successful put, per call."""
    out = []
    for call in proxy.calls:
        if call.operation != OPERATIONS[service] or call.status != 200:
            continue
        records = json.loads(call.body)["Records"]
        out.append([len(base64.b64decode(r["Data"])) + len(r.get("PartitionKey", "").encode())
                    for r in records])
    return out


def _figures(calls: list[list[int]], unit: int, rows: int) -> dict[str, Any]:
    sizes = [size for call in calls for size in call]
    units = sum(math.ceil(size / unit) for size in sizes)
    return {
        "calls": len(calls),
        "records": len(sizes),
        "bytes": sum(sizes),
        "records_per_call": len(sizes) / len(calls) if calls else 0.0,
        "bytes_per_call": sum(sizes) / len(calls) if calls else 0.0,
        "billable_units": units,
        "billable_units_per_10k_rows": units * 10_000 / rows,
    }


def _run(mode: str, rows: int, row_bytes: int) -> dict[str, Any]:
    work = OUT / f"savings-{mode}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with MotoServer() as moto, FaultProxy(moto.url) as proxy:
        moto.create_stream("savings")
        moto.create_delivery_stream("savings", "savings-bucket")
        options = {"aws_kinesis_stream": "savings", "aws_kinesis_endpoint": proxy.url,
                   "aws_firehose_stream": "savings", "aws_firehose_endpoint": proxy.url,
                   "aws_kinesis_period": "1", "aws_firehose_period": "1",
                   "aws_region": "us-east-1"}
        if mode in ("packed", "gzip"):
            options.update(aws_kinesis_aggregate="true", aws_firehose_pack="true")
        if mode == "gzip":
            options.update(aws_firehose_compression="gzip")
        with RunningExtension(work, options=options) as ext:
            for line in _rows(ext, rows, row_bytes):
                ext.log("kinesis", line)
                ext.log("firehose", line)
            plugins = ("aws_kinesis", "aws_firehose")
            wait_for(lambda: all(_acked(work, p) >= rows for p in plugins), 120, "delivery")
            ext.terminate()
        return {"kinesis": _figures(_calls(proxy, "kinesis"), KINESIS_UNIT, rows),
                "firehose": _figures(_calls(proxy, "firehose"), FIREHOSE_UNIT, rows)}


def _rows(ext: RunningExtension, count: int, row_bytes: int) -> list[str]:
    """Realistic result lines of about `row_bytes`, padded with random hex rather than one
    repeated character, so that gzip's figure is not flattered (hex of random bytes only
    halves; real osquery rows compress far better)."""
    rng = random.Random(8)
    lines = []
    for index in range(count):
        columns = {"pid": str(1000 + index), "path": f"/usr/bin/proc{index % 97}",
                   "cmdline": ""}
        short = len(ext.standin.result_line("pack_it_processes", columns).encode())
        columns["cmdline"] = rng.randbytes(max(0, row_bytes - short) // 2).hex()
        lines.append(ext.standin.result_line("pack_it_processes", columns, counter=index))
    return lines


def _acked(work: Path, plugin: str) -> int:
    return acked_seq(work / "spool" / plugin.removeprefix("aws_"))


def section_savings(args: argparse.Namespace, _drivers: Any) -> dict[str, Any]:
    rows = 1000 if args.quick else 10_000
    row_bytes = 500
    plain = _run("plain", rows, row_bytes)
    packed = _run("packed", rows, row_bytes)
    gzipped = _run("gzip", rows, row_bytes)
    result: dict[str, Any] = {"rows": rows, "row_bytes": row_bytes, "plain": plain,
                              "packed": packed, "gzip": gzipped}
    for service in ("kinesis", "firehose"):
        before = plain[service]["billable_units"]
        after = packed[service]["billable_units"]
        result[f"{service}_units_ratio"] = before / after if after else float("inf")
    before, after = plain["firehose"]["billable_units"], gzipped["firehose"]["billable_units"]
    result["firehose_gzip_units_ratio"] = before / after if after else float("inf")
    # Packing alone cannot beat unit / row size: 5 KiB / 500 B = 10.24x with perfect packing.
    result["firehose_packing_bound"] = FIREHOSE_UNIT / row_bytes
    return result


def table_rows(savings: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    names = {"kinesis": ("Kinesis", "KPL aggregation"), "firehose": ("Firehose", "packing")}
    for service, (label, how) in names.items():
        plain, packed = savings["plain"][service], savings["packed"][service]
        ratio = savings[f"{service}_units_ratio"]
        rows.append((f"6. {label} billable units / 10k {savings['row_bytes']}-B rows",
                     f"{packed['billable_units_per_10k_rows']:.0f} with {how}",
                     f"{plain['billable_units_per_10k_rows']:.0f} one row per record",
                     f"{ratio:.1f}× fewer (≥ 10×)", "met" if ratio >= 10 else "NOT met"))
        if service == "firehose":
            gzipped = savings["gzip"][service]
            rows.append(("   Firehose, packing + gzip",
                         f"{gzipped['billable_units_per_10k_rows']:.0f}", "",
                         f"{savings['firehose_gzip_units_ratio']:.1f}× fewer (≥ 10×)",
                         "met" if savings["firehose_gzip_units_ratio"] >= 10 else "NOT met"))
            rows.append(("   bound of packing alone (5 KiB unit / row)",
                         f"{savings['firehose_packing_bound']:.2f}×", "", "", ""))
        rows.append((f"   {label} records / bytes per call",
                     f"{packed['records_per_call']:.1f} / {packed['bytes_per_call'] / 1024:.0f} KiB",
                     f"{plain['records_per_call']:.1f} / {plain['bytes_per_call'] / 1024:.0f} KiB",
                     "", ""))
    return rows
