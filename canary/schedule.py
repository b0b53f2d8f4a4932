"""The weight schedule: which canary weights a release steps through. Pure; no I/O."""

from __future__ import annotations

from canary.spec import Analysis


def weights(analysis: Analysis) -> list[int]:
    """The canary weights of the progressing steps, in order; promotion follows the last.

    stepWeight 10 / maxWeight 50 gives [10, 20, 30, 40, 50]; a step that would pass
    maxWeight is clamped to it (stepWeight 30 / maxWeight 50 gives [30, 50]).
    """
    if analysis.step_weights is not None:
        return list(analysis.step_weights)
    assert analysis.step_weight is not None  # guaranteed by Analysis validation
    steps: list[int] = []
    weight = 0
    while weight < analysis.max_weight:
        weight = min(weight + analysis.step_weight, analysis.max_weight)
        steps.append(weight)
    return steps


def next_weight(analysis: Analysis, current: int) -> int | None:
    """The step after ``current``, or None when ``current`` is the last (time to promote)."""
    for weight in weights(analysis):
        if weight > current:
            return weight
    return None
