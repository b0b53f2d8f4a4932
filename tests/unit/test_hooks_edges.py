"""Edges of the release's hooks: a list of hooks ends at its first decisive answer, a rollout command reads its
payload, a Discord alert keeps its query, and a second signal takes canary's command hooks with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from canary.adapters import processes
from canary.adapters.webhooks import Caller
from canary.core import notify
from canary.core.records import HookResult, Phase, ReleaseState, TrackPin
from canary.core.spec import Alert, ReleaseSpec, WebhookType
from canary.release.hooks import Hooks
from canary.release.ports import Clock
from tests.conftest import ROOT
from tests.unit.fakes import FakeHooks
from tests.unit.support import BOUND_S, group_members, poll

pytestmark = pytest.mark.timeout(60)


def spec(*webhooks: dict[str, Any]) -> ReleaseSpec:
    return ReleaseSpec.model_validate({
        "app": {"name": "web", "namespace": "shop", "image": "registry.example.com/shop/web:1.0.0"},
        "gateway": {"parentRefs": [{"name": "public"}]},
        "analysis": {"stepWeight": 10, "maxWeight": 50, "webhooks": list(webhooks)},
    })


def state() -> ReleaseState:
    return ReleaseState(
        release="20261202T101500-4711", stack="prod", app="web", namespace="shop", phase=Phase.PROGRESSING, weight=20,
        stable=TrackPin(template={}, hash="aaaa", image="registry.example.com/shop/web:1.0.0"),
        canary=TrackPin(template={}, hash="bbbb", image="registry.example.com/shop/web:2.0.0"),
    )


# --- a list of hooks ends at its first decisive answer --------------------------------------------


def hooks_answering(kind: str, answers: dict[str, bool]) -> tuple[Hooks, FakeHooks, list[HookResult]]:
    """Hooks of ``kind``, one per answer, in order, answered by a fake caller; and what was journaled."""
    caller = FakeHooks(lambda name, _kind: answers[name])
    journaled: list[HookResult] = []
    release_spec = spec(*({"name": name, "type": kind, "url": f"http://127.0.0.1:9/{name}"} for name in answers))
    return Hooks(caller, release_spec, Clock(), threading.Event(), lambda s, r, w: journaled.append(r)), caller, journaled


def test_a_rollback_hooks_yes_is_taken_without_asking_the_hooks_after_it() -> None:
    # each slower rollback hook after the one that asked held the release on the bad canary for its timeout
    hooks, caller, journaled = hooks_answering("rollback", {"quiet": False, "asks": True, "slow": True, "later": False})
    assert hooks.rollback_asked(state()) == "asks"
    assert [name for name, _ in caller.calls] == ["quiet", "asks"]
    assert [(r.name, r.ok) for r in journaled] == [("quiet", False), ("asks", True)]


@pytest.mark.parametrize("kind", ["pre-rollout", "confirm-rollout", "confirm-traffic-increase", "confirm-promotion"])
def test_a_pre_rollout_hooks_or_a_gates_no_is_taken_without_calling_the_hooks_after_it(kind: str) -> None:
    # a side-effecting hook (a migration) ran after the check before it had failed
    hooks, caller, journaled = hooks_answering(kind, {"check": True, "smoke": False, "migrate": True})
    results = hooks.run(state(), WebhookType(kind))
    assert [(r.name, r.ok) for r in results] == [("check", True), ("smoke", False)]
    assert [name for name, _ in caller.calls] == ["check", "smoke"]
    assert [(r.name, r.ok) for r in journaled] == [("check", True), ("smoke", False)]
    if kind.startswith("confirm-"):
        said_no = hooks.gate(state(), WebhookType(kind))
        assert said_no is not None and said_no.name == "smoke"
        assert "migrate" not in [name for name, _ in caller.calls]


@pytest.mark.parametrize(("kind", "answers"), [("rollback", {"a": False, "b": False}), ("pre-rollout", {"a": True, "b": True}),
                                                ("post-rollout", {"a": False, "b": True})])
def test_without_a_decisive_answer_every_hook_is_called_in_order(kind: str, answers: dict[str, bool]) -> None:
    # post-rollout hooks decide nothing: one failing does not keep the next from running
    hooks, caller, _ = hooks_answering(kind, answers)
    assert [r.name for r in hooks.run(state(), WebhookType(kind))] == ["a", "b"]
    assert [name for name, _ in caller.calls] == ["a", "b"]


# --- a rollout command reads its payload ----------------------------------------------------------


def test_a_rollout_command_reads_the_payload_an_http_rollout_hook_is_sent(tmp_path: Path) -> None:
    # it ran with /dev/null for standard input: a load tester never learnt which weight it tested
    out = tmp_path / "seen"
    release_spec = spec({"name": "load", "type": "rollout", "timeout": "5s", "cmd": f"sh -c 'cat > {out}'"})
    results: list[HookResult] = []
    hooks = Hooks(Caller(), release_spec, Clock(), threading.Event(), lambda s, r, w: results.append(r))
    running = hooks.start_rollout(state())
    assert hooks.finish_rollout(state(), running, time.monotonic()) == []
    seen = json.loads(out.read_text())
    assert (seen["name"], seen["namespace"], seen["type"], seen["weight"], seen["phase"]) == ("web", "shop", "rollout", 20, "Progressing")


# --- a Discord alert keeps its query --------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("https://discord.com/api/webhooks/123/TOKEN?thread_id=456", "https://discord.com/api/webhooks/123/TOKEN/slack?thread_id=456"),
        ("https://discord.com/api/webhooks/123/TOKEN/?thread_id=456", "https://discord.com/api/webhooks/123/TOKEN/slack?thread_id=456"),
        ("https://discord.com/api/webhooks/123/TOKEN/slack?wait=true", "https://discord.com/api/webhooks/123/TOKEN/slack?wait=true"),
        ("https://discord.com/api/webhooks/123/TOKEN#top", "https://discord.com/api/webhooks/123/TOKEN/slack#top"),
    ],
)
def test_a_discord_alerts_slack_endpoint_is_its_path_plus_slack_with_the_query_kept(url: str, address: str) -> None:
    # `/slack` was appended to the whole URL: `…?thread_id=456/slack`, never delivered
    assert notify.address(Alert.model_validate({"name": "chat", "type": "discord", "url": url})) == address


# --- a second signal takes the command hooks with it ----------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_kills_the_command_hooks_before_canary_exits(tmp_path: Path, signum: signal.Signals) -> None:
    # it restored the default handlers: the second signal killed Python outright, atexit never ran, and the hooks
    # (in sessions of their own) ran on with no owner; a load generator beside the next one after `canary resume`
    script = tmp_path / "stopped.py"
    script.write_text(
        "import json, os, signal, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from canary import cli\n"
        "from canary.adapters.webhooks import Caller\n"
        "from canary.core.spec import Webhook\n"
        "def hook(cmd):\n"
        "    return Webhook.model_validate({'name': 'load', 'type': 'rollout', 'timeout': '10m', 'cmd': cmd})\n"
        "caller = Caller()\n"
        "running = caller.start(hook('sleep 60'))\n"
        "# one that exited, not yet collected, leaving what it started in its group\n"
        "left = caller.start(hook(\"sh -c 'sleep 60 & echo started'\"))\n"
        "assert left.stdout.readline() == b'started\\n'\n"
        "print(json.dumps([running.pid, left.pid]), flush=True)\n"
        "cli._on_signals(lambda by: None)\n"
        f"os.kill(os.getpid(), {int(signum)})\n"
        "time.sleep(0.2)\n"
        f"os.kill(os.getpid(), {int(signum)})\n"
        "time.sleep(5)\n"
        "print('still running', flush=True)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=BOUND_S * 2)
    groups = json.loads(done.stdout.splitlines()[0])
    try:
        assert poll(lambda: not any(group_members(g) for g in groups)), f"hooks outlived canary: {[group_members(g) for g in groups]}"
        assert done.returncode == 128 + signum and "still running" not in done.stdout, done.stdout + done.stderr
    finally:
        for pgid in groups:
            if group_members(pgid):
                os.killpg(pgid, signal.SIGKILL)


# --- a SIGKILL of canary takes its command hooks with it ------------------------------------------


@pytest.mark.skipif(processes._PRCTL is None, reason="PR_SET_PDEATHSIG is Linux's; elsewhere a hook outlives a SIGKILL of canary")
def test_a_sigkill_of_canary_kills_the_command_hooks_it_started(tmp_path: Path) -> None:
    # a CI job's timeout, the OOM killer, `kill -9` of canary's group (each hook is in a session of its own): no handler
    # and no atexit ran, and a load generator (`hey -z 30m`) hammered production on with no owner. The hooks are started
    # from helper threads that end at once, as a release's event and rollout hooks are: they must outlive those threads
    script = tmp_path / "killed.py"
    script.write_text(
        "import json, sys, threading, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from canary.adapters.webhooks import Caller\n"
        "from canary.core.spec import Webhook\n"
        "caller, started = Caller(), []\n"
        "def start(name, body):\n"
        "    hook = Webhook.model_validate({'name': name, 'type': 'rollout', 'timeout': '10m', 'cmd': 'sleep 300'})\n"
        "    started.append(caller.start(hook, body))\n"
        "for name, body in (('load', None), ('audit', {'phase': 'Progressing'})):\n"
        "    helper = threading.Thread(target=start, args=(name, body))\n"
        "    helper.start()\n"
        "    helper.join()\n"
        "time.sleep(0.3)\n"
        "print(json.dumps([p.pid for p in started if p.poll() is None]), flush=True)\n"
        "time.sleep(300)\n")
    hooks: list[int] = []
    with subprocess.Popen([sys.executable, "-W", "error", str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as canary:
        try:
            assert canary.stdout is not None and canary.stderr is not None
            line = canary.stdout.readline()
            assert line, canary.stderr.read()
            hooks = json.loads(line)
            assert len(hooks) == 2, "a hook died with the thread that started it"
            assert all(group_members(pid) for pid in hooks)
            canary.kill()
            canary.wait(BOUND_S)
            assert poll(lambda: not any(group_members(pid) for pid in hooks), timeout=5.0), \
                f"hooks outlived canary: {[group_members(pid) for pid in hooks]}"
        finally:
            canary.kill()
            for pgid in hooks:
                if group_members(pgid):
                    os.killpg(pgid, signal.SIGKILL)


# --- an event whose failure cannot be recorded ---------------------------------------------------


def test_the_delivery_goes_on_when_recording_a_failed_call_fails() -> None:
    # the journal's write of a failed alert was refused (a Conflict): the worker died with it, and every later event
    # and alert of the release was lost
    from canary.errors import Conflict
    from canary.release.hooks import Delivery

    def record(result: HookResult) -> None:
        raise Conflict("writing ConfigMap canary-web-journal-r1-0: changed since it was read")

    delivered = threading.Event()
    delivery = Delivery(on_failure=record)
    delivery.put("team", "alert:slack", lambda: HookResult("team", "alert:slack", False, 0.0, "answered 500"))
    delivery.put("audit", "event", lambda: delivered.set() or HookResult("audit", "event", True, 0.0, "answered 200"))
    assert delivered.wait(BOUND_S)
    assert delivery.close(BOUND_S) == 0
