"""The floor of issue 6's cost per line: a bare osquery-python logger extension that does nothing.

Two logger plugins (named like the extension's, so the stand-in drives both the same way), each
answering every line with ExtensionStatus(code=0) through osquery-python's own start_extension
(TSimpleServer, TBufferedTransport, TBinaryProtocol).
"""

import osquery
from osquery.extensions.ttypes import ExtensionStatus


@osquery.register_plugin
class BareKinesis(osquery.LoggerPlugin):
    def name(self):
        return "aws_kinesis"

    def log_string(self, value):
        return ExtensionStatus(code=0, message="OK")


@osquery.register_plugin
class BareFirehose(osquery.LoggerPlugin):
    def name(self):
        return "aws_firehose"

    def log_string(self, value):
        return ExtensionStatus(code=0, message="OK")


if __name__ == "__main__":
    osquery.start_extension(name="bare_logger", version="1.0.0")
