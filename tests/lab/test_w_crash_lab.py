"""The orchestrator killed (SIGKILL) at each point of a release, then `canary resume`.

Each test starts `canary release` in a session of its own and kills the whole
process group — the orchestrator and any Pulumi CLI, language host and provider
it started — as a node or container dying would. At the moment of the kill the
journal and `canary status` must already account for the traffic the cluster's
route carries; `canary resume` must then end the release on a verified state:
promoted, or rolled back to stable.

The intervals-wait case lives in test_release_lab.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from canary.lab import procs
from tests.lab.conftest import LabStack
from tests.lab.test_release_lab import RouteWatcher, _pulumi_locks, assert_stable_state, canary_cli, journal, release

Records = list[dict[str, Any]]


def _start(lab_stack: LabStack, image: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "canary", "release", lab_stack.name, "--image", image, "--lab", "--project-dir", str(lab_stack.project)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=lab_stack.env, start_new_session=True)


def _kill_when(lab_stack: LabStack, process: subprocess.Popen[str], ready: Callable[[Records], bool], timeout: float = 180) -> Records:
    """SIGKILL the release's whole process group as soon as ``ready(journal records)`` holds."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                out, err = process.communicate()
                raise AssertionError(f"the release ended (exit {process.returncode}) before the kill point:\n{out[-2000:]}\n{err[-2000:]}")
            records = journal(lab_stack).records()
            if ready(records):
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate(timeout=30)
                return records
            time.sleep(0.01)
        raise AssertionError(f"the kill point was not reached within {timeout:.0f}s")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate(timeout=30)


def _message(records: Records, kind: str, text: str) -> bool:
    return any(r["type"] == kind and text in r.get("message", "") for r in records)


def _up_running(lab_stack: LabStack) -> bool:
    return bool(_pulumi_locks(lab_stack))


def _assert_record_covers_traffic(lab_stack: LabStack) -> dict[str, Any]:
    """What the cluster's route sends to the canary is what the journal and `status` say it may be."""
    state = journal(lab_stack).load_state()
    assert state is not None and state["phase"] not in ("Succeeded", "Failed", "Aborted"), state
    route = lab_stack.reader.route(lab_stack.spec())
    canary = route.weights[1] if route is not None else 0
    allowed = {state["weight"], state["shifting_to"]}
    if state["phase"] == "RollingBack" or state["phase"] == "Initializing":
        allowed.add(0)
    if state["phase"] in ("Promoting", "Finalising"):
        allowed.add(0)  # the stable Deployment already runs the new version
    assert canary in allowed, f"the route sends {canary}% to the canary but the journal says {state}"
    status = canary_cli(lab_stack, "status", lab_stack.name)
    assert status.returncode == 0, status.stderr
    assert state["phase"] in status.stdout and "(running)" not in status.stdout, status.stdout
    assert f"at weight {state['weight']}" in status.stdout
    if state["shifting_to"] is not None:
        assert f"shifting to {state['shifting_to']}" in status.stdout
    busy = release(lab_stack, "demo:v2-slow")
    assert busy.returncode == 3 and "canary resume" in busy.stderr, busy.stderr  # nothing starts over an unfinished release
    return state


def _resume(lab_stack: LabStack, expect: int) -> subprocess.CompletedProcess[str]:
    resumed = canary_cli(lab_stack, "resume", lab_stack.name, "--lab")
    assert resumed.returncode == expect, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert not _pulumi_locks(lab_stack) and journal(lab_stack).holder() is None
    return resumed


def test_sigkill_after_the_stable_snapshot_then_resume_deploys_and_promotes(lab_stack: LabStack) -> None:
    with RouteWatcher(lab_stack) as watcher:
        process = _start(lab_stack, "demo:v2")
        records = _kill_when(lab_stack, process, lambda rs: _message(rs, "state", "release started"))
        assert any(r["type"] == "snapshot" for r in records)
        state = _assert_record_covers_traffic(lab_stack)
        assert state["phase"] == "Initializing" and not state["canary_deployed"]
        resumed = _resume(lab_stack, 0)
    assert "resuming release in phase Initializing" in resumed.stdout
    assert [w for w in watcher.canary_weights if w] == [10, 20, 30, 40, 50], watcher.seen
    assert_stable_state(lab_stack, "demo:v2")


def test_sigkill_during_a_step_up_leaves_a_stale_pulumi_lock_that_resume_clears(lab_stack: LabStack) -> None:
    """Killed inside the first shift `up` it catches (from 10 to 20, or a later one): the moment
    Pulumi's lock is there while the journal says a shift is in progress."""

    def in_the_up(records: Records) -> bool:
        if not _up_running(lab_stack):
            return False
        state = journal(lab_stack).load_state() or {}
        return state.get("phase") == "Progressing" and (state.get("shifting_to") or 0) >= 20

    with RouteWatcher(lab_stack) as watcher:
        process = _start(lab_stack, "demo:v2")
        _kill_when(lab_stack, process, in_the_up)
        assert _pulumi_locks(lab_stack), "the killed `up` left no lock: the kill missed the update"
        state = _assert_record_covers_traffic(lab_stack)
        judged = state["weight"]
        assert state["phase"] == "Progressing" and state["shifting_to"] == judged + 10
        resumed = _resume(lab_stack, 0)
    assert "cleared Pulumi's stale lock" in resumed.stdout, resumed.stdout[-3000:]
    assert f"resuming release in phase Progressing at weight {judged}" in resumed.stdout
    weights = [w for w in watcher.canary_weights if w]
    climb = list(range(judged, 60, 10))  # the judged weight re-applied (if the shift had landed), then every step after it
    assert weights[0] == 10 and weights[-len(climb):] == climb, watcher.seen
    assert_stable_state(lab_stack, "demo:v2")


def test_sigkill_during_an_analysis_tick_then_resume_judges_the_weight_again(lab_stack: LabStack) -> None:
    """Prometheus is frozen (SIGSTOP) so that the tick at weight 20 hangs in its queries; the kill lands there."""
    prometheus = procs.recorded(lab_stack.layout.dir)["prometheus"]

    def in_the_tick(records: Records) -> bool:
        return any(r["type"] == "webhook" and r.get("hook_type") == "rollout" and r.get("weight") == 20 for r in records)

    frozen = False

    def freeze_then_wait(records: Records) -> bool:
        nonlocal frozen
        state = journal(lab_stack).load_state() or {}
        if not frozen and state.get("weight") == 20 and state.get("shifting_to") is None:
            os.kill(prometheus, signal.SIGSTOP)
            frozen = True
        if frozen and in_the_tick(records):
            time.sleep(0.5)  # the queries are waiting for Prometheus
            return True
        return False

    try:
        with RouteWatcher(lab_stack) as watcher:
            process = _start(lab_stack, "demo:v2")
            _kill_when(lab_stack, process, freeze_then_wait)
            os.kill(prometheus, signal.SIGCONT)
            frozen = False
            assert not [r for r in journal(lab_stack).records() if r["type"] == "tick" and r["weight"] == 20], "the tick at 20 finished before the kill"
            state = _assert_record_covers_traffic(lab_stack)
            assert state["phase"] == "Progressing" and state["weight"] == 20
            resumed = _resume(lab_stack, 0)
    finally:
        if frozen:
            os.kill(prometheus, signal.SIGCONT)
    assert "resuming release in phase Progressing at weight 20" in resumed.stdout
    ticks = [r for r in journal(lab_stack).records() if r["type"] == "tick"]
    assert [t["weight"] for t in ticks if t["outcome"] == "advance"][-4:] == [20, 30, 40, 50], ticks
    assert [w for w in watcher.canary_weights if w] == [10, 20, 30, 40, 50], watcher.seen
    assert_stable_state(lab_stack, "demo:v2")


def test_sigkill_during_promotion_then_resume_finishes_it(lab_stack: LabStack) -> None:
    def in_the_promotion(records: Records) -> bool:
        return _message(records, "decision", "promoting") and _up_running(lab_stack)

    process = _start(lab_stack, "demo:v2")
    _kill_when(lab_stack, process, in_the_promotion, timeout=240)
    state = _assert_record_covers_traffic(lab_stack)
    assert state["phase"] == "Promoting" and state["weight"] == 50
    resumed = _resume(lab_stack, 0)
    assert "resuming release in phase Promoting" in resumed.stdout
    assert_stable_state(lab_stack, "demo:v2")
    assert (journal(lab_stack).load_state() or {})["phase"] == "Succeeded"


def test_sigkill_during_rollback_then_resume_completes_it(lab_stack: LabStack) -> None:
    def in_the_rollback(records: Records) -> bool:
        return _message(records, "decision", "rollback: traffic 100/0") and _up_running(lab_stack)

    process = _start(lab_stack, "demo:v2-faulty")
    _kill_when(lab_stack, process, in_the_rollback)
    state = _assert_record_covers_traffic(lab_stack)
    assert state["phase"] == "RollingBack" and state["rollback_step"] == 0 and "error-rate" in state["reason"]
    resumed = _resume(lab_stack, 1)
    assert "resuming release in phase RollingBack" in resumed.stdout
    assert_stable_state(lab_stack, "demo:v1")
    final = journal(lab_stack).load_state() or {}
    assert final["phase"] == "Failed" and "error-rate" in final["reason"]


def test_resume_repairs_a_route_a_killed_up_changed_without_its_checkpoint(lab_stack: LabStack) -> None:
    """A kill can land after the provider changed the route but before Pulumi wrote its checkpoint:
    re-applying the last judged weight is then a no-op to Pulumi unless it reads the route back.
    Made deterministic here: killed in the interval at weight 10, the route is then moved to
    80/20 behind Pulumi's back, as that update would have left it."""
    from canary import routing

    spec = lab_stack.spec()

    def judged_10(records: Records) -> bool:
        return _message(records, "state", "weight 10 is live")

    with RouteWatcher(lab_stack) as watcher:
        process = _start(lab_stack, "demo:v2")
        _kill_when(lab_stack, process, judged_10)
        route = lab_stack.kube.get(routing.API_VERSION, routing.KIND, spec.app.name, spec.app.namespace)
        assert route is not None
        for backend in route["spec"]["rules"][0]["backendRefs"]:
            backend["weight"] = 20 if backend["name"].endswith("-canary") else 80
        # as Pulumi's provider writes it: a server-side apply of the whole spec under its own field manager
        pulumi_manager = next(m["manager"] for m in route["metadata"]["managedFields"] if m["manager"].startswith("pulumi-kubernetes"))
        lab_stack.kube.apply({"apiVersion": routing.API_VERSION, "kind": routing.KIND,
                              "metadata": {"name": spec.app.name, "namespace": spec.app.namespace, "labels": route["metadata"].get("labels", {})},
                              "spec": route["spec"]}, field_manager=pulumi_manager)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (lab_stack.reader.route(spec) or routing.RouteState(None, None, 0, False, "")).weights != (80, 20):
            time.sleep(0.05)
        resumed = _resume(lab_stack, 0)
    assert "resuming release in phase Progressing at weight 10" in resumed.stdout
    ups = [r for r in journal(lab_stack).records() if r["type"] == "up"]
    first_after_resume = next(u for u in ups if u.get("refreshed"))
    assert first_after_resume["config"] == {"canaryWeight": 10}
    weights = [w for w in watcher.canary_weights if w]
    assert weights == [10, 20, 10, 20, 30, 40, 50], watcher.seen  # 10 was put back before any further step
    assert_stable_state(lab_stack, "demo:v2")
