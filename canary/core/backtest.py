"""Backtest: replay an analysis config against what Prometheus recorded, tick by tick. Pure; no I/O.

``replay_window`` ticks every ``analysis.interval`` through a time window;
``replay_release`` ticks at a release's own recorded tick times and sets the
replay beside the journal's decisions, naming every tick where they differ.
Both are given ``provider_for_at(when)``, a provider factory that answers as
Prometheus would have at ``when`` (the adapter's ``at``), and run the same
``analysis.run_tick`` the release runs.

Each tick's context is built as ``release.machine`` builds it (``_analyse``):
the failure counts (from a journal's "analysis starts" record: a pre-rollout
webhook's failures count against failureLimit), the weight of the replayed
step, the warm-up since the replayed shift, the hold bound and the evidence
window while the step holds. Steps move as the machine moves them
(``_progressing``): a passing tick takes the next step of ``schedule.steps``
(blue/green's last step is the switch), a passing tick at the last step
promotes, a hold or a failed tick stays, a rollback ends the replay. An
inconclusive tick begins the wait for a person (WaitingDecision), in which the
replay goes on judging as ``_waiting_decision`` does: failures count and may
roll back, nothing advances, until the data or decisionTimeout ends it.

What a replay cannot know: the values were measured at the weights the route
really had then, so a replay that runs ahead of (or behind) the release
judges values measured at another weight than its own. Gates are taken from
the journal: a confirm-promotion (or confirm-traffic-increase) webhook that
said no right after a tick holds the replay there too (WaitingPromotion goes
on judging the last step), and a gate the release did not ask then says yes.
A step whose ``up`` waited for Pulumi's lock (another update's) right after a
tick (a state record's ``lock_held``) is held as at the traffic gate's no: the
next passing tick takes it.
Not replayed: pauses and requests (abort, promote, pause, continue); a rollout
webhook's recorded failure at a tick is carried over, as the machine adds it
to the tick; a resume's re-applied step restarts the warm-up as it did in the
release, before the first tick too. The replay is ``same`` as the release when
every recorded tick has its outcome, weight and step, and it ends as the
release did at the same deciding tick.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from canary.core import analysis, records, schedule, units
from canary.core.records import Check, Effect, Outcome, Tick, Verdict
from canary.core.spec import ReleaseSpec, Strategy
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
    """A recorded tick whose outcome, or the step (the weight, the iteration) it was judged at, the replay does not share."""

    tick: int
    time: datetime
    recorded_outcome: Outcome
    recorded_weight: int
    recorded_reason: str
    #: None: the replay had ended before this tick
    replay_outcome: Outcome | None
    replay_weight: int | None
    reason: str
    #: the steps for a person ("weight 20", "iteration 2 of 3", "blue/green's switch (weight 100)"); empty: the weight
    recorded_at: str = ""
    replay_at: str = ""
    #: the steps (1-based); None: the journal does not say (or the replay had ended)
    recorded_step: int | None = None
    replay_step: int | None = None

    def __str__(self) -> str:
        recorded_at = self.recorded_at or f"weight {self.recorded_weight}"
        replay = (f"replay {self.replay_outcome.value} at {self.replay_at or f'weight {self.replay_weight}'}" if self.replay_outcome is not None
                  else "replay had ended")
        return f"tick {self.tick} at {_clock(self.time)}: recorded {self.recorded_outcome.value} at {recorded_at}, {replay}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"tick": self.tick, "time": _iso(self.time), "recorded_outcome": self.recorded_outcome.value, "recorded_weight": self.recorded_weight,
                "recorded_step": self.recorded_step, "recorded_reason": self.recorded_reason,
                "replay_outcome": self.replay_outcome.value if self.replay_outcome else None, "replay_weight": self.replay_weight,
                "replay_step": self.replay_step, "reason": self.reason, "text": str(self)}


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
        """The replay made the journal's decisions at the journal's ticks, at the same steps, and ends as the release
        did at the same deciding tick (always False without a journal)."""
        return (self.recorded is not None and not self.differences and self.conclusion.ending is self.recorded.ending
                and self.conclusion.tick == self.recorded.tick)

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
            if self.same:
                out.append("differences: none — the replay makes the recorded decision at every recorded tick")
            elif not self.differences:
                out.append(f"differences: none at the recorded ticks, but the replay ends {self.conclusion.ending.value} (tick {self.conclusion.tick}) "
                           f"where the release ended {self.recorded.ending.value} (tick {self.recorded.tick})")
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


class _Mode(enum.Enum):
    """The machine's phase while it analyses: ``_progressing``, ``_waiting_promotion``, ``_waiting_decision``."""

    PROGRESSING = "Progressing"
    WAITING_PROMOTION = "WaitingPromotion"
    WAITING_DECISION = "WaitingDecision"


@dataclass
class _State:
    step: int = 1
    weight: int = 0
    shifted: datetime | None = None
    holding: datetime | None = None
    failed_in_row: int = 0
    failed_total: int = 0
    mode: _Mode = _Mode.PROGRESSING
    #: the inconclusive tick that began the wait for a decision
    deciding: ReplayedTick | None = None
    ticks: list[ReplayedTick] = field(default_factory=list)


#: ``gate_said_no(index, hook_type)``: whether the release's journal has that gate saying no right after tick ``index``
GateSaidNo = Callable[[int, str], bool]
_PROMOTION_GATE = "confirm-promotion"
_TRAFFIC_GATE = "confirm-traffic-increase"


def _shifts(steps: Sequence[Any]) -> list[bool]:
    """Which steps start a warm-up: every weight; of iterations only the first (the machine's ``_shift`` skips an
    unchanged route, and the analysis begins at the first step even when its route is the one at rest)."""
    return [not i or shape != steps[i - 1] for i, shape in enumerate(steps)]


def _where(config: Any, step: int | None, weight: int) -> str:
    """A step for a person: a weight, an A/B or blue/green iteration, or blue/green's switch."""
    if config.iterations is None or step is None:
        return f"weight {weight}"
    if schedule.is_switch(config, step):
        return "blue/green's switch (weight 100)"
    return f"iteration {step} of {config.iterations}"


def _replay(spec: ReleaseSpec, provider_for_at: ProviderForAt, times: Sequence[datetime], first_shift: datetime | None,
            shift_after: Callable[[int, datetime], datetime], reapplied_before: Callable[[int], datetime | None],
            carried: Callable[[int], tuple[Check, ...]], gate_said_no: GateSaidNo = lambda index, kind: False,
            failed_total: int = 0, lock_held: Callable[[int], bool] = lambda index: False) -> tuple[list[ReplayedTick], Conclusion]:
    config = spec.analysis
    steps = schedule.steps(config)
    moves = _shifts(steps)
    if config.skip_analysis:
        return [], Conclusion(Ending.SKIPPED, "would promote without analysis (analysis.skipAnalysis): no tick runs")
    # a pre-rollout webhook's failures count against failureLimit (the machine's _count_failure): they are in the state
    # the analysis starts from
    state = _State(weight=steps[0].weight, shifted=first_shift if moves[0] else None, failed_total=failed_total)
    for index, now in enumerate(times):
        if state.mode is _Mode.WAITING_DECISION and state.deciding is not None and index > 0 \
                and (times[index - 1] - state.deciding.time) > config.decision_timeout:
            # _waiting_decision rolls back before it judges again: no tick after the one that passed the bound
            return state.ticks, _deciding(state.deciding, len(state.ticks),
                                          f"no decision within decisionTimeout {units.format_duration(config.decision_timeout)}: "
                                          f"rolled back after {_clock(times[index - 1])} (tick {index}), not by a tick")
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
        replayed = ReplayedTick(number, now, state.step, state.weight, tick.outcome, tick.reason, tick.failed_in_row, tick.failed_total,
                                ctx, tick.checks, tick.score)
        state.ticks.append(replayed)
        state.failed_in_row, state.failed_total = tick.failed_in_row, tick.failed_total
        if tick.outcome is Outcome.ROLLBACK:
            waited = " while waiting for a decision" if state.mode is _Mode.WAITING_DECISION else \
                " while waiting for promotion" if state.mode is _Mode.WAITING_PROMOTION else ""
            return state.ticks, Conclusion(Ending.ROLLBACK, f"would roll back at {_clock(now)} (tick {number}){waited}: {tick.reason}", now, number, state.weight)
        if tick.outcome is Outcome.HOLD:
            state.holding = state.holding or now
        elif tick.outcome is Outcome.ADVANCE:
            state.holding = None
        if state.mode is _Mode.WAITING_DECISION:
            # _analyse while waiting: the counts go on and a failure may roll back, but nothing advances and an
            # inconclusive tick does not begin the wait again
            continue
        if tick.outcome is Outcome.INCONCLUSIVE:
            state.mode, state.deciding = _Mode.WAITING_DECISION, replayed
            continue
        if tick.outcome is not Outcome.ADVANCE:
            continue
        at_switch = schedule.is_switch(config, state.step)
        # the machine's _promotion_gate: after the last step, or (blue/green) before the switch; not after the switch
        promotion = not at_switch and (state.step == len(steps) or schedule.is_switch(config, state.step + 1))
        if promotion and gate_said_no(index, _PROMOTION_GATE):
            state.mode = _Mode.WAITING_PROMOTION  # it keeps analysing at the last step; a later passing tick asks again
            continue
        if state.step == len(steps):
            passed = (f"in each of the {config.iterations} iterations" + (" and at the switch" if at_switch else "")
                      if config.iterations is not None else f"up to weight {state.weight}")
            return state.ticks, Conclusion(Ending.PROMOTE, f"would promote at {_clock(now)} (tick {number}): every check passed {passed}",
                                           now, number, state.weight)
        if not promotion and config.kind is Strategy.CANARY and gate_said_no(index, _TRAFFIC_GATE):
            continue  # the release held its weight on the gate's no, analysis going on
        if not promotion and lock_held(index):
            continue  # the machine's _step: its up kept waiting for Pulumi's lock, the release held its weight as at the gate's no
        state.mode = _Mode.PROGRESSING
        state.step += 1
        state.weight = steps[state.step - 1].weight
        if moves[state.step - 1]:
            state.shifted = shift_after(index, now)
    last = times[-1] if times else None
    if state.mode is _Mode.WAITING_DECISION and state.deciding is not None:
        return state.ticks, _deciding(state.deciding, len(state.ticks), "")
    where = _where(config, state.step, state.weight)
    if state.mode is _Mode.WAITING_PROMOTION:
        return state.ticks, Conclusion(Ending.RUNNING, f"would still be waiting for promotion at the end of the data: every check passed, "
                                                       f"the confirm-promotion gate said no (as the journal records it) at {where} after {len(state.ticks)} ticks",
                                       last, len(state.ticks), state.weight)
    return state.ticks, Conclusion(Ending.RUNNING, f"would still be running at the end of the data: {where} after {len(state.ticks)} ticks",
                                   last, len(state.ticks), state.weight)


def _deciding(began: ReplayedTick, count: int, then: str) -> Conclusion:
    """The wait for a decision that ``began`` started, ``count`` ticks replayed in all."""
    waited = count - began.tick
    after = f"; {waited} more tick{'s' if waited != 1 else ''} judged while waiting, none rolled back" if waited else ""
    return Conclusion(Ending.DECISION, f"would wait for a decision (WaitingDecision) from {_clock(began.time)} (tick {began.tick}): {began.reason}{after}"
                                       + (f"; {then}" if then else ""), began.time, began.tick, began.weight)


def replay_window(spec: ReleaseSpec, provider_for_at: ProviderForAt, start: datetime, end: datetime) -> Replay:
    """Replay ``spec``'s analysis from ``start`` (the first step's shift) to ``end``, a tick every interval."""
    times = window_times(start, end, spec.analysis.interval)
    ticks, conclusion = _replay(spec, provider_for_at, times, start, lambda index, now: now, lambda index: None, lambda index: ())
    notes = ["the values are what Prometheus recorded at each tick's time, whatever weight the route had then: "
             "the replay judges them, it cannot know what its own weights would have measured",
             *_data_notes(ticks)]
    return Replay(tuple(ticks), conclusion, notes=tuple(notes))


def recorded_tick_times(journal: Iterable[Any]) -> list[datetime]:
    """The times of a journal's ticks, as the replay reads them (a time without a zone is UTC), in the journal's order;
    InvalidSpec naming ``--release`` when the time of any record cannot be read: the replay puts the journal in time
    order (the shifts and gates' answers between two ticks), and one record out of place misplaces them, as
    ``report`` refuses it for its picture."""
    entries = list(journal)
    times = [_time(r.time) for r in entries]
    unread = [r for r, when in zip(entries, times, strict=True) if when is None]
    if unread:
        kinds = sorted({r.type for r in unread})
        raise InvalidSpec([Problem("--release", unread[0].release, f"has a {unread[0].type} without a readable time in its journal (time "
                                   f"{unread[0].time!r}; {len(unread)} such record{'s' if len(unread) > 1 else ''}: {', '.join(kinds)}): "
                                   "it cannot be replayed")], "backtest")
    return [when for r, when in zip(entries, times, strict=True) if r.type == "tick" and when is not None]


def replay_release(spec: ReleaseSpec, provider_for_at: ProviderForAt, journal: Iterable[Any]) -> Replay:
    """Replay ``spec``'s analysis at a release's recorded tick times and compare it with the recorded decisions.

    ``journal``: the release's records (``records.parse`` models), in any order.
    """
    entries = list(journal)
    recorded_tick_times(entries)  # every time readable, or refused: sorted below by them
    entries.sort(key=lambda r: _time(r.time) or datetime.min.replace(tzinfo=UTC))
    recorded = [r for r in entries if isinstance(r, Tick)]
    if not recorded:
        raise InvalidSpec([Problem("--release", entries[0].release if entries else "?", "has no recorded tick to replay")], "backtest")
    if len(recorded) > MAX_TICKS:
        raise InvalidSpec([Problem("--release", recorded[0].release, f"has {len(recorded)} recorded ticks; at most {MAX_TICKS} are replayed")], "backtest")
    tick_times = recorded_tick_times(recorded)
    positions = [i for i, r in enumerate(entries) if isinstance(r, Tick)]
    shifts = _recorded_shifts(entries)

    def between(index: int, reapplied: bool) -> list[datetime]:
        low = tick_times[index - 1] if index > 0 else datetime.min.replace(tzinfo=UTC)
        return [s.time for s in shifts if s.reapplied is reapplied and low < s.time <= tick_times[index]]

    # the step the first tick judged began at the last shift before it: the first one, or a resume's re-apply of it
    before_first = [s.time for s in shifts if s.time <= tick_times[0]]
    first_shift = before_first[-1] if before_first else tick_times[0] - spec.analysis.interval

    def shift_after(index: int, now: datetime) -> datetime:
        # the release shifted right after this tick: when its route was verified, if it did shift then
        later = between(index + 1, False) if index + 1 < len(tick_times) else []
        return later[0] if later else now

    def reapplied_before(index: int) -> datetime | None:
        found = between(index, True) if index > 0 else []  # before the first tick: the first shift is taken from it
        return found[-1] if found else None

    def carried(index: int) -> tuple[Check, ...]:
        return tuple(c for c in recorded[index].checks if c.metric.startswith("webhook:") and c.effect is Effect.FAIL)

    def after(index: int) -> list[Any]:
        # the records between this tick and the next
        return entries[positions[index] + 1:positions[index + 1] if index + 1 < len(positions) else len(entries)]

    def gate_said_no(index: int, kind: str) -> bool:
        # the gate's answer when the release asked it, between this tick and the next
        return any(e.type == "webhook" and e.hook_type == kind and not e.ok for e in after(index))

    def lock_held(index: int) -> bool:
        # the step the release tried after this tick waited for Pulumi's lock: its state record says so, and no step taken
        return any(e.type == "state" and "lock_held" in (e.details or {}) for e in after(index))

    starts = [e for e in entries[:positions[0]] if e.type == "state" and e.message == "analysis starts"]
    failed_total = starts[-1].failed_total if starts else 0
    ticks, conclusion = _replay(spec, provider_for_at, tick_times, first_shift, shift_after, reapplied_before, carried, gate_said_no, failed_total,
                                lock_held)
    ending = _recorded_ending(recorded, entries)
    differences = _compare(spec, recorded, _recorded_steps(entries), tick_times, ticks, conclusion)
    notes = ["the recorded values were measured at the weights the release really ran: the replay judges those values, "
             "it cannot know what another weight would have measured"]
    if failed_total:
        notes.append(f"the analysis started with {failed_total} failed check(s) in all (pre-rollout webhooks), as the release did")
    if len(ticks) == len(recorded) and conclusion.ending is Ending.RUNNING:
        notes.append(f"the journal ends at tick {len(recorded)} ({ending.text}): the canary had no traffic after it, so the replay cannot go further")
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


_ITERATION = re.compile(r"iteration (\d+) of \d+ at ")
_SHIFTING = re.compile(r"(?:shifting to|re-applying) step (\d+): ")


def _recorded_steps(entries: Sequence[Any]) -> list[int | None]:
    """The step each recorded tick judged (None: the journal does not say), from the state records before it: a
    shift's ``step`` detail, an iteration's "iteration k of N" (the machine's ``_shift`` of an unchanged route), or
    a "shifting to step k" / "re-applying step k" the route was then verified at (journals without the detail)."""
    out: list[int | None] = []
    step: int | None = None
    pending: int | None = None
    for entry in entries:
        if entry.type == "tick":
            out.append(step)
        elif entry.type == "state":
            details: Mapping[str, Any] = entry.details or {}
            iteration, shifting = _ITERATION.match(entry.message), _SHIFTING.match(entry.message)
            if isinstance(details.get("step"), int) and not isinstance(details.get("step"), bool):
                step = details["step"]
            elif iteration:
                step = int(iteration[1])
            elif shifting:
                pending = int(shifting[1])
            elif entry.message.endswith(_SHIFTED) and pending is not None:
                step = pending
            if entry.message.endswith(_SHIFTED):
                pending = None
    return out


def _compare(spec: ReleaseSpec, recorded: Sequence[Tick], steps: Sequence[int | None], times: Sequence[datetime], ticks: Sequence[ReplayedTick],
             conclusion: Conclusion) -> list[Difference]:
    config = spec.analysis
    out = []
    for rec, step, time, rep in zip(recorded, steps, times, ticks, strict=False):
        if rec.outcome is not rep.outcome or rec.weight != rep.weight or (step is not None and step != rep.step):
            out.append(Difference(rep.tick, time, rec.outcome, rec.weight, rec.reason, rep.outcome, rep.weight, rep.reason,
                                  _where(config, step, rec.weight), _where(config, rep.step, rep.weight), step, rep.step))
    # a recorded tick after the replay ended is one the replay would not have run (ticks while waiting are replayed)
    for offset, rec in enumerate(recorded[len(ticks):], start=len(ticks)):
        out.append(Difference(offset + 1, times[offset], rec.outcome, rec.weight, rec.reason, None, None,
                              f"the replay ended at tick {conclusion.tick}: {conclusion.text}", _where(config, steps[offset], rec.weight),
                              recorded_step=steps[offset]))
    return out


_PROMOTED = {"Promoting", "Finalising", "Succeeded", "PromotedUnverified"}
#: the phases whose ticks may decide: a passing tick moves on (a gate asked again after one in WaitingPromotion)
_DECIDING = {"Progressing", "WaitingPromotion"}


def _recorded_ending(recorded: Sequence[Tick], entries: Sequence[Any]) -> Conclusion:
    """How the release ended, at the tick that decided it: the last one, or the last one it ran while progressing or
    waiting for promotion (later ticks came while it waited for a person's decision, and did not roll back)."""
    phase = next((e.phase for e in reversed(entries) if e.phase), "")
    decided = len(recorded)
    if recorded[-1].outcome is not Outcome.ROLLBACK:
        progressing = [i for i, t in enumerate(recorded) if t.phase in _DECIDING]
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
        notes.append(f"gates said no during the release ({', '.join(gates)}): the replay takes the answers the journal records after "
                     "each tick, and a yes where the release did not ask")
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
    """A journal's time in UTC (one without a zone is UTC, as the recorder writes them); None: unreadable."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return when.astimezone(UTC) if when.tzinfo is not None else when.replace(tzinfo=UTC)
    except (ValueError, OverflowError, TypeError, AttributeError):
        return None


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clock(when: datetime | None) -> str:
    return "?" if when is None else when.astimezone(UTC).strftime("%H:%M:%S")


__all__ = ["MAX_TICKS", "Conclusion", "Difference", "Ending", "Replay", "ReplayedTick", "check_options", "parse_time", "recorded_tick_times",
           "replay_release", "replay_window", "window_times"]
