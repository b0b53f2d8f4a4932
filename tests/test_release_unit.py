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

    def up(self, on_event: Any = None, target: list[str] | None = None, refresh: bool = False) -> UpResult:
        if self.fail_ups:
            self.fail_ups -= 1
            raise ClusterUnreachable("connection refused")
        self.ups.append({"target": target, "refresh": refresh, **self.values})
        spec = self.spec()
        if target is None or any(t.endswith("::route") for t in target):
            self.cluster.weight = int(self.values.get("canaryWeight", 0)) if self.values.get("canaryImage") else 0
        if target is None or any(t.endswith("::canary-deployment") for t in target):
            self.cluster.canary_pods = spec.app.replicas if spec.canary_image else 0
            self.cluster.canary_image = spec.canary_image or spec.stable_image
        if target is None:
            self.cluster.stable_image = spec.stable_image
        return UpResult(0.1, {"update": 1})

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
    route = "urn:pulumi:test::canary::kubernetes:gateway.networking.k8s.io/v1:HTTPRoute::route"
    deploy = "urn:pulumi:test::canary::kubernetes:apps/v1:Deployment::canary-deployment"
    # the canary's deploy touches the route (held at 0) and the canary alone; weight steps the route alone
    assert [u["target"] for u in stack.ups] == [[route, deploy]] + [[route]] * 5 + [None]
    assert [r["targeted"] for r in release.journal.records() if r["type"] == "up"] == [["route", "canary-deployment"]] + [["route"]] * 5 + [[]]
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
    assert rollback_ups[0]["target"] == ["urn:pulumi:test::canary::kubernetes:gateway.networking.k8s.io/v1:HTTPRoute::route"] and rollback_ups[0]["canaryWeight"] == 0 and "canaryImage" in rollback_ups[0]
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

    def up(on_event: Any = None, target: list[str] | None = None, refresh: bool = False) -> UpResult:
        if stack.values.get("canaryWeight") == 0 and "canaryImage" in stack.values and release.journal.load_state()["phase"] == "RollingBack":  # type: ignore[index]
            raise ClusterUnreachable("connection refused")
        return original_up(on_event, target, refresh)

    stack.up = up  # type: ignore[method-assign]
    result = release.start(NEW)
    assert result.rollback_pending and result.exit_code == 4
    assert release.journal.load_state()["phase"] == "RollingBack"  # type: ignore[index]
    stack.up = original_up  # type: ignore[method-assign]
    ups_before = len(stack.ups)
    again = release.resume()
    assert again.phase is Phase.FAILED and not again.rollback_pending
    assert cluster.weight == 0 and cluster.canary_pods == 0
    resumed_ups = stack.ups[ups_before:]  # the first up after a resume reads the cluster back first, the others do not
    assert [u["refresh"] for u in resumed_ups] == [True] + [False] * (len(resumed_ups) - 1), resumed_ups


def test_second_release_on_a_busy_stack_is_refused(tmp_path: Path) -> None:
    release, _, _, _ = make(tmp_path, Metrics(0.0))
    release.journal.acquire("other-release")
    with pytest.raises(StackBusy, match="busy"):
        release.start(NEW)


def test_a_step_whose_up_fails_once_is_retried_not_rolled_back(tmp_path: Path) -> None:
    release, stack, cluster, events = make(tmp_path, Metrics(0.0), retry_backoff=1)
    original_up = stack.up
    failed = {"n": 0}

    def flaky(on_event: Any = None, target: list[str] | None = None, refresh: bool = False) -> UpResult:
        if target and stack.values.get("canaryWeight") == 30 and not failed["n"]:
            failed["n"] += 1
            raise ClusterUnreachable("connection refused")
        return original_up(on_event, target, refresh)

    stack.up = flaky  # type: ignore[method-assign]
    result = release.start(NEW)
    assert result.phase is Phase.SUCCEEDED and failed["n"] == 1
    assert any("step failed (attempt 1 of 3)" in e.message for e in events)


def test_a_step_whose_up_keeps_failing_rolls_back(tmp_path: Path) -> None:
    release, stack, cluster, _ = make(tmp_path, Metrics(0.0), retry_backoff=1)
    original_up = stack.up

    def broken(on_event: Any = None, target: list[str] | None = None, refresh: bool = False) -> UpResult:
        if target and stack.values.get("canaryWeight") == 30:
            raise ClusterUnreachable("connection refused")
        return original_up(on_event, target, refresh)

    stack.up = broken  # type: ignore[method-assign]
    result = release.start(NEW)
    assert result.phase is Phase.FAILED and "connection refused" in result.reason
    assert cluster.weight == 0 and cluster.canary_pods == 0


def _with_hooks(tmp_path: Path, hooks: list[dict[str, Any]], metrics: Metrics | None = None) -> tuple[Release, FakeStack, FakeCluster, list[Any]]:
    release, stack, cluster, events = make(tmp_path, metrics or Metrics(0.0))
    stack.values["analysis"]["webhooks"] = hooks
    return release, stack, cluster, events


def test_confirm_promotion_no_waits_and_canary_promote_approves(tmp_path: Path) -> None:
    release, _, cluster, events = _with_hooks(tmp_path, [{"name": "gate", "type": "confirm-promotion", "cmd": "false", "timeout": "5s"}])
    original = release._waiting_promotion
    waited = {"n": 0}

    def waiting(state: ReleaseState) -> ReleaseState:
        waited["n"] += 1
        if waited["n"] == 2:  # analysis keeps running while it waits; then a human approves
            release.journal.request("promote", state.release)
        return original(state)

    release._waiting_promotion = waiting  # type: ignore[method-assign]
    result = release.start(NEW)
    assert result.phase is Phase.SUCCEEDED and waited["n"] == 2
    assert [r["phase"] for r in release.journal.records() if r["type"] == "tick"][-1] == "WaitingPromotion"  # analysis went on
    assert any("waiting for promotion" in e.message for e in events)
    assert any(e.message == "promotion approved with canary promote" for e in events)
    assert cluster.stable_image == NEW


def test_rollback_hook_answering_yes_rolls_back(tmp_path: Path) -> None:
    release, _, cluster, _ = _with_hooks(tmp_path, [{"name": "kill-switch", "type": "rollback", "cmd": "true", "timeout": "5s"}])
    result = release.start(NEW)
    assert result.phase is Phase.FAILED and result.reason == "rollback webhook kill-switch asked for a rollback"
    assert cluster.weight == 0 and cluster.canary_pods == 0


def test_failing_rollout_hook_counts_as_a_failed_check(tmp_path: Path) -> None:
    release, _, cluster, _ = _with_hooks(tmp_path, [{"name": "load", "type": "rollout", "cmd": "false", "timeout": "5s"}])
    result = release.start(NEW)
    assert result.phase is Phase.FAILED
    assert "rollout webhook load failed" in result.reason and "3 checks in a row at weight 10" in result.reason


def test_pre_rollout_failure_counts_and_confirm_traffic_increase_holds(tmp_path: Path) -> None:
    release, _, cluster, events = _with_hooks(tmp_path, [{"name": "smoke", "type": "pre-rollout", "cmd": "false", "timeout": "5s"}])
    result = release.start(NEW)
    assert result.phase is Phase.FAILED and "pre-rollout webhook smoke failed" in result.reason
    assert cluster.weights_seen == [0]  # no traffic ever shifted

    release, _, cluster, events = _with_hooks(tmp_path / "b", [{"name": "hold", "type": "confirm-traffic-increase", "cmd": "false", "timeout": "5s"}])
    original = release._progressing
    calls = {"n": 0}

    def bounded(state: ReleaseState) -> ReleaseState:
        calls["n"] += 1
        if calls["n"] > 3:
            release.journal.request("abort", state.release, by="test")
        return original(state)

    release._progressing = bounded  # type: ignore[method-assign]
    result = release.start(NEW)
    assert result.phase is Phase.ABORTED and cluster.weights_seen == [0]
    assert sum("confirm-traffic-increase webhook hold said no" in e.message for e in events) >= 3


def test_http_hooks_get_the_payload_and_event_hooks_every_event(tmp_path: Path) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        release, _, _, events = _with_hooks(tmp_path, [
            {"name": "audit", "type": "event", "url": url, "timeout": "5s"},
            {"name": "approve", "type": "confirm-promotion", "url": url, "timeout": "5s", "metadata": {"team": "shop"}},
        ])
        result = release.start(NEW)
    finally:
        server.shutdown()
        server.server_close()
    assert result.phase is Phase.SUCCEEDED
    gate = next(r for r in received if r["type"] == "confirm-promotion")
    assert gate["metadata"] == {"team": "shop"} and gate["name"] == "web" and gate["namespace"] == "prod"
    assert gate["canaryImage"] == NEW and gate["weight"] == 50 and gate["phase"] == "Progressing"
    messages = [r["message"] for r in received if r["type"] == "event"]
    assert len(messages) == len(events)  # every event went to the event hook
    assert messages[-1].startswith("promoted ")


def test_a_failing_event_hook_is_recorded_and_never_changes_the_release(tmp_path: Path) -> None:
    release, _, _, events = _with_hooks(tmp_path, [{"name": "audit", "type": "event", "cmd": "false", "timeout": "5s"}])
    result = release.start(NEW)
    assert result.phase is Phase.SUCCEEDED
    failures = [r for r in release.journal.records() if r["type"] == "webhook" and r["hook_type"] == "event"]
    assert len(failures) == len(events) and not any(r["ok"] for r in failures)
    assert all("`false` exited 1" in r["detail"] for r in failures)


def test_confirm_rollout_is_asked_before_the_canary_is_deployed(tmp_path: Path) -> None:
    """As in Flagger: while the gate says no, no canary pod exists and no `up` ran."""
    release, stack, cluster, events = _with_hooks(tmp_path, [{"name": "go", "type": "confirm-rollout", "cmd": "false", "timeout": "5s"}])
    original = release._initializing
    calls = {"n": 0}

    def bounded(state: ReleaseState) -> ReleaseState:
        calls["n"] += 1
        if calls["n"] > 3:
            assert not stack.ups and cluster.canary_pods == 0  # asked three times, nothing deployed
            release.journal.request("abort", state.release, by="test")
        return original(state)

    release._initializing = bounded  # type: ignore[method-assign]
    result = release.start(NEW)
    assert result.phase is Phase.ABORTED and calls["n"] > 3
    assert sum("confirm-rollout webhook go said no" in e.message for e in events) >= 3
    assert all(not up.get("canaryImage") for up in stack.ups)  # the rollback's ups only: the canary was never deployed
    assert cluster.canary_pods == 0 and cluster.weights_seen == [0]


def test_event_hooks_are_delivered_in_order_without_holding_up_the_rollback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver that does not answer must not stand between the failing tick and traffic back on stable."""
    import threading

    from canary import webhooks

    gate = threading.Event()
    delivered: list[str] = []

    def slow_receiver(hook: Any, body: dict[str, Any]) -> webhooks.HookResult:
        gate.wait(5)  # holds every delivery until the rollback's traffic step (or 5 s, if delivery were synchronous)
        delivered.append(body["message"])
        return webhooks.HookResult(hook.name, hook.type.value, True, 0.0, "answered 200")

    monkeypatch.setattr(webhooks, "call", slow_receiver)
    release, stack, cluster, events = _with_hooks(tmp_path, [{"name": "chat", "type": "event", "url": "http://chat.invalid/", "timeout": "5s"}], Metrics(18.2))
    seen_at_rollback: list[int] = []
    original_up = stack.up

    def up(on_event: Any = None, target: list[str] | None = None, refresh: bool = False) -> UpResult:
        if target and stack.values.get("canaryWeight") == 0 and not seen_at_rollback:
            seen_at_rollback.append(len(delivered))  # the rollback's traffic-first up
            gate.set()
        return original_up(on_event, target, refresh)

    stack.up = up  # type: ignore[method-assign]
    result = release.start(NEW)
    assert result.phase is Phase.FAILED
    assert seen_at_rollback == [0], "the rollback waited for an event hook"
    # Every event reached the hook by the time start() returned, in the order it happened.
    assert delivered == [e.message for e in events]
    assert delivered[-1].startswith("rolled back: ") and any(m.startswith("rolling back: ") for m in delivered)


def test_event_queue_close_is_bounded_overflow_is_reported_and_nothing_is_reported_after_close(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    from canary import webhooks
    from canary.spec import Webhook

    stuck = threading.Event()
    monkeypatch.setattr(webhooks, "call", lambda hook, body: (stuck.wait(10), webhooks.HookResult(hook.name, "event", False, 0.0, "HTTP 500"))[1])
    failures: list[webhooks.HookResult] = []
    queue = webhooks.EventQueue(on_failure=failures.append, limit=2)
    hook = Webhook.model_validate({"name": "chat", "type": "event", "url": "http://chat.invalid/", "timeout": "10s"})
    for n in range(4):  # one in flight, two waiting, the fourth over the limit
        queue.put(hook, {"message": f"m{n}"})
        time.sleep(0.05)
    assert [f.detail for f in failures] == ["event dropped: 2 events were still waiting for delivery"]
    start = time.monotonic()
    left = queue.close(timeout=0.3)
    assert time.monotonic() - start < 1.0
    assert left == 3  # the one in flight and the two waiting
    assert [f.detail for f in failures][1:] == ["3 events not delivered within 0.3s of the release's end"]
    assert failures[1].name == "chat"
    stuck.set()  # the call in flight ends (failing) after close gave up on it: already counted, never reported again
    time.sleep(0.2)
    assert len(failures) == 2, [f.detail for f in failures]
