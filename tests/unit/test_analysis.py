"""Analysis (canary.core.analysis) with an in-memory metrics provider: checks, policies, evidence,
comparisons with stable, the judge, dry runs, the score, and the two failure counts."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import pytest

from canary.core import analysis
from canary.core.analysis import TickContext
from canary.core.records import Bounds, Effect, Outcome, Verdict
from canary.core.spec import ReleaseSpec
from canary.errors import BadQuery, MetricError, MultipleValues, NoValues, ProviderUnreachable
from tests.helpers import chain, set_path, spec_with, update

Answer = float | MetricError
Key = str | tuple[str, ...]

# Substrings that tell the queries apart.
COUNT = "increase(http_requests_total"
ERROR_RATE = "100 - ((sum(rate(http_requests_total"
SUCCESS_RATE = "sum(rate(http_requests_total"
TEMPLATE = "sum(rate(x{"
DURATION = "histogram_quantile"
CANARY = "web-canary"
STABLE = "web-stable"
BASE_SAMPLES = [190, 195, 198, 200, 202, 205, 210, 188, 192, 207, 199, 201, 196, 204, 193, 206, 197, 203, 191, 209]
JITTER = [3, -2, 1, -4, 2, 0, -1, 4, -3, 2, -2, 1, 3, -1, 0, -3, 2, -4, 1, 1]


class FakeMetrics:
    """An in-memory MetricsProvider (and RangeProvider).

    ``answers``: the first key whose substrings all occur in the query gives the value, or the
    MetricError raised; no key: the query was not expected. ``samples`` likewise for run_range.
    Every query is recorded.
    """

    def __init__(self, answers: dict[Key, Answer] | None = None, samples: dict[Key, Sequence[float] | MetricError] | None = None) -> None:
        self.answers = answers or {}
        self.samples = samples or {}
        self.queries: list[str] = []
        self.ranges: list[tuple[str, float, float]] = []

    @staticmethod
    def _find(table: dict[Key, Any], query: str) -> Any:
        for key, value in table.items():
            if all(part in query for part in ((key,) if isinstance(key, str) else key)):
                if isinstance(value, MetricError):
                    raise value
                return value
        raise AssertionError(f"unexpected query {query}")

    def run_query(self, query: str) -> float:
        self.queries.append(query)
        return float(self._find(self.answers, query))

    def run_range(self, query: str, seconds: float, step: float) -> list[float]:
        self.ranges.append((query, seconds, step))
        return list(self._find(self.samples, query))

    def is_online(self) -> bool:
        return True

    def series_labels(self, selector: str) -> list[dict[str, str]]:
        return []


def tick(spec: ReleaseSpec, answers: dict[Key, Answer] | None = None, ctx: TickContext | None = None,
         samples: dict[Key, Sequence[float] | MetricError] | None = None) -> tuple[analysis.TickResult, FakeMetrics]:
    provider = FakeMetrics(answers, samples)
    return analysis.run_tick(spec, lambda address: provider, ctx), provider


#: a Prometheus that scrapes every second: a judge's step (unset: 2s) may be short, and a minute holds its samples
EVERY_SECOND = set_path("prometheus.scrapeInterval", "1s")


def metrics(*entries: dict[str, Any], **analysis_changes: Any) -> ReleaseSpec:
    """The base spec with these metrics (and analysis changes), scraped every second."""
    return spec_with(set_path("analysis.metrics", list(entries)), update("analysis", **analysis_changes), EVERY_SECOND)


BASE = {TEMPLATE: 0.1, DURATION: 120.0}


# --- checks and outcomes ------------------------------------------------------------------------


def test_every_metric_is_evaluated_even_after_a_failure() -> None:
    result, provider = tick(spec_with(), {TEMPLATE: 18.2, DURATION: 120.0}, TickContext(weight=20))
    assert [c.metric for c in result.checks] == ["error-rate", "request-duration"]
    assert len(provider.queries) == 2
    assert result.checks[0].verdict is Verdict.FAIL and result.checks[0].effect is Effect.FAIL and result.checks[0].reason == "error-rate 18.2 > max 1"
    assert result.checks[1].verdict is Verdict.PASS and result.checks[1].reason == "request-duration 120 within max 500"
    assert result.outcome is Outcome.FAIL and (result.failed_in_row, result.failed_total) == (1, 1)
    assert result.failed == (result.checks[0],)
    assert result.reason == "error-rate 18.2 > max 1: failed check 1 of 3 in a row (1 of 3 in all) at weight 20"


def test_the_query_is_recorded_as_sent() -> None:
    result, provider = tick(spec_with(), BASE)
    assert [c.query for c in result.checks] == provider.queries
    assert 'pod=~"web-canary"' in provider.queries[0] and "[1m]" in provider.queries[0] and 'le="0.5"' in provider.queries[0]
    assert 'kubernetes_pod_name=~"web-canary-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)?"' in provider.queries[1] and 'namespace="prod"' in provider.queries[1]
    assert result.checks[0].threshold_range is not None and result.checks[0].threshold_range.max == 1


def test_the_pod_label_comes_from_the_prometheus_config() -> None:
    _, provider = tick(spec_with(set_path("prometheus.podLabel", "pod")), BASE)
    assert 'pod=~"web-canary-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)?"' in provider.queries[1] and "kubernetes_pod_name" not in provider.queries[1]


#: a Prometheus relabelled the classic kubernetes_sd way: the namespace in kubernetes_namespace, the pod in kubernetes_pod_name
CLASSIC = set_path("prometheus.namespaceLabel", "kubernetes_namespace")


@pytest.mark.parametrize("name", ["request-success-rate", "request-error-rate", "request-duration", "request-duration-p95", "request-duration-p99"])
def test_every_built_in_selects_the_namespace_by_the_namespace_label(name: str) -> None:
    """Before, the built-ins selected namespace="prod" whatever Prometheus labelled: with the classic relabelling they found
    no series, and a healthy canary rolled back on "no data"."""
    spec = spec_with(CLASSIC, set_path("analysis.metrics", [{"name": name, "thresholdRange": {"max": 50}}]))
    query, _ = analysis.render_query(spec, spec.analysis.metrics[0])
    selectors = re.findall(r"\{[^}]*\}", query)
    assert selectors and all(s.startswith('{kubernetes_namespace="prod",kubernetes_pod_name=~"web-canary-') for s in selectors), query
    default, _ = analysis.render_query(spec_with(set_path("analysis.metrics", [{"name": name, "thresholdRange": {"max": 50}}])), spec.analysis.metrics[0])
    assert all(s.startswith('{namespace="prod",kubernetes_pod_name=~"web-canary-') for s in re.findall(r"\{[^}]*\}", default)), default


def test_the_built_in_request_count_selects_the_namespace_by_the_namespace_label() -> None:
    assert analysis.request_count_query(spec_with(CLASSIC), "1m", "web-stable") == \
        'sum(increase(http_requests_total{kubernetes_namespace="prod",kubernetes_pod_name=~"web-stable-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)?"}[1m]))'
    assert analysis.request_count_query(spec_with(), "1m", "web-stable") == BUILTIN_STABLE_COUNT


def test_templates_and_the_request_count_get_the_namespace_label() -> None:
    count = 'sum(increase(hits{{{ namespaceLabel }}="{{ namespace }}",{{ podLabel }}=~"{{ target }}-.*"}[{{ interval }}]))'
    spec = spec_with(CLASSIC, set_path("prometheus.requestCount", count),
                     set_path("metricTemplates.error-rate.query", 'x{ {{ namespaceLabel }}="{{ namespace }}",le="{{ variables.le }}"}'))
    query, _ = analysis.render_query(spec, spec.analysis.metrics[0])
    assert query == 'x{ kubernetes_namespace="prod",le="0.5"}'
    assert analysis.request_count_query(spec, "1m") == 'sum(increase(hits{kubernetes_namespace="prod",kubernetes_pod_name=~"web-canary-.*"}[1m]))'


def test_a_metric_interval_overrides_the_analysis_interval() -> None:
    _, provider = tick(spec_with(set_path("analysis.metrics.1.interval", "5m")), BASE)
    assert "[1m]" in provider.queries[0] and "[5m]" in provider.queries[1]


def test_all_passing_advances_resets_the_row_and_keeps_the_total() -> None:
    result, _ = tick(spec_with(), BASE, TickContext(failed_in_row=2, failed_total=2, weight=30))
    assert result.outcome is Outcome.ADVANCE and (result.failed_in_row, result.failed_total) == (0, 2)
    assert result.reason == "all 2 checks passed at weight 30"


def test_threshold_failures_in_a_row_roll_back_on_that_tick() -> None:
    result, _ = tick(spec_with(update("analysis", failureLimit=10)), {TEMPLATE: 18.2, DURATION: 120.0}, TickContext(failed_in_row=2, failed_total=2, weight=20))
    assert result.outcome is Outcome.ROLLBACK and (result.failed_in_row, result.failed_total) == (3, 3)
    assert result.reason == "error-rate 18.2 > max 1 for 3 checks in a row at weight 20"


def test_several_failures_are_named_in_the_reason() -> None:
    result, _ = tick(spec_with(), {TEMPLATE: 18.2, DURATION: 900.0})
    assert result.reason.startswith("error-rate 18.2 > max 1 (and 1 more): ")


@pytest.mark.parametrize("error", [ProviderUnreachable("down"), BadQuery("parse error"), MultipleValues("2 series")], ids=repr)
def test_errors_are_failed_checks_never_passes(error: MetricError) -> None:
    result, _ = tick(spec_with(), {TEMPLATE: error, DURATION: error})
    assert all(c.verdict is Verdict.ERROR and c.effect is Effect.FAIL and c.value is None for c in result.checks)
    assert result.checks[0].reason == f"error-rate could not be evaluated: {type(error).__name__}: {error}"
    assert result.outcome is Outcome.FAIL


@pytest.mark.parametrize(
    ("policy", "effect", "outcome"),
    [("fail", Effect.FAIL, Outcome.FAIL), ("hold", Effect.HOLD, Outcome.HOLD), ("pass", Effect.PASS, Outcome.ADVANCE)],
)
def test_no_data_follows_the_metric_policy(policy: str, effect: Effect, outcome: Outcome) -> None:
    spec = spec_with(set_path("analysis.metrics.1.onNoData", policy))
    result, _ = tick(spec, {TEMPLATE: 0.0, DURATION: NoValues("empty")}, TickContext(failed_in_row=1, failed_total=1))
    check = result.checks[1]
    assert check.verdict is Verdict.NO_DATA and check.effect is effect and check.value is None
    assert check.reason == f"request-duration has no data: empty (onNoData: {policy})"
    assert result.outcome is outcome
    if outcome is Outcome.HOLD:
        assert (result.failed_in_row, result.failed_total) == (1, 1)  # a hold neither fails nor resets


def test_nan_is_no_data() -> None:
    result, _ = tick(spec_with(), {TEMPLATE: math.nan, DURATION: 1.0})
    assert result.checks[0].verdict is Verdict.NO_DATA and result.checks[0].effect is Effect.FAIL and "NaN" in result.checks[0].reason


@pytest.mark.parametrize(("policy", "effect"), [("fail", Effect.HOLD), ("hold", Effect.HOLD), ("pass", Effect.PASS)])
def test_the_warm_up_turns_no_data_into_a_hold(policy: str, effect: Effect) -> None:
    spec = spec_with(set_path("analysis.metrics.1.onNoData", policy))
    result, _ = tick(spec, {TEMPLATE: 0.0, DURATION: NoValues("empty")}, TickContext(warming_up=True))
    assert result.checks[1].effect is effect
    if effect is Effect.HOLD:
        assert result.checks[1].reason.endswith("(warming up after the shift)") and result.outcome is Outcome.HOLD


def test_the_warm_up_does_not_hold_a_value_outside_its_range() -> None:
    result, _ = tick(spec_with(), {TEMPLATE: 18.2, DURATION: 1.0}, TickContext(warming_up=True))
    assert result.outcome is Outcome.FAIL


@pytest.mark.parametrize(("policy", "warming_up"), [("hold", False), ("fail", True), ("hold", True)])
def test_a_hold_beyond_the_hold_limit_fails(policy: str, warming_up: bool) -> None:
    spec = spec_with(set_path("analysis.metrics.1.onNoData", policy))
    result, _ = tick(spec, {TEMPLATE: 0.0, DURATION: NoValues("empty")}, TickContext(warming_up=warming_up, held_too_long=True))
    assert result.checks[1].effect is Effect.FAIL and result.checks[1].reason.endswith("(held longer than analysis.holdLimit)")
    assert result.outcome is Outcome.FAIL


def test_held_too_long_leaves_a_pass_policy_alone() -> None:
    result, _ = tick(spec_with(set_path("analysis.metrics.1.onNoData", "pass")), {TEMPLATE: 0.0, DURATION: NoValues("empty")}, TickContext(held_too_long=True))
    assert result.outcome is Outcome.ADVANCE


# --- evidence on rate metrics -------------------------------------------------------------------

HTTP_TEMPLATE = ('100 - sum(rate(http_requests_total{namespace="{{ namespace }}",{{ podLabel }}=~"{{ target }}-.*",status!~"5.."}[{{ interval }}]))'
                 ' / sum(rate(http_requests_total{namespace="{{ namespace }}",{{ podLabel }}=~"{{ target }}-.*"}[{{ interval }}])) * 100')


def _errors_template(**metric: Any) -> ReleaseSpec:
    return spec_with(set_path("metricTemplates.http-errors", {"query": HTTP_TEMPLATE}),
                     set_path("analysis.metrics", [{"name": "errors", "templateRef": {"name": "http-errors"}, **metric}]))


ERROR_RATE_1 = {"name": "request-error-rate", "thresholdRange": {"max": 1}}
SUCCESS_RATE_99 = {"name": "request-success-rate", "thresholdRange": {"min": 99}}


@pytest.mark.parametrize(
    ("spec", "rate_key", "requests", "value", "verdict", "effect"),
    [
        # the error rate: its upper bound on the canary's requests must be within max
        (metrics(ERROR_RATE_1), ERROR_RATE, 1000.0, 0.0, Verdict.PASS, Effect.PASS),
        (metrics(ERROR_RATE_1), ERROR_RATE, 300.0, 0.0, Verdict.PASS, Effect.PASS),
        (metrics(ERROR_RATE_1), ERROR_RATE, 200.0, 0.0, Verdict.INCONCLUSIVE, Effect.HOLD),  # 0 of 200 is also what a 1.3 % error rate shows
        (metrics(ERROR_RATE_1), ERROR_RATE, 4.0, 0.0, Verdict.INCONCLUSIVE, Effect.HOLD),
        (metrics(ERROR_RATE_1), ERROR_RATE, NoValues("no traffic"), 0.0, Verdict.INCONCLUSIVE, Effect.HOLD),
        (metrics(ERROR_RATE_1), ERROR_RATE, 10000.0, 0.9, Verdict.INCONCLUSIVE, Effect.HOLD),
        (metrics(ERROR_RATE_1), ERROR_RATE, 100000.0, 0.9, Verdict.PASS, Effect.PASS),
        (metrics(ERROR_RATE_1), ERROR_RATE, 10.0, 2.0, Verdict.FAIL, Effect.FAIL),  # the point estimate outside fails at once
        # the success rate: its lower bound must be within min
        (metrics(SUCCESS_RATE_99), SUCCESS_RATE, 1000.0, 100.0, Verdict.PASS, Effect.PASS),
        (metrics(SUCCESS_RATE_99), SUCCESS_RATE, 50.0, 100.0, Verdict.INCONCLUSIVE, Effect.HOLD),
        (metrics(SUCCESS_RATE_99), SUCCESS_RATE, 1000.0, 98.0, Verdict.FAIL, Effect.FAIL),
        # a template over the request counter with a 0..100 range is a rate too, unless told otherwise
        (_errors_template(thresholdRange={"max": 1}), "100 - sum(rate(http_requests_total", 50.0, 0.0, Verdict.INCONCLUSIVE, Effect.HOLD),
        (_errors_template(thresholdRange={"max": 1}), "100 - sum(rate(http_requests_total", 5000.0, 0.0, Verdict.PASS, Effect.PASS),
        (_errors_template(thresholdRange={"max": 1}, evidence="none"), "100 - sum(rate(http_requests_total", 50.0, 0.0, Verdict.PASS, Effect.PASS),
        (_errors_template(thresholdRange={"max": 500}), "100 - sum(rate(http_requests_total", 50.0, 0.0, Verdict.PASS, Effect.PASS),
        (spec_with(set_path("analysis.metrics.0.evidence", "rate")), TEMPLATE, 50.0, 0.0, Verdict.INCONCLUSIVE, Effect.HOLD),
    ],
    ids=["errors-1000", "errors-300", "errors-200", "errors-4", "errors-no-count", "errors-0.9-of-10k", "errors-0.9-of-100k", "errors-above",
         "success-1000", "success-50", "success-below", "template-auto-50", "template-auto-5000", "template-evidence-none", "template-range-beyond-100",
         "explicit-evidence-rate"],
)
def test_a_rate_passes_only_when_its_bound_on_the_request_count_is_inside(spec: ReleaseSpec, rate_key: str, requests: Answer, value: float,
                                                                          verdict: Verdict, effect: Effect) -> None:
    result, provider = tick(spec, {COUNT: requests, rate_key: value, DURATION: 1.0})
    check = result.checks[0]
    assert (check.verdict, check.effect) == (verdict, effect), check.reason
    counted = any(COUNT in q for q in provider.queries)
    if verdict is Verdict.FAIL or check.requests is None:
        assert check.bound is None
    else:
        assert counted and check.requests == (0.0 if isinstance(requests, MetricError) else requests)
        assert check.bound is not None and "95% bound" in check.reason
    if effect is Effect.HOLD:
        assert check.reason.endswith("not enough requests to tell") and result.outcome is Outcome.HOLD


@pytest.mark.parametrize(
    ("metric", "rate_key", "requests", "canary", "stable", "effect"),
    [
        # the canary answered 3 requests without an error: that does not show its error rate within 1 point of stable's
        ({"name": "request-error-rate", "compare": {"thresholdRange": {"max": 1}}}, ERROR_RATE, 3.0, 0.0, 0.5, Effect.HOLD),
        ({"name": "request-error-rate", "compare": {"thresholdRange": {"max": 1}}}, ERROR_RATE, 100000.0, 0.0, 0.5, Effect.PASS),
        ({"name": "request-error-rate", "compare": {"thresholdRange": {"max": 1}}}, ERROR_RATE, 100000.0, 2.0, 0.5, Effect.FAIL),
        ({"name": "request-error-rate", "thresholdRange": {"max": 5}, "compare": {"by": "ratio", "thresholdRange": {"max": 1.5}}}, ERROR_RATE, 20.0, 1.0, 1.0,
         Effect.HOLD),
        ({"name": "request-success-rate", "compare": {"thresholdRange": {"min": -1}}}, SUCCESS_RATE, 3.0, 100.0, 99.5, Effect.HOLD),
        ({"name": "request-success-rate", "compare": {"thresholdRange": {"min": -1}}}, SUCCESS_RATE, 100000.0, 100.0, 99.5, Effect.PASS),
        ({"name": "request-error-rate", "compare": {"thresholdRange": {"max": 1}}, "evidence": "none"}, ERROR_RATE, 3.0, 0.0, 0.5, Effect.PASS),
    ],
    ids=["errors-3", "errors-100k", "errors-worse", "errors-ratio-20", "success-3", "success-100k", "evidence-none"],
)
def test_a_rate_compared_with_stable_needs_evidence_too(metric: dict[str, Any], rate_key: str, requests: float, canary: float, stable: float,
                                                        effect: Effect) -> None:
    result, provider = tick(metrics(metric), {COUNT: requests, (rate_key, CANARY): canary, (rate_key, STABLE): stable})
    check = result.checks[0]
    assert check.effect is effect, check.reason
    if effect is Effect.HOLD:
        assert "not enough requests to tell" in check.reason and check.requests == requests and check.bound is not None
    if metric.get("evidence") == "none":
        assert not any(COUNT in q for q in provider.queries)


CHECKOUT_TEMPLATE = ('sum(rate(http_requests_total{namespace="{{ namespace }}",{{ podLabel }}=~"{{ target }}-.*",path="/checkout",status=~"5.."}[{{ interval }}]))'
                     ' / sum(rate(http_requests_total{namespace="{{ namespace }}",{{ podLabel }}=~"{{ target }}-.*",path="/checkout"}[{{ interval }}])) * 100')


@pytest.mark.parametrize(
    ("query", "borrows", "why"),
    [(HTTP_TEMPLATE, True, ""), (CHECKOUT_TEMPLATE, False, ": path)"),
     ("sum(rate(http_requests_total{status=~'5..'}[1m])) / sum(rate(http_requests_total[1m])) * 100", False, "not selected by namespace")],
    ids=["all-the-canary's-requests", "checkout-only", "every-namespace"],
)
def test_a_template_borrows_the_canary_request_count_only_for_a_share_of_those_requests(query: str, borrows: bool, why: str) -> None:
    """Under evidence: auto, a /checkout error rate over 2 requests must not be judged as if over all the
    canary's 10,000: only a template selecting the requests the count selects is a rate on that count. A
    narrower one is a rate on at most that count: said so, and held when even that cannot tell (a light load)."""
    spec = spec_with(set_path("metricTemplates.http-errors", {"query": query}),
                     set_path("analysis.metrics", [{"name": "errors", "templateRef": {"name": "http-errors"}, "thresholdRange": {"max": 1}}]))
    result, provider = tick(spec, {COUNT: 10000.0, "http_requests_total": 0.0})
    check = result.checks[0]
    assert analysis.is_rate(spec, spec.analysis.metrics[0]) is borrows
    assert check.effect is Effect.PASS and check.requests == 10000 and any(COUNT in q for q in provider.queries)
    assert ("on at most 10000 requests (the template selects part of the canary's" in check.reason) is not borrows and why in check.reason
    light, _ = tick(spec, {COUNT: 5.0, "http_requests_total": 0.0})  # five requests in all: the share cannot be told
    assert light.checks[0].effect is Effect.HOLD and "not enough requests to tell" in light.checks[0].reason


@pytest.mark.parametrize(("requests", "effect"), [(60.0, Effect.HOLD), (100000.0, Effect.PASS)])
def test_a_share_of_part_of_the_requests_compared_with_stable_holds_when_even_the_whole_count_cannot_tell(requests: float, effect: Effect) -> None:
    """Its thresholdRange (max 5) is shown on 60 requests, its comparison (at most 0.5 points above stable) is not:
    before, the comparison of a /checkout error rate passed on any count."""
    spec = spec_with(set_path("metricTemplates.http-errors", {"query": CHECKOUT_TEMPLATE}),
                     set_path("analysis.metrics", [{"name": "errors", "templateRef": {"name": "http-errors"}, "thresholdRange": {"max": 5},
                                                    "compare": {"thresholdRange": {"max": 0.5}}}]))
    result, _ = tick(spec, {COUNT: requests, ('path="/checkout"', CANARY): 0.0, ('path="/checkout"', STABLE): 0.2})
    check = result.checks[0]
    assert check.effect is effect, check.reason
    relative = check.reason.split("; ")[1]
    assert f"on at most {requests:.0f} requests (the template selects part of the canary's: path)" in relative
    assert relative.endswith("not enough requests to tell (canary 0, stable 0.2)") is (effect is Effect.HOLD)


def test_the_evidence_bound_uses_the_configured_confidence() -> None:
    loose, _ = tick(metrics(ERROR_RATE_1, confidence=0.5), {COUNT: 20.0, ERROR_RATE: 0.0})
    strict, _ = tick(metrics(ERROR_RATE_1, confidence=0.99), {COUNT: 20.0, ERROR_RATE: 0.0})
    assert loose.checks[0].bound is not None and strict.checks[0].bound is not None
    assert loose.checks[0].bound < strict.checks[0].bound and "50% bound" in loose.checks[0].reason


def test_too_little_evidence_beyond_the_hold_limit_fails() -> None:
    result, _ = tick(metrics(ERROR_RATE_1), {COUNT: 4.0, ERROR_RATE: 0.0}, TickContext(held_too_long=True))
    assert result.checks[0].effect is Effect.FAIL and result.checks[0].reason.endswith("held longer than analysis.holdLimit")


def test_a_request_count_that_cannot_be_read_fails_the_rate() -> None:
    result, _ = tick(metrics(ERROR_RATE_1), {COUNT: ProviderUnreachable("down"), ERROR_RATE: 0.0})
    assert result.checks[0].verdict is Verdict.ERROR and result.checks[0].effect is Effect.FAIL and "could not be counted" in result.checks[0].reason


def test_rate_metrics_of_one_window_share_one_request_count() -> None:
    _, provider = tick(metrics(ERROR_RATE_1, SUCCESS_RATE_99), {COUNT: 5000.0, ERROR_RATE: 0.0, SUCCESS_RATE: 100.0})
    assert sum(COUNT in q for q in provider.queries) == 1


@pytest.mark.parametrize(("held", "window"), [(600, "10m"), (90.7, "1m30s"), (30, "1m"), (None, "1m")])
def test_the_evidence_window_widens_the_interval_of_rate_metrics_only(held: float | None, window: str) -> None:
    spec = metrics(ERROR_RATE_1, {"name": "request-duration", "thresholdRange": {"max": 500}})
    result, provider = tick(spec, {COUNT: 100000.0, ERROR_RATE: 0.0, DURATION: 1.0}, TickContext(evidence_window=held))
    rate, count, duration = (next(q for q in provider.queries if key in q) for key in (ERROR_RATE, COUNT, DURATION))
    assert re.findall(r"\[(\w+)\]", rate) == [window, window]
    assert f"[{window}]" in count
    assert "[1m]" in duration
    assert result.checks[0].query == rate


# --- the minimum-request guard ------------------------------------------------------------------


def test_min_requests_turns_low_traffic_into_no_data_without_querying_the_metrics() -> None:
    result, provider = tick(spec_with(update("analysis", minRequests=20)), {COUNT: 3.0, **BASE})
    assert all(c.verdict is Verdict.NO_DATA and c.effect is Effect.FAIL for c in result.checks)
    assert "the canary answered 3 requests in 1m, fewer than minRequests 20" in result.checks[0].reason
    assert len(provider.queries) == 1 and result.outcome is Outcome.FAIL


def test_a_pass_on_no_data_says_nothing_was_measured() -> None:
    """Every metric onNoData: pass and too few requests: the tick passes, as configured, but does not say "all passed"
    as if each had been measured."""
    spec = spec_with(update("analysis", minRequests=20), set_path("analysis.metrics.0.onNoData", "pass"), set_path("analysis.metrics.1.onNoData", "pass"))
    result, _ = tick(spec, {COUNT: 0.0, **BASE})
    assert result.outcome is Outcome.ADVANCE
    assert result.reason == "all 2 checks passed at weight 0 (2 with no data, by onNoData: pass)", result.reason


def test_min_requests_in_the_warm_up_holds() -> None:
    result, _ = tick(spec_with(update("analysis", minRequests=20)), {COUNT: NoValues("empty"), **BASE}, TickContext(warming_up=True))
    assert result.outcome is Outcome.HOLD and "answered 0 requests" in result.checks[0].reason


def test_min_requests_met_evaluates_the_metrics() -> None:
    result, provider = tick(spec_with(update("analysis", minRequests=20)), {COUNT: 300.0, **BASE})
    assert result.outcome is Outcome.ADVANCE and len(provider.queries) == 3


def test_min_requests_that_cannot_be_counted_fails_every_check() -> None:
    result, _ = tick(spec_with(update("analysis", minRequests=20)), {COUNT: ProviderUnreachable("down"), **BASE})
    assert all(c.verdict is Verdict.ERROR and c.effect is Effect.FAIL and "could not be counted" in c.reason for c in result.checks)


def test_min_requests_are_counted_over_the_window_a_held_rate_is_judged_over() -> None:
    """A quiet service, 30 requests a minute, minRequests 100: while the step held, its error rate was read over the
    10 minutes since the shift, but the minimum was counted over analysis.interval, so it never had enough and held
    until holdLimit rolled a healthy release back."""
    spec = metrics({"name": "request-error-rate", "thresholdRange": {"max": 5}, "onNoData": "hold"}, minRequests=100)
    answers: dict[Key, Answer] = {(COUNT, "[1m]"): 30.0, (COUNT, "[10m]"): 300.0, ERROR_RATE: 0.0}
    result, provider = tick(spec, answers, TickContext(evidence_window=600.0))
    check = result.checks[0]
    assert check.verdict is Verdict.PASS and "on 300 requests" in check.reason, check.reason
    assert result.outcome is Outcome.ADVANCE and not any("[1m]" in q for q in provider.queries), provider.queries
    # a quiet one still: too few in the grown window too, and the reason names that window
    result, _ = tick(spec, {**answers, (COUNT, "[10m]"): 90.0}, TickContext(evidence_window=600.0))
    assert "the canary answered 90 requests in 10m, fewer than minRequests 100" in result.checks[0].reason, result.checks[0].reason
    assert "[10m]" in result.checks[0].query


def test_min_requests_are_counted_over_a_metric_s_own_interval() -> None:
    spec = metrics({"name": "request-duration", "interval": "5m", "thresholdRange": {"max": 500}}, minRequests=100)
    result, _ = tick(spec, {(COUNT, "[1m]"): 30.0, (COUNT, "[5m]"): 150.0, DURATION: 200.0})
    assert result.checks[0].verdict is Verdict.PASS and result.outcome is Outcome.ADVANCE, result.reason


#: a share of the canary's requests read from another Prometheus than the stack's (a Thanos that alone holds them)
_ELSEWHERE = "http://thanos.monitoring:9090"
_SHARE_ELSEWHERE = chain(
    set_path("metricTemplates.errors", {"provider": {"type": "prometheus", "address": _ELSEWHERE}, "query": (
        'sum(rate(http_requests_total{namespace="{{ namespace }}",{{ podLabel }}=~"{{ target }}-.*",status=~"5.."}[{{ interval }}]))'
        ' / sum(rate(http_requests_total{namespace="{{ namespace }}",{{ podLabel }}=~"{{ target }}-.*"}[{{ interval }}]))')}),
    set_path("analysis.metrics", [{"name": "errors", "templateRef": {"name": "errors"}, "thresholdRange": {"max": 0.01}}]))


def _without_a_stack_prometheus(data: dict[str, Any]) -> None:
    data.pop("prometheus", None)


@pytest.mark.parametrize("least", [None, 100], ids=["evidence", "min-requests"])
@pytest.mark.parametrize("stack_prometheus", [True, False], ids=["stack-s", "template-s"])
def test_the_requests_behind_a_template_are_counted_by_the_stack_s_prometheus_else_by_the_template_s(least: int | None,
                                                                                                   stack_prometheus: bool) -> None:
    # the stack's Prometheus scrapes the app's pods and counts their requests, whatever store a template reads (one of
    # business metrics may hold no request counter: counted there, every track was 0); without one, the count was
    # refused outright though the template's Prometheus sees the requests
    spec = spec_with(_SHARE_ELSEWHERE, update("analysis", minRequests=least), *(() if stack_prometheus else (_without_a_stack_prometheus,)))
    counting, other = FakeMetrics({COUNT: 5000.0, "status=~": 0.0}), FakeMetrics({COUNT: NoValues("the query returned no samples"), "status=~": 0.0})
    stack, elsewhere = (counting, other) if stack_prometheus else (other, counting)
    result = analysis.run_tick(spec, lambda address: elsewhere if address == _ELSEWHERE else stack)
    check = result.checks[0]
    assert check.verdict is Verdict.PASS and "on 5000 requests" in check.reason and check.requests == 5000.0, check.reason
    assert not any(COUNT in q for q in other.queries) and any(COUNT in q for q in counting.queries)


# --- compared with stable -----------------------------------------------------------------------


def _compared(by: str, threshold: dict[str, float]) -> ReleaseSpec:
    return metrics({"name": "request-duration", "compare": {"by": by, "thresholdRange": threshold}})


@pytest.mark.parametrize(
    ("by", "threshold", "canary", "stable", "verdict", "effect", "reason"),
    [
        ("difference", {"max": 50}, 120.0, 100.0, Verdict.PASS, Effect.PASS, "request-duration − stable 20 within max 50 (canary 120, stable 100)"),
        ("difference", {"max": 50}, 200.0, 100.0, Verdict.FAIL, Effect.FAIL, "request-duration − stable 100 > max 50 (canary 200, stable 100)"),
        ("difference", {"min": -5}, 90.0, 100.0, Verdict.FAIL, Effect.FAIL, "request-duration − stable -10 < min -5 (canary 90, stable 100)"),
        ("ratio", {"max": 1.5}, 120.0, 100.0, Verdict.PASS, Effect.PASS, "request-duration / stable 1.2 within max 1.5 (canary 120, stable 100)"),
        ("ratio", {"max": 1.5}, 200.0, 100.0, Verdict.FAIL, Effect.FAIL, "request-duration / stable 2 > max 1.5 (canary 200, stable 100)"),
        ("ratio", {"max": 1.5}, 5.0, 0.0, Verdict.NO_DATA, Effect.HOLD, "request-duration: stable's value is 0, the ratio is undefined (use by: difference)"),
    ],
)
def test_compare_judges_the_canary_against_stable_in_the_same_window(by: str, threshold: dict[str, float], canary: float, stable: float,
                                                                     verdict: Verdict, effect: Effect, reason: str) -> None:
    result, provider = tick(_compared(by, threshold), {(DURATION, CANARY): canary, (DURATION, STABLE): stable})
    check = result.checks[0]
    assert (check.verdict, check.effect, check.reason) == (verdict, effect, reason)
    assert check.value == canary and check.stable_value == stable
    assert check.compare_range == Bounds(**threshold) and check.compare_by == by  # the report draws the band from them
    assert check.stable_query is not None and STABLE in check.stable_query and CANARY not in check.stable_query
    assert check.stable_query == check.query.replace(CANARY, STABLE) and len(provider.queries) == 2


ZERO_COUNTS = {(COUNT, CANARY): 0.0, (COUNT, STABLE): 0.0}
SOME_COUNTS = {(COUNT, CANARY): 5000.0, (COUNT, STABLE): 45000.0}
FEW_COUNTS = {(COUNT, CANARY): 20.0, (COUNT, STABLE): 180.0}


def _zeros(key: str) -> dict[Key, Answer]:
    return {(key, CANARY): 0.0, (key, STABLE): 0.0}


@pytest.mark.parametrize(
    ("metric", "answers", "ctx", "verdict", "effect", "why"),
    [
        # neither track answered a request: 0 / 0 is no measurement, whatever the metric
        ({"name": "request-duration"}, {**ZERO_COUNTS, **_zeros(DURATION)}, TickContext(), Verdict.NO_DATA, Effect.FAIL,
         "has no data: 0 / 0 on 0 canary and 0 stable requests in 1m (none on a side): not a measurement (onNoData: fail)"),
        ({"name": "request-duration"}, {**ZERO_COUNTS, **_zeros(DURATION)}, TickContext(warming_up=True), Verdict.NO_DATA, Effect.HOLD,
         "(warming up after the shift)"),
        ({"name": "request-duration", "onNoData": "hold"}, {(COUNT, CANARY): 0.0, (COUNT, STABLE): 900.0, **_zeros(DURATION)}, TickContext(),
         Verdict.NO_DATA, Effect.HOLD, "on 0 canary and 900 stable requests in 1m (none on a side)"),
        ({"name": "request-error-rate", "thresholdRange": {"max": 1}}, {**ZERO_COUNTS, **_zeros(ERROR_RATE)}, TickContext(), Verdict.NO_DATA, Effect.FAIL,
         "not a measurement"),
        ({"name": "errors", "templateRef": {"name": "x"}}, {**ZERO_COUNTS, **_zeros(TEMPLATE)}, TickContext(), Verdict.NO_DATA, Effect.FAIL,
         "not a measurement"),
        # both tracks answered: a non-rate's two zeros are the same value
        ({"name": "request-duration"}, {**SOME_COUNTS, **_zeros(DURATION)}, TickContext(), Verdict.PASS, Effect.PASS,
         "request-duration / stable: both 0 on 5000 canary and 45000 stable requests in 1m, read as 1, within max 1.5"),
        ({"name": "errors", "templateRef": {"name": "x"}}, {**FEW_COUNTS, **_zeros(TEMPLATE)}, TickContext(), Verdict.PASS, Effect.PASS, "read as 1"),
        # a rate at 0 % on both: no bound over stable's 0 is ever inside a ratio's range; thresholdRange gives one
        # (without it the config is refused: see test_spec's ratio-of-a-rate-without-range)
        ({"name": "request-error-rate", "thresholdRange": {"max": 1}}, {**SOME_COUNTS, **_zeros(ERROR_RATE)}, TickContext(), Verdict.PASS, Effect.PASS,
         "read as 1 (the canary's bound is thresholdRange's), within max 1.5"),
        ({"name": "request-error-rate", "thresholdRange": {"max": 1}}, {**FEW_COUNTS, **_zeros(ERROR_RATE)}, TickContext(), Verdict.INCONCLUSIVE,
         Effect.HOLD, "not enough requests to tell"),
    ],
    ids=["no-traffic", "no-traffic-warming-up", "canary-without-traffic", "error-rate-no-traffic", "template-no-traffic", "duration-both-served",
         "template-both-served", "error-rate-with-range",
         "error-rate-with-range-few-requests"],
)
def test_a_ratio_of_two_zeros_passes_only_on_evidence(metric: dict[str, Any], answers: dict[Key, Answer], ctx: TickContext, verdict: Verdict,
                                                      effect: Effect, why: str) -> None:
    """0 / 0 says "the same" only when both zeros were measured: a track that answered nothing reads 0 on a counter's
    rate (or a template's ``or vector(0)``) as well as a healthy one does. Before, both at 0 passed on no requests."""
    spec = spec_with(set_path("metricTemplates.x", {"query": "sum(rate(x{pod=~'{{ target }}'}[{{ interval }}])) or vector(0)"}),
                     set_path("analysis.metrics", [{**metric, "compare": {"by": "ratio", "thresholdRange": {"max": 1.5}}}]))
    result, provider = tick(spec, answers, ctx)
    check = result.checks[0]
    assert (check.verdict, check.effect) == (verdict, effect), check.reason
    assert why in check.reason
    assert any(COUNT in q and STABLE in q for q in provider.queries)


def test_a_ratio_of_two_zeros_whose_tracks_cannot_be_counted_fails() -> None:
    result, _ = tick(_compared("ratio", {"max": 1.5}), {(COUNT, CANARY): 10.0, (COUNT, STABLE): ProviderUnreachable("down"), **_zeros(DURATION)})
    check = result.checks[0]
    assert (check.verdict, check.effect) == (Verdict.ERROR, Effect.FAIL)
    assert check.reason == "request-duration: 0 / 0, and the stable's requests could not be counted: down"


def test_two_zeros_with_min_requests_need_that_many_on_each_side() -> None:
    spec = spec_with(set_path("analysis.metrics", [{"name": "request-duration", "compare": {"by": "ratio", "thresholdRange": {"max": 1.5}}}]),
                     update("analysis", minRequests=50))
    answers: dict[Key, Answer] = {("[1m]", COUNT, CANARY): 60.0, (COUNT, STABLE): 30.0, **_zeros(DURATION)}
    result, _ = tick(spec, answers)
    assert result.checks[0].verdict is Verdict.NO_DATA and "(fewer than minRequests 50 on a side)" in result.checks[0].reason


def test_an_undefined_ratio_beyond_the_hold_limit_fails() -> None:
    result, _ = tick(_compared("ratio", {"max": 1.5}), {(DURATION, CANARY): 5.0, (DURATION, STABLE): 0.0}, TickContext(held_too_long=True))
    assert result.checks[0].effect is Effect.FAIL


@pytest.mark.parametrize(
    ("stable", "ctx", "verdict", "effect", "reason"),
    [
        # the reason says what made the effect, as every no-data check's does
        (NoValues("empty"), TickContext(), Verdict.NO_DATA, Effect.FAIL, "request-duration: stable has no data to compare with: empty (onNoData: fail)"),
        (NoValues("empty"), TickContext(warming_up=True), Verdict.NO_DATA, Effect.HOLD,
         "request-duration: stable has no data to compare with: empty (warming up after the shift)"),
        (ProviderUnreachable("down"), TickContext(), Verdict.ERROR, Effect.FAIL, "request-duration: stable could not be evaluated: ProviderUnreachable: down"),
    ],
)
def test_stable_without_a_value(stable: Answer, ctx: TickContext, verdict: Verdict, effect: Effect, reason: str) -> None:
    result, _ = tick(_compared("difference", {"max": 50}), {(DURATION, CANARY): 120.0, (DURATION, STABLE): stable}, ctx)
    check = result.checks[0]
    assert (check.verdict, check.effect, check.reason) == (verdict, effect, reason) and check.stable_value is None


def test_a_threshold_and_a_comparison_both_count_and_the_worst_decides() -> None:
    spec = metrics({"name": "request-duration", "thresholdRange": {"max": 500}, "compare": {"by": "ratio", "thresholdRange": {"max": 1.1}}})
    result, _ = tick(spec, {(DURATION, CANARY): 150.0, (DURATION, STABLE): 100.0})
    check = result.checks[0]
    assert check.verdict is Verdict.FAIL and check.reason == "request-duration 150 within max 500; request-duration / stable 1.5 > max 1.1 (canary 150, stable 100)"


# --- the Mann–Whitney judge ---------------------------------------------------------------------


def _judged(**judge: Any) -> ReleaseSpec:
    return metrics({"name": "request-duration", "judge": judge})


def _shifted(shift: float) -> list[float]:
    return [b + shift + j for b, j in zip(BASE_SAMPLES, JITTER, strict=True)]


@pytest.mark.parametrize(
    ("judge", "shift", "verdict"),
    [({}, 600, Verdict.FAIL), ({}, 0, Verdict.PASS), ({}, -100, Verdict.PASS), ({"direction": "decrease"}, -100, Verdict.FAIL),
     ({"direction": "decrease"}, 600, Verdict.PASS), ({"direction": "either"}, -100, Verdict.FAIL), ({"allowedIncrease": 1.1}, 10, Verdict.PASS)],
)
def test_the_judge_compares_the_samples_of_both_tracks(judge: dict[str, Any], shift: float, verdict: Verdict) -> None:
    result, provider = tick(_judged(**judge), {DURATION: 200.0}, samples={CANARY: _shifted(shift), STABLE: [float(v) for v in BASE_SAMPLES]})
    check = result.checks[0]
    assert check.verdict is verdict and check.effect is (Effect.FAIL if verdict is Verdict.FAIL else Effect.PASS)
    assert check.reason.startswith("request-duration (Mann–Whitney): ")
    assert check.samples == (20, 20) and check.interval_low is not None and check.interval_high is not None
    # no step given: twice the scrape interval (1s here)
    assert [(CANARY in q, seconds, step) for q, seconds, step in provider.ranges] == [(True, 60.0, 2.0), (False, 60.0, 2.0)]
    assert check.stable_query == provider.ranges[1][0]


def test_a_canary_600_ms_slower_fails_with_its_interval() -> None:
    result, _ = tick(_judged(), {DURATION: 800.0}, samples={CANARY: _shifted(600), STABLE: BASE_SAMPLES})
    check = result.checks[0]
    assert "higher than stable: shift +600" in check.reason
    assert check.interval_low == pytest.approx(594, abs=0.5) and check.interval_high == pytest.approx(605, abs=0.5)
    assert result.outcome is Outcome.FAIL


def test_the_judge_samples_over_the_metric_window_at_its_step() -> None:
    spec = spec_with(set_path("analysis.metrics", [{"name": "request-duration", "interval": "5m", "judge": {"step": "10s"}}]), EVERY_SECOND)
    _, provider = tick(spec, {DURATION: 200.0}, samples={CANARY: BASE_SAMPLES, STABLE: BASE_SAMPLES})
    assert [(seconds, step) for _, seconds, step in provider.ranges] == [(300.0, 10.0), (300.0, 10.0)]


@pytest.mark.parametrize(("scrape", "step", "stretch"), [((), 30.0, "30s"), ((set_path("prometheus.scrapeInterval", "20s"),), 40.0, "40s"),
                                                         ((set_path("prometheus.podMonitor", {"interval": "10s"}),), 20.0, "20s")],
                         ids=["default-scrape", "scrape-interval", "pod-monitor"])
def test_a_judge_without_a_step_samples_at_twice_the_scrape_interval(scrape: tuple[Any, ...], step: float, stretch: str) -> None:
    # the default was 5s, which validation refuses under any scrape slower than 2.5s: `judge: {}` never held at 15s
    spec = spec_with(set_path("analysis.metrics", [{"name": "request-duration", "interval": "10m", "judge": {}}]), *scrape)
    _, provider = tick(spec, {DURATION: 200.0}, samples={CANARY: BASE_SAMPLES, STABLE: BASE_SAMPLES})
    assert [(seconds, every) for _, seconds, every in provider.ranges] == [(600.0, step), (600.0, step)]
    assert all(re.findall(r"\[(\w+)\]", query) == [stretch] for query, _, _ in provider.ranges), provider.ranges


@pytest.mark.parametrize(("ctx", "effect", "why"), [(TickContext(), Effect.FAIL, "(onNoData: fail)"),
                                                   (TickContext(warming_up=True), Effect.HOLD, "(warming up after the shift)")])
def test_too_few_samples_are_no_data(ctx: TickContext, effect: Effect, why: str) -> None:
    result, _ = tick(_judged(), {DURATION: 200.0}, ctx, samples={CANARY: [200.0] * 4, STABLE: BASE_SAMPLES})
    check = result.checks[0]
    assert check.verdict is Verdict.NO_DATA and check.effect is effect and "4 canary and 20 stable samples: fewer than 10 on a side" in check.reason
    assert check.reason.endswith(why), check.reason  # what made the effect, as every no-data check says
    assert check.samples == (4, 20) and check.interval_low is None


def test_a_canary_all_in_the_inf_bucket_fails_the_judge_whatever_the_no_data_policy() -> None:
    spec = spec_with(set_path("analysis.metrics", [{"name": "request-duration", "judge": {}, "onNoData": "pass"}]), EVERY_SECOND)
    result, _ = tick(spec, {DURATION: 200.0}, samples={CANARY: [math.inf] * 13, STABLE: [float(v) for v in BASE_SAMPLES]})
    assert result.checks[0].verdict is Verdict.FAIL and result.outcome is Outcome.FAIL, result.reason


def test_a_canary_beyond_every_bucket_half_the_time_fails_the_judge() -> None:
    """Every other canary sample at +Inf (its p99 beyond the largest bucket half the time), none of stable's."""
    canary = [math.inf if i % 2 else float(v) for i, v in enumerate(BASE_SAMPLES)]
    result, _ = tick(_judged(), {DURATION: 200.0}, samples={CANARY: canary, STABLE: [float(v) for v in BASE_SAMPLES]})
    check = result.checks[0]
    assert check.verdict is Verdict.FAIL and result.outcome is Outcome.FAIL, check.reason
    assert "10 of 20 canary and 0 of 20 stable samples are +inf (beyond the histogram's buckets)" in check.reason


@pytest.mark.parametrize(("ctx", "effect"), [(TickContext(), Effect.FAIL), (TickContext(warming_up=True), Effect.HOLD)])
def test_both_tracks_all_beyond_every_bucket_are_no_data_for_the_judge(ctx: TickContext, effect: Effect) -> None:
    result, _ = tick(_judged(), {DURATION: math.inf}, ctx, samples={CANARY: [math.inf] * 12, STABLE: [math.inf] * 12})
    check = result.checks[0]
    assert (check.verdict, check.effect) == (Verdict.NO_DATA, effect), check.reason
    assert "nothing to tell them apart by" in check.reason


@pytest.mark.parametrize(("counts", "verdict", "effect", "why"), [
    (ZERO_COUNTS, Verdict.NO_DATA, Effect.FAIL, "every sample 0 on both tracks on 0 canary and 0 stable requests in 1m (none on a side): not a measurement"),
    (SOME_COUNTS, Verdict.PASS, Effect.PASS, "(on 5000 canary and 45000 stable requests in 1m)"),
], ids=["no-traffic", "both-served"])
def test_a_judge_of_samples_all_zero_on_both_tracks_passes_only_when_both_answered_requests(
        counts: dict[Key, Answer], verdict: Verdict, effect: Effect, why: str) -> None:
    # a counter's rate (errors per second) is 0 on a track that answered nothing as much as on a healthy one:
    # "the samples are identical" passed a canary that no request had reached
    spec = spec_with(set_path("analysis.metrics", [{"name": "errors", "templateRef": {"name": "x"}, "judge": {}}]),
                     set_path("metricTemplates", {"x": {"query": 'sum(rate(errors_total{pod=~"{{ target }}-.*"}[1m]))'}}), EVERY_SECOND)
    result, _ = tick(spec, {**counts, "errors_total": 0.0}, samples={"errors_total": [0.0] * 12})
    check = result.checks[0]
    assert (check.verdict, check.effect) == (verdict, effect), check.reason
    assert why in check.reason, check.reason


ERRORS_PER_SECOND = {"x": {"query": 'sum(rate(errors_total{pod=~"{{ target }}-.*"}[1m]))'}}


@pytest.mark.parametrize("judged", [{"judge": {}}, {"compare": {"by": "ratio", "thresholdRange": {"max": 1.5}}},
                                    {"compare": {"by": "difference", "thresholdRange": {"max": 0.5}}}], ids=["judge", "ratio", "difference"])
@pytest.mark.parametrize(("counts", "verdict", "why"), [
    ({(COUNT, CANARY): 0.0, (COUNT, STABLE): 900.0}, Verdict.NO_DATA, "on 0 canary requests in 1m (none): not a measurement (onNoData: fail)"),
    (SOME_COUNTS, Verdict.PASS, ""),
], ids=["canary-without-traffic", "canary-served"])
def test_a_canary_at_0_beside_a_stable_above_it_is_lower_only_when_it_answered_requests(
        judged: dict[str, Any], counts: dict[Key, Answer], verdict: Verdict, why: str) -> None:
    """A counter's rate (errors per second) is 0 on a canary no request reached: judged and compared with stable's
    2 errors/s it was "lower than stable", and passed a canary that served nothing."""
    spec = spec_with(set_path("analysis.metrics", [{"name": "errors", "templateRef": {"name": "x"}, **judged}]),
                     set_path("metricTemplates", ERRORS_PER_SECOND), EVERY_SECOND)
    answers: dict[Key, Answer] = {**counts, ("errors_total", CANARY): 0.0, ("errors_total", STABLE): 2.0}
    result, _ = tick(spec, answers, samples={("errors_total", CANARY): [0.0] * 12, ("errors_total", STABLE): [2.0 + i / 10 for i in range(12)]})
    check = result.checks[0]
    assert check.verdict is verdict, check.reason
    assert why in check.reason, check.reason


@pytest.mark.parametrize("compared", [{"by": "ratio", "thresholdRange": {"min": 0.5}}, {"by": "difference", "thresholdRange": {"min": -10}}],
                         ids=["ratio", "difference"])
def test_a_canary_at_0_below_the_range_fails_whatever_it_answered(compared: dict[str, Any]) -> None:
    """Where 0 is the bad side (what the canary served, with `or vector(0)`), a canary that answered nothing is too low,
    not "no data": with onNoData: pass it advanced."""
    spec = spec_with(set_path("analysis.metrics", [{"name": "served", "templateRef": {"name": "x"}, "onNoData": "pass", "compare": compared}]),
                     set_path("metricTemplates", {"x": {"query": 'sum(rate(served_total{pod=~"{{ target }}-.*"}[1m])) or vector(0)'}}))
    answers: dict[Key, Answer] = {(COUNT, CANARY): 0.0, (COUNT, STABLE): 900.0, ("served_total", CANARY): 0.0, ("served_total", STABLE): 50.0}
    result, _ = tick(spec, answers)
    assert result.checks[0].verdict is Verdict.FAIL and result.outcome is Outcome.FAIL, result.checks[0].reason


@pytest.mark.parametrize(("canary", "stable"), [(math.inf, math.inf), (math.inf, 200.0), (-math.inf, 200.0)])
def test_a_comparison_that_is_not_a_finite_number_fails(canary: float, stable: float) -> None:
    spec = spec_with(set_path("analysis.metrics", [{"name": "request-duration", "compare": {"thresholdRange": {"min": -50, "max": 50}}}]))
    result, _ = tick(spec, {(DURATION, CANARY): canary, (DURATION, STABLE): stable})
    check = result.checks[0]
    assert check.verdict is Verdict.FAIL and "is not a finite number" in check.reason, check.reason


def test_samples_that_cannot_be_read_fail() -> None:
    result, _ = tick(_judged(), {DURATION: 200.0}, samples={CANARY: ProviderUnreachable("timeout"), STABLE: BASE_SAMPLES})
    assert result.checks[0].verdict is Verdict.ERROR and result.checks[0].reason == "request-duration: samples could not be read: ProviderUnreachable: timeout"


# --- dry runs, inconclusive bands, the score ----------------------------------------------------


@pytest.mark.parametrize(("value", "verdict"), [(900.0, Verdict.FAIL), (NoValues("empty"), Verdict.NO_DATA), (ProviderUnreachable("x"), Verdict.ERROR)])
def test_a_dry_run_metric_is_recorded_and_never_acted_on(value: Answer, verdict: Verdict) -> None:
    result, _ = tick(spec_with(set_path("analysis.metrics.1.dryRun", True)), {TEMPLATE: 0.1, DURATION: value}, TickContext(failed_in_row=2, failed_total=2))
    check = result.checks[1]
    assert check.dry_run and check.verdict is verdict and check.effect is Effect.NONE
    assert check.reason.endswith(" [dry run: not acted on]")
    assert result.outcome is Outcome.ADVANCE and result.reason == "all 1 checks passed at weight 0" and result.failed_total == 2


@pytest.mark.parametrize(
    ("value", "verdict", "outcome"),
    [(450.0, Verdict.PASS, Outcome.ADVANCE), (650.0, Verdict.INCONCLUSIVE, Outcome.INCONCLUSIVE), (800.0, Verdict.INCONCLUSIVE, Outcome.INCONCLUSIVE),
     (801.0, Verdict.FAIL, Outcome.FAIL)],
)
def test_the_inconclusive_band_waits_for_a_person(value: float, verdict: Verdict, outcome: Outcome) -> None:
    spec = spec_with(set_path("analysis.metrics.1.inconclusiveRange", {"max": 800}))
    result, _ = tick(spec, {TEMPLATE: 0.1, DURATION: value}, TickContext(failed_in_row=1, failed_total=1, weight=40))
    assert result.checks[1].verdict is verdict and result.outcome is outcome
    if outcome is Outcome.INCONCLUSIVE:
        assert result.checks[1].effect is Effect.INCONCLUSIVE and (result.failed_in_row, result.failed_total) == (1, 1)
        assert result.reason == f"inconclusive at weight 40: request-duration {value:g} > max 500, inside the inconclusive band max 800"


def test_a_failure_outweighs_an_inconclusive_check_which_outweighs_a_hold() -> None:
    spec = spec_with(set_path("analysis.metrics.1.inconclusiveRange", {"max": 800}), set_path("analysis.metrics.0.onNoData", "hold"))
    held, _ = tick(spec, {TEMPLATE: NoValues("empty"), DURATION: 650.0})
    assert held.outcome is Outcome.INCONCLUSIVE
    failed, _ = tick(spec, {TEMPLATE: 18.0, DURATION: 650.0})
    assert failed.outcome is Outcome.FAIL


SCORED = [
    {"name": "error-rate", "templateRef": {"name": "error-rate"}, "templateVariables": {"le": "0.5"}, "thresholdRange": {"max": 1}, "weight": 3},
    {"name": "request-duration", "thresholdRange": {"max": 500}, "weight": 1},
]


@pytest.mark.parametrize(
    ("weights", "critical", "answers", "score", "outcome"),
    [
        ((3, 1), False, {TEMPLATE: 0.1, DURATION: 100.0}, 100.0, Outcome.ADVANCE),
        ((3, 1), False, {TEMPLATE: 0.1, DURATION: 900.0}, 75.0, Outcome.INCONCLUSIVE),  # marginal: 75 ≤ score < 95
        ((3, 2), False, {TEMPLATE: 0.1, DURATION: 900.0}, 60.0, Outcome.FAIL),  # below marginal
        ((19, 1), False, {TEMPLATE: 0.1, DURATION: 900.0}, 95.0, Outcome.ADVANCE),  # a light metric's failure does not fail the score
        ((19, 1), True, {TEMPLATE: 0.1, DURATION: 900.0}, 0.0, Outcome.FAIL),  # unless it is critical
        ((3, 1), False, {TEMPLATE: 0.1, DURATION: NoValues("empty")}, 75.0, Outcome.INCONCLUSIVE),  # no data under fail policy is a failure
    ],
)
def test_the_score_weighs_the_metrics(weights: tuple[int, int], critical: bool, answers: dict[Key, Answer], score: float, outcome: Outcome) -> None:
    entries = [{**SCORED[0], "weight": weights[0]}, {**SCORED[1], "weight": weights[1], "critical": critical}]
    result, _ = tick(metrics(*entries, score={"pass": 95, "marginal": 75}), answers, TickContext(weight=10))
    assert result.score == score and result.outcome is outcome
    if outcome is Outcome.INCONCLUSIVE:
        assert result.reason == f"score {score:g} is marginal (75 ≤ score < 95) at weight 10: a person decides"
        assert (result.failed_in_row, result.failed_total) == (0, 0)
    if outcome is Outcome.FAIL:
        assert result.reason.startswith("a critical metric failed" if critical else f"score {score:g} below marginal 75")
        assert result.failed_total == 1


def test_a_critical_failure_fails_even_when_no_score_is_too_low() -> None:
    entries = [{**SCORED[0], "weight": 99}, {**SCORED[1], "critical": True}]
    result, _ = tick(metrics(*entries, score={"pass": 50, "marginal": 0}), {TEMPLATE: 0.1, DURATION: 900.0})
    assert result.score == 0.0 and result.outcome is Outcome.FAIL and result.reason.startswith("a critical metric failed: ")
    lenient, _ = tick(metrics(entries[0], SCORED[1], score={"pass": 50, "marginal": 0}), {TEMPLATE: 0.1, DURATION: 900.0})
    assert lenient.outcome is Outcome.ADVANCE and lenient.score == 99.0


def test_a_held_metric_is_not_scored() -> None:
    entries = [SCORED[0], {**SCORED[1], "onNoData": "hold"}]
    result, _ = tick(metrics(*entries, score={}), {TEMPLATE: 0.1, DURATION: NoValues("empty")})
    assert result.score == 100.0 and result.outcome is Outcome.HOLD


def test_no_data_that_passes_by_its_policy_does_not_lift_the_score() -> None:
    """onNoData: pass lets an empty metric pass; it is no measurement, so the score leaves it out (Kayenta's no
    data). Before, 19 weights of empty metrics over 1 failed one scored 95 and the tick passed."""
    entries = [{**SCORED[0], "weight": 19, "onNoData": "pass"}, SCORED[1]]
    result, _ = tick(metrics(*entries, score={}), {TEMPLATE: NoValues("empty"), DURATION: 900.0})
    assert result.score == 0.0 and result.outcome is Outcome.FAIL, result.reason
    assert result.reason.startswith("score 0 below marginal 75")


@pytest.mark.parametrize(("ctx", "outcome"), [(TickContext(weight=20), Outcome.HOLD), (TickContext(weight=20, held_too_long=True), Outcome.FAIL)])
def test_a_score_over_checks_that_all_had_no_data_is_no_pass(ctx: TickContext, outcome: Outcome) -> None:
    """Before, nothing judged scored 100 and the tick advanced."""
    entries = [{**entry, "onNoData": "pass"} for entry in SCORED]
    result, _ = tick(metrics(*entries, score={}), {TEMPLATE: NoValues("empty"), DURATION: NoValues("empty")}, ctx)
    assert result.outcome is outcome and result.score is None, result.reason
    assert "no metric was judged at weight 20 (every check had no data): the score has nothing to weigh" in result.reason


def test_all_no_data_without_a_score_follows_the_policy() -> None:
    entries = [{**entry, "onNoData": "pass"} for entry in SCORED]
    result, _ = tick(metrics(*entries), {TEMPLATE: NoValues("empty"), DURATION: NoValues("empty")})
    assert result.outcome is Outcome.ADVANCE


def test_without_a_score_the_tick_has_none() -> None:
    result, _ = tick(spec_with(), BASE)
    assert result.score is None


# --- failures in a row and in all ---------------------------------------------------------------

FAILING = {TEMPLATE: 18.2, DURATION: 1.0}
PASSING = BASE
HOLDING = {TEMPLATE: NoValues("empty"), DURATION: 1.0}


@pytest.mark.parametrize(
    ("changes", "sequence", "outcomes"),
    [
        # fail/pass/fail/pass: never 3 in a row, but the failureLimit of 2 in all is reached
        ({"threshold": 3, "failureLimit": 2}, [FAILING, PASSING, FAILING, PASSING], [Outcome.FAIL, Outcome.ADVANCE, Outcome.ROLLBACK]),
        # without failureLimit, threshold also bounds the failures in all
        ({"threshold": 3}, [FAILING, PASSING, FAILING, PASSING, FAILING], [Outcome.FAIL, Outcome.ADVANCE, Outcome.FAIL, Outcome.ADVANCE, Outcome.ROLLBACK]),
        ({"threshold": 2, "failureLimit": 10}, [FAILING, PASSING, FAILING, FAILING], [Outcome.FAIL, Outcome.ADVANCE, Outcome.FAIL, Outcome.ROLLBACK]),
        # a hold leaves both counts alone: two failures around it are in a row
        ({"threshold": 2, "failureLimit": 10}, [FAILING, HOLDING, FAILING], [Outcome.FAIL, Outcome.HOLD, Outcome.ROLLBACK]),
        ({"threshold": 5, "failureLimit": 5}, [PASSING, PASSING, PASSING], [Outcome.ADVANCE, Outcome.ADVANCE, Outcome.ADVANCE]),
    ],
    ids=["flapping-failure-limit", "flapping-default-limit", "in-a-row", "hold-between", "passing"],
)
def test_failures_are_counted_in_a_row_and_in_all(changes: dict[str, Any], sequence: list[dict[Key, Answer]], outcomes: list[Outcome]) -> None:
    spec = spec_with(update("analysis", **changes), set_path("analysis.metrics.0.onNoData", "hold"))
    seen: list[Outcome] = []
    ctx = TickContext()
    for answers in sequence:
        result, _ = tick(spec, answers, ctx)
        seen.append(result.outcome)
        if result.outcome is Outcome.ROLLBACK:
            break
        ctx = TickContext(failed_in_row=result.failed_in_row, failed_total=result.failed_total)
    assert seen == outcomes


def test_the_failure_limit_reason_names_the_count_in_all() -> None:
    spec = spec_with(update("analysis", threshold=3, failureLimit=2))
    result, _ = tick(spec, FAILING, TickContext(failed_in_row=0, failed_total=1, weight=30))
    assert result.outcome is Outcome.ROLLBACK and (result.threshold, result.failure_limit) == (3, 2)
    assert result.reason == "error-rate 18.2 > max 1: 2 failed checks in all (failureLimit 2) at weight 30"


def test_an_extra_failure_counts_like_a_failed_metric() -> None:
    result, _ = tick(spec_with(), BASE)
    hook = analysis.extra_failure("webhook:load-test", "rollout webhook load-test failed: exit 1")
    decided = analysis.decide((*result.checks, hook), TickContext(failed_in_row=2), 3, 5)
    assert decided.outcome is Outcome.ROLLBACK and decided.failed == (hook,) and hook.effect is Effect.FAIL


# --- the providers asked --------------------------------------------------------------------------


def test_a_metric_templates_provider_address_is_used() -> None:
    asked: list[str | None] = []
    provider = FakeMetrics(BASE)

    def provider_for(address: str | None) -> FakeMetrics:
        asked.append(address)
        return provider

    analysis.run_tick(spec_with(set_path("metricTemplates.error-rate.provider.address", "http://other:9090")), provider_for)
    assert asked == ["http://other:9090", None]


# --- the preflight --------------------------------------------------------------------------------

REJECTED = 'invalid parameter "query": 1:10: parse error: expected type range vector in call to function "rate", got instant vector'


def _probe(index: int, value: Answer) -> analysis.Probe:
    spec = spec_with()
    metric = spec.analysis.metrics[index]
    return analysis.Probe(index, metric, analysis.render_query(spec, metric)[0], value)


def test_a_rejected_template_query_names_the_template_the_metric_and_prometheus_reason() -> None:
    (problem,) = analysis.preflight_problems([_probe(0, BadQuery(f"Prometheus rejected the query: {REJECTED}"))])
    assert problem.field == "metricTemplates.error-rate.query"
    assert problem.rule == f"Prometheus rejected it as rendered for analysis.metrics[0] (error-rate): {REJECTED}"
    assert problem.value.startswith('sum(rate(x{pod=~"web-canary",ns="prod",le="0.5"}[1m]') and "\n" not in problem.value


def test_a_rejected_builtin_query_names_the_metric() -> None:
    (problem,) = analysis.preflight_problems([_probe(1, BadQuery("Prometheus rejected the query: boom"))])
    assert problem.field == "analysis.metrics[1].name" and problem.rule == "built-in metric request-duration: Prometheus rejected its query: boom"


def test_a_rejected_query_of_a_stack_of_apps_names_the_apps_field() -> None:
    """In a stack of apps the metric is at apps.<name>.analysis: the problem says so, as validation's do."""
    (builtin,) = analysis.preflight_problems([_probe(1, BadQuery("Prometheus rejected the query: boom"))], "apps.web.")
    assert builtin.field == "apps.web.analysis.metrics[1].name"
    (template,) = analysis.preflight_problems([_probe(0, BadQuery("Prometheus rejected the query: boom"))], "apps.web.")
    assert template.field == "metricTemplates.error-rate.query" and "as rendered for apps.web.analysis.metrics[0] (error-rate)" in template.rule


@pytest.mark.parametrize("value", [3.5, NoValues("empty"), MultipleValues("2 series"), ProviderUnreachable("down")], ids=repr)
def test_only_a_rejected_query_is_a_preflight_problem(value: Answer) -> None:
    assert analysis.preflight_problems([_probe(0, value), _probe(1, value)]) == []


def test_preflight_refuses_a_bad_query_and_nothing_else() -> None:
    provider = FakeMetrics({TEMPLATE: BadQuery("Prometheus rejected the query: nope"), DURATION: NoValues("no traffic yet")})
    problems = analysis.preflight(spec_with(), lambda address: provider)
    assert [p.field for p in problems] == ["metricTemplates.error-rate.query"] and len(provider.queries) == 2


def test_preflight_asks_an_unreachable_provider_once() -> None:
    provider = FakeMetrics({"": ProviderUnreachable("connection refused")})
    assert analysis.preflight(spec_with(), lambda address: provider) == []
    assert len(provider.queries) == 1  # the second metric is not sent: no second timeout to wait out


def test_preflight_still_asks_another_provider() -> None:
    down, other = FakeMetrics({"": ProviderUnreachable("down")}), FakeMetrics({"": BadQuery("Prometheus rejected the query: bad")})
    spec = spec_with(set_path("metricTemplates.error-rate.provider.address", "http://other:9090"),
                     set_path("analysis.metrics", [{"name": "request-duration", "thresholdRange": {"max": 500}},
                                                   {"name": "request-duration-p99", "thresholdRange": {"max": 900}},
                                                   {"name": "error-rate", "templateRef": {"name": "error-rate"}, "templateVariables": {"le": "1"}, "thresholdRange": {"max": 1}}]))
    problems = analysis.preflight(spec, lambda address: other if address else down)
    assert len(down.queries) == 1 and len(other.queries) == 1
    assert [p.field for p in problems] == ["metricTemplates.error-rate.query"]


def test_render_query_renders_stable_and_the_pod_label() -> None:
    spec = spec_with(set_path("metricTemplates.error-rate.query", 'x{a="{{ stable }}",b="{{ primary }}",c="{{ podLabel }}",d="{{ target }}",e="{{ variables.le }}"}'),
                     set_path("prometheus.podLabel", "pod"))
    query, address = analysis.render_query(spec, spec.analysis.metrics[0])
    assert query == 'x{a="web-stable",b="web-stable",c="pod",d="web-canary",e="0.5"}' and address is None
    query, _ = analysis.render_query(spec, spec.analysis.metrics[0], target=spec.stable)
    assert 'd="web-stable"' in query


def test_a_webhook_failure_added_to_a_tick_keeps_the_critical_metrics_critical() -> None:
    """The machine re-decides a tick with its rollout webhook's failure added: a critical metric's failure
    must still fail the tick as critical, not be averaged into the score."""
    from canary.core import analysis

    entries = [{**SCORED[0], "weight": 99}, {**SCORED[1], "critical": True}]
    spec = metrics(*entries, score={"pass": 50, "marginal": 0})
    result, _ = tick(spec, {TEMPLATE: 0.1, DURATION: 900.0}, TickContext(weight=10))
    hook = analysis.extra_failure("webhook:load-test", "rollout webhook load-test failed: exit 1")
    again = analysis.decide_for(spec, result.checks + (hook,), TickContext(weight=10))
    assert again.outcome is Outcome.FAIL and again.reason.startswith("a critical metric failed"), again.reason


def test_a_failed_rollout_webhook_fails_a_scored_tick_whatever_the_score() -> None:
    """The README: a failed rollout webhook counts as a failed check of that step. With a score it
    would otherwise weigh 1 against the metrics' weights and be scored away."""
    entries = [{**SCORED[0], "weight": 60}, {**SCORED[1], "weight": 40}]
    spec = metrics(*entries, score={"pass": 95, "marginal": 75})
    result, _ = tick(spec, BASE, TickContext(weight=10))
    assert result.outcome is Outcome.ADVANCE
    hook = analysis.extra_failure("webhook:acceptance", "rollout webhook acceptance failed: exit 1")
    again = analysis.decide_for(spec, result.checks + (hook,), TickContext(weight=10))
    assert again.outcome is Outcome.FAIL and again.failed == (hook,) and again.score == 0.0
    assert again.reason.startswith("rollout webhook acceptance failed: exit 1: failed check 1 of"), again.reason


def test_a_scored_tick_that_passes_with_a_failed_check_says_so() -> None:
    entries = [{**SCORED[0], "weight": 19}, {**SCORED[1], "weight": 1}]
    result, _ = tick(metrics(*entries, score={"pass": 95, "marginal": 75}), {TEMPLATE: 0.1, DURATION: 900.0}, TickContext(weight=10))
    assert result.outcome is Outcome.ADVANCE and result.score == 95.0
    assert result.reason == "score 95 passed at weight 10 with 1 of 2 checks failed: request-duration 900 > max 500"


@pytest.mark.parametrize(("duration", "outcome", "score"), [(550.0, Outcome.INCONCLUSIVE, 50.0), (700.0, Outcome.FAIL, 0.0), (100.0, Outcome.ADVANCE, 100.0)])
def test_a_critical_metric_in_its_inconclusive_band_waits_for_a_person_not_a_failure(duration: float, outcome: Outcome, score: float) -> None:
    """The README: a value in the inconclusive band means a person decides. A critical metric there is
    not a critical failure, and neither does the score pass over it."""
    entries = [{"name": "request-duration", "thresholdRange": {"max": 500}, "inconclusiveRange": {"max": 600}, "critical": True},
               {"name": "request-duration-p99", "thresholdRange": {"max": 5000}}]
    result, _ = tick(metrics(*entries, score={"pass": 50, "marginal": 10}), {"0.95": duration, "0.99": 700.0}, TickContext(weight=10))
    assert (result.outcome, result.score) == (outcome, score), result.reason
    if outcome is Outcome.INCONCLUSIVE:
        assert (result.failed_in_row, result.failed_total) == (0, 0) and "inside the inconclusive band" in result.reason


def test_the_judge_reads_both_tracks_over_the_same_stretch_while_the_evidence_window_grows() -> None:
    """While a step holds, a rate's window grows to the time since the shift: stable's samples must
    be read over the same stretch as the canary's (or a smooth 10m rate is judged against spiky 1m ones),
    and that stretch is the judge's step, whatever the window: samples over 10m would share all but 5s."""
    spec = metrics({"name": "request-error-rate", "thresholdRange": {"max": 5}, "judge": {"step": "5s"}})
    samples = [0.4 + 0.01 * (i % 3) for i in range(13)]
    _, provider = tick(spec, {COUNT: 5000.0, ERROR_RATE: 0.4}, TickContext(evidence_window=600.0), samples={CANARY: samples, STABLE: samples})
    windows = [sorted(set(re.findall(r"\[(\w+)\]", query))) for query, _, _ in provider.ranges]
    assert windows == [["5s"], ["5s"]]


# --- the team's own request count -----------------------------------------------------------------

#: a Prometheus whose apps count their requests in http_server_requests_total, labelled kubernetes_namespace and
#: kubernetes_pod_name (no namespace label, no http_requests_total): the built-in count finds nothing there
OWN_COUNT = ('sum(increase(http_server_requests_total{kubernetes_namespace="{{ namespace }}",{{ podLabel }}=~"{{ target }}-[0-9a-z]+-[0-9a-z]+"}'
             '[{{ interval }}]))')
OWN = "increase(http_server_requests_total"
OWN_SERIES = "http_server_requests_total"
OWN_ERRORS = 'sum(rate(http_server_requests_total{kubernetes_namespace="{{ namespace }}",{{ podLabel }}=~"{{ target }}-.*",code=~"5.."}[{{ interval }}]))'
OWN_ERROR_SHARE = (f"{OWN_ERRORS} / sum(rate(http_server_requests_total{{kubernetes_namespace=\"{{{{ namespace }}}}\",{{{{ podLabel }}}}=~\"{{{{ target }}}}-.*\"}}"
                   "[{{ interval }}])) * 100")
NO_SERIES: dict[Key, Answer] = {COUNT: NoValues("the query returned no series")}
NAMESPACE_SERIES = "count by (__name__) (http_requests_total"
ERRORS = {"name": "errors", "templateRef": {"name": "errors"}, "thresholdRange": {"max": 0.5}}


def _own(*entries: dict[str, Any], count: bool = True, **analysis_changes: Any) -> ReleaseSpec:
    """The team's templates (errors per second, and their share in percent); with ``count``, its request count too."""
    return spec_with(set_path("metricTemplates.errors", {"query": OWN_ERRORS}), set_path("metricTemplates.error-share", {"query": OWN_ERROR_SHARE}),
                     set_path("analysis.metrics", list(entries)), update("analysis", **analysis_changes), EVERY_SECOND,
                     *([set_path("prometheus.requestCount", OWN_COUNT)] if count else []))


def _own_count(target: str, window: str = "1m") -> str:
    return f'sum(increase(http_server_requests_total{{kubernetes_namespace="prod",kubernetes_pod_name=~"{target}-[0-9a-z]+-[0-9a-z]+"}}[{window}]))'


def test_min_requests_count_the_teams_own_requests() -> None:
    """Before, minRequests read http_requests_total whatever the app exported: "the canary answered 0 requests",
    for every metric at every tick, and a healthy canary always rolled back."""
    spec = _own(ERRORS, minRequests=50)
    result, provider = tick(spec, {**NO_SERIES, OWN: 300.0, OWN_SERIES: 0.0})
    assert result.checks[0].effect is Effect.PASS, result.checks[0].reason
    assert _own_count(CANARY) in provider.queries and not any(COUNT in q for q in provider.queries)
    few, _ = tick(spec, {**NO_SERIES, OWN: 30.0, OWN_SERIES: 0.0})
    assert "the canary answered 30 requests in 1m, fewer than minRequests 50" in few.checks[0].reason


@pytest.mark.parametrize(("canary_requests", "verdict"), [(400.0, Verdict.PASS), (0.0, Verdict.NO_DATA)])
def test_a_canary_at_0_compared_with_stable_is_measured_on_the_teams_own_count(canary_requests: float, verdict: Verdict) -> None:
    """Canary 0 errors/s, stable 0.3: before, "on 0 canary requests … not a measurement" rolled the healthiest canary back."""
    spec = _own({"name": "errors", "templateRef": {"name": "errors"}, "compare": {"thresholdRange": {"max": 0.1}}})
    answers: dict[Key, Answer] = {**NO_SERIES, (OWN, CANARY): canary_requests, (OWN, STABLE): 3600.0, (OWN_SERIES, CANARY): 0.0, (OWN_SERIES, STABLE): 0.3}
    result, provider = tick(spec, answers)
    check = result.checks[0]
    assert check.verdict is verdict, check.reason
    assert _own_count(CANARY) in provider.queries
    if verdict is Verdict.NO_DATA:
        assert "canary 0, stable 0.3 on 0 canary requests in 1m (none): not a measurement" in check.reason


@pytest.mark.parametrize("evidence", ["rate", "auto"])
def test_a_share_of_the_teams_requests_is_held_to_its_own_count(evidence: str) -> None:
    """``evidence: rate`` read the canary's count from http_requests_total: no evidence ever, a hold until holdLimit. Under
    ``auto``, a ratio over the count's own counter, selected by the count's labels, is a share of the counted requests."""
    spec = _own({"name": "error-share", "templateRef": {"name": "error-share"}, "thresholdRange": {"max": 1}, "evidence": evidence})
    assert analysis.is_rate(spec, spec.analysis.metrics[0])
    result, provider = tick(spec, {**NO_SERIES, OWN: 10000.0, OWN_SERIES: 0.2})
    check = result.checks[0]
    assert check.effect is Effect.PASS and check.requests == 10000 and "error-share 0.2 on 10000 requests" in check.reason, check.reason
    assert _own_count(CANARY) in provider.queries
    light, _ = tick(spec, {**NO_SERIES, OWN: 20.0, OWN_SERIES: 0.2})
    assert light.checks[0].effect is Effect.HOLD and "not enough requests to tell" in light.checks[0].reason


def test_a_template_is_held_against_the_labels_of_the_teams_own_count() -> None:
    from canary.core.metrics import counters, unlike_the_count

    count = _own_count(CANARY)
    assert counters(count) == {OWN_SERIES: ("kubernetes_namespace", "kubernetes_pod_name")}
    same = ('sum(rate(http_server_requests_total{kubernetes_pod_name=~"web-canary-.*",kubernetes_namespace="prod",code=~"5.."}[1m]))'
            ' / sum(rate(http_server_requests_total{kubernetes_namespace="prod",kubernetes_pod_name=~"web-canary-.*"}[1m]))')
    assert unlike_the_count(same, count) == []
    assert unlike_the_count(same.replace('code=~"5.."', 'code=~"5..",path="/checkout"'), count) == ["path"]
    assert unlike_the_count("sum(rate(http_server_requests_total[1m]))", count) == ["http_server_requests_total without a selector"]
    assert unlike_the_count('sum(rate(http_server_requests_total{kubernetes_pod_name=~"x"}[1m]))', count) == \
        ["http_server_requests_total not selected by kubernetes_namespace and kubernetes_pod_name"]


#: each rule that reads the request count, alone: (metrics, analysis changes)
NEEDS_THE_COUNT: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "minRequests": ([ERRORS], {"minRequests": 50}),
    "compare": ([{"name": "errors", "templateRef": {"name": "errors"}, "compare": {"thresholdRange": {"max": 0.1}}}], {}),
    "judge": ([{"name": "request-duration", "judge": {}}], {}),
    "evidence": ([{"name": "error-share", "templateRef": {"name": "error-share"}, "thresholdRange": {"max": 1}, "evidence": "rate"}], {}),
}
BUILTIN_STABLE_COUNT = 'sum(increase(http_requests_total{namespace="prod",kubernetes_pod_name=~"web-stable-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)?"}[1m]))'


@pytest.mark.parametrize("rule", list(NEEDS_THE_COUNT))
def test_preflight_warns_of_a_built_in_count_that_finds_no_series(rule: str) -> None:
    """The team's Prometheus has no http_requests_total: before, nothing said why every track then read as idle. No
    refusal: a stable whose pods have answered no request yet has no series either (its counter appears with the first)."""
    entries, changes = NEEDS_THE_COUNT[rule]
    provider = FakeMetrics({**NO_SERIES, NAMESPACE_SERIES: NoValues("no series"), "": 0.0})
    warnings: list[str] = []
    assert analysis.preflight(_own(*entries, count=False, **changes), lambda address: provider, warnings=warnings) == []
    (warning,) = warnings
    assert warning.startswith(f"prometheus.requestCount: the built-in request count (http_requests_total by namespace and kubernetes_pod_name), which "
                              f"{entries[0]['name']} ({rule}) read on the stack's Prometheus, found no series at all over stable's pods (web-stable) in 1m"), warning
    assert "no http_requests_total series is labelled namespace='prod'; set prometheus.requestCount to a query" in warning
    assert warning.endswith(f"(sent: {BUILTIN_STABLE_COUNT})")


def test_preflight_names_the_pod_label_when_the_namespace_has_the_built_in_counter() -> None:
    provider = FakeMetrics({**NO_SERIES, NAMESPACE_SERIES: 12.0, "": 0.0})
    warnings: list[str] = []
    assert analysis.preflight(_own(ERRORS, count=False, minRequests=50), lambda address: provider, warnings=warnings) == []
    (warning,) = warnings
    assert warning.startswith("prometheus.podLabel: ") and "though namespace prod has http_requests_total series: set prometheus.podLabel" in warning


def _series_probe(label: str) -> str:
    return f'count by (__name__) (http_requests_total{{{label}="prod"}})'


def test_preflight_names_the_namespace_label_when_the_counter_carries_the_namespace_in_another() -> None:
    """The classic kubernetes_sd relabelling (the one that yields kubernetes_pod_name, podLabel's default) labels the
    namespace kubernetes_namespace: before, the warning said only to write a prometheus.requestCount."""
    provider = FakeMetrics({**NO_SERIES, _series_probe("namespace"): NoValues("no series"), _series_probe("kubernetes_namespace"): 12.0, "": 0.0})
    warnings: list[str] = []
    assert analysis.preflight(_own(ERRORS, count=False, minRequests=50), lambda address: provider, warnings=warnings) == []
    (warning,) = warnings
    assert warning.startswith("prometheus.namespaceLabel: the built-in request count (http_requests_total by namespace and kubernetes_pod_name),"), warning
    assert ("no http_requests_total series is labelled namespace='prod', though some are labelled kubernetes_namespace='prod': "
            "set prometheus.namespaceLabel to kubernetes_namespace") in warning


def test_preflight_names_no_namespace_label_when_the_probe_of_the_configured_one_failed() -> None:
    """A probe Prometheus did not answer (a timeout) is no "no series": before, the configured label's was taken for
    one, and the warning said to set prometheus.namespaceLabel to kubernetes_namespace on the strength of an error."""
    timeout = ProviderUnreachable("Prometheus at http://prometheus:9090 did not answer within 5s (ReadTimeout)")
    provider = FakeMetrics({**NO_SERIES, _series_probe("namespace"): timeout, _series_probe("kubernetes_namespace"): 12.0, "": 0.0})
    warnings: list[str] = []
    assert analysis.preflight(_own(ERRORS, count=False, minRequests=50), lambda address: provider, warnings=warnings) == []
    (warning,) = warnings
    assert warning.startswith("prometheus.requestCount: ") and "set prometheus.namespaceLabel to kubernetes_namespace" not in warning, warning
    assert ("the probe for http_requests_total series labelled namespace='prod' could not run (Prometheus at http://prometheus:9090 "
            "did not answer within 5s (ReadTimeout)), so which label holds the namespace is not known; set prometheus.requestCount") in warning


def test_preflight_says_the_probe_of_another_namespace_label_could_not_run() -> None:
    rejected = BadQuery("Prometheus rejected the query: 1:5: parse error")
    provider = FakeMetrics({**NO_SERIES, _series_probe("namespace"): NoValues("no series"), _series_probe("kubernetes_namespace"): rejected, "": 0.0})
    warnings: list[str] = []
    assert analysis.preflight(_own(ERRORS, count=False, minRequests=50), lambda address: provider, warnings=warnings) == []
    (warning,) = warnings
    assert warning.startswith("prometheus.requestCount: "), warning
    assert ("no http_requests_total series is labelled namespace='prod' (the probe for those labelled kubernetes_namespace='prod' could "
            "not run: Prometheus rejected the query: 1:5: parse error); set prometheus.requestCount") in warning


def test_preflight_probes_the_configured_namespace_label() -> None:
    spec = _own(ERRORS, count=False, minRequests=50)
    assert spec.prometheus is not None
    spec = spec.model_copy(update={"prometheus": spec.prometheus.model_copy(update={"namespace_label": "kubernetes_namespace"})})
    found = FakeMetrics({**NO_SERIES, _series_probe("kubernetes_namespace"): 12.0, "": 0.0})
    warnings: list[str] = []
    assert analysis.preflight(spec, lambda address: found, warnings=warnings) == []
    assert warnings[0].startswith("prometheus.podLabel: the built-in request count (http_requests_total by kubernetes_namespace and kubernetes_pod_name),")
    assert 'http_requests_total{kubernetes_namespace="prod",kubernetes_pod_name=~"web-stable-' in warnings[0]
    none = FakeMetrics({**NO_SERIES, NAMESPACE_SERIES: NoValues("no series"), "": 0.0})
    warnings = []
    assert analysis.preflight(spec, lambda address: none, warnings=warnings) == []
    assert warnings[0].startswith("prometheus.requestCount: ")
    assert "no http_requests_total series is labelled kubernetes_namespace='prod'; set prometheus.requestCount" in warnings[0]
    assert "series carry the namespace in another label than kubernetes_namespace, prometheus.namespaceLabel to it" in warnings[0]
    assert [q for q in none.queries if q.startswith("count by")] == [_series_probe("kubernetes_namespace"), _series_probe("namespace")]


def test_a_release_that_skips_its_analysis_sends_no_count() -> None:
    provider = FakeMetrics({**NO_SERIES, NAMESPACE_SERIES: NoValues("no series"), "": 0.0})
    warnings: list[str] = []
    assert analysis.preflight(_own(ERRORS, count=False, minRequests=50, skipAnalysis=True), lambda address: provider, warnings=warnings) == []
    assert warnings == [] and BUILTIN_STABLE_COUNT not in provider.queries


def test_preflight_takes_a_quiet_stable_for_a_count() -> None:
    """Series, but no request in the window (a quiet hour): 0 is a count."""
    provider = FakeMetrics({COUNT: 0.0, "": 0.0})
    assert analysis.preflight(_own(ERRORS, count=False, minRequests=50), lambda address: provider) == []
    assert BUILTIN_STABLE_COUNT in provider.queries


def test_preflight_leaves_an_unreachable_prometheus_to_the_ticks_and_asks_it_once() -> None:
    provider = FakeMetrics({"": ProviderUnreachable("connection refused")})
    assert analysis.preflight(_own(ERRORS, count=False, minRequests=50), lambda address: provider) == []
    assert len(provider.queries) == 1


@pytest.mark.parametrize("answer", [NoValues("no series"), BadQuery("Prometheus rejected the query: 1:5: parse error")], ids=["no-series", "rejected"])
def test_a_count_on_a_template_s_prometheus_names_only_its_origin(answer: Answer) -> None:
    """Without a stack Prometheus the count is sent to the template's, whose address may carry a token: its origin only.
    A rejected count refuses the release, as a rejected query does; no series is a warning."""
    address = "https://metrics.example.com:9443/tenant/s3cr3t-t0ken/prometheus?key=abc123"
    spec = _own(ERRORS, count=False, minRequests=50)
    spec = spec.model_copy(update={"prometheus": None, "metric_templates": {**spec.metric_templates, "errors": spec.metric_templates["errors"].model_copy(
        update={"provider": spec.metric_templates["errors"].provider.model_copy(update={"address": address})})}})
    asked: list[str | None] = []
    provider = FakeMetrics({**NO_SERIES, NAMESPACE_SERIES: NoValues("no series"), COUNT: answer, "": 0.0})

    def provider_for(at: str | None) -> FakeMetrics:
        asked.append(at)
        return provider

    warnings: list[str] = []
    problems = analysis.preflight(spec, provider_for, warnings=warnings)
    said = [str(p) for p in problems] + warnings
    (text,) = said
    reading = "which errors (minRequests) read on the Prometheus at https://metrics.example.com:9443, "
    if isinstance(answer, BadQuery):
        (problem,) = problems
        assert problem.field == "prometheus.requestCount" and reading + "was rejected as rendered for stable's pods: 1:5: parse error" in problem.rule
    else:
        assert not problems and reading + "found no series at all over stable's pods (web-stable) in 1m" in text, text
    assert "s3cr3t" not in text and "abc123" not in text and set(asked) == {address}
