"""Bad input is refused before anything is applied, with the field and the rule, and never a traceback.

The unit side of issue 5's bad-input cases (the lab side is tests/lab/test_x_bad_input_lab.py):
the PromQL preflight of a release with the release's in-memory ports, and the
product defects the lab cases found — Flagger manifests of the wrong shape, a
secret shown next to a missing field, a broken stack file, a stack that does
not exist, Prometheus's reason cut at its first quote.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from canary import analysis, flagger
from canary.errors import BadQuery, InvalidSpec, MetricError, MultipleValues, NoValues, ProviderUnreachable, StackNotFound
from canary.spec import parse_spec
from tests.conftest import FIXTURES, base_values
from tests.test_analysis import FakeProvider
from tests.test_release_unit import NEW, Metrics, make

REJECTED = 'invalid parameter "query": 1:10: parse error: expected type range vector in call to function "rate", got instant vector'


# --- the preflight, pure and through the provider port -------------------------------------------


def _probe(index: int, value: float | MetricError) -> analysis.Probe:
    spec = parse_spec(base_values())
    metric = spec.analysis.metrics[index]
    return analysis.Probe(index, metric, analysis.render_query(spec, metric)[0], value)


def test_a_rejected_template_query_names_the_template_the_metric_and_prometheus_reason() -> None:
    (problem,) = analysis.preflight_problems([_probe(0, BadQuery(f"Prometheus rejected the query: {REJECTED}"))])
    assert problem.field == "metricTemplates.error-rate.query"
    assert problem.rule == f"Prometheus rejected it as rendered for analysis.metrics[0] (error-rate): {REJECTED}"
    assert problem.value.startswith('sum(rate(x{pod=~"web-canary",ns="prod",le="0.5"}[1m]') and "\n" not in problem.value


def test_a_rejected_builtin_query_names_the_metric() -> None:
    (problem,) = analysis.preflight_problems([_probe(1, BadQuery("Prometheus rejected the query: boom"))])
    assert problem.field == "analysis.metrics[1].name" and "built-in metric request-duration" in problem.rule and "boom" in problem.rule


@pytest.mark.parametrize("value", [3.5, NoValues("empty"), MultipleValues("2 series"), ProviderUnreachable("down")], ids=repr)
def test_only_a_rejected_query_is_a_preflight_problem(value: float | MetricError) -> None:
    assert analysis.preflight_problems([_probe(0, value), _probe(1, value)]) == []


def test_preflight_asks_an_unreachable_provider_once() -> None:
    provider = FakeProvider({"": ProviderUnreachable("connection refused")}, default=1.0)
    assert analysis.preflight(parse_spec(base_values()), lambda address: provider) == []
    assert len(provider.queries) == 1  # the second metric is not sent: no second timeout to wait out


# --- the preflight in a release ------------------------------------------------------------------


def test_a_query_prometheus_rejects_is_refused_before_anything_is_applied(tmp_path: Path) -> None:
    release, stack, cluster, events = make(tmp_path, Metrics(0.0))
    release.provider_for = lambda address: FakeProvider({"x{": BadQuery(f"Prometheus rejected the query: {REJECTED}")}, default=1.0)
    with pytest.raises(InvalidSpec) as info:
        release.start(NEW)
    assert "metricTemplates.error-rate.query: Prometheus rejected it" in str(info.value) and "got instant vector" in str(info.value)
    assert stack.ups == [] and "canaryImage" not in stack.values and cluster.weights_seen == []
    journal = release.journal
    assert journal.load_state() is None and journal.records() == [] and journal.holder() is None
    assert not list((journal.dir / "snapshots").iterdir()) and events == []
    release.provider_for = lambda address: Metrics(0.0)  # fixed: the next release is not blocked by the refused one
    assert release.start(NEW).exit_code == 0


@pytest.mark.parametrize("value", [NoValues("the canary has no traffic yet"), MultipleValues("2 series"), ProviderUnreachable("down")], ids=repr)
def test_a_query_without_a_value_yet_does_not_stop_the_release(tmp_path: Path, value: MetricError) -> None:
    release, stack, _, _ = make(tmp_path, Metrics(value))
    result = release.start(NEW)
    assert stack.ups and result.exit_code == 1  # it ran, and the checks failed at the ticks, where they belong


# --- the spec never shows a secret next to a problem ---------------------------------------------


def test_a_missing_field_does_not_show_its_parent_mapping_and_so_no_secret() -> None:
    values = base_values()
    values["prometheus"] = {"token": "tok-5e5e5e5e"}
    with pytest.raises(InvalidSpec) as info:
        parse_spec(values)
    assert "prometheus.address: is required (got nothing)" in str(info.value) and "tok-5e5e5e5e" not in str(info.value)


def test_a_mapping_in_a_problem_shows_its_keys_only() -> None:
    values = base_values()
    values["analysis"].update(stepWeight=60, maxWeight=50)
    with pytest.raises(InvalidSpec, match=r"analysis: stepWeight \(60\) must not exceed maxWeight \(50\) \(got a mapping of interval, threshold"):
        parse_spec(values)


# --- the stack adapter and the CLI ---------------------------------------------------------------


def test_a_stack_file_that_is_not_yaml_is_invalid_input_naming_the_line(tmp_path: Path) -> None:
    from canary.stack import Stack

    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "Pulumi.dev.yaml").write_text("config:\n  canary:app: [unclosed\n")

    class Broken:
        def get_all_config(self) -> dict[str, Any]:
            raise RuntimeError("stderr: error: invalid YAML file: yaml: line 1: did not find expected ',' or ']'")

    stack = object.__new__(Stack)
    stack.project_dir, stack.name, stack._secrets, stack._stack = tmp_path, "dev", (), Broken()  # type: ignore[assignment]
    with pytest.raises(InvalidSpec, match=r"must be valid YAML: .* at line 3, column 1"):
        stack.config()


@pytest.mark.parametrize("command", ["release", "resume"])
def test_a_stack_that_does_not_exist_exits_2_naming_it(command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from canary import api, cli

    def missing(*args: Any, **kwargs: Any) -> None:
        raise StackNotFound("stack nosuch: no such stack in the Pulumi backend")

    monkeypatch.setattr(api, command, missing)
    monkeypatch.setattr(sys, "argv", ["canary", command, "nosuch", *(["--image", "web:1"] if command == "release" else [])])
    with pytest.raises(SystemExit) as info:
        cli.run()
    assert info.value.code == 2 and "stack nosuch: no such stack" in capsys.readouterr().err


def test_prometheus_reason_is_read_whole_not_cut_at_its_first_quote() -> None:
    from canary.prometheus import _rejection

    body = b'{"status":"error","errorType":"bad_data","error":"invalid parameter \\"query\\": 1:10: parse error: expected type range vector in call to function \\"rate\\", got instant vector"}'
    assert _rejection(f"HTTP Status Code 400 ({body!r})") == REJECTED
    assert _rejection("HTTP Status Code 400 (garbled)") == "HTTP Status Code 400 (garbled)"


# --- Flagger manifests of the wrong shape ----------------------------------------------------------


def _canary() -> dict[str, Any]:
    return yaml.safe_load((FIXTURES / "flagger-canary.yaml").read_text())  # type: ignore[no-any-return]


def _template() -> dict[str, Any]:
    return yaml.safe_load((FIXTURES / "flagger-metric-template.yaml").read_text())  # type: ignore[no-any-return]


def _set(path: str, value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is None:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("spec", []), "spec: must be a mapping, not a list"),
        (_set("metadata", "web"), "metadata: must be a mapping, not a string"),
        (_set("spec.targetRef", None), "spec.targetRef: is required"),
        (_set("spec.targetRef", "web"), "spec.targetRef: must be a mapping, not a string"),
        (_set("spec.targetRef.name", None), "spec.targetRef.name: is required"),
        (_set("spec.analysis", "fast"), "spec.analysis: must be a mapping, not a string"),
        (_set("spec.analysis.metrics", "error-rate"), "spec.analysis.metrics: must be a list of mappings, not a string"),
        (_set("spec.analysis.metrics.0", "error-rate"), "spec.analysis.metrics[0]: must be a mapping, not a string"),
        (_set("spec.analysis.metrics.0.templateRef", "error-rate"), "spec.analysis.metrics[0].templateRef: must be a mapping"),
        (_set("spec.analysis.webhooks.0.metadata", "cmd"), "spec.analysis.webhooks[0].metadata: must be a mapping, not a string"),
        (_set("spec.service.gatewayRefs", "public"), "spec.service.gatewayRefs: must be a list of mappings"),
        (_set("spec.service.hosts", "web.example.com"), "spec.service.hosts: must be a list of host names"),
        (_set("spec.analysis.treshold", 3), "spec.analysis.treshold: is not a field of Flagger's Canary spec.analysis (a typo?)"),
        (_set("spec.analysis.interval", "5 parsecs"), "spec.analysis.interval: must be a duration"),
        (_set("spec.analysis.stepWeight", 60), "spec.analysis: stepWeight (60) must not exceed maxWeight (50)"),
        (_set("spec.service.targetPort", 0), "spec.service.targetPort: Input should be greater than or equal to 1"),
        (_set("spec.analysis.metrics.0.templateRef.name", "latency"), "spec.analysis.metrics[0].templateRef.name: must name a MetricTemplate given"),
    ],
)
def test_a_canary_of_the_wrong_shape_is_refused_naming_the_manifest_field(change: Any, message: str) -> None:
    doc = _canary()
    change(doc)
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([doc, _template()])
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("spec.provider", "datadog"), "MetricTemplate error-rate: spec.provider: must be a mapping, not a string"),
        (_set("metadata.name", None), "metadata.name: is required"),
        (_set("spec.query", "sum(rate(x[1m]"), "MetricTemplate error-rate: spec.query: is not valid PromQL: unclosed '('"),
    ],
)
def test_a_metric_template_of_the_wrong_shape_is_refused_naming_the_field(change: Any, message: str) -> None:
    doc = _template()
    change(doc)
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([_canary(), doc])
    assert message in str(info.value)


def test_flagger_fields_canary_does_not_carry_over_are_still_notes() -> None:
    doc = _canary()
    doc["spec"]["analysis"].update(iterations=10, stepWeightPromotion=20, sessionAffinity={"cookieName": "x"})
    notes = "\n".join(flagger.convert([doc, _template()]).notes)
    for field in ("iterations", "stepWeightPromotion", "sessionAffinity"):
        assert f"spec.analysis.{field}: not supported by canary; ignored" in notes
