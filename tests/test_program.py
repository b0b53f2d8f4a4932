"""The Pulumi program under Pulumi's mocks (preview=False, so the .apply assertions run)."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from canary.spec import parse_spec
from tests.conftest import base_values

CREATED: list[pulumi.runtime.MockResourceArgs] = []


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        CREATED.append(args)
        return f"{args.name}-id", args.inputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


pulumi.runtime.set_mocks(Mocks(), project="canary", stack="test", preview=False)

from canary import program  # noqa: E402  (the mocks must be set before resources are declared)


def _spec(weight: int | None) -> Any:
    values = base_values()
    if weight is not None:
        values["canaryImage"] = "registry.example.com/shop/web:2.0.0"
        values["canaryWeight"] = weight
    return parse_spec(values)


def _check(resources: program.Resources, weight: int | None) -> pulumi.Output[Any]:
    canary_replicas = 0 if weight is None else 2
    w = weight or 0

    def verify(args: list[Any]) -> None:
        stable_meta, stable_spec, canary_meta, canary_spec, svc_meta, svc_spec, csvc_spec, route_meta, route_spec, route_kind = args
        # Output types come back with Python (snake_case) keys; the route's spec is untyped (camelCase).
        # Deployments: names, labels, selectors, replicas, images, ports.
        assert stable_meta["name"] == "web-stable" and stable_meta["namespace"] == "prod"
        assert canary_meta["name"] == "web-canary"
        assert stable_spec["replicas"] == 2
        assert canary_spec["replicas"] == canary_replicas
        assert stable_spec["selector"]["match_labels"] == {"app.kubernetes.io/name": "web", "canary/track": "stable"}
        assert canary_spec["selector"]["match_labels"] == {"app.kubernetes.io/name": "web", "canary/track": "canary"}
        pod_labels = stable_spec["template"]["metadata"]["labels"]
        assert pod_labels["canary/track"] == "stable" and pod_labels["app.kubernetes.io/managed-by"] == "canary"
        assert pod_labels["app.kubernetes.io/version"] == "1.0.0"
        assert set(stable_spec["selector"]["match_labels"].items()) <= set(pod_labels.items())
        assert canary_spec["template"]["metadata"]["labels"]["canary/track"] == "canary"
        stable_container = stable_spec["template"]["spec"]["containers"][0]
        canary_container = canary_spec["template"]["spec"]["containers"][0]
        assert stable_container["image"] == "registry.example.com/shop/web:1.0.0"
        assert canary_container["image"] == ("registry.example.com/shop/web:1.0.0" if weight is None else "registry.example.com/shop/web:2.0.0")
        assert stable_container["ports"] == [{"name": "http", "container_port": 8080, "protocol": "TCP"}]
        # Services: names, selectors, ports.
        assert svc_meta["name"] == "web-stable"
        assert svc_spec["selector"] == {"app.kubernetes.io/name": "web", "canary/track": "stable"}
        assert svc_spec["ports"] == [{"name": "http", "port": 80, "target_port": "http", "protocol": "TCP"}]
        assert csvc_spec["selector"] == {"app.kubernetes.io/name": "web", "canary/track": "canary"}
        # The route: name, kind, parents, hostnames, weights.
        assert route_kind == "HTTPRoute"
        assert route_meta["name"] == "web"
        backends = route_spec["rules"][0]["backendRefs"]
        assert [(b["name"], b["port"], b["weight"]) for b in backends] == [("web-stable", 80, 100 - w), ("web-canary", 80, w)]
        assert route_spec["parentRefs"][0]["name"] == "public"
        assert route_spec["hostnames"] == ["web.example.com"]

    return pulumi.Output.all(
        resources.stable.metadata, resources.stable.spec, resources.canary.metadata, resources.canary.spec,
        resources.stable_service.metadata, resources.stable_service.spec, resources.canary_service.spec,
        resources.route.metadata, resources.route.spec, resources.route.kind,
    ).apply(verify)


@pytest.mark.parametrize("weight", [None, 10, 50, 100], ids=["idle", "w10", "w50", "w100"])
@pulumi.runtime.test
def test_program_resources(weight: int | None) -> pulumi.Output[Any]:
    return _check(program.program(_spec(weight)), weight)


def test_resource_kinds_and_api_versions() -> None:
    CREATED.clear()

    @pulumi.runtime.test
    def declare() -> None:
        program.program(_spec(10))

    declare()
    kinds = sorted((r.typ, r.name) for r in CREATED)
    assert kinds == [
        ("kubernetes:apps/v1:Deployment", "canary-deployment"),
        ("kubernetes:apps/v1:Deployment", "stable-deployment"),
        ("kubernetes:core/v1:Service", "canary-service"),
        ("kubernetes:core/v1:Service", "stable-service"),
        ("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", "route"),
    ]
    route = next(r for r in CREATED if r.name == "route")
    assert route.inputs["apiVersion"] == "gateway.networking.k8s.io/v1"
    # the release limits `up`s to resources by these names and types (their URNs)
    from canary.release import TARGET_TYPES

    assert {(t, n) for n, t in TARGET_TYPES.items()} <= set(kinds)


def test_spec_is_read_from_pulumi_config() -> None:
    import json

    values = base_values()
    pulumi.runtime.set_all_config({f"canary:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in values.items()})
    try:
        spec = program.spec_from_pulumi_config()
    finally:
        pulumi.runtime.set_all_config({})
    assert spec == parse_spec(values)


def test_an_image_change_touches_only_the_deployments() -> None:
    """Services and the route must not change with the image (Pulumi would await them again)."""

    def inputs(weight: int | None) -> dict[str, Any]:
        CREATED.clear()

        @pulumi.runtime.test
        def declare() -> None:
            program.program(_spec(weight))

        declare()
        return {r.name: r.inputs for r in CREATED}

    idle, releasing = inputs(None), inputs(10)
    for name in ("stable-service", "canary-service"):
        assert idle[name] == releasing[name]
    assert idle["route"]["metadata"] == releasing["route"]["metadata"]
    assert idle["canary-deployment"] != releasing["canary-deployment"]
