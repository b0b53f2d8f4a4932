"""The release's recorder: what it says once is said once, whichever thread says it."""

from __future__ import annotations

import threading
from typing import Any

from canary.core.records import Phase, ReleaseState
from canary.errors import Forbidden
from canary.release.ports import Clock
from canary.release.record import Recorder

STATE = ReleaseState(release="r1", stack="prod", app="web", phase=Phase.PROGRESSING, weight=10)


class _Store:
    """A store whose cluster refuses every Event (a role without ``events``) and, when told, every record."""

    def __init__(self) -> None:
        self.appended: list[Any] = []
        self.refused: str | None = None

    def append(self, entry: Any) -> None:
        self.appended.append(entry)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        raise Forbidden("recording an event: the cluster refused (403 Forbidden): events is forbidden")


class _Interleaved(Recorder):
    """Each read of a "said once" mark takes its value, then waits (briefly) for the other thread to read it
    too: the interleaving in which both threads saw the mark unset, when reading and setting it were two steps."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._both = threading.Barrier(2, timeout=0.5)
        self._marks: dict[str, Any] = {}
        super().__init__(*args, **kwargs)

    def _meet(self) -> None:
        try:
            self._both.wait()
        except threading.BrokenBarrierError:
            pass

    @property  # type: ignore[override]
    def _events_failed(self) -> bool:
        value = bool(self._marks.get("events"))
        if threading.current_thread().name.startswith("racer"):
            self._meet()
        return value

    @_events_failed.setter
    def _events_failed(self, value: bool) -> None:
        self._marks["events"] = value

    @property  # type: ignore[override]
    def _refusal_said(self) -> str | None:
        value: str | None = self._marks.get("refusal")
        if threading.current_thread().name.startswith("racer"):
            self._meet()
        return value

    @_refusal_said.setter
    def _refusal_said(self, value: str | None) -> None:
        self._marks["refusal"] = value


def _race(target: Any) -> None:
    threads = [threading.Thread(target=target, name=f"racer-{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)


def _warnings(store: _Store, text: str) -> list[str]:
    return [r.message for r in store.appended if text in getattr(r, "message", "")]


def test_events_refused_on_two_threads_at_once_are_said_once() -> None:
    # the release's thread and the hooks' thread both record a decision while Events are refused
    store = _Store()
    recorder = _Interleaved(store, Clock(), "prod", "web")  # type: ignore[arg-type]
    _race(lambda: recorder.event(STATE, "shifting", kube_reason="Progressing"))
    assert len(_warnings(store, "Kubernetes Events cannot be recorded")) == 1, store.appended


def test_a_refusal_seen_on_two_threads_at_once_is_said_once() -> None:
    store = _Store()
    store.refused = "configmaps is forbidden: cannot update"
    recorder = _Interleaved(store, Clock(), "prod", "web")  # type: ignore[arg-type]
    _race(lambda: recorder.event(STATE, "tick"))
    said = _warnings(store, "the cluster refused the release's record")
    assert len(said) == 1 and "cannot update" in said[0], store.appended
