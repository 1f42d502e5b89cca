"""Figures of a run: delay histograms and percentiles (no import of the extension)."""

from __future__ import annotations

import math
from typing import Final


class Histogram:
    """Delays in log-spaced bins (100 per decade from 1 ms): percentiles within 2.3 %."""

    PER_DECADE: Final = 100
    LOW: Final = -3  # 10^-3 s

    def __init__(self) -> None:
        self.bins = [0] * (self.PER_DECADE * 10)
        self.count = 0

    def add(self, seconds: float) -> None:
        index = int((math.log10(max(seconds, 1e-3)) - self.LOW) * self.PER_DECADE)
        self.bins[min(index, len(self.bins) - 1)] += 1
        self.count += 1

    def merge(self, other: Histogram) -> None:
        for index, value in enumerate(other.bins):
            self.bins[index] += value
        self.count += other.count

    def percentile(self, q: float) -> float:
        """The `q`-th percentile (0-100), as its bin's geometric middle; NaN when empty."""
        if not self.count:
            return math.nan
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for index, value in enumerate(self.bins):
            seen += value
            if seen >= rank:
                return float(10 ** (self.LOW + (index + 0.5) / self.PER_DECADE))
        return math.inf
