"""The release state machine with in-memory doubles of its ports (stack, cluster, store, hooks, clock)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from canary.core import records
from canary.core.records import ENDED, Phase, ReleaseState
from canary.core.routing import GatewayClass, RouteShape
from canary.errors import ClusterUnreachable, Conflict, Forbidden, InvalidSpec, LeaseLost, MetricError, ProviderUnreachable, Refused, StackBusy
from canary.state.cache import Cache
from canary.state.store import ReleaseStore
from tests.unit.fakes import NEW, STABLE, FakeCluster, FakeHooks, FakeKube, FakeStore, Metrics, World, gated_blue_green, make, spec
from tests.unit.support import BOUND_S


def test_a_healthy_release_steps_through_every_weight_and_promotes() -> None:
    world = make(Metrics(0.0))
    result = world.start()
    assert result.phase is Phase.SUCCEEDED and result.exit_code == 0
    assert world.cluster.weights_seen == [0, 10, 20, 30, 40, 50, 0]
    assert world.cluster.stable_hash == NEW.hash and world.cluster.canary_replicas == 0
    assert world.store.state is not None and world.store.state.stable == NEW
    # the canary's deploy touches the canary and the route; a step the route alone (the size never changes
    # here); promotion stable, route, then the whole app
    assert [sorted(u["parts"]) for u in world.stack.ups] == [["canary", "route"]] + [["route"]] * 5 + [["stable"], ["route"], ["canary", "route", "stable"]]
    kinds = [r.type for r in world.store.journal]
    assert kinds.index("snapshot") < kinds.index("decision") < kinds.index("up")
    assert world.lease.acquired and world.lease.held is None


def test_promotion_moves_traffic_off_the_canary_only_after_stable_is_ready_and_scales_it_down_last() -> None:
    world = make(Metrics(0.0))
    world.start()
    log = world.cluster.log
    stable_at = log.index(("stable", NEW.hash))
    route_at_rest = max(i for i, entry in enumerate(log) if entry == ("route", RouteShape()))
    canary_down = max(i for i, entry in enumerate(log) if entry == ("canary", 0))
    assert stable_at < route_at_rest < canary_down, log


def test_failing_checks_roll_back_on_the_threshold_tick_traffic_first() -> None:
    world = make(Metrics(18.2))
    result = world.start()
    assert result.phase is Phase.FAILED and result.exit_code == 1
    assert "request-error-rate 18.2 > max 1 for 3 checks in a row at weight 10" in result.reason
    assert world.cluster.weights_seen == [0, 10, 0] and world.cluster.stable_hash == STABLE.hash and world.cluster.canary_replicas == 0
    ticks = world.store.of("tick")
    assert [t.failed_in_row for t in ticks] == [1, 2, 3] and ticks[-1].outcome.value == "rollback"
    rollback_ups = world.stack.ups[-2:]
    assert rollback_ups[0]["parts"] == {"route"} and rollback_ups[1]["pins"]["stable"]["hash"] == STABLE.hash
    assert any(reason == "RollingBack" for reason, _, _ in world.store.events)


def test_a_flapping_canary_is_rolled_back_at_failure_limit_in_all() -> None:
    """fail/pass/fail/pass … never reaches threshold in a row; failureLimit in all stops it (12.3)."""
    world = make(Metrics([5.0, 0.0, 5.0, 0.0, 5.0, 0.0]), lambda v: v["analysis"].update(threshold=2, failureLimit=3))
    result = world.start()
    assert result.phase is Phase.FAILED
    assert "3 failed checks in all (failureLimit 3)" in result.reason
    assert max(t.failed_in_row for t in world.store.of("tick")) == 1


def test_failure_limit_defaults_to_threshold() -> None:
    world = make(Metrics([5.0, 0.0, 5.0, 0.0, 5.0, 0.0, 0.0, 0.0]), lambda v: v["analysis"].update(threshold=3))
    result = world.start()
    assert result.phase is Phase.FAILED and "failureLimit 3" in result.reason


def test_the_warm_up_after_a_shift_holds_on_no_data_instead_of_failing() -> None:
    """No data on the first tick after a shift is scrape lag, not a failure (12.9)."""
    world = make(Metrics([-1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]), lambda v: v["analysis"].update(warmup="30s"))
    result = world.start()
    assert result.phase is Phase.SUCCEEDED
    first = world.store.of("tick")[0]
    assert first.outcome.value == "hold" and first.failed_in_row == 0 and "warming up" in first.checks[0].reason


def test_holding_on_no_data_is_bounded() -> None:
    world = make(Metrics(-1.0), lambda v: v["analysis"].update(holdLimit="30s", metrics=[{"name": "request-error-rate", "thresholdRange": {"max": 1}, "onNoData": "hold"}]))
    result = world.start()
    assert result.phase is Phase.FAILED and "held longer than analysis.holdLimit" in result.reason


def test_a_rate_passes_only_on_enough_requests() -> None:
    """Three requests without an error do not show an error rate of at most 1 % (16.3)."""
    world = make(Metrics(0.0, requests=3), lambda v: v["analysis"].update(holdLimit="40s"))
    result = world.start()
    assert result.phase is Phase.FAILED
    holds = [t for t in world.store.of("tick") if t.outcome.value == "hold"]
    assert holds and "not enough requests to tell" in holds[0].reason
    assert all(t.weight == 10 for t in world.store.of("tick"))  # never advanced on three requests


def test_ticks_go_on_while_the_traffic_increase_gate_holds_and_a_failing_canary_is_rolled_back() -> None:
    """A gate that says no holds the weight, not the analysis (12.4)."""
    hooks = FakeHooks(lambda name, kind: kind != "confirm-traffic-increase")
    calls = {"n": 0}

    def gate_after_first_step(name: str, kind: str) -> bool:
        if kind == "confirm-traffic-increase":
            calls["n"] += 1
            return calls["n"] == 1
        return True

    hooks.answer = gate_after_first_step
    world = make(Metrics([0.0, 0.0, 9.0, 9.0, 9.0]), lambda v: v["analysis"].update(
        webhooks=[{"name": "gate", "type": "confirm-traffic-increase", "url": "http://gate/"}]), hooks=hooks)
    result = world.start()
    assert result.phase is Phase.FAILED
    assert world.cluster.weights_seen == [0, 10, 0]
    assert len(world.store.of("tick")) == 5
    # the gate's no is a Warning Event as well as a journal line: `kubectl get events` shows why the weight holds
    held = [(reason, warning) for reason, message, warning in world.store.events if "confirm-traffic-increase webhook gate said no" in message]
    assert held == [("Progressing", True)] * 2, world.store.events


def _promote_plain_then_forced(world: World, waiting: Callable[[ReleaseState], bool], reason: str) -> dict[str, bool]:
    """Once the release waits as ``waiting`` says: a plain promote, then (that one taken) a forced one; what was asked."""
    asked = {"plain": False, "forced": False}

    def on_sleep(now: float) -> None:
        state = world.store.state
        if state is None or not waiting(state):
            return
        if not asked["plain"]:
            asked["plain"] = True
            world.store.request("promote")
        elif not asked["forced"] and not world.store.pending:
            asked["forced"] = True
            world.store.request("promote", force=True, reason=reason)

    world.clock.on_sleep = on_sleep
    return asked


def test_promote_is_refused_after_a_failed_tick_and_force_promotes_with_its_reason() -> None:
    """In WaitingPromotion a promote needs a passing last tick; --force --reason overrides, journaled (12.5)."""
    hooks = FakeHooks(lambda name, kind: kind != "confirm-promotion")
    world = make(Metrics([0.0] * 5 + [7.0] * 50), lambda v: v["analysis"].update(
        threshold=50, webhooks=[{"name": "approve", "type": "confirm-promotion", "url": "http://gate/"}]), hooks=hooks)
    _promote_plain_then_forced(world, lambda state: state.phase is Phase.WAITING_PROMOTION and state.failed_last, "the 500s are the test client's")
    result = world.start()
    assert result.phase is Phase.SUCCEEDED
    messages = [e.message for e in world.events]
    assert any("promotion by test refused: the last tick did not pass" in m for m in messages), messages
    assert world.store.state is not None and world.store.state.forced == "force: the 500s are the test client's"
    assert any(r.type == "request" and r.request == "promote --force" for r in world.store.journal)


def test_waiting_for_a_decision_a_promote_after_a_failed_tick_is_refused_and_force_promotes() -> None:
    """A person decides an inconclusive release; once a tick failed since, a plain promote is no answer to it."""
    world = make(Metrics([1.5] + [5.0] * 50), lambda v: v["analysis"].update(threshold=50, decisionTimeout="1h", metrics=[
        {"name": "request-error-rate", "thresholdRange": {"max": 1}, "inconclusiveRange": {"max": 2}, "evidence": "none"}]))
    asked = _promote_plain_then_forced(world, lambda state: state.phase is Phase.WAITING_DECISION and state.failed_last, "the 500s are the load tester's")
    result = world.start()
    assert result.phase is Phase.SUCCEEDED and asked == {"plain": True, "forced": True}
    messages = [e.message for e in world.events]
    assert any("promotion by test refused: the last tick failed" in m for m in messages), messages
    assert [r.request for r in world.store.journal if r.type == "request"] == ["promote --force"]
    assert world.store.state is not None and world.store.state.forced == "decided by test: the 500s are the load tester's"


def test_pre_rollout_failures_end_their_row_when_the_hooks_pass() -> None:
    """Two pre-rollout failures, then a pass: a first failed metric tick is the first in a row (it was taken for the third)."""
    calls = {"pre-rollout": 0}

    def answer(name: str, kind: str) -> bool:
        if kind == "pre-rollout":
            calls["pre-rollout"] += 1
            return calls["pre-rollout"] > 2
        return True

    world = make(Metrics([5.0] + [0.0] * 10), lambda v: v["analysis"].update(
        threshold=3, failureLimit=5, webhooks=[{"name": "smoke", "type": "pre-rollout", "url": "http://smoke/"}]), hooks=FakeHooks(answer))
    result = world.start()
    assert result.phase is Phase.SUCCEEDED, result.reason
    first = world.store.of("tick")[0]
    assert first.outcome.value == "fail" and first.failed_in_row == 1 and first.failed_total == 3
    failed = [(reason, warning) for reason, message, warning in world.store.events if "pre-rollout webhook smoke failed" in message]
    assert failed == [("Initializing", True)] * 2, world.store.events


def test_a_pause_that_reaches_a_promoting_release_is_ignored_and_said_so() -> None:
    """Accepted a moment before promotion, taken during it: nothing holds there, and the Succeeded state said paused."""
    world = make(Metrics(0.0))
    up = world.stack.up
    asked: list[Phase] = []

    def pause_while_promoting(*args: Any, **kwargs: Any) -> Any:
        state = world.store.state
        if state is not None and state.phase is Phase.PROMOTING and not asked:
            asked.append(state.phase)
            world.store.request("pause")
        return up(*args, **kwargs)

    world.stack.up = pause_while_promoting  # type: ignore[method-assign]
    result = world.start()
    assert result.phase is Phase.SUCCEEDED and asked
    assert world.store.state is not None and not world.store.state.paused
    assert not any("paused" in s.message for s in world.store.of("state"))
    assert any("pause by test ignored: the release is already" in e.message for e in world.events), [e.message for e in world.events]
    assert not world.store.pending


def test_an_abort_is_taken_within_a_second_while_the_release_waits() -> None:
    world = make(Metrics(0.0), lambda v: v["analysis"].update(interval="60s"))
    _aborted_within_a_second(world, lambda: world.store.state is not None and world.store.state.weight == 10)


def _aborted_within_a_second(world: Any, when: Any) -> None:
    """`canary abort` is sent as ``when()`` first holds while the release waits: it ends Aborted, and its
    rollback begins within a second of the request — counted from the start of the sleep it arrives in
    (``on_sleep`` runs after the clock moved on: a release that slept a whole interval would not show)."""
    sent: dict[str, float] = {}

    def on_sleep(now: float) -> None:
        if not sent and when():
            sent["at"] = world.clock.slept_from
            world.store.request("abort", by="canary abort")

    world.clock.on_sleep = on_sleep
    result = world.start()
    assert result.phase is Phase.ABORTED and "aborted by canary abort" in result.reason
    rolling = next(r for r in world.store.of("state") if r.phase == "RollingBack")
    assert _t(rolling.time) - (world.clock.base.timestamp() + sent["at"]) <= 1.0


def test_a_promote_from_another_machine_is_taken_at_once_not_after_the_load_test() -> None:
    """A person's promote in WaitingPromotion used to wait for the interval's load test to end (up to the
    interval and its timeout); it stops the load test and promotes within a second, as `canary promote` says."""
    import time as real_time

    class LoadTest(FakeHooks):
        """A rollout command that runs 8 s of the 10 s interval unless its deadline comes first."""

        def start(self, hook: Any, body: Any = None) -> Any:
            return world.clock.monotonic()

        def finish(self, hook: Any, handle: Any, deadline: float, cancel: Any = None) -> Any:
            from canary.core.records import HookResult

            left = handle + 8.0 - world.clock.monotonic()
            allowed = deadline - real_time.monotonic()
            world.clock.sleep(max(0.0, min(left, allowed)))
            return HookResult(hook.name, hook.type.value, allowed >= left, 0.0, "exited 0" if allowed >= left else "killed")

    hooks = LoadTest(lambda name, kind: kind != "confirm-promotion")
    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[
        {"name": "approve", "type": "confirm-promotion", "url": "http://gate/"},
        {"name": "load", "type": "rollout", "cmd": "hey -z 8s http://web/", "timeout": "15s"}]), hooks=hooks)
    sent: dict[str, float] = {}

    def on_sleep(now: float) -> None:
        state = world.store.state
        if not sent and state is not None and state.phase is Phase.WAITING_PROMOTION and state.advance and world.clock.now_s > 0:
            sent["at"] = world.clock.slept_from  # made during this sleep: counted from its start
            world.store.request("promote", by="canary promote")

    world.clock.on_sleep = on_sleep
    assert world.start().phase is Phase.SUCCEEDED
    approved = next(r for r in world.store.of("state") if r.message.startswith("promotion approved by canary promote"))
    assert _t(approved.time) - (world.clock.base.timestamp() + sent["at"]) <= 1.0
    stopped = [r for r in world.store.of("webhook") if r.name == "load" and not r.ok]
    assert len(stopped) == 1 and "stopped: canary promote" in stopped[0].detail, stopped


def _t(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_promote_reported_while_the_handler_runs_after_its_read_wakes_the_wait() -> None:
    # reported during the rollout hook's start, after WaitingPromotion had read the requests: the wait then cleared the
    # wake-up, the promote sat out the interval, and the failing tick judged first turned it into a refusal
    sent: dict[str, float] = {}

    class Hooks(FakeHooks):
        def call(self, hook: Any, body: Any, cancel: Any = None) -> Any:  # an HTTP rollout hook is called as the interval starts
            state = world.store.state
            if not sent and hook.type.value == "rollout" and state is not None and state.phase is Phase.WAITING_PROMOTION:
                sent["at"] = world.clock.now_s
                world.store.request("promote", by="oncall")
            return super().call(hook, body, cancel)

    world = make(Metrics([0.0] * 5 + [5.0] * 50), lambda v: v["analysis"].update(threshold=50, webhooks=[
        {"name": "approve", "type": "confirm-promotion", "url": "http://gate/"},
        {"name": "load", "type": "rollout", "url": "http://loadtester/"}]), hooks=Hooks(lambda name, kind: kind != "confirm-promotion"))
    assert world.start().phase is Phase.SUCCEEDED
    assert not [e for e in world.store.of("event") if "refused" in e.message]
    approved = next(r for r in world.store.of("state") if r.message.startswith("promotion approved by oncall"))
    assert _t(approved.time) - (world.clock.base.timestamp() + sent["at"]) <= 1.0


def test_an_abort_during_an_up_interrupts_it() -> None:
    world = make(Metrics(0.0))

    def on_up(record: dict[str, Any]) -> None:
        if record["parts"] == {"route"} and record["pins"]["route"]["weight"] == 20:
            world.store.request("abort")

    world.stack.on_up = on_up
    world.release._in_up = False
    result = world.start()
    assert result.phase is Phase.ABORTED


def test_an_abort_just_before_an_up_starts_stops_that_up() -> None:
    # the abort landed after the release's last look at its token (while the lease was fenced, an API
    # call): no up was in progress to interrupt, and the shift to 30 went out before the rollback
    world = make(Metrics(0.0))
    fence = world.lease.fence

    def fencing() -> None:
        state = world.store.state
        if state is not None and state.shifting_to == 3 and "abort" not in world.store.pending:
            world.store.request("abort", by="oncall")
        fence()

    world.lease.fence = fencing  # type: ignore[method-assign]
    result = world.start()
    assert result.phase is Phase.ABORTED
    assert 30 not in world.cluster.weights_seen, world.cluster.weights_seen


def test_a_lock_left_by_the_release_s_own_killed_cli_is_cleared_and_the_rollback_goes_on() -> None:
    # an abort's interrupt outlasted its grace (a Deployment awaited past Ctrl-C): the CLI was SIGKILLed and
    # its lock stayed. The rollback's first up waited lock_wait for a lock nobody would let go, traffic
    # at weight 20, then ended "rollback pending ... once the other update is done"
    world = make(Metrics(0.0))

    def on_up(record: dict[str, Any]) -> None:
        if record["parts"] == {"route"} and record["pins"]["route"]["weight"] == 20 and not world.stack.refused:
            world.store.request("abort")
            world.stack.dead_locks = [{"pid": 4242, "hostname": "here", "timestamp": "2026-12-01T00:00:00Z", "file": "x.json"}]

    world.stack.on_up = on_up
    start = world.clock.monotonic()
    result = world.start()
    assert result.phase is Phase.ABORTED and world.cluster.weights_seen[-1] == 0
    assert world.clock.monotonic() - start < 60, "the rollback waited on the dead lock"
    assert any("cleared Pulumi's stale lock of pid 4242 on here" in e.message for e in world.events)
    assert world.stack.ups[-1]["refresh"] or any(up["refresh"] for up in world.stack.ups[-3:])  # what the killed CLI left is read back


def test_the_load_tests_are_stopped_when_an_interval_ends_by_an_error() -> None:
    # an error out of the interval's wait (the lease lost as a request was taken) left the rollout commands
    # running: they run in sessions of their own, and nothing ever stopped them
    from canary.core.records import HookResult

    stopped: list[str] = []

    class LoadTest(FakeHooks):
        def start(self, hook: Any, body: Any = None) -> Any:
            return f"{hook.name}-process"

        def finish(self, hook: Any, handle: Any, deadline: float, cancel: Any = None) -> Any:
            stopped.append(handle)
            return HookResult(hook.name, hook.type.value, False, 0.0, "killed")

    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[{"name": "load", "type": "rollout", "cmd": "hey http://web-canary/"}]),
                 hooks=LoadTest())

    take = world.release._take_requests
    asked: list[bool] = []

    def taken(state: Any) -> Any:
        if asked:  # the request below, taken inside the interval
            raise LeaseLost("this release no longer holds the app: taken over by r9")
        return take(state)

    def pause_once(now: float) -> None:
        state = world.store.state
        if not asked and state is not None and state.step == 1:  # in the first step's interval, the load test running
            asked.append(True)
            world.store.request("pause")

    world.release._take_requests = taken  # type: ignore[method-assign]
    world.clock.on_sleep = pause_once
    with pytest.raises(LeaseLost):
        world.start()
    assert stopped == ["load-process"]


def test_an_abort_during_promotion_is_ignored() -> None:
    world = make(Metrics(0.0))

    def on_up(record: dict[str, Any]) -> None:
        if record["parts"] == {"stable"}:
            world.store.request("abort")

    world.stack.on_up = on_up
    result = world.start()
    assert result.phase is Phase.SUCCEEDED
    assert any("abort ignored" in e.message for e in world.events)


def _locked_at_step(world: Any, weight: int, seconds: float) -> None:
    """Another update (another app's release of the stack) takes Pulumi's lock for ``seconds`` as the step to ``weight`` begins."""
    def on_up(record: dict[str, Any]) -> None:
        if not world.stack.refused and record["parts"] == {"route"} and record["pins"]["route"]["weight"] == weight:
            world.stack.locked_until = world.clock.monotonic() + seconds

    world.stack.on_up = on_up


def test_a_step_kept_waiting_by_pulumi_s_lock_waits_for_it_to_be_let_go_then_tries_once_more() -> None:
    """Refused for the lock, the step's ``up`` is tried again as the lock is let go, not every 2 s: each
    try is a CLI run, and apps of one stack released at once spent their CPU on them."""
    world = make(Metrics(0.0))
    _locked_at_step(world, 20, 4.0)  # let go within the half interval a step waits (longer: the step is held, test_step_lock)
    result = world.start()
    assert result.phase is Phase.SUCCEEDED, result.reason
    assert len(world.stack.refused) == 1, world.stack.refused
    assert world.stack.waited and max(world.stack.waited) <= 1.0, world.stack.waited  # in slices: an abort is not kept waiting
    retried = next(i for i, u in enumerate(world.stack.ups) if u["parts"] == {"route"} and u["pins"]["route"]["weight"] == 20)
    assert world.cluster.weights_seen[:3] == [0, 10, 20] and retried == 2
    assert any("waiting for Pulumi's lock" in e.message for e in world.events)


def test_an_abort_while_a_step_waits_for_pulumi_s_lock_is_taken_within_a_second() -> None:
    world = make(Metrics(0.0))
    _locked_at_step(world, 20, 100.0)
    _aborted_within_a_second(world, lambda: bool(world.stack.refused))
    # the rollback's own update cannot be cancelled: it waits out the lock, then restores stable
    assert world.cluster.weights_seen[-1] == 0 and world.cluster.stable_hash == STABLE.hash and world.cluster.canary_replicas == 0
    assert world.clock.monotonic() >= world.stack.locked_until


def test_a_rollback_that_falls_back_to_the_whole_stack_leaves_the_other_apps_alone() -> None:
    """The rollback's targeted ``up`` cannot apply (a resource it depends on is not in the stack): the same
    pins go to the whole stack, but another app of the stack may be in a release of its own, pinned in a
    file of its own: its resources are excluded, or this rollback would put its route at rest mid-release."""
    from dataclasses import replace

    from canary.errors import StackError

    others = ("urn:api-route", "urn:api-stable", "urn:api-canary")
    world = make(Metrics(18.2))
    world.release.facts = replace(world.release.facts, others=others)

    def on_up(record: dict[str, Any]) -> None:
        if record["parts"] == {"route", "stable", "canary"} and not record["whole"]:
            raise StackError("resource urn:ns is not in the stack and not targeted")

    world.stack.on_up = on_up
    result = world.start()
    assert result.phase is Phase.FAILED, result.reason
    whole = [u for u in world.stack.ups if u["whole"]]
    assert len(whole) == 1 and whole[0]["exclude"] == sorted(others), world.stack.ups
    assert all(u["exclude"] is None for u in world.stack.ups if not u["whole"])
    assert world.cluster.stable_hash == STABLE.hash and world.cluster.weights_seen[-1] == 0
    assert any("applying the snapshot to the whole stack" in e.message for e in world.events)


def test_the_whole_stack_rollback_leaves_alone_an_app_added_since_the_release_began() -> None:
    """`canary up --app worker` during the release added an app: not in the release's snapshot, and not in the other
    apps it knew at its start, the whole-stack fallback deleted its Deployments, Services and route."""
    from canary.errors import StackError

    world = make(Metrics(18.2))
    world.stack.outputs_now = {"canary/worker": {"urns": {"stableDeployment": "urn:worker-stable", "route": "urn:worker-route"}},
                               "canary/web": {"urns": {"route": "urn:web-route"}}}

    def on_up(record: dict[str, Any]) -> None:
        if record["parts"] == {"route", "stable", "canary"} and not record["whole"]:
            raise StackError("resource urn:ns is not in the stack and not targeted")

    world.stack.on_up = on_up
    assert world.start().phase is Phase.FAILED
    [whole] = [u for u in world.stack.ups if u["whole"]]
    assert whole["exclude"] == ["urn:worker-route", "urn:worker-stable"], whole


def test_a_step_up_that_fails_once_is_retried() -> None:
    world = make(Metrics(0.0))
    world.stack.fail_parts["route"] = 1
    result = world.start()
    assert result.phase is Phase.SUCCEEDED
    assert any("failed (attempt 1 of 3)" in e.message for e in world.events)


def test_a_route_read_that_fails_after_a_shift_is_retried_not_rolled_back() -> None:
    world = make(Metrics(0.0))
    shifted = {"done": False}

    def on_up(record: dict[str, Any]) -> None:
        if not shifted["done"] and record["parts"] == {"route"} and record["pins"]["route"]["weight"] == 10:
            shifted["done"] = True
            world.cluster.fail_route_reads = 2

    world.stack.on_up = on_up
    assert world.start().phase is Phase.SUCCEEDED


def test_a_failure_after_stable_took_the_new_version_never_demotes_it() -> None:
    """Promotion's route step failing for good ends "promoted, unverified" (exit 5), not in a rollback (12.7)."""
    world = make(Metrics(0.0), retries=2, retry_backoff=0.1)
    promoted = {"stable": False}

    def on_up(record: dict[str, Any]) -> None:
        if record["parts"] == {"stable"}:
            promoted["stable"] = True
        elif promoted["stable"]:
            world.stack.fail_ups = 100

    world.stack.on_up = on_up
    result = world.start()
    assert result.phase is Phase.PROMOTED_UNVERIFIED and result.exit_code == 5
    assert world.cluster.stable_hash == NEW.hash


def _unreachable_once_stable_took_the_canary(world: World) -> None:
    """The backend unreachable (longer than the retries) from the first update after stable took the canary's version:
    the promotion is applied but not verified."""
    seen = {"stable": False, "failed": False}

    def on_up(record: dict[str, Any]) -> None:
        if record["parts"] == {"stable"}:
            seen["stable"] = True
        elif seen["stable"] and not seen["failed"]:
            seen["failed"] = True
            world.stack.fail_ups = 3

    world.stack.on_up = on_up


@pytest.mark.parametrize("strategy", ["canary", "blue-green"])
def test_resume_after_a_promotion_step_failed_for_good_finishes_the_promotion(strategy: str) -> None:
    """The route step failing for good after stable took the new version ended PromotedUnverified, and resume
    only verified: traffic stayed split (50/50, or all on the canary for blue/green) with the canary's pods up."""
    def blue_green(v: dict[str, Any]) -> None:
        for key in ("stepWeight", "maxWeight", "stepWeights"):
            v["analysis"].pop(key, None)
        v["analysis"]["iterations"] = 2

    world = make(Metrics(0.0), blue_green if strategy == "blue-green" else None, retries=2, retry_backoff=0.1, route_timeout=5, ready_timeout=5)
    _unreachable_once_stable_took_the_canary(world)
    assert world.start().phase is Phase.PROMOTED_UNVERIFIED
    assert world.cluster.route(world.release.spec).weights != (100, 0)
    world.stack.on_up = None
    world.stack.fail_ups = 0
    resumed = world.rebuild().release.resume()
    assert resumed.phase is Phase.SUCCEEDED, resumed.reason
    assert world.cluster.route(world.release.spec).weights == (100, 0) and world.cluster.canary_replicas == 0
    assert world.cluster.stable_hash == NEW.hash
    assert ("stable", STABLE.hash) not in world.cluster.log[world.cluster.log.index(("stable", NEW.hash)):]  # never demoted


def test_a_promotion_whose_stable_never_gets_ready_rolls_back_stable_first() -> None:
    world = make(Metrics(0.0), retries=1, ready_timeout=5)

    def on_up(record: dict[str, Any]) -> None:
        if record["parts"] == {"stable"}:
            world.cluster.stable_ready = record["pins"]["stable"]["hash"] == STABLE.hash

    world.stack.on_up = on_up
    result = world.start()
    assert result.phase is Phase.FAILED
    log = world.cluster.log
    back = log.index(("stable", STABLE.hash))
    assert log.index(("stable", NEW.hash)) < back < max(i for i, e in enumerate(log) if e == ("route", RouteShape()))


class Killed(BaseException):
    """The process dies (SIGKILL): nothing of the release's own handling runs."""


def _killed_shifting_to(world: Any, weight: int) -> None:
    """Run the release until its targeted ``up`` of the route to ``weight``, and kill it there."""

    def on_up(record: dict[str, Any]) -> None:
        if record["parts"] == {"route"} and record["pins"]["route"]["weight"] == weight:
            raise Killed

    world.stack.on_up = on_up
    with pytest.raises(Killed):
        world.start()
    world.stack.on_up = None


def test_resume_before_the_first_step_takes_the_first_step_instead_of_judging_weight_zero() -> None:
    """A release killed once analysis started, before any shift, resumes at the schedule's first step (12.1)."""
    world = make(Metrics(0.0), lambda v: v["analysis"].update(metrics=[{"name": "request-error-rate", "thresholdRange": {"max": 1}}]))
    _killed_shifting_to(world, 10)
    assert world.store.state is not None and world.store.state.phase is Phase.PROGRESSING and world.store.state.step == 0
    resumed = world.rebuild()
    result = resumed.release.resume()
    assert result.phase is Phase.SUCCEEDED
    assert all(t.weight > 0 for t in resumed.store.of("tick")), [t.weight for t in resumed.store.of("tick")]


def test_resume_rejudges_the_recorded_step_after_putting_it_back_in_the_route() -> None:
    world = make(Metrics(0.0))

    class Killed(BaseException):
        pass

    def on_up(record: dict[str, Any]) -> None:
        if record["parts"] == {"route"} and record["pins"]["route"]["weight"] == 30:
            world.cluster.set_shape(RouteShape(weight=30))  # the killed up got as far as the cluster
            raise Killed

    world.stack.on_up = on_up
    with pytest.raises(Killed):
        world.start()
    state = world.store.state
    assert state is not None and state.weight == 20 and state.shifting_to == 3
    world.stack.on_up = None
    result = world.rebuild().release.resume()
    assert result.phase is Phase.SUCCEEDED
    assert world.cluster.weights_seen[-6:] == [30, 20, 30, 40, 50, 0]
    first = next(u for u in world.stack.ups if u["refresh"])
    assert first["pins"]["route"]["weight"] == 20


def test_a_promote_accepted_before_the_process_died_is_taken_by_the_resume() -> None:
    # waiting for promotion after a passing tick, `canary promote` accepted; the process died before it read
    # the request. The resume cleared `advance` to judge the step again, then refused and deleted the
    # request as "the last tick did not pass", and refused new ones until a tick passed again
    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[{"name": "approve", "type": "confirm-promotion", "url": "http://gate/"}]),
                 hooks=FakeHooks(lambda name, kind: kind != "confirm-promotion"))

    def on_sleep(now: float) -> None:
        state = world.store.state
        if state is not None and state.phase is Phase.WAITING_PROMOTION and state.advance:
            world.store.pending["promote"] = {"release": state.release, "by": "oncall", "force": False, "skip_analysis": False, "reason": ""}
            raise Killed

    world.clock.on_sleep = on_sleep
    with pytest.raises(Killed):
        world.start()
    world.clock.on_sleep = None
    resumed = world.rebuild()
    sleeps = iter(range(500))

    def bounded(now: float) -> None:  # without the promote the release waits on for a person
        if next(sleeps) == 499:
            raise AssertionError(f"still waiting: {[e.message for e in resumed.events][-3:]}")

    resumed.clock.on_sleep = bounded
    result = resumed.release.resume()
    assert result.phase is Phase.SUCCEEDED, [e.message for e in resumed.events]
    assert not any("refused" in e.message for e in resumed.events)
    assert any(e.message == "promotion approved by oncall" for e in resumed.events)


def test_a_rollback_that_cannot_be_applied_is_pending_and_resume_completes_it() -> None:
    world = make(Metrics(18.0), retries=2, retry_backoff=0.1)

    def on_up(record: dict[str, Any]) -> None:
        if record["pins"]["route"]["weight"] == 0 and world.store.state is not None and world.store.state.phase is Phase.ROLLING_BACK:
            world.stack.fail_ups = 1

    world.stack.on_up = on_up
    result = world.start()
    assert result.rollback_pending and result.exit_code == 4 and "could not be applied" in result.reason
    # traffic is not left on the canary while a person is found: the route was written at rest around Pulumi
    assert world.cluster.restored == [RouteShape()] and world.cluster.shape == RouteShape() and world.cluster.weights_seen[-1] == 0
    assert "Traffic is on stable (the route was written at rest directly)" in result.reason
    assert any("written at rest directly, around Pulumi" in e.message for e in world.events)
    world.stack.on_up = None
    resumed = world.rebuild().release.resume()
    assert resumed.phase is Phase.FAILED and not resumed.rollback_pending
    assert world.cluster.shape == RouteShape() and world.cluster.stable_hash == STABLE.hash


def test_a_rollback_whose_traffic_step_fails_outside_the_error_tree_still_takes_traffic_off_the_canary() -> None:
    """The runner's disk full: the release config cannot be written for any up, forward or back. The route at rest
    needs no disk: it is written around Pulumi, as when the up itself fails."""
    world = make(Metrics(0.0))
    write = world.config.write

    def disk_full(release: str, snapshot: str, pins: Any) -> Any:
        if world.cluster.shape.weight >= 20:  # the disk fills once the canary has 20 %
            raise OSError(28, "No space left on device")
        return write(release, snapshot, pins)

    world.config.write = disk_full  # type: ignore[method-assign]
    result = world.start()
    assert result.rollback_pending and result.exit_code == 4, result.reason
    assert world.cluster.restored == [RouteShape()] and world.cluster.shape == RouteShape(), world.cluster.shape
    assert "OSError: [Errno 28] No space left on device" in result.reason and "Traffic is on stable" in result.reason
    # the disk freed, resume completes the rollback
    resumed = world.rebuild().release.resume()
    assert resumed.phase is Phase.FAILED and not resumed.rollback_pending
    assert world.cluster.shape == RouteShape() and world.cluster.stable_hash == STABLE.hash


def test_the_route_written_around_pulumi_is_retried_through_a_brief_outage() -> None:
    # tried once: the API server trouble that made the up fail refused the write too, traffic left on the canary
    world = make(Metrics(18.0), retries=3, retry_backoff=0.1)
    world.cluster.restore_error, world.cluster.restore_fails = ClusterUnreachable("connection refused"), 1

    def on_up(record: dict[str, Any]) -> None:
        if record["pins"]["route"]["weight"] == 0 and world.store.state is not None and world.store.state.phase is Phase.ROLLING_BACK:
            world.stack.fail_ups = 1

    world.stack.on_up = on_up
    result = world.start()
    assert result.rollback_pending and "Traffic is on stable (the route was written at rest directly)" in result.reason
    assert world.cluster.restored == [RouteShape(), RouteShape()] and world.cluster.shape == RouteShape()


def test_a_rollback_kept_waiting_by_a_live_pulumi_lock_writes_the_route_around_it_after_the_route_timeout() -> None:
    """Another app's `up` of the stack holds Pulumi's lock (awaiting its Deployment) as the rollback begins. Its traffic
    step waited ``lock_wait`` (600 s) with the failing canary taking its share; the route is now written at rest around
    Pulumi after the route timeout, and the rest of the rollback waits for the lock as before and completes."""
    world = make(Metrics(18.2), route_timeout=20.0)
    moved: dict[str, float] = {}

    def on_up(record: dict[str, Any]) -> None:
        state = world.store.state
        if state is not None and state.phase is Phase.ROLLING_BACK and not world.stack.refused:
            moved["rollback"] = world.clock.monotonic()
            world.stack.locked_until = world.clock.monotonic() + 590.0

    set_shape = world.cluster.set_shape

    def timed(shape: RouteShape) -> None:
        if shape.weight == 0 and "rollback" in moved:
            moved.setdefault("rest", world.clock.monotonic())
        set_shape(shape)

    world.stack.on_up = on_up
    world.cluster.set_shape = timed  # type: ignore[method-assign]
    result = world.start()
    assert result.phase is Phase.FAILED and not result.rollback_pending, result.reason
    assert moved["rest"] - moved["rollback"] <= 20.0 + 2.0, moved  # not lock_wait
    assert world.cluster.restored == [RouteShape()]
    # Pulumi's state made to agree, the canary scaled down, once the other update let go
    last = world.stack.ups[-1]
    assert last["parts"] == {"route", "stable", "canary"} and last["pins"]["route"]["weight"] == 0, world.stack.ups
    assert world.clock.monotonic() >= world.stack.locked_until and world.cluster.canary_replicas == 0
    assert any("around Pulumi" in e.message and "Pulumi's lock is held by another update" in e.message for e in world.events)


def test_a_rollback_whose_up_leaves_a_drifted_route_where_it_was_applies_it_again_with_refresh() -> None:
    """The route changed outside Pulumi (a hand edit): Pulumi's checkpoint already says at rest, so the rollback's `up`
    without refresh changes nothing. Verified three times (~3 min, the canary keeping its weight), then "rollback
    pending" blaming the gateway. The `up` is now run again with the route read back first, and the rollback completes."""
    world = make(Metrics(18.2))
    set_shape = world.cluster.set_shape

    def drifted(shape: RouteShape) -> None:
        state = world.store.state
        if state is not None and state.phase is Phase.ROLLING_BACK and shape.weight == 0 and not world.stack.ups[-1]["refresh"]:
            return  # no diff against the checkpoint: nothing written
        set_shape(shape)

    world.cluster.set_shape = drifted  # type: ignore[method-assign]
    start = world.clock.monotonic()
    result = world.start()
    assert result.phase is Phase.FAILED and not result.rollback_pending, result.reason
    assert world.cluster.shape == RouteShape() and world.cluster.canary_replicas == 0 and not world.cluster.restored
    route_ups = [u for u in world.stack.ups if u["parts"] == {"route"} and u["pins"]["route"]["weight"] == 0]
    assert [u["refresh"] for u in route_ups] == [False, True], world.stack.ups
    assert any("the route did not move" in e.message for e in world.events)
    assert world.clock.monotonic() - start <= 30 + 60 + 1  # three failed ticks, then one route timeout: not three, nor pending


def test_a_rollback_whose_route_cannot_be_written_either_is_pending_with_traffic_where_it_was() -> None:
    world = make(Metrics(18.0), retries=2, retry_backoff=0.1)
    world.cluster.restore_error = Forbidden("httproutes.gateway.networking.k8s.io is forbidden: cannot patch")

    def on_up(record: dict[str, Any]) -> None:
        if record["pins"]["route"]["weight"] == 0 and world.store.state is not None and world.store.state.phase is Phase.ROLLING_BACK:
            world.stack.fail_ups = 1

    world.stack.on_up = on_up
    result = world.start()
    assert result.rollback_pending and result.exit_code == 4
    assert "writing the route at rest directly failed too" in result.reason and "forbidden" in result.reason
    assert world.cluster.shape.weight > 0  # said, not hidden: resume completes it
    world.stack.on_up = None
    world.cluster.restore_error = None
    resumed = world.rebuild().release.resume()
    assert resumed.phase is Phase.FAILED and world.cluster.shape == RouteShape()


def test_stack_file_edits_made_during_the_release_are_named_and_kept_not_applied() -> None:
    world = make(Metrics(18.0))
    world.config.stack_file_changes = {"canary:app.env.LOG_LEVEL": "debug"}
    result = world.start()
    assert result.phase is Phase.FAILED and result.unapplied == ("canary:app.env.LOG_LEVEL",)
    assert world.config.kept and world.config.kept[0][1] == {"canary:app.env.LOG_LEVEL": "debug"}
    assert world.store.state is not None and world.store.state.unapplied == ("canary:app.env.LOG_LEVEL",)
    rollback = [u for u in world.stack.ups if u["pins"]["stable"]["hash"] == STABLE.hash]
    assert all(u["pins"].get("canary") is None or u["pins"]["canary"]["hash"] == NEW.hash for u in rollback)


def test_a_release_of_what_stable_runs_or_of_an_undeployed_app_is_refused() -> None:
    world = make(Metrics(0.0))
    with pytest.raises(InvalidSpec, match="what stable already runs"):
        world.release.start(STABLE, "")
    world.release.facts = world.release.facts.__class__(spec=world.release.spec, urns={}, stable=None, desired=NEW)
    with pytest.raises(InvalidSpec, match="has not deployed"):
        world.release.start(NEW, "")
    assert world.stack.ups == []


def test_a_new_release_is_refused_while_one_is_unfinished() -> None:
    world = make(Metrics(0.0))

    class Killed(BaseException):
        pass

    def on_up(record: dict[str, Any]) -> None:
        raise Killed

    world.stack.on_up = on_up
    with pytest.raises(Killed):
        world.start()
    world.stack.on_up = None
    with pytest.raises(StackBusy, match="unfinished release"):
        world.rebuild().start()


def test_a_release_that_takes_over_an_expired_lease_journals_whose_it_was() -> None:
    world = make(Metrics(0.0))
    world.lease.acquire = lambda release: "release r0 by pid 4242 on runner-7, started 2026-12-01T10:00:00Z, its lease expired"  # type: ignore[method-assign]
    assert world.start().phase is Phase.SUCCEEDED
    took = [r.message for r in world.store.of("event") if r.message.startswith("took over the lease")]
    assert took == ["took over the lease of release r0 by pid 4242 on runner-7, started 2026-12-01T10:00:00Z, its lease expired"]


def test_a_query_prometheus_rejects_refuses_the_release_before_anything_is_applied() -> None:
    from canary.errors import BadQuery

    world = make(Metrics(BadQuery("parse error at char 5")))
    with pytest.raises(InvalidSpec, match="Prometheus rejected"):
        world.start()
    assert world.stack.ups == [] and world.store.journal == []


def test_a_rejected_query_of_an_app_in_a_stack_of_apps_names_its_field_under_apps() -> None:
    import dataclasses

    from canary.errors import BadQuery

    world = make(Metrics(BadQuery("parse error at char 5")))
    world.release.facts = dataclasses.replace(world.release.facts, fields="apps.web.")
    with pytest.raises(InvalidSpec) as refused:
        world.start()
    assert [p.field for p in refused.value.problems] == ["apps.web.analysis.metrics[0].name"]


# Traefik 3.7 as the lab runs it: its class publishes supportedFeatures, without any RequestMirror feature
TRAEFIK = {"default/lab": GatewayClass("traefik.io/gateway-controller", frozenset({"Gateway", "HTTPRoute", "HTTPRouteQueryParamMatching", "HTTPRouteResponseHeaderModification"}))}


@pytest.mark.parametrize("analysis", [{"mirror": True}, {"mirror": True, "mirrorWeight": 20}], ids=["mirror", "mirror-20%"])
def test_mirroring_through_a_gateway_without_request_mirror_is_refused_before_anything_is_applied(analysis: dict[str, Any]) -> None:
    """Traefik serves a rule carrying RequestMirror as 500 while the route reads Accepted: every user would
    get errors for the whole release. The release refuses, naming the gateway and the feature it lacks."""
    world = make(Metrics(0.0), lambda v: v["analysis"].update(analysis), cluster=FakeCluster(classes=TRAEFIK))
    with pytest.raises(InvalidSpec, match=r"analysis.mirror: must be off on this gateway: gateway default/lab \(traefik.io/gateway-controller\) "
                                          r"does not support HTTPRouteRequestMirror"):
        world.start()
    assert world.stack.ups == [] and world.store.journal == []


def test_mirroring_goes_ahead_on_a_gateway_that_has_it_and_without_mirror_the_gateways_are_not_read() -> None:
    envoy = {"default/lab": GatewayClass("gateway.envoyproxy.io/gatewayclass-controller", frozenset({"HTTPRoute", "HTTPRouteRequestMirror"}))}
    mirrored = make(Metrics(0.0), lambda v: v["analysis"].update(mirror=True), cluster=FakeCluster(classes=envoy))
    assert mirrored.start().phase is Phase.SUCCEEDED and mirrored.cluster.class_reads == 1
    plain = make(Metrics(0.0), cluster=FakeCluster(classes=TRAEFIK))
    assert plain.start().phase is Phase.SUCCEEDED and plain.cluster.class_reads == 0


def test_a_mirror_percent_the_cluster_dropped_fails_the_step_and_says_why() -> None:
    """Before Gateway API v1.3 the HTTPRoute CRD has no requestMirror.percent: the API server drops it,
    and the gateway copies every request to the canary while the release asked for 20 %."""
    envoy = {"default/lab": GatewayClass("gateway.envoyproxy.io/gatewayclass-controller",
                                         frozenset({"HTTPRoute", "HTTPRouteRequestMirror", "HTTPRouteRequestPercentageMirror"}))}
    world = make(Metrics(0.0), lambda v: v["analysis"].update(mirror=True, mirrorWeight=20),
                 cluster=FakeCluster(classes=envoy, drops_mirror_percent=True))
    result = world.start()
    assert result.phase is Phase.FAILED
    assert "the route mirrors every request to the canary, not 20%: the cluster's HTTPRoute CRD dropped requestMirror.percent" in result.reason
    assert "Gateway API CRDs v1.3 or later" in result.reason
    assert world.cluster.weights_seen == [0, 10, 0] and world.store.of("tick") == []


@pytest.mark.parametrize("error", [ProviderUnreachable("timeout")], ids=["unreachable"])
def test_a_prometheus_that_does_not_answer_counts_as_failed_checks(error: MetricError) -> None:
    world = make(Metrics(error))
    assert world.start().phase is Phase.FAILED


def test_pause_holds_the_step_and_continue_goes_on() -> None:
    world = make(Metrics(0.0))
    done = {"paused": False, "continued": False}

    def on_sleep(now: float) -> None:
        state = world.store.state
        if state is None:
            return
        if not done["paused"] and state.weight == 20:
            done["paused"] = True
            world.store.request("pause")
        elif done["paused"] and not done["continued"] and len([t for t in world.store.of("tick") if t.weight == 20]) >= 3:
            done["continued"] = True
            world.store.request("continue")

    world.clock.on_sleep = on_sleep
    assert world.start().phase is Phase.SUCCEEDED
    assert len([t for t in world.store.of("tick") if t.weight == 20]) >= 3
    assert world.cluster.weights_seen == [0, 10, 20, 30, 40, 50, 0]


def test_promote_skip_analysis_promotes_at_once_with_its_reason_on_record() -> None:
    world = make(Metrics(0.0))

    def on_sleep(now: float) -> None:
        state = world.store.state
        if state is not None and state.weight == 10 and "promote" not in world.store.pending and not state.forced:
            world.store.request("promote", skip_analysis=True, reason="hotfix for the outage")

    world.clock.on_sleep = on_sleep
    result = world.start()
    assert result.phase is Phase.SUCCEEDED and max(world.cluster.weights_seen) == 10
    assert world.store.state is not None and world.store.state.forced == "skip-analysis: hotfix for the outage"


def test_an_inconclusive_tick_waits_for_a_decision_and_rolls_back_at_its_bound() -> None:
    world = make(Metrics(1.5), lambda v: v["analysis"].update(decisionTimeout="1m", metrics=[
        {"name": "request-error-rate", "thresholdRange": {"max": 1}, "inconclusiveRange": {"max": 2}, "evidence": "none"}]))
    result = world.start()
    assert result.phase is Phase.FAILED and "no decision within" in result.reason
    assert any(r.type == "state" and r.phase == "WaitingDecision" for r in world.store.journal)


def test_an_unexpected_error_inside_the_release_still_rolls_back_with_a_clear_reason() -> None:
    world = make(Metrics(0.0))

    def on_up(record: dict[str, Any]) -> None:
        if record["pins"]["route"]["weight"] == 20:
            raise KeyError("boom")

    world.stack.on_up = on_up
    result = world.start()
    assert result.phase is Phase.FAILED and "internal error (KeyError" in result.reason
    assert world.cluster.shape == RouteShape()


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("kind", ["pause", "continue"])
def test_a_request_mid_interval_does_not_judge_the_step_early(kind: str) -> None:
    """A pause (or a continue) that arrives 20 s into a 60 s interval is taken at once, but the step is still
    judged on a whole interval: an early tick would judge a third of the data (and, after a continue, pass
    on it and take the next step)."""
    world = make(Metrics(0.0), lambda v: v["analysis"].update(interval="60s"))
    sent: dict[str, float] = {}

    def on_sleep(now: float) -> None:
        state = world.store.state
        if state is None or state.weight != 20 or not state.shifted_at:
            return
        if not sent and now - (_seconds(state.shifted_at) - world.clock.base.timestamp()) >= 20:
            sent["at"] = now
            world.store.request(kind)
        elif state.paused and len([t for t in world.store.of("tick") if t.weight == 20]) >= 2 and "continue" not in world.store.pending:
            world.store.request("continue")

    world.clock.on_sleep = on_sleep
    assert world.start().phase is Phase.SUCCEEDED
    shifted = next(r for r in world.store.journal if r.type == "state" and r.message.startswith("weight 20 is live"))
    first_at_20 = next(t for t in world.store.of("tick") if t.weight == 20)
    assert sent and _seconds(first_at_20.time) - _seconds(shifted.time) >= 59.5, (first_at_20.time, shifted.time)
    if kind == "pause":
        assert any(r.type == "request" and r.request == "pause" for r in world.store.journal)


def test_a_paused_release_waiting_for_promotion_is_not_promoted_when_its_gate_says_yes() -> None:
    """Pause holds in WaitingPromotion too: the confirm-promotion gate turning to yes promotes only after a continue."""
    gate = {"open": False}
    hooks = FakeHooks(lambda name, kind: kind != "confirm-promotion" or gate["open"])
    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[{"name": "approve", "type": "confirm-promotion", "url": "http://gate/"}]), hooks=hooks)
    seen = {"paused_ticks": 0, "continued": False}

    def on_sleep(now: float) -> None:
        state = world.store.state
        if state is None or state.phase is not Phase.WAITING_PROMOTION:
            return
        if not state.paused and not gate["open"] and "pause" not in world.store.pending:
            world.store.request("pause")
        elif state.paused:
            gate["open"] = True
            seen["paused_ticks"] = len([t for t in world.store.of("tick") if t.weight == 50])
            if seen["paused_ticks"] >= 6 and not seen["continued"]:
                seen["continued"] = True
                world.store.request("continue")

    world.clock.on_sleep = on_sleep
    assert world.start().phase is Phase.SUCCEEDED
    assert seen["continued"], seen  # it was still waiting, paused, with the gate open for several ticks
    promoting = next(r for r in world.store.journal if r.type == "state" and r.phase == "Promoting")
    continued = next(r for r in world.store.journal if r.type == "request" and r.request == "continue")
    assert _seconds(promoting.time) >= _seconds(continued.time)


def test_a_rollback_webhook_is_asked_while_the_release_waits_for_a_decision() -> None:
    world: Any = None
    hooks = FakeHooks(lambda name, kind: kind != "rollback" or (world.store.state is not None and world.store.state.phase is Phase.WAITING_DECISION))
    world = make(Metrics(1.5), lambda v: v["analysis"].update(decisionTimeout="1h", webhooks=[{"name": "oncall", "type": "rollback", "url": "http://oncall/"}], metrics=[
        {"name": "request-error-rate", "thresholdRange": {"max": 1}, "inconclusiveRange": {"max": 2}, "evidence": "none"}]), hooks=hooks)
    result = world.start()
    assert result.phase is Phase.FAILED and "rollback webhook oncall asked for a rollback" in result.reason, result.reason
    assert any(r.type == "state" and r.phase == "WaitingDecision" for r in world.store.journal)


def test_notes_a_resume_was_given_are_journaled_with_a_warning_once_it_runs() -> None:
    world = make(Metrics(0.0))
    _killed_shifting_to(world, 20)
    resumed = world.rebuild()
    assert resumed.release.resume(notes=("the snapshot was refused",)).phase is Phase.SUCCEEDED
    messages = [e.message for e in resumed.store.of("event")]
    at = messages.index("the snapshot was refused")
    assert messages[at - 1].startswith("resuming release in phase")
    assert "the snapshot was refused" in [e.message for e in resumed.events]


def test_a_snapshot_this_version_refuses_gives_way_to_the_stack_file_and_says_which_rules_not_values() -> None:
    """Resume took the stack file's current config in silence when the release's snapshot no longer passed."""
    from canary import api
    from canary.core import config as stackconfig
    from tests.conftest import base_values

    current = stackconfig.from_config({f"canary:{k}": v for k, v in base_values().items()})
    state = SimpleNamespace(snapshot="config: {}", release="r1")

    def refused(values: dict[str, Any]) -> tuple[Any, str]:
        ws = SimpleNamespace(spec=current, stack=SimpleNamespace(config=lambda text: {f"canary:{k}": v for k, v in values.items()}))
        return api._snapshot_spec(ws, state)  # type: ignore[arg-type]

    zero_step = base_values()
    zero_step["analysis"]["stepWeight"] = 0
    spec, note = refused(zero_step)
    assert spec is current
    assert "analysis.stepWeight" in note and "stack file's current" in note and "got" not in note
    plain_token = base_values()
    plain_token["prometheus"] = {"address": "http://127.0.0.1:9090", "token": "s3cret-token"}
    spec, note = refused(plain_token)
    assert spec is current and "prometheus.token" in note and "s3cret" not in note
    ws_ok = SimpleNamespace(spec=None, stack=SimpleNamespace(config=lambda text: {f"canary:{k}": v for k, v in base_values().items()}))
    spec, note = api._snapshot_spec(ws_ok, state)  # type: ignore[arg-type]
    assert note == "" and spec is not None and spec.app.name == current.app.name


def test_a_snapshot_whose_judge_a_newer_rule_refuses_is_resumed_with_a_note_not_refused() -> None:
    # the release began under a version that took `judge: {}` on a 1m window; this one refuses its step (shorter than
    # two scrapes): the snapshot and the stack file both refused, resume exited 2, a pending rollback left on the canary
    from canary import api
    from canary.core import config as stackconfig
    from canary.errors import InvalidSpec
    from tests.conftest import base_values

    values = base_values()
    values["analysis"]["interval"] = "1m"
    values["analysis"]["metrics"] = [{"name": "request-duration", "thresholdRange": {"max": 500}, "judge": {}}]
    config = {f"canary:{k}": v for k, v in values.items()}
    with pytest.raises(InvalidSpec, match="judge.step"):
        stackconfig.from_config(config)  # a release could not begin with it now
    ws = SimpleNamespace(spec=None, stack=SimpleNamespace(config=lambda text: config))
    spec, note = api._snapshot_spec(ws, SimpleNamespace(snapshot="config: {}", release="r1"))  # type: ignore[arg-type]
    assert spec is not None and spec is not ws.spec
    assert "rules newer than the release" in note and "judge.step" in note and "onNoData" in note, note


def test_a_snapshot_whose_probe_port_a_newer_rule_refuses_is_resumed_with_a_note_not_refused() -> None:
    # the release began with a liveness probe on a port name its container does not declare (the API server took it, the
    # kubelet discards the probe's errors); this version refuses it: the snapshot and the stack file both refused, resume
    # exited 2, a pending rollback left on the canary
    from canary import api
    from canary.core import config as stackconfig
    from canary.errors import InvalidSpec
    from tests.conftest import base_values
    from tests.helpers import pod_template

    values = base_values()
    values["app"] = {"name": "web", "namespace": "prod", "template": pod_template(livenessProbe={"httpGet": {"path": "/healthz", "port": "health"}})}
    config = {f"canary:{k}": v for k, v in values.items()}
    with pytest.raises(InvalidSpec, match="livenessProbe.httpGet.port"):
        stackconfig.from_config(config)  # a release could not begin with it now
    ws = SimpleNamespace(spec=None, stack=SimpleNamespace(config=lambda text: config))
    spec, note = api._snapshot_spec(ws, SimpleNamespace(snapshot="config: {}", release="r1"))  # type: ignore[arg-type]
    assert spec is not None and spec is not ws.spec and spec.app is not None and spec.app.template == values["app"]["template"]
    assert "rules newer than the release" in note and "app.template.spec.containers[0].livenessProbe.httpGet.port" in note, note


def test_a_snapshot_holding_a_secret_a_newer_rule_refuses_in_the_app_is_resumed_not_refused() -> None:
    # a secret in app.env is refused now (canary writes the pod in plain text); a release that began with one had its
    # snapshot and stack file refused alike: resume exited 2, a pending rollback left on the canary
    from pulumi.automation import ConfigValue

    from canary import api
    from canary.core import config as stackconfig
    from canary.errors import InvalidSpec
    from tests.conftest import base_values

    values = base_values()
    values["app"]["env"] = {"DB_PASSWORD": "pg-s3cret"}
    config = {f"canary:{k}": ConfigValue(value=v if isinstance(v, str) else json.dumps(v), secret=k == "app") for k, v in values.items()}
    with pytest.raises(InvalidSpec, match="app"):
        stackconfig.from_config(config)  # a release could not begin with it now
    ws = SimpleNamespace(spec=None, stack=SimpleNamespace(config=lambda text: config))
    spec, note = api._snapshot_spec(ws, SimpleNamespace(snapshot="config: {}", release="r1"))  # type: ignore[arg-type]
    assert spec is not None and spec.app.env == {"DB_PASSWORD": "pg-s3cret"} and note == ""


def test_a_release_that_lost_its_app_stops_where_it_is_and_never_rolls_back_over_the_new_holder() -> None:
    # another machine took the app over (its lease expired while this one could not renew): the next
    # change is fenced, and the release ends exit 3 without a rollback's `up`s or a state saved after
    world = make(Metrics(0.0))
    ups_before_loss: list[int] = []

    def lose_after_two_steps(record: dict[str, Any]) -> None:
        if record["parts"] == {"route"} and len(world.stack.ups) >= 2 and not world.lease.lost:
            world.lease.lost = "the lease of web was taken by release r2 by pid 1 on runner-9"
            ups_before_loss.append(len(world.stack.ups))

    world.stack.on_up = lose_after_two_steps
    with pytest.raises(LeaseLost, match="runner-9"):
        world.start()
    assert ups_before_loss and len(world.stack.ups) == ups_before_loss[0] + 1  # the `up` under way when it was lost, none after
    saved = world.store.state
    assert saved is not None and saved.phase is Phase.PROGRESSING and not any(r.type == "decision" and "rolling back" in str(r) for r in world.store.journal)


def test_a_skip_analysis_promotion_asked_before_the_canary_is_deployed_is_kept_until_it_is() -> None:
    # it was cleared in the cluster and kept in memory only; the watch's report of that clear then
    # replaced the requests held, and the promotion the journal said was waiting never came
    world = make(Metrics(0.0))
    asked: list[bool] = []

    def ask_before_the_canary(record: dict[str, Any]) -> None:
        if not asked:
            asked.append(True)
            world.store.request("promote", by="ops", skip_analysis=True, reason="hotfix for incident 42")
            world.release._take_requests(world.store.state)  # type: ignore[arg-type]  # the loop's look, before the canary is up
            world.store._listener(world.store.requests(world.store.state.release))  # type: ignore[union-attr,misc]  # the watch reports again

    world.stack.on_up = ask_before_the_canary
    result = world.start()
    assert asked and result.phase is Phase.SUCCEEDED
    assert world.store.state is not None and world.store.state.forced == "skip-analysis: hotfix for incident 42"
    assert world.cluster.weights_seen == [0], world.cluster.weights_seen  # no step: promoted as soon as the canary was ready
    waits = [r for r in world.store.journal if "waits until the canary is deployed" in str(r)]
    assert len(waits) == 1


# --- a cluster that refuses the release's records -----------------------------------------------


class _OnceLive:
    """For ``FakeKube.refuse``: the writes ``which`` picks are refused with ``error`` from the moment the
    canary first has traffic (set ``world`` once it is made), and from then on."""

    def __init__(self, which: Any, error: Exception) -> None:
        self.which, self.error, self.world, self.began = which, error, None, False

    def __call__(self, verb: str, obj: Any) -> Exception | None:
        if self.world is not None and self.world.cluster.shape.weight > 0:
            self.began = True
        return self.error if self.began and self.which(verb, obj) else None


def _real_store(tmp_path: Path, kube: FakeKube, world_spec: Any) -> ReleaseStore:
    """The release store itself, on an in-memory API server where the canary Deployment exists (Events need its uid)."""
    app, namespace = world_spec.app.name, world_spec.app.namespace
    kube.objects[("Deployment", namespace, f"{app}-canary")] = {"apiVersion": "apps/v1", "kind": "Deployment",
                                                                "metadata": {"name": f"{app}-canary", "namespace": namespace, "uid": "u-1"}}
    return ReleaseStore(kube, namespace, app, "test", Cache(tmp_path, "test", app))  # type: ignore[arg-type]


def test_a_cluster_that_refuses_the_release_s_events_neither_stops_it_nor_its_rollback(tmp_path: Path) -> None:
    # RBAC without `events`: the first Event used to end the release by its exception; the rollback's
    # Events too, so a failing canary kept its traffic
    kube = FakeKube()
    kube.refuse = lambda verb, obj: Forbidden("recording an event: the cluster refused (403 Forbidden): events is forbidden") if verb == "event" else None
    world = make(Metrics(18.2), store=_real_store(tmp_path, kube, spec()))
    result = world.start()
    assert result.phase is Phase.FAILED and world.cluster.weights_seen == [0, 10, 0] and world.cluster.canary_replicas == 0
    said = [e.message for e in world.events if "Kubernetes Events cannot be recorded" in e.message]
    assert len(said) == 1 and "events is forbidden" in said[0], said
    assert any("Kubernetes Events cannot be recorded" in getattr(r, "message", "") for r in world.store.records())  # journaled


def test_a_journal_the_cluster_stops_taking_midway_is_kept_here_and_the_rollback_still_runs(tmp_path: Path) -> None:
    # a role that may create ConfigMaps but not update them (or a policy that begins refusing them): once
    # the canary has traffic, every write of the state and the journal is refused
    kube = FakeKube()
    kube.refuse = live = _OnceLive(lambda verb, obj: verb == "replace" and obj.get("kind") == "ConfigMap",
                                   Forbidden('writing ConfigMap: the cluster refused (403 Forbidden): configmaps "x" is forbidden: cannot update'))
    store = _real_store(tmp_path, kube, spec())
    world = live.world = make(Metrics(18.2), store=store)
    result = world.start()
    assert result.phase is Phase.FAILED and world.cluster.weights_seen == [0, 10, 0] and world.cluster.stable_hash == STABLE.hash
    said = [e.message for e in world.events if "the cluster refused the release's record" in e.message]
    assert len(said) == 1 and "cannot update" in said[0], said
    kept = store.cache.unsent()
    assert kept and kept[-1]["type"] == "state" and kept[-1]["phase"] == "Failed", kept[-3:]
    assert store.load() is not None and store.load().phase is Phase.FAILED  # this machine sees how it ended
    kube.refuse = lambda verb, obj: None  # the role is mended: the next write sends what was kept, once each
    store.append(records.EventRecord(time="2026-12-01T00:00:00.000Z", stack="test", app="web", release=result.release, message="later"))
    journal = store.records(result.release)
    assert not store.cache.unsent() and store.refused is None
    assert [r.type for r in journal].count("tick") == 3 and journal[-1].message == "later"
    dumped = [json.dumps(records.dump(r), sort_keys=True) for r in journal]
    assert len(set(dumped)) == len(dumped)  # nothing twice


def test_a_release_whose_state_the_cluster_refuses_is_not_started_and_holds_nothing_up(tmp_path: Path) -> None:
    kube = FakeKube()
    kube.refuse = lambda verb, obj: (Refused('creating ConfigMap: the cluster refused it (400 Bad Request): admission webhook "labels" denied the request')
                                     if verb == "create" and obj.get("kind") == "ConfigMap" else None)
    store = _real_store(tmp_path, kube, spec())
    world = make(Metrics(), store=store)
    with pytest.raises(Refused, match=r"not started, nothing was applied: the cluster refused its records .*admission webhook \"labels\" denied"):
        world.start()
    assert world.stack.ups == [] and world.cluster.weights_seen == [0]
    assert store.load() is not None and store.load().phase is Phase.ABORTED  # ended: no "unfinished release" to resume
    kube.refuse = lambda verb, obj: None
    again = make(Metrics(), store=store).start()
    assert again.phase is Phase.SUCCEEDED



def test_a_first_release_refused_for_updates_leaves_no_state_another_machine_would_resume(tmp_path: Path) -> None:
    # a role that may create ConfigMaps but not update them: the first release of an app created its state
    # (Initializing), was refused at its next record, and could not write its end (Aborted); another machine
    # then saw an unfinished release nobody held and was told to resume it
    kube = FakeKube()
    kube.refuse = lambda verb, obj: (Forbidden('writing ConfigMap: the cluster refused (403 Forbidden): configmaps "x" is forbidden: cannot update')
                                     if verb == "replace" and obj.get("kind") == "ConfigMap" else None)
    store = _real_store(tmp_path, kube, spec())
    world = make(Metrics(), store=store)
    with pytest.raises(Refused, match="not started, nothing was applied"):
        world.start()
    assert world.stack.ups == [] and world.cluster.weights_seen == [0]
    elsewhere = ReleaseStore(kube, spec().app.namespace, spec().app.name, "test", Cache(tmp_path / "other", "test", spec().app.name))  # type: ignore[arg-type]
    seen = elsewhere.load()
    assert seen is None or seen.phase in ENDED, seen
    assert store.load() is not None and store.load().phase is Phase.ABORTED  # here: how it ended
    kube.refuse = lambda verb, obj: None
    assert make(Metrics(), store=store).start().phase is Phase.SUCCEEDED


def test_an_abort_during_the_confirm_promotion_gate_is_no_yes_and_rolls_back() -> None:
    # two gate hooks: qa says yes, change-board no. An abort landed while qa's answer was journaled: the
    # gate stopped at the cancel token with qa's yes alone, took that for approval and promoted, and the
    # abort was then "ignored: the release is already Promoting"
    asked: list[str] = []
    world: Any = None

    def answer(name: str, kind: str) -> bool:
        if kind != "confirm-promotion":
            return True
        asked.append(name)
        if name == "qa":
            world.store.request("abort", by="oncall")  # `canary abort` from another machine, at this moment
        return name == "qa"

    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[
        {"name": "qa", "type": "confirm-promotion", "url": "http://qa/"},
        {"name": "change-board", "type": "confirm-promotion", "url": "http://cab/"}]), hooks=FakeHooks(answer))
    result = world.start()
    assert result.phase is Phase.ABORTED and result.reason == "aborted by oncall"
    assert asked == ["qa"] and world.cluster.weights_seen[-1] == 0


def test_a_first_state_that_cannot_be_deleted_either_is_said_with_what_to_do(tmp_path: Path) -> None:
    kube = FakeKube()
    kube.refuse = lambda verb, obj: (Forbidden(f'the cluster refused (403 Forbidden): configmaps "x" is forbidden: cannot {verb}')
                                     if verb in ("replace", "delete") and obj.get("kind") == "ConfigMap" else None)
    store = _real_store(tmp_path, kube, spec())
    with pytest.raises(Refused, match=r"still holds its first state \(Initializing\).*cannot delete.*delete ConfigMap canary-web-state in prod"):
        make(Metrics(), store=store).start()

# --- what must not stop a rollback -----------------------------------------------------------------


def test_a_printer_that_fails_midway_does_not_stop_the_release() -> None:
    # `canary release … | head`: the pipe closes and every later line raised BrokenPipeError; the rollback's
    # first record raised it again from inside the failure handler, and the canary kept its traffic
    world = make(Metrics(18.2))

    def printer(event: Any) -> None:
        world.events.append(event)
        if event.weight >= 10:
            raise BrokenPipeError(32, "Broken pipe")

    world.release.recorder.on_event = printer
    result = world.start()
    assert result.phase is Phase.FAILED and world.cluster.weights_seen == [0, 10, 0]
    assert [r.message for r in world.store.of("event") if "output failed (BrokenPipeError)" in r.message]


def _abort_once_at(world: Any, weight: int) -> None:
    """`canary abort` from another machine, once, while the release waits at ``weight``."""
    asked: list[bool] = []

    def on_sleep(now: float) -> None:
        if world.cluster.shape.weight == weight and not asked:
            asked.append(True)
            world.store.request("abort")

    world.clock.on_sleep = on_sleep


def test_an_abort_whose_record_fails_still_ends_in_a_rollback_and_is_not_lost_first() -> None:
    # the abort was cleared in the cluster before it was recorded: a failing record escaped the loop
    # (outside its error handling), traffic stayed at 20, and a resume went on to promote what was aborted
    world = make(Metrics(0.0))
    plain = world.store.append

    def append(entry: Any) -> None:
        if entry.type == "request":
            raise Conflict("journal chunk changed since it was read")
        plain(entry)

    world.store.append = append  # type: ignore[method-assign]
    _abort_once_at(world, 20)
    result = world.start()
    assert result.phase is Phase.FAILED and world.cluster.weights_seen[-1] == 0 and max(world.cluster.weights_seen) == 20
    assert "Conflict" in result.reason


def test_a_rollback_whose_record_fails_is_pending_never_left_with_traffic_on_the_canary() -> None:
    world = make(Metrics(18.2))
    plain = world.store.append
    failed: list[bool] = []

    def append(entry: Any) -> None:
        if entry.type == "decision" and "traffic to stable first" in entry.message and not failed:
            failed.append(True)
            raise Conflict("journal chunk changed since it was read")
        plain(entry)

    world.store.append = append  # type: ignore[method-assign]
    result = world.start()
    assert result.exit_code == 4 and result.rollback_pending and "Conflict" in result.reason
    assert world.store.state is not None and world.store.state.phase is Phase.ROLLING_BACK and world.store.state.rollback_pending
    world.store.append = plain  # type: ignore[method-assign]
    again = world.rebuild().release.resume()
    assert again.phase is Phase.FAILED and world.cluster.weights_seen[-1] == 0 and world.cluster.canary_replicas == 0


def test_a_local_cache_removed_midway_is_made_again(tmp_path: Path) -> None:
    # `git clean -fdx` of the checkout mid-release: every save raised FileNotFoundError before its cluster write
    import shutil

    kube = FakeKube()
    world = make(Metrics(18.2), store=_real_store(tmp_path, kube, spec()))

    def on_sleep(now: float) -> None:
        if world.cluster.shape.weight == 10 and (tmp_path / "test").exists():
            shutil.rmtree(tmp_path / "test")

    world.clock.on_sleep = on_sleep
    result = world.start()
    assert result.phase is Phase.FAILED and world.cluster.weights_seen == [0, 10, 0]
    held = json.loads(kube.objects[("ConfigMap", spec().app.namespace, "canary-web-state")]["data"]["state.json"])
    assert held["phase"] == "Failed"


def test_a_quota_on_new_journal_chunks_leaves_the_cluster_s_state_true(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the journal kept here blocked the state's write too: the cluster said Progressing at weight 10 after
    # the release here ended Failed, and another machine's resume would have put traffic back on the canary
    from canary.state import store as store_module

    monkeypatch.setattr(store_module, "CHUNK_BYTES", 4096)  # a long release's journal reaching 256 KiB
    kube = FakeKube()
    kube.refuse = live = _OnceLive(lambda verb, obj: verb == "create" and "journal" in obj["metadata"]["name"],
                                   Forbidden("creating ConfigMap: the cluster refused (403 Forbidden): exceeded quota: q, requested: count/configmaps=1"))
    world = live.world = make(Metrics(18.2), store=_real_store(tmp_path, kube, spec()))
    result = world.start()
    held = json.loads(kube.objects[("ConfigMap", spec().app.namespace, "canary-web-state")]["data"]["state.json"])
    assert result.phase is Phase.FAILED and held["phase"] == "Failed" and held["weight"] == 0


def test_a_state_only_the_cluster_refuses_is_said_once_and_kept_here(tmp_path: Path) -> None:
    kube = FakeKube()
    kube.refuse = live = _OnceLive(lambda verb, obj: verb == "replace" and obj["metadata"]["name"].endswith("-state"),
                                   Refused("writing ConfigMap canary-web-state: the cluster refused it (422 Unprocessable Entity): denied by policy"))
    store = _real_store(tmp_path, kube, spec())
    world = live.world = make(Metrics(18.2), store=store)
    result = world.start()
    said = [e.message for e in world.events if "refused the release's record" in e.message]
    assert result.phase is Phase.FAILED and len(said) == 1, said
    assert store.load().phase is Phase.FAILED  # type: ignore[union-attr]  # this machine: its own, newer state
    kube.refuse = lambda verb, obj: None
    store.append(records.EventRecord(time="2026-12-01T00:00:00.000Z", stack="test", app="web", release=result.release, message="later"))
    held = json.loads(kube.objects[("ConfigMap", spec().app.namespace, "canary-web-state")]["data"]["state.json"])
    assert held["phase"] == "Failed"  # sent with the next write once the policy lets it


def test_an_abort_reported_again_while_its_rollback_is_saved_cancels_nothing_more() -> None:
    # the requests' watch reported the abort again between the rollback's save and the abort's clearing;
    # the release still counted itself Progressing, and set the cancel flag through the rollback's end
    world = make(Metrics(0.0))
    plain = world.store.clear_request

    def clear_request(kind: str, taken: dict[str, Any] | None = None) -> None:
        if kind == "abort" and world.store._listener is not None:
            world.store._listener(world.store.requests(world.store._release))  # the watch, once more
        plain(kind, taken)

    world.store.clear_request = clear_request  # type: ignore[method-assign]
    _abort_once_at(world, 20)
    result = world.start()
    assert result.phase is Phase.ABORTED and world.cluster.weights_seen[-1] == 0
    assert not world.release.cancel.is_set()


def test_a_rollback_pending_is_not_claimed_for_a_release_another_process_holds() -> None:
    world = make(Metrics(18.2))
    plain_append, plain_save = world.store.append, world.store.save

    def append(entry: Any) -> None:
        if entry.type == "decision" and "traffic to stable first" in entry.message:
            raise Conflict("journal chunk changed since it was read")
        plain_append(entry)

    def save(state: Any) -> None:
        if state.rollback_pending:
            raise LeaseLost("the release state of web was written by another process since this one wrote it")
        plain_save(state)

    world.store.append, world.store.save = append, save  # type: ignore[method-assign]
    with pytest.raises(LeaseLost):
        world.start()


# --- what the webhooks are told ----------------------------------------------------------------------


class _Phases(FakeHooks):
    """Hooks that keep the ``phase`` each one was sent, by hook type, in order."""

    def __init__(self, answer: Any) -> None:
        super().__init__(answer)
        self.phases: dict[str, list[str]] = {}

    def call(self, hook: Any, body: Any, cancel: Any = None) -> Any:
        self.phases.setdefault(hook.type.value, []).append(body.get("phase", ""))
        return super().call(hook, body, cancel)


_EVERY_HOOK = [{"name": kind, "type": kind, "url": f"http://{kind}/"} for kind in (
    "confirm-rollout", "pre-rollout", "rollout", "confirm-traffic-increase", "confirm-promotion", "rollback", "post-rollout", "event")]


def test_each_webhook_is_sent_the_phase_flagger_sends_it_at_that_point() -> None:
    """A receiver written for Flagger reads ``phase`` as Flagger sends it (its scheduler's hooks): the
    confirm-rollout gate the Canary's status (Initialized before a first release, then Waiting once it said
    no), pre-rollout, rollout, traffic-increase and promotion gates Progressing (the promotion gate too
    while the release waits for it), rollback hooks the status (Progressing, WaitingPromotion), and the
    post-rollout hook how it ended. Never canary's own Initializing."""
    said_no: set[str] = set()

    def answer(name: str, kind: str) -> bool:
        if kind == "rollback":
            return False  # no rollback asked
        if kind in ("confirm-rollout", "confirm-promotion") and kind not in said_no:
            said_no.add(kind)
            return False
        return True

    hooks = _Phases(answer)
    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=_EVERY_HOOK), hooks=hooks)
    assert world.start().phase is Phase.SUCCEEDED
    phases = hooks.phases
    assert phases["confirm-rollout"] == ["Initialized", "Waiting"]
    for kind in ("pre-rollout", "rollout", "confirm-traffic-increase", "confirm-promotion"):
        assert phases[kind] and set(phases[kind]) == {"Progressing"}, (kind, phases[kind])
    assert len(phases["confirm-promotion"]) == 2  # the second while the release is WaitingPromotion
    assert set(phases["rollback"]) == {"Waiting", "Progressing", "WaitingPromotion"}  # asked while the confirm-rollout gate says no too, as Flagger asks
    assert phases["post-rollout"] == ["Succeeded"]
    assert phases["event"] and set(phases["event"]) <= {"Progressing", "Waiting", "WaitingPromotion", "Promoting", "Finalising", "Succeeded"}


def test_a_confirm_rollout_gate_s_no_is_saved_before_the_release_waits() -> None:
    # the Waiting a gate's no starts was kept in the process only, saved with the next state change: a release
    # resumed on another machine after its runner died asked the gate as the first time (Initialized), and
    # `canary status` elsewhere did not see it waiting
    world: World
    stored: list[bool] = []

    def answer(name: str, kind: str) -> bool:
        if kind == "confirm-rollout":
            stored.append(world.store.state.waiting)
            return len(stored) > 2
        return kind != "rollback"

    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[_EVERY_HOOK[0]]), hooks=FakeHooks(answer))
    assert world.start().phase is Phase.SUCCEEDED
    assert stored == [False, True, True]
    assert sum(1 for r in world.store.journal if r.type == "state" and getattr(r, "message", "").startswith("waiting: confirm-rollout")) == 1
    # said once as a Warning Event too (the journal repeats it each interval; `kubectl get events` shows the wait once)
    waits = [(reason, warning) for reason, message, warning in world.store.events if message.startswith("waiting: confirm-rollout")]
    assert waits == [("Initializing", True)], world.store.events


@pytest.mark.parametrize(("before", "sent"), [(None, "Initialized"), (Phase.SUCCEEDED, "Succeeded"), (Phase.FAILED, "Failed"), (Phase.ABORTED, "Failed")])
def test_the_confirm_rollout_gate_is_sent_how_the_previous_release_ended_as_flagger_sends_its_status(before: Phase | None, sent: str) -> None:
    hooks = _Phases(lambda name, kind: True)
    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[_EVERY_HOOK[0]]), hooks=hooks)
    if before is not None:
        world.store.state = records.ReleaseState(release="20261130T000000-1", stack="test", app="web", phase=before, stable=STABLE)
    assert world.start().phase is Phase.SUCCEEDED
    assert hooks.phases["confirm-rollout"] == [sent]


@pytest.mark.parametrize("faulty", [False, True])
def test_a_release_without_post_rollout_hooks_owes_none_and_writes_nothing_after_its_end(faulty: bool) -> None:
    """Owing post-rollout hooks costs a state write to clear: a release with none configured saves its end and
    nothing after it (no extra write, record or Event per release)."""
    world = make(Metrics(50.0 if faulty else 0.0))
    assert world.start().phase is (Phase.FAILED if faulty else Phase.SUCCEEDED)
    states = world.store.of("state")
    assert world.store.state is not None and states[-1].phase == world.store.state.phase.value
    assert not world.store.state.post_rollout_owed
    assert not any("post-rollout" in s.message for s in states)


def test_a_promotion_unverified_then_resumed_sends_its_post_rollout_hook_once_for_its_end() -> None:
    """PromotedUnverified sent post-rollout Failed, then the resume that verified it sent Succeeded: a receiver
    heard of a failed release, then of the same release promoted. Only the end is sent now, once."""
    hooks = _Phases(lambda name, kind: True)
    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[_EVERY_HOOK[6]]), hooks=hooks, retries=2, retry_backoff=0.1)
    _unreachable_once_stable_took_the_canary(world)
    assert world.start().phase is Phase.PROMOTED_UNVERIFIED
    assert "post-rollout" not in hooks.phases  # not ended: resume verifies it
    assert world.store.state is not None and not world.store.state.post_rollout_owed
    world.stack.on_up = None
    world.stack.fail_ups = 0
    assert world.rebuild().release.resume().phase is Phase.SUCCEEDED
    assert hooks.phases["post-rollout"] == ["Succeeded"]
    assert not world.store.state.post_rollout_owed


def test_an_aborted_release_s_post_rollout_hook_is_sent_failed_flagger_s_word_for_a_release_rolled_back() -> None:
    def answer(name: str, kind: str) -> bool:
        if kind == "rollout":
            world.store.request("abort", by="oncall")
        return True

    hooks = _Phases(answer)
    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[_EVERY_HOOK[2], _EVERY_HOOK[6]]), hooks=hooks)
    assert world.start().phase is Phase.ABORTED
    assert hooks.phases["post-rollout"] == ["Failed"]


# --- an abort accepted just before the release would promote


def _rollback_hook_answer(world_of: Any, act: Any) -> Any:
    """A rollback webhook that, asked once the last step's tick passed, lets ``act`` land (an abort from
    another machine, a signal) while it is being asked, and does not ask for a rollback itself."""
    acted: list[bool] = []

    def answer(name: str, kind: str) -> bool:
        state = world_of().store.state
        if kind == "rollback" and not acted and state is not None and state.phase is Phase.PROGRESSING and state.step == 5 and state.advance:
            acted.append(True)
            act(world_of())
        return False

    return answer


@pytest.mark.parametrize("act", [lambda w: w.store.request("abort", by="oncall"), lambda w: w.release.request_abort("signal SIGTERM")],
                         ids=["canary-abort", "sigterm"])
def test_an_abort_accepted_while_the_last_step_s_rollback_hooks_are_asked_is_not_lost_to_the_promotion(act: Any) -> None:
    # `canary abort` was accepted (the release was Progressing), then the release saved Promoting and dropped
    # the abort as "already Promoting (the new version passed every check)": it promoted what a person stopped
    world: World
    hooks = FakeHooks(_rollback_hook_answer(lambda: world, act))
    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[{"name": "oncall", "type": "rollback", "url": "http://oncall/"}]), hooks=hooks)
    result = world.start()
    assert result.phase is Phase.ABORTED, (result.phase, result.reason)
    assert world.cluster.stable_hash == STABLE.hash


def test_an_abort_during_the_pre_rollout_hooks_of_a_skipped_analysis_is_not_lost_to_the_promotion() -> None:
    world: World
    asked: list[bool] = []

    def answer(name: str, kind: str) -> bool:
        if kind == "pre-rollout" and not asked:
            asked.append(True)
            world.store.request("abort", by="oncall")
        return True

    world = make(Metrics(0.0), lambda v: v["analysis"].update(skipAnalysis=True, webhooks=[{"name": "smoke", "type": "pre-rollout", "url": "http://smoke/"}]),
                 hooks=FakeHooks(answer))
    assert world.start().phase is Phase.ABORTED


def test_an_abort_in_the_cluster_not_yet_reported_by_the_watch_is_taken_before_promoting() -> None:
    world: World

    def answer(name: str, kind: str) -> bool:
        state = world.store.state
        if kind == "rollback" and state is not None and state.phase is Phase.PROGRESSING and state.step == 5 and state.advance:
            assert world.store.state is not None
            world.store.pending["abort"] = {"release": world.store.state.release, "by": "oncall"}  # written, the watch not yet told
        return False

    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[{"name": "oncall", "type": "rollback", "url": "http://oncall/"}]),
                 hooks=FakeHooks(answer))
    assert world.start().phase is Phase.ABORTED


# --- a request is cleared only once the state that carries it is saved


class _Killed(BaseException):
    """SIGKILL of the release process, at this instant."""


class _KilledOnPausedSave(FakeStore):
    armed = True

    def save(self, state: Any) -> None:
        if self.armed and state.paused:
            self.armed = False
            raise _Killed()
        super().save(state)


def test_a_pause_survives_a_kill_before_its_state_is_saved() -> None:
    store = _KilledOnPausedSave()
    world: Any = None

    def on_sleep(now: float) -> None:
        st = world.store.state
        if st is not None and st.weight == 20 and "pause" not in world.store.pending and store.armed:
            world.store.request("pause", by="oncall")  # `canary pause`: accepted, exit 0

    world = make(Metrics(0.0), store=store)
    world.clock.on_sleep = on_sleep
    try:
        world.start()
    except _Killed:
        pass
    # `canary pause` was cleared in the cluster before the paused state was saved: the kill lost it, and the
    # resume went on stepping past the weight the operator paused at
    assert "pause" in world.store.pending
    sleeps: list[float] = []

    def then_abort(now: float) -> None:
        sleeps.append(now)
        if len(sleeps) == 8:
            world.store.request("abort", by="oncall")  # the pause held: end the test's release

    world.clock.on_sleep = then_abort
    again = world.rebuild()
    assert again.release.resume().phase is Phase.ABORTED
    assert max(world.cluster.weights_seen) <= 20, world.cluster.weights_seen


def _asked_at_20_then_killed(store: FakeStore, kind: str, once: Callable[[], bool]) -> World:
    """A release on ``store`` asked ``kind`` (as `canary pause`/`abort` would) when it reaches weight 20, while
    ``once()`` says to; the store's kill (``_Killed``) expected before it ends."""
    world: Any = None

    def on_sleep(now: float) -> None:
        st = world.store.state
        if st is not None and st.weight == 20 and kind not in world.store.pending and once():
            world.store.request(kind, by="oncall")

    world = make(Metrics(0.0), store=store)
    world.clock.on_sleep = on_sleep
    with pytest.raises(_Killed):
        world.start()
    world.clock.on_sleep = None
    return world


class _AbortKeptHereOnly(FakeStore):
    """An outage as the abort's rollback is saved: the store keeps that state on this machine and returns (as
    ReleaseStore does); the API server answers again at once; the process is killed at its next save."""

    kept: Any = None
    armed = True

    def save(self, state: Any) -> None:
        if self.kept is not None:
            raise _Killed()
        if self.armed and state.phase is Phase.ROLLING_BACK and state.reason.startswith("aborted"):
            self.kept = state  # in .canary/ here only: the cluster still holds Progressing
            return
        super().save(state)

    def state_taken(self) -> bool:
        return self.kept is None

    def clear_request(self, kind: str, taken: dict[str, Any] | None = None) -> None:
        super().clear_request(kind, taken)
        if self.kept is not None:
            raise _Killed()  # (the kill's instant, had the clear gone out before the state)


def test_an_abort_whose_rollback_is_kept_on_this_machine_only_stays_in_the_cluster_for_a_resume_elsewhere() -> None:
    # the abort was cleared in the cluster while the state carrying it was kept here only: `resume` from another
    # machine read Progressing with no abort, and promoted the version a person had stopped
    store = _AbortKeptHereOnly()
    world = _asked_at_20_then_killed(store, "abort", lambda: store.kept is None)
    assert store.state is not None and store.state.phase is Phase.PROGRESSING and "abort" in store.pending
    store.kept, store.armed = None, False  # machine B: its store holds what the cluster holds
    assert world.rebuild().release.resume().phase is Phase.ABORTED
    assert max(world.cluster.weights_seen) <= 20, world.cluster.weights_seen


class _StateKeptHereOnly(FakeStore):
    """The cluster takes no state write (a struggling API server, an admission policy): every save kept here."""

    def state_taken(self) -> bool:
        return False


class _Enough(Exception):
    pass


def test_a_refused_promote_is_cleared_at_once_even_while_states_are_kept_here() -> None:
    # a refused promote changes no state, yet its clear waited for the state to reach the cluster: left there, the
    # watch reported it again every 30 s, each report cut the interval before its tick, and a failing canary held
    # (41 refusals and no tick in 20 minutes) instead of reaching its threshold
    store = _StateKeptHereOnly()
    world = make(Metrics([0.0] * 5 + [7.0] * 500), lambda v: v["analysis"].update(
        interval="60s", threshold=500, webhooks=[{"name": "approve", "type": "confirm-promotion", "url": "http://gate/"}]),
        hooks=FakeHooks(lambda name, kind: kind != "confirm-promotion"), store=store)
    seen: dict[str, Any] = {"asked": None, "listed": 0.0}

    def on_sleep(now: float) -> None:
        st = store.state
        if st is None:
            return
        if seen["asked"] is None and st.phase is Phase.WAITING_PROMOTION and not st.last_tick_passed:
            seen["asked"] = now
            store.request("promote")
        if now - seen["listed"] >= 30 and store._listener is not None:  # the watch, re-opened, lists the requests again
            seen["listed"] = now
            store._listener(store.requests(store._release))
        if seen["asked"] is not None and now - seen["asked"] > 1200:
            raise _Enough()

    world.clock.on_sleep = on_sleep
    try:
        result = world.start()
    except _Enough:
        result = None
    assert seen["asked"] is not None and "promote" not in store.pending
    refused = [e for e in store.of("event") if "refused: the last tick did not pass" in e.message]
    after = [t for t in store.of("tick") if refused and t.time > refused[0].time]
    # the failing ticks go on (the request refused once), and the failing canary is rolled back at its failure limit
    assert len(refused) == 1 and len(after) >= 3, (len(refused), len(after))
    assert result is not None and result.phase is Phase.FAILED, result


@pytest.mark.parametrize("kept_until", [float("inf"), 25.0], ids=["cluster-refuses-states", "outage-ends-during-the-switch"])
def test_one_promote_is_taken_once_though_the_watch_reports_it_until_the_cluster_clears_it(kept_until: float) -> None:
    # blue/green in WaitingPromotion: the promote approved the switch, and stayed in the cluster while the state was
    # kept here; the watch's next report wrote it back, and when the switch's tick came out inconclusive
    # WaitingDecision took it again and promoted a release nobody had decided
    class Kept(FakeStore):
        def state_taken(self) -> bool:
            return world.clock.now_s > kept_until

    store = Kept()

    world = make(Metrics([0.0, 0.0, 1.5] + [0.0] * 50), gated_blue_green, hooks=FakeHooks(lambda name, kind: kind != "confirm-promotion"), store=store)

    def on_sleep(now: float) -> None:
        st = store.state
        if st is not None and st.phase is Phase.WAITING_PROMOTION and not store.of("request"):
            store.request("promote", by="oncall")
        if store._listener is not None:  # the watch, re-opened, lists the requests again
            store._listener(store.requests(store._release))

    world.clock.on_sleep = on_sleep
    result = world.start()
    assert [r.request for r in store.of("request")] == ["promote"]
    assert result.phase is Phase.FAILED and "no decision within" in result.reason, result


def test_a_signal_s_abort_is_not_lost_to_a_report_of_the_watch_written_at_the_same_time() -> None:
    # the watch read the requests, a signal added its abort (and set the cancel token), then the watch wrote back what
    # it had read: the abort was gone, the token stayed set, and the loop turned forever without a tick
    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[{"name": "load", "type": "rollout", "url": "http://lt/"}]))
    release = world.release
    read, may_write = threading.Event(), threading.Event()
    kept: list[bool] = []

    class Held(dict):  # type: ignore[type-arg]
        def items(self) -> Any:  # the watch's read of the requests: held until the signal's abort is in (or waits)
            out = list(super().items())
            read.set()
            may_write.wait(BOUND_S)
            return out

    def on_sleep(now: float) -> None:
        st = world.store.state
        if read.is_set() or st is None or st.weight != 20:
            return
        release._requests = Held(release._requests)
        watch = threading.Thread(target=release._on_requests, args=({},))
        watch.start()
        assert read.wait(BOUND_S)
        signal = threading.Thread(target=release.request_abort, args=("signal SIGINT",))
        signal.start()
        signal.join(0.5)  # done, or waiting for the watch's write (then it comes after it)
        may_write.set()
        watch.join(BOUND_S)
        signal.join(BOUND_S)
        kept.append("abort" in release._requests)

    advance, turns = release.advance, [0]

    def bounded(state: ReleaseState) -> ReleaseState:
        turns[0] += 1
        if turns[0] > 1000:
            raise _Stop(f"the loop turned 1000 times without a tick; the abort kept: {kept}")
        return advance(state)

    release.advance = bounded  # type: ignore[method-assign]
    world.clock.on_sleep = on_sleep
    result = world.start()
    assert kept == [True] and result.phase is Phase.ABORTED, result
    assert max(world.cluster.weights_seen) == 20


def test_the_lease_is_let_go_when_flushing_the_events_at_the_end_fails() -> None:
    # an error out of the events' flush skipped the lease's release: the app stayed held until the lease ran out
    world = make(Metrics(0.0))

    def close(timeout: float) -> int:
        raise RuntimeError("the journal is gone")

    world.release.hooks.close = close  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="the journal is gone"):
        world.start()
    assert world.lease.acquired and world.lease.held is None


class _Stop(BaseException):
    """The test has seen enough (a BaseException: the release's own error handling does not take it)."""


class _PausedKeptHere(FakeStore):
    """From the pause on the cluster refuses state writes (an admission policy): every state is kept on this machine,
    and `load` here returns that copy, as ReleaseStore.load does while it is unsent. Killed at the paused save."""

    local: Any = None
    kill_next = True

    def save(self, state: Any) -> None:
        if state.paused or self.local is not None:
            self.local = state
            if self.kill_next:
                self.kill_next = False
                raise _Killed()
            return
        super().save(state)

    def load(self) -> Any:
        return self.local or self.state

    def state_taken(self) -> bool:
        return self.local is None


def test_a_pause_carried_only_by_this_machine_s_state_stays_in_the_cluster_through_a_resume_here() -> None:
    # resumed on the same machine from its kept (paused) state, the pause changed nothing there and was cleared at
    # once: the cluster held neither the paused state nor the pause, and a resume elsewhere stepped past the weight
    store = _PausedKeptHere()
    world = _asked_at_20_then_killed(store, "pause", lambda: store.local is None)
    assert "pause" in store.pending and store.local.paused and not store.state.paused
    sleeps = {"n": 0}

    def enough(now: float) -> None:
        sleeps["n"] += 1
        if sleeps["n"] > 20:
            raise _Stop()

    world.clock.on_sleep = enough
    with pytest.raises(_Stop):
        world.rebuild().release.resume()
    assert not store.state.paused and "pause" in store.pending


def test_a_promote_survives_a_kill_before_promoting_is_saved() -> None:
    class KilledOnPromoting(FakeStore):
        armed = True

        def save(self, state: Any) -> None:
            if self.armed and state.phase is Phase.PROMOTING:
                self.armed = False
                raise _Killed()
            super().save(state)

    store = KilledOnPromoting()
    world: Any = None
    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[{"name": "cab", "type": "confirm-promotion", "url": "http://cab/"}]),
                 hooks=FakeHooks(lambda n, k: k != "confirm-promotion"), store=store)

    def on_sleep(now: float) -> None:
        st = world.store.state
        if st is not None and st.phase is Phase.WAITING_PROMOTION and store.armed and "promote" not in world.store.pending:
            world.store.request("promote", by="oncall")

    world.clock.on_sleep = on_sleep
    try:
        world.start()
    except _Killed:
        pass
    assert "promote" in world.store.pending, "the accepted promote was cleared before PROMOTING was saved: lost"


def test_the_route_is_written_around_pulumi_only_by_a_release_that_proves_it_holds_the_lease() -> None:
    # the rollback's last resort skipped the fence every up goes through: a process that could not renew its
    # lease (another machine may have resumed the release meanwhile) moved the route all the same
    world = make(Metrics(18.2))
    refused: list[str] = []
    plain = world.lease.fence

    def fence() -> None:
        if world.store.state is not None and world.store.state.phase is Phase.ROLLING_BACK:
            refused.append("fence")
            raise ClusterUnreachable("renewing the lease: the Kubernetes API server did not answer")
        plain()

    world.lease.fence = fence  # type: ignore[method-assign]
    result = world.start()
    assert refused and result.rollback_pending
    assert not world.cluster.restored


def test_an_abort_in_the_cluster_not_yet_reported_is_taken_before_a_skip_analysis_promotion() -> None:
    world: World
    done: list[bool] = []

    def on_sleep(now: float) -> None:
        state = world.store.state
        if state is not None and state.phase is Phase.PROGRESSING and state.weight == 20 and not done:
            done.append(True)
            world.store.request("promote", by="dev", skip_analysis=True, reason="hotfix")  # reported by the watch
            world.store.pending["abort"] = {"release": state.release, "by": "oncall"}  # written after, the watch not yet told

    world = make(Metrics(0.0))
    world.clock.on_sleep = on_sleep
    assert world.start().phase is Phase.ABORTED and done


def test_an_abort_during_a_failing_pre_rollout_hook_ends_aborted_not_failed() -> None:
    """Two real pre-rollout failures, then `canary abort` while the third call runs: the call is cut
    by the cancel token (ok=False, 'was cancelled with the release') and counted as the third failure."""
    world: World
    calls: list[int] = []

    def answer(name: str, kind: str) -> bool:
        if kind == "pre-rollout":
            calls.append(1)
            if len(calls) == 3:
                world.release.request_abort("signal SIGTERM")  # as the real Caller returns: cut short, not ok
            return False
        return True

    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[{"name": "smoke", "type": "pre-rollout", "url": "http://smoke/"}]),
                 hooks=FakeHooks(answer))
    result = world.start()
    assert result.phase is Phase.ABORTED, (result.phase, result.reason)


def test_a_rollback_hook_is_asked_while_pre_rollout_hooks_are_retried_at_weight_0() -> None:
    """Flagger (scheduler.go advanceCanary) asks the rollback hooks in Progressing before the pre-rollout hooks,
    each interval; here the release sits in Initializing (canary deployed) retrying pre-rollout and never asks."""
    world: World
    asked: list[str] = []

    def answer(name: str, kind: str) -> bool:
        asked.append(kind)
        return kind == "rollback"   # the rollback gate is open; pre-rollout keeps failing

    world = make(Metrics(0.0), lambda v: v["analysis"].update(threshold=5, webhooks=[
        {"name": "smoke", "type": "pre-rollout", "url": "http://smoke/"},
        {"name": "oncall", "type": "rollback", "url": "http://oncall/"}]), hooks=FakeHooks(answer))
    result = world.start()
    assert "rollback webhook oncall" in result.reason, (result.reason, asked)


def _blue_green(iterations: int, **extra: Any) -> Callable[[dict[str, Any]], None]:
    def change(v: dict[str, Any]) -> None:
        for key in ("stepWeight", "maxWeight", "stepWeights"):
            v["analysis"].pop(key, None)
        v["analysis"].update(iterations=iterations, **extra)
    return change


def test_plain_blue_green_warms_up_and_widens_its_window_from_its_first_iteration() -> None:
    """Blue/green without testers or a mirror takes its first step without moving the route: it never set when the
    analysis began, so no warm-up held its first no-data tick (a failed check at once, where the README promises
    one), and a quiet green's evidence window never grew past one interval while it held."""
    world = make(Metrics([-1.0, 0.0, 0.0, 0.0]), _blue_green(2, warmup="30s"))
    result = world.start()
    assert result.phase is Phase.SUCCEEDED, result.reason
    first = world.store.of("tick")[0]
    assert first.outcome.value == "hold" and first.failed_in_row == 0 and "warming up" in first.checks[0].reason, first

    class Counted(Metrics):
        def __init__(self) -> None:
            super().__init__(0.0, requests=3)
            self.windows: list[str] = []

        def run_query(self, query: str) -> float:
            if "increase(http_requests_total" in query:
                self.windows += re.findall(r"\[(\w+)\]", query)[:1]
            return super().run_query(query)

    counted = Counted()
    assert make(counted, _blue_green(3, holdLimit="1m")).start().phase is Phase.FAILED  # three requests a tick never tell
    assert {"20s", "30s"} <= set(counted.windows), counted.windows


def test_confirm_promotion_is_asked_once_per_passing_tick() -> None:
    """Entering WaitingPromotion the gate was asked again at once: two calls (two timeouts of a slow hook, two
    approval tickets) before the interval began."""
    answers = iter([False, False, True])
    hooks = FakeHooks(lambda name, kind: next(answers) if kind == "confirm-promotion" else True)
    world = make(Metrics(0.0), _blue_green(2, webhooks=[{"name": "approve", "type": "confirm-promotion", "url": "http://gate/"}]), hooks=hooks)
    assert world.start().phase is Phase.SUCCEEDED
    journal = [("gate" if r.type == "webhook" and r.hook_type == "confirm-promotion" else "tick") for r in world.store.journal
               if r.type == "tick" or (r.type == "webhook" and r.hook_type == "confirm-promotion")]
    assert "gate, gate" not in ", ".join(journal), journal
    assert journal.count("gate") == 3, journal


@pytest.mark.parametrize("strategy", ["ab", "blue-green"])
def test_confirm_traffic_increase_gates_weights_only_as_in_flagger(strategy: str) -> None:
    """An A/B or blue/green iteration moves no more traffic to the canary; Flagger never asks the hook there. canary
    asked it before every iteration, so a Flagger canary imported with one stalled on a gate Flagger never asked."""
    said = {"no": 0}

    def answer(name: str, kind: str) -> bool:  # no twice, then yes: a release that asks is held, not stalled for good
        said["no"] += kind == "confirm-traffic-increase"
        return kind != "confirm-traffic-increase" or said["no"] > 2

    hooks = FakeHooks(answer)
    match = {"match": [{"headers": {"X-Canary": {"exact": "always"}}}]} if strategy == "ab" else {}
    world = make(Metrics(0.0), _blue_green(3, webhooks=[{"name": "more", "type": "confirm-traffic-increase", "url": "http://gate/"}], **match),
                 hooks=hooks)
    assert world.start().phase is Phase.SUCCEEDED
    assert ("more", "confirm-traffic-increase") not in hooks.calls, hooks.calls


class _NoCountYet(Metrics):
    """A Prometheus where stable's request counter has no series at the preflight (no request answered yet), then has."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.counted = False

    def run_query(self, query: str) -> float:
        if "increase(http_requests_total" in query and "web-stable" in query and not self.counted:
            from canary.errors import NoValues

            self.counted = True
            raise NoValues("the query returned no samples")
        return super().run_query(query)


def test_a_count_with_no_series_at_the_start_is_a_warning_in_the_journal_not_a_refusal() -> None:
    # refused, every first release of an app no request had reached yet (its counter appears with the first) was bad input
    world = make(_NoCountYet())
    assert world.start().phase is Phase.SUCCEEDED
    warned = [e for e in world.store.of("event") if "found no series at all over stable's pods" in e.message]
    assert len(warned) == 1 and warned[0].message.startswith("prometheus.podLabel: "), [e.message for e in world.store.of("event")]


def test_clearing_the_post_rollout_debt_leaves_the_end_told_once_and_its_time() -> None:
    # the clearing was a second state record at the end's phase: the timeline showed the end twice, its last row
    # "post-rollout webhooks called", and the pushed duration (to `updated`) took in the hooks' run
    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[_EVERY_HOOK[6]]))
    assert world.start().phase is Phase.SUCCEEDED
    ends = [r for r in world.store.of("state") if r.phase == Phase.SUCCEEDED.value]
    assert len(ends) == 1 and ends[0].message.startswith("promoted"), [r.message for r in ends]
    assert world.store.state is not None and not world.store.state.post_rollout_owed
    assert world.store.state.updated == ends[0].time
    assert [e.message for e in world.store.of("event")][-1] == "post-rollout webhooks called"
