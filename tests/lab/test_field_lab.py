"""A real team's setup on the lab: Ctrl-C and abort at the worst moments, the Prometheus Operator's
labels, a backend chosen with ``pulumi login`` and an org-qualified stack, a kubeconfig whose current
context is another cluster (issue 12: items 6, 13, 14, 15)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from canary import api
from canary.adapters import stackfile
from canary.adapters.kube import Kube
from canary.adapters.stack import Stack
from canary.core import naming
from canary.lab.layout import Layout
from tests.lab.conftest import make_project, stack_name
from tests.lab.helpers import LabStack, RouteWatcher, assert_stable_state, descendants, running, wait_until


def _cmdlines(pid: int) -> list[str]:
    out = []
    for child in descendants(pid):
        try:
            out.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return out


def _pulumi_up_running(pid: int) -> bool:
    return any(" up " in f" {line} " and "pulumi" in line.split(" ")[0] for line in _cmdlines(pid))


def _pulumi_ups(pid: int) -> set[int]:
    """The pids of ``pulumi up`` processes under ``pid``."""
    found = set()
    for child in descendants(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"pulumi") and b"up" in argv:
            found.add(child)
    return found


def test_an_up_kept_waiting_by_pulumi_s_lock_watches_the_lock_and_starts_as_it_is_let_go(lab_stack: LabStack) -> None:
    """Another update holds Pulumi's lock for 6 s. ``canary up`` is refused once, then watches the file
    backend's lock: no ``pulumi up`` runs again while the lock is held (each try is a CLI process, started
    every 2 s before), and the next starts within a second of the lock being let go."""
    lock_dir = lab_stack.layout.backend_dir / ".pulumi" / "locks" / "organization" / "canary" / lab_stack.name
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_dir / f"{uuid.uuid4()}.json"
    lock.write_text(json.dumps({"pid": 4242, "username": "alice", "hostname": "ci-runner-7", "timestamp": "2026-12-02T03:00:00Z"}))
    try:
        with running(lab_stack.start("up", lab_stack.name, "--lock-wait", "120")) as process:
            seen: set[int] = set()

            def refused_once() -> bool:
                seen.update(_pulumi_ups(process.pid))
                return bool(seen) and not _pulumi_ups(process.pid)

            wait_until(refused_once, "a first pulumi up, refused for the lock", 120, process, every=0.02)
            end = time.monotonic() + 6
            while time.monotonic() < end:
                seen.update(_pulumi_ups(process.pid))
                time.sleep(0.02)
            assert len(seen) == 1, f"{len(seen)} pulumi up runs while the lock was held"
            lock.unlink()
            let_go = time.monotonic()
            wait_until(lambda: bool(_pulumi_ups(process.pid) - seen), "the next pulumi up", 30, process, every=0.02)
            started = time.monotonic() - let_go
            out, err = process.communicate(timeout=300)
    finally:
        lock.unlink(missing_ok=True)
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    assert "waiting for Pulumi's lock" in out + err, out[-3000:] + err[-3000:]
    assert started < 1.0, f"the next up started {started:.2f} s after the lock was let go"
    assert_stable_state(lab_stack, "demo:v1")


def test_ctrl_c_during_an_up_rolls_back_and_ends_aborted(lab_stack: LabStack) -> None:
    """A terminal's Ctrl-C reaches canary's whole process group while Pulumi applies a step: the CLI runs in
    a session of its own, so the step's update is not torn; canary rolls back and ends Aborted (12.6)."""
    process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2")
    with running(process):
        def in_a_step_up() -> bool:
            state = lab_stack.state()
            return state is not None and state.shifting_to is not None and _pulumi_up_running(process.pid)

        wait_until(in_a_step_up, "a step's pulumi up running", 120, process, every=0.02)
        os.killpg(process.pid, signal.SIGINT)  # what the terminal does: the whole foreground group
        out, err = process.communicate(timeout=300)
    assert process.returncode == 1, out[-3000:] + err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    state = lab_stack.state()
    assert state is not None and state.phase.value == "Aborted" and "SIGINT" in state.reason, state
    assert_stable_state(lab_stack, "demo:v1")
    assert not lab_stack.pulumi_locks()


def test_sigterm_rolls_back_releases_every_lock_and_a_second_release_is_refused_meanwhile(lab_stack: LabStack) -> None:
    """What a CI runner's cancel sends: SIGTERM to canary alone. While it runs, a second release is refused
    naming it; after the signal, traffic is back on stable, it ends Aborted, and neither the app's Lease nor
    Pulumi's lock is left held."""
    with RouteWatcher(lab_stack) as watcher, running(lab_stack.start("release", lab_stack.name, "--image", "demo:v2")) as process:
        wait_until(lambda: 10 in watcher.canary_weights, lambda: f"the route at canary weight 10 (seen {watcher.seen})", 180, process)
        second = lab_stack.cli("release", lab_stack.name, "--image", "demo:v2-slow")
        assert second.returncode == 3, second.stdout + second.stderr
        assert f"pid {process.pid}" in second.stderr, second.stderr
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=300)
    assert process.returncode == 1, out[-3000:] + err[-3000:]
    assert "SIGTERM: aborting (a release in progress rolls back to stable)" in err, err[-3000:]
    state = lab_stack.state()
    assert state is not None and state.phase.value == "Aborted" and "SIGTERM" in state.reason, state
    assert_stable_state(lab_stack, "demo:v1")
    lease = lab_stack.kube.get("coordination.k8s.io/v1", "Lease", naming.lease(lab_stack.app), lab_stack.namespace)
    assert lease is None or not (lease.get("spec") or {}).get("holderIdentity"), lease
    assert not lab_stack.pulumi_locks()


def _minute_long_load_test(config: dict[str, Any]) -> None:
    hook = config["canary:analysis"]["webhooks"][0]
    hook["cmd"] = hook["cmd"].replace("-z 4s", "-z 1m").replace("-q 25 -c 8", "-q 10 -c 2")
    hook["timeout"] = "90s"


@pytest.mark.parametrize("lab_stack", [_minute_long_load_test], indirect=True)
def test_abort_stops_a_minute_long_load_test_within_a_second(lab_stack: LabStack) -> None:
    """The prod stack's rollout hook is ``hey -z 1m``: an abort must not wait for it (12.6)."""
    process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2-faulty")
    with running(process):
        def hey_running() -> list[int]:
            state = lab_stack.state()
            if state is None or state.weight < 10:
                return []
            return [pid for pid in descendants(process.pid) if Path(f"/proc/{pid}/comm").exists() and Path(f"/proc/{pid}/comm").read_text().strip() == "hey"]

        hey = wait_until(hey_running, "the load test running at weight 10", 180, process)
        time.sleep(2)  # well inside its minute
        asked = time.monotonic()
        api.abort(lab_stack.name, project_dir=lab_stack.project, env=lab_stack.env, by="test")
        started = time.monotonic()  # the request is in the cluster: from here the release has a second
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() and "hey" in Path(f"/proc/{pid}/comm").read_text() for pid in hey),
                   "the load test killed", 5, every=0.01)
        killed_after = time.monotonic() - started
        out, err = process.communicate(timeout=300)
    assert killed_after <= 1.0, f"the load test ran {killed_after:.2f}s after the abort request was stored"
    assert started - asked < 5, f"canary abort took {started - asked:.2f}s to store its request"
    assert process.returncode == 1, out[-3000:] + err[-3000:]
    state = lab_stack.state()
    assert state is not None and state.phase.value == "Aborted", state
    assert_stable_state(lab_stack, "demo:v1")
    cancelled = [r for r in lab_stack.of("webhook") if r.hook_type == "rollout" and not r.ok]
    # (it said "abort" only as the stack's name, in the command's URL, which a result no longer quotes)
    assert cancelled and "was cancelled with the release and was killed" in cancelled[-1].detail, cancelled


def test_a_release_judged_on_the_prometheus_operator_s_labels(lab: Layout, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Pods labelled ``pod`` in Prometheus (kube-prometheus-stack), a PodMonitor declared, a custom query
    written with ``{{ podLabel }}``: the release is judged and promoted, and ``canary check`` names the
    label the series carry when the stack says another (12.13)."""
    name = stack_name(request)
    kube = Kube(lab.kubeconfig)
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "annotations": {"lab.canary/prometheus-labels": "operator"}}})

    def operator(config: dict[str, Any]) -> None:
        config["canary:app"]["createNamespace"] = False
        config["canary:prometheus"].update(podLabel="pod", podMonitor={"interval": "5s"})
        template = config["canary:metricTemplates"]["error-rate"]
        template["query"] = template["query"].replace("kubernetes_pod_name=~", "{{ podLabel }}=~")

    project = make_project(lab, tmp_path, name, operator)
    env = {**os.environ, **lab.pulumi_env(), "CANARY_LAB_DIR": str(lab.dir)}
    handle = LabStack(lab, project, name, name, env, kube)
    try:
        assert api.up(name, project_dir=project, env=env).exit_code == 0
        done = handle.release("demo:v2")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert_stable_state(handle, "demo:v2")
        passed = [c for t in handle.of("tick") for c in t.checks if c.verdict.value == "pass"]
        assert {c.metric for c in passed} == {"error-rate", "request-duration"}
        assert all('pod=~"web-canary' in c.query for c in passed), [c.query for c in passed]
        monitor = kube.get("monitoring.coreos.com/v1", "PodMonitor", "web", name)
        assert monitor is not None and monitor["spec"]["podMetricsEndpoints"][0]["interval"] == "5s", monitor
        assert monitor["spec"]["selector"]["matchLabels"] == {naming.APP_LABEL: "web"}  # both tracks' pods

        # the stack says Flagger's label; the series say otherwise: check names the one they carry
        path = project / "stacks" / f"Pulumi.{name}.yaml"
        stackfile.set_value(path, ("canary:prometheus", "podLabel"), "kubernetes_pod_name")
        checked = handle.cli("check", name)
        assert "have no kubernetes_pod_name label; they carry pod: set prometheus.podLabel to it" in checked.stderr, checked.stderr
    finally:
        Stack(project, name, env).destroy()
        kube.delete("v1", "Namespace", name)


@pytest.mark.long
def test_a_release_on_a_backend_chosen_with_pulumi_login_and_an_org_qualified_stack(lab: Layout, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """No PULUMI_BACKEND_URL: the backend is the one ``pulumi login`` chose, and the stack is named
    organization/canary/<name>. Targeted updates hit (URNs from the short name), and another update's
    lock is exit 3, never a rollback (12.14)."""
    name = stack_name(request)
    qualified = f"organization/canary/{name}"
    project = make_project(lab, tmp_path, name, init=False)
    # as a user's shell has it: no PULUMI_BACKEND_URL, no lab (CANARY_LAB_DIR would choose the lab's backend)
    env = {**os.environ, **lab.pulumi_env(), "PULUMI_HOME": str(tmp_path / "home")}
    del env["PULUMI_BACKEND_URL"]
    env.pop("CANARY_LAB_DIR", None)
    backend = tmp_path / "backend"
    backend.mkdir()
    for argv in (["pulumi", "login", f"file://{backend}"], ["pulumi", "stack", "init", qualified]):
        done = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    handle = LabStack(lab, project, qualified, name, env, Kube(lab.kubeconfig))
    try:
        first = handle.cli("up", qualified)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert (backend / ".pulumi" / "stacks" / "canary" / f"{name}.json").exists()  # the login's backend, not the lab's
        with RouteWatcher(handle) as watcher:
            done = handle.release("demo:v2")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert [w for w in watcher.canary_weights if w] == [10, 20, 30, 40, 50], watcher.seen
        assert_stable_state(handle, "demo:v2")

        # another update holds the stack (a lock as the CLI writes it): busy, nothing rolled back
        lock_dir = backend / ".pulumi" / "locks" / "organization" / "canary" / name
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_dir / f"{uuid.uuid4()}.json"
        lock.write_text(json.dumps({"pid": 4242, "username": "alice", "hostname": "ci-runner-7", "timestamp": "2026-12-02T03:00:00Z"}))
        busy = handle.release("demo:v3", "--lock-wait", "3")
        assert busy.returncode == 3, busy.stdout[-3000:] + busy.stderr[-3000:]
        assert "locked" in busy.stderr and "alice" in busy.stderr, busy.stderr
        assert_stable_state(handle, "demo:v2")
        assert "demo:v3" not in (project / "stacks" / f"Pulumi.{name}.yaml").read_text()  # the refusal left the stack file as it was
        lock.unlink()
    finally:
        Stack(project, qualified, env).destroy()


@pytest.mark.long
def test_the_release_reads_the_cluster_the_stack_deploys_to_not_kubeconfig_s_current_context(lab: Layout, tmp_path: Path,
                                                                                             request: pytest.FixtureRequest) -> None:
    """KUBECONFIG's current context is another (unreachable) cluster; the stack sets kubernetes:context to
    the lab's. Deploy, verification and the release's state all use the stack's cluster (12.15)."""
    name = stack_name(request)
    kubeconfig = stackfile.load(lab.kubeconfig.read_text())
    lab_context = kubeconfig["current-context"]
    kubeconfig["clusters"].append({"name": "elsewhere", "cluster": {"server": "https://127.0.0.1:9"}})
    kubeconfig["contexts"].append({"name": "elsewhere", "context": {"cluster": "elsewhere", "user": kubeconfig["contexts"][0]["context"]["user"]}})
    kubeconfig["current-context"] = "elsewhere"
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(kubeconfig))  # JSON is YAML: any kubeconfig reader takes it

    def context(config: dict[str, Any]) -> None:
        config["kubernetes:context"] = lab_context

    project = make_project(lab, tmp_path, name, context)
    env = {**os.environ, **lab.pulumi_env(), "KUBECONFIG": str(path)}
    env.pop("CANARY_LAB_DIR", None)  # the lab's env would bring the lab's kubeconfig back
    handle = LabStack(lab, project, name, name, env, Kube(lab.kubeconfig))
    try:
        first = handle.cli("up", name)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        done = handle.release("demo:v2")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "is live in the route and accepted by the gateway" in done.stdout
        assert_stable_state(handle, "demo:v2")
        status = handle.cli("status", name)
        assert status.returncode == 0 and "Succeeded" in status.stdout, status.stdout + status.stderr
    finally:
        Stack(project, name, env).destroy()


def test_a_project_dir_given_relative_to_where_canary_runs(lab_stack: LabStack) -> None:
    """``--project-dir infra`` from the repository's root, as a CI job writes it: the update's config
    file is found although the Pulumi CLI runs in the project directory, and nothing lands in a
    path doubled under the project."""
    relative = lab_stack.project.name
    base = [sys.executable, "-m", "canary"]
    up = subprocess.run([*base, "up", lab_stack.name, "--project-dir", relative], capture_output=True, text=True,
                        timeout=300, env=lab_stack.env, cwd=lab_stack.project.parent)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "no workload change" in up.stdout, up.stdout
    status = subprocess.run([*base, "status", lab_stack.name, "--project-dir", relative], capture_output=True, text=True,
                            timeout=120, env=lab_stack.env, cwd=lab_stack.project.parent)
    assert "no release recorded" in status.stderr, status.stdout + status.stderr  # read from the cluster, found
    assert not (lab_stack.project / relative).exists(), "a path relative to the caller was resolved inside the project"


def test_a_typo_in_the_stack_file_mid_release_does_not_keep_a_person_from_status_and_abort(lab_stack: LabStack) -> None:
    # every command validated the stack file first: a typo made during the incident (or a rule newer than the
    # release, after an upgrade) made `canary abort` and `canary status` exit 2 while the canary kept its traffic
    ls = lab_stack
    path = ls.project / "stacks" / f"Pulumi.{ls.name}.yaml"
    working = path.read_text()
    process = ls.start("release", ls.name, "--image", "demo:v2")
    with running(process):
        wait_until(lambda: (s := ls.state()) is not None and s.weight >= 10, "the canary at weight 10", 180, process)
        stackfile.set_value(path, ("canary:analysis", "stepWieght"), 10)
        status = ls.cli("status", ls.name)
        assert status.returncode == 0, status.stdout[-2000:] + status.stderr[-2000:]
        assert "warning: the stack config is refused" in status.stderr and "analysis.stepWieght" in status.stderr, status.stderr
        abort = ls.cli("abort", ls.name)
        assert abort.returncode == 0, abort.stdout[-2000:] + abort.stderr[-2000:]
        assert "abort requested for release" in abort.stdout and "warning: the stack config is refused" in abort.stderr
        out, err = process.communicate(timeout=300)
    assert process.returncode == 1, out[-3000:] + err[-3000:]
    release = ls.cli("release", ls.name, "--image", "demo:v2")  # what changes the cluster still refuses it
    assert release.returncode == 2 and "analysis.stepWieght" in release.stderr, release.stderr[-2000:]
    path.write_text(working)  # the test's own readers below validate the stack file as every command did
    state = ls.state()
    assert state is not None and state.phase.value == "Aborted", state
    assert_stable_state(ls, "demo:v1")
