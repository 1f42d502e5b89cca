"""One redaction of the known secrets, applied to any text from a service, an exception or a proxy.

The extension knows three kinds of secret: the secret access key, the session token and the
proxy password (plus the secret key and session token of assumed-role credentials, which come
from STS and change at every renewal). Text that did not come from this code may contain any of
them: an endpoint that echoes request headers, an exception that quotes a URL with its userinfo,
a proxy's error page. Every sink that a person or another program reads (log lines, state.json,
the aws_logger_status table, the metrics file, `check`'s output) passes text through `redact`.

The set is process-wide on purpose: the secrets are learnt where credentials are resolved (the
flusher thread, or `check`), and the log handler that must hide them runs in every thread.
"""

from __future__ import annotations

import base64
import re
import threading
from typing import Final
from urllib.parse import quote, quote_plus

MASK: Final = "<redacted>"
#: Shorter values are not redacted: a one- or two-character "secret" would mask every
#: occurrence of that letter in every line, and protects nothing anyway.
MIN_SECRET_LENGTH: Final = 4

def _forms(secret: str) -> set[str]:
    """The secret and the spellings it takes on its way into a URL, a header or a JSON text."""
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
    # JSON escaping (state.json, the table's answer as osqueryd's JSON) of quotes and slashes.
    forms.add(secret.replace("\\", "\\\\").replace('"', '\\"'))
    forms.add(secret.replace("/", "\\/"))
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


class _Known:
    """The secrets seen so far and one compiled pattern matching any of them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.secrets: set[str] = set()
        self.pattern: re.Pattern[str] | None = None

    def add(self, fresh: set[str]) -> None:
        with self.lock:
            if fresh <= self.secrets:
                return
            self.secrets |= fresh
            # Longest first, so a secret that contains another is masked whole.
            ordered = sorted(self.secrets, key=len, reverse=True)
            self.pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def clear(self) -> None:
        with self.lock:
            self.secrets.clear()
            self.pattern = None


_KNOWN: Final = _Known()


def remember(*secrets: str | None) -> None:
    """Add secrets to the set every later `redact` call hides (empty values are ignored)."""
    fresh: set[str] = set()
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            fresh |= _forms(secret)
    if fresh:
        _KNOWN.add(fresh)


def remember_basic_auth(username: str, password: str) -> None:
    """A proxy's BasicAuth credentials as they travel in a Proxy-Authorization header."""
    if password and len(password) >= MIN_SECRET_LENGTH:
        remember(password, base64.b64encode(f"{username}:{password}".encode()).decode())


def redact(text: str) -> str:
    """`text` with every known secret (in any of its known spellings) replaced by MASK."""
    pattern = _KNOWN.pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def forget_all() -> None:
    """Start over with no known secrets (tests of this module)."""
    _KNOWN.clear()


__all__ = ["MASK", "forget_all", "redact", "remember", "remember_basic_auth"]
