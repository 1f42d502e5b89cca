"""The spool directories this host has used, so a changed aws_logger_spool_dir strands nothing.

The list lives beside osqueryd's extension socket (``/var/osquery/`` on Linux), the one place
that does not move when the spool does. At start the extension drains every earlier directory
that still holds rows (and says so once, naming it and its rows); once one is empty it is
forgotten. A list that cannot be read or written costs only this: it is never fatal.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Final

from ..files import FILE_FLAGS, atomic_write, parent_problem

log = logging.getLogger("osquery_aws_logger")

REGISTRY_FILE: Final = "osquery-aws-logger.spools"
#: Directories remembered at most (a config that changes the spool directory in a loop must not
#: grow the list without bound).
MAX_REMEMBERED: Final = 16


class SpoolDirectories:
    """The list of spool directories, kept in `home` (the extension socket's directory)."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def read(self) -> list[Path]:
        try:
            fd = os.open(self.home / REGISTRY_FILE, os.O_RDONLY | FILE_FLAGS | os.O_NONBLOCK)
        except OSError:
            return []
        try:
            document = json.loads(os.read(fd, 1 << 20))
        except (OSError, ValueError):
            return []
        finally:
            os.close(fd)
        if not isinstance(document, list):
            return []
        return [Path(entry) for entry in document if isinstance(entry, str) and os.path.isabs(entry)]

    def write(self, directories: list[Path]) -> None:
        unique = list(dict.fromkeys(str(d) for d in directories))[:MAX_REMEMBERED]
        problem = parent_problem(self.home / REGISTRY_FILE)
        if problem:
            log.debug("not keeping the list of spool directories in %s: %s", self.home, problem)
            return
        try:
            atomic_write(self.home, REGISTRY_FILE, json.dumps(unique).encode(), mode=0o600)
        except OSError as exc:
            log.debug("could not keep the list of spool directories in %s: %s", self.home,
                      exc.strerror or exc)


__all__ = ["REGISTRY_FILE", "SpoolDirectories"]
