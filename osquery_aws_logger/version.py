"""The version of osquery-aws-logger."""

__version__ = "0.1.0"
