"""`osquery-aws-logger status` and `osquery-aws-logger check`: health checks for operators."""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from ._aws import AwsClients, resolve_credentials, service_region
from ._errors import DeliveryError
from ._flags import add_option_flags, expand_flagfiles
from ._retry import delivery_error
from ._safefs import spool_problem
from ._service import SERVICES, Service
from ._settings import CUSTOM_PREFIX, OPTION_NAMES, OPTIONS, option_default, parse_settings
from ._status import read_status


def _age(seconds: int) -> str:
    if seconds <= 0:
        return "-"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def status_main(argv: Sequence[str]) -> int:
    """Figures read straight from the spool and state on disk; exit 1 if anything is unwell."""
    parser = argparse.ArgumentParser(prog="osquery-aws-logger status",
                                     description="Health of each plugin, from the spool on disk.")
    parser.add_argument("--aws_logger_spool_dir", default=option_default("aws_logger_spool_dir"))
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args(list(argv))
    rows = read_status(Path(args.aws_logger_spool_dir))
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
    elif not rows:
        problem = spool_problem(Path(args.aws_logger_spool_dir))
        print(f"no spool under {args.aws_logger_spool_dir}" + (f": {problem}" if problem else ""))
    else:
        now = int(time.time())
        print(f"{'plugin':18s} {'state':10s} {'waiting':>9s} {'oldest':>7s} {'delivered':>10s} "
              f"{'dropped':>8s} {'updated':>8s}  last error")
        for row in rows:
            updated = int(row.get("updated") or 0)
            print(f"{row['plugin']:18s} {row['state']:10s} {row['spool_records']:9d} "
                  f"{_age(int(row['oldest_age_seconds'])):>7s} {row.get('delivered') or 0!s:>10s} "
                  f"{row.get('dropped') or 0!s:>8s} {_age(now - updated) if updated else '-':>8s}  "
                  f"{row.get('last_error') or ''}")
    if not rows:
        return 1
    return 0 if all(row["healthy"] for row in rows) else 1


def _config_options(path: str) -> dict[str, str]:
    """The "options" of an osquery config file, as text, both plain and custom_ names."""
    document = json.loads(Path(path).read_text())
    options = document.get("options", {}) if isinstance(document, dict) else {}
    return {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in options.items()}


def check_main(argv: Sequence[str]) -> int:
    """Validate the settings an operator would run with, resolve credentials, reach the streams."""
    parser = argparse.ArgumentParser(
        prog="osquery-aws-logger check",
        description="Check settings, credentials and streams as the extension would use them.")
    parser.add_argument("--config", help="an osquery config file (JSON) whose options to use")
    parser.add_argument("--send-test", action="store_true",
                        help="put one record marked log_type=test to each configured stream")
    add_option_flags(parser)
    args = parser.parse_args(expand_flagfiles(argv))
    problems: list[str] = []
    options: dict[str, str] = {}
    if args.config:
        try:
            options = _config_options(args.config)
        except (OSError, ValueError) as exc:
            print(f"FAIL config {args.config}: {exc}")
            return 1
    unknown = sorted(k for k in options if k.removeprefix(CUSTOM_PREFIX).startswith("aws_")
                     and k.removeprefix(CUSTOM_PREFIX) not in OPTION_NAMES)
    for name in unknown:
        problems.append(f"{name}: not an option of this extension")
    command_line = {s.name: getattr(args, s.name) for s in OPTIONS if getattr(args, s.name) is not None}
    settings, invalid = parse_settings(options, command_line)
    problems += invalid
    for problem in problems:
        print(f"FAIL {problem}")
    print("settings:")
    shown = settings.dump()
    for spec in OPTIONS:
        if shown[spec.name] and shown[spec.name] != spec.default:
            print(f"  {spec.name} = {shown[spec.name]}")
    services = [s for s in SERVICES.values() if s.settings(settings).stream]
    if not services:
        problems.append("no stream set: set aws_kinesis_stream and/or aws_firehose_stream")
        print(f"FAIL {problems[-1]}")
    if invalid:
        return 1
    base = resolve_credentials(settings, os.environ)
    if base is None:
        print("FAIL credentials: none in any source (flags, aws_profile_name, environment, "
              "default profile, instance metadata)")
        return 1
    print(f"ok   credentials from {base.source}")
    clients = AwsClients(settings)
    for service in services:
        stream = service.settings(settings).stream
        label = f"{service.name} {stream!r} in {service_region(service.name, settings, os.environ)}"
        try:
            problems += _check_stream(clients, service, stream, label, send_test=args.send_test)
        except DeliveryError as exc:
            problems.append(f"{label}: {exc}")
            print(f"FAIL {problems[-1]}")
    if clients.credential_source and clients.credential_source != base.source:
        print(f"ok   assumed {clients.credential_source}")
    return 1 if problems else 0


def _check_stream(clients: AwsClients, service: Service, stream: str, label: str, *,
                  send_test: bool) -> list[str]:
    try:
        state = service.describe(clients, stream)
    except Exception as exc:
        error = delivery_error(exc)
        print(f"FAIL {label}: {error}")
        return [f"{label}: {error}"]
    print(f"ok   {label}: {state}")
    if not send_test:
        return []
    record = json.dumps({"log_type": "test", "message": "osquery-aws-logger check --send-test",
                         "hostIdentifier": socket.gethostname(), "unixTime": int(time.time())},
                        separators=(",", ":")).encode()
    try:
        # The production put path: the same request body, signing and answer parsing.
        codes = service.put(clients, stream, [service.test_entry(record, socket.gethostname())])
    except Exception as exc:
        error = delivery_error(exc)
        print(f"FAIL {label}: test record: {error}")
        return [f"{label}: test record: {error}"]
    if any(codes):
        print(f"FAIL {label}: the test record was refused ({codes[0]})")
        return [f"{label}: test record refused"]
    print(f"ok   {label}: test record sent")
    return []


def run_command(name: str, argv: Sequence[str]) -> int:
    return {"status": status_main, "check": check_main}[name](argv)


__all__ = ["check_main", "run_command", "status_main"]
