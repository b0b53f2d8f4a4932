"""The release's webhooks and alerts: gates, rollout hooks, rollback hooks, events and chat alerts.

What a hook's answer means is decided here (a gate's no holds, a rollback
hook's success rolls back, an event never acts); calling it is the
``HookCaller`` port's job. Every call is bounded: by the hook's timeout, and by
the cancel token (an abort does not wait for a gate or a load test). Event
hooks and alerts only inform: they are delivered in order from a background
queue, so a slow receiver never delays a step or a rollback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from canary.core import notify
from canary.core.records import Phase, ReleaseState
from canary.core.spec import ReleaseSpec, Severity, Webhook, WebhookType
from canary.errors import CanaryError
from canary.release.ports import Clock, HookCaller, HookResult

#: The phase Flagger's Canary status shows while canary's release is in each phase, for the hooks that
#: Flagger tells its status (rollback and event hooks). Flagger has no phase of its own for an
#: inconclusive release (waiting for a person, as a promotion gate does), an abort, or a promotion it could
#: not verify (Flagger marks a promotion that fails Failed); a rollback in progress has already failed.
_FLAGGER_STATUS = {
    Phase.INITIALIZING: "Progressing",
    Phase.PROGRESSING: "Progressing",
    Phase.WAITING_PROMOTION: "WaitingPromotion",
    Phase.WAITING_DECISION: "WaitingPromotion",
    Phase.PROMOTING: "Promoting",
    Phase.FINALISING: "Finalising",
    Phase.SUCCEEDED: "Succeeded",
    Phase.PROMOTED_UNVERIFIED: "Failed",
    Phase.ROLLING_BACK: "Failed",
    Phase.FAILED: "Failed",
    Phase.ABORTED: "Failed",
}
#: The hooks Flagger calls in one fixed phase, whatever its Canary's status: Progressing (a confirm-promotion
#: hook asked again while the Canary is WaitingPromotion too).
_SENT_PROGRESSING = frozenset({WebhookType.PRE_ROLLOUT, WebhookType.ROLLOUT, WebhookType.CONFIRM_TRAFFIC_INCREASE, WebhookType.CONFIRM_PROMOTION})


def flagger_phase(kind: WebhookType, state: ReleaseState) -> str:
    """The ``phase`` Flagger sends a hook of ``kind`` at this point of the release, so that a receiver
    written for Flagger reads the same: a confirm-rollout hook gets how the app's previous release ended
    (Initialized before its first) and then Waiting once one said no; a post-rollout hook Succeeded or
    Failed; an event or rollback hook the Canary's status."""
    if kind in _SENT_PROGRESSING:
        return "Progressing"
    if kind is WebhookType.CONFIRM_ROLLOUT:
        if state.waiting:
            return "Waiting"
        return "Initialized" if state.before is None else _FLAGGER_STATUS[state.before]
    if kind is WebhookType.POST_ROLLOUT:
        return "Succeeded" if state.phase is Phase.SUCCEEDED else "Failed"
    if state.phase is Phase.INITIALIZING and state.waiting and not state.canary_deployed:
        return "Waiting"
    return _FLAGGER_STATUS[state.phase]


def payload(hook: Webhook, spec: ReleaseSpec, state: ReleaseState) -> dict[str, Any]:
    """The JSON body of an HTTP hook, Flagger-compatible (name, namespace, phase, checksum, metadata):
    ``phase`` is the one Flagger would send (``flagger_phase``), canary's own is ``releasePhase``.
    Flagger's checksum identifies the canary's configuration (its spec and tracked configs): here the
    canary pin's hash, which covers its pod template and the configs it tracks. ``name`` is
    ``analysis.webhookName`` when set: Flagger sends its Canary's name, which a receiver (its load tester's
    gates) may key on."""
    return {
        "name": spec.analysis.webhook_name or spec.app.name,
        "namespace": spec.app.namespace,
        "phase": flagger_phase(hook.type, state),
        "releasePhase": state.phase.value,
        "weight": state.weight,
        "release": state.release,
        "type": hook.type.value,
        "metadata": dict(hook.metadata),
        "checksum": state.canary.hash if state.canary else "",
        "canaryImage": state.canary.image if state.canary else "",
        "stableImage": state.stable.image if state.stable else "",
    }


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_payload(hook: Webhook, spec: ReleaseSpec, state: ReleaseState, message: str, severity: Severity, now: datetime) -> dict[str, Any]:
    """An event hook's body, as Flagger's: the event in the metadata (``eventMessage``, ``eventType``
    Normal or Warning, ``timestamp`` in ms), over the hook's own keys of those names; canary's
    ``message`` kept at the top."""
    body = payload(hook, spec, state)
    event = {"eventMessage": message, "eventType": "Normal" if severity is Severity.INFO else "Warning",
             "timestamp": str((now - _EPOCH) // timedelta(milliseconds=1))}
    return {**body, "message": message, "metadata": {**body["metadata"], **event}}


class Delivery:
    """Informational calls (event hooks, alerts) in order, one at a time, off the release's thread.

    ``put`` never blocks: with ``limit`` calls already waiting, the new one is
    dropped and reported as a failure. A call that raises is a failed delivery,
    and the next call goes on (also when recording that failure fails). ``close``
    delivers what is queued for at most ``timeout`` seconds and reports what is
    left (also when the worker died), one failure per receiver;
    the worker is a daemon, so a receiver that hangs never keeps the process alive.
    """

    def __init__(self, on_failure: Callable[[HookResult], None], limit: int = 1000) -> None:
        self._on_failure = on_failure
        self._queue: queue.Queue[tuple[str, str, Callable[[], HookResult]] | None] = queue.Queue(maxsize=limit)
        self._thread: threading.Thread | None = None
        self._calling: tuple[str, str] | None = None
        self._lock = threading.Lock()
        self._closed = False
        #: ``close`` began: a call put from then on (a failure recorded during the flush tells people of a refusal)
        #: is dropped, never given a worker of its own, which nothing would stop and which raced the first one
        self._shut = False
        self._opened = threading.Lock()
        self._drained = False  # the worker reached the end of the queue (it did not die on the way)

    def put(self, name: str, kind: str, call: Callable[[], HookResult]) -> None:
        with self._opened:
            if self._shut:
                why = "the release's deliveries were closed"
            else:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._deliver, name="canary-events", daemon=True)
                    self._thread.start()
                try:
                    self._queue.put_nowait((name, kind, call))
                    return
                except queue.Full:
                    why = f"{self._queue.maxsize} calls were still waiting for delivery"
        self._on_failure(HookResult(name, kind, False, 0.0, f"dropped: {why}"))

    def _deliver(self) -> None:
        while (item := self._queue.get()) is not None:
            name, kind, call = item
            self._calling = (name, kind)
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001 - one call's failure, not the end of every later delivery
                # the type only: a message may quote the URL, an alert's secret
                result = HookResult(name, kind, False, 0.0, f"failed: {type(exc).__name__}")
            with self._lock:
                if self._closed:
                    return
                self._calling = None
                if not result.ok:
                    # its record failing too (the cluster refused the journal's write, the disk is full) ends this call
                    # only: the worker died, and every later event and alert with it
                    with contextlib.suppress(CanaryError, OSError):
                        self._on_failure(result)
        self._drained = True

    def close(self, timeout: float) -> int:
        """Deliver what is queued (for at most ``timeout`` s) and stop; returns how many calls were left."""
        with self._opened:
            self._shut = True
            thread, self._thread = self._thread, None
        if thread is None:
            return 0
        deadline = time.monotonic() + timeout
        if thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout)
        thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            if self._drained:
                return 0
            self._closed = True
            left = [self._calling] if self._calling is not None else []
            with contextlib.suppress(queue.Empty):
                while True:
                    item = self._queue.get_nowait()
                    if item is not None:
                        left.append((item[0], item[1]))
        for (name, kind), count in Counter(left).items():
            self._on_failure(HookResult(name, kind, False, 0.0, f"{count} calls not delivered within {timeout:g}s of the release's end"))
        return len(left)


#: The answer that ends a list of hooks of a type, as in Flagger: a rollback hook's yes rolls back (one
#: slower hook asked after it held the release on the bad canary for its timeout); a gate's or a
#: pre-rollout hook's no holds the release (a pre-rollout migration ran after the check before it failed).
#: Post-rollout hooks are all called: none decides anything (Flagger stops at the first that fails).
_DECIDES = {
    WebhookType.ROLLBACK: True,
    WebhookType.PRE_ROLLOUT: False,
    WebhookType.CONFIRM_ROLLOUT: False,
    WebhookType.CONFIRM_TRAFFIC_INCREASE: False,
    WebhookType.CONFIRM_PROMOTION: False,
}


class Hooks:
    """The webhooks and alerts of one release, and what their answers mean."""

    def __init__(self, caller: HookCaller, spec: ReleaseSpec, clock: Clock, cancel: threading.Event,
                 on_result: Callable[[ReleaseState | None, HookResult, int | None], None]) -> None:
        self.caller = caller
        self.spec = spec
        self.clock = clock
        self.cancel = cancel
        self._on_result = on_result
        self._state: ReleaseState | None = None
        self.delivery = Delivery(on_failure=lambda result: on_result(self._state, result, None))

    def _of(self, kind: WebhookType) -> list[Webhook]:
        return [h for h in self.spec.analysis.webhooks if h.type is kind]

    def has(self, kind: WebhookType) -> bool:
        """Whether any hook of ``kind`` is configured."""
        return bool(self._of(kind))

    def run(self, state: ReleaseState, kind: WebhookType) -> list[HookResult]:
        """Call the hooks of ``kind`` in order, each to completion (or its timeout, or the cancel token),
        up to the first decisive answer (``_DECIDES``): the results of those called."""
        decides = _DECIDES.get(kind)
        results = []
        for hook in self._of(kind):
            result = self.caller.call(hook, payload(hook, self.spec, state), self.cancel)
            self._on_result(state, result, None)
            results.append(result)
            if self.cancel.is_set() or result.ok is decides:
                break
        return results

    def gate(self, state: ReleaseState, kind: WebhookType) -> HookResult | None:
        """The first gate hook of ``kind`` that said no, or None when all said yes (or there are none).
        A gate an abort cut short says no: the hooks it did not ask never said yes, and an abort pending
        while the gate opened would otherwise find the release promoting, past the point it can stop."""
        hooks = self._of(kind)
        results = self.run(state, kind)
        said_no = next((r for r in results if not r.ok), None)
        if said_no is None and hooks and self.cancel.is_set():
            unasked = hooks[len(results)].name if len(results) < len(hooks) else hooks[-1].name
            return HookResult(unasked, kind.value, False, 0.0, "not taken as a yes: the release is being aborted")
        return said_no

    def rollback_asked(self, state: ReleaseState) -> str | None:
        return next((r.name for r in self.run(state, WebhookType.ROLLBACK) if r.ok), None)

    def start_rollout(self, state: ReleaseState) -> list[tuple[Webhook, Any]]:
        """Rollout hooks run during the interval: commands in the background, HTTP calls now."""
        running: list[tuple[Webhook, Any]] = []
        try:
            for hook in self._of(WebhookType.ROLLOUT):
                if hook.cmd:
                    try:
                        # the body an HTTP hook is sent, on its standard input (it read nothing before)
                        running.append((hook, self.caller.start(hook, payload(hook, self.spec, state))))
                    except (OSError, ValueError) as exc:
                        # named by its name, never its command line (an argument may be a token); the caller's
                        # error names the program's base name only
                        running.append((hook, HookResult(hook.name, hook.type.value, False, 0.0, f"{hook.name}: could not start: {exc}")))
                else:
                    running.append((hook, self.caller.call(hook, payload(hook, self.spec, state), self.cancel)))
        except BaseException:
            self.stop_rollout(running)  # the commands started so far run in sessions of their own: nothing else stops them
            raise
        return running

    def finish_rollout(self, state: ReleaseState, running: list[tuple[Webhook, Any]], start: float, cut: str = "") -> list[HookResult]:
        """Collect rollout hooks. A command may run through the interval and then ``timeout`` longer before
        it is killed; an abort kills it at once, and so does ``cut`` (why: a person answered, and no tick will
        judge this interval). A ``background`` command (a load generator) is stopped at once and never fails."""
        interval = self.spec.analysis.interval.total_seconds()
        results: dict[int, HookResult] = {}
        # load generators first: stopped at the interval's end, not after another command's grace
        order = sorted(range(len(running)), key=lambda i: not (running[i][0].background and not isinstance(running[i][1], HookResult)))
        try:
            for i in order:
                hook, handle = running[i]
                if isinstance(handle, HookResult):
                    result = handle
                elif hook.background:
                    # a load generator: stopped now, whatever it is doing; how it ended is recorded, never judged
                    # (a Flagger load tester answers at once and never reports it either)
                    result = self.caller.finish(hook, handle, time.monotonic(), self.cancel)
                    result = dataclasses.replace(result, ok=True, detail=f"{result.detail} (in the background: not judged)")
                elif cut:
                    result = self.caller.finish(hook, handle, time.monotonic(), self.cancel)
                    if not result.ok:
                        result = dataclasses.replace(result, detail=f"{hook.name}: stopped: {cut}")
                else:
                    grace = max(0.0, start + interval + hook.timeout.total_seconds() - self.clock.monotonic())
                    result = self.caller.finish(hook, handle, time.monotonic() + grace, self.cancel)
                results[i] = result
        finally:
            # whatever went wrong collecting one, none outlives the interval
            self.stop_rollout([running[i] for i in order if i not in results])
        # recorded once every command is stopped: a record that fails never leaves one running
        failures = []
        for i in range(len(running)):
            self._on_result(state, results[i], state.weight)
            if not results[i].ok:
                failures.append(results[i])
        return failures

    def stop_rollout(self, running: list[tuple[Webhook, Any]]) -> None:
        """Kill the rollout commands still running, recording nothing: the interval ended by an error and no
        tick will judge it."""
        for hook, handle in running:
            if not isinstance(handle, HookResult):
                with contextlib.suppress(Exception):
                    self.caller.finish(hook, handle, time.monotonic(), self.cancel)

    def event(self, state: ReleaseState, message: str, severity: Severity = Severity.INFO) -> None:
        """Tell event hooks and the alerts whose severity admits it (both from the background queue)."""
        self._state = state
        for hook in self._of(WebhookType.EVENT):
            body = event_payload(hook, self.spec, state, message, severity, self.clock.now())
            self.delivery.put(hook.name, hook.type.value, lambda hook=hook, body=body: self.caller.call(hook, body))
        for alert in self.spec.analysis.alerts:
            if notify.admits(alert.severity, severity):
                body = notify.message(alert, self.spec, state, message, severity)
                self.delivery.put(alert.name, f"alert:{alert.type.value}", lambda alert=alert, body=body: self.caller.alert(alert, body))

    def close(self, timeout: float) -> int:
        """Deliver what is queued (at most ``timeout`` s), then kill any command hook still running: none
        outlives its release (each runs in a session of its own, out of reach of the terminal's signals)."""
        left = self.delivery.close(timeout)
        stop = getattr(self.caller, "stop_running", None)
        if stop is not None:
            stop()
        return left

