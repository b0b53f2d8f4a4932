"""``canary report``: a release's journal as a picture (canary.core.picture), drawn (canary.adapters.plot)
and written as PNG, SVG or HTML; through the API and the command line.

Journals are real ones (the lab demo's releases, tests/fixtures/journal-lab-demo.jsonl) and synthetic
ones built from the record classes. What is drawn is read back from the matplotlib figure and compared
with the journal; files are checked for validity, not pixels. Few tests write files: rendering is the
slow part.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from canary.adapters import plot
from canary.core import picture, records
from canary.core.picture import Mark, MetricSeries, Picture
from canary.core.records import Bounds, Check, Effect, Outcome, Phase, Verdict
from canary.errors import InvalidSpec
from tests.conftest import FIXTURES

FAULTY = "20261202t062745-15038"  # demo:v2-faulty: three failed ticks at weight 10, rolled back
HEALTHY = "20261202t062634-14601"  # demo:v2: holds for evidence at weight 10, then promoted through 50
ABORTED = "20261202t062952-15949"  # aborted by `canary abort` at weight 10


@cache
def lab_journal() -> tuple[Any, ...]:
    return tuple(records.parse(json.loads(line)) for line in (FIXTURES / "journal-lab-demo.jsonl").read_text().splitlines())


# --- synthetic journals -------------------------------------------------------------------------


class Journal:
    """Records of one release, one second apart, written as the release's recorder writes them."""

    def __init__(self, release: str = "20261202T101500-4711", canary: str = "web:2", stable: str = "web:1") -> None:
        self.release = release
        self.start = datetime(2026, 12, 2, 10, 15, tzinfo=UTC)
        self.records: list[Any] = []
        self.phase = Phase.INITIALIZING
        self.weight = 0
        self.state(f"release started: {canary} over stable {stable}", canary=canary, stable=stable)

    def _base(self) -> dict[str, Any]:
        at = self.start + timedelta(seconds=len(self.records))
        return {"time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "stack": "prod", "app": "web", "release": self.release,
                "phase": self.phase.value, "weight": self.weight}

    def state(self, message: str, phase: Phase | None = None, weight: int | None = None, **details: Any) -> Journal:
        self.phase = phase or self.phase
        self.weight = self.weight if weight is None else weight
        self.records.append(records.StateChange(**self._base(), message=message, details=details))
        return self

    def tick(self, outcome: Outcome, *checks: Check, failed_in_row: int = 0) -> Journal:
        self.records.append(records.Tick(**self._base(), outcome=outcome, failed_in_row=failed_in_row, threshold=3,
                                         reason="; ".join(c.reason for c in checks), checks=checks))
        return self

    def add(self, kind: type, **fields: Any) -> Journal:
        self.records.append(kind(**self._base(), **fields))
        return self


def error_rate(value: float | None, effect: Effect = Effect.PASS) -> Check:
    verdict = {Effect.PASS: Verdict.PASS, Effect.FAIL: Verdict.FAIL, Effect.HOLD: Verdict.INCONCLUSIVE}[effect]
    return Check(metric="error-rate", value=value, threshold_range=Bounds(max=1), verdict=verdict, effect=effect, reason=f"error-rate {value}")


def duration(value: float) -> Check:
    return Check(metric="request-duration", value=value, threshold_range=Bounds(max=500), verdict=Verdict.PASS, effect=Effect.PASS, reason="ok")


def rolled_back() -> list[Any]:
    j = Journal().state("analysis starts", Phase.PROGRESSING).state("weight 10 is live", weight=10)
    for n, value in enumerate((12.0, 15.5, 18.0), start=1):
        j.tick(Outcome.ROLLBACK if n == 3 else Outcome.FAIL, error_rate(value, Effect.FAIL), duration(120.0 + n), failed_in_row=n)
    j.state("rolling back: error-rate 18 > max 1 for 3 checks in a row at weight 10", Phase.ROLLING_BACK)
    j.add(records.Decision, message="rollback: traffic to stable first").state("traffic is back on stable", weight=0)
    return j.state("rolled back: error-rate 18 > max 1 for 3 checks in a row at weight 10", Phase.FAILED).records


def promoted() -> list[Any]:
    j = Journal(release="20261202T111500-4712").state("analysis starts", Phase.PROGRESSING)
    for weight in (10, 20, 30):
        j.state(f"weight {weight} is live", weight=weight).tick(Outcome.ADVANCE, error_rate(0.2), duration(100.0 + weight))
    j.state("every check passed up to weight 30: promoting", Phase.PROMOTING).state("all traffic is on stable", weight=0)
    return j.state("promoted web:2", Phase.SUCCEEDED).records


def compared() -> list[Any]:
    """A latency compared with stable (ratio, max 1.1) under a threshold of max 500; one check without data."""

    def latency(value: float | None, stable: float | None, effect: Effect) -> Check:
        verdict = Verdict.NO_DATA if value is None else Verdict.PASS if effect is Effect.PASS else Verdict.FAIL
        return Check(metric="latency", value=value, stable_value=stable, threshold_range=Bounds(max=500), compare_range=Bounds(max=1.1),
                     compare_by="ratio", verdict=verdict, effect=effect, reason=f"latency {value} vs stable {stable}")

    j = Journal(release="20261202T121500-4713").state("analysis starts", Phase.PROGRESSING).state("weight 25 is live", weight=25)
    j.tick(Outcome.ADVANCE, latency(100.0, 100.0, Effect.PASS))
    j.tick(Outcome.FAIL, latency(300.0, 200.0, Effect.FAIL), failed_in_row=1)
    j.tick(Outcome.FAIL, latency(None, 480.0, Effect.FAIL), failed_in_row=2)
    j.tick(Outcome.ADVANCE, latency(120.0, 110.0, Effect.PASS))
    return j.records


def steered() -> list[Any]:
    """Gates that say no then yes, a pause and a continue, a forced promotion, with text that needs escaping."""
    j = Journal(release="20261202T131500-4714").state("analysis starts", Phase.PROGRESSING)
    j.add(records.WebhookCall, name="approve", hook_type="confirm-traffic-increase", ok=False, detail="<not yet> & \"later\"")
    j.add(records.WebhookCall, name="load", hook_type="rollout", ok=True, detail="ran")
    j.add(records.WebhookCall, name="approve", hook_type="confirm-traffic-increase", ok=True, detail="go")
    j.state("weight 50 is live", weight=50).tick(Outcome.FAIL, error_rate(3.0, Effect.FAIL), failed_in_row=1)
    j.add(records.Request, request="pause", by="alice").add(records.Request, request="continue", by="alice")
    j.state("waiting for promotion", Phase.WAITING_PROMOTION)
    j.add(records.WebhookCall, name="ship-it", hook_type="confirm-promotion", ok=False, detail="closed")
    j.add(records.Request, request="promote --force", by="bob", reason="hotfix <b>now</b> $\\nosuchsymbol$")
    j.state("promotion approved by bob despite a failed last tick: hotfix <b>now</b> $\\nosuchsymbol$", Phase.PROMOTING)
    return j.state("promoted web:2", Phase.SUCCEEDED, weight=0).records


def refused() -> list[Any]:
    """Rolled back before any tick: nothing to judge, one panel."""
    j = Journal(release="20261202T141500-4715").add(records.Decision, message="deploying canary web:2 (1 pods) at weight 0")
    j.state("rolling back: RouteNotAccepted: the gateway did not accept the route", Phase.ROLLING_BACK)
    return j.state("rolled back: RouteNotAccepted: the gateway did not accept the route", Phase.FAILED).records


JOURNALS = {"lab-faulty": (lab_journal, FAULTY), "lab-healthy": (lab_journal, HEALTHY), "lab-aborted": (lab_journal, ABORTED),
            "rolled-back": (rolled_back, None), "promoted": (promoted, None), "compared": (compared, None), "steered": (steered, None),
            "refused": (refused, None)}


def model_of(name: str) -> tuple[Picture, list[Any]]:
    journal, release = JOURNALS[name]
    found = list(journal())
    chosen = [r for r in found if r.release == (release or found[0].release)]
    return picture.build(found, release), chosen


def seconds(found: Sequence[Any], record: Any) -> float:
    def at(r: Any) -> float:
        return datetime.fromisoformat(r.time.replace("Z", "+00:00")).timestamp()

    return round(at(record) - at(found[0]), 3)


# --- the model ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", JOURNALS)
def test_the_weight_steps_as_the_journal_records_it(name: str) -> None:
    model, found = model_of(name)
    expected: list[tuple[float, int]] = []
    for r in found:
        if not expected or expected[-1][1] != r.weight:
            expected.append((seconds(found, r), r.weight))
    if expected[-1][0] != seconds(found, found[-1]):
        expected.append((seconds(found, found[-1]), found[-1].weight))
    assert list(model.weights) == expected
    assert model.duration == seconds(found, found[-1]) and model.weights[0] == (0.0, found[0].weight)


@pytest.mark.parametrize("name", JOURNALS)
def test_each_metric_is_a_series_of_its_checks(name: str) -> None:
    model, found = model_of(name)
    ticks = [r for r in found if r.type == "tick"]
    assert [t.t for t in model.ticks] == [seconds(found, r) for r in ticks]
    assert [t.outcome for t in model.ticks] == [r.outcome for r in ticks]
    names = list(dict.fromkeys(c.metric for r in ticks for c in r.checks))
    assert [m.name for m in model.metrics] == names
    for series in model.metrics:
        checks = [(seconds(found, r), c) for r in ticks for c in r.checks if c.metric == series.name]
        assert [(p.t, p.value, p.stable, p.effect, p.verdict, p.bound) for p in series.points] == \
            [(t, c.value, c.stable_value, c.effect, c.verdict, c.bound) for t, c in checks]
        assert [p.t for p in series.failed] == [t for t, c in checks if c.effect is Effect.FAIL]
        low, high = series.ylim
        assert all(low < v < high for p in series.points for v in (p.value, p.stable, p.bound) if v is not None)


def test_a_faulty_release_shows_three_failed_checks_and_the_rollback() -> None:
    model, _ = model_of("lab-faulty")
    assert model.phase == "Failed" and model.canary_image == "demo:v2-faulty" and model.stable_image == "demo:v2"
    assert model.title == f"web · release {FAULTY} · demo:v2-faulty over demo:v2 · Failed"
    error_rate_series = next(m for m in model.metrics if m.name == "error-rate")
    assert [round(p.value or 0, 2) for p in error_rate_series.failed] == [13.65, 15.9, 17.73]
    assert all(p.low is None and p.high == 1.0 for p in error_rate_series.points) and error_rate_series.band == "max 1"
    assert [t.failed_in_row for t in model.failed_ticks] == [1, 2, 3] and model.failed_ticks[-1].outcome is Outcome.ROLLBACK
    decision = model.decision
    assert decision is not None and decision.ok is False
    assert decision.label == "rolling back: error-rate 17.73 > max 1 for 3 checks in a row at weight 10"
    assert model.reason.startswith("rolled back: error-rate 17.73 > max 1") and [m.kind for m in model.markers] == [Mark.DECISION, Mark.END]


def test_a_promotion_that_rolls_back_shows_the_rollback_as_the_decision_that_stands() -> None:
    """Stable's promotion refused once: the release rolled back, and the report said "decision: promote"."""
    from canary.errors import Refused
    from tests.unit.fakes import Metrics, make

    world = make(Metrics(0.0))
    refused: list[str] = []

    def on_up(record: dict[str, Any]) -> None:
        if "stable" in record["parts"] and not record["whole"] and record["pins"]["stable"]["hash"] == "new" and not refused:
            refused.append("once")
            raise Refused("admission webhook denied the request")

    world.stack.on_up = on_up
    assert world.start().phase is Phase.FAILED and refused
    model = picture.build(world.store.journal)
    assert [m.ok for m in model.of(Mark.DECISION)] == [True, False]
    assert model.decision is not None and model.decision.ok is False and model.decision.label.startswith("rolling back")


def test_a_healthy_release_shows_its_weights_and_the_promotion() -> None:
    model, _ = model_of("lab-healthy")
    assert [w for _, w in model.weights] == [0, 10, 20, 30, 40, 50, 0, 0]  # the last point: the line goes on to the end
    assert model.phase == "Succeeded" and not model.failed_ticks
    assert model.decision is not None and model.decision.ok is True and model.decision.label == "every check passed up to weight 50: promoting"
    held = [p for p in model.metrics[0].points if p.effect is Effect.HOLD]
    assert held and all(p.bound is not None and p.bound > 1 for p in held)  # what the evidence allowed: why it held


def test_an_abort_is_a_request_then_the_decision() -> None:
    model, _ = model_of("lab-aborted")
    assert [(m.kind, m.label) for m in model.markers[:2]] == [(Mark.REQUEST, "abort by canary abort"), (Mark.DECISION, "rolling back: aborted by canary abort")]
    assert model.phase == "Aborted" and model.of(Mark.END)[0].label.startswith("Aborted: aborted: aborted by canary abort")


def test_a_comparison_with_stable_narrows_the_band_at_each_tick() -> None:
    model, _ = model_of("compared")
    (series,) = model.metrics
    # ratio max 1.1 of stable, under the threshold's max 500
    assert [(p.low, p.high) for p in series.points] == [(None, pytest.approx(110.0)), (None, pytest.approx(220.0)), (None, 500.0),
                                                        (None, pytest.approx(121.0))]
    assert series.has_stable and not series.constant_band and series.band == "max 500; canary / stable max 1.1"
    no_data = series.failed[-1]
    assert no_data.value is None and series.marker_y(no_data) == series.ylim[0]


@pytest.mark.parametrize(
    ("compare_by", "stable", "compare", "threshold", "band"),
    [("difference", 100.0, Bounds(min=-5, max=50), None, (95.0, 150.0)),
     ("ratio", 100.0, Bounds(min=0.5, max=2), Bounds(min=60, max=500), (60.0, 200.0)),
     ("ratio", -4.0, Bounds(max=2), Bounds(max=10), (None, 10.0)),  # a negative stable turns a ratio round: the threshold only
     ("ratio", None, Bounds(max=2), Bounds(max=10), (None, 10.0))],  # stable without a value: the threshold only
)
def test_the_band_of_a_comparison(compare_by: str, stable: float | None, compare: Bounds, threshold: Bounds | None,
                                  band: tuple[float | None, float | None]) -> None:
    check = Check(metric="m", value=1.0, stable_value=stable, threshold_range=threshold, compare_range=compare, compare_by=compare_by,
                  verdict=Verdict.PASS, effect=Effect.PASS, reason="r")
    assert picture._band(check) == band


def test_gates_and_requests_are_markers_and_rows() -> None:
    model, _ = model_of("steered")
    assert [(m.kind, m.label, m.ok) for m in model.markers] == [
        (Mark.GATE, "confirm-traffic-increase approve: no", False),
        (Mark.GATE, "confirm-traffic-increase approve: yes", True),
        (Mark.REQUEST, "pause by alice", None),
        (Mark.REQUEST, "continue by alice", None),
        (Mark.GATE, "confirm-promotion ship-it: no", False),
        (Mark.REQUEST, "promote --force by bob: hotfix <b>now</b> $\\nosuchsymbol$", None),
        (Mark.DECISION, "promotion approved by bob despite a failed last tick: hotfix <b>now</b> $\\nosuchsymbol$", True),
        (Mark.END, "Succeeded: promoted web:2", True),
    ]
    outcomes = [row.outcome for row in model.rows]
    assert "gate no" in outcomes and "gate yes" in outcomes and outcomes.count("request") == 3 and "tick fail" in outcomes
    assert not any("load" in row.reason for row in model.rows)  # a rollout hook that ran is not a decision
    assert outcomes[-1] == "Succeeded"


def test_the_table_has_a_row_per_decision_and_per_state_that_moved() -> None:
    model, found = model_of("rolled-back")
    assert [(row.outcome, row.phase, row.weight) for row in model.rows] == [
        ("state", "Initializing", 0), ("state", "Progressing", 0), ("state", "Progressing", 10),
        ("tick fail", "Progressing", 10), ("tick fail", "Progressing", 10), ("tick rollback", "Progressing", 10),
        ("state", "RollingBack", 10), ("decision", "RollingBack", 10), ("state", "RollingBack", 0), ("Failed", "Failed", 0),
    ]
    assert [row.time for row in model.rows] == [r.time for r in found if r.type in ("state", "tick", "decision")]


def test_every_state_is_a_row_but_the_one_that_repeats_its_ticks_reason() -> None:
    """A rollback whose up fails writes the route at rest around Pulumi (RollingBack, weight 0) and then saves
    "rollback pending … run canary resume" at the same phase and weight: a row of its own, as is every state; the
    state saved for a tick with the tick's reason is not (the tick's row says it)."""
    from tests.unit.fakes import Metrics, make

    world = make(Metrics(18.0), retries=2, retry_backoff=0.1)

    def on_up(record: dict[str, Any]) -> None:
        if record["pins"]["route"]["weight"] == 0 and world.store.state is not None and world.store.state.phase is Phase.ROLLING_BACK:
            world.stack.fail_ups = 1

    world.stack.on_up = on_up
    assert world.start().rollback_pending
    world.stack.on_up = None
    assert world.rebuild().release.resume().phase is Phase.FAILED
    model = picture.build(world.store.journal)
    pending = [row for row in model.rows if row.reason.startswith("rollback pending:")]
    assert len(pending) == 1 and pending[0].outcome == "state" and (pending[0].phase, pending[0].weight) == ("RollingBack", 0)
    rows = [(row.time, row.reason) for row in model.rows if row.outcome in ("state", row.phase)]
    states = [r for r in world.store.journal if r.type == "state"]
    ticks = {r.reason for r in world.store.journal if r.type == "tick"}
    assert [s.message for s in states if (s.time, s.message) not in rows] == [s.message for s in states if s.message in ticks]
    assert len([s for s in states if s.message in ticks]) == 2  # the two failed ticks' own saves; the third rolled back


def test_the_latest_release_by_default_and_a_named_one() -> None:
    found = list(lab_journal()) + promoted()  # the synthetic release began later
    assert picture.releases(found) == [HEALTHY, FAULTY, ABORTED, "20261202T111500-4712"]
    assert picture.build(found).release == "20261202T111500-4712"
    assert picture.build(found, HEALTHY).release == HEALTHY


def test_a_record_whose_time_cannot_be_read_is_refused_naming_it() -> None:
    journal = Journal().state("analysis starts", phase=Phase.PROGRESSING)
    journal.records.append(records.EventRecord(time="not a time", stack="prod", app="web", release=journal.release, message="saved by hand"))
    with pytest.raises(InvalidSpec) as info:
        picture.build(journal.records)
    problem = info.value.problems[0]
    assert problem.field == "time" and problem.value == "'not a time'" and f"the event record of release {journal.release} (saved by hand)" in problem.rule
    # the other releases of the journal are still listed and drawn
    other = promoted()
    assert picture.releases(other + journal.records) == [journal.release, other[0].release]
    assert picture.build(other + journal.records, other[0].release).release == other[0].release


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The machine's local time 10 hours behind UTC."""
    import time

    monkeypatch.setenv("TZ", "Pacific/Honolulu")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_time_without_a_zone_is_utc_whatever_the_local_zone(far_from_utc: Any) -> None:
    journal = Journal().state("analysis starts", phase=Phase.PROGRESSING)
    journal.state("weight 10 is live in the route and accepted by the gateway", weight=10)
    journal.records[-1] = journal.records[-1].model_copy(update={"time": journal.records[-1].time.removesuffix("Z")})  # 10:15:02, no zone
    model = picture.build(journal.records)
    assert model.weights == ((0.0, 0), (2.0, 10)) and model.duration == 2.0


@pytest.mark.parametrize(("found", "release", "words"), [
    ([], None, "no release is recorded"),
    ([], "20990101t000000-1", "must name a release in the app's journal (got"),
    (list(lab_journal()), "20990101t000000-1", f"must name a release in the app's journal (the latest: {HEALTHY}, {FAULTY}, {ABORTED})"),
])
def test_a_release_not_in_the_journal_is_refused(found: list[Any], release: str | None, words: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        picture.build(found, release)
    assert info.value.problems[0].field == "--release" and words in str(info.value)


@pytest.mark.parametrize(("name", "fmt"), [("r.png", "png"), ("r.SVG", "svg"), ("out/r.html", "html")])
def test_the_suffix_names_the_format(name: str, fmt: str) -> None:
    assert picture.output_format(Path(name)) == fmt


@pytest.mark.parametrize("name", ["r.jpg", "r.pdf", "report", "r.png.txt"])
def test_another_suffix_is_refused_naming_out_and_the_rule(name: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        picture.output_format(name)
    problem = info.value.problems[0]
    assert problem.field == "--out" and problem.value == name and ".png, .svg, .html" in problem.rule


# --- the figure ---------------------------------------------------------------------------------


def _lines(ax: Any, label: str) -> list[Any]:
    return [line for line in ax.lines if line.get_label() == label]


def _collection(ax: Any, label: str) -> Any:
    found = [c for c in ax.collections if c.get_label() == label]
    return found[0] if found else None


def _same(drawn: Sequence[float], expected: Sequence[float | None]) -> bool:
    return len(drawn) == len(expected) and all((e is None and math.isnan(d)) or d == pytest.approx(e) for d, e in zip(drawn, expected, strict=True))


@pytest.mark.parametrize("name", ["lab-faulty", "lab-healthy", "compared", "steered", "refused"])
def test_the_figure_draws_what_the_journal_says(name: str) -> None:
    model, _ = model_of(name)
    fig = plot.draw(model)
    try:
        assert len(fig.axes) == 1 + len(model.metrics)
        weight_ax = fig.axes[0]
        (weight,) = _lines(weight_ax, "weight")
        assert list(weight.get_xdata()) == [t for t, _ in model.weights] and list(weight.get_ydata()) == [w for _, w in model.weights]
        assert weight.get_drawstyle() == "steps-post"
        failed_ticks = _collection(weight_ax, "failed ticks")
        expected_ticks = [[t.t, t.weight] for t in model.failed_ticks]
        assert (failed_ticks.get_offsets().tolist() if failed_ticks is not None else []) == expected_ticks
        for ax, series in zip(fig.axes[1:], model.metrics, strict=True):
            (canary,) = _lines(ax, "canary")
            assert list(canary.get_xdata()) == [p.t for p in series.points] and _same(canary.get_ydata(), [p.value for p in series.points])
            stable = _lines(ax, "stable")
            assert bool(stable) == series.has_stable
            if stable:
                assert _same(stable[0].get_ydata(), [p.stable for p in series.points])
            failed = _collection(ax, "failed checks")
            assert (failed.get_offsets().tolist() if failed is not None else []) == [[p.t, series.marker_y(p)] for p in series.failed]
            assert ax.get_ylim() == pytest.approx(series.ylim)
            _assert_band(ax, series)
        for ax in fig.axes:
            for kind in Mark:
                drawn = _lines(ax, f"_{kind.value}")
                assert [line.get_xdata()[0] for line in drawn] == [m.t for m in model.of(kind)]
    finally:
        fig.clear()


def _assert_band(ax: Any, series: MetricSeries) -> None:
    low, high = series.ylim
    first = series.points[0]
    if series.constant_band:
        (band,) = [p for p in ax.patches if p.get_label() == "band"]
        y0, y1 = band.get_path().transformed(band.get_patch_transform()).get_extents().intervaly
        assert (y0, y1) == pytest.approx((max(first.low, low) if first.low is not None else low, min(first.high, high) if first.high is not None else high))
    else:
        band = _collection(ax, "band")
        ys = band.get_paths()[0].vertices[:, 1]
        assert max(ys) == pytest.approx(max(min(p.high, high) if p.high is not None else high for p in series.points))


# --- files --------------------------------------------------------------------------------------


def test_png_is_an_image_of_the_figure_size(tmp_path: Path) -> None:
    model, _ = model_of("lab-faulty")
    out = plot.write(model, tmp_path / "faulty.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    fig = plot.draw(model)
    assert (width, height) == (round(fig.get_figwidth() * plot.DPI), round(fig.get_figheight() * plot.DPI))
    assert height > width / 2  # a weight panel and two metric panels


def test_svg_is_xml_that_names_every_metric(tmp_path: Path) -> None:
    model, _ = model_of("compared")
    text = plot.write(model, tmp_path / "sub" / "compared.svg").read_text()
    root = ET.fromstring(text)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    drawn = " ".join(t for el in root.iter() for t in (el.text,) if t)
    assert "latency" in drawn and "canary weight %" in drawn and model.release in drawn


def test_html_is_one_page_with_the_picture_and_every_row_escaped(tmp_path: Path) -> None:
    model, _ = model_of("steered")
    text = plot.write(model, tmp_path / "steered.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("<svg") == 1 and "<?xml" not in text
    assert "<script" not in text and "src=" not in text  # self-contained: nothing to fetch
    rows = text.split("<tbody>")[1].split("</tbody>")[0].strip().splitlines()
    assert len(rows) == len(model.rows)
    assert all(f"<td>{row.outcome}</td>" in line for row, line in zip(model.rows, rows, strict=True))
    assert "hotfix &lt;b&gt;now&lt;/b&gt;" in text and "hotfix <b>now</b> $\\nosuchsymbol$" not in text
    assert "&lt;not yet&gt; &amp; &quot;later&quot;" in text


# --- the API and the command line ---------------------------------------------------------------


def test_api_report_draws_the_latest_release_of_the_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from canary import api

    asked: list[dict[str, Any]] = []

    def history(stack: str, **kwargs: Any) -> list[Any]:
        asked.append({"stack": stack, **kwargs})
        return list(lab_journal())

    monkeypatch.setattr(api, "history", history)
    out = api.report("lab", app="web", out=tmp_path / "r.svg", project_dir=tmp_path)
    assert out == tmp_path / "r.svg" and f"release {ABORTED}" in out.read_text()
    assert asked == [{"stack": "lab", "app": "web", "release_id": None, "project_dir": tmp_path, "env": None}]


def test_cli_report_prints_the_path_and_refuses_a_bad_out_before_reading_the_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from canary import api, cli

    monkeypatch.setattr(api, "history", lambda *a, **k: promoted())
    monkeypatch.delenv("CANARY_LAB_DIR", raising=False)
    out = tmp_path / "r.html"
    monkeypatch.setattr(sys, "argv", ["canary", "report", "prod", "--out", str(out)])
    with pytest.raises(SystemExit) as info:
        cli.run()
    assert info.value.code == 0 and capsys.readouterr().out.strip() == str(out) and "<table>" in out.read_text()

    def unreachable(*args: Any, **kwargs: Any) -> list[Any]:
        raise AssertionError("the journal was read for a bad --out")

    monkeypatch.setattr(api, "history", unreachable)
    monkeypatch.setattr(sys, "argv", ["canary", "report", "prod", "--out", str(tmp_path / "r.jpg")])
    with pytest.raises(SystemExit) as info:
        cli.run()
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--out" in err and ".png, .svg, .html" in err and "Traceback" not in err
