"""The extension's log lines: an ISO-8601 UTC time on each, text or JSON, secrets redacted.

osqueryd relays an extension's stderr as it is (no time, no prefix of its own), so each line
carries its own timestamp. `aws_logger_log_format=json` makes one JSON object per line for log
pipelines. Every line, tracebacks included, passes through the one redaction of known secrets.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from types import TracebackType
from typing import IO, TYPE_CHECKING, Final

from .redact import redact, remember, remember_basic_auth

if TYPE_CHECKING:
    from .settings import Settings

LOG_FORMATS: Final = ("text", "json")
PROGRAM: Final = "osquery-aws-logger"
#: The AWS SDK's loggers: what aws_debug turns up to DEBUG.
SDK_LOGGERS: Final = ("botocore", "boto3", "urllib3")
#: Longest SDK debug message kept (after redaction, so no secret is cut in two and half shown):
#: botocore prints whole request parameters and answers, a PutRecords answer of 500 entries
#: among them; the start says what the call was.
MAX_SDK_MESSAGE_CHARS: Final = 16_384


def iso_time(created: float) -> str:
    """2026-11-30T09:05:31.123Z: UTC, millisecond precision, the form log pipelines parse."""
    whole = int(created)
    millis = int((created - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


class LineFormatter(logging.Formatter):
    """Formats a record as text or JSON; `style` can change while the process runs."""

    def __init__(self, style: str = "text") -> None:
        super().__init__()
        self.style = style

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if len(message) > MAX_SDK_MESSAGE_CHARS and record.name.startswith(SDK_LOGGERS):
            message = redact(message)
            message = (message[:MAX_SDK_MESSAGE_CHARS]
                       + f"... ({len(message) - MAX_SDK_MESSAGE_CHARS} more characters)")
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if self.style == "json":
            document: dict[str, object] = {
                "time": iso_time(record.created), "level": record.levelname,
                "logger": record.name, "pid": os.getpid(), "message": redact(message)}
            if record.exc_text:
                document["exception"] = redact(record.exc_text)
            return json.dumps(document, ensure_ascii=False, separators=(",", ":"))
        line = f"{iso_time(record.created)} {PROGRAM} {record.levelname} {record.name}: {message}"
        if record.exc_text:
            line += "\n" + record.exc_text
        return redact(line)


_formatter = LineFormatter()
#: The SDK loggers' level without aws_debug (INFO with --verbose, else WARNING): set at start.
_sdk_level = [logging.WARNING]


def configure(level: int, *, stream: IO[str] | None = None, style: str = "text") -> None:
    """One handler on the root logger, writing formatted, redacted lines to stderr."""
    _formatter.style = style if style in LOG_FORMATS else "text"
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # An exception nobody caught is printed by Python itself, bypassing the handler: route it
    # through the handler instead, so it too gets a time and has its secrets redacted.
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def set_sdk_level(level: int) -> None:
    """The SDK loggers' level when aws_debug is off (from --verbose, at start)."""
    _sdk_level[0] = level
    set_sdk_debug(False)


def set_sdk_debug(on: bool) -> None:
    """aws_debug: botocore's, boto3's and urllib3's debug lines through the one handler (and so
    the one redaction), or back to the quiet level. Read again at every logger init."""
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if on else _sdk_level[0])


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("osquery_aws_logger").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    logging.getLogger("osquery_aws_logger").critical(
        "uncaught exception in thread %s", args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def set_style(style: str) -> None:
    """Switch text/JSON from settings read later (osqueryd's config, after registration)."""
    if style in LOG_FORMATS:
        _formatter.style = style


def note_settings(settings: Settings) -> None:
    """Settings were (re)read: take their log format and learn their secrets for redaction."""
    # Secrets first: the SDK's debug lines may follow at once.
    remember(settings.aws_secret_access_key, settings.aws_session_token)
    remember_basic_auth(settings.aws_proxy_username, settings.aws_proxy_password)
    set_style(settings.aws_logger_log_format)
    set_sdk_debug(settings.aws_debug)


__all__ = ["LOG_FORMATS", "SDK_LOGGERS", "LineFormatter", "configure", "iso_time", "note_settings",
           "set_sdk_debug", "set_sdk_level", "set_style"]
