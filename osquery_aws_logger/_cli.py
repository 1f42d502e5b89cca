"""The osquery-aws-logger command: the argv osqueryd's autoload passes, plus osquery's AWS flags."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from ._extension import ExtensionArgs, run
from ._settings import OPTIONS, SECRET_OPTIONS, _parse_bool

DEFAULT_SOCKET = "/var/osquery/osquery.em"


def _expand_flagfiles(argv: Sequence[str]) -> list[str]:
    """Replace --flagfile=PATH (or --flagfile PATH) with the flags in that file, as gflags does.

    A flag file keeps secrets out of the process listing, where command-line flags are visible.
    """
    out: list[str] = []
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        path = None
        if item.startswith("--flagfile="):
            path = item.split("=", 1)[1]
        elif item == "--flagfile" and index + 1 < len(items):
            index += 1
            path = items[index]
        if path is None:
            out.append(item)
        else:
            for raw_line in Path(path).read_text().splitlines():
                line = raw_line.strip()
                if line and not line.startswith(("#", ";")):
                    out.append(line)
        index += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="osquery-aws-logger",
        description="osquery extension: the aws_kinesis and aws_firehose logger plugins.")
    parser.add_argument("--socket", default=DEFAULT_SOCKET,
                        help="osqueryd's extension manager socket (osqueryd passes it)")
    parser.add_argument("--timeout", type=float, default=3.0,
                        help="seconds to wait for the extension manager (osqueryd passes it)")
    parser.add_argument("--interval", type=float, default=3.0,
                        help="seconds between checks that osqueryd is alive (osqueryd passes it)")
    parser.add_argument("--verbose", action="store_true", help="log more (osqueryd passes it)")
    parser.add_argument("--flagfile", help="read more flags from this file, one per line")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    group = parser.add_argument_group(
        "osquery options", "Each also comes from osqueryd's options (core flag or custom_ form); "
        "a value given here wins.")
    for spec in OPTIONS:
        boolean = spec.parse is _parse_bool
        group.add_argument(f"--{spec.name}", dest=spec.name, metavar="VALUE",
                           nargs="?" if boolean else None, const="true" if boolean else None,
                           help=f"{spec.help} (default: {spec.default or 'empty'})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    try:
        expanded = _expand_flagfiles(raw)
    except OSError as exc:
        print(f"osquery-aws-logger: cannot read flag file: {exc}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(expanded)
    logging.basicConfig(
        stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.INFO,
        format="osquery-aws-logger %(levelname)s %(name)s: %(message)s")
    # thrift logs every refused connect attempt and botocore every request; neither helps an
    # operator unless asked for.
    # botocore's DEBUG lines carry request headers (session token) and proxy URLs (password):
    # never below INFO, even with --verbose.
    for noisy in ("thrift", "botocore", "urllib3", "boto3"):
        logging.getLogger(noisy).setLevel(logging.INFO if args.verbose else logging.WARNING)
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
