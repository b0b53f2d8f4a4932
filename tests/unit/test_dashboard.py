"""The shipped Grafana dashboard (canary/adapters/dashboard.json) asks only for what a release pushes.

What a release pushes is learnt from the pusher itself, not from a second list: the metric names
from ``push.NAMES``, and each metric's labels and encodings from real pushes to a recording HTTP
server (the Pushgateway's grouping key — job, app, stack — becomes labels of every series too).
The checker below reads every PromQL expression of the dashboard with a small tokenizer: enough
for the selectors, matchers, ``by (…)`` lists and ``{{label}}`` legends a dashboard uses, not a
PromQL parser. Mutated copies prove that it catches an unknown metric, label or datasource.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from canary.adapters import push
from canary.adapters.push import Pusher
from canary.core.records import Check, Effect, Outcome, Phase, ReleaseState, Tick, Verdict
from tests.unit.support import http_receiver

pytestmark = pytest.mark.timeout(60)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"stat", "state-timeline", "timeseries", "bargauge", "gauge", "table", "text"}
#: Grafana's own variables, usable in any expression
BUILTIN_VARIABLES = {"__interval", "__rate_interval", "__range", "__range_s", "__interval_ms", "__dashboard"}


@dataclass
class Pushed:
    """What the pusher sends, over every phase and verdict: labels per metric and the values of the encoded ones."""

    labels: dict[str, set[str]] = field(default_factory=dict)
    values: dict[str, set[float]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def pushed() -> Pushed:
    checks = tuple(Check(metric=f"m-{v.value}", value=1.0, verdict=v, effect=Effect.PASS, reason="") for v in Verdict)
    out = Pushed()
    with http_receiver() as gateway:
        pusher = Pusher(gateway.url, "org/shop/prod", "web", "shop")
        for phase in Phase:
            state = ReleaseState.model_validate({
                "release": "r1", "stack": "org/shop/prod", "app": "web", "namespace": "shop", "phase": phase, "weight": 30,
                "started": "2026-12-02T10:15:00Z", "updated": "2026-12-02T10:20:00Z"})
            pusher.push(state, Tick(time=state.updated, release="r1", outcome=Outcome.ADVANCE, failed_in_row=0, failed_total=0,
                                    threshold=3, reason="", checks=checks))
        requests = gateway.wait_for(len(Phase))
    for request in requests:
        # /metrics/job/canary/app/web/stack/org_shop_prod: the grouping key, which the Pushgateway adds to each series
        parts = request.path.removeprefix("/metrics/").split("/")
        grouping = {key.removesuffix("@base64") for key in parts[0::2]}
        for family in text_string_to_metric_families(request.body.decode()):
            for sample in family.samples:
                out.labels.setdefault(sample.name, set()).update(sample.labels, grouping)
                out.values.setdefault(sample.name, set()).add(sample.value)
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    text = resources.files("canary.adapters").joinpath("dashboard.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@pytest.fixture(scope="module")
def known(pushed: Pushed) -> dict[str, frozenset[str]]:
    """Metric name -> its labels: the names push.py declares, the labels its pushes carry."""
    return {name: frozenset(pushed.labels.get(name, ())) for name in push.NAMES}


# ---- the checker -------------------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)(?![\w:])(\s*\()?")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}
_VARIABLE = re.compile(r"\$\{?(\w+)")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Expr:
    """What one PromQL expression refers to."""

    metrics: frozenset[str]
    #: (metric, label) for each label matcher inside a selector
    matchers: frozenset[tuple[str, str]]
    #: labels of by/without/on/ignoring/group_* lists
    grouping: frozenset[str]
    variables: frozenset[str]


def parse(expr: str) -> Expr:
    variables = frozenset(_VARIABLE.findall(expr))
    text = _STRING.sub('""', expr)
    grouping = {label.strip() for _, labels in _GROUPING.findall(text) for label in labels.split(",") if label.strip()}
    text = _GROUPING.sub(" ", text)
    metrics: set[str] = set()
    matchers: set[tuple[str, str]] = set()
    for selector in _SELECTOR.finditer(text):
        name = selector.group(1) or ""
        labels = set(_MATCHER.findall(selector.group(2))) - {"__name__"}
        if name:
            metrics.add(name)
        matchers.update((name, label) for label in labels)
    text = _RANGE.sub(" ", _SELECTOR.sub(" ", text))
    for ident, call in _IDENT.findall(text):
        if not call and ident.lower() not in _KEYWORDS:
            metrics.add(ident)
    return Expr(frozenset(metrics), frozenset(matchers), frozenset(grouping), variables)


def _expr_problems(where: str, expr: str, known: Mapping[str, frozenset[str]], variables: set[str],
                   legend: str = "", label: str = "") -> Iterator[str]:
    got = parse(expr)
    if not got.metrics:
        yield f"{where}: no metric in {expr!r}"
    for metric in sorted(got.metrics - set(known)):
        yield f"{where}: {metric} is not a metric push.py pushes"
    for metric, name in sorted(got.matchers):
        if metric == "":
            yield f"{where}: a selector without a metric name ({name}=…); name the metric"
        elif metric in known and name not in known[metric]:
            yield f"{where}: {metric} has no label {name}"
    # a label that every series of the expression has: what by (…), a legend or label_values can use
    common = frozenset.intersection(*(known[m] for m in got.metrics)) if got.metrics <= set(known) and got.metrics else frozenset()
    for name in sorted(got.grouping - common):
        yield f"{where}: grouping by {name}, which {', '.join(sorted(got.metrics))} does not carry"
    kept = got.grouping if re.search(r"\bby\s*\(", _STRING.sub('""', expr)) else common
    for name in sorted(set(_LEGEND.findall(legend)) - kept):
        yield f"{where}: the legend uses {{{{{name}}}}}, which the expression's series do not carry"
    if label and label not in common:
        yield f"{where}: label_values of {label}, which {', '.join(sorted(got.metrics))} does not carry"
    for name in sorted(got.variables - variables - BUILTIN_VARIABLES):
        yield f"{where}: ${name} is not a dashboard variable"


def problems(dashboard: Mapping[str, Any], known: Mapping[str, frozenset[str]]) -> list[str]:
    """Everything wrong with the dashboard, as sentences; empty when it is fine."""
    found: list[str] = []
    for key in ("uid", "title"):
        if not isinstance(dashboard.get(key), str) or not dashboard[key]:
            found.append(f"the dashboard has no {key}")
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 36:
        found.append("schemaVersion is missing or older than 36 (Grafana 9)")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    source = variables.get("datasource", {})
    if source.get("type") != "datasource" or source.get("query") != "prometheus":
        found.append("no `datasource` variable of Prometheus data sources")
    for name, variable in variables.items():
        if variable.get("type") != "query":
            continue
        where = f"variable {name}"
        if variable.get("datasource") != DATASOURCE:
            found.append(f"{where}: datasource is not ${{datasource}}")
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        matched = _LABEL_VALUES.match(query)
        if matched is None:
            found.append(f"{where}: not a label_values(metric, label) query: {query!r}")
            continue
        found.extend(_expr_problems(where, matched.group(1), known, set(variables) - {name}, label=matched.group(2)))
    panels = dashboard.get("panels")
    if not isinstance(panels, list) or not panels:
        return [*found, "the dashboard has no panels"]
    ids = [p.get("id") for p in panels]
    if len(set(ids)) != len(ids) or not all(isinstance(i, int) for i in ids):
        found.append(f"panel ids are not unique integers: {ids}")
    for panel in panels:
        where = f"panel {panel.get('id')} ({panel.get('title')!r})"
        if not panel.get("title"):
            found.append(f"{where}: no title")
        if panel.get("type") not in PANEL_TYPES:
            found.append(f"{where}: unknown panel type {panel.get('type')!r}")
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in "xywh") or grid["w"] <= 0 or grid["h"] <= 0 or grid["x"] + grid["w"] > 24:
            found.append(f"{where}: gridPos is not x, y, w, h within Grafana's 24 columns: {grid}")
        if panel.get("datasource") != DATASOURCE:
            found.append(f"{where}: datasource is {panel.get('datasource')!r}, not ${{datasource}}")
        targets = panel.get("targets") or []
        if not targets:
            found.append(f"{where}: no targets")
        if len({t.get("refId") for t in targets}) != len(targets):
            found.append(f"{where}: refIds are missing or not unique")
        for target in targets:
            if target.get("datasource", DATASOURCE) != DATASOURCE:
                found.append(f"{where}: target {target.get('refId')} has its own datasource {target.get('datasource')!r}")
            found.extend(_expr_problems(f"{where} {target.get('refId')}", target.get("expr", ""), known, set(variables),
                                        legend=target.get("legendFormat", "")))
    return found


# ---- the shipped dashboard -----------------------------------------------------------------------------------

def test_the_pushes_carry_exactly_the_metrics_push_declares(pushed: Pushed) -> None:
    assert set(pushed.labels) == set(push.NAMES)


def test_the_shipped_dashboard_has_no_problems(dashboard: dict[str, Any], known: dict[str, frozenset[str]]) -> None:
    assert problems(dashboard, known) == []


def test_every_panel_reads_a_pushed_metric(dashboard: dict[str, Any], known: dict[str, frozenset[str]]) -> None:
    """The guard of the checker: it saw expressions at all, and each names a pushed metric."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs and all(parse(e).metrics and parse(e).metrics <= set(known) for e in exprs)


def _mappings(dashboard: dict[str, Any], metric: str) -> list[set[str]]:
    """The value-mapping keys of every panel that shows ``metric``'s values."""
    out = []
    for panel in dashboard["panels"]:
        if any(metric in parse(t["expr"]).metrics for t in panel["targets"]):
            mappings = panel["fieldConfig"]["defaults"].get("mappings", [])
            out.append({key for m in mappings if m["type"] == "value" for key in m["options"]})
    return out


@pytest.mark.parametrize("metric", ["canary_status", "canary_metric_verdict"])
def test_value_mappings_name_exactly_the_codes_push_sends(dashboard: dict[str, Any], pushed: Pushed, metric: str) -> None:
    """Grafana matches a value mapping on the value's text: 0.5 as "0.5", -1 as "-1"."""
    codes = {f"{value:g}" for value in pushed.values[metric]}
    assert codes >= {"0", "1"}  # the pushes covered the encoding
    panels = _mappings(dashboard, metric)
    assert panels and all(keys == codes for keys in panels), (codes, panels)


# ---- the checker catches what it should ----------------------------------------------------------------------

def _mutate(dashboard: dict[str, Any], change: str) -> dict[str, Any]:
    mutated = copy.deepcopy(dashboard)
    panels = mutated["panels"]
    extra = copy.deepcopy(panels[-1])
    extra["id"] = max(p["id"] for p in panels) + 1
    extra["title"] = "added"
    target = extra["targets"][0]
    target["legendFormat"] = ""
    if change == "unknown metric":
        target["expr"] = 'rate(canary_releases_total{app=~"$app"}[$__rate_interval])'
    elif change == "unknown metric beside a known one":
        target["expr"] = 'canary_weight{app=~"$app"} / ignoring(workload) canary_traffic'
    elif change == "label the metric does not carry":
        target["expr"] = 'canary_weight{metric="error-rate"}'
    elif change == "grouping by a label the metric does not carry":
        target["expr"] = "sum by (phase) (canary_status)"
    elif change == "legend label the series do not carry":
        target["expr"] = "max by (app) (canary_metric_analysis)"
        target["legendFormat"] = "{{metric}}"
    elif change == "undefined variable":
        target["expr"] = 'canary_status{stack=~"$stack"}'
    elif change == "fixed datasource":
        extra["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
    elif change == "target with its own datasource":
        target["datasource"] = {"type": "prometheus", "uid": "prom"}
    elif change == "duplicate id":
        extra["id"] = panels[0]["id"]
    elif change == "no gridPos":
        del extra["gridPos"]
    elif change == "wider than the grid":
        extra["gridPos"] = {"x": 12, "y": 40, "w": 24, "h": 8}
    elif change == "variable from an unknown metric":
        mutated["templating"]["list"][-1]["query"] = "label_values(kube_pod_info, pod)"
    elif change == "fine: functions, ranges, offsets and builtin variables":
        target["expr"] = ('max_over_time(canary_duration_seconds{app=~"$app", job="canary"}[$__range]) '
                          '- on (namespace, app) group_left max(canary_duration_seconds offset 1h) by (namespace, app)')
        target["legendFormat"] = "{{app}}"
    panels.append(extra)
    return mutated


@pytest.mark.parametrize(("change", "complaint"), [
    ("unknown metric", "canary_releases_total is not a metric push.py pushes"),
    ("unknown metric beside a known one", "canary_traffic is not a metric push.py pushes"),
    ("label the metric does not carry", "canary_weight has no label metric"),
    ("grouping by a label the metric does not carry", "grouping by phase"),
    ("legend label the series do not carry", "the legend uses {{metric}}"),
    ("undefined variable", "$stack is not a dashboard variable"),
    ("fixed datasource", "not ${datasource}"),
    ("target with its own datasource", "has its own datasource"),
    ("duplicate id", "panel ids are not unique"),
    ("no gridPos", "gridPos"),
    ("wider than the grid", "gridPos"),
    ("variable from an unknown metric", "kube_pod_info is not a metric push.py pushes"),
])
def test_the_checker_refuses_a_mutated_dashboard(dashboard: dict[str, Any], known: dict[str, frozenset[str]], change: str, complaint: str) -> None:
    assert problems(dashboard, known) == []
    found = problems(_mutate(dashboard, change), known)
    assert complaint in "\n".join(found), found


def test_the_checker_reads_functions_ranges_and_builtin_variables_as_no_metrics(dashboard: dict[str, Any],
                                                                               known: dict[str, frozenset[str]]) -> None:
    assert problems(_mutate(dashboard, "fine: functions, ranges, offsets and builtin variables"), known) == []


@pytest.mark.parametrize(("expr", "metrics", "matchers", "grouping"), [
    ('max by (namespace, app) (canary_status{namespace=~"$namespace", app=~"$app"})', {"canary_status"},
     {("canary_status", "namespace"), ("canary_status", "app")}, {"namespace", "app"}),
    ("rate(canary_weight[5m]) > bool 0", {"canary_weight"}, set(), set()),
    ('canary_phase{phase="Failed"} == 1 and on (app) canary_status', {"canary_phase", "canary_status"}, {("canary_phase", "phase")}, {"app"}),
    ('sum without (count) (canary_failed_checks{count="in_row,{x}"})', {"canary_failed_checks"},
     {("canary_failed_checks", "count")}, {"count"}),
    ("histogram_quantile(0.9, sum by (le) (rate(x_bucket[$__rate_interval])))", {"x_bucket"}, set(), {"le"}),
])
def test_parse(expr: str, metrics: set[str], matchers: set[tuple[str, str]], grouping: set[str]) -> None:
    got = parse(expr)
    assert (got.metrics, got.matchers, got.grouping) == (metrics, matchers, grouping)
