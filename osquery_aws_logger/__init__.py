"""osquery logger plugins aws_kinesis and aws_firehose, as an extension with a durable spool."""

from __future__ import annotations

from .errors import AwsLoggerError, DeliveryError, RegistrationError, SettingsError
from .settings import OPTIONS, Settings, build_settings, parse_settings
from .version import __version__

__all__ = [
    "OPTIONS",
    "AwsLoggerError",
    "DeliveryError",
    "RegistrationError",
    "Settings",
    "SettingsError",
    "__version__",
    "build_settings",
    "parse_settings",
]
