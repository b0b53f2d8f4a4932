"""Draws a release's picture (``canary.core.picture``) with matplotlib: the only module that imports it.

``draw`` returns the matplotlib ``Figure`` — the weight panel first, then one
panel per metric — so tests can read back what was drawn; ``write`` saves it as
PNG or SVG, or as a self-contained HTML page (the SVG inline and the decision
table). Figures are built with the object API and the Agg canvas: no pyplot, no
global state, no display. Nothing here decides anything; the model says what
to draw.
"""

from __future__ import annotations

import html
import io
import textwrap
from pathlib import Path

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from canary.adapters import files
from canary.core import picture
from canary.core.picture import Mark, MetricSeries, Picture

#: Size of a figure, in inches at DPI: a weight panel and one panel per metric.
WIDTH = 10.0
WEIGHT_HEIGHT = 2.2
METRIC_HEIGHT = 1.9
TITLE_HEIGHT = 0.9
DPI = 100
_TITLE_CHARS = 125

_STYLE = {
    Mark.GATE: {"linestyle": "--", "linewidth": 1.0},
    Mark.HOOK: {"color": "tab:red", "linestyle": "--", "linewidth": 1.0},
    Mark.REQUEST: {"color": "tab:purple", "linestyle": "-.", "linewidth": 1.2},
    Mark.DECISION: {"linestyle": "-", "linewidth": 1.8},
    Mark.END: {"color": "black", "linestyle": ":", "linewidth": 1.2},
}
_MEANING = {(Mark.GATE, True): "gate: yes", (Mark.GATE, False): "gate: no", (Mark.HOOK, False): "rollback webhook", (Mark.REQUEST, None): "request",
            (Mark.DECISION, True): "decision: promote", (Mark.DECISION, False): "decision: roll back", (Mark.END, True): "end", (Mark.END, False): "end"}
_OUTCOME_COLOURS = {"advance": "tab:green", "hold": "tab:gray", "inconclusive": "tab:orange", "fail": "tab:red", "rollback": "darkred"}


def _colour(kind: Mark, ok: bool | None) -> str:
    if kind is Mark.GATE:
        return "tab:green" if ok else "tab:orange"
    if kind is Mark.DECISION:
        return "tab:green" if ok else "tab:red"
    return str(_STYLE[kind].get("color", "black"))


def draw(model: Picture) -> Figure:
    """The figure: ``axes[0]`` the canary's weight, ``axes[1:]`` one metric each, in the model's order.

    Lines carry labels tests can find: ``weight``, ``canary``, ``stable``; the ticks and failed checks
    are scatter collections labelled ``ticks``, ``failed ticks``, ``failed checks``; the band is
    ``band``; vertical lines for the markers are labelled ``_<kind>`` (kept out of the legends).
    """
    heights = [WEIGHT_HEIGHT] + [METRIC_HEIGHT] * len(model.metrics)
    fig = Figure(figsize=(WIDTH, sum(heights) + TITLE_HEIGHT), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(heights), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    reason = textwrap.fill(textwrap.shorten(model.reason or "(no state recorded)", 2 * _TITLE_CHARS), _TITLE_CHARS)
    # journaled text (reasons, webhook details, images) is shown as written: a $ is not TeX
    fig.suptitle(model.title + "\n" + reason, fontsize=10, parse_math=False)
    _weight_panel(axes[0], model)
    for ax, series in zip(axes[1:], model.metrics, strict=True):
        _metric_panel(ax, series)
    for ax in axes:
        for marker in model.markers:
            ax.axvline(marker.t, color=_colour(marker.kind, marker.ok), label=f"_{marker.kind.value}",
                       **{k: v for k, v in _STYLE[marker.kind].items() if k != "color"})
        ax.grid(True, alpha=0.3)
        ax.set_xlim(0, max(model.duration, 1.0))
    axes[-1].set_xlabel(f"seconds since {model.started}")
    return fig


def _weight_panel(ax: Axes, model: Picture) -> None:
    ts, ws = zip(*model.weights, strict=True)
    ax.step(ts, ws, where="post", color="tab:blue", linewidth=2, label="weight")
    if model.ticks:
        ax.scatter([t.t for t in model.ticks], [t.weight for t in model.ticks], s=18, zorder=3, label="ticks",
                   c=[_OUTCOME_COLOURS.get(t.outcome.value, "black") for t in model.ticks])
    failed = model.failed_ticks
    if failed:
        ax.scatter([t.t for t in failed], [t.weight for t in failed], marker="x", s=60, color="tab:red", zorder=4, label="failed ticks")
    decision = model.decision
    if decision is not None:
        ax.annotate(textwrap.shorten(decision.label, 90), (decision.t, 1.0), xycoords=("data", "axes fraction"), xytext=(-4, -4),
                    textcoords="offset points", ha="right", va="top", fontsize=8, color=_colour(decision.kind, decision.ok), parse_math=False)
    for marker in model.of(Mark.REQUEST) + model.of(Mark.HOOK):
        ax.annotate(textwrap.shorten(marker.label, 36), (marker.t, 0.5), xycoords=("data", "axes fraction"), xytext=(-2, 0),
                    textcoords="offset points", rotation=90, ha="right", va="center", fontsize=7, color=_colour(marker.kind, marker.ok), parse_math=False)
    ax.set_ylim(-3, max(100, *(w for _, w in model.weights)) + 5)
    ax.set_ylabel("canary weight %")
    # the vertical lines, once each in the legend (they are drawn on every panel, unlabelled)
    kinds = list(dict.fromkeys((m.kind, m.ok) for m in model.markers))
    proxies = [Line2D([], [], color=_colour(kind, ok), label=_MEANING.get((kind, ok), kind.value), **{k: v for k, v in _STYLE[kind].items() if k != "color"})
               for kind, ok in kinds]
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + proxies, loc="upper left", fontsize=7, ncols=2)


def _metric_panel(ax: Axes, series: MetricSeries) -> None:
    nan = float("nan")
    ts = [p.t for p in series.points]
    low, high = series.ylim
    if series.constant_band:
        first = series.points[0]
        if first.low is not None or first.high is not None:
            ax.axhspan(max(first.low if first.low is not None else low, low), min(first.high if first.high is not None else high, high),
                       color="tab:green", alpha=0.12, label="band")
    else:
        ax.fill_between(ts, [max(p.low, low) if p.low is not None else low for p in series.points],
                        [min(p.high, high) if p.high is not None else high for p in series.points],
                        step="mid", color="tab:green", alpha=0.12, label="band")
    ax.plot(ts, [p.value if p.value is not None else nan for p in series.points], marker="o", markersize=3, color="tab:blue", label="canary")
    if series.has_stable:
        ax.plot(ts, [p.stable if p.stable is not None else nan for p in series.points], marker="s", markersize=3, color="tab:gray",
                linestyle="--", label="stable")
    bounded = series.bounded
    if bounded:
        ax.vlines([p.t for p in bounded], [p.value for p in bounded], [p.bound for p in bounded], color="tab:orange", linewidth=2,
                  label="confidence bound")
    failed = series.failed
    if failed:
        ax.scatter([p.t for p in failed], [series.marker_y(p) for p in failed], marker="X", s=60, color="tab:red", zorder=4, label="failed checks")
    ax.set_ylim(low, high)
    ax.set_ylabel(series.name + (" (dry run)" if series.dry_run else ""), fontsize=8)
    ax.set_title(f"{series.name}: band {series.band or 'none'}", fontsize=8, loc="left")
    ax.legend(loc="upper left", fontsize=7)


# --- files --------------------------------------------------------------------------------------


def render(fig: Figure, fmt: str) -> bytes:
    """The figure as PNG or SVG bytes; SVG text stays text (searchable, and smaller)."""
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "canary"}):
        fig.savefig(buffer, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    return buffer.getvalue()


def page(model: Picture, svg: bytes) -> str:
    """A self-contained HTML page: the picture (SVG inline) and the decision table, every text escaped."""
    text = svg.decode()
    inline = text[text.index("<svg"):]  # without the XML declaration and DOCTYPE, which HTML does not take
    esc = html.escape
    rows = "\n".join(
        f'<tr class="{esc(row.outcome.split()[-1])}"><td>{esc(row.time)}</td><td>+{row.t:.1f}s</td><td>{esc(row.phase)}</td>'
        f"<td>{row.weight}</td><td>{esc(row.outcome)}</td><td>{esc(row.reason)}</td></tr>"
        for row in model.rows)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{esc(model.title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }}
tr.fail td, tr.rollback td, tr.Failed td, tr.Aborted td {{ background: #fde4e4; }}
tr.decision td, tr.request td, tr.no td {{ background: #fff4d6; }}
tr.Succeeded td {{ background: #e2f5e2; }}
figure {{ margin: 0; }}
</style>
</head>
<body>
<h1>{esc(model.title)}</h1>
<p><strong>{esc(model.phase)}</strong> — {esc(model.reason)}</p>
<figure>
{inline}
</figure>
<h2>Decisions</h2>
<table>
<thead><tr><th>time</th><th>since start</th><th>phase</th><th>weight</th><th>outcome</th><th>reason</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""


def write(model: Picture, out: Path) -> Path:
    """Draw the model and write ``out`` in the format its suffix names (atomically); returns ``out``."""
    fmt = picture.output_format(out)
    fig = draw(model)
    data = render(fig, "png" if fmt == "png" else "svg")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        files.write_text_atomic(out, page(model, data))
    elif fmt == "svg":
        files.write_text_atomic(out, data.decode())
    else:
        files.write_bytes_atomic(out, data)
    return out
