"""Edges of the judgement path: tracks all beyond the buckets, templates that are fractions or throughputs,
reasons whose numbers must differ from their bounds, and the judge's samples, one per step, not overlapping."""

from __future__ import annotations

import math
from typing import Any

import pytest

from canary.core import analysis, evidence, judge, units
from canary.core import config as stackconfig
from canary.core.analysis import TickContext
from canary.core.judge import Classification
from canary.core.records import Effect, Outcome, Verdict
from canary.core.spec import ReleaseSpec, parse_spec
from tests.helpers import problems, set_path, spec_with, values_with


@pytest.mark.parametrize(("canary", "stable"), [
    ([math.inf] * 13, [math.inf] * 12),
    ([math.inf] * 12, [math.inf] * 13),
    ([math.inf] * 6 + [-math.inf] * 6, [math.inf] * 6 + [-math.inf] * 6),
], ids=["more-on-canary", "more-on-stable", "both-signs"])
def test_both_tracks_all_infinite_are_no_data_whatever_the_counts(canary: list[float], stable: list[float]) -> None:
    """Before, a sample more on one side skipped the no-data guard, and the stand-ins for +Inf all tied: "the samples
    are identical", a pass."""
    result = judge.compare(canary, stable, confidence=0.98, tolerance=0.25, min_samples=10)
    assert result.classification is Classification.NO_DATA, result.reason
    assert "beyond the histogram's buckets): nothing to tell them apart by" in result.reason
    assert "identical" not in result.reason


# --- templates that are fractions, percentages or throughputs --------------------------------------

_PODS = 'namespace="{{ namespace }}",kubernetes_pod_name=~"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)?"'
_ALL = f"sum(rate(http_requests_total{{{_PODS}}}[{{{{ interval }}}}]))"
_OK = f'sum(rate(http_requests_total{{{_PODS},status!~"5.."}}[{{{{ interval }}}}]))'
_ERRORS = f'sum(rate(http_requests_total{{{_PODS},status=~"5.."}}[{{{{ interval }}}}]))'
COUNT = "increase(http_requests_total"


class _Metrics:
    """A provider answering each query by the first key found in it; every query recorded."""

    def __init__(self, answers: dict[str, float], samples: dict[str, list[float]] | None = None) -> None:
        self.answers, self.samples = answers, samples or {}
        self.queries: list[str] = []
        self.ranges: list[tuple[str, float, float]] = []

    def run_query(self, query: str) -> float:
        self.queries.append(query)
        return next(v for k, v in self.answers.items() if k in query)

    def run_range(self, query: str, seconds: float, step: float) -> list[float]:
        self.ranges.append((query, seconds, step))
        return next(v for k, v in self.samples.items() if k in query)

    def is_online(self) -> bool:
        return True


def _template(query: str, **metric: Any) -> ReleaseSpec:
    return spec_with(set_path("metricTemplates", {"t": {"query": query}}),
                     set_path("analysis.metrics", [{"name": "t", "templateRef": {"name": "t"}, **metric}]))


def _tick(spec: ReleaseSpec, answers: dict[str, float], ctx: TickContext | None = None,
          samples: dict[str, list[float]] | None = None) -> tuple[analysis.TickResult, _Metrics]:
    provider = _Metrics(answers, samples)
    return analysis.run_tick(spec, lambda address: provider, ctx or TickContext(weight=10)), provider


@pytest.mark.parametrize(("query", "bounds", "value", "requests"), [
    (f"{_OK} / {_ALL}", {"min": 0.99}, 1.0, 100000),
    (f"{_ERRORS} / {_ALL}", {"max": 0.01}, 0.0, 10000),
], ids=["success-fraction", "error-fraction"])
def test_a_share_written_as_a_fraction_is_judged_as_one(query: str, bounds: dict[str, float], value: float, requests: int) -> None:
    """Read as percent, 1.0 was a 1 % success rate whose bound (0.9496) never reached min 0.99: a healthy canary held,
    then rolled back at holdLimit."""
    spec = _template(query, thresholdRange=bounds)
    assert analysis.is_rate(spec, spec.analysis.metrics[0]) and analysis.per_request(spec, spec.analysis.metrics[0]) == 1
    result, _ = _tick(spec, {COUNT: float(requests), "http_requests_total": value})
    check = result.checks[0]
    assert result.outcome is Outcome.ADVANCE and check.verdict is Verdict.PASS, check.reason
    assert check.requests == requests and check.bound is not None and 0 <= check.bound <= 1
    assert f"on {requests} requests" in check.reason


def test_a_throughput_template_is_no_share_of_requests() -> None:
    spec = _template(_ALL, thresholdRange={"min": 1})
    assert not analysis.is_rate(spec, spec.analysis.metrics[0])
    result, provider = _tick(spec, {"http_requests_total": 42.0})
    assert result.outcome is Outcome.ADVANCE and result.checks[0].reason == "t 42 within min 1"
    assert not [q for q in provider.queries if COUNT in q]  # no evidence asked for


@pytest.mark.parametrize(("query", "bounds"), [
    (f"{_ERRORS} / {_ALL} * 100", {"max": 1}),
    (f"100 - ({_OK} / {_ALL} * 100)", {"max": 1}),
    (f"{_ERRORS} / {_ALL}", {"max": 5}),
], ids=["times-100", "100-minus", "bound-above-1"])
def test_a_share_in_percent_is_judged_in_percent(query: str, bounds: dict[str, float]) -> None:
    spec = _template(query, thresholdRange=bounds)
    assert analysis.is_rate(spec, spec.analysis.metrics[0]) and analysis.per_request(spec, spec.analysis.metrics[0]) == 0.01
    result, _ = _tick(spec, {COUNT: 100000.0, "http_requests_total": 0.5})
    assert result.checks[0].verdict is Verdict.PASS and result.checks[0].bound is not None and 0.5 < result.checks[0].bound < 1


@pytest.mark.parametrize("name", ["request-success-rate", "request-error-rate"])
def test_the_built_in_rates_are_still_percentages(name: str) -> None:
    success = name == "request-success-rate"
    spec = spec_with(set_path("analysis.metrics", [{"name": name, "thresholdRange": {"min": 99} if success else {"max": 1}}]))
    metric = spec.analysis.metrics[0]
    assert analysis.is_rate(spec, metric) and analysis.per_request(spec, metric) == 0.01
    result, _ = _tick(spec, {COUNT: 100000.0, "http_requests_total": 99.5 if success else 0.5})
    check = result.checks[0]
    assert check.verdict is Verdict.PASS, check.reason
    wilson = evidence.wilson(0.995 * 100000 if success else 0.005 * 100000, 100000, 0.95)  # the share's bound, in percent
    assert check.bound == pytest.approx(100 * (wilson.low if success else wilson.high))


# --- reasons whose numbers differ from their bounds ----------------------------------------------


@pytest.mark.parametrize(("bounds", "value", "says"), [
    ({"max": 500}, 500.04, "request-duration 500.04 > max 500"),
    ({"min": 0.3}, 0.29999, "request-duration 0.29999 < min 0.3"),
    ({"max": 500}, 120.0, "request-duration 120 within max 500"),
    ({"max": 499.99}, 499.985, "request-duration 499.985 within max 499.99"),
], ids=["just-above", "just-below", "far-below", "rounds-up-past-the-bound"])
def test_a_value_is_shown_with_the_digits_that_tell_it_from_its_bound(bounds: dict[str, float], value: float, says: str) -> None:
    """Four digits made a p95 of 500.04 "500 > max 500": a reason that contradicts itself."""
    spec = spec_with(set_path("analysis.metrics", [{"name": "request-duration", "thresholdRange": bounds}]))
    result, _ = _tick(spec, {"histogram_quantile": value})
    assert result.checks[0].reason == says


def test_a_share_s_bound_is_shown_with_the_digits_that_tell_it_from_the_limit() -> None:
    spec = spec_with(set_path("analysis.metrics", [{"name": "request-error-rate", "thresholdRange": {"max": 1}}]))
    # 0.94825 % of 100,000 requests: its 95 % bound is 1.0000042 %, "1" at four digits
    result, _ = _tick(spec, {COUNT: 100000.0, "http_requests_total": 0.94825})
    reason = result.checks[0].reason
    assert result.checks[0].effect is Effect.HOLD, reason
    assert "error-rate 0.9483 on 100000 requests, 95% bound 1.000004 beyond max 1: not enough requests to tell" in reason, reason


# --- the judge's samples: one per step, each over its own step -------------------------------------


def test_the_judge_s_samples_are_rates_over_one_step_each_not_over_the_window() -> None:
    """Rendered over the whole window (1m) and read every 5s, consecutive samples shared 55 of their 60 seconds:
    the rank test, which takes them as independent, failed about a fifth of the ticks of two identical tracks."""
    spec = spec_with(set_path("prometheus.scrapeInterval", "1s"), set_path("analysis.metrics", [
        {"name": "request-duration", "thresholdRange": {"max": 500}, "compare": {"thresholdRange": {"max": 50}}, "judge": {"step": "5s"}}]))
    samples = [float(200 + i % 7) for i in range(13)]
    result, provider = _tick(spec, {"histogram_quantile": 200.0}, samples={"histogram_quantile": samples})
    check = result.checks[0]
    assert [(seconds, step) for _, seconds, step in provider.ranges] == [(60.0, 5.0), (60.0, 5.0)]
    judged = [query for query, _, _ in provider.ranges]
    assert all("[5s]" in q and "[1m]" not in q for q in judged), judged
    assert "web-canary" in judged[0] and "web-stable" in judged[1]
    # the value held to thresholdRange and compared with stable's is still over the window, and so is its stable query
    assert "[1m]" in check.query and check.stable_query is not None and "[1m]" in check.stable_query
    assert check.verdict is Verdict.PASS, check.reason


def test_a_judge_step_under_two_scrapes_is_refused_naming_the_fields() -> None:
    found = problems(values_with(set_path("prometheus.scrapeInterval", "20s"), set_path("analysis.interval", "5m"),
                                 set_path("analysis.metrics.1.judge", {"step": "30s"})))
    assert [p.field for p in found] == ["analysis.metrics[1].judge.step"], found
    assert found[0].value == "30s"
    assert found[0].rule.startswith("is shorter than twice the scrape interval, 20s (prometheus.scrapeInterval): each of the judge's samples "
                                    "is a rate over one step, and a rate over fewer than two scrapes is empty; use a step of at least 40s"), found[0].rule
    parse_spec(values_with(set_path("prometheus.scrapeInterval", "20s"), set_path("analysis.interval", "10m"),
                           set_path("analysis.metrics.1.judge", {"step": "40s"})))  # following it is valid


@pytest.mark.parametrize(("changes", "step"), [((), "30s"), ((set_path("prometheus.scrapeInterval", "20s"),), "40s"),
                                               ((set_path("prometheus.podMonitor", {"interval": "10s"}),), "20s"),
                                               ((set_path("prometheus.podMonitor", {"interval": "10s"}), set_path("analysis.metrics.1.judge.step", "1m")), "1m")],
                         ids=["default-scrape", "scrape-interval", "pod-monitor", "own-step"])
def test_a_judge_without_a_step_is_valid_at_twice_the_scrape_interval(changes: tuple[Any, ...], step: str) -> None:
    # the default step was 5s, shorter than two of the default 15s scrapes: `judge: {}` was refused on every window
    spec = parse_spec(values_with(set_path("analysis.interval", "10m"), set_path("analysis.metrics.1.judge", {}), *changes))
    judged = spec.analysis.metrics[1].judge
    assert judged is not None and units.format_duration(spec.judge_step(judged)) == step


def test_a_default_step_judge_on_a_short_window_is_refused_saying_which_interval_to_set() -> None:
    found = problems(values_with(set_path("analysis.metrics.1.judge", {})))  # 1m at 30s: 3 samples, not widened
    assert [(p.field, p.value) for p in found] == [("analysis.metrics[1].judge.step", "unset: 30s, twice the scrape interval")], found
    assert "fewer than judge.minSamples 10" in found[0].rule and "use analysis.interval (the judge's window) of at least 4m30s" in found[0].rule
    parse_spec(values_with(set_path("analysis.interval", "4m30s"), set_path("analysis.metrics.1.judge", {})))  # following it is valid


def test_a_default_step_judge_is_left_to_up_when_prometheus_is_a_secret_as_a_whole() -> None:
    # its step is twice a scrape interval the secret may hold (1s: 2s steps fill a minute); up decrypts and checks it
    values = values_with(set_path("analysis.metrics.1.judge", {}))
    on_file = {**{f"canary:{k}": v for k, v in values.items()}, "canary:prometheus": stackconfig.ENCRYPTED}
    assert stackconfig.check_file_values(on_file, "Pulumi.whole.yaml")[1] == ("prometheus",)
    assert [p.field for p in problems(values)] == ["analysis.metrics[1].judge.step"]  # decrypted, at the default scrape
    parse_spec(values_with(set_path("analysis.metrics.1.judge", {}), set_path("prometheus.scrapeInterval", "1s")))
