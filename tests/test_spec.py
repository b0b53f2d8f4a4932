"""The release spec: valid stacks load; every invalid input is refused naming field, value and rule."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from canary import stackconfig
from canary.errors import InvalidSpec
from canary.spec import NoDataPolicy, WebhookType, parse_spec
from tests.conftest import ROOT


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "lab"])
def test_example_stacks_are_valid(stack: str) -> None:
    spec = stackconfig.load_stack_file(stackconfig.stack_file(ROOT, stack))
    assert spec.app.name == "web"
    assert spec.analysis.metrics


def test_base_values_parse(values: dict[str, Any]) -> None:
    spec = parse_spec(values)
    assert spec.analysis.interval == timedelta(minutes=1)
    assert spec.analysis.metrics[0].on_no_data is NoDataPolicy.FAIL
    assert spec.analysis.webhooks[0].type is WebhookType.ROLLOUT
    assert spec.target == "web-canary"


def test_spec_is_frozen(values: dict[str, Any]) -> None:
    spec = parse_spec(values)
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        spec.canary_weight = 10  # type: ignore[misc]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting a dotted path (list indices as numbers) to value."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _chain(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        for m in mutations:
            m(data)

    return mutate


def _del(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]

    return mutate


# (case id, mutation, field named in the error, fragment of the rule)
INVALID = [
    ("weight-above-100", _chain(_set("canaryImage", "web:2.0.0"), _set("canaryWeight", 101)), "canaryWeight", "less than or equal to 100"),
    ("weight-negative", _set("canaryWeight", -1), "canaryWeight", "greater than or equal to 0"),
    ("weight-without-canary-image", _set("canaryWeight", 20), "canaryWeight", "must be 0 while no canaryImage"),
    ("step-weight-zero", _set("analysis.stepWeight", 0), "analysis.stepWeight", "greater than or equal to 1"),
    ("max-weight-above-100", _set("analysis.maxWeight", 150), "analysis.maxWeight", "less than or equal to 100"),
    ("step-above-max", _chain(_set("analysis.stepWeight", 60), _set("analysis.maxWeight", 50)), "analysis", "must not exceed maxWeight"),
    ("step-weights-not-increasing", _chain(_del("analysis.stepWeight"), _del("analysis.maxWeight"), _set("analysis.stepWeights", [10, 5, 20])), "analysis.stepWeights", "strictly increasing"),
    ("step-weights-and-step-weight", _set("analysis.stepWeights", [5, 10]), "analysis", "either stepWeights or stepWeight"),
    ("step-weights-out-of-range", _chain(_del("analysis.stepWeight"), _del("analysis.maxWeight"), _set("analysis.stepWeights", [10, 120])), "analysis.stepWeights[1]", "less than or equal to 100"),
    ("no-steps", _chain(_del("analysis.stepWeight"), _del("analysis.maxWeight")), "analysis", "must set stepWeight"),
    ("interval-unparseable", _set("analysis.interval", "abc"), "analysis.interval", "must be a duration"),
    ("interval-too-short", _set("analysis.interval", "100ms"), "analysis.interval", "at least 1s"),
    ("metric-interval-too-short", _set("analysis.metrics.1.interval", "500ms"), "analysis.metrics[1].interval", "at least 1s"),
    ("threshold-zero", _set("analysis.threshold", 0), "analysis.threshold", "greater than or equal to 1"),
    ("threshold-min-above-max", _set("analysis.metrics.1.thresholdRange", {"min": 10, "max": 1}), "analysis.metrics[1].thresholdRange", "min (10) must not be greater than max (1)"),
    ("threshold-empty", _set("analysis.metrics.1.thresholdRange", {}), "analysis.metrics[1].thresholdRange", "must set min, max or both"),
    ("unknown-template-ref", _set("analysis.metrics.0.templateRef", {"name": "latency"}), "analysis.metrics[0].templateRef.name", "must name a metricTemplates entry"),
    ("template-unknown-placeholder", _set("metricTemplates.error-rate.query", "sum(x{pod='{{ pod }}'})"), "metricTemplates.error-rate.query", "unknown placeholder {{ pod }}"),
    ("template-variable-undefined", _set("analysis.metrics.0.templateVariables", {}), "analysis.metrics[0].templateVariables", "must define le"),
    ("template-unbalanced", _set("metricTemplates.error-rate.query", "sum(rate(x[1m])"), "metricTemplates.error-rate.query", "unclosed '('"),
    ("template-unclosed-placeholder", _set("metricTemplates.error-rate.query", "sum(x{pod=~'{{ target'})"), "metricTemplates.error-rate.query", "unclosed '{{'"),
    ("unknown-builtin", _set("analysis.metrics.1.name", "latency"), "analysis.metrics[1].name", "names no built-in metric"),
    ("bad-image", _set("stableImage", "Web App:1.0"), "stableImage", "must be an image reference"),
    ("untagged-image", _set("stableImage", "registry.example.com/web"), "stableImage", "must name a tag or a digest"),
    ("bad-canary-image", _set("canaryImage", "web:"), "canaryImage", "must be an image reference"),
    ("app-name-not-dns", _set("app.name", "Web_App"), "app.name", "DNS-1123 label"),
    ("app-name-too-long", _set("app.name", "a" * 57), "app.name", "at most 56 characters"),
    ("namespace-not-dns", _set("app.namespace", "-prod"), "app.namespace", "DNS-1123 label"),
    ("hostname-invalid", _set("gateway.hostnames", ["Web..example"]), "gateway.hostnames[0]", "DNS-1123 hostname"),
    ("no-parent-refs", _set("gateway.parentRefs", []), "gateway.parentRefs", "at least 1 item"),
    ("duplicate-metric", _set("analysis.metrics.1", {"name": "error-rate", "templateRef": {"name": "error-rate"}, "thresholdRange": {"max": 1}, "templateVariables": {"le": "1"}}), "analysis.metrics[1].name", "must be unique"),
    ("webhook-no-target", _set("analysis.webhooks.0", {"name": "x", "type": "rollout"}), "analysis.webhooks[0]", "exactly one of url"),
    ("webhook-both-targets", _set("analysis.webhooks.0", {"name": "x", "type": "rollout", "url": "http://a/", "cmd": "true"}), "analysis.webhooks[0]", "exactly one of url"),
    ("webhook-negative-timeout", _set("analysis.webhooks.0.timeout", "-5s"), "analysis.webhooks[0].timeout", "greater than zero"),
    ("webhook-unknown-type", _set("analysis.webhooks.0.type", "pre-promotion"), "analysis.webhooks[0].type", "'confirm-rollout'"),
    ("webhook-bad-url", _set("analysis.webhooks.0", {"name": "x", "type": "event", "url": "ftp://x"}), "analysis.webhooks[0].url", "http:// or https:// URL"),
    ("duplicate-webhook", _set("analysis.webhooks", [{"name": "a", "type": "event", "cmd": "true"}, {"name": "a", "type": "rollout", "cmd": "true"}]), "analysis.webhooks[1].name", "must be unique"),
    ("unknown-field", _set("analysis.stepweight", 10), "analysis.stepweight", "is not a known field"),
    ("wrong-type", _set("app.replicas", "two"), "app.replicas", "valid integer"),
    ("port-out-of-range", _set("app.port", 70000), "app.port", "less than or equal to 65535"),
    ("bad-quantity", _set("app.resources", {"requests": {"cpu": "lots"}}), "app.resources.requests.cpu", "Kubernetes quantity"),
    ("prometheus-bad-address", _set("prometheus.address", "prometheus:9090"), "prometheus.address", "http:// or https:// URL"),
    ("prometheus-missing-for-builtin", _del("prometheus"), "prometheus.address", "built-in metrics query"),
    ("no-data-policy-unknown", _set("analysis.metrics.1.onNoData", "ignore"), "analysis.metrics[1].onNoData", "'fail', 'hold' or 'pass'"),
    ("missing-app", _del("app"), "app", "is required"),
    ("min-requests-zero", _set("analysis.minRequests", 0), "analysis.minRequests", "greater than or equal to 1"),
    ("env-name-invalid", _set("app.env", {"1BAD": "x"}), "app.env", "variable name '1BAD'"),
]


@pytest.mark.parametrize(("mutation", "field", "rule"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_input_is_refused_with_field_value_and_rule(values: dict[str, Any], mutation: Callable[[dict[str, Any]], None], field: str, rule: str) -> None:
    mutation(values)
    with pytest.raises(InvalidSpec) as info:
        parse_spec(values)
    fields = {p.field for p in info.value.problems}
    assert field in fields, f"{field} not among {fields}: {info.value}"
    problem = next(p for p in info.value.problems if p.field == field)
    assert rule in problem.rule, str(info.value)
    assert problem.value  # the offending value is always shown
    assert field in str(info.value) and rule in str(info.value)


def test_at_least_25_distinct_invalid_cases() -> None:
    assert len({case[0] for case in INVALID}) >= 25


def test_all_problems_are_reported_at_once(values: dict[str, Any]) -> None:
    values["analysis"]["threshold"] = 0
    values["app"]["port"] = 0
    with pytest.raises(InvalidSpec) as info:
        parse_spec(values)
    assert {"analysis.threshold", "app.port"} <= {p.field for p in info.value.problems}


def test_secret_values_never_appear_in_errors(values: dict[str, Any]) -> None:
    values["prometheus"]["token"] = 12345  # wrong type, but a secret all the same
    values["prometheus"]["headers"] = {"X-Scope-OrgID": "s3cr3t-tenant", "bad header": "s3cr3t-2"}
    with pytest.raises(InvalidSpec) as info:
        parse_spec(values)
    assert "s3cr3t" not in str(info.value)
    assert "12345" not in str(info.value)


def test_plaintext_token_in_stack_file_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text(
        (ROOT / "stacks" / "Pulumi.dev.yaml").read_text().replace(
            "address: http://prometheus.monitoring:9090", "address: http://prometheus.monitoring:9090\n    token: hunter2"
        )
    )
    with pytest.raises(InvalidSpec) as info:
        stackconfig.load_stack_file(path)
    assert "prometheus.token" in str(info.value) and "must be a Pulumi secret" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_encrypted_token_in_stack_file_is_accepted(tmp_path: Any) -> None:
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text(
        (ROOT / "stacks" / "Pulumi.dev.yaml").read_text().replace(
            "address: http://prometheus.monitoring:9090", "address: http://prometheus.monitoring:9090\n    token:\n      secure: v1:abc:def"
        )
    )
    spec = stackconfig.load_stack_file(path)
    assert spec.prometheus is not None and spec.prometheus.token is not None


def test_the_same_spec_loads_from_a_file_and_from_an_automation_config_map() -> None:
    """The Automation API returns objects as JSON strings wrapped in ConfigValue."""
    import json

    from pulumi.automation import ConfigValue

    from_file = stackconfig.load_stack_file(stackconfig.stack_file(ROOT, "prod"))
    raw = stackconfig.read_stack_file(stackconfig.stack_file(ROOT, "prod"))
    config_map = {
        k: ConfigValue(value=v if isinstance(v, str) else json.dumps(v), secret=False) for k, v in raw.items()
    }
    config_map["kubernetes:context"] = ConfigValue(value="prod-cluster")
    assert stackconfig.from_config(config_map) == from_file


def test_stack_config_round_trips(values: dict[str, Any]) -> None:
    spec = parse_spec(values)
    again = stackconfig.from_config(stackconfig.to_config(spec))
    assert again == spec


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("config: [1, 2", "must be valid YAML"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("config: 3\n", "must be a mapping"),
        ("confi:\n  canary:app: {}\n", "is not a stack file key"),
    ],
)
def test_bad_stack_files(tmp_path: Any, text: str, rule: str) -> None:
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(text)
    with pytest.raises(InvalidSpec) as info:
        stackconfig.load_stack_file(path)
    assert rule in str(info.value)


def test_missing_stack_file(tmp_path: Any) -> None:
    with pytest.raises(InvalidSpec, match="does not exist"):
        stackconfig.load_stack_file(tmp_path / "Pulumi.none.yaml")
