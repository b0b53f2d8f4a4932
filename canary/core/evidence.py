"""Evidence: whether a rate measured on so many requests supports a verdict. Pure; no I/O.

A canary that answered 4 requests without an error has not shown an error
rate of at most 1 %: 0 of 4 is also what a version failing 20 % of requests
shows 41 % of the time. A rate check therefore passes only when the Wilson
score bound on the *unfavourable* side — the highest error rate, or the lowest
success rate, the requests are consistent with at the configured confidence —
is inside the range. A point estimate outside the range still fails at once
(the safe side); in between, the check cannot tell yet and holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist


@dataclass(frozen=True)
class Bounds:
    low: float
    high: float


def wilson(successes: float, trials: float, confidence: float) -> Bounds:
    """One-sided Wilson score bounds, each at ``confidence``, of a proportion observed as
    ``successes`` of ``trials`` (both may be fractional: Prometheus' increase() extrapolates)."""
    if trials <= 0:
        return Bounds(0.0, 1.0)
    z = NormalDist().inv_cdf(confidence)
    p = min(max(successes / trials, 0.0), 1.0)
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return Bounds(max(0.0, centre - spread), min(1.0, centre + spread))


def needed(limit: float, confidence: float) -> int:
    """How many requests without a single failure show a failure share of at most ``limit``
    (a fraction): the least n whose upper bound for 0 of n is within it."""
    if limit <= 0:
        return -1
    n = 1
    while wilson(0, n, confidence).high > limit:
        n = n * 2 if n < 1 << 30 else n + 1
        if n > 1 << 31:
            return -1
    low, high = n // 2, n
    while low + 1 < high:
        mid = (low + high) // 2
        if wilson(0, mid, confidence).high > limit:
            low = mid
        else:
            high = mid
    return high
