"""The test workers' holds on the lab (tests/lab/holds.py): a worker that raced another to start the lab
must not wait behind the tests already running on it. Threads stand in for workers: each opens the lock
files itself, and ``flock`` holds of separate opens exclude each other as between processes."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.lab.holds import LabHolds


@contextlib.contextmanager
def _tests_running(holds: LabHolds) -> Iterator[None]:
    """Two workers running test after test (for 8 s at most), their shared holds overlapping: at no moment
    is the lab free."""
    until = time.monotonic() + 8
    stop = threading.Event()

    def worker(offset: float) -> None:
        time.sleep(offset)
        while time.monotonic() < until and not stop.is_set():
            with holds.held(exclusive=False):
                time.sleep(0.2)

    threads = [threading.Thread(target=worker, args=(offset,), daemon=True) for offset in (0.0, 0.1)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def _timed(call: Callable[[], None]) -> float:
    began = time.monotonic()
    call()
    return time.monotonic() - began


def test_a_worker_that_saw_the_lab_down_before_another_started_it_does_not_wait_behind_running_tests(tmp_path: Path) -> None:
    # What failed a CI run: a worker looked before the lab was up, another started it, the tests began,
    # and the first waited for an exclusive hold the stream of shared ones never let it have.
    holds = LabHolds(tmp_path)
    answers = iter([False])  # down when first looked at, running ever after
    started: list[str] = []
    with _tests_running(holds):
        took = _timed(lambda: holds.ensure_running(lambda: next(answers, True), lambda: started.append("up")))
    # the running tests go on for ~7.7 s more: waiting behind them fails this; the bound leaves a loaded machine room
    assert took < 5, f"waited {took:.1f}s behind the running tests"
    assert started == []


def test_a_worker_that_must_start_a_component_waits_for_the_running_tests_only_not_for_the_ones_after(tmp_path: Path) -> None:
    holds = LabHolds(tmp_path)
    started: list[str] = []
    with _tests_running(holds):
        took = _timed(lambda: holds.ensure_running(lambda: bool(started), lambda: started.append("up")))
    assert took < 5, f"starved for {took:.1f}s by new shared holds"  # starved: ~7.7 s, until the running tests end
    assert started == ["up"]


def test_workers_racing_to_start_a_stopped_lab_start_it_once(tmp_path: Path) -> None:
    holds = LabHolds(tmp_path)
    started: list[str] = []

    def start() -> None:
        time.sleep(0.3)  # long enough for every other worker to have looked and found it down
        started.append("up")

    workers = [threading.Thread(target=holds.ensure_running, args=(lambda: bool(started), start)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=10)
    assert started == ["up"]
    assert not any(worker.is_alive() for worker in workers)


def test_a_shared_hold_waits_while_a_component_is_being_started(tmp_path: Path) -> None:
    holds = LabHolds(tmp_path)
    inside = threading.Event()
    release = threading.Event()

    def start() -> None:
        inside.set()
        release.wait(5)

    starter = threading.Thread(target=holds.ensure_running, args=(lambda: False, start))
    starter.start()
    assert inside.wait(5)
    got: list[float] = []
    began = time.monotonic()

    def test() -> None:
        with holds.held(exclusive=False):
            got.append(time.monotonic() - began)

    tester = threading.Thread(target=test)
    tester.start()
    time.sleep(0.5)
    assert got == []  # no test uses the lab while a worker starts a component of it
    release.set()
    starter.join(5)
    tester.join(5)
    assert got and got[0] >= 0.5
