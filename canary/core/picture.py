"""A release as a picture, before any drawing: the series, markers and decision table of a report.

``build`` turns one release's journal records (``canary.core.records``) into a
plain model — the canary's weight over time, each metric's canary and stable
values with the band they had to stay in, the failed checks, the gates and
requests, the decision and how the release ended — that ``canary.adapters.plot``
draws without deciding anything. Times are seconds since the release's first
record. Pure: no I/O, no plotting library.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any

from canary.core.records import TERMINAL, Check, Effect, Outcome, Phase, Verdict
from canary.errors import InvalidSpec, Problem

#: What ``--out``'s suffix asks for.
FORMATS = {".png": "png", ".svg": "svg", ".html": "html"}
#: Gate webhooks: their answer holds or lets the release go on.
GATE_PREFIX = "confirm-"


def output_format(path: PurePath | str) -> str:
    """``png``, ``svg`` or ``html`` from the file name, or InvalidSpec naming ``--out`` and the rule."""
    suffix = PurePath(path).suffix.lower()
    if suffix not in FORMATS:
        raise InvalidSpec([Problem("--out", str(path), f"must end in {', '.join(FORMATS)} (a PNG or SVG picture, or an HTML page with the decision table)")],
                          "report")
    return FORMATS[suffix]


class Mark(enum.StrEnum):
    """A moment drawn as a vertical line across every panel."""

    GATE = "gate"  # a confirm-* webhook answered (ok: it let the release go on)
    HOOK = "hook"  # a rollback webhook asked for a rollback, or another webhook failed
    REQUEST = "request"  # abort, promote (--force, --skip-analysis), pause, continue
    DECISION = "decision"  # the release decided to promote or to roll back
    END = "end"  # the release reached its last phase


@dataclass(frozen=True)
class Marker:
    t: float
    kind: Mark
    label: str
    #: a gate's or a webhook's answer; for a decision, True when it promotes
    ok: bool | None = None


@dataclass(frozen=True)
class Point:
    """One metric's check at one tick."""

    t: float
    value: float | None
    stable: float | None
    #: the band the canary's value had to stay in at this tick (the threshold, narrowed by the
    #: comparison with stable when there is one); None: unbounded on that side
    low: float | None
    high: float | None
    verdict: Verdict
    effect: Effect
    reason: str
    #: a rate metric's confidence bound on the unfavourable side: where the evidence allows the rate to be
    bound: float | None = None

    @property
    def failed(self) -> bool:
        return self.effect is Effect.FAIL


@dataclass(frozen=True)
class MetricSeries:
    name: str
    points: tuple[Point, ...]
    #: how the band came about, for the panel's legend: "max 1", "canary / stable in max 1.1" …
    band: str
    dry_run: bool
    #: the value range the panel shows: every value, stable value and finite bound, padded
    ylim: tuple[float, float]

    @property
    def failed(self) -> tuple[Point, ...]:
        return tuple(p for p in self.points if p.failed)

    @property
    def has_stable(self) -> bool:
        return any(p.stable is not None for p in self.points)

    @property
    def bounded(self) -> tuple[Point, ...]:
        """The checks with a confidence bound and a value to draw it from."""
        return tuple(p for p in self.points if p.bound is not None and p.value is not None)

    @property
    def constant_band(self) -> bool:
        return len({(p.low, p.high) for p in self.points}) <= 1

    def marker_y(self, point: Point) -> float:
        """Where a check is drawn: at its value, or (no value: no data, an error) at the panel's floor."""
        return point.value if point.value is not None else self.ylim[0]


@dataclass(frozen=True)
class TickMark:
    """One tick on the weight panel."""

    t: float
    weight: int
    outcome: Outcome
    failed_in_row: int
    reason: str

    @property
    def failed(self) -> bool:
        return self.outcome in (Outcome.FAIL, Outcome.ROLLBACK)


@dataclass(frozen=True)
class Row:
    """One line of the decision table."""

    time: str
    t: float
    phase: str
    weight: int
    outcome: str
    reason: str


@dataclass(frozen=True)
class Picture:
    stack: str
    app: str
    release: str
    started: str
    canary_image: str
    stable_image: str
    phase: str
    #: why the release ended as it did (the last state change's message), or where it stands
    reason: str
    #: (t, weight) at every change, from the first record to the last: a step line
    weights: tuple[tuple[float, int], ...]
    ticks: tuple[TickMark, ...]
    metrics: tuple[MetricSeries, ...]
    markers: tuple[Marker, ...]
    rows: tuple[Row, ...]
    duration: float

    @property
    def title(self) -> str:
        images = f"{self.canary_image or '?'} over {self.stable_image or '?'}"
        return f"{self.app or '?'} · release {self.release} · {images} · {self.phase}"

    @property
    def failed_ticks(self) -> tuple[TickMark, ...]:
        return tuple(t for t in self.ticks if t.failed)

    def of(self, kind: Mark) -> tuple[Marker, ...]:
        return tuple(m for m in self.markers if m.kind is kind)

    @property
    def decision(self) -> Marker | None:
        found = self.of(Mark.DECISION)
        return found[-1] if found else None


# --- choosing the release -----------------------------------------------------------------------


def _read(text: str) -> float | None:
    """A record's time in seconds (one without a zone is UTC, as ``canary backtest`` reads it); None: unreadable."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError, TypeError, AttributeError):
        return None


def _seconds(record: Any) -> float:
    """``record``'s time in seconds; InvalidSpec naming the record when it cannot be read."""
    seconds = _read(record.time)
    if seconds is None:
        what = getattr(record, "message", "") or getattr(record, "reason", "") or getattr(record, "name", "")
        named = f"the {record.type} record of release {record.release or '?'}" + (f" ({what[:80]})" if what else "")
        raise InvalidSpec([Problem("time", repr(record.time), f"{named} must have an ISO 8601 time (2026-12-02T10:15:00.000Z): "
                                                              "the journal cannot be drawn in time order")], "report")
    return seconds


def releases(found: Iterable[Any]) -> list[str]:
    """The release ids among ``found``, the one that began first first (a record whose time cannot be read is left out:
    a report of its own release refuses it)."""
    start: dict[str, float] = {}
    for r in found:
        if r.release and r.release not in start:
            seconds = _read(r.time)
            if seconds is not None:
                start[r.release] = seconds
    return sorted(start, key=lambda release: (start[release], release))


def select(found: Sequence[Any], release: str | None = None) -> list[Any]:
    """The records of ``release`` (default: the release that began last), oldest first;
    InvalidSpec naming ``--release`` when the journal has none of it."""
    known = releases(found)
    if release is None:
        if not known:
            raise InvalidSpec([Problem("--release", "the latest", "no release is recorded in the app's journal")], "report")
        release = known[-1]
    chosen = [r for r in found if r.release == release]
    if not chosen:
        listed = f" (the latest: {', '.join(known[-5:])})" if known else ""
        raise InvalidSpec([Problem("--release", release, f"must name a release in the app's journal{listed}")], "report")
    return sorted(chosen, key=_seconds)  # stable: records of one instant keep their order


# --- the model ----------------------------------------------------------------------------------


def build(found: Sequence[Any], release: str | None = None) -> Picture:
    """The picture of one release (default: the latest) from journal records of one app."""
    chosen = select(found, release)
    first = chosen[0]
    start = _seconds(first)

    def at(record: Any) -> float:
        return round(_seconds(record) - start, 3)

    canary_image = stable_image = ""
    markers: list[Marker] = []
    rows: list[Row] = []
    ticks: list[TickMark] = []
    checks: dict[str, list[tuple[float, Check]]] = {}
    weights: list[tuple[float, int]] = []
    decided: Phase | None = None
    #: the reason of the tick since which no state was saved: the state saved for it says it again
    tick_reason: str | None = None
    for r in chosen:
        t = at(r)
        if not weights or weights[-1][1] != r.weight:
            weights.append((t, r.weight))
        row = None
        kind = r.type
        if kind == "snapshot":
            stable_image = stable_image or r.stable_image
        elif kind == "state":
            details = r.details or {}
            canary_image = canary_image or str(details.get("canary") or "")
            stable_image = stable_image or str(details.get("stable") or "")
            # every state is a row (a rollback pending, a pause, a gate's no at the same phase and weight), but the one
            # saved for a tick with the tick's own reason: the tick's row says it
            repeats = tick_reason is not None and r.message == tick_reason and r.phase not in TERMINAL
            tick_reason = None
            # a promotion that failed before stable took the new version rolls back: that is the decision that stands
            if r.phase in (Phase.ROLLING_BACK, Phase.PROMOTING) and decided != r.phase:
                decided = r.phase
                markers.append(Marker(t, Mark.DECISION, r.message, ok=r.phase == Phase.PROMOTING))
            if r.phase in TERMINAL:
                markers.append(Marker(t, Mark.END, f"{r.phase}: {r.message}", ok=r.phase in (Phase.SUCCEEDED, Phase.PROMOTED_UNVERIFIED)))
            if not repeats:
                row = (r.phase if r.phase in TERMINAL else "state", r.message)
        elif kind == "decision":
            row = ("decision", r.message)
        elif kind == "event":
            row = ("event", r.message)
        elif kind == "tick":
            ticks.append(TickMark(t, r.weight, r.outcome, r.failed_in_row, r.reason))
            tick_reason = r.reason
            for check in r.checks:
                checks.setdefault(check.metric, []).append((t, check))
            row = (f"tick {r.outcome.value}", r.reason)
        elif kind == "request":
            text = f"{r.request} by {r.by or 'a user'}" + (f": {r.reason}" if r.reason else "")
            markers.append(Marker(t, Mark.REQUEST, text))
            row = ("request", text)
        elif kind == "webhook":
            if r.hook_type.startswith(GATE_PREFIX):
                answer = "yes" if r.ok else "no"
                markers.append(Marker(t, Mark.GATE, f"{r.hook_type} {r.name}: {answer}", ok=r.ok))
                row = (f"gate {answer}", f"{r.hook_type} {r.name}: {r.detail}")
            elif r.hook_type == "rollback" and r.ok:
                markers.append(Marker(t, Mark.HOOK, f"rollback webhook {r.name} asked for a rollback", ok=False))
                row = ("webhook", f"rollback webhook {r.name} asked for a rollback: {r.detail}")
            elif not r.ok:
                row = ("webhook failed", f"{r.hook_type} {r.name}: {r.detail}")
        if row is not None:
            rows.append(Row(r.time, t, r.phase, r.weight, row[0], row[1]))
    last = chosen[-1]
    end = at(last)
    if weights[-1][0] != end:
        weights.append((end, last.weight))
    states = [r for r in chosen if r.type == "state"]
    return Picture(
        stack=first.stack, app=first.app, release=first.release, started=first.time, canary_image=canary_image, stable_image=stable_image,
        phase=str(last.phase), reason=states[-1].message if states else "", weights=tuple(weights), ticks=tuple(ticks),
        metrics=tuple(_series(name, points) for name, points in checks.items()), markers=tuple(markers), rows=tuple(rows), duration=end,
    )


def _band(check: Check) -> tuple[float | None, float | None]:
    """The range the canary's value had to be in: the threshold, narrowed by the comparison with stable."""
    low = check.threshold_range.min if check.threshold_range else None
    high = check.threshold_range.max if check.threshold_range else None
    compare, stable = check.compare_range, check.stable_value
    if compare is not None and stable is not None:
        ratio = check.compare_by == "ratio"
        if ratio and stable < 0:  # a negative stable value turns the ratio's bounds around: no band to draw
            return low, high
        if compare.min is not None:
            bound = stable * compare.min if ratio else stable + compare.min
            low = bound if low is None else max(low, bound)
        if compare.max is not None:
            bound = stable * compare.max if ratio else stable + compare.max
            high = bound if high is None else min(high, bound)
    return low, high


def _describe_band(check: Check) -> str:
    parts = []
    if check.threshold_range is not None:
        parts.append(str(check.threshold_range))
    if check.compare_range is not None:
        what = "canary / stable" if check.compare_by == "ratio" else "canary − stable"
        parts.append(f"{what} {check.compare_range}")
    return "; ".join(parts)


def _series(name: str, found: list[tuple[float, Check]]) -> MetricSeries:
    points = tuple(Point(t, c.value, c.stable_value, *_band(c), c.verdict, c.effect, c.reason, c.bound) for t, c in found)
    last = found[-1][1]
    values = [v for p in points for v in (p.value, p.stable, p.low, p.high, p.bound) if v is not None and math.isfinite(v)]
    return MetricSeries(name, points, _describe_band(last), any(c.dry_run for _, c in found), _limits(values))


def _limits(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return (0.0, 1.0)
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 if high > low else max(abs(high) * 0.1, 1.0)
    return (low - pad, high + pad)
