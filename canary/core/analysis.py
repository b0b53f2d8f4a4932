"""Analysis: one tick evaluates every metric of the spec and decides what the release does.

``run_tick`` renders each metric's queries, asks the injected providers for
values (and, for a judged metric, samples) and builds typed checks; ``decide``
turns the checks and the counts before them into the tick's outcome. Rules:

- an error (Prometheus unreachable, a rejected query, several series) fails;
- no data follows the metric's ``onNoData``; inside the warm-up after a shift
  it holds; a hold longer than ``analysis.holdLimit`` fails;
- a value outside ``thresholdRange`` fails, inside ``inconclusiveRange`` is
  inconclusive (a person decides);
- a rate metric (held to a range or compared with stable) passes only when its Wilson bound on the canary's request
  count is inside the range (``evidence``); otherwise it holds;
- ``compare`` judges the canary's value against stable's in the same window
  (their difference or ratio); ``judge`` runs the Mann–Whitney classifier on
  both tracks' samples;
- a dry-run metric is evaluated and recorded, never acted on.

The tick fails when any check fails (or, with ``analysis.score``, when the
score is below ``marginal``, a critical metric failed, or a rollout webhook failed); it rolls back at
``threshold`` failures in a row or ``failureLimit`` in all. A hold or an
inconclusive tick leaves both counts alone. ``preflight`` runs every query once
before a release applies anything; only a query the provider rejects is
refused there, and a request count that finds no series at all over stable's
pods (it would read every track as idle).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from canary.core import evidence, judge, metrics, templates, units
from canary.core.records import Bounds, Check, Effect, Outcome, Verdict
from canary.core.spec import CompareBy, Evidence, Metric, NoDataPolicy, ReleaseSpec, ThresholdRange, metric_query
from canary.errors import BadQuery, MetricError, NoValues, Problem, ProviderUnreachable

ProviderFor = Callable[[str | None], metrics.MetricsProvider]


@dataclass(frozen=True)
class TickContext:
    """What a tick needs to know beyond the metrics: the counts so far and where the step is."""

    failed_in_row: int = 0
    failed_total: int = 0
    weight: int = 0
    #: inside the warm-up after a shift: no data holds whatever the policy
    warming_up: bool = False
    #: the step has held longer than analysis.holdLimit: a hold is now a failure
    held_too_long: bool = False
    #: seconds since the step's shift while it holds for evidence: rate metrics are judged over
    #: that longer window, so a quiet service gathers evidence instead of holding forever
    evidence_window: float | None = None


@dataclass(frozen=True)
class TickResult:
    checks: tuple[Check, ...]
    outcome: Outcome
    failed_in_row: int
    failed_total: int
    threshold: int
    failure_limit: int
    reason: str
    weight: int = 0
    score: float | None = None
    failed: tuple[Check, ...] = field(default=())


def _bounds(threshold: ThresholdRange | None) -> Bounds | None:
    return None if threshold is None else Bounds(min=threshold.min, max=threshold.max)


def _shown(value: float, *bounds: float | None) -> str:
    """``value`` as a reason shows it beside ``bounds`` (each shown ``:g``): with 4 significant digits, or as many
    more as keep it on the same side of each bound as it is (a p95 of 500.04 is "500.04 > max 500", never "500 > max 500")."""
    if not math.isfinite(value):
        return f"{value:.4g}"

    def side(a: float, b: float) -> int:
        return (a > b) - (a < b)

    for digits in range(4, 17):
        text = f"{value:.{digits}g}"
        if all(side(float(text), float(f"{b:g}")) == side(value, b) for b in bounds if b is not None):
            return text
    return repr(value)  # the shortest text that is the value itself


def _outside(metric: str, value: float, threshold: ThresholdRange, what: str = "") -> str | None:
    label = f"{metric}{what}"
    if not math.isfinite(value):
        # inf − inf (a canary and stable both in the +Inf bucket) is NaN, which every comparison lets pass
        return f"{label} {value:.4g} is not a finite number"
    if threshold.min is not None and value < threshold.min:
        return f"{label} {_shown(value, threshold.min)} < min {threshold.min:g}"
    if threshold.max is not None and value > threshold.max:
        return f"{label} {_shown(value, threshold.max)} > max {threshold.max:g}"
    return None


def is_rate(spec: ReleaseSpec, metric: Metric) -> bool:
    """A share of the canary's requests, judged on how many requests there were: by its ``thresholdRange``
    and by its ``compare`` alike (in percent or as a fraction: ``per_request``)."""
    if metric.evidence is Evidence.NONE:
        return False
    if metric.evidence is Evidence.RATE:
        return True
    if metric.template_ref is None:
        return metrics.BUILTIN_METRICS[metric.name].rate
    return _looks_like_a_rate(spec, metric) and not _unlike_the_count(spec, metric)


#: a template's text with its strings and comments taken out: what its operators are read from
_PROSE = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`|#[^\n]*')
#: a template scaled to percent: ``… * 100``, ``100 * …`` or ``100 - …``
_PERCENT = re.compile(r"\*\s*100(?:\.0*)?(?![\w.])|(?<![\w.])100(?:\.0*)?\s*[*-]")


def _bounds_in_unit(metric: Metric) -> list[float]:
    """The bounds a share is held to in its own unit: thresholdRange's, and compare's by difference."""
    ranges = [metric.threshold_range] + ([metric.compare.threshold_range] if metric.compare and metric.compare.by is CompareBy.DIFFERENCE else [])
    return [b for r in ranges if r is not None for b in (r.min, r.max) if b is not None]


def _looks_like_a_rate(spec: ReleaseSpec, metric: Metric) -> bool:
    """``evidence: auto`` on a template: a ratio (it divides) that reads the request count's counter, with a range inside
    0..100. A template with no division is a count or a throughput (requests per second), never a share."""
    if metric.template_ref is None or metric.threshold_range is None:
        return False
    query, _ = metric_query(spec, metric)
    bounds = [b for b in (metric.threshold_range.min, metric.threshold_range.max) if b is not None]
    return metrics.reads(query, _counters(spec)) and _ratio(query) is not None and all(0 <= b <= 100 for b in bounds)


def _counters(spec: ReleaseSpec) -> dict[str, tuple[str, ...]]:
    """The series the request count reads (``http_requests_total``, or ``prometheus.requestCount``'s), with the labels
    it selects them by: a template reading them is a share of the counted requests."""
    return metrics.counters(request_count_query(spec, "1m"))


def _ratio(query: str) -> str | None:
    """A template's operators (its text without strings and comments) when it divides; None when it does not:
    a count or a throughput, never a share."""
    text = _PROSE.sub("", query)
    return text if "/" in text else None


def per_request(spec: ReleaseSpec, metric: Metric) -> float:
    """What a share's value is per request: 1/100 in percent, 1 as a fraction. The built-in rates are percentages.
    A template is a fraction when it is a ratio (it divides) that is not evidently scaled to percent (``* 100``,
    ``100 -``) and no bound is above 1 (``sum(rate(…5..)) / sum(rate(…))`` held to ``max: 0.01``); else a percentage,
    as a template with no division that ``evidence: rate`` calls a share (a recording rule's) always was."""
    if metric.template_ref is None:
        return 0.01
    query, _ = metric_query(spec, metric)
    text = _ratio(query)
    fraction = text is not None and _PERCENT.search(text) is None and not any(b > 1 for b in _bounds_in_unit(metric))
    return 1.0 if fraction else 0.01


def _unlike_the_count(spec: ReleaseSpec, metric: Metric) -> list[str]:
    """How a template selects other requests than the canary's request count: then it may not borrow that
    count for its evidence (a /checkout error rate over 2 requests is not one over all 10,000). Held against the
    count as it is rendered, the built-in one or ``prometheus.requestCount``: a team's own counter and labels."""
    query, _ = render_query(spec, metric, interval="1m")
    return metrics.unlike_the_count(query, request_count_query(spec, "1m"))


def _share(spec: ReleaseSpec, metric: Metric) -> str | None:
    """``_Tick._share``: None, not a share of requests; "", of all the counted ones; else how it selects part of them."""
    if is_rate(spec, metric):
        return ""
    if metric.evidence is Evidence.AUTO and _looks_like_a_rate(spec, metric):
        return ", ".join(_unlike_the_count(spec, metric))
    return None


def _higher_is_worse(spec: ReleaseSpec, metric: Metric, threshold: ThresholdRange) -> bool | None:
    """For a rate's evidence: the error rate's upper bound matters, the success rate's lower; None: both."""
    if metric.template_ref is None and metric.name in metrics.BUILTIN_METRICS:
        return metrics.BUILTIN_METRICS[metric.name].higher_is_worse
    if threshold.max is not None and threshold.min is None:
        return True
    if threshold.min is not None and threshold.max is None:
        return False
    return None


def window(spec: ReleaseSpec, metric: Metric, ctx: TickContext | None = None) -> str:
    """The metric's window (``{{ interval }}``): its interval, or the time the step has held for
    evidence when that is longer and the metric is a rate."""
    base = metric.interval or spec.analysis.interval
    if ctx is not None and ctx.evidence_window and is_rate(spec, metric):
        grown = timedelta(seconds=int(ctx.evidence_window))
        if grown > base:
            return units.format_duration(grown)
    return units.format_duration(base)


def render_query(spec: ReleaseSpec, metric: Metric, target: str | None = None, ctx: TickContext | None = None,
                 interval: str | None = None) -> tuple[str, str | None]:
    """The query as it will be sent for ``metric`` (about the canary, or ``target``), and its provider address;
    ``interval``: over that stretch instead of the metric's window (a judge's samples, one per step)."""
    template, address = metric_query(spec, metric)
    interval = interval or window(spec, metric, ctx)
    pod_label, namespace_label = _labels(spec)
    query = templates.render(template, target=target or spec.target, stable=spec.stable, namespace=spec.app.namespace,
                             interval=interval, variables=metric.template_variables, pod_label=pod_label, namespace_label=namespace_label)
    return query, address


def request_count_query(spec: ReleaseSpec, window: str, target: str | None = None) -> str:
    """The requests the canary's pods (or ``target``'s) answered in ``window``: ``prometheus.requestCount`` when the
    app counts them its own way (another counter, other labels), else the built-in count over ``http_requests_total``."""
    prometheus = spec.prometheus
    pod_label, namespace_label = _labels(spec)
    count = prometheus.request_count if prometheus and prometheus.request_count else metrics.REQUEST_COUNT_QUERY
    return templates.render(count, target=target or spec.target, stable=spec.stable,
                            namespace=spec.app.namespace, interval=window, variables={}, pod_label=pod_label, namespace_label=namespace_label)


def _labels(spec: ReleaseSpec) -> tuple[str, str]:
    """The labels Prometheus puts a pod's name and its namespace in (``{{ podLabel }}``, ``{{ namespaceLabel }}``)."""
    prometheus = spec.prometheus
    return (prometheus.pod_label, prometheus.namespace_label) if prometheus else ("kubernetes_pod_name", "namespace")


@dataclass(frozen=True)
class _Unmeasured:
    """Zeros on both tracks that are no measurement: what the check then says, and the canary's request count."""

    verdict: Verdict
    effect: Effect
    reason: str
    requests: float | None


def _no_data_effect(metric: Metric, ctx: TickContext) -> tuple[Effect, str]:
    """What no data does to a check (``onNoData``, the warm-up, ``holdLimit``), and the words that say why."""
    policy = metric.on_no_data
    if ctx.warming_up and policy is not NoDataPolicy.PASS:
        effect, why = Effect.HOLD, "warming up after the shift"
    else:
        effect = {NoDataPolicy.FAIL: Effect.FAIL, NoDataPolicy.HOLD: Effect.HOLD, NoDataPolicy.PASS: Effect.PASS}[policy]
        why = f"onNoData: {policy}"
    if effect is Effect.HOLD and ctx.held_too_long:
        effect, why = Effect.FAIL, "held longer than analysis.holdLimit"
    return effect, why


def _no_data(metric: Metric, query: str, error: NoValues, ctx: TickContext, **extra: object) -> Check:
    effect, why = _no_data_effect(metric, ctx)
    return Check(metric=metric.name, query=query, value=None, threshold_range=_bounds(metric.threshold_range), verdict=Verdict.NO_DATA,
                 effect=effect, reason=f"{metric.name} has no data: {error} ({why})", **extra)  # type: ignore[arg-type]


class _Tick:
    """One tick's queries, with the request counts shared between the rate metrics of one window."""

    def __init__(self, spec: ReleaseSpec, provider_for: ProviderFor, ctx: TickContext) -> None:
        self.spec = spec
        self.provider_for = provider_for
        self.ctx = ctx
        self._counts: dict[tuple[str | None, str | None, str], float | MetricError] = {}

    def value(self, query: str, address: str | None) -> float | MetricError:
        try:
            value = self.provider_for(address).run_query(query)
        except MetricError as exc:
            return exc
        if math.isnan(value):
            return NoValues("the query returned NaN")
        return value

    def requests(self, window: str, target: str | None = None, address: str | None = None) -> float | MetricError:
        """The requests the canary's pods (or ``target``'s) answered in ``window``, as the Prometheus at ``address``
        (None: the stack's) counts them; none counted is 0 (a track no request reached has no series yet: the
        preflight made sure the count finds stable's, so "none" is not a count that reads other series)."""
        if (address, target, window) not in self._counts:
            value = self.value(request_count_query(self.spec, window, target), address)
            self._counts[(address, target, window)] = 0.0 if isinstance(value, NoValues) else value
        return self._counts[(address, target, window)]

    def counted(self, metric: Metric, target: str | None = None) -> tuple[float | MetricError, str]:
        """The requests behind ``metric``'s value and the window they are in: over the window it is judged over (a held
        rate's grown one), counted by the Prometheus that scrapes the app (``count_address``)."""
        span = window(self.spec, metric, self.ctx)
        return self.requests(span, target, count_address(self.spec, metric)), span

    def below_minimum(self, metric: Metric) -> MetricError | None:
        """Why ``metric`` has no data before it is queried: fewer canary requests than ``minRequests`` behind its
        value (``NoValues``), or none that could be counted; None: enough, or no minimum."""
        least = self.spec.analysis.min_requests
        if least is None:
            return None
        count, span = self.counted(metric)
        if isinstance(count, MetricError):
            return count
        return None if count >= least else NoValues(f"the canary answered {count:.0f} requests in {span}, fewer than minRequests {least}")

    def check(self, metric: Metric) -> Check:
        query, address = render_query(self.spec, metric, ctx=self.ctx)
        dry = {"dry_run": metric.dry_run, "weight": metric.weight}
        # at all traffic (blue/green's switch, a weight of 100) stable serves no request: nothing to compare the canary
        # with, nor to judge it against. Its range still judges it; a metric with none is not judged at this step
        alone = self.ctx.weight >= 100 and (metric.compare is not None or metric.judge is not None)
        if alone and metric.threshold_range is None:
            return self._dry(Check(metric=metric.name, query=query, verdict=Verdict.NO_DATA, effect=Effect.NONE,  # type: ignore[arg-type]
                                   reason=f"{metric.name}: judged against stable, which serves no request at weight {self.ctx.weight}: "
                                          "not judged at this step", **dry), metric)
        if alone:
            metric = metric.model_copy(update={"compare": None, "judge": None})
        value = self.value(query, address)
        stable_query = stable_value = None
        if metric.compare is not None:
            stable_query, _ = render_query(self.spec, metric, target=self.spec.stable, ctx=self.ctx)
            stable_value = self.value(stable_query, address)
        if isinstance(value, NoValues):
            return self._dry(_no_data(metric, query, value, self.ctx, **dry), metric)
        if isinstance(value, MetricError):
            return self._dry(Check(metric=metric.name, query=query, threshold_range=_bounds(metric.threshold_range), verdict=Verdict.ERROR,
                                   effect=Effect.FAIL, reason=f"{metric.name} could not be evaluated: {type(value).__name__}: {value}", **dry), metric)  # type: ignore[arg-type]
        verdicts: list[tuple[Verdict, Effect, str]] = []
        requests = bound = None
        if metric.threshold_range is not None:
            verdict, effect, reason, requests, bound = self._absolute(metric, value)
            verdicts.append((verdict, effect, reason))
        extra: dict[str, object] = {}
        if metric.compare is not None:
            assert stable_query is not None
            *relative, counted, counted_bound = self._relative(metric, value, stable_value)  # type: ignore[arg-type]
            verdicts.append(tuple(relative))  # type: ignore[arg-type]
            if requests is None:
                requests, bound = counted, counted_bound
            extra.update(stable_query=stable_query, stable_value=None if isinstance(stable_value, MetricError) else float(stable_value),  # type: ignore[arg-type]
                         compare_range=_bounds(metric.compare.threshold_range), compare_by=metric.compare.by.value)
        if metric.judge is not None:
            judged, details = self._judged(metric, address)
            verdicts.append(judged)
            # compare's stable query stays the one beside its stable value (the judge's reads one step per sample)
            extra.update({k: v for k, v in details.items() if k not in extra})
        verdict, effect, reason = _combine(verdicts)
        if alone:
            reason += f" (not against stable: it serves no request at weight {self.ctx.weight})"
        check = Check(metric=metric.name, query=query, value=value, threshold_range=_bounds(metric.threshold_range), verdict=verdict,
                      effect=effect, reason=reason, requests=requests, bound=bound, **dry, **extra)  # type: ignore[arg-type]
        return self._dry(check, metric)

    def _dry(self, check: Check, metric: Metric) -> Check:
        if not metric.dry_run:
            return check
        return check.model_copy(update={"effect": Effect.NONE, "reason": check.reason + " [dry run: not acted on]"})

    def _absolute(self, metric: Metric, value: float) -> tuple[Verdict, Effect, str, float | None, float | None]:
        threshold = metric.threshold_range
        assert threshold is not None
        outside = _outside(metric.name, value, threshold)
        if outside is not None:
            if metric.inconclusive_range is not None and math.isfinite(value) and metric.inconclusive_range.contains(value):
                return Verdict.INCONCLUSIVE, Effect.INCONCLUSIVE, f"{outside}, inside the inconclusive band {metric.inconclusive_range}", None, None
            return Verdict.FAIL, Effect.FAIL, outside, None, None
        share = self._share(metric)
        if share is None:
            return Verdict.PASS, Effect.PASS, f"{metric.name} {_shown(value, threshold.min, threshold.max)} within {threshold}", None, None
        return self._evidence(metric, value, threshold, part=share)

    def _share(self, metric: Metric) -> str | None:
        """Whether the metric's evidence is the canary's request count: None, it is not a share of requests; "", a
        share of all of them; else a share of part of them (how the template narrows them, /checkout): how many that
        part holds is not known, only that it is at most the canary's count. The bound on that count is too kind,
        so it cannot make a pass, but a share it cannot tell even so (a light load) is no pass either: it holds."""
        return _share(self.spec, metric)

    def _evidence(self, metric: Metric, value: float, threshold: ThresholdRange, measure: Callable[[float], float] = lambda v: v,
                  what: str = "", part: str = "") -> tuple[Verdict, Effect, str, float | None, float | None]:
        """A rate inside ``threshold`` (as ``measure`` turns it: itself, or its difference or ratio to stable's)
        passes only when its Wilson bound on the canary's request count is inside too; else it holds. ``part``:
        the rate is a share of part of those requests only (how it selects them), on at most that count."""
        count, _ = self.counted(metric)
        if isinstance(count, MetricError):
            return Verdict.ERROR, Effect.FAIL, f"{metric.name}: the canary's requests could not be counted: {count}", None, None
        confidence = self.spec.analysis.confidence
        unit = per_request(self.spec, metric)
        share = min(max(value * unit, 0.0), 1.0)
        bounds = evidence.wilson(share * count, count, confidence)
        worse_high = _higher_is_worse(self.spec, metric, threshold)
        checks = []
        if worse_high in (True, None) and threshold.max is not None:
            checks.append(("max", bounds.high / unit, measure(bounds.high / unit) <= threshold.max))
        if worse_high in (False, None) and threshold.min is not None:
            checks.append(("min", bounds.low / unit, measure(bounds.low / unit) >= threshold.min))
        if not checks:
            checks.append(("max" if threshold.max is not None else "min", value, True))
        side, bound, ok = next(((s, b, o) for s, b, o in checks if not o), checks[0])
        on = f"at most {count:.0f} requests (the template selects part of the canary's: {part})" if part else f"{count:.0f} requests"
        limit = threshold.max if side == "max" else threshold.min
        shown = _shown(measure(bound), limit) if not ok else _shown(measure(bound), threshold.min, threshold.max)
        text = f"{metric.name}{what} {_shown(measure(value), threshold.min, threshold.max)} on {on}, {confidence:.0%} bound {shown}"
        if ok:
            return Verdict.PASS, Effect.PASS, f"{text} within {threshold}", count, bound
        effect = Effect.FAIL if self.ctx.held_too_long else Effect.HOLD
        why = "held longer than analysis.holdLimit" if self.ctx.held_too_long else "not enough requests to tell"
        return Verdict.INCONCLUSIVE, effect, f"{text} beyond {side} {limit:g}: {why}", count, bound

    def _relative(self, metric: Metric, value: float, stable: float | MetricError) -> tuple[Verdict, Effect, str, float | None, float | None]:
        compare = metric.compare
        assert compare is not None
        if isinstance(stable, MetricError):
            if isinstance(stable, NoValues):
                effect, why = _no_data_effect(metric, self.ctx)
                return Verdict.NO_DATA, effect, f"{metric.name}: stable has no data to compare with: {stable} ({why})", None, None
            return Verdict.ERROR, Effect.FAIL, f"{metric.name}: stable could not be evaluated: {type(stable).__name__}: {stable}", None, None
        to_measure: Callable[[float], float]
        if compare.by is CompareBy.DIFFERENCE:
            to_measure, what = (lambda v: v - stable), " − stable"
        elif stable == 0:
            if value == 0:
                return self._both_zero(metric)
            return (Verdict.NO_DATA, Effect.HOLD if not self.ctx.held_too_long else Effect.FAIL,
                    f"{metric.name}: stable's value is 0, the ratio is undefined (use by: difference)", None, None)
        else:
            to_measure, what = (lambda v: v / stable), " / stable"
        measure = to_measure(value)
        outside = _outside(metric.name, measure, compare.threshold_range, what)
        detail = f"(canary {value:.4g}, stable {stable:.4g})"
        if outside is not None:
            return Verdict.FAIL, Effect.FAIL, f"{outside} {detail}", None, None
        share = self._share(metric)
        if value == 0 and share is None and metric.evidence is not Evidence.NONE:
            # a canary's 0 that passes (lower than stable's, or as low) is a measurement only when it answered requests:
            # a counter's rate is 0 on a canary no request reached. (A 0 outside the range fails as it is: too low; a
            # share of requests is held to its evidence below)
            measured = self._both_answered(metric, f"canary 0, stable {stable:.4g}", stable=stable == 0)
            if not isinstance(measured, tuple):
                return measured.verdict, measured.effect, measured.reason, measured.requests, None
        if share is not None:
            # a rate compared with stable needs evidence as much as one held against a range (a share of part of the
            # canary's requests too: when even the kind bound on all of them cannot tell, it holds)
            verdict, effect, reason, count, bound = self._evidence(metric, value, compare.threshold_range, to_measure, what, part=share)
            return verdict, effect, f"{reason} {detail}", count, bound
        shown = _shown(measure, compare.threshold_range.min, compare.threshold_range.max)
        return Verdict.PASS, Effect.PASS, f"{metric.name}{what} {shown} within {compare.threshold_range} {detail}", None, None

    def _both_zero(self, metric: Metric) -> tuple[Verdict, Effect, str, float | None, float | None]:
        """Canary and stable both at 0, compared by ratio. 0 / 0 reads "the same" only when both zeros were measured:
        a counter's rate, or a template with ``or vector(0)``, is 0 on a track that answered nothing as much as on a
        healthy one. So each track must have answered requests in the window (at least ``minRequests`` when set), else
        it is no data. A share of requests (an error rate) at 0 % on both needs more: its evidence is a bound on the
        canary's rate, and a bound over stable's 0 is infinite at any count (as for a canary above a stable at 0), so
        only the metric's own ``thresholdRange``, whose bound the absolute check already holds it to, can give it one."""
        assert metric.compare is not None
        measured = self._both_answered(metric, "0 / 0")
        if not isinstance(measured, tuple):
            return measured.verdict, measured.effect, measured.reason, measured.requests, None
        canary, on = measured
        if self._share(metric) is not None and metric.threshold_range is None:
            effect = Effect.FAIL if self.ctx.held_too_long else Effect.HOLD
            why = "held longer than analysis.holdLimit" if self.ctx.held_too_long else "use by: difference, or add thresholdRange"
            return (Verdict.NO_DATA, effect, f"{metric.name}: canary and stable both 0 on {on}: a share's bound over stable's 0 is "
                    f"undefined at any count, so the ratio cannot be shown within {metric.compare.threshold_range} ({why})", canary, None)
        text = f"{metric.name} / stable: both 0 on {on}, read as 1"
        if self._share(metric) is not None:
            text += " (the canary's bound is thresholdRange's)"
        if not metric.compare.threshold_range.contains(1.0):
            return Verdict.FAIL, Effect.FAIL, f"{text}, outside {metric.compare.threshold_range}", canary, None
        return Verdict.PASS, Effect.PASS, f"{text}, within {metric.compare.threshold_range}", canary, None

    def _both_answered(self, metric: Metric, what: str, stable: bool = True) -> tuple[float, str] | _Unmeasured:
        """Whether both tracks (``stable`` False: the canary) answered requests in the metric's window (at least
        ``minRequests`` when set): a zero is a measurement only then (a counter's rate is 0 on a track that answered
        nothing as much as on a healthy one: a canary no request reached is not "lower than stable"). The canary's
        count and how many each answered, or the check that says why not."""
        span = window(self.spec, metric, self.ctx)
        least = self.spec.analysis.min_requests or 1
        counts: list[float] = []
        for track, target in (("canary", None), ("stable", self.spec.stable))[:2 if stable else 1]:
            count, _ = self.counted(metric, target)
            if isinstance(count, MetricError):
                return _Unmeasured(Verdict.ERROR, Effect.FAIL, f"{metric.name}: {what}, and the {track}'s requests could not be counted: {count}", None)
            counts.append(count)
        canary = counts[0]
        on = f"{canary:.0f} canary and {counts[1]:.0f} stable requests in {span}" if stable else f"{canary:.0f} canary requests in {span}"
        if min(counts) < least:
            fewer = f"fewer than minRequests {least}" if self.spec.analysis.min_requests else "none"
            side = " on a side" if stable else ""
            check = _no_data(metric, "", NoValues(f"{what} on {on} ({fewer}{side}): not a measurement"), self.ctx)
            return _Unmeasured(check.verdict, check.effect, check.reason, canary)
        return canary, on

    def _judged(self, metric: Metric, address: str | None) -> tuple[tuple[Verdict, Effect, str], dict[str, object]]:
        spec_judge = metric.judge
        assert spec_judge is not None
        provider = self.provider_for(address)
        window = (metric.interval or self.spec.analysis.interval).total_seconds()
        # each sample a rate over its own step: over the whole window, consecutive samples shared all but one step of
        # it, and the rank test, which takes them as independent, was far surer than its confidence said
        every = self.spec.judge_step(spec_judge)  # unset: twice the scrape interval
        step = units.format_duration(every)
        query, _ = render_query(self.spec, metric, interval=step)
        stable_query, _ = render_query(self.spec, metric, target=self.spec.stable, interval=step)
        try:
            canary_samples = provider.run_range(query, window, every.total_seconds())  # type: ignore[attr-defined]
            stable_samples = provider.run_range(stable_query, window, every.total_seconds())  # type: ignore[attr-defined]
        except MetricError as exc:
            return (Verdict.ERROR, Effect.FAIL, f"{metric.name}: samples could not be read: {type(exc).__name__}: {exc}"), {}
        result = judge.compare(canary_samples, stable_samples, confidence=spec_judge.confidence, tolerance=spec_judge.tolerance,
                               allowed_increase=spec_judge.allowed_increase, allowed_decrease=spec_judge.allowed_decrease,
                               min_samples=spec_judge.min_samples)
        details: dict[str, object] = {"stable_query": stable_query, "samples": (result.canary_samples, result.stable_samples)}
        if not math.isnan(result.low):
            details.update(interval_low=result.low, interval_high=result.high)
        text = f"{metric.name} (Mann–Whitney): {result.reason}"
        if result.classification is judge.Classification.NO_DATA:
            effect, why = _no_data_effect(metric, self.ctx)
            return (Verdict.NO_DATA, effect, f"{text} ({why})"), details
        bad = {judge.Classification.HIGH: spec_judge.direction.value in ("increase", "either"),
               judge.Classification.LOW: spec_judge.direction.value in ("decrease", "either")}.get(result.classification, False)
        both = bool(stable_samples) and not any(stable_samples)
        if not bad and canary_samples and not any(canary_samples) and (both or metric.evidence is not Evidence.NONE):
            # every canary sample 0 (a counter's rate): "lower than" or "identical to" stable only when it answered
            # requests (and stable too, when every sample of its is 0 as well)
            measured = self._both_answered(metric, "every sample 0 on both tracks" if both else "every canary sample 0", stable=both)
            if not isinstance(measured, tuple):
                return (measured.verdict, measured.effect, measured.reason), details
            text = f"{text} (on {measured[1]})"
        return ((Verdict.FAIL, Effect.FAIL, text) if bad else (Verdict.PASS, Effect.PASS, text)), details


_SEVERITY = [Effect.FAIL, Effect.INCONCLUSIVE, Effect.HOLD, Effect.PASS]


def _combine(verdicts: Sequence[tuple[Verdict, Effect, str]]) -> tuple[Verdict, Effect, str]:
    """Several judgements of one metric: the worst effect decides; the reasons are all kept."""
    worst = min(verdicts, key=lambda v: _SEVERITY.index(v[1]))
    return worst[0], worst[1], "; ".join(v[2] for v in verdicts)


def decide(checks: tuple[Check, ...], ctx: TickContext, threshold: int, failure_limit: int, score_bounds: tuple[float, float] | None = None,
           critical: frozenset[str] = frozenset()) -> TickResult:
    """The tick's outcome from its checks and the counts before it."""
    acting = [c for c in checks if c.effect is not Effect.NONE]
    score_value: float | None = None
    scored_away: tuple[Check, ...] = ()
    failed = tuple(c for c in acting if c.effect is Effect.FAIL)
    inconclusive = [c for c in acting if c.effect is Effect.INCONCLUSIVE]
    held = [c for c in acting if c.effect is Effect.HOLD]
    weight = ctx.weight
    if score_bounds is not None:
        # only a critical metric's failure is a critical failure: inside its inconclusive band a person decides
        # no data that passes (onNoData: pass) is no verdict, as in Kayenta: counted as a pass it lifted the score of the
        # metrics that were measured (19 empty metrics and 1 failed one scored 95); counted as a failure, it still fails
        scored = [judge.ScoredMetric(c.weight, None if _unjudged(c) else c.effect is Effect.PASS, c.metric in critical and c.effect is Effect.FAIL)
                  for c in acting]
        score_value, critical_failed = judge.score(scored)
        pass_at, marginal_at = score_bounds
        if acting and not held and all(m.passed is None for m in scored):
            # a score over nothing judged is no pass: it holds, for at most holdLimit, as too little evidence does
            why = f"no metric was judged at weight {weight} (every check had no data): the score has nothing to weigh"
            if ctx.held_too_long:
                return _failure(checks, tuple(acting), ctx, threshold, failure_limit, f"{why}, held longer than analysis.holdLimit", None)
            return TickResult(checks, Outcome.HOLD, ctx.failed_in_row, ctx.failed_total, threshold, failure_limit, f"holding: {why}", weight, None)
        if critical_failed or score_value < marginal_at:
            failed = failed or tuple(c for c in acting if c.effect is not Effect.PASS)
            if critical_failed:
                first = next(c for c in failed if c.metric in critical)
                # a check with no query is no metric (a failed rollout webhook): its own reason says what failed
                why = first.reason if not first.query else "a critical metric failed"
            else:
                why = f"score {score_value:g} below marginal {marginal_at:g}"
            return _failure(checks, failed, ctx, threshold, failure_limit, why, score_value)
        if score_value < pass_at:
            return TickResult(checks, Outcome.INCONCLUSIVE, ctx.failed_in_row, ctx.failed_total, threshold, failure_limit,
                              f"score {score_value:g} is marginal ({marginal_at:g} ≤ score < {pass_at:g}) at weight {weight}: a person decides",
                              weight, score_value)
        undecided = [c for c in inconclusive if c.metric in critical]
        if undecided:
            return TickResult(checks, Outcome.INCONCLUSIVE, ctx.failed_in_row, ctx.failed_total, threshold, failure_limit,
                              f"inconclusive at weight {weight} whatever the score (critical): {undecided[0].reason}", weight, score_value)
        scored_away, failed, inconclusive = failed, (), []
    if failed:
        return _failure(checks, failed, ctx, threshold, failure_limit, "", score_value)
    if inconclusive:
        return TickResult(checks, Outcome.INCONCLUSIVE, ctx.failed_in_row, ctx.failed_total, threshold, failure_limit,
                          f"inconclusive at weight {weight}: {inconclusive[0].reason}", weight, score_value)
    if held:
        return TickResult(checks, Outcome.HOLD, ctx.failed_in_row, ctx.failed_total, threshold, failure_limit,
                          f"holding at weight {weight}: {held[0].reason}", weight, score_value)
    if scored_away:
        # weighed away by the score, but not hidden: the reason says what failed
        passed = f"score {score_value:g} passed at weight {weight} with {len(scored_away)} of {len(acting)} checks failed: {scored_away[0].reason}"
    else:
        passed = f"all {len(acting)} checks passed at weight {weight}" + (f" (score {score_value:g})" if score_value is not None else "")
        unmeasured = sum(1 for c in acting if c.verdict is Verdict.NO_DATA)
        if unmeasured:
            passed += f" ({unmeasured} with no data, by onNoData: pass)"  # said: nothing was measured there
    return TickResult(checks, Outcome.ADVANCE, 0, ctx.failed_total, threshold, failure_limit, passed, weight, score_value)


def _unjudged(check: Check) -> bool:
    """A check the score does not weigh: it holds, or it had no data and passes only by its onNoData policy."""
    return check.effect is Effect.HOLD or (check.verdict is Verdict.NO_DATA and check.effect is Effect.PASS)


def _failure(checks: tuple[Check, ...], failed: tuple[Check, ...], ctx: TickContext, threshold: int, failure_limit: int, why: str,
             score_value: float | None) -> TickResult:
    in_row, total = ctx.failed_in_row + 1, ctx.failed_total + 1
    first = why or (failed[0].reason + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""))
    weight = ctx.weight
    if in_row >= threshold:
        reason = f"{first} for {in_row} checks in a row at weight {weight}"
        return TickResult(checks, Outcome.ROLLBACK, in_row, total, threshold, failure_limit, reason, weight, score_value, failed)
    if total >= failure_limit:
        reason = f"{first}: {total} failed checks in all (failureLimit {failure_limit}) at weight {weight}"
        return TickResult(checks, Outcome.ROLLBACK, in_row, total, threshold, failure_limit, reason, weight, score_value, failed)
    reason = f"{first}: failed check {in_row} of {threshold} in a row ({total} of {failure_limit} in all) at weight {weight}"
    return TickResult(checks, Outcome.FAIL, in_row, total, threshold, failure_limit, reason, weight, score_value, failed)


def run_tick(spec: ReleaseSpec, provider_for: ProviderFor, ctx: TickContext | None = None) -> TickResult:
    """Evaluate every metric of the spec once and decide."""
    ctx = ctx or TickContext()
    tick = _Tick(spec, provider_for, ctx)
    checks: list[Check] = []
    for metric in spec.analysis.metrics:
        below_minimum = tick.below_minimum(metric)
        if below_minimum is not None:
            query, _ = render_query(spec, metric, ctx=ctx)  # over the window its requests were counted in
            if isinstance(below_minimum, NoValues):
                checks.append(tick._dry(_no_data(metric, query, below_minimum, ctx, dry_run=metric.dry_run, weight=metric.weight), metric))
            else:
                checks.append(tick._dry(Check(metric=metric.name, query=query, threshold_range=_bounds(metric.threshold_range), verdict=Verdict.ERROR,
                                              effect=Effect.FAIL, reason=f"{metric.name}: the canary's requests could not be counted: {below_minimum}",
                                              dry_run=metric.dry_run, weight=metric.weight), metric))
            continue
        checks.append(tick.check(metric))
    return decide_for(spec, tuple(checks), ctx)


def decide_for(spec: ReleaseSpec, checks: tuple[Check, ...], ctx: TickContext) -> TickResult:
    """``decide`` with the spec's own threshold, failure limit, score bounds and critical metrics: for a
    tick's checks and any failures added to them (a rollout webhook's)."""
    analysis = spec.analysis
    score_bounds = (analysis.score.pass_, analysis.score.marginal) if analysis.score else None
    names = {m.name for m in analysis.metrics}
    # a check that is not a metric (a failed rollout webhook) is critical: a score never weighs it away
    critical = frozenset({m.name for m in analysis.metrics if m.critical} | {c.metric for c in checks if c.metric not in names})
    return decide(checks, ctx, analysis.threshold, analysis.failures_allowed, score_bounds, critical)


def extra_failure(name: str, reason: str) -> Check:
    """A failed check that is not a metric (a rollout webhook, a pre-rollout hook); ``decide_for``
    counts it as critical, so it fails the tick whatever the score."""
    return Check(metric=name, verdict=Verdict.ERROR, effect=Effect.FAIL, reason=reason)


# --- preflight ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One metric's query run once before a release: what was sent, and what came back."""

    index: int
    metric: Metric
    query: str
    value: float | MetricError


def preflight_problems(probes: Sequence[Probe], fields: str = "") -> list[Problem]:
    """The probes that make the spec bad input: only a query the provider rejected.

    A rejected query is a config defect that no amount of waiting fixes, so it is
    refused before anything is applied. No data, several series or an unreachable
    provider are not: they depend on traffic and on the moment, and are judged
    (as failed checks) at the ticks. ``fields``: where the app's settings stand (``apps.<name>.``).
    """
    problems = []
    for probe in probes:
        if not isinstance(probe.value, BadQuery):
            continue
        metric = probe.metric
        reason = str(probe.value).removeprefix("Prometheus rejected the query: ")
        where = f"{fields}analysis.metrics[{probe.index}]"
        if metric.template_ref is None:
            field_name, rule = f"{where}.name", f"built-in metric {metric.name}: Prometheus rejected its query: {reason}"
        else:
            field_name = f"metricTemplates.{metric.template_ref.name}.query"
            rule = f"Prometheus rejected it as rendered for {where} ({metric.name}): {reason}"
        problems.append(Problem(field_name, " ".join(probe.query.split()), rule))
    return problems


def preflight(spec: ReleaseSpec, provider_for: ProviderFor, fields: str = "", warnings: list[str] | None = None) -> list[Problem]:
    """Run every metric's query once, as a tick would render it, and return the problems found.

    Called before a release changes anything, so that a query Prometheus refuses
    is reported as bad input (exit 2) instead of being found at the first tick,
    after the canary was deployed. Once a provider did not answer, its other
    queries are not sent: the preflight never waits out several timeouts. The
    request count is sent too, over stable's pods, when a rule reads it
    (``count_problems``): what it finds that is no refusal goes into ``warnings``.
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
    return preflight_problems(probes, fields) + count_problems(spec, provider_for, unreachable, warnings)


def count_address(spec: ReleaseSpec, metric: Metric) -> str | None:
    """Where ``metric``'s requests are counted: the stack's Prometheus, which scrapes the app's pods; a template's own only
    when the stack has none (a template's may be another store, of business metrics, that holds no request counter)."""
    return None if spec.prometheus is not None else metric_query(spec, metric)[1]


def _count_uses(spec: ReleaseSpec, metric: Metric) -> list[str]:
    """What of ``metric``'s judgement reads the request count: minRequests, a zero compared with (or judged against)
    stable, and the evidence of a share of requests."""
    uses = ["minRequests"] if spec.analysis.min_requests is not None else []
    # by difference, a zero opted out of evidence is taken as it is; by ratio, 0 / 0 is read only on requests
    if metric.compare is not None and (metric.compare.by is CompareBy.RATIO or metric.evidence is not Evidence.NONE):
        uses.append("compare")
    if metric.judge is not None:
        uses.append("judge")
    if _share(spec, metric) is not None and (metric.threshold_range is not None or metric.compare is not None):
        uses.append("evidence")
    return uses


def count_problems(spec: ReleaseSpec, provider_for: ProviderFor, unreachable: set[str | None] | None = None,
                   warnings: list[str] | None = None) -> list[Problem]:
    """The request count sent once over stable's pods, per Prometheus and window a rule reads it in: a rejected count
    refuses the release, as a rejected query does. No series at all is a warning (``warnings``), not a refusal: a tick
    reads it as 0 requests, so a count that selects nothing (the app's counter is not ``http_requests_total``, or not
    labelled ``namespaceLabel`` and ``podLabel``) calls every track idle — every metric "fewer than minRequests", every zero
    "not a measurement", every rate without evidence, a healthy canary rolled back — but so does a stable whose pods
    have answered no request yet (a counter appears with its first request), which the release's own traffic may
    change. Stable at 0 with series (a quiet hour) is a count. An unreachable Prometheus or several series are left to
    the ticks, as for metrics; a release that skips its analysis reads no count."""
    if spec.analysis.skip_analysis:
        return []
    unreachable = set() if unreachable is None else unreachable
    asked: dict[tuple[str | None, str], list[str]] = {}
    for metric in spec.analysis.metrics:
        uses = _count_uses(spec, metric)
        if uses:
            asked.setdefault((count_address(spec, metric), window(spec, metric)), []).append(f"{metric.name} ({', '.join(uses)})")
    custom = spec.prometheus is not None and spec.prometheus.request_count is not None
    problems = []
    for (address, span), users in asked.items():
        if address in unreachable:
            continue
        provider = provider_for(address)
        query = request_count_query(spec, span, spec.stable)
        where = "the stack's Prometheus" if address is None else f"the Prometheus at {_origin(address)}"
        reading = f"which {'; '.join(users)} read on {where},"
        try:
            provider.run_query(query)
            continue
        except ProviderUnreachable:
            unreachable.add(address)
            continue
        except BadQuery as exc:
            field_name = "prometheus.requestCount"
            rule = (f"the request count, {reading} was rejected as rendered for stable's pods: "
                    f"{str(exc).removeprefix('Prometheus rejected the query: ')}")
            if not custom:
                rule += " (the built-in count: set prometheus.requestCount to one this Prometheus reads)"
        except NoValues:
            if warnings is not None:
                field_name, rule = _no_series(spec, provider, custom, span, reading)
                warnings.append(f"{field_name}: {rule} (sent: {' '.join(query.split())})")
            continue
        except MetricError:
            continue
        problems.append(Problem(field_name, " ".join(query.split()), rule))
    return problems


def _no_series(spec: ReleaseSpec, provider: metrics.MetricsProvider, custom: bool, span: str, reading: str) -> tuple[str, str]:
    """Which field a count with no series over stable's pods names, and what to set."""
    found = (f"{reading} found no series at all over stable's pods ({spec.stable}) in {span}: every track would read as 0 "
             "requests, and a healthy canary hold or fail")
    example = ('sum(increase(http_server_requests_total{{{ namespaceLabel }}="{{ namespace }}",'
               '{{ podLabel }}=~"{{ target }}-.*"}[{{ interval }}]))')
    quiet = "(a stable that has answered no request since its pods started has none either: send it some first)"
    if custom:
        return "prometheus.requestCount", (f"the request count, {found}: make it select the track's pods ({{{{ target }}}} is "
                                           f"the Deployment's name) in a counter they export {quiet}")
    pod_label, namespace_label = _labels(spec)
    builtin = f"the built-in request count ({metrics.REQUESTS_METRIC} by {namespace_label} and {pod_label}),"
    # the configured namespace label first, then the others Prometheus setups commonly put a pod's namespace in. Another
    # label is named only when both probes were answered: a configured label whose probe timed out, taken for one without
    # series, had the warning name another label to set on the strength of an error
    configured = _has_series(spec, provider, span, namespace_label)
    if configured is True:
        return "prometheus.podLabel", (f"{builtin} {found}, though namespace {spec.app.namespace} has {metrics.REQUESTS_METRIC} "
                                       f"series: set prometheus.podLabel to the label your Prometheus puts a pod's name in (pod with "
                                       "kube-prometheus-stack), or prometheus.requestCount to a query that counts the app's requests")
    if isinstance(configured, str):
        unlabelled = (f"the probe for {metrics.REQUESTS_METRIC} series labelled {namespace_label}={spec.app.namespace!r} could not run "
                      f"({configured}), so which label holds the namespace is not known")
    else:
        unlabelled = f"no {metrics.REQUESTS_METRIC} series is labelled {namespace_label}={spec.app.namespace!r}"
        for label in _NAMESPACE_LABELS:
            other = False if label == namespace_label else _has_series(spec, provider, span, label)
            if other is True:
                return "prometheus.namespaceLabel", (f"{builtin} {found}: {unlabelled}, though some are labelled {label}={spec.app.namespace!r}: "
                                                     f"set prometheus.namespaceLabel to {label}, the label your Prometheus puts a pod's namespace in")
            if isinstance(other, str):
                unlabelled += f" (the probe for those labelled {label}={spec.app.namespace!r} could not run: {other})"
    return "prometheus.requestCount", (f"{builtin} {found}: {unlabelled}; set prometheus.requestCount to a query of the requests a track's "
                                       f"pods answered in {{{{ interval }}}}, such as {example}, or, when the app's {metrics.REQUESTS_METRIC} "
                                       f"series carry the namespace in another label than {namespace_label}, prometheus.namespaceLabel to "
                                       f"it {quiet}")


#: the labels Prometheus setups commonly put a pod's namespace in: the Prometheus Operator's, and the classic
#: kubernetes_sd relabelling's (the one that yields kubernetes_pod_name, podLabel's default)
_NAMESPACE_LABELS = ("namespace", "kubernetes_namespace")


def _has_series(spec: ReleaseSpec, provider: metrics.MetricsProvider, span: str, namespace_label: str) -> bool | str:
    """Whether the app's namespace has series of the built-in count's counter, its namespace read in ``namespace_label``:
    True or False as Prometheus answered, or why it did not (unreachable, a timeout, the probe rejected), which is no "none"."""
    query = templates.render(metrics.SERIES_LABELS_QUERY, target=spec.stable, namespace=spec.app.namespace, interval=span, variables={},
                             namespace_label=namespace_label)
    try:
        provider.run_query(query)
        return True
    except NoValues:
        return False
    except MetricError as exc:
        return str(exc) or type(exc).__name__


def _origin(address: str) -> str:
    """A Prometheus named by its scheme, host and port only: its path or query may carry a token."""
    found = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(?:[^/?#\s]*@)?([^/?#@\s]+)", address)
    return f"{found.group(1)}://{found.group(2)}" if found else "a template's provider.address"
