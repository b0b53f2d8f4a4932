"""The release state machine with in-memory doubles of its ports (stack, cluster, metrics, clock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from canary import stackconfig
from canary.errors import ClusterUnreachable, MetricError, StackBusy
from canary.journal import Journal
from canary.release import Phase, Release, ReleaseState
from canary.routing import RouteState
from canary.stack import UpResult
from tests.conftest import base_values


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeStack:
    """Holds stack config; `up` makes the fake cluster match it (unless told to fail)."""

    def __init__(self, cluster: FakeCluster, values: dict[str, Any]) -> None:
        self.values = values
        self.cluster = cluster
        self.ups: list[dict[str, Any]] = []
        self.fail_ups = 0

    def spec(self) -> Any:
        return stackconfig.from_config({f"canary:{k}": v for k, v in self.values.items()})

    def set_config(self, values: dict[str, Any], remove: tuple[str, ...] = ()) -> None:
        self.values.update(values)
        for key in remove:
            self.values.pop(key, None)

    def up(self, on_event: Any = None, target: list[str] | None = None) -> UpResult:
        if self.fail_ups:
            self.fail_ups -= 1
            raise ClusterUnreachable("connection refused")
        self.ups.append({"target": target, **self.values})
        spec = self.spec()
        if target is None or any("HTTPRoute" in t for t in target):
            self.cluster.weight = int(self.values.get("canaryWeight", 0)) if self.values.get("canaryImage") else 0
        if target is None:
            self.cluster.stable_image = spec.stable_image
            self.cluster.canary_pods = spec.app.replicas if spec.canary_image else 0
            self.cluster.canary_image = spec.canary_image or spec.stable_image
        return UpResult(0.1, {"update": 1}, {})

    def export(self) -> dict[str, Any]:
        return {"version": 3, "deployment": {"resources": []}}

    def check_unlocked(self) -> None:
        pass

    def clear_stale_lock(self) -> list[dict[str, Any]]:
        return []


class FakeCluster:
    def __init__(self) -> None:
        self.weight = 0
        self.stable_image = "registry.example.com/shop/web:1.0.0"
        self.canary_pods = 0
        self.canary_image = self.stable_image
        self.accepting = True
        self.weights_seen: list[int] = []

    def route(self, spec: Any) -> RouteState:
        if not self.weights_seen or self.weights_seen[-1] != self.weight:
            self.weights_seen.append(self.weight)
        return RouteState(100 - self.weight, self.weight, 1, self.accepting, "accepted" if self.accepting else "gateway lab did not accept the route: NoMatchingParent")

    def deployment(self, spec: Any, track: str) -> dict[str, Any]:
        if track == "stable":
            return {"image": self.stable_image, "replicas": 2, "ready": 2, "pods": 2}
        return {"image": self.canary_image, "replicas": self.canary_pods, "ready": self.canary_pods, "pods": self.canary_pods}


class Metrics:
    def __init__(self, error_rate: float | MetricError = 0.0) -> None:
        self.error_rate = error_rate

    def run_query(self, query: str) -> float:
        if "histogram_quantile" in query:
            return 100.0
        if isinstance(self.error_rate, MetricError):
            raise self.error_rate
        return self.error_rate

    def is_online(self) -> bool:
        return True


NEW = "registry.example.com/shop/web:2.0.0"


def make(tmp_path: Path, metrics: Metrics, **options: Any) -> tuple[Release, FakeStack, FakeCluster, list[Any]]:
    values = base_values()
    values["analysis"]["interval"] = "10s"
    values["analysis"]["webhooks"] = []
    values["canaryWeight"] = 0
    cluster = FakeCluster()
    stack = FakeStack(cluster, values)
    events: list[Any] = []
    release = Release(stack, cluster, lambda address: metrics, Journal(tmp_path, "test"), stack_name="test", clock=FakeClock(), on_event=events.append, **options)  # type: ignore[arg-type]
    return release, stack, cluster, events


def test_healthy_release_steps_through_every_weight_and_promotes(tmp_path: Path) -> None:
    release, stack, cluster, events = make(tmp_path, Metrics(0.0))
    result = release.start(NEW)
    assert result.phase is Phase.SUCCEEDED and result.exit_code == 0
    assert cluster.weights_seen == [0, 10, 20, 30, 40, 50, 0]
    assert cluster.stable_image == NEW and cluster.canary_pods == 0
    assert "canaryImage" not in stack.values and stack.values["stableImage"] == NEW
    weight_ups = [u for u in stack.ups if u["target"]]
    assert len(weight_ups) == 5  # weight-only steps target the route alone
    kinds = [r["type"] for r in release.journal.records()]
    assert kinds.index("snapshot") < kinds.index("decision") < kinds.index("up")


def test_failing_checks_roll_back_on_the_threshold_tick(tmp_path: Path) -> None:
    release, stack, cluster, events = make(tmp_path, Metrics(18.2))
    result = release.start(NEW)
    assert result.phase is Phase.FAILED and result.exit_code == 1
    assert result.reason == "error-rate 18.2 > max 1 for 3 checks in a row at weight 10"
    assert cluster.weights_seen == [0, 10, 0]
    assert cluster.stable_image == "registry.example.com/shop/web:1.0.0" and cluster.canary_pods == 0
    ticks = [r for r in release.journal.records() if r["type"] == "tick"]
    assert [t["failed_in_row"] for t in ticks] == [1, 2, 3]
    assert ticks[-1]["checks"][0]["value"] == 18.2 and ticks[-1]["checks"][0]["threshold"]["max"] == 1
    # rollback: traffic first (route only), then the canary to zero
    rollback_ups = stack.ups[-2:]
    assert rollback_ups[0]["target"] and rollback_ups[0]["canaryWeight"] == 0 and "canaryImage" in rollback_ups[0]
    assert rollback_ups[1]["target"] is None and "canaryImage" not in rollback_ups[1]
    state = release.journal.load_state()
    assert state is not None and state["phase"] == "Failed" and "error-rate 18.2 > max 1" in state["reason"]


def test_missing_data_never_promotes(tmp_path: Path) -> None:
    from canary.errors import ProviderUnreachable

    release, _, cluster, _ = make(tmp_path, Metrics(ProviderUnreachable("down")))
    result = release.start(NEW)
    assert result.phase is Phase.FAILED and "could not be evaluated" in result.reason
    assert max(cluster.weights_seen) == 10


def test_route_not_accepted_fails_the_release_without_analysis(tmp_path: Path) -> None:
    release, _, cluster, _ = make(tmp_path, Metrics(0.0), route_timeout=2)
    cluster.accepting = False
    result = release.start(NEW)
    assert result.phase is Phase.FAILED
    assert "RouteNotAccepted" in result.reason and "NoMatchingParent" in result.reason
    assert not [r for r in release.journal.records() if r["type"] == "tick"]


def test_abort_ends_aborted_with_stable_verified(tmp_path: Path) -> None:
    release, _, cluster, _ = make(tmp_path, Metrics(0.0))
    original = release._analyse

    def abort_then_analyse(state: ReleaseState, since: float | None = None) -> ReleaseState:
        if state.weight == 20:
            release.journal.request("abort", state.release, by="test")
        return original(state, since)

    release._analyse = abort_then_analyse  # type: ignore[method-assign]
    result = release.start(NEW)
    assert result.phase is Phase.ABORTED and "aborted by test" in result.reason
    assert cluster.weight == 0 and cluster.canary_pods == 0


def test_rollback_that_cannot_be_applied_is_pending_and_resume_completes_it(tmp_path: Path) -> None:
    release, stack, cluster, _ = make(tmp_path, Metrics(18.2), retries=2, retry_backoff=1)
    original_up = stack.up

    def up(on_event: Any = None, target: list[str] | None = None) -> UpResult:
        if stack.values.get("canaryWeight") == 0 and "canaryImage" in stack.values and release.journal.load_state()["phase"] == "RollingBack":  # type: ignore[index]
            raise ClusterUnreachable("connection refused")
        return original_up(on_event, target)

    stack.up = up  # type: ignore[method-assign]
    result = release.start(NEW)
    assert result.rollback_pending and result.exit_code == 4
    assert release.journal.load_state()["phase"] == "RollingBack"  # type: ignore[index]
    stack.up = original_up  # type: ignore[method-assign]
    again = release.resume()
    assert again.phase is Phase.FAILED and not again.rollback_pending
    assert cluster.weight == 0 and cluster.canary_pods == 0


def test_second_release_on_a_busy_stack_is_refused(tmp_path: Path) -> None:
    release, _, _, _ = make(tmp_path, Metrics(0.0))
    release.journal.acquire("other-release")
    with pytest.raises(StackBusy, match="busy"):
        release.start(NEW)


def test_a_step_whose_up_fails_once_is_retried_not_rolled_back(tmp_path: Path) -> None:
    release, stack, cluster, events = make(tmp_path, Metrics(0.0), retry_backoff=1)
    original_up = stack.up
    failed = {"n": 0}

    def flaky(on_event: Any = None, target: list[str] | None = None) -> UpResult:
        if target and stack.values.get("canaryWeight") == 30 and not failed["n"]:
            failed["n"] += 1
            raise ClusterUnreachable("connection refused")
        return original_up(on_event, target)

    stack.up = flaky  # type: ignore[method-assign]
    result = release.start(NEW)
    assert result.phase is Phase.SUCCEEDED and failed["n"] == 1
    assert any("step failed (attempt 1 of 3)" in e.message for e in events)


def test_a_step_whose_up_keeps_failing_rolls_back(tmp_path: Path) -> None:
    release, stack, cluster, _ = make(tmp_path, Metrics(0.0), retry_backoff=1)
    original_up = stack.up

    def broken(on_event: Any = None, target: list[str] | None = None) -> UpResult:
        if target and stack.values.get("canaryWeight") == 30:
            raise ClusterUnreachable("connection refused")
        return original_up(on_event, target)

    stack.up = broken  # type: ignore[method-assign]
    result = release.start(NEW)
    assert result.phase is Phase.FAILED and "connection refused" in result.reason
    assert cluster.weight == 0 and cluster.canary_pods == 0
