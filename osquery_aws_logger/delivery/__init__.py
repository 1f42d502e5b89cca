"""Stage 3, delivery: from the spools to Kinesis and Firehose, by one flusher thread.

Owns: a line made into records (`shaper`), a destination's pending rows and acknowledgement
ledger (`lane`), rows moved to their destinations' spools (`router`), a destination's backoff
and state (`health`), the one plugin's coordinator (`accumulator`), the loop and the sender that
owns the network, the clients and the credentials (`flusher`, `aws`), the services as data
(`services`: one `Service` record each), put-call limits (`batching`), many rows a record
(`aggregate`), and which failures are retried (`retry`).

May import: the base modules, `results` and `spool`. Never the osquery side (delivery is
handed spools, not calls) nor the operator tools (the flusher calls `on_report` instead).
"""

from .accumulator import Accumulator
from .flusher import Flusher
from .services import FIREHOSE, KINESIS, SERVICES, Service

__all__ = ["FIREHOSE", "KINESIS", "SERVICES", "Accumulator", "Flusher", "Service"]
