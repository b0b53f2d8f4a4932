"""Release speed on the lab: a weight step and a rollback against their baselines, measured in one run.

    .venv/bin/python bench/release_speed.py [--steps 20] [--rollbacks 3] [--json out.json]

Needs the lab (``canary lab up``). Measures, on a stack of its own:

- step apply latency: from "set weight W" to the new weights in the cluster's
  HTTPRoute, accepted by the gateway (observedGeneration current), for
  (a) a direct patch of the route through the Kubernetes API (the physical floor),
  (b) a bare ``pulumi up`` (CLI) of the program with a release config file pinning
      the route at W (the weight is no stack config key any more: it is
      ``canary:release`` in the file a release writes), and the same targeted at
      the route, and
  (c) canary's step (``Release._shift``: state saved, release config, targeted up,
      verification, journal);
- decision-to-stable latency of real rollbacks: from the journal record of the
  tick that reached the threshold to the route at 100/0 (verified), and to the
  end state verified;
- orchestration overhead of a whole healthy release with 10 s intervals: wall time
  minus the configured waits (ticks × interval), as a share of a release that ran
  its schedule (five ticks: overhead + 50 s), in-process (``canary.api.release``:
  the image set in the stack file, the ``up`` with stable pinned, then the release)
  and as the ``canary release`` command;
- peak memory of the orchestrator and Pulumi CLI processes started per step.

Prints medians, spreads and ratios; ``--json`` writes every sample.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from canary import api
from canary.adapters import stackfile
from canary.adapters.kube import ClusterReader, Kube
from canary.adapters.stack import InterruptibleCommand, Stack, UpResult
from canary.adapters.webhooks import Caller
from canary.core import naming, routing, schedule, workload
from canary.core.records import Phase, ReleaseState, TrackPin
from canary.core.routing import RouteShape
from canary.lab import cluster
from canary.lab.layout import Layout
from canary.release.machine import Release
from canary.release.ports import AppFacts
from canary.state.cache import Cache
from canary.state.lease import Lease
from canary.state.store import ReleaseStore

APP = "web"


def running_lab() -> Layout | None:
    """The lab's layout, or None (said on stderr) when the lab is not running."""
    layout = Layout.for_project(ROOT)
    if cluster.running(layout):
        return layout
    print("the lab is not running: canary lab up", file=sys.stderr)
    return None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def record_time(record: Any) -> float:
    """A journal record's time (``canary.core.records``), in seconds since the epoch."""
    return datetime.fromisoformat(record.time.replace("Z", "+00:00")).timestamp()


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "p10": ordered[max(0, int(len(ordered) * 0.1) - 1)] if len(ordered) >= 10 else ordered[0],
        "p90": ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))],
        "min": ordered[0],
        "max": ordered[-1],
    }


class Bench:
    """A stack of its own on the lab (namespace = stack name), its app ``web`` deployed by ``canary up``."""

    def __init__(self, layout: Layout, name: str, interval: str = "10s") -> None:
        self.layout = layout
        self.name = name
        self.env = {**os.environ, **layout.pulumi_env(), "CANARY_LAB_DIR": str(layout.dir)}
        self.project = Path(tempfile.mkdtemp(prefix="canary-bench-"))
        (self.project / "stacks").mkdir()
        for file in ("Pulumi.yaml", "__main__.py"):
            shutil.copyfile(ROOT / file, self.project / file)
        document = stackfile.load((ROOT / "stacks" / "Pulumi.lab.yaml").read_text())
        config = document["config"]
        config["canary:app"]["namespace"] = name
        config["canary:gateway"]["hostnames"] = [f"{name}.lab.test"]
        config["canary:analysis"]["interval"] = interval
        config["canary:analysis"]["metrics"][0]["interval"] = "20s"
        config["canary:analysis"]["metrics"][1]["interval"] = "20s"
        for hook in config["canary:analysis"].get("webhooks", []):
            # 100 requests/s, 10 at weight 10: enough for minRequests on the first tick, whose window
            # holds only the samples since Prometheus found the canary's pods (it adds targets every 5 s)
            hook["cmd"] = f"hey -host {name}.lab.test -z 8s -q 50 -c 2 http://127.0.0.1:{layout.gateway_port}/"
        (self.project / "stacks" / f"Pulumi.{name}.yaml").write_text(stackfile.dump(document))
        cluster.init_stack(layout, name, self.project)
        self.stack = Stack(self.project, name, self.env)
        self.kube = Kube(layout.kubeconfig)
        self.reader = ClusterReader(self.kube)
        self._spec: Any = None

    # --- the stack as canary sees it -------------------------------------------------------------

    def deploy(self) -> None:
        """``canary up``: the first version deployed, or the app back at rest (stable pinned, route at 0, no canary)."""
        outcome = api.up(self.name, project_dir=self.project, env=self.env)
        if outcome.exit_code != 0:
            raise RuntimeError(f"canary up failed: {outcome.message}")

    def facts(self) -> AppFacts:
        """The app as the last ``up`` left it (opens the stack's workspace: a ``pulumi version``; not for timed parts)."""
        facts = api.open_stack(self.name, self.project, self.env).facts(APP)
        assert facts is not None and facts.stable is not None, f"{APP} is not deployed on {self.name}"
        return facts

    def spec(self) -> Any:
        """The app's spec (app, gateway, analysis), read once: none of it changes during the bench."""
        if self._spec is None:
            self._spec = self.facts().spec
        return self._spec

    def history(self, release: str) -> list[Any]:
        """One release's journal (typed records), as the cluster keeps it."""
        return api.history(self.name, app=APP, release_id=release, project_dir=self.project, env=self.env)

    def release(self, image: str, **options: Any) -> api.UpOutcome:
        """A release of ``image`` in this process, as a script runs it (``canary.api.release``)."""
        return api.release(self.name, image, app=APP, project_dir=self.project, env=self.env, **options)

    # --- pinning the tracks as a release does ------------------------------------------------------

    @staticmethod
    def canary_pin(stable: TrackPin, image: str) -> TrackPin:
        """Stable's pod template with ``image``: what a release of ``image`` runs on the canary."""
        template = workload.with_image(stable.template, APP, image)
        return TrackPin(template=template, hash=workload.template_hash(template, stable.config_hashes), image=image, config_hashes=stable.config_hashes)

    @staticmethod
    def pins(stable: TrackPin, canary: TrackPin | None, weight: int, replicas: int = 1) -> dict[str, Any]:
        """``canary:release`` for the app: stable, the canary (none: scaled to zero) and the route at ``weight``."""
        out: dict[str, Any] = {"release": "bench", "stable": stable.model_dump(mode="json"), "route": RouteShape(weight=weight).to_json()}
        if canary is not None:
            out["canary"] = {**canary.model_dump(mode="json"), "replicas": replicas}
        return out

    def config_file(self, pins: dict[str, Any], snapshot: str | None = None, label: str = "bench") -> Path:
        """A release config file: the stack file (or ``snapshot``) with ``canary:release`` set to ``pins``."""
        path = self.project / f"{label}.config.yaml"
        path.write_text(stackfile.release_config(snapshot if snapshot is not None else self.stack.stack_file().read_text(), {APP: pins}))
        return path

    def apply(self, pins: dict[str, Any], targets: list[str] | None = None, on_event: Callable[[Any], None] | None = None) -> UpResult:
        """One ``up`` with ``pins``, limited to ``targets`` (URNs; None: the whole stack)."""
        return self.stack.up(config_file=self.config_file(pins), targets=targets, on_event=on_event)

    def wait_route(self, weight: int, timeout: float = 60) -> float:
        spec = self.spec()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            route = self.reader.route(spec)
            if route is not None and route.weights == (100 - weight, weight) and route.accepted:
                return time.monotonic()
            time.sleep(0.01)
        raise RuntimeError(f"route not at weight {weight} within {timeout}s")

    def destroy(self) -> None:
        self.stack.destroy()
        shutil.rmtree(self.project, ignore_errors=True)


STEPS_RELEASE = "bench-steps"


def step_release(b: Bench, facts: AppFacts) -> Release:
    """A Release wired as ``canary.api.build`` wires one, for ``_shift`` alone. Its state and journal go to the
    app's store in the cluster (the same ConfigMaps a release writes, deleted afterwards by ``drop_step_release``)
    but to a local cache of their own: these steps are not a release and must not look like an unfinished one."""
    spec = facts.spec
    store = ReleaseStore(b.kube, spec.app.namespace, APP, b.name, Cache(b.project / ".canary-steps", b.name, APP))
    return Release(stack=b.stack, config=stackfile.ReleaseConfigs(b.stack.stack_file(), store.cache.dir, APP), cluster=b.reader, store=store,
                   lease=Lease(b.kube, spec.app.namespace, APP), hooks=Caller(), provider_for=api._provider_factory(spec), facts=facts)


def drop_step_release(b: Bench, namespace: str) -> None:
    b.kube.delete("v1", "ConfigMap", naming.state_configmap(APP), namespace)
    for obj in b.kube.list("v1", "ConfigMap", namespace, label_selector=f"{naming.RELEASE_LABEL}={STEPS_RELEASE}"):
        b.kube.delete("v1", "ConfigMap", obj["metadata"]["name"], namespace)


@contextlib.contextmanager
def counting_cli() -> Iterator[dict[str, int]]:
    """How many Pulumi CLI processes the stack adapter starts meanwhile."""
    calls = {"n": 0}
    original = InterruptibleCommand.run

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return original(self, *args, **kwargs)

    InterruptibleCommand.run = counting  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        InterruptibleCommand.run = original  # type: ignore[method-assign]


@contextlib.contextmanager
def timing_ups() -> Iterator[list[tuple[float, float]]]:
    """Every ``Stack.up`` meanwhile, in any Stack object: (wall-clock start, seconds)."""
    ups: list[tuple[float, float]] = []
    original = Stack.up

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        began, start = time.time(), time.monotonic()
        try:
            return original(self, *args, **kwargs)
        finally:
            ups.append((began, time.monotonic() - start))

    Stack.up = timed  # type: ignore[method-assign]
    try:
        yield ups
    finally:
        Stack.up = original  # type: ignore[method-assign]


def bench_steps(b: Bench, steps: int) -> dict[str, Any]:
    facts = b.facts()
    spec = b.spec()
    stable = facts.stable
    assert stable is not None
    canary = b.canary_pin(stable, "demo:v2")
    # the canary deployed at weight 0, one pod (the size a release gives it for weights up to 50 with 2 replicas)
    b.apply(b.pins(stable, canary, 0), facts.targets("canary", "route"))
    b.wait_route(0)
    weights = [10 + 10 * (i % 5) for i in range(steps)]
    snapshot = b.stack.stack_file().read_text()
    route_urns = facts.targets("route")

    def bare(w: int, target: bool) -> float:
        start = time.monotonic()
        # what canary writes for a step (a release config file), then the CLI's own `pulumi up` of the program
        path = b.config_file(b.pins(stable, canary, w), snapshot, label="bare")
        args = ["pulumi", "up", "--yes", "--skip-preview", "--stack", b.name, "--config-file", str(path)]
        args += [f"--target={urn}" for urn in route_urns] if target else []
        done = subprocess.run(args, cwd=b.project, env=b.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pulumi up failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")
        return b.wait_route(w) - start

    def at_rest() -> None:
        """Each series starts from the route at 0 (untimed): its first step then always changes the route."""
        b.apply(b.pins(stable, canary, 0), route_urns)
        b.wait_route(0)

    bare_full = [bare(w, False) for w in weights]
    at_rest()
    bare_targeted = [bare(w, True) for w in weights]

    at_rest()
    release = step_release(b, facts)
    state = ReleaseState(release=STEPS_RELEASE, stack=b.name, app=APP, namespace=spec.app.namespace, phase=Phase.PROGRESSING, stable=stable,
                         canary=canary, weight=0, route=RouteShape(weight=0).to_json(), step=0, canary_deployed=True, canary_replicas=1,
                         snapshot=snapshot, started=now_iso())
    canary_steps = []
    try:
        with counting_cli() as calls:
            for index, w in enumerate(weights, start=1):
                start = time.monotonic()
                state = release._shift(state, index, RouteShape(weight=w))
                canary_steps.append(time.monotonic() - start)
    finally:
        drop_step_release(b, spec.app.namespace)

    # The floor: the same route as a separate object (its own host name), patched directly through
    # the API. Patching Pulumi's own route would make its server-side apply conflict afterwards.
    namespace = spec.app.namespace
    refs = [r.model_dump(by_alias=True, exclude_none=True) for r in spec.gateway.parent_refs]
    parents = routing.parent_refs(refs)

    def floor_spec(w: int) -> dict[str, Any]:
        return routing.route_spec(APP, refs, [f"floor.{b.name}.lab.test"], spec.app.service_port, RouteShape(weight=w))

    resource = b.kube.resource(routing.API_VERSION, routing.KIND)
    b.kube.apply({"apiVersion": routing.API_VERSION, "kind": routing.KIND,
                  "metadata": {"name": "floor", "namespace": namespace}, "spec": floor_spec(0)}, field_manager="canary-bench")

    def floor_weight(w: int) -> float:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = routing.read_route(b.kube.get(routing.API_VERSION, routing.KIND, "floor", namespace) or {}, APP, parents)
            if state.weights == (100 - w, w) and state.accepted:
                return time.monotonic()
            time.sleep(0.01)
        raise RuntimeError(f"floor route not at {w}")

    floor_weight(0)
    direct = []
    for w in weights:
        backends = floor_spec(w)["rules"][0]["backendRefs"]
        start = time.monotonic()
        resource.patch(body={"spec": {"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": backends}]}},
                       name="floor", namespace=namespace, content_type="application/merge-patch+json")
        direct.append(floor_weight(w) - start)
    resource.delete(name="floor", namespace=namespace)

    return {
        "direct_patch": direct,
        "bare_pulumi_up": bare_full,
        "bare_pulumi_up_targeted": bare_targeted,
        "canary_step": canary_steps,
        "cli_processes_per_step": calls["n"] / len(weights),
    }


def bench_rollbacks(b: Bench, runs: int) -> dict[str, Any]:
    to_route, to_verified = [], []
    b.deploy()  # back at rest after the steps: stable pinned, the route at 0, the canary at zero
    for _ in range(runs):
        outcome = b.release("demo:v2-faulty")
        result = outcome.release
        assert result is not None and result.phase is Phase.FAILED, outcome
        records = b.history(result.release)
        decision = next(r for r in records if r.type == "tick" and r.outcome == "rollback")
        on_stable = next(r for r in records if r.type == "state" and r.message.startswith("traffic is back on stable"))
        verified = next(r for r in records if r.type == "verified" and r.what == "end state")
        to_route.append(record_time(on_stable) - record_time(decision))
        to_verified.append(record_time(verified) - record_time(decision))
    return {"decision_to_route_restored": to_route, "decision_to_end_state_verified": to_verified}


def _other_image(b: Bench) -> str:
    """The healthy image that is not stable now: each healthy release promotes the other."""
    stable = b.facts().stable
    return "demo:v1" if stable is not None and stable.image == "demo:v2" else "demo:v2"


def _with_median_run(out: dict[str, Any]) -> dict[str, Any]:
    """``out`` with the fields of its median run (by overhead share) alongside ``runs``."""
    out.update(sorted(out["runs"], key=lambda r: r["overhead_share"])[len(out["runs"]) // 2])
    return out


def _planned_waits(b: Bench, interval_s: float) -> float:
    """The waits of a release that runs its schedule: one interval per weight (10 … 50: 50 s)."""
    return len(schedule.weights(b.spec().analysis)) * interval_s


def _share(overhead_s: float, planned_waits_s: float) -> float:
    """Overhead as a share of a release that ran its schedule. A release whose first tick found no
    data ran one more interval; its share of that longer total would flatter the figure."""
    return overhead_s / (overhead_s + planned_waits_s)


def bench_overhead(b: Bench, interval_s: float, runs: int) -> dict[str, Any]:
    """Healthy releases end to end; overhead = wall time minus the configured waits, with where it went."""
    out: dict[str, Any] = {"runs": []}
    for _ in range(runs):
        image = _other_image(b)
        planned = _planned_waits(b, interval_s)
        marks: dict[str, float] = {}
        with timing_ups() as stack_ups:
            start = time.monotonic()
            started_at = time.time()
            outcome = b.release(image, on_build=lambda _, marks=marks: marks.setdefault("built", time.time()))
            total = time.monotonic() - start
        result = outcome.release
        assert result is not None and result.phase is Phase.SUCCEEDED, outcome
        records = b.history(result.release)
        ticks = [r for r in records if r.type == "tick"]
        waits = len(ticks) * interval_s

        def at(message: str, records: list[Any] = records) -> float:
            return record_time(next(r for r in records if r.type in ("state", "decision") and r.message.startswith(message)))

        phases = {
            # `canary release` is `canary up` of the new image: an up of the stack with stable pinned (it
            # refreshes the outputs: the desired template and its hash), then the release itself
            "canary up before the release": marks["built"] - started_at,
            "setup (lease, preflight, snapshot)": at("release started") - marks["built"],
            "deploy canary and verify": at("analysis starts") - at("release started"),
            "analysis beyond the waits": at("promoting:") - at("analysis starts") - waits,
            "promotion and verify": at("promoted ") - at("promoting:"),
        }
        # The ups of the canary's deploy and of the promotion (stable, route, canary to zero) are not inside
        # any interval, nor is the up before the release: their time is Pulumi's (CLI, provider, rollout
        # awaits); the rest is canary's own.
        deploy_ups = [r.seconds for r in records if r.type == "up" and r.phase in ("Initializing", "Promoting")]
        ups = sum(deploy_ups)
        pre_up = sum(seconds for began, seconds in stack_ups if began < marks["built"])
        own = total - waits - ups - pre_up
        out["runs"].append({"total_s": total, "configured_waits_s": waits, "overhead_s": total - waits, "ticks": len(ticks),
                            "overhead_share": _share(total - waits, planned), "share_of_this_run": (total - waits) / total,
                            "phases_s": phases, "deployment_ups": len(deploy_ups), "deployment_ups_s": ups, "pre_release_up_s": pre_up,
                            "own_s": own, "own_share": own / (total - waits + planned)})
    return _with_median_run(out)


def bench_command(b: Bench, interval_s: float, runs: int) -> dict[str, Any]:
    """The user's view: ``canary release`` as a command, from process start to exit, minus the configured waits.

    Adds what the in-process releases above do not pay: Python's start and imports,
    building the stack's workspace (``pulumi version``), the Kubernetes client.
    """
    out: dict[str, Any] = {"runs": []}
    for _ in range(runs):
        image = _other_image(b)
        start = time.monotonic()
        process = subprocess.Popen([str(ROOT / ".venv" / "bin" / "canary"), "release", b.name, "--image", image, "--lab", "--project-dir", str(b.project)],
                                   env=b.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak_kib = 0
        while process.poll() is None:  # the command's own peak resident memory (VmHWM), read until it exits
            with contextlib.suppress(OSError, ValueError):  # gone, or a zombie (no VmHWM line) between exit and poll
                status = Path(f"/proc/{process.pid}/status").read_text()
                peak_kib = max([peak_kib] + [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")])
            time.sleep(0.2)
            if time.monotonic() - start > 600:
                process.kill()
        stdout, stderr = process.communicate()
        total = time.monotonic() - start
        if process.returncode != 0:
            raise RuntimeError(f"canary release exited {process.returncode}: {stdout[-1500:]}{stderr[-1500:]}")
        last = api.status(b.name, app=APP, project_dir=b.project, env=b.env)
        assert last is not None, "the command left no release state"
        ticks = [r for r in b.history(last.state.release) if r.type == "tick"]
        waits = len(ticks) * interval_s
        out["runs"].append({"total_s": total, "configured_waits_s": waits, "overhead_s": total - waits, "ticks": len(ticks),
                            "overhead_share": _share(total - waits, _planned_waits(b, interval_s)), "share_of_this_run": (total - waits) / total,
                            "peak_rss_mib": peak_kib / 1024})
    return _with_median_run(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rollbacks", type=int, default=3)
    parser.add_argument("--releases", type=int, default=3, help="healthy releases for the overhead (the median is reported)")
    parser.add_argument("--command-releases", type=int, default=1, help="healthy releases run as the `canary release` command")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    for name in ("steps", "rollbacks", "releases"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1: each part reports a median of its runs")
    if args.command_releases < 0:
        parser.error("--command-releases must not be negative")
    layout = running_lab()
    if layout is None:
        return 2
    b = Bench(layout, "bench-speed")
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores", "date": now_iso()}
    try:
        b.deploy()
        results["steps"] = bench_steps(b, args.steps)
        results["rollbacks"] = bench_rollbacks(b, args.rollbacks)
        results["overhead"] = bench_overhead(b, 10.0, args.releases)
        if args.command_releases:
            results["command"] = bench_command(b, 10.0, args.command_releases)
    finally:
        results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if args.json:  # what was measured survives a failure in a later part
            args.json.write_text(json.dumps(results, indent=1))
        b.destroy()
    steps = results["steps"]
    print(f"step apply latency (s), {args.steps} steps each:")
    for key in ("direct_patch", "bare_pulumi_up", "bare_pulumi_up_targeted", "canary_step"):
        s = summary(steps[key])
        print(f"  {key:<26} median {s['median']:.3f}  p10 {s['p10']:.3f}  p90 {s['p90']:.3f}  min {s['min']:.3f}  max {s['max']:.3f}")
    med = {k: statistics.median(steps[k]) for k in ("direct_patch", "bare_pulumi_up", "bare_pulumi_up_targeted", "canary_step")}
    print(f"  ratio canary step / bare up           {med['canary_step'] / med['bare_pulumi_up']:.2f}")
    print(f"  ratio canary step / bare targeted up  {med['canary_step'] / med['bare_pulumi_up_targeted']:.2f}")
    print(f"  ratio canary step / direct patch      {med['canary_step'] / med['direct_patch']:.1f}")
    print(f"  Pulumi CLI processes per canary step  {steps['cli_processes_per_step']:.1f}")
    rb = results["rollbacks"]
    print(f"rollback, {args.rollbacks} runs: decision -> route 100/0 median {statistics.median(rb['decision_to_route_restored']):.3f}s; "
          f"decision -> end state verified median {statistics.median(rb['decision_to_end_state_verified']):.3f}s")
    ov = results["overhead"]
    shares = ", ".join(f"{100 * r['overhead_share']:.1f} %" + (f" [{r['ticks']} ticks]" if r["ticks"] != 5 else "") for r in ov["runs"])
    print(f"healthy release with 10s intervals (5 ticks planned), median of {len(ov['runs'])} ({shares}): total {ov['total_s']:.1f}s, "
          f"waits {ov['configured_waits_s']:.0f}s, overhead {ov['overhead_s']:.2f}s = {100 * ov['overhead_share']:.1f} % of a 5-tick release")
    for phase, seconds in ov["phases_s"].items():
        print(f"  {phase:<38} {seconds:.2f}s")
    print(f"  of the overhead: the {ov['deployment_ups']} ups of the canary's deploy and the promotion {ov['deployment_ups_s']:.2f}s, "
          f"the up before the release {ov['pre_release_up_s']:.2f}s, canary's own work {ov['own_s']:.2f}s = {100 * ov['own_share']:.1f} % of a 5-tick release")
    if "command" in results:
        cmd = results["command"]
        shares = ", ".join(f"{100 * r['overhead_share']:.1f} %" + (f" [{r['ticks']} ticks]" if r["ticks"] != 5 else "") for r in cmd["runs"])
        print(f"`canary release` as a command, median of {len(cmd['runs'])} ({shares}): total {cmd['total_s']:.1f}s, "
              f"waits {cmd['configured_waits_s']:.0f}s, overhead {cmd['overhead_s']:.2f}s = {100 * cmd['overhead_share']:.1f} %; "
              f"peak RSS of the command {max(r['peak_rss_mib'] for r in cmd['runs']):.0f} MiB")
    print(f"peak RSS of the orchestrator: {results['peak_rss_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
