"""Stage 2, the spool: every accepted line on disk before osqueryd's call is answered.

Owns: like Vector's disk buffer, a folder of small parts. The record format and its reader
(`record`), the acknowledged position written in place (`ledger`), the spool directory's
descriptor (`handle`), the segment files in order with the one being written, its rolling and
failed writes (`segments`), the previous format's migration (`migration`), what is on disk at
open made into the state a spool starts from (`recovery`), the flusher's read position and the
damage it meets (`reading`), what waits and the caps that give up the oldest (`backlog`), the
spool itself, a facade that holds the lock over those parts (`spool`), what delivery needs of a
spool (`contract`), the room spools share on a filesystem and the descriptors they hold
(`group`), a spool read without changing it (`inspect`), the in-memory test double with the same
contract (`memory`), and the list of spool directories a host has used (`directories`).

May import: the base modules only. The osquery side appends here and delivery reads; the spool
knows neither.
"""

from .group import SpoolGroup
from .memory import MemorySpool, MemoryStore
from .record import KIND_RESULT, KIND_STATUS, SpooledRecord
from .spool import Spool, SpoolLike

__all__ = ["KIND_RESULT", "KIND_STATUS", "MemorySpool", "MemoryStore", "Spool", "SpoolGroup",
           "SpoolLike", "SpooledRecord"]
