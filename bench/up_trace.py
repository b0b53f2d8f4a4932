"""Where the time of the two `up`s that change Deployments goes: a timeline of each, on the lab.

    .venv/bin/python bench/up_trace.py [--runs 3] [--json out.json]

Needs the lab (``canary lab up``). On a stack of its own, runs the ``up``s a
release runs, each with a release config file pinning the tracks as ``Release``
pins them: the canary's deploy (the new image, weight 0, limited to the canary
Deployment and the route), a weight step to 50 (the route), and the promotion's
first ``up`` (stable takes the canary's template, limited to the stable
Deployment; the route back to 0 and the canary to zero are two more ``up``s,
not traced), ``--runs`` times, and times the canary's deploy and that
promotion ``up`` from each one's start:

- ``first_event``: the engine's first event (the CLI's start, the stack and
  its secrets manager loaded);
- ``change_sent``: the changed Deployment's pre-event (program run, provider
  started and configured, the diffs before it);
- ``rollout_done``: the Deployment Available in the cluster (a watch on the
  namespace: every replica updated and available, old ones gone);
- ``await_done``: the provider reporting it ready (its outputs event);
- ``summary``: the engine's summary event; ``exit``: the CLI gone.

(Before the promotion was split into three targeted ``up``s, the traced promotion
was one ``up`` that also moved the route and scaled the canary to zero: its
``summary`` and ``exit`` marks came after those.)

Prints the median of each mark; the gaps between them say which part is the
CLI's start, the provider's, the rollout's and the await's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from kubernetes import watch
from release_speed import Bench, running_lab

MARKS = ("first_event", "change_sent", "rollout_done", "await_done", "summary", "exit")


class Trace:
    """Engine events and Deployment states of one namespace, with the monotonic time each was seen."""

    def __init__(self, b: Bench) -> None:
        self.b = b
        self.start = 0.0
        self.deployments: list[tuple[float, str, bool]] = []
        self.events: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        resource = self.b.kube.resource("apps/v1", "Deployment")
        while not self._stop.is_set():
            for event in watch.Watch().stream(resource.get, namespace=self.b.name, serialize=False, timeout_seconds=60):
                obj = event["object"]
                meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
                want = spec.get("replicas", 1)
                done = (status.get("observedGeneration") == meta.get("generation") and (status.get("updatedReplicas") or 0) == want
                        and (status.get("availableReplicas") or 0) == want and (status.get("replicas") or 0) == want)
                self.deployments.append((time.monotonic(), meta["name"], done))
                if self._stop.is_set():
                    return

    def on_event(self, event: Any) -> None:
        now = time.monotonic()
        for kind in ("prelude_event", "resource_pre_event", "res_outputs_event", "summary_event"):
            part = getattr(event, kind, None)
            if part is not None:
                meta = getattr(part, "metadata", None)
                self.events.append((now, kind, f"{meta.op.value} {meta.urn.rsplit('::', 1)[-1]}" if meta is not None else ""))

    def up(self, deployment: str, resource: str, pins: dict[str, Any], targets: list[str]) -> dict[str, float]:
        """One `up` with ``pins`` that changes ``deployment`` (its Pulumi name ``resource``): its marks, in seconds from its start."""
        config = self.b.config_file(pins)
        self.deployments.clear()
        self.events.clear()
        self.start = time.monotonic()
        self.b.stack.up(config_file=config, targets=targets, on_event=self.on_event)
        exit_at = time.monotonic()
        deadline = exit_at + 5
        while time.monotonic() < deadline and not any(done and name == deployment for _, name, done in self.deployments):
            time.sleep(0.01)

        def first(kind: str, detail: str = "") -> float:
            return next(t for t, k, d in self.events if k == kind and d.endswith(detail)) - self.start

        sent = first("resource_pre_event", f"update {resource}")
        done = [t for t, name, ok in self.deployments if name == deployment and ok and t - self.start > sent]
        return {
            "first_event": first("prelude_event"),
            "change_sent": sent,
            "rollout_done": (done[0] - self.start) if done else float("nan"),
            "await_done": next(t for t, k, d in self.events if k == "res_outputs_event" and d == f"update {resource}") - self.start,
            "summary": first("summary_event"),
            "exit": exit_at - self.start,
        }

    def close(self) -> None:
        self._stop.set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    layout = running_lab()
    if layout is None:
        return 2
    b = Bench(layout, "bench-trace")
    results: dict[str, list[dict[str, float]]] = {"deploy canary": [], "promotion": []}
    trace = Trace(b)
    try:
        b.deploy()
        facts = b.facts()
        stable = facts.stable
        assert stable is not None

        def resource_name(urn: str) -> str:
            return urn.rsplit("::", 1)[-1]

        canary_resource, stable_resource = resource_name(facts.urns["canaryDeployment"]), resource_name(facts.urns["stableDeployment"])
        for run in range(args.runs):
            canary = b.canary_pin(stable, "demo:v2" if stable.image == "demo:v1" else "demo:v1")
            results["deploy canary"].append(trace.up("web-canary", canary_resource, b.pins(stable, canary, 0), facts.targets("canary", "route")))
            b.apply(b.pins(stable, canary, 50), facts.targets("route"))
            # the promotion, as Release._promoting runs it: stable takes the canary's template (traced), the route
            # back to 0, the canary to zero
            results["promotion"].append(trace.up("web-stable", stable_resource, b.pins(canary, canary, 50), facts.targets("stable")))
            b.apply(b.pins(canary, canary, 0), facts.targets("route"))
            b.apply(b.pins(canary, None, 0), facts.targets("app"))
            stable = canary
            print(f"run {run + 1}: " + "; ".join(f"{name} exit {r[-1]['exit']:.2f}s" for name, r in results.items()), file=sys.stderr)
    finally:
        trace.close()
        b.destroy()
    for name, runs in results.items():
        medians = {mark: statistics.median(r[mark] for r in runs) for mark in MARKS}
        print(f"{name} (median of {len(runs)}, seconds from the up's start): " + ", ".join(f"{m} {v:.3f}" for m, v in medians.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
