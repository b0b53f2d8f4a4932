"""Releases end to end on the lab: real Pulumi, API server, Traefik, Prometheus and hey load tests.

Each test releases on a stack of its own, through the CLI as a user would, and watches the HTTPRoute
in the cluster while it runs.
"""

from __future__ import annotations

from typing import Any

import pytest

from canary.core.naming import Track
from tests.lab.helpers import LabStack, RouteWatcher, assert_stable_state, drive, host


def test_a_healthy_release_is_promoted_through_every_weight(lab_stack: LabStack) -> None:
    with RouteWatcher(lab_stack) as watcher:
        done = lab_stack.release("demo:v2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [w for w in watcher.canary_weights if w] == [10, 20, 30, 40, 50], watcher.seen
    assert watcher.seen[-1] == (100, 0)
    assert watcher.stable_images[-1] == "demo:v2", list(zip(watcher.seen, watcher.stable_images, strict=True))  # stable ran v2 before it took all traffic
    assert_stable_state(lab_stack, "demo:v2")
    assert "Succeeded" in done.stdout and "promoted demo:v2" in done.stdout and "Exception ignored" not in done.stderr
    ticks = lab_stack.of("tick")
    hooks = [r for r in lab_stack.of("webhook") if r.hook_type == "rollout"]
    assert len(hooks) == len(ticks) and all(r.ok for r in hooks), hooks  # hey ran through the gateway before every tick
    assert [t.weight for t in ticks if t.outcome.value == "advance"] == [10, 20, 30, 40, 50]
    for tick in ticks:  # nothing failed; a hold is waiting for data or evidence, never a guess
        assert tick.outcome.value in ("advance", "hold"), tick.reason
    # in the cluster, not on this machine: the state and the journal, and Events on the canary Deployment
    events = lab_stack.kube.list("v1", "Event", lab_stack.namespace)
    reasons = {e["reason"] for e in events if e["involvedObject"]["name"] == "web-canary" and e.get("source", {}).get("component") == "canary"}
    assert {"Progressing", "Promoting", "Promoted"} <= reasons, reasons


def test_a_faulty_release_rolls_back_after_three_failed_checks(lab_stack: LabStack) -> None:
    with RouteWatcher(lab_stack) as watcher:
        done = lab_stack.release("demo:v2-faulty")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert max(watcher.canary_weights) == 10 and watcher.seen[-1] == (100, 0), watcher.seen
    assert_stable_state(lab_stack, "demo:v1")
    ticks = lab_stack.of("tick")
    assert [t.failed_in_row for t in ticks if t.outcome.value != "hold"][-3:] == [1, 2, 3]
    assert ticks[-1].outcome.value == "rollback"
    error_rate = next(c for c in ticks[-1].checks if c.metric == "error-rate")
    assert error_rate.verdict.value == "fail" and error_rate.value is not None and error_rate.value > 1 and error_rate.threshold_range.max == 5
    status = lab_stack.cli("status", lab_stack.name)
    assert status.returncode == 0, status.stderr
    assert "Failed" in status.stdout and "error-rate" in status.stdout and "> max 5 for 3 checks in a row at weight 10" in status.stdout
    history = lab_stack.cli("history", lab_stack.name)
    assert "tick rollback: error-rate" in history.stdout
    events = [e for e in lab_stack.kube.list("v1", "Event", lab_stack.namespace) if e["involvedObject"]["name"] == "web-canary"]
    rolled = [e for e in events if e["reason"] in ("RollingBack", "CheckFailed")]
    assert rolled and all(e["type"] == "Warning" for e in rolled) and any("error-rate" in e["message"] and "> max 5" in e["message"] for e in rolled)


def test_a_slow_release_fails_the_p95_and_rolls_back(lab_stack: LabStack) -> None:
    done = lab_stack.release("demo:v2-slow")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert_stable_state(lab_stack, "demo:v1")
    duration = next(c for c in lab_stack.of("tick")[-1].checks if c.metric == "request-duration")
    assert duration.verdict.value == "fail" and duration.value is not None and duration.value > 500, duration


def _flapping(config: dict[str, Any]) -> None:
    analysis = config["canary:analysis"]
    # 10 in a row is never reached (a faulty window fails about 5 checks in a row); 6 in all is, in the
    # second faulty window: ten steps of 5 need more passes than one healthy window gives.
    analysis.update(threshold=10, failureLimit=6, stepWeight=5)
    analysis["metrics"][0].update(interval="5s", evidence="none")  # judged on each interval's own requests


@pytest.mark.parametrize("lab_stack", [_flapping], indirect=True)
def test_a_flapping_canary_is_rolled_back_by_its_failures_in_all(lab_stack: LabStack) -> None:
    """demo:v2-flaky-20s is healthy 20 s, then answers half its requests with 500 for 20 s, and so on: its
    failures never reach threshold in a row (passing ticks between them reset that count), and
    failureLimit — failed checks in all — rolls it back (12.3). Counted in a row alone, it is promoted."""
    done = lab_stack.release("demo:v2-flaky-20s")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "failed checks in all (failureLimit 6)" in done.stdout, done.stdout[-3000:]
    assert_stable_state(lab_stack, "demo:v1")
    outcomes = [(t.outcome.value, t.failed_in_row) for t in lab_stack.of("tick")]
    assert max(n for _, n in outcomes) < 10, outcomes
    first_fail = next(i for i, (o, _) in enumerate(outcomes) if o == "fail")
    assert any(o == "advance" for o, _ in outcomes[first_fail:]), outcomes  # fail … pass … fail: the flapping


def _light_load_flagger_steps(config: dict[str, Any]) -> None:
    analysis = config["canary:analysis"]
    for key in ("stepWeight", "maxWeight", "minRequests"):
        analysis.pop(key, None)
    analysis["stepWeights"] = [1, 5, 10, 25, 50]
    analysis["holdLimit"] = "40s"
    # light load: a few canary requests per tick at weight 1, as a quiet service at night has
    analysis["webhooks"][0]["cmd"] = analysis["webhooks"][0]["cmd"].replace("-q 25 -c 8", "-q 5 -c 2")


@pytest.mark.parametrize("lab_stack", [_light_load_flagger_steps], indirect=True)
def test_a_faulty_version_under_light_load_is_never_promoted_on_a_handful_of_requests(lab_stack: LabStack) -> None:
    """stepWeights [1, 5, 10, 25, 50], no minRequests, a few canary requests per tick: a canary answering
    20 % with 500 must not pass a tick because none of its few requests failed (16.3)."""
    done = lab_stack.release("demo:v2-faulty")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert_stable_state(lab_stack, "demo:v1")
    ticks = lab_stack.of("tick")
    assert ticks, done.stdout[-3000:]  # rolled back by its ticks: without any, "none advanced" says nothing
    advanced = [t for t in ticks if t.outcome.value == "advance"]
    assert not advanced, [(t.weight, t.reason) for t in advanced]
    held = [c for t in ticks for c in t.checks if c.metric == "error-rate" and c.verdict.value == "inconclusive"]
    assert all(c.requests is not None and c.bound is not None and c.bound > 1 for c in held), held


def test_the_canary_is_sized_by_its_weight_and_app_wide_selectors_never_reach_it(lab_stack: LabStack) -> None:
    """An app-wide Service (selecting app.kubernetes.io/name=web) reaches stable pods only (12.17)."""
    lab_stack.kube.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-everything", "namespace": lab_stack.namespace},
                          "spec": {"selector": {"app.kubernetes.io/name": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}, field_manager="test")
    process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2")
    from tests.lab.helpers import running, wait_until

    with running(process):
        wait_until(lambda: (lab_stack.state() or _no).weight == 20, "weight 20", 180, process)
        canary = lab_stack.deployment(Track.CANARY)
        assert canary["replicas"] == 1  # ceil(2 × 20 / 100)
        slices = lab_stack.kube.list("discovery.k8s.io/v1", "EndpointSlice", lab_stack.namespace, label_selector="kubernetes.io/service-name=web-everything")
        pods = {e["targetRef"]["name"] for s in slices for e in s.get("endpoints") or []}
        assert pods and all(p.startswith("web-stable-") for p in pods), pods
        apex = drive(f"{lab_stack.layout.gateway_url}/", 40, host_name=host(lab_stack.name))
        assert apex.get("v2", 0) > 0  # the route does reach the canary meanwhile
        process.communicate(timeout=600)
    assert process.returncode == 0


def test_a_release_that_moves_the_port_sends_each_track_s_traffic_to_the_port_it_serves(lab_stack: LabStack) -> None:
    """app.port 8080 -> 9090 with the new version: stable keeps serving on 8080 until it takes the new version,
    and not one request through the gateway fails, promotion included. The Services target the port by its name
    (the simple form's ``http``), each pod reached on its own port. (They targeted 9090 from the release's first
    up: stable's share and every call to the apex Service went to a port its pods do not listen on; then, by
    number, they kept 8080 through promotion while stable rolled onto 9090, outside that up's targets.)"""
    from canary.adapters import stackfile
    from tests.lab.helpers import Steady, running, wait_until

    stackfile.set_value(lab_stack.project / "stacks" / f"Pulumi.{lab_stack.name}.yaml", ("canary:app", "port"), 9090)
    process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2")

    def target_ports() -> dict[str, Any]:
        return {name: lab_stack.kube.get("v1", "Service", name, lab_stack.namespace)["spec"]["ports"][0]["targetPort"]  # type: ignore[index]
                for name in ("web", "web-stable", "web-canary")}

    def pod_ports(track: str) -> set[int]:
        pods = lab_stack.kube.list("v1", "Pod", lab_stack.namespace, label_selector=f"canary.dev/track={track}")
        return {p["containerPort"] for pod in pods for c in pod["spec"]["containers"] for p in c.get("ports") or []}

    with running(process):
        wait_until(lambda: (lab_stack.state() or _no).weight == 20, "weight 20", 180, process)
        assert (pod_ports("stable"), pod_ports("canary")) == ({8080}, {9090})
        during = target_ports()
        with Steady(f"{lab_stack.layout.gateway_url}/", host(lab_stack.name), clients=2, seconds=300) as steady:
            process.communicate(timeout=600)
    assert process.returncode == 0
    assert steady.failures == [] and steady.counts["v1"] > 0 and steady.counts["v2"] > 0, (steady.counts, steady.failures[:10])
    assert during == target_ports() == {"web": "http", "web-stable": "http", "web-canary": "http"} and pod_ports("stable") == {9090}
    assert_stable_state(lab_stack, "demo:v2")
    answers = drive(f"{lab_stack.layout.gateway_url}/", 50, host_name=host(lab_stack.name))
    assert answers == {"v2": 50}, answers


class _No:
    weight = -1


_no = _No()


def test_a_stack_never_deployed_is_refused_by_release_and_deployed_by_up(lab: Any, tmp_path: Any) -> None:
    """A new user's first command on a fresh stack: `release` refuses before anything changes, `up` deploys (12.11)."""
    import os

    from tests.lab.conftest import make_project

    name = "t-never-deployed"
    project = make_project(lab, tmp_path, name)
    env = {**os.environ, **lab.pulumi_env()}
    handle = LabStack(lab, project, name, name, env, __import__("canary.adapters.kube", fromlist=["Kube"]).Kube(lab.kubeconfig))
    try:
        refused = handle.release("demo:v2")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "has not deployed web yet: run `canary up" in refused.stderr and "Traceback" not in refused.stderr
        assert lab_namespace_objects(handle) == [] and "image: demo:v1" in (project / "stacks" / f"Pulumi.{name}.yaml").read_text()
        deployed = handle.cli("up", name)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert "deployed for the first time, running demo:v1" in deployed.stdout
        assert_stable_state(handle, "demo:v1")
    finally:
        from canary.adapters.stack import Stack

        Stack(project, name, env).destroy()


def lab_namespace_objects(handle: LabStack) -> list[str]:
    return [d["metadata"]["name"] for d in handle.kube.list("apps/v1", "Deployment", handle.namespace)]


def test_edits_of_the_stack_file_during_a_release_are_not_applied_by_its_rollback_and_are_kept(lab_stack: LabStack) -> None:
    """The rollback applies the snapshot taken when the release began: an env edited mid-release is named
    in the journal and status, kept in a file next to the stack file, and not applied (12.2)."""
    from tests.lab.helpers import running, wait_until

    stack_file = lab_stack.project / "stacks" / f"Pulumi.{lab_stack.name}.yaml"
    process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2-faulty")
    with running(process):
        wait_until(lambda: (lab_stack.state() or _no).weight == 10, "weight 10", 180, process)
        text = stack_file.read_text()
        stack_file.write_text(text.replace("    replicas: 2\n", "    replicas: 2\n    env: {LOG_LEVEL: debug}\n"))
        out, err = process.communicate(timeout=600)
    assert process.returncode == 1, out[-2000:] + err[-2000:]
    assert "not applied by the rollback" in out and "canary:app.env" in out
    state = lab_stack.state()
    assert state is not None and state.unapplied == ("canary:app.env",)
    kept = list(stack_file.parent.glob(f"Pulumi.{lab_stack.name}.yaml.*.unapplied"))
    assert len(kept) == 1 and "LOG_LEVEL: debug" in kept[0].read_text()
    stable = lab_stack.kube.get("apps/v1", "Deployment", "web-stable", lab_stack.namespace)
    assert stable is not None
    containers = stable["spec"]["template"]["spec"]["containers"]
    assert not any(e["name"] == "LOG_LEVEL" for c in containers for e in c.get("env") or [])  # the snapshot's env
    assert "LOG_LEVEL: debug" in stack_file.read_text()  # the edit is still there, not lost
    status = lab_stack.cli("status", lab_stack.name)
    assert "not applied by the rollback: canary:app.env" in status.stdout
