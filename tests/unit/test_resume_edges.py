"""Where a resume starts and a rollback ends: another host's Pulumi lock, a cancel that lands before the phase
is known, an abort a rollback cannot act on, a confirm-rollout gate already passed, a route at rest the gateway
has not taken, a schedule other than the release's. In-memory doubles."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest

from canary.core import exitcodes, records
from canary.core.records import HookResult, Phase
from canary.core.routing import RouteState
from canary.errors import StackBusy, StackLocked
from tests.unit.fakes import FakeHooks, Metrics, World, make, spec


class Killed(BaseException):
    """The process dies (SIGKILL): nothing of the release's own handling runs."""


# --- another host's Pulumi lock


def test_a_resume_refuses_at_once_while_another_host_s_pulumi_lock_is_held_and_applies_nothing() -> None:
    """Machine A killed inside a shift's ``up``: its lock names A's host, which nothing on B can judge. B's resume
    re-applied the step and waited ``lock_wait`` for it (the canary keeping its traffic, no tick), failed the step,
    rolled the healthy release back, waited as long again and wrote the route around Pulumi: exit 4."""
    world = make(Metrics(0.0), lock_wait=600.0)

    def on_up(record: dict[str, Any]) -> None:
        if record["parts"] == {"route"} and record["pins"]["route"]["weight"] == 30:
            raise Killed  # A dies inside the shift 20 -> 30; its CLI's lock stays

    world.stack.on_up = on_up
    with pytest.raises(Killed):
        world.start()
    world.stack.on_up = None
    before = world.store.state
    assert before is not None and before.phase is Phase.PROGRESSING and before.weight == 20
    held = ["pid 42 on machine-a since 2026-12-01T00:00:30Z"]

    def check_unlocked() -> None:  # as the file backend's stack reads A's lock
        if held:
            raise StackLocked(f"stack test is locked by a running Pulumi update: {held[0]} (another host's: whether it still runs cannot be seen from here)")

    world.stack.check_unlocked = check_unlocked  # type: ignore[attr-defined]
    world.stack.locked_until = 10**9  # an `up` would be refused: it must not even be tried
    b = world.rebuild()
    ups, journal, t0 = len(world.stack.ups), len(world.store.journal), b.clock.monotonic()
    with pytest.raises(StackBusy) as refused:
        b.release.resume()
    said = str(refused.value)
    assert exitcodes.for_error(refused.value) == exitcodes.BUSY
    assert "locked by a running Pulumi update: pid 42 on machine-a since 2026-12-01T00:00:30Z" in said, said
    assert "pulumi cancel --stack test" in said and "canary resume test --app web" in said, said
    assert b.clock.monotonic() == t0 and not world.stack.refused and len(world.stack.ups) == ups
    assert world.store.state == before and len(world.store.journal) == journal  # nothing saved, nothing journaled
    assert b.lease.acquired and b.lease.held is None  # the lease taken for the look is let go
    # someone ran `pulumi cancel`: the resume goes on from where A stopped
    held.clear()
    world.stack.locked_until = 0.0
    result = world.rebuild().release.resume()
    assert result.phase is Phase.SUCCEEDED, result.reason


def test_a_rollback_whose_traffic_may_be_on_the_canary_is_not_refused_for_another_host_s_lock() -> None:
    """Machine A killed inside its rollback's traffic step: refused, the canary kept its share of the traffic until a
    person came. The rollback goes on: its `up` waits for the lock, then the route is written at rest around Pulumi."""
    world = make(Metrics(18.2), lock_wait=30.0)

    def on_up(record: dict[str, Any]) -> None:
        state = world.store.state
        if state is not None and state.phase is Phase.ROLLING_BACK and record["parts"] == {"route"}:
            raise Killed

    world.stack.on_up = on_up
    with pytest.raises(Killed):
        world.start()
    world.stack.on_up = None
    assert world.cluster.shape.weight == 10

    def check_unlocked() -> None:
        raise StackLocked("stack test is locked by a running Pulumi update: pid 42 on machine-a since 2026-12-01T00:00:30Z")

    world.stack.check_unlocked = check_unlocked  # type: ignore[attr-defined]
    world.stack.locked_until = 10**9
    result = world.rebuild().release.resume()
    assert result.rollback_pending and result.exit_code == exitcodes.ROLLBACK_PENDING, result.reason
    assert world.cluster.shape.weight == 0 and world.cluster.restored, "traffic left on the canary"


# --- a cancel that lands while a rollback's resume starts


class _CancelAware(FakeHooks):
    """Hooks the release's cancel token cuts short, as the real caller's are."""

    def call(self, hook: Any, body: Any, cancel: threading.Event | None = None) -> HookResult:
        if cancel is not None and cancel.is_set():
            self.calls.append((hook.name, "abandoned"))
            return HookResult(hook.name, hook.type.value, False, 0.0, "abandoned: the release was cancelled")
        return super().call(hook, body, cancel)


def _two_notifiers(v: dict[str, Any]) -> None:
    v["analysis"]["webhooks"] = [{"name": "notify-a", "type": "post-rollout", "url": "http://a/"},
                                 {"name": "notify-b", "type": "post-rollout", "url": "http://b/"}]


def _pending_rollback(abort_meanwhile: bool) -> World:
    """A failing release whose rollback cannot be applied: "rollback pending" (exit 4), the backend then back.
    ``abort_meanwhile``: a `canary abort` accepted while it was rolling back."""
    world = make(Metrics(18.0), _two_notifiers, retries=1, retry_backoff=0.1, hooks=_CancelAware())

    def on_up(record: dict[str, Any]) -> None:
        state = world.store.state
        if state is not None and state.phase is Phase.ROLLING_BACK and not world.stack.fail_ups:
            world.stack.fail_ups = 100
            world.cluster.restore_error = RuntimeError("no")
            if abort_meanwhile:
                world.store.request("abort", by="oncall")

    world.stack.on_up = on_up
    assert world.start().rollback_pending
    world.stack.on_up = None
    world.stack.fail_ups = 0
    world.cluster.restore_error = None
    return world


@pytest.mark.parametrize("cancel", ["signal while the lease is taken", "abort accepted during the rollback"])
def test_a_cancel_that_lands_as_a_rollback_s_resume_starts_does_not_cut_the_rollback_s_hooks(cancel: str) -> None:
    """The phase was known only at the loop's first turn: a signal while the lease was taken (or the watch's first
    report of an abort) set the cancel token, and nothing cleared it in RollingBack: the post-rollout hooks were
    abandoned, "the release was cancelled"."""
    world = _pending_rollback(abort_meanwhile=cancel.startswith("abort"))
    b = world.rebuild()
    b.hooks.calls.clear()
    if cancel.startswith("signal"):
        acquire = b.lease.acquire

        def acquire_then_signal(release: str) -> None:
            acquire(release)
            b.release.request_abort("signal SIGINT")

        b.lease.acquire = acquire_then_signal  # type: ignore[method-assign]
    result = b.release.resume()
    assert result.phase is Phase.FAILED and not result.rollback_pending, result.reason
    assert b.hooks.calls == [("notify-a", "post-rollout"), ("notify-b", "post-rollout")], b.hooks.calls
    assert not b.release.cancel.is_set()
    # an abort it could not act on is said, and gone from the requests
    by = "signal SIGINT" if cancel.startswith("signal") else "oncall"
    assert any(e.message.startswith(f"abort by {by} ignored: already rolling back (") for e in b.events), [e.message for e in b.events]
    assert "abort" not in world.store.pending


# --- an abort a rollback cannot act on


def test_an_abort_accepted_while_the_release_rolls_back_after_a_failure_is_said_and_cleared() -> None:
    """`canary abort` is accepted while a release rolls back; the release rightly ends Failed, but the request
    stayed in the requests ConfigMap for good (a resume of a pending rollback then took it as a cancel)."""
    world = make(Metrics(18.2))

    def on_up(record: dict[str, Any]) -> None:
        state = world.store.state
        if state is not None and state.phase is Phase.ROLLING_BACK and "abort" not in world.store.pending and not world.store.of("request"):
            world.store.request("abort", by="oncall")

    world.stack.on_up = on_up
    result = world.start()
    assert result.phase is Phase.FAILED and "3 checks in a row" in result.reason, result.reason
    assert "abort" not in world.store.pending
    ignored = [e.message for e in world.events if "ignored" in e.message]
    assert ignored == [f"abort by oncall ignored: already rolling back ({result.reason})"], ignored


def test_an_abort_that_began_the_rollback_is_not_said_ignored() -> None:
    world = make(Metrics(0.0))

    def on_up(record: dict[str, Any]) -> None:
        if record["parts"] == {"route"} and record["pins"]["route"]["weight"] == 20 and not world.store.of("request"):
            world.store.request("abort", by="oncall")

    world.stack.on_up = on_up
    result = world.start()
    assert result.phase is Phase.ABORTED and result.reason == "aborted by oncall", result.reason
    assert "abort" not in world.store.pending
    assert not [e.message for e in world.events if "ignored" in e.message]


def test_the_resumed_rollback_of_an_aborted_release_does_not_call_its_own_abort_ignored() -> None:
    # killed inside the abort's rollback before the request was cleared: the resume read it as another abort, "ignored"
    world = make(Metrics(0.0))

    def on_up(record: dict[str, Any]) -> None:
        if record["parts"] == {"route"} and record["pins"]["route"]["weight"] == 20 and not world.store.of("request"):
            world.store.request("abort", by="oncall")

    save = world.store.save

    def saved(state: Any) -> None:
        save(state)
        if state.phase is Phase.ROLLING_BACK and "abort" in world.store.pending:
            raise Killed  # once the rollback is saved, before its abort is cleared

    world.stack.on_up = on_up
    world.store.save = saved  # type: ignore[method-assign]
    with pytest.raises(Killed):
        world.start()
    world.stack.on_up = None
    world.store.save = save  # type: ignore[method-assign]
    assert "abort" in world.store.pending
    resumed = world.rebuild()
    result = resumed.release.resume()
    assert result.phase is Phase.ABORTED, result.reason
    assert not [e.message for e in resumed.events if "ignored" in e.message]
    assert "abort" not in world.store.pending


# --- a confirm-rollout gate already passed


def test_a_resume_after_the_canary_was_deployed_does_not_ask_confirm_rollout_again() -> None:
    """The gate said no, then yes; the canary was deployed; a pre-rollout hook failed and the runner died in
    the retry's wait. The resume asked confirm-rollout again, as Waiting (never reset), and the gate, closed
    again after its approval, held a release whose canary had its pods."""
    rollout: list[bool] = [False, True]  # no, then yes: then closed again after the approval
    pre: list[bool] = [False]  # the first pre-rollout call fails
    asked: list[str] = []
    world: World

    def die(now: float) -> None:
        raise Killed

    def answer(name: str, kind: str) -> bool:
        asked.append(kind)
        if kind == "confirm-rollout":
            return rollout.pop(0) if rollout else False
        if kind == "pre-rollout":
            if pre:
                world.clock.on_sleep = die  # killed while the failure's interval is waited out
                return pre.pop()
            return True
        return kind != "rollback"

    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[
        {"name": "gate", "type": "confirm-rollout", "url": "http://gate/"},
        {"name": "smoke", "type": "pre-rollout", "url": "http://smoke/"}]), hooks=FakeHooks(answer))
    with pytest.raises(Killed):
        world.start()
    world.clock.on_sleep = None
    killed = world.store.state
    assert killed is not None and killed.phase is Phase.INITIALIZING and killed.canary_deployed and killed.failed_in_row == 1
    assert not killed.waiting  # the gate's yes saved with the canary: no longer Waiting
    assert asked.count("confirm-rollout") == 2
    asked.clear()
    rollout.extend([False, False, True])  # asked again, it would hold the release with the canary's pods up
    b = world.rebuild()
    result = b.release.resume()
    assert result.phase is Phase.SUCCEEDED, result.reason
    assert "confirm-rollout" not in asked and "pre-rollout" in asked, asked
    assert not [e for e in b.events if e.message.startswith("waiting: confirm-rollout")]
    deploys = [u for u in world.stack.ups if u["parts"] == {"canary", "route"}]
    assert len(deploys) == 2 and deploys[-1]["refresh"]  # deployed again (and read back first), then verified


# --- post-rollout hooks owed by a release that ended


class _Phases(FakeHooks):
    """Hooks that keep the ``phase`` each post-rollout call was sent; ``die`` kills the process at the first one."""

    def __init__(self) -> None:
        super().__init__(lambda name, kind: kind != "rollback")
        self.phases: list[str] = []
        self.die = False

    def call(self, hook: Any, body: Any, cancel: threading.Event | None = None) -> HookResult:
        if hook.type.value == "post-rollout":
            if self.die:
                raise Killed  # the end is saved, no hook called yet
            self.phases.append(body["phase"])
        return super().call(hook, body, cancel)


def _killed_after_its_end(error_rate: float) -> tuple[World, _Phases]:
    """A release whose process died once its end was saved, before its first post-rollout hook."""
    hooks = _Phases()
    world = make(Metrics(error_rate), _two_notifiers, hooks=hooks)
    hooks.die = True
    with pytest.raises(Killed):
        world.start()
    hooks.die = False
    return world, hooks


@pytest.mark.parametrize(("error_rate", "ended", "sent"), [(0.0, Phase.SUCCEEDED, "Succeeded"), (18.0, Phase.FAILED, "Failed")])
def test_a_release_killed_after_its_end_was_saved_has_its_post_rollout_hooks_sent_by_resume(error_rate: float, ended: Phase, sent: str) -> None:
    """The end was saved, then the process died before the post-rollout hooks: `resume` saw an ended release and
    returned, the hooks never sent. Now the end is saved owing them, and resume sends them once, and nothing else."""
    world, hooks = _killed_after_its_end(error_rate)
    killed = world.store.state
    assert killed is not None and killed.phase is ended
    ups = len(world.stack.ups)
    b = world.rebuild()
    b.hooks.calls.clear()
    result = b.release.resume()
    assert result.phase is ended and result.exit_code == killed.exit_code, result.reason
    assert b.hooks.calls == [("notify-a", "post-rollout"), ("notify-b", "post-rollout")], b.hooks.calls
    assert hooks.phases == [sent, sent]
    assert len(world.stack.ups) == ups  # nothing applied: the end was verified before it was saved
    after = world.store.state
    assert after is not None and after.phase is ended and not after.post_rollout_owed and killed.post_rollout_owed
    assert b.lease.acquired == [killed.release] and b.lease.held is None  # called under the lease, then let go
    # sent: a second resume has nothing to do
    c = world.rebuild()
    b.hooks.calls.clear()
    assert c.release.resume().phase is ended
    assert b.hooks.calls == [] and c.lease.acquired == []


def test_a_release_that_ran_its_post_rollout_hooks_owes_none_and_an_old_state_owes_none() -> None:
    world = make(Metrics(0.0), _two_notifiers)
    assert world.start().phase is Phase.SUCCEEDED
    assert world.hooks.calls[-2:] == [("notify-a", "post-rollout"), ("notify-b", "post-rollout")]
    assert world.store.state is not None and not world.store.state.post_rollout_owed
    # a state saved before the field was kept reads as owing nothing: resume neither calls hooks nor takes the lease
    data = records.dump(world.store.state)
    data.pop("post_rollout_owed", None)
    world.store.state = records.parse_state(data)
    assert not world.store.state.post_rollout_owed
    world.hooks.calls.clear()
    b = world.rebuild()
    assert b.release.resume().phase is Phase.SUCCEEDED
    assert b.hooks.calls == [] and b.lease.acquired == []


def test_a_signal_cutting_resume_s_post_rollout_hooks_short_leaves_them_owed() -> None:
    world, hooks = _killed_after_its_end(0.0)
    b = world.rebuild()
    answer = hooks.answer

    def signal_at_first(name: str, kind: str) -> bool:
        if kind == "post-rollout":
            b.release.request_abort("signal SIGINT")
        return answer(name, kind)

    hooks.answer = signal_at_first
    assert b.release.resume().phase is Phase.SUCCEEDED
    assert hooks.phases == ["Succeeded"]  # the second not called: the user stopped it
    assert world.store.state is not None and world.store.state.post_rollout_owed
    hooks.answer = answer
    assert world.rebuild().release.resume().phase is Phase.SUCCEEDED
    assert hooks.phases == ["Succeeded", "Succeeded", "Succeeded"] and not world.store.state.post_rollout_owed


def test_a_new_release_first_calls_the_post_rollout_hooks_a_killed_release_still_owes() -> None:
    """Nobody resumed the release killed after its end: the next release replaced its state, and with it the
    hooks it owed, silently. They are called first now, with the phase that release ended in."""
    world, hooks = _killed_after_its_end(18.0)
    killed = world.store.state
    assert killed is not None and killed.phase is Phase.FAILED and killed.post_rollout_owed
    world.metrics.error_rate = 0.0
    b = world.rebuild()
    assert b.start().phase is Phase.SUCCEEDED
    assert hooks.phases == ["Failed", "Failed", "Succeeded", "Succeeded"]
    assert any(e.release == killed.release and "without calling its post-rollout webhooks" in e.message for e in world.store.of("event"))


# --- a rollback's route at rest that the gateway has not taken


def _route_at_rest_read(world: World, **status: Any) -> list[bool]:
    """The route as the rollback reads it: at rest in its spec, with ``status`` (the gateway's word) while the
    returned flag list is not emptied."""
    read, holding = world.cluster.route, [True]

    def route(spec: Any) -> RouteState:
        seen = read(spec)
        state = world.store.state
        return replace(seen, **status) if holding and state is not None and state.phase is Phase.ROLLING_BACK else seen

    world.cluster.route = route  # type: ignore[method-assign]
    return holding


def test_a_rollback_is_not_verified_while_the_gateway_has_not_taken_the_route_at_rest() -> None:
    """The gateway's controller is down: the route's spec says 100/0, its data plane goes on serving the canary
    weight it last took. The rollback said "traffic is back on stable", scaled the canary to zero (that share then
    failed) and ended Failed, verified. Now it waits as for any route, then stays pending (exit 4) with the canary's
    pods serving its share; the resume once the gateway took the route completes it."""
    world = make(Metrics(5.0))  # a faulty canary: rolled back
    behind = _route_at_rest_read(world, generation=7, accepted=False, reason="gateway lab has not observed generation 7 yet (at 6)")
    result = world.start()
    state = world.store.state
    assert result.rollback_pending and result.exit_code == exitcodes.ROLLBACK_PENDING, result.reason
    assert state is not None and state.phase is Phase.ROLLING_BACK and not state.verified and state.rollback_step < 2
    assert "gateway lab has not observed generation 7 yet" in result.reason
    assert world.cluster.canary_replicas > 0  # the share the gateway still sends it is served
    assert not any("traffic is back on stable" in e.message or "does not accept it" in e.message for e in world.events)
    # the route moved, the gateway has not taken it: not taken for a route changed outside Pulumi (applied again with refresh)
    assert not any("did not move" in e.message for e in world.events), [e.message for e in world.events]
    behind.clear()  # the controller is back and takes the route
    done = world.rebuild().release.resume()
    assert done.phase is Phase.FAILED and done.exit_code == exitcodes.FAILED, done.reason
    assert world.store.state is not None and world.store.state.verified and world.cluster.canary_replicas == 0


@pytest.mark.parametrize("why", ["refused", "gone"])
def test_a_rollback_s_route_at_rest_that_a_gateway_refuses_or_whose_gateway_is_gone_is_tolerated(why: str) -> None:
    """Nothing routes through such a gateway to the canary: the rollback notes it and completes."""
    reason = "gateway lab did not accept the route: NotAllowedByListeners" if why == "refused" else "gateway lab does not exist"
    status: dict[str, Any] = {"refused": True} if why == "refused" else {"missing": ("lab",)}
    world = make(Metrics(5.0))
    _route_at_rest_read(world, accepted=False, reason=reason, **status)
    result = world.start()
    assert result.phase is Phase.FAILED and world.store.state is not None and world.store.state.verified, result.reason
    assert world.cluster.canary_replicas == 0
    # waited for once: the traffic step's own check tolerated it, and the rollback went on (it waited a second route timeout)
    assert [e.message for e in world.events].count(f"the route is at rest but its gateway does not accept it: {reason}") == 2, world.events


# --- a resume that goes on with another schedule than the release's


ERRORS_ONLY = [{"name": "request-error-rate", "thresholdRange": {"max": 1}}]


def _weights(step_weights: list[int]) -> Any:
    def mutate(values: dict[str, Any]) -> None:
        for key in ("stepWeight", "maxWeight"):
            values["analysis"].pop(key, None)
        values["analysis"].update(stepWeights=step_weights, metrics=ERRORS_ONLY)
    return spec(mutate)


@pytest.mark.parametrize(
    ("killed_shifting_to", "step_weights", "after"),
    [
        (30, [50, 100], [20, 50, 100, 0]),  # the schedule's step 2 is 100: re-applied, traffic jumped to it unjudged
        (40, [10, 15], [30, 0]),  # it has no step 3 (IndexError: an "internal error" rollback of a healthy release)
    ],
    ids=["other-weights", "shorter"],
)
def test_a_resume_with_another_schedule_re_applies_the_weight_reached_and_goes_on_from_it(killed_shifting_to: int, step_weights: list[int],
                                                                                          after: list[int]) -> None:
    """Resumed by a version that refuses the release's snapshot, the release goes on with the stack file's analysis,
    whose steps may differ: the route the state recorded is re-applied and judged again, then the release goes on to
    the schedule's first heavier weight (past its last one: promotion), and the journal says so."""
    world = make(Metrics(0.0), lambda v: v["analysis"].update(metrics=ERRORS_ONLY))  # stepWeight 10, maxWeight 50

    def on_up(record: dict[str, Any]) -> None:
        if record["parts"] == {"route"} and record["pins"]["route"]["weight"] == killed_shifting_to:
            raise Killed

    world.stack.on_up = on_up
    with pytest.raises(Killed):
        world.start()
    world.stack.on_up = None
    killed = world.store.state
    assert killed is not None and killed.phase is Phase.PROGRESSING and killed.weight == after[0]
    resumed = make(world.metrics, stack=world.stack, cluster=world.cluster, store=world.store, config=world.config, hooks=world.hooks,
                   clock=world.clock, spec_=_weights(step_weights))
    seen, ticks = len(world.cluster.weights_seen), len(world.store.of("tick"))
    result = resumed.release.resume()
    assert result.phase is Phase.SUCCEEDED, result.reason
    assert world.cluster.weights_seen[seen - 1:] == after
    assert world.store.of("tick")[ticks].weight == after[0]  # the weight reached is judged first
    said = [e.message for e in world.store.of("event") if "the schedule this resume goes on with" in e.message]
    assert len(said) == 1 and f"weights {step_weights}, analysis)" in said[0] and f"the release reached weight {after[0]}" in said[0], said
