"""The lab's stand-in for a container runtime: one demo process per container of a pod.

Runs inside the lab's network namespace (``python -m canary.lab.pods LABDIR``).
It watches the API server for pods the fake kubelet (kwok) gave an IP (every
change wakes it; a full list at least every second stays the truth) and, for
each, runs its init containers to completion and then one process per
container: ``canary/lab/demoapp.py`` bound to the pod IP and the container's
port (the app), or idling (a sidecar). Each process gets the container's
environment as Kubernetes would build it — ``env`` values, ``valueFrom`` and
``envFrom`` ConfigMaps and Secrets — and its ConfigMap and Secret volumes as
files (``DEMO_MOUNTS`` maps a mount path to the files). Once the app answers
``/healthz`` and every sidecar is alive, the supervisor annotates the pod
``lab.canary/serving=true``, and only then does kwok mark it Ready: a
Deployment is Ready exactly when its pods serve, as on a real cluster. It stops
the processes of a deleted pod, restarts a process that died, and keeps
Prometheus' scrape targets current. A deleted pod's app drains before it stops
(``demoapp.DRAIN_SECONDS``), as a well-behaved app does on SIGTERM.

Prometheus labels follow the namespace's scheme (annotation
``lab.canary/prometheus-labels``): Flagger's ``kubernetes_pod_name`` by
default, or the Prometheus Operator's ``pod`` (``operator``).

A container whose image is not a lab image (``demo:<tag>``) never starts (like
an image that cannot be pulled), so its pod never becomes Ready.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canary.adapters.kube import Kube
from canary.errors import CanaryError, ClusterUnreachable
from canary.lab import demoapp, procs
from canary.lab import prometheus as lab_prometheus

SERVING_ANNOTATION = "lab.canary/serving"
LABELS_ANNOTATION = "lab.canary/prometheus-labels"
RESYNC_SECONDS = 1.0  # a full list at least this often: a process that died, a missed change
PROBE_SECONDS = 0.02  # health probes of a started process until it serves …
PROBE_FAST_FOR = 30.0  # … for this long after its start; after that, once per resync
WATCH_SECONDS = 60
# The demo app runs as a script, not as ``-m canary.lab.demoapp``: it imports nothing of canary, and the
# package's imports would add about 0.12 s to every pod's start.
DEMOAPP = Path(demoapp.__file__)


def _field(pod: dict[str, Any], path: str) -> str:
    """The downward API's fieldRef: metadata.name, metadata.namespace, metadata.uid, metadata.labels['k'],
    metadata.annotations['k'], spec.nodeName, spec.serviceAccountName, status.podIP, status.hostIP."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    for kind in ("labels", "annotations"):
        prefix = f"metadata.{kind}['"
        if path.startswith(prefix) and path.endswith("']"):
            return str((meta.get(kind) or {}).get(path[len(prefix):-2], ""))
    section, _, key = path.partition(".")
    return str({"metadata": meta, "spec": spec, "status": status}.get(section, {}).get(key, ""))


class _Missing(Exception):
    """A pod reads a ConfigMap or Secret that does not exist: it is not started yet."""


@dataclass
class Running:
    uid: str
    namespace: str
    name: str
    ip: str
    port: int
    image: str
    labels: dict[str, str]
    processes: list[subprocess.Popen[bytes]]
    serving: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.processes[0]

    @property
    def listen(self) -> str:
        """The address the pod's app listens on (a deleted pod's, while it drains, is kept by it)."""
        return f"{self.ip}:{self.port}"

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes)


def demo_tag(image: str) -> str | None:
    """The demo behaviour of an image (``demo:v2-faulty`` -> ``v2-faulty``), or None."""
    name, _, tag = image.rpartition(":")
    if name.rsplit("/", 1)[-1] != "demo" or not demoapp.known_tag(tag):
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
        self.files_dir = lab_dir / "pods"
        self.stopping = False
        self.changed = threading.Event()
        self._last: tuple[list[Any], list[Any]] = ([], [])
        self._schemes: dict[str, str] = {}
        #: pods whose ConfigMaps or Secrets do not exist yet (said once each)
        self._waiting: set[str] = set()
        #: deleted pods' processes still draining, by the address they listen on: kwok hands a freed pod IP to the
        #: next pod first, so a new pod of the same app may need that address before the drain ends
        self._draining: dict[str, Running] = {}
        self._draining_lock = threading.Lock()

    # --- a container's environment and files, as the kubelet would give them ---------------------

    def _object(self, kind: str, name: str, namespace: str, optional: bool = False) -> dict[str, str]:
        obj = self.kube.get("v1", kind, name, namespace)
        if obj is None:
            if not optional:
                # as a kubelet: the pod waits (ContainerCreating) until what it reads exists
                raise _Missing(f"{kind} {namespace}/{name} does not exist (yet)")
            obj = {}
        if kind == "Secret":
            return {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    def _env(self, container: dict[str, Any], pod: dict[str, Any]) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                env.update({prefix + k: v for k, v in self._object("ConfigMap", ref["name"], namespace, bool(ref.get("optional"))).items()})
            if "secretRef" in source:
                ref = source["secretRef"]
                env.update({prefix + k: v for k, v in self._object("Secret", ref["name"], namespace, bool(ref.get("optional"))).items()})
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
            source = item.get("valueFrom") or {}
            if "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                env[item["name"]] = self._object("ConfigMap", ref["name"], namespace, bool(ref.get("optional"))).get(ref["key"], "")
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                env[item["name"]] = self._object("Secret", ref["name"], namespace, bool(ref.get("optional"))).get(ref["key"], "")
            if "fieldRef" in source:
                env[item["name"]] = _field(pod, source["fieldRef"]["fieldPath"])
        return env

    def _volumes(self, pod: dict[str, Any], container: dict[str, Any], root: Path) -> dict[str, str]:
        """ConfigMap and Secret volumes written as files; mount path -> directory."""
        meta = pod["metadata"]
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        mounts = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"]) or {}
            data: dict[str, str] | None = None
            if "configMap" in volume:
                data = self._object("ConfigMap", volume["configMap"]["name"], meta["namespace"], bool(volume["configMap"].get("optional")))
            elif "secret" in volume:
                data = self._object("Secret", volume["secret"]["secretName"], meta["namespace"], bool(volume["secret"].get("optional")))
            if data is None:
                continue
            target = root / mount["name"]
            target.mkdir(parents=True, exist_ok=True)
            for key, value in data.items():
                (target / key).write_text(value)
            mounts[mount["mountPath"]] = str(target)
        return mounts

    # --- processes ---------------------------------------------------------------------------------

    def _spawn(self, pod: dict[str, Any], container: dict[str, Any], role: str, listen: str, log: Any) -> subprocess.Popen[bytes]:
        meta = pod["metadata"]
        root = self._files(meta["namespace"], meta["name"], meta["uid"]) / container["name"]
        env = {**os.environ, **self._env(container, pod), "DEMO_MOUNTS": json.dumps(self._volumes(pod, container, root))}
        argv = [sys.executable, str(DEMOAPP), "--listen", listen, "--image", container["image"], "--role", role]
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def _start(self, pod: dict[str, Any]) -> Running:
        meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
        app = next((c for c in spec["containers"] if c.get("ports")), spec["containers"][0])
        port = int((app.get("ports") or [{}])[0].get("containerPort", 8080))
        listen = f"{status['podIP']}:{port}"
        self._free(listen)
        with open(self.log_dir / f"{meta['namespace']}_{meta['name']}.log", "ab") as log:
            for init in spec.get("initContainers") or []:
                self._spawn(pod, init, "init", listen, log).wait(timeout=30)
            processes = [self._spawn(pod, app, "app", listen, log)]
            processes += [self._spawn(pod, c, "sidecar", listen, log) for c in spec["containers"] if c is not app]
        print(f"started {meta['namespace']}/{meta['name']} ({app['image']}, {len(processes)} containers) on {listen}", flush=True)
        return Running(meta["uid"], meta["namespace"], meta["name"], status["podIP"], port, app["image"], dict(meta.get("labels") or {}), processes)

    def _stop(self, run: Running, why: str, drain: bool = True, wait: bool = True) -> None:
        """SIGTERM to the pod's processes (the demo app then drains: it serves for ``demoapp.DRAIN_SECONDS`` more,
        as an app with a preStop pause does while the gateway stops sending to it), then reaped; without ``drain``,
        SIGKILL. Without ``wait``, reaped on a thread of their own: a deleted pod's drain holds up no other pod."""
        for process in run.processes:
            if process.poll() is None:
                process.terminate() if drain else process.kill()
        if wait:
            self._reap(run, why)
        else:
            with self._draining_lock:
                self._draining[run.listen] = run
            threading.Thread(target=self._reap, args=(run, why), name=f"reap-{run.name}", daemon=True).start()

    def _reap(self, run: Running, why: str) -> None:
        for process in run.processes:
            try:
                process.wait(timeout=demoapp.DRAIN_SECONDS + 3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=3)
        with self._draining_lock:
            if self._draining.get(run.listen) is run:
                del self._draining[run.listen]
        shutil.rmtree(self._files(run.namespace, run.name, run.uid), ignore_errors=True)
        print(f"stopped {run.namespace}/{run.name}: {why}", flush=True)

    def _files(self, namespace: str, name: str, uid: str) -> Path:
        """A pod's ConfigMap and Secret files (by uid too: a pod made again under its name while the old one drains)."""
        return self.files_dir / f"{namespace}_{name}_{uid[:8]}"

    def _free(self, listen: str) -> None:
        """The address a new pod listens on, taken from a deleted pod still draining there (SIGKILL): the new pod's."""
        with self._draining_lock:
            old = self._draining.pop(listen, None)
        if old is not None:
            for process in old.processes:
                if process.poll() is None:
                    process.kill()
            for process in old.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=3)

    def _mark_serving(self, run: Running) -> None:
        try:
            self.kube.apply(
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": run.name, "namespace": run.namespace, "annotations": {SERVING_ANNOTATION: "true"}}},
                field_manager="canary-lab-pods",
            )
            run.serving = True
        except CanaryError as exc:
            print(f"cannot mark {run.namespace}/{run.name} serving: {exc}", flush=True)

    def _lab_images(self, pod: dict[str, Any]) -> bool:
        spec = pod["spec"]
        return all(demo_tag(c.get("image", "")) is not None for c in [*(spec.get("initContainers") or []), *spec["containers"]])

    def sync(self) -> None:
        pods = self.kube.list("v1", "Pod")
        seen: set[str] = set()
        for pod in pods:
            meta, status = pod["metadata"], pod.get("status") or {}
            uid = meta["uid"]
            if meta.get("deletionTimestamp") or not status.get("podIP") or not self._lab_images(pod):
                continue
            seen.add(uid)
            run = self.running.get(uid)
            if run is not None and run.ip != status["podIP"]:
                self._stop(self.running.pop(uid), f"pod IP changed to {status['podIP']}")
                run = None
            if run is not None and not run.alive():
                print(f"{run.namespace}/{run.name}: a container exited; restarting", flush=True)
                self._stop(self.running.pop(uid), "restart")
                run = None
            if run is None:
                try:
                    run = self.running[uid] = self._start(pod)
                    self._waiting.discard(uid)
                except _Missing as exc:
                    if uid not in self._waiting:
                        print(f"{meta['namespace']}/{meta['name']} waits: {exc}", flush=True)
                        self._waiting.add(uid)
                except (OSError, subprocess.TimeoutExpired, CanaryError) as exc:
                    print(f"cannot start {meta['namespace']}/{meta['name']}: {exc}", flush=True)
        self._probe()
        for uid in list(self.running):
            if uid not in seen:
                self._stop(self.running.pop(uid), "pod deleted", wait=False)
        self._refresh_schemes()
        self._write_targets()

    def _probe(self) -> None:
        """Mark serving every started pod whose app answers its health check and whose sidecars run."""
        for run in list(self.running.values()):
            if not run.serving and run.alive() and procs.http_ok(f"http://{run.ip}:{run.port}/healthz"):
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

    def _refresh_schemes(self) -> None:
        namespaces = {r.namespace for r in self.running.values()}
        for namespace in namespaces - set(self._schemes):
            obj = self.kube.get("v1", "Namespace", namespace) or {}
            self._schemes[namespace] = ((obj.get("metadata") or {}).get("annotations") or {}).get(LABELS_ANNOTATION, "flagger")

    def _labels(self, run: Running) -> dict[str, str]:
        scheme = self._schemes.get(run.namespace, "flagger")
        labels = {"namespace": run.namespace, "track": run.labels.get("canary.dev/track", ""), "app": run.labels.get("canary.dev/app", ""),
                  "version": run.image.rpartition(":")[2]}
        labels["pod" if scheme == "operator" else "kubernetes_pod_name"] = run.name
        return labels

    def _write_targets(self) -> None:
        """Prometheus targets and the lab's pod report, rewritten only when they change."""
        running = sorted(self.running.values(), key=lambda r: (r.namespace, r.name))
        targets = [(f"{r.ip}:{r.port}", self._labels(r)) for r in running]
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
            self._stop(run, "supervisor stopping", drain=False)
        self.running.clear()
        self._write_targets()
        return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return Supervisor(Path(args[0])).run()


if __name__ == "__main__":
    sys.exit(main())
