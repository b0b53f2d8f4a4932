"""Many releases at once on the lab: how canary's costs grow with the number of apps releasing together.

    .venv/bin/python bench/many_releases.py [--n 1 5 20] [--apps-per-stack 1] [--no-rollback] [--interval 10s]
                                            [--spread 0] [--rps 100] [--nice 0] [--timeout 1200] [--json out.json]

Needs the lab (``canary lab up``). For each N, in one run (so that every ratio against N = 1 compares
the same machine, lab and load):

1. N apps, each with its own host name: one to a stack by default, or ``--apps-per-stack K`` to a
   stack (declared under ``canary:apps``, K at a time; the last stack takes what is left). Each stack
   is in a namespace of its own, made as the lab tests make theirs (a copy of the project, the lab
   stack file), and deployed at demo:v1 (``canary up``, four stacks at a time; not measured);
2. healthy: N ``canary release STACK [--app A] --image demo:v2`` commands started at once, each a
   process of its own, as N people or N pipelines would run them (``--spread S``: started evenly over
   S seconds instead, the i-th at i × S / N; every one still runs while the others do when S is shorter
   than a release); every one must be promoted (exit 0);
3. rollback (unless ``--no-rollback``): N ``canary release … --image demo:v2-faulty`` at once; each
   must roll back (exit 1);
4. after each phase, every app is audited in the cluster for anything crossed or lost (``audit``): its
   route names only its own Services and host and is at rest, its stable Deployment runs what its own
   release left (the new image when promoted, the one before when rolled back) and its canary has no
   replicas, its journal holds the release its process ran whole (the id it printed,
   every weight step, the end state verified) and its release state agrees with its exit code;
5. the stacks destroyed and removed — also after a failure, a time-out or Ctrl-C.

Each phase is bounded by ``--timeout`` seconds: what still runs then is killed (its whole process tree)
and counted as timed out. Every release generates its own load (its ``rollout`` hook: ``hey`` at
``--rps`` requests/s for the interval less 2 s), so the load on the lab grows with N, as it would.

What is measured, and how (the definitions are the ones printed):

- **step latency** — per weight step, from the journal's "shifting to step k" record to its "weight W is
  live in the route and accepted by the gateway" record: the step's canary sizing, its targeted ``up``,
  and the gateway's acceptance, verified. p50 and p95 over every step of every healthy release; and of
  these, the part spent in the step's Pulumi ``up``s (the journal's ``up`` records within the step).
- **step period** — the gap between successive "shifting to step" records of one release: the analysis
  interval (wait and tick) plus the next step's latency; the pace a release keeps. p50 and p95.
- **rollback** — from the decision (the "rolling back:" state record) to the route restored ("traffic is
  back on stable": route 100/0, accepted by the gateway), and to the end state verified. p50 and p95.
- **CPU per release** — user + system seconds of the ``canary release`` process and of everything it
  started and reaped (Pulumi CLI, language host, provider, the load-test ``hey``), exact, from
  ``os.wait4``'s rusage; ``hey``'s share is sampled from ``/proc/<pid>/stat`` every 0.5 s and reported
  apart: orchestrator CPU = total − hey. The orchestrator's CPU is split into the ``canary`` process's
  own (its Python, the project's program run inline, the journal, the checks; sampled likewise, its
  last 0.5 s unseen) and the rest: the Pulumi CLI processes and the provider and language host they
  start.
- **memory per release** — the orchestrator process's own peak RSS (``VmHWM`` in ``/proc/<pid>/status``),
  and the peak of its whole process tree's summed RSS (sampled every 0.5 s).
- **API-server requests** — the kube-apiserver's ``apiserver_request_total`` (its ``/metrics``, read with
  the lab's kubeconfig) over the phase, less its idle rate (the mean of 10 s measured before and after
  the phase, each after 15 s of settling) times the phase's duration; per healthy weight step and per
  release, with the 25 largest (verb, resource) counts in ``--json``. It counts every client: the
  releases and their Pulumi provider, and the controllers reacting to them (kube-controller-manager,
  kwok, Traefik) — and anyone else using the lab meanwhile (a lab test's route watcher polls the route
  many times a second). Run it on an otherwise idle lab: above 5 requests/s without a release the
  script says the figures include other clients' bursts.
- **where the machine's CPU went** — over the phase, in cores (CPU seconds ÷ the phase's seconds): the
  whole machine busy (``/proc/stat``), the releases' orchestrators and their load tests (the exact
  figures above), and each of the lab's components (its pid file's process, the children it reaped and
  the ones alive, from ``/proc/<pid>/stat``: the API server and etcd; the controllers, scheduler and
  kwok; Traefik; the demo pods; Prometheus and the Pushgateway; the network forwarder); and the share
  of the phase in which some runnable task waited for a CPU (``/proc/pressure/cpu``, ``some``).

``--nice N`` runs each release (its ``canary`` process and the Pulumi processes it starts) N steps of
CPU priority above the rest of the machine, its load test at the usual priority: the lab is then a
cluster and clients beside the runner rather than on it (they get what the releases leave), and the
releases still share the cores with each other. It is a model of separate machines on one, not a
setting of canary's; the figures without it are the ones of one machine doing all of it.

Prints one table per N, the ratios against N = 1 and, for each N, the healthy step's p95 against the target
(at most twice the N = 1 median step); ``--json`` writes every sample, and the end of the
log of every release that ended otherwise than expected or that the audit flagged. Exits 1 when a
release ended otherwise than expected or the audit found anything crossed or lost.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from canary import api
from canary.adapters import stackfile
from canary.adapters.kube import Kube
from canary.adapters.stack import Stack
from canary.core import naming, routing, units
from canary.core.naming import Track
from canary.lab import cluster, procs
from canary.lab.layout import Layout

APP = "web"
IDLE_WARNING = 5.0  # API-server requests/s without a release above which the lab is not idle
TARGET = 2.0  # a healthy step's p95 at N, within this many times the N = 1 median step
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# --- stacks ---------------------------------------------------------------------------------------


@dataclass
class App:
    """One app of a stack (namespace = stack name), in a copy of the project; a stack of one app
    declares it as ``canary:app``, a stack of several under ``canary:apps``."""

    stack: str
    name: str
    host: str
    project: Path
    env: dict[str, str]
    several: bool = False  # one of several apps of its stack: commands name it (--app)

    @property
    def label(self) -> str:
        return f"{self.stack}/{self.name}" if self.several else self.stack

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "canary", *args, "--project-dir", str(self.project)]

    def release_argv(self, image: str) -> list[str]:
        return self.argv("release", self.stack, *(["--app", self.name] if self.several else []), "--image", image)


def make_stack(layout: Layout, stack: str, apps: int, interval: str, rps: int, nice: int = 0) -> list[App]:
    """As the lab tests' ``make_project``: the lab stack file, with the stack's own namespace; with
    ``apps`` > 1, that many copies of its app (``a0``, ``a1``, …), each with its own host name and load
    (with ``nice``, the load test gives back the priority its release runs at)."""
    project = Path(tempfile.mkdtemp(prefix=f"canary-many-{stack}-"))
    (project / "stacks").mkdir()
    for file in ("Pulumi.yaml", "__main__.py"):
        shutil.copyfile(ROOT / file, project / file)
    document = stackfile.load((ROOT / "stacks" / "Pulumi.lab.yaml").read_text())
    config = document["config"]
    seconds = max(1, int(units.parse_duration(interval).total_seconds()) - 2)
    base = {"app": config.pop("canary:app"), "gateway": config.pop("canary:gateway"), "analysis": config.pop("canary:analysis")}
    base["app"]["namespace"] = stack
    base["analysis"]["interval"] = interval
    for metric in base["analysis"]["metrics"]:
        metric["interval"] = f"{2 * seconds + 4}s"
    names = [APP] if apps == 1 else [f"a{i}" for i in range(apps)]
    out, declared = [], {}
    for name in names:
        one = copy.deepcopy(base)
        host = f"{stack}.lab.test" if apps == 1 else f"{name}.{stack}.lab.test"
        one["app"]["name"] = name
        one["gateway"]["hostnames"] = [host]
        for hook in one["analysis"].get("webhooks", []):
            if hook.get("cmd", "").startswith("hey "):
                hook["cmd"] = (f"nice -n {nice} " if nice else "") + f"hey -host {host} -z {seconds}s -q {max(1, rps // 4)} -c 4 http://127.0.0.1:{layout.gateway_port}/"
        declared[name] = one
        out.append(App(stack, name, host, project, {}, several=apps > 1))
    if apps == 1:
        config.update({f"canary:{key}": value for key, value in declared[APP].items()})
    else:
        config["canary:apps"] = declared
    (project / "stacks" / f"Pulumi.{stack}.yaml").write_text(stackfile.dump(document))
    env = {k: v for k, v in os.environ.items() if k != "CANARY_STATE_DIR"}
    env.update(layout.pulumi_env())
    env["CANARY_LAB_DIR"] = str(layout.dir)
    cluster.init_stack(layout, stack, project)
    for app in out:
        app.env = env
    return out


def deploy(app: App) -> None:
    done = subprocess.run(app.argv("up", app.stack), capture_output=True, text=True, env=app.env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"canary up {app.stack} failed ({done.returncode}): {done.stdout[-1500:]}{done.stderr[-1500:]}")


def remove(app: App, layout: Layout) -> str | None:
    """Destroy the stack and remove it from the backend (the namespace goes with it, and the history and
    backup files the file backend keeps of a removed stack); a failure is returned, not raised."""
    try:
        Stack(app.project, app.stack, app.env).destroy()
        subprocess.run(["pulumi", "stack", "rm", "--yes", "--force", app.stack], cwd=app.project, env=app.env, capture_output=True, timeout=120)
        backend = layout.backend_dir / ".pulumi"
        shutil.rmtree(backend / "history" / "canary" / app.stack, ignore_errors=True)
        for left in (backend / "stacks" / "canary").glob(f"{app.stack}.json*"):
            left.unlink(missing_ok=True)
    except Exception as exc:  # noqa: BLE001 - clean up the others whatever happened to this one
        return f"{app.stack}: {exc}"
    finally:
        shutil.rmtree(app.project, ignore_errors=True)
    return None


# --- processes ------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, list[str]] | None:
    """A live process's command name and the fields of ``/proc/<pid>/stat`` after it (state first)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()


def _stat(pid: int) -> tuple[str, float, int] | None:
    """(command name, CPU seconds, RSS in KiB) of a live process."""
    if (seen := _proc_stat(pid)) is None:
        return None
    comm, fields = seen
    return comm, (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[21]) * PAGE_KB


def _hwm(pid: int) -> int:
    with contextlib.suppress(OSError, StopIteration, ValueError):
        line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1])
    return 0


def kill_tree(pid: int) -> None:
    """SIGKILL a release and everything below it (the Pulumi CLI runs in a session of its own)."""
    below = [pid, *procs.descendants(pid)]
    for each in below:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(each), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)


@dataclass
class Run:
    """One ``canary release`` process: its outcome, exact CPU (wait4), and what the sampler saw."""

    app: App
    image: str
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ended: float = 0.0
    code: int | None = None
    cpu: float = 0.0  # user + system of the release and everything it reaped
    maxrss_kb: int = 0  # the largest single process of its tree (rusage)
    hey_cpu: dict[int, float] = field(default_factory=dict)  # per hey process, last seen
    own_cpu: float = 0.0  # the canary process's own (its Python, the inline program), last seen
    orchestrator_hwm_kb: int = 0
    tree_rss_peak_kb: int = 0
    timed_out: bool = False
    log: Path | None = None
    nice: int = 0  # CPU priority steps above the rest of the machine (its children inherit them)

    def start(self) -> None:
        self.log = self.app.project / f"release-{self.app.name}-{self.image.replace(':', '-')}.log"
        out = self.log.open("wb")
        raise_priority = (lambda: os.setpriority(os.PRIO_PROCESS, 0, -self.nice)) if self.nice else None
        self.process = subprocess.Popen(self.app.release_argv(self.image), stdout=out, stderr=subprocess.STDOUT,
                                        env=self.app.env, start_new_session=True, preexec_fn=raise_priority)
        out.close()
        self.started = time.time()
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        assert self.process is not None
        _, status, usage = os.wait4(self.process.pid, 0)
        self.ended = time.time()
        self.cpu = usage.ru_utime + usage.ru_stime
        self.maxrss_kb = usage.ru_maxrss
        self.process.returncode = self.code = os.waitstatus_to_exitcode(status)

    @property
    def running(self) -> bool:
        return self.code is None

    @property
    def load_test_cpu(self) -> float:
        """CPU seconds of its ``hey`` processes, as last seen."""
        return sum(self.hey_cpu.values())

    def sample(self, children: dict[int, list[int]]) -> None:
        assert self.process is not None
        pid = self.process.pid
        total = 0
        for each in [pid, *procs.descendants(pid, children)]:
            seen = _stat(each)
            if seen is None:
                continue
            comm, cpu, rss = seen
            total += rss
            if each == pid:
                self.own_cpu = cpu
            if comm == "hey":
                self.hey_cpu[each] = cpu
        self.tree_rss_peak_kb = max(self.tree_rss_peak_kb, total)
        self.orchestrator_hwm_kb = max(self.orchestrator_hwm_kb, _hwm(pid))


def run_phase(apps: list[App], image: str, timeout: float, spread: float = 0.0, nice: int = 0) -> list[Run]:
    """Every app's ``canary release --image IMAGE`` at once — or, with ``spread`` seconds, the i-th of N
    started i × spread / N seconds after the first — sampled every 0.5 s, bounded by ``timeout``."""
    runs = [Run(app, image, nice=nice) for app in apps]
    began = time.monotonic()
    starts = [began + i * spread / len(runs) for i in range(len(runs))]
    deadline = began + timeout
    try:
        while any(r.running for r in runs):  # a run not started yet is running too: its code is None
            now = time.monotonic()
            for run, at in zip(runs, starts, strict=True):
                if run.process is None and now >= at:
                    run.start()
            children = procs.children_map()
            for run in runs:
                if run.running and run.process is not None:
                    run.sample(children)
            if time.monotonic() > deadline:
                for run in _kill_started(runs):
                    run.timed_out = True
                end = time.monotonic() + 30
                while any(r.running and r.process is not None for r in runs) and time.monotonic() < end:
                    time.sleep(0.2)
                break
            time.sleep(0.5)
    except BaseException:
        # a failure here or Ctrl-C: the releases started are stopped before their stacks are removed
        _kill_started(runs)
        raise
    return runs


def _kill_started(runs: list[Run]) -> list[Run]:
    """Kill every release started and still running (its whole process tree); returns them."""
    killed = []
    for run in runs:
        if run.running and run.process is not None:
            kill_tree(run.process.pid)
            killed.append(run)
    return killed


# --- the machine's CPU ----------------------------------------------------------------------------

#: the lab's components by their pid files' names, in the groups the figures name
LAB_PARTS = {"API server and etcd": ("kube-apiserver", "etcd"), "controllers, scheduler, kwok": ("kube-controller-manager", "kube-scheduler", "kwok"),
             "gateway (Traefik)": ("traefik",), "demo pods": ("pods",), "Prometheus and Pushgateway": ("prometheus", "pushgateway"),
             "network forwarder": ("forwarder",)}


def _cpu_with_reaped(pid: int) -> float:
    """User + system seconds of a live process and of the children it has waited for."""
    seen = _proc_stat(pid)
    return sum(int(f) for f in seen[1][11:15]) / CLK_TCK if seen is not None else 0.0


def cpu_snapshot(layout: Layout) -> dict[str, float]:
    """CPU seconds so far: the machine busy, each lab part (its processes, their reaped and live
    children), and the microseconds in which some runnable task waited for a CPU."""
    with open("/proc/stat") as f:
        jiffies = [int(v) for v in f.readline().split()[1:]]
    out = {"machine busy": (sum(jiffies[:8]) - jiffies[3] - jiffies[4]) / CLK_TCK}
    children = procs.children_map()
    pids = procs.recorded(layout.dir)
    for part, names in LAB_PARTS.items():
        out[part] = sum(_cpu_with_reaped(each) for name in names if (pid := pids.get(name)) for each in [pid, *procs.descendants(pid, children)])
    with contextlib.suppress(OSError, StopIteration, ValueError):
        some = next(line for line in Path("/proc/pressure/cpu").read_text().splitlines() if line.startswith("some "))
        out["cpu wait µs"] = float(dict(item.split("=") for item in some.split()[1:])["total"])
    return out


def cpu_figures(before: dict[str, float], after: dict[str, float], runs: list[Run], seconds: float) -> dict[str, Any]:
    """Where the machine's CPU went over a phase of ``seconds``, in cores."""
    hey = sum(r.load_test_cpu for r in runs)
    cores = {"machine busy": (after["machine busy"] - before["machine busy"]) / seconds,
             "releases' orchestrators": (sum(r.cpu for r in runs) - hey) / seconds, "releases' load tests": hey / seconds}
    cores.update({part: (after[part] - before[part]) / seconds for part in LAB_PARTS})
    cores["not attributed (the sources differ a little)"] = cores["machine busy"] - sum(v for k, v in cores.items() if k != "machine busy")
    out: dict[str, Any] = {"cores": cores}
    if "cpu wait µs" in before and "cpu wait µs" in after:
        out["cpu_wait_share"] = (after["cpu wait µs"] - before["cpu wait µs"]) / 1e6 / seconds
    return out


# --- the API server -------------------------------------------------------------------------------


class ApiServer:
    """The kube-apiserver's request counter (``apiserver_request_total``, every client), from its /metrics."""

    def __init__(self, layout: Layout) -> None:
        from kubernetes import config

        self.client = config.new_client_from_config(config_file=str(layout.kubeconfig))

    def counts(self) -> dict[str, float]:
        headers: dict[str, str] = {}
        self.client.update_params_for_auth(headers, [], ["BearerToken"], "GET", "/metrics", None)
        response = self.client.call_api("GET", self.client.configuration.host + "/metrics", header_params=headers, _request_timeout=30)
        response.read()
        out: dict[str, float] = {}
        for line in response.data.decode().splitlines():
            if line.startswith("apiserver_request_total{"):
                labels, _, value = line.rpartition(" ")
                found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
                key = f"{found.get('verb')} {found.get('resource') or found.get('subresource') or '-'}"
                out[key] = out.get(key, 0.0) + float(value)
        return out

    def idle_rate(self, settle: float = 15.0, seconds: float = 10.0) -> float:
        """Requests per second with no release running, measured after ``settle`` seconds (the controllers
        finish reacting to the last rollout or cleanup first)."""
        time.sleep(settle)
        before = sum(self.counts().values())
        time.sleep(seconds)
        return (sum(self.counts().values()) - before) / seconds


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


# --- the journals ---------------------------------------------------------------------------------


def _t(record: Any) -> float:
    return datetime.fromisoformat(record.time.replace("Z", "+00:00")).timestamp()


def journal_times(run: Run) -> dict[str, list[float]]:
    """Step latencies, step periods and rollback times of one release, from its journal in the cluster."""
    out: dict[str, list[float]] = {"step": [], "step_up": [], "period": [], "rollback_route": [], "rollback_verified": []}
    try:
        history = api.history(run.app.stack, app=run.app.name, project_dir=run.app.project, env=run.app.env)
    except Exception as exc:  # noqa: BLE001 - a journal that cannot be read leaves this release out
        print(f"  {run.app.label}: journal unreadable: {exc}", file=sys.stderr)
        return out
    release = next((r.release for r in reversed(history) if r.type == "state" and r.message.startswith("release started")), None)
    records = [r for r in history if r.release == release and r.type in ("state", "verified")]
    ups = [r for r in history if r.release == release and r.type == "up"]
    shifts = [r for r in records if r.type == "state" and r.message.startswith("shifting to step")]
    for shift in shifts:
        live = next((r for r in records if r.type == "state" and _t(r) >= _t(shift) and " is live in the route and accepted" in r.message), None)
        if live is not None:
            out["step"].append(_t(live) - _t(shift))
            out["step_up"].append(sum(u.seconds for u in ups if _t(shift) <= _t(u) <= _t(live)))
    out["period"] = [_t(b) - _t(a) for a, b in zip(shifts, shifts[1:], strict=False)]
    decision = next((r for r in records if r.type == "state" and r.message.startswith("rolling back:")), None)
    if decision is not None:
        restored = next((r for r in records if r.type == "state" and r.message.startswith("traffic is back on stable") and _t(r) >= _t(decision)), None)
        verified = next((r for r in records if r.type == "verified" and r.what == "end state" and _t(r) >= _t(decision)), None)
        if restored is not None:
            out["rollback_route"].append(_t(restored) - _t(decision))
        if verified is not None:
            out["rollback_verified"].append(_t(verified) - _t(decision))
    return out


def audit(run: Run, kube: Kube, stable_image: str, steps: int | None) -> list[str]:
    """What this release left crossed or lost, read from the cluster after every release of the phase
    ended: the app's route names its own Services only (in its own namespace), serves its own host and
    is at rest (stable 100, canary 0); its stable Deployment runs ``stable_image`` (the release's image
    when it was promoted, the app's stable before it when it rolled back) and its canary has no
    replicas; its journal holds its release whole — the last one is the one this process ran (its id is
    the one it printed), from "release started" to the end state verified, with ``steps`` weight steps
    when it was promoted, and the release state ends as its exit code says."""
    app, ns = run.app, run.app.stack
    problems: list[str] = []
    own = {naming.service(app.name, Track.STABLE), naming.service(app.name, Track.CANARY)}
    route = kube.get(routing.API_VERSION, routing.KIND, naming.route(app.name), ns)
    if route is None:
        problems.append("its route is gone")
    else:
        spec = route.get("spec") or {}
        if spec.get("hostnames") != [app.host]:
            problems.append(f"its route serves {spec.get('hostnames')}, not [{app.host}]")
        refs = [ref for rule in spec.get("rules") or [] for ref in rule.get("backendRefs") or []]
        strangers = [f"{ref.get('namespace', ns)}/{ref.get('name')}" for ref in refs if ref.get("name") not in own or ref.get("namespace", ns) != ns]
        if strangers:
            problems.append(f"its route sends traffic to {strangers}")
        last = ((spec.get("rules") or [{}])[-1]).get("backendRefs") or []
        weights = {ref.get("name"): ref.get("weight", 1) for ref in last}
        if weights.get(naming.service(app.name, Track.STABLE)) != 100 or weights.get(naming.service(app.name, Track.CANARY), 0) != 0:
            problems.append(f"its route is not at rest: {weights}")
    stable = kube.get("apps/v1", "Deployment", naming.deployment(app.name, Track.STABLE), ns) or {}
    images = [c.get("image") for c in (((stable.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []]
    if images[:1] != [stable_image]:
        problems.append(f"its stable Deployment runs {images}, not {stable_image}")
    canary = kube.get("apps/v1", "Deployment", naming.deployment(app.name, Track.CANARY), ns) or {}
    if ((canary.get("spec") or {}).get("replicas") or 0) != 0:
        problems.append(f"its canary has {canary['spec']['replicas']} replicas")
    printed = re.findall(r"^release (\S+): ", run.log.read_text(), re.M) if run.log and run.log.exists() else []
    try:
        history = api.history(app.stack, app=app.name, project_dir=app.project, env=app.env)
        status = api.status(app.stack, app=app.name, project_dir=app.project, env=app.env)
    except Exception as exc:  # noqa: BLE001 - what cannot be read is reported, not raised
        return [*problems, f"its journal cannot be read: {exc}"]
    started = [r for r in history if r.type == "state" and r.message.startswith("release started")]
    release = started[-1].release if started else None
    if not printed or printed[-1] != release:
        problems.append(f"its journal's last release is {release}, the process printed {printed[-1:] or 'none'}")
    mine = [r for r in history if r.release == release]
    if not any(r.type == "verified" and r.what == "end state" for r in mine):
        problems.append("its journal has no verified end state")
    if steps is not None and run.code == 0 and (shifts := sum(r.type == "state" and r.message.startswith("shifting to step") for r in mine)) != steps:
        problems.append(f"its journal has {shifts} weight steps, not {steps}")
    phase = status.state.phase.value if status is not None else None
    expected = {0: "Succeeded", 1: "Failed"}.get(run.code if run.code is not None else -1)
    if status is None or status.state.release != release or phase != expected:
        problems.append(f"its release state is {phase} of {status.state.release if status else None}, exit {run.code}")
    return [f"{app.label}: {p}" for p in problems]


# --- figures --------------------------------------------------------------------------------------


def pct(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def phase_figures(runs: list[Run], requests: float | None, expect: int, per_step: bool) -> dict[str, Any]:
    times: dict[str, list[float]] = {"step": [], "step_up": [], "period": [], "rollback_route": [], "rollback_verified": []}
    for run in runs:
        for key, values in journal_times(run).items():
            times[key].extend(values)
    hey = [r.load_test_cpu for r in runs]
    orchestrator = [r.cpu - h for r, h in zip(runs, hey, strict=True)]
    steps = len(times["step"])
    return {
        "releases": len(runs),
        "as_expected": sum(r.code == expect for r in runs),
        "timed_out": sum(r.timed_out for r in runs),
        "exit_codes": [r.code for r in runs],
        "wall_s": max(r.ended for r in runs) - min(r.started for r in runs) if runs else 0.0,
        "release_s_p50": statistics.median([r.ended - r.started for r in runs]),
        "step_s_p50": pct(times["step"], 0.5), "step_s_p95": pct(times["step"], 0.95),
        "step_up_s_p50": pct(times["step_up"], 0.5), "step_up_s_p95": pct(times["step_up"], 0.95),
        "period_s_p50": pct(times["period"], 0.5), "period_s_p95": pct(times["period"], 0.95),
        "rollback_route_s_p50": pct(times["rollback_route"], 0.5), "rollback_route_s_p95": pct(times["rollback_route"], 0.95),
        "rollback_verified_s_p50": pct(times["rollback_verified"], 0.5), "rollback_verified_s_p95": pct(times["rollback_verified"], 0.95),
        "cpu_s_per_release": statistics.mean(r.cpu for r in runs),
        "orchestrator_cpu_s_per_release": statistics.mean(orchestrator),
        "hey_cpu_s_per_release": statistics.mean(hey),
        "canary_process_cpu_s_per_release": statistics.mean(r.own_cpu for r in runs),
        "pulumi_cpu_s_per_release": statistics.mean(o - r.own_cpu for r, o in zip(runs, orchestrator, strict=True)),
        "orchestrator_peak_rss_mib": statistics.mean(r.orchestrator_hwm_kb for r in runs) / 1024,
        "tree_peak_rss_mib": statistics.mean(r.tree_rss_peak_kb for r in runs) / 1024,
        "largest_process_rss_mib": max(r.maxrss_kb for r in runs) / 1024,
        "api_requests": requests,
        "api_requests_per_release": requests / len(runs) if runs and requests is not None else None,
        "api_requests_per_step": requests / steps if steps and per_step and requests is not None else None,
        "steps": steps,
        "samples": times,
    }


SHOWN = [("step_s_p50", "step latency p50 (s)"), ("step_s_p95", "step latency p95 (s)"),
         ("step_up_s_p50", "  of which its up, p50 (s)"), ("step_up_s_p95", "  of which its up, p95 (s)"), ("period_s_p50", "step period p50 (s)"),
         ("period_s_p95", "step period p95 (s)"), ("rollback_route_s_p50", "rollback → route restored p50 (s)"),
         ("rollback_route_s_p95", "rollback → route restored p95 (s)"), ("rollback_verified_s_p50", "rollback → verified p50 (s)"),
         ("release_s_p50", "release wall time p50 (s)"), ("cpu_s_per_release", "CPU per release, all (s)"),
         ("orchestrator_cpu_s_per_release", "CPU per release, orchestrator (s)"), ("hey_cpu_s_per_release", "CPU per release, load test (s)"),
         ("canary_process_cpu_s_per_release", "  of which canary's own process (s)"), ("pulumi_cpu_s_per_release", "  of which Pulumi CLI and provider (s)"),
         ("orchestrator_peak_rss_mib", "orchestrator peak RSS (MiB)"), ("tree_peak_rss_mib", "process tree peak RSS (MiB)"),
         ("api_requests_per_step", "API requests per step"), ("api_requests_per_release", "API requests per release"),
         ("api_requests_raw_per_release", "API requests per release, idle not subtracted")]


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def print_results(results: dict[int, dict[str, dict[str, Any]]]) -> None:
    for n, phases in results.items():
        for phase, figures in phases.items():
            print(f"\nN = {n}, {phase}: {figures['as_expected']}/{figures['releases']} as expected, {figures['timed_out']} timed out, "
                  f"{len(figures['crossed_or_lost'])} crossed or lost, wall {figures['wall_s']:.1f}s, {figures['steps']} steps")
            for key, label in SHOWN:
                if figures.get(key) is not None:
                    print(f"  {label:<46} {_fmt(figures[key])}")
            if "cores" in figures:
                print(f"  {'CPU over the phase, in cores':<46} " + ", ".join(f"{k} {v:.2f}" for k, v in figures["cores"].items()))
            if figures.get("cpu_wait_share") is not None:
                print(f"  {'share of the phase some task waited for a CPU':<46} {figures['cpu_wait_share']:.2f}")
    if 1 not in results or len(results) < 2:
        return
    print("\nratios against N = 1 (same run):")
    for n, phases in results.items():
        if n == 1:
            continue
        for phase, figures in phases.items():
            base = results[1].get(phase, {})
            parts = [f"{label.split(' (')[0]} ×{figures[key] / base[key]:.2f}" for key, label in SHOWN
                     if figures.get(key) is not None and base.get(key)]
            print(f"  N = {n}, {phase}: " + "; ".join(parts))
    base = results[1].get("healthy", {}).get("step_s_p50")
    for n, phases in results.items():
        p95 = phases.get("healthy", {}).get("step_s_p95")
        if n != 1 and base and p95 is not None:
            verdict = "met" if p95 <= TARGET * base else "not met"
            print(f"target: N = {n} healthy step p95 {p95:.2f}s = ×{p95 / base:.1f} the N = 1 median {base:.2f}s (≤ ×{TARGET:g}: {verdict})")


# --- the run --------------------------------------------------------------------------------------


@contextlib.contextmanager
def apps_of(layout: Layout, n: int, per_stack: int, token: str, interval: str, rps: int, nice: int) -> Iterator[list[App]]:
    """``n`` apps, ``per_stack`` to a stack (the last stack takes what is left), deployed; removed after."""
    shape = f"bm{n}" if per_stack == 1 else f"bm{n}x{per_stack}"
    sizes = [min(per_stack, n - start) for start in range(0, n, per_stack)]
    stacks: list[list[App]] = []
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            stacks.extend(pool.map(lambda i: make_stack(layout, f"{shape}-{token}-{i}", sizes[i], interval, rps, nice), range(len(sizes))))
            list(pool.map(lambda apps: deploy(apps[0]), stacks))
        yield [app for apps in stacks for app in apps]
    finally:
        with ThreadPoolExecutor(max_workers=4) as pool:
            failures = [f for f in pool.map(lambda apps: remove(apps[0], layout), stacks) if f]
        for failure in failures:
            print(f"could not remove {failure}", file=sys.stderr)


def lab_steps() -> int:
    """The weight steps of a healthy release of the lab stack file's analysis (maxWeight / stepWeight)."""
    analysis = stackfile.load((ROOT / "stacks" / "Pulumi.lab.yaml").read_text())["config"]["canary:analysis"]
    return int(analysis["maxWeight"]) // int(analysis["stepWeight"])


def measure(layout: Layout, n: int, args: argparse.Namespace, token: str) -> dict[str, dict[str, Any]]:
    server = ApiServer(layout)
    kube = Kube(layout.kubeconfig)
    out: dict[str, dict[str, Any]] = {}
    phases = [("healthy", "demo:v2", 0)] + ([] if args.no_rollback else [("rollback", "demo:v2-faulty", 1)])
    per_stack = max(1, args.apps_per_stack)
    with apps_of(layout, n, per_stack, token, args.interval, args.rps, args.nice) as apps:
        steps = lab_steps()
        stable = {app.label: "demo:v1" for app in apps}  # what each app runs now: deployed, then as each release ended
        for phase, image, expect in phases:
            print(f"N = {n}: {phase} ({image}) of {len(apps)} apps in {len({a.stack for a in apps})} stacks …", flush=True)
            idle_before = server.idle_rate()
            before, cpu_before, began = server.counts(), cpu_snapshot(layout), time.monotonic()
            runs = run_phase(apps, image, args.timeout, args.spread, args.nice)
            spent = time.monotonic() - began
            cpu_after = cpu_snapshot(layout)
            counted = delta(server.counts(), before)
            idle_after = server.idle_rate()
            idle = (idle_before + idle_after) / 2
            if idle > IDLE_WARNING:
                print(f"  the lab is not idle ({idle_before:.1f} and {idle_after:.1f} requests/s without a release): "
                      "the API-server figures include other clients' bursts", file=sys.stderr)
            net = sum(counted.values()) - idle * spent  # at or below zero: other clients' noise hides the releases'
            figures = phase_figures(runs, net if net > 0 else None, expect, per_step=phase == "healthy")
            figures.update(cpu_figures(cpu_before, cpu_after, runs, spent))
            figures.update(idle_requests_per_s=[idle_before, idle_after], api_requests_raw_per_release=sum(counted.values()) / len(runs),
                           api_by_verb_resource=dict(sorted(counted.items(), key=lambda kv: -kv[1])[:25]))
            for run in runs:
                stable[run.app.label] = run.image if run.code == 0 else stable[run.app.label]
            crossed = [p for run in runs for p in audit(run, kube, stable[run.app.label], steps)]
            figures.update(crossed_or_lost=crossed, apps_per_stack=per_stack)
            for problem in crossed[:10]:
                print(f"  crossed or lost: {problem}", file=sys.stderr)
            # every release that ended otherwise than expected or that the audit flagged keeps its log's end
            # in --json (the stacks' directories are removed after the run); the first three are printed
            flagged = {problem.split(":", 1)[0] for problem in crossed}
            bad = [r for r in runs if r.code != expect or r.app.label in flagged]
            logs = {r.app.label: {"exit": r.code, "timed_out": r.timed_out,
                                  "tail": r.log.read_text()[-4000:] if r.log and r.log.exists() else ""} for r in bad}
            figures.update(unexpected_logs=logs)
            for i, run in enumerate(bad):
                tail = logs[run.app.label]["tail"]
                last = tail.strip().splitlines()[-1] if tail.strip() else ""
                print(f"  {run.app.label}: exit {run.code}{' (timed out)' if run.timed_out else ''}"
                      + (f"\n{tail[-1200:]}" if i < 3 else f": {last[:200]}"), file=sys.stderr)
            out[phase] = figures
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1, 5, 20], help="how many apps release at once, one run each (default: 1 5 20)")
    parser.add_argument("--apps-per-stack", type=int, default=1,
                        help="apps declared in one stack (canary:apps), released at once each by its own process (default 1)")
    parser.add_argument("--no-rollback", action="store_true", help="skip the faulty releases (the rollback phase)")
    parser.add_argument("--interval", default="10s", help="each app's analysis interval (default 10s)")
    parser.add_argument("--spread", type=float, default=0.0,
                        help="start the N releases of a phase spread evenly over this many seconds, as pipelines start "
                             "them, instead of in the same second (default 0: all at once)")
    parser.add_argument("--rps", type=int, default=100, help="each release's load test, requests per second (default 100)")
    parser.add_argument("--nice", type=int, default=0, choices=range(0, 20), metavar="N",
                        help="run each release N steps of CPU priority above the lab (its load test at the usual one): "
                             "a model of a runner beside the cluster, not on it (default 0; needs root)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds each phase may take before what runs is killed (default 1200)")
    parser.add_argument("--json", type=Path, help="write every figure and sample here")
    args = parser.parse_args()
    layout = Layout.for_project(ROOT)
    if not cluster.running(layout):
        print("the lab is not running: canary lab up", file=sys.stderr)
        return 2
    token = secrets.token_hex(2)
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for n in args.n:
        results[n] = measure(layout, n, args, token)
    print_results(results)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1, default=str))
    ok = all(f["as_expected"] == f["releases"] and not f["crossed_or_lost"] for phases in results.values() for f in phases.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
