"""Routing: what the HTTPRoute looks like for a step of a release, and whether the gateway took it.

Pure functions over plain data, shared by the component (which declares the
route from a ``RouteShape``) and the verifier (which reads the route back).

A ``RouteShape`` says how traffic is shared at one step:

- ``weight`` — the canary's share of the default rule (a weighted canary);
- ``matches`` — requests matching one of them go to the canary, in a rule of
  their own before the default one (A/B testing, and blue/green's tester
  traffic); the default rule keeps the weights;
- ``mirror`` — the default rule copies requests to the canary with a
  ``RequestMirror`` filter (percent ``mirror_percent``); the mirror's answers
  are discarded;
- ``affinity`` — a client routed to the canary gets a cookie (a
  ``ResponseHeaderModifier`` on the canary's backend adds ``Set-Cookie``) and a
  rule matching that cookie sends it to the canary for the rest of the release.

``read_route`` interprets the route's status as the Gateway API defines it:
one status entry per parentRef (matched by group, kind, namespace, name, section
and port, the defaults filled in), written by the parent's controller;
``Accepted=True`` for the route's generation when the gateway reports one;
``ResolvedRefs=False`` is a refusal with its reason, not something to wait out.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from canary.core import naming
from canary.core.naming import Track

API_VERSION = "gateway.networking.k8s.io/v1"
KIND = "HTTPRoute"
GROUP = "gateway.networking.k8s.io"


#: What a recorded route holds in place of an A/B match's value. A value may be a secret (a tester's token, which the
#: stack file keeps encrypted: the gateway's route holds it, as it must, but nothing canary records or prints does):
#: records keep a match's header and query parameter names and match types, each value replaced by this marker (kept
#: as a third item, so records keep one form), and whatever applies or compares a route takes the values from the
#: spec (``RouteShape.with_matches``).
NOT_RECORDED = "<not recorded>"


@dataclass(frozen=True)
class Match:
    """One A/B condition: every header and query parameter listed must match."""

    headers: tuple[tuple[str, str, str], ...] = ()  # (name, "Exact" | "RegularExpression", value)
    query_params: tuple[tuple[str, str, str], ...] = ()

    def to_json(self, values: bool = False) -> dict[str, Any]:
        """Each header and query parameter as ``[name, type, value]``, the value ``NOT_RECORDED`` unless ``values``:
        see ``RouteShape.to_json``."""
        def entries(items: tuple[tuple[str, str, str], ...]) -> list[list[str]]:
            return [[name, kind, value if values else NOT_RECORDED] for name, kind, value in items]

        return {"headers": entries(self.headers), "queryParams": entries(self.query_params)}

    @property
    def recorded(self) -> Match:
        """This match as records hold it: its names and types, each value ``NOT_RECORDED``."""
        return Match.from_json(self.to_json())

    def describe(self) -> str:
        """The names and types it matches on, never a value: ``header X-Tester (Exact)``."""
        return ", ".join([f"header {n} ({k})" for n, k, _ in self.headers] + [f"query parameter {n} ({k})" for n, k, _ in self.query_params])

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Match:
        return cls(tuple(tuple(h) for h in data.get("headers", ())), tuple(tuple(q) for q in data.get("queryParams", ())))  # type: ignore[misc]


@dataclass(frozen=True)
class Affinity:
    """The cookie that keeps a client on the canary: ``name=value``, for ``max_age`` seconds."""

    name: str
    value: str
    max_age: int


@dataclass(frozen=True)
class RouteShape:
    weight: int = 0
    matches: tuple[Match, ...] = ()
    mirror: bool = False
    mirror_percent: int | None = None
    affinity: Affinity | None = None
    #: a cookie to expire on answers (the release ended): clients stop carrying it
    expire_cookie: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.weight <= 100:
            raise ValueError(f"canary weight must be within 0..100, got {self.weight}")

    @property
    def at_rest(self) -> bool:
        """All traffic to stable, no match, no mirror: what the route says between releases."""
        return self.weight == 0 and not self.matches and not self.mirror and self.affinity is None

    def describe(self) -> str:
        parts = [f"weight {self.weight}"]
        if self.matches:
            parts.append(f"{len(self.matches)} match rule(s) to the canary")
        if self.mirror:
            parts.append(f"mirroring {self.mirror_percent or 100}% to the canary")
        if self.affinity:
            parts.append(f"session affinity cookie {self.affinity.name}")
        return ", ".join(parts)

    def to_json(self, values: bool = False) -> dict[str, Any]:
        """The shape as records hold it (a release state's ``route``, the journal): A/B match values left out
        (``NOT_RECORDED``). With ``values``, as the program reads it from a release config, to declare the route."""
        data: dict[str, Any] = {"weight": self.weight}
        if self.matches:
            data["matches"] = [m.to_json(values) for m in self.matches]
        if self.mirror:
            data["mirror"] = True
            if self.mirror_percent is not None:
                data["mirrorPercent"] = self.mirror_percent
        if self.affinity:
            data["affinity"] = {"name": self.affinity.name, "value": self.affinity.value, "maxAge": self.affinity.max_age}
        if self.expire_cookie:
            data["expireCookie"] = self.expire_cookie
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> RouteShape:
        if not data:
            return cls()
        affinity = data.get("affinity")
        return cls(
            weight=int(data.get("weight", 0)),
            matches=tuple(Match.from_json(m) for m in data.get("matches", ())),
            mirror=bool(data.get("mirror", False)),
            mirror_percent=data.get("mirrorPercent"),
            affinity=Affinity(affinity["name"], affinity["value"], int(affinity["maxAge"])) if affinity else None,
            expire_cookie=data.get("expireCookie"),
        )

    @property
    def recorded(self) -> RouteShape:
        """This shape as records hold it: its matches' values ``NOT_RECORDED``."""
        return replace(self, matches=tuple(m.recorded for m in self.matches))

    def with_matches(self, matches: tuple[Match, ...]) -> tuple[RouteShape, str]:
        """A recorded shape made whole: its A/B matches (values not recorded, or recorded by an earlier version) are
        ``matches``, the spec's. Also what to warn of ("" when nothing): the spec's matches on other names or types
        than the recorded ones, which are taken all the same (the spec is what the gateway's route is to hold). A
        shape without matches (weights, the switch, at rest) is as recorded."""
        if not self.matches:
            return self, ""
        whole = replace(self, matches=matches)
        if tuple(m.recorded for m in self.matches) == tuple(m.recorded for m in matches):
            return whole, ""
        spec = "; ".join(m.describe() for m in matches) or "none"
        return whole, (f"the route recorded matches on {'; '.join(m.describe() for m in self.matches)}, the analysis on {spec}: "
                       "the analysis's matches are applied")


AT_REST = RouteShape()


def recorded(route: Mapping[str, Any]) -> dict[str, Any]:
    """A route's JSON as records hold it (``RouteShape.to_json``), from any recorded one: a state or ``up`` record
    of an earlier version held its match values, which are left out of what is saved or printed of it."""
    if not route.get("matches"):
        return dict(route)
    return {**route, "matches": [Match.from_json(m).to_json() for m in route["matches"]]}


def parent_refs(refs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The route's parentRefs from the gateway config (name, namespace, sectionName, port)."""
    out = []
    for ref in refs:
        parent: dict[str, Any] = {"group": GROUP, "kind": "Gateway", "name": ref["name"]}
        for key in ("namespace", "sectionName", "port"):
            if ref.get(key):
                parent[key] = ref[key]
        out.append(parent)
    return out


def _backend(name: str, port: int, weight: int, filters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    backend: dict[str, Any] = {"group": "", "kind": "Service", "name": name, "port": port, "weight": weight}
    if filters:
        backend["filters"] = filters
    return backend


def _cookie_match(name: str, value: str) -> dict[str, Any]:
    """A header match on ``Cookie`` that finds ``name=value`` as a whole cookie anywhere in the header.
    Gateways differ in what a regular expression must match: Envoy-based ones the whole value, Traefik
    any part of it. Anchored at both ends, with the other cookies matched as ``.*``, it means the same
    on both."""
    pattern = rf"^(.*;\s*)?{re.escape(name)}={re.escape(value)}(;.*)?$"
    return {"type": "RegularExpression", "name": "Cookie", "value": pattern}


def _set_cookie(value: str) -> dict[str, Any]:
    return {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "Set-Cookie", "value": value}]}}


def route_spec(app: str, gateway_refs: Sequence[Mapping[str, Any]], hostnames: Sequence[str], service_port: int, shape: RouteShape) -> dict[str, Any]:
    """The HTTPRoute's ``spec`` for one step. Rules, in the order a gateway should try them: the
    affinity cookie's, each A/B match's, then the default rule (weights, mirror, Set-Cookie)."""
    stable = naming.service(app, Track.STABLE)
    canary = naming.service(app, Track.CANARY)
    prefix = {"path": {"type": "PathPrefix", "value": "/"}}
    rules: list[dict[str, Any]] = []
    if shape.affinity is not None:
        rules.append({
            "matches": [{**prefix, "headers": [_cookie_match(shape.affinity.name, shape.affinity.value)]}],
            "backendRefs": [_backend(stable, service_port, 0), _backend(canary, service_port, 100)],
        })
    if shape.matches:
        matches = []
        for match in shape.matches:
            entry: dict[str, Any] = dict(prefix)
            if match.headers:
                entry["headers"] = [{"type": kind, "name": name, "value": value} for name, kind, value in sorted(match.headers)]
            if match.query_params:
                entry["queryParams"] = [{"type": kind, "name": name, "value": value} for name, kind, value in sorted(match.query_params)]
            matches.append(entry)
        rules.append({"matches": matches, "backendRefs": [_backend(stable, service_port, 0), _backend(canary, service_port, 100)]})
    default: dict[str, Any] = {"matches": [prefix]}
    if shape.mirror:
        mirror: dict[str, Any] = {"backendRef": {"group": "", "kind": "Service", "name": canary, "port": service_port}}
        if shape.mirror_percent is not None and shape.mirror_percent < 100:
            mirror["percent"] = shape.mirror_percent
        default["filters"] = [{"type": "RequestMirror", "requestMirror": mirror}]
    canary_filters = None
    if shape.affinity is not None:
        canary_filters = [_set_cookie(f"{shape.affinity.name}={shape.affinity.value}; Max-Age={shape.affinity.max_age}; Path=/")]
    stable_filters = [_set_cookie(f"{shape.expire_cookie}=; Max-Age=0; Path=/")] if shape.expire_cookie else None
    default["backendRefs"] = [_backend(stable, service_port, 100 - shape.weight, stable_filters), _backend(canary, service_port, shape.weight, canary_filters)]
    rules.append(default)
    route: dict[str, Any] = {"parentRefs": parent_refs(gateway_refs), "rules": rules}
    if hostnames:
        route["hostnames"] = list(hostnames)
    return route


@dataclass(frozen=True)
class GatewayClass:
    """What a parent Gateway's class says of itself: its controller, and the Gateway API features it
    publishes in ``status.supportedFeatures`` (None when it publishes none: Gateway API before 1.2)."""

    controller: str
    features: frozenset[str] | None = None


def needed_features(shape: RouteShape) -> dict[str, str]:
    """The Gateway API features (by their conformance names) ``shape`` needs that gateways may lack, each
    with the analysis key that asks for it. Only mirroring: a gateway without it may accept the route and
    serve it wrongly (the matches and header filters the other strategies use, Traefik has)."""
    needs = {}
    if shape.mirror:
        needs["HTTPRouteRequestMirror"] = "mirror"
        if shape.mirror_percent is not None and shape.mirror_percent < 100:
            needs["HTTPRouteRequestPercentageMirror"] = "mirrorWeight"
    return needs


#: What controllers that publish no supportedFeatures are known to do with a feature they lack.
KNOWN_MISSING: dict[str, dict[str, str]] = {
    # Traefik 3.x, pkg/provider/kubernetes/gateway/httproute.go: loadMiddlewares has no RequestMirror
    # case, so the rule is served by an "invalid-httproute-filter" service answering 500, status unchanged
    "traefik.io/gateway-controller": {"HTTPRouteRequestMirror": "Traefik answers every request of a rule with a RequestMirror filter with 500"},
}


def unsupported_features(shape: RouteShape, classes: Mapping[str, GatewayClass]) -> list[str]:
    """Why the gateways (``namespace/name`` → their class) cannot serve ``shape``: one sentence per
    gateway and feature it lacks. A gateway's own ``supportedFeatures`` decide when it publishes them;
    otherwise only a controller known to lack the feature counts. Empty: nothing known to be missing."""
    found = []
    for gateway, klass in sorted(classes.items()):
        for feature in needed_features(shape):
            if klass.features is not None:
                if feature not in klass.features:
                    found.append(f"gateway {gateway} ({klass.controller}) does not support {feature} (not in its GatewayClass's supportedFeatures)")
            elif why := KNOWN_MISSING.get(klass.controller, {}).get(feature):
                found.append(f"gateway {gateway} ({klass.controller}) does not support {feature}: {why}")
    return found


# --- reading the route back ---------------------------------------------------------------------


@dataclass(frozen=True)
class RouteState:
    """What the cluster's HTTPRoute says: the default rule's weights, the shape, and whether every
    parent accepted the route for its generation (or refused it, and why)."""

    stable_weight: int | None
    canary_weight: int | None
    generation: int
    accepted: bool
    reason: str
    #: a refusal that waiting does not cure (ResolvedRefs or Accepted False with a spec reason)
    refused: bool = False
    matched_rules: int = 0
    mirrored: bool = False
    #: the mirror filter's ``percent`` as stored (100 when it carries none); None without a mirror
    mirror_percent: int | None = None
    notes: tuple[str, ...] = field(default=())
    #: parents (by name) that neither accepted the route for its generation nor refused it: their data plane may
    #: still serve an earlier version of the route (their controller is down, lagging, or has not reported yet)
    pending: tuple[str, ...] = ()
    #: parents (by name) whose Gateway the reader found missing: nothing routes through them
    missing: tuple[str, ...] = ()

    @property
    def weights(self) -> tuple[int | None, int | None]:
        return self.stable_weight, self.canary_weight

    def shows(self, shape: RouteShape) -> bool:
        """The route in the cluster is the one ``shape`` declares (weights, rules, mirror and its percent)."""
        extra_rules = (1 if shape.affinity else 0) + (1 if shape.matches else 0)
        return (self.weights == (100 - shape.weight, shape.weight) and self.matched_rules == extra_rules
                and self.mirrored == shape.mirror and self.mirror_percent == _mirror_percent(shape))

    @property
    def settled(self) -> bool:
        """Waiting changes nothing the gateways serve: every parent accepted the route, refused it, or does not exist.
        A parent still to take it may go on serving an earlier version of it (the canary's weight, when the route
        was just put at rest): that is no route to rely on, whatever its spec shows."""
        return self.accepted or (not self.pending and (self.refused or bool(self.missing)))

    def dropped_mirror_percent(self, shape: RouteShape) -> bool:
        """The route is ``shape`` but mirrors every request where ``shape`` asks for a part: the API
        server pruned ``requestMirror.percent`` (an HTTPRoute CRD older than Gateway API v1.3 has no such
        field, and drops it without an error). Waiting does not cure it."""
        asked = _mirror_percent(shape)
        return asked is not None and asked < 100 and self.mirror_percent == 100 and self.shows(replace(shape, mirror_percent=None))


def _mirror_percent(shape: RouteShape) -> int | None:
    """The share of requests ``shape`` mirrors (a mirror without a percent mirrors all); None: no mirror."""
    if not shape.mirror:
        return None
    return 100 if shape.mirror_percent is None else shape.mirror_percent


def _ref_key(ref: Mapping[str, Any], route_namespace: str) -> tuple[str, str, str, str]:
    group = ref.get("group")
    return (
        GROUP if group is None else str(group),
        str(ref.get("kind") or "Gateway"),
        str(ref.get("namespace") or route_namespace),
        str(ref.get("name", "")),
    )


def _entry_for(parent: Mapping[str, Any], statuses: Sequence[Mapping[str, Any]], namespace: str, controllers: Mapping[str, str]) -> Mapping[str, Any] | None:
    """The status entry for one parentRef: same group, kind, namespace and name; the same section
    and port when the entry names them (a gateway with one listener may add its section to the
    entry, and some drop the port); written by the parent's controller when it is known."""
    key = _ref_key(parent, namespace)
    candidates = []
    for status in statuses:
        ref = status.get("parentRef") or {}
        if _ref_key(ref, namespace) != key:
            continue
        if parent.get("sectionName") and ref.get("sectionName") not in (None, parent["sectionName"]):
            continue
        if parent.get("port") and ref.get("port") not in (None, parent["port"]):
            continue
        candidates.append(status)
    controller = controllers.get(f"{key[2]}/{key[3]}", controllers.get(key[3]))
    if controller is not None:
        own = [s for s in candidates if s.get("controllerName") == controller]
        return own[0] if own else None
    return candidates[0] if candidates else None


#: Reasons of Accepted=False that name a configuration problem rather than a wait (Gateway API v1).
_REFUSALS = {"NotAllowedByListeners", "NoMatchingListenerHostname", "NoMatchingParent", "UnsupportedValue", "IncompatibleFilters"}


def read_route(obj: Mapping[str, Any], app: str, expected_parents: Sequence[Mapping[str, Any]], controllers: Mapping[str, str] | None = None,
               missing: Collection[str] = ()) -> RouteState:
    """Interpret the HTTPRoute of ``app`` as the API server returned it.

    ``expected_parents`` are the parentRefs the route must be accepted by;
    ``controllers`` maps a Gateway (``namespace/name``, or its name alone) to its
    GatewayClass's controllerName, when known, so that only that controller's entry counts;
    ``missing`` names the Gateways (``namespace/name``) the API server says do not exist
    (whatever status entry they left is stale).
    """
    metadata = obj.get("metadata") or {}
    namespace = str(metadata.get("namespace") or "default")
    generation = int(metadata.get("generation") or 0)
    rules = (obj.get("spec") or {}).get("rules") or []
    weights: dict[str, int] = {}
    matched_rules = 0
    mirrored = False
    mirror_percent = None
    if rules:
        default = rules[-1]
        for ref in default.get("backendRefs") or []:
            weights[str(ref.get("name", ""))] = int(ref.get("weight", 1))
        mirrors = [f for f in default.get("filters") or [] if f.get("type") == "RequestMirror"]
        mirrored = bool(mirrors)
        if mirrors:
            mirror_percent = int((mirrors[0].get("requestMirror") or {}).get("percent", 100))
        matched_rules = len(rules) - 1
    statuses = (obj.get("status") or {}).get("parents") or []
    reasons: list[str] = []
    notes: list[str] = []
    refused = False
    pending: list[str] = []
    gone: list[str] = []
    for parent in expected_parents:
        name = str(parent.get("name"))
        key = _ref_key(parent, namespace)
        if f"{key[2]}/{key[3]}" in missing:
            gone.append(name)
            reasons.append(f"gateway {name} does not exist")
            continue
        status = _entry_for(parent, statuses, namespace, controllers or {})
        if status is None:
            pending.append(name)
            reasons.append(f"gateway {name} has not reported on the route")
            continue
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        accepted = conditions.get("Accepted")
        resolved = conditions.get("ResolvedRefs")
        if resolved is not None and resolved.get("status") == "False" and _current(resolved, generation):
            refused = True
            reasons.append(f"gateway {name} cannot resolve the route's backends: {resolved.get('reason')}: {resolved.get('message', '')}".rstrip(": "))
            continue
        partial = conditions.get("PartiallyInvalid")
        if partial is not None and partial.get("status") == "True" and _current(partial, generation):
            # the spec's "drop rule": Accepted stays True while some of the route's rules are not served
            refused = True
            reasons.append(f"gateway {name} serves only part of the route (PartiallyInvalid): {partial.get('reason')}: "
                           f"{partial.get('message', '')}".rstrip(": "))
            continue
        if accepted is None:
            pending.append(name)
            reasons.append(f"gateway {name} set no Accepted condition")
        elif accepted.get("status") != "True":
            if accepted.get("reason") in _REFUSALS and _current(accepted, generation):
                refused = True
            else:
                pending.append(name)
            reasons.append(f"gateway {name} did not accept the route: {accepted.get('reason')}: {accepted.get('message', '')}".rstrip(": "))
        elif "observedGeneration" not in accepted:
            notes.append(f"gateway {name} reports no observedGeneration: its Accepted condition is taken as current")
        elif int(accepted["observedGeneration"]) < generation:
            pending.append(name)
            reasons.append(f"gateway {name} has not observed generation {generation} yet (at {accepted.get('observedGeneration')})")
    return RouteState(
        stable_weight=weights.get(naming.service(app, Track.STABLE)),
        canary_weight=weights.get(naming.service(app, Track.CANARY)),
        generation=generation,
        accepted=not reasons,
        reason="; ".join(reasons) or "accepted",
        refused=refused,
        matched_rules=matched_rules,
        mirrored=mirrored,
        mirror_percent=mirror_percent,
        notes=tuple(notes),
        pending=tuple(pending),
        missing=tuple(gone),
    )


def _current(condition: Mapping[str, Any], generation: int) -> bool:
    observed = condition.get("observedGeneration")
    return observed is None or int(observed) >= generation

