"""The release: a state machine that moves a stack from its stable version to a new one, or back.

Phases: Initializing → Progressing → (WaitingPromotion) → Promoting → Finalising
→ Succeeded; any failure → RollingBack → Failed; a user abort → RollingBack →
Aborted. ``Release.advance`` runs one handler for the current phase and returns
the next state; the loop around it owns the clock and the sleeping, checks for
abort requests, and saves the state after every step. Every decision is
written to the journal before it is acted on, so a killed orchestrator can be
resumed from the journal and the stack's state (``resume``).

The release talks to the world through four ports: the stack (config and
``up``), the cluster reader (route and Deployments, for verification), a
metrics provider factory, and the webhooks module. Rollback re-applies the
stable stack state captured at the start — traffic 100/0 first, then the
canary to zero — and verifies it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from canary import analysis, schedule, units, webhooks
from canary.analysis import CheckResult, Effect, Outcome, Verdict
from canary.errors import CanaryError, ClusterUnreachable, InvalidSpec, Problem, RollbackPending, RouteNotAccepted, StackBusy
from canary.journal import Journal, new_release_id, now_iso
from canary.spec import ReleaseSpec, ThresholdRange, Webhook, WebhookType


class Phase(enum.StrEnum):
    INITIALIZING = "Initializing"
    PROGRESSING = "Progressing"
    WAITING_PROMOTION = "WaitingPromotion"
    PROMOTING = "Promoting"
    FINALISING = "Finalising"
    SUCCEEDED = "Succeeded"
    ROLLING_BACK = "RollingBack"
    FAILED = "Failed"
    ABORTED = "Aborted"


TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED})

#: The program's resources an `up` may be limited to (see program.py), with their Pulumi types.
TARGET_TYPES = {"route": "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", "canary-deployment": "kubernetes:apps/v1:Deployment"}



def target_urn(stack: str, name: str) -> str:
    """The URN of the program's resource ``name`` (a key of TARGET_TYPES) in ``stack``."""
    return f"urn:pulumi:{stack}::canary::{TARGET_TYPES[name]}::{name}"


#: Exit codes of `canary release` and `canary resume`.
EXIT_CODES = {Phase.SUCCEEDED: 0, Phase.FAILED: 1, Phase.ABORTED: 1}
EXIT_ROLLBACK_PENDING = 4


@dataclass(frozen=True)
class ReleaseState:
    release: str
    stack: str
    phase: Phase
    canary_image: str
    stable_image: str
    weight: int = 0
    failed_in_row: int = 0
    #: the last tick passed (or none ran yet): the next Progressing step shifts traffic
    advance: bool = True
    canary_deployed: bool = False
    #: the phase a rollback ends in: Failed, or Aborted for a user abort
    rollback_to: Phase = Phase.FAILED
    rollback_step: int = 0
    reason: str = ""
    started: str = ""
    updated: str = ""
    last_checks: tuple[dict[str, Any], ...] = ()
    rollback_pending: bool = False
    #: set by resume: re-apply the recorded weight before the next analysis
    reapply: bool = False
    #: a weight being applied right now (the route may already show it); None between steps
    shifting_to: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        data["rollback_to"] = self.rollback_to.value
        data["last_checks"] = list(self.last_checks)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReleaseState:
        data = dict(data)
        data["phase"] = Phase(data["phase"])
        data["rollback_to"] = Phase(data.get("rollback_to", "Failed"))
        data["last_checks"] = tuple(data.get("last_checks") or ())
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Event:
    time: str
    release: str
    phase: str
    weight: int
    message: str


@dataclass(frozen=True)
class ReleaseResult:
    release: str
    phase: Phase
    weight: int
    reason: str
    checks: tuple[dict[str, Any], ...] = field(default=())
    rollback_pending: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_ROLLBACK_PENDING if self.rollback_pending else EXIT_CODES.get(self.phase, 1)


class StackPort(Protocol):
    def spec(self) -> ReleaseSpec: ...
    def set_config(self, values: dict[str, Any], remove: tuple[str, ...] = ()) -> None: ...
    def up(self, on_event: Callable[[Any], None] | None = None, target: list[str] | None = None, refresh: bool = False) -> Any: ...
    def export(self) -> dict[str, Any]: ...
    def check_unlocked(self) -> None: ...
    def clear_stale_lock(self) -> list[dict[str, Any]]: ...


class ClusterPort(Protocol):
    def route(self, spec: ReleaseSpec) -> Any: ...
    def deployment(self, spec: ReleaseSpec, track: str) -> dict[str, Any]: ...


class Clock:
    """Wall time and sleeping; tests inject a fake."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def check_to_json(check: CheckResult) -> dict[str, Any]:
    return {
        "metric": check.metric,
        "query": check.query,
        "value": check.value,
        "threshold": {"min": check.threshold.min, "max": check.threshold.max},
        "verdict": check.verdict.value,
        "effect": check.effect.value,
        "reason": check.reason,
    }


class Release:
    """Runs (or resumes) one release of one stack."""

    def __init__(
        self,
        stack: StackPort,
        cluster: ClusterPort,
        provider_for: analysis.ProviderFor,
        journal: Journal,
        *,
        stack_name: str,
        clock: Clock | None = None,
        on_event: Callable[[Event], None] | None = None,
        route_timeout: float = 60.0,
        ready_timeout: float = 300.0,
        retries: int = 3,
        retry_backoff: float = 2.0,
        event_flush_timeout: float = 30.0,
    ) -> None:
        self.stack = stack
        self.cluster = cluster
        self.provider_for = provider_for
        self.journal = journal
        self.stack_name = stack_name
        self.clock = clock or Clock()
        self.on_event = on_event
        self.route_timeout = route_timeout
        self.ready_timeout = ready_timeout
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.event_flush_timeout = event_flush_timeout
        self._spec: ReleaseSpec | None = None
        self._release_id: str | None = None
        #: event hooks are delivered off the release's thread, so a slow receiver never delays a step or a rollback
        self._events = webhooks.EventQueue(on_failure=self._event_hook_failed)
        #: set by resume: the next `up` refreshes first (see _apply)
        self._refresh = False

    # --- entry points ------------------------------------------------------------------------

    def start(self, image: str) -> ReleaseResult:
        """Validate, take the stack, snapshot the stable state, and run the release to its end."""
        try:
            units.check_image(image)
        except ValueError as exc:
            raise InvalidSpec([Problem("--image", image, str(exc))], "release") from None
        previous = self.journal.load_state()
        if previous is not None and Phase(previous["phase"]) not in TERMINAL:
            holder = self.journal.holder()
            if holder is not None and holder.alive():
                raise StackBusy(f"stack {self.stack_name} is busy: {holder}")
            raise StackBusy(
                f"stack {self.stack_name} has an unfinished release {previous['release']} in phase {previous['phase']}: "
                f"run `canary resume {self.stack_name}` (or `canary abort {self.stack_name}` then resume)"
            )
        self.stack.check_unlocked()
        release_id = self._release_id = new_release_id()
        self.journal.acquire(release_id)
        # The stable state's export (a CLI process, for the audit record) runs while the
        # config is read and checked; the snapshot waits for it, before any `up`.
        pool = ThreadPoolExecutor(1, thread_name_prefix="canary-export")
        export = pool.submit(self.stack.export)
        try:
            spec = self.stack.spec()
            if spec.canary_image is not None:
                raise InvalidSpec([Problem("canaryImage", spec.canary_image, "must be unset before a release starts (a canary is already deployed; run pulumi up with it removed, or resume)")], f"stack {self.stack_name}")
            if image == spec.stable_image:
                raise InvalidSpec([Problem("--image", image, "is already the stable image")], "release")
            self._spec = spec
            # Before the snapshot and any up: a query Prometheus rejects is bad input, not a failed check.
            problems = analysis.preflight(spec, self.provider_for)
            if problems:
                raise InvalidSpec(problems, f"stack {self.stack_name}")
            state = ReleaseState(release_id, self.stack_name, Phase.INITIALIZING, image, spec.stable_image, started=now_iso(), updated=now_iso())
            self._snapshot(state, spec, export)
            self._save(state, "release started", image=image, stable=spec.stable_image, steps=schedule.weights(spec.analysis))
            return self._run(state)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self._deliver_events()
            self.journal.release_lock()

    def resume(self) -> ReleaseResult:
        """Continue an interrupted release from the journal (or roll it back if it was rolling back)."""
        data = self.journal.load_state()
        if data is None:
            raise InvalidSpec([Problem("stack", self.stack_name, "has no release to resume")], "resume")
        state = ReleaseState.from_json(data)
        if state.phase in TERMINAL:
            return self._result(state)
        self._release_id = state.release
        self.journal.acquire(state.release)
        try:
            spec = self.stack.spec()
            self._spec = spec.model_copy(update={"canary_image": spec.canary_image or state.canary_image})
            self._event(state, f"resuming release in phase {state.phase} at weight {state.weight}")
            for lock in self.stack.clear_stale_lock():
                self._event(state, f"cleared Pulumi's stale lock of pid {lock['pid']} on {lock['hostname']} (the process is gone)")
            self._refresh = True
            if state.phase in (Phase.PROGRESSING, Phase.WAITING_PROMOTION):
                # The last step's outcome is unknown (and a shift may have been cut short):
                # put the last judged weight back in the route and judge it again.
                state = replace(state, advance=False, reapply=True, shifting_to=None)
            elif state.phase is Phase.INITIALIZING:
                state = replace(state, canary_deployed=False)
            return self._run(state)
        finally:
            self._deliver_events()
            self.journal.release_lock()

    # --- the loop ------------------------------------------------------------------------------

    def _run(self, state: ReleaseState) -> ReleaseResult:
        while state.phase not in TERMINAL:
            state = self._check_abort(state)
            try:
                state = self.advance(state)
            except RollbackPending as exc:
                state = replace(state, rollback_pending=True, reason=str(exc))
                self._save(state, f"rollback pending: {exc}")
                return self._result(state)
            except CanaryError as exc:
                if state.phase is Phase.ROLLING_BACK:
                    raise
                state = self._begin_rollback(state, f"{type(exc).__name__}: {exc}")
        self._post_rollout(state)
        return self._result(state)

    def advance(self, state: ReleaseState) -> ReleaseState:
        """Run the handler of the current phase once."""
        handler = {
            Phase.INITIALIZING: self._initializing,
            Phase.PROGRESSING: self._progressing,
            Phase.WAITING_PROMOTION: self._waiting_promotion,
            Phase.PROMOTING: self._promoting,
            Phase.FINALISING: self._finalising,
            Phase.ROLLING_BACK: self._rolling_back,
        }[state.phase]
        return handler(state)

    @property
    def spec(self) -> ReleaseSpec:
        assert self._spec is not None
        return self._spec

    # --- phases --------------------------------------------------------------------------------

    def _initializing(self, state: ReleaseState) -> ReleaseState:
        if not state.canary_deployed:
            # As in Flagger, the confirm-rollout gate is asked before the canary is scaled up.
            gate = self._gate(state, WebhookType.CONFIRM_ROLLOUT)
            if gate is not None:
                self._event(state, f"waiting: confirm-rollout webhook {gate.name} said no ({gate.detail})")
                self._wait(state, self.spec.analysis.interval.total_seconds())
                return state
            self._decide(state, f"deploying canary {state.canary_image} at weight 0")
            self._apply({"canaryImage": state.canary_image, "canaryWeight": 0}, state=state, target=("route", "canary-deployment"))
            self._wait_route(state, 0)
            self._verify_deployment(state, "canary", state.canary_image)
            state = self._save(replace(state, canary_deployed=True), f"canary {state.canary_image} is ready at weight 0")
        failed = [r for r in self._hooks(state, WebhookType.PRE_ROLLOUT) if not r.ok]
        if failed:
            return self._count_failure(state, f"pre-rollout webhook {failed[0].name} failed: {failed[0].detail}", wait=True)
        return self._save(replace(state, phase=Phase.PROGRESSING, advance=True), "analysis starts")

    def _progressing(self, state: ReleaseState) -> ReleaseState:
        if (asked := self._rollback_hook(state)) is not None:
            return self._begin_rollback(state, f"rollback webhook {asked} asked for a rollback")
        step_start = self.clock.monotonic()
        if state.reapply:
            state = replace(self._shift(state, state.weight), reapply=False)
        if state.advance:
            nxt = schedule.next_weight(self.spec.analysis, state.weight)
            if nxt is None:
                return self._promotion_gate(state)
            gate = self._gate(state, WebhookType.CONFIRM_TRAFFIC_INCREASE)
            if gate is not None:
                self._event(state, f"holding at weight {state.weight}: confirm-traffic-increase webhook {gate.name} said no ({gate.detail})")
                self._wait(state, self.spec.analysis.interval.total_seconds())
                return state
            state = self._shift(state, nxt)
        return self._analyse(state, since=step_start)

    def _waiting_promotion(self, state: ReleaseState) -> ReleaseState:
        if (asked := self._rollback_hook(state)) is not None:
            return self._begin_rollback(state, f"rollback webhook {asked} asked for a rollback")
        if self.journal.take_request("promote", state.release) is not None:
            self.journal.clear_request("promote")
            return self._save(replace(state, phase=Phase.PROMOTING), "promotion approved with canary promote")
        if self._gate(state, WebhookType.CONFIRM_PROMOTION) is None:
            return self._save(replace(state, phase=Phase.PROMOTING), "confirm-promotion webhooks approved")
        if state.reapply:
            state = replace(self._shift(state, state.weight), reapply=False)
        return self._analyse(state)

    def _promotion_gate(self, state: ReleaseState) -> ReleaseState:
        gate = self._gate(state, WebhookType.CONFIRM_PROMOTION)
        if gate is None:
            return self._save(replace(state, phase=Phase.PROMOTING), f"every check passed up to weight {state.weight}: promoting")
        return self._save(replace(state, phase=Phase.WAITING_PROMOTION), f"waiting for promotion: confirm-promotion webhook {gate.name} said no ({gate.detail}); approve with canary promote {self.stack_name}")

    def _promoting(self, state: ReleaseState) -> ReleaseState:
        """One `up` whose resource order (see program.py) is the promotion's: the stable
        Deployment takes the new image and is Ready, then the route goes 100/0, then the canary to zero."""
        self._decide(state, f"promoting: the stable Deployment takes {state.canary_image}, then all traffic to stable, then the canary to zero")
        self._apply({"stableImage": state.canary_image, "canaryWeight": 0}, remove=("canaryImage",), state=state)
        return self._save(replace(state, phase=Phase.FINALISING), f"stable runs {state.canary_image}, traffic is on stable, canary scaled to zero")

    def _finalising(self, state: ReleaseState) -> ReleaseState:
        self._verify_end_state(state, stable_image=state.canary_image)
        return self._save(replace(state, phase=Phase.SUCCEEDED, weight=0, reason=f"promoted {state.canary_image}"), f"promoted {state.canary_image}: route 100/0, canary has no pods, stable verified")

    def _rolling_back(self, state: ReleaseState) -> ReleaseState:
        stable = state.stable_image
        if state.rollback_step == 0:
            self._decide(state, "rollback: traffic 100/0 to stable first")
            self._retrying(state, lambda: self._apply({"stableImage": stable, "canaryWeight": 0}, state=state, target=("route",)))
            self._retrying(state, lambda: self._wait_route(state, 0, rollback=True))
            state = self._save(replace(state, rollback_step=1, weight=0), "traffic is back on stable (route 100/0)")
        self._decide(state, "rollback: canary to zero")
        self._retrying(state, lambda: self._apply({"stableImage": stable, "canaryWeight": 0}, remove=("canaryImage",), state=state))
        self._retrying(state, lambda: self._verify_end_state(state, stable_image=stable, rollback=True))
        end = state.rollback_to
        verb = "aborted" if end is Phase.ABORTED else "rolled back"
        return self._save(replace(state, phase=end, rollback_pending=False), f"{verb}: {state.reason}; stable {stable} verified (route 100/0, no canary pods)")

    # --- steps -----------------------------------------------------------------------------------

    def _shift(self, state: ReleaseState, weight: int) -> ReleaseState:
        state = self._save(replace(state, shifting_to=weight), f"shifting traffic to weight {weight}", to=weight)
        self._retrying(state, lambda: self._apply({"canaryWeight": weight}, state=state, target=("route",)), pending=False)
        self._wait_route(state, weight)
        return self._save(replace(state, weight=weight, advance=False, shifting_to=None), f"weight {weight} is live in the route and accepted by the gateway")

    def _analyse(self, state: ReleaseState, since: float | None = None) -> ReleaseState:
        """Wait out the interval — counted from ``since``, the start of the step, so that the
        time a shift takes is part of the interval as in Flagger — then tick."""
        interval = self.spec.analysis.interval.total_seconds()
        start = self.clock.monotonic()
        running = self._start_rollout_hooks(state)
        aborted = self._wait(state, interval - (start - since) if since is not None else interval)
        hook_failures = self._finish_rollout_hooks(state, running, start)
        if aborted:
            return state
        tick = analysis.run_tick(self.spec, self.provider_for, state.failed_in_row, state.weight)
        if hook_failures:
            extra = tuple(
                CheckResult(f"webhook:{r.name}", "", None, ThresholdRange(max=0), Verdict.ERROR, Effect.FAIL, f"rollout webhook {r.name} failed: {r.detail}")
                for r in hook_failures
            )
            tick = analysis.decide(tick.checks + extra, state.failed_in_row, self.spec.analysis.threshold, state.weight)
        checks = tuple(check_to_json(c) for c in tick.checks)
        self.journal.record(state.release, "tick", phase=state.phase.value, weight=state.weight, outcome=tick.outcome.value,
                            failed_in_row=tick.failed_in_row, threshold=tick.threshold, reason=tick.reason, checks=list(checks))
        state = replace(state, failed_in_row=tick.failed_in_row, last_checks=checks)
        self._event(state, tick.reason)
        if tick.outcome is Outcome.ROLLBACK:
            return self._begin_rollback(state, tick.reason)
        return self._save(replace(state, advance=tick.outcome is Outcome.ADVANCE), f"tick: {tick.outcome.value}")

    def _count_failure(self, state: ReleaseState, reason: str, wait: bool) -> ReleaseState:
        count = state.failed_in_row + 1
        threshold = self.spec.analysis.threshold
        state = replace(state, failed_in_row=count)
        if count >= threshold:
            return self._begin_rollback(state, f"{reason} for {count} checks in a row at weight {state.weight}")
        self._save(state, f"{reason}: failed check {count} of {threshold} in a row")
        if wait:
            self._wait(state, self.spec.analysis.interval.total_seconds())
        return state

    def _begin_rollback(self, state: ReleaseState, reason: str, to: Phase = Phase.FAILED) -> ReleaseState:
        state = replace(state, phase=Phase.ROLLING_BACK, reason=reason, rollback_to=to, rollback_step=0)
        return self._save(state, f"rolling back: {reason}")

    def _check_abort(self, state: ReleaseState) -> ReleaseState:
        request = self.journal.take_request("abort", state.release)
        if request is None or state.phase in TERMINAL or state.phase is Phase.ROLLING_BACK:
            return state
        self.journal.clear_request("abort")
        if state.phase in (Phase.PROMOTING, Phase.FINALISING):
            self._event(state, f"abort ignored: the release is already {state.phase} (the new version passed every check)")
            return state
        return self._begin_rollback(state, f"aborted by {request.get('by', 'a user')}", to=Phase.ABORTED)

    # --- cluster ---------------------------------------------------------------------------------

    def _apply(self, values: dict[str, Any], *, state: ReleaseState, remove: tuple[str, ...] = (), target: tuple[str, ...] | None = None) -> None:
        """Write the stack config and run up, limited to the ``target`` resources when given:
        a weight step changes the route alone, the canary's deploy the canary Deployment
        (with the route, held at weight 0), so neither diffs nor touches anything else.

        The first `up` after a resume refreshes first: a killed `up` may have changed
        the cluster without writing its checkpoint, and re-applying the last judged
        weight would then be a no-op to Pulumi while the route still shows the new one.
        """
        self.stack.set_config(values, remove)
        urns = [target_urn(self.stack_name, name) for name in target] if target else None
        refresh = self._refresh
        result = self.stack.up(target=urns, refresh=refresh)
        self._refresh = False
        self.journal.record(state.release, "up", phase=state.phase.value, weight=state.weight, config=values, removed=list(remove), targeted=list(target or ()),
                            refreshed=refresh, seconds=round(result.seconds, 3), changes=result.changes)

    def _wait_route(self, state: ReleaseState, weight: int, rollback: bool = False) -> None:
        """Until the cluster's route shows ``weight`` and its gateway accepted it.

        In a rollback, a route at 100/0 that its gateway does not accept (say the
        Gateway is gone) is recorded and tolerated: nothing routes through it to the canary.
        """
        deadline = self.clock.monotonic() + self.route_timeout
        route = None
        while self.clock.monotonic() < deadline:
            route = self.cluster.route(self.spec)
            if route is not None and route.weights == (100 - weight, weight) and route.accepted:
                return
            self.clock.sleep(0.05)
        if rollback and route is not None and route.weights == (100 - weight, weight):
            self._event(state, f"the route is at 100/0 but its gateway does not accept it: {route.reason}")
            return
        seen = "the route does not exist" if route is None else f"route weights {route.weights}, {route.reason}"
        raise RouteNotAccepted(f"the gateway did not accept weight {weight} within {self.route_timeout:.0f}s: {seen}")

    def _verify_deployment(self, state: ReleaseState, track: str, image: str) -> dict[str, Any]:
        dep = self.cluster.deployment(self.spec, track)
        if dep["image"] != image or dep["ready"] < dep["replicas"]:
            raise ClusterUnreachable(f"{self.spec.app.name}-{track} is not ready with {image}: image {dep['image']}, {dep['ready']}/{dep['replicas']} ready")
        return dep

    def _verify_end_state(self, state: ReleaseState, stable_image: str, rollback: bool = False) -> None:
        """Route 100 % stable and accepted, no canary pods, the stable Deployment on ``stable_image``."""
        self._wait_route(state, 0, rollback=rollback)
        deadline = self.clock.monotonic() + self.ready_timeout
        delay = 0.05
        while True:
            canary = self.cluster.deployment(self.spec, "canary")
            stable = self.cluster.deployment(self.spec, "stable")
            problems = []
            if canary["pods"] or canary["replicas"]:
                problems.append(f"the canary still has {canary['pods']} pods ({canary['replicas']} desired)")
            if stable["image"] != stable_image:
                problems.append(f"stable runs {stable['image']}, not {stable_image}")
            if stable["ready"] < stable["replicas"]:
                problems.append(f"stable has {stable['ready']}/{stable['replicas']} ready")
            if not problems:
                self.journal.record(state.release, "verified", stable_image=stable_image, route="100/0", canary_pods=0, stable_ready=stable["ready"])
                return
            if self.clock.monotonic() > deadline:
                raise ClusterUnreachable("end state not reached: " + "; ".join(problems))
            # Terminating pods may go within a fraction of a second, or take their grace period:
            # look again soon, then less and less often.
            self.clock.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def _retrying(self, state: ReleaseState, action: Callable[[], None], pending: bool = True) -> None:
        """Bounded retries with back-off for temporary failures (the API server not answering).

        In a rollback (``pending``) running out of attempts raises RollbackPending;
        elsewhere the last error, which sends the release into its rollback.
        """
        delay = self.retry_backoff
        retryable: tuple[type[CanaryError], ...] = (CanaryError,) if pending else (ClusterUnreachable, RouteNotAccepted)
        for attempt in range(1, self.retries + 1):
            try:
                action()
                return
            except retryable as exc:
                if attempt == self.retries:
                    if not pending:
                        raise
                    raise RollbackPending(f"rollback could not be applied after {attempt} attempts: {exc}; run canary resume {self.stack_name} once the cluster answers") from exc
                what = "rollback step" if pending else "step"
                self._event(state, f"{what} failed (attempt {attempt} of {self.retries}): {exc}; retrying in {delay:g}s")
                self.clock.sleep(delay)
                delay *= 2

    # --- webhooks ----------------------------------------------------------------------------------

    def _payload(self, state: ReleaseState, hook: Webhook) -> dict[str, Any]:
        return webhooks.payload(hook, app=self.spec.app.name, namespace=self.spec.app.namespace, phase=state.phase.value,
                                weight=state.weight, release=state.release, extra={"canaryImage": state.canary_image, "stableImage": state.stable_image})

    def _hooks(self, state: ReleaseState, kind: WebhookType) -> list[webhooks.HookResult]:
        results = []
        for hook in self.spec.analysis.webhooks:
            if hook.type is kind:
                result = webhooks.call(hook, self._payload(state, hook))
                self.journal.record(state.release, "webhook", name=hook.name, hook_type=kind.value, ok=result.ok, seconds=round(result.seconds, 3), detail=result.detail)
                results.append(result)
        return results

    def _gate(self, state: ReleaseState, kind: WebhookType) -> webhooks.HookResult | None:
        """The first gate hook of ``kind`` that said no, or None when all said yes (or there are none)."""
        return next((r for r in self._hooks(state, kind) if not r.ok), None)

    def _rollback_hook(self, state: ReleaseState) -> str | None:
        return next((r.name for r in self._hooks(state, WebhookType.ROLLBACK) if r.ok), None)

    def _start_rollout_hooks(self, state: ReleaseState) -> list[tuple[Webhook, Any]]:
        """Rollout hooks run during the interval: commands in the background, HTTP calls now."""
        running: list[tuple[Webhook, Any]] = []
        for hook in self.spec.analysis.webhooks:
            if hook.type is not WebhookType.ROLLOUT:
                continue
            if hook.cmd:
                try:
                    running.append((hook, webhooks.start_command(hook)))
                except (OSError, ValueError) as exc:
                    running.append((hook, webhooks.HookResult(hook.name, hook.type.value, False, 0.0, f"`{hook.cmd}` could not start: {exc}")))
            else:
                running.append((hook, webhooks.call(hook, self._payload(state, hook))))
        return running

    def _finish_rollout_hooks(self, state: ReleaseState, running: list[tuple[Webhook, Any]], start: float) -> list[webhooks.HookResult]:
        """Collect rollout hooks. A command (a load test) may run through the interval and then
        ``timeout`` longer — as a Flagger load tester runs it in the background — before it is killed."""
        failures = []
        for hook, handle in running:
            if isinstance(handle, webhooks.HookResult):
                result = handle
            else:
                grace = max(0.0, start + self.spec.analysis.interval.total_seconds() + hook.timeout.total_seconds() - self.clock.monotonic())
                result = webhooks.finish_command(hook, handle, time.monotonic() + grace, time.monotonic())
            self.journal.record(state.release, "webhook", name=hook.name, hook_type=hook.type.value, ok=result.ok, seconds=round(result.seconds, 3), detail=result.detail, weight=state.weight)
            if not result.ok:
                failures.append(result)
        return failures

    def _post_rollout(self, state: ReleaseState) -> None:
        for result in self._hooks(state, WebhookType.POST_ROLLOUT):
            if not result.ok:
                self._event(state, f"post-rollout webhook {result.name} failed: {result.detail}", notify=False)

    # --- record ----------------------------------------------------------------------------------

    def _snapshot(self, state: ReleaseState, spec: ReleaseSpec, export: Future[dict[str, Any]]) -> None:
        stable = {"stableImage": spec.stable_image, "canaryWeight": spec.canary_weight, "canaryImage": spec.canary_image}
        path = self.journal.save_snapshot(state.release, "stable-config", stable)
        try:
            export_path = str(self.journal.save_snapshot(state.release, "stable-export", export.result()))
        except CanaryError as exc:
            export_path = f"(export failed: {exc})"
        self.journal.record(state.release, "snapshot", config=stable, config_file=str(path), export_file=export_path)

    def _decide(self, state: ReleaseState, message: str, **fields: Any) -> None:
        """A decision, durable before it is acted on."""
        self.journal.record(state.release, "decision", phase=state.phase.value, weight=state.weight, message=message, **fields)
        self._event(state, message, record=False)

    def _save(self, state: ReleaseState, message: str, **fields: Any) -> ReleaseState:
        state = replace(state, updated=now_iso())
        self.journal.save_state(state.to_json())
        self.journal.record(state.release, "state", phase=state.phase.value, weight=state.weight, failed_in_row=state.failed_in_row, message=message, **fields)
        self._event(state, message, record=False)
        return state

    def _event(self, state: ReleaseState, message: str, record: bool = True, notify: bool = True) -> None:
        event = Event(now_iso(), state.release, state.phase.value, state.weight, message)
        if record:
            self.journal.record(state.release, "event", phase=state.phase.value, weight=state.weight, message=message)
        if self.on_event is not None:
            self.on_event(event)
        if notify and self._spec is not None:
            for hook in self.spec.analysis.webhooks:
                if hook.type is WebhookType.EVENT:
                    self._events.put(hook, {**self._payload(state, hook), "message": message})

    def _event_hook_failed(self, result: webhooks.HookResult) -> None:
        """Recorded (failures only: one record per event would drown the journal), never acted on."""
        if self._release_id is not None:
            self.journal.record(self._release_id, "webhook", name=result.name, hook_type=result.type, ok=False,
                                seconds=round(result.seconds, 3), detail=result.detail)

    def _deliver_events(self) -> None:
        """The release's last events reach their hooks before the command returns (bounded; what is
        left is recorded through _event_hook_failed, like any other failed event)."""
        self._events.close(timeout=self.event_flush_timeout)

    def _wait(self, state: ReleaseState, seconds: float) -> bool:
        """Sleep in short slices so that an abort request is seen within a fraction of a second; True if one came."""
        end = self.clock.monotonic() + seconds
        while (left := end - self.clock.monotonic()) > 0:
            if self.journal.take_request("abort", state.release) is not None:
                return True
            self.clock.sleep(min(0.2, left))
        return False

    def _result(self, state: ReleaseState) -> ReleaseResult:
        return ReleaseResult(state.release, state.phase, state.weight, state.reason, state.last_checks, state.rollback_pending)
