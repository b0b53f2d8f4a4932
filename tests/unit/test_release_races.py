"""Races inside one release process, each interleaving forced with events: an abort's look at the phase and its
cancel, an interrupt meant for one `up` landing on the next, the first signal's message, a delivery after close."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

from canary.core.records import Phase
from canary.errors import Cancelled
from canary.release.hooks import Delivery
from canary.release.ports import HookResult
from tests.unit.fakes import Metrics, make

#: how long a thread is held between its look and its act; with the fixes the other thread waits on a lock for it,
#: so the hold runs out (kept short: each such test waits it once)
GATE_S = 1.5


def test_an_abort_judged_by_the_phase_before_a_rollback_does_not_cut_the_rollback_s_post_rollout_hooks() -> None:
    # the watch reads `_phase` (Progressing) and decides to cancel; the release thread takes the abort and rolls back;
    # the watch's cancel lands during the rollback: the post-rollout webhooks are cut and left owed
    world = make(Metrics(0.0), lambda v: v["analysis"].update(webhooks=[{"name": "post", "type": "post-rollout", "url": "http://post/"}]))
    release = world.release
    original = release._cancel_now
    reached, go = threading.Event(), threading.Event()
    watch: list[threading.Thread] = []

    def held_cancel_now() -> None:
        if threading.current_thread().name == "watch":
            reached.set()
            go.wait(GATE_S)  # the watch thread, preempted between its look at the phase and its act
        original()

    release._cancel_now = held_cancel_now  # type: ignore[method-assign]

    def on_sleep(now: float) -> None:
        st = world.store.state
        if watch or st is None or st.phase is not Phase.PROGRESSING or st.weight != 20:
            return
        t = threading.Thread(target=release._on_requests, args=({"abort": {"release": st.release, "by": "oncall", "time": "t1"}},), name="watch")
        watch.append(t)
        t.start()
        assert reached.wait(5)

    def on_up(record: dict[str, Any]) -> None:
        st = world.store.state
        if watch and st is not None and st.phase is Phase.ROLLING_BACK and not go.is_set():
            go.set()
            watch[0].join(5)

    world.clock.on_sleep = on_sleep
    world.stack.on_up = on_up
    result = world.start()
    assert result.phase is Phase.ABORTED, result
    assert world.store.state is not None and not world.store.state.post_rollout_owed, "post-rollout hooks cut by a stale cancel"
    assert not release.cancel.is_set()


def test_an_interrupt_meant_for_a_step_s_up_never_lands_on_the_rollback_s_up() -> None:
    # a signal's abort reads `_in_up` True during a step's up, and is preempted before stack.interrupt(); the step's
    # CLI is interrupted by its own poll, the release rolls back, and the delayed interrupt lands on the rollback's up
    world = make(Metrics(0.0))
    release, stack = world.release, world.stack
    reached, go = threading.Event(), threading.Event()
    running: list[bool | None] = [None]  # None: no up; True: a cancellable up; False: a rollback's (not cancellable)
    hit: list[bool] = []
    signal: list[threading.Thread] = []
    original_up = stack.up

    def interrupt() -> bool:
        if threading.current_thread().name == "signal":
            reached.set()
            go.wait(GATE_S)
            if running[0] is False:
                hit.append(True)  # SIGINT to the rollback's CLI: it stops, as interrupted
        stack.interrupted += 1
        return True

    def up(**kwargs: Any) -> Any:
        cancellable = kwargs.get("cancel") is not None
        running[0] = cancellable
        try:
            if cancellable and not signal:
                t = threading.Thread(target=release.request_abort, args=("signal SIGINT",), name="signal")
                signal.append(t)
                t.start()
                assert reached.wait(5)
                raise Cancelled("pulumi up: interrupted")  # the CLI's own poll of the token interrupted it
            if not cancellable and signal and not go.is_set():
                go.set()
                signal[0].join(5)
                if hit:
                    raise Cancelled("pulumi up of test: interrupted")
            return original_up(**kwargs)
        finally:
            running[0] = None

    stack.interrupt = interrupt  # type: ignore[method-assign]
    stack.up = up  # type: ignore[method-assign]
    result = world.start()
    assert not hit, "the abort meant for the step's up interrupted the rollback's"
    assert result.phase is Phase.ABORTED and not result.rollback_pending, (result.phase, result.reason)


CHILD = textwrap.dedent("""
    import os, signal, sys, threading, time
    from canary import cli
    cli._on_signals(lambda by: None)
    main = threading.main_thread().ident
    def later():
        time.sleep(0.5)
        signal.pthread_kill(main, signal.SIGINT)  # as a Ctrl-C: the main thread, blocked in its write, takes it
    threading.Thread(target=later, daemon=True).start()
    try:
        sys.stderr.write("x" * 300000 + "\\n")  # a warning, say, to a pipe nobody reads right now
        sys.stderr.flush()
        outcome = "ok"
    except BaseException as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    with open(sys.argv[1], "w") as f:
        f.write(outcome)
""")


def test_the_first_signal_s_message_does_not_break_a_blocked_stderr_write(tmp_path: Any) -> None:
    out = tmp_path / "outcome"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # sys.stderr buffered, as by default
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], stderr=subprocess.PIPE, cwd=os.getcwd(), env=env)
    time.sleep(1.5)  # the pipe stays full until after the signal
    child.communicate(timeout=20)
    assert out.read_text() == "ok"


def test_a_delivery_put_during_close_starts_no_second_worker() -> None:
    gate = threading.Event()
    delivered: list[tuple[str, str]] = []
    delivery: Delivery

    def call(name: str, ok: bool = True, wait: bool = False) -> Any:
        def run() -> HookResult:
            if wait:
                gate.wait(5)
            delivered.append((name, threading.current_thread().name + str(threading.get_ident())))
            return HookResult(name, "event", ok, 0.0, "")
        return run

    def on_failure(result: HookResult) -> None:
        # recording the failure tells people of a refusal first seen now (Recorder._say_refusal → event → put)
        if result.name == "first":
            delivery.put("refused", "event", call("refused"))

    delivery = Delivery(on_failure)
    delivery.put("first", "event", call("first", ok=False, wait=True))
    delivery.put("second", "event", call("second"))
    before = {t.ident for t in threading.enumerate() if t.name == "canary-events"}
    closer = threading.Thread(target=delivery.close, args=(1.0,))
    closer.start()
    while delivery._thread is not None:
        time.sleep(0.01)
    gate.set()
    closer.join(5)
    time.sleep(0.3)
    alive = [t for t in threading.enumerate() if t.name == "canary-events" and t.ident not in before and t.is_alive()]
    stale = [t for t in threading.enumerate() if t.name == "canary-events" and t.is_alive()]
    assert not alive and not stale, f"workers left after close: {stale}; delivered {delivered}"


SECOND = textwrap.dedent("""
    import os, signal, sys, time
    from canary import cli
    r, w = os.pipe(); os.close(r); os.dup2(w, 2)  # stderr: a pipe whose reader (a `| tee log`) died with the first Ctrl-C
    cli._on_signals(lambda by: None)
    os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2)
    try:
        os.kill(os.getpid(), signal.SIGINT); time.sleep(2)
        print("second signal did not stop the process", flush=True)
    except BaseException as exc:
        print("raised into the main thread:", type(exc).__name__, flush=True)
""")


def test_the_second_signal_stops_at_once_when_stderr_is_gone() -> None:
    # `canary release … 2>&1 | tee log`: the first Ctrl-C kills the tee too; the second's message raised BrokenPipeError
    # into the main thread, a release's loop took it for an internal error and rolled back instead of stopping
    child = subprocess.run([sys.executable, "-c", SECOND], capture_output=True, text=True, timeout=20, cwd=os.getcwd())
    assert child.returncode == 128 + signal.SIGINT, (child.returncode, child.stdout, child.stderr)
    assert child.stdout == ""
