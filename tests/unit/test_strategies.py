"""The release machine's strategies beyond weighted steps (unit tests on the in-memory fakes)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest

from canary.core.records import Phase, TrackPin
from canary.core.routing import RouteShape
from canary.errors import InvalidSpec
from tests.unit.fakes import NEW, STABLE, FakeHooks, FakeStore, Metrics, gated_blue_green, make


def test_blue_green_scales_green_to_stable_s_size_before_the_switch() -> None:
    """`canaryReplicas` sizes green for its testers (or mirrored requests); the switch then sent every user to that one
    pod, though the README says green runs at full size when it takes the traffic."""
    def small_green(v: dict[str, Any]) -> None:
        for key in ("stepWeight", "maxWeight", "stepWeights"):
            v["analysis"].pop(key, None)
        v["analysis"]["iterations"] = 2
        v["app"].update(replicas=4, canaryReplicas=1)

    world = make(Metrics(0.0), small_green)
    assert world.start().phase is Phase.SUCCEEDED
    log = world.cluster.log
    switch = next(i for i, (kind, what) in enumerate(log) if kind == "route" and isinstance(what, RouteShape) and what.weight == 100)
    sizes = [what for kind, what in log[:switch] if kind == "canary"]
    assert sizes and sizes[0] == 1 and sizes[-1] == 4, log


def _pin(image: str, port: int, name: str | None) -> TrackPin:
    ports = [{"containerPort": port, **({"name": name} if name else {})}]
    return TrackPin(template={"spec": {"containers": [{"name": "web", "image": image, "ports": ports}]}}, hash=image, image=image, port=port)


@pytest.mark.parametrize(("stable", "desired", "refused"), [
    (("http", 8080), ("web", 9090), True),  # renamed and moved: neither the name nor the number reaches a new pod
    ((None, 8080), (None, 9090), True),  # unnamed: stable's Services target 8080 on pods that serve 9090
    ((None, 8080), ("http", 9090), True),
    (("http", 8080), ("http", 9090), False),  # the name follows each pod's own number
    (("http", 8080), ("web", 8080), False),  # renamed, not moved: the number is targeted meanwhile
])
def test_a_release_that_moves_the_port_out_of_stable_s_services_reach_is_refused(stable: tuple[str | None, int], desired: tuple[str | None, int],
                                                                                 refused: bool) -> None:
    """While stable takes the new version, its Services (and the apex Service) still target the old port: by name, each
    pod's own number; unnamed, the old number. A release that renamed and moved the port (or moved an unnamed one) left
    every new pod out of them, or in them on a port it does not serve, as stable rolled with users still routed there."""
    world = make(Metrics(0.0))
    world.release.facts = replace(world.release.facts, stable=_pin("web:1", stable[1], stable[0]))
    if not refused:
        assert world.release.start(_pin("web:2", desired[1], desired[0]), "config:\n  canary:app: {}\n").phase is Phase.SUCCEEDED
        return
    with pytest.raises(InvalidSpec, match=r"app.port: .*would reach no new pod on it. Name the port the same in both templates"):
        world.release.start(_pin("web:2", desired[1], desired[0]), "config:\n  canary:app: {}\n")
    assert world.stack.ups == [] and world.store.state is None  # nothing applied, no release begun


def _blue_green(iterations: int = 2, **extra: Any) -> Any:
    def change(v: dict[str, Any]) -> None:
        for key in ("stepWeight", "maxWeight", "stepWeights"):
            v["analysis"].pop(key, None)
        v["analysis"].update(iterations=iterations, **extra)
    return change


def _switched_at(world: Any) -> int:
    return next(i for i, (kind, what) in enumerate(world.cluster.log) if kind == "route" and isinstance(what, RouteShape) and what.weight == 100)


def test_blue_green_judges_green_for_an_interval_at_all_traffic_before_stable_takes_it() -> None:
    """Flagger switches all traffic to green and runs the analysis again before it promotes; canary switched inside the
    promotion, where no check ran, an abort was ignored and nothing could switch back: a green that failed under the
    users' own traffic became stable."""
    world = make(Metrics(0.0), _blue_green(2))
    assert world.start().phase is Phase.SUCCEEDED
    switch = _switched_at(world)
    assert ("stable", NEW.hash) in world.cluster.log[switch:]  # stable takes the new version after the switch
    ticks = world.store.of("tick")
    assert [t.weight for t in ticks] == [0, 0, 100], [(t.weight, t.reason) for t in ticks]
    assert ticks[-1].outcome.value == "advance"
    messages = [e.message for e in world.events]
    assert any("blue/green switches all traffic to the new version, judged for an interval" in m for m in messages), messages
    assert any("green served all traffic for an interval and every check passed: promoting" in m for m in messages), messages


def test_a_green_that_fails_at_the_switch_is_switched_back_to_blue_which_never_changed() -> None:
    world = make(Metrics([0.0, 0.0, 7.0]), _blue_green(2, threshold=2))
    result = world.start()
    assert result.phase is Phase.FAILED and "at weight 100" in result.reason, result.reason
    assert ("stable", NEW.hash) not in world.cluster.log and world.cluster.stable_hash == STABLE.hash
    assert world.cluster.route(world.release.spec).weights == (100, 0) and world.cluster.canary_replicas == 0
    back = [what for kind, what in world.cluster.log[_switched_at(world):] if kind == "route" and isinstance(what, RouteShape) and what.weight == 0]
    assert back, world.cluster.log  # switched back to blue


def test_an_abort_during_the_switch_s_interval_switches_back_to_blue() -> None:
    world = make(Metrics(0.0), _blue_green(2))

    def on_sleep(now: float) -> None:
        state = world.store.state
        if state is not None and state.weight == 100 and state.phase is Phase.PROGRESSING and "abort" not in world.store.requests(state.release):
            world.store.request("abort", by="canary abort")

    world.clock.on_sleep = on_sleep
    assert world.start().phase is Phase.ABORTED
    assert world.cluster.stable_hash == STABLE.hash and world.cluster.route(world.release.spec).weights == (100, 0)


def test_confirm_promotion_is_asked_before_the_switch_and_a_no_keeps_users_on_blue() -> None:
    answers = iter([False, True])
    hooks = FakeHooks(lambda name, kind: next(answers) if kind == "confirm-promotion" else True)
    world = make(Metrics(0.0), _blue_green(2, webhooks=[{"name": "approve", "type": "confirm-promotion", "url": "http://gate/"}]), hooks=hooks)
    seen: list[tuple[str, int]] = []

    def on_sleep(now: float) -> None:
        state = world.store.state
        if state is not None:
            seen.append((state.phase.value, state.weight))

    world.clock.on_sleep = on_sleep
    assert world.start().phase is Phase.SUCCEEDED
    assert ("WaitingPromotion", 0) in seen and ("WaitingPromotion", 100) not in seen, seen
    assert hooks.calls.count(("approve", "confirm-promotion")) == 2  # never asked again after the switch
    assert [t.weight for t in world.store.of("tick")][-1] == 100


def test_a_release_killed_in_the_switch_s_interval_is_judged_there_again_on_resume() -> None:
    world = make(Metrics(0.0), _blue_green(2))
    killed: dict[str, bool] = {}

    def on_sleep(now: float) -> None:
        state = world.store.state
        if state is not None and state.weight == 100 and state.phase is Phase.PROGRESSING and not killed:
            killed["yes"] = True
            raise KeyboardInterrupt  # the runner dies while green takes all traffic

    world.clock.on_sleep = on_sleep
    with pytest.raises(KeyboardInterrupt):
        world.start()
    world.clock.on_sleep = None
    judged_before = [t.weight for t in world.store.of("tick")]
    resumed = world.rebuild().release.resume()
    assert resumed.phase is Phase.SUCCEEDED, resumed.reason
    assert 100 not in judged_before and [t.weight for t in world.store.of("tick")][-1] == 100  # the switch judged after the resume
    assert world.cluster.stable_hash == NEW.hash and world.cluster.route(world.release.spec).weights == (100, 0)


def test_at_all_traffic_a_comparison_with_stable_is_not_judged_and_its_range_still_is() -> None:
    """Stable serves no request at weight 100: a compare (or judge) has nothing to weigh the canary against. Judged as
    no data, it failed every blue/green switch; its range still judges the canary there."""
    metrics = [{"name": "request-error-rate", "thresholdRange": {"max": 1}, "compare": {"thresholdRange": {"max": 2}}},
               {"name": "request-duration", "compare": {"thresholdRange": {"max": 1.5}}}]
    world = make(Metrics(0.0), _blue_green(2, metrics=metrics))
    assert world.start().phase is Phase.SUCCEEDED
    switch_tick = world.store.of("tick")[-1]
    assert switch_tick.weight == 100
    by_name = {c.metric: c for c in switch_tick.checks}
    assert by_name["request-duration"].effect.value == "none" and "not judged at this step" in by_name["request-duration"].reason
    assert by_name["request-error-rate"].effect.value == "pass" and "not against stable" in by_name["request-error-rate"].reason


def _told(world: Any) -> list[tuple[str, Any]]:
    """What the release tells people (event hooks, chat alerts), with its severity."""
    told: list[tuple[str, Any]] = []
    world.release.recorder.notify = lambda state, message, severity: told.append((message, severity))
    return told


def test_blue_green_s_switch_is_told_once() -> None:
    world = make(Metrics(0.0), _blue_green(2))
    told = _told(world)
    assert world.start().phase is Phase.SUCCEEDED
    switched = [m for m, _ in told if "blue/green" in m and "switches" in m]
    assert len(switched) == 1, switched


def test_a_promotion_forced_past_a_failed_tick_is_told_as_a_warning() -> None:
    """The same override from WaitingDecision and --skip-analysis was a warning; from WaitingPromotion it went out as
    info, so a chat channel set to warn never heard that a failing release was promoted by hand."""
    from canary.core.spec import Severity

    hooks = FakeHooks(lambda name, kind: kind != "confirm-promotion")
    world = make(Metrics([0.0] * 5 + [7.0] * 50), lambda v: v["analysis"].update(
        threshold=50, webhooks=[{"name": "approve", "type": "confirm-promotion", "url": "http://gate/"}]), hooks=hooks)
    told = _told(world)

    def on_sleep(now: float) -> None:
        state = world.store.state
        if state is not None and state.phase is Phase.WAITING_PROMOTION and state.failed_last and "promote" not in world.store.requests(state.release):
            world.store.request("promote", by="sre", force=True, reason="the 500s are the test client's")

    world.clock.on_sleep = on_sleep
    assert world.start().phase is Phase.SUCCEEDED
    forced = [(m, s) for m, s in told if "despite a failed last tick" in m]
    assert forced and all(s is Severity.WARN for _, s in forced), forced


@pytest.mark.parametrize(("stable_speaks", "switched"), [("", True), ("kubernetes.io/h2c", False), (None, False)],
                         ids=["a-new-protocol", "the-same-protocol", "a-pin-from-before"])
def test_a_canary_that_brings_a_new_protocol_takes_all_traffic_at_stable_s_size_while_stable_takes_it(stable_speaks: str | None, switched: bool) -> None:
    """Stable's Services keep the appProtocol stable speaks until stable takes the new version; promoted at the last
    step's weight, stable's old pods, serving while it rolls, were then spoken the new protocol, which they do not speak."""
    def small_canary(v: dict[str, Any]) -> None:
        v["app"].update(replicas=4, canaryReplicas=1)

    world = make(Metrics(0.0), small_canary)
    world.release.facts = replace(world.release.facts, stable=STABLE.model_copy(update={"app_protocol": stable_speaks}))
    result = world.release.start(NEW.model_copy(update={"app_protocol": "kubernetes.io/h2c"}), "config:\n  canary:app: {}\n")
    assert result.phase is Phase.SUCCEEDED
    log = world.cluster.log
    took = next(i for i, (kind, what) in enumerate(log) if kind == "stable" and what == NEW.hash)
    weights = [what.weight for kind, what in log[:took] if kind == "route" and isinstance(what, RouteShape)]
    canary_sizes = [what for kind, what in log[:took] if kind == "canary"]
    if switched:
        assert weights[-1] == 100 and canary_sizes[-1] == 4, log  # all traffic on the canary, at stable's size, as stable rolls
        assert any("spoken kubernetes.io/h2c where stable is spoken no appProtocol" in str(e) for e in world.events), world.events
    else:
        assert weights[-1] < 100 and canary_sizes[-1] == 1, log


def test_a_promote_written_for_waiting_promotion_does_not_decide_a_later_inconclusive_tick() -> None:
    """A second `canary promote` (a double press, a CI retry) read WaitingPromotion just before the first was taken:
    blue/green then switched, its tick came out inconclusive, and WaitingDecision took that left-over promote for a
    person's decision and promoted. It is now cleared, said, and the decision waits for a promote that saw it."""
    store = FakeStore()
    world = make(Metrics([0.0, 0.0, 1.5] + [0.0] * 50), gated_blue_green, hooks=FakeHooks(lambda name, kind: kind != "confirm-promotion"), store=store)
    asked: list[str] = []

    def on_sleep(now: float) -> None:
        state = store.state
        if state is not None and state.phase is Phase.WAITING_PROMOTION and not asked:
            asked.append("oncall-1")
            store.request("promote", by="oncall-1", phase=state.phase.value, step=state.step)
        elif asked == ["oncall-1"] and state is not None and state.phase is Phase.PROGRESSING:
            asked.append("oncall-2")  # read WaitingPromotion just before the first was taken: stamped with what it saw
            store.request("promote", by="oncall-2", phase=Phase.WAITING_PROMOTION.value, step=2)

    world.clock.on_sleep = on_sleep
    result = world.start()
    assert asked == ["oncall-1", "oncall-2"]
    assert result.phase is Phase.FAILED, result.reason  # nobody decided the inconclusive switch: rolled back at the decision timeout
    assert [r.by for r in store.of("request")] == ["oncall-1"]
    assert any("promotion by oncall-2 not taken: it was asked of the release in WaitingPromotion" in e.message for e in world.events), world.events


def test_a_promote_written_for_another_question_does_not_cut_the_decision_s_interval() -> None:
    """A promote stamped for WaitingPromotion that arrives while an inconclusive tick waits for a decision woke the
    interval as an answer: the load tests were stopped ("canary promote answered") and that interval's tick was lost,
    before the request was found to answer another question."""
    store = FakeStore()
    world = make(Metrics([0.0, 0.0, 1.5] + [0.0] * 50), gated_blue_green, hooks=FakeHooks(lambda name, kind: kind != "confirm-promotion"), store=store)
    asked: list[float] = []

    def on_sleep(now: float) -> None:
        state = store.state
        if state is not None and state.phase is Phase.WAITING_PROMOTION and not asked:
            asked.append(now)
            store.request("promote", by="oncall-1", phase=state.phase.value, step=state.step)
        elif len(asked) == 1 and state is not None and state.phase is Phase.WAITING_DECISION:
            asked.append(now)  # the decision's interval began
        elif len(asked) == 2 and now - asked[1] >= 5:
            asked.append(now)  # mid-interval of the decision: a promote written for the question before
            store.request("promote", by="oncall-2", phase=Phase.WAITING_PROMOTION.value, step=2)

    world.clock.on_sleep = on_sleep
    assert world.start().phase is Phase.FAILED
    # from the inconclusive tick on, one tick an interval: the stale promote cut none of them (it made one 15 s apart)
    ticks = store.of("tick")
    first = next(i for i, t in enumerate(ticks) if t.phase == Phase.WAITING_DECISION.value) - 1
    times = [_seconds(t.time) for t in ticks[first:]]
    gaps = [round(b - a) for a, b in zip(times, times[1:], strict=False)]
    assert gaps and set(gaps) == {round(world.release.spec.analysis.interval.total_seconds())}, gaps


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("live", [(6, 1), (2, 8)], ids=["stable-grown", "canary-grown"])
def test_the_switch_sizes_the_canary_to_what_stable_runs_and_never_below_what_it_runs(live: tuple[int, int]) -> None:
    """An autoscaled stable under load runs above its minimum: blue/green's switch scaled green to the minimum (2 pods)
    and sent it every request; and a canary its own autoscaler had grown was written down to that size as all traffic
    arrived."""
    def autoscaled(v: dict[str, Any]) -> None:
        for key in ("stepWeight", "maxWeight", "stepWeights"):
            v["analysis"].pop(key, None)
        v["analysis"]["iterations"] = 2
        v["app"].pop("replicas", None)
        v["app"].update(autoscaler={"minReplicas": 2, "maxReplicas": 10}, canaryReplicas=1)

    world = make(Metrics(0.0), autoscaled)
    stable_runs, canary_grown_to = live
    real = world.cluster.deployment

    def deployment(spec: Any, track: Any) -> dict[str, Any]:
        found = dict(real(spec, track))
        if track.value == "stable":
            found.update(replicas=stable_runs, ready=stable_runs, updated=stable_runs, pods=stable_runs, rolled_out=True)
        elif 0 < found["replicas"] < canary_grown_to:
            found.update(replicas=canary_grown_to, ready=canary_grown_to)  # its autoscaler's doing
        return found

    world.cluster.deployment = deployment  # type: ignore[method-assign]
    assert world.start().phase is Phase.SUCCEEDED
    log = world.cluster.log
    switch = next(i for i, (kind, what) in enumerate(log) if kind == "route" and isinstance(what, RouteShape) and what.weight == 100)
    sizes = [what for kind, what in log[:switch] if kind == "canary"]
    if stable_runs > canary_grown_to:
        assert sizes[-1] == stable_runs, log  # at the size stable runs, not its autoscaler's minimum
    else:
        # created at 1 pod, then grown by its autoscaler: never written down again (to stable's size, the weight's share)
        assert sizes[0] == 1 and all(size >= canary_grown_to for size in sizes[1:]), log
