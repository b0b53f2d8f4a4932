"""The schedule: the steps a release goes through, as route shapes. Pure; no I/O.

- canary: one step per weight (``stepWeight``/``maxWeight`` or ``stepWeights``),
  each mirroring to the canary when ``mirror`` is set and carrying the affinity
  cookie when ``sessionAffinity`` is;
- A/B testing: ``iterations`` steps at weight 0 whose matched requests go to
  the canary;
- blue/green: ``iterations`` steps at weight 0 (tester traffic through the
  matches or a rollout hook, stable's traffic mirrored when ``mirror`` is set),
  then the switch (``SWITCH``): all traffic on green, judged for an interval
  before stable takes it.

Promotion follows the last step.
"""

from __future__ import annotations

from canary.core.routing import Affinity, Match, RouteShape
from canary.core.spec import Analysis, HTTPMatch, Strategy


def weights(analysis: Analysis) -> list[int]:
    """The canary weights of a weighted canary's steps, in order.

    stepWeight 10 / maxWeight 50 gives [10, 20, 30, 40, 50]; a step that would pass
    maxWeight is clamped to it (stepWeight 30 / maxWeight 50 gives [30, 50]).
    """
    if analysis.kind is not Strategy.CANARY:
        return []
    if analysis.step_weights is not None:
        return list(analysis.step_weights)
    assert analysis.step_weight is not None  # guaranteed by Analysis validation
    steps: list[int] = []
    weight = 0
    while weight < analysis.max_weight:
        weight = min(weight + analysis.step_weight, analysis.max_weight)
        steps.append(weight)
    return steps


def matches(analysis: Analysis) -> tuple[Match, ...]:
    """The A/B conditions as route matches (header and query names in a stable order)."""
    return tuple(_match(m) for m in analysis.match or [])


def _match(match: HTTPMatch) -> Match:
    def entries(items: dict[str, object]) -> tuple[tuple[str, str, str], ...]:
        out = []
        for name, value in sorted(items.items()):
            exact = getattr(value, "exact", None)
            out.append((name, "Exact", exact) if exact is not None else (name, "RegularExpression", getattr(value, "regex", "")))
        return tuple(out)

    return Match(headers=entries(dict(match.headers)), query_params=entries(dict(match.query_params)))


#: Blue/green's last step: all traffic on green.
SWITCH = RouteShape(weight=100)


def is_switch(analysis: Analysis, index: int) -> bool:
    """Whether step ``index`` (1-based) is blue/green's switch."""
    return analysis.kind is Strategy.BLUE_GREEN and analysis.iterations is not None and index == analysis.iterations + 1


def steps(analysis: Analysis, affinity: Affinity | None = None) -> list[RouteShape]:
    """Every step of the release, in order; ``affinity`` is the release's cookie when sessionAffinity is set."""
    mirror_percent = analysis.mirror_weight if analysis.mirror else None
    kind = analysis.kind
    if kind is Strategy.CANARY:
        return [RouteShape(weight=w, mirror=analysis.mirror, mirror_percent=mirror_percent, affinity=affinity) for w in weights(analysis)]
    assert analysis.iterations is not None
    shape = RouteShape(weight=0, matches=matches(analysis), mirror=analysis.mirror and kind is Strategy.BLUE_GREEN, mirror_percent=mirror_percent)
    if kind is Strategy.BLUE_GREEN:
        # then the switch: every request to green, judged for an interval before stable takes it (Flagger's order: a
        # green that fails under the users' traffic is switched back to blue, which still runs the old version)
        return [shape] * analysis.iterations + [SWITCH]
    return [shape] * analysis.iterations



def full_size(analysis: Analysis) -> bool:
    """The canary runs at the app's full size: blue/green (it takes all traffic at once) and A/B
    (the share of matched requests is not known); a weighted canary is sized by its weight."""
    return analysis.kind is not Strategy.CANARY


def describe(analysis: Analysis) -> str:
    kind = analysis.kind
    if kind is Strategy.CANARY:
        return f"weights {weights(analysis)}"
    if kind is Strategy.AB:
        return f"A/B testing, {analysis.iterations} iterations"
    return f"blue/green, {analysis.iterations} iterations, then the switch judged for an interval"
