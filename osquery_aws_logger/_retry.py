"""Which failures are worth retrying, and backoff as state the flusher loop checks (never a sleep)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

#: Error codes of a whole call (or of one entry) that mean "too fast: send later".
THROTTLING_CODES: Final = frozenset({
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "ServiceUnavailableException",  # Firehose's answer when a delivery stream is over its limits
    "ServiceUnavailable",
    "SlowDown",
    "KMSThrottlingException",
    "LimitExceededException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
})
#: Codes that mean the service had trouble: the same call can succeed later.
TRANSIENT_CODES: Final = frozenset({
    "InternalFailure",
    "InternalError",
    "InternalServerError",
    "InternalFailureException",
    "RequestTimeout",
    "RequestTimeoutException",
    "ServiceFailure",
    "ServiceFailureException",
    "PriorRequestNotComplete",
})
#: The credentials in use have run out: refresh them, then retry at once.
EXPIRED_CODES: Final = frozenset({
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
})


def is_throttling(code: str) -> bool:
    return code in THROTTLING_CODES


def is_retriable(code: str, http_status: int = 0) -> bool:
    """Whether sending the same records again, unchanged, can succeed without an operator."""
    return (code in THROTTLING_CODES or code in TRANSIENT_CODES or code in EXPIRED_CODES
            or http_status >= 500)


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
    _random: random.Random = field(default_factory=random.Random, repr=False)

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
