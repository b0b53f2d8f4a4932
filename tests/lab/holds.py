"""How the test workers share the lab: a shared hold for each test, an exclusive one to stop or start a component.

Three lock files in the lab's directory, each taken with ``flock`` (so a worker that dies lets go):

- ``tests.lock``: a test holds it shared while it uses the lab; a test that stops a component, or a
  worker that starts the lab, holds it exclusive.
- ``tests.gate``: the turnstile every hold passes through. An exclusive waiter keeps it while it waits, so
  no new shared hold slips in meanwhile: ``flock`` grants a shared hold beside other shared ones even
  with an exclusive one waiting, and a stream of tests would starve the waiter for ever.
- ``tests.start``: taken by a worker that found the lab not running, before it checks again and starts
  what is missing. The workers that raced it wait there and then find the lab running: none of them waits
  for an exclusive hold it does not need (which, behind the tests already started, took ten minutes once).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path


class LabHolds:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _open(self, name: str) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        return os.open(self.directory / name, os.O_RDWR | os.O_CREAT, 0o600)

    @contextlib.contextmanager
    def held(self, exclusive: bool) -> Iterator[None]:
        """The lab's lock, shared or exclusive, taken through the turnstile."""
        gate, fd = self._open("tests.gate"), self._open("tests.lock")
        try:
            fcntl.flock(gate, fcntl.LOCK_EX)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            finally:
                fcntl.flock(gate, fcntl.LOCK_UN)
                os.close(gate)
        except BaseException:
            os.close(fd)
            raise
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def ensure_running(self, running: Callable[[], bool], start: Callable[[], None]) -> None:
        """Return once the lab runs, started by this worker (alone, under the exclusive hold) when no other
        did. ``running`` is asked under a shared hold, so never while a disruptive test has a component down."""

        def looked_at() -> bool:
            with self.held(exclusive=False):
                return running()

        if looked_at():
            return
        fd = self._open("tests.start")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if looked_at():  # another worker started it while this one waited
                return
            with self.held(exclusive=True):
                start()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
