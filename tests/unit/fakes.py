"""In-memory doubles of the release's ports, for unit tests of the state machine.

The fake stack applies an ``up`` to a fake cluster the way the component would:
only the targeted parts change, each to what the release config pins. The fake
clock advances when the release sleeps.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from canary.core import records, routing
from canary.core.naming import Track
from canary.core.records import HookResult, TrackPin
from canary.core.routing import GatewayClass, RouteShape, RouteState
from canary.core.spec import ReleaseSpec, parse_spec
from canary.errors import Cancelled, ClusterUnreachable, Conflict, LeaseLost, MetricError, NoValues, StackLocked
from canary.release.machine import Release
from canary.release.ports import AppFacts


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0
        self.base = datetime(2026, 12, 1, tzinfo=UTC)
        #: called on every sleep with the clock's time: a test acts "while the release waits"
        self.on_sleep: Callable[[float], None] | None = None
        #: when the last sleep began: ``on_sleep`` runs once the clock has moved on, so a request it sends
        #: was made during that sleep, at the earliest here (how fast it is taken counts from here)
        self.slept_from = 0.0

    def monotonic(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.slept_from = self.now_s
        self.now_s += seconds
        if self.on_sleep is not None:
            self.on_sleep(self.now_s)

    def now(self) -> datetime:
        return self.base + timedelta(seconds=self.now_s)

    def iso(self) -> str:
        return self.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class FakeCluster:
    """What verification reads; the fake stack writes it."""

    shape: RouteShape = field(default_factory=RouteShape)
    stable_hash: str = "stable"
    stable_ready: bool = True
    canary_hash: str = "stable"
    canary_replicas: int = 0
    accepting: bool = True
    #: the canary weights the route showed, in order (one entry per change)
    weights_seen: list[int] = field(default_factory=lambda: [0])
    #: everything that happened, in order: ("route", shape) / ("stable", hash) / ("canary", replicas)
    log: list[tuple[str, Any]] = field(default_factory=list)
    fail_route_reads: int = 0
    pruned: list[set[str]] = field(default_factory=list)
    #: the route's Gateways (namespace/name) and their classes; how often they were read
    classes: dict[str, GatewayClass] = field(default_factory=lambda: {"default/lab": GatewayClass("example.com/gateway-controller")})
    class_reads: int = 0
    #: the API server prunes requestMirror.percent (an HTTPRoute CRD before Gateway API v1.3)
    drops_mirror_percent: bool = False
    #: the shapes written around Pulumi (a rollback's last resort), and what refuses them
    restored: list[RouteShape] = field(default_factory=list)
    restore_error: Exception | None = None
    restore_fails: int = -1  # how many times restore_error is raised (-1: always)

    def route(self, spec: ReleaseSpec) -> RouteState:
        if self.fail_route_reads:
            self.fail_route_reads -= 1
            raise ClusterUnreachable("connection refused")
        extra = (1 if self.shape.affinity else 0) + (1 if self.shape.matches else 0)
        percent = None
        if self.shape.mirror:
            percent = 100 if self.shape.mirror_percent is None or self.drops_mirror_percent else self.shape.mirror_percent
        return RouteState(100 - self.shape.weight, self.shape.weight, 1, self.accepting,
                          "accepted" if self.accepting else "gateway lab did not accept the route: Pending", matched_rules=extra,
                          mirrored=self.shape.mirror, mirror_percent=percent)

    def gateway_classes(self, spec: ReleaseSpec) -> dict[str, GatewayClass]:
        self.class_reads += 1
        return dict(self.classes)

    def deployment(self, spec: ReleaseSpec, track: Track) -> dict[str, Any]:
        if track is Track.STABLE:
            ready = spec.app.replicas if self.stable_ready else 0
            return {"exists": True, "hash": self.stable_hash, "image": "", "replicas": spec.app.replicas, "ready": ready,
                    "updated": ready, "rolled_out": self.stable_ready, "pods": spec.app.replicas}
        return {"exists": True, "hash": self.canary_hash, "image": "", "replicas": self.canary_replicas, "ready": self.canary_replicas,
                "updated": self.canary_replicas, "rolled_out": True, "pods": self.canary_replicas}

    def prune_copies(self, spec: ReleaseSpec, keep: set[str]) -> list[str]:
        self.pruned.append(keep)
        return []

    def restore_route(self, spec: ReleaseSpec, shape: RouteShape) -> None:
        """The route written around Pulumi; ``restore_error`` refuses it."""
        self.restored.append(shape)
        if self.restore_error is not None and self.restore_fails != 0:
            self.restore_fails -= 1
            raise self.restore_error
        self.set_shape(shape)

    def set_shape(self, shape: RouteShape) -> None:
        if shape != self.shape:
            self.shape = shape
            self.log.append(("route", shape))
            if self.weights_seen[-1] != shape.weight:
                self.weights_seen.append(shape.weight)


class FakeConfig:
    """The release config files, kept in memory: path -> pins."""

    def __init__(self) -> None:
        self.files: dict[Path, dict[str, Any]] = {}
        self.stack_file_changes: dict[str, Any] = {}
        self.kept: list[tuple[str, dict[str, Any]]] = []
        self.discarded: list[Path] = []

    def write(self, release: str, snapshot: str, pins: Mapping[str, Any]) -> Path:
        path = Path(f"/fake/{release}-{len(self.files)}.yaml")
        self.files[path] = {"snapshot": snapshot, "pins": dict(pins)}
        return path

    def discard(self, path: Path) -> None:
        """Kept in ``files`` for the tests to read; the paths the release removed, in order."""
        self.discarded.append(path)

    def changes_since(self, snapshot: str) -> dict[str, Any]:
        return dict(self.stack_file_changes)

    def keep(self, release: str, changes: Mapping[str, Any]) -> Path | None:
        self.kept.append((release, dict(changes)))
        return Path(f"/fake/Pulumi.test.yaml.{release}.unapplied")


@dataclass
class UpDone:
    seconds: float
    changes: dict[str, int]


class FakeStack:
    name = "test"

    def __init__(self, cluster: FakeCluster, config: FakeConfig, facts: AppFacts) -> None:
        self.cluster = cluster
        self.config = config
        self.facts = facts
        self.ups: list[dict[str, Any]] = []
        self.fail_ups = 0
        #: parts whose `up` fails (ClusterUnreachable) this many times
        self.fail_parts: dict[str, int] = {}
        self.interrupted = 0
        #: Pulumi's lock, held by "another update" until this time of ``clock``: ups are refused until then
        self.clock: FakeClock | None = None
        self.locked_until = 0.0
        #: ups refused for the lock, and the timeouts ``wait_unlocked`` was called with
        self.refused: list[dict[str, Any]] = []
        self.waited: list[float] = []
        self.on_up: Callable[[dict[str, Any]], None] | None = None
        #: Pulumi's locks left by dead processes of this host (a CLI killed mid-update): ups are refused while any is there
        self.dead_locks: list[dict[str, Any]] = []
        #: the stack's outputs as another process's update may have left them (its own app's are not read)
        self.outputs_now: dict[str, Any] = {}
        #: Pulumi's lock as another host's update left it ("pid 42 on machine-a since …"): a resume is refused while set
        self.foreign_lock = ""

    def outputs(self) -> dict[str, Any]:
        return self.outputs_now

    def check_unlocked(self) -> None:
        """As the file backend's stack: refused while ``foreign_lock`` (another host's holder) is set."""
        if self.foreign_lock:
            raise StackLocked(f"stack {self.name} is locked by a running Pulumi update: {self.foreign_lock} (another host's: whether "
                              "it still runs cannot be seen from here)")

    def _parts(self, targets: list[str] | None) -> set[str]:
        if targets is None:
            return {"route", "stable", "canary"}
        urns = self.facts.urns
        parts = set()
        if urns["route"] in targets:
            parts.add("route")
        if urns["stableDeployment"] in targets:
            parts.add("stable")
        if urns["canaryDeployment"] in targets:
            parts.add("canary")
        return parts

    def up(self, config_file: Path | None = None, targets: list[str] | None = None, exclude: list[str] | None = None,
           refresh: bool = False, on_event: Callable[[Any], None] | None = None, cancel: threading.Event | None = None) -> UpDone:
        assert config_file is not None
        pins = self.config.files[config_file]["pins"]
        parts = self._parts(targets)
        record = {"parts": parts, "pins": pins, "refresh": refresh, "whole": targets is None, "exclude": exclude}
        if self.on_up is not None:
            self.on_up(record)
        if cancel is not None and cancel.is_set():  # as the CLI, interrupted as it starts
            self.interrupted += 1
            raise Cancelled("pulumi up: interrupted")
        if self.dead_locks:
            self.refused.append({**record, "at": self.clock.monotonic() if self.clock else 0.0})
            raise StackLocked("the stack is locked by another update (root@here (pid 4242))")
        if self.clock is not None and self.clock.monotonic() < self.locked_until:
            self.refused.append({**record, "at": self.clock.monotonic()})
            raise StackLocked("the stack is locked by another update (alice@host (pid 42))")
        if self.fail_ups:
            self.fail_ups -= 1
            raise ClusterUnreachable("connection refused")
        for part in parts:
            if self.fail_parts.get(part):
                self.fail_parts[part] -= 1
                raise ClusterUnreachable(f"connection refused ({part})")
        self.ups.append(record)
        if "stable" in parts:
            self.cluster.stable_hash = pins["stable"]["hash"]
            self.cluster.log.append(("stable", pins["stable"]["hash"]))
        if "canary" in parts:
            canary = pins.get("canary")
            replicas = int(canary["replicas"]) if canary else 0
            self.cluster.canary_hash = canary["hash"] if canary else self.facts.desired.hash
            if replicas != self.cluster.canary_replicas:
                self.cluster.log.append(("canary", replicas))
            self.cluster.canary_replicas = replicas
        if "route" in parts:
            self.cluster.set_shape(RouteShape.from_json(pins["route"]))
        return UpDone(0.1, {"update": len(parts)})

    def interrupt(self) -> bool:
        self.interrupted += 1
        return True

    def export(self) -> dict[str, Any]:
        return {"version": 3, "deployment": {}}

    def clear_dead_locks(self) -> list[dict[str, Any]]:
        cleared, self.dead_locks = self.dead_locks, []
        return cleared

    def wait_unlocked(self, timeout: float) -> bool:
        """As the file backend's watch: returns as the lock is let go, or False after ``timeout``."""
        self.waited.append(timeout)
        if self.dead_locks and self.clock is not None:  # never let go
            self.clock.sleep(timeout)
            return False
        if self.clock is None:
            return True
        self.clock.sleep(max(0.0, min(timeout, self.locked_until - self.clock.monotonic())))
        return self.clock.monotonic() >= self.locked_until


class FakeStore:
    def __init__(self) -> None:
        self.state: records.ReleaseState | None = None
        self.journal: list[Any] = []
        self.pending: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, str, bool]] = []
        self._listener: Callable[[dict[str, dict[str, Any]]], None] | None = None
        self._release = ""
        self.refused: str | None = None
        self._written = 0

    def load(self) -> records.ReleaseState | None:
        return self.state

    def save(self, state: records.ReleaseState) -> None:
        self.state = state

    def append(self, entry: Any) -> None:
        records.parse(records.dump(entry))  # every record survives its own serialisation
        self.journal.append(entry)

    def records(self, release: str | None = None) -> list[Any]:
        return [r for r in self.journal if release is None or r.release == release]

    def requests(self, release: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.pending.items() if v.get("release") == release}

    def clear_request(self, kind: str, taken: dict[str, Any] | None = None) -> None:
        if taken is None or self.pending.get(kind, {}).get("time") == taken.get("time"):
            self.pending.pop(kind, None)

    def state_taken(self) -> bool:
        return True

    def watch_requests(self, release: str, on_change: Callable[[dict[str, dict[str, Any]]], None], stop: threading.Event) -> None:
        self._listener = on_change
        self._release = release
        on_change(self.requests(release))

    def request(self, kind: str, by: str = "test", **fields: Any) -> None:
        """As `canary abort` (promote, pause …) from another machine: the watch reports it."""
        assert self.state is not None
        self._written += 1  # each request its own time, as `canary` writes them: a clear deletes only the one taken
        self.pending[kind] = {"release": self.state.release, "by": by, "time": f"t{self._written}", **fields}
        if self._listener is not None:
            self._listener(self.requests(self._release))

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append((reason, message, warning))

    def compact(self) -> list[str]:
        return []

    def withdraw(self, release: str) -> str | None:
        return None

    def of(self, kind: str) -> list[Any]:
        return [r for r in self.journal if r.type == kind]


class FakeKube:
    """Objects by (kind, namespace, name), with resourceVersions; ``down`` makes every call fail as an outage."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.version = 0
        self.down = False
        self.events: list[dict[str, Any]] = []
        self.calls = 0
        #: a write's refusal, as the API server would answer it (RBAC, a quota, an admission policy):
        #: called with the verb ("create", "replace", "event") and the object; an error to raise, or None
        self.refuse: Callable[[str, Mapping[str, Any]], Exception | None] = lambda verb, obj: None

    def _write(self, verb: str, obj: Mapping[str, Any]) -> None:
        self._check()
        error = self.refuse(verb, obj)
        if error is not None:
            raise error

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise ClusterUnreachable("the Kubernetes API server did not answer: ConnectionRefusedError")

    def _key(self, kind: str, name: str, namespace: str | None) -> tuple[str, str, str]:
        return (kind, namespace or "", name)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        self._check()
        obj = self.objects.get(self._key(kind, name, namespace))
        return copy.deepcopy(obj) if obj else None

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict[str, Any]]:
        self._check()
        wanted = dict(part.split("=", 1) for part in (label_selector or "").split(",") if "=" in part)
        out = []
        for (k, ns, _), obj in self.objects.items():
            labels = obj["metadata"].get("labels") or {}
            if k == kind and ns == (namespace or "") and all(labels.get(a) == b for a, b in wanted.items()):
                out.append(copy.deepcopy(obj))
        return out

    def _stamp(self, manifest: Any) -> dict[str, Any]:
        self.version += 1
        obj = copy.deepcopy(dict(manifest))
        # the API server's clock: one second per write, kept from the object's creation on
        current = self.objects.get(self._key(obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace"))) or {"metadata": {}}
        created = current["metadata"].get("creationTimestamp") or f"{datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=self.version):%Y-%m-%dT%H:%M:%SZ}"
        obj["metadata"] = {**obj["metadata"], "resourceVersion": str(self.version), "uid": obj["metadata"].get("uid") or f"uid-{self.version}",
                           "creationTimestamp": created}
        self.objects[self._key(obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace"))] = obj
        return copy.deepcopy(obj)

    def create(self, manifest: Any) -> dict[str, Any]:
        self._write("create", manifest)
        key = self._key(manifest["kind"], manifest["metadata"]["name"], manifest["metadata"].get("namespace"))
        if key in self.objects:
            raise Conflict(f"{key} exists")
        return self._stamp(manifest)

    def replace(self, manifest: Any) -> dict[str, Any]:
        self._write("replace", manifest)
        key = self._key(manifest["kind"], manifest["metadata"]["name"], manifest["metadata"].get("namespace"))
        current = self.objects.get(key)
        if current is None or current["metadata"]["resourceVersion"] != manifest["metadata"].get("resourceVersion"):
            raise Conflict(f"{key} changed since it was read")
        return self._stamp(manifest)

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None, grace_seconds: int | None = None,
               resource_version: str | None = None) -> None:
        key = self._key(kind, name, namespace)
        self._write("delete", {"kind": kind, "metadata": {"name": name, "namespace": namespace}})
        current = self.objects.get(key)
        if resource_version is not None and current is not None and current["metadata"]["resourceVersion"] != resource_version:
            raise Conflict(f"deleting {kind} {name}: changed since it was read")
        self.objects.pop(key, None)

    def changes(self, api_version: str, kind: str, seconds: int, name: str | None = None, namespace: str | None = None) -> Iterator[dict[str, Any]]:
        self._check()
        return iter(())

    def event(self, involved: dict[str, Any], reason: str, message: str, warning: bool = False) -> None:
        self._write("event", involved)
        self.events.append({"involved": involved, "reason": reason, "message": message, "warning": warning})


class FakeLease:
    def __init__(self) -> None:
        self.lost: str | None = None
        self.held: str | None = None
        self.acquired: list[str] = []

    def acquire(self, release: str) -> None:
        self.held = release
        self.acquired.append(release)

    def start_renewing(self) -> None:
        pass

    def fence(self) -> None:
        if self.lost:
            raise LeaseLost(f"this release no longer holds the app: {self.lost}")

    def release(self) -> None:
        self.held = None


class FakeHooks:
    """Webhooks answered by a function of (hook name, type)."""

    def __init__(self, answer: Callable[[str, str], bool] | None = None) -> None:
        self.answer = answer or (lambda name, kind: True)
        self.calls: list[tuple[str, str]] = []

    def call(self, hook: Any, body: Mapping[str, Any], cancel: threading.Event | None = None) -> HookResult:
        self.calls.append((hook.name, hook.type.value))
        ok = self.answer(hook.name, hook.type.value)
        return HookResult(hook.name, hook.type.value, ok, 0.01, "answered 200" if ok else "answered 500")

    def start(self, hook: Any, body: Any = None) -> Any:
        return hook

    def finish(self, hook: Any, handle: Any, deadline: float, cancel: threading.Event | None = None) -> HookResult:
        return self.call(hook, {}, cancel)

    def alert(self, alert: Any, body: Mapping[str, Any]) -> HookResult:
        self.calls.append((alert.name, "alert"))
        return HookResult(alert.name, "alert", True, 0.0, "ok")


class Metrics:
    """A provider: the error rate (or a sequence of them, one per tick after the preflight's query;
    a negative value is no data), 100 ms latency, and a request count."""

    def __init__(self, error_rate: float | list[float] | MetricError = 0.0, requests: float = 10_000) -> None:
        self.error_rate = error_rate
        self.requests = requests
        self.ticks = -1  # the release's preflight asks once before any tick

    def run_query(self, query: str) -> float:
        if "increase(http_requests_total" in query:
            return self.requests
        if "histogram_quantile" in query:
            return 100.0
        if isinstance(self.error_rate, MetricError):
            raise self.error_rate
        if isinstance(self.error_rate, list):
            value = self.error_rate[min(max(self.ticks, 0), len(self.error_rate) - 1)]
            self.ticks += 1
            if value < 0:
                raise NoValues("no samples")
            return value
        if self.error_rate < 0:
            raise NoValues("no samples")
        return self.error_rate

    def is_online(self) -> bool:
        return True


def spec(mutate: Callable[[dict[str, Any]], None] | None = None) -> ReleaseSpec:
    from tests.conftest import base_values

    values = base_values()
    values["analysis"]["interval"] = "10s"
    values["analysis"]["webhooks"] = []
    values["analysis"]["metrics"] = [{"name": "request-error-rate", "thresholdRange": {"max": 1}}, {"name": "request-duration", "thresholdRange": {"max": 500}}]
    values["analysis"]["warmup"] = "0s"
    if mutate is not None:
        mutate(values)
    return parse_spec(values)


STABLE = TrackPin(template={"spec": {"containers": [{"name": "web", "image": "web:1"}]}}, hash="stable", image="web:1")
NEW = TrackPin(template={"spec": {"containers": [{"name": "web", "image": "web:2"}]}}, hash="new", image="web:2")
URNS = {"route": "urn:route", "stableDeployment": "urn:stable", "canaryDeployment": "urn:canary", "stableService": "urn:ss",
        "canaryService": "urn:cs", "apexService": "urn:as", "copies": []}


@dataclass
class World:
    release: Release
    stack: FakeStack
    cluster: FakeCluster
    store: FakeStore
    config: FakeConfig
    lease: FakeLease
    hooks: FakeHooks
    clock: FakeClock
    events: list[Any]
    metrics: Metrics

    def start(self) -> Any:
        return self.release.start(NEW, "config:\n  canary:app: {}\n")

    def rebuild(self) -> World:
        """A new process (say another machine) on the same cluster and store: what resume runs in."""
        return make(self.metrics, stack=self.stack, cluster=self.cluster, store=self.store, config=self.config,
                    hooks=self.hooks, clock=self.clock, spec_=self.release.spec)

    def checks_of(self, kind: str) -> list[Any]:
        return self.store.of(kind)


def gated_blue_green(v: dict[str, Any]) -> None:
    """A blue/green release of two iterations behind a confirm-promotion gate, whose error rate between 1 and 2 is
    inconclusive (a person decides it, within 5 minutes)."""
    for key in ("stepWeight", "maxWeight", "stepWeights"):
        v["analysis"].pop(key, None)
    v["analysis"].update(iterations=2, threshold=50, decisionTimeout="5m",
                         webhooks=[{"name": "approve", "type": "confirm-promotion", "url": "http://gate/"}],
                         metrics=[{"name": "request-error-rate", "thresholdRange": {"max": 1}, "inconclusiveRange": {"max": 2}, "evidence": "none"}])


def make(metrics: Metrics | None = None, mutate: Callable[[dict[str, Any]], None] | None = None, *, spec_: ReleaseSpec | None = None,
         stack: FakeStack | None = None, cluster: FakeCluster | None = None, store: FakeStore | None = None, config: FakeConfig | None = None,
         hooks: FakeHooks | None = None, clock: FakeClock | None = None, **options: Any) -> World:
    metrics = metrics or Metrics()
    the_spec = spec_ or spec(mutate)
    facts = AppFacts(spec=the_spec, urns=URNS, stable=STABLE, desired=NEW, stack="test")
    cluster = cluster or FakeCluster()
    config = config or FakeConfig()
    stack = stack or FakeStack(cluster, config, facts)
    store = store or FakeStore()
    lease = FakeLease()
    hooks = hooks or FakeHooks()
    clock = clock or FakeClock()
    stack.clock = clock
    events: list[Any] = []
    release = Release(stack=stack, config=config, cluster=cluster, store=store, lease=lease, hooks=hooks, provider_for=lambda address: metrics,
                      facts=facts, clock=clock, on_event=events.append, **options)  # type: ignore[arg-type]
    return World(release, stack, cluster, store, config, lease, hooks, clock, events, metrics)


__all__ = ["NEW", "STABLE", "FakeClock", "FakeCluster", "FakeKube", "FakeStack", "FakeStore", "Metrics", "World", "gated_blue_green", "make", "routing", "spec"]
