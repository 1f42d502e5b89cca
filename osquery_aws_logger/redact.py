"""One redaction of the known secrets, applied to any text from a service, an exception or a proxy.

The extension knows three kinds of secret: the secret access key, the session token and the
proxy password (plus the secret key and session token of assumed-role credentials, which come
from STS and change at every renewal). Text that did not come from this code may contain any of
them: an endpoint that echoes request headers, an exception that quotes a URL with its userinfo,
a proxy's error page. Every sink that a person or another program reads (log lines, state.json,
the aws_logger_status table, the metrics file, `check`'s output) passes text through `redact`.

The set is process-wide on purpose: the secrets are learnt where credentials are resolved (the
flusher thread, or `check`), and the log handler that must hide them runs in every thread.

Some secrets are seen before this code could learn them: with aws_debug, botocore logs an STS
AssumeRole answer (the new secret key and session token) while parsing it, before the
credentials are handed back, and it logs every request's headers. So the fields and headers
that carry secrets are masked by their names as well (`FIELDS`), whatever their values.
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

#: Secrets by where they stand rather than by value: STS's XML answer, JSON or a Python dict's
#: repr (botocore's debug lines), the request headers botocore and urllib3 print (Authorization
#: carries a signature, X-Amz-Security-Token the session token, Proxy-Authorization the proxy's
#: BasicAuth, X-aws-ec2-metadata-token the IMDS token) and a URL's user:password@.
FIELDS: Final = re.compile(
    r"(?P<xml><(?P<tag>SecretAccessKey|SessionToken|Token)>)[^<]*(?=</(?P=tag)>)"
    r"|(?P<key>(?<![A-Za-z])[\"']?(?:SecretAccessKey|SessionToken|Token|secret_key|token|"
    r"aws_secret_access_key|aws_session_token|secret_access_key|session_token)[\"']?\s*[:=]\s*"
    r"b?[\"']?)[^\"',}\s]+"
    r"|(?P<header>(?i:(?<![A-Za-z-])(?:authorization|x-amz-security-token|proxy-authorization|"
    r"x-aws-ec2-metadata-token))[\"']?\s*[:=]\s*(?-i:b)?[\"']?)[^\"'\r\n]+"
    r"|(?P<userinfo>[a-z][a-z0-9+.-]*://)[^/@\s\"']+@",
    re.IGNORECASE)


def _mask_field(match: re.Match[str]) -> str:
    kept = match.group("xml") or match.group("key") or match.group("header")
    if kept is not None:
        return kept + MASK
    return match.group("userinfo") + MASK + "@"


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
    """`text` with every known secret (in any of its known spellings), and whatever stands in a
    secret-bearing field or header (FIELDS), replaced by MASK."""
    if not text:
        return text
    pattern = _KNOWN.pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return FIELDS.sub(_mask_field, text)


def forget_all() -> None:
    """Start over with no known secrets (tests of this module)."""
    _KNOWN.clear()


__all__ = ["FIELDS", "MASK", "forget_all", "redact", "remember", "remember_basic_auth"]
