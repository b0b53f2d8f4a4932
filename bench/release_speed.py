"""Release speed on the lab: a weight step and a rollback against their baselines, measured in one run.

    .venv/bin/python bench/release_speed.py [--steps 20] [--rollbacks 3] [--json out.json]

Needs the lab (``canary lab up``). Measures, on a stack of its own:

- step apply latency: from "set weight W" to the new weights in the cluster's
  HTTPRoute, accepted by the gateway (observedGeneration current), for
  (a) a direct patch of the route through the Kubernetes API (the physical floor),
  (b) a bare ``pulumi up`` (CLI, after ``pulumi config set``), and the same targeted
      at the route, and
  (c) canary's step (``Release._shift``: config, targeted up, verification, journal);
- decision-to-stable latency of real rollbacks: from the journal record of the
  tick that reached the threshold to the route at 100/0 (verified), and to the
  end state verified;
- orchestration overhead of a whole healthy release with 10 s intervals: wall time
  minus the configured waits (ticks × interval), as a share of a release that ran
  its schedule (five ticks: overhead + 50 s), in-process and as the ``canary
  release`` command;
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
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from canary import routing, schedule  # noqa: E402
from canary.api import prometheus_provider  # noqa: E402
from canary.journal import Journal, now_iso, record_time  # noqa: E402
from canary.kube import ClusterReader, Kube  # noqa: E402
from canary.lab import cluster  # noqa: E402
from canary.lab.layout import Layout  # noqa: E402
from canary.release import Phase, Release, ReleaseState, target_urn  # noqa: E402
from canary.stack import Stack  # noqa: E402


def running_lab() -> Layout | None:
    """The lab's layout, or None (said on stderr) when the lab is not running."""
    layout = Layout.default()
    if cluster.running(layout):
        return layout
    print("the lab is not running: canary lab up", file=sys.stderr)
    return None


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
    def __init__(self, layout: Layout, name: str, interval: str = "10s") -> None:
        self.layout = layout
        self.name = name
        self.env = {**os.environ, **layout.pulumi_env()}
        self.project = Path(tempfile.mkdtemp(prefix="canary-bench-"))
        (self.project / "stacks").mkdir()
        for file in ("Pulumi.yaml", "__main__.py"):
            shutil.copyfile(ROOT / file, self.project / file)
        doc = yaml.safe_load((ROOT / "stacks" / "Pulumi.lab.yaml").read_text())
        doc["config"]["canary:app"]["namespace"] = name
        doc["config"]["canary:gateway"]["hostnames"] = [f"{name}.lab.test"]
        doc["config"]["canary:analysis"]["interval"] = interval
        doc["config"]["canary:analysis"]["metrics"][0]["interval"] = "20s"
        doc["config"]["canary:analysis"]["metrics"][1]["interval"] = "20s"
        for hook in doc["config"]["canary:analysis"].get("webhooks", []):
            # 100 requests/s, 10 at weight 10: enough for minRequests on the first tick, whose window
            # holds only the samples since Prometheus found the canary's pods (it adds targets every 5 s)
            hook["cmd"] = f"hey -host {name}.lab.test -z 8s -q 50 -c 2 http://127.0.0.1:{layout.gateway_port}/"
        (self.project / "stacks" / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        cluster.init_stack(layout, name, self.project)
        self.stack = Stack(self.project, name, self.env)
        self.kube = Kube(layout.kubeconfig)
        self.reader = ClusterReader(self.kube)
        self.journal = Journal(self.project / ".canary", name)

    def spec(self) -> Any:
        return self.stack.spec()

    def wait_route(self, weight: int, timeout: float = 60) -> float:
        spec = self.spec()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            route = self.reader.route(spec)
            if route is not None and route.weights == (100 - weight, weight) and route.accepted:
                return time.monotonic()
            time.sleep(0.01)
        raise RuntimeError(f"route not at weight {weight} within {timeout}s")

    def release(self, journal: Journal | None = None, **kwargs: Any) -> Release:
        def provider_for(address: str | None) -> Any:
            return prometheus_provider(release.spec, address)

        release = Release(self.stack, self.reader, provider_for, journal or self.journal, stack_name=self.name, **kwargs)
        return release

    def destroy(self) -> None:
        self.stack.destroy()
        shutil.rmtree(self.project, ignore_errors=True)


def bench_steps(b: Bench, steps: int) -> dict[str, Any]:
    b.stack.set_config({"canaryImage": "demo:v2", "canaryWeight": 0})
    b.stack.up()
    b.wait_route(0)
    weights = [10 + 10 * (i % 5) for i in range(steps)]
    spec = b.spec()
    urn = target_urn(b.name, "route")

    def bare(w: int, target: bool) -> float:
        start = time.monotonic()
        subprocess.run(["pulumi", "config", "set", "canary:canaryWeight", str(w), "--stack", b.name], cwd=b.project, env=b.env, check=True, capture_output=True)
        args = ["pulumi", "up", "--yes", "--skip-preview", "--stack", b.name] + (["--target", urn] if target else [])
        done = subprocess.run(args, cwd=b.project, env=b.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pulumi up failed: {done.stdout[-1500:]}")
        return b.wait_route(w) - start

    bare_full = [bare(w, False) for w in weights]
    bare_targeted = [bare(w, True) for w in weights]

    # Its own journal: these steps are not a release, and must not look like an unfinished one.
    release = b.release(journal=Journal(b.project / ".canary-steps", b.name))
    release._spec = b.spec()
    state = ReleaseState("bench", b.name, Phase.PROGRESSING, "demo:v2", spec.stable_image, started=now_iso())
    calls = {"n": 0}
    from pulumi.automation import _cmd

    original = _cmd.PulumiCommand.run

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return original(self, *args, **kwargs)

    _cmd.PulumiCommand.run = counting  # type: ignore[method-assign]
    canary_steps = []
    try:
        for w in weights:
            start = time.monotonic()
            state = release._shift(state, w)
            canary_steps.append(time.monotonic() - start)
    finally:
        _cmd.PulumiCommand.run = original  # type: ignore[method-assign]

    # The floor: the same route as a separate object (its own host name), patched directly through
    # the API. Patching Pulumi's own route would make its server-side apply conflict afterwards.
    floor_spec = spec.model_copy(update={"canary_image": "demo:v2"})
    resource = b.kube.resource(routing.API_VERSION, routing.KIND)
    floor_body = routing.route_spec(floor_spec, 0)
    floor_body["hostnames"] = [f"floor.{b.name}.lab.test"]
    b.kube.apply({"apiVersion": routing.API_VERSION, "kind": routing.KIND,
                  "metadata": {"name": "floor", "namespace": spec.app.namespace}, "spec": floor_body}, field_manager="canary-bench")

    def floor_weight(w: int) -> float:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = routing.read_route(b.kube.get(routing.API_VERSION, routing.KIND, "floor", spec.app.namespace) or {}, floor_spec)
            if state.weights == (100 - w, w) and state.accepted:
                return time.monotonic()
            time.sleep(0.01)
        raise RuntimeError(f"floor route not at {w}")

    floor_weight(0)
    direct = []
    for w in weights:
        backends = routing.route_spec(floor_spec, w)["rules"][0]["backendRefs"]
        start = time.monotonic()
        resource.patch(body={"spec": {"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": backends}]}},
                       name="floor", namespace=spec.app.namespace, content_type="application/merge-patch+json")
        direct.append(floor_weight(w) - start)
    resource.delete(name="floor", namespace=spec.app.namespace)

    return {
        "direct_patch": direct,
        "bare_pulumi_up": bare_full,
        "bare_pulumi_up_targeted": bare_targeted,
        "canary_step": canary_steps,
        "cli_processes_per_step": calls["n"] / len(weights),
    }


def bench_rollbacks(b: Bench, runs: int) -> dict[str, Any]:
    to_route, to_verified = [], []
    b.stack.set_config({"canaryWeight": 0}, remove=("canaryImage",))
    b.stack.up()
    for _ in range(runs):
        result = b.release().start("demo:v2-faulty")
        assert result.phase is Phase.FAILED, result
        records = b.journal.records(result.release)
        decision = next(r for r in records if r["type"] == "tick" and r["outcome"] == "rollback")
        on_stable = next(r for r in records if r["type"] == "state" and r.get("message", "").startswith("traffic is back on stable"))
        verified = next(r for r in records if r["type"] == "verified")
        to_route.append(record_time(on_stable) - record_time(decision))
        to_verified.append(record_time(verified) - record_time(decision))
    return {"decision_to_route_restored": to_route, "decision_to_end_state_verified": to_verified}


def _other_image(b: Bench) -> str:
    """The healthy image that is not stable now: each healthy release promotes the other."""
    return "demo:v1" if b.spec().stable_image == "demo:v2" else "demo:v2"


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
        start = time.monotonic()
        started_at = time.time()
        result = b.release().start(image)
        total = time.monotonic() - start
        assert result.phase is Phase.SUCCEEDED, result
        records = b.journal.records(result.release)
        ticks = [r for r in records if r["type"] == "tick"]
        waits = len(ticks) * interval_s
        planned = _planned_waits(b, interval_s)

        def at(message: str, records: list[dict[str, Any]] = records) -> float:
            return record_time(next(r for r in records if r["type"] in ("state", "decision") and r.get("message", "").startswith(message)))

        phases = {
            "setup (config, preflight, snapshot)": at("release started") - started_at,
            "deploy canary and verify": at("analysis starts") - at("release started"),
            "analysis beyond the waits": at("promoting:") - at("analysis starts") - waits,
            "promotion and verify": at("promoted ") - at("promoting:"),
        }
        # The two ups that change Deployments (deploy the canary, promote) are not inside any
        # interval: their time is Pulumi's (CLI, provider, rollout awaits); the rest is canary's own.
        ups = sum(r["seconds"] for r in records if r["type"] == "up" and r["phase"] in ("Initializing", "Promoting"))
        own = total - waits - ups
        out["runs"].append({"total_s": total, "configured_waits_s": waits, "overhead_s": total - waits, "ticks": len(ticks),
                            "overhead_share": _share(total - waits, planned), "share_of_this_run": (total - waits) / total,
                            "phases_s": phases, "deployment_ups_s": ups, "own_s": own, "own_share": own / (total - waits + planned)})
    return _with_median_run(out)


def bench_command(b: Bench, interval_s: float, runs: int) -> dict[str, Any]:
    """The user's view: ``canary release`` as a command, from process start to exit, minus the configured waits.

    Adds what the in-process releases above do not pay: Python's start and imports,
    building the stack's workspace (``pulumi version``, ``pulumi stack select``),
    the Kubernetes client.
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
        last = b.journal.load_state() or {}
        ticks = [r for r in b.journal.records(last.get("release")) if r["type"] == "tick"]
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
    layout = running_lab()
    if layout is None:
        return 2
    b = Bench(layout, "bench-speed")
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores", "date": now_iso()}
    try:
        b.stack.up()
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
    print(f"  of the overhead: the two ups that change Deployments {ov['deployment_ups_s']:.2f}s, "
          f"canary's own work {ov['own_s']:.2f}s = {100 * ov['own_share']:.1f} % of a 5-tick release")
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
