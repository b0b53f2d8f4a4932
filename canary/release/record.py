"""Recording: every decision, state change, ``up``, tick, hook call and verification, before it is acted on.

The ``Recorder`` writes typed records through the store port (the journal in
the cluster, with its local copy), saves the state, tells the caller's
``on_event`` and the event hooks and alerts, records a Kubernetes Event for
what a person watching with ``kubectl`` needs to see, and pushes the release's
metrics. Nothing recorded holds a secret.

A release never stops because it could not be recorded in the cluster: a
journal write the cluster refuses is kept on this machine (the store's), and an
Event it refuses is left out (the journal has the same decision); each is said
once, as a warning to people and hooks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from canary.core import records
from canary.core.records import Phase, ReleaseState
from canary.core.spec import Severity
from canary.errors import CanaryError
from canary.release.ports import Clock, HookResult, PusherPort, StorePort


@dataclass(frozen=True)
class Event:
    """What ``on_event`` receives: one line of the release's story."""

    time: str
    release: str
    phase: str
    weight: int
    message: str
    app: str = ""


#: Kubernetes Event reasons for state changes, by the phase they lead to.
_REASONS = {
    Phase.INITIALIZING: "Initializing",
    Phase.PROGRESSING: "Progressing",
    Phase.WAITING_PROMOTION: "WaitingPromotion",
    Phase.WAITING_DECISION: "WaitingDecision",
    Phase.PROMOTING: "Promoting",
    Phase.FINALISING: "Promoting",
    Phase.SUCCEEDED: "Promoted",
    Phase.PROMOTED_UNVERIFIED: "PromotedUnverified",
    Phase.ROLLING_BACK: "RollingBack",
    Phase.FAILED: "RolledBack",
    Phase.ABORTED: "Aborted",
}
_WARNINGS = {Phase.ROLLING_BACK, Phase.FAILED, Phase.ABORTED, Phase.PROMOTED_UNVERIFIED, Phase.WAITING_DECISION}
#: a state change people are warned of is a Warning Event in any phase (a gate's no, a pre-rollout hook's failure)
_WARNED = {Severity.WARN, Severity.ERROR}


class Recorder:
    def __init__(self, store: StorePort, clock: Clock, stack: str, app: str, on_event: Callable[[Event], None] | None = None,
                 pusher: PusherPort | None = None) -> None:
        self.store = store
        self.clock = clock
        self.stack = stack
        self.app = app
        self.on_event = on_event
        self.pusher = pusher
        #: set by the release once its hooks exist: event hooks and alerts
        self.notify: Callable[[ReleaseState, str, Severity], None] | None = None
        #: the state as last saved: where the release stands when a handler fails midway
        self.last_saved: ReleaseState | None = None
        self._refusal_said: str | None = None
        self._events_failed = False
        #: the two "said once" marks are set by the hooks' thread too: each is checked and set as one step
        self._said = threading.Lock()

    def _base(self, state: ReleaseState) -> dict[str, Any]:
        return {"time": self.clock.iso(), "stack": self.stack, "app": self.app, "release": state.release, "phase": state.phase.value, "weight": state.weight}

    def _tell(self, state: ReleaseState, message: str, severity: Severity = Severity.INFO, notify: bool = True) -> None:
        """The caller's ``on_event`` (the CLI's printer) and the hooks: neither may stop the release. A printer
        that fails (its pipe closed: ``| head``) is not called again, and the journal says so, once."""
        if self.on_event is not None:
            try:
                self.on_event(Event(self.clock.iso(), state.release, state.phase.value, state.weight, message, self.app))
            except Exception as exc:  # noqa: BLE001 - whatever the caller's callback raises
                self.on_event = None
                self._append(state, records.EventRecord(**self._base(state), message=f"the release's output failed ({type(exc).__name__}); "
                                                                                     "it goes on, and `canary history` has every record"))
        if notify and self.notify is not None:
            self.notify(state, message, severity)

    def _append(self, state: ReleaseState, entry: Any) -> None:
        self.store.append(entry)
        self._say_refusal(state)

    def _say_refusal(self, state: ReleaseState) -> None:
        """Once per refusal: the cluster did not take the release's records (they are kept here)."""
        with self._said:
            refused = self.store.refused
            if refused == self._refusal_said:
                return
            self._refusal_said = refused
        if refused:
            self.event(state, f"the cluster refused the release's record ({refused}): the journal and the state are kept on this machine "
                              "and sent once the cluster takes them; meanwhile other machines see the release as it was", Severity.WARN)

    def _kube_event(self, state: ReleaseState, reason: str, message: str, warning: bool) -> None:
        """A Kubernetes Event; one the cluster refuses (RBAC without ``events``, say) is left out, and said once."""
        try:
            self.store.event(reason, message, warning=warning)
        except CanaryError as exc:
            with self._said:
                first, self._events_failed = not self._events_failed, True
            if first:
                self.event(state, f"Kubernetes Events cannot be recorded ({exc}): the release goes on without them; "
                                  "`canary history` has every decision", Severity.WARN)

    def decide(self, state: ReleaseState, message: str, reason: str | None = None) -> None:
        """A decision, durable before it is acted on."""
        self._append(state, records.Decision(**self._base(state), message=message))
        if reason is not None:
            self._kube_event(state, reason, message, state.phase in _WARNINGS)
        self._tell(state, message)

    def save(self, state: ReleaseState, message: str, severity: Severity | None = None, kube: bool = True, **details: Any) -> ReleaseState:
        """The state, saved whole, with the record of why; with a severity, people are told too
        (a Kubernetes Event unless ``kube`` is False, event hooks, alerts)."""
        state = state.model_copy(update={"updated": self.clock.iso()})
        self.store.save(state)
        self._say_refusal(state)
        self.last_saved = state
        self._append(state, records.StateChange(**self._base(state), message=message, failed_in_row=state.failed_in_row,
                                                failed_total=state.failed_total, details=details))
        if state.phase in _REASONS and severity is not None and kube:
            self._kube_event(state, _REASONS[state.phase], message, state.phase in _WARNINGS or severity in _WARNED)
        self._tell(state, message, severity or Severity.INFO, notify=severity is not None)
        if self.pusher is not None:
            self.pusher.push(state, None)
        return state

    def keep(self, state: ReleaseState, message: str) -> ReleaseState:
        """Housekeeping of a state whose story is told (a debt cleared after the end): saved whole, its time of change
        kept, with an event record of why. No state record: a timeline would show the end twice, and the release's
        pushed duration (to ``updated``) would take in what came after its end."""
        self.store.save(state)
        self._say_refusal(state)
        self.last_saved = state
        self.event(state, message)
        return state

    def event(self, state: ReleaseState, message: str, severity: Severity | None = None, kube_reason: str | None = None) -> None:
        self._append(state, records.EventRecord(**self._base(state), message=message))
        if kube_reason is not None:
            self._kube_event(state, kube_reason, message, severity in _WARNED)
        self._tell(state, message, severity or Severity.INFO, notify=severity is not None)

    def up(self, state: ReleaseState, targets: list[str], pinned: dict[str, Any], refreshed: bool, seconds: float, changes: dict[str, int]) -> None:
        self._append(state, records.Up(**self._base(state), targets=tuple(targets), pinned=pinned, refreshed=refreshed,
                                       seconds=round(seconds, 3), changes=changes))

    def tick(self, state: ReleaseState, tick: records.Tick) -> None:
        self._append(state, tick)
        if tick.outcome in (records.Outcome.FAIL, records.Outcome.ROLLBACK):
            self._kube_event(state, "CheckFailed", tick.reason, True)
        if self.pusher is not None:
            self.pusher.push(state, tick)

    def tick_record(self, state: ReleaseState, **fields: Any) -> records.Tick:
        return records.Tick(**self._base(state), **fields)

    def webhook(self, state: ReleaseState | None, result: HookResult, weight: int | None = None) -> None:
        if state is None:
            return
        base = self._base(state)
        if weight is not None:
            base["weight"] = weight
        self._append(state, records.WebhookCall(**base, name=result.name, hook_type=result.type, ok=result.ok,
                                              seconds=round(result.seconds, 3), detail=result.detail))

    def verified(self, state: ReleaseState, what: str, details: dict[str, Any]) -> None:
        self._append(state, records.Verified(**self._base(state), what=what, details=details))

    def snapshot(self, state: ReleaseState, export: str) -> None:
        self._append(state, records.Snapshot(**self._base(state), stable_hash=state.stable.hash if state.stable else "",
                                           stable_image=state.stable.image if state.stable else "", export=export))

    def request(self, state: ReleaseState, kind: str, by: str, reason: str = "") -> None:
        self._append(state, records.Request(**self._base(state), request=kind, by=by, reason=reason))
