"""Releases end to end on the lab: real Pulumi, API server, Traefik, Prometheus and hey load tests.

Each test releases on a stack of its own, through the CLI as a user would, and
watches the HTTPRoute in the cluster while it runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from canary.journal import Journal, state_root
from tests.lab.conftest import LabStack, running, wait_until


class RouteWatcher:
    """Records every distinct (stable, canary) weight pair the cluster's route shows."""

    def __init__(self, lab_stack: LabStack) -> None:
        self.lab_stack = lab_stack
        self.spec = lab_stack.spec()
        self.seen: list[tuple[int | None, int | None]] = []
        #: the stable Deployment's image when each entry of ``seen`` was observed
        self.stable_images: list[str | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                route = self.lab_stack.reader.route(self.spec)
            except Exception:  # noqa: BLE001 - keep watching
                route = None
            if route is not None and (not self.seen or self.seen[-1] != route.weights):
                self.seen.append(route.weights)
                try:
                    self.stable_images.append(self.lab_stack.reader.deployment(self.spec, "stable")["image"])
                except Exception:  # noqa: BLE001 - keep watching
                    self.stable_images.append(None)
            time.sleep(0.05)

    def __enter__(self) -> RouteWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def canary_weights(self) -> list[int]:
        return [c for _, c in self.seen if c is not None]


def canary_cli(lab_stack: LabStack, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canary", *args, "--project-dir", str(lab_stack.project)],
        capture_output=True, text=True, timeout=timeout, env=lab_stack.env,
    )


def release(lab_stack: LabStack, image: str) -> subprocess.CompletedProcess[str]:
    return canary_cli(lab_stack, "release", lab_stack.name, "--image", image, "--lab")


def journal(lab_stack: LabStack) -> Journal:
    return Journal(state_root(lab_stack.project), lab_stack.name)


def assert_stable_state(lab_stack: LabStack, image: str) -> None:
    spec = lab_stack.spec()
    route = lab_stack.reader.route(spec)
    assert route is not None and route.weights == (100, 0) and route.accepted, route
    stable = lab_stack.reader.deployment(spec, "stable")
    canary = lab_stack.reader.deployment(spec, "canary")
    assert stable["image"] == image and stable["ready"] == stable["replicas"] == 2, stable
    assert canary["pods"] == 0 and canary["replicas"] == 0, canary
    assert spec.canary_image is None and spec.canary_weight == 0 and spec.stable_image == image


def test_healthy_release_is_promoted_through_every_weight(lab_stack: LabStack) -> None:
    with RouteWatcher(lab_stack) as watcher:
        done = release(lab_stack, "demo:v2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [w for w in watcher.canary_weights if w] == [10, 20, 30, 40, 50], watcher.seen
    assert watcher.seen[-1] == (100, 0)
    assert watcher.stable_images[-1] == "demo:v2", list(zip(watcher.seen, watcher.stable_images))  # stable ran v2 before it took all traffic
    assert_stable_state(lab_stack, "demo:v2")
    assert "Succeeded" in done.stdout and "promoted demo:v2" in done.stdout
    records = journal(lab_stack).records()
    ticks = [r for r in records if r["type"] == "tick"]
    hooks = [r for r in records if r["type"] == "webhook" and r["hook_type"] == "rollout"]
    assert len(hooks) == len(ticks) and all(r["ok"] for r in hooks), hooks  # hey ran through the gateway before every tick
    assert all("hey -host" in r["detail"] for r in hooks)
    # Prometheus adds new targets to its scrapes at most every 5 s, so the first tick, one 5 s interval
    # after the canary's pods appeared, may find no samples of them yet: that tick (and only that one)
    # may fail for no data, and weight 10 is judged again. Every other tick passed on real data.
    judged = ticks[1:] if ticks[0]["outcome"] == "fail" else ticks
    if judged is not ticks:
        assert ticks[0]["weight"] == 10 and all(c["verdict"] == "no-data" for c in ticks[0]["checks"]), ticks[0]
    assert [t["outcome"] for t in judged] == ["advance"] * 5, [(t["weight"], t["outcome"], t["reason"]) for t in ticks]
    for tick in judged:  # the checks had real data from hey's traffic
        assert all(c["verdict"] == "pass" and c["value"] is not None for c in tick["checks"]), tick


def test_faulty_release_rolls_back_after_three_failed_checks(lab_stack: LabStack) -> None:
    with RouteWatcher(lab_stack) as watcher:
        done = release(lab_stack, "demo:v2-faulty")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert max(watcher.canary_weights) == 10 and watcher.seen[-1] == (100, 0), watcher.seen
    assert_stable_state(lab_stack, "demo:v1")
    ticks = [r for r in journal(lab_stack).records() if r["type"] == "tick"]
    assert [t["failed_in_row"] for t in ticks] == [1, 2, 3]
    assert ticks[-1]["outcome"] == "rollback"
    error_rate = next(c for c in ticks[-1]["checks"] if c["metric"] == "error-rate")
    assert error_rate["verdict"] == "fail" and error_rate["value"] > 1 and error_rate["threshold"]["max"] == 1
    status = canary_cli(lab_stack, "status", lab_stack.name)
    assert status.returncode == 0, status.stderr
    assert "Failed" in status.stdout and "error-rate" in status.stdout and "> max 1 for 3 checks in a row at weight 10" in status.stdout
    as_json = json.loads(canary_cli(lab_stack, "status", lab_stack.name, "--json").stdout)
    assert as_json["phase"] == "Failed" and as_json["failed_in_row"] == 3
    history = canary_cli(lab_stack, "history", lab_stack.name)
    assert "tick rollback: error-rate" in history.stdout


def test_slow_release_fails_p95_and_rolls_back(lab_stack: LabStack) -> None:
    done = release(lab_stack, "demo:v2-slow")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert_stable_state(lab_stack, "demo:v1")
    ticks = [r for r in journal(lab_stack).records() if r["type"] == "tick"]
    duration = next(c for c in ticks[-1]["checks"] if c["metric"] == "request-duration")
    assert duration["verdict"] == "fail" and duration["value"] > 500, duration
    assert "request-duration" in ticks[-1]["reason"]


def test_abort_during_progressing_ends_aborted_and_a_second_release_is_refused(lab_stack: LabStack) -> None:
    with RouteWatcher(lab_stack) as watcher, running(_start_release(lab_stack, "demo:v2")) as first:
        _wait_for_weight(watcher, 10, first)
        second = release(lab_stack, "demo:v2-slow")
        assert second.returncode == 3, second.stdout + second.stderr
        assert "busy" in second.stderr and f"pid {first.pid}" in second.stderr
        aborted = canary_cli(lab_stack, "abort", lab_stack.name)
        assert aborted.returncode == 0, aborted.stderr
        out, err = first.communicate(timeout=180)
    assert first.returncode == 1, out[-3000:] + err[-3000:]
    assert "Aborted" in out
    assert_stable_state(lab_stack, "demo:v1")
    state = journal(lab_stack).load_state()
    assert state is not None and state["phase"] == "Aborted" and "aborted by" in state["reason"]


def _start_release(lab_stack: LabStack, image: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "canary", "release", lab_stack.name, "--image", image, "--lab", "--project-dir", str(lab_stack.project)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=lab_stack.env)


def _wait_for_weight(watcher: RouteWatcher, weight: int, process: subprocess.Popen[str], timeout: float = 120) -> None:
    wait_until(lambda: [w for w in watcher.canary_weights if w >= weight], f"the route at canary weight {weight} (seen {watcher.seen})", timeout, process)


def _pulumi_locks(lab_stack: LabStack) -> list[Path]:
    lock_dir = lab_stack.layout.backend_dir / ".pulumi" / "locks" / "organization" / "canary" / lab_stack.name
    return list(lock_dir.glob("*.json")) if lock_dir.is_dir() else []


def test_sigterm_rolls_back_gracefully_and_releases_the_locks(lab_stack: LabStack) -> None:
    with RouteWatcher(lab_stack) as watcher, running(_start_release(lab_stack, "demo:v2")) as process:
        _wait_for_weight(watcher, 10, process)
        process.send_signal(15)
        out, err = process.communicate(timeout=180)
    assert process.returncode == 1, out[-2000:] + err[-2000:]
    assert "SIGTERM: rolling back to stable" in err
    assert_stable_state(lab_stack, "demo:v1")
    state = journal(lab_stack).load_state()
    assert state is not None and state["phase"] == "Aborted" and "signal SIGTERM" in state["reason"]
    assert journal(lab_stack).holder() is None and not _pulumi_locks(lab_stack)


def test_sigkill_during_the_interval_then_resume_finishes_the_release(lab_stack: LabStack) -> None:
    with RouteWatcher(lab_stack) as watcher:
        with running(_start_release(lab_stack, "demo:v2")) as process:
            _wait_for_weight(watcher, 20, process)
            wait_until(lambda: (journal(lab_stack).load_state() or {}).get("weight") == 20, "weight 20 in the release's state", 30, process)
            time.sleep(1.0)  # inside the interval wait after the shift to 20
            process.kill()
            process.communicate(timeout=30)
        state = journal(lab_stack).load_state()
        assert state is not None and state["phase"] == "Progressing" and state["weight"] == 20 and state["shifting_to"] is None
        route = lab_stack.reader.route(lab_stack.spec())
        assert route is not None and route.weights == (80, 20)  # the journal and the cluster agree
        busy = release(lab_stack, "demo:v2-slow")
        assert busy.returncode == 3 and "canary resume" in busy.stderr  # an unfinished release blocks a new one
        resumed = canary_cli(lab_stack, "resume", lab_stack.name, "--lab")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming release in phase Progressing at weight 20" in resumed.stdout
    assert [w for w in watcher.canary_weights if w] == [10, 20, 30, 40, 50], watcher.seen
    assert_stable_state(lab_stack, "demo:v2")
