"""What the lab tests share: a stack handle, the CLI as a user runs it, a route watcher, bounded waits and load."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, TypeVar

import requests

from canary import api
from canary.adapters.kube import ClusterReader, Kube
from canary.core.naming import Track
from canary.core.records import ReleaseState
from canary.core.routing import RouteState
from canary.core.spec import ReleaseSpec
from canary.lab.layout import Layout
from canary.lab.procs import descendants

T = TypeVar("T")


def host(stack: str) -> str:
    return f"{stack}.lab.test"


@dataclass
class LabStack:
    layout: Layout
    project: Path
    name: str
    namespace: str
    env: dict[str, str]
    kube: Kube
    app: str = "web"

    @property
    def reader(self) -> ClusterReader:
        return ClusterReader(self.kube)

    def spec(self, app: str | None = None) -> ReleaseSpec:
        ws = api.open_stack(self.name, self.project, self.env)
        facts = ws.facts(app or self.app)
        assert facts is not None, f"{app or self.app} is not deployed"
        return facts.spec

    def state(self, app: str | None = None) -> ReleaseState | None:
        status = api.status(self.name, app=app or self.app, project_dir=self.project, env=self.env)
        return status.state if status is not None else None

    def records(self, release: str | None = None, app: str | None = None) -> list[Any]:
        return api.history(self.name, app=app or self.app, release_id=release, project_dir=self.project, env=self.env)

    def of(self, kind: str, release: str | None = None) -> list[Any]:
        return [r for r in self.records(release) if r.type == kind]

    def cli(self, *args: str, timeout: float = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "canary", *args, "--project-dir", str(self.project)],
                              capture_output=True, text=True, timeout=timeout, env=env or self.env)

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """``canary ARGS`` in a session of its own (so its whole process group can be killed, as a node dies)."""
        return subprocess.Popen([sys.executable, "-m", "canary", *args, "--project-dir", str(self.project)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env or self.env, start_new_session=True)

    def release(self, image: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.cli("release", self.name, "--image", image, *extra)

    def route(self, app: str | None = None) -> RouteState | None:
        return self.reader.route(self.spec(app))

    def deployment(self, track: Track, app: str | None = None) -> dict[str, Any]:
        return self.reader.deployment(self.spec(app), track)

    def pulumi_locks(self) -> list[Path]:
        lock_dir = self.layout.backend_dir / ".pulumi" / "locks" / "organization" / "canary" / self.name
        return list(lock_dir.glob("*.json")) if lock_dir.is_dir() else []


def assert_stable_state(lab_stack: LabStack, image: str, replicas: int = 2, app: str | None = None) -> None:
    """Route at rest and accepted, stable ready on ``image``, no canary pods."""
    spec = lab_stack.spec(app)
    route = lab_stack.reader.route(spec)
    assert route is not None and route.weights == (100, 0) and route.accepted, route
    stable = lab_stack.reader.deployment(spec, Track.STABLE)
    canary = lab_stack.reader.deployment(spec, Track.CANARY)
    assert stable["image"] == image and stable["ready"] == stable["replicas"] == replicas, stable
    assert canary["pods"] == 0 and canary["replicas"] == 0, canary


class Background:
    """A watcher on a thread of its own for the length of a ``with`` block; ``_run`` loops until ``_stop``."""

    join_seconds = 5.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.join_seconds)


class SaysNo(BaseHTTPRequestHandler):
    """A gate webhook that says no (403) to every call, and records when it was asked."""

    calls: list[float] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.calls.append(time.time())
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()


class RouteWatcher(Background):
    """Records every distinct (stable, canary) weight pair the cluster's route shows, with the stable image."""

    def __init__(self, lab_stack: LabStack, app: str | None = None) -> None:
        super().__init__()
        self.lab_stack = lab_stack
        self.spec = lab_stack.spec(app)
        self.seen: list[tuple[int | None, int | None]] = []
        self.stable_images: list[str | None] = []

    def _run(self) -> None:
        reader = ClusterReader(Kube(self.lab_stack.layout.kubeconfig))
        while not self._stop.is_set():
            try:
                route = reader.route(self.spec)
            except Exception:  # noqa: BLE001 - keep watching through an outage
                route = None
            if route is not None and (not self.seen or self.seen[-1] != route.weights):
                self.seen.append(route.weights)
                try:
                    self.stable_images.append(reader.deployment(self.spec, Track.STABLE)["image"])
                except Exception:  # noqa: BLE001
                    self.stable_images.append(None)
            self._stop.wait(0.05)

    @property
    def canary_weights(self) -> list[int]:
        return [c for _, c in self.seen if c is not None]


class Steady:
    """Requests through the gateway from a few clients, one after the other each, until stopped (at most
    ``seconds``, and ``requests`` a client): every answer counted by X-Version, every failure (a status other
    than 200, an error) kept."""

    def __init__(self, url: str, host_name: str, clients: int = 4, seconds: float = 600, requests: int = 30_000) -> None:
        self.url, self.host_name, self.seconds, self.requests = url, host_name, seconds, requests
        self.counts: Counter[str] = Counter()
        self.failures: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        session = requests.Session()
        session.headers["Host"] = self.host_name
        deadline = time.monotonic() + self.seconds
        for _ in range(self.requests):
            if self._stop.is_set() or time.monotonic() >= deadline:
                break
            try:
                response = session.get(self.url, timeout=5)
                answer, ok = response.headers.get("X-Version", f"status {response.status_code}"), response.status_code == 200
            except requests.RequestException as exc:
                answer, ok = type(exc).__name__, False
            with self._lock:
                self.counts[answer] += 1
                if not ok:
                    self.failures.append((time.time(), answer))
            self._stop.wait(0.02)

    def __enter__(self) -> Steady:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)


def drive(url: str, count: int, workers: int = 8, seconds: float = 120, host_name: str | None = None,
          headers: dict[str, str] | None = None, cookies: dict[str, str] | None = None) -> dict[str, int]:
    """A bounded burst: ``count`` GETs (at most ``seconds``); answers counted by X-Version (or status)."""
    session = requests.Session()
    if host_name:
        session.headers["Host"] = host_name
    session.headers.update(headers or {})
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=workers))
    deadline = time.monotonic() + seconds

    def one(_: int) -> str:
        if time.monotonic() > deadline:
            return "skipped"
        try:
            response = session.get(url, timeout=10, cookies=cookies)
        except requests.RequestException as exc:
            return type(exc).__name__
        return response.headers.get("X-Version", f"status-{response.status_code}")

    counts: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for answer in pool.map(one, range(count)):
            counts[answer] = counts.get(answer, 0) + 1
    return counts


def wait_until(condition: Callable[[], T], what: str | Callable[[], str], timeout: float, process: subprocess.Popen[str] | None = None,
               every: float = 0.05) -> T:
    """Poll ``condition`` until it is truthy and return its value; fail naming ``what`` at the timeout, or at
    once (with its output) when ``process`` — the release under test — exits first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the release exited {process.returncode} before {what() if callable(what) else what}:\n{out[-2000:]}\n{err[-2000:]}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g}s: {what() if callable(what) else what}")
        time.sleep(every)


@contextlib.contextmanager
def running(process: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """The release under test, its whole process group killed (and reaped) if the test leaves it running."""
    try:
        yield process
    finally:
        if process.poll() is None:
            kill_group(process)


def kill_group(process: subprocess.Popen[str]) -> None:
    """SIGKILL the release and everything it started, at once: as a node or a container dying."""
    below = descendants(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in below:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.communicate(timeout=30)


def pin(lab_stack: LabStack, image: str, weight: int, replicas: int, parts: tuple[str, ...] = ("canary", "route"), app: str = "web") -> None:
    """Put the cluster where a release would have it: the canary on ``image`` with ``replicas`` pods and the
    route at ``weight`` — one ``up`` with a release config file, as the release runs it."""
    from canary.adapters import stackfile
    from canary.core import workload

    ws = api.open_stack(lab_stack.name, lab_stack.project, lab_stack.env)
    facts = ws.facts(app)
    assert facts is not None and facts.stable is not None
    stable = facts.stable
    template = workload.with_image(stable.template, app, image)
    pins = {app: {"release": "test", "stable": {"template": stable.template, "hash": stable.hash, "image": stable.image, "config_hashes": stable.config_hashes},
                  "canary": {"template": template, "hash": workload.template_hash(template, stable.config_hashes), "image": image,
                             "config_hashes": stable.config_hashes, "replicas": replicas},
                  "route": {"weight": weight}}}
    path = lab_stack.project / f"pin-{weight}.yaml"
    path.write_text(stackfile.release_config(ws.stack.stack_file().read_text(), pins))
    ws.stack.up(config_file=path, targets=facts.targets(*parts))
