"""How fast each strategy takes users off a faulty version: failing tick to users back on stable.

    .venv/bin/python bench/strategy_rollback.py [--runs 3] [--json out.json]

Needs the lab (``canary lab up``). For each strategy — a weighted canary (steps
of 10), A/B testing (a header match, 3 iterations) and blue/green (a tester
header match, 3 iterations) — one stack of its own (the lab's stack file,
5 s intervals, a ``hey`` rollout hook sending the header where there is one)
releases ``demo:v2-faulty`` RUNS times with ``canary release``; each release
rolls back on its third failed tick.

While a release runs, a probe sends the requests that reach the canary through
the gateway, one after another (every 10 ms; at most 180 s per run): plain
requests for the canary, the matched header for A/B and blue/green. Another
loop reads the HTTPRoute every 20 ms. Per run:

- tick: the time of the journal's tick record with outcome ``rollback``;
- users on stable: the first probe answer after which every answer (until 2 s
  after the route was seen at rest) is stable's version;
- route at rest: the first read showing 100/0, no match rule, accepted.

The figure is max(users on stable, route at rest) − tick, median over the runs,
each strategy's median also as a ratio to the canary's. The stacks are
destroyed at the end. Every request loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from canary import api
from canary.adapters.kube import ClusterReader, Kube
from canary.adapters.stack import Stack
from canary.lab import cluster
from canary.lab.layout import Layout
from tests.lab.conftest import make_project
from tests.lab.helpers import host

HEADER = "X-Canary"


def _iterations(strategy: str, value: str) -> Callable[[dict[str, Any]], None]:
    def mutate(config: dict[str, Any]) -> None:
        analysis = config["canary:analysis"]
        for key in ("stepWeight", "maxWeight", "stepWeights"):
            analysis.pop(key, None)
        analysis.update(strategy=strategy, iterations=3, match=[{"headers": {HEADER: {"exact": value}}}])
        hook = analysis["webhooks"][0]
        hook["cmd"] = hook["cmd"].replace("hey ", f"hey -H '{HEADER}: {value}' ", 1)

    return mutate


#: strategy -> (stack mutator, the headers of the requests that reach the canary)
STRATEGIES: dict[str, tuple[Callable[[dict[str, Any]], None] | None, dict[str, str]]] = {
    "canary": (None, {}),
    "ab": (_iterations("ab", "always"), {HEADER: "always"}),
    "blueGreen": (_iterations("blueGreen", "tester"), {HEADER: "tester"}),
}


@contextlib.contextmanager
def lab_shared(layout: Layout) -> Iterator[None]:
    """Hold the lab as the lab tests do (shared): a disruptive test does not stop it under the bench."""
    fd = os.open(layout.dir / "tests.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Probe:
    """Requests through the gateway one after another (bounded), and the route read every 20 ms."""

    def __init__(self, layout: Layout, name: str, headers: dict[str, str], spec: Any) -> None:
        self.url = f"{layout.gateway_url}/"
        self.session = requests.Session()
        self.session.headers.update({"Host": host(name), **headers})
        self.reader = ClusterReader(Kube(layout.kubeconfig))
        self.spec = spec
        self.answers: list[tuple[float, str]] = []
        self.shaped = threading.Event()  # the route left its rest: the release shifted
        self.at_rest: float | None = None
        self.stop = threading.Event()

    def _requests(self, deadline: float) -> None:
        self.shaped.wait(timeout=max(0.0, deadline - time.monotonic()))
        while not self.stop.is_set() and time.monotonic() < deadline and len(self.answers) < 20000:
            try:
                answer = self.session.get(self.url, timeout=5).headers.get("X-Version", "none")
            except requests.RequestException as exc:
                answer = type(exc).__name__
            self.answers.append((time.time(), answer))
            self.stop.wait(0.01)

    def _route(self, deadline: float) -> None:
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                route = self.reader.route(self.spec)
            except Exception:  # noqa: BLE001 - keep reading through a hiccup
                route = None
            if route is not None:
                rest = route.weights == (100, 0) and route.matched_rules == 0 and route.accepted
                if not rest:
                    self.shaped.set()
                elif self.shaped.is_set() and self.at_rest is None:
                    self.at_rest = time.time()
                    self.stop.wait(2.0)  # answers after the rest: are they all stable's?
                    self.stop.set()
            self.stop.wait(0.02)

    def run(self, seconds: float) -> list[threading.Thread]:
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=self._requests, args=(deadline,), daemon=True), threading.Thread(target=self._route, args=(deadline,), daemon=True)]
        for thread in threads:
            thread.start()
        return threads

    def users_on_stable(self, stable: str) -> float | None:
        """The first answer after which every answer is stable's (None: the last one was not)."""
        first = None
        for at, answer in self.answers:
            if answer != stable:
                first = None
            elif first is None:
                first = at
        return first


def one_run(layout: Layout, project: Path, name: str, env: dict[str, str], headers: dict[str, str], spec: Any) -> dict[str, Any]:
    probe = Probe(layout, name, headers, spec)
    threads = probe.run(180)
    done = subprocess.run([sys.executable, "-m", "canary", "release", name, "--image", "demo:v2-faulty", "--project-dir", str(project)],
                          capture_output=True, text=True, timeout=600, env=env)
    for thread in threads:
        thread.join(timeout=10)
    probe.stop.set()
    if done.returncode != 1:
        raise SystemExit(f"{name}: the faulty release ended {done.returncode}, not rolled back:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    records = api.history(name, project_dir=project, env=env)
    release = records[-1].release
    ticks = [r for r in records if r.type == "tick" and r.release == release and r.outcome.value == "rollback"]
    tick = _time(ticks[-1].time)
    users = probe.users_on_stable("v1")
    if users is None or probe.at_rest is None:
        raise SystemExit(f"{name}: users never back on stable in the probe (route at rest: {probe.at_rest}); last answers {probe.answers[-5:]}")
    canary_answers = sum(1 for _, a in probe.answers if a == "v2-faulty")
    return {"users_s": round(users - tick, 3), "route_s": round(probe.at_rest - tick, 3), "back_s": round(max(users, probe.at_rest) - tick, 3),
            "requests": len(probe.answers), "canary_answers": canary_answers, "release": release}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    layout = Layout.for_project(ROOT)
    if not cluster.running(layout):
        print("the lab is not running: canary lab up", file=sys.stderr)
        return 2
    env = {**os.environ, **layout.pulumi_env(), "CANARY_LAB_DIR": str(layout.dir)}
    results: dict[str, list[dict[str, Any]]] = {}
    with lab_shared(layout), tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp:
        for strategy, (mutate, headers) in STRATEGIES.items():
            name = f"b-rollback-{strategy.lower()}"
            project = make_project(layout, Path(tmp) / name, name, mutate)
            try:
                outcome = api.up(name, project_dir=project, env=env)
                if outcome.exit_code != 0:
                    raise SystemExit(f"{name}: up failed: {outcome.message}")
                spec = api.open_stack(name, project, env).facts("web").spec  # type: ignore[union-attr]
                results[strategy] = []
                for run in range(args.runs):
                    sample = one_run(layout, project, name, env, headers, spec)
                    results[strategy].append(sample)
                    print(f"{strategy:<10} run {run + 1}: tick → users on stable {sample['users_s']:6.2f}s, route at rest {sample['route_s']:6.2f}s "
                          f"({sample['requests']} probe requests, {sample['canary_answers']} answered by the canary)", flush=True)
            finally:
                Stack(project, name, env).destroy()
    base = statistics.median(s["back_s"] for s in results["canary"])
    print("\nstrategy    median tick → users on stable   runs (s)                ratio to canary")
    for strategy, samples in results.items():
        median = statistics.median(s["back_s"] for s in samples)
        runs = ", ".join(f"{s['back_s']:.2f}" for s in samples)
        print(f"{strategy:<11} {median:6.2f}s                        {runs:<23} {median / base:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
