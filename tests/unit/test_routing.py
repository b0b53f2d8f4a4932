"""Routing (canary.core.routing): the HTTPRoute a step declares, and reading back whether the gateway
took it, with the status shapes that Gateway API implementations actually write."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from canary.core import routing
from canary.core.routing import AT_REST, Affinity, Match, RouteShape

GROUP = "gateway.networking.k8s.io"
PUBLIC = {"name": "public", "namespace": "gateway", "sectionName": "https"}
PREFIX = {"path": {"type": "PathPrefix", "value": "/"}}
AFFINITY = Affinity("canary-affinity", "r1.2", 86400)
INSIDERS = Match(headers=(("x-canary", "Exact", "insider"), ("user-agent", "RegularExpression", ".*Firefox.*")), query_params=(("beta", "Exact", "1"),))


def _spec(shape: RouteShape, refs: list[dict[str, Any]] | None = None, hostnames: tuple[str, ...] = ("web.example.com",)) -> dict[str, Any]:
    return routing.route_spec("web", refs if refs is not None else [PUBLIC], hostnames, 80, shape)


def _backend(name: str, weight: int, **extra: Any) -> dict[str, Any]:
    return {"group": "", "kind": "Service", "name": name, "port": 80, "weight": weight, **extra}


def _set_cookie(value: str) -> dict[str, Any]:
    return {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "Set-Cookie", "value": value}]}}


# --- the route a step declares ------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0, 1, 10, 50, 99, 100])
def test_weights_share_the_default_rule(weight: int) -> None:
    spec = _spec(RouteShape(weight=weight))
    assert spec == {
        "parentRefs": [{"group": GROUP, "kind": "Gateway", "name": "public", "namespace": "gateway", "sectionName": "https"}],
        "hostnames": ["web.example.com"],
        "rules": [{"matches": [PREFIX], "backendRefs": [_backend("web-stable", 100 - weight), _backend("web-canary", weight)]}],
    }


def test_parent_refs_carry_only_what_is_set_and_hostnames_are_optional() -> None:
    spec = _spec(AT_REST, refs=[{"name": "a"}, {"name": "b", "namespace": "infra", "port": 443}], hostnames=())
    assert spec["parentRefs"] == [{"group": GROUP, "kind": "Gateway", "name": "a"}, {"group": GROUP, "kind": "Gateway", "name": "b", "namespace": "infra", "port": 443}]
    assert "hostnames" not in spec


def test_ab_matches_are_a_rule_before_the_default_one() -> None:
    rules = _spec(RouteShape(matches=(INSIDERS, Match(query_params=(("canary", "RegularExpression", "^(yes|1)$"),)))))["rules"]
    assert len(rules) == 2
    assert rules[0] == {
        "matches": [
            {**PREFIX,
             "headers": [{"type": "RegularExpression", "name": "user-agent", "value": ".*Firefox.*"}, {"type": "Exact", "name": "x-canary", "value": "insider"}],
             "queryParams": [{"type": "Exact", "name": "beta", "value": "1"}]},
            {**PREFIX, "queryParams": [{"type": "RegularExpression", "name": "canary", "value": "^(yes|1)$"}]},
        ],
        "backendRefs": [_backend("web-stable", 0), _backend("web-canary", 100)],
    }
    assert rules[1] == {"matches": [PREFIX], "backendRefs": [_backend("web-stable", 100), _backend("web-canary", 0)]}


def test_match_entries_are_sorted_whatever_order_they_come_in() -> None:
    a = _spec(RouteShape(matches=(Match(headers=(("b", "Exact", "2"), ("a", "Exact", "1"))),)))
    b = _spec(RouteShape(matches=(Match(headers=(("a", "Exact", "1"), ("b", "Exact", "2"))),)))
    assert a == b and [h["name"] for h in a["rules"][0]["matches"][0]["headers"]] == ["a", "b"]


@pytest.mark.parametrize(("percent", "mirror"), [(None, {}), (30, {"percent": 30}), (100, {}), (1, {"percent": 1})])
def test_mirroring_is_a_request_mirror_filter_on_the_default_rule(percent: int | None, mirror: dict[str, Any]) -> None:
    (rule,) = _spec(RouteShape(mirror=True, mirror_percent=percent))["rules"]
    assert rule["filters"] == [{"type": "RequestMirror", "requestMirror": {"backendRef": {"group": "", "kind": "Service", "name": "web-canary", "port": 80}, **mirror}}]
    assert rule["backendRefs"] == [_backend("web-stable", 100), _backend("web-canary", 0)]


def test_a_weighted_step_keeps_its_weights_and_mirrors_what_stays_on_stable() -> None:
    (rule,) = _spec(RouteShape(weight=10, mirror=True, mirror_percent=30))["rules"]
    assert rule["filters"][0]["requestMirror"] == {"backendRef": {"group": "", "kind": "Service", "name": "web-canary", "port": 80}, "percent": 30}
    assert rule["backendRefs"] == [_backend("web-stable", 90), _backend("web-canary", 10)]


def test_blue_green_with_testers_mirrors_the_default_rule_only() -> None:
    """The testers' match rule goes to the canary whole: mirroring it too would send the canary each request twice."""
    matched, default = _spec(RouteShape(matches=(INSIDERS,), mirror=True, mirror_percent=50))["rules"]
    assert "filters" not in matched and matched["backendRefs"] == [_backend("web-stable", 0), _backend("web-canary", 100)]
    assert [f["type"] for f in default["filters"]] == ["RequestMirror"] and default["filters"][0]["requestMirror"]["percent"] == 50


def test_session_affinity_adds_a_cookie_rule_first_and_sets_the_cookie_on_the_canary() -> None:
    rules = _spec(RouteShape(weight=10, affinity=AFFINITY))["rules"]
    cookie_rule, default = rules
    (header,) = cookie_rule["matches"][0]["headers"]
    assert header["type"] == "RegularExpression" and header["name"] == "Cookie"
    assert cookie_rule["backendRefs"] == [_backend("web-stable", 0), _backend("web-canary", 100)]
    assert default["backendRefs"] == [
        _backend("web-stable", 90),
        _backend("web-canary", 10, filters=[_set_cookie("canary-affinity=r1.2; Max-Age=86400; Path=/")]),
    ]
    assert "filters" not in default  # the cookie is set on the canary's backend only


@pytest.mark.parametrize(
    ("cookie_header", "matched"),
    [
        ("canary-affinity=r1.2", True),
        ("session=abc; canary-affinity=r1.2", True),
        ("canary-affinity=r1.2; session=abc", True),
        ("a=1;canary-affinity=r1.2;b=2", True),
        ("xcanary-affinity=r1.2", False),
        ("canary-affinity=r1.23", False),
        ("canary-affinity=r1x2", False),  # the value's dot is literal
        ("other=canary-affinity=r1.2x", False),
        ("", False),
    ],
)
def test_the_affinity_cookie_regex_is_anchored_on_cookie_separators(cookie_header: str, matched: bool) -> None:
    # the same answer whether the gateway matches part of the value (Traefik) or the whole of it (Envoy:
    # an unanchored pattern matched a sticky client only when the canary's was its one cookie)
    pattern = _spec(RouteShape(weight=10, affinity=AFFINITY))["rules"][0]["matches"][0]["headers"][0]["value"]
    assert bool(re.search(pattern, cookie_header)) is matched
    assert bool(re.fullmatch(pattern, cookie_header)) is matched


def test_affinity_and_matches_keep_the_cookie_rule_first() -> None:
    rules = _spec(RouteShape(matches=(INSIDERS,), affinity=AFFINITY))["rules"]
    assert [r["matches"][0].get("headers", [{}])[0].get("name") for r in rules] == ["Cookie", "user-agent", None]


def test_an_ended_release_expires_the_cookie_on_stable() -> None:
    (rule,) = _spec(RouteShape(expire_cookie="canary-affinity"))["rules"]
    assert rule["backendRefs"] == [_backend("web-stable", 100, filters=[_set_cookie("canary-affinity=; Max-Age=0; Path=/")]), _backend("web-canary", 0)]


# --- the shape ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        AT_REST,
        RouteShape(weight=35),
        RouteShape(matches=(INSIDERS,)),
        RouteShape(mirror=True),
        RouteShape(mirror=True, mirror_percent=25),
        RouteShape(weight=20, affinity=AFFINITY),
        RouteShape(expire_cookie="canary-affinity"),
        RouteShape(weight=5, matches=(INSIDERS, Match(headers=(("x", "Exact", "1"),))), mirror=True, mirror_percent=10, affinity=AFFINITY, expire_cookie="old"),
    ],
)
def test_route_shape_json_round_trip(shape: RouteShape) -> None:
    data = shape.to_json(values=True)  # as a release config holds it, for the program
    assert RouteShape.from_json(data) == shape
    assert RouteShape.from_json(json.loads(json.dumps(data))) == shape
    # as records hold it: the match values left out, made whole again from the spec's matches
    assert RouteShape.from_json(shape.to_json()) == shape.recorded
    assert RouteShape.from_json(shape.to_json()).with_matches(shape.matches) == (shape, "")


def test_route_shape_json_is_compact() -> None:
    assert AT_REST.to_json() == {"weight": 0}
    assert RouteShape(mirror=True, mirror_percent=25, affinity=AFFINITY).to_json() == {
        "weight": 0, "mirror": True, "mirrorPercent": 25, "affinity": {"name": "canary-affinity", "value": "r1.2", "maxAge": 86400}}
    assert RouteShape.from_json(None) == RouteShape.from_json({}) == AT_REST


@pytest.mark.parametrize("weight", [-1, 101])
def test_a_weight_outside_0_100_is_refused(weight: int) -> None:
    with pytest.raises(ValueError, match="within 0..100"):
        RouteShape(weight=weight)


@pytest.mark.parametrize(
    ("shape", "at_rest", "described"),
    [
        (AT_REST, True, "weight 0"),
        (RouteShape(expire_cookie="c"), True, "weight 0"),
        (RouteShape(weight=10), False, "weight 10"),
        (RouteShape(matches=(INSIDERS,)), False, "weight 0, 1 match rule(s) to the canary"),
        (RouteShape(mirror=True), False, "weight 0, mirroring 100% to the canary"),
        (RouteShape(mirror=True, mirror_percent=20), False, "weight 0, mirroring 20% to the canary"),
        (RouteShape(weight=10, affinity=AFFINITY), False, "weight 10, session affinity cookie canary-affinity"),
    ],
)
def test_at_rest_and_describe(shape: RouteShape, at_rest: bool, described: str) -> None:
    assert shape.at_rest is at_rest and shape.describe() == described


# --- reading the route back ---------------------------------------------------------------------

ENVOY = "gateway.envoyproxy.io/gatewayclass-controller"
ISTIO = "istio.io/gateway-controller"
NGF = "gateway.nginx.org/nginx-gateway-controller"
CILIUM = "io.cilium/gateway-controller"
TRAEFIK = "traefik.io/gateway-controller"
TIME = "2026-12-02T10:15:00Z"


def _condition(kind: str, status: str, reason: str, message: str = "", generation: int | None = 3) -> dict[str, Any]:
    condition: dict[str, Any] = {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": TIME}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def _accepted(generation: int | None = 3) -> list[dict[str, Any]]:
    return [_condition("Accepted", "True", "Accepted", "Route is accepted", generation),
            _condition("ResolvedRefs", "True", "ResolvedRefs", "Resolved all the Object references for the Route", generation)]


WEIGHT_20 = RouteShape(weight=20)


def _route(parents: list[dict[str, Any]], shape: RouteShape = WEIGHT_20, generation: int = 3, namespace: str = "prod",
           refs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": namespace, "generation": generation, "resourceVersion": "81723"},
        "spec": _spec(shape, refs),
        "status": {"parents": parents},
    }


def _read(obj: dict[str, Any], refs: list[dict[str, Any]] | None = None, controllers: dict[str, str] | None = None) -> routing.RouteState:
    return routing.read_route(obj, "web", routing.parent_refs(refs if refs is not None else [PUBLIC]), controllers)


def _entry(controller: str, conditions: list[dict[str, Any]], **ref: Any) -> dict[str, Any]:
    return {"parentRef": ref or {"group": GROUP, "kind": "Gateway", "name": "public", "namespace": "gateway", "sectionName": "https"},
            "controllerName": controller, "conditions": conditions}


# Each implementation's status for a route accepted at generation 3: (the route's parentRef config, the status entry).
IMPLEMENTATIONS = {
    "envoy-gateway": ([PUBLIC], _entry(ENVOY, _accepted())),
    # Istio writes the parentRef as the route gave it (no group and kind) and fills the namespace in
    "istio": ([{"name": "public"}], _entry(ISTIO, _accepted(), name="public", namespace="prod")),
    # NGINX Gateway Fabric names the listener it attached to and leaves the port out
    "nginx-gateway-fabric": ([{"name": "public", "namespace": "gateway", "port": 443}],
                             _entry(NGF, _accepted(), group=GROUP, kind="Gateway", name="public", namespace="gateway", sectionName="https")),
    "traefik": ([PUBLIC], _entry(TRAEFIK, _accepted())),
}


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_an_accepted_route_reads_accepted_with_each_implementation(implementation: str) -> None:
    refs, entry = IMPLEMENTATIONS[implementation]
    state = _read(_route([entry], refs=refs), refs)
    assert state.accepted and not state.refused and state.reason == "accepted" and state.notes == ()
    assert state.weights == (80, 20) and state.generation == 3


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_each_implementations_entry_is_stale_for_a_newer_generation(implementation: str) -> None:
    refs, entry = IMPLEMENTATIONS[implementation]
    state = _read(_route([entry], refs=refs, generation=4), refs)
    assert not state.accepted and not state.refused
    assert state.reason == "gateway public has not observed generation 4 yet (at 3)"


def test_cilium_reports_no_observed_generation_which_is_accepted_with_a_note() -> None:
    state = _read(_route([_entry(CILIUM, _accepted(generation=None))], generation=7))
    assert state.accepted and state.notes == ("gateway public reports no observedGeneration: its Accepted condition is taken as current",)


def test_an_entry_of_another_controller_for_the_same_parent_is_ignored_when_the_controller_is_known() -> None:
    other = _entry("example.com/legacy-controller", [_condition("Accepted", "False", "NotAllowedByListeners", "no listener allows the route")])
    obj = _route([other, _entry(ENVOY, _accepted())])
    assert _read(obj, controllers={"public": ENVOY}).accepted
    unknown = _read(obj)  # without the GatewayClass's controller, the first entry for the parentRef counts
    assert not unknown.accepted and unknown.refused and "NotAllowedByListeners" in unknown.reason


def test_only_another_controllers_entry_means_the_gateway_has_not_reported() -> None:
    state = _read(_route([_entry("example.com/legacy-controller", _accepted())]), controllers={"public": ENVOY})
    assert not state.accepted and not state.refused and state.reason == "gateway public has not reported on the route"


def test_resolved_refs_false_is_a_refusal_with_its_reason() -> None:
    conditions = [_condition("Accepted", "True", "Accepted"), _condition("ResolvedRefs", "False", "BackendNotFound", "Service prod/web-canary not found")]
    state = _read(_route([_entry(ENVOY, conditions)]))
    assert not state.accepted and state.refused
    assert state.reason == "gateway public cannot resolve the route's backends: BackendNotFound: Service prod/web-canary not found"


def test_a_route_the_gateway_serves_only_in_part_is_a_refusal_though_accepted() -> None:
    # the spec's "drop rule": Accepted stays True at the current generation while a rule (an A/B match,
    # the affinity cookie's) is not served; read as accepted, the step was journaled live
    dropped = _condition("PartiallyInvalid", "True", "UnsupportedValue", "Dropped Rule 0: invalid regex")
    state = _read(_route([_entry(ENVOY, [_condition("Accepted", "True", "Accepted"), dropped])]))
    assert not state.accepted and state.refused
    assert state.reason == "gateway public serves only part of the route (PartiallyInvalid): UnsupportedValue: Dropped Rule 0: invalid regex"
    stale = _condition("PartiallyInvalid", "True", "UnsupportedValue", "Dropped Rule 0", generation=2)
    assert _read(_route([_entry(ENVOY, [_condition("Accepted", "True", "Accepted"), stale])])).accepted  # about an older generation
    cleared = _condition("PartiallyInvalid", "False", "Valid")
    assert _read(_route([_entry(ENVOY, [_condition("Accepted", "True", "Accepted"), cleared])])).accepted


def test_a_stale_resolved_refs_false_is_not_a_refusal() -> None:
    conditions = [_condition("Accepted", "True", "Accepted", generation=2), _condition("ResolvedRefs", "False", "BackendNotFound", generation=2)]
    state = _read(_route([_entry(ENVOY, conditions)]))
    assert not state.accepted and not state.refused and "has not observed generation 3" in state.reason


@pytest.mark.parametrize(
    ("status", "reason", "generation", "refused"),
    [
        ("False", "NoMatchingParent", 3, True),
        ("False", "NotAllowedByListeners", 3, True),
        ("False", "NoMatchingListenerHostname", 3, True),
        ("False", "UnsupportedValue", 3, True),
        ("False", "NoMatchingParent", 2, False),  # about an older generation: wait for the current one
        ("False", "NoMatchingParent", None, True),
        ("Unknown", "Pending", 3, False),
        ("False", "Pending", 3, False),
    ],
)
def test_accepted_not_true(status: str, reason: str, generation: int | None, refused: bool) -> None:
    state = _read(_route([_entry(ENVOY, [_condition("Accepted", status, reason, "the message", generation)])]))
    assert not state.accepted and state.refused is refused
    assert state.reason == f"gateway public did not accept the route: {reason}: the message"


def test_a_parent_without_an_accepted_condition_is_not_accepted() -> None:
    state = _read(_route([_entry(ENVOY, [_condition("ResolvedRefs", "True", "ResolvedRefs")])]))
    assert not state.accepted and state.reason == "gateway public set no Accepted condition"


@pytest.mark.parametrize(
    "ref",
    [
        {"group": GROUP, "kind": "Gateway", "name": "public", "namespace": "gateway", "sectionName": "http"},  # another listener
        {"group": GROUP, "kind": "Gateway", "name": "public", "namespace": "gateway", "sectionName": "https", "port": 80},  # another port
        {"group": GROUP, "kind": "Gateway", "name": "public", "namespace": "other"},
        {"group": GROUP, "kind": "ListenerSet", "name": "public", "namespace": "gateway"},
        {"group": "example.com", "kind": "Gateway", "name": "public", "namespace": "gateway"},
        {"group": GROUP, "kind": "Gateway", "name": "private", "namespace": "gateway"},
        {"name": "public"},  # the route's namespace (prod), not the gateway's
    ],
    ids=["section", "port", "namespace", "kind", "group", "name", "defaulted-namespace"],
)
def test_an_entry_for_another_parent_is_not_this_parents(ref: dict[str, Any]) -> None:
    refs = [{**PUBLIC, "port": 443}]
    state = _read(_route([_entry(ENVOY, _accepted(), **ref)], refs=refs), refs)
    assert not state.accepted and state.reason == "gateway public has not reported on the route"


def test_the_entry_of_the_routes_section_is_found_among_several() -> None:
    refused = _entry(ENVOY, [_condition("Accepted", "False", "NotAllowedByListeners")], group=GROUP, kind="Gateway", name="public", namespace="gateway", sectionName="http")
    accepted = _entry(ENVOY, _accepted())
    assert _read(_route([refused, accepted])).accepted


def test_every_parent_must_accept() -> None:
    refs = [PUBLIC, {"name": "internal", "namespace": "gateway"}]
    obj = _route([_entry(ENVOY, _accepted())], refs=refs)
    state = _read(obj, refs)
    assert not state.accepted and state.reason == "gateway internal has not reported on the route"
    obj["status"]["parents"].append(_entry(ENVOY, _accepted(), group=GROUP, kind="Gateway", name="internal", namespace="gateway"))
    assert _read(obj, refs).accepted


def test_a_route_without_status_has_not_been_reported_on() -> None:
    obj = _route([])
    del obj["status"]
    state = _read(obj)
    assert not state.accepted and state.reason == "gateway public has not reported on the route" and state.weights == (80, 20)


INTERNAL = {"name": "internal", "namespace": "gateway"}
REFUSING = _entry(ENVOY, [_condition("Accepted", "False", "NotAllowedByListeners")], group=GROUP, kind="Gateway", name="internal", namespace="gateway")


@pytest.mark.parametrize(
    ("public", "internal", "missing", "pending", "settled"),
    [
        (_accepted(), _accepted(), (), (), True),
        (_accepted(2), _accepted(), (), ("public",), False),  # its controller down or lagging: it may serve generation 2
        (_accepted(), None, (), ("internal",), False),  # not reported on yet
        (_accepted(), "refused", (), (), True),
        (_accepted(2), "refused", (), ("public",), False),  # one refusal does not settle the parent still to take it
        (_accepted(2), _accepted(), ("gateway/public",), (), True),  # a Gateway gone: its stale entry says nothing
        (None, None, ("gateway/public",), ("internal",), False),
    ],
    ids=["accepted", "lagging", "unreported", "refused", "refused-and-lagging", "gone", "gone-and-unreported"],
)
def test_a_route_is_settled_when_every_parent_accepted_refused_or_is_gone(public: Any, internal: Any, missing: tuple[str, ...],
                                                                          pending: tuple[str, ...], settled: bool) -> None:
    """What a rollback may stop waiting on: a parent that has not taken the route may go on serving an older one."""
    entries = [] if public is None else [_entry(ENVOY, public)]
    if internal == "refused":
        entries.append(REFUSING)
    elif internal is not None:
        entries.append(_entry(ENVOY, internal, group=GROUP, kind="Gateway", name="internal", namespace="gateway"))
    state = routing.read_route(_route(entries, refs=[PUBLIC, INTERNAL]), "web", routing.parent_refs([PUBLIC, INTERNAL]), missing=missing)
    assert state.pending == pending and state.settled is settled
    assert state.missing == (("public",) if missing else ())
    if missing:
        assert "gateway public does not exist" in state.reason and not state.accepted


# --- what the route shows -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        (AT_REST, ((100, 0), 0, False)),
        (RouteShape(weight=30), ((70, 30), 0, False)),
        (RouteShape(matches=(INSIDERS,)), ((100, 0), 1, False)),
        (RouteShape(mirror=True, mirror_percent=50), ((100, 0), 0, True)),
        (RouteShape(weight=10, affinity=AFFINITY), ((90, 10), 1, False)),
        (RouteShape(weight=10, matches=(INSIDERS,), affinity=AFFINITY), ((90, 10), 2, False)),
    ],
)
def test_route_state_reads_the_declared_shape(declared: RouteShape, expected: tuple[Any, ...]) -> None:
    state = _read(_route([_entry(ENVOY, _accepted())], shape=declared))
    assert (state.weights, state.matched_rules, state.mirrored) == expected
    assert state.shows(declared)


@pytest.mark.parametrize(
    ("declared", "other"),
    [
        (RouteShape(weight=30), RouteShape(weight=40)),
        (RouteShape(weight=30), AT_REST),
        (RouteShape(matches=(INSIDERS,)), AT_REST),
        (AT_REST, RouteShape(matches=(INSIDERS,))),
        (RouteShape(mirror=True), AT_REST),
        (AT_REST, RouteShape(mirror=True)),
        (RouteShape(weight=10, affinity=AFFINITY), RouteShape(weight=10)),
        (RouteShape(mirror=True, mirror_percent=20), RouteShape(mirror=True, mirror_percent=30)),
        (RouteShape(mirror=True, mirror_percent=20), RouteShape(mirror=True)),
        (RouteShape(mirror=True), RouteShape(mirror=True, mirror_percent=20)),
    ],
)
def test_route_state_does_not_show_another_shape(declared: RouteShape, other: RouteShape) -> None:
    assert not _read(_route([_entry(ENVOY, _accepted())], shape=declared)).shows(other)


@pytest.mark.parametrize(("declared", "percent"), [(RouteShape(mirror=True, mirror_percent=20), 20), (RouteShape(weight=10, mirror=True), 100),
                                                    (RouteShape(mirror=True, mirror_percent=100), 100), (RouteShape(weight=10), None)])
def test_route_state_reads_the_mirrors_percent_a_mirror_without_one_mirrors_all(declared: RouteShape, percent: int | None) -> None:
    state = _read(_route([_entry(ENVOY, _accepted())], shape=declared))
    assert state.mirror_percent == percent and state.shows(declared) and not state.dropped_mirror_percent(declared)


def test_a_mirror_whose_percent_the_api_server_pruned_does_not_show_the_step() -> None:
    """An HTTPRoute CRD before Gateway API v1.3 has no requestMirror.percent: the API server drops it
    without an error, and the gateway mirrors every request while the step asked for 10 %."""
    shape = RouteShape(weight=10, mirror=True, mirror_percent=10)
    obj = _route([_entry(ENVOY, _accepted())], shape=shape)
    del obj["spec"]["rules"][-1]["filters"][0]["requestMirror"]["percent"]
    state = _read(obj)
    assert state.accepted and state.mirrored and state.mirror_percent == 100
    assert not state.shows(shape) and state.dropped_mirror_percent(shape)
    # a route still at the previous step is stale, not pruned: waiting cures it
    assert not _read(_route([_entry(ENVOY, _accepted())], shape=AT_REST)).dropped_mirror_percent(shape)


def test_a_backend_without_weight_counts_as_weight_1_and_a_route_without_rules_has_none() -> None:
    obj = _route([_entry(ENVOY, _accepted())])
    for ref in obj["spec"]["rules"][-1]["backendRefs"]:
        del ref["weight"]
    assert _read(obj).weights == (1, 1)
    empty = copy.deepcopy(obj)
    empty["spec"]["rules"] = []
    state = _read(empty)
    assert state.weights == (None, None) and state.matched_rules == 0 and not state.shows(AT_REST)


# --- what a gateway cannot do -------------------------------------------------------------------

TRAEFIK_3_7 = routing.GatewayClass(TRAEFIK, frozenset({"Gateway", "HTTPRoute", "HTTPRouteQueryParamMatching", "HTTPRouteResponseHeaderModification"}))
WITH_MIRROR = routing.GatewayClass(ENVOY, frozenset({"HTTPRoute", "HTTPRouteRequestMirror"}))
WITH_PERCENT = routing.GatewayClass(ENVOY, frozenset({"HTTPRoute", "HTTPRouteRequestMirror", "HTTPRouteRequestPercentageMirror"}))


@pytest.mark.parametrize(
    ("shape", "classes", "found"),
    [
        (RouteShape(mirror=True), {"gateway/public": TRAEFIK_3_7}, [("gateway/public", "HTTPRouteRequestMirror")]),
        (RouteShape(mirror=True, mirror_percent=20), {"gateway/public": TRAEFIK_3_7},
         [("gateway/public", "HTTPRouteRequestMirror"), ("gateway/public", "HTTPRouteRequestPercentageMirror")]),
        (RouteShape(mirror=True, mirror_percent=20), {"gateway/public": WITH_MIRROR}, [("gateway/public", "HTTPRouteRequestPercentageMirror")]),
        (RouteShape(mirror=True, mirror_percent=20), {"gateway/public": WITH_PERCENT, "gateway/b": TRAEFIK_3_7}, [("gateway/b", "HTTPRouteRequestMirror"),
                                                                                                             ("gateway/b", "HTTPRouteRequestPercentageMirror")]),
        (RouteShape(mirror=True), {"gateway/public": WITH_MIRROR}, []),
        (RouteShape(mirror=True, mirror_percent=100), {"gateway/public": WITH_MIRROR}, []),  # 100 % is a plain mirror: the route carries no percent
        # publishes no features: only a controller known to lack it counts
        (RouteShape(mirror=True), {"gateway/public": routing.GatewayClass(TRAEFIK)}, [("gateway/public", "HTTPRouteRequestMirror")]),
        (RouteShape(mirror=True), {"gateway/public": routing.GatewayClass(ISTIO)}, []),
        (RouteShape(mirror=True), {}, []),
        # the other strategies' shapes need nothing beyond what Traefik has
        (RouteShape(weight=20, matches=(INSIDERS,), affinity=AFFINITY, expire_cookie="c"), {"gateway/public": TRAEFIK_3_7}, []),
    ],
)
def test_gateways_without_what_a_step_needs_are_named(shape: RouteShape, classes: dict[str, routing.GatewayClass], found: list[tuple[str, str]]) -> None:
    reasons = routing.unsupported_features(shape, classes)
    assert len(reasons) == len(found), reasons
    for reason, (gateway, feature) in zip(reasons, found, strict=True):
        assert reason.startswith(f"gateway {gateway} (") and f") does not support {feature}" in reason, reason


def test_a_gateway_known_to_lack_mirroring_says_what_it_would_do() -> None:
    (reason,) = routing.unsupported_features(RouteShape(mirror=True), {"gateway/public": routing.GatewayClass(TRAEFIK)})
    assert reason == ("gateway gateway/public (traefik.io/gateway-controller) does not support HTTPRouteRequestMirror: "
                      "Traefik answers every request of a rule with a RequestMirror filter with 500")
