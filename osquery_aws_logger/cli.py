"""The osquery-aws-logger command: the argv osqueryd's autoload passes, plus osquery's AWS flags."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .extension import ExtensionArgs, run
from .flags import add_option_flags, expand_flagfiles
from .logs import configure as configure_logging
from .logs import set_sdk_level
from .ops.commands import run_command
from .settings import OPTIONS, SECRET_OPTIONS
from .version import __version__

DEFAULT_SOCKET = "/var/osquery/osquery.em"
#: Subcommands for operators; without one the command runs the extension (osqueryd's argv).
COMMANDS = ("status", "check", "help")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="osquery-aws-logger",
        description="osquery extension: the aws_kinesis and aws_firehose logger plugins. "
        "Operators: `osquery-aws-logger status` and `osquery-aws-logger check --help`.")
    parser.add_argument("--socket", default=DEFAULT_SOCKET,
                        help="osqueryd's extension manager socket (osqueryd passes it)")
    parser.add_argument("--timeout", type=float, default=3.0,
                        help="seconds to wait for the extension manager (osqueryd passes it)")
    parser.add_argument("--interval", type=float, default=3.0,
                        help="seconds between checks that osqueryd is alive (osqueryd passes it)")
    parser.add_argument("--verbose", action="store_true", help="log more (osqueryd passes it)")
    parser.add_argument("--flagfile", help="read more flags from this file, one per line")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_option_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw and raw[0] in COMMANDS:
        configure_logging(logging.WARNING)
        for noisy in ("botocore", "urllib3", "boto3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        return run_command(raw[0], raw[1:])
    try:
        expanded = expand_flagfiles(raw)
    except OSError as exc:
        print(f"osquery-aws-logger: cannot read flag file: {exc}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(expanded)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO,
                      style=args.aws_logger_log_format or "text")
    # thrift logs every refused connect attempt and botocore every request; neither helps an
    # operator unless asked for. The SDK's DEBUG lines come only with aws_debug (read with the
    # settings, at every logger init), never from --verbose alone.
    logging.getLogger("thrift").setLevel(logging.INFO if args.verbose else logging.WARNING)
    set_sdk_level(logging.INFO if args.verbose else logging.WARNING)
    # While osqueryd is not (yet) up, thrift's TSocket logs an ERROR for every connect attempt
    # of the wait for the extension manager (about 30 of them); the extension says the one
    # thing that matters itself ("no osquery extension manager answered on ..."), so even
    # --verbose gains nothing from them.
    logging.getLogger("thrift.transport.TSocket").setLevel(logging.CRITICAL)
    command_line = {spec.name: getattr(args, spec.name) for spec in OPTIONS
                    if getattr(args, spec.name) is not None}
    on_argv = sorted(name for name in SECRET_OPTIONS
                     if any(item.startswith(f"--{name}") for item in raw))
    if on_argv:
        logging.getLogger("osquery_aws_logger").warning(
            "%s given on the command line, where the process listing shows it: put it in "
            "osquery's config or a --flagfile instead", ", ".join(on_argv))
    return run(ExtensionArgs(socket=args.socket, timeout=args.timeout, interval=args.interval,
                             verbose=args.verbose, command_line=command_line))
