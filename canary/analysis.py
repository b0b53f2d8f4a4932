"""Analysis: one tick evaluates every metric of the spec and decides what the release does.

The verdict logic is pure (``judge``, ``decide``); ``run_tick`` renders each
metric's query, asks the injected provider for a value and collects typed
results. A check that could not be evaluated is never a pass: errors always
count as failures, and an empty result (no data) counts as the metric's
``onNoData`` policy says (``fail`` by default). Failures are counted **in a row**:
a passing tick resets the count, a holding tick leaves it as it is.

``preflight`` runs every query once before a release applies anything; only a
query the provider rejects is refused there (``preflight_problems`` decides,
purely), everything else is left to the ticks.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from canary import metrics, templates, units
from canary.errors import BadQuery, MetricError, NoValues, Problem, ProviderUnreachable
from canary.spec import Metric, NoDataPolicy, ReleaseSpec, ThresholdRange, metric_query


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NO_DATA = "no-data"
    ERROR = "error"


class Effect(enum.StrEnum):
    """What a check means for the tick once the no-data policy is applied."""

    PASS = "pass"
    FAIL = "fail"
    HOLD = "hold"


@dataclass(frozen=True)
class CheckResult:
    metric: str
    query: str
    value: float | None
    threshold: ThresholdRange
    verdict: Verdict
    effect: Effect
    reason: str


class Outcome(enum.StrEnum):
    ADVANCE = "advance"  # every check passed
    HOLD = "hold"  # nothing failed, something had no data under a hold policy
    FAIL = "fail"  # a check failed; the weight holds and the count goes up
    ROLLBACK = "rollback"  # threshold failures in a row: roll back now, on this tick


@dataclass(frozen=True)
class TickResult:
    checks: tuple[CheckResult, ...]
    outcome: Outcome
    failed_in_row: int
    threshold: int
    reason: str
    weight: int = 0
    failed: tuple[CheckResult, ...] = field(default=())


def judge(metric: str, value: float, threshold: ThresholdRange) -> tuple[Verdict, str]:
    """Compare one value with its range; the reason reads like ``error-rate 18.2 > max 1``."""
    if threshold.min is not None and value < threshold.min:
        return Verdict.FAIL, f"{metric} {value:.4g} < min {threshold.min:g}"
    if threshold.max is not None and value > threshold.max:
        return Verdict.FAIL, f"{metric} {value:.4g} > max {threshold.max:g}"
    return Verdict.PASS, f"{metric} {value:.4g} within {threshold}"


def check(metric: Metric, query: str, value: float | MetricError) -> CheckResult:
    """A typed result for one metric from its value or the error that replaced it."""
    if isinstance(value, NoValues):
        effect = {NoDataPolicy.FAIL: Effect.FAIL, NoDataPolicy.HOLD: Effect.HOLD, NoDataPolicy.PASS: Effect.PASS}[metric.on_no_data]
        return CheckResult(metric.name, query, None, metric.threshold_range, Verdict.NO_DATA, effect, f"{metric.name} has no data: {value} (onNoData: {metric.on_no_data})")
    if isinstance(value, MetricError):
        return CheckResult(metric.name, query, None, metric.threshold_range, Verdict.ERROR, Effect.FAIL, f"{metric.name} could not be evaluated: {type(value).__name__}: {value}")
    if math.isnan(value):
        return check(metric, query, NoValues("the query returned NaN"))
    verdict, reason = judge(metric.name, value, metric.threshold_range)
    return CheckResult(metric.name, query, value, metric.threshold_range, verdict, Effect.PASS if verdict is Verdict.PASS else Effect.FAIL, reason)


def decide(checks: tuple[CheckResult, ...], failed_in_row: int, threshold: int, weight: int = 0) -> TickResult:
    """The tick's outcome from its checks and the failures in a row before it."""
    failed = tuple(c for c in checks if c.effect is Effect.FAIL)
    if failed:
        count = failed_in_row + 1
        first = failed[0].reason + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else "")
        if count >= threshold:
            reason = f"{first} for {count} checks in a row at weight {weight}"
            return TickResult(checks, Outcome.ROLLBACK, count, threshold, reason, weight, failed)
        return TickResult(checks, Outcome.FAIL, count, threshold, f"{first}: failed check {count} of {threshold} in a row at weight {weight}", weight, failed)
    held = [c for c in checks if c.effect is Effect.HOLD]
    if held:
        return TickResult(checks, Outcome.HOLD, failed_in_row, threshold, f"holding at weight {weight}: {held[0].reason}", weight)
    return TickResult(checks, Outcome.ADVANCE, 0, threshold, f"all {len(checks)} checks passed at weight {weight}", weight)


ProviderFor = Callable[[str | None], metrics.MetricsProvider]


def render_query(spec: ReleaseSpec, metric: Metric) -> tuple[str, str | None]:
    """The query as it will be sent for ``metric``, and its provider address (None: the stack's)."""
    template, address = metric_query(spec, metric)
    interval = units.format_duration(metric.interval or spec.analysis.interval)
    query = templates.render(template, target=spec.target, namespace=spec.app.namespace, interval=interval, variables=metric.template_variables)
    return query, address


def run_tick(spec: ReleaseSpec, provider_for: ProviderFor, failed_in_row: int, weight: int = 0) -> TickResult:
    """Evaluate every metric of the spec once and decide."""
    below_minimum: NoValues | MetricError | None = None
    if spec.analysis.min_requests is not None:
        count_query = templates.render(
            metrics.REQUEST_COUNT_QUERY, target=spec.target, namespace=spec.app.namespace,
            interval=units.format_duration(spec.analysis.interval), variables={},
        )
        try:
            count = provider_for(None).run_query(count_query)
        except NoValues:
            count = 0.0
        except MetricError as exc:
            below_minimum = exc
        else:
            if count < spec.analysis.min_requests:
                below_minimum = NoValues(
                    f"the canary answered {count:.0f} requests in {units.format_duration(spec.analysis.interval)}, "
                    f"fewer than minRequests {spec.analysis.min_requests}"
                )
    results = []
    for metric in spec.analysis.metrics:
        query, address = render_query(spec, metric)
        value: float | MetricError
        if below_minimum is not None:
            value = below_minimum
        else:
            try:
                value = provider_for(address).run_query(query)
            except MetricError as exc:
                value = exc
        results.append(check(metric, query, value))
    return decide(tuple(results), failed_in_row, spec.analysis.threshold, weight)


@dataclass(frozen=True)
class Probe:
    """One metric's query run once before a release: what was sent, and what came back."""

    index: int
    metric: Metric
    query: str
    value: float | MetricError


def preflight_problems(probes: Sequence[Probe]) -> list[Problem]:
    """The probes that make the spec bad input: only a query the provider rejected.

    A rejected query is a config defect that no amount of waiting fixes, so it is
    refused before anything is applied. No data, several series or an unreachable
    provider are not: they depend on traffic and on the moment, and are judged
    (as failed checks) at the ticks.
    """
    problems = []
    for probe in probes:
        if not isinstance(probe.value, BadQuery):
            continue
        metric = probe.metric
        reason = str(probe.value).removeprefix("Prometheus rejected the query: ")
        where = f"analysis.metrics[{probe.index}]"
        if metric.template_ref is None:
            field_name, rule = f"{where}.name", f"built-in metric {metric.name}: Prometheus rejected its query: {reason}"
        else:
            field_name = f"metricTemplates.{metric.template_ref.name}.query"
            rule = f"Prometheus rejected it as rendered for {where} ({metric.name}): {reason}"
        problems.append(Problem(field_name, " ".join(probe.query.split()), rule))
    return problems


def preflight(spec: ReleaseSpec, provider_for: ProviderFor) -> list[Problem]:
    """Run every metric's query once, as a tick would render it, and return the problems found.

    Called before a release changes anything, so that a query Prometheus refuses
    is reported as bad input (exit 2) instead of being found at the first tick,
    after the canary was deployed. Once a provider did not answer, its other
    queries are not sent: the preflight never waits out several timeouts.
    """
    probes = []
    unreachable: set[str | None] = set()
    for index, metric in enumerate(spec.analysis.metrics):
        query, address = render_query(spec, metric)
        value: float | MetricError
        if address in unreachable:
            value = ProviderUnreachable("not asked: the provider did not answer an earlier query")
        else:
            try:
                value = provider_for(address).run_query(query)
            except ProviderUnreachable as exc:
                unreachable.add(address)
                value = exc
            except MetricError as exc:
                value = exc
        probes.append(Probe(index, metric, query, value))
    return preflight_problems(probes)

