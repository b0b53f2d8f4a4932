"""Faults during releases on the lab: Prometheus down, API server down, a route no gateway accepts,
secrets in every artefact. Each ends on a verified stable state, or says clearly why not."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from canary.core import naming
from canary.core.naming import Track
from canary.errors import Forbidden, Refused
from canary.lab import cluster, procs
from canary.state.cache import state_root
from tests.lab.helpers import LabStack, RouteWatcher, assert_stable_state, running, wait_until


def _start_release(lab_stack: LabStack, image: str) -> subprocess.Popen[str]:
    return lab_stack.start("release", lab_stack.name, "--image", image)


def _wait_for_weight(watcher: RouteWatcher, weight: int, process: subprocess.Popen[str], timeout: float = 180) -> None:
    wait_until(lambda: [w for w in watcher.canary_weights if w >= weight], f"the route at canary weight {weight} (seen {watcher.seen})", timeout, process)


def _stop(lab_stack: LabStack, component: str) -> None:
    procs.stop(component, lab_stack.layout.dir)


def _restart(lab_stack: LabStack) -> None:
    cluster.up(lab_stack.layout, say=lambda line: None)


def _threshold_5(config: dict[str, Any]) -> None:
    config["canary:analysis"]["threshold"] = 5  # room for the outage and the scrapes it takes to recover


@pytest.mark.disruptive
@pytest.mark.parametrize("lab_stack", [_threshold_5], indirect=True)
def test_prometheus_down_gives_failed_checks_never_a_promotion_then_the_release_continues(lab_stack: LabStack) -> None:
    with RouteWatcher(lab_stack) as watcher, running(_start_release(lab_stack, "demo:v2")) as process:
        try:
            _wait_for_weight(watcher, 20, process)
            _stop(lab_stack, "prometheus")
            def last_tick() -> list[str]:
                return [r.outcome.value for r in lab_stack.of("tick")][-1:]

            wait_until(lambda: last_tick() == ["fail"], "a failed tick with Prometheus down", 60, process, every=0.5)
            _restart(lab_stack)
            out, err = process.communicate(timeout=300)
        finally:
            _restart(lab_stack)
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    ticks = lab_stack.of("tick")
    down = [t for t in ticks if t.outcome.value == "fail"]
    assert down, ticks
    for tick in down:  # while Prometheus is gone: errors; never a pass (and some checks: `all` over none would hold)
        assert tick.checks, tick
        assert all(c.verdict.value in ("error", "no-data") and c.effect.value == "fail" for c in tick.checks), tick
    # the lab's forwarder takes the connection and closes it when Prometheus behind it is gone (a proxy would
    # too); a Prometheus on the same network namespace refuses it: either is said plainly
    reached = ("could not be reached (connection refused)", "could not be reached (the connection was closed without an answer)")
    assert any(all(any(r in c.reason for r in reached) for c in t.checks) for t in down), [c.reason for t in down for c in t.checks]
    # no step advanced on a tick without data: each failing tick is followed by another tick at the same weight
    weights_after_failure = [ticks[i + 1].weight for i, t in enumerate(ticks[:-1]) if t.outcome.value == "fail"]
    assert weights_after_failure == [t.weight for t in ticks[:-1] if t.outcome.value == "fail"]
    assert_stable_state(lab_stack, "demo:v2")


# Up to six `up`s fail against the stopped API server, each after the provider's ~32 s discovery timeout
# (a step's three attempts, then the rollback's three), and after the restart the gateway's watch can take
# up to a minute to reconnect (client-go's backoff, jittered up to 60 s): about 330 s at worst with the
# stack's set-up and destroy, past the suite's 300 s default.
@pytest.mark.timeout(600)
@pytest.mark.disruptive
def test_api_server_down_during_a_step_rolls_back_or_leaves_a_pending_rollback_that_resume_completes(lab_stack: LabStack) -> None:
    with RouteWatcher(lab_stack) as watcher, running(_start_release(lab_stack, "demo:v2")) as process:
        _wait_for_weight(watcher, 10, process)
        _stop(lab_stack, "kube-apiserver")
        out, err = process.communicate(timeout=300)
    assert process.returncode == 4, out[-3000:] + err[-3000:]
    assert "rollback pending" in out.lower() or "rollback could not be applied" in out
    # the API server is down: the state was kept on this machine, and says so
    local = state_root(lab_stack.project) / lab_stack.name / "web" / "state.json"
    assert '"rollback_pending": true' in local.read_text()
    _restart(lab_stack)
    status = lab_stack.cli("status", lab_stack.name)
    assert "ROLLBACK PENDING" in status.stdout, status.stdout + status.stderr
    resumed = lab_stack.cli("resume", lab_stack.name)
    assert resumed.returncode == 1, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert_stable_state(lab_stack, "demo:v1")
    final = lab_stack.state()
    assert final is not None and final.phase.value == "Failed" and not final.rollback_pending
    # what the release decided while the cluster was down reached the cluster's journal afterwards
    assert any(r.type == "state" and "rollback pending" in r.message for r in lab_stack.records())


def _missing_gateway(config: dict[str, Any]) -> None:
    config["canary:gateway"]["parentRefs"] = [{"name": "missing", "namespace": "default", "sectionName": "web"}]


@pytest.mark.parametrize("lab_stack", [_missing_gateway], indirect=True)
def test_a_route_no_gateway_accepts_fails_the_release_without_analysis(lab_stack: LabStack) -> None:
    done = lab_stack.cli("release", lab_stack.name, "--image", "demo:v2", "--route-timeout", "10")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert not lab_stack.of("tick")  # nothing was judged as if traffic had shifted
    state = lab_stack.state()
    assert state is not None and state.phase.value == "Failed"
    assert "RouteNotAccepted" in state.reason and "gateway missing" in state.reason and "within 10s" in state.reason
    canary = lab_stack.deployment(Track.CANARY)
    assert canary["pods"] == 0


def test_secrets_never_appear_in_any_artefact(lab_stack: LabStack, tmp_path: Path) -> None:
    token = "tok-" + "5e" * 12
    env = lab_stack.env
    subprocess.run(["pulumi", "config", "set", "--secret", "--path", "canary:prometheus.token", token, "--stack", lab_stack.name],
                   cwd=lab_stack.project, env=env, check=True, capture_output=True)
    faulty = lab_stack.release("demo:v2-faulty")
    status = lab_stack.cli("status", lab_stack.name, "--json")
    history = lab_stack.cli("history", lab_stack.name, "--json")
    passphrase = lab_stack.layout.passphrase()
    artefacts = {"release stdout": faulty.stdout, "release stderr": faulty.stderr, "status": status.stdout, "history": history.stdout}
    exports = []
    for path in state_root(lab_stack.project).rglob("*"):
        if path.is_file():
            artefacts[str(path)] = path.read_text(errors="replace")
        if path.name == "stable-export.json":  # the stack's whole state: its owner's alone
            exports.append(path)
            assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others: {oct(path.stat().st_mode)}"
    assert exports, "the release kept no export of the stable stack state"
    for obj in lab_stack.kube.list("v1", "ConfigMap", lab_stack.namespace) + lab_stack.kube.list("v1", "Event", lab_stack.namespace):
        artefacts[f"{obj['kind']} {obj['metadata']['name']}"] = str(obj)
    artefacts["stack file"] = (lab_stack.project / "stacks" / f"Pulumi.{lab_stack.name}.yaml").read_text()
    for name, text in artefacts.items():
        assert token not in text, f"the Prometheus token leaked into {name}"
        assert passphrase not in text, f"the passphrase leaked into {name}"
    assert faulty.returncode == 1  # the release itself ran (and was judged) with the token configured


def _refusing_events(namespace: str) -> list[dict[str, Any]]:
    """The API server's own admission policy (no webhook) refusing every Event in ``namespace``: as a
    cluster whose CI role may not create Events, or whose policy engine refuses them."""
    return _refusing(namespace, "no-events", [{"apiGroups": ["", "events.k8s.io"], "apiVersions": ["v1"], "operations": ["CREATE"],
                                               "resources": ["events"]}], "no events in this namespace")


def _refusing(namespace: str, what: str, rules: list[dict[str, Any]], message: str) -> list[dict[str, Any]]:
    """An admission policy of the API server's own refusing the writes ``rules`` name in ``namespace``, 403 Forbidden."""
    name = f"canary-test-{what}-{namespace}"
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy", "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {"resourceRules": rules},
                  # (answered 403 Forbidden, as RBAC would; without a reason it is 422 Invalid)
                  "validations": [{"expression": "false", "message": message, "reason": "Forbidden"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"],
                  "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}}},
    ]


def test_a_first_release_the_cluster_lets_create_but_not_update_its_records_leaves_nothing_to_resume(lab_stack: LabStack) -> None:
    # a role that may create ConfigMaps but not update them: the app's first release created its state
    # ("Initializing"), was refused at its next record and could not write its end, so every machine saw an
    # unfinished release nobody held and was sent to resume it
    policy = _refusing(lab_stack.namespace, "no-updates", [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                                                           "resources": ["configmaps"]}], "no configmap updates in this namespace")
    assert lab_stack.kube.get("v1", "ConfigMap", naming.state_configmap(lab_stack.app), lab_stack.namespace) is None  # its first release
    try:
        lab_stack.kube.apply_all(policy)
        probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "canary-test-probe", "namespace": lab_stack.namespace}, "data": {}}
        lab_stack.kube.create(probe)

        def refused() -> bool:
            current = lab_stack.kube.get("v1", "ConfigMap", "canary-test-probe", lab_stack.namespace)
            try:
                lab_stack.kube.replace({**current, "data": {"n": str(time.monotonic())}})
            except (Forbidden, Refused) as exc:
                return "no configmap updates" in str(exc)
            return False

        wait_until(refused, "the admission policy refusing ConfigMap updates", 30)
        done = lab_stack.release("demo:v2")
        assert done.returncode == 1 and "not started, nothing was applied" in done.stderr and "no configmap updates" in done.stderr, done.stderr[-3000:]
        assert_stable_state(lab_stack, "demo:v1")
        assert lab_stack.kube.get("v1", "ConfigMap", naming.state_configmap(lab_stack.app), lab_stack.namespace) is None
        elsewhere = subprocess.run([sys.executable, "-m", "canary", "status", lab_stack.name, "--project-dir", str(lab_stack.project)],
                                   capture_output=True, text=True, timeout=120, env={**lab_stack.env, "CANARY_STATE_DIR": str(lab_stack.project / "elsewhere")})
        assert elsewhere.returncode == 2 and "no release recorded" in elsewhere.stderr, elsewhere.stdout + elsewhere.stderr
    finally:
        for obj in reversed(policy):
            lab_stack.kube.delete(obj["apiVersion"], obj["kind"], obj["metadata"]["name"])
    wait_until(lambda: not refused(), "the admission policy gone", 30)
    lab_stack.kube.delete("v1", "ConfigMap", "canary-test-probe", lab_stack.namespace)
    done = lab_stack.release("demo:v2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]  # once the cluster takes them, the app releases


def test_a_cluster_that_refuses_the_release_s_events_still_sees_a_faulty_canary_rolled_back(lab_stack: LabStack) -> None:
    # the first Event (once the canary Deployment exists) used to end the release with its 403, and the
    # rollback's Events too: a faulty canary kept its traffic
    policy = _refusing_events(lab_stack.namespace)
    canary = lab_stack.kube.get("apps/v1", "Deployment", "web-canary", lab_stack.namespace)
    assert canary is not None
    involved = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web-canary", "namespace": lab_stack.namespace, "uid": canary["metadata"]["uid"]}
    try:
        lab_stack.kube.apply_all(policy)

        def refused() -> bool:
            try:
                lab_stack.kube.event(involved, "Probe", "is the policy in force?")
            except (Forbidden, Refused) as exc:
                return "no events in this namespace" in str(exc)
            return False

        wait_until(refused, "the admission policy refusing Events", 30)
        with RouteWatcher(lab_stack) as watcher:
            done = lab_stack.release("demo:v2-faulty")
        assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
        assert max(watcher.canary_weights) == 10 and watcher.seen[-1] == (100, 0), watcher.seen
        assert_stable_state(lab_stack, "demo:v1")
        said = [r.message for r in lab_stack.records() if "Kubernetes Events cannot be recorded" in getattr(r, "message", "")]
        assert len(said) == 1 and "no events in this namespace" in said[0] and "403" in said[0], said
        state = lab_stack.state()
        assert state is not None and state.phase.value == "Failed" and "error-rate" in state.reason
    finally:
        for obj in reversed(policy):
            lab_stack.kube.delete(obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


@pytest.mark.long
def test_a_rollback_whose_up_keeps_failing_puts_traffic_back_on_stable_and_resume_completes_it(lab_stack: LabStack) -> None:
    # the program broken mid-release (a checkout changed under the release): every up of the rollback failed,
    # and the release ended "rollback pending" with the canary's share of traffic until a person came
    ls = lab_stack
    main = ls.project / "__main__.py"
    working = main.read_text()
    spec = ls.spec()
    with RouteWatcher(ls) as watcher:
        release = ls.start("release", ls.name, "--image", "demo:v2")
        with running(release):
            wait_until(lambda: 10 in watcher.canary_weights, "the canary at weight 10", 120)
            main.write_text("raise RuntimeError('the checkout changed under the release')\n" + working)
            out, err = release.communicate(timeout=300)
    assert release.returncode == 4, out[-3000:] + err[-3000:]
    assert "Traffic is on stable (the route was written at rest directly)" in out + err, out[-3000:] + err[-3000:]
    route = ls.reader.route(spec)
    assert route is not None and route.weights == (100, 0) and route.accepted, route
    assert watcher.seen[-1] == (100, 0) and max(watcher.canary_weights) == 10, watcher.seen
    state = ls.state()
    assert state is not None and state.rollback_pending and state.rollback_step == 2 and state.weight == 0
    assert any("written at rest directly, around Pulumi" in getattr(r, "message", "") for r in ls.records())

    main.write_text(working)
    resumed = ls.cli("resume", ls.name)
    assert resumed.returncode == 1, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert_stable_state(ls, "demo:v1")
    # Pulumi still owns the route: the next release shifts it as ever (no field-manager conflict)
    with RouteWatcher(ls) as again:
        done = ls.release("demo:v2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [w for w in again.canary_weights if w][:2] == [10, 20], again.seen
    assert_stable_state(ls, "demo:v2")
