"""Command-line flags under osquery's option names, and gflags-style flag files."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from .settings import OPTIONS

#: What starts a comment line in a flag file: gflags' `#`, and the `//` and `;` osquery's docs
#: and packaged examples also use. The one rule for every flag file read here.
COMMENT_STARTS: Final = ("#", "//", ";")


def flagfile_lines(path: str) -> list[str]:
    """The flags of a gflags flag file, one a line, without blank and comment lines."""
    lines = (raw.strip() for raw in Path(path).read_text().splitlines())
    return [line for line in lines if line and not line.startswith(COMMENT_STARTS)]


def expand_flagfiles(argv: Sequence[str]) -> list[str]:
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
            out.extend(flagfile_lines(path))
        index += 1
    return out


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per option, under osquery's own name."""
    group = parser.add_argument_group(
        "osquery options", "Each also comes from osqueryd's options (core flag or custom_ form); "
        "a value given here wins.")
    for spec in OPTIONS:
        boolean = spec.boolean
        # Some help texts say their default themselves ("default: aws_kinesis_stream").
        default = "" if "default:" in spec.help else f" (default: {spec.default or 'empty'})"
        group.add_argument(f"--{spec.name}", dest=spec.name, metavar="VALUE",
                           nargs="?" if boolean else None, const="true" if boolean else None,
                           help=spec.help + default)
