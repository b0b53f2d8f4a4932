"""The workload: an app's pod template, checked, hashed and shaped for each track. Pure but for reading its schema from the package data once.

A template is plain data in Kubernetes' own field names (``spec.containers[0].image``
…). ``check`` validates it against the Kubernetes API's field names and types
(``podschema.json``, generated from the kubernetes client's models by
``tools/gen_pod_schema.py``) and names the path of every unknown or mistyped
field. ``template_hash`` identifies what a track runs: the template as the user
wrote it plus the content hashes of the ConfigMaps and Secrets it references
(Flagger's way of noticing a config change). ``for_track`` turns the desired
template into the stable's or the canary's (labels, references to the content-
addressed copies of config).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from typing import Any

from canary.core import naming, units
from canary.core.naming import Track
from canary.errors import Problem

Template = dict[str, Any]


@cache
def _schema() -> dict[str, Any]:
    return json.loads(resources.files("canary.core").joinpath("podschema.json").read_text())  # type: ignore[no-any-return]


def check(value: Any, path: str, kind: str = "V1PodTemplateSpec") -> list[Problem]:
    """Every problem of ``value`` as an object of Kubernetes type ``kind``, each naming its path; for a
    pod template, also the rules the API server would refuse it for (a request above its limit, a probe's
    port number written as text). What the API server takes and the kubelet then fails is ``probe_port_problems``'s:
    a rule newer than some releases in flight, which their callers note rather than refuse."""
    problems = list(_check(value, path, kind))
    if not problems and kind == "V1PodTemplateSpec":
        problems.extend(_resource_problems(value, path))
        problems.extend(problem for problem, taken in _probe_ports(value, path) if not taken)
    return problems


def _resource_problems(template: Mapping[str, Any], path: str) -> Iterator[Problem]:
    spec = _map(template.get("spec"))
    for group in ("initContainers", "containers"):
        for i, container in enumerate(_maps(spec.get(group))):
            resources_ = _map(container.get("resources"))
            limits, requests = _map(resources_.get("limits")), _map(resources_.get("requests"))
            for name, request in requests.items():
                if name in limits:
                    try:
                        above = units.quantity_value(request) > units.quantity_value(limits[name])
                    except ValueError as exc:
                        yield Problem(f"{path}.spec.{group}[{i}].resources.requests.{name}", shown(request), str(exc))
                        continue
                    if above:
                        yield Problem(f"{path}.spec.{group}[{i}].resources.requests.{name}", shown(request),
                                      f"must not be above its limit ({limits[name]}): the API server refuses such a pod")


_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
_HOOKS = ("postStart", "preStop")


def probe_port_problems(template: Any, path: str) -> list[Problem]:
    """The probes and lifecycle hooks of a pod template whose port is a name their container does not declare
    (none for a template ``check`` finds a problem in). The API server takes them (a port name is only checked for
    its form), and the kubelet resolves the name among that container's own ports and, finding none, fails the
    action every time, an error the prober discards: a readiness or startup probe never succeeds (the canary is
    never Ready: the release times out, a healthy version rolled back), a liveness probe is silently dead (it never
    restarts anything), a preStop hook's failure is an event only, a postStart hook's kills the container. Right to
    refuse when a release begins; but a template the API server took may well run as the stable with such a probe,
    and a release that began before this rule must never be refused by it (every `up` of it failed, its rollback's
    too, traffic left on the canary): callers route these apart from ``check``'s."""
    if not isinstance(template, Mapping) or list(_check(template, path, "V1PodTemplateSpec")):
        return []
    return [problem for problem, taken in _probe_ports(template, path) if taken]


def _probe_ports(template: Mapping[str, Any], path: str) -> Iterator[tuple[Problem, bool]]:
    """Each probe or lifecycle hook port given as text that is no name of its own container's ports, and whether the
    API server takes it: a port name is (the kubelet fails it), a number written as text is not (a name has a letter).
    A numeric port is the user's to get right. (A gRPC probe's port is a number only.)"""
    spec = _map(template.get("spec"))
    for group in ("initContainers", "containers"):
        for i, container in enumerate(_maps(spec.get(group))):
            declared = [p["name"] for p in _maps(container.get("ports")) if isinstance(p.get("name"), str) and p["name"]]
            handlers = [(probe, "a probe", _map(container.get(probe))) for probe in _PROBES]
            handlers += [(f"lifecycle.{hook}", "a lifecycle hook", _map(_map(container.get("lifecycle")).get(hook))) for hook in _HOOKS]
            for where, what, handler in handlers:
                for kind in ("httpGet", "tcpSocket"):
                    port = _map(handler.get(kind)).get("port")
                    if not isinstance(port, str) or port in declared:
                        continue
                    field = f"{path}.spec.{group}[{i}].{where}.{kind}.port"
                    if port.isdigit():
                        yield Problem(field, shown(port), "is a number written as text: the API server refuses it as a port name (write it unquoted)"), False
                        continue
                    ports = f"declares the port names {', '.join(declared)}" if declared else "declares no named port"
                    yield Problem(field, shown(port), f"must name a port of its own container ({container.get('name')} {ports}): "
                                  f"{what} on a port name the container does not declare fails every time, which the API server does not refuse"), True


def _check(value: Any, path: str, kind: Any) -> Iterator[Problem]:
    kinds = _schema()["kinds"]
    if isinstance(kind, list):
        container, inner = kind
        if container == "list":
            if not isinstance(value, list):
                yield Problem(path, shown(value), "must be a list")
                return
            for i, item in enumerate(value):
                yield from _check(item, f"{path}[{i}]", inner)
            return
        if not isinstance(value, Mapping):
            yield Problem(path, shown(value), "must be a mapping")
            return
        for key, item in value.items():
            yield from _check(item, f"{path}.{key}", inner)
        return
    if kind in kinds:
        if not isinstance(value, Mapping):
            yield Problem(path, shown(value), "must be a mapping")
            return
        fields = kinds[kind]["fields"]
        for key in value:
            if key not in fields:
                near = nearest(str(key), fields)
                yield Problem(f"{path}.{key}", shown(value[key]), "is not a field of " + _kind_name(kind) + (f" (did you mean {near}?)" if near else ""))
        for key in kinds[kind]["required"]:
            if key not in value:
                yield Problem(f"{path}.{key}", "nothing", "is required")
        for key, item in value.items():
            if key in fields and item is not None:
                yield from _check(item, f"{path}.{key}", fields[key])
        return
    ok = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "any": True,
    }[kind]
    if not ok:
        yield Problem(path, shown(value), f"must be {'an' if kind == 'integer' else 'a'} {kind}")


def _kind_name(kind: str) -> str:
    """``V1ContainerPort`` -> ``ContainerPort``, as the Kubernetes API reference names it."""
    for prefix in ("V1", "V2", "CoreV1"):
        if kind.startswith(prefix):
            return kind[len(prefix):]
    return kind


def nearest(key: str, known: Mapping[str, Any]) -> str | None:
    """A known field one edit away, or differing only in case: the likely intended one."""
    lowered = key.lower()
    for name in known:
        if name.lower() == lowered or _one_edit(key, name):
            return name
    return None


def _one_edit(a: str, b: str) -> bool:
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diffs = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diffs) == 1 or (len(diffs) == 2 and diffs[1] == diffs[0] + 1 and a[diffs[0]] == b[diffs[1]] and a[diffs[1]] == b[diffs[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def shown(value: Any) -> str:
    """A value as a problem quotes it: short, a mapping by its keys."""
    if isinstance(value, Mapping):
        return "a mapping of " + (", ".join(map(str, value)) or "nothing")
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- the main container -----------------------------------------------------------------------


def _map(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else empty: these readers also see templates ``check`` refused."""
    return value if isinstance(value, Mapping) else {}


def _maps(value: Any) -> list[Any]:
    """The mappings of a list (anything else: none)."""
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


class AmbiguousContainer(KeyError):
    """Several containers and none named like the app: which one is the app's is not guessed (a sidecar
    listed first would get ``app.image``, and the Services its port). A ``KeyError``, as a missing one."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__(", ".join(names))
        self.names = names


class AmbiguousPort(ValueError):
    """The main container lists several ports, none named ``http``: which one the Services target is not guessed."""

    def __init__(self, ports: tuple[str, ...]) -> None:
        super().__init__(", ".join(ports))
        self.ports = ports


def main_container(template: Mapping[str, Any], app: str, name: str | None = None) -> dict[str, Any]:
    """The app's own container: the one named ``name``, else the one named like the app, else the only one.
    ``KeyError`` when there is none such; ``AmbiguousContainer`` (one) for several, none named like the app."""
    containers = _maps(_map(template.get("spec")).get("containers"))
    wanted = name or app
    for container in containers:
        if container.get("name") == wanted:
            return container  # type: ignore[no-any-return]
    if name is not None or not containers:
        raise KeyError(wanted)
    if len(containers) > 1:
        raise AmbiguousContainer(tuple(str(c.get("name")) for c in containers))
    return containers[0]  # type: ignore[no-any-return]


def main_port(container: Mapping[str, Any]) -> int | None:
    """The port of the main container the Services target: its only one, else the one named ``http``;
    None when it lists none; ``AmbiguousPort`` for several, none named ``http``."""
    ports = [p for p in _maps(container.get("ports")) if isinstance(p.get("containerPort"), int) and not isinstance(p.get("containerPort"), bool)]
    if len(ports) == 1:
        return int(ports[0]["containerPort"])
    named = [p for p in ports if p.get("name") == "http"]
    if named:
        return int(named[0]["containerPort"])
    if ports:
        raise AmbiguousPort(tuple(f"{p['name']} {p['containerPort']}" if p.get("name") else str(p["containerPort"]) for p in ports))
    return None


def port_name(template: Any, app: str, name: str | None, number: int) -> str | None:
    """The name under which a Service reaches ``number`` on the template's main container: the name of that
    TCP port, when no other container's port takes it (Kubernetes resolves a named ``targetPort`` per pod,
    at the first container port of that name). None when the port is unnamed or the name is not the app's alone."""
    try:
        main = main_container(template if isinstance(template, Mapping) else {}, app, name)
    except KeyError:
        return None
    found = [p.get("name") for p in _maps(main.get("ports")) if p.get("containerPort") == number and p.get("protocol", "TCP") == "TCP"]
    if len(found) != 1 or not isinstance(found[0], str) or not found[0]:
        return None
    spec = _map(_map(template).get("spec"))
    named = [p for c in [*_maps(spec.get("containers")), *_maps(spec.get("initContainers"))] for p in _maps(c.get("ports")) if p.get("name") == found[0]]
    return found[0] if len(named) == 1 else None


def declared_port(template: Any, app: str, name: str | None = None) -> int | None:
    """The port a pod template's main container declares for the Services; None when it has no such
    container or port, or when either would be a guess (validation refuses those for a desired template)."""
    try:
        return main_port(main_container(template if isinstance(template, Mapping) else {}, app, name))
    except (KeyError, AmbiguousPort):  # AmbiguousContainer is a KeyError
        return None


def image(template: Mapping[str, Any], app: str, container: str | None = None) -> str:
    return str(main_container(template, app, container).get("image", ""))


def with_image(template: Mapping[str, Any], app: str, new_image: str, container: str | None = None) -> Template:
    """A copy of ``template`` whose main container runs ``new_image``."""
    out = copy.deepcopy(dict(template))
    main_container(out, app, container)["image"] = new_image
    return out


# --- config references and hashes ---------------------------------------------------------------


def referenced(template: Mapping[str, Any]) -> dict[str, set[str]]:
    """The ConfigMaps and Secrets the template reads: ``{"configMap": {...}, "secret": {...}}`` (names that are
    not strings, which ``check`` refuses, are no reference)."""
    found: dict[str, set[str]] = {"configMap": set(), "secret": set()}

    def add(kind: str, ref: Any, key: str = "name") -> None:
        name = _map(ref).get(key)
        if isinstance(name, str) and name:
            found[kind].add(name)

    spec = _map(template.get("spec"))
    for volume in _maps(spec.get("volumes")):
        if "configMap" in volume:
            add("configMap", volume["configMap"])
        if "secret" in volume:
            add("secret", volume["secret"], "secretName")
        for source in _maps(_map(volume.get("projected")).get("sources")):
            if "configMap" in source:
                add("configMap", source["configMap"])
            if "secret" in source:
                add("secret", source["secret"])
    for container in [*_maps(spec.get("initContainers")), *_maps(spec.get("containers"))]:
        for env_from in _maps(container.get("envFrom")):
            if "configMapRef" in env_from:
                add("configMap", env_from["configMapRef"])
            if "secretRef" in env_from:
                add("secret", env_from["secretRef"])
        for env in _maps(container.get("env")):
            source = _map(env.get("valueFrom"))
            if "configMapKeyRef" in source:
                add("configMap", source["configMapKeyRef"])
            if "secretKeyRef" in source:
                add("secret", source["secretKeyRef"])
    return found


def rename_references(template: Mapping[str, Any], config_maps: Mapping[str, str], secrets: Mapping[str, str]) -> Template:
    """A copy of ``template`` reading the copies (``old name -> copy name``) instead of the originals."""
    out = copy.deepcopy(dict(template))
    spec = out.get("spec", {})

    def cm(ref: dict[str, Any], key: str = "name") -> None:
        if ref.get(key) in config_maps:
            ref[key] = config_maps[ref[key]]

    def sec(ref: dict[str, Any], key: str = "name") -> None:
        if ref.get(key) in secrets:
            ref[key] = secrets[ref[key]]

    for volume in spec.get("volumes") or []:
        if "configMap" in volume:
            cm(volume["configMap"])
        if "secret" in volume:
            sec(volume["secret"], "secretName")
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "configMap" in source:
                cm(source["configMap"])
            if "secret" in source:
                sec(source["secret"])
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for env_from in container.get("envFrom") or []:
            if "configMapRef" in env_from:
                cm(env_from["configMapRef"])
            if "secretRef" in env_from:
                sec(env_from["secretRef"])
        for env in container.get("env") or []:
            source = env.get("valueFrom") or {}
            if "configMapKeyRef" in source:
                cm(source["configMapKeyRef"])
            if "secretKeyRef" in source:
                sec(source["secretKeyRef"])
    return out


def content_hash(data: Mapping[str, Any]) -> str:
    """The hash of a ConfigMap's or Secret's content (its data maps), order-independent."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def template_hash(template: Mapping[str, Any], config_hashes: Mapping[str, str] | None = None) -> str:
    """What a track runs, as 16 hex digits: the template without canary's own marks, and the
    content of each config object it reads (so a ConfigMap edit is a new version)."""
    body = {"template": strip(template), "config": dict(sorted((config_hashes or {}).items()))}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()[:16]


def strip(template: Mapping[str, Any]) -> Template:
    """The template as the user wrote it: canary's labels and annotations removed."""
    out = copy.deepcopy(dict(template))
    meta = out.pop("metadata", None)
    if isinstance(meta, Mapping):
        labels = {k: v for k, v in (meta.get("labels") or {}).items() if not k.startswith("canary.dev/")}
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith("canary.dev/")}
        kept = {k: v for k, v in {**meta, "labels": labels, "annotations": annotations}.items() if v not in ({}, None)}
        if kept:
            out["metadata"] = kept  # an empty metadata is no metadata: both hash alike
    return out


def for_track(template: Mapping[str, Any], app: str, track: Track, template_hash_value: str) -> Template:
    """The pod template a track's Deployment declares. Stable's is the template as written, with canary's
    marks; on the canary, the app-wide selector labels are suffixed, and so are the selectors of the
    template that select the app by them (see ``_follow_renamed_labels``)."""
    out = copy.deepcopy(dict(template))
    meta = out.setdefault("metadata", {})
    written = dict(meta.get("labels") or {})
    meta["labels"] = naming.track_labels(app, track, written)
    meta["annotations"] = {**(meta.get("annotations") or {}), naming.HASH_ANNOTATION: template_hash_value}
    renamed = {key: (written[key], meta["labels"][key]) for key in naming.SELECTOR_LABELS
               if key in written and meta["labels"][key] != written[key]}
    if renamed and isinstance(out.get("spec"), dict):
        _follow_renamed_labels(out["spec"], renamed)
    return out


def _follow_renamed_labels(spec: dict[str, Any], renamed: Mapping[str, tuple[str, str]]) -> None:
    """In place: the label selectors of pod affinity and anti-affinity terms (required and preferred) and
    of topology spread constraints, where they select a renamed label (``key -> (stable value, canary
    value)``) by its stable value, select the canary value instead. Left as written, they would select
    stable pods: a required anti-affinity on ``app: web`` would keep every canary pod off the nodes that
    run stable pods, and a spread constraint would count stable pods, not the canary's. (Flagger does the
    same for its primary's renamed labels.) ``matchLabelKeys`` need nothing: they take the pod's own values."""
    affinity = _map(spec.get("affinity"))
    selectors: list[Any] = []
    for kind in ("podAffinity", "podAntiAffinity"):
        terms = _map(affinity.get(kind))
        selectors += [term.get("labelSelector") for term in _maps(terms.get("requiredDuringSchedulingIgnoredDuringExecution"))]
        selectors += [_map(term.get("podAffinityTerm")).get("labelSelector")
                      for term in _maps(terms.get("preferredDuringSchedulingIgnoredDuringExecution"))]
    selectors += [constraint.get("labelSelector") for constraint in _maps(spec.get("topologySpreadConstraints"))]
    for selector in selectors:
        if not isinstance(selector, dict):
            continue
        match = selector.get("matchLabels")
        if isinstance(match, dict):
            for key, (stable, canary) in renamed.items():
                if match.get(key) == stable:
                    match[key] = canary
        for expression in _maps(selector.get("matchExpressions")):
            key, values = expression.get("key"), expression.get("values")
            if key in renamed and expression.get("operator") in ("In", "NotIn") and isinstance(values, list):
                stable, canary = renamed[key]
                expression["values"] = [canary if value == stable else value for value in values]


def declared_hash(template: Mapping[str, Any]) -> str | None:
    """The template hash a declared (or running) pod template carries."""
    return ((template.get("metadata") or {}).get("annotations") or {}).get(naming.HASH_ANNOTATION)


def canary_replicas(replicas: int, weight: int, fixed: int | None = None) -> int:
    """The canary's size for a weight: ``ceil(replicas × weight / 100)``, at least 1 (or ``fixed``)."""
    if fixed is not None:
        return fixed
    return max(1, math.ceil(replicas * weight / 100))
