"""Webhook failures during releases on the lab: time-outs, connection refused, 5xx, a hanging command.

Each failure is handled as its hook's type says — a gate holds, a pre-rollout
or rollout hook fails checks, an event, rollback or post-rollout hook is
recorded and changes nothing — and every call is bounded by its timeout.
The hooks' HTTP endpoint is a small server of the test on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.lab.helpers import LabStack, RouteWatcher, assert_stable_state, running, wait_until
from tests.unit.support import serve

HANG_SECONDS = 20  # how long /hang holds a request: far beyond every hook's timeout, and bounded


SLOW_SECONDS = 2.5  # how long /slow takes to answer 200: a release's dozen events still drain within its 30 s flush


class _Hooks(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, Any]]] = []  # (path, body) in arrival order

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, json.loads(body or b"{}")))
        if self.path == "/hang":
            time.sleep(HANG_SECONDS)
        if self.path == "/slow":
            time.sleep(SLOW_SECONDS)
        code = 500 if self.path == "/fail" else 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def hook_server() -> Iterator[str]:
    with serve(_Hooks) as url:
        yield url


REFUSED = "http://127.0.0.1:1/"  # a privileged port nothing listens on (a port picked free may be taken by the time)


def _hooks(*extra: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(config: dict[str, Any]) -> None:
        config["canary:analysis"]["webhooks"].extend(extra)

    return mutate


def _hook_records(lab_stack: LabStack, name: str) -> list[Any]:
    return [r for r in lab_stack.of("webhook") if r.name == name]


def _bounded(records: list[Any], timeout: float, slack: float = 1.0) -> None:
    assert records and all(r.seconds <= timeout + slack for r in records), records


def _time(record: Any) -> float:
    from datetime import datetime

    return datetime.fromisoformat(record.time.replace("Z", "+00:00")).timestamp()


# The hook server's address is only known at run time: the hooks point at a placeholder the test fills in.
SERVER = "http://hooks.invalid"


def _with_server(lab_stack: LabStack, url: str) -> None:
    path = lab_stack.project / "stacks" / f"Pulumi.{lab_stack.name}.yaml"
    path.write_text(path.read_text().replace(SERVER, url))


@pytest.mark.parametrize("lab_stack", [_hooks(
    {"name": "notify", "type": "event", "url": REFUSED, "timeout": "1s"},
    {"name": "kill-switch", "type": "rollback", "url": f"{SERVER}/fail", "timeout": "1s"},
    {"name": "announce", "type": "post-rollout", "url": f"{SERVER}/hang", "timeout": "1s"},
)], indirect=True)
def test_failing_event_rollback_and_post_rollout_hooks_leave_a_healthy_release_promoted(lab_stack: LabStack, hook_server: str) -> None:
    _with_server(lab_stack, hook_server)
    done = lab_stack.release("demo:v2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_stable_state(lab_stack, "demo:v2")
    refused = _hook_records(lab_stack, "notify")
    assert all(not r.ok and "ConnectionError" in r.detail for r in refused), refused
    _bounded(refused, 1)
    kill_switch = _hook_records(lab_stack, "kill-switch")  # a 500 is not a request to roll back
    assert len(kill_switch) >= 5 and all(not r.ok and "answered 500" in r.detail for r in kill_switch), kill_switch
    _bounded(kill_switch, 1)
    announce = _hook_records(lab_stack, "announce")
    assert len(announce) == 1 and "timed out after 1s" in announce[0].detail, announce
    _bounded(announce, 1)
    assert "post-rollout webhook announce failed" in done.stdout


@pytest.mark.parametrize("lab_stack", [_hooks({"name": "smoke", "type": "pre-rollout", "url": f"{SERVER}/fail", "timeout": "2s"})], indirect=True)
def test_a_pre_rollout_hook_answering_500_rolls_back_before_any_traffic_shift(lab_stack: LabStack, hook_server: str) -> None:
    _with_server(lab_stack, hook_server)
    with RouteWatcher(lab_stack) as watcher:
        done = lab_stack.release("demo:v2")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert watcher.seen and not [w for w in watcher.canary_weights if w], watcher.seen  # the route was read, never shifted
    assert_stable_state(lab_stack, "demo:v1")
    smoke = _hook_records(lab_stack, "smoke")
    assert len(smoke) == 3 and all("answered 500" in r.detail for r in smoke), smoke
    _bounded(smoke, 2)
    state = lab_stack.state()
    assert state is not None and state.phase.value == "Failed" and "pre-rollout webhook smoke failed" in state.reason and "3 checks in a row" in state.reason
    assert not lab_stack.of("tick")


HANGING = "sleep 617"  # a command that would outlive the release; its argument makes it findable


@pytest.mark.parametrize("lab_stack", [_hooks({"name": "stuck", "type": "rollout", "cmd": HANGING, "timeout": "1s"})], indirect=True)
def test_a_hanging_rollout_command_is_killed_at_its_timeout_and_fails_the_checks(lab_stack: LabStack) -> None:
    start = time.monotonic()
    with RouteWatcher(lab_stack) as watcher:
        done = lab_stack.release("demo:v2")
    took = time.monotonic() - start
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert max(watcher.canary_weights) == 10, watcher.seen
    assert_stable_state(lab_stack, "demo:v1")
    stuck = _hook_records(lab_stack, "stuck")
    assert len(stuck) == 3 and all("timed out after 1s and was killed" in r.detail for r in stuck), stuck
    _bounded(stuck, 5 + 1)  # it may run through the interval (5 s), then its timeout
    ticks = lab_stack.of("tick")
    assert [t.failed_in_row for t in ticks] == [1, 2, 3]
    assert all(any(c.metric == "webhook:stuck" and c.verdict.value == "error" for c in t.checks) for t in ticks), ticks
    left = subprocess.run(["pgrep", "-f", HANGING], capture_output=True, text=True)
    assert left.returncode == 1, f"the hook's command outlived its timeout: {left.stdout}"
    assert took < 90, took


@pytest.mark.parametrize("lab_stack", [_hooks({"name": "approve", "type": "confirm-promotion", "url": f"{SERVER}/hang", "timeout": "1s"})], indirect=True)
def test_a_confirm_promotion_hook_that_times_out_holds_the_release_until_canary_promote(lab_stack: LabStack, hook_server: str) -> None:
    _with_server(lab_stack, hook_server)
    with running(lab_stack.start("release", lab_stack.name, "--image", "demo:v2")) as process:
        wait_until(lambda: (s := lab_stack.state()) is not None and s.phase.value == "WaitingPromotion", "the release waiting for promotion", 240, process, every=0.2)
        asked = len(_hook_records(lab_stack, "approve"))
        wait_until(lambda: len(_hook_records(lab_stack, "approve")) > asked, "the gate asked again in WaitingPromotion", 30, process, every=0.2)
        state = lab_stack.state()
        assert state is not None and state.phase.value == "WaitingPromotion" and state.weight == 50, state
        promoted = lab_stack.cli("promote", lab_stack.name)
        assert promoted.returncode == 0, promoted.stderr
        out, err = process.communicate(timeout=120)
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    assert_stable_state(lab_stack, "demo:v2")
    approve = _hook_records(lab_stack, "approve")
    assert len(approve) >= 2 and all(not r.ok and "timed out after 1s" in r.detail for r in approve), approve
    _bounded(approve, 1)


@pytest.mark.parametrize("lab_stack", [_hooks({"name": "go", "type": "confirm-rollout", "url": REFUSED, "timeout": "1s"})], indirect=True)
def test_a_confirm_rollout_hook_refusing_connections_holds_the_canary_at_zero_pods_until_abort(lab_stack: LabStack) -> None:
    from canary.core.naming import Track

    with RouteWatcher(lab_stack) as watcher, running(lab_stack.start("release", lab_stack.name, "--image", "demo:v2")) as process:
        wait_until(lambda: len(_hook_records(lab_stack, "go")) >= 2, "two refused confirm-rollout calls", 120, process, every=0.2)
        assert (lab_stack.state() or _none).phase.value == "Initializing"
        canary = lab_stack.deployment(Track.CANARY)
        assert canary["pods"] == 0 and canary["replicas"] == 0, canary  # asked before the canary is scaled up
        aborted = lab_stack.cli("abort", lab_stack.name)
        assert aborted.returncode == 0, aborted.stderr
        out, err = process.communicate(timeout=120)
    assert process.returncode == 1, out[-3000:] + err[-3000:]
    assert watcher.seen and not [w for w in watcher.canary_weights if w], watcher.seen  # the route was read, never shifted
    assert_stable_state(lab_stack, "demo:v1")
    go = _hook_records(lab_stack, "go")
    assert all(not r.ok and "ConnectionError" in r.detail for r in go), go
    _bounded(go, 1)
    assert (lab_stack.state() or _none).phase.value == "Aborted"


class _None:
    class phase:  # noqa: N801 - a stand-in for a missing state
        value = "none"


_none = _None()


@pytest.mark.parametrize("lab_stack", [_hooks({"name": "chat", "type": "event", "url": f"{SERVER}/slow", "timeout": "5s"})], indirect=True)
def test_a_slow_event_receiver_does_not_delay_the_rollback_and_still_gets_every_event_in_order(lab_stack: LabStack, hook_server: str) -> None:
    """Each event takes the receiver 2.5 s. Delivered on the release's thread, the three events between the
    failing tick and the rollback's traffic step would cost 7.5 s; the release must not wait for them."""
    _with_server(lab_stack, hook_server)
    _Hooks.received.clear()
    done = lab_stack.release("demo:v2-faulty")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert_stable_state(lab_stack, "demo:v1")
    records = lab_stack.records()
    decision = next(r for r in records if r.type == "tick" and r.outcome.value == "rollback")
    on_stable = next(r for r in records if r.type == "state" and r.message.startswith("traffic is back on stable"))
    took = _time(on_stable) - _time(decision)
    # waiting for the three events alone would take 7.5 s, before any of the rollback's own work (1.5-2 s on
    # an idle lab, 4.9 s seen with the other lab tests running): anything under 7 s did not wait for them
    assert took < 7, f"failing tick to route 100/0 took {took:.2f}s"
    assert not [r for r in records if r.type == "webhook" and r.hook_type == "event"], "no event failed, and none was left undelivered"
    # Every event reached the receiver before the command returned, in the order the release printed them.
    got = [body["message"] for path, body in _Hooks.received if path == "/slow"]
    printed = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(got) >= 10 and got[-1].startswith("rolled back: "), got
    at = 0
    for message in got:  # each received message is printed after the one before it (messages repeat: "tick: fail")
        at = next((i for i in range(at, len(printed)) if message in printed[i]), -1) + 1
        assert at, f"{message!r} arrived out of order: {got}"


BACKGROUND = "sleep 619"  # a load generator that would run far past each interval; its argument makes it findable


@pytest.mark.parametrize("lab_stack", [_hooks({"name": "load", "type": "rollout", "cmd": BACKGROUND, "background": True, "timeout": "1s"})],
                         indirect=True)
def test_a_background_load_generator_runs_through_each_interval_never_fails_a_check_and_never_outlives_the_release(lab_stack: LabStack) -> None:
    # Flagger's load tester starts `hey -z 1m` and answers at once: imported as a plain rollout command it was
    # killed at interval + timeout, a failed check each tick, and the first tick rolled a healthy release back
    with RouteWatcher(lab_stack) as watcher:
        done = lab_stack.release("demo:v2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [w for w in watcher.canary_weights if w] == [10, 20, 30, 40, 50], watcher.seen
    assert_stable_state(lab_stack, "demo:v2")
    ticks = lab_stack.of("tick")
    assert ticks and not any(c.metric == "webhook:load" for t in ticks for c in t.checks if c.verdict.value != "pass"), ticks
    load = _hook_records(lab_stack, "load")
    assert len(load) >= 5, load  # one run per interval
    left = subprocess.run(["pgrep", "-f", BACKGROUND], capture_output=True, text=True)
    assert left.returncode == 1, f"the load generator outlived the release: {left.stdout}"
