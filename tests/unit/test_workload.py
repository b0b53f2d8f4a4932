"""The workload (canary.core.workload): a pod template checked against the Kubernetes schema,
its main container, the config it reads, its hash, and its shape for each track."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from canary.core import naming, workload
from canary.core.naming import Track
from tests.helpers import pod_template

IMAGE = "registry.example.com/shop/web:1.0.0"


def _full_template() -> dict[str, Any]:
    """A template reading config in every way a pod can."""
    return {
        "metadata": {"labels": {"app": "web", "app.kubernetes.io/name": "web", "tier": "front"}, "annotations": {"prometheus.io/scrape": "true"}},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "registry.example.com/shop/migrate:1", "envFrom": [{"secretRef": {"name": "migrations"}}]}],
            "containers": [
                {"name": "proxy", "image": "envoy:1.30", "envFrom": [{"configMapRef": {"name": "proxy-config"}}]},
                {
                    "name": "web",
                    "image": IMAGE,
                    "env": [
                        {"name": "PLAIN", "value": "x"},
                        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    ],
                },
            ],
            "volumes": [
                {"name": "files", "configMap": {"name": "static-files"}},
                {"name": "tls", "secret": {"secretName": "web-tls"}},
                {"name": "bundle", "projected": {"sources": [{"configMap": {"name": "bundle-a"}}, {"secret": {"name": "bundle-b"}}, {"downwardAPI": {"items": []}}]}},
                {"name": "scratch", "emptyDir": {}},
            ],
        },
    }


# --- check --------------------------------------------------------------------------------------


def test_a_valid_template_has_no_problems() -> None:
    assert workload.check(_full_template(), "app.template") == []
    assert workload.check(pod_template(), "t") == []


@pytest.mark.parametrize(
    ("template", "field", "rule", "shown"),
    [
        # unknown fields, with the likely intended one when it is one edit away or differs in case
        (pod_template(imgae="x:1"), "t.spec.containers[0].imgae", "is not a field of Container (did you mean image?)", "'x:1'"),
        (pod_template(volumeMount=[]), "t.spec.containers[0].volumeMount", "is not a field of Container (did you mean volumeMounts?)", "[]"),
        (pod_template(Image="x:1"), "t.spec.containers[0].Image", "is not a field of Container (did you mean image?)", "'x:1'"),
        (pod_template(imagePullPolicyy="Always"), "t.spec.containers[0].imagePullPolicyy", "(did you mean imagePullPolicy?)", "'Always'"),
        (pod_template(sidecar={"image": "x"}), "t.spec.containers[0].sidecar", "is not a field of Container", "a mapping of image"),
        ({"spec": {"containers": [{"name": "web"}], "volumes": [{"name": "v", "configmap": {}}]}}, "t.spec.volumes[0].configmap", "is not a field of Volume (did you mean configMap?)", "a mapping of nothing"),
        ({"metadata": {"label": {}}, "spec": {"containers": [{"name": "web"}]}}, "t.metadata.label", "is not a field of ObjectMeta (did you mean labels?)", "a mapping of nothing"),
        ({"template": {}}, "t.template", "is not a field of PodTemplateSpec", "a mapping of nothing"),
        # deep in lists and maps
        (pod_template(env=[{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"configMapKeyRef": {"nme": "settings", "key": "b"}}}]),
         "t.spec.containers[0].env[1].valueFrom.configMapKeyRef.nme", "is not a field of ConfigMapKeySelector (did you mean name?)", "'settings'"),
        (pod_template(env=[{"name": "B", "valueFrom": {"configMapKeyRef": {"name": "settings"}}}]), "t.spec.containers[0].env[0].valueFrom.configMapKeyRef.key", "is required", "nothing"),
        ({"spec": {"containers": [{"name": "web"}], "nodeSelector": {"disk": 1}}}, "t.spec.nodeSelector.disk", "must be a string", "1"),
        (pod_template(resources={"limits": {"cpu": 1}}), "t.spec.containers[0].resources.limits.cpu", "must be a string", "1"),
        # wrong types
        (pod_template(ports=[{"containerPort": "8080"}]), "t.spec.containers[0].ports[0].containerPort", "must be an integer", "'8080'"),
        (pod_template(ports=[{"containerPort": True}]), "t.spec.containers[0].ports[0].containerPort", "must be an integer", "True"),
        (pod_template(ports={"http": 8080}), "t.spec.containers[0].ports", "must be a list", "a mapping of http"),
        (pod_template(args="--fast"), "t.spec.containers[0].args", "must be a list", "'--fast'"),
        (pod_template(args=["--fast", 2]), "t.spec.containers[0].args[1]", "must be a string", "2"),
        (pod_template(stdin="yes"), "t.spec.containers[0].stdin", "must be a boolean", "'yes'"),
        ({"spec": {"containers": [{"name": "web"}], "volumes": [{"name": "v", "configMap": "settings"}]}}, "t.spec.volumes[0].configMap", "must be a mapping", "'settings'"),
        ({"spec": ["web"]}, "t.spec", "must be a mapping", "['web']"),
        ({"spec": {"containers": {"web": {}}}}, "t.spec.containers", "must be a list", "a mapping of web"),
        ({"spec": {"containers": [None]}}, "t.spec.containers[0]", "must be a mapping", "None"),
        # required fields
        ({"spec": {"containers": [{"image": IMAGE}]}}, "t.spec.containers[0].name", "is required", "nothing"),
        ({"spec": {}}, "t.spec.containers", "is required", "nothing"),
        # values are shown short
        (pod_template(command="x" * 200), "t.spec.containers[0].command", "must be a list", "'" + "x" * 76 + "..."),
    ],
)
def test_check_names_the_path_of_every_problem(template: dict[str, Any], field: str, rule: str, shown: str) -> None:
    problems = workload.check(template, "t")
    matching = [p for p in problems if p.field == field]
    assert matching, f"{field} not among {[str(p) for p in problems]}"
    assert rule in matching[0].rule and shown in matching[0].value


def test_check_reports_every_problem_and_suggests_only_near_names() -> None:
    problems = workload.check(pod_template(zzzz=1, imagePullPolicy=3, ports=[{"containerPort": "x", "protocl": "TCP"}]), "t")
    assert {p.field: p.rule for p in problems} == {
        "t.spec.containers[0].zzzz": "is not a field of Container",
        "t.spec.containers[0].imagePullPolicy": "must be a string",
        "t.spec.containers[0].ports[0].containerPort": "must be an integer",
        "t.spec.containers[0].ports[0].protocl": "is not a field of ContainerPort (did you mean protocol?)",
    }


def test_check_skips_null_values() -> None:
    assert workload.check({"metadata": None, "spec": {"containers": [{"name": "web", "image": None}]}}, "t") == []


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}, "V2MetricSpec", []),
        ({"resource": {"name": "cpu", "target": {"type": "Utilization"}}}, "V2MetricSpec", [("m.type", "is required")]),
        ({"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValu": "10"}}}, "V2MetricSpec",
         [("m.pods.target.averageValu", "is not a field of MetricTarget (did you mean averageValue?)")]),
        ({"scaleDown": {"stabilizationWindowSeconds": 300, "policies": [{"type": "Pods", "value": 1, "periodSeconds": "60"}]}}, "V2HorizontalPodAutoscalerBehavior",
         [("m.scaleDown.policies[0].periodSeconds", "must be an integer")]),
    ],
)
def test_check_takes_other_kubernetes_kinds(value: dict[str, Any], kind: str, expected: list[tuple[str, str]]) -> None:
    assert [(p.field, p.rule) for p in workload.check(value, "m", kind)] == expected


# --- the main container --------------------------------------------------------------------------


def test_the_main_container_is_the_one_named_like_the_app_else_the_only_one() -> None:
    template = _full_template()
    assert workload.main_container(template, "web")["name"] == "web"
    assert workload.main_container(template, "web", "proxy")["name"] == "proxy"
    assert workload.image(template, "web") == IMAGE
    assert workload.image(template, "web", "proxy") == "envoy:1.30"
    assert workload.main_container({"spec": {"containers": [{"name": "api"}]}}, "web")["name"] == "api"


def test_several_containers_none_named_like_the_app_are_not_guessed() -> None:
    """The first of them was taken: a sidecar listed first got app.image, and the Services its port."""
    with pytest.raises(workload.AmbiguousContainer) as caught:
        workload.main_container(_full_template(), "shop")
    assert caught.value.names == ("proxy", "web")
    assert isinstance(caught.value, KeyError)  # as a missing one: readers of a running template find no image


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ([], None),
        ([{"containerPort": 9090}], 9090),
        ([{"name": "metrics", "containerPort": 9090}, {"name": "http", "containerPort": 8080}], 8080),
        ([{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 15000}], 8080),
    ],
    ids=["none", "one", "http-second", "http-first"],
)
def test_the_main_port_is_the_only_one_else_the_one_named_http(ports: list[dict[str, Any]], expected: int | None) -> None:
    assert workload.main_port({"name": "web", "ports": ports}) == expected


def test_several_ports_none_named_http_are_not_guessed() -> None:
    with pytest.raises(workload.AmbiguousPort) as caught:
        workload.main_port({"name": "web", "ports": [{"name": "metrics", "containerPort": 9090}, {"containerPort": 8081}]})
    assert caught.value.ports == ("metrics 9090", "8081")


@pytest.mark.parametrize(
    ("template", "name", "missing"),
    [
        (_full_template(), "sidecar", "sidecar"),
        ({"spec": {"containers": []}}, None, "web"),
        ({"spec": {}}, None, "web"),
        ({}, None, "web"),
        ({"spec": None}, None, "web"),
        ({"spec": {"containers": "web"}}, None, "web"),
    ],
)
def test_no_such_main_container_is_a_key_error(template: dict[str, Any], name: str | None, missing: str) -> None:
    with pytest.raises(KeyError, match=missing):
        workload.main_container(template, "web", name)


def test_with_image_changes_the_main_container_of_a_copy() -> None:
    template = _full_template()
    before = copy.deepcopy(template)
    changed = workload.with_image(template, "web", "registry.example.com/shop/web:2.0.0")
    assert template == before
    assert workload.image(changed, "web") == "registry.example.com/shop/web:2.0.0"
    assert workload.image(changed, "web", "proxy") == "envoy:1.30"
    assert workload.image(workload.with_image(template, "web", "envoy:1.31", "proxy"), "web", "proxy") == "envoy:1.31"


# --- the config a template reads ----------------------------------------------------------------


def test_referenced_finds_volumes_projected_sources_env_from_and_value_from() -> None:
    assert workload.referenced(_full_template()) == {
        "configMap": {"proxy-config", "settings", "static-files", "bundle-a"},
        "secret": {"migrations", "db", "web-tls", "bundle-b"},
    }


@pytest.mark.parametrize(
    "template",
    [
        {},
        pod_template(),
        {"spec": {"containers": [{"name": "web", "env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}], "volumes": [{"name": "e", "emptyDir": {}}]}},
        {"spec": {"containers": [{"name": "web", "envFrom": [{"configMapRef": {}}]}]}},  # no name: nothing to find
        # shapes check() refuses are read as empty, never a crash
        {"spec": {"containers": [{"name": "web", "envFrom": [{"configMapRef": None}], "env": [{"name": "A", "valueFrom": "x"}]}], "volumes": [None, {"name": "v", "configMap": "settings"}]}},
        {"spec": ["web"]},
    ],
)
def test_referenced_finds_nothing_where_there_is_nothing(template: dict[str, Any]) -> None:
    assert workload.referenced(template) == {"configMap": set(), "secret": set()}


def test_rename_references_points_every_reference_at_the_copies() -> None:
    template = _full_template()
    before = copy.deepcopy(template)
    config_maps = {name: f"{name}-0123456789" for name in ("proxy-config", "settings", "static-files", "bundle-a")}
    secrets = {name: f"{name}-abcdefabcd" for name in ("migrations", "db", "web-tls", "bundle-b")}
    renamed = workload.rename_references(template, config_maps, secrets)
    assert template == before
    assert workload.referenced(renamed) == {"configMap": set(config_maps.values()), "secret": set(secrets.values())}
    spec = renamed["spec"]
    assert spec["volumes"][1]["secret"] == {"secretName": "web-tls-abcdefabcd"}
    assert spec["containers"][1]["env"][1]["valueFrom"]["configMapKeyRef"] == {"name": "settings-0123456789", "key": "mode"}
    assert spec["containers"][1]["env"][0] == {"name": "PLAIN", "value": "x"}


def test_rename_references_leaves_names_it_is_not_given() -> None:
    renamed = workload.rename_references(_full_template(), {"settings": "settings-1"}, {})
    assert workload.referenced(renamed) == {
        "configMap": {"proxy-config", "settings-1", "static-files", "bundle-a"},
        "secret": {"migrations", "db", "web-tls", "bundle-b"},
    }


# --- hashes -------------------------------------------------------------------------------------


def test_content_hash_does_not_depend_on_order() -> None:
    a = workload.content_hash({"data": {"mode": "fast", "level": "info"}, "binaryData": {}})
    b = workload.content_hash({"binaryData": {}, "data": {"level": "info", "mode": "fast"}})
    assert a == b and re.fullmatch(r"[0-9a-f]{64}", a)
    assert workload.content_hash({"data": {"mode": "slow", "level": "info"}}) != workload.content_hash({"data": {"mode": "fast", "level": "info"}})


CONFIG = {"configMap/settings": "a" * 64, "secret/db": "b" * 64}


def test_the_template_hash_is_stable_for_the_same_template_and_config() -> None:
    first = workload.template_hash(_full_template(), CONFIG)
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert workload.template_hash(copy.deepcopy(_full_template()), dict(reversed(list(CONFIG.items())))) == first


def test_the_template_hash_ignores_canarys_own_labels_and_annotations() -> None:
    template = _full_template()
    marked = copy.deepcopy(template)
    marked["metadata"]["labels"].update({naming.APP_LABEL: "web", naming.TRACK_LABEL: "canary"})
    marked["metadata"]["annotations"][naming.HASH_ANNOTATION] = "0123456789abcdef"
    assert workload.template_hash(marked, CONFIG) == workload.template_hash(template, CONFIG)
    assert workload.strip(marked) == template


def test_strip_drops_metadata_that_only_held_canarys_marks() -> None:
    bare = pod_template()
    del bare["metadata"]
    marked = {**copy.deepcopy(bare), "metadata": {"labels": {naming.TRACK_LABEL: "stable"}, "annotations": {naming.HASH_ANNOTATION: "x"}}}
    assert workload.strip(marked) == bare
    assert workload.template_hash(marked) == workload.template_hash(bare)


@pytest.mark.parametrize(
    "change",
    [
        lambda t, c: t["spec"]["containers"][1].update(image="registry.example.com/shop/web:2.0.0"),
        lambda t, c: t["metadata"]["labels"].update(tier="back"),
        lambda t, c: t["metadata"]["annotations"].update({"prometheus.io/port": "9090"}),
        lambda t, c: t["spec"]["containers"][1]["env"].append({"name": "NEW", "value": "1"}),
        lambda t, c: c.update({"configMap/settings": "c" * 64}),  # a ConfigMap's content changed
        lambda t, c: c.update({"configMap/extra": "d" * 64}),
        lambda t, c: c.pop("secret/db"),
    ],
    ids=["image", "label", "annotation", "env", "config-map-content", "config-added", "config-removed"],
)
def test_the_template_hash_changes_with_the_template_or_its_config(change: Any) -> None:
    template, config = _full_template(), dict(CONFIG)
    before = workload.template_hash(template, config)
    change(template, config)
    assert workload.template_hash(template, config) != before


# --- each track's template ------------------------------------------------------------------------


def test_the_canary_track_suffixes_the_app_wide_selector_labels() -> None:
    template = _full_template()
    template["metadata"]["labels"]["name"] = "web"
    before = copy.deepcopy(template)
    canary = workload.for_track(template, "web", Track.CANARY, "0123456789abcdef")
    assert template == before
    assert canary["metadata"]["labels"] == {
        "app": "web-canary",
        "name": "web-canary",
        "app.kubernetes.io/name": "web-canary",
        "tier": "front",
        naming.APP_LABEL: "web",
        naming.TRACK_LABEL: "canary",
        "app.kubernetes.io/managed-by": "canary",
    }
    assert canary["metadata"]["annotations"] == {"prometheus.io/scrape": "true", naming.HASH_ANNOTATION: "0123456789abcdef"}
    assert canary["spec"] == template["spec"]
    assert workload.declared_hash(canary) == "0123456789abcdef"


def test_the_stable_track_keeps_the_templates_labels() -> None:
    stable = workload.for_track(_full_template(), "web", Track.STABLE, "fedcba9876543210")
    assert stable["metadata"]["labels"] == {
        "app": "web",
        "app.kubernetes.io/name": "web",
        "tier": "front",
        naming.APP_LABEL: "web",
        naming.TRACK_LABEL: "stable",
        "app.kubernetes.io/managed-by": "canary",
    }
    assert workload.declared_hash(stable) == "fedcba9876543210"


def test_for_track_on_a_template_without_metadata() -> None:
    bare = {"spec": {"containers": [{"name": "web", "image": IMAGE}]}}
    canary = workload.for_track(bare, "web", Track.CANARY, "h")
    assert canary["metadata"] == {"labels": {naming.APP_LABEL: "web", naming.TRACK_LABEL: "canary", "app.kubernetes.io/managed-by": "canary"},
                                  "annotations": {naming.HASH_ANNOTATION: "h"}}
    assert workload.declared_hash(bare) is None


def _placed(app_selector: dict[str, Any]) -> dict[str, Any]:
    """A template whose pods spread and keep apart by selectors of their own app (and of others)."""
    cache = {"matchLabels": {"app": "cache"}}
    return {
        "metadata": {"labels": {"app": "web", "app.kubernetes.io/name": "web", "tier": "front"}},
        "spec": {
            "containers": [{"name": "web", "image": IMAGE}],
            "affinity": {
                "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}]}},
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": copy.deepcopy(app_selector), "topologyKey": "kubernetes.io/hostname"}],
                    "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
                        "labelSelector": {"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In", "values": ["web", "api"]}]},
                        "topologyKey": "topology.kubernetes.io/zone"}}],
                },
                "podAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": cache, "topologyKey": "kubernetes.io/hostname"}],
                    "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm": {
                        "labelSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]},
                                                               {"key": "app", "operator": "Exists"}]},
                        "topologyKey": "kubernetes.io/hostname"}}],
                },
            },
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                 "labelSelector": copy.deepcopy(app_selector), "matchLabelKeys": ["pod-template-hash"]},
                # not a label the template carries, and not a suffixed label: left alone
                {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
                 "labelSelector": {"matchLabels": {"name": "web", "tier": "front"}}},
            ],
        },
    }


def test_the_canarys_own_selectors_of_its_app_follow_its_suffixed_labels() -> None:
    """A required anti-affinity on app: web kept every canary pod off the nodes running stable pods (with as
    many replicas as nodes, the canary never scheduled), and a spread constraint counted stable pods."""
    template = _placed({"matchLabels": {"app": "web", "tier": "front"}})
    before = copy.deepcopy(template)
    canary = workload.for_track(template, "web", Track.CANARY, "h")
    assert template == before
    expected = _placed({"matchLabels": {"app": "web-canary", "tier": "front"}})["spec"]
    anti = expected["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    anti["labelSelector"]["matchExpressions"][0]["values"] = ["web-canary", "api"]
    affinity = expected["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    affinity["labelSelector"]["matchExpressions"][0]["values"] = ["web-canary"]
    assert canary["spec"] == expected
    # stable runs the template exactly as written
    assert workload.for_track(template, "web", Track.STABLE, "h")["spec"] == before["spec"]


def test_selectors_by_the_apps_labels_in_expressions_follow_them_too() -> None:
    canary = workload.for_track(_placed({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}), "web", Track.CANARY, "h")
    required = canary["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert required["labelSelector"] == {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web-canary"]}]}
    assert canary["spec"]["topologySpreadConstraints"][0]["labelSelector"] == required["labelSelector"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("web", "web-canary"), ("web-canary", "web-canary-canary"), ("a" * 63, "a" * 56 + "-canary"), ("a" * 55 + ".b", "a" * 55 + ".-canary")],
)
def test_canary_label_values_stay_valid_label_values(value: str, expected: str) -> None:
    labels = workload.for_track({"metadata": {"labels": {"app": value}}}, "web", Track.CANARY, "h")["metadata"]["labels"]
    assert labels["app"] == expected
    assert len(labels["app"]) <= 63 and re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", labels["app"])


# --- the canary's size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replicas", "weight", "fixed", "expected"),
    [(4, 10, None, 1), (4, 25, None, 1), (4, 30, None, 2), (10, 50, None, 5), (3, 50, None, 2), (10, 100, None, 10), (1, 1, None, 1), (100, 0, None, 1), (4, 50, 3, 3), (4, 0, 1, 1)],
)
def test_canary_replicas_is_ceil_at_least_one_or_fixed(replicas: int, weight: int, fixed: int | None, expected: int) -> None:
    assert workload.canary_replicas(replicas, weight, fixed) == expected


def test_a_request_above_its_limit_is_refused_before_the_api_server_does() -> None:
    template = pod_template()
    template["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1024Mi"}}
    problems = workload.check(template, "app.template")
    assert [(p.field, p.rule.split(":")[0]) for p in problems] == [("app.template.spec.containers[0].resources.requests.cpu", "must not be above its limit (1)")]
    template["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "0.5"
    assert workload.check(template, "app.template") == []


@pytest.mark.parametrize(("labels", "users"), [
    ({"copy.canary.dev/web": "true", "canary.dev/copy-of": "settings"}, {"web"}),
    ({"copy.canary.dev/web": "true", "copy.canary.dev/api": "true"}, {"web", "api"}),
    # made before copies were shared: its one app, until that app declares it anew
    ({"canary.dev/app": "web", "canary.dev/copy-of": "settings"}, {"web"}),
    ({"canary.dev/app": "web", "copy.canary.dev/api": "true"}, {"web", "api"}),
    ({"canary.dev/copy-of": "settings"}, set()),
])
def test_the_apps_that_read_a_copy_are_read_from_its_labels(labels: dict[str, str], users: set[str]) -> None:
    assert naming.copy_users(labels) == users


def test_canary_pods_never_share_an_app_wide_label_value_with_stable() -> None:
    # an app named bird-canary, labelled app: bird-canary: the value was left as it was on the canary (suffixed
    # "once"), so the team's Services and policies selecting app=bird-canary reached the canary's pods
    template = {"metadata": {"labels": {"app": "bird-canary"}}, "spec": {"containers": [{"name": "bird-canary", "image": "bird:1"}]}}
    stable = workload.for_track(template, "bird-canary", Track.STABLE, "h")
    canary = workload.for_track(template, "bird-canary", Track.CANARY, "h")
    assert (stable["metadata"]["labels"]["app"], canary["metadata"]["labels"]["app"]) == ("bird-canary", "bird-canary-canary")
    longest = "a" * 56 + "-canary"  # 63 characters: suffixing after the cut gave the same value back
    assert naming.canary_value(longest) != longest and len(naming.canary_value(longest)) <= 63


# --- probe and lifecycle ports ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("container", "field"),
    [
        ({"readinessProbe": {"httpGet": {"path": "/ready", "port": "web"}}}, "app.template.spec.containers[0].readinessProbe.httpGet.port"),
        ({"livenessProbe": {"tcpSocket": {"port": "admin"}}}, "app.template.spec.containers[0].livenessProbe.tcpSocket.port"),
        ({"startupProbe": {"httpGet": {"port": "HTTP"}}}, "app.template.spec.containers[0].startupProbe.httpGet.port"),
        ({"lifecycle": {"postStart": {"httpGet": {"path": "/warm", "port": "warmup"}}}}, "app.template.spec.containers[0].lifecycle.postStart.httpGet.port"),
        ({"lifecycle": {"preStop": {"tcpSocket": {"port": "drain"}}}}, "app.template.spec.containers[0].lifecycle.preStop.tcpSocket.port"),
    ],
)
def test_a_probe_on_a_port_name_its_container_does_not_declare_is_refused(container: dict[str, Any], field: str) -> None:
    # the API server takes it, and the kubelet fails the probe every time: the canary is never Ready. A rule newer than
    # some releases in flight: apart from check's, for its callers to refuse or note
    assert workload.check(pod_template(**container), "app.template") == []
    problems = workload.probe_port_problems(pod_template(**container), "app.template")
    assert [p.field for p in problems] == [field]
    assert "must name a port of its own container (web declares the port names http)" in problems[0].rule


@pytest.mark.parametrize(
    "container",
    [
        {"readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}}, "livenessProbe": {"tcpSocket": {"port": "http"}}},
        {"readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}, "startupProbe": {"tcpSocket": {"port": 9090}}},
        {"readinessProbe": {"grpc": {"port": 9000}}, "lifecycle": {"preStop": {"httpGet": {"path": "/drain", "port": "http"}}}},
        {"readinessProbe": {"exec": {"command": ["true"]}}, "lifecycle": {"preStop": {"sleep": {"seconds": 5}}}},
    ],
)
def test_a_probe_on_a_declared_name_or_a_number_is_accepted(container: dict[str, Any]) -> None:
    assert workload.check(pod_template(**container), "app.template") == []
    assert workload.probe_port_problems(pod_template(**container), "app.template") == []


def test_a_named_probe_port_is_looked_up_in_its_own_container_only() -> None:
    template = pod_template(readinessProbe={"httpGet": {"path": "/ready", "port": "metrics"}})
    template["spec"]["containers"].append({"name": "exporter", "image": "exporter:1", "ports": [{"name": "metrics", "containerPort": 9100}]})
    template["spec"]["initContainers"] = [{"name": "proxy", "image": "envoy:1.30", "restartPolicy": "Always",
                                           "startupProbe": {"tcpSocket": {"port": "admin"}}}]
    problems = workload.probe_port_problems(template, "app.template")
    assert [p.field for p in problems] == ["app.template.spec.initContainers[0].startupProbe.tcpSocket.port",
                                           "app.template.spec.containers[0].readinessProbe.httpGet.port"]
    assert "(proxy declares no named port)" in problems[0].rule


def test_a_probe_port_number_written_as_text_is_refused() -> None:
    # the API server refuses it (a port name has a letter): no release in flight can have run it, so check refuses it always
    problems = workload.check(pod_template(readinessProbe={"httpGet": {"port": "8080"}}), "app.template")
    assert [(p.field, p.rule) for p in problems] == [("app.template.spec.containers[0].readinessProbe.httpGet.port",
                                                      "is a number written as text: the API server refuses it as a port name (write it unquoted)")]
    assert workload.probe_port_problems(pod_template(readinessProbe={"httpGet": {"port": "8080"}}), "app.template") == []


def test_a_template_check_refuses_is_not_looked_at_for_probe_ports() -> None:
    template = pod_template(readinessProbe={"httpGet": {"port": "web"}}, imagePullPolicy=3)
    assert [p.field for p in workload.check(template, "t")] == ["t.spec.containers[0].imagePullPolicy"]
    assert workload.probe_port_problems(template, "t") == []
    assert workload.probe_port_problems("not a template", "t") == []
