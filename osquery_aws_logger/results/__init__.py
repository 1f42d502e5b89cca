"""osquery's result and status lines: walked and counted as bytes, made into records. Pure.

Owns: the reading of a line (`scan`: `read_batch`, which both sides use, parses a small batch
line with orjson and walks a big one as bytes, its rows counted and found), the batch
format's reference expansion (`expand`), and result and status records (`records`: log_type,
ids, partition keys).

May import: the base modules (settings, errors, ...). Nothing of the stages: both the osquery
side (which counts a line's rows) and delivery (which makes its records) use this.
"""

from .records import result_record, status_record
from .scan import Unshippable, count_rows, read_batch, scan_line

__all__ = ["Unshippable", "count_rows", "read_batch", "result_record", "scan_line",
           "status_record"]
