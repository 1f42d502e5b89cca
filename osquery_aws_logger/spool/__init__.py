"""Stage 2, the spool: every accepted line on disk before osqueryd's call is answered.

Owns: like Vector's disk buffer, a folder of small parts. The record format and its reader
(`record`), the acknowledged position written in place (`ledger`), segment files and the
previous format's migration (`segments`), the spool itself (`spool`: append, read, acknowledge,
caps), the room spools share on a filesystem and the descriptors they hold (`group`), a spool
read without changing it (`inspect`), the in-memory test double with the same contract
(`memory`), and the list of spool directories a host has used (`directories`).

May import: the base modules only. The osquery side appends here and delivery reads; the spool
knows neither.
"""

from .group import SpoolGroup
from .memory import MemorySpool, MemoryStore
from .record import KIND_RESULT, KIND_STATUS, SpooledRecord
from .spool import Spool, SpoolLike

__all__ = ["KIND_RESULT", "KIND_STATUS", "MemorySpool", "MemoryStore", "Spool", "SpoolGroup",
           "SpoolLike", "SpooledRecord"]
