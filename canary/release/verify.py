"""Verification: the cluster, not Pulumi's word, says whether a step took effect.

A route step counts when the HTTPRoute shows the step's shape and every parent
Gateway accepted it for the route's generation. A refusal (``ResolvedRefs`` or
``Accepted`` False with a spec reason) fails at once, and so does a mirror whose
``percent`` the API server dropped: the CRD lacks the field, waiting does not
bring it. A track counts when its Deployment runs the expected template hash,
its rollout is complete and the pods are ready. The end state is the route at
rest, no canary pods, stable on its template and ready. A rollback's route at
rest that a gateway refuses, or whose Gateway is gone, is tolerated; one that a
gateway has not taken yet is not (it may still send the canary its weight).
Every wait is bounded and stops at the cancel token.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from canary.core.naming import Track
from canary.core.routing import RouteShape
from canary.core.spec import ReleaseSpec
from canary.errors import Cancelled, NotReady, RouteNotAccepted
from canary.release.ports import Clock, ClusterPort


class Verifier:
    def __init__(self, cluster: ClusterPort, clock: Clock, cancel: threading.Event, route_timeout: float, ready_timeout: float,
                 note: Callable[[str], None]) -> None:
        self.cluster = cluster
        self.clock = clock
        self.cancel = cancel
        self.route_timeout = route_timeout
        self.ready_timeout = ready_timeout
        self._note = note

    def _pause(self, seconds: float, cancellable: bool) -> None:
        if cancellable and self.cancel.is_set():
            raise Cancelled("stopped by an abort")
        self.clock.sleep(seconds)

    def route(self, spec: ReleaseSpec, shape: RouteShape, rollback: bool = False, cancellable: bool = True) -> None:
        """Until the cluster's route shows ``shape`` and its gateways accepted it.

        In a rollback, a route at rest that a gateway refuses, or whose Gateway is gone, is recorded
        and tolerated once the wait is over: nothing routes through it to the canary. A gateway that
        has not taken it yet (its controller down or lagging) is not: its data plane may go on
        serving the canary's weight, and the rollback is not done until it takes the route.
        """
        deadline = self.clock.monotonic() + self.route_timeout
        route = None
        while True:
            route = self.cluster.route(spec)
            if route is not None and route.shows(shape):
                if route.accepted:
                    for note in route.notes:
                        self._note(note)
                    return
                if route.refused and not rollback:
                    raise RouteNotAccepted(f"the gateway refused the route at {shape.describe()}: {route.reason}")
            if route is not None and route.dropped_mirror_percent(shape):
                raise RouteNotAccepted(
                    f"the route mirrors every request to the canary, not {shape.mirror_percent}%: the cluster's HTTPRoute CRD "
                    "dropped requestMirror.percent (mirrorWeight needs the Gateway API CRDs v1.3 or later)")
            if self.clock.monotonic() >= deadline:
                break
            self._pause(0.05, cancellable)
        if rollback and route is not None and route.shows(shape) and route.settled:
            self._note(f"the route is at rest but its gateway does not accept it: {route.reason}")
            return
        seen = "the route does not exist" if route is None else f"route weights {route.weights}, {route.reason}"
        raise RouteNotAccepted(f"the gateway did not accept {shape.describe()} within {self.route_timeout:.0f}s: {seen}")

    def track(self, spec: ReleaseSpec, track: Track, template_hash: str, replicas: int, cancellable: bool = True) -> dict[str, Any]:
        """Until ``track`` runs ``template_hash`` with its rollout complete and ``replicas`` pods ready."""
        deadline = self.clock.monotonic() + self.ready_timeout
        delay = 0.05
        while True:
            dep = self.cluster.deployment(spec, track)
            problems = self._track_problems(dep, track, template_hash, replicas)
            if not problems:
                return dep
            if self.clock.monotonic() >= deadline:
                raise NotReady(f"{spec.app.name}-{track.value} did not become ready within {self.ready_timeout:.0f}s: " + "; ".join(problems))
            self._pause(delay, cancellable)
            delay = min(delay * 1.5, 1.0)

    @staticmethod
    def _track_problems(dep: dict[str, Any], track: Track, template_hash: str, replicas: int) -> list[str]:
        problems = []
        if not dep.get("exists"):
            return [f"the {track.value} Deployment does not exist"]
        if dep.get("hash") != template_hash:
            problems.append(f"runs template {dep.get('hash')}, not {template_hash}")
        if replicas and (dep["ready"] < replicas or not dep.get("rolled_out", True)):
            problems.append(f"{dep['ready']}/{replicas} ready, {dep.get('updated', 0)} updated")
        return problems

    def end_state(self, spec: ReleaseSpec, stable_hash: str, stable_replicas: int, rollback: bool = False, cancellable: bool = True) -> dict[str, Any]:
        """Route at rest and accepted, no canary pods, stable on ``stable_hash`` and ready."""
        from canary.core.routing import AT_REST

        self.route(spec, AT_REST, rollback=rollback, cancellable=cancellable)
        deadline = self.clock.monotonic() + self.ready_timeout
        delay = 0.05
        while True:
            canary = self.cluster.deployment(spec, Track.CANARY)
            stable = self.cluster.deployment(spec, Track.STABLE)
            problems = []
            if canary["pods"] or canary["replicas"]:
                problems.append(f"the canary still has {canary['pods']} pods ({canary['replicas']} desired)")
            problems += self._track_problems(stable, Track.STABLE, stable_hash, stable_replicas)
            if not problems:
                return {"route": "at rest", "canary_pods": 0, "stable_hash": stable_hash, "stable_ready": stable["ready"]}
            if self.clock.monotonic() >= deadline:
                raise NotReady("end state not reached: " + "; ".join(problems))
            # Terminating pods may go within a fraction of a second, or take their grace period:
            # look again soon, then less and less often.
            self._pause(delay, cancellable)
            delay = min(delay * 1.5, 1.0)
