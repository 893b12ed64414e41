"""The statistics of the benchmarks and the soak, in one place: percentiles of latencies and the
spread of repeated measurements.

Example::

    latency_percentiles([0.010, 0.012, 0.030])        # {"p50": 12.0, "p90": 26.4, "p99": 29.64}
    Spread.of([101.0, 98.5, 99.7]).relative_range()   # about 0.025: within 2.5 % of the median
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linear interpolation between ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements and how far they spread."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """Summarize ``values`` (at least one)."""
        if not values:
            raise ValueError("no values to summarize")
        return cls(
            median=statistics.median(values),
            min=min(values),
            max=max(values),
            q1=percentile(values, 25),
            q3=percentile(values, 75),
            n=len(values),
        )

    def relative_range(self) -> float:
        """(max - min) / median: 0.05 means the repeats fell within 5 % of each other."""
        return (self.max - self.min) / self.median if self.median else 0.0

    def to_json(self) -> dict[str, float]:
        return {"median": self.median, "min": self.min, "max": self.max, "q1": self.q1, "q3": self.q3, "n": self.n}


def latency_percentiles(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 of latencies given in seconds, in milliseconds."""
    return {f"p{q}": percentile(latencies_s, q) * 1e3 for q in (50, 90, 99)}
