"""Webhooks: call one hook (HTTP POST or a local command), bounded by its timeout.

An HTTP hook receives a JSON payload (name, namespace, phase, weight, metadata
…) and succeeds on a 2xx answer; a command hook succeeds on exit status 0,
runs in its own process group and is killed whole when its timeout expires.
What a success or failure means for the release depends on the hook's type
and is decided by the release, not here. Outputs are truncated in results.

``EventQueue`` delivers ``event`` hooks, which only inform, in order on one
background thread: a slow or unreachable receiver never holds up a step or a
rollback.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shlex
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from canary.spec import Webhook, WebhookType


@dataclass(frozen=True)
class HookResult:
    name: str
    type: str
    ok: bool
    seconds: float
    detail: str


def payload(hook: Webhook, *, app: str, namespace: str, phase: str, weight: int, release: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of an HTTP hook, Flagger-compatible (name, namespace, phase, metadata)."""
    body: dict[str, Any] = {
        "name": app,
        "namespace": namespace,
        "phase": phase,
        "weight": weight,
        "release": release,
        "type": hook.type.value,
        "metadata": dict(hook.metadata),
    }
    if extra:
        body.update(extra)
    return body


def call(hook: Webhook, body: Mapping[str, Any]) -> HookResult:
    """Run one hook to completion or to its timeout."""
    start = time.monotonic()
    timeout = hook.timeout.total_seconds()
    if hook.url:
        try:
            response = requests.post(hook.url, json=dict(body), timeout=timeout)
        except requests.Timeout:
            return HookResult(hook.name, hook.type.value, False, time.monotonic() - start, f"POST {hook.url} timed out after {timeout:g}s")
        except requests.RequestException as exc:
            return HookResult(hook.name, hook.type.value, False, time.monotonic() - start, f"POST {hook.url} failed: {type(exc).__name__}")
        ok = 200 <= response.status_code < 300
        return HookResult(hook.name, hook.type.value, ok, time.monotonic() - start, f"POST {hook.url} answered {response.status_code}")
    assert hook.cmd is not None
    return run_command(hook, timeout, start)


def start_command(hook: Webhook) -> subprocess.Popen[bytes]:
    assert hook.cmd is not None
    env = {**os.environ, "CANARY_WEBHOOK": hook.name, "CANARY_WEBHOOK_TYPE": hook.type.value}
    return subprocess.Popen(
        shlex.split(hook.cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env=env,
    )


def finish_command(hook: Webhook, process: subprocess.Popen[bytes], deadline: float, start: float) -> HookResult:
    """Wait for a started command until ``deadline`` (monotonic), then kill its process group."""
    try:
        out, _ = process.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        return HookResult(hook.name, hook.type.value, False, time.monotonic() - start, f"`{hook.cmd}` timed out after {hook.timeout.total_seconds():g}s and was killed")
    tail = (out or b"").decode(errors="replace").strip().splitlines()[-3:]
    ok = process.returncode == 0
    detail = f"`{hook.cmd}` exited {process.returncode}" + (f": {' | '.join(tail)[:300]}" if tail and not ok else "")
    return HookResult(hook.name, hook.type.value, ok, time.monotonic() - start, detail)


def run_command(hook: Webhook, timeout: float, start: float) -> HookResult:
    try:
        process = start_command(hook)
    except (OSError, ValueError) as exc:
        return HookResult(hook.name, hook.type.value, False, time.monotonic() - start, f"`{hook.cmd}` could not start: {exc}")
    return finish_command(hook, process, start + timeout, start)


class EventQueue:
    """Event hooks called in order, one at a time, off the release's thread.

    ``put`` never blocks: with ``limit`` events already waiting, the new one is
    dropped and reported as a failure. ``close`` delivers what is queued for at
    most ``timeout`` seconds and returns how many events were left undelivered;
    the worker is a daemon, so a receiver that hangs past that never keeps the
    process alive (each call is bounded by its hook's timeout anyway), and what
    it finishes after ``close`` is never reported: the release's lock may be gone.
    """

    def __init__(self, on_failure: Callable[[HookResult], None], limit: int = 1000) -> None:
        self._on_failure = on_failure
        self._queue: queue.Queue[tuple[Webhook, dict[str, Any]] | None] = queue.Queue(maxsize=limit)
        self._thread: threading.Thread | None = None
        self._calling: Webhook | None = None  # the hook being called, if any
        self._lock = threading.Lock()  # orders a call's failure report against close's accounting
        self._closed = False  # close gave up: what the worker still finishes was already reported

    def put(self, hook: Webhook, body: Mapping[str, Any]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._deliver, name="canary-events", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait((hook, dict(body)))
        except queue.Full:
            self._on_failure(HookResult(hook.name, hook.type.value, False, 0.0, f"event dropped: {self._queue.maxsize} events were still waiting for delivery"))

    def _deliver(self) -> None:
        while (item := self._queue.get()) is not None:
            self._calling = item[0]
            result = call(*item)
            with self._lock:
                if self._closed:
                    return
                self._calling = None
                if not result.ok:
                    self._on_failure(result)

    def close(self, timeout: float) -> int:
        """Deliver what is queued (for at most ``timeout`` s) and stop the worker. What is left
        undelivered (the call in flight included) is reported as one failure per hook; returns its count."""
        thread, self._thread = self._thread, None
        if thread is None:
            return 0
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            if not thread.is_alive():
                return 0
            self._closed = True
            left = [self._calling] if self._calling is not None else []
            with contextlib.suppress(queue.Empty):
                while True:
                    item = self._queue.get_nowait()
                    if item is not None:
                        left.append(item[0])
        for name, count in Counter(hook.name for hook in left).items():
            self._on_failure(HookResult(name, WebhookType.EVENT.value, False, 0.0, f"{count} events not delivered within {timeout:g}s of the release's end"))
        return len(left)
