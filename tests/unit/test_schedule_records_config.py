"""The small pure modules of the core: the schedule, the records and their older journal lines, exit
codes, chat notifications, metric templates, units, stack config out and in, and the Flagger import."""

from __future__ import annotations

import copy
import json
import shlex
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from canary.adapters import stackfile
from canary.core import config as stackconfig
from canary.core import exitcodes, flagger, notify, records, schedule, templates, units
from canary.core.records import Check, Effect, Outcome, Phase, ReleaseState, TrackPin, Verdict
from canary.core.routing import Affinity, Match, RouteShape
from canary.core.spec import Alert, Analysis, Severity, Strategy, StringMatch, parse_spec, parse_stack
from canary.errors import InvalidSpec
from tests.conftest import FIXTURES, ROOT, base_values
from tests.helpers import del_path, pod_template, set_path, spec_with, update, values_with

# --- the schedule ---------------------------------------------------------------------------------

INSIDER = {"headers": {"x-canary": {"exact": "insider"}, "user-agent": {"regex": ".*Firefox.*"}}, "queryParams": {"beta": {"exact": "1"}}}
INSIDER_MATCH = Match(headers=(("user-agent", "RegularExpression", ".*Firefox.*"), ("x-canary", "Exact", "insider")), query_params=(("beta", "Exact", "1"),))


@pytest.mark.parametrize(
    ("analysis", "expected"),
    [
        ({"stepWeight": 10, "maxWeight": 50}, [10, 20, 30, 40, 50]),
        ({"stepWeight": 10}, [10, 20, 30, 40, 50]),
        ({"stepWeight": 30, "maxWeight": 50}, [30, 50]),
        ({"stepWeight": 25, "maxWeight": 100}, [25, 50, 75, 100]),
        ({"stepWeight": 50, "maxWeight": 50}, [50]),
        ({"stepWeight": 1, "maxWeight": 3}, [1, 2, 3]),
        ({"stepWeight": 40, "maxWeight": 100}, [40, 80, 100]),
        ({"stepWeights": [1, 5, 10, 25, 50]}, [1, 5, 10, 25, 50]),
        ({"stepWeights": [100]}, [100]),
        ({"iterations": 5}, []),
        ({"iterations": 5, "match": [INSIDER]}, []),
    ],
)
def test_weight_schedule(analysis: dict[str, Any], expected: list[int]) -> None:
    assert schedule.weights(Analysis.model_validate(analysis)) == expected


@pytest.mark.parametrize(("mirror", "percent"), [({}, None), ({"mirror": True}, None), ({"mirror": True, "mirrorWeight": 30}, 30)])
def test_a_canarys_steps_are_its_weights_mirrored_when_asked(mirror: dict[str, Any], percent: int | None) -> None:
    parsed = Analysis.model_validate({"stepWeight": 20, "maxWeight": 60, **mirror})
    assert schedule.steps(parsed) == [RouteShape(weight=w, mirror=bool(mirror), mirror_percent=percent) for w in (20, 40, 60)]
    assert schedule.full_size(parsed) is False and parsed.kind is Strategy.CANARY


def test_a_canarys_steps_carry_the_affinity_cookie() -> None:
    parsed = Analysis.model_validate({"stepWeights": [5, 50], "sessionAffinity": {"cookieName": "stay", "maxAge": "2h"}})
    cookie = Affinity("stay", "r1", 7200)
    assert schedule.steps(parsed, cookie) == [RouteShape(weight=5, affinity=cookie), RouteShape(weight=50, affinity=cookie)]


def test_ab_testing_sends_the_matched_requests_for_each_iteration() -> None:
    parsed = Analysis.model_validate({"iterations": 3, "match": [INSIDER, {"headers": {"cookie": {"regex": "^(.*?;)?(canary=always)(;.*)?$"}}}]})
    cookie_match = Match(headers=(("cookie", "RegularExpression", "^(.*?;)?(canary=always)(;.*)?$"),))
    assert schedule.matches(parsed) == (INSIDER_MATCH, cookie_match)
    assert schedule.steps(parsed) == [RouteShape(weight=0, matches=(INSIDER_MATCH, cookie_match))] * 3
    assert parsed.kind is Strategy.AB and schedule.full_size(parsed) is True
    assert schedule.describe(parsed) == "A/B testing, 3 iterations"



def test_match_values_are_kept_as_given_and_a_header_value_with_edge_whitespace_is_refused() -> None:
    # every config string was stripped: a query value " beta" became "beta", a pattern lost its edge spaces
    parsed = Analysis.model_validate({"iterations": 2, "match": [{"queryParams": {"tier": {"exact": " beta"}},
                                                                  "headers": {"x-who": {"regex": "^a b $"}}}]})
    (match,) = schedule.matches(parsed)
    assert match.query_params == (("tier", "Exact", " beta"),) and match.headers == (("x-who", "RegularExpression", "^a b $"),)
    with pytest.raises(ValueError, match=r"header x-who exact ' insider' begins or ends with whitespace"):
        Analysis.model_validate({"iterations": 2, "match": [{"headers": {"x-who": {"exact": " insider"}}}]})

@pytest.mark.parametrize(
    ("analysis", "shape"),
    [
        ({"iterations": 4}, RouteShape()),
        ({"iterations": 4, "mirror": True}, RouteShape(mirror=True)),
        ({"iterations": 4, "mirror": True, "mirrorWeight": 50}, RouteShape(mirror=True, mirror_percent=50)),
        ({"strategy": "blueGreen", "iterations": 4, "match": [INSIDER]}, RouteShape(matches=(INSIDER_MATCH,))),  # testers' traffic
    ],
)
def test_blue_green_runs_iterations_without_user_traffic(analysis: dict[str, Any], shape: RouteShape) -> None:
    parsed = Analysis.model_validate(analysis)
    assert parsed.kind is Strategy.BLUE_GREEN and schedule.full_size(parsed) is True
    assert schedule.steps(parsed) == [shape] * 4 + [schedule.SWITCH]  # then every request to green, judged for an interval
    assert schedule.describe(parsed) == "blue/green, 4 iterations, then the switch judged for an interval"


def test_describe_a_canary() -> None:
    assert schedule.describe(Analysis.model_validate({"stepWeight": 25, "maxWeight": 75})) == "weights [25, 50, 75]"


# --- records --------------------------------------------------------------------------------------

TIME = "2026-12-02T10:15:00.123Z"
ENTRY = {"time": TIME, "stack": "prod", "app": "web", "release": "20261202T101500-4711", "phase": "Progressing", "weight": 20}
CHECKS = (
    Check(metric="error-rate", query='sum(rate(x{pod=~"web-canary"}[1m]))', value=18.2, threshold_range=records.Bounds(max=1), verdict=Verdict.FAIL,
          effect=Effect.FAIL, reason="error-rate 18.2 > max 1"),
    Check(metric="request-error-rate", query="q", value=0.0, threshold_range=records.Bounds(max=1), verdict=Verdict.INCONCLUSIVE, effect=Effect.HOLD,
          reason="not enough requests", requests=40.0, bound=6.3),
    Check(metric="latency", query="q", value=250.0, verdict=Verdict.PASS, effect=Effect.PASS, reason="r", stable_query="q2", stable_value=240.0,
          interval_low=-3.0, interval_high=12.5, samples=(20, 19), dry_run=True, weight=2.5),
)
RECORDS = [
    records.Decision(**ENTRY, message="shifting to weight 30"),
    records.StateChange(**ENTRY, message="tick: fail", failed_in_row=1, failed_total=2, details={"steps": [10, 20, 30]}),
    records.EventRecord(**ENTRY, message="the gateway accepted the route"),
    records.Up(**ENTRY, targets=("urn:pulumi:prod::canary::kubernetes:gateway.networking.k8s.io/v1:HTTPRoute::web",), pinned={"web": {"route": {"weight": 30}}},
               refreshed=True, seconds=4.2, changes={"update": 1}),
    records.Tick(**ENTRY, outcome=Outcome.FAIL, failed_in_row=1, failed_total=2, threshold=3, failure_limit=5, reason="error-rate 18.2 > max 1", checks=CHECKS, score=66.67),
    records.WebhookCall(**ENTRY, name="load-test", hook_type="rollout", ok=False, seconds=1.5, detail="exit 1"),
    records.Verified(**ENTRY, what="canary ready", details={"hash": "9b1c", "ready": 1}),
    records.Snapshot(**ENTRY, stable_hash="3f2a", stable_image="registry.example.com/shop/web:1.0.0", export="/tmp/export.json"),
    records.Request(**ENTRY, request="abort", by="alice@laptop", reason="bad deploy"),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.type)
def test_every_record_round_trips_through_its_json_form(record: Any) -> None:
    data = records.dump(record)
    assert data["v"] == records.VERSION == 2 and data["type"] == record.type
    assert all(key == key.lower() for key in data)  # snake_case
    assert None not in data.values()
    line = json.dumps(data)
    assert records.parse(json.loads(line)) == record


def test_the_record_types_are_distinct() -> None:
    assert len({r.type for r in RECORDS}) == len(RECORDS) == 9


def test_a_record_of_an_unknown_type_is_refused() -> None:
    with pytest.raises(ValidationError):
        records.parse({**ENTRY, "v": 2, "type": "gossip", "message": "x"})


def _state() -> ReleaseState:
    return ReleaseState(release="20261202T101500-4711", stack="prod", app="web", namespace="prod", phase=Phase.PROGRESSING,
                        stable=TrackPin(template=pod_template(), hash="3f2a", image="registry.example.com/shop/web:1.0.0"),
                        canary=TrackPin(template=pod_template("registry.example.com/shop/web:2.0.0"), hash="9b1c", image="registry.example.com/shop/web:2.0.0",
                                        config_hashes={"configMap/settings": "ab" * 32}),
                        weight=20, route=RouteShape(weight=20).to_json(), step=2, canary_deployed=True, canary_replicas=1, failed_in_row=1, failed_total=1,
                        last_checks=CHECKS, snapshot="config:\n  canary:app: {}\n", unapplied=("canary:analysis.threshold",), rolled_back_from=None)


def test_the_release_state_round_trips() -> None:
    state = _state()
    data = records.dump(state)
    assert data["v"] == 2 and "rolled_back_from" not in data
    assert records.parse_state(json.loads(json.dumps(data))) == state
    assert records.is_legacy(data) is False


@pytest.mark.parametrize(
    ("phase", "pending", "code", "running"),
    [
        (Phase.SUCCEEDED, False, 0, False),
        (Phase.FAILED, False, 1, False),
        (Phase.ABORTED, False, 1, False),
        (Phase.PROMOTED_UNVERIFIED, False, 5, False),
        (Phase.FAILED, True, 4, False),
        (Phase.ROLLING_BACK, True, 4, True),
        (Phase.PROGRESSING, False, 1, True),
        (Phase.WAITING_DECISION, False, 1, True),
    ],
)
def test_exit_codes_by_phase(phase: Phase, pending: bool, code: int, running: bool) -> None:
    assert exitcodes.for_phase(phase.value, pending) == code
    state = _state().model_copy(update={"phase": phase, "rollback_pending": pending})
    assert state.exit_code == code and state.running_phase is running


def test_exit_code_constants() -> None:
    assert (exitcodes.OK, exitcodes.FAILED, exitcodes.INVALID, exitcodes.BUSY, exitcodes.ROLLBACK_PENDING, exitcodes.PROMOTED_UNVERIFIED) == (0, 1, 2, 3, 4, 5)
    assert exitcodes.for_phase("NoSuchPhase") == exitcodes.FAILED


# Lines of the file journal of canary 0.1 (version 1: no "v"), as it wrote them.
V1_TICK = {"time": TIME, "stack": "prod", "release": "r1", "type": "tick", "phase": "Progressing", "weight": 20, "outcome": "fail", "failed_in_row": 1,
           "threshold": 3, "reason": "error-rate 18.2 > max 1: failed check 1 of 3 in a row at weight 20",
           "checks": [{"metric": "error-rate", "query": "q", "value": 18.2, "threshold": {"min": None, "max": 1}, "verdict": "fail", "effect": "fail", "reason": "r"},
                      {"metric": "request-duration", "query": "q2", "value": None, "threshold": {"min": None, "max": 500}, "verdict": "no-data", "effect": "hold",
                       "reason": "no data"}]}
V1_UP = {"time": TIME, "stack": "prod", "release": "r1", "type": "up", "phase": "Initializing", "weight": 0,
         "config": {"canaryImage": "web:2.0.0", "canaryWeight": 0}, "removed": [], "targeted": ["route", "canary-deployment"], "refreshed": False, "seconds": 3.25,
         "changes": {"update": 2}}
V1_STATE = {"release": "r1", "stack": "prod", "phase": "Progressing", "canary_image": "registry.example.com/shop/web:2.0.0",
            "stable_image": "registry.example.com/shop/web:1.0.0", "weight": 20, "failed_in_row": 1, "advance": False, "canary_deployed": True,
            "rollback_to": "Failed", "rollback_step": 0, "reason": "", "started": TIME, "updated": TIME,
            "last_checks": [{"metric": "error-rate", "query": "q", "value": 18.2, "threshold": {"min": None, "max": 1}, "verdict": "fail", "effect": "fail", "reason": "r"}],
            "rollback_pending": False, "reapply": False, "shifting_to": None}


def test_a_version_1_tick_loads_with_its_checks_threshold_as_threshold_range() -> None:
    tick = records.parse(V1_TICK)
    assert isinstance(tick, records.Tick) and tick.v == 2
    assert (tick.outcome, tick.failed_in_row, tick.threshold, tick.failed_total, tick.weight) == (Outcome.FAIL, 1, 3, 0, 20)
    first, second = tick.checks
    assert first.threshold_range == records.Bounds(max=1) and first.value == 18.2 and first.verdict is Verdict.FAIL
    assert second.threshold_range == records.Bounds(max=500) and second.value is None and second.effect is Effect.HOLD
    assert records.parse(records.dump(tick)) == tick


@pytest.mark.parametrize(("targeted", "targets"), [(["route", "canary-deployment"], ("route", "canary-deployment")), ([], ()), (True, ("route",)), (False, ())])
def test_a_version_1_up_loads_with_its_targets_and_config(targeted: Any, targets: tuple[str, ...]) -> None:
    up = records.parse({**V1_UP, "targeted": targeted})
    assert isinstance(up, records.Up)
    assert up.targets == targets and up.pinned == {"canaryImage": "web:2.0.0", "canaryWeight": 0}
    assert (up.seconds, up.changes, up.phase) == (3.25, {"update": 2}, "Initializing")


@pytest.mark.parametrize(
    ("line", "kind", "expected"),
    [
        ({"type": "verified", "stable_image": "web:1", "route": "100/0", "canary_pods": 0, "stable_ready": 4}, records.Verified,
         {"what": "end state", "details": {"stable_image": "web:1", "route": "100/0", "canary_pods": 0, "stable_ready": 4}}),
        ({"type": "snapshot", "config": {"stableImage": "web:1", "canaryWeight": 0}, "config_file": "/c.yaml", "export_file": "/e.json"}, records.Snapshot,
         {"stable_image": "web:1", "export": "/e.json"}),
        ({"type": "state", "phase": "Progressing", "weight": 10, "failed_in_row": 0, "message": "release started", "image": "web:2", "steps": [10, 20]},
         records.StateChange, {"message": "release started", "details": {"image": "web:2", "steps": [10, 20]}}),
        ({"type": "webhook", "name": "load-test", "hook_type": "rollout", "ok": True, "seconds": 1.0, "detail": "ok"}, records.WebhookCall,
         {"name": "load-test", "hook_type": "rollout", "ok": True}),
        ({"type": "decision", "phase": "Progressing", "weight": 10, "message": "shifting", "extra": 1}, records.Decision, {"message": "shifting"}),
        ({"type": "event", "phase": "Progressing", "weight": 10, "message": "paused"}, records.EventRecord, {"message": "paused"}),
    ],
)
def test_other_version_1_lines_load(line: dict[str, Any], kind: type, expected: dict[str, Any]) -> None:
    record = records.parse({"time": TIME, "stack": "prod", "release": "r1", **line})
    assert isinstance(record, kind) and record.v == 2
    assert {k: getattr(record, k) for k in expected} == expected


def test_a_version_1_state_file_loads_with_its_images_as_track_pins() -> None:
    assert records.is_legacy(V1_STATE)
    state = records.parse_state(V1_STATE)
    assert state.v == 2 and state.phase is Phase.PROGRESSING and state.app == ""
    assert state.stable == TrackPin(template={}, hash="", image="registry.example.com/shop/web:1.0.0")
    assert state.canary == TrackPin(template={}, hash="", image="registry.example.com/shop/web:2.0.0")
    assert (state.weight, state.failed_in_row, state.advance, state.canary_deployed, state.rollback_to) == (20, 1, False, True, Phase.FAILED)
    assert state.last_checks[0].threshold_range == records.Bounds(max=1)
    assert records.parse_state(records.dump(state)) == state


def test_a_version_1_state_before_the_canary_has_no_canary_pin() -> None:
    state = records.parse_state({**V1_STATE, "phase": "Initializing", "canary_image": ""})
    assert state.canary is None and state.stable is not None


def test_a_camel_case_threshold_range_of_a_check_is_read_too() -> None:
    state = records.parse_state({**V1_STATE, "last_checks": [{**V1_STATE["last_checks"][0], "thresholdRange": {"min": 2}}]})
    assert state.last_checks[0].threshold_range == records.Bounds(min=2)


def test_bounds_read_as_ranges() -> None:
    assert [str(records.Bounds(min=1, max=5)), str(records.Bounds(max=1)), str(records.Bounds(min=99)), str(records.Bounds())] == ["[1, 5]", "max 1", "min 99", "none"]


# --- notifications --------------------------------------------------------------------------------

HOOK = "https://hooks.example.com/services/T000/B000/XXXX"


def _alert(kind: str, **extra: Any) -> Alert:
    return Alert.model_validate({"name": "chat", "type": kind, "url": HOOK, **extra})


def _notified(kind: str, severity: Severity, **extra: Any) -> dict[str, Any]:
    state = _state().model_copy(update={"canary": TrackPin(template={}, hash="9b1c")})  # no image: the hash names it
    return notify.message(_alert(kind, **extra), spec_with(), state, "web: weight 20, 1 failed check", severity)


FIELDS = [("Target", "Deployment/web.prod"), ("Phase", "Progressing"), ("Weight", "20"), ("Canary", "9b1c"),
          ("Stable", "registry.example.com/shop/web:1.0.0"), ("Release", "20261202T101500-4711")]


@pytest.mark.parametrize("kind", ["slack", "discord"])
@pytest.mark.parametrize(("severity", "color"), [(Severity.INFO, "good"), (Severity.WARN, "warning"), (Severity.ERROR, "danger")])
def test_slack_and_discord_take_a_slack_attachment(kind: str, severity: Severity, color: str) -> None:
    body = _notified(kind, severity)
    assert body == {
        "username": "canary",
        "icon_emoji": ":rocket:",
        "attachments": [{
            "color": color,
            "author_name": "web.prod",
            "text": "web: weight 20, 1 failed check",
            "mrkdwn_in": ["text"],
            "fields": [{"title": k, "value": v, "short": k not in ("Target", "Release")} for k, v in FIELDS],
        }],
    }


def test_slack_names_the_channel_and_user_when_set() -> None:
    body = _notified("slack", Severity.INFO, channel="#releases", username="deploys")
    assert body["channel"] == "#releases" and body["username"] == "deploys"


@pytest.mark.parametrize(("severity", "color"), [(Severity.INFO, "0076D7"), (Severity.WARN, "FFA500"), (Severity.ERROR, "FF0000")])
def test_teams_takes_a_message_card(severity: Severity, color: str) -> None:
    assert _notified("msteams", severity) == {
        "@type": "MessageCard",
        "@context": "http://schema.org/extensions",
        "themeColor": color,
        "summary": "web.prod",
        "sections": [{"activityTitle": "web: weight 20, 1 failed check", "activitySubtitle": "web.prod", "facts": [{"name": k, "value": v} for k, v in FIELDS]}],
    }


def test_a_release_without_pins_has_fewer_fields() -> None:
    state = ReleaseState(release="r1", stack="prod", app="web", phase=Phase.INITIALIZING)
    body = notify.message(_alert("msteams"), spec_with(), state, "starting", Severity.INFO)
    assert [f["name"] for f in body["sections"][0]["facts"]] == ["Target", "Phase", "Weight", "Release"]


@pytest.mark.parametrize(
    ("threshold", "admitted"),
    [(Severity.INFO, {Severity.INFO, Severity.WARN, Severity.ERROR}), (Severity.WARN, {Severity.WARN, Severity.ERROR}), (Severity.ERROR, {Severity.ERROR})],
)
def test_the_severity_filter(threshold: Severity, admitted: set[Severity]) -> None:
    assert {s for s in Severity if notify.admits(threshold, s)} == admitted


@pytest.mark.parametrize(
    ("kind", "url", "address"),
    [
        ("discord", "https://discord.com/api/webhooks/1/abc", "https://discord.com/api/webhooks/1/abc/slack"),
        ("discord", "https://discord.com/api/webhooks/1/abc/", "https://discord.com/api/webhooks/1/abc/slack"),
        ("discord", "https://discord.com/api/webhooks/1/abc/slack", "https://discord.com/api/webhooks/1/abc/slack"),
        ("slack", HOOK, HOOK),
        ("msteams", "https://example.webhook.office.com/webhookb2/x", "https://example.webhook.office.com/webhookb2/x"),
    ],
)
def test_discord_is_posted_at_its_slack_endpoint(kind: str, url: str, address: str) -> None:
    assert notify.address(Alert.model_validate({"name": "chat", "type": kind, "url": url})) == address


# --- metric templates -----------------------------------------------------------------------------


def test_placeholders_and_render() -> None:
    query = ('sum(rate(x{ {{podLabel}}=~"{{ target }}-.*",namespace="{{namespace}}",q="{{ variables.q }}"}[{{ interval }}]))'
             ' / sum(rate(x{ {{ podLabel }}=~"{{ primary }}-.*"}[{{interval}}])) - {{ stable }}{{ variables.other_one }}')
    found = templates.placeholders(query)
    assert found.builtins == {"target", "namespace", "interval", "podLabel", "primary", "stable"}
    assert found.variables == {"q", "other_one"}
    rendered = templates.render(query, target="web-canary", stable="web-stable", namespace="prod", interval="1m", variables={"q": "0.9", "other_one": "0"}, pod_label="pod")
    assert rendered == ('sum(rate(x{ pod=~"web-canary-.*",namespace="prod",q="0.9"}[1m]))'
                        ' / sum(rate(x{ pod=~"web-stable-.*"}[1m])) - web-stable0')


def test_the_pod_label_defaults_to_flaggers() -> None:
    assert templates.render("{{ podLabel }}", target="t", namespace="n", interval="1m", variables={}) == "kubernetes_pod_name"


def test_the_namespace_label_is_a_placeholder_first_in_a_selector_too() -> None:
    # a template selecting the namespace by {{ namespaceLabel }} writes it first in a selector: x{{{ namespaceLabel }}=…}
    query = 'sum(rate(x{{{ namespaceLabel }}="{{ namespace }}",{{podLabel}}=~"{{ target }}-.*"}[{{ interval }}])) / sum(rate(x{ {{namespaceLabel}}="{{ namespace }}"}[1m]))'
    assert templates.placeholders(query).builtins == {"namespaceLabel", "namespace", "podLabel", "target", "interval"}
    rendered = templates.render(query, target="web-canary", namespace="prod", interval="1m", variables={}, namespace_label="kubernetes_namespace")
    assert rendered == ('sum(rate(x{kubernetes_namespace="prod",kubernetes_pod_name=~"web-canary-.*"}[1m]))'
                        ' / sum(rate(x{ kubernetes_namespace="prod"}[1m]))')
    assert templates.render("{{ namespaceLabel }}", target="t", namespace="n", interval="1m", variables={}) == "namespace"


def test_an_unknown_placeholder_names_the_namespace_label_among_the_allowed() -> None:
    with pytest.raises(ValueError, match=r"unknown placeholder \{\{ nsLabel \}\}; allowed: .*\{\{ podLabel \}\}, \{\{ namespaceLabel \}\}"):
        templates.placeholders('x{ {{ nsLabel }}="a"}')
    with pytest.raises(ValueError, match="has an unclosed"):
        templates.placeholders('x{{{{ namespaceLabel }}="a"}')


def test_render_refuses_a_missing_variable() -> None:
    with pytest.raises(KeyError, match="'q' has no value"):
        templates.render("x{q='{{ variables.q }}'}", target="t", namespace="n", interval="1m", variables={})


def test_render_refuses_an_unknown_placeholder() -> None:
    with pytest.raises(KeyError, match="unknown placeholder 'pod'"):
        templates.render("x{q='{{ pod }}'}", target="t", namespace="n", interval="1m", variables={})


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("{{ pod }}", "unknown placeholder {{ pod }}"),
        ("{{ variables. }}", "unknown placeholder"),
        ("{{ variables.1st }}", "unknown placeholder"),
        ("{{ Target }}", "unknown placeholder"),
        ("sum(x", "unclosed '('"),
        ("sum(x]", "unbalanced ']'"),
        ("x}", "unbalanced '}'"),
        ('x{a="b}', "unterminated string"),
        ("x {{ target", "unclosed '{{'"),
        ("x }} y", "stray '}}'"),
        ("   ", "non-empty"),
    ],
)
def test_bad_templates(query: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        templates.placeholders(query)
    assert message in str(info.value)


@pytest.mark.parametrize("query", ['x{a="(["}', "x{a='}'}", 'x{a="\\"("}', "rate(x[5m]) > `(`"])
def test_brackets_inside_strings_do_not_count(query: str) -> None:
    assert templates.placeholders(query).builtins == frozenset()


@pytest.mark.parametrize(
    "query",
    ["sum(rate(x[1m])) # the canary's errors", "# don't page (yet\nsum(rate(x[1m]))", 'sum(x{a="#"}) # it\'s {fine', "x{a=~`C:\\`}"],
    ids=["apostrophe-in-comment", "comment-line-first", "hash-in-string", "backslash-ends-raw-string"],
)
def test_comments_and_raw_strings_are_read_as_promql_reads_them(query: str) -> None:
    templates.placeholders(query)


@pytest.mark.parametrize(("query", "message"), [("# comment\nsum(x", "unclosed '('"), ('sum(x) # )\n{a="', "unterminated string")])
def test_what_follows_a_comment_is_still_checked(query: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        templates.placeholders(query)
    assert message in str(info.value)


# --- units ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds", "formatted"),
    [("1m", 60, "1m"), ("30s", 30, "30s"), ("1m30s", 90, "1m30s"), ("2h", 7200, "2h"), ("500ms", 0.5, "500ms"), (5, 5, "5s"), (1.5, 1.5, "1500ms"),
     ("1h0m5s", 3605, "1h5s"), (" 10s ", 10, "10s"), ("90s", 90, "1m30s"), ("30", 30, "30s"), ("1.5", 1.5, "1500ms")],
)
def test_durations(text: Any, seconds: float, formatted: str) -> None:
    parsed = units.parse_duration(text)
    assert parsed == timedelta(seconds=seconds)
    assert units.format_duration(parsed) == formatted
    assert units.parse_duration(parsed) is parsed


@pytest.mark.parametrize(("text", "rule"), [("abc", "must be a duration"), ("", "must be a duration"), ("1x", "must be a duration"), ("m", "must be a duration"),
                                            ("1.5m", "must be a duration"), ("-1s", "greater than zero"), (0, "greater than zero"), (-3, "greater than zero"),
                                            (True, "must be a duration"), (None, "must be a duration"), ("1s1m", "must be a duration"),
                                            ("0s", "greater than zero"), ("0ms", "greater than zero"), ("0h0m", "greater than zero"),
                                            (float("nan"), "finite number of seconds"), (float("inf"), "finite number of seconds"),
                                            ("99999999999h", "at most 8784h"), ("1000000000000000s", "at most 8784h"), (10**20, "at most 8784h"),
                                            ("8785h", "at most 8784h"), (timedelta(days=400), "at most 8784h"), (timedelta(0), "greater than zero"),
                                            ("0", "greater than zero"), ("99999999999", "at most 8784h"), ("1e3", "must be a duration"), (".5", "must be a duration")])
def test_bad_durations(text: Any, rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        units.parse_duration(text)


def test_a_duration_that_may_be_zero_takes_it_in_either_spelling_and_refuses_less() -> None:
    assert units.parse_duration("0s", allow_zero=True) == units.parse_duration(0, allow_zero=True) == timedelta(0)
    assert units.parse_duration("8784h") == timedelta(days=366)
    for negative in ("-1s", -1):
        with pytest.raises(ValueError, match="must not be negative"):
            units.parse_duration(negative, allow_zero=True)


@pytest.mark.parametrize("text", ["1e400", "1e309", "99999999999999999999e300"])
def test_a_quantity_too_large_for_a_number_is_a_rule_not_a_traceback(text: str) -> None:
    with pytest.raises(ValueError, match="too large for a Kubernetes quantity"):
        units.quantity_value(text)


def test_a_zero_duration_formats_as_0s() -> None:
    assert units.format_duration(timedelta(0)) == "0s"


@pytest.mark.parametrize(
    "image",
    ["demo:v1", "web:1.0.0", "registry.example.com/shop/web:1.8.0", "localhost:5000/web:2", "localhost/web:2", "web@sha256:" + "a" * 64,
     "registry.example.com/a/b/c:v1-rc.1", "registry.example.com/web:1@sha256:" + "0" * 64, "my-registry:5000/team/web:1"],
)
def test_good_images(image: str) -> None:
    assert units.check_image(image) == image


@pytest.mark.parametrize(
    ("image", "rule"),
    [("web", "must name a tag or a digest"), ("registry.example.com/web", "must name a tag or a digest"), ("Web:1", "must be an image reference"),
     ("web:", "must be an image reference"), ("web:1 0", "must be an image reference"), (":1.0", "must be an image reference"),
     ("web@sha256:abc", "must be an image reference"), ("web:1.0/x:2", "must be an image reference"), ("a/" * 130 + "b:1", "must be an image reference")],
)
def test_bad_images(image: str, rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        units.check_image(image)


@pytest.mark.parametrize(("image", "tag"), [("web:1.0.0", "1.0.0"), ("web@sha256:" + "ab" * 32, "abababababab"), ("localhost:5000/web:2", "2"), ("Bad Image", "")])
def test_image_tag(image: str, tag: str) -> None:
    assert units.image_tag(image) == tag


@pytest.mark.parametrize("quantity", ["100m", "0.5", "1", "128Mi", "1Gi", "2G", "1e3", "1.5Ki"])
def test_good_quantities(quantity: str) -> None:
    assert units.check_quantity(quantity) == quantity


@pytest.mark.parametrize("quantity", ["lots", "1.", ".5", "-1", "1 Gi", "1gb", True, ""])
def test_bad_quantities(quantity: Any) -> None:
    with pytest.raises(ValueError, match="Kubernetes quantity"):
        units.check_quantity(quantity)


def test_a_numeric_quantity_is_read_as_text() -> None:
    assert units.check_quantity(2) == "2" and units.check_quantity(0.25) == "0.25"


@pytest.mark.parametrize(("name", "ok"), [("settings", True), ("app.settings-v2", True), ("a" * 253, True), ("a" * 254, False), ("Settings", False),
                                          ("-settings", False), ("settings.", False), ("a..b", False), ("", False), ("set_tings", False)])
def test_dns_subdomains(name: str, ok: bool) -> None:
    if ok:
        assert units.check_dns_subdomain(name) == name
    else:
        with pytest.raises(ValueError, match="DNS-1123 subdomain"):
            units.check_dns_subdomain(name)


@pytest.mark.parametrize(("name", "ok"), [("web", True), ("web-2", True), ("a" * 63, True), ("a" * 64, False), ("-web", False), ("web.prod", False), ("Web", False)])
def test_dns_labels(name: str, ok: bool) -> None:
    if ok:
        assert units.check_dns_label(name) == name
    else:
        with pytest.raises(ValueError):
            units.check_dns_label(name)


@pytest.mark.parametrize(("host", "ok"), [("web.example.com", True), ("*.example.com", True), ("localhost", True), ("*", False), ("web.*.com", False), ("Web.com", False)])
def test_hostnames(host: str, ok: bool) -> None:
    if ok:
        assert units.check_hostname(host) == host
    else:
        with pytest.raises(ValueError, match="DNS-1123 hostname"):
            units.check_hostname(host)


# --- stack config out and back in ---------------------------------------------------------------


@pytest.mark.parametrize(
    "mutations",
    [
        (),
        (update("analysis", failureLimit=5, warmup="1m", holdLimit="20m", confidence=0.99, score={"pass": 90, "marginal": 70}),),
        (del_path("stableImage"), set_path("app.image", "registry.example.com/shop/web:1.0.0"), set_path("app.template", pod_template()),
         del_path("app.replicas"), set_path("app.autoscaler", {"maxReplicas": 5}), set_path("app.disruptionBudget", {"minAvailable": "50%"})),
        (set_path("analysis.metrics.1", {"name": "request-duration", "compare": {"by": "ratio", "thresholdRange": {"max": 1.2}}, "judge": {"tolerance": 0.1},
                                         "dryRun": True, "weight": 2}), set_path("analysis.metrics.0.critical", True), set_path("prometheus.scrapeInterval", "1s")),
        (del_path("analysis.stepWeight"), del_path("analysis.maxWeight"), update("analysis", iterations=3, match=[INSIDER])),
        (set_path("prometheus.podLabel", "pod"), set_path("prometheus.pushgateway", "http://pushgateway:9091"), set_path("rollout", "direct")),
    ],
    ids=["base", "analysis-fields", "template", "compare-judge", "ab", "prometheus"],
)
def test_stack_config_round_trips(mutations: tuple[Any, ...]) -> None:
    spec = parse_stack(values_with(*mutations))
    config = stackconfig.to_config(spec)
    assert all(key.startswith("canary:") for key in config)
    assert stackconfig.from_config(config) == spec
    assert stackconfig.from_config(json.loads(json.dumps(config))) == spec


def test_a_multi_app_stack_round_trips() -> None:
    values = base_values()
    app = {**values.pop("app"), "image": values.pop("stableImage")}
    values["apps"] = {"web": {"app": app, "gateway": values.pop("gateway"), "analysis": values.pop("analysis")}}
    spec = parse_stack(values)
    config = stackconfig.to_config(spec)
    assert set(config) == {"canary:apps", "canary:prometheus", "canary:metricTemplates"}
    assert stackconfig.from_config(config) == spec


def test_to_config_never_writes_the_prometheus_token_or_headers() -> None:
    spec = stackconfig.from_file_values({f"canary:{k}": v for k, v in values_with(
        set_path("prometheus.token", stackconfig.ENCRYPTED), set_path("prometheus.headers", {"X-Org": stackconfig.ENCRYPTED})).items()}, "f")
    config = stackconfig.to_config(spec)
    assert config["canary:prometheus"] == {"address": "http://prometheus.monitoring:9090"}


def test_to_config_writes_defaults_of_required_sections_only_when_set() -> None:
    config = stackconfig.to_config(parse_stack(base_values()))
    assert "interval" in config["canary:analysis"] and "warmup" not in config["canary:analysis"]
    assert "canary:rollout" not in config and "canary:release" not in config


# --- the Flagger import ---------------------------------------------------------------------------

CANARY = FIXTURES / "flagger-canary.yaml"
TEMPLATE = FIXTURES / "flagger-metric-template.yaml"


def _manifests(*paths: Path) -> list[dict[str, Any]]:
    return stackfile.load_manifests([(str(p), p.read_text()) for p in paths])


def _canary() -> dict[str, Any]:
    return yaml.safe_load(CANARY.read_text())  # type: ignore[no-any-return]


def _template() -> dict[str, Any]:
    return yaml.safe_load(TEMPLATE.read_text())  # type: ignore[no-any-return]


def test_the_reference_manifests_convert_with_every_field() -> None:
    result = flagger.convert(_manifests(CANARY, TEMPLATE))
    (release,) = [result.spec.release_spec(name) for name in result.spec.app_configs()]
    app, a = release.app, release.analysis
    assert (app.name, app.namespace, app.service_port, app.port) == ("web", "prod", 80, 8080)
    assert app.image == "web:change-me" and result.spec.stable_image is None
    assert a.interval == timedelta(minutes=1) and a.step_weight == 10 and a.max_weight == 50
    assert (a.threshold, a.failure_limit) == (3, 3)  # Flagger's threshold counts failures in all; canary keeps it in a row too
    error_rate, duration = a.metrics
    assert error_rate.name == "error-rate" and error_rate.template_ref is not None and error_rate.template_ref.name == "error-rate"
    assert error_rate.threshold_range is not None and error_rate.threshold_range.max == 1 and error_rate.interval == timedelta(minutes=1)
    assert duration.name == "request-duration" and duration.template_ref is None and duration.threshold_range is not None and duration.threshold_range.max == 500
    (hook,) = a.webhooks
    assert (hook.name, hook.type.value, hook.cmd, hook.url, hook.background) == ("load-test", "rollout", "sh -c 'hey -z 1m -q 10 -c 2 http://web-canary.prod:80/'", None, True)
    template = release.metric_templates["error-rate"]
    assert template.provider.address == "http://prometheus.monitoring:9090"
    assert template.query == _template()["spec"]["query"].strip()
    assert release.prometheus is not None and release.prometheus.address == "http://prometheus.monitoring:9090"
    notes = "\n".join(result.notes)
    assert "flagger-loadtester" in notes and "metadata.cmd" in notes
    assert "spec.analysis.threshold: carried over as failureLimit" in notes
    assert "app.image: not in Flagger manifests" in notes and "gateway.parentRefs: the Canary has no spec.service.gatewayRefs" in notes


def test_the_import_is_equivalent_to_the_prod_stack() -> None:
    prod = stackconfig.from_file_values(stackfile.read_stack_file(ROOT / "stacks" / "Pulumi.prod.yaml"), "prod").release_spec("web")
    result = flagger.convert(_manifests(CANARY, TEMPLATE), stable_image=prod.app.image, parent_ref={"name": "public", "namespace": "gateway", "sectionName": "https"})
    imported = result.spec.release_spec("web")
    assert imported.analysis.failure_limit == 3 and prod.analysis.failure_limit is None
    (hook,), (prod_hook,) = imported.analysis.webhooks, prod.analysis.webhooks
    assert hook.cmd == f"sh -c '{prod_hook.cmd}'"  # the load tester's shell, written out
    assert imported.analysis.model_copy(update={"failure_limit": None, "webhooks": prod.analysis.webhooks}) == prod.analysis
    # Flagger's load tester runs it in the background, unjudged (its 15s bounded the call to the load tester)
    assert hook.background and hook.model_copy(update={"cmd": prod_hook.cmd, "background": False, "timeout": prod_hook.timeout}) == prod_hook
    assert imported.metric_templates["error-rate"].query.strip() == prod.metric_templates["error-rate"].query.strip()
    assert imported.app.image == prod.app.image == "registry.example.com/shop/web:1.8.0"
    assert imported.gateway.parent_refs == prod.gateway.parent_refs
    assert not any("app.image" in note or "gateway.parentRefs" in note for note in result.notes)


def test_the_imported_stack_file_is_valid_stack_config() -> None:
    result = flagger.convert(_manifests(CANARY, TEMPLATE), stable_image="registry.example.com/shop/web:1.8.0",
                             parent_ref={"name": "public", "namespace": "gateway", "sectionName": "https"})
    text = stackfile.dump_stack_file(result.spec)
    assert "maxWeight: 50" in text and "threshold: 3" in text and "failureLimit: 3" in text and "image: registry.example.com/shop/web:1.8.0" in text
    again = stackconfig.from_file_values(yaml.safe_load(text)["config"], "imported")
    assert again == result.spec
    assert again.release_spec("web").gateway.parent_refs[0].model_dump(exclude_none=True) == {"name": "public", "namespace": "gateway", "section_name": "https"}


def test_gateway_refs_and_hosts_carry_over() -> None:
    doc = _canary()
    doc["spec"]["service"].update(gatewayRefs=[{"name": "public", "namespace": "gateway", "sectionName": "https", "port": 443}], hosts=["web.example.com", "*"])
    gateway = flagger.convert([doc, _template()]).spec.gateway
    assert gateway is not None and gateway.hostnames == ["web.example.com"]
    assert gateway.parent_refs[0].model_dump(exclude_none=True) == {"name": "public", "namespace": "gateway", "section_name": "https", "port": 443}


def test_two_templates_of_one_name_are_refused_not_one_silently_replaced() -> None:
    other = _template()
    other["metadata"]["namespace"] = "other"
    other["spec"]["provider"]["address"] = "http://prom-b:9090"
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([_canary(), _template(), other])
    (problem,) = info.value.problems
    assert problem.field == "MetricTemplate error-rate" and "prod and other" in problem.value and "must be given once" in problem.rule


def test_a_template_ref_to_another_namespace_than_the_template_given_is_refused() -> None:
    doc, template = _canary(), _template()
    doc["spec"]["analysis"]["metrics"][0]["templateRef"]["namespace"] = "flagger"
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([doc, template])
    assert [(p.field, p.value) for p in info.value.problems] == [("spec.analysis.metrics[0].templateRef.namespace", "flagger")]
    assert "the one given is prod/error-rate" in info.value.problems[0].rule
    template["metadata"]["namespace"] = "flagger"  # the one it names: taken
    assert flagger.convert([doc, template]).spec.release_spec("web").metric_templates["error-rate"]


def test_a_gateway_ref_that_is_not_a_gateway_is_refused_and_unknown_keys_are_noted() -> None:
    doc = _canary()
    doc["spec"]["service"]["gatewayRefs"] = [{"name": "mesh", "kind": "Service", "group": ""}]
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([doc, _template()])
    assert [(p.field, p.value) for p in info.value.problems] == [("spec.service.gatewayRefs[0]", "core/Service")]
    doc["spec"]["service"]["gatewayRefs"] = [{"name": "public", "kind": "Gateway", "group": "gateway.networking.k8s.io", "weight": 1}]
    result = flagger.convert([doc, _template()])
    assert "spec.service.gatewayRefs[0].weight: not supported by canary; ignored" in result.notes


def test_the_gateway_option_replaces_the_canary_s_gateway_refs_with_a_note() -> None:
    doc = _canary()
    doc["spec"]["service"]["gatewayRefs"] = [{"name": "gw", "namespace": "infra"}]
    result = flagger.convert([doc, _template()], parent_ref={"name": "public", "namespace": "gw"})
    gateway = result.spec.gateway
    assert gateway is not None and [r.name for r in gateway.parent_refs] == ["public"]
    assert "spec.service.gatewayRefs: replaced by --gateway" in result.notes


@pytest.mark.parametrize(("kind", "shell"), [(None, "sh"), ("cmd", "sh"), ("bash", "bash")])
def test_a_load_tester_hook_runs_its_command_through_the_load_tester_s_shell(kind: str | None, shell: str) -> None:
    # a cmd was run without a shell: `curl -sf … | grep -q ok` passed "|" to curl as an argument
    doc = _canary()
    metadata = {"cmd": "curl -sf http://web-canary/healthz | grep -q \"it's ok\""}
    if kind:
        metadata["type"] = kind
    doc["spec"]["analysis"]["webhooks"] = [{"name": "load", "url": "http://flagger-loadtester.test/", "metadata": metadata}]
    result = flagger.convert([doc, _template()])
    (hook,) = result.spec.release_spec("web").analysis.webhooks
    assert hook.cmd is not None and shlex.split(hook.cmd) == [shell, "-c", metadata["cmd"]] and hook.metadata == {}
    # the load tester answers a cmd at once and never reports its outcome: a rollout one runs in the background
    assert hook.background is (kind != "bash")
    background = [n for n in result.notes if n.startswith("spec.analysis.webhooks[0].metadata.cmd: runs in the background")]
    assert len(background) == (0 if kind == "bash" else 1), result.notes


@pytest.mark.parametrize(("metadata", "field", "value"), [
    ({"cmd": None}, "metadata.cmd", "None"),
    ({"cmd": ["hey", "-z", "1m"]}, "metadata.cmd", "['hey', '-z', '1m']"),
    ({"approve": True}, "metadata.approve", "True"),
    ({"retries": 3}, "metadata.retries", "3"),
    ({1: "x"}, "metadata", "1"),
])
def test_webhook_metadata_that_is_not_a_string_is_refused_naming_it(metadata: dict[Any, Any], field: str, value: str) -> None:
    # Flagger's metadata maps strings to strings; the import turned an empty cmd into the command "None" and true into "True"
    doc = _canary()
    doc["spec"]["analysis"]["webhooks"] = [{"name": "gate", "type": "confirm-rollout", "url": "http://flagger-loadtester.test/", "metadata": metadata}]
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([doc, _template()])
    assert [(p.field, p.value) for p in info.value.problems] == [(f"spec.analysis.webhooks[0].{field}", value)]


def test_an_event_hook_is_kept_with_a_note_that_it_is_sent_flaggers_payload() -> None:
    # it was kept without a word, though its receiver was written for Flagger's payload (now sent, with canary's fields)
    doc = _canary()
    doc["spec"]["analysis"]["webhooks"].append({"name": "notify", "type": "event", "url": "http://events.example/"})
    result = flagger.convert([doc, _template()])
    assert [h.type.value for h in result.spec.release_spec("web").analysis.webhooks] == ["rollout", "event"]
    assert [n for n in result.notes if n.startswith("spec.analysis.webhooks[1]: an event hook is sent Flagger's event payload")], result.notes
    assert not [n for n in result.notes if n.startswith("spec.analysis.webhooks[0]: an event hook")]


def test_a_non_load_tester_cmd_task_other_than_a_command_line_is_refused() -> None:
    doc = _canary()
    doc["spec"]["analysis"]["webhooks"] = [{"name": "job", "url": "http://flagger-loadtester.test/",
                                            "metadata": {"type": "concord", "cmd": "run"}}]
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([doc, _template()])
    assert [(p.field, p.value) for p in info.value.problems] == [("spec.analysis.webhooks[0].metadata.type", "concord")]


def test_a_bad_threshold_is_named_once_as_flagger_spells_it() -> None:
    doc = _canary()
    doc["spec"]["analysis"]["threshold"] = "five"
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([doc, _template()])
    assert [p.field for p in info.value.problems] == ["spec.analysis.threshold"]


def test_what_the_canary_leaves_out_is_written_as_flaggers_default_not_left_to_canarys() -> None:
    # canary's own defaults (threshold 5, maxWeight 50) gave a bad version five failed intervals instead of one
    doc = _canary()
    del doc["spec"]["analysis"]["threshold"], doc["spec"]["analysis"]["maxWeight"]
    result = flagger.convert([doc, _template()])
    analysis = result.spec.release_spec("web").analysis
    assert (analysis.threshold, analysis.failures_allowed, analysis.max_weight) == (1, 1, 100)
    assert any(n.startswith("spec.analysis.threshold: not set; written as 1, Flagger's default") for n in result.notes), result.notes
    assert any(n.startswith("spec.analysis.maxWeight: not set; written as 100, Flagger's default") for n in result.notes), result.notes
    blue_green = _weights_removed(_canary())
    blue_green["spec"]["analysis"]["iterations"] = 5
    assert not any("maxWeight" in n for n in flagger.convert([blue_green, _template()]).notes)


@pytest.mark.parametrize(("given", "runs", "raised"), [("5s", "10s", True), ("0s", "10s", True), ("10s", "10s", False), ("30s", "30s", False)])
def test_an_interval_below_flaggers_minimum_is_raised_to_it_as_flagger_does(given: str, runs: str, raised: bool) -> None:
    doc = _canary()
    doc["spec"]["analysis"]["interval"] = given
    result = flagger.convert([doc, _template()])
    assert result.spec.release_spec("web").analysis.interval == units.parse_duration(runs)
    assert any(n.startswith(f"spec.analysis.interval: {given} is below Flagger's minimum, 10s") for n in result.notes) is raised


@pytest.mark.parametrize("threshold", [0, -2])
def test_a_threshold_below_one_is_run_as_flaggers_one_and_says_so(threshold: int) -> None:
    # refused before, though Flagger runs it: a threshold below 1 is its default, 1
    doc = _canary()
    doc["spec"]["analysis"]["threshold"] = threshold
    result = flagger.convert([doc, _template()])
    analysis = result.spec.release_spec("web").analysis
    assert (analysis.threshold, analysis.failures_allowed) == (1, 1)
    assert any(n.startswith(f"spec.analysis.threshold: {threshold} is run by Flagger as 1") for n in result.notes), result.notes


@pytest.mark.parametrize("given", ["5min", "1m30", "30sec", "2m "])
def test_an_interval_flagger_cannot_parse_is_written_as_the_default_it_runs_with_a_note(given: str) -> None:
    # its CRD takes these (a number, then m or s), its parser does not: Flagger runs the analysis every minute
    doc = _canary()
    doc["spec"]["analysis"]["interval"] = given
    result = flagger.convert([doc, _template()])
    assert result.spec.release_spec("web").analysis.interval == timedelta(minutes=1)
    assert any(n.startswith(f"spec.analysis.interval: {given!r} is not a duration Flagger can parse, and Flagger runs its default, 1m")
               for n in result.notes), result.notes


@pytest.mark.parametrize("given", ["-1m", "-0", "+5m", 5], ids=["negative", "minus-zero", "plus", "a-number"])
def test_an_interval_flagger_s_crd_refuses_is_refused(given: object) -> None:
    # Go reads -1m and +5m, so the CRD's own pattern was never asked: -1m was imported as 10s with a note, +5m as
    # 5m, and a bare 5 (not a string, which the CRD refuses) as 5s, below Flagger's minimum
    doc = _canary()
    doc["spec"]["analysis"]["interval"] = given
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([doc, _template()])
    assert [p.field for p in info.value.problems] == ["spec.analysis.interval"] and "Flagger's Canary CRD refuses" in str(info.value)


@pytest.mark.parametrize(("given", "runs"), [("1m1.5s", timedelta(seconds=61.5)), ("30s1m", timedelta(seconds=90))])
def test_an_interval_is_read_as_flagger_reads_it(given: str, runs: timedelta) -> None:
    doc = _canary()
    doc["spec"]["analysis"]["interval"] = given
    result = flagger.convert([doc, _template()])
    assert result.spec.release_spec("web").analysis.interval == runs
    assert any(n.startswith(f"spec.analysis.interval: {given} written as ") for n in result.notes), result.notes


@pytest.mark.parametrize(("text", "seconds"), [
    ("1m30s", 90), ("1.5m", 90), (".5s", 0.5), ("0", 0), ("-5m", -300), ("1h", 3600), ("10ms", 0.01), ("2\u00b5s", 2e-6), ("1m90s", 150),
    ("5min", None), ("1m30", None), ("", None), (".", None), ("1 m", None), ("m", None), ("5m ", None),
])
def test_durations_are_read_as_gos_parser_reads_them(text: str, seconds: float | None) -> None:
    got = flagger.go_duration(text)
    assert (got.total_seconds() if got is not None else None) == (pytest.approx(seconds) if seconds is not None else None)


def test_a_bad_gateway_option_is_named_as_the_option() -> None:
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([_canary(), _template()], parent_ref={"name": "Public"})
    assert [p.field for p in info.value.problems] == ["--gateway"]


def test_unsupported_fields_are_reported_by_name() -> None:
    doc = _canary()
    doc["spec"]["progressDeadlineSeconds"] = 60
    doc["spec"]["analysis"]["primaryReadyThreshold"] = 100
    doc["spec"]["analysis"]["metrics"][0]["query"] = "up"
    doc["spec"]["service"]["retries"] = {"attempts": 3}
    doc["spec"]["service"]["targetPort"] = "http"
    doc["spec"]["provider"] = "istio"
    template = _template()
    template["spec"]["provider"].update(secretRef={"name": "prom-auth"}, insecureSkipVerify=True)
    result = flagger.convert([doc, template, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}])
    notes = "\n".join(result.notes)
    for field in ("spec.progressDeadlineSeconds", "spec.analysis.primaryReadyThreshold", "spec.analysis.metrics[0].query", "spec.service.retries"):
        assert f"{field}: not supported by canary; ignored" in notes
    assert "spec.service.targetPort: named port 'http' is not supported; set canary:app.port" in notes and result.spec.app is not None and result.spec.app.port is None
    assert "spec.provider: 'istio' is replaced by a Gateway API HTTPRoute" in notes
    assert "MetricTemplate error-rate: spec.provider.secretRef: set the token as a Pulumi secret" in notes
    assert "MetricTemplate error-rate: spec.provider.insecureSkipVerify: not supported by canary; ignored" in notes
    assert "ConfigMap x: not a Flagger Canary or MetricTemplate; ignored" in notes


def test_flagger_fields_canary_does_not_carry_over_are_still_notes() -> None:
    doc = _canary()
    doc["spec"]["analysis"].update(stepWeightPromotion=20, canaryReadyThreshold=100)
    notes = "\n".join(flagger.convert([doc, _template()]).notes)
    for field in ("stepWeightPromotion", "canaryReadyThreshold"):
        assert f"spec.analysis.{field}: not supported by canary; ignored" in notes


def _weights_removed(doc: dict[str, Any]) -> dict[str, Any]:
    for key in ("maxWeight", "stepWeight", "stepWeights"):
        doc["spec"]["analysis"].pop(key, None)
    return doc


def test_an_ab_canary_carries_its_match_and_iterations_over() -> None:
    doc = _weights_removed(_canary())
    doc["spec"]["analysis"].update(iterations=10, match=[{"headers": {"x-canary": {"exact": "insider"}}}, {"headers": {"cookie": {"regex": "^(.*?;)?(canary=always)(;.*)?$"}}}])
    result = flagger.convert([doc, _template()])
    analysis = result.spec.release_spec("web").analysis
    assert analysis.kind is Strategy.AB and analysis.iterations == 10
    assert analysis.match is not None and [m.headers for m in analysis.match] == [
        {"x-canary": StringMatch(exact="insider")}, {"cookie": StringMatch(regex="^(.*?;)?(canary=always)(;.*)?$")}]
    assert not any("match" in note or "iterations" in note for note in result.notes)
    again = stackconfig.from_file_values(yaml.safe_load(stackfile.dump_stack_file(result.spec))["config"], "imported")
    assert again == result.spec


def test_a_blue_green_canary_carries_iterations_mirroring_and_skip_analysis_over() -> None:
    doc = _weights_removed(_canary())
    doc["spec"]["skipAnalysis"] = True
    doc["spec"]["analysis"].update(iterations=5, mirror=True, mirrorWeight=30)
    analysis = flagger.convert([doc, _template()]).spec.release_spec("web").analysis
    assert analysis.kind is Strategy.BLUE_GREEN and analysis.iterations == 5
    assert (analysis.mirror, analysis.mirror_weight, analysis.skip_analysis) == (True, 30, True)


def test_session_affinity_carries_over_with_flaggers_max_age_in_seconds() -> None:
    doc = _canary()
    doc["spec"]["analysis"]["sessionAffinity"] = {"cookieName": "flagger-cookie", "maxAge": 7200}
    affinity = flagger.convert([doc, _template()]).spec.release_spec("web").analysis.session_affinity
    assert affinity is not None and (affinity.cookie_name, affinity.max_age) == ("flagger-cookie", timedelta(hours=2))



def test_flaggers_primary_cookie_is_dropped_with_a_note_not_refused() -> None:
    # Flagger also pins clients sent to the primary; the import refused the whole Canary for it
    doc = _canary()
    doc["spec"]["analysis"]["sessionAffinity"] = {"cookieName": "flagger-cookie", "maxAge": 60, "primaryCookieName": "primary-cookie"}
    result = flagger.convert([doc, _template()])
    affinity = result.spec.release_spec("web").analysis.session_affinity
    assert affinity is not None and affinity.cookie_name == "flagger-cookie"
    assert any(n.startswith("spec.analysis.sessionAffinity.primaryCookieName: not supported ('primary-cookie' dropped)") for n in result.notes), result.notes


def test_templates_that_leave_the_address_to_flaggers_flag_import_with_a_default_and_a_note() -> None:
    # Flagger's MetricTemplates may omit provider.address (its -metrics-server flag holds it): refused before
    template = _template()
    del template["spec"]["provider"]["address"]
    result = flagger.convert([_canary(), template])
    assert str(result.spec.prometheus.address).startswith("http://prometheus.monitoring:9090")
    assert any("the MetricTemplates leave it to Flagger's -metrics-server flag" in n for n in result.notes), result.notes
    # beside a template that names one, it takes that one's address, and the note says so
    named = _template()
    named["metadata"]["name"] = "latency"
    named["spec"]["provider"]["address"] = "http://thanos.monitoring:9090"
    doc = _canary()
    doc["spec"]["analysis"]["metrics"].append({"name": "latency", "templateRef": {"name": "latency"}, "thresholdRange": {"max": 500}})
    result = flagger.convert([doc, template, named])
    assert str(result.spec.prometheus.address).startswith("http://thanos.monitoring:9090")
    assert any(n.startswith("MetricTemplate error-rate: spec.provider.address: not set") and "thanos" in n for n in result.notes), result.notes

@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"iterations": 10, "match": [{"headers": {"x-canary": {"prefix": "in"}}}]}, "spec.analysis.match"),
        ({"iterations": 10, "sessionAffinity": {"cookieName": "x"}}, "spec.analysis: sessionAffinity needs weighted steps"),
    ],
)
def test_strategy_fields_flagger_would_take_but_canary_cannot_are_refused_by_manifest_field(change: dict[str, Any], message: str) -> None:
    doc = _canary()
    if "iterations" in change:
        _weights_removed(doc)
    doc["spec"]["analysis"].update(change)
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([doc, _template()])
    assert message in str(info.value), str(info.value)


@pytest.mark.parametrize(("change", "left_out", "kept"), [
    ({"iterations": 5}, "spec.analysis.stepWeight, maxWeight: ignored by Flagger beside iterations", {"iterations": 5, "step_weight": None}),
    ({"iterations": 0}, "spec.analysis.iterations: 0 is read by Flagger as not set", {"iterations": None, "step_weight": 10}),
    ({"stepWeight": None, "stepWeights": [5, 20, 40]}, "spec.analysis.maxWeight: ignored by Flagger beside stepWeights", {"step_weights": [5, 20, 40]}),
    ({"mirrorWeight": 30}, "spec.analysis.mirrorWeight: 30 ignored by Flagger without mirror: true", {"mirror_weight": None}),
    ({"mirrorWeight": 0, "mirror": True}, "spec.analysis.mirrorWeight: 0 is read by Flagger as not set", {"mirror": True, "mirror_weight": None}),
    ({"maxWeight": 0}, "spec.analysis.maxWeight: 0 is read by Flagger as not set", {"max_weight": 100}),
])
def test_what_flaggers_scheduler_never_reads_is_left_out_with_a_note_not_refused(change: dict[str, Any], left_out: str, kept: dict[str, Any]) -> None:
    # each was refused, though Flagger runs the Canary without reading the field
    doc = _canary()
    doc["spec"]["analysis"].update({k: v for k, v in change.items() if v is not None})
    for key in [k for k, v in change.items() if v is None]:
        del doc["spec"]["analysis"][key]
    result = flagger.convert([doc, _template()])
    analysis = result.spec.release_spec("web").analysis
    assert {k: getattr(analysis, k) for k in kept} == kept
    assert any(n.startswith(left_out) for n in result.notes), result.notes


def test_a_canary_spelling_its_analysis_canary_analysis_imports_as_flagger_reads_it() -> None:
    # Flagger's earlier name for spec.analysis, which it still reads: the import noted it as unsupported, then refused
    doc = _canary()
    doc["spec"]["canaryAnalysis"] = doc["spec"].pop("analysis")
    result = flagger.convert([doc, _template()])
    assert result.spec == flagger.convert([_canary(), _template()]).spec
    assert "spec.canaryAnalysis: read as spec.analysis, as Flagger reads it when spec.analysis is absent" in result.notes


@pytest.mark.parametrize(("metric", "bounds"), [
    ({"name": "request-success-rate", "threshold": 99, "interval": "1m"}, {"min": 99}),
    ({"name": "request-duration", "threshold": 500, "interval": "1m"}, {"max": 500}),
    ({"name": "error-rate", "templateRef": {"name": "error-rate"}, "threshold": 1}, {"max": 1}),
])
def test_a_metric_s_deprecated_threshold_is_written_as_the_range_flagger_judges_it_by(metric: dict[str, Any], bounds: dict[str, float]) -> None:
    # dropped as unsupported, which left the metric with no bound and refused the Canary
    doc = _canary()
    doc["spec"]["analysis"]["metrics"] = [metric]
    result = flagger.convert([doc, _template()])
    (got,) = result.spec.release_spec("web").analysis.metrics
    assert got.threshold_range is not None and got.threshold_range.model_dump(exclude_none=True) == bounds
    assert any(n.startswith("spec.analysis.metrics[0].threshold: Flagger's deprecated spelling") for n in result.notes), result.notes


def test_built_in_metrics_without_a_provider_get_the_default_prometheus() -> None:
    doc = _canary()
    del doc["spec"]["analysis"]["metrics"][0]
    result = flagger.convert([doc])
    assert result.spec.prometheus is not None and result.spec.prometheus.address == "http://prometheus.monitoring:9090"
    assert any(note.startswith("prometheus.address: built-in metrics need one") for note in result.notes)


@pytest.mark.parametrize(
    ("manifests", "message"),
    [
        (lambda: [_canary()], "spec.analysis.metrics[0].templateRef.name: must name a MetricTemplate given with the Canary (given: none)"),
        (lambda: [_canary(), {**_template(), "spec": {**_template()["spec"], "provider": {"type": "datadog"}}}],
         "MetricTemplate error-rate: spec.provider.type: must be prometheus"),
        (lambda: [_template()], "kind: exactly one Canary manifest is required"),
        (lambda: [_canary(), _canary(), _template()], "exactly one Canary manifest is required (got 2 Canary manifests)"),
        (lambda: [{**_canary(), "apiVersion": "other/v1"}], "apiVersion: must be flagger.app/v1beta1 (got other/v1)"),
        (lambda: [_canary(), {**_template(), "apiVersion": "v1"}], "apiVersion: must be flagger.app/v1beta1"),
    ],
)
def test_manifests_that_do_not_convert_are_refused(manifests: Any, message: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        flagger.convert(manifests())
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("kind: [", "must be valid YAML"),
        ("just text", "every document must be a Kubernetes manifest with a kind"),
        ("- a\n- b\n", "every document must be a Kubernetes manifest with a kind"),
        ("apiVersion: v1\nmetadata: {}\n", "every document must be a Kubernetes manifest with a kind"),
    ],
)
def test_files_that_are_not_manifests_are_refused_naming_the_file(content: str, message: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        stackfile.load_manifests([("bad.yaml", content)])
    assert message in str(info.value) and info.value.source == "bad.yaml"


@pytest.mark.parametrize(
    ("content", "message"),
    [("apiVersion: v1\nkind: ConfigMap\n", "exactly one Canary"), ("apiVersion: other/v1\nkind: Canary\n", "must be flagger.app/v1beta1")],
)
def test_manifests_of_the_wrong_kind_are_refused(content: str, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        flagger.convert(stackfile.load_manifests([("bad.yaml", content)]))


def test_an_ignored_manifest_whose_metadata_is_not_a_mapping_is_refused_naming_it() -> None:
    # it escaped as an AttributeError traceback
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([_canary(), _template(), {"apiVersion": "v1", "kind": "Service", "metadata": "web"}])
    assert info.value.source == "Service" and [(p.field, p.value) for p in info.value.problems] == [("metadata", "'web'")]


def test_several_documents_in_one_file() -> None:
    text = CANARY.read_text() + "\n---\n" + TEMPLATE.read_text()
    assert flagger.convert(stackfile.load_manifests([("both.yaml", text)])).spec == flagger.convert(_manifests(CANARY, TEMPLATE)).spec


def _change(path: str, value: Any) -> Any:
    """Set (or, with None, delete) a dotted path of a manifest."""

    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is None:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = copy.deepcopy(value)

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_change("spec", []), "spec: must be a mapping, not a list"),
        (_change("metadata", "web"), "metadata: must be a mapping, not a string"),
        (_change("spec.targetRef", None), "spec.targetRef: is required"),
        (_change("spec.targetRef", "web"), "spec.targetRef: must be a mapping, not a string"),
        (_change("spec.targetRef.name", None), "spec.targetRef.name: is required"),
        (_change("spec.targetRef.kind", "DaemonSet"), "spec.targetRef.kind: must be Deployment (got DaemonSet)"),
        (_change("spec.analysis", "fast"), "spec.analysis: must be a mapping, not a string"),
        (_change("spec.analysis.metrics", "error-rate"), "spec.analysis.metrics: must be a list of mappings, not a string"),
        (_change("spec.analysis.metrics.0", "error-rate"), "spec.analysis.metrics[0]: must be a mapping, not a string"),
        (_change("spec.analysis.metrics.0.templateRef", "error-rate"), "spec.analysis.metrics[0].templateRef: must be a mapping"),
        (_change("spec.analysis.webhooks.0.metadata", "cmd"), "spec.analysis.webhooks[0].metadata: must be a mapping, not a string"),
        (_change("spec.service.gatewayRefs", "public"), "spec.service.gatewayRefs: must be a list of mappings"),
        (_change("spec.service.hosts", "web.example.com"), "spec.service.hosts: must be a list of host names"),
        (_change("spec.analysis.treshold", 3), "spec.analysis.treshold: is not a field of Flagger's Canary spec.analysis (a typo?)"),
        (_change("spec.analysis.interval", "5 parsecs"), "spec.analysis.interval: must be a duration such as 30s, 1m or 1m30s: Flagger's Canary CRD refuses"),
        (_change("spec.analysis.interval", "one minute"), "spec.analysis.interval: must be a duration such as 30s, 1m or 1m30s: Flagger's Canary CRD refuses"),
        (_change("spec.analysis.maxWeight", 150), "spec.analysis.maxWeight: Input should be less than or equal to 100"),
        (_change("spec.analysis.metrics.1.thresholdRange", {"min": 3, "max": -1}), "spec.analysis.metrics[1].thresholdRange: min (3) must not be greater than max (-1)"),
        (_change("spec.service.targetPort", 0), "spec.service.targetPort: Input should be greater than or equal to 1"),
        (_change("spec.service.port", 70000), "spec.service.port: Input should be less than or equal to 65535"),
        (_change("spec.targetRef.name", "Web_App"), "spec.targetRef.name: must be a DNS-1123 label"),
        (_change("metadata.namespace", "Prod"), "metadata.namespace: must be a DNS-1123 label"),
        (_change("spec.analysis.metrics.0.templateRef.name", "latency"), "spec.analysis.metrics[0].templateRef.name: must name a MetricTemplate given"),
    ],
)
def test_a_canary_of_the_wrong_shape_is_refused_naming_the_manifest_field(change: Any, message: str) -> None:
    doc = _canary()
    change(doc)
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([doc, _template()])
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_change("spec.provider", "datadog"), "MetricTemplate error-rate: spec.provider: must be a mapping, not a string"),
        (_change("spec", "query"), "MetricTemplate error-rate: spec: must be a mapping, not a string"),
        (_change("metadata.name", None), "metadata.name: is required"),
        (_change("spec.query", "sum(rate(x[1m]"), "MetricTemplate error-rate: spec.query: is not valid PromQL: unclosed '('"),
        (_change("spec.query", "up{pod='{{ pod }}'}"), "MetricTemplate error-rate: spec.query: uses unknown placeholder {{ pod }}"),
        (_change("spec.provider.address", "prometheus:9090"), "MetricTemplate error-rate: spec.provider.address: must be an http:// or https:// URL"),
        # these escaped as TypeError tracebacks (unhashable list), not as a refusal naming the field
        (_change("spec.provider.address", ["http://prometheus:9090"]), "MetricTemplate error-rate: spec.provider.address: must be a string, not a list"),
        (_change("metadata.name", ["error-rate"]), "metadata.name: must be a string, not a list"),
        (_change("metadata.namespace", ["prod"]), "MetricTemplate error-rate: metadata.namespace: must be a string, not a list"),
    ],
)
def test_a_metric_template_of_the_wrong_shape_is_refused_naming_the_field(change: Any, message: str) -> None:
    doc = _template()
    change(doc)
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([_canary(), doc])
    assert message in str(info.value)


@pytest.mark.parametrize(("image", "rule"), [("Web:1", "must be an image reference"), ("web", "must name a tag or a digest")])
def test_a_bad_stable_image_names_the_option(image: str, rule: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([_canary(), _template()], stable_image=image)
    (problem,) = info.value.problems
    assert problem.field == "--stable-image" and rule in problem.rule and problem.value == repr(image)


def test_the_imported_spec_parses_as_a_release_spec() -> None:
    spec = flagger.convert([_canary(), _template()], stable_image="registry.example.com/shop/web:1.8.0").spec
    values = {key.partition(":")[2]: value for key, value in stackconfig.to_config(spec).items()}
    assert parse_spec(values).app.image == "registry.example.com/shop/web:1.8.0"


@pytest.mark.parametrize(("check", "given"), [
    (units.check_dns_label, "shop\n"), (units.check_dns1035_label, "web\n"), (units.check_dns_subdomain, "settings\n.v2"),
    (units.check_hostname, "shop.example.com\n"), (units.check_app_protocol, "kubernetes.io\n/h2c"), (units.check_app_protocol, "h2c\n"),
    (units.check_image, "registry.example.com/web:1.0\n"),
])
def test_a_name_with_a_line_break_inside_or_at_its_end_is_refused(check: Any, given: str) -> None:
    # Python's `$` matches before a last newline (Go's, the API server's, does not): a value a block scalar or a shell
    # variable left a newline in was taken, and the API server refused it halfway through an `up`
    with pytest.raises(ValueError):
        check(given)
