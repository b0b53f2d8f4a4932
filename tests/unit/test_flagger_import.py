"""What a team migrating from Flagger meets: ``import-flagger``'s conversion of what Flagger runs, its output
file, and the load tester's command as canary runs it."""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from canary.adapters import stackfile
from canary.adapters.webhooks import Caller
from canary.core import config as stackconfig
from canary.core import flagger
from canary.core.records import HookResult, Phase
from canary.core.spec import Webhook
from canary.errors import InvalidSpec
from tests.conftest import FIXTURES, ROOT
from tests.unit.fakes import FakeHooks, Metrics, make

CANARY = FIXTURES / "flagger-canary.yaml"
TEMPLATE = FIXTURES / "flagger-metric-template.yaml"


def _canary() -> dict[str, Any]:
    return yaml.safe_load(CANARY.read_text())  # type: ignore[no-any-return]


def _template() -> dict[str, Any]:
    return yaml.safe_load(TEMPLATE.read_text())  # type: ignore[no-any-return]


def _with_hooks(*hooks: dict[str, Any]) -> dict[str, Any]:
    doc = _canary()
    doc["spec"]["analysis"]["webhooks"] = list(hooks)
    return doc


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "canary", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


# --- the load tester's commands -------------------------------------------------------------------------


LOAD_TEST = {"name": "load-test", "url": "http://flagger-loadtester.test/", "timeout": "5s",
             "metadata": {"cmd": "hey -z 1m -q 10 -c 2 http://web-canary.prod:80/"}}


def test_flaggers_load_test_imports_as_a_background_command_not_one_cut_off_each_tick() -> None:
    # it became a rollout cmd judged by its exit, killed at interval + 5s: `hey -z 1m` on a 30s interval
    # was a failed check every tick, and with Flagger's threshold of 1 the first tick rolled back
    result = flagger.convert([_with_hooks(LOAD_TEST), _template()])
    (hook,) = result.spec.release_spec("web").analysis.webhooks
    assert hook.background and hook.type.value == "rollout" and shlex.split(hook.cmd or "") == ["sh", "-c", LOAD_TEST["metadata"]["cmd"]]
    assert any(n.startswith("spec.analysis.webhooks[0].metadata.cmd: runs in the background through each analysis interval")
               for n in result.notes), result.notes


@pytest.mark.parametrize(("kind", "cmd"), [
    ("bash", ["bash", "-c", "curl -sf http://web-canary/ | grep -q ok"]),
    ("helm", ["helm", "test", "web", "-n", "prod"]),
    ("helmv3", ["helm", "test", "web", "-n", "prod"]),
    ("kubectl", ["kubectl", "rollout", "status", "deploy/web"]),
])
def test_the_load_tester_s_blocking_tasks_become_the_command_it_runs(kind: str, cmd: list[str]) -> None:
    # helm and kubectl tasks were refused, though the load tester runs them as one tool on the cmd's words
    given = {"bash": cmd[2], "kubectl": "rollout status  deploy/web"}.get(kind, "test web -n prod")
    hook_in = {"name": "check", "type": "pre-rollout", "url": "http://flagger-loadtester.test/",
               "metadata": {"type": kind, "cmd": given, "logCmdOutput": "true"}}
    result = flagger.convert([_with_hooks(hook_in), _template()])
    (hook,) = result.spec.release_spec("web").analysis.webhooks
    assert shlex.split(hook.cmd or "") == cmd and not hook.background and hook.metadata == {}
    assert any(n.startswith("spec.analysis.webhooks[0].metadata.logCmdOutput: 'true' left out") for n in result.notes), result.notes


@pytest.mark.parametrize("kind", ["concord", "ngrinder", "tester"])
def test_a_load_tester_task_that_is_no_command_line_is_refused_naming_its_type(kind: str) -> None:
    hook_in = {"name": "check", "url": "http://flagger-loadtester.test/", "metadata": {"type": kind, "cmd": "x"}}
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([_with_hooks(hook_in), _template()])
    assert [(p.field, p.value) for p in info.value.problems] == [("spec.analysis.webhooks[0].metadata.type", kind)]


def test_a_background_load_test_never_fails_a_tick_and_is_stopped_when_the_interval_ends() -> None:
    # a load generator cut off at the interval's end (or one that exits non-zero) failed the tick: the
    # release rolled back although its metrics were healthy
    stopped_at: list[float] = []

    class LoadTest(FakeHooks):
        def start(self, hook: Any, body: Any = None) -> Any:
            return world.clock.monotonic()

        def finish(self, hook: Any, handle: Any, deadline: float, cancel: Any = None) -> Any:
            stopped_at.append(deadline - time.monotonic())
            return HookResult(hook.name, hook.type.value, False, 0.0, f"`{hook.cmd}` ran until the interval's end and was killed")

    world = make(Metrics(0.0), lambda v: v["analysis"].update(threshold=1, webhooks=[
        {"name": "load", "type": "rollout", "cmd": "hey -z 1h http://web-canary/", "background": True}]), hooks=LoadTest())
    assert world.start().phase is Phase.SUCCEEDED
    assert stopped_at and all(left <= 0.1 for left in stopped_at), stopped_at  # stopped at once, not given timeout more
    loads = [r for r in world.store.of("webhook") if r.name == "load"]
    assert loads and all(r.ok and "(in the background: not judged)" in r.detail for r in loads)


@pytest.mark.parametrize(("hook", "rule"), [
    ({"type": "pre-rollout", "cmd": "hey http://web/"}, "background needs a rollout hook with a cmd"),
    ({"type": "rollout", "url": "http://load/"}, "background needs a rollout hook with a cmd"),
])
def test_background_is_only_for_a_rollout_command(hook: dict[str, Any], rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        Webhook.model_validate({"name": "load", "background": True, **hook})


def test_a_background_command_is_stopped_at_the_deadline_and_says_so_not_that_it_timed_out() -> None:
    caller = Caller()
    target = Webhook.model_validate({"name": "load", "type": "rollout", "cmd": "sleep 30", "background": True})
    process = caller.start(target)
    result = caller.finish(target, process, time.monotonic() + 0.2)
    assert "ran until the interval's end" in result.detail and "timed out" not in result.detail


# --- names ----------------------------------------------------------------------------------------------


def test_a_metric_named_as_flaggers_docs_name_one_is_written_as_a_label_with_a_note() -> None:
    # "404s percentage" (Flagger's docs' example) was refused: must be a DNS-1123 label
    doc = _canary()
    doc["spec"]["analysis"]["metrics"][0]["name"] = "404s percentage"
    doc["spec"]["analysis"]["webhooks"][0]["name"] = "Load Test"
    result = flagger.convert([doc, _template()])
    analysis = result.spec.release_spec("web").analysis
    assert [m.name for m in analysis.metrics] == ["404s-percentage", "request-duration"]
    assert [h.name for h in analysis.webhooks] == ["load-test"]
    assert "spec.analysis.metrics[0].name: '404s percentage' is no DNS-1123 label (canary's names are); written as '404s-percentage'" in result.notes


def test_a_renamed_metric_that_takes_another_s_name_is_refused_naming_both() -> None:
    doc = _canary()
    doc["spec"]["analysis"]["metrics"][0]["name"] = "Request Duration"
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([doc, _template()])
    (problem,) = info.value.problems
    assert (problem.field, problem.value) == ("spec.analysis.metrics[0].name", "Request Duration")
    assert "spec.analysis.metrics[1]" in problem.rule


# --- the output file ------------------------------------------------------------------------------------


IMPORT = ("import-flagger", str(CANARY), str(TEMPLATE), "--stable-image", "registry.example.com/shop/web:2.0.0")
STACK = """\
secretsprovider: passphrase
encryptionsalt: v1:c2FsdA==:v1:AAAA
# the production stack
config:
  kubernetes:context: prod-cluster  # where it runs
  canary:app:
    name: old
    image: registry.example.com/shop/web:1.0.0
  canary:prometheus:
    address: http://prometheus.monitoring:9090
    token:
      secure: v1:dG9rZW4=
  canary:gateway:
    parentRefs: [{name: public}]
  canary:analysis: {stepWeight: 10, maxWeight: 50, metrics: [], webhooks: []}
"""


def test_out_writes_a_new_stack_file_only_when_the_import_succeeds(tmp_path: Path) -> None:
    # `> stacks/Pulumi.prod.yaml` truncated the stack file to nothing when the import was refused
    out = tmp_path / "Pulumi.prod.yaml"
    refused = _cli(*IMPORT[:2], "--out", str(out))  # no MetricTemplate for the Canary's templateRef
    assert refused.returncode == 2 and not out.exists() and not list(tmp_path.iterdir()), refused.stderr
    done = _cli(*IMPORT, "--out", str(out))
    assert done.returncode == 0 and done.stdout == "", done.stderr
    assert out.read_text().startswith("# Imported from flagger-canary.yaml")
    assert stackfile.load_stack_file(out).app is not None and [p.name for p in tmp_path.iterdir()] == ["Pulumi.prod.yaml"]


def test_out_into_a_directory_that_does_not_exist_is_refused_not_a_traceback(tmp_path: Path) -> None:
    done = _cli(*IMPORT, "--out", str(tmp_path / "missing" / "Pulumi.prod.yaml"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "--out" in done.stderr and "cannot be created: No such file or directory" in done.stderr, done.stderr


def test_out_never_replaces_an_existing_stack_file_unless_told_to_merge(tmp_path: Path) -> None:
    # a successful import replaced the file whole: its salt, its secrets and the other namespaces' keys were gone
    out = tmp_path / "Pulumi.prod.yaml"
    out.write_text(STACK)
    done = _cli(*IMPORT, "--out", str(out))
    assert done.returncode == 2 and "--merge" in done.stderr and out.read_text() == STACK


def test_merge_replaces_only_the_canary_keys_and_keeps_the_rest_and_the_secrets(tmp_path: Path) -> None:
    out = tmp_path / "Pulumi.prod.yaml"
    out.write_text(STACK)
    done = _cli(*IMPORT, "--gateway", "public.gateway:https", "--out", str(out), "--merge")
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "secretsprovider: passphrase\nencryptionsalt: v1:c2FsdA==:v1:AAAA\n# the production stack\n" in text
    assert "  kubernetes:context: prod-cluster  # where it runs\n" in text
    config = stackfile.read_stack_file(out)
    assert config["canary:app"]["name"] == "web" and config["canary:prometheus"]["token"] == "<encrypted>"
    assert yaml.safe_load(text)["config"]["canary:prometheus"]["token"] == {"secure": "v1:dG9rZW4="}
    assert "note: canary:prometheus.token: kept from" in done.stderr
    again = _cli(*IMPORT, "--gateway", "public.gateway:https", "--out", str(out), "--merge")
    assert again.returncode == 0 and out.read_text() == text  # the notes at the top are replaced, not piled up
    assert [p.name for p in tmp_path.iterdir()] == ["Pulumi.prod.yaml"]  # no lock file left in the user's repository


def test_a_merge_that_cannot_keep_a_secret_writes_nothing_and_names_it(tmp_path: Path) -> None:
    out = tmp_path / "Pulumi.prod.yaml"
    out.write_text(STACK.replace("webhooks: []", "webhooks: [{name: load, type: rollout, url: 'http://load/', metadata: {token: {secure: v1:eA==}}}]"))
    before = out.read_text()
    done = _cli(*IMPORT, "--out", str(out), "--merge")
    assert done.returncode == 2 and out.read_text() == before and "Traceback" not in done.stderr
    assert "canary:analysis.webhooks.0.metadata.token" in done.stderr


# --- leftovers: what Flagger runs, written as it runs it ---------------------------------------------------


def test_a_webhook_without_a_timeout_gets_flaggers_ten_seconds_not_canarys_minute() -> None:
    gate = {"name": "approve", "type": "confirm-promotion", "url": "http://gate.test/"}
    result = flagger.convert([_with_hooks(gate), _template()])
    (hook,) = result.spec.release_spec("web").analysis.webhooks
    assert hook.timeout.total_seconds() == 10
    assert any(n.startswith("spec.analysis.webhooks[0].timeout: not set; written as 10s, Flagger's default") for n in result.notes)


def test_session_affinity_as_flagger_runs_it_a_zero_max_age_is_a_day_and_cookie_attributes_are_noted() -> None:
    # maxAge 0 was refused (Flagger sets Max-Age=86400) and Flagger's cookie attributes were refused as unknown
    doc = _canary()
    doc["spec"]["analysis"]["sessionAffinity"] = {"cookieName": "c", "maxAge": 0, "domain": "example.com", "httpOnly": True,
                                                  "partitioned": True, "path": "/", "sameSite": "Strict", "secure": True}
    result = flagger.convert([doc, _template()])
    affinity = result.spec.release_spec("web").analysis.session_affinity
    assert affinity is not None and affinity.max_age.total_seconds() == 86400
    for key in ("domain", "httpOnly", "partitioned", "path", "sameSite", "secure"):
        assert any(n.startswith(f"spec.analysis.sessionAffinity.{key}: ") for n in result.notes), key


def test_a_load_generator_is_stopped_even_when_recording_a_hook_s_result_fails() -> None:
    # a record that failed (a second Conflict, a full disk) ended the collection at the first hook: the load
    # generator after it, in a session of its own, went on loading the app through the rollback and after it
    import os
    import signal
    import threading

    from canary.core.records import Phase, ReleaseState, TrackPin
    from canary.core.spec import parse_spec
    from canary.release.hooks import Hooks

    spec = parse_spec({
        "app": {"name": "web", "namespace": "shop", "image": "registry.example.com/shop/web:1"},
        "gateway": {"parentRefs": [{"name": "public", "namespace": "gw"}], "hostnames": ["web.example.com"]},
        "prometheus": {"address": "http://prometheus:9090"},
        "analysis": {"interval": "1s", "stepWeight": 10, "maxWeight": 50, "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99}}],
                     "webhooks": [{"name": "smoke", "type": "rollout", "cmd": "true"},
                                  {"name": "load", "type": "rollout", "cmd": "sleep 311", "background": True}]}})

    def on_result(state: Any, result: Any, weight: Any) -> None:
        raise RuntimeError("the journal refused the record")

    hooks = Hooks(Caller(), spec, SimpleNamespace(monotonic=time.monotonic), threading.Event(), on_result)  # type: ignore[arg-type]
    state = ReleaseState(release="20261130T000000-1", stack="test", app="web", phase=Phase.PROGRESSING, weight=10,
                         stable=TrackPin(template={}, image="registry.example.com/shop/web:1", hash="h1"))
    running = hooks.start_rollout(state)
    pid = next(handle for hook, handle in running if hook.name == "load").pid
    try:
        with pytest.raises(RuntimeError, match="refused the record"):
            hooks.finish_rollout(state, running, time.monotonic())
        time.sleep(0.1)
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split()[2] == "Z", "the load generator outlived its interval"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def test_a_merge_that_moves_prometheus_does_not_send_the_old_token_to_the_new_address(tmp_path: Path) -> None:
    # the token kept from the stack file went, without a word, to the Prometheus the manifest's template names
    out = tmp_path / "Pulumi.prod.yaml"
    out.write_text(STACK.replace("address: http://prometheus.monitoring:9090", "address: http://prom.internal:9090"))
    before = out.read_text()
    done = _cli(*IMPORT, "--out", str(out), "--merge")
    assert done.returncode == 2 and out.read_text() == before, done.stderr
    assert "canary:prometheus.token: is sent to http://prom.internal:9090, and the import points canary:prometheus.address at " \
           "http://prometheus.monitoring:9090" in done.stderr, done.stderr


def test_a_merge_over_a_whole_key_secret_the_import_writes_refuses_and_writes_nothing(tmp_path: Path) -> None:
    # canary:prometheus held as one secret: the import writes canary:prometheus (its address), and the merge
    # dropped the old value, token and all, without a word
    out = tmp_path / "Pulumi.prod.yaml"
    out.write_text(STACK.replace("  canary:prometheus:\n    address: http://prometheus.monitoring:9090\n    token:\n      secure: v1:dG9rZW4=\n",
                                 "  canary:prometheus:\n    secure: v1:d2hvbGU=\n"))
    before = out.read_text()
    done = _cli(*IMPORT, "--out", str(out), "--merge")
    assert done.returncode == 2 and out.read_text() == before, done.stderr
    assert "canary:prometheus: is written by the import, which would drop the secret it holds" in done.stderr


@pytest.mark.parametrize(("given", "weights"), [
    ({"stepWeight": 20, "maxWeight": 50}, [20, 40, 60]),  # Flagger overshoots maxWeight; canary stopped at 50
    ({"stepWeight": 60, "maxWeight": 50}, [60]),  # refused: stepWeight must not exceed maxWeight
    ({"stepWeight": 30, "stepWeights": [10, 50]}, [30, 60]),  # refused: set either stepWeights or stepWeight/maxWeight
    ({"stepWeight": 30, "stepWeights": [10, 150]}, [30, 60, 90, 100]),
    ({"stepWeight": 0, "stepWeights": [5, 25]}, [5, 25]),
], ids=["overshoot", "above-max", "beside-step-weights", "step-weights-past-100", "zero-step-weight"])
def test_weights_import_as_the_weights_flagger_steps_through(given: dict[str, Any], weights: list[int]) -> None:
    doc = _canary()
    analysis = doc["spec"]["analysis"]
    for key in ("stepWeight", "maxWeight", "stepWeights"):
        analysis.pop(key, None)
    analysis.update(given)
    result = flagger.convert([doc, _template()])
    from canary.core import schedule
    assert schedule.weights(result.spec.release_spec("web").analysis) == weights
    if "stepWeights" not in given or given.get("stepWeight"):
        assert any(n.startswith("spec.analysis.stepWeights: ") and str(weights) in n for n in result.notes), result.notes


def test_step_weights_of_the_wrong_shape_are_refused_not_replaced() -> None:
    # stepWeights: abc beside stepWeight was written over with Flagger's weights (exit 0); Flagger's CRD refuses it
    doc = _canary()
    doc["spec"]["analysis"].update({"stepWeight": 10, "stepWeights": "abc", "maxWeight": 50})
    with pytest.raises(InvalidSpec) as refused:
        flagger.convert([doc, _template()])
    assert any("stepWeights" in p.field for p in refused.value.problems), refused.value.problems


def test_weights_canary_steps_through_alike_import_as_they_are() -> None:
    doc = _canary()
    doc["spec"]["analysis"].update({"stepWeight": 10, "maxWeight": 50})
    doc["spec"]["analysis"].pop("stepWeights", None)
    result = flagger.convert([doc, _template()])
    analysis = result.spec.release_spec("web").analysis
    assert (analysis.step_weight, analysis.max_weight, analysis.step_weights) == (10, 50, None)
    assert not any(n.startswith("spec.analysis.stepWeights") for n in result.notes)


# --- what Flagger's own manifests mean, carried over --------------------------------------------------------

PODINFO = """\
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: podinfo, namespace: test}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  service: {port: 9898}
  analysis:
    interval: 15s
    threshold: 2
    stepWeight: 25
    maxWeight: 50
    metrics:
      - name: request-success-rate
        thresholdRange: {min: 99}
        interval: 1m
      - name: latency
        templateRef: {name: latency}
        thresholdRange: {max: 500}
        interval: 1m
"""
LATENCY = """\
apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata: {name: latency, namespace: test}
spec:
  provider: {type: prometheus, address: http://prometheus.istio-system:9090}
  query: histogram_quantile(0.99, sum(rate(http_duration_seconds_bucket{namespace="{{ namespace }}", job="{{ target }}-canary"}[{{ interval }}])) by (le))
"""


def _podinfo(**spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(PODINFO)
    doc["spec"].update(spec)
    return doc


def _latency(query: str | None = None, **provider: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(LATENCY)
    doc["spec"]["provider"].update(provider)
    doc["spec"]["query"] = query or doc["spec"]["query"]
    return doc


def test_a_metric_without_an_interval_imports_over_flaggers_minute_not_the_analysis_interval() -> None:
    # canary's default is analysis.interval: a 15s window, usually empty, and no data rolled back
    doc = _podinfo()
    for metric in doc["spec"]["analysis"]["metrics"]:
        del metric["interval"]
    result = flagger.convert([doc, _latency()])
    metrics = result.spec.release_spec("podinfo").analysis.metrics
    assert [m.interval for m in metrics] == [timedelta(minutes=1)] * 2
    for i in (0, 1):
        assert any(n.startswith(f"spec.analysis.metrics[{i}].interval: not set; written as 1m") for n in result.notes), result.notes
    doc["spec"]["analysis"]["metrics"][0]["interval"] = "30s"
    assert flagger.convert([doc, _latency()]).spec.release_spec("podinfo").analysis.metrics[0].interval == timedelta(seconds=30)


@pytest.mark.parametrize(("given", "written", "rendered"), [
    ('job="{{ target }}-canary"', 'job="{{ target }}"', 'job="podinfo-canary"'),
    ('pod=~"{{ target }}-primary-[0-9a-z]+-[0-9a-z]+"', 'pod=~"{{ stable }}-[0-9a-z]+-[0-9a-z]+"', 'pod=~"podinfo-stable-[0-9a-z]+-[0-9a-z]+"'),
    ('cluster=~"{{ namespace }}_{{ service }}-canary_9898"', 'cluster=~"{{ namespace }}_{{ target }}_9898"', 'cluster=~"test_podinfo-canary_9898"'),
    ('canary="{{ name }}"', 'canary="podinfo"', 'canary="podinfo"'),
    ('job="{{target}}-canaryx"', 'job="{{target}}-canaryx"', 'job="podinfo-canary-canaryx"'),
], ids=["target-canary", "target-primary", "service-canary", "name", "longer-word-kept"])
def test_flaggers_target_and_known_names_are_written_as_canary_names_them(given: str, written: str, rendered: str) -> None:
    # `{{ target }}-canary` (Flagger's canary Service) selected podinfo-canary-canary, which nothing is named
    from canary.core import analysis

    query = f"sum(rate(http_requests_total{{{given}}}[{{{{ interval }}}}]))"
    result = flagger.convert([_podinfo(), _latency(query)])
    release = result.spec.release_spec("podinfo")
    assert release.metric_templates["latency"].query == query.replace(given, written)
    assert analysis.render_query(release, release.analysis.metrics[1])[0] == f"sum(rate(http_requests_total{{{rendered}}}[1m]))"
    assert any(n.startswith("MetricTemplate latency: spec.query: ") for n in result.notes), result.notes


def test_a_bare_target_is_kept_with_a_note_that_it_now_names_the_canary_deployment() -> None:
    result = flagger.convert([_podinfo(), _latency('sum(rate(x{pod=~"{{ target }}-[0-9a-z]+"}[1m]))')])
    assert any(n.startswith("MetricTemplate latency: spec.query: {{ target }} is canary's canary Deployment, podinfo-canary")
               for n in result.notes), result.notes


def test_a_flagger_placeholder_no_manifest_decides_is_refused_naming_it() -> None:
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([_podinfo(), _latency('sum(rate(x{route="{{ route }}"}[1m]))')])
    assert [(p.field, p.value) for p in info.value.problems] == [("MetricTemplate latency: spec.query", "{{ route }}")]


@pytest.mark.parametrize("template_address", [None, "http://prometheus.istio-system:9090"])
def test_metrics_server_is_the_prometheus_of_the_built_in_metrics(template_address: str | None) -> None:
    # it was "not supported; ignored", and the built-in metrics were sent to a made-up default address
    template = _latency()
    if template_address is None:
        del template["spec"]["provider"]["address"]
    result = flagger.convert([_podinfo(metricsServer="http://prom.monitoring:9090"), template])
    release = result.spec.release_spec("podinfo")
    assert release.prometheus is not None and release.prometheus.address == "http://prom.monitoring:9090"
    assert release.metric_templates["latency"].provider.address == template_address
    assert not any("metricsServer: not supported" in n or "written as http://prometheus.monitoring:9090" in n for n in result.notes), result.notes
    assert any(n.startswith("spec.metricsServer: written as prometheus.address") for n in result.notes), result.notes


def test_an_invalid_metrics_server_is_refused_naming_the_canary_field() -> None:
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([_podinfo(metricsServer="prom:9090"), _latency()])
    assert [p.field for p in info.value.problems] == ["spec.metricsServer"]


def test_mirroring_with_weighted_steps_is_noted_as_canary_mirrors_at_every_step() -> None:
    doc = _podinfo()
    doc["spec"]["analysis"]["mirror"] = True
    result = flagger.convert([doc, _latency()])
    assert any(n.startswith("spec.analysis.mirror: Flagger mirrors for one interval only, at weight 0") for n in result.notes), result.notes
    doc["spec"]["analysis"].update(iterations=5)  # blue/green: Flagger mirrors throughout, as canary does
    assert not any(n.startswith("spec.analysis.mirror:") for n in flagger.convert([doc, _latency()]).notes)


def test_a_load_tester_smoke_test_without_a_timeout_gets_flaggers_ten_seconds_with_a_note() -> None:
    # it was written with no timeout, and ran under canary's 60s, where the README says Flagger's 10s
    smoke = {"name": "smoke", "type": "pre-rollout", "url": "http://flagger-loadtester.test/",
             "metadata": {"cmd": "curl -sf http://podinfo-canary.test:9898/healthz"}}
    doc = _podinfo()
    doc["spec"]["analysis"]["webhooks"] = [smoke]
    result = flagger.convert([doc, _latency()])
    (hook,) = result.spec.release_spec("podinfo").analysis.webhooks
    assert hook.timeout == timedelta(seconds=10) and not hook.background
    assert any(n.startswith("spec.analysis.webhooks[0].timeout: not set; written as 10s, Flagger's default") for n in result.notes), result.notes


def test_an_inline_query_metric_is_refused_naming_query_and_the_way_out() -> None:
    doc = _podinfo()
    doc["spec"]["analysis"]["metrics"] = [{"name": "404s", "query": "sum(rate(x[1m]))", "thresholdRange": {"max": 5}}]
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([doc])
    (problem,) = info.value.problems
    assert problem.field == "spec.analysis.metrics[0].query" and "MetricTemplate" in problem.rule and "templateRef" in problem.rule


def test_a_list_as_kubectl_prints_it_is_read_item_by_item() -> None:
    # `kubectl get canary,metrictemplate -o yaml` printed a List, refused as "0 Canary manifests"
    listed = {"apiVersion": "v1", "kind": "List", "items": [_podinfo(), _latency()], "metadata": {"resourceVersion": ""}}
    result = flagger.convert([listed])
    assert result.spec.release_spec("podinfo").metric_templates["latency"]
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([{"apiVersion": "v1", "kind": "List", "items": [_podinfo(), "x"]}])
    assert [p.field for p in info.value.problems] == ["items[1]"]


def test_a_canary_named_otherwise_than_its_deployment_has_its_webhooks_send_the_canary_s_name() -> None:
    # Flagger's load tester keys its gates on <Canary name>.<namespace>: sent the app's name, a gate opened for the
    # Canary's was never seen, and the import only said so
    doc = _podinfo()
    doc["metadata"]["name"] = "podinfo-release"
    result = flagger.convert([doc, _latency()])
    assert result.spec.release_spec("podinfo").analysis.webhook_name == "podinfo-release"
    assert stackconfig.to_config(result.spec)["canary:analysis"]["webhookName"] == "podinfo-release"
    (note,) = [n for n in result.notes if n.startswith("metadata.name: ")]
    assert "analysis.webhookName" in note and "podinfo-release.test" in note and "/gate/open" in note and "not seen" not in note, note
    same = flagger.convert([_podinfo(), _latency()])
    assert same.spec.release_spec("podinfo").analysis.webhook_name is None
    assert "webhookName" not in stackconfig.to_config(same.spec)["canary:analysis"]
    assert not any(n.startswith("metadata.name: ") for n in same.notes)


def test_a_canary_name_that_is_no_kubernetes_name_is_refused_naming_metadata_name() -> None:
    doc = _podinfo()
    doc["metadata"]["name"] = "Podinfo_Release"
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([doc, _latency()])
    (problem,) = info.value.problems
    assert problem.field == "metadata.name" and "DNS-1123 subdomain" in problem.rule, problem


def test_a_refused_import_carries_the_notes_gathered_before_it() -> None:
    # a load test alone is no check once it runs in the background: the refusal is explained by the note
    # that says so, which was lost with the import
    doc = _with_hooks(LOAD_TEST)
    doc["spec"]["analysis"]["metrics"] = []
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([doc])
    assert [p.field for p in info.value.problems] == ["spec.analysis.metrics"]
    assert any(n.startswith("spec.analysis.webhooks[0].metadata.cmd: runs in the background") for n in info.value.notes), info.value.notes


# --- what canary cannot route, and the commands notes give ------------------------------------------------


def _ab_test(match: list[dict[str, Any]]) -> dict[str, Any]:
    doc = _canary()
    for key in ("maxWeight", "stepWeight", "stepWeights"):
        doc["spec"]["analysis"].pop(key, None)
    doc["spec"]["analysis"].update(iterations=10, match=match)
    return doc


@pytest.mark.parametrize(("kind", "operator", "value", "matching", "other"), [
    ("headers", "prefix", "insider", "insider-7", "outsider"),
    ("headers", "prefix", "v1.2+b (x)'s", "v1.2+b (x)'s-rc", "v1x2+b (x)'s"),
    ("queryParams", "suffix", ".beta", "v2.beta", "v2-beta"),
])
def test_a_prefix_or_suffix_match_is_refused_as_unroutable_with_the_regex_that_routes_the_same(
        kind: str, operator: str, value: str, matching: str, other: str) -> None:
    # it was refused as `...headers.x-canary.prefix: is not a known field`, which reads like a typo
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([_ab_test([{kind: {"x-canary": {operator: value}}}]), _template()])
    (problem,) = info.value.problems
    assert problem.field == f"spec.analysis.match[0].{kind}.x-canary.{operator}", problem
    assert problem.rule.startswith(f"canary cannot route a {operator} match: the Gateway API matches a "), problem.rule
    assert "Exact, RegularExpression" in problem.rule and "not a known field" not in str(info.value)
    # the line it suggests, pasted into the manifest, imports and matches the values the Flagger match did
    suggested = yaml.safe_load(problem.rule.split("write it as ", 1)[1].removesuffix(", which matches the same values"))
    result = flagger.convert([_ab_test([{kind: {"x-canary": suggested}}]), _template()])
    (match,) = result.spec.release_spec("web").analysis.match
    regex = (match.headers if kind == "headers" else match.query_params)["x-canary"].regex
    assert regex is not None and re.fullmatch(regex, matching) and not re.fullmatch(regex, other), regex
    assert re.search(regex, matching) and not re.search(regex, other)  # anchored: a gateway that searches routes the same


def test_every_unroutable_match_is_named_at_once() -> None:
    doc = _ab_test([{"headers": {"a": {"exact": "1"}, "b": {"suffix": "x"}}}, {"headers": {"c": {"prefix": "y"}}}])
    with pytest.raises(InvalidSpec) as info:
        flagger.convert([doc, _template()])
    assert [p.field for p in info.value.problems] == ["spec.analysis.match[0].headers.b.suffix", "spec.analysis.match[1].headers.c.prefix"]
    assert all(p.rule.startswith("canary cannot route a ") for p in info.value.problems), info.value.problems


def test_a_template_s_secret_ref_note_names_the_key_canary_reads() -> None:
    # `--path prometheus.token`, followed literally, stored <project>:prometheus.token, which canary never reads
    template = _template()
    template["spec"]["provider"]["secretRef"] = {"name": "prom-auth"}
    notes = [n for n in flagger.convert([_canary(), template]).notes if "secretRef" in n]
    assert len(notes) == 1 and "pulumi config set --secret --path canary:prometheus.token " in notes[0], notes
    assert all(re.search(r"config set [^:]*--path canary:", n) for n in notes if "pulumi config set" in n)


# --- hooks Flagger called from inside the cluster ----------------------------------------------------------


@pytest.mark.parametrize(("url", "host", "why"), [
    ("http://flagger-loadtester.test/gate/check", "flagger-loadtester.test", "test is no top-level domain canary knows"),
    ("http://gate/approve", "gate", "a name without a dot"),
    ("http://gate.flagger.svc:8080/approve", "gate.flagger.svc", "ending in .svc or .cluster.local"),
    ("https://gate.flagger.svc.cluster.local/approve", "gate.flagger.svc.cluster.local", "ending in .svc or .cluster.local"),
    ("http://s3cret-token@gate.istio-system:8080/approve?key=hunter2", "gate.istio-system", "istio-system is no top-level domain"),
    ("http://web-canary.prod/", "web-canary.prod", "prod is no top-level domain canary knows"),  # Flagger's own example hook
])
def test_a_hook_on_a_cluster_internal_host_is_noted_by_its_host_alone(url: str, host: str, why: str) -> None:
    # Flagger reaches it from inside the cluster; canary calls it from where it runs (a CI runner), where it
    # does not resolve: a gate that never opens, every time, with nothing said at the import
    result = flagger.convert([_with_hooks({"name": "gate", "type": "confirm-promotion", "url": url}), _template()])
    notes = [n for n in result.notes if "cluster-internal" in n]
    assert len(notes) == 1 and notes[0].startswith(f"spec.analysis.webhooks[0].url: webhook 'gate' calls host {host}, which looks "
                                                   "cluster-internal ("), result.notes
    assert why in notes[0] and "port-forward" in notes[0] and "run canary in the cluster" in notes[0]
    assert not any(secret in n for n in result.notes for secret in ("s3cret", "hunter2", "key=", "/approve"))


@pytest.mark.parametrize("namespace", ["prod", "int", "build", "tools"])
def test_a_namespace_named_as_a_rare_top_level_domain_is_taken_for_one(namespace: str) -> None:
    # `web-canary.prod` (<service>.<namespace>, Flagger's own example) was taken for a public host: .prod is a TLD few
    # public hosts end in, and prod a namespace many clusters have; so are int, build and tools
    assert flagger.cluster_internal(f"web-canary.{namespace}") == f"<service>.<namespace>: {namespace} is no top-level domain canary knows"
    assert flagger.cluster_internal(f"web-canary.{namespace}.example.com") is None


@pytest.mark.parametrize("url", ["https://gate.example.com/approve", "https://approvals.dev/x", "http://gate.example.de/",
                                 "http://10.0.0.7:8080/", "http://localhost:8080/", "http://gate.shop.example/"])
def test_a_hook_on_a_public_host_or_an_address_is_not_noted(url: str) -> None:
    result = flagger.convert([_with_hooks({"name": "gate", "type": "confirm-promotion", "url": url}), _template()])
    assert not any("cluster-internal" in n for n in result.notes), result.notes


def test_a_load_test_run_locally_is_noted_for_the_cluster_internal_host_it_calls() -> None:
    hook = {**LOAD_TEST, "metadata": {"cmd": "hey -z 1m http://web-canary.test:80/?token=abc http://web-canary.test/b https://example.com/"}}
    result = flagger.convert([_with_hooks(hook), _template()])
    notes = [n for n in result.notes if "cluster-internal" in n]
    assert notes == [n for n in notes if n.startswith("spec.analysis.webhooks[0].metadata.cmd: webhook 'load-test' calls host web-canary.test,")]
    assert len(notes) == 1, result.notes


def test_a_password_holding_an_at_sign_is_no_host_in_a_note() -> None:
    # the user info runs to the last `@` before the path, as a URL parser reads it: the note said `calls host tpw`, a piece
    # of the password, on the terminal and in the stack file's header
    hook = {**LOAD_TEST, "metadata": {"cmd": "curl -s http://admin:s3cr@tpw@web-canary.test/"}}
    result = flagger.convert([_with_hooks(hook), _template()])
    notes = [n for n in result.notes if "cluster-internal" in n]
    assert len(notes) == 1 and "calls host web-canary.test," in notes[0], result.notes
    assert not any("tpw" in n or "s3cr" in n for n in result.notes), result.notes


def test_the_replaced_load_tester_is_named_by_its_host_not_its_url() -> None:
    hook = {**LOAD_TEST, "url": "http://t0ken@flagger-loadtester.test/?key=hunter2"}
    result = flagger.convert([_with_hooks(hook), _template()])
    assert ("spec.analysis.webhooks[0].url: the Flagger load tester at flagger-loadtester.test is replaced by running metadata.cmd "
            "locally as the webhook's cmd") in result.notes, result.notes
    assert not any("t0ken" in n or "hunter2" in n for n in result.notes), result.notes


def test_the_service_s_app_protocol_is_carried_over_to_the_app_s_services() -> None:
    # Flagger sets spec.service.appProtocol on the port of every Service it makes (a gRPC app's kubernetes.io/h2c): noted as
    # "not supported; ignored", the imported app's gateway spoke HTTP/1.1 to pods that answer HTTP/2 only
    doc = _canary()
    doc["spec"]["service"]["appProtocol"] = "kubernetes.io/h2c"
    result = flagger.convert([doc, _template()])
    assert result.spec.app_configs()["web"].app.app_protocol == "kubernetes.io/h2c"  # type: ignore[union-attr]
    assert not any("appProtocol" in note for note in result.notes), result.notes
    doc["spec"]["service"]["appProtocol"] = "Kubernetes.IO/h2c"
    with pytest.raises(InvalidSpec) as refused:
        flagger.convert([doc, _template()])
    assert [p.field for p in refused.value.problems] == ["spec.service.appProtocol"]
