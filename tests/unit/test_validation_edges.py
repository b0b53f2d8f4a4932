"""Edges of config validation a review found: what `canary validate` reads must be what `canary up` reads
(the Pulumi CLI's YAML, yaml.v3), and an analysis that can never fail, a traceback or an echoed password
are refused as bad input instead (exit 2).

What yaml.v3 makes of each plain scalar below was read from the real Pulumi CLI (3.260.0, ``pulumi config
--json`` of a stack file holding it): ``010`` is 8, ``0x10`` 16, ``1e3`` 1000, ``.5`` 0.5, ``1_000`` 1000,
``2024-01-01`` the text ``2024-01-01 00:00:00 +0000 UTC``, ``.inf`` a file the CLI cannot read at all, a
decimal beyond int64 a float (``18446744073709551616`` is ``18446744073709552000``), one beyond any float
text; ``1.2.3``, ``1e``, ``0x``, ``2024-02-30``, ``._5`` and ``1e999`` are text there too.
"""

from __future__ import annotations

import json
import shlex
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from canary.adapters import stackfile
from canary.core import config as stackconfig
from canary.core import units
from canary.core.spec import parse_stack
from canary.errors import InvalidSpec
from tests.conftest import base_values
from tests.helpers import chain, del_path, pod_template, problems, set_path, values_with

HEAD = """\
config:
  canary:app: {name: web, namespace: shop, image: "reg.example.com/web:1.0"}
  canary:gateway: {parentRefs: [{name: public}]}
  canary:prometheus: {address: "http://prom:9090"}
"""
ANALYSIS = """\
  canary:analysis:
    stepWeight: 10
    metrics:
      - {name: request-error-rate, thresholdRange: {max: 1}}
"""


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Pulumi.dev.yaml"
    path.write_text(text)
    return path


def _refused(path: Path) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as caught:
        stackfile.check_stack_file(path)
    return caught.value


# --- 1. a plain scalar the CLI's YAML types otherwise is refused, naming the field and "quote it" --------------------


@pytest.mark.parametrize(
    ("line", "field", "reads"),
    [
        ("  canary:app: {name: web, image: 'r.io/w:1', replicas: 010}", "app.replicas", "the number 8"),
        ("  canary:app: {name: web, image: 'r.io/w:1', env: {A: 1e3}}", "app.env.A", "the number 1000"),
        ("  canary:app: {name: web, image: 'r.io/w:1', env: {B: 0x10}}", "app.env.B", "the number 16"),
        ("  canary:app: {name: web, image: 'r.io/w:1', env: {E: 2024-01-01}}", "app.env.E", "a timestamp"),
        ("  canary:app: {name: web, image: 'r.io/w:1', env: {H: .5}}", "app.env.H", "the number 0.5"),
        ("  canary:app: {name: web, image: 'r.io/w:1', env: {U: 1_000}}", "app.env.U", "the number 1000"),
        ("  canary:app: {name: web, image: 'r.io/w:1', env: {O: 0o17}}", "app.env.O", "the number 15"),
        ("  canary:app: {name: web, image: 'r.io/w:1', env: {T: '1', 0x1: b}}", "app.env.0x1 (key)", "the number 1"),
    ],
)
def test_a_scalar_pulumi_reads_otherwise_is_refused_saying_quote_it(tmp_path: Path, line: str, field: str, reads: str) -> None:
    text = "config:\n" + line + "\n  canary:gateway: {parentRefs: [{name: public}]}\n  canary:prometheus: {address: 'http://prom:9090'}\n" + ANALYSIS
    refused = _refused(_file(tmp_path, text))
    assert [p.field for p in refused.problems] == [field], str(refused)
    assert reads in refused.problems[0].rule and "quote it" in refused.problems[0].rule and "line 2" in refused.problems[0].rule


@pytest.mark.parametrize(("setting", "field"), [("interval: 010", "analysis.interval"), ("stepWeight: 1e1", "analysis.stepWeight"),
                                                  ("stepWeight: 10\n    maxWeight: 5.0e1", "analysis.maxWeight")])
def test_an_analysis_number_pulumi_reads_otherwise_is_refused(tmp_path: Path, setting: str, field: str) -> None:
    # validate read `interval: 010` as 10s (up: 8s), and refused `stepWeight: 1e1`, which up took as 10
    text = HEAD + f"  canary:analysis:\n    {setting}\n" + ("    stepWeight: 10\n" if "stepWeight" not in setting else "") + \
        "    metrics: [{name: request-error-rate, thresholdRange: {max: 1}}]\n"
    refused = _refused(_file(tmp_path, text))
    assert [p.field for p in refused.problems] == [field] and "quote it" in refused.problems[0].rule, str(refused)


def test_an_infinite_threshold_is_refused_as_not_finite(tmp_path: Path) -> None:
    text = HEAD + "  canary:analysis:\n    stepWeight: 10\n    metrics: [{name: request-duration, thresholdRange: {max: .inf}}, " \
        "{name: request-error-rate, thresholdRange: {max: .nan}}]\n"
    refused = _refused(_file(tmp_path, text))
    assert {p.field for p in refused.problems} == {"analysis.metrics[0].thresholdRange.max", "analysis.metrics[1].thresholdRange.max"}
    assert all(p.rule.startswith("must be a finite number") for p in refused.problems), str(refused)


def test_values_both_readers_read_alike_stay_valid(tmp_path: Path) -> None:
    # quoted forms, and plain ones yaml.v3 reads as text too; another namespace's hex is that program's business
    text = HEAD.replace("canary:app: {", "canary:app: {env: {A: '1e3', B: \"0x10\", V: 1.2.3, W: 1e, X: 0x, Y: 2024-02-30, Z: 1:30, P: +5}, ") + \
        "  other:mask: 0x1F\n  other:when: 2024-01-01\n" + ANALYSIS
    spec, _ = stackfile.check_stack_file(_file(tmp_path, text))
    assert spec.app is not None and dict(spec.app.env) == {"A": "1e3", "B": "0x10", "V": "1.2.3", "W": "1e", "X": "0x", "Y": "2024-02-30", "Z": "1:30", "P": "5"}


def test_a_number_beyond_int64_is_read_as_the_cli_reads_it(tmp_path: Path) -> None:
    # the CLI reads it as a float (and writes it back as JSON in Go's shortest form): an env value is that text in up
    path = _file(tmp_path, "config:\n  canary:x: {a: 18446744073709551616, b: 1000000000000000000000, c: 1" + "0" * 400 + "}\n")
    assert stackfile.read_stack_file(path)["canary:x"] == {"a": 18446744073709552000, "b": 1e21, "c": "1" + "0" * 400}


def test_text_canary_writes_is_quoted_where_the_cli_would_type_it(tmp_path: Path) -> None:
    # ruamel wrote 2024-1-1 and .1e1 unquoted: the CLI read a timestamp and the number 1
    forms = ["2024-1-1", ".1e1", "010", "1e3", "0x10", ".5", "1_000", ".inf"]
    path = _file(tmp_path, stackfile.dump({"config": {"canary:app": {"env": {f"V{i}": form for i, form in enumerate(forms)}}}}))
    assert list(stackfile.read_stack_file(path)["canary:app"]["env"].values()) == forms


# --- 2. a mapping key given twice is refused, as the CLI refuses the file ---------------------------------------------


def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path: Path) -> None:
    text = HEAD + ANALYSIS + "  canary:analysis:\n    stepWeight: 50\n    metrics: [{name: request-error-rate, thresholdRange: {max: 100}}]\n"
    refused = _refused(_file(tmp_path, text))
    assert [p.field for p in refused.problems] == ["canary:analysis"], str(refused)
    assert "at line 5 and at line 9" in refused.problems[0].rule and "defined twice" in refused.problems[0].rule


def test_a_nested_key_given_twice_is_refused(tmp_path: Path) -> None:
    text = HEAD.replace('image: "reg.example.com/web:1.0"}', 'image: "reg.example.com/web:1.0", env: {A: x, "A": y}}') + ANALYSIS
    refused = _refused(_file(tmp_path, text))
    assert [p.field for p in refused.problems] == ["app.env.A"] and "line 2 and at line 2" in refused.problems[0].rule, str(refused)
    assert stackfile.plain_config(tmp_path, "dev", text) is None  # and `up` leaves it to the CLI, which refuses it


# --- 3. a huge integer duration is "at most 8784h", not a traceback -----------------------------------------------------


@pytest.mark.parametrize("value", [10**400, 10**20, "1" + "0" * 400])
def test_a_huge_duration_is_refused_as_too_long(value: Any) -> None:
    with pytest.raises(ValueError, match="must be at most 8784h"):
        units.parse_duration(value)


def test_a_huge_interval_in_a_stack_file_is_refused_as_too_long(tmp_path: Path) -> None:
    text = HEAD + "  canary:analysis:\n    interval: 1" + "0" * 400 + "\n    stepWeight: 10\n    metrics: [{name: request-error-rate, thresholdRange: {max: 1}}]\n"
    refused = _refused(_file(tmp_path, text))
    assert [(p.field, p.rule) for p in refused.problems] == [("analysis.interval", "must be at most 8784h (a year and a day)")]
    found = problems(values_with(set_path("analysis.interval", 10**400)))
    assert [(p.field, p.rule) for p in found] == [("analysis.interval", "must be at most 8784h (a year and a day)")]


# --- 4. a secret Prometheus address or Pushgateway is accepted still encrypted -----------------------------------------


@pytest.mark.parametrize("prometheus", ["{address: {secure: v1:YWRkcmVzcw==}}", "{address: 'http://prom:9090', pushgateway: {secure: v1:cHVzaA==}}"])
def test_a_secret_prometheus_url_is_accepted_by_validate_and_release_image(tmp_path: Path, prometheus: str) -> None:
    text = HEAD.replace('{address: "http://prom:9090"}', prometheus) + ANALYSIS
    path = _file(tmp_path, text)
    spec, unchecked = stackfile.check_stack_file(path)  # canary validate
    assert spec.prometheus is not None and unchecked == ()
    assert stackfile.load_stack_file(path).prometheus is not None  # canary release --image (api.set_image)


# --- 5. an analysis that can never fail ---------------------------------------------------------------------------------

NOTHING_ACTS = "needs a metric that is not dryRun (or a rollout webhook)"


@pytest.mark.parametrize("mutation", [set_path("analysis.metrics", []), del_path("analysis.metrics")], ids=["metrics-empty", "no-metrics"])
def test_an_analysis_without_a_metric_or_a_rollout_hook_is_refused(mutation: Any) -> None:
    found = problems(values_with(mutation, set_path("analysis.webhooks", [])))
    assert [p.field for p in found] == ["analysis.metrics"] and NOTHING_ACTS in found[0].rule and "skipAnalysis: true" in found[0].rule
    assert found[0].value == "none"


def test_a_background_rollout_hook_alone_acts_on_nothing() -> None:
    # a load generator: its exit status is recorded, never judged
    hook = {"name": "load", "type": "rollout", "cmd": "hey -z 10s http://web-canary/", "background": True}
    found = problems(values_with(set_path("analysis.metrics", []), set_path("analysis.webhooks", [hook])))
    assert [p.field for p in found] == ["analysis.metrics"] and NOTHING_ACTS in found[0].rule


@pytest.mark.parametrize("mutation", [
    chain(set_path("analysis.metrics", []), set_path("analysis.webhooks", []), set_path("analysis.skipAnalysis", True)),
    set_path("analysis.metrics", []),  # the base's rollout load test is a check of its own (its failure fails the tick)
], ids=["skip-analysis", "rollout-webhook"])
def test_no_metrics_stays_valid_where_something_acts_or_analysis_is_skipped(mutation: Any) -> None:
    parse_stack(values_with(mutation))


@pytest.mark.parametrize("score", [{"pass": 0}, {"pass": 0, "marginal": 0}])
def test_a_score_that_every_tick_passes_is_refused(score: dict[str, Any]) -> None:
    found = problems(values_with(set_path("analysis.score", score)))
    assert [(p.field, p.rule) for p in found] == [("analysis.score.pass", "Input should be greater than 0")]


@pytest.mark.parametrize(
    ("name", "bounds", "field", "rule"),
    [
        ("request-error-rate", {"max": 100}, "thresholdRange", "could never fail"),
        ("request-error-rate", {"max": 1000}, "thresholdRange.max", "must be within 0..100"),
        ("request-error-rate", {"max": -1}, "thresholdRange.max", "could never pass"),
        ("request-success-rate", {"min": 101}, "thresholdRange.min", "could never pass"),
        ("request-success-rate", {"min": 0}, "thresholdRange", "could never fail"),
        ("request-success-rate", {"min": -5, "max": 100}, "thresholdRange.min", "must be within 0..100"),
    ],
)
def test_a_percent_range_outside_0_to_100_or_covering_it_is_refused(name: str, bounds: dict[str, float], field: str, rule: str) -> None:
    found = problems(values_with(set_path("analysis.metrics.1", {"name": name, "thresholdRange": bounds})))
    assert [p.field for p in found] == [f"analysis.metrics[1].{field}"] and rule in found[0].rule, [str(p) for p in found]


def test_percent_ranges_inside_0_to_100_and_other_units_stay_valid() -> None:
    for name, bounds in (("request-error-rate", {"max": 99.9}), ("request-success-rate", {"min": 0.1, "max": 100}),
                         ("request-duration", {"max": 100000}), ("request-success-rate", {"min": 99})):
        parse_stack(values_with(set_path("analysis.metrics.1", {"name": name, "thresholdRange": bounds})))
    # a dry-run metric is recorded only: a wide range there fails nothing it should
    parse_stack(values_with(set_path("analysis.metrics.1", {"name": "request-error-rate", "thresholdRange": {"max": 100}, "dryRun": True})))


# --- 6. credentials in Prometheus's URL, infinite ranges, minSamples hints ---------------------------------------------


def test_credentials_in_the_prometheus_url_are_refused_without_showing_them(tmp_path: Path) -> None:
    for field in ("address", "pushgateway"):
        found = problems(values_with(set_path(f"prometheus.{field}", "http://u:s3cr3tPW@prom:9090")))
        assert [p.field for p in found] == [f"prometheus.{field}"] and found[0].rule.startswith("must not carry credentials in the URL")
        assert "s3cr3tPW" not in str(InvalidSpec(found, "x"))
    found = problems(values_with(set_path("prometheus.address", "http://u:s3cr3tPW@prom:9090")))
    assert "prometheus.token" in found[0].rule
    refused = _refused(_file(tmp_path, HEAD.replace("http://prom:9090", "http://u:s3cr3tPW@prom:9090") + ANALYSIS))
    assert "s3cr3tPW" not in str(refused) and "must not carry credentials" in str(refused)


def test_a_judge_that_needs_more_samples_than_its_window_gives_a_hint_that_can_be_followed() -> None:
    judged = lambda **judge: set_path("analysis.metrics.1", {"name": "request-duration", "judge": judge})  # noqa: E731
    found = problems(values_with(judged(minSamples=5000)))  # 1m window: the hint was "a step of at most 0s"
    assert [p.field for p in found] == ["analysis.metrics[1].judge.step"] and "at most 0s" not in found[0].rule, str(found[0])
    # a step is at least two scrapes (15s unset), as the unset step is: the window is what to lengthen
    assert "use analysis.interval (the judge's window) of at least 41h39m30s or minSamples of at most 3" in found[0].rule, found[0].rule
    parse_stack(values_with(judged(minSamples=5000), set_path("analysis.interval", "41h39m30s")))  # following it is valid
    found = problems(values_with(judged(minSamples=5000, step="5s")))
    assert "use a step of at least 30s, and then analysis.interval (the judge's window, now 1m) of at least 41h39m30s" in found[0].rule
    found = problems(values_with(set_path("prometheus.scrapeInterval", "1s"), set_path("analysis.interval", "2s"), judged(minSamples=11000)))
    assert "at most 0s" not in found[0].rule and "analysis.interval (the judge's window) of at least" in found[0].rule, str(found[0])
    assert [p.field for p in problems(values_with(judged(minSamples=10**20)))] == ["analysis.metrics[1].judge.minSamples"]


def test_the_base_values_stay_valid() -> None:
    parse_stack(base_values())
    assert units.parse_duration(8784 * 3600) == timedelta(hours=8784)


@pytest.mark.parametrize("hook", [
    {"name": "smoke", "type": "pre-rollout", "url": "http://smoke/"},  # a smoke test decides before any traffic
    {"name": "approve", "type": "confirm-promotion", "url": "http://gate/"},  # a person decides
], ids=["pre-rollout", "confirm-promotion"])
def test_no_metrics_stays_valid_where_a_smoke_test_or_a_person_decides(hook: dict[str, Any]) -> None:
    parse_stack(values_with(set_path("analysis.metrics", []), set_path("analysis.webhooks", [hook])))


def test_a_percent_range_covering_0_to_100_beside_a_comparison_stays_valid() -> None:
    # the comparison with stable can fail: the range only bounds the canary alone
    parse_stack(values_with(set_path("analysis.metrics.1", {"name": "request-error-rate", "thresholdRange": {"max": 100},
                                                           "compare": {"thresholdRange": {"max": 1}}})))


def _only_compared(values: dict[str, Any]) -> None:
    values["analysis"]["metrics"] = [{"name": "request-error-rate", "compare": {"thresholdRange": {"max": 2}}}]
    values["analysis"]["webhooks"] = []


@pytest.mark.parametrize("shape", [
    {"iterations": 3},  # blue/green: its switch
    {"stepWeights": [50, 100]},  # a weighted canary that reaches all traffic
], ids=["blue-green", "weight-100"])
def test_metrics_only_compared_with_stable_are_refused_where_the_canary_takes_all_traffic(shape: dict[str, Any]) -> None:
    """Stable serves no request at all traffic: compare and judge are not judged there, and a canary judged by them alone
    passed blue/green's switch (or a weight of 100) on no check at all."""
    def change(values: dict[str, Any]) -> None:
        _only_compared(values)
        for key in ("stepWeight", "maxWeight", "stepWeights", "iterations"):
            values["analysis"].pop(key, None)
        values["analysis"].update(shape)

    found = problems(values_with(change))
    assert [p.field for p in found] == ["analysis.metrics"] and "stable serves no request" in found[0].rule, [str(p) for p in found]
    # with a range, or below all traffic, it is judged everywhere
    parse_stack(values_with(_only_compared))  # the base's weights stop at 50


# --- the command that stores a plain-text secret as one ----------------------------------------------------------------

SECRET = "s3cr3t-value"


def _pulumi_path(key: str) -> tuple[str, list[str | int]]:
    """``pulumi config set --path``'s reading of a key: its namespace and the property path (Pulumi's
    ParsePropertyPath: a name after a dot, a quoted key or an index in brackets)."""
    namespace, _, path = key.partition(":")
    parts: list[str | int] = []
    while path:
        if path[0] == ".":
            path = path[1:]
        elif path.startswith('["'):
            end = 2
            while path[end] != '"':
                end += 2 if path[end:end + 2] == '\\"' else 1
            parts.append(path[2:end].replace('\\"', '"'))
            assert path[end + 1] == "]", key
            path = path[end + 2:]
        elif path[0] == "[":
            end = path.index("]")
            parts.append(int(path[1:end]))
            path = path[end + 1:]
        else:
            end = min((i for i in (path.find("."), path.find("[")) if i >= 0), default=len(path))
            parts.append(path[:end])
            path = path[end:]
    return namespace, parts


def _follow(config: dict[str, Any], rule: str) -> None:
    """Run the rule's command on ``config`` as the Pulumi CLI would, the new value encrypted."""
    words = shlex.split(rule.split(": ", 1)[1])
    assert words[:5] == ["pulumi", "config", "set", "--secret", "--path"] and words[6:] == ["..."], words
    namespace, parts = _pulumi_path(words[5])
    node: Any = config
    key: str | int = f"{namespace}:{parts[0]}"
    for part in parts[1:]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
        key = part
    node[key] = stackconfig.ENCRYPTED


@pytest.mark.parametrize(("mutation", "field", "key"), [
    (set_path("prometheus.headers", {"X-Scope-OrgID": SECRET}), "prometheus.headers", 'canary:prometheus.headers["X-Scope-OrgID"]'),
    (set_path("prometheus.token", SECRET), "prometheus.token", "canary:prometheus.token"),
    (set_path("analysis.alerts", [{"name": "chat", "type": "slack", "url": f"https://hooks.slack.com/{SECRET}"}]),
     "analysis.alerts[0].url", "canary:analysis.alerts[0].url"),
    (chain(set_path("app.template", pod_template(envFrom=[{"secretRef": {"name": "db-creds"}}])),
           set_path("app.secrets", {"db-creds": {"stringData": {"config.yaml": SECRET, "PASSWORD": {"secure": "v1:AAAA"}}}})),
     "app.secrets.db-creds.stringData", 'canary:app.secrets["db-creds"].stringData["config.yaml"]'),
], ids=["header", "token", "alert-url", "secret-value"])
def test_the_command_for_a_plain_text_secret_stores_that_very_entry_as_one(mutation: Any, field: str, key: str) -> None:
    # for a header it named the map (--path canary:prometheus.headers): followed, headers became one secret string,
    # and the next error was `prometheus.headers: Input should be a valid dictionary`
    config = stackconfig.decode_secure({f"canary:{k}": v for k, v in values_with(mutation).items()})
    with pytest.raises(InvalidSpec) as info:
        stackconfig.from_file_values(config, "Pulumi.prod.yaml")
    (problem,) = info.value.problems
    assert problem.field == field and problem.value == "<secret>" and SECRET not in str(info.value)
    # quoted as a shell needs it: a bracket is a glob (zsh refuses one that matches no file), a quote is the shell's
    assert shlex.split(problem.rule.split("--path ", 1)[1])[0] == key, problem.rule
    assert (f"--path '{key}' ..." if "[" in key else f"--path {key} ...") in problem.rule, problem.rule
    _follow(config, problem.rule)
    stackconfig.from_file_values(config, "Pulumi.prod.yaml")


# --- 6. a Pulumi secret where canary writes plain text is refused, naming its path, never its value --------------------

CIPHER = "{secure: v1:c2VjcmV0LWRiLXB3}"
TEMPLATE_APP = ("  canary:app:\n    name: web\n    image: reg.example.com/web:1.0\n    template:\n      spec:\n        containers:\n"
                "          - name: web\n            env:\n              - {name: DB_PASSWORD, value: " + CIPHER + "}\n")


@pytest.mark.parametrize(("text", "field"), [
    (HEAD.replace('image: "reg.example.com/web:1.0"}', 'image: "reg.example.com/web:1.0", env: {DB_PASSWORD: ' + CIPHER + "}}") + ANALYSIS,
     "app.env.DB_PASSWORD"),
    (HEAD.replace('  canary:app: {name: web, namespace: shop, image: "reg.example.com/web:1.0"}\n', TEMPLATE_APP) + ANALYSIS,
     "app.template.spec.containers[0].env[0].value"),
    (HEAD.replace('  canary:app: {name: web, namespace: shop, image: "reg.example.com/web:1.0"}', "  canary:app: " + CIPHER) + ANALYSIS, "app"),
    ('config:\n  canary:prometheus: {address: "http://prom:9090"}\n  canary:apps:\n    web:\n'
     '      app: {name: web, image: "reg.example.com/web:1.0", env: {DB_PASSWORD: ' + CIPHER + "}}\n"
     "      gateway: {parentRefs: [{name: public}]}\n      analysis: {stepWeight: 10, metrics: [{name: request-error-rate, thresholdRange: {max: 1}}]}\n",
     "apps.web.app.env.DB_PASSWORD"),
    (HEAD.replace("hostnames", "x").replace("{parentRefs: [{name: public}]}", "{parentRefs: [{name: public}], hostnames: [" + CIPHER + "]}") + ANALYSIS,
     "gateway.hostnames[0]"),
    (HEAD + ANALYSIS + "    webhooks:\n      - {name: gate, type: confirm-rollout, url: 'http://gate', metadata: {key: " + CIPHER + "}}\n",
     "analysis.webhooks[0].metadata.key"),
], ids=["app.env", "app.template", "app-as-a-whole", "apps.web.app.env", "gateway", "webhook-metadata"])
def test_a_secret_where_canary_keeps_plain_text_is_refused_by_validate_naming_its_path(tmp_path: Path, text: str, field: str) -> None:
    # `pulumi config set --secret --path canary:app.env.DB_PASSWORD …` was taken: the value went, decrypted, into the
    # pod template both tracks' pins carry into the state ConfigMap canary-web-state and the stack output canary/web
    path = _file(tmp_path, text)
    for check in (stackfile.check_stack_file, stackfile.load_stack_file):  # canary validate; the commands that use the file
        with pytest.raises(InvalidSpec) as caught:
            check(path)
        [problem] = [p for p in caught.value.problems if "plain text" in p.rule]
        assert problem.field == field and problem.value == "<secret>", problem
        assert "c2VjcmV0" not in str(caught.value) and "secure" not in str(caught.value), caught.value
        if field.partition(".app")[0] in ("app", "apps.web"):
            assert "app.secrets.<name>.stringData" in problem.rule and "secretKeyRef" in problem.rule, problem.rule


def test_a_secret_where_canary_keeps_secrets_stays_valid(tmp_path: Path) -> None:
    text = ('config:\n  canary:app:\n    name: web\n    image: reg.example.com/web:1.0\n    template:\n      spec:\n        containers:\n'
            '          - name: web\n            envFrom: [{secretRef: {name: creds}}]\n'
            "    secrets: {creds: {stringData: {DB_PASSWORD: " + CIPHER + "}}}\n"
            "  canary:gateway: {parentRefs: [{name: public}]}\n"
            "  canary:prometheus: {address: " + CIPHER + ", token: " + CIPHER + ", headers: {X-Scope-OrgID: " + CIPHER + "}}\n"
            "  canary:metricTemplates: {errors: {provider: {address: " + CIPHER + "}, query: 'sum(up)'}}\n" + ANALYSIS
            + "    webhooks: [{name: gate, type: confirm-rollout, url: " + CIPHER + "}]\n"
            + "    alerts: [{name: chat, type: slack, url: " + CIPHER + "}]\n")
    spec, unchecked = stackfile.check_stack_file(_file(tmp_path, text))
    assert unchecked == () and spec.app is not None and spec.app.secrets["creds"]


def test_canary_up_refuses_a_secret_in_app_env_the_cli_decrypted_naming_the_leaf_the_stack_file_shows(tmp_path: Path) -> None:
    # what `canary up` gives from_config: the CLI's config (only canary:app said to be secret, decrypted) and the stack file
    from pulumi.automation import ConfigValue

    from canary.core import config as stackconfig

    path = _file(tmp_path, HEAD.replace('image: "reg.example.com/web:1.0"}', 'image: "reg.example.com/web:1.0", env: {DB_PASSWORD: ' + CIPHER + "}}")
                 + ANALYSIS)
    file_config = stackfile.read_stack_file(path)
    engine = {key: ConfigValue(value=json.dumps(value)) for key, value in file_config.items()}
    app = {"name": "web", "namespace": "shop", "image": "reg.example.com/web:1.0", "env": {"DB_PASSWORD": "hunter2-db"}}
    engine["canary:app"] = ConfigValue(value=json.dumps(app), secret=True)
    for stack_file, field in ((file_config, "app.env.DB_PASSWORD"), (None, "app")):  # the file tells the leaf; without it, the key
        with pytest.raises(InvalidSpec) as caught:
            stackconfig.from_config(engine, "stack dev", stack_file=stack_file)
        assert [p.field for p in caught.value.problems] == [field], caught.value
        assert "hunter2" not in str(caught.value) and "plain text" in str(caught.value)
    # the same key held secret for its Secret's value alone: taken
    engine["canary:app"] = ConfigValue(value=json.dumps({**app, "env": {}, "secrets": {"creds": {"stringData": {"PW": "hunter2-db"}}}}), secret=True)
    with pytest.raises(InvalidSpec) as other:  # refused for what the template does not read, not for the secret
        stackconfig.from_config(engine, "stack dev")
    assert all("plain text" not in p.rule for p in other.value.problems), other.value


@pytest.mark.parametrize("file_interval", ["soon", "30s", None], ids=["file-shows-the-leaf", "another-file", "no-file"])
def test_a_plain_value_beside_a_secret_of_its_key_is_shown_in_its_problem_and_the_secret_is_not(tmp_path: Path, file_interval: str | None) -> None:
    # one header match set --secret --path made canary:analysis a secret key, and every problem under it lost its value:
    # "analysis.interval: must be a duration … (got <secret>)". The stack file says which leaf is the secret: only it
    # (and what holds it) is masked. Without a file that is what the engine read, the key is masked whole as before
    from pulumi.automation import ConfigValue

    analysis = ANALYSIS + f"    interval: {file_interval or 'soon'}\n    match: [{{headers: {{x-canary-token: {{exact: {CIPHER}}}}}}}]\n"
    file_config = stackfile.read_stack_file(_file(tmp_path, HEAD + analysis))
    engine = {key: ConfigValue(value=json.dumps(value)) for key, value in file_config.items()}
    given = {**file_config["canary:analysis"], "interval": "soon", "match": [{"headers": {"x-canary-token": {"exact": "s3cr3t-TOKEN "}}}]}
    engine["canary:analysis"] = ConfigValue(value=json.dumps(given), secret=True)
    with pytest.raises(InvalidSpec) as caught:
        stackconfig.from_config(engine, "stack dev", stack_file=file_config if file_interval else None)
    found = {p.field: p for p in caught.value.problems}
    assert set(found) == {"analysis.interval", "analysis.match[0]"}, caught.value
    assert found["analysis.interval"].value == ("'soon'" if file_interval == "soon" else "<secret>"), caught.value
    assert found["analysis.match[0]"].value == "<secret>" and "<secret>" in found["analysis.match[0]"].rule, caught.value
    assert "s3cr3t" not in str(caught.value), caught.value
