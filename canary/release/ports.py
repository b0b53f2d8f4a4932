"""The release's ports: the small interfaces through which the state machine reaches the world.

The release imports no adapter and no store: ``canary.api`` wires these to the
real ones (the stack adapter, the Kubernetes reader, the release store and its
lease, webhooks and alerts over HTTP, the Pushgateway), and the unit tests to
in-memory doubles.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from canary.core import naming, records
from canary.core.naming import Track
from canary.core.records import HookResult
from canary.core.routing import GatewayClass, RouteShape, RouteState
from canary.core.spec import Alert, ReleaseSpec, Webhook


class UpResultLike(Protocol):
    seconds: float
    changes: dict[str, int]


class StackPort(Protocol):
    """The Pulumi stack: ``up`` with a release config file, limited to some resources."""

    name: str

    def up(self, config_file: Path | None = None, targets: list[str] | None = None, exclude: list[str] | None = None,
           refresh: bool = False, on_event: Callable[[Any], None] | None = None, cancel: threading.Event | None = None) -> UpResultLike: ...

    def interrupt(self) -> bool: ...

    def export(self) -> dict[str, Any]: ...

    def outputs(self) -> dict[str, Any]: ...

    def clear_dead_locks(self) -> list[dict[str, Any]]: ...

    def wait_unlocked(self, timeout: float) -> bool: ...

    def check_unlocked(self) -> None: ...


class ConfigPort(Protocol):
    """The release config file: the snapshot of the stack file plus ``canary:release`` for this app."""

    def write(self, release: str, snapshot: str, pins: Mapping[str, Any]) -> Path: ...

    def discard(self, path: Path) -> None: ...

    def changes_since(self, snapshot: str) -> dict[str, Any]: ...

    def keep(self, release: str, changes: Mapping[str, Any]) -> Path | None: ...


class ClusterPort(Protocol):
    """What verification reads (and the one cleanup it does, and the last resort of a rollback)."""

    def route(self, spec: ReleaseSpec) -> RouteState | None: ...

    def gateway_classes(self, spec: ReleaseSpec) -> dict[str, GatewayClass]: ...

    def deployment(self, spec: ReleaseSpec, track: Track) -> dict[str, Any]: ...

    def prune_copies(self, spec: ReleaseSpec, keep: set[str]) -> list[str]: ...

    def restore_route(self, spec: ReleaseSpec, shape: RouteShape) -> None: ...


class StorePort(Protocol):
    #: what the cluster said when it last refused a write (the write is kept, sent again later); None when it takes them
    refused: str | None

    def load(self) -> records.ReleaseState | None: ...

    def save(self, state: records.ReleaseState) -> None: ...

    def append(self, entry: Any) -> None: ...

    def records(self, release: str | None = None) -> list[Any]: ...

    def requests(self, release: str) -> dict[str, dict[str, Any]]: ...

    def clear_request(self, kind: str) -> None: ...

    def watch_requests(self, release: str, on_change: Callable[[dict[str, dict[str, Any]]], None], stop: threading.Event) -> Any: ...

    def event(self, reason: str, message: str, warning: bool = False) -> None: ...

    def compact(self) -> list[str]: ...

    def withdraw(self, release: str) -> str | None:
        """Delete the state a release not begun wrote first, when its end could not be written; why it stays, if it does."""


class LeasePort(Protocol):
    lost: str | None

    def acquire(self, release: str) -> Any: ...

    def start_renewing(self) -> None: ...

    def fence(self) -> None:
        """Raise LeaseLost when this process no longer holds the app (checked before each change)."""

    def release(self) -> None: ...


class HookCaller(Protocol):
    """Webhooks: an HTTP POST or a local command, each bounded by its timeout."""

    def call(self, hook: Webhook, body: Mapping[str, Any], cancel: threading.Event | None = None) -> HookResult: ...

    def start(self, hook: Webhook, body: Mapping[str, Any] | None = None) -> Any: ...

    def finish(self, hook: Webhook, handle: Any, deadline: float, cancel: threading.Event | None = None) -> HookResult: ...

    def alert(self, alert: Alert, body: Mapping[str, Any]) -> HookResult: ...


class PusherPort(Protocol):
    """Release metrics for dashboards (the Pushgateway)."""

    def push(self, state: records.ReleaseState, tick: records.Tick | None) -> None: ...


class Clock:
    """Monotonic time, sleeping and the wall clock; tests inject a fake."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def now(self) -> datetime:
        return datetime.now(UTC)

    def iso(self) -> str:
        return self.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")


def other_urns(outputs: Mapping[str, Any], app: str) -> tuple[str, ...]:
    """The URNs of the resources of the stack's apps other than ``app``, as its outputs name them (``canary/<name>``)."""
    return tuple(urn for key, value in outputs.items()
                 if key.startswith(naming.OUTPUT_PREFIX) and key != f"{naming.OUTPUT_PREFIX}{app}" and isinstance(value, Mapping)
                 for urns in (value.get("urns") or {}).values() for urn in (urns if isinstance(urns, list) else [urns]))


@dataclass(frozen=True)
class AppFacts:
    """An app as the last ``up`` left it: its spec, the URNs of its resources, what stable runs,
    what the program asks for (the stack output ``canary/<app>``)."""

    spec: ReleaseSpec
    urns: dict[str, Any]
    stable: records.TrackPin | None
    desired: records.TrackPin
    stack: str = ""
    copies: dict[str, str] = field(default_factory=dict)
    #: the URNs of the stack's other apps' resources: an ``up`` of the whole stack leaves them alone
    others: tuple[str, ...] = ()
    #: where the app's settings stand in the stack config (``apps.<name>.``), as a problem names a field
    fields: str = ""

    def targets(self, *parts: str) -> list[str]:
        """The URNs of parts of the app: ``route``, ``stable``, ``canary``, ``app`` (all of it)."""
        urns = self.urns
        out: list[str] = []
        for part in parts:
            if part == "route":
                out.append(urns["route"])
            elif part in ("stable", "canary"):
                out.append(urns[f"{part}Deployment"])
                if f"{part}Autoscaler" in urns:
                    out.append(urns[f"{part}Autoscaler"])
                if part == "stable":
                    # the Services that reach stable's pods: a release moving an unnamed port moves them with stable
                    out.extend(urns[key] for key in ("stableService", "apexService", "disruptionBudget") if key in urns)
                out.extend(urns.get("copies") or [])
            elif part == "app":
                for value in urns.values():
                    out.extend(value if isinstance(value, list) else [value])
        return list(dict.fromkeys(out))
