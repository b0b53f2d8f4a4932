"""Analysis ticks with an in-memory provider: every metric evaluated, verdicts, failures in a row."""

from __future__ import annotations

from typing import Any

import pytest

from canary import analysis
from canary.analysis import Effect, Outcome, Verdict
from canary.errors import BadQuery, MetricError, MultipleValues, NoValues, ProviderUnreachable
from canary.spec import parse_spec
from tests.conftest import base_values


class FakeProvider:
    """Answers by the first key found in the query, else ``default`` (none: the query is unexpected); records every query."""

    def __init__(self, answers: dict[str, float | MetricError], default: float | None = None) -> None:
        self.answers = answers
        self.default = default
        self.queries: list[str] = []

    def run_query(self, query: str) -> float:
        self.queries.append(query)
        for key, value in self.answers.items():
            if key in query:
                if isinstance(value, MetricError):
                    raise value
                return value
        if self.default is None:
            raise AssertionError(f"unexpected query {query}")
        return self.default

    def is_online(self) -> bool:
        return True


def spec(**changes: Any) -> Any:
    values = base_values()
    values["analysis"].update(changes)
    return parse_spec(values)


def tick(answers: dict[str, float | MetricError], failed_in_row: int = 0, **changes: Any) -> tuple[analysis.TickResult, FakeProvider]:
    provider = FakeProvider(answers)
    return analysis.run_tick(spec(**changes), lambda address: provider, failed_in_row, weight=20), provider


def test_every_metric_is_evaluated_even_after_a_failure() -> None:
    result, provider = tick({"sum(rate(x": 18.2, "histogram_quantile": 120.0})
    assert [c.metric for c in result.checks] == ["error-rate", "request-duration"]
    assert len(provider.queries) == 2
    assert result.checks[0].verdict is Verdict.FAIL and result.checks[0].reason == "error-rate 18.2 > max 1"
    assert result.checks[1].verdict is Verdict.PASS
    assert result.outcome is Outcome.FAIL and result.failed_in_row == 1


def test_query_is_recorded_as_sent() -> None:
    result, provider = tick({"sum(rate(x": 0.1, "histogram_quantile": 120.0})
    assert result.checks[0].query == provider.queries[0]
    assert 'pod=~"web-canary"' in result.checks[0].query and "[1m]" in result.checks[0].query and 'le="0.5"' in result.checks[0].query
    assert 'kubernetes_pod_name=~"web-canary-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)?"' in result.checks[1].query
    assert 'namespace="prod"' in result.checks[1].query


def test_all_pass_advances_and_resets_the_count() -> None:
    result, _ = tick({"sum(rate(x": 0.1, "histogram_quantile": 120.0}, failed_in_row=2)
    assert result.outcome is Outcome.ADVANCE and result.failed_in_row == 0


def test_threshold_failures_in_a_row_roll_back_on_that_tick() -> None:
    result, _ = tick({"sum(rate(x": 18.2, "histogram_quantile": 120.0}, failed_in_row=2)
    assert result.outcome is Outcome.ROLLBACK and result.failed_in_row == 3
    assert result.reason == "error-rate 18.2 > max 1 for 3 checks in a row at weight 20"


@pytest.mark.parametrize("error", [ProviderUnreachable("down"), BadQuery("parse error"), MultipleValues("2 series")])
def test_errors_are_failed_checks_never_passes(error: MetricError) -> None:
    result, _ = tick({"sum(rate(x": error, "histogram_quantile": error})
    assert all(c.verdict is Verdict.ERROR and c.effect is Effect.FAIL for c in result.checks)
    assert result.outcome is Outcome.FAIL


@pytest.mark.parametrize(
    ("policy", "effect", "outcome"),
    [("fail", Effect.FAIL, Outcome.FAIL), ("hold", Effect.HOLD, Outcome.HOLD), ("pass", Effect.PASS, Outcome.ADVANCE)],
)
def test_no_data_follows_the_metric_policy(policy: str, effect: Effect, outcome: Outcome) -> None:
    values = base_values()
    values["analysis"]["metrics"][1]["onNoData"] = policy
    provider = FakeProvider({"sum(rate(x": 0.0, "histogram_quantile": NoValues("empty")})
    result = analysis.run_tick(parse_spec(values), lambda a: provider, 1)
    assert result.checks[1].verdict is Verdict.NO_DATA and result.checks[1].effect is effect
    assert result.outcome is outcome
    if outcome is Outcome.HOLD:
        assert result.failed_in_row == 1  # a hold neither fails nor resets


def test_nan_is_no_data() -> None:
    result, _ = tick({"sum(rate(x": float("nan"), "histogram_quantile": 1.0})
    assert result.checks[0].verdict is Verdict.NO_DATA and result.checks[0].effect is Effect.FAIL


def test_min_requests_turns_low_traffic_into_no_data() -> None:
    result, provider = tick({"increase(http_requests_total": 3.0, "sum(rate(x": 0.0, "histogram_quantile": 1.0}, minRequests=20)
    assert all(c.verdict is Verdict.NO_DATA for c in result.checks)
    assert "3 requests" in result.checks[0].reason and "minRequests 20" in result.checks[0].reason
    assert len(provider.queries) == 1  # the metrics are not queried on too little traffic
    assert result.outcome is Outcome.FAIL


def test_min_requests_met_evaluates_metrics() -> None:
    result, _ = tick({"increase(http_requests_total": 300.0, "sum(rate(x": 0.0, "histogram_quantile": 1.0}, minRequests=20)
    assert result.outcome is Outcome.ADVANCE


@pytest.mark.parametrize(
    ("value", "rng", "verdict"),
    [(5.0, {"max": 5}, Verdict.PASS), (5.01, {"max": 5}, Verdict.FAIL), (99.0, {"min": 99}, Verdict.PASS), (98.9, {"min": 99}, Verdict.FAIL), (50, {"min": 10, "max": 60}, Verdict.PASS)],
)
def test_judge_bounds(value: float, rng: dict[str, float], verdict: Verdict) -> None:
    from canary.spec import ThresholdRange

    assert analysis.judge("m", value, ThresholdRange.model_validate(rng))[0] is verdict


def test_metric_template_provider_address_is_used() -> None:
    values = base_values()
    values["metricTemplates"]["error-rate"]["provider"]["address"] = "http://other:9090"
    asked: list[str | None] = []
    provider = FakeProvider({"sum(rate(x": 0.0, "histogram_quantile": 1.0})

    def provider_for(address: str | None) -> FakeProvider:
        asked.append(address)
        return provider

    analysis.run_tick(parse_spec(values), provider_for, 0)
    assert asked == ["http://other:9090", None]
