"""The pure core: weight schedule, template rendering, durations, routing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from canary import routing, schedule, templates, units
from canary.spec import Analysis, parse_spec


@pytest.mark.parametrize(
    ("analysis", "expected"),
    [
        ({"stepWeight": 10, "maxWeight": 50}, [10, 20, 30, 40, 50]),
        ({"stepWeight": 10}, [10, 20, 30, 40, 50]),
        ({"stepWeight": 30, "maxWeight": 50}, [30, 50]),
        ({"stepWeight": 25, "maxWeight": 100}, [25, 50, 75, 100]),
        ({"stepWeight": 50, "maxWeight": 50}, [50]),
        ({"stepWeight": 1, "maxWeight": 3}, [1, 2, 3]),
        ({"stepWeights": [1, 5, 10, 25, 50]}, [1, 5, 10, 25, 50]),
        ({"stepWeights": [100]}, [100]),
    ],
)
def test_weight_schedule(analysis: dict[str, Any], expected: list[int]) -> None:
    parsed = Analysis.model_validate(analysis)
    assert schedule.weights(parsed) == expected
    assert schedule.next_weight(parsed, 0) == expected[0]
    assert schedule.next_weight(parsed, expected[-1]) is None


def test_next_weight_walks_the_schedule() -> None:
    parsed = Analysis.model_validate({"stepWeight": 10, "maxWeight": 50})
    seen, weight = [], 0
    while (nxt := schedule.next_weight(parsed, weight)) is not None:
        seen.append(nxt)
        weight = nxt
    assert seen == [10, 20, 30, 40, 50]


@pytest.mark.parametrize(
    ("text", "seconds", "formatted"),
    [("1m", 60, "1m"), ("30s", 30, "30s"), ("1m30s", 90, "1m30s"), ("2h", 7200, "2h"), ("500ms", 0.5, "500ms"), (5, 5, "5s")],
)
def test_durations(text: Any, seconds: float, formatted: str) -> None:
    parsed = units.parse_duration(text)
    assert parsed == timedelta(seconds=seconds)
    assert units.format_duration(parsed) == formatted


@pytest.mark.parametrize("text", ["abc", "", "1x", "m", "1.5m", "-1s", True])
def test_bad_durations(text: Any) -> None:
    with pytest.raises(ValueError):
        units.parse_duration(text)


@pytest.mark.parametrize("image", ["demo:v1", "web:1.0.0", "registry.example.com/shop/web:1.8.0", "localhost:5000/web:2", "web@sha256:" + "a" * 64, "ghcr.io/a/b/c:v1-rc.1"])
def test_good_images(image: str) -> None:
    assert units.check_image(image) == image


@pytest.mark.parametrize("image", ["web", "Web:1", "web:", "web:1 0", "registry.example.com/web", ":1.0", "web@sha256:abc"])
def test_bad_images(image: str) -> None:
    with pytest.raises(ValueError):
        units.check_image(image)


def test_template_placeholders_and_render() -> None:
    query = 'sum(rate(x{pod=~"{{ target }}-.*",namespace="{{namespace}}",q="{{ variables.q }}"}[{{ interval }}]))'
    found = templates.placeholders(query)
    assert found.builtins == {"target", "namespace", "interval"}
    assert found.variables == {"q"}
    rendered = templates.render(query, target="web-canary", namespace="prod", interval="1m", variables={"q": "0.9"})
    assert rendered == 'sum(rate(x{pod=~"web-canary-.*",namespace="prod",q="0.9"}[1m]))'


def test_render_refuses_a_missing_variable() -> None:
    with pytest.raises(KeyError, match="'q' has no value"):
        templates.render("x{q='{{ variables.q }}'}", target="t", namespace="n", interval="1m", variables={})


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("{{ pod }}", "unknown placeholder"),
        ("{{ variables. }}", "unknown placeholder"),
        ("sum(x", "unclosed '('"),
        ("sum(x]", "unbalanced ']'"),
        ('x{a="b}', "unterminated string"),
        ("x {{ target", "unclosed '{{'"),
        ("   ", "non-empty"),
    ],
)
def test_bad_templates(query: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        templates.placeholders(query)
    assert message in str(info.value)


def _spec(weight: int = 0) -> Any:
    from tests.conftest import base_values

    values = base_values()
    if weight:
        values["canaryImage"] = "registry.example.com/shop/web:2.0.0"
        values["canaryWeight"] = weight
    return parse_spec(values)


@pytest.mark.parametrize("weight", [0, 10, 50, 100])
def test_route_spec_weights(weight: int) -> None:
    route = routing.route_spec(_spec(weight), weight)
    backends = route["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [("web-stable", 100 - weight), ("web-canary", weight)]
    assert route["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "gateway"}]
    assert route["hostnames"] == ["web.example.com"]


def _route_obj(generation: int, observed: int, status: str = "True", weights: tuple[int, int] = (90, 10)) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"rules": [{"backendRefs": [{"name": "web-stable", "weight": weights[0]}, {"name": "web-canary", "weight": weights[1]}]}]},
        "status": {"parents": [{"parentRef": {"name": "public"}, "conditions": [{"type": "Accepted", "status": status, "observedGeneration": observed, "reason": "Accepted" if status == "True" else "NotAllowedByListeners"}]}]},
    }


def test_read_route_accepted() -> None:
    state = routing.read_route(_route_obj(3, 3), _spec())
    assert state.accepted and state.weights == (90, 10)


def test_read_route_stale_generation_is_not_accepted() -> None:
    state = routing.read_route(_route_obj(4, 3), _spec())
    assert not state.accepted and "generation 4" in state.reason


def test_read_route_rejected() -> None:
    state = routing.read_route(_route_obj(2, 2, status="False"), _spec())
    assert not state.accepted and "NotAllowedByListeners" in state.reason


def test_read_route_without_status() -> None:
    state = routing.read_route({"metadata": {"generation": 1}, "spec": {}}, _spec())
    assert not state.accepted and "has not reported" in state.reason
