"""Backtest: replay an analysis config against what Prometheus recorded, tick by tick. Pure; no I/O.

``replay_window`` ticks every ``analysis.interval`` through a time window;
``replay_release`` ticks at a release's own recorded tick times and sets the
replay beside the journal's decisions, naming every tick where they differ.
Both are given ``provider_for_at(when)``, a provider factory that answers as
Prometheus would have at ``when`` (the adapter's ``at``), and run the same
``analysis.run_tick`` the release runs.

Each tick's context is built as ``release.machine`` builds it (``_analyse``):
the failure counts, the weight of the replayed step, the warm-up since the
replayed shift, the hold bound and the evidence window while the step holds.
Steps move as the machine moves them (``_progressing``): a passing tick takes
the next step of ``schedule.steps``, a passing tick at the last step promotes,
a hold or a failed tick stays, a rollback ends the replay, and an inconclusive
tick ends it waiting for a person (WaitingDecision).

What a replay cannot know: the values were measured at the weights the route
really had then, so a replay that runs ahead of (or behind) the release
judges values measured at another weight than its own. Not replayed: gates
(``confirm-*`` webhooks), pauses and requests; a rollout webhook's recorded
failure at a tick is carried over, as the machine adds it to the tick; a
resume's re-applied step restarts the warm-up as it did in the release.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from canary.core import analysis, records, schedule, units
from canary.core.records import Check, Effect, Outcome, Tick, Verdict
from canary.core.spec import ReleaseSpec
from canary.errors import InvalidSpec, Problem

#: The most ticks one backtest replays: each costs a query per metric.
MAX_TICKS = 2000
#: The message of the state record that ends a shift (journals written before the record carried ``shifted_at``).
_SHIFTED = "is live in the route and accepted by the gateway"
_TIME_RULE = ("must be an RFC 3339 time with a timezone (2026-12-01T07:30:00Z, 2026-12-01T08:30:00+01:00), "
              "`now`, or a time before now such as -30m or -2h")

ProviderForAt = Callable[[datetime], analysis.ProviderFor]


class Ending(enum.StrEnum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    #: an inconclusive tick: the release waits for canary promote or abort (WaitingDecision)
    DECISION = "decision"
    #: the data ended before the release did
    RUNNING = "running"
    #: analysis.skipAnalysis: promoted without a tick
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Conclusion:
    """How a release ends (or would have ended): what, when, at which tick and weight, and why."""

    ending: Ending
    text: str
    time: datetime | None = None
    tick: int = 0
    weight: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"ending": self.ending.value, "text": self.text, "time": _iso(self.time), "tick": self.tick, "weight": self.weight}


@dataclass(frozen=True)
class ReplayedTick:
    tick: int
    time: datetime
    #: the step of the schedule (1-based): a weight's index, or an A/B or blue/green iteration
    step: int
    weight: int
    outcome: Outcome
    reason: str
    failed_in_row: int
    failed_total: int
    context: analysis.TickContext
    checks: tuple[Check, ...] = ()
    score: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"tick": self.tick, "time": _iso(self.time), "step": self.step, "weight": self.weight, "outcome": self.outcome.value,
                "reason": self.reason, "failed_in_row": self.failed_in_row, "failed_total": self.failed_total, "score": self.score,
                "warming_up": self.context.warming_up, "held_too_long": self.context.held_too_long,
                "evidence_window": self.context.evidence_window, "checks": [records.dump(c) for c in self.checks]}


@dataclass(frozen=True)
class Difference:
    """A recorded tick whose outcome, or the weight it was judged at, the replay does not share."""

    tick: int
    time: datetime
    recorded_outcome: Outcome
    recorded_weight: int
    recorded_reason: str
    #: None: the replay had ended before this tick
    replay_outcome: Outcome | None
    replay_weight: int | None
    reason: str

    def __str__(self) -> str:
        replay = f"replay {self.replay_outcome.value} at weight {self.replay_weight}" if self.replay_outcome is not None else "replay had ended"
        return f"tick {self.tick} at {_clock(self.time)}: recorded {self.recorded_outcome.value} at weight {self.recorded_weight}, {replay}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"tick": self.tick, "time": _iso(self.time), "recorded_outcome": self.recorded_outcome.value, "recorded_weight": self.recorded_weight,
                "recorded_reason": self.recorded_reason, "replay_outcome": self.replay_outcome.value if self.replay_outcome else None,
                "replay_weight": self.replay_weight, "reason": self.reason, "text": str(self)}


@dataclass(frozen=True)
class Replay:
    ticks: tuple[ReplayedTick, ...]
    conclusion: Conclusion
    #: the journal's own ending (``replay_release`` only)
    recorded: Conclusion | None = None
    differences: tuple[Difference, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def same(self) -> bool:
        """The replay made the journal's decisions at the journal's ticks (always False without a journal)."""
        return self.recorded is not None and not self.differences

    def to_json(self) -> dict[str, Any]:
        return {"ticks": [t.to_json() for t in self.ticks], "conclusion": self.conclusion.to_json(),
                "recorded": self.recorded.to_json() if self.recorded else None, "same": self.same,
                "differences": [d.to_json() for d in self.differences], "notes": list(self.notes)}

    def lines(self) -> list[str]:
        """The replay for a person: one line per tick, the conclusion, the differences, the notes."""
        out = [f"{t.tick:>5}  {_clock(t.time)}  w={t.weight:>3}  {t.outcome.value:<12}  {t.reason}" for t in self.ticks]
        out.append(f"replay:   {self.conclusion.text}")
        if self.recorded is not None:
            out.append(f"recorded: {self.recorded.text}")
            if not self.differences:
                out.append("differences: none — the replay makes the recorded decision at every recorded tick")
            else:
                out.append(f"differences: {len(self.differences)}")
                out.extend(f"  {line}" for line in _collapsed(self.differences))
        out.extend(f"note: {note}" for note in self.notes)
        return out


# --- input --------------------------------------------------------------------------------------


def parse_time(text: str | datetime, option: str, now: datetime) -> datetime:
    """A time given on the command line: RFC 3339 with a timezone, ``now``, or ``-DURATION`` before now."""
    if isinstance(text, datetime):
        if text.tzinfo is None:
            raise InvalidSpec([Problem(option, text.isoformat(), _TIME_RULE)], "backtest")
        return text.astimezone(UTC)
    value = text.strip()
    if value == "now":
        return now
    if value.startswith("-"):
        try:
            return now - units.parse_duration(value[1:])
        except ValueError as exc:
            raise InvalidSpec([Problem(option, text, f"{_TIME_RULE}; the duration {exc}")], "backtest") from exc
    try:
        when = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidSpec([Problem(option, text, _TIME_RULE)], "backtest") from exc
    if when.tzinfo is None:
        raise InvalidSpec([Problem(option, text, f"{_TIME_RULE}: it has no timezone")], "backtest")
    try:
        return when.astimezone(UTC)
    except OverflowError as exc:  # year 1 ahead of UTC, year 9999 behind it
        raise InvalidSpec([Problem(option, text, f"{_TIME_RULE}: it is out of the range of dates")], "backtest") from exc


def check_options(release_id: str | None, start: str | datetime | None, end: str | datetime | None, now: datetime) -> tuple[datetime | None, datetime | None]:
    """Either a release or a window (both ends, in the past, in order); every problem at once."""
    problems: list[Problem] = []
    if release_id is not None and (start is not None or end is not None):
        problems.append(Problem("--release", release_id, "replays the release's recorded ticks: give it without --from/--to, or a window without it"))
    elif release_id is None and start is None and end is None:
        problems.append(Problem("--release", "nothing", "or --from and --to is required: a release to replay, or the window to replay"))
    elif release_id is None and (start is None) != (end is None):
        missing, given = ("--to", "--from") if end is None else ("--from", "--to")
        problems.append(Problem(missing, "nothing", f"is required with {given}"))
    times: dict[str, datetime] = {}
    for option, value in (("--from", start), ("--to", end)):
        if value is None:
            continue
        try:
            times[option] = parse_time(value, option, now)
        except InvalidSpec as exc:
            problems.extend(exc.problems)
    first, last = times.get("--from"), times.get("--to")
    if first is not None and last is not None and first >= last:
        problems.append(Problem("--to", _iso(last) or "", f"must be after --from ({_iso(first)})"))
    if last is not None and last > now:
        problems.append(Problem("--to", _iso(last) or "", f"is in the future (now is {_iso(now)}): nothing was recorded there yet"))
    if problems:
        raise InvalidSpec(problems, "backtest")
    return first, last


def window_times(start: datetime, end: datetime, interval: timedelta) -> list[datetime]:
    """The tick times of a window: one interval after the start (the first step's shift), then every interval, up to the end."""
    count = int((end - start) / interval)
    if count < 1:
        raise InvalidSpec([Problem("--to", _iso(end) or "", f"must be at least analysis.interval ({units.format_duration(interval)}) after --from: no tick fits")], "backtest")
    if count > MAX_TICKS:
        raise InvalidSpec([Problem("--from", _iso(start) or "", f"the window holds {count} ticks of analysis.interval {units.format_duration(interval)}; "
                                   f"at most {MAX_TICKS} are replayed: shorten the window")], "backtest")
    return [start + interval * k for k in range(1, count + 1)]


# --- the replay ---------------------------------------------------------------------------------


@dataclass
class _Shift:
    """A recorded shift: when the route was verified at a step, and whether a resume re-applied it."""

    time: datetime
    reapplied: bool = False


@dataclass
class _State:
    step: int = 1
    weight: int = 0
    shifted: datetime | None = None
    holding: datetime | None = None
    failed_in_row: int = 0
    failed_total: int = 0
    ticks: list[ReplayedTick] = field(default_factory=list)


def _shifts(steps: Sequence[Any]) -> list[bool]:
    """Which steps start a warm-up: every weight; of iterations only the first (the machine's ``_shift`` skips an
    unchanged route, and the analysis begins at the first step even when its route is the one at rest)."""
    return [not i or shape != steps[i - 1] for i, shape in enumerate(steps)]


def _replay(spec: ReleaseSpec, provider_for_at: ProviderForAt, times: Sequence[datetime], first_shift: datetime | None,
            shift_after: Callable[[int, datetime], datetime], reapplied_before: Callable[[int], datetime | None],
            carried: Callable[[int], tuple[Check, ...]]) -> tuple[list[ReplayedTick], Conclusion]:
    config = spec.analysis
    steps = schedule.steps(config)
    moves = _shifts(steps)
    if config.skip_analysis:
        return [], Conclusion(Ending.SKIPPED, "would promote without analysis (analysis.skipAnalysis): no tick runs")
    state = _State(weight=steps[0].weight, shifted=first_shift if moves[0] else None)
    for index, now in enumerate(times):
        reapplied = reapplied_before(index)
        if reapplied is not None:
            # a resume put the step back in the route: the machine's _shift(again=True) restarts the warm-up and the hold
            state.shifted, state.holding = reapplied, None
        ctx = analysis.TickContext(
            failed_in_row=state.failed_in_row, failed_total=state.failed_total, weight=state.weight,
            warming_up=state.shifted is not None and (now - state.shifted) < config.warmup,
            held_too_long=state.holding is not None and (now - state.holding) > config.hold_bound,
            evidence_window=(now - state.shifted).total_seconds() if state.holding is not None and state.shifted is not None else None,
        )
        tick = analysis.run_tick(spec, provider_for_at(now), ctx)
        extra = carried(index)
        if extra:
            tick = analysis.decide_for(spec, tick.checks + extra, ctx)  # as the machine does with the rollout webhooks' failures
        number = index + 1
        state.ticks.append(ReplayedTick(number, now, state.step, state.weight, tick.outcome, tick.reason, tick.failed_in_row, tick.failed_total,
                                        ctx, tick.checks, tick.score))
        state.failed_in_row, state.failed_total = tick.failed_in_row, tick.failed_total
        if tick.outcome is Outcome.ROLLBACK:
            return state.ticks, Conclusion(Ending.ROLLBACK, f"would roll back at {_clock(now)} (tick {number}): {tick.reason}", now, number, state.weight)
        if tick.outcome is Outcome.INCONCLUSIVE:
            return state.ticks, Conclusion(Ending.DECISION, f"would wait for a decision (WaitingDecision) from {_clock(now)} (tick {number}): {tick.reason}",
                                           now, number, state.weight)
        if tick.outcome is Outcome.HOLD:
            state.holding = state.holding or now
        elif tick.outcome is Outcome.ADVANCE:
            state.holding = None
            if state.step == len(steps):
                passed = (f"in each of the {config.iterations} iterations" + (" and at the switch" if schedule.is_switch(config, state.step) else "")
                          if config.iterations is not None else f"up to weight {state.weight}")
                return state.ticks, Conclusion(Ending.PROMOTE, f"would promote at {_clock(now)} (tick {number}): every check passed {passed}",
                                               now, number, state.weight)
            state.step += 1
            state.weight = steps[state.step - 1].weight
            if moves[state.step - 1]:
                state.shifted = shift_after(index, now)
    where = (("blue/green's switch (all traffic on green)" if schedule.is_switch(config, state.step) else f"iteration {state.step} of {config.iterations}")
             if config.iterations is not None else f"weight {state.weight}")
    last = times[-1] if times else None
    return state.ticks, Conclusion(Ending.RUNNING, f"would still be running at the end of the data: {where} after {len(state.ticks)} ticks",
                                   last, len(state.ticks), state.weight)


def replay_window(spec: ReleaseSpec, provider_for_at: ProviderForAt, start: datetime, end: datetime) -> Replay:
    """Replay ``spec``'s analysis from ``start`` (the first step's shift) to ``end``, a tick every interval."""
    times = window_times(start, end, spec.analysis.interval)
    ticks, conclusion = _replay(spec, provider_for_at, times, start, lambda index, now: now, lambda index: None, lambda index: ())
    notes = ["the values are what Prometheus recorded at each tick's time, whatever weight the route had then: "
             "the replay judges them, it cannot know what its own weights would have measured",
             *_data_notes(ticks)]
    return Replay(tuple(ticks), conclusion, notes=tuple(notes))


def replay_release(spec: ReleaseSpec, provider_for_at: ProviderForAt, journal: Iterable[Any]) -> Replay:
    """Replay ``spec``'s analysis at a release's recorded tick times and compare it with the recorded decisions.

    ``journal``: the release's records (``records.parse`` models), in any order.
    """
    entries = sorted(journal, key=lambda r: _time(r.time) or datetime.min.replace(tzinfo=UTC))
    recorded = [r for r in entries if isinstance(r, Tick)]
    if not recorded:
        raise InvalidSpec([Problem("--release", entries[0].release if entries else "?", "has no recorded tick to replay")], "backtest")
    if len(recorded) > MAX_TICKS:
        raise InvalidSpec([Problem("--release", recorded[0].release, f"has {len(recorded)} recorded ticks; at most {MAX_TICKS} are replayed")], "backtest")
    times = [_time(t.time) for t in recorded]
    if any(t is None for t in times):
        raise InvalidSpec([Problem("--release", recorded[0].release, "has a tick without a readable time in its journal")], "backtest")
    tick_times: list[datetime] = [t for t in times if t is not None]
    shifts = _recorded_shifts(entries)

    def between(index: int, reapplied: bool) -> list[datetime]:
        low = tick_times[index - 1] if index > 0 else datetime.min.replace(tzinfo=UTC)
        return [s.time for s in shifts if s.reapplied is reapplied and low < s.time <= tick_times[index]]

    before_first = [s.time for s in shifts if not s.reapplied and s.time <= tick_times[0]]
    first_shift = before_first[-1] if before_first else tick_times[0] - spec.analysis.interval

    def shift_after(index: int, now: datetime) -> datetime:
        # the release shifted right after this tick: when its route was verified, if it did shift then
        later = between(index + 1, False) if index + 1 < len(tick_times) else []
        return later[0] if later else now

    def reapplied_before(index: int) -> datetime | None:
        found = between(index, True) if index > 0 else []
        return found[-1] if found else None

    def carried(index: int) -> tuple[Check, ...]:
        return tuple(c for c in recorded[index].checks if c.metric.startswith("webhook:") and c.effect is Effect.FAIL)

    ticks, conclusion = _replay(spec, provider_for_at, tick_times, first_shift, shift_after, reapplied_before, carried)
    ending = _recorded_ending(recorded, entries)
    differences = _compare(recorded, tick_times, ticks, conclusion)
    notes = ["the recorded values were measured at the weights the release really ran: the replay judges those values, "
             "it cannot know what another weight would have measured"]
    if len(ticks) == len(recorded) and conclusion.ending is Ending.RUNNING:
        notes.append(f"the journal ends at tick {len(recorded)} ({ending.text}): the canary had no traffic after it, so the replay cannot go further")
    elif len(ticks) < len(recorded) and not differences:
        notes.append(f"recorded ticks {len(ticks) + 1}–{len(recorded)} came while the release waited (a person or a gate): not replayed")
    notes.extend(_steering_notes(entries))
    notes.extend(_data_notes(ticks))
    return Replay(tuple(ticks), conclusion, ending, tuple(differences), tuple(notes))


def _recorded_shifts(entries: Sequence[Any]) -> list[_Shift]:
    """The moments the release's route was verified at a step (its ``shifted_at``), from its state records."""
    out = []
    previous = ""
    for entry in (e for e in entries if e.type == "state"):
        details: Mapping[str, Any] = entry.details or {}
        if "shifted_at" in details:
            when = _time(str(details["shifted_at"]))
            if when is not None:
                out.append(_Shift(when, bool(details.get("reapplied"))))
        elif entry.message.endswith(_SHIFTED):
            when = _time(entry.time)
            if when is not None:
                out.append(_Shift(when, previous.startswith("re-applying")))
        previous = entry.message
    return out


def _compare(recorded: Sequence[Tick], times: Sequence[datetime], ticks: Sequence[ReplayedTick], conclusion: Conclusion) -> list[Difference]:
    out = []
    for rec, time, rep in zip(recorded, times, ticks, strict=False):
        if rec.outcome is not rep.outcome or rec.weight != rep.weight:
            out.append(Difference(rep.tick, time, rec.outcome, rec.weight, rec.reason, rep.outcome, rep.weight, rep.reason))
    if len(ticks) < len(recorded):
        last = ticks[-1] if ticks else None
        same_end = last is not None and recorded[len(ticks) - 1].outcome is last.outcome and recorded[len(ticks) - 1].weight == last.weight
        if not same_end:
            for offset, rec in enumerate(recorded[len(ticks):], start=len(ticks)):
                out.append(Difference(offset + 1, times[offset], rec.outcome, rec.weight, rec.reason, None, None,
                                      f"the replay ended at tick {conclusion.tick}: {conclusion.text}"))
    return out


_PROMOTED = {"Promoting", "Finalising", "Succeeded", "PromotedUnverified"}


def _recorded_ending(recorded: Sequence[Tick], entries: Sequence[Any]) -> Conclusion:
    """How the release ended, at the tick that decided it: the last one, or the last one it ran while progressing
    (later ticks came while it waited for a person or a gate)."""
    phase = next((e.phase for e in reversed(entries) if e.phase), "")
    decided = len(recorded)
    if recorded[-1].outcome is not Outcome.ROLLBACK:
        progressing = [i for i, t in enumerate(recorded) if t.phase == "Progressing"]
        decided = progressing[-1] + 1 if progressing else decided
    tick = recorded[decided - 1]
    when = _time(tick.time)
    at = f"{_clock(when)} (tick {decided})" if when else f"tick {decided}"
    if tick.outcome is Outcome.ROLLBACK:
        return Conclusion(Ending.ROLLBACK, f"rolled back at {at}: {tick.reason}", when, decided, tick.weight)
    if tick.outcome is Outcome.INCONCLUSIVE:
        return Conclusion(Ending.DECISION, f"waited for a decision from {at}: {tick.reason}; the release then ended {phase or '?'}",
                          when, decided, tick.weight)
    if phase in _PROMOTED:
        return Conclusion(Ending.PROMOTE, f"promoted after {at}; the release ended {phase}", when, decided, tick.weight)
    if phase in ("Failed", "Aborted", "RollingBack"):
        return Conclusion(Ending.ROLLBACK, f"{'aborted' if phase == 'Aborted' else 'rolled back'} after {at}, not by a tick; the release ended {phase}",
                          when, decided, tick.weight)
    return Conclusion(Ending.RUNNING, f"phase {phase or '?'} after {at}", when, decided, tick.weight)


def _steering_notes(entries: Sequence[Any]) -> list[str]:
    """Requests and gates the replay does not follow, when the journal holds any."""
    steering = sorted({f"{e.request} by {e.by or '?'}" for e in entries if e.type == "request"})
    gates = sorted({f"{e.name} ({e.hook_type})" for e in entries if e.type == "webhook" and not e.ok and e.hook_type.startswith("confirm-")})
    resumed = [e for e in entries if e.type == "event" and e.message.startswith("resuming release")]
    notes = []
    if resumed:
        notes.append(f"the release was resumed {len(resumed)} time(s): a resume judges its step again before moving on; "
                     "the replay follows only the warm-up it restarts")
    if steering:
        notes.append(f"the release was steered ({', '.join(steering)}): the replay follows no request, so ticks after one may differ for that reason")
    if gates:
        notes.append(f"gates said no during the release ({', '.join(gates)}): the replay takes its steps without gates")
    return notes


def _data_notes(ticks: Sequence[ReplayedTick]) -> list[str]:
    checks = [c for t in ticks for c in t.checks if c.effect is not Effect.NONE and not c.metric.startswith("webhook:")]
    notes = []
    if checks and all(c.verdict is Verdict.NO_DATA for c in checks):
        notes.append("Prometheus had no data for any check at any tick: is the time within its retention, and did the canary have traffic then?")
    unreachable = sum(1 for c in checks if "ProviderUnreachable" in c.reason)
    if unreachable:
        notes.append(f"{unreachable} checks could not reach their Prometheus: those failures say nothing about the canary")
    return notes


def _collapsed(differences: Sequence[Difference]) -> list[str]:
    """The differences for a person: the ticks after the replay ended as one line."""
    named = [str(d) for d in differences if d.replay_outcome is not None]
    ended = [d for d in differences if d.replay_outcome is None]
    if ended:
        first, last = ended[0], ended[-1]
        span = f"tick {first.tick}" if first is last else f"ticks {first.tick}–{last.tick}"
        outcomes = ", ".join(sorted({d.recorded_outcome.value for d in ended}))
        named.append(f"{span} ({_clock(first.time)}–{_clock(last.time)}): recorded {outcomes}; {first.reason}")
    return named


def _time(text: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clock(when: datetime | None) -> str:
    return "?" if when is None else when.astimezone(UTC).strftime("%H:%M:%S")


__all__ = ["MAX_TICKS", "Conclusion", "Difference", "Ending", "Replay", "ReplayedTick", "check_options", "parse_time", "replay_release",
           "replay_window", "window_times"]
