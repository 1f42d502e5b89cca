"""Which failures are worth retrying, and backoff as state the flusher loop checks (never a sleep).

The code lists are botocore's own, read from the installed botocore when this module loads:
the throttling and transient codes of its standard retry mode (``botocore.retries.standard``)
and every service error code and HTTP status its legacy retry table (``_retry.json``) retries,
for all services and for Kinesis and Firehose in particular. To those we add the codes Kinesis
and Firehose answer for one entry of a batch, which botocore never sees (it retries whole calls).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import botocore.loaders
from botocore.exceptions import BotoCoreError, ClientError
from botocore.retries import standard

from ..errors import DeliveryError
from ..redact import redact
from .aws import connection_error

#: Codes Kinesis and Firehose give a whole call or a single entry that botocore's lists lack.
SERVICE_THROTTLING_CODES: Final = frozenset({
    "KMSThrottlingException",  # an entry of an encrypted stream, over the KMS key's rate
    "ServiceUnavailableException",  # Firehose's answer when a delivery stream is over its limits
    "ServiceUnavailable",
})
SERVICE_TRANSIENT_CODES: Final = frozenset({
    "InternalFailure",  # PutRecords entry: the shard had trouble storing it
    "InternalError",
    "InternalServerError",
    "InternalFailureException",
    "ServiceFailure",  # PutRecordBatch entry
    "ServiceFailureException",
    "KMSInternalException",
})
#: The credentials in use have run out: refresh them, then retry at once.
EXPIRED_CODES: Final = frozenset({
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
})
#: Services whose section of botocore's retry table applies here.
_SERVICES: Final = ("kinesis", "firehose")


def _policy_conditions(table: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every "response" condition of the retry policies that apply to our services."""
    definitions = table.get("definitions", {})
    retry = table.get("retry", {})
    sections = [retry.get("__default__", {})]
    for service in _SERVICES:
        sections.extend(retry.get(service, {}).values())
    for section in sections:
        for named in section.get("policies", {}).values():
            policy = definitions.get(named["$ref"], {}) if "$ref" in named else named
            response = policy.get("applies_when", {}).get("response")
            if response:
                yield response


def _botocore_codes() -> tuple[frozenset[str], frozenset[str], frozenset[int]]:
    """(throttling codes, transient codes, transient HTTP statuses) as botocore has them."""
    throttling: set[str] = set()
    transient: set[str] = set()
    statuses: set[int] = set()
    # Private attributes of botocore: read defensively, a botocore release may rename them.
    throttling.update(getattr(standard.ThrottledRetryableChecker, "_THROTTLED_ERROR_CODES", ()))
    transient.update(getattr(standard.TransientRetryableChecker, "_TRANSIENT_ERROR_CODES", ()))
    statuses.update(getattr(standard.TransientRetryableChecker, "_TRANSIENT_STATUS_CODES", ()))
    # The legacy table is data shipped with botocore; a missing or reshaped one costs only it.
    with contextlib.suppress(Exception):
        for response in _policy_conditions(botocore.loaders.Loader().load_data("_retry")):
            code = response.get("service_error_code")
            status = response.get("http_status_code")
            if code:
                # Every coded policy of the table is a throttle (Throttling*, *LimitExceeded,
                # ProvisionedThroughputExceededException).
                throttling.add(str(code))
            elif isinstance(status, int) and status != 429:
                statuses.add(status)
    # botocore lists PriorRequestNotComplete under both; it is a busy server, not our rate.
    throttling.discard("PriorRequestNotComplete")
    return frozenset(throttling), frozenset(transient), frozenset(statuses)


_BOTO_THROTTLING, _BOTO_TRANSIENT, _BOTO_STATUSES = _botocore_codes()

#: Error codes of a whole call (or of one entry) that mean "too fast: send later".
THROTTLING_CODES: Final = _BOTO_THROTTLING | SERVICE_THROTTLING_CODES
#: Codes that mean the service had trouble: the same call can succeed later.
TRANSIENT_CODES: Final = _BOTO_TRANSIENT | SERVICE_TRANSIENT_CODES | {"PriorRequestNotComplete"}
#: HTTP statuses botocore retries whatever the code (5xx); 429 is a throttle.
TRANSIENT_STATUSES: Final = _BOTO_STATUSES | {500, 502, 503, 504}
THROTTLING_STATUSES: Final = frozenset({429})


def is_throttling(code: str, http_status: int = 0) -> bool:
    return code in THROTTLING_CODES or http_status in THROTTLING_STATUSES


def is_retriable(code: str, http_status: int = 0) -> bool:
    """Whether sending the same records again, unchanged, can succeed without an operator."""
    return (code in THROTTLING_CODES or code in TRANSIENT_CODES or code in EXPIRED_CODES
            or http_status in TRANSIENT_STATUSES or http_status in THROTTLING_STATUSES
            or http_status >= 500)


def delivery_error(exc: Exception, *, read_timeout: float | None = None) -> DeliveryError:
    """A botocore failure of a whole call, classified, with its cause: for connection trouble
    the URL and why (refused, DNS, TLS, proxy, timeout). Service and exception text is
    redacted of every known secret before it is cut to length (so no half secret survives)."""
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = redact(str(error.get("Code") or "ClientError"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return DeliveryError(code, redact(str(error.get("Message", "")))[:300],
                             retriable=is_retriable(code, status),
                             throttled=is_throttling(code, status),
                             expired_credentials=code in EXPIRED_CODES)
    if isinstance(exc, BotoCoreError):
        # Connection refused/reset, DNS, timeouts, TLS, proxy: all worth retrying.
        cause, message = connection_error(exc, read_timeout=read_timeout)
        return DeliveryError(type(exc).__name__, f"{cause}: {message}", retriable=True)
    return DeliveryError(type(exc).__name__, "unexpected failure: " + redact(str(exc))[:200],
                         retriable=True)


def jitter_source() -> random.Random:
    """A generator of its own for each backoff (and pacing), seeded from the `random` module's:
    the jitter of two destinations never moves in step, and seeding the module (the fleet
    simulation's `--seed`) makes every backoff of a run repeatable."""
    return random.Random(random.getrandbits(64))


@dataclass
class Backoff:
    """Exponential backoff with full jitter and a cap: when the next attempt may be made.

    The flusher asks `ready(now)`; nothing waits inside. Full jitter spreads a fleet's retries
    after a shared outage instead of having every host retry in step.
    """

    base_seconds: float = 0.5
    cap_seconds: float = 60.0
    failures: int = 0
    retry_at: float = 0.0
    _random: random.Random = field(default_factory=jitter_source, repr=False)

    def ready(self, now: float) -> bool:
        return now >= self.retry_at

    def failed(self, now: float) -> float:
        """Record a failure at `now`; answer the delay chosen before the next attempt."""
        ceiling = min(self.cap_seconds, self.base_seconds * (2 ** min(self.failures, 30)))
        self.failures += 1
        delay = self._random.uniform(0.0, ceiling)
        self.retry_at = now + delay
        return delay

    def give_up_for_now(self, now: float) -> None:
        """An error only an operator can fix: try again at the cap, no sooner."""
        self.failures += 1
        self.retry_at = now + self.cap_seconds

    def succeeded(self) -> None:
        self.failures = 0
        self.retry_at = 0.0
