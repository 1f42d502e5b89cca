"""`osquery-aws-logger status` and `osquery-aws-logger check`: health checks for operators."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..delivery.aws import (
    AwsClients,
    EndpointRefused,
    endpoint_for,
    no_credentials_message,
    resolve_credentials,
    service_region,
    sts_endpoint,
)
from ..delivery.retry import delivery_error
from ..delivery.services import SERVICES, Service, clients_for
from ..errors import DeliveryError
from ..files import spool_problem
from ..flags import add_option_flags, flagfile_lines
from ..logs import note_settings
from ..redact import redact
from ..settings import (
    CUSTOM_PREFIX,
    OPTION_NAMES,
    OPTIONS,
    Settings,
    option_default,
    parse_settings,
    unknown_options,
)
from .status import read_status


def say(text: str) -> None:
    """Print one line of `check`'s output, with every known secret redacted."""
    print(redact(text))


def _age(seconds: int, *, zero: str = "-") -> str:
    if seconds <= 0:
        return zero
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
    root = Path(args.aws_logger_spool_dir)
    rows = read_status(root)
    # Why there is nothing to show: a spool refused, or one this user cannot read.
    problem = spool_problem(root) if not rows else None
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        if problem:
            print(f"spool {root}: {problem}", file=sys.stderr)
    elif problem:
        print(f"spool {root}: {problem}")
    elif not rows:
        print(f"no spool under {root}")
    else:
        now = int(time.time())
        # A state file written this very second is 0s old, not "never" ("-").
        print(f"{'plugin':18s} {'state':10s} {'waiting':>9s} {'oldest':>7s} {'delivered':>10s} "
              f"{'dropped':>8s} {'updated':>8s}  last error")
        for row in rows:
            updated = int(row.get("updated") or 0)
            print(f"{row['plugin']:18s} {row['state']:10s} {row['spool_records']:9d} "
                  f"{_age(int(row['oldest_age_seconds'])):>7s} {row.get('delivered') or 0!s:>10s} "
                  f"{row.get('dropped') or 0!s:>8s} "
                  f"{_age(now - updated, zero='0s') if updated else '-':>8s}  "
                  f"{row.get('last_error') or ''}")
    if not rows:
        return 1
    return 0 if all(row["healthy"] for row in rows) else 1


def strip_config_comments(text: str) -> str:
    """osquery's config text without its comment lines, as osqueryd reads it: a line whose
    first non-blank characters are `#` or `//` is dropped before the JSON is parsed."""
    return "\n".join(line for line in text.splitlines()
                     if not line.lstrip().startswith(("#", "//")))


def _config_options(path: str) -> dict[str, str]:
    """The "options" of an osquery config file, as text, both plain and custom_ names."""
    document = json.loads(strip_config_comments(Path(path).read_text()))
    options = document.get("options", {}) if isinstance(document, dict) else {}
    return {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in options.items()}


def read_osquery_flagfile(path: str) -> tuple[dict[str, str], str | None, int]:
    """What concerns this extension in osqueryd's flagfile: its options, the config at
    --config_path, and how many other flags were ignored.

    gflags reads one flag a line, `--name=value` (or `-name=value`, or a bare `--name` for a
    boolean); blank and comment lines are skipped (`flagfile_lines`).
    """
    options: dict[str, str] = {}
    config_path = None
    ignored = 0
    for line in flagfile_lines(path):
        if not line.startswith("-"):
            continue
        name, has_value, value = line.lstrip("-").partition("=")
        name = name.strip()
        value = value.strip() if has_value else "true"
        if name == "config_path":
            config_path = value
        elif name in OPTION_NAMES or name.removeprefix(CUSTOM_PREFIX) in OPTION_NAMES:
            options[name] = value
        else:
            ignored += 1
    return options, config_path, ignored


def _credential_origin(settings: Settings, args: argparse.Namespace,
                       config_options: dict[str, str], flagfile_options: dict[str, str]) -> str:
    """Where the key pair that resolve_credentials calls "flags" was actually written."""
    name = "aws_access_key_id"
    if getattr(args, name) is not None:
        return "check's command line (--aws_access_key_id)"
    for written in (CUSTOM_PREFIX + name, name):
        if written in config_options:
            return f"the config's options ({written})"
    if name in flagfile_options:
        return "osqueryd's flagfile (--aws_access_key_id)"
    return "osquery options (aws_access_key_id)"


def _streams(settings: Settings, service: Service) -> list[str]:
    """Every stream a plugin may write to: its own, its status stream, its routes' streams."""
    view = service.settings(settings)
    found = [view.stream, view.status_stream, *(stream for stream, _ in view.routes)]
    return [s for i, s in enumerate(found) if s and s not in found[:i]]


def check_main(argv: Sequence[str]) -> int:
    """Validate the settings an operator would run with, resolve credentials, reach the streams."""
    parser = argparse.ArgumentParser(
        prog="osquery-aws-logger check",
        description="Check settings, credentials and streams as the extension would use them. "
        "Options come from osqueryd's flagfile, then the config's options, then the flags "
        "given here (each wins over the one before).")
    parser.add_argument("--config", help="an osquery config file (JSON, with osquery's # and // "
                        "comment lines) whose options to use; default: --config_path of --flagfile")
    parser.add_argument("--flagfile", help="osqueryd's flagfile: this extension's options and "
                        "--config_path are read from it, every other flag is ignored")
    parser.add_argument("--send-test", action="store_true",
                        help="put one record marked log_type=test to each configured stream")
    add_option_flags(parser)
    args = parser.parse_args(list(argv))
    problems: list[str] = []
    flagfile_options: dict[str, str] = {}
    config_path = args.config
    if args.flagfile:
        try:
            flagfile_options, from_flagfile, ignored = read_osquery_flagfile(args.flagfile)
        except (OSError, UnicodeDecodeError) as exc:
            say(f"FAIL flagfile {args.flagfile}: {exc}")
            return 1
        say(f"ok   flagfile {args.flagfile}: {len(flagfile_options)} options of this extension"
            f", {ignored} other flags ignored"
            + (f", config at {from_flagfile}" if from_flagfile else ""))
        config_path = config_path or from_flagfile
    config_options: dict[str, str] = {}
    if config_path:
        try:
            config_options = _config_options(config_path)
        except (OSError, ValueError) as exc:
            say(f"FAIL config {config_path}: {exc}")
            return 1
    options = {**flagfile_options, **config_options}
    for name, close in unknown_options(options):
        problems.append(f"{name}: not an option of this extension"
                        + (f" (did you mean {close}?)" if close else ""))
    command_line = {s.name: getattr(args, s.name) for s in OPTIONS if getattr(args, s.name) is not None}
    settings, invalid = parse_settings(options, command_line)
    note_settings(settings)  # secrets to redact, and aws_debug's SDK lines on stderr
    problems += invalid
    for problem in problems:
        say(f"FAIL {problem}")
    say("settings:")
    shown = settings.dump()
    for spec in OPTIONS:
        if shown[spec.name] and shown[spec.name] != spec.default:
            say(f"  {spec.name} = {shown[spec.name]}")
    services = [s for s in SERVICES.values() if s.settings(settings).stream]
    if not services:
        problems.append("no stream set: set aws_kinesis_stream and/or aws_firehose_stream")
        say(f"FAIL {problems[-1]}")
    if invalid:
        return 1
    # The endpoint each client will send to; with aws_enforce_fips, a refusal sends nothing.
    endpoints: dict[str, str] = {}
    used = [s.endpoint(settings) for s in services] + (
        [sts_endpoint(settings)] if settings.aws_sts_arn_role else [])
    for target in used:
        region = service_region(target, settings, os.environ)
        try:
            endpoints[target.service] = endpoint_for(target, region, settings)
            say(f"ok   {target.service} endpoint in {region}: {endpoints[target.service]}"
                + (" (FIPS)" if settings.aws_enforce_fips else ""))
        except EndpointRefused as exc:
            problems.append(f"{target.service} endpoint: {exc}")
            say(f"FAIL {problems[-1]}")
    if len(endpoints) < len(used):
        return 1
    base = resolve_credentials(settings, os.environ)
    if base is None:
        say(f"FAIL credentials: {no_credentials_message(settings, os.environ)}")
        return 1
    origin = base.source
    if origin == "flags":
        origin = _credential_origin(settings, args, config_options, flagfile_options)
    say(f"ok   credentials from {origin}")
    clients = clients_for(settings)
    for service in services:
        for stream in _streams(settings, service):
            label = f"{service.name} {stream!r} in " \
                f"{service_region(service.endpoint(settings), settings, os.environ)}"
            try:
                problems += _check_stream(clients, service, stream, label,
                                          send_test=args.send_test)
            except DeliveryError as exc:
                problems.append(f"{label}: {exc}")
                say(f"FAIL {problems[-1]}")
    if clients.credential_source and clients.credential_source != base.source:
        say(f"ok   assumed {clients.credential_source}")
    return 1 if problems else 0


def _check_stream(clients: AwsClients, service: Service, stream: str, label: str, *,
                  send_test: bool) -> list[str]:
    try:
        state = service.describe(clients, stream)
    except Exception as exc:
        error = delivery_error(exc, read_timeout=clients.read_timeout)
        say(f"FAIL {label}: {error}")
        return [f"{label}: {error}"]
    say(f"ok   {label}: {state}")
    if not send_test:
        return []
    record = json.dumps({"log_type": "test", "message": "osquery-aws-logger check --send-test",
                         "hostIdentifier": socket.gethostname(), "unixTime": int(time.time())},
                        separators=(",", ":")).encode()
    try:
        # The production put path: the same request body, signing and answer parsing.
        codes = service.put(clients, stream, [service.test_entry(record, socket.gethostname())])
    except Exception as exc:
        error = delivery_error(exc, read_timeout=clients.read_timeout)
        say(f"FAIL {label}: test record: {error}")
        return [f"{label}: test record: {error}"]
    if any(codes):
        say(f"FAIL {label}: the test record was refused ({codes[0]})")
        return [f"{label}: test record refused"]
    say(f"ok   {label}: test record sent")
    return []


def help_main(argv: Sequence[str]) -> int:
    """`osquery-aws-logger help [command]`: what each command is for, or one command's flags."""
    if argv and argv[0] in ("status", "check"):
        return run_command(argv[0], ["--help"])
    say("usage: osquery-aws-logger [status | check | help] ...\n\n"
        "Without a command it runs the extension; osqueryd starts it so (extensions_autoload)\n"
        "with --socket, --timeout, --interval and --verbose.\n\n"
        "  status   health of each plugin, read from the spool and state on disk\n"
        "  check    check settings, credentials and every stream as the extension would\n"
        "           (check --flagfile /etc/osquery/osquery.flags reads osqueryd's own files)\n"
        "  help     this text; `help status` or `help check` shows that command's flags\n\n"
        "`osquery-aws-logger --help` lists the extension's flags and options.")
    return 0


def run_command(name: str, argv: Sequence[str]) -> int:
    commands = {"status": status_main, "check": check_main, "help": help_main}
    return commands[name](argv)


__all__ = ["check_main", "help_main", "read_osquery_flagfile", "run_command", "status_main",
           "strip_config_comments"]
