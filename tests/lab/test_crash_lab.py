"""The orchestrator killed (SIGKILL) at each point of a release, then `canary resume`.

Each test starts `canary release` in a session of its own and kills the whole process group — the
orchestrator and any Pulumi CLI, language host and provider it started — as a node or a container
dying would. At the moment of the kill the release's state in the cluster and `canary status` must
already account for the traffic the route carries; `canary resume` must then end the release on a
verified state: promoted, or rolled back to stable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from canary.adapters import stackfile
from canary.core.records import ReleaseState
from canary.core.routing import RouteState
from canary.lab import procs
from canary.state.cache import Cache, state_root
from canary.state.store import ReleaseStore
from tests.lab.helpers import LabStack, RouteWatcher, assert_stable_state, kill_group

Check = Callable[[ReleaseState | None, list[Any]], bool]


def _store(lab_stack: LabStack) -> ReleaseStore:
    return ReleaseStore(lab_stack.kube, lab_stack.namespace, "web", lab_stack.name, Cache(state_root(lab_stack.project), lab_stack.name, "watcher"))


def _kill_when(lab_stack: LabStack, process: subprocess.Popen[str], ready: Check, timeout: float = 240) -> ReleaseState:
    """SIGKILL the release's whole process group as soon as ``ready(state, records)`` holds."""
    store = _store(lab_stack)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                out, err = process.communicate()
                raise AssertionError(f"the release ended (exit {process.returncode}) before the kill point:\n{out[-2000:]}\n{err[-2000:]}")
            state = store.load()
            if ready(state, store.records(state.release) if state is not None else []):
                kill_group(process)
                killed = store.load()
                assert killed is not None
                return killed
            time.sleep(0.02)
        raise AssertionError(f"the kill point was not reached within {timeout:.0f}s")
    finally:
        if process.poll() is None:
            kill_group(process)


def _said(records: list[Any], kind: str, text: str) -> bool:
    return any(r.type == kind and text in getattr(r, "message", "") for r in records)


def _assert_record_covers_traffic(lab_stack: LabStack, state: ReleaseState) -> None:
    """What the cluster's route sends to the canary is what the state and `status` say it may be."""
    assert state.phase.value not in ("Succeeded", "Failed", "Aborted"), state
    route: RouteState | None = lab_stack.route()
    canary = route.weights[1] if route is not None else 0
    allowed = {state.weight}
    if state.shifting_to is not None:
        allowed.add(_weight_of_step(state.shifting_to))
    if state.phase.value in ("RollingBack", "Initializing", "Promoting", "Finalising"):
        allowed.add(0)  # traffic on stable, or (promotion) stable already runs the new version
    assert canary in allowed, f"the route sends {canary}% to the canary but the state says {state}"
    status = lab_stack.cli("status", lab_stack.name)
    assert status.returncode == 0, status.stderr
    assert state.phase.value in status.stdout and "(running)" not in status.stdout, status.stdout
    assert f"at weight {state.weight}" in status.stdout
    busy = lab_stack.release("demo:v2-slow")
    assert busy.returncode == 3 and "canary resume" in busy.stderr, busy.stderr  # nothing starts over an unfinished release


def _weight_of_step(step: int) -> int:
    return [10, 20, 30, 40, 50][step - 1]


def _resume(lab_stack: LabStack, expect: int) -> subprocess.CompletedProcess[str]:
    resumed = lab_stack.cli("resume", lab_stack.name)
    assert resumed.returncode == expect, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert not lab_stack.pulumi_locks()
    return resumed


def _climbed(watcher: RouteWatcher) -> list[int]:
    return [w for w in watcher.canary_weights if w]


@pytest.mark.long
def test_killed_after_the_stable_snapshot_resume_deploys_and_promotes(lab_stack: LabStack) -> None:
    with RouteWatcher(lab_stack) as watcher:
        process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2")
        state = _kill_when(lab_stack, process, lambda s, rs: _said(rs, "state", "release started"))
        assert any(r.type == "snapshot" for r in _store(lab_stack).records(state.release))
        _assert_record_covers_traffic(lab_stack, state)
        assert state.phase.value == "Initializing" and not state.canary_deployed
        resumed = _resume(lab_stack, 0)
    assert "resuming release in phase Initializing" in resumed.stdout
    assert _climbed(watcher) == [10, 20, 30, 40, 50], watcher.seen
    assert_stable_state(lab_stack, "demo:v2")


@pytest.mark.long
def test_killed_once_the_canary_is_deployed_before_the_first_shift_resume_takes_the_first_step(lab_stack: LabStack) -> None:
    """Resuming before any shift used to judge weight 0: no data, three failures, a healthy release Failed (12.1)."""
    with RouteWatcher(lab_stack) as watcher:
        process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2")
        state = _kill_when(lab_stack, process, lambda s, rs: _said(rs, "state", "analysis starts"))
        assert state.phase.value == "Progressing" and state.step == 0 and state.canary_deployed
        _assert_record_covers_traffic(lab_stack, state)
        resumed = _resume(lab_stack, 0)
    assert "resuming release in phase Progressing at weight 0" in resumed.stdout
    ticks = [r for r in _store(lab_stack).records(state.release) if r.type == "tick"]
    assert ticks and all(t.weight > 0 for t in ticks), [(t.weight, t.reason) for t in ticks]
    assert _climbed(watcher) == [10, 20, 30, 40, 50], watcher.seen
    assert_stable_state(lab_stack, "demo:v2")


@pytest.mark.long
@pytest.mark.parametrize(("step", "label"), [(1, "first"), (2, "second")])
def test_killed_inside_a_shift_s_up_resume_clears_the_stale_lock_and_finishes(lab_stack: LabStack, step: int, label: str) -> None:
    """Killed while the `up` of a shift holds Pulumi's lock: the first shift (to 10) and a later one."""

    def in_the_up(state: ReleaseState | None, records: list[Any]) -> bool:
        return bool(lab_stack.pulumi_locks()) and state is not None and state.shifting_to == step

    with RouteWatcher(lab_stack) as watcher:
        process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2")
        state = _kill_when(lab_stack, process, in_the_up)
        assert lab_stack.pulumi_locks(), "the killed `up` left no lock: the kill missed the update"
        _assert_record_covers_traffic(lab_stack, state)
        judged = state.weight
        assert state.phase.value == "Progressing" and state.step == step - 1
        resumed = _resume(lab_stack, 0)
    assert "cleared Pulumi's stale lock" in resumed.stdout, resumed.stdout[-3000:]
    assert f"resuming release in phase Progressing at weight {judged}" in resumed.stdout
    climb = [w for w in (10, 20, 30, 40, 50) if w >= max(judged, 10)]  # the judged weight re-applied, then every step after it
    assert _climbed(watcher)[0] == 10 and _climbed(watcher)[-len(climb):] == climb, watcher.seen
    assert_stable_state(lab_stack, "demo:v2")


def test_killed_during_the_interval_wait_resume_rejudges_the_weight_and_finishes(lab_stack: LabStack) -> None:
    with RouteWatcher(lab_stack) as watcher:
        process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2")
        state = _kill_when(lab_stack, process, lambda s, rs: s is not None and s.weight == 20 and s.shifting_to is None and not lab_stack.pulumi_locks())
        route = lab_stack.route()
        assert route is not None and route.weights == (80, 20)  # the state and the cluster agree
        _assert_record_covers_traffic(lab_stack, state)
        resumed = _resume(lab_stack, 0)
    assert "resuming release in phase Progressing at weight 20" in resumed.stdout
    assert _climbed(watcher) == [10, 20, 30, 40, 50], watcher.seen
    assert_stable_state(lab_stack, "demo:v2")


def test_a_release_killed_then_its_stack_file_refused_is_resumed_from_its_snapshot(lab_stack: LabStack) -> None:
    # resume validated the stack file first: a typo made after the runner died (or a rule newer than the
    # release) kept the release, canary at weight 10, from being completed by anyone
    with RouteWatcher(lab_stack) as watcher:
        process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2")
        _kill_when(lab_stack, process, lambda s, rs: s is not None and s.weight == 10 and s.shifting_to is None and not lab_stack.pulumi_locks())
        path = lab_stack.project / "stacks" / f"Pulumi.{lab_stack.name}.yaml"
        working = path.read_text()
        stackfile.set_value(path, ("canary:analysis", "stepWieght"), 10)
        resumed = _resume(lab_stack, 0)
    assert _climbed(watcher) == [10, 20, 30, 40, 50], watcher.seen
    path.write_text(working)  # the test's own readers below validate the stack file as every command did
    assert_stable_state(lab_stack, "demo:v2")
    said = [getattr(r, "message", "") for r in lab_stack.records() if "the stack file is refused by this version" in getattr(r, "message", "")]
    assert said and "analysis.stepWieght" in said[0] and "goes on with its snapshot" in said[0], resumed.stdout[-2000:]


@pytest.mark.disruptive
def test_killed_inside_an_analysis_tick_resume_judges_the_weight_again(lab_stack: LabStack) -> None:
    """Prometheus is frozen (SIGSTOP) so that the tick at weight 20 hangs in its queries; the kill lands there."""
    prometheus = procs.recorded(lab_stack.layout.dir)["prometheus"]
    frozen = {"on": False}

    def freeze_then_wait(state: ReleaseState | None, records: list[Any]) -> bool:
        if not frozen["on"] and state is not None and state.weight == 20 and state.shifting_to is None:
            os.kill(prometheus, signal.SIGSTOP)
            frozen["on"] = True
        if frozen["on"] and any(r.type == "webhook" and r.hook_type == "rollout" and r.weight == 20 for r in records):
            time.sleep(0.5)  # the queries are waiting for Prometheus
            return True
        return False

    try:
        with RouteWatcher(lab_stack) as watcher:
            process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2")
            state = _kill_when(lab_stack, process, freeze_then_wait)
            os.kill(prometheus, signal.SIGCONT)
            frozen["on"] = False
            assert not [r for r in _store(lab_stack).records(state.release) if r.type == "tick" and r.weight == 20 and r.outcome.value == "advance"]
            _assert_record_covers_traffic(lab_stack, state)
            assert state.phase.value == "Progressing" and state.weight == 20
            resumed = _resume(lab_stack, 0)
    finally:
        if frozen["on"]:
            os.kill(prometheus, signal.SIGCONT)
    assert "resuming release in phase Progressing at weight 20" in resumed.stdout
    assert _climbed(watcher) == [10, 20, 30, 40, 50], watcher.seen
    assert_stable_state(lab_stack, "demo:v2")


@pytest.mark.long
def test_killed_inside_the_promotion_resume_finishes_it(lab_stack: LabStack) -> None:
    def in_the_promotion(state: ReleaseState | None, records: list[Any]) -> bool:
        return state is not None and state.phase.value == "Promoting" and bool(lab_stack.pulumi_locks())

    process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2")
    state = _kill_when(lab_stack, process, in_the_promotion, timeout=300)
    _assert_record_covers_traffic(lab_stack, state)
    assert state.phase.value == "Promoting"
    resumed = _resume(lab_stack, 0)
    assert "resuming release in phase Promoting" in resumed.stdout
    assert_stable_state(lab_stack, "demo:v2")
    final = lab_stack.state()
    assert final is not None and final.phase.value == "Succeeded"


@pytest.mark.long
def test_killed_inside_the_rollback_resume_completes_it(lab_stack: LabStack) -> None:
    def in_the_rollback(state: ReleaseState | None, records: list[Any]) -> bool:
        return _said(records, "decision", "rollback: traffic to stable first") and bool(lab_stack.pulumi_locks())

    process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2-faulty")
    state = _kill_when(lab_stack, process, in_the_rollback)
    _assert_record_covers_traffic(lab_stack, state)
    assert state.phase.value == "RollingBack" and state.rollback_step <= 1 and "error-rate" in state.reason
    resumed = _resume(lab_stack, 1)
    assert "resuming release in phase RollingBack" in resumed.stdout
    assert_stable_state(lab_stack, "demo:v1")
    final = lab_stack.state()
    assert final is not None and final.phase.value == "Failed" and "error-rate" in final.reason


def test_resume_repairs_a_route_a_killed_up_changed_without_its_checkpoint(lab_stack: LabStack) -> None:
    """A kill can land after the provider changed the route but before Pulumi wrote its checkpoint:
    re-applying the judged step is then a no-op to Pulumi unless it reads the route back. Made
    deterministic here: killed in the interval at weight 10, the route is then moved to 80/20 behind
    Pulumi's back, as that update would have left it."""
    from canary.core import routing
    from tests.lab.helpers import wait_until

    with RouteWatcher(lab_stack) as watcher:
        process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2")
        _kill_when(lab_stack, process, lambda s, rs: _said(rs, "state", "weight 10 is live"))
        route = lab_stack.kube.get(routing.API_VERSION, routing.KIND, "web", lab_stack.namespace)
        assert route is not None
        for backend in route["spec"]["rules"][-1]["backendRefs"]:
            backend["weight"] = 20 if backend["name"].endswith("-canary") else 80
        # as Pulumi's provider writes it: a server-side apply of the whole spec under its own field manager
        manager = next(m["manager"] for m in route["metadata"]["managedFields"] if m["manager"].startswith("pulumi-kubernetes"))
        lab_stack.kube.apply({"apiVersion": routing.API_VERSION, "kind": routing.KIND,
                              "metadata": {"name": "web", "namespace": lab_stack.namespace, "labels": route["metadata"].get("labels", {})},
                              "spec": route["spec"]}, field_manager=manager)
        wait_until(lambda: (r := lab_stack.route()) is not None and r.weights == (80, 20), "the route moved to 80/20", 10)
        resumed = _resume(lab_stack, 0)
    assert "resuming release in phase Progressing at weight 10" in resumed.stdout
    ups = [r for r in lab_stack.records() if r.type == "up"]
    first_after_resume = next(u for u in ups if u.refreshed)
    assert first_after_resume.pinned["route"]["weight"] == 10
    assert _climbed(watcher)[:3] == [10, 20, 10] and _climbed(watcher)[-4:] == [20, 30, 40, 50], watcher.seen  # 10 put back first
    assert_stable_state(lab_stack, "demo:v2")
