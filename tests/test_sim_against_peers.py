"""The simulation's model against the real peers: one host's lines shipped by the extension's own
flusher to moto behind the fault proxy, and the same lines through one simulated host given the
same faults (the proxy's rules replayed by `sim.model.Script`). Both must make the same calls,
deliver the same rows and count the same retries."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from osquery_aws_logger.counters import PluginCounters
from osquery_aws_logger.delivery.accumulator import Accumulator
from osquery_aws_logger.delivery.flusher import Flusher
from osquery_aws_logger.delivery.services import SERVICES, clients_for
from osquery_aws_logger.settings import Settings
from osquery_aws_logger.spool import KIND_RESULT, Spool
from sim.fleet import Fleet, FleetConfig, result_lines
from sim.host import quiet_extension_logs
from sim.model import Script
from tests.conftest import Aws
from tests.localaws import FaultProxy

LINES = 1200
#: The simulated network's round trip (the driver of the real flusher adds the same).
TRIP = 2e-6
OPERATION = {"kinesis": "PutRecords", "firehose": "PutRecordBatch"}


def faults(service: str, proxy: FaultProxy, script: Script) -> None:
    """One pattern, played by the proxy in front of moto and by the model."""
    put = OPERATION[service]
    proxy.throttle(1, "AssumeRole")
    script.throttle(1, "sts")
    proxy.throttle(1, put)
    script.throttle(1, "put")
    failing = range(0, 500, 7)
    proxy.fail_entries(failing, times=2, target=put)
    script.fail_entries(failing, times=2)
    proxy.error(1, 500, target=put)
    script.error(1, 500)


def real_host(settings: Settings, service: str, lines: list[bytes], tmp_path: Path,
              seed: int) -> tuple[PluginCounters, int]:
    """The extension's spool, accumulator and flusher (Sender, AwsClients, botocore), its loop
    driven pass by pass in virtual time as `sim/fleet.py` drives a simulated host."""
    counters = PluginCounters()
    spool = Spool(tmp_path / service, max_records=settings.buffered_log_max,
                  max_bytes=settings.aws_logger_spool_max_bytes, on_drop=counters.drop)
    for line in lines:
        counters.accepted += 1
        spool.append(KIND_RESULT, line)
    random.seed(seed)  # as the simulation seeds the extension's draws: the same backoff jitter
    accumulator = Accumulator(f"aws_{service}", SERVICES[service], spool, counters, settings,
                              host_identifier="local", now=0.0)
    environ = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_EC2_METADATA_DISABLED": "true"}
    flusher = Flusher([accumulator], settings,
                      clients_factory=lambda s: clients_for(s, environ=environ))
    now = 0.0
    passes = 0
    while accumulator.waiting() and passes < 10_000:
        passes += 1
        sent, wake = flusher.turn(now)
        now = now + TRIP if sent else max(now, wake)
    accumulator.close()
    return counters, passes


@pytest.mark.parametrize("service", ["kinesis", "firehose"])
def test_a_simulated_host_makes_the_calls_the_real_one_makes_against_moto(
        service: str, aws: Aws, tmp_path: Path) -> None:
    quiet_extension_logs()
    rng = random.Random(5)
    lines = [line.replace(b'"counter":', b'"i":%d,"counter":' % i)
             for i, line in enumerate(result_lines("sim-peer-host", rng, 700, LINES))]
    script = Script(service)
    config = FleetConfig(hosts=1, service=service, stream=aws.stream if service == "kinesis"
                         else aws.delivery_stream, role=True, start_window=0.0,
                         arrivals=[(0.0, LINES)], lines=lines, script=script,
                         rtt_median=TRIP, rtt_sigma=0.0, uplink_bps=float("inf"), seed=3)
    fleet = Fleet(config)
    settings = replace(fleet.settings, aws_kinesis_endpoint=aws.proxy.url,
                       aws_firehose_endpoint=aws.proxy.url, aws_sts_endpoint=aws.proxy.url)
    faults(service, aws.proxy, script)
    counters, _ = real_host(settings, service, lines, tmp_path, seed=3 * 7919 + 1)
    fleet.run()
    simulated = fleet.states[0].host
    assert simulated is not None

    real_calls = [(c.operation, c.entries) for c in aws.proxy.calls
                  if c.operation in (OPERATION[service], "AssumeRole")]
    assert real_calls == script.calls, "the same calls, each with the same entries"
    assert len(real_calls) >= 7 and aws.proxy.pending_faults() == 0, "every fault was played"
    figures = ("accepted", "delivered", "retried", "throttled", "put_calls")
    real: dict[str, Any] = {name: getattr(counters, name) for name in figures}
    assert real == {name: getattr(simulated.counters, name) for name in figures}
    assert real["delivered"] == LINES and real["retried"] > 0 and real["throttled"] > 0
    assert simulated.sts_calls == 2, "AssumeRole throttled once, then served"

    stored = ([data for data, _ in aws.kinesis_records()] if service == "kinesis"
              else aws.firehose_lines())
    assert sorted(json.loads(record)["i"] for record in stored) == list(range(LINES)), \
        "moto holds every line once"
    assert bytes(simulated.taken) == b"\x01" * LINES, "the simulation delivered each once too"
