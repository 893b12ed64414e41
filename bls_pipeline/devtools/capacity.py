"""How many replicas for N images/s at a p99 under T ms, from a measured benchmark run.

One replica's operating points are the endpoint measurements of ``tools/bench.py --json-out``
(``endpoints.<name>.c<concurrency>``: images/s and latency percentiles, medians of the
repeats), or points given by hand. The plan takes the point of highest throughput whose p99
meets the target, runs each replica at most at ``utilization`` of it (headroom for bursts
and for the HPA to react), and adds ``spare`` replicas for a node lost or drained (the
PodDisruptionBudget allows one pod down at a time).

Example::

    points = operating_points(json.loads(Path("docs/measurements/2026-11-25-cpu-benchmark.json").read_text()))
    plan = plan_capacity(points, images_per_s=1000, p99_ms=100)
    print(plan.replicas, plan.point.concurrency)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bls_pipeline.errors import CapacityError

DEFAULT_ENDPOINT = "bls"
DEFAULT_UTILIZATION = 0.8


@dataclass(frozen=True)
class OperatingPoint:
    """One replica under one load: its throughput and its 99th-percentile latency.

    ``concurrency`` is the number of requests in flight that produced it (0: given by hand).
    """

    images_per_s: float
    p99_ms: float
    concurrency: int = 0

    def __post_init__(self) -> None:
        if not (self.images_per_s > 0 and self.p99_ms > 0):
            raise CapacityError(f"an operating point needs positive images/s and p99, got {self}")


@dataclass(frozen=True)
class CapacityPlan:
    """The answer: ``replicas`` of which ``spare`` cover a lost node."""

    replicas: int
    spare: int
    point: OperatingPoint
    images_per_s: float
    utilization: float

    @property
    def per_replica_images_per_s(self) -> float:
        """The load each serving replica carries at the target rate."""
        return self.images_per_s / (self.replicas - self.spare)


def operating_points(benchmark: Mapping[str, Any], endpoint: str = DEFAULT_ENDPOINT) -> list[OperatingPoint]:
    """The measured points of ``endpoint`` in a ``tools/bench.py`` JSON, by concurrency.

    Throughput is the median of the repeats; p99 is the worst repeat's, so that a plan does
    not rest on the luckiest run.
    """
    if benchmark.get("schema_version") != 1:
        raise CapacityError(f"unsupported benchmark schema_version {benchmark.get('schema_version')!r} (expected 1)")
    endpoints = benchmark.get("endpoints", {})
    if endpoint not in endpoints:
        raise CapacityError(
            f"no endpoint {endpoint!r} in the benchmark; it has {', '.join(sorted(endpoints)) or 'none'}"
        )
    points = []
    for run in endpoints[endpoint].values():
        try:
            points.append(
                OperatingPoint(
                    images_per_s=float(run["images_per_s"]["median"]),
                    p99_ms=float(run["latency_ms"]["p99"]["max"]),
                    concurrency=int(run["concurrency"]),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CapacityError(f"endpoint {endpoint!r}: a run lacks {exc} (images_per_s, latency_ms.p99)") from None
    return sorted(points, key=lambda point: point.concurrency)


def plan_capacity(
    points: Sequence[OperatingPoint],
    *,
    images_per_s: float,
    p99_ms: float,
    utilization: float = DEFAULT_UTILIZATION,
    spare: int = 1,
) -> CapacityPlan:
    """The fewest replicas that serve ``images_per_s`` with every replica's p99 under ``p99_ms``.

    A replica loaded below a measured point has at most that point's p99 (queues only get
    shorter), so the best point within the target, derated by ``utilization``, sets the rate.
    """
    if images_per_s <= 0 or p99_ms <= 0:
        raise CapacityError("the target images/s and p99 must be positive")
    if not 0 < utilization <= 1:
        raise CapacityError(f"utilization must be in (0, 1], got {utilization}")
    if spare < 0:
        raise CapacityError(f"spare replicas cannot be negative, got {spare}")
    if not points:
        raise CapacityError("no operating points")
    within = [point for point in points if point.p99_ms <= p99_ms]
    if not within:
        fastest = min(points, key=lambda point: point.p99_ms)
        raise CapacityError(
            f"no measured point has a p99 under {p99_ms:g} ms: the lowest is {fastest.p99_ms:.1f} ms "
            f"at {fastest.images_per_s:.0f} images/s; more replicas cannot lower it"
        )
    best = max(within, key=lambda point: point.images_per_s)
    serving = math.ceil(images_per_s / (best.images_per_s * utilization))
    return CapacityPlan(
        replicas=serving + spare, spare=spare, point=best, images_per_s=images_per_s, utilization=utilization
    )


def describe(plan: CapacityPlan) -> str:
    """A few lines for a person: the plan and the measured point it rests on."""
    point = plan.point
    at = f" at concurrency {point.concurrency}" if point.concurrency else ""
    lines = [
        f"replicas: {plan.replicas} ({plan.replicas - plan.spare} serving + {plan.spare} spare)",
        f"one replica measured {point.images_per_s:,.1f} images/s with p99 {point.p99_ms:.1f} ms{at}",
        f"planned load: {plan.per_replica_images_per_s:,.1f} images/s per serving replica "
        f"(at most {plan.utilization:.0%} of the measured rate)",
    ]
    return "\n".join(lines)
