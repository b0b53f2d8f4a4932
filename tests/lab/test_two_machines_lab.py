"""Two machines, one cluster: a release run on one machine, steered, resumed and refused from another.

Machines A and B are two clones of the project — the program and the stack files as a repository holds
them, nothing else — in directories of their own, so each has its own local cache (``.canary/`` under
its clone: ``$CANARY_STATE_DIR`` is unset for both). They share the lab's cluster and Pulumi backend,
as two CI runners, or a runner and a laptop, would. Each runs the CLI in a UTS namespace of its own
(``unshare --uts``) under a host name of its own, so the release's Lease (and Pulumi's lock) names that
host and neither machine can judge the other's processes: a holder on the other machine counts as
alive until its lease expires, exactly as across real machines.

What is proven here, with the times the tests measure printed as ``FIGURE`` lines (docs/RELIABILITY.md):

- A is killed mid-analysis (SIGKILL of its whole process group) and its directory deleted; ``canary
  resume`` from B is refused while A's lease runs, then takes it over and finishes the release: promoted,
  or rolled back for a faulty version; the journal runs on without a gap from A's records to B's.
- ``canary abort`` from B stops A's running release within about a second; ``canary promote`` from B
  promotes A's release waiting at a ``confirm-promotion`` gate; a ``canary release`` from B while A runs
  is refused (exit 3) naming A's holder, and changes nothing.
- A lease left by a machine that is gone is taken over by a release from B once expired, never before.
- The Kubernetes Events of a failing release tell its story to ``kubectl get events``.
- A release journaled by the file-based version (0.1) is shown by ``status`` and ``history``; an
  unfinished one is refused by ``resume`` with what to do instead.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from canary.adapters.stack import read_checkpoint
from canary.core import naming
from canary.core.records import ReleaseState
from canary.state.cache import Cache
from canary.state.store import ReleaseStore
from tests.lab.helpers import Background, LabStack, RouteWatcher, SaysNo, assert_stable_state, kill_group, pin, running, wait_until
from tests.unit.support import serve

LEGACY = Path(__file__).parent / "legacy"  # written by canary 0.1 on the lab (see legacy/README.md)


# --- machines -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Machine:
    """One clone of the project, running the CLI under a host name of its own."""

    host: str
    project: Path
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.host,
                sys.executable, "-m", "canary", *args, "--project-dir", str(self.project)]

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout, env=self.env)

    def start(self, *args: str) -> subprocess.Popen[str]:
        """In a session of its own, so that its whole process group can be killed, as a machine dies."""
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env, start_new_session=True)

    def cache_journal(self, stack: str, app: str = "web") -> list[dict[str, Any]]:
        path = self.project / ".canary" / stack / app / "journal.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@dataclasses.dataclass
class Pair:
    a: Machine
    b: Machine
    #: the lab stack seen from B's clone (spec, route, state, history): A's clone may be gone
    stack: LabStack

    @property
    def name(self) -> str:
        return self.stack.name


def clone(source: Path, dest: Path) -> Path:
    """The project as a repository holds it: the program and the stack files, no ``.canary/``."""
    (dest / "stacks").mkdir(parents=True)
    for file in ("Pulumi.yaml", "__main__.py"):
        shutil.copyfile(source / file, dest / file)
    for file in (source / "stacks").glob("Pulumi.*.yaml"):
        shutil.copyfile(file, dest / "stacks" / file.name)
    return dest


@pytest.fixture
def machines(lab_stack: LabStack, tmp_path: Path) -> Iterator[Pair]:
    """A is the clone the stack was deployed from; B a second clone, elsewhere."""
    env = {k: v for k, v in lab_stack.env.items() if k != "CANARY_STATE_DIR"}
    a = Machine("machine-a", lab_stack.project, env)
    b = Machine("machine-b", clone(lab_stack.project, tmp_path / "machine-b" / "project"), env)
    assert a.project.resolve() != b.project.resolve()
    yield Pair(a, b, dataclasses.replace(lab_stack, project=b.project))
    if not a.project.exists():  # the stack is destroyed from A's clone: check it out again
        clone(b.project, a.project)


# --- reading the cluster --------------------------------------------------------------------------


def _observer(pair: Pair, tmp_path: Path) -> ReleaseStore:
    """The release store read by the test (its cache apart from both machines')."""
    return ReleaseStore(pair.stack.kube, pair.stack.namespace, "web", pair.name, Cache(tmp_path / "observer", pair.name, "web"))


def _lease(pair: Pair) -> dict[str, Any] | None:
    return pair.stack.kube.get("coordination.k8s.io/v1", "Lease", naming.lease("web"), pair.stack.namespace)


def _when(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _expiry(lease: dict[str, Any]) -> float:
    spec = lease["spec"]
    return _when(spec["renewTime"]) + float(spec["leaseDurationSeconds"])


def _checkpoint(pair: Pair) -> dict[str, Any] | None:
    return read_checkpoint(pair.stack.layout.backend_dir, "canary", pair.name)


def _figure(test: str, **figures: float) -> None:
    print(f"FIGURE {test}: " + ", ".join(f"{k}={v:.2f}s" for k, v in figures.items()), flush=True)


def _kill_when(pair: Pair, store: ReleaseStore, process: subprocess.Popen[str], ready: Callable[[ReleaseState], bool],
               timeout: float = 300) -> ReleaseState:
    """SIGKILL A's whole process group as soon as ``ready(state)`` holds outside any ``up`` (mid-analysis)."""
    def reached() -> ReleaseState | None:
        state = store.load()
        return state if state is not None and state.shifting_to is None and ready(state) and not pair.stack.pulumi_locks() else None

    with running(process):
        wait_until(reached, "the kill point", timeout, process, every=0.05)
        kill_group(process)
    state = store.load()
    assert state is not None
    return state


def _refused_then(machine: Machine, *args: str, expiry: float, bound: float = 120) -> tuple[subprocess.CompletedProcess[str], list[str], float]:
    """Run ``canary ARGS`` until it is not refused as busy (exit 3); every refusal must have begun before
    ``expiry`` (the lease's end). Returns the accepted run, the refusals, and when that run began."""
    deadline = time.monotonic() + bound
    refusals = []
    while True:
        began = time.time()
        done = machine.cli(*args)
        if done.returncode != 3:
            return done, refusals, began
        assert began < expiry + 0.5, f"refused after the holder's lease expired ({began - expiry:.1f}s after): {done.stderr}"
        refusals.append(done.stderr)
        assert time.monotonic() < deadline, f"still refused after {bound}s: {done.stderr}"
        time.sleep(1.0)


# --- 1. killed on A, resumed from B ---------------------------------------------------------------


@pytest.mark.parametrize(("image", "end", "code", "stable"), [("demo:v2", "Succeeded", 0, "demo:v2"), ("demo:v2-faulty", "Failed", 1, "demo:v1")])
def test_a_release_killed_with_its_machine_is_finished_by_resume_from_the_other_machine(
        machines: Pair, tmp_path: Path, image: str, end: str, code: int, stable: str) -> None:
    pair, store = machines, _observer(machines, tmp_path)
    with RouteWatcher(pair.stack) as watcher:
        process = pair.a.start("release", pair.name, "--image", image)
        if end == "Succeeded":
            killed = _kill_when(pair, store, process, lambda s: s.phase.value == "Progressing" and s.weight == 20)
        else:  # after its first failed check: B must go on counting from there
            killed = _kill_when(pair, store, process, lambda s: s.phase.value == "Progressing" and s.failed_in_row == 1)
        killed_at = time.time()
        shutil.rmtree(pair.a.project)  # the machine is gone, with its working directory and its cache
        before = store.records(killed.release)
        lease = _lease(pair)
        assert lease is not None and lease["spec"]["holderIdentity"].startswith("machine-a/"), lease
        expiry = _expiry(lease)

        status = pair.b.cli("status", pair.name)
        assert status.returncode == 0, status.stderr
        assert f"release {killed.release}" in status.stdout and killed.phase.value in status.stdout and "on machine-a" in status.stdout, status.stdout

        resumed, refusals, began = _refused_then(pair.b, "resume", pair.name, expiry=expiry)
    assert resumed.returncode == code, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # While A's lease ran, B was told who holds the release and when the lease runs out.
    assert all("machine-a" in r and killed.release in r for r in refusals), refusals
    assert "taken over from release" in resumed.stdout and "on machine-a" in resumed.stdout, resumed.stdout[-3000:]
    assert not pair.stack.pulumi_locks()

    assert_stable_state(pair.stack, stable)
    final = pair.stack.state()
    assert final is not None and final.release == killed.release and final.phase.value == end, final
    if end == "Failed":
        assert "error-rate" in final.reason and "3 checks in a row" in final.reason, final.reason
        assert [w for w in watcher.canary_weights if w] and max(watcher.canary_weights) == 10, watcher.seen
    else:
        climbed = [w for w in watcher.canary_weights if w]
        assert climbed[-3:] == [30, 40, 50] and 20 in climbed, watcher.seen

    # One journal, no gap: B's history is A's records as the cluster held them at the kill, then B's.
    history = pair.b.cli("history", pair.name, "--release", killed.release, "--json")
    assert history.returncode == 0, history.stderr
    records = json.loads(history.stdout)
    assert records[:len(before)] == [json.loads(json.dumps(_dump(r), default=str)) for r in before]
    after = records[len(before):]
    assert after and after[0]["type"] == "event" and after[0]["message"].startswith(f"resuming release in phase {killed.phase.value}"), after[:2]
    times = [_when(r["time"]) for r in records]
    assert times == sorted(times)
    # What B wrote is exactly the rest, and its cache is its own (A's went with A's directory).
    mine = pair.b.cache_journal(pair.name)
    assert [(r["time"], r["type"]) for r in mine] == [(r["time"], r["type"]) for r in after]
    assert not pair.a.project.exists()

    verified = next(r for r in reversed(records) if r["type"] == "verified" and r["what"] == "end state")
    _figure(f"resume-from-other-machine[{image}]", lease_left_at_kill=expiry - killed_at, kill_to_resume_accepted=began - killed_at,
            resume_to_verified=_when(verified["time"]) - _when(after[0]["time"]), kill_to_verified=_when(verified["time"]) - killed_at)


def _dump(record: Any) -> dict[str, Any]:
    from canary.core import records

    return records.dump(record)


# --- 2 and 3. steering A's release from B ---------------------------------------------------------


def _interval(seconds: int) -> Callable[[dict[str, Any]], None]:
    def mutate(config: dict[str, Any]) -> None:
        config["canary:analysis"]["interval"] = f"{seconds}s"

    return mutate


class _RequestWatch(Background):
    """When each request first shows in the requests ConfigMap, and the time its writer stamped on it."""

    def __init__(self, pair: Pair) -> None:
        super().__init__()
        self.pair = pair
        self.seen: dict[str, float] = {}

    def _run(self) -> None:
        while not self._stop.is_set():
            obj = self.pair.stack.kube.get("v1", "ConfigMap", naming.requests_configmap("web"), self.pair.stack.namespace)
            for kind, text in ((obj or {}).get("data") or {}).items():
                if kind not in self.seen:
                    self.seen[kind] = _when(json.loads(text)["time"])
            self._stop.wait(0.02)


# A 15 s interval: after each shift the release waits (and ticks) for ~13 s, so B's request lands in the
# analysis rather than in a shift's `up` (an abort interrupts an `up` too, but the step's `up` then ends first).
@pytest.mark.parametrize("lab_stack", [_interval(15)], indirect=True)
def test_abort_from_the_other_machine_rolls_back_the_running_release_within_a_second(machines: Pair, tmp_path: Path) -> None:
    pair, store = machines, _observer(machines, tmp_path)
    with RouteWatcher(pair.stack) as watcher, running(pair.a.start("release", pair.name, "--image", "demo:v2")) as process:
        wait_until(lambda: (s := store.load()) is not None and s.weight == 10 and s.shifting_to is None, "weight 10 live", 240, process, every=0.1)
        with _RequestWatch(pair) as requests:
            aborted = pair.b.cli("abort", pair.name)
            assert aborted.returncode == 0, aborted.stderr
            out, err = process.communicate(timeout=120)
    assert process.returncode == 1, out[-3000:] + err[-3000:]
    assert_stable_state(pair.stack, "demo:v1")
    state = pair.stack.state()
    assert state is not None and state.phase.value == "Aborted" and "aborted by canary abort" in state.reason, state
    assert max(watcher.canary_weights) == 10, watcher.seen

    records = pair.stack.records(state.release)
    taken = next(r for r in records if r.type == "request" and r.request == "abort")
    rolling = next(r for r in records if r.type == "state" and r.message.startswith("rolling back: aborted by"))
    on_stable = next(r for r in records if r.type == "state" and r.message.startswith("traffic is back on stable"))
    verified = next(r for r in reversed(records) if r.type == "verified" and r.what == "end state")
    asked = requests.seen["abort"]
    assert _when(taken.time) - asked <= 1.5, f"A took B's abort {_when(taken.time) - asked:.2f}s after it was written"
    _figure("abort-from-other-machine", request_to_taken=_when(taken.time) - asked, request_to_rollback=_when(rolling.time) - asked,
            request_to_route_on_stable=_when(on_stable.time) - asked, request_to_verified=_when(verified.time) - asked)


@pytest.fixture
def gate() -> Iterator[str]:
    with serve(SaysNo) as url:
        yield f"{url}/approve"


GATE = "http://gate.invalid/approve"  # the gate server's address is known at run time only


def _confirm_promotion(config: dict[str, Any]) -> None:
    config["canary:analysis"]["webhooks"].append({"name": "approval", "type": "confirm-promotion", "url": GATE, "timeout": "2s"})


@pytest.mark.parametrize("lab_stack", [_confirm_promotion], indirect=True)
def test_from_the_other_machine_a_release_is_refused_while_one_runs_and_promote_promotes_it(machines: Pair, tmp_path: Path, gate: str) -> None:
    pair, store = machines, _observer(machines, tmp_path)
    for project in (pair.a.project, pair.b.project):  # the gate's address, in both clones' stack files
        path = project / "stacks" / f"Pulumi.{pair.name}.yaml"
        path.write_text(path.read_text().replace(GATE, gate))
    with running(pair.a.start("release", pair.name, "--image", "demo:v2")) as process:
        wait_until(lambda: (s := store.load()) is not None and s.phase.value == "WaitingPromotion", "A waiting for promotion", 300, process, every=0.2)
        waiting = store.load()
        assert waiting is not None and waiting.weight == 50
        calls = len(SaysNo.calls)
        wait_until(lambda: len(SaysNo.calls) > calls, "the gate asked again while waiting", 60, process, every=0.2)

        # 3. A second release from B is refused, naming A's holder, and changes nothing.
        stack_file = pair.b.project / "stacks" / f"Pulumi.{pair.name}.yaml"
        before = (stack_file.read_text(), _checkpoint(pair), _lease(pair))
        assert before[2] is not None
        refused = pair.b.cli("release", pair.name, "--image", "demo:v3")
        assert refused.returncode == 3, refused.stdout[-2000:] + refused.stderr[-2000:]
        assert waiting.release in refused.stderr and "on machine-a" in refused.stderr and "canary resume" not in refused.stderr, refused.stderr
        assert stack_file.read_text() == before[0], "the refused release changed B's stack file"
        assert _checkpoint(pair) == before[1], "the refused release ran an update"
        lease = _lease(pair)
        assert lease is not None and lease["spec"]["holderIdentity"] == before[2]["spec"]["holderIdentity"]
        assert lease["spec"]["acquireTime"] == before[2]["spec"]["acquireTime"]
        now = store.load()
        assert now is not None and (now.release, now.phase, now.weight) == (waiting.release, waiting.phase, waiting.weight)
        assert not [r for r in store.records() if "demo:v3" in json.dumps(_dump(r))]
        assert process.poll() is None

        # 2. B's promote: A promotes.
        with _RequestWatch(pair) as requests:
            promoted = pair.b.cli("promote", pair.name)
            assert promoted.returncode == 0, promoted.stderr
            out, err = process.communicate(timeout=180)
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    assert_stable_state(pair.stack, "demo:v2")
    records = pair.stack.records(waiting.release)
    approved = next(r for r in records if r.type == "state" and r.message.startswith("promotion approved by canary promote"))
    verified = next(r for r in reversed(records) if r.type == "verified" and r.what == "end state")
    asked = requests.seen["promote"]
    assert _when(approved.time) - asked <= 1.5, f"A took B's promote {_when(approved.time) - asked:.2f}s after it was written"
    final = pair.stack.state()
    assert final is not None and final.phase.value == "Succeeded"
    _figure("promote-from-other-machine", request_to_promoting=_when(approved.time) - asked, request_to_verified=_when(verified.time) - asked)


# --- 4. a lease left by a machine that is gone ----------------------------------------------------


def _hold(pair: Pair, host: str, pid: int, release: str, renewed: datetime, duration: int = 15) -> None:
    """The app's Lease as a release on ``host`` leaves it when its machine dies (or its last write, the
    lease's release, never reached the API server): held, renewed at ``renewed``."""
    stamp = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    name, namespace = naming.lease("web"), pair.stack.namespace
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace, "labels": {naming.APP_LABEL: "web"},
                         "annotations": {"canary.dev/holder": json.dumps({"host": host, "pid": pid, "release": release, "acquired": stamp})}},
            "spec": {"holderIdentity": f"{host}/{pid}/{release}", "leaseDurationSeconds": duration, "acquireTime": stamp, "renewTime": stamp,
                     "leaseTransitions": 0}}
    existing = pair.stack.kube.get("coordination.k8s.io/v1", "Lease", name, namespace)
    if existing is None:
        pair.stack.kube.create(body)
    else:
        body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        pair.stack.kube.replace(body)


def test_a_lease_left_by_a_machine_that_is_gone_is_taken_over_by_a_release_once_expired_never_before(machines: Pair, tmp_path: Path) -> None:
    pair, store = machines, _observer(machines, tmp_path)
    stack_file = pair.b.project / "stacks" / f"Pulumi.{pair.name}.yaml"
    original = stack_file.read_text()
    _hold(pair, "runner-gone", 4242, "20261201t000000-4242", datetime.now(UTC))
    lease = _lease(pair)
    assert lease is not None
    expiry, checkpoint = _expiry(lease), _checkpoint(pair)

    refused = pair.b.cli("release", pair.name, "--image", "demo:v2")
    assert refused.returncode == 3, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "pid 4242 on runner-gone" in refused.stderr and "expires" in refused.stderr, refused.stderr
    assert stack_file.read_text() == original and _checkpoint(pair) == checkpoint, "the refused release changed something"
    assert _lease(pair) == lease and store.load() is None and not store.records()

    time.sleep(max(0.0, expiry - time.time() - 4))  # the next try reads the lease about when it runs out
    done, refusals, began = _refused_then(pair.b, "release", pair.name, "--image", "demo:v2", expiry=expiry)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_stable_state(pair.stack, "demo:v2")
    state = pair.stack.state()
    assert state is not None and state.phase.value == "Succeeded"
    records = store.records(state.release)
    took = next(r for r in records if r.type == "event" and "took over the lease" in r.message)
    assert "pid 4242 on runner-gone" in took.message and "expired" in took.message, took.message
    assert _when(records[0].time) >= expiry, f"the lease was taken {expiry - _when(records[0].time):.2f}s before it expired"
    final = _lease(pair)
    assert final is not None and not final["spec"].get("holderIdentity") and final["spec"]["leaseTransitions"] == 1
    _figure("expired-lease-of-another-host", expiry_to_first_record=_when(records[0].time) - expiry)
    print(f"FIGURE expired-lease-of-another-host: refused {len(refusals) + 1} times, every refusal begun before the lease expired")


# --- 5. the Events a person sees ------------------------------------------------------------------


def test_the_kubernetes_events_of_a_failing_release_tell_its_decisions(machines: Pair, tmp_path: Path) -> None:
    pair = machines
    seen_running: dict[str, float] = {}

    def events() -> list[dict[str, Any]]:
        items = pair.stack.kube.list("v1", "Event", pair.stack.namespace)  # as `kubectl get events -n NAMESPACE` lists them
        return [e for e in items if (e.get("source") or {}).get("component") == "canary"]

    with running(pair.b.start("release", pair.name, "--image", "demo:v2-faulty")) as process:
        while process.poll() is None:
            for event in events():
                seen_running.setdefault(event["reason"], time.time())
            time.sleep(0.5)
        out, err = process.communicate()
    assert process.returncode == 1, out[-3000:] + err[-3000:]
    found = sorted(events(), key=lambda e: e.get("eventTime") or e.get("firstTimestamp") or "")
    story = [(e["reason"], e["type"], e["message"]) for e in found]
    assert all(e["involvedObject"]["kind"] == "Deployment" and e["involvedObject"]["name"] == "web-canary" for e in found), story
    assert all(m.startswith(f"[{pair.name}] ") for _, _, m in story), story

    def first(reason: str, pattern: str) -> int:
        at = next((i for i, (r, _, m) in enumerate(story) if r == reason and re.search(pattern, m)), None)
        assert at is not None, f"no {reason} event matching {pattern!r} in:\n" + "\n".join(map(str, story))
        return at

    step = first("Progressing", r"weight 10 is live in the route and accepted by the gateway")
    check = first("CheckFailed", r"error-rate \d+(\.\d+)? > max 5")
    rolling = first("RollingBack", r"^\[[^]]+\] rolling back: error-rate \d+(\.\d+)? > max 5 .*3 checks in a row at weight 10")
    end = first("RolledBack", r"rolled back: error-rate .* stable demo:v1 verified")
    assert step < check < rolling < end, story
    assert story[check][1] == story[rolling][1] == story[end][1] == "Warning" and story[step][1] == "Normal", story
    assert "CheckFailed" in seen_running and "RollingBack" in seen_running, "the decisions showed only after the release ended"
    print("\n".join(f"EVENT {r:<14} {t:<8} {m}" for r, t, m in story))


# --- 6. the journal of the file-based version -----------------------------------------------------


def test_a_release_journaled_by_the_file_based_version_is_shown_and_an_unfinished_one_is_not_resumed(machines: Pair) -> None:
    pair = machines
    old = pair.b.project / ".canary" / pair.name  # canary 0.1 kept one directory per stack
    old.mkdir(parents=True)
    for file in ("journal.jsonl", "release.json"):
        text = (LEGACY / file).read_text().replace("@STACK@", pair.name).replace("@PROJECT@", str(pair.b.project))
        (old / file).write_text(text)
    failed, unfinished = "20261202T080307-12846", "20261202T080337-13434"
    pin(pair.stack, "demo:v2", 20, 1)  # where that release left the cluster: its canary at weight 20
    checkpoint = _checkpoint(pair)

    status = pair.b.cli("status", pair.name)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == f"release {unfinished} of {pair.name}/?: Progressing — from the file journal of an earlier version", status.stdout
    assert lines[1].strip() == "canary demo:v2 over stable demo:v1 at weight 20", status.stdout
    assert re.search(r"pass error-rate: 0 .*max 1", status.stdout) and "(running)" not in status.stdout, status.stdout
    as_json = json.loads(pair.b.cli("status", pair.name, "--json").stdout)
    assert as_json["legacy"] is True and as_json["phase"] == "Progressing" and as_json["weight"] == 20

    history = pair.b.cli("history", pair.name)
    assert history.returncode == 0, history.stderr
    shown = history.stdout.splitlines()
    assert len(shown) == 44 and sum(failed in s for s in shown) == 28 and sum(unfinished in s for s in shown) == 16, history.stdout
    assert any("tick rollback: error-rate 20.44 > max 1 for 3 checks in a row at weight 10" in s for s in shown), history.stdout
    assert any("rolled back: error-rate 20.44 > max 1" in s for s in shown) and any("weight 20 is live" in s for s in shown), history.stdout
    one = json.loads(pair.b.cli("history", pair.name, "--release", failed, "--json").stdout)
    assert len(one) == 28 and {r["release"] for r in one} == {failed} and all(r["v"] == 2 for r in one)
    assert [r["type"] for r in one].count("tick") == 3 and one[-1]["phase"] == "Failed"

    resumed = pair.b.cli("resume", pair.name)
    assert resumed.returncode == 2, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert unfinished in resumed.stderr and "canary 0.1" in resumed.stderr and "cannot be resumed" in resumed.stderr, resumed.stderr
    assert "Progressing" in resumed.stderr and f"canary up {pair.name}" in resumed.stderr, resumed.stderr
    assert _checkpoint(pair) == checkpoint and _lease(pair) is None
    # what it says to do puts every request back on stable
    assert pair.stack.route().weights == (80, 20)
    mended = pair.b.cli("up", pair.name)
    assert mended.returncode == 0, mended.stdout[-2000:] + mended.stderr[-2000:]
    assert_stable_state(pair.stack, "demo:v1")

