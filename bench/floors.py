"""The floors that are plain boto3, each run as a process of its own (`python -m bench.floors`).

drain   -- a plain loop sending `count` records in 500-record PutRecords calls, one call after
           the other: what one client thread gets out of this Kinesis at all.
batcher -- the least latency a shipper batching into PutRecords gets from this Kinesis: lines
           "accepted" (appended to a list) at `rate` a second by one thread, while another
           sends whatever waits, up to 500 records a call, as soon as its previous call
           returned. Writes when each line was accepted to `--accepted`.

Records are the lines bench.common makes, shipped as the extension ships them: the line with
"log_type":"result" put first, the line's hostIdentifier as partition key.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from bench.common import line_template, make_line
from tests.localaws import make_client

BATCH = 500
HOST = "standin-host"  # the hostIdentifier of the stand-in's lines: the extension's partition key


def record(line: str) -> bytes:
    return b'{"log_type":"result",' + line.encode()[1:]


def put_all(client: object, stream: str, records: list[bytes]) -> int:
    calls = 0
    for start in range(0, len(records), BATCH):
        answer = client.put_records(  # type: ignore[attr-defined]
            StreamName=stream,
            Records=[{"Data": data, "PartitionKey": HOST} for data in records[start:start + BATCH]])
        if answer.get("FailedRecordCount"):
            raise SystemExit(f"{answer['FailedRecordCount']} records failed")
        calls += 1
    return calls


def drain(args: argparse.Namespace) -> dict[str, float]:
    template = line_template(args.line_bytes)
    records = [record(make_line(template, i)) for i in range(args.count)]
    client = make_client("kinesis", args.endpoint)
    client.list_shards(StreamName=args.stream)  # connection and credentials ready before the clock
    began = time.time()
    calls = put_all(client, args.stream, records)
    return {"seconds": time.time() - began, "calls": calls, "records": len(records)}


def batcher(args: argparse.Namespace) -> dict[str, float]:
    """Lines accepted at `rate` by one thread; another sends whatever is waiting (up to 500 a
    call) as soon as its previous call has returned: no period, no batch target."""
    template = line_template(args.line_bytes)
    client = make_client("kinesis", args.endpoint)
    client.list_shards(StreamName=args.stream)
    total = int(args.rate * args.seconds)
    accepted: list[tuple[int, float]] = []
    waiting: list[bytes] = []
    lock = threading.Lock()
    done = threading.Event()
    calls = 0

    def send() -> None:
        nonlocal waiting, calls
        while True:
            with lock:
                batch, waiting = waiting[:BATCH], waiting[BATCH:]
            if batch:
                calls += put_all(client, args.stream, batch)
            elif done.is_set():
                return
            else:
                time.sleep(0.001)

    sender = threading.Thread(target=send)
    sender.start()
    start = time.time() + 0.2
    for index in range(total):
        delay = start + index / args.rate - time.time()
        if delay > 0:
            time.sleep(delay)
        line = make_line(template, index, time.time())
        with lock:
            waiting.append(record(line))
        accepted.append((index, time.time()))
    done.set()
    sender.join()
    with open(args.accepted, "w") as handle:
        json.dump(accepted, handle)
    return {"lines": total, "calls": calls}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("drain", "batcher"))
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--line-bytes", type=int, default=1024)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--accepted", default="")
    args = parser.parse_args()
    result = drain(args) if args.mode == "drain" else batcher(args)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
