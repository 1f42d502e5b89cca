"""The extension's exceptions.

    AwsLoggerError
    ├── SettingsError        an option's value is unusable (names each option; secrets redacted)
    ├── RegistrationError    osqueryd refused to register the extension
    └── DeliveryError        a put to Kinesis or Firehose failed as a whole
"""

from __future__ import annotations


class AwsLoggerError(Exception):
    """Base of every error this extension raises on purpose."""


class SettingsError(AwsLoggerError):
    """One or more options have unusable values; `problems` names each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings: " + "; ".join(problems))


class RegistrationError(AwsLoggerError):
    """osqueryd answered registerExtension with a failure."""

    def __init__(self, message: str, *, name_clash: bool = False) -> None:
        self.name_clash = name_clash
        super().__init__(message)


class DeliveryError(AwsLoggerError):
    """A whole PutRecords/PutRecordBatch call failed.

    `retriable` says whether sending the same records again later can succeed (throttling,
    5xx, connection trouble) or needs an operator (missing stream, access denied).
    """

    def __init__(self, code: str, message: str, *, retriable: bool, throttled: bool = False,
                 expired_credentials: bool = False) -> None:
        self.code = code
        self.retriable = retriable
        self.throttled = throttled
        self.expired_credentials = expired_credentials
        super().__init__(f"{code}: {message}")
