"""Stage 1, the osquery side: what osqueryd calls, answered without waiting on anything.

Owns: the socket loop (`server`: one selector loop, no connection holding up another), the
Thrift messages decoded and answered from bytes (`wire`), the client of osqueryd's extension
manager (`manager`), and the logger plugins and the Extension service (`plugins`: a line is
counted in rows, handed to its spool, and answered 0).

May import: the base modules, `results` and `spool`. Never delivery: nothing here may wait on
AWS, and the plugins know a service only by its typed options.
"""

from .plugins import Handler, LoggerPlugin
from .server import Server

__all__ = ["Handler", "LoggerPlugin", "Server"]
