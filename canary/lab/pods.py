"""The lab's stand-in for a container runtime: one demo process per pod.

Runs inside the lab's network namespace (``python -m canary.lab.pods LABDIR``).
It watches the API server for pods the fake kubelet (kwok) gave an IP (every
change wakes it; a full list at least every second stays the truth), starts
``canary/demoapp.py`` bound to that pod IP and container port with the
behaviour of the pod's image tag (``demo:v1``, ``demo:v2-faulty`` …), probes
the new process every 20 ms, and once it answers ``/healthz`` annotates the
pod ``lab.canary/serving=true`` —
only then does kwok mark it Ready, so a Deployment is Ready exactly when its
pods serve, as on a real cluster. It stops the process of a pod that is
deleted, restarts one that died, and keeps Prometheus' scrape targets current
with the labels the metric queries select on.

A pod whose image is not a demo tag never becomes Ready (like an image that
cannot be pulled).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canary import demoapp
from canary.demoapp import IMAGE_BEHAVIOURS
from canary.errors import ClusterUnreachable
from canary.kube import Kube
from canary.lab import procs
from canary.lab import prometheus as lab_prometheus

SERVING_ANNOTATION = "lab.canary/serving"
RESYNC_SECONDS = 1.0  # a full list at least this often: a process that died, a missed change
PROBE_SECONDS = 0.02  # health probes of a started process until it serves …
PROBE_FAST_FOR = 30.0  # … for this long after its start; after that, once per resync
WATCH_SECONDS = 60
# The demo app runs as a script, not as ``-m canary.demoapp``: it imports nothing of canary, and the
# package's imports would add about 0.12 s to every pod's start.
DEMOAPP = Path(demoapp.__file__)


@dataclass
class Running:
    uid: str
    namespace: str
    name: str
    ip: str
    port: int
    image: str
    labels: dict[str, str]
    process: subprocess.Popen[bytes]
    serving: bool = False
    started: float = field(default_factory=time.monotonic)


def demo_tag(image: str) -> str | None:
    """The demo behaviour of an image (``demo:v2-faulty`` -> ``v2-faulty``), or None."""
    name, _, tag = image.rpartition(":")
    if name.rsplit("/", 1)[-1] != "demo" or tag not in IMAGE_BEHAVIOURS:
        return None
    return tag


class Supervisor:
    def __init__(self, lab_dir: Path) -> None:
        self.lab_dir = lab_dir
        self.kube = Kube(lab_dir / "kubeconfig", timeout=5)
        self.running: dict[str, Running] = {}
        self.prom_dir = lab_dir / "prometheus"
        self.log_dir = lab_dir / "logs" / "pods"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.stopping = False
        self.changed = threading.Event()
        self._last: tuple[list[Any], list[Any]] = ([], [])

    def _start(self, pod: dict[str, Any], tag: str) -> Running:
        meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
        container = spec["containers"][0]
        port = int((container.get("ports") or [{}])[0].get("containerPort", 8080))
        log = open(self.log_dir / f"{meta['namespace']}_{meta['name']}.log", "ab")  # noqa: SIM115 - owned by the child
        process = subprocess.Popen(
            [sys.executable, str(DEMOAPP), "--listen", f"{status['podIP']}:{port}", "--image", f"demo:{tag}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        print(f"started {meta['namespace']}/{meta['name']} ({container['image']}) on {status['podIP']}:{port} pid {process.pid}", flush=True)
        return Running(meta["uid"], meta["namespace"], meta["name"], status["podIP"], port, container["image"], dict(meta.get("labels") or {}), process)

    def _stop(self, run: Running, why: str) -> None:
        if run.process.poll() is None:
            run.process.terminate()
            try:
                run.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait(timeout=3)
        print(f"stopped {run.namespace}/{run.name}: {why}", flush=True)

    def _mark_serving(self, run: Running) -> None:
        try:
            self.kube.apply(
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": run.name, "namespace": run.namespace, "annotations": {SERVING_ANNOTATION: "true"}}},
                field_manager="canary-lab-pods",
            )
            run.serving = True
        except ClusterUnreachable as exc:
            print(f"cannot mark {run.namespace}/{run.name} serving: {exc}", flush=True)

    def sync(self) -> None:
        pods = self.kube.list("v1", "Pod")
        seen: set[str] = set()
        for pod in pods:
            meta, status = pod["metadata"], pod.get("status") or {}
            uid = meta["uid"]
            if meta.get("deletionTimestamp") or not status.get("podIP"):
                continue
            image = pod["spec"]["containers"][0]["image"]
            tag = demo_tag(image)
            if tag is None:
                continue
            seen.add(uid)
            run = self.running.get(uid)
            if run is not None and run.ip != status["podIP"]:
                self._stop(self.running.pop(uid), f"pod IP changed to {status['podIP']}")
                run = None
            if run is not None and run.process.poll() is not None:
                print(f"{run.namespace}/{run.name} exited with {run.process.returncode}; restarting", flush=True)
                del self.running[uid]
                run = None
            if run is None:
                run = self.running[uid] = self._start(pod, tag)
        self._probe()
        for uid in list(self.running):
            if uid not in seen:
                self._stop(self.running.pop(uid), "pod deleted")
        self._write_targets()

    def _probe(self) -> None:
        """Mark serving every started process that answers its health check."""
        for run in list(self.running.values()):
            if not run.serving and run.process.poll() is None and procs.http_ok(f"http://{run.ip}:{run.port}/healthz"):
                self._mark_serving(run)

    def _watch(self) -> None:
        """Wake the loop on every pod change (its own thread and client; the loop's list stays the truth)."""
        kube = Kube(self.lab_dir / "kubeconfig", timeout=5)
        while not self.stopping:
            try:
                for _ in kube.changes("v1", "Pod", WATCH_SECONDS):
                    self.changed.set()
            except Exception as exc:  # noqa: BLE001 - the resync covers the gap; retry after a pause
                print(f"pod watch failed: {type(exc).__name__}: {exc}", flush=True)
                time.sleep(RESYNC_SECONDS)

    def _write_targets(self) -> None:
        """Prometheus targets and the lab's pod report, rewritten only when they change."""
        running = sorted(self.running.values(), key=lambda r: (r.namespace, r.name))
        targets = [
            (
                f"{r.ip}:{r.port}",
                {
                    "namespace": r.namespace,
                    "kubernetes_pod_name": r.name,
                    "pod": r.name,
                    "track": r.labels.get("canary/track", ""),
                    "app": r.labels.get("app.kubernetes.io/name", ""),
                    "version": r.image.rpartition(":")[2],
                },
            )
            for r in running
        ]
        report = [
            {"namespace": r.namespace, "pod": r.name, "ip": r.ip, "port": r.port, "image": r.image, "serving": r.serving, "pid": r.process.pid}
            for r in running
        ]
        if (targets, report) == self._last:
            return
        lab_prometheus.write_targets(self.prom_dir, targets)
        tmp = self.lab_dir / "pods.json.tmp"
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, self.lab_dir / "pods.json")
        self._last = (targets, report)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stopping", True))
        print("pod supervisor running", flush=True)
        threading.Thread(target=self._watch, name="pod-watch", daemon=True).start()
        next_sync = 0.0
        while not self.stopping:
            try:
                if self.changed.is_set() or time.monotonic() >= next_sync:
                    self.changed.clear()
                    next_sync = time.monotonic() + RESYNC_SECONDS
                    self.sync()
                else:
                    self._probe()
                    self._write_targets()
            except ClusterUnreachable as exc:
                print(f"API server unreachable: {exc}", flush=True)
            except Exception as exc:  # noqa: BLE001 - the supervisor must outlive one bad pass
                print(f"sync failed: {type(exc).__name__}: {exc}", flush=True)
            now = time.monotonic()
            starting = any(not run.serving and now - run.started < PROBE_FAST_FOR for run in self.running.values())
            self.changed.wait(PROBE_SECONDS if starting else max(0.0, next_sync - now))
        for run in list(self.running.values()):
            self._stop(run, "supervisor stopping")
        self.running.clear()
        self._write_targets()
        return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return Supervisor(Path(args[0])).run()


if __name__ == "__main__":
    sys.exit(main())
