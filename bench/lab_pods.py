"""How fast the lab runs a pod: the demo app's start, and a Deployment's rollout, measured in one run.

    .venv/bin/python bench/lab_pods.py [--runs 9] [--json out.json]

- demo app start: from ``Popen`` to the first answer of ``/healthz`` on loopback,
  started as the lab starts it (the script ``canary/lab/demoapp.py``) and, as the
  baseline, as a module (``python -m canary.lab.demoapp``, which imports the canary
  package first);
- rollout on the lab (needs ``canary lab up``): a one-replica Deployment of
  ``demo:v1`` scaled 0 → 1, from the scale request to ``availableReplicas == 1``
  in a status the controller wrote for that request (polled every 5 ms), and
  1 → 0 until no pod is left. Every rollout of a release
  (the canary's deploy, the stable's rolling update) is made of these.

Prints medians and spreads; ``--json`` writes every sample.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from release_speed import running_lab

from canary.adapters.kube import Kube
from canary.lab import demoapp, procs
from canary.lab.layout import Layout

NAMESPACE = "bench-pods"


def demoapp_start(command: list[str], attempts: int = 5) -> float:
    """Seconds from the process's start to its first healthy answer, on a loopback port picked free; a
    process that exits first could not bind it (another process took it since the pick) and is timed again
    on another."""
    for _ in range(attempts):
        port = procs.free_port()
        start = time.monotonic()
        process = subprocess.Popen([*command, "--listen", f"127.0.0.1:{port}", "--image", "demo:v1"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while time.monotonic() - start < 10 and process.poll() is None:
                if procs.http_ok(f"http://127.0.0.1:{port}/healthz"):
                    return time.monotonic() - start
                time.sleep(0.002)
            if process.poll() is None:
                raise RuntimeError(f"{command} did not answer within 10 s")
        finally:
            process.terminate()
            process.wait(timeout=5)
    raise RuntimeError(f"{command} exited before answering on each of {attempts} ports")


def rollouts(layout: Layout, runs: int) -> dict[str, list[float]]:
    kube = Kube(layout.kubeconfig)
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": NAMESPACE},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "demo:v1", "ports": [{"containerPort": 8080}]}]}}},
    }

    def scale(replicas: int, done: Any) -> float:
        start = time.monotonic()
        kube.apply({**deployment, "spec": {**deployment["spec"], "replicas": replicas}}, field_manager="bench")
        kube.wait_for(f"{replicas} replicas", done, timeout=60, interval=0.005)
        return time.monotonic() - start

    def available(replicas: int) -> bool:
        """The controller has seen the new spec (a stale status cannot pass) and counts ``replicas`` available."""
        d = kube.get("apps/v1", "Deployment", "web", NAMESPACE) or {}
        status = d.get("status") or {}
        return status.get("observedGeneration", 0) >= d["metadata"]["generation"] and (status.get("availableReplicas") or 0) == replicas

    up_s: list[float] = []
    down_s: list[float] = []
    try:
        scale(0, lambda: available(0) and not kube.list("v1", "Pod", NAMESPACE))
        for _ in range(runs):
            up_s.append(scale(1, lambda: available(1)))
            down_s.append(scale(0, lambda: available(0) and not kube.list("v1", "Pod", NAMESPACE)))
    finally:
        kube.delete("v1", "Namespace", NAMESPACE)
    return {"scale_0_to_1_available": up_s, "scale_1_to_0_gone": down_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    layout = running_lab()
    if layout is None:
        return 2
    script = [sys.executable, str(Path(demoapp.__file__))]
    module = [sys.executable, "-m", "canary.lab.demoapp"]
    results: dict[str, list[float]] = {
        "demoapp_start_script": [demoapp_start(script) for _ in range(args.runs)],
        "demoapp_start_module": [demoapp_start(module) for _ in range(args.runs)],
    }
    results.update(rollouts(layout, args.runs))
    for key, samples in results.items():
        print(f"{key:<26} median {statistics.median(samples):.3f}  min {min(samples):.3f}  max {max(samples):.3f}  ({len(samples)} runs)")
    print(f"demo app start, script / module: {statistics.median(results['demoapp_start_script']) / statistics.median(results['demoapp_start_module']):.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
