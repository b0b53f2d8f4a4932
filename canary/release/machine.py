"""The release: a state machine that moves one app from its stable version to a new one, or back.

Phases (ARCHITECTURE.md has the table): Initializing → Progressing →
(WaitingPromotion | WaitingDecision) → Promoting → Finalising → Succeeded;
any failure → RollingBack → Failed; an abort → RollingBack → Aborted.
``Release.advance`` runs the handler of the current phase once and returns the
next state; ``_run`` owns the loop, the injected clock, the cancel token and
the requests. Every decision is recorded before it is acted on, in the
cluster, so any machine can see, steer and resume the release.

Each ``up`` pins what both tracks run (``canary:release`` in the release's
config file) and is limited to the app's own resources; rollback re-applies the
snapshot of the stack file taken when the release began, with stable pinned to
what it ran then.
"""

from __future__ import annotations

import contextlib
import random
import string
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from canary.core import analysis, naming, routing, schedule, workload
from canary.core.naming import Track
from canary.core.records import ENDED, PROMOTION, SKIPPABLE, TERMINAL, Check, Outcome, Phase, ReleaseState, TrackPin
from canary.core.routing import AT_REST, Affinity, RouteShape
from canary.core.spec import ReleaseSpec, Severity, Strategy, WebhookType
from canary.errors import (
    CanaryError,
    Cancelled,
    InvalidSpec,
    LeaseLost,
    Problem,
    Refused,
    RollbackPending,
    RouteNotAccepted,
    StackBusy,
    StackError,
    StackLocked,
    Temporary,
    broken_rules,
)
from canary.release.hooks import Hooks
from canary.release.ports import AppFacts, Clock, ClusterPort, ConfigPort, HookCaller, HookResult, LeasePort, PusherPort, StackPort, StorePort, other_urns
from canary.release.record import Event, Recorder
from canary.release.verify import Verifier

#: The phases that judge the canary: the rollback webhooks are asked in each.
ANALYSING = frozenset({Phase.PROGRESSING, Phase.WAITING_PROMOTION, Phase.WAITING_DECISION})


@dataclass(frozen=True)
class ReleaseResult:
    release: str
    phase: Phase
    weight: int
    reason: str
    checks: tuple[Check, ...] = ()
    rollback_pending: bool = False
    unapplied: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        from canary.core import exitcodes

        return exitcodes.for_phase(self.phase.value, self.rollback_pending)


def new_release_id(clock: Clock) -> str:
    import os

    return clock.now().strftime("%Y%m%dt%H%M%S") + f"-{os.getpid()}"


def _protocol_moves(state: ReleaseState) -> bool:
    """Whether the promotion changes the ``appProtocol`` stable's Services give the gateway: the canary's pin records
    another than stable's (a pin recorded before pins kept it says nothing, and moves nothing)."""
    stable, canary = state.stable, state.canary
    return (stable is not None and canary is not None and stable.app_protocol is not None and canary.app_protocol is not None
            and stable.app_protocol != canary.app_protocol)


class Release:
    """Runs (or resumes) one release of one app."""

    def __init__(
        self,
        *,
        stack: StackPort,
        config: ConfigPort,
        cluster: ClusterPort,
        store: StorePort,
        lease: LeasePort,
        hooks: HookCaller,
        provider_for: analysis.ProviderFor,
        facts: AppFacts,
        clock: Clock | None = None,
        on_event: Callable[[Event], None] | None = None,
        pusher: PusherPort | None = None,
        route_timeout: float = 60.0,
        ready_timeout: float = 300.0,
        retries: int = 3,
        retry_backoff: float = 2.0,
        lock_wait: float = 600.0,
        event_flush_timeout: float = 30.0,
        spec_of: Callable[[ReleaseState], ReleaseSpec] | None = None,
    ) -> None:
        self.stack = stack
        self.config = config
        self.store = store
        self.lease = lease
        self.provider_for = provider_for
        self.facts = facts
        self.spec: ReleaseSpec = facts.spec
        self.clock = clock or Clock()
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.lock_wait = lock_wait
        self.event_flush_timeout = event_flush_timeout
        #: an ended release's own spec, read from its snapshot of the stack config (InvalidSpec when it cannot be): the
        #: post-rollout hooks it owes are its own, not those of the release that calls them. None: the app's releases
        #: all have this one's spec
        self.spec_of = spec_of
        self.cancel = threading.Event()
        #: wakes a wait early: a request arrived (promote, pause, continue)
        self._wake = threading.Event()
        #: the requests to act on: the watch's (its thread), a signal's abort (``local``, the signal's thread), and the
        #: loop's reads; every read-modify-write of them under ``_requests_lock`` (a write in between was lost with it)
        self._requests: dict[str, dict[str, Any]] = {}
        self._requests_lock = threading.Lock()
        #: the last request of each kind acted on, as the cluster holds it: never taken again, though the watch
        #: reports it until the cluster has cleared it (a state kept on this machine delays that)
        self._taken: dict[str, dict[str, Any]] = {}
        #: requests taken while the state that carries them was kept on this machine only: cleared in the cluster
        #: once it holds that state (before, a resume elsewhere would find neither the request nor its effect)
        self._unclear: dict[str, dict[str, Any] | None] = {}
        self._skip_waiting = False  # a promote --skip-analysis waiting for the canary, said once
        self._phase = Phase.INITIALIZING
        self._in_up = False
        #: set by resume: the next `up` refreshes first (a killed `up` may have left the cluster ahead of Pulumi)
        self._refresh = False
        #: a forward step kept from its ``up`` by Pulumi's lock: (its index, when its first try began, monotonic)
        self._lock_held: tuple[int, float] | None = None
        self.recorder = Recorder(store, self.clock, stack.name, self.spec.app.name, on_event, pusher)
        self._hook_caller = hooks
        self.hooks = self._hooks_of(self.spec)
        self.recorder.notify = self.hooks.event
        self.verify = Verifier(cluster, self.clock, self.cancel, route_timeout, ready_timeout, self._note)
        self.cluster = cluster
        self._state: ReleaseState | None = None

    def _hooks_of(self, spec: ReleaseSpec) -> Hooks:
        """The webhooks and alerts of ``spec``, called and recorded by this release: its own, and an ended release's
        owed post-rollout hooks, which are that release's (``spec_of``) though this one calls them."""
        return Hooks(self._hook_caller, spec, self.clock, self.cancel, self.recorder.webhook)

    # --- entry points ------------------------------------------------------------------------

    def start(self, desired: TrackPin, snapshot: str, export: str = "", why: str = "") -> ReleaseResult:
        """Take the app's lease, check the queries, snapshot the stable state, and run the release to its end."""
        stable = self.facts.stable
        if stable is None:
            raise InvalidSpec([Problem("stack", self.stack.name, f"has not deployed {self.spec.app.name} yet: run `canary up` (or pulumi up) first")], "release")
        if desired.hash == stable.hash:
            raise InvalidSpec([Problem("workload", desired.image or desired.hash, "is what stable already runs: nothing to release")], "release")
        moved = self._port_unreachable(stable, desired)
        if moved:
            raise InvalidSpec(moved, "release")
        previous = self.store.load()
        if previous is not None and previous.phase not in ENDED:
            raise StackBusy(
                f"app {self.spec.app.name} has an unfinished release {previous.release} in phase {previous.phase}: run "
                f"`canary resume {self.stack.name} --app {self.spec.app.name}` (or `canary abort`, then resume)"
            )
        release_id = new_release_id(self.clock)
        taken_from = self.lease.acquire(release_id)
        self.lease.start_renewing()
        try:
            if previous is not None and previous.post_rollout_owed:
                # its process stopped between its end and these, and nobody resumed it: called before this release
                # replaces its state, which would drop them (a receiver hears of every end)
                self.recorder.event(previous, f"ended {previous.phase} without calling its post-rollout webhooks: they are due "
                                              f"before release {release_id}")
                self._owed_post_rollout(previous)
            warned: list[str] = []
            problems = analysis.preflight(self.spec, self.provider_for, self.facts.fields, warned) + self._gateway_problems()
            if problems:
                raise InvalidSpec(problems, f"stack {self.stack.name}")
            affinity = "".join(random.choice(string.ascii_letters) for _ in range(16)) if self.spec.analysis.session_affinity else ""
            now = self.clock.iso()
            state = ReleaseState(release=release_id, stack=self.stack.name, app=self.spec.app.name, namespace=self.spec.app.namespace,
                                 phase=Phase.INITIALIZING, stable=stable, canary=desired, snapshot=snapshot, started=now, updated=now,
                                 affinity=affinity, route=AT_REST.to_json(), before=previous.phase if previous is not None else None)
            self.recorder.snapshot(state, export=export)
            steps = schedule.describe(self.spec.analysis)
            state = self.recorder.save(state, f"release started: {desired.image or desired.hash} over stable {stable.image or stable.hash}" + (f" ({why})" if why else ""),
                                       Severity.INFO, canary=desired.image, canary_hash=desired.hash, stable=stable.image, stable_hash=stable.hash, steps=steps)
            if self.store.refused:
                # nothing is applied yet: a release that other machines cannot see (nor abort, nor resume) is not begun.
                # Ended here (and kept on this machine until the cluster takes it), it does not hold the app up.
                refused = self.store.refused
                self.recorder.save(state.model_copy(update={"phase": Phase.ABORTED, "reason": refused}),
                                   f"not started: the cluster refused the release's records: {refused}", Severity.ERROR)
                # a role that may create the state but not update it: the cluster would keep "Initializing"
                # of a release nobody holds, and send other machines to resume it
                stays = self.store.withdraw(release_id)
                kept = (f"; {stays}: the next release from this machine replaces it, or delete ConfigMap "
                        f"{naming.state_configmap(self.spec.app.name)} in {self.spec.app.namespace}") if stays else ""
                raise Refused(f"release {release_id} of {self.spec.app.name} not started, nothing was applied: the cluster refused its records "
                              f"({refused}); fix that, then release again{kept}")
            for warning in warned:  # what the preflight found that may explain a tick (a count that selects nothing)
                self.recorder.event(state, warning, Severity.WARN)
            if taken_from is not None:  # an expired holder, or a dead process of this host: say whose lease this release took
                self.recorder.event(state, f"took over the lease of {taken_from}")
            self._compact(state)
            return self._run(state)
        finally:
            self._close()

    def _port_unreachable(self, stable: TrackPin, desired: TrackPin) -> list[Problem]:
        """A release that moves the app's port reaches the new pods through stable's Services only by the port's
        name: while stable takes the new version its Services still target the old port, by name (each pod's own
        number) or, unnamed, by the old number, which no new pod serves. Named the same in both templates, or
        not moved, it is reached; otherwise every new pod is out of stable's Services (or in them on a dead port)
        as stable rolls, while the route still sends users there: refused, saying how to move it."""
        app = self.spec.app
        if stable.port is None or desired.port is None or stable.port == desired.port:
            return []
        old = workload.port_name(stable.template, app.name, app.container, stable.port)
        new = workload.port_name(desired.template, app.name, app.container, desired.port)
        if old is not None and old == new:
            return []
        said = f"named {old}" if old else "unnamed"
        return [Problem(f"{self.facts.fields}app.port", f"{stable.port} → {desired.port}", (
            f"moves the port stable's Services target, {said} in the template stable runs{f' and {new} in the new one' if new and old else ''}: "
            "while stable takes the new version they would reach no new pod on it. Name the port the same in both templates "
            f"({'keep the name ' + old if old else 'release the template with its port named first, at ' + str(stable.port)}), "
            "then move the number")
        )]

    def _gateway_problems(self) -> list[Problem]:
        """A step the app's gateways are known to serve wrongly (a mirror on Traefik answers 500 to every
        user while the route reads Accepted): refused before anything changes. The gateways' classes are
        read only when a step needs such a filter."""
        mirrored = [shape for shape in schedule.steps(self.spec.analysis) if shape.mirror]
        if not mirrored:
            return []
        reasons = routing.unsupported_features(mirrored[0], self.cluster.gateway_classes(self.spec))
        return [Problem(f"{self.facts.fields}analysis.mirror", "true", f"must be off on this gateway: {reason}") for reason in reasons]

    def resume(self, notes: Sequence[str] = ()) -> ReleaseResult:
        """Continue an interrupted release from the store (or finish rolling it back); ``notes`` (what
        the caller had to decide to resume it) are journaled, with a warning, once it has the lease."""
        state = self.store.load()
        if state is None:
            raise InvalidSpec([Problem("app", self.spec.app.name, "has no release to resume")], "resume")
        if state.phase in ENDED:
            return self._owed(state, notes) if state.post_rollout_owed else self._result(state)
        # from here, not from the loop's first turn: a signal (or an abort the watch reports) while the lease is
        # taken is judged by the phase resumed; a rollback's never cancels it (its post-rollout hooks, its lock waits)
        self._phase = state.phase
        previous = self.lease.acquire(state.release)
        self.lease.start_renewing()
        try:
            self._clear_dead_locks(state)
            self._refuse_if_locked(state)
            self.recorder.event(state, f"resuming release in phase {state.phase} at weight {state.weight}" + (f" (taken over from {previous})" if previous else ""))
            for note in notes:
                self.recorder.event(state, note, Severity.WARN)
            self._refresh = True
            if state.phase in (Phase.PROGRESSING, Phase.WAITING_PROMOTION, Phase.WAITING_DECISION):
                if state.step == 0:
                    # no step was taken yet: take the first one (judging weight 0 would judge no traffic)
                    state = state.model_copy(update={"advance": True, "shifting_to": None})
                else:
                    # the last tick's outcome is unknown and a shift may have been cut short:
                    # put the judged step back in the route (as recorded: see _reached) and judge it again
                    moved = self._schedule_moved(state)
                    if moved:
                        self.recorder.event(state, moved, Severity.WARN)
                    if other := self._resumed_matches(state):
                        self.recorder.event(state, other, Severity.WARN)
                    state = state.model_copy(update={"advance": False, "reapply": True, "shifting_to": None})
            elif state.phase is Phase.INITIALIZING and state.canary_deployed:
                # deployed and verified once, so the confirm-rollout gate said yes: as in Flagger it is not asked again
                # once the canary is up (a gate closed since would hold a release whose canary has its pods). The
                # canary is deployed again and verified, then the pre-rollout hooks run again
                state = state.model_copy(update={"reapply": True})
            elif state.phase is Phase.PROMOTED_UNVERIFIED:
                # the promotion's last steps (traffic back to stable, the canary to zero) may not have run: a step that
                # failed for good after stable took the new version ends here. They are taken again (idempotent, stable
                # is never demoted) before the end state is verified: verifying alone left traffic split for good
                state = state.model_copy(update={"phase": Phase.PROMOTING if state.promotion_step >= 2 else Phase.FINALISING})
            elif state.phase is Phase.ROLLING_BACK:
                state = state.model_copy(update={"rollback_pending": False})
            return self._run(state)
        finally:
            self._close()

    def _owed(self, state: ReleaseState, notes: Sequence[str]) -> ReleaseResult:
        """A release that ended, its process stopped before its post-rollout hooks: they are called, under the
        lease (two resumes do not both call them), and nothing else is done: the end was verified before it was saved."""
        self._phase = state.phase
        self.lease.acquire(state.release)
        self.lease.start_renewing()
        try:
            self.recorder.event(state, f"resuming release ended {state.phase}: its post-rollout webhooks were not called yet")
            for note in notes:
                self.recorder.event(state, note, Severity.WARN)
            return self._result(self._owed_post_rollout(state))
        finally:
            self._close()

    def request_abort(self, by: str) -> None:
        """An abort from this process (a signal): as if `canary abort` had been run."""
        with self._requests_lock:
            self._requests = {**self._requests, "abort": {"by": by, "local": True}}
            if self._phase not in PROMOTION and self._phase is not Phase.ROLLING_BACK:
                self._cancel_now()

    # --- the loop ----------------------------------------------------------------------------

    def _run(self, state: ReleaseState) -> ReleaseResult:
        stop = threading.Event()
        self.store.watch_requests(state.release, self._on_requests, stop)
        try:
            while state.phase not in TERMINAL:
                self._state = state
                with self._requests_lock:  # one step with an abort's look at the phase (``_on_requests``, ``request_abort``)
                    self._phase = state.phase
                    if state.phase is Phase.ROLLING_BACK:
                        # a rollback is never cancelled: a cancel set before its phase was known here (a resume's
                        # start, the watch's first report of an abort) would abandon its hooks and its waits
                        self.cancel.clear()
                try:
                    if self.lease.lost:
                        raise LeaseLost(f"release {state.release} stopped: {self.lease.lost}")
                    self._clear_taken()
                    # before the requests are read (here and by the handler): one reported after the read wakes the wait
                    self._wake.clear()
                    state = self._take_requests(state)
                    state = self.advance(state)
                except LeaseLost:
                    raise  # another process has the app (or its state): nothing more is written or applied from here
                except RollbackPending as exc:
                    return self._pending(self._where(state), str(exc))
                except Cancelled:
                    state = self._where(state)
                    if state.phase is Phase.ROLLING_BACK:
                        raise
                    continue  # the abort is taken at the top of the loop
                except CanaryError as exc:
                    failed = self._failed(state, f"{type(exc).__name__}: {exc}")
                except Exception as exc:  # noqa: BLE001 - said as a defect, and rolled back
                    # a defect: never leave traffic on the canary without a record of why
                    failed = self._failed(state, f"internal error ({type(exc).__name__}: {exc}); please report it")
                else:
                    continue
                if isinstance(failed, ReleaseResult):
                    return failed
                state = failed
            self._clear_taken()
            if self._phase is Phase.ROLLING_BACK and (late := self._requests.get("abort")) is not None:
                self._ignore_abort(state, late)  # accepted while the rollback's last turn ran
            return self._result(self._post_rollout(state))
        finally:
            stop.set()

    def _failed(self, state: ReleaseState, reason: str) -> ReleaseState | ReleaseResult:
        """After a phase's handler failed: the rollback begun (or, once stable runs the new version, its
        verification); "rollback pending" when the rollback itself cannot go on here."""
        state = self._where(state)
        if state.phase is Phase.ROLLING_BACK:
            # the rollback's own step failed outside its retries (a record, the config file): resume completes it
            return self._pending(state, reason)
        try:
            return self._after_failure(state, reason)
        except LeaseLost:
            raise
        except Exception as again:
            if not _may_roll_back(state):
                raise  # stable already runs the new version: never turned into a rollback
            return self._pending(self._where(state), f"{reason}; then, beginning the rollback: {type(again).__name__}: {again}")

    def _pending(self, state: ReleaseState, reason: str) -> ReleaseResult:
        """The rollback cannot go on in this process: "rollback pending" (exit 4), which ``resume`` completes.
        Saved if it can be: what failed may be the records themselves; the result says it either way."""
        if state.phase is not Phase.ROLLING_BACK:
            state = state.model_copy(update={"phase": Phase.ROLLING_BACK, "rollback_to": Phase.FAILED, "rollback_step": 0, "rolled_back_from": state.phase})
        state = state.model_copy(update={"rollback_pending": True, "reason": reason})
        try:
            state = self.recorder.save(state, f"rollback pending: {reason}", Severity.ERROR)
        except LeaseLost:
            raise  # another process has the app: its release, not this one, says what is pending
        except Exception:  # noqa: BLE001 - the result below still says it, and the state is what the store last took
            pass
        return self._result(state)

    def _where(self, state: ReleaseState) -> ReleaseState:
        """Where the release stands after a handler failed midway: its last saved state."""
        saved = self.recorder.last_saved
        return saved if saved is not None and saved.release == state.release else state

    def _after_failure(self, state: ReleaseState, reason: str) -> ReleaseState:
        if state.phase is Phase.PROMOTING and state.promotion_step >= 2:
            # stable already runs the new version: never demote it; verify what can be verified
            return self.recorder.save(state.model_copy(update={"phase": Phase.FINALISING, "reason": reason}), f"promotion step failed after stable took the new version: {reason}; verifying")
        if state.phase is Phase.FINALISING:
            return self.recorder.save(state.model_copy(update={"phase": Phase.PROMOTED_UNVERIFIED, "reason": reason}),
                                      f"promoted, but the end state could not be verified: {reason}; run canary resume to verify", Severity.ERROR)
        return self._begin_rollback(state, reason)

    def advance(self, state: ReleaseState) -> ReleaseState:
        """Run the handler of the current phase once."""
        handler = {
            Phase.INITIALIZING: self._initializing,
            Phase.PROGRESSING: self._progressing,
            Phase.WAITING_PROMOTION: self._waiting_promotion,
            Phase.WAITING_DECISION: self._waiting_decision,
            Phase.PROMOTING: self._promoting,
            Phase.FINALISING: self._finalising,
            Phase.ROLLING_BACK: self._rolling_back,
        }[state.phase]
        if state.phase in (*ANALYSING, Phase.INITIALIZING) and (asked := self.hooks.rollback_asked(state)) is not None:
            # the rollback webhooks are asked in every phase that analyses, before its handler, and while the release
            # waits for its confirm-rollout gate or retries its pre-rollout hooks (Flagger's Waiting and Progressing)
            return self._begin_rollback(state, f"rollback webhook {asked} asked for a rollback")
        return handler(state)

    # --- requests and cancelling -------------------------------------------------------------

    def _on_requests(self, requests: dict[str, dict[str, Any]]) -> None:
        """From the watch on the requests ConfigMap (another thread): an abort cancels at once."""
        # a request already taken, still in the cluster until the state that carries it is, is neither taken nor
        # wakes anything again (taken again, one promote approved a blue/green switch and then promoted it undecided)
        with self._requests_lock:
            requests = {k: v for k, v in requests.items() if self._taken.get(k) != v}
            local = {k: v for k, v in self._requests.items() if v.get("local")}
            self._requests = {**requests, **local}
            # judged and acted on under the lock the phase changes under: a cancel decided in the phase before a
            # rollback, set once the rollback had cleared it, cut its post-rollout hooks
            if "abort" in self._requests and self._phase not in PROMOTION and self._phase is not Phase.ROLLING_BACK:
                self._cancel_now()
        if requests:
            self._wake.set()

    def _cancel_now(self) -> None:
        """Under ``_requests_lock``: ``_in_up`` is let go under it too, so the interrupt reaches this ``up``'s CLI,
        never a later one's (a rollback's, which it would stop)."""
        self.cancel.set()
        self._wake.set()
        if self._in_up:
            self.stack.interrupt()

    def _take_requests(self, state: ReleaseState) -> ReleaseState:
        requests = dict(self._requests)
        abort = requests.get("abort")
        if abort is not None and state.phase is Phase.ROLLING_BACK:
            self._ignore_abort(state, abort)
        elif abort is not None and state.phase not in TERMINAL:
            if state.phase in PROMOTION:
                self._clear("abort", abort, carried=False)
                self.recorder.event(state, f"abort ignored: the release is already {state.phase} (the new version passed every check)")
                self.cancel.clear()
                return state
            by = abort.get("by") or "a user"
            self.recorder.request(state, "abort", by, abort.get("reason", ""))
            state = self._begin_rollback(state, f"aborted by {by}", to=Phase.ABORTED)
            self._clear("abort", abort)  # only now: an abort cleared before its rollback was saved was lost with it
            return state
        for kind, paused in (("pause", True), ("continue", False)):
            request = requests.get(kind)
            if request is not None and state.phase not in SKIPPABLE:
                # past its steps (promoting, rolling back): nothing holds there, and a finished release would say PAUSED
                self._clear(kind, request, carried=False)
                self.recorder.event(state, f"{kind} by {request.get('by') or 'a user'} ignored: the release is already {state.phase}")
            elif request is not None:
                if state.paused != paused:
                    self.recorder.request(state, kind, request.get("by", ""), request.get("reason", ""))
                    word = "paused: the step holds, analysis goes on" if paused else "continued"
                    state = self.recorder.save(state.model_copy(update={"paused": paused}), f"release {word} (by {request.get('by') or 'a user'})", Severity.WARN)
                # only once the state that carries it is in the cluster: a request cleared before was lost with a kill.
                # (Even when it changes nothing here: the state saying so may be this machine's alone, a resume's local copy)
                self._clear(kind, request)
        promote = requests.get("promote")
        if promote is not None and promote.get("skip_analysis") and state.phase in SKIPPABLE:
            if state.phase is Phase.INITIALIZING and not state.canary_deployed:
                # left in the cluster until it is taken: cleared there, the watch's next report would drop it
                if not self._skip_waiting:
                    self.recorder.event(state, "promote --skip-analysis waits until the canary is deployed")
                    self._skip_waiting = True
                return state
            reason = promote.get("reason", "")
            self.recorder.request(state, "promote --skip-analysis", promote.get("by", ""), reason)
            state = self._to_promoting(state, f"promoting without analysis (by {promote.get('by') or 'a user'}): {reason}", Severity.WARN,
                                       forced=f"skip-analysis: {reason}")
            self._clear("promote", promote)
            return state
        return state

    def _ignore_abort(self, state: ReleaseState, abort: dict[str, Any]) -> None:
        """An abort that reached a release already rolling back (after a failure, or an abort already taken): it
        ends as that rollback says. Said, and cleared once the cluster holds the state (it may be this machine's
        only); left in the requests, a resume of a pending rollback took it for an abort cancelling it."""
        if self._unclear.get("abort") == abort:
            return  # the one this rollback carries out, reported again until the cluster has cleared it
        if state.rollback_to is not Phase.ABORTED:  # (an aborted release's rollback, resumed: the abort it carries out, or another)
            self.recorder.event(state, f"abort by {abort.get('by') or 'a user'} ignored: already rolling back ({state.reason})")
        if abort.get("local"):
            with self._requests_lock:
                self._requests.pop("abort", None)  # a signal: nothing of it is in the cluster
        else:
            self._clear("abort", abort)

    def _clear(self, kind: str, acted_on: dict[str, Any] | None, carried: bool = True) -> None:
        """The request of ``kind`` this release acted on: cleared in the cluster (that one, not one written since)
        once the state that carries it is the cluster's; at once when it changed nothing (refused, or ignored), unless
        it is one already waiting for its state (reported again by the watch, its effect already saved here)."""
        request = None if acted_on is None or acted_on.get("local") else acted_on
        with self._requests_lock:
            if self._requests.get(kind) == acted_on:  # (equal: the watch may have reported it again since it was read)
                self._requests.pop(kind, None)
            if request is not None:
                self._taken[kind] = request
        if carried or kind in self._unclear:
            self._unclear[kind] = request
            self._clear_taken()
            return
        try:
            self.store.clear_request(kind, request)
        except CanaryError:
            self._unclear[kind] = request  # left in the cluster (not taken again): cleared at a later turn of the loop

    def _clear_taken(self) -> None:
        if not self._unclear or not self.store.state_taken():
            return
        for kind, taken in list(self._unclear.items()):
            try:
                self.store.clear_request(kind, taken)
            except CanaryError:
                continue  # left in the cluster: tried again at the next turn of the loop
            self._unclear.pop(kind, None)

    def _wait(self, seconds: float) -> bool:
        """Wait up to ``seconds``; stops early (True) on an abort, or on any request (``_wake``) reported since the
        requests were last read: ``_wake`` is cleared before each read, not here (a promote reported while the
        handler ran between its read and this wait was left for the whole interval, then refused by a failed tick)."""
        end = self.clock.monotonic() + seconds
        while (left := end - self.clock.monotonic()) > 0:
            if self.cancel.is_set():
                return True
            if self._wake.is_set():
                return False
            self.clock.sleep(min(0.2, left))
        return self.cancel.is_set()

    # --- applying ------------------------------------------------------------------------------

    def _pins(self, state: ReleaseState, *, stable: TrackPin | None = None, canary: TrackPin | None = None, replicas: int = 0,
              shape: RouteShape | None = None) -> dict[str, Any]:
        assert state.stable is not None
        pins: dict[str, Any] = {"release": state.release, "stable": (stable or state.stable).program_pin(),
                                "route": (shape if shape is not None else self._recorded(state)).to_json(values=True)}
        if canary is not None:
            pins["canary"] = {**canary.program_pin(), "replicas": replicas}
        return pins

    def _apply(self, state: ReleaseState, pins: dict[str, Any], parts: tuple[str, ...] | None, cancellable: bool = True,
               refresh: bool = False) -> None:
        """One ``up`` with the release config file (the snapshot plus these pins), limited to the
        app's resources ``parts`` (None: the whole stack); ``refresh`` reads them back from the cluster
        first (the first ``up`` after a resume always does)."""
        targets = self.facts.targets(*parts) if parts is not None else None
        # the whole stack, but never another app's resources: their releases pin them in files of their own
        exclude = self._others() or None if parts is None else None
        refresh = refresh or self._refresh
        path = self.config.write(state.release, state.snapshot, pins)
        # in the up before the last look at the token: an abort from then on interrupts the CLI, or (not started
        # yet) has it interrupted as it starts; it was lost in between, and the whole up ran
        self._in_up = cancellable
        try:
            if cancellable and self.cancel.is_set():
                raise Cancelled("stopped by an abort")
            self.lease.fence()  # never an `up` by a release that another process has taken the app from
            result = self.stack.up(config_file=path, targets=targets, exclude=exclude, refresh=refresh, cancel=self.cancel if cancellable else None)
        finally:
            with self._requests_lock:  # see _cancel_now
                self._in_up = False
            self.config.discard(path)  # the next up writes a file of its own
        self._refresh = False
        summary = {"stable": pins["stable"]["hash"], "canary": pins.get("canary", {}).get("hash"), "replicas": pins.get("canary", {}).get("replicas", 0),
                   "route": RouteShape.from_json(pins["route"]).to_json()}  # as recorded: no match value
        self.recorder.up(state, list(parts or ("all",)), summary, refresh, result.seconds, result.changes)

    def _retrying(self, state: ReleaseState, what: str, action: Callable[[], Any], rollback: bool = False,
                  lock_wait: float | None = None) -> Any:
        """Run ``action``, retrying temporary failures with back-off (Pulumi's lock: waited on for up to
        ``lock_wait``, the release's unless given). In a rollback every error is retried, and running out
        raises RollbackPending (from the StackLocked when it was the lock)."""
        delay = self.retry_backoff
        attempt = 0
        lock_deadline = self.clock.monotonic() + (self.lock_wait if lock_wait is None else lock_wait)
        cancel_seen = False
        while True:
            attempt += 1
            try:
                return action()
            except (Cancelled, LeaseLost):
                raise
            except StackLocked as exc:
                if self._clear_dead_locks(state):
                    # a CLI of this host killed mid-update (an abort's interrupt outlasting its grace): its lock
                    # would be waited on for lock_wait, traffic left where the abort found it
                    self._refresh = True
                    attempt -= 1
                    continue
                if self.clock.monotonic() >= lock_deadline:
                    if rollback:
                        raise RollbackPending(f"{what}: {exc}; run canary resume {self.stack.name} once the other update is done") from exc
                    raise
                self.recorder.event(state, f"{what}: waiting for Pulumi's lock ({exc})")
                self._wait_unlocked(lock_deadline, stop_on_cancel=not cancel_seen)
                cancel_seen = self.cancel.is_set()
                attempt -= 1
                continue
            except CanaryError as exc:
                if not rollback and not isinstance(exc, Temporary):
                    raise
                if isinstance(exc, InvalidSpec) or attempt >= self.retries:
                    if rollback:
                        raise RollbackPending(f"{what} could not be applied after {attempt} attempts: {exc}; run canary resume {self.stack.name} "
                                              f"--app {self.spec.app.name} once that is fixed") from exc
                    raise
                self.recorder.event(state, f"{what} failed (attempt {attempt} of {self.retries}): {exc}; retrying in {delay:g}s")
                self.clock.sleep(delay)
                delay *= 2

    def _clear_dead_locks(self, state: ReleaseState) -> bool:
        """Pulumi's locks held by dead processes of this host, cleared and journaled; True when there were some."""
        cleared = self.stack.clear_dead_locks()
        for lock in cleared:
            self.recorder.event(state, f"cleared Pulumi's stale lock of pid {lock['pid']} on {lock['hostname']} (the process is gone)")
        return bool(cleared)

    def _refuse_if_locked(self, state: ReleaseState) -> None:
        """A resume does not wait for a Pulumi lock that nothing here will see let go: another host's (a runner killed
        inside an ``up`` on another machine; this host's dead ones were just cleared). Waited for, it failed the
        step after ``lock_wait``, rolled the release back, and the rollback's ``up`` waited as long again before the
        route was written around Pulumi. Refused before anything is applied (exit 3), naming the holder. Not a
        rollback whose traffic may still be on the canary: it goes on, its traffic step written around Pulumi if
        the lock outlasts the route timeout. (Only a file backend's locks are read; another backend's lock is met by the
        ``up``.)"""
        if state.phase is Phase.ROLLING_BACK and state.rollback_step < 2:
            return
        try:
            self.stack.check_unlocked()
        except StackLocked as exc:
            name, app = self.stack.name, self.spec.app.name
            raise StackBusy(
                f"release {state.release} of {app} not resumed, nothing was applied: {exc}. If that update still runs, resume once it "
                f"ends; if its runner is gone (killed inside an `up`), run `pulumi cancel --stack {name}` once no update of the stack "
                f"runs, then `canary resume {name} --app {app}`"
            ) from exc

    def _wait_unlocked(self, deadline: float, stop_on_cancel: bool) -> None:
        """Until Pulumi's lock is let go or ``deadline``, in slices of a second so that an abort is
        not kept waiting (once: an action that cannot be cancelled goes on waiting after it)."""
        while (left := deadline - self.clock.monotonic()) > 0:
            if stop_on_cancel and self.cancel.is_set():
                return
            if self.stack.wait_unlocked(min(1.0, left)):
                return

    def _canary_size(self, shape: RouteShape | None = None) -> int:
        app = self.spec.app
        base = app.autoscaler.min_replicas if app.autoscaler else app.replicas
        if app.canary_replicas is not None:
            # at all traffic (blue/green's switch, a weight of 100) the canary serves every user: at least the full size
            return max(app.canary_replicas, base) if shape is not None and shape.weight == 100 else app.canary_replicas
        if schedule.full_size(self.spec.analysis):
            return base
        weights = schedule.weights(self.spec.analysis)
        weight = shape.weight if shape is not None and shape.weight else (weights[0] if weights else 100)
        return workload.canary_replicas(base, weight)

    def _switch_size(self) -> tuple[int, int]:
        """How many pods the canary needs before every request goes to it (blue/green's switch, a promotion that changes
        the protocol), and how many it runs. Stable's size as the app declares it, or as stable runs now when larger
        (an autoscaled stable under load runs above its minimum); never fewer than the canary runs (its own autoscaler
        may have grown it: an ``up`` at a smaller size would shrink it as all traffic arrives). Read from the cluster;
        unanswered, the declared size and the recorded one."""
        live_stable = live_canary = 0
        with contextlib.suppress(CanaryError):
            live_stable = int(self.verify.cluster.deployment(self.spec, Track.STABLE).get("replicas") or 0)
            live_canary = int(self.verify.cluster.deployment(self.spec, Track.CANARY).get("replicas") or 0)
        return max(self._stable_size(), live_stable, live_canary), live_canary

    def _stable_size(self) -> int:
        app = self.spec.app
        return app.autoscaler.min_replicas if app.autoscaler else app.replicas

    def _steps(self, state: ReleaseState) -> list[RouteShape]:
        affinity = None
        if self.spec.analysis.session_affinity is not None:
            sa = self.spec.analysis.session_affinity
            affinity = Affinity(sa.cookie_name, state.affinity, int(sa.max_age.total_seconds()))
        return schedule.steps(self.spec.analysis, affinity)

    def _at_rest(self, state: ReleaseState) -> RouteShape:
        """The route between releases; after a release with session affinity, its cookie is expired on answers."""
        sa = self.spec.analysis.session_affinity
        return RouteShape(expire_cookie=sa.cookie_name) if sa is not None and state.affinity else AT_REST

    def _reached(self, state: ReleaseState) -> RouteShape:
        """The route of the step the release reached, as its state recorded it: what a resume re-applies and judges
        again. Not the schedule's step of that number: a resume may go on with another schedule than the release's
        (its snapshot refused, the stack file's current analysis taken), whose step of that number is another
        weight (re-applied, traffic jumped to it unjudged) or none at all."""
        if state.route:
            return self._recorded(state)
        return self._steps(state)[state.step - 1]  # a state saved without its route: the schedule is all there is

    def _recorded(self, state: ReleaseState) -> RouteShape:
        """The route the state recorded, made whole: its A/B matches are the spec's, whose values records never hold
        (``routing.NOT_RECORDED``); a resume journals matches on other names than the recorded ones (``_resumed_matches``)."""
        return RouteShape.from_json(state.route).with_matches(schedule.matches(self.spec.analysis))[0]

    def _resumed_matches(self, state: ReleaseState) -> str:
        """What a resume journals when the analysis it goes on with matches on other names or types than the route the
        state recorded ("" when not): the analysis's matches are the ones applied."""
        return RouteShape.from_json(state.route).with_matches(schedule.matches(self.spec.analysis))[1]

    def _following(self, state: ReleaseState, steps: Sequence[RouteShape]) -> int:
        """The step after the one reached (1-based; past the last one, promotion): the schedule's next while its
        step is the route the state recorded. A weighted canary resumed with other weights (analysis.stepWeights,
        stepWeight or maxWeight changed) goes on from the weight it reached and was judged at, to the schedule's
        first heavier step: none is skipped past unjudged, no traffic is taken back, and past the schedule's last
        weight comes the promotion gate. Refusing such a resume would leave the canary's share served unjudged,
        with no process to act on an abort (only a resume takes it). Iterations (A/B, blue/green) are counted."""
        if state.step == 0 or not state.route or self.spec.analysis.kind is not Strategy.CANARY:
            return state.step + 1
        reached = self._recorded(state)
        if state.step <= len(steps) and steps[state.step - 1] == reached:
            return state.step + 1
        return next((index for index, shape in enumerate(steps, 1) if shape.weight > reached.weight), len(steps) + 1)

    def _schedule_moved(self, state: ReleaseState) -> str:
        """What a resume journals when its schedule's step of the number reached is not the route the state
        recorded ("" when it is): what it re-applies, and where the release goes next."""
        steps = self._steps(state)
        if not state.route or state.step == 0:
            return ""
        reached = self._recorded(state)
        if state.step <= len(steps) and steps[state.step - 1] == reached:
            return ""
        has = f"{steps[state.step - 1].describe()} as step {state.step}" if state.step <= len(steps) else f"no step {state.step}"
        following = self._following(state, steps)
        then = f"step {following} ({steps[following - 1].describe()})" if following <= len(steps) else "the promotion gate"
        return (f"the schedule this resume goes on with ({schedule.describe(self.spec.analysis)}, {self.facts.fields}analysis) has {has}, "
                f"where the release reached {reached.describe()}: that route is re-applied and judged, then the release goes on to {then}")

    # --- phases --------------------------------------------------------------------------------

    def _initializing(self, state: ReleaseState) -> ReleaseState:
        assert state.canary is not None
        if not state.canary_deployed:
            # As in Flagger, the confirm-rollout gate is asked before the canary is scaled up (and never again after).
            gate = self.hooks.gate(state, WebhookType.CONFIRM_ROLLOUT)
            if gate is not None:
                # Waiting, as Flagger's Canary from its first no: saved at once (a resume elsewhere asks as Waiting, status shows it)
                said = f"waiting: confirm-rollout webhook {gate.name} said no ({gate.detail})"
                if state.waiting:
                    self.recorder.event(state, said, Severity.WARN)
                else:
                    state = self.recorder.save(state.model_copy(update={"waiting": True}), said, Severity.WARN)
                self._wait(self.spec.analysis.interval.total_seconds())
                return state
        if not state.canary_deployed or state.reapply:
            replicas = self._canary_size()
            canary = state.canary
            self.recorder.decide(state, f"deploying canary {canary.image or canary.hash} ({replicas} pods) at weight 0")
            self._retrying(state, "deploying the canary", lambda: self._apply(state, self._pins(state, canary=canary, replicas=replicas, shape=AT_REST), ("canary", "route")))
            self._retrying(state, "the canary's readiness", lambda: self.verify.track(self.spec, Track.CANARY, canary.hash, replicas))
            self._retrying(state, "the route at rest", lambda: self.verify.route(self.spec, AT_REST))
            self.recorder.verified(state, "canary ready", {"hash": canary.hash, "replicas": replicas})
            # the gate's yes is saved with the canary: Waiting no more (a hook's phase, `status`), and a resume asks it no more
            state = self.recorder.save(state.model_copy(update={"canary_deployed": True, "waiting": False, "reapply": False, "canary_replicas": replicas,
                                                               "route": AT_REST.to_json()}),
                                       f"canary {canary.image or canary.hash} is ready at weight 0", Severity.INFO)
        failed = [r for r in self.hooks.run(state, WebhookType.PRE_ROLLOUT) if not r.ok]
        if failed:
            return self._count_failure(state, f"pre-rollout webhook {failed[0].name} failed: {failed[0].detail}", wait=True)
        if self.spec.analysis.skip_analysis:
            return self._to_promoting(state, "analysis.skipAnalysis: promoting without analysis", Severity.WARN, forced="analysis.skipAnalysis")
        # the pre-rollout hooks passed: a row of their failures ends here (each still counts against failureLimit)
        return self.recorder.save(state.model_copy(update={"phase": Phase.PROGRESSING, "advance": True, "step": 0, "failed_in_row": 0}), "analysis starts", Severity.INFO)

    def _progressing(self, state: ReleaseState) -> ReleaseState:
        step_start = self.clock.monotonic()
        steps = self._steps(state)
        if state.reapply:
            state = self._shift(state, state.step, self._reached(state), again=True)
        if state.advance and not state.paused:
            following = self._following(state, steps)
            if following > len(steps) or schedule.is_switch(self.spec.analysis, following):
                return self._promotion_gate(state)  # blue/green's switch comes behind it, as in Flagger
            # weights only, as in Flagger: an A/B or blue/green iteration moves no more traffic to the canary (and a
            # Flagger canary imported with such a hook would stall its iterations on a gate it never asked)
            weighted = self.spec.analysis.kind is Strategy.CANARY
            gate = self.hooks.gate(state, WebhookType.CONFIRM_TRAFFIC_INCREASE) if weighted else None
            if gate is not None:
                self.recorder.event(state, f"holding at weight {state.weight}: confirm-traffic-increase webhook {gate.name} said no ({gate.detail}); analysis goes on",
                                    Severity.WARN, kube_reason="Progressing")
            else:
                state = self._step(state, following, steps[following - 1])
        if state.step == 0:
            # no traffic reaches the canary yet: nothing to judge, ask again an interval after this turn began (a first
            # step kept waiting for Pulumi's lock has waited part of it)
            self._wait(self.spec.analysis.interval.total_seconds() - (self.clock.monotonic() - step_start))
            return state
        return self._analyse(state, since=step_start)

    def _waiting_promotion(self, state: ReleaseState) -> ReleaseState:
        request = self._requests.get("promote")
        if request is not None:
            by = request.get("by") or "canary promote"
            passed = not state.promote_needs_force
            if passed or request.get("force"):
                self.recorder.request(state, "promote" + (" --force" if request.get("force") and not passed else ""), by, request.get("reason", ""))
                forced = "" if passed else f"force: {request.get('reason', '')}"
                state = self._approved(state, f"promotion approved by {by}" + (f" despite a failed last tick: {request.get('reason')}" if forced else ""),
                                       Severity.WARN if forced else Severity.INFO, forced=forced)
                self._clear("promote", request)  # once the promotion is saved: cleared before, a kill lost it
                return state
            self._clear("promote", request, carried=False)
            self.recorder.event(state, f"promotion by {by} refused: the last tick did not pass ({state.reason or 'see canary status'}); "
                                       "wait for a passing tick, or promote --force --reason TEXT", Severity.WARN)
        elif state.advance and not state.paused and self.hooks.gate(state, WebhookType.CONFIRM_PROMOTION) is None:
            return self._approved(state, "confirm-promotion webhooks approved", Severity.INFO)
        if state.reapply:
            state = self._shift(state, state.step, self._reached(state), again=True)
        return self._analyse(state)

    @staticmethod
    def _asked_elsewhere(state: ReleaseState, request: dict[str, Any]) -> bool:
        """Whether a promote was written for another question than the one ``state`` asks (another phase or step);
        one written by an earlier version says nothing, and is taken."""
        return request.get("phase") is not None and (request.get("phase"), request.get("step")) != (state.phase.value, state.step)

    def _waiting_decision(self, state: ReleaseState) -> ReleaseState:
        request = self._requests.get("promote")
        asked = (request.get("phase"), request.get("step")) if request is not None else (None, None)
        if request is not None and self._asked_elsewhere(state, request):
            # written for another question (every check passed, WaitingPromotion; or another step's decision) and
            # still pending as this one is asked: a person decides an inconclusive release only by seeing it
            self._clear("promote", request, carried=False)
            self.recorder.event(state, f"promotion by {request.get('by') or 'canary promote'} not taken: it was asked of the release in "
                                       f"{asked[0]} at step {asked[1]}, and now an inconclusive tick waits for a decision at step {state.step} "
                                       f"({state.reason}); promote again to decide it", Severity.WARN)
            request = None
        if request is not None and state.promote_needs_force and not request.get("force"):
            # the person decides an inconclusive release; a tick failed since: that is no longer the question asked
            self._clear("promote", request, carried=False)
            self.recorder.event(state, f"promotion by {request.get('by') or 'canary promote'} refused: the last tick failed ({state.reason}); "
                                       "wait for another tick, or promote --force --reason TEXT", Severity.WARN)
        elif request is not None:
            by = request.get("by") or "canary promote"
            forced = " --force" if state.promote_needs_force else ""
            self.recorder.request(state, "promote" + forced, by, request.get("reason", ""))
            what = "release promoted despite a failed last tick" if forced else "inconclusive release promoted"
            state = self._to_promoting(state, f"{what} by {by}", Severity.WARN, forced=f"decided by {by}: {request.get('reason', '')}")
            self._clear("promote", request)  # once the promotion is saved: cleared before, a kill lost it
            return state
        since = _parse(state.deciding_since)
        bound = self.spec.analysis.decision_timeout
        if since is not None and (self.clock.now() - since) > bound:
            return self._begin_rollback(state, f"inconclusive and no decision within {bound}: {state.reason}")
        if state.reapply:
            state = self._shift(state, state.step, self._reached(state), again=True)
        return self._analyse(state)

    def _promotion_gate(self, state: ReleaseState) -> ReleaseState:
        if schedule.is_switch(self.spec.analysis, state.step):
            # the confirm-promotion gate was asked before the switch
            return self._to_promoting(state, "green served all traffic for an interval and every check passed: promoting", Severity.INFO)
        gate = self.hooks.gate(state, WebhookType.CONFIRM_PROMOTION)
        if gate is None:
            iterations = self.spec.analysis.iterations
            passed = f"in each of the {iterations} iterations" if iterations is not None else f"up to weight {state.weight}"
            return self._approved(state, f"every check passed {passed}: promoting", Severity.INFO)
        # asked again after the next passing tick, not at once: a hook's "no" (or its timeout) once per interval, as in Flagger
        return self.recorder.save(
            state.model_copy(update={"phase": Phase.WAITING_PROMOTION, "advance": False}),
            f"waiting for promotion: confirm-promotion webhook {gate.name} said no ({gate.detail}); approve with "
            f"canary promote {self.stack.name} --app {self.spec.app.name}", Severity.WARN)

    def _approved(self, state: ReleaseState, message: str, severity: Severity, forced: str = "") -> ReleaseState:
        """The promotion approved (the gate, a person): into Promoting; a blue/green release not switched yet switches
        first, judged for an interval at all traffic (then promotes on a passing tick, rolls back as at any step). A
        forced promotion goes straight to Promoting, which switches unjudged: a person decided."""
        steps = self._steps(state)
        if forced or not schedule.is_switch(self.spec.analysis, len(steps)) or state.step >= len(steps):
            return self._to_promoting(state, message, severity, **({"forced": forced} if forced else {}))
        # said once (the decision below is the Event and the alert)
        state = self.recorder.save(state.model_copy(update={"phase": Phase.PROGRESSING}),
                                   f"{message.removesuffix(': promoting')}: blue/green switches all traffic to the new version, "
                                   "judged for an interval before stable takes it")
        self.recorder.decide(state, "blue/green: all traffic switches to the new version at once, judged for an interval before stable takes it",
                             "Progressing")
        return self._shift(state, len(steps), steps[-1])

    def _to_promoting(self, state: ReleaseState, message: str, severity: Severity, **update: Any) -> ReleaseState:
        """Into Promoting, unless an abort is pending: once Promoting is saved an abort is ignored (the new version
        passed), so one accepted while this phase ran (during a rollback webhook, a pre-rollout hook, a signal) is
        taken first. The cluster is asked too: the watch reports a request within a second, not at once."""
        try:
            pending = self.store.requests(state.release).get("abort")
        except CanaryError:
            pending = None  # unanswered: the watch's view, as for every other request
        with self._requests_lock:
            if pending is not None and pending != self._taken.get("abort") and "abort" not in self._requests:
                self._requests = {**self._requests, "abort": pending}
        if "abort" in self._requests:
            return self._take_requests(state)
        return self.recorder.save(state.model_copy(update={"phase": Phase.PROMOTING, **update}), message, severity)

    def _promoting(self, state: ReleaseState) -> ReleaseState:
        """Stable takes the canary's template (awaited Ready), then all traffic returns to stable
        (verified accepted), then the canary goes to zero; blue/green first switches all traffic to
        the (full-size) canary at once."""
        canary = state.canary
        assert canary is not None
        replicas = state.canary_replicas or self._canary_size()
        moves = _protocol_moves(state)
        if state.promotion_step == 0:
            if (self.spec.analysis.kind is Strategy.BLUE_GREEN or moves) and state.weight != 100:
                # blue/green not switched as a judged step (skipAnalysis, a forced or decided promotion): switched here, as it
                # stands. A new appProtocol: stable's Services take it with the new version, and stable's old pods, serving
                # while it rolls, do not speak it: every request goes to the canary, at stable's size, until stable is Ready
                switch = schedule.SWITCH
                full, live_canary = self._switch_size()
                green = "green" if self.spec.analysis.kind is Strategy.BLUE_GREEN else "the canary"
                if max(replicas, live_canary) < full:
                    # green takes every request at the switch: at stable's size first (`canaryReplicas` sized it for the
                    # testers' or mirrored requests), ready before a user reaches it
                    replicas = full
                    self._retrying(state, f"{green} at full size", lambda: self._apply(state, self._pins(state, canary=canary, replicas=full), ("canary",), cancellable=False))
                    self._retrying(state, f"{green}'s readiness", lambda: self.verify.track(self.spec, Track.CANARY, canary.hash, full, cancellable=False))
                    state = self.recorder.save(state.model_copy(update={"canary_replicas": full}), f"{green} scaled to stable's size ({full} pods) for the switch")
                why = (f"the new version is spoken {canary.app_protocol or 'no appProtocol'} where stable is spoken "
                       f"{(state.stable.app_protocol if state.stable else None) or 'no appProtocol'}: all traffic switches to it while stable takes it"
                       if moves and self.spec.analysis.kind is not Strategy.BLUE_GREEN else "blue/green: all traffic switches to the new version at once")
                self.recorder.decide(state, why, "Promoting")
                self._retrying(state, "the switch", lambda: self._apply(state, self._pins(state, canary=canary, replicas=replicas, shape=switch), ("route",), cancellable=False))
                self._retrying(state, "the switch", lambda: self.verify.route(self.spec, switch, cancellable=False))
                state = state.model_copy(update={"weight": 100, "route": switch.to_json()})
            state = self.recorder.save(state.model_copy(update={"promotion_step": 1}), "promotion: the stable Deployment takes the new version")
        if state.promotion_step == 1:
            self.recorder.decide(state, f"promoting: the stable Deployment takes {canary.image or canary.hash}", "Promoting")
            self._retrying(state, "stable taking the new version",
                           lambda: self._apply(state, self._pins(state, stable=canary, canary=canary, replicas=replicas), ("stable",), cancellable=False))
            self._retrying(state, "stable's readiness", lambda: self.verify.track(self.spec, Track.STABLE, canary.hash, self._stable_size(), cancellable=False))
            state = self.recorder.save(state.model_copy(update={"promotion_step": 2}), f"stable runs {canary.image or canary.hash} and is ready")
        rest = self._at_rest(state)
        if state.promotion_step == 2:
            self._retrying(state, "traffic back to stable",
                           lambda: self._apply(state, self._pins(state, stable=canary, canary=canary, replicas=replicas, shape=rest), ("route",), cancellable=False))
            self._retrying(state, "the route at rest", lambda: self.verify.route(self.spec, rest, cancellable=False))
            state = self.recorder.save(state.model_copy(update={"promotion_step": 3, "weight": 0, "route": rest.to_json()}),
                                       "all traffic is on stable (route at rest, accepted)")
        self._retrying(state, "the canary to zero", lambda: self._apply(state, self._pins(state, stable=canary, shape=rest), ("app",), cancellable=False))
        return self.recorder.save(state.model_copy(update={"phase": Phase.FINALISING, "canary_replicas": 0}), "canary scaled to zero")

    def _finalising(self, state: ReleaseState) -> ReleaseState:
        canary = state.canary
        assert canary is not None
        try:
            details = self._retrying(state, "verifying the end state", lambda: self.verify.end_state(self.spec, canary.hash, self._stable_size(), cancellable=False))
        except CanaryError as exc:
            return self.recorder.save(state.model_copy(update={"phase": Phase.PROMOTED_UNVERIFIED, "reason": str(exc)}),
                                      f"promoted {canary.image or canary.hash}, but the end state could not be verified: {exc}; run canary resume to verify", Severity.ERROR)
        self.recorder.verified(state, "end state", details)
        self._prune(state, keep=(canary,))
        message = f"promoted {canary.image or canary.hash}: route at rest, canary has no pods, stable verified" + (f" ({state.forced})" if state.forced else "")
        return self.recorder.save(state.model_copy(update={"phase": Phase.SUCCEEDED, "weight": 0, "stable": canary, "verified": True,
                                                          "reason": f"promoted {canary.image or canary.hash}", "post_rollout_owed": self.hooks.has(WebhookType.POST_ROLLOUT)}),
                                  message, Severity.INFO)

    def _rolling_back(self, state: ReleaseState) -> ReleaseState:
        stable, canary = state.stable, state.canary
        assert stable is not None and canary is not None
        rest = self._at_rest(state)
        replicas = state.canary_replicas
        if state.rollback_step == 0:
            if state.rolled_back_from is Phase.PROMOTING and state.promotion_step >= 1:
                self.recorder.decide(state, f"rollback: stable back to {stable.image or stable.hash} before traffic moves to it")
                self._retrying(state, "restoring stable", lambda: self._apply(state, self._pins(state, canary=canary, replicas=replicas), ("stable",), cancellable=False), rollback=True)
                self._retrying(state, "stable's readiness", lambda: self.verify.track(self.spec, Track.STABLE, stable.hash, self._stable_size(), cancellable=False), rollback=True)
            state = state.model_copy(update={"rollback_step": 1})
        if state.rollback_step == 1:
            self.recorder.decide(state, "rollback: traffic to stable first", "RollingBack")
            state = self._traffic_to_stable(state, rest, self._pins(state, canary=canary, replicas=replicas, shape=rest))
        self.recorder.decide(state, "rollback: the stable state as the release began (the stack file's snapshot), canary to zero")
        self._retrying(state, "the rollback's stable state", lambda: self._apply_or_full(state, self._pins(state, shape=rest)), rollback=True)
        details = self._retrying(state, "verifying the end state",
                                 lambda: self.verify.end_state(self.spec, stable.hash, self._stable_size(), rollback=True, cancellable=False), rollback=True)
        self.recorder.verified(state, "end state", details)
        unapplied: tuple[str, ...] = ()
        changes = self.config.changes_since(state.snapshot)
        if changes:
            kept = self.config.keep(state.release, changes)
            unapplied = tuple(sorted(changes))
            self.recorder.event(state, f"not applied by the rollback, changed in the stack file during the release: {', '.join(unapplied)}"
                                       + (f"; their values are kept in {kept}" if kept else ""), Severity.WARN)
        self._prune(state, keep=(stable, canary))
        end = state.rollback_to
        verb = "aborted" if end is Phase.ABORTED else "rolled back"
        return self.recorder.save(state.model_copy(update={"phase": end, "rollback_pending": False, "canary_replicas": 0, "unapplied": unapplied, "verified": True,
                                                          "post_rollout_owed": self.hooks.has(WebhookType.POST_ROLLOUT)}),
                                  f"{verb}: {state.reason}; stable {stable.image or stable.hash} verified (route at rest, no canary pods)",
                                  Severity.WARN if end is Phase.ABORTED else Severity.ERROR)

    def _traffic_to_stable(self, state: ReleaseState, rest: RouteShape, pins: dict[str, Any]) -> ReleaseState:
        """The rollback's traffic step: the route at rest with a targeted ``up``, verified. The canary keeps its share
        of the traffic until it is done, so it does not wait as the rest of the rollback may:

        - Pulumi's lock held by a live update (another app's ``up`` of the stack, awaiting its Deployment) is waited
          for up to the route timeout, not ``lock_wait``: the route is then written at rest around Pulumi and the
          rollback goes on, its next ``up`` waiting for the lock as ever (it makes Pulumi's state agree and scales the
          canary down). Before, the canary kept its traffic for up to ``lock_wait``.
        - An ``up`` that succeeds while the route stays where it was (changed outside Pulumi: the checkpoint already
          says at rest, so an ``up`` without refresh has nothing to change) is run again with the route read back from
          the cluster first. A refresh, not a write around Pulumi: Pulumi works, its state then agrees with the
          cluster and the rollback completes itself, where a write around it stops the rollback pending for a person.
        - Any other failure writes the route around Pulumi, and the rollback stops pending."""
        def up(refresh: bool) -> None:
            self._retrying(state, "the rollback's traffic step", lambda: self._apply(state, pins, ("route",), cancellable=False, refresh=refresh),
                           rollback=True, lock_wait=min(self.lock_wait, self.verify.route_timeout))

        try:
            up(refresh=False)
            try:
                self.verify.route(self.spec, rest, rollback=True, cancellable=False)
                return self.recorder.save(state.model_copy(update={"rollback_step": 2, "weight": 0, "route": rest.to_json()}), "traffic is back on stable (route at rest)")
            except RouteNotAccepted as exc:
                # at rest but a gateway not taking it yet (its controller down or lagging): waited for below. Else the
                # route does not show the shape at all
                if not self._route_shows(rest):
                    self.recorder.event(state, f"the rollback's up succeeded but the route did not move ({exc}): Pulumi's record of it is not the "
                                               "cluster's (changed outside Pulumi); applying it again with the route read back from the cluster first",
                                        Severity.WARN)
                    up(refresh=True)
            except CanaryError:
                pass  # the route not read (the API server), or not taken yet: verified below, with retries
        except LeaseLost:
            raise
        except RollbackPending as exc:
            if not isinstance(exc.__cause__, StackLocked):
                self._route_around_pulumi(state, rest, str(exc))  # writes the route at rest, then raises RollbackPending
                raise  # (not reached: pending, it always raises)
            return self._route_around_pulumi(state, rest, f"Pulumi's lock is held by another update ({exc.__cause__})", pending=False)
        except Exception as exc:  # noqa: BLE001 - any failure (the up's, the runner's disk): traffic is not left on the canary
            self._route_around_pulumi(state, rest, f"{type(exc).__name__}: {exc}")
        self._retrying(state, "the route at rest", lambda: self.verify.route(self.spec, rest, rollback=True, cancellable=False), rollback=True)
        return self.recorder.save(state.model_copy(update={"rollback_step": 2, "weight": 0, "route": rest.to_json()}), "traffic is back on stable (route at rest)")

    def _route_shows(self, shape: RouteShape) -> bool:
        """Whether the cluster's route shows ``shape`` (taken by its gateways or not); False when it cannot be read."""
        try:
            live = self.verify.cluster.route(self.spec)
        except CanaryError:
            return False
        return live is not None and live.shows(shape)

    def _route_around_pulumi(self, state: ReleaseState, rest: RouteShape, why: str, pending: bool = True) -> ReleaseState:
        """The rollback's traffic step could not be applied with ``up`` (the program fails, the backend is gone):
        traffic is not left on the canary waiting for a person. The route is written at rest directly and
        verified; the rollback then stops "pending" (the stack's state still has the canary's weight, the canary
        its pods), and ``resume`` completes it with ``up`` once that can run. Written nowhere but the route.
        Not ``pending`` (Pulumi's lock held by a live update, which lets go): the state at rest is returned,
        and the rollback goes on, its next ``up`` waiting for the lock."""
        try:
            def write() -> None:
                self.lease.fence()  # as before every up: only a holder that proves it still holds the app writes its traffic
                self.cluster.restore_route(self.spec, rest)

            self._retrying(state, "writing the route at rest directly", write, rollback=True)
        except RollbackPending as exc:
            raise RollbackPending(f"{why}; writing the route at rest directly failed too: {exc}") from exc
        try:
            self._retrying(state, "the route written at rest", lambda: self.verify.route(self.spec, rest, rollback=True, cancellable=False), rollback=True)
        except RollbackPending as exc:
            raise RollbackPending(f"{why}; the route was written at rest directly, but the gateway did not confirm it: {exc}") from exc
        state = self.recorder.save(state.model_copy(update={"rollback_step": 2, "weight": 0, "route": rest.to_json()}),
                                   f"traffic is back on stable: the route was written at rest directly, around Pulumi, as its up could not apply ({why})",
                                   Severity.ERROR if pending else Severity.WARN)
        if not pending:
            return state
        raise RollbackPending(f"{why}. Traffic is on stable (the route was written at rest directly); the canary still has its pods "
                              "and the stack's state its weight until the rollback completes")

    def _others(self) -> list[str]:
        """The stack's other apps' resources, as the stack's outputs name them now: an app added (or a resource of
        another app's) since this release began is not in its snapshot, and an update of the whole stack not told
        to leave it alone deletes it. Those known at the start too (a failed read leaves them)."""
        try:
            now = other_urns(self.stack.outputs(), self.spec.app.name)
        except CanaryError:
            now = ()
        return sorted({*self.facts.others, *now})

    def _apply_or_full(self, state: ReleaseState, pins: dict[str, Any]) -> None:
        """The rollback's targeted ``up``; when it cannot apply (a resource it depends on is not in the
        stack), the same pins applied to the whole stack but the other apps' resources (in a stack of
        several apps, another app may be in a release of its own)."""
        try:
            self._apply(state, pins, ("app",), cancellable=False)
        except StackError as exc:
            self.recorder.event(state, f"the targeted rollback could not apply ({exc}); applying the snapshot to the whole stack")
            self._apply(state, pins, None, cancellable=False)

    # --- steps and ticks -----------------------------------------------------------------------

    def _step(self, state: ReleaseState, index: int, shape: RouteShape) -> ReleaseState:
        """A forward step of ``_progressing`` (a weight, an A/B or blue/green iteration), its ``up``s waiting for Pulumi's
        lock (another app's ``up`` of the stack, awaiting its Deployment for minutes) at most half an analysis interval,
        or the route timeout when shorter. Waited for ``lock_wait`` at once, the canary kept its weight unjudged and a
        failing one was rolled back minutes late. Half an interval: the wait is part of the step's interval, as a shift's
        time is, so the tick comes when it would have, and the other half is left to the rollout hooks (a load test: a
        whole interval's wait left them none, and the tick judged a window without its load); the route timeout: so is
        a long interval's rest. Still locked, the step is not taken this time: the release holds at its weight, journals whose lock it
        waits for, and ticks as at any held step (a failing tick rolls back; a hold is no failed tick); the step is tried
        again after the next passing tick. ``lock_wait`` from the step's first try bounds the hold (a lock never let
        go): past it, StackLocked fails the step as before. Iterations after the first have no ``up``; blue/green's switch
        (``_approved``) waits ``lock_wait`` at once: before it green serves no user, and a person may have approved it."""
        held = self._lock_held
        # the hold counts from the step's first try: lock_wait bounds it as it bounds any one up's wait
        began = held[1] if held is not None and held[0] == index else self.clock.monotonic()
        try:
            shifted = self._shift(state, index, shape, lock_wait=min(self.spec.analysis.interval.total_seconds() / 2, self.verify.route_timeout,
                                                                      max(0.0, self.lock_wait - (self.clock.monotonic() - began))))
        except StackLocked as exc:
            waited = self.clock.monotonic() - began
            if waited >= self.lock_wait:
                raise StackLocked(f"step {index} ({shape.describe()}) waited {waited:.0f}s in all for Pulumi's lock (lock_wait "
                                  f"{self.lock_wait:g}s): {exc}") from exc
            self._lock_held = (index, began)
            # warned once a step (an alert an interval would be noise); journaled at each try. The state as before
            # the step (no longer "shifting to" it): the route and the weight are where they were
            then = "analysis goes on, the step is tried again after the next passing tick" if state.step else "tried again in an interval"
            return self.recorder.save(
                state, f"step {index} ({shape.describe()}) waits for Pulumi's lock ({exc}): holding at weight {state.weight}, {then} "
                       f"({waited:.0f}s of {self.lock_wait:g}s waited)",
                Severity.WARN if held is None or held[0] != index else None, lock_held=index, lock_waited=round(waited, 1))
        self._lock_held = None
        return shifted

    def _shift(self, state: ReleaseState, index: int, shape: RouteShape, again: bool = False, lock_wait: float | None = None) -> ReleaseState:
        """Size the canary for the step, then move the route to it and verify the gateway took it. ``lock_wait``: how
        long the step's ``up``s wait for Pulumi's lock in all before StackLocked (None: each the release's ``lock_wait``)."""
        deadline = None if lock_wait is None else self.clock.monotonic() + lock_wait

        def lock_left() -> float | None:
            return None if deadline is None else max(0.0, deadline - self.clock.monotonic())

        canary = state.canary
        assert canary is not None
        current = self._recorded(state)
        replicas = max(self._canary_size(shape), state.canary_replicas if not again else 0)
        if shape.weight == 100 or self.spec.app.autoscaler:
            # all traffic: at least what stable runs; autoscaled: never below what the canary's autoscaler grew it to
            full, live_canary = self._switch_size()
            replicas = max(replicas, live_canary, full if shape.weight == 100 else 0)
        if not again and current == shape and replicas == state.canary_replicas:
            # an iteration of A/B or blue/green: the route stays as it is. A blue/green release without testers or
            # a mirror takes its first step so too (its route is the one at rest): the warm-up and the evidence
            # window count from it, as from a shift
            if state.shifted_at:
                return self.recorder.save(state.model_copy(update={"step": index, "advance": False}), f"iteration {index} of {self.spec.analysis.iterations} at {shape.describe()}")
            began = self.clock.iso()
            return self.recorder.save(state.model_copy(update={"step": index, "advance": False, "shifted_at": began, "holding_since": ""}),
                                      f"iteration {index} of {self.spec.analysis.iterations} at {shape.describe()}: analysis of the new version begins", Severity.INFO,
                                      shifted_at=began, step=index)
        state = self.recorder.save(state.model_copy(update={"shifting_to": index}), f"{'re-applying' if again else 'shifting to'} step {index}: {shape.describe()}", to=shape.weight)
        # after a resume every `up` of the step reads its resources back first: a killed `up` may have
        # changed them without writing its checkpoint, and Pulumi would then see nothing to do
        if replicas != state.canary_replicas or again:
            self._retrying(state, "sizing the canary", lambda: self._apply(state, self._pins(state, canary=canary, replicas=replicas), ("canary",), refresh=again),
                           lock_wait=lock_left())
            self._retrying(state, "the canary's readiness", lambda: self.verify.track(self.spec, Track.CANARY, canary.hash, replicas))
        self._retrying(state, "shifting traffic",
                       lambda: self._apply(state, self._pins(state, canary=canary, replicas=replicas, shape=shape), ("route",), refresh=again),
                       lock_wait=lock_left())
        self._retrying(state, "the route", lambda: self.verify.route(self.spec, shape))
        shifted_at = self.clock.iso()
        # the details say when the warm-up began: `canary backtest` replays the release's ticks from them
        return self.recorder.save(
            state.model_copy(update={"step": index, "weight": shape.weight, "route": shape.to_json(), "shifting_to": None, "advance": False, "reapply": False,
                                     "shifted_at": shifted_at, "canary_replicas": replicas, "holding_since": ""}),
            f"{shape.describe()} is live in the route and accepted by the gateway", Severity.INFO, shifted_at=shifted_at, step=index, reapplied=again)

    def _analyse(self, state: ReleaseState, since: float | None = None) -> ReleaseState:
        """Wait out the interval — counted from ``since``, the start of the step, so that the time a
        shift takes is part of the interval as in Flagger — with the rollout hooks running, then tick."""
        interval = self.spec.analysis.interval.total_seconds()
        start = self.clock.monotonic()
        end = (since if since is not None else start) + interval
        running = self.hooks.start_rollout(state)
        phase, answered = state.phase, False
        try:
            while not (stopped := self._wait(end - self.clock.monotonic())) and self._wake.is_set():
                # woken by a request: a promote a person gave in a waiting phase (or --skip-analysis) is acted on
                # now; a pause or continue is taken now too, but the step is still judged on a whole interval
                if state.phase in (Phase.WAITING_PROMOTION, Phase.WAITING_DECISION) and "promote" in self._requests:
                    if state.phase is Phase.WAITING_DECISION and self._asked_elsewhere(state, self._requests["promote"]):
                        self._wake.clear()  # not this decision's answer: `_waiting_decision` says so after the tick
                        continue
                    answered = True
                    break
                self._wake.clear()
                state = self._take_requests(state)
                if state.phase is not phase:
                    answered = True
                    break
        except BaseException:
            # the interval ended by an error (the lease lost, a record that failed, a second signal): the load
            # tests run in sessions of their own, and nothing would ever stop them
            self.hooks.stop_rollout(running)
            raise
        # a person answered: stop the load test and act on it before judging again
        hook_failures = self.hooks.finish_rollout(state, running, start, cut="canary promote answered" if answered else "")
        if stopped or self.cancel.is_set() or answered:
            return state
        now = self.clock.now()
        shifted = _parse(state.shifted_at)
        holding = _parse(state.holding_since)
        ctx = analysis.TickContext(
            failed_in_row=state.failed_in_row, failed_total=state.failed_total, weight=state.weight,
            warming_up=shifted is not None and (now - shifted) < self.spec.analysis.warmup,
            held_too_long=holding is not None and (now - holding) > self.spec.analysis.hold_bound,
            evidence_window=(now - shifted).total_seconds() if holding is not None and shifted is not None else None,
        )
        tick = analysis.run_tick(self.spec, self.provider_for, ctx)
        if hook_failures:
            extra = tuple(analysis.extra_failure(f"webhook:{r.name}", f"rollout webhook {r.name} failed: {r.detail}") for r in hook_failures)
            tick = analysis.decide_for(self.spec, tick.checks + extra, ctx)
        record = self.recorder.tick_record(state, outcome=tick.outcome, failed_in_row=tick.failed_in_row, failed_total=tick.failed_total,
                                           threshold=tick.threshold, failure_limit=tick.failure_limit, reason=tick.reason, checks=tick.checks, score=tick.score)
        state = state.model_copy(update={"failed_in_row": tick.failed_in_row, "failed_total": tick.failed_total, "last_checks": tick.checks})
        self.recorder.tick(state, record)
        if tick.outcome is Outcome.ROLLBACK:
            return self._begin_rollback(state, tick.reason)
        waiting = state.phase is Phase.WAITING_DECISION
        if tick.outcome is Outcome.INCONCLUSIVE and not waiting:
            return self.recorder.save(state.model_copy(update={"phase": Phase.WAITING_DECISION, "advance": False, "passed": False, "deciding_since": self.clock.iso(),
                                                               "reason": tick.reason, "failed_last": False}),
                                      f"waiting for a decision: {tick.reason}; canary promote {self.stack.name} --app {self.spec.app.name} or canary abort", Severity.WARN)
        passed = tick.outcome is Outcome.ADVANCE and not waiting
        updates: dict[str, Any] = {"advance": passed, "passed": passed, "failed_last": tick.outcome is Outcome.FAIL}
        if tick.outcome is Outcome.HOLD:
            updates["holding_since"] = state.holding_since or self.clock.iso()
        elif tick.outcome is Outcome.ADVANCE:
            updates["holding_since"] = ""
        if tick.outcome is Outcome.FAIL:
            updates["reason"] = tick.reason
        # a failed tick's Kubernetes Event is the tick's own (CheckFailed)
        return self.recorder.save(state.model_copy(update=updates), tick.reason, Severity.WARN if tick.outcome is Outcome.FAIL else None, kube=False)

    def _count_failure(self, state: ReleaseState, reason: str, wait: bool) -> ReleaseState:
        if "abort" in self._requests:
            return state  # what failed may be the abort's own cut (a hook, a tick): the abort is taken at the top of the loop
        in_row, total = state.failed_in_row + 1, state.failed_total + 1
        state = state.model_copy(update={"failed_in_row": in_row, "failed_total": total})
        threshold, limit = self.spec.analysis.threshold, self.spec.analysis.failures_allowed
        if in_row >= threshold:
            return self._begin_rollback(state, f"{reason} for {in_row} checks in a row at weight {state.weight}")
        if total >= limit:
            return self._begin_rollback(state, f"{reason}: {total} failed checks in all (failureLimit {limit}) at weight {state.weight}")
        self.recorder.save(state, f"{reason}: failed check {in_row} of {threshold} in a row", Severity.WARN)
        if wait:
            self._wait(self.spec.analysis.interval.total_seconds())
        return state

    def _begin_rollback(self, state: ReleaseState, reason: str, to: Phase = Phase.FAILED) -> ReleaseState:
        with self._requests_lock:  # an abort judged by the phase before has set its cancel by now: cleared with it
            self._phase = Phase.ROLLING_BACK  # an abort the requests' watch reports again from here cancels nothing
            self.cancel.clear()
        state = state.model_copy(update={"phase": Phase.ROLLING_BACK, "reason": reason, "rollback_to": to, "rollback_step": 0, "rolled_back_from": state.phase})
        return self.recorder.save(state, f"rolling back: {reason}", Severity.ERROR if to is Phase.FAILED else Severity.WARN)

    # --- endings -------------------------------------------------------------------------------

    def _prune(self, state: ReleaseState, keep: tuple[TrackPin, ...]) -> None:
        """Delete the copies of ConfigMaps and Secrets that neither track, nor the program, reads any more."""
        names = set(self.facts.copies.values())
        for pin in keep:
            names |= {naming.copy_name(key.partition("/")[2], h) for key, h in pin.config_hashes.items()}
        try:
            dropped = self.cluster.prune_copies(self.spec, names)
        except CanaryError as exc:
            self.recorder.event(state, f"old config copies were not deleted: {exc}")
            return
        if dropped:
            self.recorder.event(state, f"deleted config copies no track reads any more: {', '.join(sorted(dropped))}")

    def _owed_post_rollout(self, state: ReleaseState) -> ReleaseState:
        """The post-rollout hooks ``state``, an ended release, still owes, called by another process: those of its own
        config (its snapshot of the stack config), not of the release that calls them. A team that changed or removed
        its post-rollout hooks between two releases had the new receiver hear of the old end, or nobody. When that
        config cannot be read, none is called, the journal and the caller's output say why and that they are left to a
        person, and the debt is cleared: no resume could call them."""
        if not state.post_rollout_owed:
            return state
        if self.spec_of is None:
            return self._post_rollout(state)
        try:
            spec = self.spec_of(state)
        except InvalidSpec as exc:
            # the rules broken, not the values: they may be secrets. Only a config this version refuses, or none kept, is
            # proof that no later call can read it: a snapshot not decrypted now (a KMS key's credentials expired, the
            # backend down) raises on, and the debt stays for the next resume or release
            why = broken_rules(exc.problems)
            # no severity: any is told to this release's event hooks and alerts, which are not the ended release's either.
            # The caller's output (the CLI prints every event) is where a person hears of it: it says what is left to do
            message = (f"post-rollout webhooks not called for release {state.release} (ended {state.phase}): its own config cannot be read "
                       f"({why}), and another config's webhooks are not its receivers; call them by hand (the stack file as it was "
                       "for that release names them) if their receivers must hear of its end")
            try:
                return self.recorder.keep(state.model_copy(update={"post_rollout_owed": False}), message)
            except CanaryError:
                return state
        return self._post_rollout(state, self._hooks_of(spec))

    def _post_rollout(self, state: ReleaseState, hooks: Hooks | None = None) -> ReleaseState:
        """The post-rollout hooks a release owes since its end was saved, then the debt cleared: a process killed in
        between leaves them to ``resume`` (a receiver may hear of an end twice, never not at all). PromotedUnverified
        owes none: the resume that verifies it ends it, and only that end is sent. A release without post-rollout
        hooks owes none (no write after its end). ``hooks``: the ended release's own, when another calls them."""
        if not state.post_rollout_owed:
            return state
        hooks = hooks or self.hooks
        for result in hooks.run(state, WebhookType.POST_ROLLOUT):
            if not result.ok:
                self.recorder.event(state, f"post-rollout webhook {result.name} failed: {result.detail}")
        if self.cancel.is_set():
            return state  # cut short (a signal during resume's call of them): still owed, the next resume calls them
        try:
            return self.recorder.keep(state.model_copy(update={"post_rollout_owed": False}), "post-rollout webhooks called")
        except CanaryError:
            return state  # the release ended all the same; still owed in the cluster, a resume calls them again

    def _compact(self, state: ReleaseState) -> None:
        try:
            dropped = self.store.compact()
        except Exception as exc:  # noqa: BLE001 - housekeeping: whatever stops it, the release goes on
            self.recorder.event(state, f"older journals were not compacted: {exc}")
            return
        if dropped:
            self.recorder.event(state, f"dropped the journals of {len(dropped)} older releases (the last 20 are kept)")

    def _note(self, message: str) -> None:
        if self._state is not None:
            self.recorder.event(self._state, message)

    def _close(self) -> None:
        try:
            self.hooks.close(self.event_flush_timeout)
        finally:
            self.lease.release()  # whatever the events' flush raised: the app is never left held until its lease runs out

    def _result(self, state: ReleaseState) -> ReleaseResult:
        return ReleaseResult(state.release, state.phase, state.weight, state.reason, state.last_checks, state.rollback_pending, state.unapplied)


def _may_roll_back(state: ReleaseState) -> bool:
    """A failure in this state begins a rollback (``_after_failure``): not once stable took the new version."""
    return not (state.phase is Phase.PROMOTING and state.promotion_step >= 2) and state.phase not in (Phase.FINALISING, Phase.PROMOTED_UNVERIFIED)


def _parse(text: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


__all__ = ["Event", "HookResult", "Release", "ReleaseResult", "new_release_id"]
