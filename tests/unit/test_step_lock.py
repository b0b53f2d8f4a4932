"""A forward step kept from its ``up`` by Pulumi's lock (another app's ``up`` of the stack, awaiting its Deployment):
the release holds at its weight and goes on judging it, a tick an interval, instead of waiting ``lock_wait`` unjudged."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from canary.core.records import Outcome, Phase
from canary.core.routing import RouteShape
from tests.unit.fakes import Metrics, World, make

ERRORS_ONLY = {"metrics": [{"name": "request-error-rate", "thresholdRange": {"max": 1}}]}


def _seconds(world: World, text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() - world.clock.base.timestamp()


def _locked_at(world: World, weight: int, seconds: float) -> dict[str, float]:
    """Another app's ``up`` takes Pulumi's lock for ``seconds`` as the step to ``weight`` begins; returns when it did."""
    taken: dict[str, float] = {}

    def on_up(record: dict[str, Any]) -> None:
        if "at" not in taken and record["parts"] == {"route"} and record["pins"]["route"]["weight"] == weight:
            taken["at"] = world.clock.monotonic()
            world.stack.locked_until = world.clock.monotonic() + seconds

    world.stack.on_up = on_up
    return taken


def _ticks_at(world: World, weight: int) -> list[Any]:
    return [t for t in world.store.of("tick") if t.weight == weight]


def test_ticks_go_on_while_a_step_waits_for_pulumi_s_lock_and_the_step_is_taken_once_it_is_let_go() -> None:
    # threshold 1: a hold counted as a failed tick would roll back at once
    world = make(Metrics(0.0), lambda v: v["analysis"].update(threshold=1, **ERRORS_ONLY))
    taken = _locked_at(world, 30, 35.0)
    result = world.start()
    assert result.phase is Phase.SUCCEEDED, result.reason
    assert world.cluster.weights_seen == [0, 10, 20, 30, 40, 50, 0]
    held = [_seconds(world, t.time) for t in _ticks_at(world, 20)]
    # one tick before the lock, then one every interval while it is held: none more than an interval apart
    assert len(held) >= 4 and all(b - a <= 10.0 + 0.5 for a, b in zip(held, held[1:], strict=False)), held
    assert all(t.outcome is Outcome.ADVANCE and t.failed_total == 0 for t in world.store.of("tick"))
    # the step tried again after each tick, and taken at the first try once the lock was let go
    shifted = next(s for s in world.store.of("state") if s.message.startswith("weight 30 is live"))
    assert taken["at"] + 35.0 <= _seconds(world, shifted.time) <= taken["at"] + 35.0 + 10.0 + 0.5
    waits = [s for s in world.store.of("state") if "waits for Pulumi's lock" in s.message]
    assert len(waits) == 3 and all("alice@host (pid 42)" in s.message and "holding at weight 20" in s.message for s in waits)
    assert all(s.details.get("lock_held") == 3 and "step" not in s.details for s in waits)  # no step a backtest would read as taken
    warned = [e for e in world.store.events if "waits for Pulumi's lock" in e[1]]
    assert len(warned) == 1, warned  # warned once a step, journaled at each try


def test_a_failing_canary_is_rolled_back_on_time_while_a_step_waits_for_pulumi_s_lock() -> None:
    """The review's case: healthy for two ticks, then 50 % errors, while another app's ``up`` holds the lock for 590 s
    from the shift to 30. The failing canary kept 20 % for 600 s unjudged; it is now rolled back after its three failed
    ticks, its traffic step written around Pulumi after the route timeout (the lock still held)."""
    world = make(Metrics([0.0, 0.0] + [50.0] * 100), lambda v: v["analysis"].update(**ERRORS_ONLY), route_timeout=20.0)
    taken = _locked_at(world, 30, 590.0)
    rest: dict[str, float] = {}
    set_shape = world.cluster.set_shape

    def timed(shape: RouteShape) -> None:
        if shape.weight == 0 and "at" in taken:
            rest.setdefault("at", world.clock.monotonic())
        set_shape(shape)

    world.cluster.set_shape = timed  # type: ignore[method-assign]
    result = world.start()
    assert result.phase is Phase.FAILED and not result.rollback_pending, result.reason
    assert "request-error-rate" in result.reason and "StackLocked" not in result.reason
    assert 30 not in world.cluster.weights_seen
    failed = [t for t in _ticks_at(world, 20) if t.outcome in (Outcome.FAIL, Outcome.ROLLBACK)]
    assert len(failed) == 3 and _seconds(world, failed[-1].time) - taken["at"] <= 3 * 10.0 + 0.5, [t.time for t in failed]
    # traffic back on stable a route timeout after the rollback began, not lock_wait
    assert rest["at"] - _seconds(world, failed[-1].time) <= 20.0 + 2.0 and world.cluster.restored == [RouteShape()]
    assert world.clock.monotonic() >= world.stack.locked_until and world.cluster.canary_replicas == 0


def test_a_step_waits_for_pulumi_s_lock_lock_wait_in_all_then_fails_naming_it() -> None:
    world = make(Metrics(0.0), lambda v: v["analysis"].update(**ERRORS_ONLY), lock_wait=60.0, route_timeout=20.0)
    taken = _locked_at(world, 30, 10_000.0)
    result = world.start()
    assert result.rollback_pending and world.cluster.shape == RouteShape(), result.reason  # the lock never let go
    rolling = next(s for s in world.store.of("state") if s.phase == "RollingBack")
    assert "StackLocked: step 3 (weight 30) waited 60s in all for Pulumi's lock" in rolling.message and "alice@host (pid 42)" in rolling.message
    assert 60.0 <= _seconds(world, rolling.time) - taken["at"] <= 60.0 + 10.0 + 0.5
    held = [t for t in _ticks_at(world, 20) if _seconds(world, t.time) > taken["at"]]
    assert len(held) >= 5 and all(t.outcome is Outcome.ADVANCE for t in held)  # judged all along, none counted failed


@pytest.mark.parametrize("strategy", ["ab", "blue-green"])
def test_iterations_after_the_first_need_no_up_and_are_never_held_for_pulumi_s_lock(strategy: str) -> None:
    def iterations(v: dict[str, Any]) -> None:
        for key in ("stepWeight", "maxWeight", "stepWeights"):
            v["analysis"].pop(key, None)
        v["analysis"].update(iterations=4, **ERRORS_ONLY)
        if strategy == "ab":
            v["analysis"]["match"] = [{"headers": {"X-Canary": {"exact": "always"}}}]

    world = make(Metrics(0.0), iterations)

    def lock_after_the_first_tick(now: float) -> None:  # held through the other iterations, let go before the promotion ends
        if world.store.of("tick") and not world.stack.locked_until:
            world.stack.locked_until = now + 35.0

    world.clock.on_sleep = lock_after_the_first_tick
    result = world.start()
    assert result.phase is Phase.SUCCEEDED, result.reason
    times = [_seconds(world, t.time) for t in _ticks_at(world, 0)]
    assert len(times) == 4 and all(b - a <= 10.0 + 0.5 for a, b in zip(times, times[1:], strict=False)), times
    assert world.stack.refused and all(r["at"] >= times[-1] for r in world.stack.refused)  # the promotion's ups, after the last iteration
    assert not any("waits for Pulumi's lock" in s.message for s in world.store.of("state"))


def test_a_held_step_leaves_the_load_test_half_the_interval_at_least() -> None:
    """The step's up waited the whole interval for the lock, and the held turn's rollout hooks (a load test) were
    started and stopped at once: the tick judged a window without the load the release relies on."""
    def with_load_test(v: dict[str, Any]) -> None:
        v["analysis"].update(**ERRORS_ONLY, webhooks=[{"name": "load", "type": "rollout", "cmd": "hey -z 10s http://web/"}])

    world = make(Metrics(0.0), with_load_test, route_timeout=60.0)
    taken = _locked_at(world, 30, 35.0)
    windows: list[tuple[float, float]] = []
    hooks = world.hooks
    started: dict[int, float] = {}

    def start(hook: Any, body: Any = None) -> Any:
        started[id(hook)] = world.clock.monotonic()
        return hook

    def finish(hook: Any, handle: Any, deadline: float, cancel: Any = None) -> Any:
        windows.append((started.pop(id(hook)), world.clock.monotonic()))
        return hooks.call(hook, {}, cancel)

    hooks.start, hooks.finish = start, finish  # type: ignore[method-assign]
    assert world.start().phase is Phase.SUCCEEDED
    interval = world.release.spec.analysis.interval.total_seconds()
    during = [end - begin for begin, end in windows if taken["at"] <= begin <= taken["at"] + 35.0]
    assert during and min(during) >= interval / 2 - 0.5, (interval, during)
