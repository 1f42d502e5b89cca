"""osquery logger plugins aws_kinesis and aws_firehose, as an extension with a durable spool."""

from __future__ import annotations

__version__ = "0.1.0"

from ._errors import AwsLoggerError, DeliveryError, RegistrationError, SettingsError
from ._settings import OPTIONS, Settings, build_settings, parse_settings

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
