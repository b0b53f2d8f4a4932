"""The Pulumi component (``canary.adapters.program``) under Pulumi's own mocks.

Every declaration runs with ``preview=False`` so that ``apply`` callbacks run
and the mocks see resolved inputs. The mocks record each resource's inputs (as
the engine would get them: camelCase, numbers as floats, secrets wrapped) and
the monitor records which resource hooks each resource was registered with.
"""

from __future__ import annotations

import difflib
import json
import re
import runpy
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pytest
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor

from canary.adapters import program, stackfile
from canary.core import routing, workload
from canary.core.spec import App, Prometheus
from canary.errors import InvalidSpec
from canary.release.ports import AppFacts
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(120)

STACK = "prod"
GATEWAY = {"parentRefs": [{"name": "public", "namespace": "gateway", "sectionName": "https"}], "hostnames": ["web.example.com"]}
SIMPLE_APP = {"name": "web", "namespace": "shop", "image": "registry.example.com/shop/web:1.0.0", "replicas": 3,
              "env": {"LOG_LEVEL": "info"}, "probes": {"readiness": {"path": "/ready"}}}
STABLE_SELECTOR = {"canary.dev/app": "web", "canary.dev/track": "stable"}
CANARY_SELECTOR = {"canary.dev/app": "web", "canary.dev/track": "canary"}


def full_template(image: str = "registry.example.com/shop/web:1.0.0") -> dict[str, Any]:
    """The full form: two containers, env from a Secret, a ConfigMap volume, the team's own labels."""
    return {
        "metadata": {"labels": {"app": "web", "name": "web", "app.kubernetes.io/name": "web", "team": "shop"},
                     "annotations": {"team.example.com/owner": "shop"}},
        "spec": {
            "containers": [
                {"name": "web", "image": image, "ports": [{"name": "http", "containerPort": 8080}],
                 "envFrom": [{"secretRef": {"name": "creds"}}],
                 "volumeMounts": [{"name": "conf", "mountPath": "/etc/web"}]},
                {"name": "proxy", "image": "registry.example.com/shop/proxy:3.1"},
            ],
            "volumes": [{"name": "conf", "configMap": {"name": "settings"}}],
        },
    }


def full_app(settings: Mapping[str, str] | None = None, token: str = "s3cr3t-t0ken", **more: Any) -> dict[str, Any]:
    return {"name": "web", "namespace": "shop", "replicas": 2, "template": full_template(),
            "configMaps": {"settings": {"data": dict(settings or {"level": "info"})}},
            "secrets": {"creds": {"stringData": {"TOKEN": token}}}, **more}


# --- running a program under the mocks ----------------------------------------------------------


class Recorder(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: dict[str, pulumi.runtime.MockResourceArgs] = {}
        self.typed: dict[tuple[str, str], pulumi.runtime.MockResourceArgs] = {}  # a program of its own may give one name to several types

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources[args.name] = args
        self.typed[(args.typ, args.name)] = args
        if args.typ == "kubernetes:apps/v1:Deployment":  # as the API server fills it in
            return f"{args.name}-id", {**args.inputs, "metadata": {**(args.inputs.get("metadata") or {}), "uid": f"uid-of-{args.name}"}}
        return f"{args.name}-id", args.inputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


class HookMonitor(MockMonitor):
    """The mock monitor, recording the before_update hooks each resource is registered with."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.hooks: dict[str, list[str]] = {}
        self.create_hooks: dict[str, list[str]] = {}
        self.ignore_changes: dict[str, list[str]] = {}
        self.urns: dict[str, str] = {}
        self.aliases: dict[str, list[str]] = {}
        self.dependencies: dict[str, set[str]] = {}
        self.registered: list[str] = []
        self.protect: dict[str, bool] = {}
        self.retained: dict[str, bool] = {}

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (the gRPC method's name)
        self.hooks[request.name] = list(request.hooks.before_update)
        self.create_hooks[request.name] = list(request.hooks.before_create)
        self.ignore_changes[request.name] = list(request.ignoreChanges)
        # pulumi-kubernetes adds aliases of its own (earlier apiVersions, under the same parent): only aliases from the root count here
        self.aliases[request.name] = [alias_urn(a, request.type, request.name) for a in request.aliases if a.urn or a.spec.noParent]
        self.dependencies[request.name] = set(request.dependencies)
        self.protect[request.name] = request.protect
        self.retained[request.name] = request.retainOnDelete
        response = super().RegisterResource(request)
        self.urns[request.name] = response.urn
        self.registered.append(response.urn)
        return response


def alias_urn(alias: Any, type_: str, name: str) -> str:
    """The URN an alias (as the SDK sends it to the engine) stands for: a URN, or a spec of a resource without parent."""
    if alias.urn:
        return str(alias.urn)
    spec = alias.spec
    return f"urn:pulumi:{spec.stack or pulumi.get_stack()}::{spec.project or pulumi.get_project()}::{spec.type or type_}::{spec.name or name}"


@dataclass
class Declared:
    resources: dict[str, pulumi.runtime.MockResourceArgs]
    hooks: dict[str, list[str]]
    urns: dict[str, str]
    outputs: dict[str, Any] = field(default_factory=dict)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    dependencies: dict[str, set[str]] = field(default_factory=dict)
    registered: list[str] = field(default_factory=list)
    protect: dict[str, bool] = field(default_factory=dict)
    retained: dict[str, bool] = field(default_factory=dict)
    create_hooks: dict[str, list[str]] = field(default_factory=dict)
    ignore_changes: dict[str, list[str]] = field(default_factory=dict)
    typed: dict[tuple[str, str], pulumi.runtime.MockResourceArgs] = field(default_factory=dict)

    def inputs(self, name: str, type_: str | None = None) -> dict[str, Any]:
        return (self.typed[(type_, name)] if type_ else self.resources[name]).inputs

    def kinds(self) -> set[tuple[str, str]]:
        return {(r.typ, r.name) for r in self.resources.values()}

    def template(self, track: str) -> dict[str, Any]:
        return self.inputs(f"web-{track}")["spec"]["template"]

    def weights(self) -> list[tuple[str, float]]:
        rules = self.inputs("web-route")["spec"]["rules"]
        return [(b["name"], b["weight"]) for b in rules[-1]["backendRefs"]]

    @property
    def exported(self) -> dict[str, Any]:
        return self.outputs["canary/web"]  # type: ignore[no-any-return]


def _config_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@pytest.fixture
def declare() -> Iterator[Callable[..., Declared]]:
    """Run ``build`` as a Pulumi program (not a preview) with ``config`` set; what it declared."""

    def run(build: Callable[[], Any], config: Mapping[str, Any] | None = None, secret_keys: list[str] | None = None, project: str = "canary") -> Declared:
        mocks = Recorder()
        monitor = HookMonitor(mocks)
        pulumi.runtime.set_mocks(mocks, project=project, stack=STACK, preview=False, monitor=monitor)
        pulumi.runtime.set_all_config({k: _config_value(v) for k, v in (config or {}).items()}, secret_keys or [])
        declared = Declared(mocks.resources, monitor.hooks, monitor.urns, aliases=monitor.aliases, dependencies=monitor.dependencies,
                            registered=monitor.registered, protect=monitor.protect, retained=monitor.retained, create_hooks=monitor.create_hooks,
                            ignore_changes=monitor.ignore_changes, typed=mocks.typed)

        @pulumi.runtime.test
        def program_run() -> pulumi.Output[Any]:
            build()
            root = pulumi.runtime.get_root_resource()
            assert root is not None
            return pulumi.Output.from_input(root.outputs).apply(declared.outputs.update)  # type: ignore[attr-defined]

        program_run()
        return declared

    yield run
    pulumi.runtime.set_all_config({}, [])


def component(app: Mapping[str, Any] | None = None, **kwargs: Any) -> Callable[[], program.CanaryDeployment]:
    return lambda: program.CanaryDeployment("web", dict(app or SIMPLE_APP), GATEWAY, **kwargs)


# --- the resources of an app --------------------------------------------------------------------


def test_a_simple_app_declares_two_tracks_their_services_the_apex_service_and_the_route(declare: Callable[..., Declared]) -> None:
    d = declare(component())
    assert d.kinds() == {
        ("canary:index:CanaryDeployment", "web"),
        ("kubernetes:apps/v1:Deployment", "web-stable"),
        ("kubernetes:apps/v1:Deployment", "web-canary"),
        ("kubernetes:core/v1:Service", "web-stable-service"),
        ("kubernetes:core/v1:Service", "web-canary-service"),
        ("kubernetes:core/v1:Service", "web-apex-service"),
        ("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", "web-route"),
    }
    # every object is a child of the component, in the app's namespace
    for name in ("web-stable", "web-canary", "web-stable-service", "web-canary-service", "web-apex-service", "web-route"):
        assert "canary:index:CanaryDeployment$" in d.urns[name], d.urns[name]
        assert d.inputs(name)["metadata"]["namespace"] == "shop"
    assert d.inputs("web-stable")["metadata"]["name"] == "web-stable"
    assert d.inputs("web-canary")["metadata"]["name"] == "web-canary"
    assert d.inputs("web-stable")["spec"]["selector"] == {"matchLabels": STABLE_SELECTOR}
    assert d.inputs("web-canary")["spec"]["selector"] == {"matchLabels": CANARY_SELECTOR}

    services = {name: d.inputs(name) for name in ("web-stable-service", "web-canary-service", "web-apex-service")}
    assert {n: s["metadata"]["name"] for n, s in services.items()} == {
        "web-stable-service": "web-stable", "web-canary-service": "web-canary", "web-apex-service": "web"}
    assert services["web-stable-service"]["spec"]["selector"] == STABLE_SELECTOR
    assert services["web-canary-service"]["spec"]["selector"] == CANARY_SELECTOR
    # the apex Service selects stable only: in-cluster clients never reach the canary
    assert services["web-apex-service"]["spec"]["selector"] == STABLE_SELECTOR
    for service in services.values():
        # by the name the simple form gives the port: a release that moves it leaves the Services as they are
        assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert {reached(d, track) for track in ("stable", "canary", "apex")} == {8080}

    route = d.inputs("web-route")
    assert (route["apiVersion"], route["kind"], route["metadata"]["name"]) == ("gateway.networking.k8s.io/v1", "HTTPRoute", "web")
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public",
                                            "namespace": "gateway", "sectionName": "https"}]
    assert route["spec"]["hostnames"] == ["web.example.com"]
    assert [(b["name"], b["port"]) for b in route["spec"]["rules"][-1]["backendRefs"]] == [("web-stable", 80), ("web-canary", 80)]


def test_stable_pods_keep_the_templates_labels_and_canary_pods_get_the_suffix(declare: Callable[..., Declared]) -> None:
    d = declare(component(full_app()))
    stable, canary = d.template("stable")["metadata"], d.template("canary")["metadata"]
    assert stable["labels"] == {"app": "web", "name": "web", "app.kubernetes.io/name": "web", "team": "shop",
                                "canary.dev/app": "web", "canary.dev/track": "stable", "app.kubernetes.io/managed-by": "canary"}
    assert canary["labels"] == {"app": "web-canary", "name": "web-canary", "app.kubernetes.io/name": "web-canary", "team": "shop",
                                "canary.dev/app": "web", "canary.dev/track": "canary", "app.kubernetes.io/managed-by": "canary"}
    desired_hash = d.exported["desired"]["hash"]
    assert re.fullmatch(r"[0-9a-f]{16}", desired_hash)
    for meta in (stable, canary):
        assert meta["annotations"] == {"team.example.com/owner": "shop", "canary.dev/template-hash": desired_hash}
    # each Deployment's selector matches its own pods and not the other track's
    for track, other in (("stable", "canary"), ("canary", "stable")):
        selector = d.inputs(f"web-{track}")["spec"]["selector"]["matchLabels"]
        assert selector.items() <= d.template(track)["metadata"]["labels"].items()
        assert not selector.items() <= d.template(other)["metadata"]["labels"].items()


def test_the_canarys_anti_affinity_keeps_canary_pods_apart_not_away_from_stable(declare: Callable[..., Declared]) -> None:
    template = full_template()
    apart = {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}
    template["spec"]["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [apart]}}
    template["spec"]["topologySpreadConstraints"] = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                                                      "labelSelector": {"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In", "values": ["web"]}]}}]
    d = declare(component({**full_app(), "template": template}))
    canary, stable = d.template("canary")["spec"], d.template("stable")["spec"]
    assert canary["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"] == {"matchLabels": {"app": "web-canary"}}
    assert canary["topologySpreadConstraints"][0]["labelSelector"]["matchExpressions"][0]["values"] == ["web-canary"]
    assert (stable["affinity"], stable["topologySpreadConstraints"]) == (template["spec"]["affinity"], template["spec"]["topologySpreadConstraints"])
    # what a release pins and hashes is the template as written
    assert d.exported["desired"]["template"] == template


def test_the_simple_forms_pods_get_the_canary_suffix_on_the_app_name_label(declare: Callable[..., Declared]) -> None:
    d = declare(component())
    assert d.template("stable")["metadata"]["labels"]["app.kubernetes.io/name"] == "web"
    assert d.template("canary")["metadata"]["labels"]["app.kubernetes.io/name"] == "web-canary"


def test_stable_never_dips_below_its_size_while_it_takes_a_new_template(declare: Callable[..., Declared]) -> None:
    d = declare(component())
    assert d.inputs("web-stable")["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}}


def test_without_a_release_the_canary_is_at_zero_on_the_desired_template_and_the_route_at_rest(declare: Callable[..., Declared]) -> None:
    d = declare(component())
    stable, canary = d.inputs("web-stable")["spec"], d.inputs("web-canary")["spec"]
    assert stable["replicas"] == 3
    assert canary["replicas"] == 0
    desired = d.exported["desired"]
    assert desired["image"] == "registry.example.com/shop/web:1.0.0"
    for spec in (stable, canary):
        assert spec["template"]["metadata"]["annotations"]["canary.dev/template-hash"] == desired["hash"]
        assert spec["template"]["spec"] == desired["template"]["spec"]
    assert d.weights() == [("web-stable", 100), ("web-canary", 0)]
    assert d.exported["stable"] == desired


def pin(image: str, hash_: str, **more: Any) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": image, "ports": [{"name": "http", "containerPort": 8080}]}]}}
    return {"template": template, "hash": hash_, "image": image, "config_hashes": {}, **more}


def test_a_release_config_pins_each_track_and_the_route(declare: Callable[..., Declared]) -> None:
    stable_pin = pin("registry.example.com/shop/web:1.0.0", "5555aaaa5555aaaa")
    canary_pin = pin("registry.example.com/shop/web:2.0.0", "cccc2222cccc2222", replicas=1)
    release = {"web": {"release": "r1", "stable": stable_pin, "canary": canary_pin, "route": {"weight": 20}}}
    # the desired state (an image no track runs yet) changes nothing while the release pins the tracks
    app = {**SIMPLE_APP, "image": "registry.example.com/shop/web:3.0.0"}
    d = declare(component(app), {"canary:release": release})
    stable, canary = d.inputs("web-stable")["spec"], d.inputs("web-canary")["spec"]
    assert stable["replicas"] == 3
    assert stable["template"]["spec"]["containers"][0]["image"] == "registry.example.com/shop/web:1.0.0"
    assert stable["template"]["metadata"]["annotations"]["canary.dev/template-hash"] == "5555aaaa5555aaaa"
    assert stable["template"]["metadata"]["labels"]["canary.dev/track"] == "stable"
    assert canary["replicas"] == 1
    assert canary["template"]["spec"]["containers"][0]["image"] == "registry.example.com/shop/web:2.0.0"
    assert canary["template"]["metadata"]["annotations"]["canary.dev/template-hash"] == "cccc2222cccc2222"
    assert canary["template"]["metadata"]["labels"]["app"] == "web-canary"
    assert d.weights() == [("web-stable", 80), ("web-canary", 20)]
    assert d.exported["stable"] == stable_pin
    assert d.exported["desired"]["image"] == "registry.example.com/shop/web:3.0.0"
    assert d.exported["desired"]["hash"] not in ("5555aaaa5555aaaa", "cccc2222cccc2222")


def reached(d: Declared, service: str) -> int:
    """The container port a Service reaches on the pods it selects: its ``targetPort``, a name resolved on its
    track's template as Kubernetes does (the first container port of that name)."""
    target = d.inputs(f"web-{service}-service")["spec"]["ports"][0]["targetPort"]
    if not isinstance(target, str):
        return int(target)  # (numbers reach the mocks as floats)
    track = "canary" if service == "canary" else "stable"
    ports = [p for c in d.template(track)["spec"]["containers"] for p in c.get("ports", []) if p.get("name") == target]
    assert ports, f"{service}: no container port named {target}"
    return int(ports[0]["containerPort"])


def _target_ports(d: Declared) -> dict[str, Any]:
    return {n: reached(d, n) for n in ("stable", "canary", "apex")}


def test_promoting_a_release_that_moves_the_port_leaves_stable_s_services_reaching_every_pod(declare: Callable[..., Declared]) -> None:
    # promotion's first up rolled stable onto the new port while its Services, outside that up's targets, still sent
    # stable's share (and every in-cluster call through the apex) to the old one: all of it refused until the last up
    new = "registry.example.com/shop/web:2.0.0"
    canary_pin = pin(new, "cccc2222cccc2222", port=9090)
    canary_pin["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 9090
    app = component({**SIMPLE_APP, "image": new, "port": 9090})
    during = declare(app, {"canary:release": {"web": {"release": "r1", "stable": pin("registry.example.com/shop/web:1.0.0", "5555aaaa5555aaaa", port=8080),
                                                      "canary": {**canary_pin, "replicas": 3}, "route": {"weight": 50}}}})
    promoting = declare(app, {"canary:release": {"web": {"release": "r1", "stable": canary_pin, "canary": {**canary_pin, "replicas": 3},
                                                         "route": {"weight": 50}}}})
    assert (reached(during, "stable"), reached(promoting, "stable"), reached(promoting, "apex")) == (8080, 9090, 9090)
    # the Services name the port: unchanged by stable's new template, they reach old pods on 8080 and new ones on 9090 as it rolls
    for service in ("web-stable-service", "web-apex-service"):
        assert during.inputs(service)["spec"]["ports"] == promoting.inputs(service)["spec"]["ports"]
        assert promoting.inputs(service)["spec"]["ports"][0]["targetPort"] == "http"
    # and were they to change (a port without a name), they are in the up that changes stable
    facts = AppFacts(spec=None, urns=promoting.exported["urns"], stable=None, desired=None)  # type: ignore[arg-type]
    assert {promoting.urns["web-stable"], promoting.urns["web-stable-service"], promoting.urns["web-apex-service"]} <= set(facts.targets("stable"))


def test_a_release_that_renames_the_port_targets_stable_s_by_number(declare: Callable[..., Declared]) -> None:
    # stable's port named http, the new version's web (same number): stable's Services targeted "http" during the
    # release, and "web" only after stable had rolled, so each new stable pod (no port named http) was out of them
    new = "registry.example.com/shop/web:2.0.0"
    old_pin = pin("registry.example.com/shop/web:1.0.0", "5555aaaa5555aaaa", port=8080)
    template = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": new, "ports": [{"name": "web", "containerPort": 8080}]}]}}
    d = declare(component(NO_IMAGE, template=template), {"canary:release": {"web": {"release": "r1", "stable": old_pin, "route": {"weight": 10}}}})
    assert {s: d.inputs(f"web-{s}-service")["spec"]["ports"][0]["targetPort"] for s in ("stable", "apex")} == {"stable": 8080.0, "apex": 8080.0}
    assert d.inputs("web-canary-service")["spec"]["ports"][0]["targetPort"] == "web"


def test_a_release_that_renames_and_moves_the_port_keeps_stable_s_services_on_the_old_name(declare: Callable[..., Declared]) -> None:
    # http:8080 renamed and moved to web:9090: by number (8080), stable's Services took in each new pod as stable
    # rolled, on a port it does not serve; by the old name they leave the new pods out until they move too
    new = "registry.example.com/shop/web:2.0.0"
    old_pin = pin("registry.example.com/shop/web:1.0.0", "5555aaaa5555aaaa", port=8080)
    template = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": new, "ports": [{"name": "web", "containerPort": 9090}]}]}}
    d = declare(component(NO_IMAGE, template=template), {"canary:release": {"web": {"release": "r1", "stable": old_pin, "route": {"weight": 10}}}})
    assert {s: d.inputs(f"web-{s}-service")["spec"]["ports"][0]["targetPort"] for s in ("stable", "apex", "canary")} == {
        "stable": "http", "apex": "http", "canary": "web"}


def test_a_plain_up_whose_stable_change_is_refused_leaves_stable_s_service_as_it_was(declare: Callable[..., Declared]) -> None:
    # the stable guard refused the Deployment, but its Service, independent of it, took the new port anyway
    d = declare(component({**SIMPLE_APP, "image": "registry.example.com/shop/web:2.0.0", "port": 9090}))
    assert d.hooks["web-stable"] == ["canary-stable-guard-web"]
    assert d.urns["web-stable"] in d.dependencies["web-stable-service"]


@pytest.mark.parametrize(("ports", "sidecar", "target"), [
    ([{"name": "web", "containerPort": 7000}], None, "web"),
    ([{"containerPort": 7000}], None, 7000),
    ([{"name": "web", "containerPort": 7000, "protocol": "UDP"}, {"containerPort": 7000}], None, 7000),
    ([{"name": "web", "containerPort": 7000}], {"name": "proxy", "image": "envoy:1", "ports": [{"name": "web", "containerPort": 15001}]}, 7000),
], ids=["named", "unnamed", "named-udp", "name-taken-by-a-sidecar"])
def test_a_service_targets_the_port_by_its_name_only_when_the_name_is_the_app_s_alone(
        declare: Callable[..., Declared], ports: list[dict[str, Any]], sidecar: dict[str, Any] | None, target: Any) -> None:
    template = {"spec": {"containers": [*([sidecar] if sidecar else []), {"name": "web", "image": "registry.example.com/shop/web:1", "ports": ports}]}}
    d = declare(component({**NO_IMAGE, "port": 7000}, template=template))
    found = d.inputs("web-stable-service")["spec"]["ports"][0]["targetPort"]
    assert (found if isinstance(found, str) else int(found)) == target and reached(d, "stable") == 7000


@pytest.mark.parametrize("recorded", [True, False], ids=["pin-with-port", "pin-from-before"])
def test_a_release_that_moves_the_port_keeps_stable_s_services_on_the_port_stable_serves(declare: Callable[..., Declared], recorded: bool) -> None:
    # the Services targeted the desired port from the release's first up: stable's pods, still on the old
    # template, were sent traffic on a port they do not listen on (the apex Service too), until promotion
    more = {"port": 8080} if recorded else {}
    release = {"web": {"release": "r1", "stable": pin("registry.example.com/shop/web:1.0.0", "5555aaaa5555aaaa", **more),
                       "route": {"weight": 10}}}
    d = declare(component({**SIMPLE_APP, "image": "registry.example.com/shop/web:2.0.0", "port": 9090}), {"canary:release": release})
    assert d.template("stable")["spec"]["containers"][0]["ports"][0]["containerPort"] == 8080
    assert d.template("canary")["spec"]["containers"][0]["ports"][0]["containerPort"] == 9090
    assert _target_ports(d) == {"stable": 8080, "canary": 9090, "apex": 8080}
    assert d.exported["desired"]["port"] == 9090


def test_between_releases_every_service_targets_the_app_s_port(declare: Callable[..., Declared]) -> None:
    d = declare(component({**SIMPLE_APP, "port": 9090}))
    assert _target_ports(d) == {"stable": 9090, "canary": 9090, "apex": 9090}
    # a template that declares another port than app.port: app.port, as before pins kept their port
    template = full_template()
    d = declare(component({**full_app(), "template": template, "port": 9000}),
                {"canary:release": {"web": {"release": "r1", "stable": {**pin("registry.example.com/shop/web:1.0.0", "5555aaaa5555aaaa"),
                                                                        "template": template}, "route": {"weight": 10}}}})
    assert _target_ports(d) == {"stable": 9000, "canary": 9000, "apex": 9000}


def test_the_app_protocol_is_on_the_http_port_of_every_service_the_route_and_clients_reach(declare: Callable[..., Declared]) -> None:
    # gRPC and other h2c apps: the gateway reads appProtocol from the route's backends (stable's and canary's Services), in-cluster
    # clients may from the apex; none of the three carried it, so a gateway spoke HTTP/1.1 to pods that answer only HTTP/2
    def http_ports(d: Declared) -> dict[str, dict[str, Any]]:
        return {track: next(p for p in d.inputs(f"web-{track}-service")["spec"]["ports"] if p["name"] == "http") for track in ("stable", "canary", "apex")}

    d = declare(component({**SIMPLE_APP, "appProtocol": "kubernetes.io/h2c"}))
    assert {track: port.get("appProtocol") for track, port in http_ports(d).items()} == dict.fromkeys(("stable", "canary", "apex"), "kubernetes.io/h2c")
    assert all(port["port"] == 80 and port["protocol"] == "TCP" for port in http_ports(d).values())
    assert d.exported["app"]["appProtocol"] == "kubernetes.io/h2c"  # the outputs' app, which a release's spec is read from
    # unset: no appProtocol at all (the gateway's default), as before
    plain = declare(component(SIMPLE_APP))
    assert not any("appProtocol" in port for port in http_ports(plain).values())
    assert d.exported["desired"]["appProtocol"] == "kubernetes.io/h2c" and plain.exported["desired"]["appProtocol"] == ""


def _app_protocols(d: Declared) -> dict[str, str | None]:
    return {track: next(p for p in d.inputs(f"web-{track}-service")["spec"]["ports"] if p["name"] == "http").get("appProtocol")
            for track in ("stable", "canary", "apex")}


@pytest.mark.parametrize(("stable_speaks", "expected"), [("", None), ("kubernetes.io/ws", "kubernetes.io/ws")], ids=["none", "another"])
def test_a_release_that_brings_a_protocol_keeps_stable_s_services_on_the_one_stable_speaks(
        declare: Callable[..., Declared], stable_speaks: str, expected: str | None) -> None:
    # one commit with an h2c-only image and appProtocol kubernetes.io/h2c: every Service took h2c at the release's first
    # up, and the gateway spoke HTTP/2 to stable's pods, which answer HTTP/1.1 only, before anything was judged
    release = {"web": {"release": "r1", "stable": {**pin("registry.example.com/shop/web:1.0.0", "5555aaaa5555aaaa"), "appProtocol": stable_speaks},
                       "route": {"weight": 10}}}
    d = declare(component({**SIMPLE_APP, "image": "registry.example.com/shop/web:2.0.0", "appProtocol": "kubernetes.io/h2c"}), {"canary:release": release})
    assert _app_protocols(d) == {"stable": expected, "canary": "kubernetes.io/h2c", "apex": expected}
    # promoted (stable pinned to the canary's pin): stable's Services take the new protocol with the new version
    canary_pin = d.exported["desired"]
    promoted = declare(component({**SIMPLE_APP, "image": "registry.example.com/shop/web:2.0.0", "appProtocol": "kubernetes.io/h2c"}),
                       {"canary:release": {"web": {"release": "r1", "stable": canary_pin, "canary": {**canary_pin, "replicas": 3}, "route": {"weight": 100}}}})
    assert _app_protocols(promoted) == dict.fromkeys(("stable", "canary", "apex"), "kubernetes.io/h2c")


def test_a_pin_from_before_pins_kept_their_protocol_gives_stable_the_app_s_as_then(declare: Callable[..., Declared]) -> None:
    release = {"web": {"release": "r1", "stable": pin("registry.example.com/shop/web:1.0.0", "5555aaaa5555aaaa"), "route": {"weight": 10}}}
    d = declare(component({**SIMPLE_APP, "image": "registry.example.com/shop/web:2.0.0", "appProtocol": "kubernetes.io/h2c"}), {"canary:release": release})
    assert _app_protocols(d) == dict.fromkeys(("stable", "canary", "apex"), "kubernetes.io/h2c")


def test_a_protocol_changed_alone_reaches_every_service_at_once(declare: Callable[..., Declared]) -> None:
    # the workload as stable runs it (its pin's hash is the desired one): no release, the app's protocol everywhere
    before = declare(component(SIMPLE_APP)).exported["desired"]
    d = declare(component({**SIMPLE_APP, "appProtocol": "kubernetes.io/h2c"}), {"canary:release": {"web": {"release": "", "stable": before, "route": {"weight": 0}}}})
    assert _app_protocols(d) == dict.fromkeys(("stable", "canary", "apex"), "kubernetes.io/h2c")


def _two_ports() -> dict[str, Any]:
    """A template whose main container lists two ports, none named http: app.port says which the Services target."""
    return {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "registry.example.com/shop/web:1.0.0",
                                     "ports": [{"name": "admin", "containerPort": 8080}, {"name": "api", "containerPort": 9090}]}]}}


def test_a_change_of_app_port_alone_reaches_every_service_at_the_next_up(declare: Callable[..., Declared]) -> None:
    # the template unchanged, no release runs (the hash is the same): stable, pinned at rest by `canary up` to the
    # pin it runs, kept the port that pin recorded, and its Services never followed app.port
    app = {"name": "web", "namespace": "shop", "replicas": 2, "template": _two_ports()}
    first = declare(component({**app, "port": 8080}))
    stable = dict(first.exported["stable"])
    second = declare(component({**app, "port": 9090}), {"canary:release": {"web": {"release": "", "stable": stable, "route": {"weight": 0}}}})
    assert second.exported["desired"]["hash"] == stable["hash"]
    assert _target_ports(second) == {"stable": 9090, "canary": 9090, "apex": 9090}


def test_a_pin_from_before_beside_an_app_port_given_keeps_stable_on_that_port(declare: Callable[..., Declared]) -> None:
    # app.port 9000 beside the template: the Services targeted 9000 whatever the template declares (8080, then 8081)
    old = full_template()
    new = full_template("registry.example.com/shop/web:2.0.0")
    new["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 8081}]
    stable = {"template": old, "hash": "5555aaaa5555aaaa", "image": "registry.example.com/shop/web:1.0.0", "config_hashes": {}}
    d = declare(component({**full_app(), "template": new, "port": 9000}), {"canary:release": {"web": {"release": "r1", "stable": stable, "route": {"weight": 10}}}})
    assert _target_ports(d) == {"stable": 9000, "canary": 9000, "apex": 9000}


def test_a_release_config_of_another_app_leaves_this_one_at_its_desired_state(declare: Callable[..., Declared]) -> None:
    release = {"api": {"release": "r1", "stable": pin("registry.example.com/shop/api:1", "1" * 16), "route": {"weight": 50}}}
    d = declare(component(), {"canary:release": release})
    assert d.weights() == [("web-stable", 100), ("web-canary", 0)]
    assert d.inputs("web-canary")["spec"]["replicas"] == 0


def test_a_pinned_stable_reads_the_copies_of_its_own_config_version(declare: Callable[..., Declared]) -> None:
    """A release whose canary reads new ConfigMap content: stable goes on reading the copy of the old."""
    old_hash = "0123456789" + "f" * 54
    stable_pin = {"template": full_template(), "hash": "5555aaaa5555aaaa", "image": "registry.example.com/shop/web:1.0.0",
                  "config_hashes": {"configMap/settings": old_hash, "secret/creds": "abcdefabcd" + "0" * 54}}
    release = {"web": {"release": "r1", "stable": stable_pin, "route": {"weight": 0}}}
    d = declare(component(full_app({"level": "debug"})), {"canary:release": release})
    stable_spec = d.template("stable")["spec"]
    assert stable_spec["volumes"][0]["configMap"]["name"] == "settings-0123456789"
    assert stable_spec["containers"][0]["envFrom"] == [{"secretRef": {"name": "creds-abcdefabcd"}}]
    # the canary (no pin: the desired state) reads the copy of the new content, declared by this program
    new_copy = d.inputs("web-configmap-settings")["metadata"]["name"]
    assert new_copy == "settings-" + workload.content_hash({"level": "debug"})[:10]
    assert d.template("canary")["spec"]["volumes"][0]["configMap"]["name"] == new_copy
    assert d.inputs("web-canary")["spec"]["replicas"] == 0


# --- the full form and its config ---------------------------------------------------------------


def test_config_maps_and_secrets_get_content_addressed_copies_the_templates_read(declare: Callable[..., Declared]) -> None:
    d = declare(component(full_app()))
    cm, secret = d.inputs("web-configmap-settings"), d.inputs("web-secret-creds")
    cm_name = "settings-" + workload.content_hash({"level": "info"})[:10]
    secret_name = "creds-" + workload.content_hash({"TOKEN": "s3cr3t-t0ken"})[:10]
    assert re.fullmatch(r"settings-[0-9a-f]{10}", cm["metadata"]["name"])
    assert (cm["metadata"]["name"], secret["metadata"]["name"]) == (cm_name, secret_name)
    assert cm["data"] == {"level": "info"} and cm["immutable"] is True
    assert secret["immutable"] is True
    # the Secret's content stays a Pulumi secret on its way to the engine
    assert secret["stringData"][rpc._special_sig_key] == rpc._special_secret_sig
    assert secret["stringData"]["value"] == {"TOKEN": "s3cr3t-t0ken"}
    for copy, original in ((cm, "settings"), (secret, "creds")):
        # no app label: all but the reader's own label follows from name and content, so apps share a copy
        assert copy["metadata"]["labels"] == {"copy.canary.dev/web": "true", "canary.dev/copy-of": original, "app.kubernetes.io/managed-by": "canary"}
    for track in ("stable", "canary"):
        spec = d.template(track)["spec"]
        assert spec["volumes"] == [{"name": "conf", "configMap": {"name": cm_name}}]
        assert spec["containers"][0]["envFrom"] == [{"secretRef": {"name": secret_name}}]
        assert spec["containers"][1] == {"name": "proxy", "image": "registry.example.com/shop/proxy:3.1"}
    # the exported desired template is the one the user wrote (original names), with the content hashes
    desired = d.exported["desired"]
    assert desired["template"] == full_template()
    assert desired["config_hashes"] == {"configMap/settings": workload.content_hash({"level": "info"}),
                                        "secret/creds": workload.content_hash({"TOKEN": "s3cr3t-t0ken"})}
    assert d.exported["copies"] == {"configMap/settings": cm_name, "secret/creds": secret_name}
    assert "s3cr3t-t0ken" not in json.dumps(d.outputs)


def test_a_content_change_gives_a_new_copy_name_and_a_new_template_hash(declare: Callable[..., Declared]) -> None:
    def names(d: Declared) -> tuple[str, str, str]:
        return (d.inputs("web-configmap-settings")["metadata"]["name"], d.inputs("web-secret-creds")["metadata"]["name"],
                d.exported["desired"]["hash"])

    first = names(declare(component(full_app())))
    again = names(declare(component(full_app())))
    config_changed = names(declare(component(full_app({"level": "debug"}))))
    secret_changed = names(declare(component(full_app(token="rotated"))))
    assert again == first
    assert config_changed[0] != first[0] and config_changed[1] == first[1] and config_changed[2] != first[2]
    assert secret_changed[0] == first[0] and secret_changed[1] != first[1] and secret_changed[2] != first[2]


def test_a_namespace_the_component_creates_is_kept_when_the_app_goes(declare: Callable[..., Declared]) -> None:
    # two apps of one namespace, both createNamespace (the provider's server-side apply takes both creates): removing
    # either from the stack deleted the namespace, and with it the other app, and whatever else lived there
    def both() -> None:
        for app in ("web", "api"):
            program.CanaryDeployment(app, {**SIMPLE_APP, "name": app, "createNamespace": True}, GATEWAY)

    d = declare(both)
    namespaces = [r.name for r in d.resources.values() if r.typ == "kubernetes:core/v1:Namespace"]
    assert namespaces and all(d.retained[name] for name in namespaces)
    assert not any(retained for name, retained in d.retained.items() if name not in namespaces and not name.startswith("web-copy"))


def test_a_protected_component_protects_all_but_the_config_copies(declare: Callable[..., Declared]) -> None:
    """Children inherit ``protect``, and Pulumi refuses to replace a protected resource: a copy is replaced
    (a new name) at every change of its content, so a protected copy would block every config release."""
    app = {**{k: v for k, v in full_app().items() if k != "replicas"}, "autoscaler": {"maxReplicas": 4}, "disruptionBudget": {"minAvailable": 1}}
    d = declare(component(app, opts=pulumi.ResourceOptions(protect=True)))
    copies = {"web-configmap-settings", "web-secret-creds"}
    assert {name: d.protect[name] for name in copies} == dict.fromkeys(copies, False)
    others = set(d.resources) - copies
    assert {"web-stable", "web-route", "web-stable-autoscaler", "web-disruption-budget"} <= others
    assert {name: d.protect[name] for name in others} == dict.fromkeys(others, True)


def test_config_given_to_the_component_may_hold_outputs(declare: Callable[..., Declared]) -> None:
    """A program passes ConfigMap data it declared itself (``cm.data``): Outputs, resolved before hashing."""
    app = {k: v for k, v in full_app().items() if k != "configMaps"}
    d = declare(component(app, config_maps={"settings": {"level": pulumi.Output.from_input("warn")}}))
    assert d.inputs("web-configmap-settings")["metadata"]["name"] == "settings-" + workload.content_hash({"level": "warn"})[:10]
    assert d.inputs("web-configmap-settings")["data"] == {"level": "warn"}


def test_config_the_template_reads_but_the_component_is_not_given_is_named_in_a_warning(
        declare: Callable[..., Declared], monkeypatch: pytest.MonkeyPatch) -> None:
    """Config the program does not give is outside the template's hash: an edit of it reaches both tracks
    with no release. Legitimate (config kept elsewhere), so the up goes on, but never silently."""
    warned: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *args, **kwargs: warned.append(message))
    template = full_template()
    template["spec"]["containers"][1]["env"] = [{"name": "TLS", "valueFrom": {"secretKeyRef": {"name": "tls", "key": "crt"}}}]
    declare(component({"name": "web", "namespace": "shop"}, template=template, config_maps={"settings": {"level": "info"}}))
    [message] = warned
    assert "Secret creds" in message and "Secret tls" in message and "settings" not in message
    assert "not released" in message
    warned.clear()
    declare(component(full_app()))  # every object it reads given: nothing to say
    assert warned == []


def test_the_template_argument_takes_pulumi_kubernetes_args(declare: Callable[..., Declared]) -> None:
    template = k8s.core.v1.PodTemplateSpecArgs(
        metadata=k8s.meta.v1.ObjectMetaArgs(labels={"app": "web"}),
        spec=k8s.core.v1.PodSpecArgs(containers=[k8s.core.v1.ContainerArgs(
            name="web", image="registry.example.com/shop/web:1.0.0", ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=9090)])]),
    )
    d = declare(component({"name": "web", "namespace": "shop"}, template=template))
    container = d.template("canary")["spec"]["containers"][0]
    assert container == {"name": "web", "image": "registry.example.com/shop/web:1.0.0", "ports": [{"name": "http", "containerPort": 9090}]}
    assert d.template("canary")["metadata"]["labels"]["app"] == "web-canary"
    assert reached(d, "stable") == 9090


def test_an_invalid_template_stops_the_program_naming_the_field(declare: Callable[..., Declared]) -> None:
    template = full_template()
    template["spec"]["containers"][0]["imagePullPolicy"] = 3
    template["spec"]["containers"][1]["imag"] = "typo"
    with pytest.raises(pulumi.RunError) as caught:
        declare(component({"name": "web", "namespace": "shop"}, template=template))
    message = str(caught.value)
    assert "template.spec.containers[0].imagePullPolicy" in message and "must be a string" in message
    assert "template.spec.containers[1].imag" in message and "did you mean image" in message


NO_IMAGE = {"name": "web", "namespace": "shop"}
OUTPUT_RULE = "must be a plain value, not a pulumi Output: the component checks it and pins releases by it before the up, when an Output has no value yet; "


def sidecar_first() -> dict[str, Any]:
    """A sidecar listed first, and the app's container not named like the app."""
    return {"spec": {"containers": [
        {"name": "cloud-sql-proxy", "image": "gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.11", "ports": [{"containerPort": 5432}]},
        {"name": "api", "image": "registry.example.com/shop/api:1", "ports": [{"name": "http", "containerPort": 8080}]},
    ]}}


def several_ports(*ports: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "web", "image": "registry.example.com/shop/web:1", "ports": list(ports)}]}}


@pytest.mark.parametrize(("args", "config", "field_", "rule"), [
    ({"app": {**NO_IMAGE, "container": "wbe"}, "template": full_template()}, None, "app.container", "names no container of the template (got 'wbe')"),
    ({"rollout": "Direct"}, None, "rollout", "must be 'checked' or 'direct' (got 'Direct')"),
    ({}, {"canary:rollout": "yolo"}, "canary:rollout", "must be 'checked' or 'direct' (got 'yolo')"),
    ({"app": {"name": "Web", "namespace": "shop"}}, None, "app.name", "must be a DNS-1123 label"),
    ({"app": "web"}, None, "app", "must be a mapping or canary's App (got str)"),
    ({"gateway": ["public"]}, None, "gateway", "must be a mapping or canary's Gateway (got list)"),
    ({"app": NO_IMAGE, "template": "web:1"}, None, "template", "must be a pod template"),
    ({"app": NO_IMAGE, "template": {"spec": {"containers": [{"name": "web"}]}}}, None, "app.image", "is required: the template's main container web has no image"),
    ({"app": NO_IMAGE}, None, "app.image", "is required: the image the app runs"),
    ({"app": {**NO_IMAGE, "env": {"LEVEL": "warn"}}, "template": full_template()}, None, "app.env", "describe the pod either with template or with env/resources/probes"),
    ({"app": NO_IMAGE, "template": {"spec": {"containers": [{"name": "web", "image": pulumi.Output.from_input("registry.example.com/shop/web:1")}]}}},
     None, "template.spec.containers[0].image", "must be a plain value, not a pulumi Output"),
    ({"app": {**NO_IMAGE, "image": "registry.example.com/shop/api:2"}, "template": sidecar_first()}, None, "app.container",
     "is required: the template has several containers (cloud-sql-proxy, api) and none is named like the app (web)"),
    ({"app": NO_IMAGE, "template": several_ports({"name": "metrics", "containerPort": 9090}, {"name": "grpc", "containerPort": 8081})}, None,
     "app.port", "is required: the main container web lists several ports (metrics 9090, grpc 8081) and none is named http"),
    ({"app": {**SIMPLE_APP, "namespace": pulumi.Output.from_input("shop")}}, None, "app.namespace",
     OUTPUT_RULE + "pass the namespace's name itself"),
    ({"app": {**SIMPLE_APP, "image": pulumi.Output.from_input("registry.example.com/shop/web:2")}}, None, "app.image",
     OUTPUT_RULE + "pass the image reference itself"),
    ({"app": pulumi.Output.from_input(SIMPLE_APP)}, None, "app", "must be a plain value, not a pulumi Output"),
    ({"app": {**full_app(), "secrets": {"creds": {"stringData": {"TOKEN": pulumi.Output.secret("s3cr3t")}}}}}, None, "app.secrets.creds.stringData.TOKEN",
     OUTPUT_RULE + "give the data with the component's config_maps= or secrets= instead"),
    ({"gateway": {"parentRefs": [{"name": pulumi.Output.from_input("public")}]}}, None, "gateway.parentRefs[0].name",
     "must be a plain value, not a pulumi Output"),
    ({"config_maps": ["settings"]}, None, "config_maps", "must be a mapping of name to data"),
    ({"config_maps": {"settings": {"a": "b"}}}, None, "config_maps.settings", "needs a template that reads it"),
    ({"config_maps": {"s" * 243: {"a": "b"}}}, None, f"config_maps.{'s' * 243}", "must be at most 242 characters (243 given)"),
    ({"adopt": ["web"]}, None, "adopt", "must be a mapping of deployment, service, route"),
], ids=["container-typo", "rollout-typo", "rollout-config-typo", "app-name", "app-not-a-mapping", "gateway-not-a-mapping", "template-not-a-mapping",
        "template-without-image", "simple-form-without-image", "template-and-simple-fields", "template-holding-an-output", "sidecar-first",
        "several-ports", "namespace-output", "image-output", "app-output", "secret-output", "gateway-output", "config-maps-list", "config-maps-simple-form", "config-map-name-too-long-to-copy", "adopt-list"])
def test_a_bad_argument_of_the_component_stops_the_program_with_a_run_error_naming_it(
        declare: Callable[..., Declared], args: dict[str, Any], config: dict[str, Any] | None, field_: str, rule: str) -> None:
    """As invalid stack config does: Pulumi prints a RunError's message whole, and a traceback for anything else."""
    given = {"app": SIMPLE_APP, "gateway": GATEWAY, **args}
    with pytest.raises(pulumi.RunError) as caught:
        declare(lambda: program.CanaryDeployment("web", given.pop("app"), given.pop("gateway"), **given), config)
    assert str(caught.value).startswith("invalid CanaryDeployment web:\n")
    assert f"  - {field_}: {rule}" in str(caught.value), str(caught.value)


def test_the_services_target_the_port_named_http_of_several(declare: Callable[..., Declared]) -> None:
    d = declare(component(NO_IMAGE, template=several_ports({"name": "metrics", "containerPort": 9090}, {"name": "http", "containerPort": 8080})))
    assert {reached(d, s) for s in ("stable", "canary", "apex")} == {8080}
    assert d.exported["app"]["port"] == 8080


def test_app_container_and_app_port_name_the_main_container_and_port(declare: Callable[..., Declared]) -> None:
    app = {**NO_IMAGE, "image": "registry.example.com/shop/api:2", "container": "api", "port": 8080}
    d = declare(component(app, template=sidecar_first()))
    assert [c["image"] for c in d.template("stable")["spec"]["containers"]] == ["gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.11", "registry.example.com/shop/api:2"]
    assert reached(d, "stable") == 8080
    # one container is the main one, whatever its name
    alone = {"spec": {"containers": [{"name": "api", "image": "registry.example.com/shop/api:1", "ports": [{"containerPort": 7000}]}]}}
    d = declare(component({**NO_IMAGE, "image": "registry.example.com/shop/api:2"}, template=alone))
    assert d.template("stable")["spec"]["containers"][0]["image"] == "registry.example.com/shop/api:2"
    assert d.inputs("web-stable-service")["spec"]["ports"][0]["targetPort"] == 7000  # an unnamed port: by its number


# --- adopting what a program declared before canary ----------------------------------------------


def root_urn(type_: str, name: str) -> str:
    return f"urn:pulumi:{STACK}::canary::{type_}::{name}"


def test_adopt_aliases_the_programs_deployment_service_and_route_onto_the_component(declare: Callable[..., Declared]) -> None:
    old_route = root_urn("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", "public-route")
    d = declare(component(adopt={"deployment": "web", "service": pulumi.Alias(name="web-svc", parent=pulumi.ROOT_STACK_RESOURCE), "route": old_route}))
    assert d.aliases["web-stable"] == [root_urn("kubernetes:apps/v1:Deployment", "web")]
    assert d.aliases["web-apex-service"] == [root_urn("kubernetes:core/v1:Service", "web-svc")]
    assert d.aliases["web-route"] == [old_route]
    assert not any(aliases for name, aliases in d.aliases.items() if name not in ("web-stable", "web-apex-service", "web-route"))
    assert d.hooks["web-stable"] == ["canary-stable-guard-web"]  # adopting changes nothing else


def _route(*rules: Mapping[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "web"}, "spec": {"parentRefs": [{"name": "public"}], "hostnames": ["shop.example.com"], "rules": list(rules)}}


def test_adopting_a_route_with_rules_canary_would_drop_is_refused_naming_them(declare: Callable[..., Declared]) -> None:
    # canary's route sends all of the app's requests to it: /static to a CDN proxy was silently sent to web, and
    # under plain `pulumi up` the route guard read the extra rule as a release's A/B rule ("a release is in progress")
    ours = _route(*routing.route_spec("web", [{"name": "public"}], ["shop.example.com"], 80, routing.AT_REST)["rules"])
    theirs = _route({"matches": [{"path": {"type": "PathPrefix", "value": "/static"}}], "backendRefs": [{"name": "cdn-proxy", "port": 80}]},
                    {"backendRefs": [{"name": "web", "port": 80}]})
    error = run_guard(declare, lambda app, stack: program._adopted_route_guard(app), theirs, ours)
    assert error is not None and "rules[0] (paths /static) to cdn-proxy" in str(error) and "rules[1]" not in str(error), error
    redirect = _route({"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}], "filters": [{"type": "RequestRedirect"}]},
                      {"backendRefs": [{"name": "web", "port": 80}]})
    assert "rules[0] (paths /old) without backends" in str(run_guard(declare, lambda app, stack: program._adopted_route_guard(app), redirect, ours))
    # a route that sends everything to the app, and canary's own route (every later update), are taken over
    plain = _route({"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [{"name": "web", "port": 80}]})
    assert run_guard(declare, lambda app, stack: program._adopted_route_guard(app), plain, ours) is None
    assert run_guard(declare, lambda app, stack: program._adopted_route_guard(app), ours, ours) is None
    d = declare(component(adopt={"route": "web"}))
    assert d.hooks["web-route"] == ["canary-adopted-route-guard-web", "canary-route-guard-web"]
    assert declare(component()).hooks["web-route"] == ["canary-route-guard-web"]


def test_without_adopt_nothing_is_aliased(declare: Callable[..., Declared]) -> None:
    assert not any(declare(component()).aliases.values())


def test_adopt_refuses_a_part_it_does_not_know(declare: Callable[..., Declared]) -> None:
    with pytest.raises(pulumi.RunError) as caught:
        declare(component(adopt={"deployment": "web", "ingress": "web"}))
    assert "adopt.ingress: " in str(caught.value) and "is not one of deployment, service, route" in str(caught.value)


def test_the_apex_service_and_the_route_wait_for_the_stable_deployment(declare: Callable[..., Declared]) -> None:
    """An adopted Service or route moves to stable only once stable is Ready: traffic never meets a Service without pods."""
    d = declare(component())
    assert d.urns["web-stable"] in d.dependencies["web-apex-service"]
    assert d.urns["web-stable"] in d.dependencies["web-route"]


LOAD_BALANCED = {
    "metadata": {"labels": {"app": "web", "team": "shop"}, "annotations": {"service.beta.kubernetes.io/aws-load-balancer-scheme": "internet-facing"}},
    "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "loadBalancerSourceRanges": ["10.0.0.0/8"],
             "ports": [{"name": "grpc", "port": 9000, "targetPort": 9000}, {"name": "metrics", "port": 9090, "targetPort": "metrics"}]},
}


def test_service_declares_what_the_adopted_service_carried_beside_canarys_port(declare: Callable[..., Declared]) -> None:
    """Server-side apply removes what the Service's old declaration held and the new one does not: a LoadBalancer
    reverting to ClusterIP deletes its load balancer, a ServiceMonitor loses its label and its port."""
    d = declare(component(service=LOAD_BALANCED, adopt={"service": "web"}))
    apex = d.inputs("web-apex-service")
    assert apex["metadata"]["name"] == "web"
    assert apex["metadata"]["labels"] == {"app": "web", "team": "shop", "canary.dev/app": "web"}
    assert apex["metadata"]["annotations"] == LOAD_BALANCED["metadata"]["annotations"]
    assert (apex["spec"]["type"], apex["spec"]["externalTrafficPolicy"], apex["spec"]["loadBalancerSourceRanges"]) == ("LoadBalancer", "Local", ["10.0.0.0/8"])
    assert apex["spec"]["selector"] == STABLE_SELECTOR
    assert [(p["name"], p["port"]) for p in apex["spec"]["ports"]] == [("http", 80), ("grpc", 9000), ("metrics", 9090)]
    assert reached(d, "apex") == 8080
    # the tracks' Services are canary's own: nothing selects them but the route
    for track in ("stable", "canary"):
        assert "type" not in d.inputs(f"web-{track}-service")["spec"] and len(d.inputs(f"web-{track}-service")["spec"]["ports"]) == 1


def test_service_takes_pulumi_kubernetes_args_and_outputs_where_canary_reads_nothing(declare: Callable[..., Declared]) -> None:
    service = {"metadata": k8s.meta.v1.ObjectMetaArgs(annotations={"example.com/certificate": pulumi.Output.from_input("arn:cert")}),
               "spec": k8s.core.v1.ServiceSpecArgs(type="NodePort", ports=[k8s.core.v1.ServicePortArgs(name="admin", port=8081, node_port=30081)])}
    apex = declare(component(service=service)).inputs("web-apex-service")
    assert apex["metadata"]["annotations"] == {"example.com/certificate": "arn:cert"}
    assert apex["spec"]["type"] == "NodePort" and apex["spec"]["ports"][1] == {"name": "admin", "port": 8081, "nodePort": 30081}


def test_without_service_the_apex_service_is_canarys_alone(declare: Callable[..., Declared]) -> None:
    apex = declare(component()).inputs("web-apex-service")
    assert apex["metadata"]["labels"] == {"canary.dev/app": "web"} and "annotations" not in apex["metadata"]
    assert set(apex["spec"]) == {"selector", "ports"} and len(apex["spec"]["ports"]) == 1


@pytest.mark.parametrize(("service", "field_", "rule"), [
    ({"spec": {"selector": {"app": "web"}}}, "service.spec.selector", "is canary's: the apex Service selects the stable pods only"),
    ({"spec": {"ports": [{"name": "http", "port": 8081}]}}, "service.spec.ports[0].name", "clashes with canary's port http (port 80, app.servicePort)"),
    ({"spec": {"ports": [{"name": "web", "port": 80}]}}, "service.spec.ports[0].port", "clashes with canary's port http (80/TCP, app.servicePort)"),
    ({"spec": {"ports": [{"port": 9090}]}}, "service.spec.ports[0].name", "is required: the apex Service has canary's port http beside it"),
    ({"spec": {"ports": [{"name": "a", "port": 9090}, {"name": "b", "port": 9090}]}}, "service.spec.ports[1].port", "is the port (9090/TCP) of service.spec.ports[0] too"),
    ({"spec": {"ports": [{"name": "a", "port": 9090}, {"name": "a", "port": 9091}]}}, "service.spec.ports[1].name", "is the name of service.spec.ports[0] too"),
    ({"spec": {"tpye": "LoadBalancer"}}, "service.spec.tpye", "is not a field of ServiceSpec (did you mean type?)"),
    ({"spec": {"ports": [{"name": "grpc", "port": "9000"}]}}, "service.spec.ports[0].port", "must be an integer"),
    ({"spec": {"type": "ExternalName", "externalName": "web.example.com"}}, "service.spec.type", "must not be ExternalName"),
    ({"metadata": {"name": "web-svc"}}, "service.metadata.name", "is canary's: the apex Service is named like the app"),
    ({"metadata": {"labels": {"canary.dev/app": "api"}}}, "service.metadata.labels.canary.dev/app", "is canary's: it marks the apex Service of web"),
    ({"kind": "Service"}, "service.kind", "is not one of metadata, spec"),
    ({"spec": {"ports": [{"name": "grpc", "port": pulumi.Output.from_input(9000)}]}}, "service.spec.ports[0].port", "must be a plain value, not a pulumi Output"),
    (["web"], "service", "must be a mapping of metadata and spec"),
    # what the API server refuses, after stable was made (the up failing halfway)
    ({"metadata": {"labels": {"tier": 1}}}, "service.metadata.labels.tier", "must be a string (quote it)"),
    ({"metadata": {"labels": {"bad key!": "x"}}}, "service.metadata.labels.bad key!", "must be a qualified name"),
    ({"metadata": {"labels": {"tier": "front end"}}}, "service.metadata.labels.tier", "must be a label value"),
    ({"metadata": {"annotations": {"lb": True}}}, "service.metadata.annotations.lb", "must be a string (quote it)"),
    ({"spec": {"ports": [{"name": "metrics", "port": 99999}]}}, "service.spec.ports[0].port", "must be a port number, 1 to 65535"),
    ({"spec": {"ports": [{"name": "Metrics_Port", "port": 9090}]}}, "service.spec.ports[0].name", "must be a port name"),
    ({"spec": {"ports": [{"name": "web", "port": 80, "protocol": "tcp"}]}}, "service.spec.ports[0].protocol", "must be TCP, UDP or SCTP"),
    ({"spec": {"ports": [{"name": "grpc", "port": 9000, "appProtocol": "Kubernetes.IO/h2c"}]}}, "service.spec.ports[0].appProtocol",
     "must be an application protocol as Kubernetes takes it"),
    ({"spec": {"ports": [{"name": "grpc", "port": 9000, "appProtocol": 2}]}}, "service.spec.ports[0].appProtocol", "must be a string"),
], ids=["selector", "port-name-http", "port-80", "unnamed-port", "duplicate-port", "duplicate-name", "typo", "port-string", "external-name",
        "metadata-name", "app-label", "kind", "port-output", "not-a-mapping", "label-number", "label-key", "label-value", "annotation-bool",
        "port-range", "port-name", "protocol-case", "app-protocol", "app-protocol-number"])
def test_a_bad_service_argument_stops_the_program_naming_the_field(declare: Callable[..., Declared], service: Any, field_: str, rule: str) -> None:
    with pytest.raises(pulumi.RunError) as caught:
        declare(component(service=service))
    assert f"  - {field_}: " in str(caught.value) and rule in str(caught.value), str(caught.value)


def test_a_service_port_of_canarys_number_on_another_protocol_is_accepted(declare: Callable[..., Declared]) -> None:
    apex = declare(component(service={"spec": {"ports": [{"name": "quic", "port": 80, "protocol": "UDP"}]}})).inputs("web-apex-service")
    assert [(p["name"], p["port"], p["protocol"]) for p in apex["spec"]["ports"]] == [("http", 80, "TCP"), ("quic", 80, "UDP")]


def test_route_declares_the_labels_and_annotations_the_adopted_route_carried(declare: Callable[..., Declared]) -> None:
    """Server-side apply removes what the route's old declaration held and the new one does not: external-dns's
    annotations, the label a policy selects. ``route=`` declares them, as ``service=`` does the Service's."""
    given = {"metadata": {"labels": {"team": "shop"}, "annotations": {"external-dns.alpha.kubernetes.io/ttl": pulumi.Output.from_input("60")}}}
    route = declare(component(route=given, adopt={"route": "web"})).inputs("web-route")
    assert route["metadata"] == {"name": "web", "namespace": "shop", "labels": {"team": "shop", "canary.dev/app": "web"},
                                 "annotations": {"external-dns.alpha.kubernetes.io/ttl": "60"}}
    assert declare(component()).inputs("web-route")["metadata"] == {"name": "web", "namespace": "shop", "labels": {"canary.dev/app": "web"}}


@pytest.mark.parametrize(("route", "field_", "rule"), [
    ({"metadata": {"name": "public-route"}}, "route.metadata.name", "is canary's: the route is named like the app"),
    ({"metadata": {"labels": {"canary.dev/app": "api"}}}, "route.metadata.labels.canary.dev/app", "is canary's: it marks the route of web"),
    ({"spec": {"hostnames": ["shop.example.com"]}}, "route.spec", "is not metadata: canary declares the route's spec"),
    ({"metadata": {"labels": {"team": pulumi.Output.from_input("shop")}, "generateName": pulumi.Output.from_input("web-")}}, "route.metadata.generateName",
     "must be a plain value, not a pulumi Output"),
    ({"metadata": {"annotations": {"ttl": 60}}}, "route.metadata.annotations.ttl", "must be a string (quote it)"),
    ("web", "route", "must be a mapping of metadata"),
], ids=["name", "app-label", "spec", "output", "annotation-number", "not-a-mapping"])
def test_a_bad_route_argument_stops_the_program_naming_the_field(declare: Callable[..., Declared], route: Any, field_: str, rule: str) -> None:
    with pytest.raises(pulumi.RunError) as caught:
        declare(component(route=route))
    assert f"  - {field_}: " in str(caught.value) and rule in str(caught.value), str(caught.value)


EXAMPLE = ROOT / "examples" / "existing-program"
EXAMPLE_CONFIG = {"shop:gateway": {"name": "lab", "namespace": "default", "sectionName": "web"}, "shop:hostname": "shop.lab.test",
                  "shop:image": "demo:v1", "shop:apiToken": "s3cr3t"}


def example(file: str) -> Callable[[], Any]:
    return lambda: runpy.run_path(str(EXAMPLE / file), run_name="__main__")


def test_the_example_after_adopting_canary_takes_over_what_it_declared_before(declare: Callable[..., Declared]) -> None:
    before = declare(example("before.py"), EXAMPLE_CONFIG, ["shop:apiToken"], project="shop")
    # the mock monitor puts the stack's type in the URN of a resource at the root; the engine does not (nor does an alias)
    old = {urn.rsplit("::", 2)[1]: urn for urn in (u.replace("::pulumi:pulumi:Stack$", "::") for u in before.registered) if urn.endswith("::web")}
    assert set(old) == {"kubernetes:apps/v1:Deployment", "kubernetes:core/v1:Service", "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute"}
    after = declare(example("__main__.py"), EXAMPLE_CONFIG, ["shop:apiToken"], project="shop")
    assert after.aliases["web-stable"] == [old["kubernetes:apps/v1:Deployment"]]
    assert after.aliases["web-apex-service"] == [old["kubernetes:core/v1:Service"]]
    assert after.aliases["web-route"] == [old["kubernetes:gateway.networking.k8s.io/v1:HTTPRoute"]]
    container = after.template("stable")["spec"]["containers"][0]
    assert container["image"] == "demo:v1" and container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["envFrom"] == [{"secretRef": {"name": after.inputs("web-secret-web-secrets")["metadata"]["name"]}}]
    assert after.inputs("web-configmap-web-config")["data"] == before.inputs("web-config")["data"]
    assert after.inputs("web-apex-service")["metadata"]["name"] == "web" and after.inputs("web-route")["metadata"]["name"] == "web"


def test_the_example_after_adopting_canary_declares_all_its_service_declared_before(declare: Callable[..., Declared]) -> None:
    """What the adopted Service's old declaration held and the new one lacks, the adoption's apply removes."""
    old = declare(example("before.py"), EXAMPLE_CONFIG, ["shop:apiToken"], project="shop").inputs("web", "kubernetes:core/v1:Service")
    new = declare(example("__main__.py"), EXAMPLE_CONFIG, ["shop:apiToken"], project="shop").inputs("web-apex-service")
    assert old["metadata"]["labels"].items() <= new["metadata"]["labels"].items()
    assert (old["metadata"].get("annotations") or {}).items() <= (new["metadata"].get("annotations") or {}).items()
    assert {k: v for k, v in old["spec"].items() if k not in ("selector", "ports")} == {k: v for k, v in new["spec"].items() if k not in ("selector", "ports")}
    # the same ports by name and number (the http port targets the container's port by number now, the same port)
    assert {(p["name"], p["port"]) for p in old["spec"]["ports"]} == {(p["name"], p["port"]) for p in new["spec"]["ports"]}


def test_the_examples_readme_shows_the_diff_between_its_two_programs() -> None:
    before, after = ((EXAMPLE / f).read_text().splitlines(keepends=True) for f in ("before.py", "__main__.py"))
    diff = "".join(difflib.unified_diff(before, after, "before.py", "__main__.py"))
    assert f"```diff\n{diff}```" in (EXAMPLE / "README.md").read_text()


# --- extras ---------------------------------------------------------------------------------------


def test_an_autoscaler_gives_each_track_one_and_stable_its_minimum_when_created(declare: Callable[..., Declared]) -> None:
    app = {k: v for k, v in SIMPLE_APP.items() if k != "replicas"}
    metrics = [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    d = declare(component({**app, "autoscaler": {"minReplicas": 2, "maxReplicas": 6, "metrics": metrics}}))
    assert {name for typ, name in d.kinds() if typ == "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"} == {"web-stable-autoscaler", "web-canary-autoscaler"}
    for track in ("stable", "canary"):
        hpa = d.inputs(f"web-{track}-autoscaler")
        assert hpa["metadata"]["name"] == f"web-{track}"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"web-{track}"}
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
        assert hpa["spec"]["metrics"] == metrics
        # the autoscaler owns the size: Pulumi must not fight it over field ownership
        assert d.inputs(f"web-{track}")["metadata"]["annotations"] == {"pulumi.com/patchForce": "true"}
    # stable starts at the autoscaler's minimum (without replicas a Deployment starts with one pod), and only then:
    # later ups leave the size to the autoscaler, and a size declared before (a Deployment adopted, this app before its
    # autoscaler) is kept rather than dropped, which would reset it to one pod
    assert d.inputs("web-stable")["spec"]["replicas"] == 2
    assert d.ignore_changes["web-stable"] == ["spec.replicas"]
    assert d.create_hooks["web-stable"] == ["canary-stable-size-guard-web"]
    assert d.inputs("web-canary")["spec"]["replicas"] == 0  # the canary's size is the release's
    assert not d.ignore_changes["web-canary"]
    urns = d.exported["urns"]
    assert urns["stableAutoscaler"] == d.urns["web-stable-autoscaler"]
    assert urns["canaryAutoscaler"] == d.urns["web-canary-autoscaler"]


def test_without_an_autoscaler_stables_size_is_declared_at_every_up(declare: Callable[..., Declared]) -> None:
    d = declare(component())
    assert d.inputs("web-stable")["spec"]["replicas"] == 3
    assert not d.ignore_changes["web-stable"] and not d.create_hooks["web-stable"]


def test_traffic_moves_to_stable_only_once_its_autoscaler_is_there(declare: Callable[..., Declared]) -> None:
    """An adopted Service or route moves to stable once stable is Ready at its minimum and its autoscaler keeps that size."""
    app = {k: v for k, v in SIMPLE_APP.items() if k != "replicas"}
    d = declare(component({**app, "autoscaler": {"minReplicas": 3, "maxReplicas": 6}}, adopt={"deployment": "web", "service": "web", "route": "web"}))
    for moved in ("web-apex-service", "web-route"):
        assert {d.urns["web-stable"], d.urns["web-stable-autoscaler"]} <= d.dependencies[moved], moved
    assert d.urns["web-canary"] in d.dependencies["web-canary-autoscaler"]


def test_the_stable_size_guard_refuses_to_create_stable_without_a_size(declare: Callable[..., Declared]) -> None:
    """What ignore_changes makes of stable's declared size when it replaces a Deployment that declared none."""
    guard = lambda app, stack: program._stable_size_guard(app, 2)  # noqa: E731
    error = run_guard(declare, guard, {}, {"metadata": {"name": "web-stable"}, "spec": {"template": pod("web:1")}})
    assert isinstance(error, RuntimeError)
    assert "web-stable would start with one pod" in str(error) and "leave deployment out of adopt" in str(error)
    assert run_guard(declare, guard, {}, deployment(pod("web:1"), 2.0)) is None
    # the replaced Deployment declared fewer than its autoscaler keeps (1, scaled to 20 since): refused too
    fewer = run_guard(declare, guard, {}, deployment(pod("web:1"), 1.0))
    assert isinstance(fewer, RuntimeError) and "would start with 1 pod(s), below autoscaler.minReplicas (2)" in str(fewer)


def test_a_size_left_to_the_default_once_declared_is_refused_before_stable_is_resized(declare: Callable[..., Declared]) -> None:
    """An autoscaler removed (or replicas) without replicas set: stable would be sized to the default one pod, whatever
    it runs now, under all the traffic. A declared size is applied over the autoscaler's manager, which owns it after."""
    default_size = {k: v for k, v in SIMPLE_APP.items() if k != "replicas"}
    forced = {"pulumi.com/patchForce": "true"}
    undeclared = declare(component(default_size))
    assert "canary-undeclared-size-guard-web" in undeclared.hooks["web-stable"]
    assert undeclared.inputs("web-stable")["metadata"]["annotations"] == {}
    declared = declare(component())
    assert "canary-undeclared-size-guard-web" not in declared.hooks["web-stable"]
    assert declared.inputs("web-stable")["metadata"]["annotations"] == forced
    assert declared.inputs("web-canary")["metadata"]["annotations"] == {}  # the canary's size is the release's
    autoscaled = declare(component({**default_size, "autoscaler": {"maxReplicas": 4}}))
    assert "canary-undeclared-size-guard-web" not in autoscaled.hooks["web-stable"]
    assert autoscaled.inputs("web-stable")["metadata"]["annotations"] == forced

    guard = lambda app, stack: program._undeclared_size_guard(app, "shop")  # noqa: E731
    was_declared = {**deployment(pod("web:1"), 2.0), "metadata": {"name": "web-stable", "annotations": forced}}
    error = run_guard(declare, guard, was_declared, deployment(pod("web:1"), 1.0))
    assert isinstance(error, RuntimeError)
    assert "web's autoscaler or replicas is removed and its replicas is not set" in str(error)
    assert "web-stable would be sized to the default of 1 pod" in str(error) and "kubectl -n shop get deployment web-stable" in str(error)
    # any other update of a stable whose size was never declared passes
    assert run_guard(declare, guard, deployment(pod("web:1"), 1.0), deployment(pod("web:2"), 1.0)) is None


def test_a_disruption_budget_protects_stable_pods(declare: Callable[..., Declared]) -> None:
    d = declare(component({**SIMPLE_APP, "disruptionBudget": {"maxUnavailable": "25%"}}))
    pdb = d.resources["web-disruption-budget"]
    assert pdb.typ == "kubernetes:policy/v1:PodDisruptionBudget"
    assert pdb.inputs["metadata"]["name"] == "web-stable"
    assert pdb.inputs["spec"] == {"selector": {"matchLabels": STABLE_SELECTOR}, "maxUnavailable": "25%"}
    assert d.exported["urns"]["disruptionBudget"] == d.urns["web-disruption-budget"]


def test_a_pod_monitor_scrapes_both_tracks(declare: Callable[..., Declared]) -> None:
    prometheus = {"podMonitor": {"interval": "30s", "path": "/stats"}}
    scraped = {"canary:prometheus": {"address": "http://prometheus.monitoring:9090", "scrapeInterval": "30s"}}
    d = declare(component(prometheus=prometheus), scraped)
    monitor = d.resources["web-pod-monitor"]
    assert monitor.typ == "kubernetes:monitoring.coreos.com/v1:PodMonitor"
    assert monitor.inputs["metadata"]["name"] == "web"
    assert monitor.inputs["spec"] == {"selector": {"matchLabels": {"canary.dev/app": "web"}},
                                      "podMetricsEndpoints": [{"portNumber": 8080, "path": "/stats", "interval": "30s"}]}
    assert d.exported["urns"]["podMonitor"] == d.urns["web-pod-monitor"]
    # a release moving the port: stable's pods are still scraped where they serve (they went unscraped: stable's
    # series stopped, and every compare check read "stable has no data")
    release = {"web": {"release": "r1", "stable": pin("registry.example.com/shop/web:1.0.0", "5555aaaa5555aaaa", port=8080), "route": {"weight": 10}}}
    moved = declare(component({**SIMPLE_APP, "image": "registry.example.com/shop/web:2.0.0", "port": 9090}, prometheus=prometheus),
                    {**scraped, "canary:release": release})
    assert [e["portNumber"] for e in moved.resources["web-pod-monitor"].inputs["spec"]["podMetricsEndpoints"]] == [8080, 9090]


def test_no_extras_unless_asked(declare: Callable[..., Declared]) -> None:
    d = declare(component(prometheus={}))
    assert {typ for typ, _ in d.kinds()} == {"canary:index:CanaryDeployment", "kubernetes:apps/v1:Deployment",
                                             "kubernetes:core/v1:Service", "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute"}


# --- what the component declares and the stack config says -------------------------------------


STACK_PROMETHEUS = {"address": "http://prometheus.monitoring:9090"}


@pytest.mark.parametrize(("key", "value"), [("address", "http://prometheus.monitoring:9090"), ("podLabel", "pod"), ("scrapeInterval", "1m"),
                                            ("timeout", "5s"), ("token", "s3cr3t-t0ken"), ("headers", {"X-Scope-OrgID": "s3cr3t-tenant"})])
def test_the_components_prometheus_takes_the_pod_monitor_alone(declare: Callable[..., Declared], key: str, value: Any) -> None:
    # releases read how to query Prometheus, and how often it scrapes, from canary:prometheus alone: given to the
    # component they were silently ignored (a podLabel: pod never reached the queries)
    with pytest.raises(pulumi.RunError) as caught:
        declare(component(prometheus={"podMonitor": {"interval": "15s"}, key: value}), {"canary:prometheus": STACK_PROMETHEUS})
    message = str(caught.value)
    assert f"prometheus.{key}: is the stack config's: releases read it from canary:prometheus, never from the component" in message
    assert f"pulumi config set --path canary:prometheus.{key}" in message and "s3cr3t" not in message


def test_a_component_pod_monitor_alone_is_declared_without_prometheus_address(declare: Callable[..., Declared]) -> None:
    # the component never queries Prometheus: its address was required, and then ignored
    d = declare(component(prometheus={"podMonitor": {"path": "/stats"}}))
    assert d.inputs("web-pod-monitor")["spec"]["podMetricsEndpoints"] == [{"portNumber": 8080, "path": "/stats", "interval": "15s"}]
    with pytest.raises(pulumi.RunError) as caught:
        declare(component(prometheus={"podMonitor": {"interval": "15s"}, "scrape": "1m"}))
    assert "prometheus.scrape: is not a field of the component's prometheus: it takes podMonitor" in str(caught.value)


@pytest.mark.parametrize("stack_prometheus", [{**STACK_PROMETHEUS, "scrapeInterval": "1m"}, {**STACK_PROMETHEUS, "podMonitor": {"interval": "1m"}}])
def test_a_pod_monitor_scrapes_as_often_as_releases_judge(declare: Callable[..., Declared], stack_prometheus: dict[str, Any]) -> None:
    # a PodMonitor scraping every minute under the default 15s: each judge's step was 30s, its rate over
    # 30s of 1m scrapes empty, and every release rolled back for want of data
    monitor = component(prometheus={"podMonitor": {"interval": "1m"}})
    for config in ({}, {"canary:prometheus": STACK_PROMETHEUS}):
        with pytest.raises(pulumi.RunError) as caught:
            declare(monitor, config)
        assert ("prometheus.podMonitor.interval: differs from the scrape interval releases judge web with, 15s "
                "(canary:prometheus.scrapeInterval, unset: 15s)") in str(caught.value)
    d = declare(monitor, {"canary:prometheus": stack_prometheus})
    assert d.inputs("web-pod-monitor")["spec"]["podMetricsEndpoints"][0]["interval"] == "1m"


@pytest.mark.parametrize(("stack", "advice", "advised"), [
    ({}, "Set canary:prometheus in the stack config, with its address (where releases query Prometheus, required) and scrapeInterval 1m: "
         "pulumi config set --path canary:prometheus.address <url>, then pulumi config set --path canary:prometheus.scrapeInterval 1m",
     {**STACK_PROMETHEUS, "scrapeInterval": "1m"}),
    ({"canary:prometheus": STACK_PROMETHEUS}, "Set canary:prometheus.scrapeInterval to 1m in the stack config", {**STACK_PROMETHEUS, "scrapeInterval": "1m"}),
    ({"canary:prometheus": {**STACK_PROMETHEUS, "podMonitor": {"interval": "15s"}}}, "Set canary:prometheus.podMonitor.interval to 1m in the stack config",
     {**STACK_PROMETHEUS, "podMonitor": {"interval": "1m"}}),
], ids=["no-prometheus", "prometheus", "stack-pod-monitor"])
def test_a_pod_monitor_off_the_stack_s_scrape_is_refused_with_advice_that_leaves_a_valid_config(
        declare: Callable[..., Declared], stack: dict[str, Any], advice: str, advised: dict[str, Any]) -> None:
    # the advice was canary:prometheus.scrapeInterval whatever the stack held: set alone, a canary:prometheus with no address
    # (required), which every release refused (and the component then took, the stack's scrape unknown); set beside the
    # stack's podMonitor, a scrapeInterval that differs from podMonitor.interval, refused too
    monitor = component(prometheus={"podMonitor": {"interval": "1m"}})
    with pytest.raises(pulumi.RunError) as caught:
        declare(monitor, stack)
    assert f"{advice}, or give the PodMonitor 15s" in str(caught.value), str(caught.value)
    # the advice followed: canary:prometheus as every release reads it, and the component's PodMonitor at its interval
    assert Prometheus.model_validate(advised, by_alias=True, by_name=False).scrape()[0] == timedelta(minutes=1)
    assert declare(monitor, {"canary:prometheus": advised}).inputs("web-pod-monitor")["spec"]["podMetricsEndpoints"][0]["interval"] == "1m"


def test_a_release_in_progress_goes_on_when_its_stack_config_disagrees(declare: Callable[..., Declared]) -> None:
    # its ups (its rollback's too) run with the release's config, checked when it began: refused here, it could never end
    release = {"web": {"release": "r1", "stable": pin("registry.example.com/shop/web:1.0.0", "5555aaaa5555aaaa"), "route": {"weight": 10}}}
    d = declare(component(prometheus={"podMonitor": {"interval": "1m"}}), {"canary:release": release, "canary:app": {**SIMPLE_APP, "replicas": 1}})
    assert "web-pod-monitor" in d.resources
    at_rest = {"web": {**release["web"], "release": ""}}  # a `canary up`'s own update, no release running: refused
    with pytest.raises(pulumi.RunError):
        declare(component(), {"canary:release": at_rest, "canary:app": SIMPLE_APP})


IN_FLIGHT = {"web": {"release": "r1", "stable": pin("registry.example.com/shop/web:1.0.0", "5555aaaa5555aaaa"), "route": {"weight": 10}}}


@pytest.mark.parametrize("old_form", [
    {"address": "http://prometheus.monitoring:9090", "token": "s3cr3t-t0ken", "podMonitor": {"interval": "15s", "path": "/stats"}},
    Prometheus(address="http://prometheus.monitoring:9090", token="s3cr3t-t0ken", pod_monitor={"interval": "15s", "path": "/stats"}),
], ids=["mapping", "model"])
def test_a_release_in_progress_goes_on_with_prometheus_fields_the_component_no_longer_takes(
        declare: Callable[..., Declared], monkeypatch: pytest.MonkeyPatch, old_form: Any) -> None:
    # a program on the earlier form (canary:prometheus's fields given to the component, which took them and ignored all but
    # podMonitor) whose team upgrades canary mid-release: every up of the release failed, its rollback's too
    warned: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *args, **kwargs: warned.append(message))
    d = declare(component(prometheus=old_form), {"canary:release": IN_FLIGHT})
    assert d.inputs("web-pod-monitor")["spec"]["podMetricsEndpoints"] == [{"portNumber": 8080, "path": "/stats", "interval": "15s"}]
    assert d.weights() == [("web-stable", 90), ("web-canary", 10)]
    [message] = warned
    assert message.startswith("CanaryDeployment web: the release of web in progress goes on as it began, without prometheus.address "
                              "(ignored: releases read canary:prometheus), prometheus.token (ignored: releases read canary:prometheus); "
                              "once it ends, every `up` refuses this: prometheus.address: is the stack config's"), message
    assert "s3cr3t" not in message
    for config in ({}, {"canary:release": {"web": {**IN_FLIGHT["web"], "release": ""}}}):  # no release, or `canary up`'s own update at rest
        with pytest.raises(pulumi.RunError) as caught:
            declare(component(prometheus=old_form), config)
        assert "prometheus.address: is the stack config's" in str(caught.value) and "prometheus.token: is the stack config's" in str(caught.value)
        assert "s3cr3t" not in str(caught.value)


def test_a_release_in_progress_still_refuses_a_prometheus_field_no_version_took(declare: Callable[..., Declared]) -> None:
    with pytest.raises(pulumi.RunError) as caught:
        declare(component(prometheus={"address": "http://prometheus.monitoring:9090", "scrape": "1m"}), {"canary:release": IN_FLIGHT})
    assert "prometheus.scrape: is not a field of the component's prometheus" in str(caught.value)
    assert "prometheus.address: is the stack config's" in str(caught.value)  # listed with it


@pytest.mark.parametrize("argument", ["template", "app.template"])
def test_a_release_in_progress_goes_on_with_a_probe_on_a_port_name_its_container_does_not_declare(
        declare: Callable[..., Declared], monkeypatch: pytest.MonkeyPatch, argument: str) -> None:
    # the API server took the template (the kubelet discards a liveness probe's errors): a release begun before the rule
    # had every `up` refused, its rollback's too, traffic left on the canary. Applied as it is, warned of
    template = {"spec": {"containers": [{"name": "web", "image": "registry.example.com/shop/web:2.0.0", "ports": [{"name": "http", "containerPort": 8080}],
                                         "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"}}}]}}
    build = component(NO_IMAGE, template=template) if argument == "template" else component({**NO_IMAGE, "template": template})
    field = f"{argument}.spec.containers[0].livenessProbe.httpGet.port"
    warned: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *args, **kwargs: warned.append(message))
    d = declare(build, {"canary:release": IN_FLIGHT})
    assert d.template("canary")["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] == "health"
    assert d.weights() == [("web-stable", 90), ("web-canary", 10)]
    [message] = warned
    assert message.startswith(f"CanaryDeployment web: the release of web in progress goes on as it began; once it ends, every `up` "
                              f"refuses this: {field}: must name a port of its own container (web declares the port names http)"), message
    for config in ({}, {"canary:release": {"web": {**IN_FLIGHT["web"], "release": ""}}}):  # no release, or `canary up`'s own update at rest
        with pytest.raises(pulumi.RunError, match=re.escape(f"{field}: must name a port of its own container")):
            declare(build, config)


def test_a_release_in_progress_still_refuses_its_template_s_other_problems(declare: Callable[..., Declared]) -> None:
    template = {"spec": {"containers": [{"name": "web", "image": "registry.example.com/shop/web:2.0.0", "ports": [{"name": "http", "containerPort": 8080}],
                                         "readinessProbe": {"httpGet": {"port": "8080"}}, "livenessProbe": {"httpGet": {"port": "health"}}}]}}
    with pytest.raises(pulumi.RunError) as caught:
        declare(component(NO_IMAGE, template=template), {"canary:release": IN_FLIGHT})
    assert "template.spec.containers[0].readinessProbe.httpGet.port: is a number written as text" in str(caught.value)
    assert "template.spec.containers[0].livenessProbe.httpGet.port: must name a port" in str(caught.value)  # listed with it


@pytest.mark.parametrize("given", ["shop image", "canary:image", 'shop:images["web"]'])
def test_a_release_in_progress_goes_on_with_an_image_config_the_component_no_longer_takes(
        declare: Callable[..., Declared], monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    # image_config was exported as given: a key no program reads stranded a release begun before it was checked. The
    # release pins its images; the key, which only `canary release --image` reads, is not exported (nothing could set it)
    warned: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *args, **kwargs: warned.append(message))
    d = declare(component(image_config=given), {"canary:release": IN_FLIGHT}, project="shop")
    assert "imageConfig" not in d.exported and d.exported["stable"]["hash"] == "5555aaaa5555aaaa"
    [message] = warned
    assert message.startswith("CanaryDeployment web: the release of web in progress goes on as it began, without image_config (not exported, "
                              "a key no program reads); once it ends, every `up` refuses this: image_config: "), message
    with pytest.raises(pulumi.RunError, match="image_config: "):
        declare(component(image_config=given), project="shop")


@pytest.mark.parametrize(("config", "field"), [
    ({"canary:app": {**SIMPLE_APP, "replicas": 1}, "canary:gateway": GATEWAY}, "canary:app"),
    ({"canary:apps": {"web": {"app": SIMPLE_APP, "gateway": GATEWAY}}}, "canary:apps.web.app"),
    ({"canary:apps": {"web": {"gateway": GATEWAY}}}, "canary:apps.web.gateway"),
])
def test_an_app_the_stack_config_declares_too_is_refused(declare: Callable[..., Declared], config: dict[str, Any], field: str) -> None:
    # `import-flagger --merge` writes canary:app and canary:gateway: the release judged the stack config's app (one
    # replica, a stale image) and route, not the component's
    with pytest.raises(pulumi.RunError) as caught:
        declare(component(), config)
    message = str(caught.value)
    assert f"{field}: declares " in message and "which CanaryDeployment web declares too" in message and "Keep one" in message
    assert ("remove canary:app and canary:gateway from the stack config" in message) == (field == "canary:app")


def test_the_stack_configs_other_apps_and_analysis_beside_a_component(declare: Callable[..., Declared]) -> None:
    analysis = {"interval": "1m", "metrics": []}
    config = {"canary:apps": {"web": {"analysis": analysis}, "api": {"app": {**SIMPLE_APP, "name": "api"}, "gateway": GATEWAY, "analysis": analysis}}}
    assert declare(component(), config).exported["appFrom"] == "component"
    assert declare(component(), {"canary:app": {**SIMPLE_APP, "name": "api"}, "canary:gateway": GATEWAY}).exported["appFrom"] == "component"


def test_the_projects_program_declares_the_stack_configs_app_and_pod_monitor(declare: Callable[..., Declared]) -> None:
    d = declare(program.program, stack_config(prometheus={**STACK_PROMETHEUS, "podLabel": "pod", "podMonitor": {"interval": "1m"}}))
    assert d.exported["appFrom"] == "stackConfig"  # a release reads its app from the stack config
    assert d.inputs("web-pod-monitor")["spec"]["podMetricsEndpoints"][0]["interval"] == "1m"


# --- the stack output ---------------------------------------------------------------------------


def test_the_stack_output_holds_what_a_release_reads_back(declare: Callable[..., Declared]) -> None:
    d = declare(component(full_app()))
    out = d.exported
    assert set(out) >= {"app", "gateway", "namespace", "urns", "stable", "desired", "copies", "rollout"}
    assert out["namespace"] == "shop" and out["rollout"] == "checked"
    assert out["app"]["name"] == "web" and out["app"]["configMaps"] == {"settings": {"data": {"level": "info"}}}
    assert "secrets" not in out["app"]
    assert out["gateway"]["parentRefs"] == [{"name": "public", "namespace": "gateway", "sectionName": "https"}]
    urns = out["urns"]
    expected = {"stableDeployment": "web-stable", "canaryDeployment": "web-canary", "route": "web-route", "stableService": "web-stable-service",
                "canaryService": "web-canary-service", "apexService": "web-apex-service"}
    assert {key: urns[key] for key in expected} == {key: d.urns[name] for key, name in expected.items()}
    assert sorted(urns["copies"]) == sorted([d.urns["web-configmap-settings"], d.urns["web-secret-creds"]])
    desired = out["desired"]
    assert set(desired) == {"template", "hash", "image", "config_hashes", "port", "appProtocol"} and desired["port"] == 8080
    assert desired["image"] == "registry.example.com/shop/web:1.0.0"
    assert desired["hash"] == workload.template_hash(full_template(), desired["config_hashes"])
    assert out["stable"] == desired


# --- the guards ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "kwargs", "guarded"), [
    ({}, {}, True),
    ({"canary:rollout": "checked"}, {}, True),
    ({"canary:rollout": "direct"}, {}, False),
    ({}, {"rollout": "direct"}, False),
    ({"canary:release": {"web": {"release": "r1", "stable": pin("registry.example.com/shop/web:1.0.0", "5" * 16)}}}, {}, False),
    ({"canary:release": {"api": {"release": "r1", "stable": pin("registry.example.com/shop/api:1.0.0", "5" * 16)}}}, {}, True),
], ids=["default", "checked", "direct", "direct-argument", "release", "release-of-another-app"])
def test_resource_hooks_guard_the_tracks_and_the_route_only_outside_a_release(
        declare: Callable[..., Declared], config: dict[str, Any], kwargs: dict[str, Any], guarded: bool) -> None:
    d = declare(component(**kwargs), config)
    expected = {"web-stable": ["canary-stable-guard-web"], "web-route": ["canary-route-guard-web"],
                "web-canary": ["canary-canary-guard-web"]} if guarded else {}
    assert {name: hooks for name, hooks in d.hooks.items() if hooks} == expected


def hook_args(old: Mapping[str, Any], new: Mapping[str, Any]) -> pulumi.ResourceHookArgs:
    return pulumi.ResourceHookArgs(urn="urn:pulumi:prod::canary::x::web", id="web", name="web", type="kubernetes:apps/v1:Deployment",
                                   new_inputs=new, old_inputs=old, old_outputs=old)


def run_guard(declare: Callable[..., Declared], make: Callable[[str, str], pulumi.ResourceHook], old: Mapping[str, Any],
              new: Mapping[str, Any]) -> Exception | None:
    """Call the guard's callback as the engine would before an update: the error it raises, or None."""
    caught: list[Exception] = []

    def build() -> None:
        guard = make("web", STACK)
        try:
            guard.callback(hook_args(old, new))
        except Exception as exc:  # noqa: BLE001 (what the engine would report is what is tested)
            caught.append(exc)

    declare(build)
    return caught[0] if caught else None


def deployment(template: Mapping[str, Any], replicas: float = 3.0) -> dict[str, Any]:
    return {"metadata": {"name": "web-stable"}, "spec": {"replicas": replicas, "template": template}}


def pod(image: str, hash_: str | None = None, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": {"app": "web", **(labels or {})}}
    if hash_ is not None:
        meta["annotations"] = {"canary.dev/template-hash": hash_}
    return {"metadata": meta, "spec": {"containers": [{"name": "web", "image": image, "ports": [{"containerPort": 8080.0}]}]}}


def test_the_stable_guard_refuses_a_new_template(declare: Callable[..., Declared]) -> None:
    error = run_guard(declare, program._stable_guard, deployment(pod("web:1", "a" * 16)), deployment(pod("web:2", "b" * 16)))
    assert isinstance(error, RuntimeError)
    assert "canary up prod --app web" in str(error) and "canary:rollout: direct" in str(error)
    # without hashes (a Deployment of an earlier version) the templates themselves are compared
    assert run_guard(declare, program._stable_guard, deployment(pod("web:1")), deployment(pod("web:2"))) is not None


@pytest.mark.parametrize(("rule", "named"), [
    ({"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}], "backendRefs": [{"name": "web", "port": 80}],
      "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}]}, "with URLRewrite"),
    ({"matches": [{"path": {"type": "PathPrefix", "value": "/grpc"}}], "backendRefs": [{"name": "web", "port": 9000}]}, "to web:9000"),
    ({"matches": [{"path": {"type": "PathPrefix", "value": "/legacy"}}], "backendRefs": [{"name": "web", "namespace": "legacy", "port": 80}]},
     "to legacy/web:80"),
    ({"matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}], "timeouts": {"request": "300s"}, "backendRefs": [{"name": "web", "port": 80}]},
     "with timeouts"),
    ({"matches": [{"path": {"type": "PathPrefix", "value": "/h"}}], "backendRefs": [
        {"name": "web", "port": 80, "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-from", "value": "edge"}]}}]}]},
     "with RequestHeaderModifier"),
], ids=["url-rewrite", "other-port", "other-namespace", "timeouts", "backend-filter"])
def test_adopting_a_route_whose_rules_to_the_app_do_more_than_canary_s_is_refused(declare: Callable[..., Declared], rule: dict[str, Any], named: str) -> None:
    # a rewrite, a timeout, another port or namespace of the app: canary's single rule dropped them, with no word
    ours = _route(*routing.route_spec("web", [{"name": "public"}], ["shop.example.com"], 80, routing.AT_REST)["rules"])
    error = run_guard(declare, lambda app, stack: program._adopted_route_guard(app), _route(rule, {"backendRefs": [{"name": "web", "port": 80}]}), ours)
    assert error is not None and f"rules[0] (paths {rule['matches'][0]['path']['value']}) {named}" in str(error) and "rules[1]" not in str(error), error


def test_the_adopted_route_guard_lets_a_route_on_another_port_of_the_app_through(declare: Callable[..., Declared]) -> None:
    # the guard compared the old route's ports with canary's own: an adopted route on the Service's port 8080 (the
    # app on the default 80) was refused, and so was every later up once app.servicePort changed
    ours = _route(*routing.route_spec("web", [{"name": "public"}], ["shop.example.com"], 80, routing.AT_REST)["rules"])
    theirs = _route({"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [{"name": "web", "port": 8080}]})
    assert run_guard(declare, lambda app, stack: program._adopted_route_guard(app), theirs, ours) is None
    moved = _route(*routing.route_spec("web", [{"name": "public"}], ["shop.example.com"], 8080, routing.AT_REST)["rules"])
    assert run_guard(declare, lambda app, stack: program._adopted_route_guard(app), ours, moved) is None
    # but a route whose rules all go to another port the apex Service declares (service=: grpc 9000) is refused
    grpc = _route({"backendRefs": [{"name": "web", "port": 9000}]})
    error = run_guard(declare, lambda app, stack: program._adopted_route_guard(app, [9000]), grpc, ours)
    assert error is not None and "rules[0] (every request) to web:9000" in str(error), error
    assert run_guard(declare, lambda app, stack: program._adopted_route_guard(app, [9000]), ours, ours) is None


@pytest.mark.parametrize("shape", [
    routing.RouteShape(weight=20, mirror=True),
    routing.RouteShape(matches=(routing.Match(headers=(("x-canary", "Exact", "always"),)),)),
    routing.RouteShape(weight=30, affinity=routing.Affinity("canary-web", "a1b2", 3600)),
    routing.RouteShape(expire_cookie="canary-web"),
], ids=["mirror", "ab", "affinity", "expire-cookie"])
def test_canary_s_own_route_passes_the_adopted_route_guard_in_every_shape(declare: Callable[..., Declared], shape: routing.RouteShape) -> None:
    ours = _route(*routing.route_spec("web", [{"name": "public"}], ["shop.example.com"], 80, shape)["rules"])
    at_rest = _route(*routing.route_spec("web", [{"name": "public"}], ["shop.example.com"], 80, routing.AT_REST)["rules"])
    assert run_guard(declare, lambda app, stack: program._adopted_route_guard(app), ours, at_rest) is None


def test_the_route_guard_takes_an_adopted_route_of_plain_rules_for_no_release(declare: Callable[..., Declared]) -> None:
    # /api and / both to the app: the route guard counted the extra rule as a release's A/B rule and sent the user to abort
    theirs = _route({"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "backendRefs": [{"name": "web", "port": 80}]},
                    {"backendRefs": [{"name": "web", "port": 80}]})
    ours = _route(*routing.route_spec("web", [{"name": "public"}], ["shop.example.com"], 80, routing.AT_REST)["rules"])
    assert run_guard(declare, lambda app, stack: program._adopted_route_guard(app), theirs, ours) is None
    assert run_guard(declare, program._route_guard, theirs, ours) is None


# --- an adopted route's name, hostnames and parentRefs ---------------------------------------------


def team_route(name: str = "web", namespace: str = "shop", **spec: Any) -> dict[str, Any]:
    """A route as the team's program declared it: the Gateway API's defaults left out, every request to the apex Service."""
    return {"apiVersion": routing.API_VERSION, "kind": routing.KIND, "metadata": {"name": name, "namespace": namespace},
            "spec": {"parentRefs": [{"name": "public", "namespace": "gateway", "sectionName": "https"}], "hostnames": ["web.example.com"],
                     "rules": [{"backendRefs": [{"name": "web", "port": 80}]}], **spec}}


def canary_route(namespace: str = "shop", parent_refs: list[dict[str, Any]] | None = None, hostnames: list[str] | None = None) -> dict[str, Any]:
    """Canary's route for ``GATEWAY`` (or the parentRefs and hostnames given), at rest, with numbers as a hook gets them."""
    refs = GATEWAY["parentRefs"] if parent_refs is None else parent_refs
    spec = routing.route_spec("web", refs, GATEWAY["hostnames"] if hostnames is None else hostnames, 80, routing.AT_REST)
    return json.loads(json.dumps({"metadata": {"name": "web", "namespace": namespace, "labels": {"canary.dev/app": "web"}}, "spec": spec}),
                      parse_int=float)


def adopted_guard(namespace: str | None = None) -> Callable[[str, str], pulumi.ResourceHook]:
    """The guard of a route adopted for web, in ``namespace`` when given (else the namespace is not compared)."""
    return lambda app, stack: program._adopted_route_guard(app, namespace=namespace) if namespace else program._adopted_route_guard(app)


def bound_adopted_route_guards(monkeypatch: pytest.MonkeyPatch) -> list[pulumi.ResourceHook]:
    """The adopted-route guards the component binds, to call as the engine would."""
    bound: list[pulumi.ResourceHook] = []
    make = program._adopted_route_guard

    def recording(*args: Any, **kwargs: Any) -> pulumi.ResourceHook:
        bound.append(make(*args, **kwargs))
        return bound[-1]

    monkeypatch.setattr(program, "_adopted_route_guard", recording)
    return bound


def refusal(error: Exception | None) -> str:
    """The guard's refusal, as canary's stack adapter reads it from the engine's output: one line, no double quote."""
    assert isinstance(error, RuntimeError), error
    text = str(error)
    assert text.startswith("canary: ") and "\n" not in text and '"' not in text, text
    return text


def test_a_route_adopted_under_another_name_is_updated_in_place_so_that_the_guard_sees_it(
        declare: Callable[..., Declared], monkeypatch: pytest.MonkeyPatch) -> None:
    # Pulumi runs update hooks for in-place updates only. A route adopted under another name than the app's was replaced
    # (canary's created, the old one deleted, as Kubernetes renames nothing), so the guard never ran and the old route's
    # /static rule to its CDN proxy was dropped with no word. The route now keeps the old name and namespace for that
    # update (ignore_changes), and the guard bound to it refuses the rename
    bound = bound_adopted_route_guards(monkeypatch)
    d = declare(component(adopt={"route": "public-route"}))
    assert d.ignore_changes["web-route"] == ["metadata.name"]  # not the namespace: a route left behind by a move would be silent
    assert d.hooks["web-route"] == ["canary-adopted-route-guard-web", "canary-route-guard-web"]
    assert d.inputs("web-route")["metadata"]["name"] == "web"  # what a create declares (a new stack: no route to adopt)
    # the update the engine makes of it: canary's route under the old route's name
    update = {**d.inputs("web-route"), "metadata": {**d.inputs("web-route")["metadata"], "name": "public-route"}}
    static = {"matches": [{"path": {"type": "PathPrefix", "value": "/static"}}], "backendRefs": [{"name": "cdn-proxy", "port": 80}]}
    old = team_route("public-route", rules=[static, {"backendRefs": [{"name": "web", "port": 80}]}])
    text = refusal(_call(bound[0], old, update))
    assert "the route adopted for web (adopt.route) is HTTPRoute shop/public-route, and canary's route is HTTPRoute shop/web" in text, text
    assert "rules[0] (paths /static) to cdn-proxy" in text and "leave route out of adopt" in text and "first name it web in shop" in text, text
    # nothing else lost: the way out is said as much
    text = refusal(_call(bound[0], team_route("public-route"), update))
    assert "It holds nothing canary's route would lose: leave route out of adopt, with the route out of your program" in text, text
    # the route it is named for is taken over; canary's own route (every later up) too
    assert _call(bound[0], team_route(), d.inputs("web-route")) is None
    assert _call(bound[0], d.inputs("web-route"), d.inputs("web-route")) is None
    # without adopt the route is canary's alone: a rename of the app replaces it as Pulumi would
    assert declare(component()).ignore_changes["web-route"] == []


def _call(hook: pulumi.ResourceHook, old: Mapping[str, Any], new: Mapping[str, Any]) -> Exception | None:
    try:
        hook.callback(hook_args(old, new))
    except Exception as exc:  # noqa: BLE001 (what the engine would report is what is tested)
        return exc
    return None


def test_the_adopted_route_guard_refuses_a_route_of_another_name_namespace_or_kind(declare: Callable[..., Declared]) -> None:
    ours = canary_route()
    text = refusal(run_guard(declare, lambda app, stack: program._adopted_route_guard(app), team_route("public-route"), ours))
    assert "is HTTPRoute shop/public-route, and canary's route is HTTPRoute shop/web" in text, text
    text = refusal(run_guard(declare, adopted_guard("shop"), team_route(namespace="edge"), ours))
    assert "is HTTPRoute edge/web, and canary's route is HTTPRoute shop/web" in text, text
    ingress = {**team_route(), "kind": "Ingress"}
    assert "is Ingress shop/web" in refusal(run_guard(declare, adopted_guard(), ingress, ours))
    assert run_guard(declare, adopted_guard("shop"), team_route(), ours) is None
    # a route declared without a namespace is where the provider put it (its default namespace): the live object says where
    bound: list[pulumi.ResourceHook] = []
    declare(lambda: bound.append(program._adopted_route_guard("web", namespace="shop")))
    undeclared = {**team_route(), "metadata": {"name": "web"}}

    def live_in(namespace: str) -> pulumi.ResourceHookArgs:
        return pulumi.ResourceHookArgs(urn=root_urn("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", "web"), id=f"{namespace}/web", name="web",
                                       type="kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", new_inputs=ours, old_inputs=undeclared,
                                       old_outputs={**undeclared, "metadata": {"name": "web", "namespace": namespace}})

    assert bound[0].callback(live_in("shop")) is None
    with pytest.raises(RuntimeError, match="is HTTPRoute default/web, and canary's route is HTTPRoute shop/web"):
        bound[0].callback(live_in("default"))


def test_adopting_a_route_whose_hostnames_canary_s_route_would_change_is_refused(declare: Callable[..., Declared]) -> None:
    # canary's route takes its hostnames from gateway= alone: a route of shop.example.com adopted by a component without
    # hostnames answered every host on the listener (another app's requests included), with no word
    guard = adopted_guard()
    text = refusal(run_guard(declare, guard, team_route(hostnames=["shop.example.com"]), canary_route(hostnames=[])))
    assert ("it answers shop.example.com and canary's route would answer every host name of its listeners (no hostnames): "
            "set gateway.hostnames to [shop.example.com]") in text, text
    text = refusal(run_guard(declare, guard, team_route(hostnames=["shop.example.com", "www.shop.example.com"]), canary_route(hostnames=["shop.example.com"])))
    assert "set gateway.hostnames to [shop.example.com, www.shop.example.com]" in text, text
    # a route without hostnames narrowed to canary's: the other hosts would lose it
    text = refusal(run_guard(declare, guard, {**team_route(), "spec": {**team_route()["spec"], "hostnames": None}}, canary_route()))
    assert "it answers every host name of its listeners (no hostnames) and canary's route would answer web.example.com: leave gateway.hostnames out" in text
    assert "cannot be taken over as it is" in text and "adopt it, or leave route out of adopt" in text, text
    # the same names in another order are the same
    assert run_guard(declare, guard, team_route(hostnames=["b.example.com", "a.example.com"]), canary_route(hostnames=["a.example.com", "b.example.com"])) is None


def test_adopting_a_route_whose_parent_refs_canary_s_route_would_change_is_refused(declare: Callable[..., Declared]) -> None:
    # canary's route takes its parentRefs from gateway= alone: an adopted route moved to another Gateway (or listener) silently
    guard = adopted_guard()
    text = refusal(run_guard(declare, guard, team_route(), canary_route(parent_refs=[{"name": "public", "namespace": "other-gw"}])))
    assert ("its parentRefs are [{name: public, namespace: gateway, sectionName: https}] and canary's route would be attached to "
            "[{name: public, namespace: other-gw}]: set gateway.parentRefs to [{name: public, namespace: gateway, sectionName: https}]") in text, text
    # a listener of its own (sectionName), a port
    assert "set gateway.parentRefs to" in refusal(run_guard(declare, guard, team_route(), canary_route(parent_refs=[{"name": "public", "namespace": "gateway"}])))
    text = refusal(run_guard(declare, guard, team_route(parentRefs=[{"name": "public", "port": 8443}]), canary_route(parent_refs=[{"name": "public"}])))
    assert "[{name: public, namespace: shop, port: 8443}]" in text, text
    # a parent canary's gateway config cannot declare (a Service, as a mesh's routes have)
    mesh = team_route(parentRefs=[{"group": "", "kind": "Service", "name": "web"}])
    assert "gateway.parentRefs declares Gateways only ({kind: Service (core), name: web, namespace: shop} is not one)" in refusal(run_guard(declare, guard, mesh, canary_route()))
    # the Gateway API's defaults, written or not, are the same parent: the group, the kind, the route's namespace; a port as a hook gets it
    assert run_guard(declare, guard, team_route(parentRefs=[{"name": "public"}]), canary_route(parent_refs=[{"name": "public"}])) is None
    assert run_guard(declare, guard, team_route(parentRefs=[{"name": "public", "namespace": "shop", "port": 8443}]),
                     canary_route(parent_refs=[{"name": "public", "port": 8443}])) is None
    explicit = [{"group": routing.GROUP, "kind": "Gateway", "name": "public", "namespace": "gateway", "sectionName": "https"}]
    assert run_guard(declare, guard, team_route(parentRefs=explicit), canary_route()) is None


def test_a_gateway_change_on_a_route_canary_took_over_is_not_the_guard_s(declare: Callable[..., Declared]) -> None:
    # adopt stays in the program after the adoption: a later change of gateway= (a new host name) is the team's to make
    guard = adopted_guard()
    moved = canary_route(parent_refs=[{"name": "internal", "namespace": "gateway"}], hostnames=["web.example.com", "web.example.org"])
    assert run_guard(declare, guard, canary_route(), moved) is None


def test_the_component_binds_the_adopted_route_guard_to_what_it_declares(declare: Callable[..., Declared], monkeypatch: pytest.MonkeyPatch) -> None:
    # the reviewer's case: a route of shop.example.com adopted by a component whose gateway has no hostnames
    bound = bound_adopted_route_guards(monkeypatch)
    d = declare(lambda: program.CanaryDeployment("web", dict(SIMPLE_APP), {"parentRefs": GATEWAY["parentRefs"]}, adopt={"route": "web"}))
    text = refusal(_call(bound[0], team_route(hostnames=["shop.example.com"]), d.inputs("web-route")))
    assert "it answers shop.example.com and canary's route would answer every host name of its listeners" in text, text
    assert _call(bound[0], team_route(hostnames=None), d.inputs("web-route")) is None


@pytest.mark.parametrize(("old", "new"), [
    (deployment(pod("web:1", "a" * 16), 3.0), deployment(pod("web:1", "a" * 16), 5.0)),  # a resize
    (deployment(pod("web:1")), deployment(pod("web:1", "a" * 16, {"canary.dev/track": "stable"}))),  # canary's own marks added
    (deployment(pod("web:1", "a" * 16)), deployment(pod("web:1", "a" * 16, {"team": "shop"}))),  # same hash: the same version
], ids=["resize", "marks-only", "same-hash"])
def test_the_stable_guard_lets_other_changes_through(declare: Callable[..., Declared], old: dict[str, Any], new: dict[str, Any]) -> None:
    assert run_guard(declare, program._stable_guard, old, new) is None


def route(shape: routing.RouteShape) -> dict[str, Any]:
    return {"metadata": {"name": "web"}, "spec": routing.route_spec("web", [{"name": "public"}], [], 80, shape)}


AB = routing.RouteShape(matches=(routing.Match(headers=(("x-canary", "Exact", "always"),)),))


@pytest.mark.parametrize("old", [routing.RouteShape(weight=20), AB, routing.RouteShape(mirror=True)], ids=["weighted", "ab", "mirror"])
def test_the_route_guard_refuses_to_take_traffic_off_a_running_canary(declare: Callable[..., Declared], old: routing.RouteShape) -> None:
    error = run_guard(declare, program._route_guard, route(old), route(routing.AT_REST))
    assert isinstance(error, RuntimeError)
    assert "canary status prod --app web" in str(error) and "canary abort" in str(error)


@pytest.mark.parametrize(("old", "new"), [
    (routing.AT_REST, routing.AT_REST),
    (routing.AT_REST, routing.RouteShape(weight=10)),
    (routing.RouteShape(weight=20), routing.RouteShape(weight=30)),
], ids=["at-rest", "starting", "stepping"])
def test_the_route_guard_lets_other_changes_through(declare: Callable[..., Declared], old: routing.RouteShape, new: routing.RouteShape) -> None:
    assert run_guard(declare, program._route_guard, route(old), route(new)) is None


def test_the_canary_guard_refuses_to_scale_a_running_canary_to_zero(declare: Callable[..., Declared]) -> None:
    error = run_guard(declare, program._canary_guard, deployment(pod("web:2"), 2.0), deployment(pod("web:2"), 0.0))
    assert isinstance(error, RuntimeError)
    assert "runs 2 pods" in str(error) and "canary resume" in str(error)


@pytest.mark.parametrize(("old", "new"), [(0.0, 0.0), (2.0, 3.0), (0.0, 1.0)], ids=["idle", "growing", "starting"])
def test_the_canary_guard_lets_other_sizes_through(declare: Callable[..., Declared], old: float, new: float) -> None:
    assert run_guard(declare, program._canary_guard, deployment(pod("web:2"), old), deployment(pod("web:2"), new)) is None


# --- the project's own program ------------------------------------------------------------------


def stack_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "canary:app": {"name": "web", "namespace": "shop", "image": "registry.example.com/shop/web:1.0.0", "replicas": 2},
        "canary:gateway": GATEWAY,
        "canary:prometheus": {"address": "http://prometheus.monitoring:9090"},
        "canary:analysis": {"interval": "1m", "stepWeight": 10, "maxWeight": 50, "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99}}]},
    }
    config.update({f"canary:{k}": v for k, v in overrides.items()})
    return {k: v for k, v in config.items() if v is not None}


def test_the_program_declares_each_app_of_the_stack_config(declare: Callable[..., Declared]) -> None:
    declared: list[Any] = []
    d = declare(lambda: declared.extend(program.program()), stack_config())
    assert [c.app.name for c in declared] == ["web"]
    assert ("kubernetes:apps/v1:Deployment", "web-stable") in d.kinds()
    assert d.inputs("web-stable")["spec"]["replicas"] == 2
    assert d.exported["desired"]["image"] == "registry.example.com/shop/web:1.0.0"
    assert d.hooks["web-stable"] == ["canary-stable-guard-web"]
    # how the orchestrator knows the cluster it reads is this program's
    assert d.exported["uids"] == {"stableDeployment": "uid-of-web-stable"}


def test_the_program_reads_canary_rollout_and_the_earlier_stable_image_key(declare: Callable[..., Declared]) -> None:
    app = {"name": "web", "namespace": "shop", "replicas": 2}
    d = declare(program.program, stack_config(app=app, stableImage="registry.example.com/shop/web:0.9.0", rollout="direct"))
    assert d.template("stable")["spec"]["containers"][0]["image"] == "registry.example.com/shop/web:0.9.0"
    assert not any(d.hooks.values())
    assert d.exported["rollout"] == "direct"


@pytest.mark.parametrize(("overrides", "field_", "rule"), [
    ({"app": {"name": "web", "namespace": "shop", "image": "registry.example.com/shop/web:1.0.0", "replicas": 0}}, "app.replicas", "greater than or equal to 1"),
    ({"gateway": None}, "gateway", "is required"),
    ({"canaryWeight": 20}, "canaryWeight", "is no longer stack config"),
    ({"app": {"name": "web", "image": "registry.example.com/shop/web:1.0.0", "secrets": {"creds": {"stringData": {"T": "x"}}}}},
     "app.secrets.creds.stringData", "must be a Pulumi secret"),
    ({"app": None, "gateway": None}, "apps.app.app", "set app and gateway"),
], ids=["replicas", "no-gateway", "old-key", "plain-secret", "no-app"])
def test_invalid_config_stops_the_program_with_a_run_error_naming_the_field(
        declare: Callable[..., Declared], overrides: dict[str, Any], field_: str, rule: str) -> None:
    with pytest.raises(pulumi.RunError) as caught:
        declare(program.program, stack_config(**overrides))
    assert f"{field_}: " in str(caught.value)
    assert rule in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_a_release_s_ups_take_a_judge_only_a_rule_newer_than_the_release_refuses(declare: Callable[..., Declared]) -> None:
    # a release begun by a version that took `judge: {}` on a 1m window, resumed by this one: the program refused the
    # config at every `up` (the step against the scrape interval), the release's and then its rollback's
    judged = {"interval": "1m", "stepWeight": 10, "maxWeight": 50,
              "metrics": [{"name": "request-duration", "thresholdRange": {"max": 500}, "judge": {}}]}
    with pytest.raises(pulumi.RunError, match="judge.step"):
        declare(program.program, stack_config(analysis=judged))  # a plain `pulumi up` of it: refused, as validate refuses it
    release = {"web": {"release": "r1", "stable": pin("registry.example.com/shop/web:1.0.0", "5555aaaa5555aaaa"), "route": {"weight": 0}}}
    declared: list[Any] = []
    declare(lambda: declared.extend(program.program()), stack_config(analysis=judged, release=release))
    assert [c.app.name for c in declared] == ["web"]


def test_a_secret_in_the_stack_config_is_accepted_when_pulumi_holds_it_as_one(declare: Callable[..., Declared]) -> None:
    app = {"name": "web", "namespace": "shop", "image": "registry.example.com/shop/web:1.0.0",
           "template": {"spec": {"containers": [{"name": "web", "envFrom": [{"secretRef": {"name": "creds"}}]}]}},
           "secrets": {"creds": {"stringData": {"TOKEN": "s3cr3t"}}}}
    d = declare(program.program, stack_config(app=app), secret_keys=["canary:app"])
    assert d.inputs("web-secret-creds")["metadata"]["name"].startswith("creds-")
    assert "s3cr3t" not in json.dumps(d.outputs)


# --- desired_template ---------------------------------------------------------------------------


def test_the_simple_form_is_one_container_named_like_the_app() -> None:
    app = App.model_validate({"name": "web", "image": "registry.example.com/shop/web:1.0.0", "port": 9090,
                              "env": {"ZONE": "b", "LOG_LEVEL": "info"}, "resources": {"requests": {"cpu": "250m"}},
                              "probes": {"readiness": {"path": "/ready", "periodSeconds": 5}, "liveness": {}}})
    template = program.desired_template(app)
    assert template["metadata"] == {"labels": {"app.kubernetes.io/name": "web"},
                                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"}}
    (container,) = template["spec"]["containers"]
    assert container["name"] == "web" and container["image"] == "registry.example.com/shop/web:1.0.0"
    assert container["ports"] == [{"name": "http", "containerPort": 9090, "protocol": "TCP"}]
    assert container["env"] == [{"name": "LOG_LEVEL", "value": "info"}, {"name": "ZONE", "value": "b"}]
    assert container["resources"] == {"requests": {"cpu": "250m"}}
    assert container["readinessProbe"] == {"httpGet": {"path": "/ready", "port": "http"}, "initialDelaySeconds": 0, "periodSeconds": 5,
                                           "timeoutSeconds": 1, "failureThreshold": 3}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert workload.check(template, "template") == []


def test_the_simple_form_without_env_resources_or_probes_has_none() -> None:
    (container,) = program.desired_template(App.model_validate({"name": "web", "image": "registry.example.com/shop/web:1"}))["spec"]["containers"]
    assert set(container) == {"name", "image", "ports"}


def test_the_full_form_takes_app_image_on_its_main_container_only() -> None:
    app = App.model_validate({"name": "web", "image": "registry.example.com/shop/web:2.0.0", "template": full_template()})
    template = program.desired_template(app)
    assert [c["image"] for c in template["spec"]["containers"]] == ["registry.example.com/shop/web:2.0.0", "registry.example.com/shop/proxy:3.1"]
    assert app.template is not None and app.template["spec"]["containers"][0]["image"] == "registry.example.com/shop/web:1.0.0"  # not mutated
    named = App.model_validate({"name": "web", "image": "registry.example.com/shop/proxy:4", "container": "proxy", "template": full_template()})
    assert [c["image"] for c in program.desired_template(named)["spec"]["containers"]] == ["registry.example.com/shop/web:1.0.0", "registry.example.com/shop/proxy:4"]


def test_the_full_form_without_app_image_is_the_template_as_written() -> None:
    assert program.desired_template(App.model_validate({"name": "web", "template": full_template()})) == full_template()


def test_a_template_argument_wins_over_the_simple_form_and_pulumi_kubernetes_args_become_kubernetes_fields() -> None:
    template = k8s.core.v1.PodTemplateSpecArgs(
        metadata=k8s.meta.v1.ObjectMetaArgs(labels={"app": "web"}),
        spec=k8s.core.v1.PodSpecArgs(
            termination_grace_period_seconds=5,
            containers=[k8s.core.v1.ContainerArgs(
                name="web", image="registry.example.com/shop/web:1.0.0",
                ports=[k8s.core.v1.ContainerPortArgs(container_port=8080, name="http")],
                env_from=[k8s.core.v1.EnvFromSourceArgs(config_map_ref=k8s.core.v1.ConfigMapEnvSourceArgs(name="settings"))],
                readiness_probe=k8s.core.v1.ProbeArgs(http_get=k8s.core.v1.HTTPGetActionArgs(path="/ready", port="http"), period_seconds=5),
            )],
        ),
    )
    app = App.model_validate({"name": "web", "image": "registry.example.com/shop/web:2.0.0"})
    out = program.desired_template(app, template)
    assert out == {
        "metadata": {"labels": {"app": "web"}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "web", "image": "registry.example.com/shop/web:2.0.0",
                "ports": [{"containerPort": 8080, "name": "http"}],
                "envFrom": [{"configMapRef": {"name": "settings"}}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
            }],
        },
    }
    assert workload.check(out, "template") == []
    assert workload.referenced(out)["configMap"] == {"settings"}


def test_a_plain_mapping_template_argument_is_copied_not_shared() -> None:
    given = full_template()
    out = program.desired_template(App.model_validate({"name": "web", "image": "registry.example.com/shop/web:9"}), given)
    assert out["spec"]["containers"][0]["image"] == "registry.example.com/shop/web:9"
    assert given == full_template()


def test_a_component_argument_refused_keeps_its_secrets_out_of_the_traceback_pulumi_prints() -> None:
    # Pulumi reports a failed inline program with its whole traceback: pydantic's error, which quotes
    # every input it refused, must not be chained to the InvalidSpec the component raises
    from canary.adapters.program import _model
    from canary.core.spec import Prometheus

    given = {"address": "http://prom:9090", "headers": {"X Scope OrgID": "tenant-s3cr3t-header"}, "token": "prom-s3cr3t-token"}
    with pytest.raises(InvalidSpec) as info:
        _model(Prometheus, given, "prometheus")  # (a traceback shows this line's source: no literal here)
    shown = "".join(traceback.format_exception(info.value))
    assert "prometheus.headers" in shown
    assert "s3cr3t" not in shown, shown


def _project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack_text: str) -> Path:
    """Makes tmp_path the working directory of project shop with ``stack_text`` as the stack's file, which the program
    reads to tell which leaves of a key the engine gives as a secret are encrypted there; returns that file."""
    (tmp_path / "Pulumi.yaml").write_text("name: shop\nruntime: python\n")
    stack_file = tmp_path / f"Pulumi.{STACK}.yaml"
    stack_file.write_text(stack_text)
    monkeypatch.chdir(tmp_path)
    return stack_file


def test_a_plain_text_header_beside_an_encrypted_token_stops_a_plain_pulumi_up(declare: Callable[..., Declared], tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # the engine says only that canary:prometheus holds a secret, not which of its values: the plain header
    # passed, and went to Prometheus with the stack file in the repository holding it in clear text
    stack_file = _project(tmp_path, monkeypatch, "config:\n  canary:prometheus:\n    address: http://prometheus:9090\n    token:\n      secure: v1:AAAA\n"
                                                 "    headers:\n      X-Scope-OrgID: shop\n")
    prometheus = {"address": "http://prometheus:9090", "token": "s3cr3t", "headers": {"X-Scope-OrgID": "shop"}}
    with pytest.raises(pulumi.RunError) as caught:
        declare(program.program, stack_config(prometheus=prometheus), secret_keys=["canary:prometheus"])
    assert "prometheus.headers: " in str(caught.value) and "must be a Pulumi secret" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
    # encrypted in the file as well: accepted
    stack_file.write_text(
        "config:\n  canary:prometheus:\n    address: http://prometheus:9090\n    token:\n      secure: v1:AAAA\n"
        "    headers:\n      X-Scope-OrgID:\n        secure: v1:BBBB\n")
    assert declare(program.program, stack_config(prometheus=prometheus), secret_keys=["canary:prometheus"]).exported["app"]["name"] == "web"


def test_a_secret_in_app_env_stops_the_program_before_anything_is_declared(declare: Callable[..., Declared], tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # `pulumi config set --secret --path canary:app.env.DB_PASSWORD …`: the engine gives canary:app as a secret, the program
    # read it as plain text, and the password went into both tracks' templates, the state ConfigMap and the stack output
    stack_file = _project(tmp_path, monkeypatch, "config:\n  canary:app:\n    name: web\n    image: registry.example.com/shop/web:1.0.0\n"
                                                 "    env:\n      DB_PASSWORD:\n        secure: v1:AAAA\n")
    app = {"name": "web", "namespace": "shop", "image": "registry.example.com/shop/web:1.0.0", "env": {"DB_PASSWORD": "s3cr3t-pw"}}
    with pytest.raises(pulumi.RunError) as caught:  # a plain `pulumi up`: the stack file says which leaf
        declare(program.program, stack_config(app=app), secret_keys=["canary:app"])
    assert "app.env.DB_PASSWORD: " in str(caught.value) and "app.secrets.<name>.stringData" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
    stack_file.unlink()
    with pytest.raises(pulumi.RunError) as whole:  # config from elsewhere (`--config-file`, an environment): the key
        declare(program.program, stack_config(app=app), secret_keys=["canary:app"])
    assert "app: holds a Pulumi secret" in str(whole.value) and "s3cr3t" not in str(whole.value)
    # a release's own ups (its config checked as it began) go on: refused there, its rollback failed too
    release = {"web": {"release": "r1", "stable": pin("registry.example.com/shop/web:1.0.0", "5555aaaa5555aaaa"), "route": {"weight": 0}}}
    declared: list[Any] = []
    declare(lambda: declared.extend(program.program()), stack_config(app=app, release=release), secret_keys=["canary:app"])
    assert [c.app.name for c in declared] == ["web"]


# --- one component per app in a program ---------------------------------------------------------


def regional(name: str, namespace: str, image: str) -> program.CanaryDeployment:
    return program.CanaryDeployment(name, {**SIMPLE_APP, "namespace": namespace, "image": image}, GATEWAY)


def test_a_second_component_of_the_same_app_is_refused_naming_both(declare: Callable[..., Declared]) -> None:
    """The stack output canary/web, the release key canary:release.web and the hooks are by app name: a
    second component of app web would silently take over the first's output and pin both to one release."""
    def build() -> None:
        regional("shop-eu", "shop-eu", "registry.example.com/shop/web:1.0.0")
        regional("shop-us", "shop-us", "registry.example.com/shop/web:2.0.0")

    with pytest.raises(pulumi.RunError) as caught:
        declare(build)
    message = str(caught.value)
    assert message.startswith("invalid CanaryDeployment shop-us:\n"), message
    assert "app.name: " in message and "CanaryDeployment shop-eu" in message and "canary/web" in message, message


def test_two_apps_of_one_namespace_whose_objects_share_a_name_are_refused_naming_both(declare: Callable[..., Declared]) -> None:
    # app web-canary's apex Service is web's canary Service: each component declared a Service web-canary, one
    # selecting web's canary pods, the other web-canary's stable pods (stack config apps were refused; components not)
    def build() -> None:
        program.CanaryDeployment("web", SIMPLE_APP, GATEWAY)
        program.CanaryDeployment("web-canary", {**SIMPLE_APP, "name": "web-canary"}, GATEWAY)

    with pytest.raises(pulumi.RunError) as caught:
        declare(build)
    message = str(caught.value)
    assert message.startswith("invalid CanaryDeployment web-canary:\n"), message
    assert "clashes with app web (CanaryDeployment web) in namespace shop: both would own the Service and Deployment named web-canary" in message

    def elsewhere() -> None:  # in namespaces of their own, nothing is shared
        program.CanaryDeployment("web", SIMPLE_APP, GATEWAY)
        program.CanaryDeployment("web-canary", {**SIMPLE_APP, "name": "web-canary", "namespace": "shop-2"}, GATEWAY)

    assert {"canary/web", "canary/web-canary"} <= set(declare(elsewhere).outputs)


def test_components_of_different_apps_and_the_same_app_in_successive_programs_are_accepted(declare: Callable[..., Declared]) -> None:
    def build() -> None:
        regional("shop-eu", "shop-eu", "registry.example.com/shop/web:1.0.0")
        program.CanaryDeployment("api", {**SIMPLE_APP, "name": "api", "image": "registry.example.com/shop/api:1.0.0"}, GATEWAY)

    first = declare(build)
    assert {"canary/web", "canary/api"} <= set(first.outputs)
    # a program of its own (each update runs one): the app name is free again
    again = declare(build)
    assert again.outputs["canary/web"]["namespace"] == "shop-eu"


@pytest.mark.parametrize(("key", "value"), [("metric_templates", {}), ("stable_image", "registry.example.com/shop/web:0.9.0")])
def test_the_program_refuses_a_key_it_does_not_read_as_validate_does(declare: Callable[..., Declared], key: str, value: Any) -> None:
    # once left out unseen: plain `pulumi up` applied a stack whose canary:stable_image it ignored
    with pytest.raises(pulumi.RunError) as caught:
        declare(program.program, stack_config(**{key: value}))
    assert f"{key}: is not a known field" in str(caught.value)


def test_the_program_refuses_a_dotted_key_set_without_path_naming_how_to_set_it(declare: Callable[..., Declared]) -> None:
    # once ignored by the program: plain `pulumi up` ran with the default timeout the user meant to change
    with pytest.raises(pulumi.RunError) as caught:
        declare(program.program, {**stack_config(), "canary:prometheus.timeout": "30s"})
    assert "prometheus.timeout: was set with a dotted name but without --path" in str(caught.value)


def test_an_unknown_key_held_as_a_secret_is_refused_without_its_value(declare: Callable[..., Declared]) -> None:
    # `pulumi config set --secret dbPassword …` in a project named canary: the program refused canary:dbPassword
    # quoting the decrypted password, into the update's log
    with pytest.raises(pulumi.RunError) as caught:
        declare(program.program, {**stack_config(), "canary:dbPassword": "hunter2-very-secret"}, secret_keys=["canary:dbPassword"])
    assert "dbPassword: is not a known field" in str(caught.value) and "hunter2" not in str(caught.value)


# --- image_config: the key `canary release --image` sets ----------------------------------------------------------------


@pytest.mark.parametrize(("given", "key"), [("image", "shop:image"), ("shop:image", "shop:image"), ("shop:web.image", "shop:web.image"),
                                            ("images:web", "images:web")])
def test_image_config_is_exported_with_its_namespace_a_bare_key_the_project_s(declare: Callable[..., Declared], given: str, key: str) -> None:
    # `image`, the key `pulumi.Config().require("image")` reads, was exported bare: `canary release` wrote `image:`
    # beside `shop:image` in the stack file, and `canary validate` then said `image: is not a known field`
    d = declare(component(image_config=given), project="shop")
    assert d.exported["imageConfig"] == key


@pytest.mark.parametrize(("given", "rule"), [
    ("shop image", "must be a config key, [namespace:]name (shop:image, or image, which is shop:image"),
    ("", "must be a config key"),
    ("shop:", "must be a config key"),
    ("a:b:c", "one colon at most"),
    ('shop:images["web"]', "no empty part, blank, quote or bracket"),
    (42, "must be a config key"),
    ("canary:image", "names a key of canary's own namespace (canary:)"),
])
def test_an_image_config_that_is_no_key_the_program_can_read_is_refused_naming_it(declare: Callable[..., Declared], given: Any, rule: str) -> None:
    with pytest.raises(pulumi.RunError) as caught:
        declare(component(image_config=given), project="shop")
    message = str(caught.value)
    assert message.startswith("invalid CanaryDeployment web:\n  - image_config: ") and rule in message, message


def test_an_image_config_refused_beside_other_bad_arguments_is_listed_with_them(declare: Callable[..., Declared]) -> None:
    with pytest.raises(pulumi.RunError) as caught:
        declare(component({**SIMPLE_APP, "replicas": 0}, image_config="shop image"), project="shop")
    assert "image_config: must be a config key" in str(caught.value) and "app.replicas: " in str(caught.value), str(caught.value)


def test_a_bare_image_config_in_a_project_named_canary_is_canary_s_namespace_and_refused(declare: Callable[..., Declared]) -> None:
    with pytest.raises(pulumi.RunError) as caught:
        declare(component(image_config="image"), project="canary")
    assert "image_config: names a key of canary's own namespace" in str(caught.value)


@pytest.mark.parametrize(("given", "key", "written"), [
    ("image", "shop.web:image", {"shop.web:image": "web:2"}),
    ("shop.web:image", "shop.web:image", {"shop.web:image": "web:2"}),
    ("web.image", "shop.web:web.image", {"shop.web:web": {"image": "web:2"}}),
    ("shop.web:web.image", "shop.web:web.image", {"shop.web:web": {"image": "web:2"}}),
])
def test_an_image_config_of_a_project_named_with_a_dot_is_the_key_the_program_reads_and_release_sets(
        declare: Callable[..., Declared], tmp_path: Path, given: str, key: str, written: dict[str, Any]) -> None:
    # a project name may hold dots (Pulumi takes alphanumerics, '-', '_' and '.'), and so does its namespace: the key named
    # with it was refused, and the one a bare `image` became could not be read back by `canary release --image`, which wrote
    # the bare key's image under `shop:` (`shop: {web:image: …}`), a key no program reads
    from canary import api
    from canary.adapters import stackfile

    exported = declare(component(image_config=given), project="shop.web").exported["imageConfig"]
    assert exported == key
    (tmp_path / "Pulumi.yaml").write_text("name: shop.web\nruntime: python\n")
    path = tmp_path / "Pulumi.prod.yaml"
    for image_config in (exported, given):  # the stack output's, and the key as the program names it (api.set_image takes both)
        path.write_text("config:\n  shop.web:image: web:1\n  shop.web:web:\n    image: web:1\n")
        assert api.set_image("prod", "web:2", app="web", project_dir=tmp_path, image_config=image_config) == ("web", "web:1")
        config = stackfile.load(path.read_text())["config"]
        assert set(config) == {"shop.web:image", "shop.web:web"}, config
        assert {k: config[k] for k in written} == written


def _service(ports: list[dict[str, Any]], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": "shop", **({"labels": labels} if labels else {})}, "spec": {"selector": {"app": "web"}, "ports": ports}}


def test_an_adopted_service_whose_http_port_speaks_another_app_protocol_is_refused_naming_the_fix(declare: Callable[..., Declared]) -> None:
    # an h2c app adopted without app.appProtocol: the apply dropped its port's appProtocol, and clients and the gateway
    # spoke HTTP/1.1 to pods that answer HTTP/2 only, until someone noticed
    guard = lambda app, stack: program._adopted_service_guard(app, 80)  # noqa: E731
    h2c = _service([{"name": "grpc", "port": 80.0, "targetPort": 9000.0, "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}])
    plain = _service([{"name": "http", "port": 80.0, "targetPort": 8080.0, "protocol": "TCP"}])
    ours = _service([{"name": "http", "port": 80.0, "targetPort": 8080.0, "protocol": "TCP"}], {"canary.dev/app": "web"})
    error = run_guard(declare, guard, h2c, ours)
    assert error is not None and "its port grpc has appProtocol kubernetes.io/h2c" in str(error) and "Set app.appProtocol to kubernetes.io/h2c" in str(error)
    ours_h2c = _service([{"name": "http", "port": 80.0, "targetPort": 8080.0, "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}], {"canary.dev/app": "web"})
    assert run_guard(declare, guard, h2c, ours_h2c) is None  # carried over by app.appProtocol
    error = run_guard(declare, guard, plain, ours_h2c)
    assert error is not None and "has appProtocol none" in str(error) and "Leave app.appProtocol out" in str(error)
    assert run_guard(declare, guard, plain, ours) is None
    # canary's own apex Service (every later up): app.appProtocol is the team's to change
    assert run_guard(declare, guard, ours, ours_h2c) is None
    # the guard is bound to the apex Service only when it is adopted
    assert declare(component(adopt={"service": "web"})).hooks.get("web-apex-service") == ["canary-adopted-service-guard-web"]
    assert not declare(component()).hooks.get("web-apex-service")


# --- A/B match values: a secret in Pulumi's state ------------------------------------------------------------------------

TOKEN_MATCH = routing.Match(headers=(("X-Tester", "Exact", "tester-S3CRET"),))


def test_a_route_with_ab_matches_is_declared_a_secret_and_one_without_is_not(declare: Callable[..., Declared]) -> None:
    # a match value may be a tester's token (a secret in the stack file): Pulumi's state held the route's spec in plain text
    stable_pin = pin("registry.example.com/shop/web:1.0.0", "5555aaaa5555aaaa")
    canary_pin = pin("registry.example.com/shop/web:2.0.0", "cccc2222cccc2222", replicas=1)
    matches = [{"headers": [["X-Tester", "Exact", "tester-S3CRET"]], "queryParams": []}]
    release = {"web": {"release": "r1", "stable": stable_pin, "canary": canary_pin, "route": {"weight": 0, "matches": matches}}}
    spec = declare(component(), {"canary:release": release}).inputs("web-route")["spec"]
    assert spec[rpc._special_sig_key] == rpc._special_secret_sig
    assert spec["value"]["rules"][0]["matches"][0]["headers"] == [{"type": "Exact", "name": "X-Tester", "value": "tester-S3CRET"}]
    weighted = {"web": {**release["web"], "route": {"weight": 20}}}
    assert rpc._special_sig_key not in declare(component(), {"canary:release": weighted}).inputs("web-route")["spec"]
    assert rpc._special_sig_key not in declare(component()).inputs("web-route")["spec"]


def test_a_release_config_s_route_takes_its_match_values_from_the_process_that_wrote_it(declare: Callable[..., Declared],
                                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # the release config file held the values as plain config, kept by Pulumi in every update's history: it holds a
    # marker, and the program takes the values from the canary process that wrote the file (programs run inline)
    stable_pin = pin("registry.example.com/shop/web:1.0.0", "5555aaaa5555aaaa")
    canary_pin = pin("registry.example.com/shop/web:2.0.0", "cccc2222cccc2222", replicas=1)
    recorded = [{"headers": [["X-Tester", "Exact", routing.NOT_RECORDED]], "queryParams": []}]
    release = {"web": {"release": "r7", "stable": stable_pin, "canary": canary_pin, "route": {"weight": 0, "matches": recorded}}}
    monkeypatch.setattr(stackfile, "_MATCH_VALUES", {("web", "r7"): [{"headers": [["X-Tester", "Exact", "tester-S3CRET"]], "queryParams": []}]})
    spec = declare(component(), {"canary:release": release}).inputs("web-route")["spec"]
    assert spec["value"]["rules"][0]["matches"][0]["headers"] == [{"type": "Exact", "name": "X-Tester", "value": "tester-S3CRET"}]
    # values given in the config (a program's own test, a file of before): taken as given, whatever this process holds
    given = [{"headers": [["X-Tester", "Exact", "given"]], "queryParams": []}]
    spec = declare(component(), {"canary:release": {"web": {**release["web"], "route": {"weight": 0, "matches": given}}}}).inputs("web-route")["spec"]
    assert spec["value"]["rules"][0]["matches"][0]["headers"] == [{"type": "Exact", "name": "X-Tester", "value": "given"}]
    # values this process does not hold: refused, not a route whose testers would all be sent to stable
    monkeypatch.setattr(stackfile, "_MATCH_VALUES", {})
    with pytest.raises(Exception, match=r"canary:release.web.route: its A/B match values are not in this process"):
        declare(component(), {"canary:release": release})


def test_the_route_guards_read_a_secret_route_spec(declare: Callable[..., Declared]) -> None:
    """A secret input reaches a hook as an Output: the route guard awaits it, and still refuses a plain up that takes an
    A/B release's matches off the route; canary's own route still passes the adopted route's guard."""
    ab, rest = route(routing.RouteShape(matches=(TOKEN_MATCH,))), route(routing.AT_REST)
    outcomes: list[Exception | None] = []

    def build() -> None:
        async def call(hook: pulumi.ResourceHook, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
            secret = {**old, "spec": pulumi.Output.secret(old["spec"])}
            awaited = hook.callback(hook_args(secret, new))
            assert awaited is not None  # awaited by the engine
            try:
                await awaited
            except Exception as exc:  # noqa: BLE001 (what the engine would report is what is tested)
                outcomes.append(exc)
                return
            outcomes.append(None)

        async def both() -> None:
            await call(program._route_guard("web", STACK), ab, rest)
            await call(program._adopted_route_guard("web"), ab, ab)

        pulumi.Output.from_input(both())  # type: ignore[arg-type]

    declare(build)
    assert len(outcomes) == 2, outcomes
    assert isinstance(outcomes[0], RuntimeError) and "canary abort" in str(outcomes[0]), outcomes[0]
    assert outcomes[1] is None
