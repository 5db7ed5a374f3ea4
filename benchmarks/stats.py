"""Latency summaries: percentiles by nearest rank, in milliseconds."""

from __future__ import annotations

import math
from collections.abc import Iterable

Summary = dict[str, float]
PERCENTILES = (50, 95, 99)


def percentile(ordered: list[float], p: float) -> float:
    """The nearest-rank percentile of an already sorted list."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(seconds: Iterable[float]) -> Summary:
    """n, mean, p50, p95, p99 and max of samples given in seconds, as milliseconds."""
    ordered = sorted(seconds)
    if not ordered:
        return {"n": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    summary: Summary = {"n": len(ordered), "mean": 1000 * sum(ordered) / len(ordered)}
    for p in PERCENTILES:
        summary[f"p{p}"] = 1000 * percentile(ordered, p)
    summary["max"] = 1000 * ordered[-1]
    return {k: round(v, 3) for k, v in summary.items()}


def ratio(value: float, reference: float) -> float:
    """`value / reference`, or infinity when the reference is zero."""
    return round(value / reference, 3) if reference > 0 else math.inf
