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


def test_an_inconclusive_replay_stops_where_the_release_waited_for_a_person() -> None:
    timeline, mutate, _ = SCENARIOS["inconclusive"]
    world = run_release(timeline, mutate)
    replay = backtest.replay_release(world.release.spec, timeline.at, world.store.journal)
    assert len(replay.ticks) == 1 < len(world.store.of("tick"))
    assert replay.conclusion.text.startswith("would wait for a decision (WaitingDecision) from 00:00:14 (tick 1): inconclusive at weight 10")
    assert any("came while the release waited" in note for note in replay.notes)


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


def test_api_backtest_needs_prometheus_to_answer(faulty: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from canary import api
    from canary.errors import ProviderUnreachable

    monkeypatch.setattr(api, "_provider_factory", lambda release_spec: (lambda address: _Provider(Timeline(lambda t: 0.0), online=False)))
    with pytest.raises(ProviderUnreachable, match="did not answer: nothing can be replayed"):
        api.backtest("test", start="-1h", end="now")


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
