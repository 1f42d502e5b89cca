"""One simulated host running the extension's own delivery code: the ONE module here that
imports `osquery_aws_logger` (when the package is reorganised, only this file follows it).

A host is what the extension process does for one logger plugin, minus the sockets:

- the thrift side (`LoggerPlugin._spool`): count the line accepted, append it to the spool,
  and wake the flusher each time a full batch waits unread;
- the spool: the package's own in-memory double (`osquery_aws_logger.spool.memory`), held to
  the on-disk spool's contract by `tests/test_memspool.py`: an hour's outage at 1,000 hosts
  leaves millions of rows waiting, which on disk (even a tmpfs) would be gigabytes and two
  descriptors a host;
- the accumulator, unchanged, driven only through its public calls: `ready(now)`,
  `completed(batch, codes, now)`, `failed(batch, error, now)`, `waiting()` and its counters;
- the flusher's loop (`Flusher.turn`/`Sender.send`): ask `ready`, put the one batch it hands
  out, report the outcome with the time the turn began (as `Sender.send` does), go round
  again at once after a send, else sleep until `wake_at`, at most a second (the fleet replays
  those one-second passes only where they can change anything: see `sim/fleet.py`);
- botocore's part: an answer with a whole-call error becomes the `ClientError` botocore would
  raise, classified by the extension's own `delivery_error`;
- credentials (`AwsClients`): with a role, AssumeRole on the first put, renewed at the same
  margin `AwsClients` uses (`REFRESH_MARGIN_SHARE` of the lifetime, at most
  `MAX_REFRESH_MARGIN`); a failed AssumeRole fails the put with the `DeliveryError` that
  `AwsClients._assume_role` raises. Mirrored here rather than run, because each real
  `AwsClients` builds boto3 sessions and clients (tens of milliseconds, megabytes) per host.
"""

from __future__ import annotations

import logging
import math
from array import array
from pathlib import Path
from typing import Final

from botocore.exceptions import ClientError

from osquery_aws_logger.counters import PluginCounters
from osquery_aws_logger.delivery.accumulator import Accumulator
from osquery_aws_logger.delivery.aws import MAX_REFRESH_MARGIN, REFRESH_MARGIN_SHARE
from osquery_aws_logger.delivery.lane import Batch
from osquery_aws_logger.delivery.retry import delivery_error, is_throttling
from osquery_aws_logger.delivery.services import SERVICES, Service
from osquery_aws_logger.errors import DeliveryError
from osquery_aws_logger.settings import Settings
from osquery_aws_logger.spool import KIND_RESULT
from osquery_aws_logger.spool.memory import MemorySpool
from sim.model import Answer
from sim.stats import Histogram

__all__ = ["Host", "Settings", "quiet_extension_logs"]

#: A directory that can never exist (a path under a device file): the accumulator looks for
#: routed spools there at start and finds none; nothing of the simulation touches the disk.
NO_DIRECTORY: Final = Path("/dev/null/osquery-aws-logger-sim")


def quiet_extension_logs() -> None:
    """Thousands of hosts retrying would log millions of health lines: keep only errors."""
    logging.getLogger("osquery_aws_logger").setLevel(logging.ERROR)


class Host:
    """One extension process's plugin for one service, as the flusher thread runs it."""

    def __init__(self, name: str, service: str, settings: Settings, lines: list[bytes], *,
                 now: float, delays: Histogram, measure_from: float = 0.0) -> None:
        self.name = name
        self.service: Service = SERVICES[service]
        self.settings = settings
        self.lines = lines
        self.delays = delays
        self.measure_from = measure_from  # rows accepted earlier are left out of the delays
        self.now = now  # the virtual clock the spool stamps lines with
        self.counters = PluginCounters()
        self.spool = MemorySpool(NO_DIRECTORY / name, max_records=settings.buffered_log_max,
                                 max_bytes=settings.aws_logger_spool_max_bytes,
                                 on_drop=self.counters.drop, clock=lambda: self.now)
        self.accumulator = Accumulator(f"aws_{service}", self.service, self.spool,
                                       self.counters, settings, host_identifier=name, now=now)
        self.appended = 0
        self.appended_at = array("d")
        #: Per row (index seq - 1): how many times AWS took it.
        self.taken = bytearray()
        self.batch_records = self.service.limits.max_records
        self.lifetime = float(settings.aws_sts_timeout)
        self.refresh_at: float | None = None  # no credentials yet
        self.sts_calls = 0
        self.first_taken_at: float | None = None

    # -- the thrift side ----------------------------------------------------------------------

    def log(self, count: int, now: float) -> bool:
        """`count` result lines from osqueryd; answers whether the thrift side woke the flusher
        (it does at each full batch waiting unread, as `LoggerPlugin._spool`)."""
        self.now = now
        wake = False
        lines, spool, batch = self.lines, self.spool, self.batch_records
        for _ in range(count):
            self.counters.accepted += 1
            waiting = spool.append(KIND_RESULT, lines[self.appended % len(lines)])
            self.appended += 1
            self.appended_at.append(now)
            self.taken.append(0)
            if waiting and waiting % batch == 0:
                wake = True
        return wake

    # -- the flusher side ---------------------------------------------------------------------

    def turn(self, now: float) -> tuple[Batch | None, float]:
        """One pass of `Flusher.turn` for this plugin: the batch to put now, if any, and when
        the accumulator next needs a pass."""
        self.now = now
        if not self.accumulator.waiting():
            return None, math.inf  # the flusher skips a plugin with nothing waiting
        ready = self.accumulator.ready(now)
        assert len(ready.batches) <= 1, "one destination hands out one batch at a time"
        return (ready.batches[0] if ready.batches else None), ready.wake_at

    def waiting(self) -> int:
        return self.accumulator.waiting()

    def needs_credentials(self, now: float) -> bool:
        """Whether the next put first calls AssumeRole (`AwsClients.client`)."""
        return bool(self.settings.aws_sts_arn_role) and (
            self.refresh_at is None or now >= self.refresh_at)

    def assumed_role(self, batch: Batch, turn_began: float, answered_at: float,
                     error: tuple[str, int] | None) -> bool:
        """AssumeRole answered: keep the credentials and go on with the put (True), or fail
        the put as `AwsClients._assume_role` does (False)."""
        self.sts_calls += 1
        if error is None:
            self.refresh_at = answered_at + self.lifetime - min(
                MAX_REFRESH_MARGIN, self.lifetime * REFRESH_MARGIN_SHARE)
            return True
        role = self.settings.aws_sts_arn_role
        self.accumulator.failed(batch, DeliveryError(
            f"AssumeRole.{error[0]}", f"could not assume {role}", retriable=True), turn_began)
        return False

    def entries(self, batch: Batch) -> list[tuple[str, int]]:
        """Each entry as the service counts it: (partition key, bytes with the key)."""
        return [(entry.partition_key, entry.size()) for entry in batch.entries]

    def answered(self, batch: Batch, turn_began: float, answer: Answer, taken_at: float) -> int:
        """The put's answer, reported as `Sender.send` reports it (with the time its turn
        began); answers how many of its rows were throttled."""
        if answer.error is not None:
            code, status = answer.error
            error = delivery_error(ClientError(
                {"Error": {"Code": code, "Message": "simulated"},
                 "ResponseMetadata": {"HTTPStatusCode": status}}, self.service.operation))
            self.accumulator.failed(batch, error, turn_began)
            return batch.rows if error.throttled else 0
        throttled = 0
        taken, appended_at, delays = self.taken, self.appended_at, self.delays
        since = self.measure_from
        for entry, outcome in zip(batch.entries, answer.codes, strict=True):
            if outcome is None:
                for seq in entry.seqs:
                    taken[seq - 1] += 1
                    if appended_at[seq - 1] >= since:
                        delays.add(taken_at - appended_at[seq - 1])
            elif is_throttling(outcome):
                throttled += entry.rows
        if self.first_taken_at is None and None in answer.codes:
            self.first_taken_at = taken_at
        self.accumulator.completed(batch, answer.codes, turn_began)
        return throttled

    # -- checks -------------------------------------------------------------------------------

    def finished_through(self) -> int:
        """Every row numbered up to this one is delivered or given up for good."""
        return self.spool.first_waiting() - 1

    def conservation(self) -> dict[str, int]:
        """This host's rows: each delivered once, or dropped and counted, or still waiting;
        the figures that must agree, computed independently of each other."""
        taken = self.taken
        twice = sum(1 for count in taken if count > 1)
        delivered = len(taken) - taken.count(0)
        given_up_undelivered = sum(taken[first - 1:end - 1].count(0)
                                   for first, end in self.spool.given_up)
        return {
            "appended": self.appended,
            "accepted": self.counters.accepted,
            "delivered_seen": delivered,
            "delivered_counted": self.counters.delivered,
            "delivered_twice": twice,
            "dropped_counted": sum(self.counters.dropped.values()),
            "given_up_undelivered": given_up_undelivered,
            "waiting": self.accumulator.waiting(),
        }
