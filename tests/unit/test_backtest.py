"""Backtest (canary.core.backtest, api.backtest, `canary backtest`): an analysis replayed against recorded data.

The recorded data is a ``Timeline``: what Prometheus would answer at any moment. A
release runs on the fake ports (tests/unit/fakes.py) against that timeline, as
the real one runs against Prometheus, and writes its journal; the replay asks
the same timeline at the journal's tick times. Same config, same data: the
replay must make the recorded decision at every recorded tick.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from canary.core import backtest
from canary.core.backtest import Ending
from canary.core.records import Outcome, StateChange
from canary.core.spec import ReleaseSpec
from canary.errors import InvalidSpec, NoValues
from tests.unit.fakes import FakeClock, FakeHooks, World, make, spec

BASE = FakeClock().base
Rate = Callable[[float], float | None]


class Timeline:
    """What Prometheus recorded, by the time (seconds after the fake clock's base): the canary's error rate
    (None: no data), its request-duration, and its request count in a window (``requests(t, window)``)."""

    def __init__(self, error_rate: Rate, duration: float | None = 100.0, requests: Callable[[float, str], float] | None = None) -> None:
        self.error_rate = error_rate
        self.duration = duration
        self.requests = requests or (lambda t, window: 10_000.0)
        #: every query the replay sent, with the moment it was asked for
        self.asked: list[tuple[float, str]] = []

    def answer(self, seconds: float, query: str) -> float:
        if "increase(http_requests_total" in query:
            window = query.rsplit("[", 1)[1].split("]", 1)[0]
            return self.requests(seconds, window)
        value = self.duration if "histogram_quantile" in query else self.error_rate(seconds)
        if value is None:
            raise NoValues("the query returned no samples")
        return value

    def at(self, when: datetime) -> Callable[[str | None], Any]:
        """The replay's provider factory at ``when`` (as PrometheusProvider.at gives it)."""
        seconds = (when - BASE).total_seconds()
        timeline = self

        class At:
            def run_query(self, query: str) -> float:
                timeline.asked.append((seconds, query))
                return timeline.answer(seconds, query)

            def is_online(self) -> bool:
                return True

        provider = At()
        return lambda address: provider


class Live:
    """The release's provider: the timeline as it is at the fake clock's now."""

    def __init__(self, timeline: Timeline, clock: FakeClock) -> None:
        self.timeline, self.clock = timeline, clock

    def run_query(self, query: str) -> float:
        return self.timeline.answer(self.clock.now_s, query)

    def is_online(self) -> bool:
        return True


def run_release(timeline: Timeline, mutate: Callable[[dict[str, Any]], None] | None = None, hooks: FakeHooks | None = None,
                up_seconds: float = 4.0) -> World:
    """A release of NEW over the timeline, each `up` taking ``up_seconds`` (a shift is not instant)."""
    world = make(mutate=mutate, hooks=hooks)
    world.release.provider_for = lambda address: Live(timeline, world.clock)  # type: ignore[assignment]
    world.stack.on_up = lambda record: world.clock.sleep(up_seconds)
    world.start()
    return world


def analysis_of(world: World, **changes: Any) -> ReleaseSpec:
    """The release's spec with its analysis changed (thresholds edited in the stack file, say)."""
    release_spec = world.release.spec
    return release_spec.model_copy(update={"analysis": release_spec.analysis.model_copy(update=changes)})


def error_rate_max(world: World, limit: float) -> ReleaseSpec:
    metrics = list(world.release.spec.analysis.metrics)
    metrics[0] = metrics[0].model_copy(update={"threshold_range": metrics[0].threshold_range.model_copy(update={"max": limit})})  # type: ignore[union-attr]
    return analysis_of(world, metrics=metrics)


def ticks_of(world: World) -> list[tuple[Outcome, int]]:
    return [(t.outcome, t.weight) for t in world.store.of("tick")]


def at(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


def set_analysis(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda v: v["analysis"].update(values)


def _flapping(t: float) -> float:
    return 5.0 if int((t + 5) // 10) % 2 else 0.0


_CALLS = {"n": 0}


def _load_test_fails_once(name: str, kind: str) -> bool:
    _CALLS["n"] += 1
    return kind != "rollout" or _CALLS["n"] != 2


# --- the same config reproduces the recorded decisions -----------------------------------------------


SCENARIOS: dict[str, tuple[Timeline, Callable[[dict[str, Any]], None] | None, Ending]] = {
    "healthy": (Timeline(lambda t: 0.0), None, Ending.PROMOTE),
    "faulty": (Timeline(lambda t: 18.2), None, Ending.ROLLBACK),
    "flapping, failureLimit": (Timeline(_flapping), set_analysis(threshold=2, failureLimit=3), Ending.ROLLBACK),
    "no data while warming up": (Timeline(lambda t: None if t < 30 else 0.0), set_analysis(warmup="25s"), Ending.PROMOTE),
    "no data after the warm-up": (Timeline(lambda t: None if t < 30 else 0.0), set_analysis(warmup="5s", threshold=4), Ending.PROMOTE),
    "a bounded hold": (Timeline(lambda t: None), set_analysis(holdLimit="35s", metrics=[
        {"name": "request-error-rate", "thresholdRange": {"max": 1}, "onNoData": "hold"}]), Ending.ROLLBACK),
    "evidence gathered while holding": (
        Timeline(lambda t: 0.5, requests=lambda t, window: 40.0 if window == "10s" else 400.0),
        set_analysis(metrics=[{"name": "request-error-rate", "thresholdRange": {"max": 5}}]), Ending.PROMOTE),
    "inconclusive": (Timeline(lambda t: 0.0, duration=550.0), set_analysis(decisionTimeout="30s", metrics=[
        {"name": "request-duration", "thresholdRange": {"max": 500}, "inconclusiveRange": {"max": 600}}]), Ending.DECISION),
    "A/B testing": (Timeline(lambda t: 0.0 if t > 30 else None),
                    lambda v: v["analysis"].update(stepWeight=None, maxWeight=None, iterations=3, warmup="25s",
                                                   match=[{"headers": {"x-canary": {"exact": "1"}}}]) or _drop_weights(v), Ending.PROMOTE),
    "blue/green, the route never moves": (Timeline(lambda t: 0.0 if t > 30 else None),
                                          lambda v: v["analysis"].update(iterations=3, warmup="25s", threshold=5) or _drop_weights(v), Ending.PROMOTE),
}


def _drop_weights(values: dict[str, Any]) -> None:
    for key in ("stepWeight", "maxWeight"):
        values["analysis"].pop(key, None)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_same_config_makes_the_recorded_decision_at_every_recorded_tick(name: str) -> None:
    timeline, mutate, ending = SCENARIOS[name]
    world = run_release(timeline, mutate)
    replay = backtest.replay_release(world.release.spec, timeline.at, world.store.journal)
    assert replay.differences == (), [str(d) for d in replay.differences]
    assert replay.same and replay.recorded is not None
    assert replay.conclusion.ending is ending and replay.recorded.ending is ending
    assert replay.conclusion.tick == replay.recorded.tick
    recorded = world.store.of("tick")
    assert [(t.outcome, t.weight) for t in replay.ticks] == ticks_of(world)[:len(replay.ticks)]
    assert [t.reason for t in replay.ticks] == [t.reason for t in recorded][:len(replay.ticks)]


def test_a_rollout_webhooks_recorded_failure_is_carried_into_the_replay() -> None:
    _CALLS["n"] = 0
    timeline = Timeline(lambda t: 0.0)
    world = run_release(timeline, set_analysis(webhooks=[{"name": "load-test", "type": "rollout", "url": "http://load/"}]),
                        hooks=FakeHooks(_load_test_fails_once))
    assert Outcome.FAIL in [o for o, _ in ticks_of(world)]
    replay = backtest.replay_release(world.release.spec, timeline.at, world.store.journal)
    assert replay.same and replay.conclusion.ending is Ending.PROMOTE
    failed = next(t for t in replay.ticks if t.outcome is Outcome.FAIL)
    assert "rollout webhook load-test failed" in failed.reason


def test_an_inconclusive_replay_goes_on_judging_while_the_release_waits_for_a_person() -> None:
    """As ``_waiting_decision``: the release keeps analysing at its step (no advance, an inconclusive tick does not begin
    the wait again) until decisionTimeout (30s) rolls it back, not by a tick; the replay judges the same ticks."""
    timeline, mutate, _ = SCENARIOS["inconclusive"]
    world = run_release(timeline, mutate)
    recorded = world.store.of("tick")
    assert [t.phase for t in recorded] == ["Progressing"] + ["WaitingDecision"] * 4
    replay = backtest.replay_release(world.release.spec, timeline.at, world.store.journal)
    assert len(replay.ticks) == len(recorded) and replay.same
    assert [(t.step, t.outcome) for t in replay.ticks] == [(1, Outcome.INCONCLUSIVE)] * 5
    assert replay.conclusion.text.startswith("would wait for a decision (WaitingDecision) from 00:00:14 (tick 1): inconclusive at weight 10")
    assert "4 more ticks judged while waiting, none rolled back" in replay.conclusion.text
    # a replay that waits sooner stops where decisionTimeout ends the wait: the release ran no tick after it
    sooner = backtest.replay_release(world.release.spec, Timeline(lambda t: 0.0, duration=550.0).at,
                                     [t.model_copy(update={"time": _iso(at(10 * k + 4))}) if t.type == "tick" else t
                                      for k, t in enumerate([r for r in world.store.journal if r.type == "tick"] * 2, start=1)]
                                     + [r for r in world.store.journal if r.type != "tick"])
    assert len(sooner.ticks) == 5 and "no decision within decisionTimeout 30s" in sooner.conclusion.text
    assert [d.tick for d in sooner.differences] == [6, 7, 8, 9, 10] and not sooner.same


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the machine's counts, phases and steps, replayed ----------------------------------------------------


def test_a_pre_rollout_webhooks_failure_counts_toward_failure_limit_in_the_replay_as_in_the_release() -> None:
    """``_initializing`` counts a pre-rollout failure (``_count_failure``) and keeps it: with failureLimit 2 the
    first failing tick rolls back; the replay starts from the "analysis starts" record's failed_total."""
    calls = {"n": 0}

    def pre_rollout_fails_once(name: str, kind: str) -> bool:
        calls["n"] += kind == "pre-rollout"
        return kind != "pre-rollout" or calls["n"] != 1

    timeline = Timeline(lambda t: 0.0 if t < 30 else 5.0)
    world = run_release(timeline, set_analysis(threshold=5, failureLimit=2, webhooks=[{"name": "smoke", "type": "pre-rollout", "url": "http://smoke/"}]),
                        hooks=FakeHooks(pre_rollout_fails_once))
    assert ticks_of(world) == [(Outcome.ADVANCE, 10), (Outcome.ROLLBACK, 20)]
    replay = backtest.replay_release(world.release.spec, timeline.at, world.store.journal)
    assert [(t.outcome, t.failed_total) for t in replay.ticks] == [(Outcome.ADVANCE, 1), (Outcome.ROLLBACK, 2)]
    assert replay.same and replay.conclusion.ending is Ending.ROLLBACK and replay.conclusion.tick == 2
    assert "2 failed checks in all (failureLimit 2)" in replay.conclusion.text
    # a window has no journal: its counts start at 0
    window = backtest.replay_window(world.release.spec, timeline.at, at(15), at(40))
    assert [(t.outcome, t.failed_total) for t in window.ticks] == [(Outcome.ADVANCE, 0), (Outcome.FAIL, 1)]


def _crash_and_resume(timeline: Timeline, mutate: Callable[[dict[str, Any]], None] | None, crash: Callable[[World], bool], gap: float) -> World:
    """A release killed (its lease lost) once ``crash(world)``, resumed ``gap`` seconds later by another process."""
    from canary.errors import LeaseLost

    world = make(mutate=mutate)
    world.release.provider_for = lambda address: Live(timeline, world.clock)  # type: ignore[assignment]
    world.stack.on_up = lambda record: world.clock.sleep(4.0)
    armed = {"on": True}

    def on_sleep(now: float) -> None:
        if armed["on"] and crash(world):
            armed["on"] = False
            raise LeaseLost("killed")

    world.clock.on_sleep = on_sleep
    with pytest.raises(LeaseLost):
        world.start()
    world.clock.on_sleep = None
    world.clock.now_s += gap
    again = world.rebuild()
    again.release.provider_for = lambda address: Live(timeline, again.clock)  # type: ignore[assignment]
    again.stack.on_up = lambda record: again.clock.sleep(4.0)
    again.release.resume()
    return again


def test_a_resumes_re_apply_before_the_first_tick_restarts_the_warm_up() -> None:
    """Killed after the first shift, before any tick, resumed 100 s later: the re-applied step (live at 00:01:56) is
    judged at 00:01:58, 2 s into a 15 s warm-up, where no data holds; from the first shift it would fail."""
    timeline = Timeline(lambda t: None if 100 <= t < 125 else 0.0)
    world = _crash_and_resume(timeline, set_analysis(warmup="15s", threshold=1),
                              lambda w: w.store.state is not None and w.store.state.step == 1 and not w.store.of("tick"), 100)
    assert [s.details.get("reapplied") for s in world.store.of("state") if "shifted_at" in s.details][:2] == [False, True]
    assert ticks_of(world)[0] == (Outcome.HOLD, 10) and world.store.state is not None and world.store.state.phase == "Succeeded"
    replay = backtest.replay_release(world.release.spec, timeline.at, world.store.journal)
    assert replay.ticks[0].context.warming_up and replay.ticks[0].outcome is Outcome.HOLD
    assert replay.same and replay.conclusion.ending is Ending.PROMOTE


def _duration_550_then_900(seconds: float) -> float:
    return 550.0 if seconds < 20 else 900.0


class _Slower(Timeline):
    """Inconclusive (550 ms, in the band up to 600) at the first tick, failing (900 ms) after."""

    def answer(self, seconds: float, query: str) -> float:
        return _duration_550_then_900(seconds) if "histogram_quantile" in query else super().answer(seconds, query)


def test_ticks_while_waiting_for_a_decision_count_and_roll_back_as_in_the_release() -> None:
    timeline = _Slower(lambda t: 0.0)
    world = run_release(timeline, set_analysis(threshold=2, decisionTimeout="1h", metrics=[
        {"name": "request-duration", "thresholdRange": {"max": 500}, "inconclusiveRange": {"max": 600}}]))
    assert [(t.outcome, t.phase) for t in world.store.of("tick")] == [
        (Outcome.INCONCLUSIVE, "Progressing"), (Outcome.FAIL, "WaitingDecision"), (Outcome.ROLLBACK, "WaitingDecision")]
    replay = backtest.replay_release(world.release.spec, timeline.at, world.store.journal)
    assert [(t.outcome, t.step, t.failed_in_row) for t in replay.ticks] == [(Outcome.INCONCLUSIVE, 1, 0), (Outcome.FAIL, 1, 1), (Outcome.ROLLBACK, 1, 2)]
    assert replay.conclusion.ending is Ending.ROLLBACK and replay.conclusion.tick == 3
    assert replay.conclusion.text.startswith("would roll back at 00:00:34 (tick 3) while waiting for a decision: request-duration 900 > max 500")
    assert replay.same


def test_same_needs_the_same_ending_at_the_same_tick() -> None:
    """Aborted by a person after two passing ticks: every recorded tick is replayed alike, but the replay would have
    gone on (it follows no request): not the same release."""
    timeline = Timeline(lambda t: 0.0)
    world = make()
    world.release.provider_for = lambda address: Live(timeline, world.clock)  # type: ignore[assignment]
    world.stack.on_up = lambda record: world.clock.sleep(4.0)
    sent = {"abort": False}

    def abort_after_two_ticks(now: float) -> None:
        if len(world.store.of("tick")) == 2 and not sent["abort"]:
            sent["abort"] = True
            world.store.request("abort")

    world.clock.on_sleep = abort_after_two_ticks
    world.start()
    assert world.store.state is not None and world.store.state.phase == "Aborted"
    replay = backtest.replay_release(world.release.spec, timeline.at, world.store.journal)
    assert replay.differences == () and replay.recorded is not None and replay.recorded.ending is Ending.ROLLBACK
    assert replay.conclusion.ending is Ending.RUNNING and not replay.same
    assert "differences: none at the recorded ticks, but the replay ends running (tick 2) where the release ended rollback (tick 2)" in replay.lines()


def _promotion_gate(answers: list[bool]) -> FakeHooks:
    """A confirm-promotion gate answering ``answers`` in turn (the last one after)."""
    said = iter(answers)
    last = {"answer": answers[-1]}

    def answer(name: str, kind: str) -> bool:
        if kind != "confirm-promotion":
            return True
        last["answer"] = next(said, last["answer"])
        return last["answer"]

    return FakeHooks(answer)


_GATE = [{"name": "approve", "type": "confirm-promotion", "url": "http://approve/"}]


def _two_steps_gated(**values: Any) -> Callable[[dict[str, Any]], None]:
    """Weights 10 and 20, a confirm-promotion gate."""

    def mutate(v: dict[str, Any]) -> None:
        _drop_weights(v)
        v["analysis"].update(stepWeights=[10, 20], webhooks=_GATE, **values)

    return mutate


def test_ticks_while_a_promotion_gate_says_no_are_replayed_and_it_promotes_at_the_tick_the_gate_let_it() -> None:
    timeline = Timeline(lambda t: 0.0)
    world = run_release(timeline, _two_steps_gated(),
                        hooks=_promotion_gate([False, False, True]))
    assert [(t.weight, t.phase) for t in world.store.of("tick")] == [(10, "Progressing"), (20, "Progressing"),
                                                                     (20, "WaitingPromotion"), (20, "WaitingPromotion")]
    replay = backtest.replay_release(world.release.spec, timeline.at, world.store.journal)
    assert replay.same and replay.conclusion.ending is Ending.PROMOTE and replay.conclusion.tick == 4 == replay.recorded.tick  # type: ignore[union-attr]
    assert [(t.step, t.weight) for t in replay.ticks] == [(1, 10), (2, 20), (2, 20), (2, 20)]


def _fails_from_40(t: float) -> float:
    return 0.0 if t < 40 else 5.0


def test_a_failing_tick_while_a_promotion_gate_says_no_counts_and_rolls_back_as_in_the_release() -> None:
    timeline = Timeline(_fails_from_40)
    world = run_release(timeline, _two_steps_gated(threshold=2),
                        hooks=_promotion_gate([False]))
    assert [(t.outcome, t.phase) for t in world.store.of("tick")] == [
        (Outcome.ADVANCE, "Progressing"), (Outcome.ADVANCE, "Progressing"), (Outcome.ADVANCE, "WaitingPromotion"),
        (Outcome.FAIL, "WaitingPromotion"), (Outcome.ROLLBACK, "WaitingPromotion")]
    replay = backtest.replay_release(world.release.spec, timeline.at, world.store.journal)
    assert [t.outcome for t in replay.ticks] == [Outcome.ADVANCE, Outcome.ADVANCE, Outcome.ADVANCE, Outcome.FAIL, Outcome.ROLLBACK]
    assert replay.conclusion.ending is Ending.ROLLBACK and replay.conclusion.tick == 5 and replay.same
    assert "while waiting for promotion" in replay.conclusion.text


def test_a_step_held_for_pulumi_s_lock_is_replayed_as_a_gate_s_no_the_next_passing_tick_takes_it() -> None:
    """The release holds its weight while another app's ``up`` holds Pulumi's lock, judging it a tick an interval, and
    takes the step after a later passing tick: the replay holds there too, not one step ahead from the next tick on."""
    timeline = Timeline(lambda t: 0.0)
    world = make()
    world.release.provider_for = lambda address: Live(timeline, world.clock)  # type: ignore[assignment]

    def on_up(record: dict[str, Any]) -> None:
        world.clock.sleep(4.0)
        if not world.stack.locked_until and record["parts"] == {"route"} and record["pins"]["route"]["weight"] == 30:
            world.stack.locked_until = world.clock.monotonic() + 25.0  # as the step to 30 begins, for two more ticks

    world.stack.on_up = on_up
    world.start()
    waits = [s for s in world.store.of("state") if (s.details or {}).get("lock_held") == 3]
    assert waits and all("step" not in s.details for s in waits)
    assert [t.weight for t in world.store.of("tick")] == [10, 20, 20, 20, 30, 40, 50]
    replay = backtest.replay_release(world.release.spec, timeline.at, world.store.journal)
    assert replay.differences == (), [str(d) for d in replay.differences]
    assert replay.same and replay.conclusion.ending is Ending.PROMOTE and replay.conclusion.tick == 7 == replay.recorded.tick  # type: ignore[union-attr]
    assert [(t.step, t.weight) for t in replay.ticks] == [(1, 10), (2, 20), (2, 20), (2, 20), (3, 30), (4, 40), (5, 50)]


def _paused_for_two_ticks(mutate: Callable[[dict[str, Any]], None]) -> tuple[World, Timeline]:
    timeline = Timeline(lambda t: 0.0)
    world = make(mutate=mutate)
    world.release.provider_for = lambda address: Live(timeline, world.clock)  # type: ignore[assignment]
    sent = {"pause": False, "continue": False}

    def steer(now: float) -> None:
        count = len(world.store.of("tick"))
        if count == 1 and not sent["pause"]:
            sent["pause"] = True
            world.store.request("pause")
        if count == 3 and not sent["continue"]:
            sent["continue"] = True
            world.store.request("continue")

    world.clock.on_sleep = steer
    world.start()
    return world, timeline


_AB = SCENARIOS["A/B testing"][1]


def _blue_green(values: dict[str, Any]) -> None:
    values["analysis"].update(iterations=3)
    _drop_weights(values)


def test_iterations_are_compared_by_step_a_pause_across_them_differs() -> None:
    """A/B: paused at iteration 2 for two ticks, the release promotes at tick 5; the replay (it follows no pause)
    at tick 3. Every tick is at weight 0: the steps tell them apart."""
    assert _AB is not None
    world, timeline = _paused_for_two_ticks(_AB)
    assert [t.outcome for t in world.store.of("tick")] == [Outcome.ADVANCE] * 5
    replay = backtest.replay_release(world.release.spec, timeline.at, world.store.journal)
    assert replay.conclusion.tick == 3 and replay.recorded is not None and replay.recorded.tick == 5 and not replay.same
    assert [(d.tick, d.recorded_step, d.replay_step) for d in replay.differences] == [(3, 2, 3), (4, 2, None), (5, 3, None)]
    assert str(replay.differences[0]) == ("tick 3 at 00:00:30: recorded advance at iteration 2 of 3, replay advance at iteration 3 of 3: "
                                          "all 2 checks passed at weight 0")


def test_blue_greens_switch_is_a_step_of_its_own() -> None:
    world, timeline = _paused_for_two_ticks(_blue_green)
    assert ticks_of(world) == [(Outcome.ADVANCE, 0)] * 5 + [(Outcome.ADVANCE, 100)]
    replay = backtest.replay_release(world.release.spec, timeline.at, world.store.journal)
    assert [t.step for t in replay.ticks] == [1, 2, 3, 4] and replay.conclusion.tick == 4 and not replay.same
    assert [(d.tick, d.recorded_step, d.replay_step) for d in replay.differences][:2] == [(3, 2, 3), (4, 2, 4)]
    assert "replay advance at blue/green's switch (weight 100)" in str(replay.differences[1])
    # unsteered, the steps are the same to the switch
    plain = run_release(timeline, _blue_green)
    assert backtest.replay_release(plain.release.spec, timeline.at, plain.store.journal).same


# --- other thresholds -------------------------------------------------------------------------------


def test_a_looser_threshold_turns_a_rollback_into_advances_and_a_promotion_once_enough_ticks_pass() -> None:
    timeline = Timeline(lambda t: 18.2)
    world = run_release(timeline, set_analysis(threshold=5))
    assert [o for o, _ in ticks_of(world)] == [Outcome.FAIL] * 4 + [Outcome.ROLLBACK]
    replay = backtest.replay_release(error_rate_max(world, 20), timeline.at, world.store.journal)
    assert [(t.outcome, t.weight) for t in replay.ticks] == [(Outcome.ADVANCE, w) for w in (10, 20, 30, 40, 50)]
    assert replay.conclusion.ending is Ending.PROMOTE and replay.conclusion.tick == 5
    assert replay.conclusion.text == "would promote at 00:00:54 (tick 5): every check passed up to weight 50"
    assert replay.recorded is not None and replay.recorded.ending is Ending.ROLLBACK
    assert [str(d) for d in replay.differences] == [
        "tick 1 at 00:00:14: recorded fail at weight 10, replay advance at weight 10: all 2 checks passed at weight 10",
        "tick 2 at 00:00:24: recorded fail at weight 10, replay advance at weight 20: all 2 checks passed at weight 20",
        "tick 3 at 00:00:34: recorded fail at weight 10, replay advance at weight 30: all 2 checks passed at weight 30",
        "tick 4 at 00:00:44: recorded fail at weight 10, replay advance at weight 40: all 2 checks passed at weight 40",
        "tick 5 at 00:00:54: recorded rollback at weight 10, replay advance at weight 50: all 2 checks passed at weight 50",
    ]
    assert any("measured at the weights the release really ran" in note for note in replay.notes)


def test_a_replay_that_outlives_the_journal_says_the_data_ended() -> None:
    timeline = Timeline(lambda t: 18.2)
    world = run_release(timeline)  # threshold 3: three ticks, not enough for five steps
    replay = backtest.replay_release(error_rate_max(world, 20), timeline.at, world.store.journal)
    assert replay.conclusion.ending is Ending.RUNNING
    assert replay.conclusion.text == "would still be running at the end of the data: weight 40 after 3 ticks"
    assert any("the journal ends at tick 3 (rolled back at 00:00:34 (tick 3)" in note and "cannot go further" in note for note in replay.notes)


def test_a_tighter_threshold_turns_a_promotion_into_a_rollback_at_the_threshold_tick() -> None:
    timeline = Timeline(lambda t: 0.5)
    world = run_release(timeline)
    assert [o for o, _ in ticks_of(world)] == [Outcome.ADVANCE] * 5
    replay = backtest.replay_release(error_rate_max(world, 0.2), timeline.at, world.store.journal)
    assert [t.outcome for t in replay.ticks] == [Outcome.FAIL, Outcome.FAIL, Outcome.ROLLBACK]
    assert replay.conclusion.text == ("would roll back at 00:00:34 (tick 3): request-error-rate 0.5 > max 0.2 for 3 checks in a row at weight 10")
    assert replay.recorded is not None and replay.recorded.ending is Ending.PROMOTE
    differences = [(d.tick, d.recorded_outcome, d.replay_outcome, d.replay_weight) for d in replay.differences]
    assert differences == [(1, Outcome.ADVANCE, Outcome.FAIL, 10), (2, Outcome.ADVANCE, Outcome.FAIL, 10), (3, Outcome.ADVANCE, Outcome.ROLLBACK, 10),
                           (4, Outcome.ADVANCE, None, None), (5, Outcome.ADVANCE, None, None)]
    lines = replay.lines()
    assert "  ticks 4–5 (00:00:44–00:00:54): recorded advance; the replay ended at tick 3: would roll back at 00:00:34 (tick 3): " \
           "request-error-rate 0.5 > max 0.2 for 3 checks in a row at weight 10" in lines
    assert "differences: 5" in lines


# --- ticks: warm-up, holds, evidence ------------------------------------------------------------------


def _pass_then_no_data(t: float) -> float | None:
    return 0.0 if t < 20 else None


def test_the_warm_up_runs_from_the_recorded_shift_not_from_the_tick_before_it() -> None:
    """Each `up` takes 4 s: the shift after tick 1 (00:00:14) is live at 00:00:18. With a 17 s warm-up, tick 3
    (00:00:34) is 16 s after it: no data still holds, as it did in the release."""
    mutate = set_analysis(warmup="17s", threshold=2)
    world = run_release(Timeline(_pass_then_no_data), mutate)
    assert ticks_of(world) == [(Outcome.ADVANCE, 10), (Outcome.HOLD, 20), (Outcome.HOLD, 20), (Outcome.FAIL, 20), (Outcome.ROLLBACK, 20)]
    replay = backtest.replay_release(world.release.spec, Timeline(_pass_then_no_data).at, world.store.journal)
    assert replay.same
    # a journal of an earlier version: no shifted_at detail, the state record's message says when
    older = [r.model_copy(update={"details": {}}) if isinstance(r, StateChange) else r for r in world.store.journal]
    assert backtest.replay_release(world.release.spec, Timeline(_pass_then_no_data).at, older).same
    # without any record of the shift, it is taken as the tick's time: tick 3 is then past the warm-up
    bare = [r.model_copy(update={"details": {}, "message": "saved"}) if isinstance(r, StateChange) else r for r in world.store.journal]
    guessed = backtest.replay_release(world.release.spec, Timeline(_pass_then_no_data).at, bare)
    assert guessed.differences[0].tick == 3 and guessed.differences[0].replay_outcome is Outcome.FAIL


def test_while_a_step_holds_rate_metrics_are_judged_over_the_time_since_the_replayed_shift() -> None:
    timeline, mutate, _ = SCENARIOS["evidence gathered while holding"]
    world = run_release(timeline, mutate)
    replay = backtest.replay_release(world.release.spec, timeline.at, world.store.journal)
    first, second = replay.ticks[0], replay.ticks[1]
    assert first.outcome is Outcome.HOLD and "not enough requests to tell" in first.reason
    assert second.context.evidence_window == pytest.approx(16.0)  # live at 00:00:08, judged at 00:00:24
    assert second.outcome is Outcome.ADVANCE and "[16s]" in second.checks[0].query


def test_a_hold_past_hold_limit_fails() -> None:
    timeline, mutate, _ = SCENARIOS["a bounded hold"]
    world = run_release(timeline, mutate)
    replay = backtest.replay_release(world.release.spec, timeline.at, world.store.journal)
    held = [t.context.held_too_long for t in replay.ticks]
    assert held[:4] == [False] * 4 and all(held[4:])
    assert "held longer than analysis.holdLimit" in replay.conclusion.text


# --- a window -------------------------------------------------------------------------------------


def test_a_window_ticks_every_interval_from_the_first_shift() -> None:
    timeline = Timeline(lambda t: None if t < 115 else 0.0)
    release_spec = spec(lambda v: v["analysis"].update(warmup="25s"))
    replay = backtest.replay_window(release_spec, timeline.at, at(100), at(200))
    assert [t.time for t in replay.ticks] == [at(110), at(120), at(130), at(140), at(150), at(160)]
    # each shift is taken at the passing tick's time: every tick is 10 s into a 25 s warm-up
    assert [(t.outcome, t.weight, t.context.warming_up) for t in replay.ticks] == [
        (Outcome.HOLD, 10, True), (Outcome.ADVANCE, 10, True), (Outcome.ADVANCE, 20, True), (Outcome.ADVANCE, 30, True),
        (Outcome.ADVANCE, 40, True), (Outcome.ADVANCE, 50, True)]
    assert replay.conclusion.ending is Ending.PROMOTE and replay.conclusion.time == at(160)
    assert replay.recorded is None and not replay.same
    assert {seconds for seconds, _ in timeline.asked} == {110, 120, 130, 140, 150, 160}


def test_a_window_with_no_data_at_all_says_so() -> None:
    replay = backtest.replay_window(spec(lambda v: v["analysis"].update(threshold=2)), Timeline(lambda t: None, duration=None).at, at(0), at(60))
    assert replay.conclusion.ending is Ending.ROLLBACK
    assert any("no data for any check at any tick" in note for note in replay.notes)


def test_blue_green_counts_iterations_at_weight_zero() -> None:
    release_spec = spec(lambda v: v["analysis"].update(iterations=4) or _drop_weights(v))
    replay = backtest.replay_window(release_spec, Timeline(lambda t: 0.0).at, at(0), at(25))
    assert [(t.step, t.weight) for t in replay.ticks] == [(1, 0), (2, 0)]
    assert replay.conclusion.text == "would still be running at the end of the data: iteration 3 of 4 after 2 ticks"


def test_skip_analysis_promotes_without_a_tick() -> None:
    replay = backtest.replay_window(spec(lambda v: v["analysis"].update(skipAnalysis=True)), Timeline(lambda t: 0.0).at, at(0), at(60))
    assert replay.ticks == () and replay.conclusion.ending is Ending.SKIPPED


# --- options ----------------------------------------------------------------------------------------

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-01T07:30:00Z", datetime(2026, 12, 1, 7, 30, tzinfo=UTC)),
    ("2026-12-01T08:30:00+01:00", datetime(2026, 12, 1, 7, 30, tzinfo=UTC)),
    ("-30m", datetime(2026, 12, 1, 7, 30, tzinfo=UTC)),
    ("-1h30m", datetime(2026, 12, 1, 6, 30, tzinfo=UTC)),
    ("now", NOW),
])
def test_times_are_rfc3339_with_a_timezone_now_or_before_now(text: str, expected: datetime) -> None:
    assert backtest.parse_time(text, "--from", NOW) == expected


@pytest.mark.parametrize(("release", "start", "end", "field", "rule"), [
    (None, None, None, "--release", "or --from and --to is required"),
    ("r1", "-1h", None, "--release", "without --from/--to"),
    (None, "-1h", None, "--to", "is required with --from"),
    (None, None, "now", "--from", "is required with --to"),
    (None, "2026-12-01T07:00:00", "now", "--from", "it has no timezone"),
    (None, "yesterday", "now", "--from", "must be an RFC 3339 time with a timezone"),
    (None, "-30x", "now", "--from", "the duration must be a duration such as 30s"),
    (None, "-10m", "-20m", "--to", "must be after --from"),
    (None, "-10m", "2026-12-01T09:00:00Z", "--to", "is in the future"),
    (None, "-99999999999h", "now", "--from", "the duration must be at most 8784h"),
    (None, "0001-01-01T00:00:00+14:00", "now", "--from", "out of the range of dates"),
])
def test_bad_options_are_refused_naming_the_option_and_the_rule(release: str | None, start: str | None, end: str | None, field: str, rule: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        backtest.check_options(release, start, end, NOW)
    assert any(p.field == field and rule in p.rule for p in info.value.problems), info.value.problems


def test_a_window_must_hold_one_tick_and_at_most_the_cap() -> None:
    interval = timedelta(seconds=10)
    with pytest.raises(InvalidSpec, match=r"--to: must be at least analysis.interval \(10s\) after --from"):
        backtest.window_times(at(0), at(9), interval)
    assert len(backtest.window_times(at(0), at(10 * backtest.MAX_TICKS), interval)) == backtest.MAX_TICKS
    with pytest.raises(InvalidSpec, match=r"--from: the window holds 2001 ticks .* at most 2000 are replayed"):
        backtest.window_times(at(0), at(10 * (backtest.MAX_TICKS + 1)), interval)


def test_a_release_without_ticks_is_refused() -> None:
    world = run_release(Timeline(lambda t: 0.0))
    untimed = [r for r in world.store.journal if r.type != "tick"]
    with pytest.raises(InvalidSpec, match="--release: has no recorded tick to replay"):
        backtest.replay_release(world.release.spec, Timeline(lambda t: 0.0).at, untimed)


# --- the API and the command line ------------------------------------------------------------------


class _Provider:
    """The api's provider for a stack, answering from a timeline at ``at``'s moment."""

    def __init__(self, timeline: Timeline, online: bool = True) -> None:
        self.timeline, self.online = timeline, online

    def at(self, when: datetime) -> Any:
        return self.timeline.at(when)(None)

    def is_online(self) -> bool:
        return self.online


def _workspace(world: World, tmp_path: Path) -> Any:
    """What api.open_stack returns, over the fake release's spec and journal."""
    facts = SimpleNamespace(spec=world.release.spec, fields="")
    return SimpleNamespace(spec=None, project_dir=tmp_path, name="prod", apps=lambda: ["web"], app=lambda name: "web", facts=lambda name: facts,
                           namespace=lambda name: "prod", store=lambda name, namespace: world.store)


@pytest.fixture
def faulty(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> World:
    from canary import api

    monkeypatch.delenv("CANARY_LAB_DIR", raising=False)
    timeline = Timeline(lambda t: 18.2)
    world = run_release(timeline)
    monkeypatch.setattr(api, "open_stack", lambda stack, project_dir=None, env=None: _workspace(world, tmp_path))
    monkeypatch.setattr(api, "_provider_factory", lambda release_spec: (lambda address: _Provider(timeline)))
    return world


def test_api_backtest_of_a_release_replays_its_journal_with_the_stack_files_analysis(faulty: World) -> None:
    from canary import api

    release_id = faulty.store.of("tick")[0].release
    result = api.backtest("test", release_id=release_id)
    assert result.exit_code == 0 and result.release == release_id and result.replay.same
    data = result.to_json()
    assert data["conclusion"]["ending"] == "rollback" and data["recorded"]["tick"] == 3 and data["differences"] == []
    assert result.lines()[0] == f"backtest of test/web, release {release_id} at its recorded tick times, judged by stack test's analysis as its stack file says now"


def test_api_backtest_of_a_window(faulty: World) -> None:
    from canary import api

    result = api.backtest("test", start=at(0), end=at(35), now=at(100))
    assert [t.time for t in result.replay.ticks] == [at(10), at(20), at(30)]
    assert result.to_json()["from"] == "2026-12-01T00:00:00Z" and result.interval == "10s"


def test_api_backtest_refuses_bad_options_before_opening_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    from canary import api

    monkeypatch.setattr(api, "open_stack", lambda *a, **k: pytest.fail("the stack was opened"))
    with pytest.raises(InvalidSpec, match="--to: is required with --from"):
        api.backtest("test", start="-1h")


def test_api_backtest_with_another_files_analysis(faulty: World, tmp_path: Path) -> None:
    from canary import api

    path = tmp_path / "Pulumi.looser.yaml"
    path.write_text("config:\n"
                    "  canary:prometheus: {address: http://elsewhere:9090}\n"
                    "  canary:analysis:\n"
                    "    interval: 10s\n"
                    "    stepWeight: 10\n"
                    "    metrics: [{name: request-error-rate, thresholdRange: {max: 50}}]\n")
    release_id = faulty.store.of("tick")[0].release
    result = api.backtest("test", release_id=release_id, file=path)
    assert result.config == f"the analysis of {path}" and not result.replay.same
    assert result.replay.ticks[0].outcome is Outcome.ADVANCE


def _first_tick_at(world: World, monkeypatch: pytest.MonkeyPatch, time: str) -> Timeline:
    """The journal as the store gives it, its first tick's time written as ``time``; the timeline Prometheus answers from."""
    from canary import api

    first = world.store.of("tick")[0]
    journal = [r.model_copy(update={"time": time}) if r is first else r for r in world.store.journal]
    monkeypatch.setattr(world.store, "records", lambda release=None: [r for r in journal if release is None or r.release == release])
    timeline = Timeline(lambda t: 18.2)
    monkeypatch.setattr(api, "_provider_factory", lambda release_spec: (lambda address: _Provider(timeline)))
    return timeline


@pytest.mark.parametrize("time", ["2026-12-01T01:00:14.000+01:00", "2026-12-01T00:00:14.000"], ids=["another offset", "no zone"])
def test_api_backtest_checks_the_queries_at_the_first_tick_read_as_the_replay_reads_it(faulty: World, monkeypatch: pytest.MonkeyPatch, time: str) -> None:
    """00:00:14 UTC either way: the queries are checked there (another offset sorted as text came after 00:00:24Z;
    a time without a zone is UTC, as the replay reads it)."""
    from canary import api

    timeline = _first_tick_at(faulty, monkeypatch, time)
    release_id = faulty.store.of("tick")[0].release
    result = api.backtest("test", release_id=release_id)
    assert timeline.asked[0][0] == 14.0 and result.replay.same


def test_api_backtest_refuses_a_tick_time_it_cannot_read(faulty: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from canary import api

    _first_tick_at(faulty, monkeypatch, "0 o'clock")
    release_id = faulty.store.of("tick")[0].release
    with pytest.raises(InvalidSpec, match=r"--release: has a tick without a readable time in its journal \(time \"0 o'clock\""):
        api.backtest("test", release_id=release_id)


def test_api_backtest_needs_prometheus_to_answer(faulty: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from canary import api
    from canary.errors import ProviderUnreachable

    monkeypatch.setattr(api, "_provider_factory", lambda release_spec: (lambda address: _Provider(Timeline(lambda t: 0.0), online=False)))
    with pytest.raises(ProviderUnreachable, match="did not answer: nothing can be replayed"):
        api.backtest("test", start="-1h", end="now")


def test_a_backtest_whose_prometheus_does_not_answer_names_its_origin_never_its_path(faulty: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # the address may be a Pulumi secret, with a token in its path or query
    from canary import api
    from canary.errors import ProviderUnreachable

    spec = faulty.release.spec
    assert spec.prometheus is not None
    prometheus = spec.prometheus.model_copy(update={"address": "https://prom.example.com:9443/api/prom/t0k3n-s3cr3t?apikey=hunter2"})
    faulty.release.spec = spec.model_copy(update={"prometheus": prometheus})
    monkeypatch.setattr(api, "_provider_factory", lambda release_spec: (lambda address: _Provider(Timeline(lambda t: 0.0), online=False)))
    with pytest.raises(ProviderUnreachable) as refused:
        api.backtest("test", start="-1h", end="now")
    assert "Prometheus at https://prom.example.com:9443 did not answer" in str(refused.value)
    assert "t0k3n" not in str(refused.value) and "hunter2" not in str(refused.value)


def test_cli_backtest_prints_the_replay_and_exits_0_even_when_it_differs(faulty: World) -> None:
    from canary import cli

    release_id = faulty.store.of("tick")[0].release
    done = CliRunner().invoke(cli.main, ["backtest", "test", "--release", release_id])
    assert done.exit_code == 0, done.output
    assert "replay:   would roll back at 00:00:34 (tick 3)" in done.output
    assert "differences: none — the replay makes the recorded decision at every recorded tick" in done.output
    done = CliRunner().invoke(cli.main, ["backtest", "test", "--from", "-2m", "--to", "now", "--json"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.output)
    assert data["recorded"] is None and data["conclusion"]["ending"] == "rollback" and data["exit_code"] == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--from", "yesterday", "--to", "now"], "--from: must be an RFC 3339 time with a timezone"),
    (["--release", "r1", "--from", "-1h"], "--release: replays the release's recorded ticks"),
    ([], "--release: or --from and --to is required"),
])
def test_cli_backtest_bad_input_exits_2_naming_the_option(args: list[str], message: str, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from canary import api, cli

    monkeypatch.delenv("CANARY_LAB_DIR", raising=False)
    monkeypatch.setattr(api, "open_stack", lambda *a, **k: pytest.fail("the stack was opened"))
    monkeypatch.setattr(sys, "argv", ["canary", "backtest", "prod", *args])
    with pytest.raises(SystemExit) as info:
        cli.run()
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "Traceback" not in err
