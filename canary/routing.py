"""Routing: what the HTTPRoute looks like for a weight, and whether the gateway took it.

Pure functions over plain dicts, shared by the Pulumi program (which declares the
route) and the release (which reads the route back from the cluster). No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from canary.spec import ReleaseSpec

API_VERSION = "gateway.networking.k8s.io/v1"
KIND = "HTTPRoute"


def stable_name(spec: ReleaseSpec) -> str:
    return f"{spec.app.name}-stable"


def canary_name(spec: ReleaseSpec) -> str:
    return f"{spec.app.name}-canary"


def route_spec(spec: ReleaseSpec, canary_weight: int) -> dict[str, Any]:
    """The HTTPRoute's ``spec``: the configured parents and hostnames, two weighted backends."""
    if not 0 <= canary_weight <= 100:
        raise ValueError(f"canary weight must be within 0..100, got {canary_weight}")
    parent_refs = []
    for ref in spec.gateway.parent_refs:
        parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": ref.name}
        if ref.namespace:
            parent["namespace"] = ref.namespace
        if ref.section_name:
            parent["sectionName"] = ref.section_name
        if ref.port:
            parent["port"] = ref.port
        parent_refs.append(parent)
    route: dict[str, Any] = {
        "parentRefs": parent_refs,
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [
                    _backend(stable_name(spec), spec.app.service_port, 100 - canary_weight),
                    _backend(canary_name(spec), spec.app.service_port, canary_weight),
                ],
            }
        ],
    }
    if spec.gateway.hostnames:
        route["hostnames"] = list(spec.gateway.hostnames)
    return route


def _backend(name: str, port: int, weight: int) -> dict[str, Any]:
    return {"group": "", "kind": "Service", "name": name, "port": port, "weight": weight}


@dataclass(frozen=True)
class RouteState:
    """What the cluster's HTTPRoute says: its weights and whether every parent accepted it."""

    stable_weight: int | None
    canary_weight: int | None
    generation: int
    accepted: bool
    reason: str

    @property
    def weights(self) -> tuple[int | None, int | None]:
        return self.stable_weight, self.canary_weight


def read_route(obj: Mapping[str, Any], spec: ReleaseSpec) -> RouteState:
    """Interpret an HTTPRoute object from the API server.

    Accepted means: for every parentRef there is a parent status whose ``Accepted``
    condition is True with ``observedGeneration`` equal to the route's generation.
    """
    weights: dict[str, int] = {}
    for rule in obj.get("spec", {}).get("rules", []):
        for ref in rule.get("backendRefs", []):
            weights[ref.get("name", "")] = int(ref.get("weight", 1))
    generation = int(obj.get("metadata", {}).get("generation", 0))
    parents = obj.get("status", {}).get("parents", [])
    wanted = [ref.name for ref in spec.gateway.parent_refs]
    reasons = []
    for name in wanted:
        status = next((p for p in parents if p.get("parentRef", {}).get("name") == name), None)
        if status is None:
            reasons.append(f"gateway {name} has not reported on the route")
            continue
        cond = next((c for c in status.get("conditions", []) if c.get("type") == "Accepted"), None)
        if cond is None:
            reasons.append(f"gateway {name} set no Accepted condition")
        elif cond.get("status") != "True":
            reasons.append(f"gateway {name} did not accept the route: {cond.get('reason')}: {cond.get('message', '')}".rstrip(": "))
        elif int(cond.get("observedGeneration", -1)) != generation:
            reasons.append(f"gateway {name} has not observed generation {generation} yet (at {cond.get('observedGeneration')})")
    return RouteState(
        stable_weight=weights.get(stable_name(spec)),
        canary_weight=weights.get(canary_name(spec)),
        generation=generation,
        accepted=not reasons,
        reason="; ".join(reasons) or "accepted",
    )
