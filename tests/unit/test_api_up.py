"""``canary up`` over a stack of apps: which apps its update pins, leaves alone or removes, and which it
releases afterwards (the stack, the cluster and Prometheus stood in for)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from canary import api
from canary.adapters import stackfile
from canary.core import config as stackconfig
from canary.core.records import Phase
from canary.core.routing import RouteState
from canary.errors import Cancelled, ClusterUnreachable, InvalidSpec, StackBusy, StackLocked
from canary.release.machine import ReleaseResult
from tests.conftest import base_values
from tests.unit.fakes import FakeKube

GATEWAY = {"parentRefs": [{"name": "public", "namespace": "gateway"}]}


def pin(image: str, hash_: str) -> dict[str, Any]:
    return {"template": {"spec": {"containers": [{"name": "x", "image": image}]}}, "hash": hash_, "image": image, "config_hashes": {}}


def exported(name: str, stable: str, desired: str) -> dict[str, Any]:
    """``canary/<name>`` as the component exports it."""
    return {"app": {"name": name, "namespace": "shop", "image": desired}, "gateway": GATEWAY, "namespace": "shop",
            "urns": {"stableDeployment": f"urn:{name}-stable", "canaryDeployment": f"urn:{name}-canary", "route": f"urn:{name}-route"},
            "stable": pin(stable, "s" * 16), "desired": pin(desired, "s" * 16 if stable == desired else "d" * 16), "copies": {}}


class Stack:
    """The stack: every ``up`` recorded (its release config and exclusions), its outputs afterwards ``after``."""

    def __init__(self, tmp: Path, after: dict[str, Any]) -> None:
        self.file = tmp / "Pulumi.prod.yaml"
        self.file.write_text("config:\n  canary:rollout: checked\n")
        self.after = after
        self.ups: list[dict[str, Any]] = []
        #: Pulumi's locks of dead processes of this host (a `canary up` killed in its update)
        self.dead_locks: list[dict[str, Any]] = []

    def stack_file(self) -> Path:
        return self.file

    def up(self, config_file: Path, exclude: Any = None, guard: Any = None, cancel: Any = None) -> Any:
        if cancel is not None and cancel.is_set():
            raise Cancelled("interrupted before the CLI started")
        if guard is not None:
            guard()
        self.ups.append({"release": stackfile.load(Path(config_file).read_text())["config"].get("canary:release"), "exclude": exclude})
        return SimpleNamespace(outputs=self.after, changes={"update": 1})

    def wait_unlocked(self, seconds: float) -> bool:
        return True

    def clear_dead_locks(self) -> list[dict[str, Any]]:
        cleared, self.dead_locks = self.dead_locks, []
        return cleared

    def outputs(self) -> dict[str, Any]:
        return self.after

    def export(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """``stack(values, before, after, states)``: the workspace ``up`` opens — its stack config ``values`` (top-level
    keys), its outputs ``before`` the update and ``after`` it, each app's last release state from ``states``."""
    monkeypatch.setenv("CANARY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(api, "Lease", lambda *args: SimpleNamespace(holder=lambda: None))

    def unreachable(*args: Any) -> Any:
        raise ClusterUnreachable("no cluster here")

    monkeypatch.setattr(api, "ClusterReader", lambda kube: SimpleNamespace(deployment=unreachable))
    monkeypatch.setattr(api, "_preflight", lambda ws, name: None)

    def make(values: dict[str, Any], before: dict[str, Any], after: dict[str, Any], states: dict[str, Any] | None = None) -> api.Workspace:
        found = states or {}
        monkeypatch.setattr(api.Workspace, "store", lambda self, app, namespace: SimpleNamespace(
            load=lambda: found.get(app), cache=SimpleNamespace(dir=tmp_path), namespace=namespace))
        spec = stackconfig.from_file_values({f"canary:{k}": v for k, v in values.items()}, "test")
        ws = api.Workspace(tmp_path, "prod", {}, Stack(tmp_path, after), spec, dict(before), kube=None)  # type: ignore[arg-type]
        monkeypatch.setattr(api, "open_stack", lambda *args, **kwargs: ws)
        return ws

    return make


def apps_config(*names: str) -> dict[str, Any]:
    """A stack config of ``canary:apps``, each app on image ``<name>:1``."""
    values = base_values()
    app, gateway, analysis = values.pop("app"), values.pop("gateway"), values.pop("analysis")
    values.pop("stableImage")
    values["apps"] = {name: {"app": {**app, "name": name, "namespace": "shop", "image": f"{name}:1"}, "gateway": gateway, "analysis": analysis}
                      for name in names}
    return values


# --- an app removed from the stack config --------------------------------------------------------


def test_an_app_removed_from_the_stack_config_is_removed_by_the_update(stack: Any) -> None:
    # `canary:apps.api` removed from the stack file: every `canary up` exited 2 ("outputs.canary/api: is not
    # what the component exports: 'api'") before applying anything, and only a plain `pulumi up` removed api
    before = {"canary/web": exported("web", "web:1", "web:1"), "canary/api": exported("api", "api:1", "api:1")}
    ws = stack(apps_config("web"), before, after={"canary/web": before["canary/web"]})
    outcome = api.up("prod")
    assert outcome.exit_code == 0
    [update] = ws.stack.ups
    assert sorted(update["release"]) == ["web"]  # api is not pinned: the update deletes it
    assert "api: removed" in outcome.message and "web: no workload change" in outcome.message


def test_an_app_removed_from_the_stack_config_mid_release_is_refused_before_anything_changes(stack: Any) -> None:
    before = {"canary/web": exported("web", "web:1", "web:1"), "canary/api": exported("api", "api:1", "api:2")}
    running = SimpleNamespace(phase=Phase.PROGRESSING, release="r7")
    ws = stack(apps_config("web"), before, after={"canary/web": before["canary/web"]}, states={"api": running})
    with pytest.raises(StackBusy, match=r"app api .*no longer in the stack config.*unfinished release r7.*canary resume prod --app api"):
        api.up("prod")
    assert ws.stack.ups == []


def test_an_app_the_program_still_declares_without_an_analysis_is_named_after_the_update(stack: Any) -> None:
    # a program's component still declares api, but the stack config has no analysis for it: nothing judges its releases
    before = {"canary/web": exported("web", "web:1", "web:1"), "canary/api": exported("api", "api:1", "api:1")}
    stack(apps_config("web"), before, after=before)
    outcome = api.up("prod")
    assert outcome.exit_code == 2
    assert "api: " in outcome.message and "canary:apps.api" in outcome.message


# --- apps a program's components declare, judged by a top-level analysis --------------------------


def analysis_only() -> dict[str, Any]:
    """``canary:analysis`` at the top level and no ``canary:app``: the program's components declare the apps."""
    values = base_values()
    for key in ("app", "gateway", "stableImage"):
        values.pop(key)
    return values


def test_the_first_deploy_of_a_component_app_judged_by_a_top_level_analysis_succeeds(stack: Any) -> None:
    # the update deployed web, then up exited 2: "--app: was not deployed by the update (got app)"
    ws = stack(analysis_only(), before={}, after={"canary/web": exported("web", "web:1", "web:1")})
    outcome = api.up("prod")
    assert (outcome.app, outcome.exit_code) == ("web", 0)
    assert "deployed for the first time" in outcome.message
    assert len(ws.stack.ups) == 1


def test_several_component_apps_judged_by_a_top_level_analysis_are_each_released(stack: Any) -> None:
    # the placeholder "app" stayed beside a and b: every `canary up` exited 2 after its update
    before = {"canary/a": exported("a", "a:1", "a:1"), "canary/b": exported("b", "b:1", "b:1")}
    after = {**before, "canary/c": exported("c", "c:1", "c:1")}  # c: the program's new component
    ws = stack(analysis_only(), before, after)
    assert ws.apps() == ["a", "b"]
    outcome = api.up("prod")
    assert outcome.exit_code == 0
    assert [(o.app, o.exit_code) for o in outcome.apps] == [("a", 0), ("b", 0), ("c", 0)]
    assert "c: deployed for the first time" in outcome.message
    assert sorted(ws.stack.ups[0]["release"]) == ["a", "b"]  # each pinned at rest


def test_a_component_app_the_program_no_longer_declares_is_not_released_after_the_update(stack: Any) -> None:
    before = {"canary/a": exported("a", "a:1", "a:1"), "canary/b": exported("b", "b:1", "b:1")}
    stack(analysis_only(), before, after={"canary/a": before["canary/a"]})
    outcome = api.up("prod")
    assert [(o.app, o.exit_code) for o in outcome.apps] == [("a", 0), ("b", 0)]
    assert "b: removed by the update" in outcome.message


def test_a_component_app_the_stack_config_declares_too_is_refused(stack: Any) -> None:
    # `import-flagger --merge` wrote canary:apps.web.app beside the program's component: the release judged the stack
    # config's app (one replica, a stale image) and gateway instead of the component's
    component = {**exported("web", "web:2", "web:2"), "appFrom": "component"}
    ws = stack(apps_config("web"), {"canary/web": component}, after={"canary/web": component})
    with pytest.raises(InvalidSpec) as caught:
        ws.facts("web")
    assert [p.field for p in caught.value.problems] == ["apps.web.app", "apps.web.gateway"]
    assert "which a component of the program declares too: keep one" in str(caught.value)
    # the stack config's app, declared by canary's own program (or by a version whose outputs do not say): the stack config's
    for own in ({**component, "appFrom": "stackConfig"}, exported("web", "web:2", "web:2")):
        facts = stack(apps_config("web"), {"canary/web": own}, after={"canary/web": own}).facts("web")
        assert facts is not None and facts.spec.app.image == "web:1"
    # a component's app judged by the stack config's analysis alone: the component's
    only = apps_config("web")
    del only["apps"]["web"]["app"], only["apps"]["web"]["gateway"]
    facts = stack(only, {"canary/web": component}, after={"canary/web": component}).facts("web")
    assert facts is not None and facts.spec.app.image == "web:2"


# --- the gateway's verdict on an update that changes how it reaches an app -------------------------------


@pytest.mark.parametrize("verdict", ["refused", "accepted", "unchanged", "undone"])
def test_an_update_that_changes_how_the_gateway_reaches_an_app_fails_when_the_gateway_refuses_its_route(
        stack: Any, monkeypatch: pytest.MonkeyPatch, verdict: str) -> None:
    # an appProtocol the gateway does not speak, applied by a plain `canary up`: the gateway refused the route's
    # backends (stable's too) and every request to the app failed, while the up said "no workload change", exit 0
    before = {"canary/web": exported("web", "web:1", "web:1")}
    changed = verdict != "unchanged"
    app = {**before["canary/web"]["app"], **({"appProtocol": "example.com/unspoken"} if changed else {})}
    ws = stack(apps_config("web"), before, after={"canary/web": {**before["canary/web"], "app": app}})
    reads: list[str] = []
    reason = "gateway public cannot resolve the route's backends: UnsupportedProtocol: unsupported application protocol example.com/unspoken"

    def route(spec: Any) -> RouteState:
        reads.append(spec.app.name)
        # the gateway's verdict comes a moment after the update; undone: the refusal of the update this one undoes
        # reads as current (the route's generation is the same) until the gateway looks again
        refused = (verdict == "refused" and len(reads) > 2) or (verdict == "undone" and len(reads) <= 2)
        return RouteState(stable_weight=100, canary_weight=0, generation=1, accepted=not refused, reason=reason if refused else "accepted",
                          refused=refused)

    def unreachable(*args: Any) -> Any:
        raise ClusterUnreachable("no cluster here")

    monkeypatch.setattr(api, "ClusterReader", lambda kube: SimpleNamespace(deployment=unreachable, route=route))
    monkeypatch.setattr(api, "ROUTE_SETTLE", 1.0)
    outcome = api.up("prod")
    assert len(ws.stack.ups) == 1
    if verdict == "refused":
        assert outcome.exit_code == 1, outcome.message
        assert "the gateway refuses the app's route after this update, which changed how it reaches the app (" + reason + ")" in outcome.message
        assert "stable's included" in outcome.message and "Undo that change" in outcome.message
    else:
        assert outcome.exit_code == 0 and outcome.message == "web: no workload change (1 resources changed)", outcome.message
        assert bool(reads) is changed  # watched only when the update changed how the gateway reaches the app


# --- a release that ends while the update waits ----------------------------------------------------


def test_an_app_whose_release_ended_while_up_waited_is_pinned_to_what_its_release_left(stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # api's release ran when `canary up --app web` looked, and ended before its update began: api was neither
    # pinned nor left alone, so its desired (maybe rolled back) workload went onto stable under `rollout: direct`
    before = {"canary/web": exported("web", "web:1", "web:1"), "canary/api": exported("api", "api:1", "api:2")}
    promoted = {**before, "canary/api": {**exported("api", "api:2", "api:2"), "stable": pin("api:2", "p" * 16)}}
    ws = stack({**apps_config("web", "api"), "rollout": "direct"}, before, after=promoted)
    reads = iter([{"api": SimpleNamespace(phase=Phase.PROGRESSING, release="r7")}])  # later reads: nothing runs
    monkeypatch.setattr(api, "_running", lambda ws, **kwargs: next(reads, {}))
    read: list[tuple[str, bool]] = []
    real_facts = api.Workspace.facts
    monkeypatch.setattr(api.Workspace, "facts", lambda self, name, spec=None: read.append((name, self is ws)) or real_facts(self, name, spec))
    api.up("prod", app="web")
    [update] = ws.stack.ups
    assert update["exclude"] is None
    # pinned at rest to the stable its release left (promoted), not to the stable read before it ended
    assert update["release"]["api"]["stable"]["image"] == "api:2" and update["release"]["api"]["stable"]["hash"] == "p" * 16
    assert update["release"]["api"]["route"] == {"weight": 0}
    # with the outputs read again, only the app whose release ended is read again (each read is a cluster read)
    assert [name for name, first in read if not first] == ["api"], read


# --- the cluster canary reads -------------------------------------------------------------------


@pytest.mark.parametrize("live_uid", ["uid-of-another-cluster", None], ids=["another-deployment", "none"])
def test_a_cluster_other_than_the_program_s_is_refused_before_anything_is_read_or_written(tmp_path: Path, live_uid: str | None) -> None:
    # the program deploys through a provider it builds (a cluster it creates): canary read whatever cluster
    # KUBECONFIG pointed at, and held its lease, wrote its state and judged its tracks there
    kube = FakeKube()
    kube.source, kube.server = "kubeconfig /home/sre/.kube/config context staging", "https://staging.example:6443"  # type: ignore[attr-defined]
    if live_uid is not None:
        kube.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web-stable", "namespace": "shop", "uid": live_uid},
                     "spec": {"replicas": 2, "template": {}}})
    spec = stackconfig.from_file_values({f"canary:{k}": v for k, v in apps_config("web").items()}, "test")
    outputs = {"canary/web": {**exported("web", "web:1", "web:1"), "uids": {"stableDeployment": "uid-made-by-the-update"}}}
    ws = api.Workspace(tmp_path, "prod", {}, Stack(tmp_path, outputs), spec, outputs, kube=kube)  # type: ignore[arg-type]
    before = dict(kube.objects)
    with pytest.raises(InvalidSpec) as info:
        ws.facts("web")
    problem = info.value.problems[0]
    assert problem.field == "kubeconfig" and "context staging, server https://staging.example:6443" in problem.value
    assert "is not the cluster stack prod deploys web to" in problem.rule and "uid-made-by-the-update" in problem.rule
    assert (f"a Deployment of uid {live_uid}" if live_uid else "no such Deployment") in problem.rule
    assert kube.objects == before and not kube.events  # nothing written

    kube.objects.clear()
    kube.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web-stable", "namespace": "shop", "uid": "uid-made-by-the-update"},
                 "spec": {"replicas": 2, "template": {}}})
    facts = ws.facts("web")
    assert facts is not None and facts.stable is not None and facts.stable.image == "web:1"


def test_config_this_version_refuses_is_told_not_raised_where_only_the_release_is_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `canary abort` and `status` validated the stack file first: a typo made mid-incident kept a person from both
    values = apps_config("web")
    values["apps"]["web"]["analysis"]["stepWieght"] = 10
    outputs = {"canary/web": exported("web", "web:1", "web:1")}

    class Opened:
        def __init__(self, *args: Any) -> None:
            pass

        def config(self) -> dict[str, Any]:
            return {f"canary:{k}": v for k, v in values.items()}

        def outputs(self) -> dict[str, Any]:
            return outputs

    monkeypatch.setattr(api, "Stack", Opened)
    monkeypatch.setattr(api, "_kube", lambda config, env, project_dir: FakeKube())
    (tmp_path / "Pulumi.yaml").write_text("name: shop\nruntime: python\n")
    with pytest.raises(InvalidSpec):
        api.open_stack("prod", tmp_path, {})
    told: list[InvalidSpec] = []
    ws = api.open_stack("prod", tmp_path, {}, on_invalid=told.append)
    assert [p.field for p in told[0].problems] == ["apps.web.analysis.stepWieght"]
    assert ws.app(None) == "web" and ws.namespace("web") == "shop"


def test_ctrl_c_while_up_waits_for_pulumi_s_lock_stops_before_anything_is_applied(stack: Any) -> None:
    # the signal was only noted: the wait went on (up to --lock-wait), the update was applied, and a release
    # begun and aborted at once, its workload refused by the next `canary up` without --retry
    import threading

    before = {"canary/web": exported("web", "web:1", "web:2")}
    ws = stack(apps_config("web"), before, after=before)
    interrupt = threading.Event()
    attempts: list[int] = []
    real_up = ws.stack.up

    def locked_up(config_file: Path, exclude: Any = None, guard: Any = None, cancel: Any = None) -> Any:
        attempts.append(1)
        if len(attempts) < 3:
            raise StackLocked("stack prod: the stack is locked by another update (pid 1)")
        return real_up(config_file, exclude, guard, cancel)

    def wait_unlocked(seconds: float) -> bool:
        interrupt.set()  # Ctrl-C as canary waits for the lock
        return False

    ws.stack.up, ws.stack.wait_unlocked = locked_up, wait_unlocked  # type: ignore[method-assign]
    built: list[Any] = []
    with pytest.raises(Cancelled, match="interrupted while waiting for Pulumi's lock"):
        api.up("prod", on_build=built.append, lock_wait=600, interrupt=interrupt)
    assert ws.stack.ups == [] and not built and len(attempts) == 1  # type: ignore[attr-defined]


def test_a_release_pins_the_stack_s_other_apps_at_rest_in_its_config(stack: Any) -> None:
    """A release's ups leave the other apps' resources alone but compute every app's outputs: api's ``stable`` output
    became its desired template (a change of api in the same commit), and api's next ``canary up`` pinned its stable
    to that and rolled it out unchecked. Pinned at rest to what api's stable runs, the outputs stay true."""
    before = {"canary/web": exported("web", "web:1", "web:2"), "canary/api": exported("api", "api:1", "api:2")}
    ws = stack(apps_config("web", "api"), before, before)
    ws.stack.name = "prod"  # (the Release's own)
    facts = ws.facts("web")
    assert facts is not None
    release = api.build(ws, facts)
    path = release.config.write("r1", ws.stack.stack_file().read_text(), {"release": "r1", "stable": pin("web:1", "s" * 16)})
    pins = stackfile.load(path.read_text())["config"]["canary:release"]
    assert set(pins) == {"web", "api"}
    assert pins["api"]["stable"]["image"] == "api:1" and pins["api"]["stable"]["hash"] == "s" * 16 and pins["api"]["route"] == {"weight": 0}


def test_a_release_s_start_reads_each_app_s_stable_deployment_once(stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which apps are releasing and what the idle ones run were two passes over the stack, each reading every app's
    stable Deployment: two API-server reads of each app at rest per release start, on a stack of many apps."""
    before = {f"canary/{name}": exported(name, f"{name}:1", f"{name}:2") for name in ("web", "api", "cart")}
    ws = stack(apps_config("web", "api", "cart"), before, before)
    ws.stack.name = "prod"  # (the Release's own)
    facts = ws.facts("web")
    assert facts is not None
    read: list[str] = []

    def deployment(spec: Any, track: Any) -> dict[str, Any]:
        read.append(spec.app.name)
        return {"uid": None, "exists": True, "hash": "s" * 16}

    monkeypatch.setattr(api, "ClusterReader", lambda kube: SimpleNamespace(deployment=deployment))
    release = api.build(ws, facts)
    assert sorted(read) == ["api", "cart", "web"]
    path = release.config.write("r1", ws.stack.stack_file().read_text(), {"release": "r1", "stable": pin("web:1", "s" * 16)})
    pins = stackfile.load(path.read_text())["config"]["canary:release"]
    assert {name: pins[name]["stable"]["image"] for name in ("api", "cart")} == {"api": "api:1", "cart": "cart:1"}


def test_a_signal_during_one_app_s_release_begins_no_other_app_s(stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`canary up` of two apps: SIGINT during a's release aborts it; b's release began anyway, was aborted at once, and
    its never-judged workload was refused by the next `canary up` as rolled back."""
    before = {"canary/a": exported("a", "a:1", "a:2"), "canary/b": exported("b", "b:1", "b:2")}
    stack(apps_config("a", "b"), before, after=before)
    interrupt = threading.Event()
    built: list[str] = []

    def build(ws: Any, facts: Any, on_event: Any = None, **options: Any) -> Any:
        built.append(facts.spec.app.name)

        def start(*args: Any) -> ReleaseResult:
            interrupt.set()  # the CLI's signal handler: the release running is aborted, and the interrupt set
            return ReleaseResult(f"r-{facts.spec.app.name}", Phase.ABORTED, 0, "aborted by signal SIGINT")

        return SimpleNamespace(start=start)

    monkeypatch.setattr(api, "build", build)
    outcome = api.up("prod", interrupt=interrupt)
    assert built == ["a"]
    assert "b: interrupted: no release was begun" in outcome.message and outcome.exit_code == 1, outcome.message


def test_a_lock_left_by_a_canary_up_killed_in_its_update_is_cleared_not_waited_for(stack: Any) -> None:
    # only a release cleared such a lock: every later `canary up` and `canary release` waited --lock-wait, then exit 3
    before = {"canary/web": exported("web", "web:1", "web:1")}
    ws = stack(apps_config("web"), before, after=before)
    ws.stack.dead_locks = [{"pid": 4711, "hostname": "this-host"}]
    real_up = ws.stack.up

    def locked_while_dead_locks(config_file: Path, exclude: Any = None, guard: Any = None, cancel: Any = None) -> Any:
        if ws.stack.dead_locks:
            raise StackLocked("pulumi up of prod: the stack is locked by another update (pid 4711 on this-host)")
        return real_up(config_file, exclude, guard, cancel)

    ws.stack.up = locked_while_dead_locks  # type: ignore[method-assign]
    ws.stack.wait_unlocked = lambda seconds: pytest.fail("waited for a lock nobody holds")  # type: ignore[method-assign]
    said: list[Any] = []
    outcome = api.up("prod", on_event=said.append, lock_wait=600)
    assert outcome.exit_code == 0 and len(ws.stack.ups) == 1  # type: ignore[attr-defined]
    assert any("cleared Pulumi's stale lock of pid 4711 on this-host" in e.message for e in said), said


def test_ctrl_c_during_the_stack_s_update_begins_no_release(stack: Any) -> None:

    before = {"canary/web": exported("web", "web:1", "web:2")}
    ws = stack(apps_config("web"), before, after=before)
    interrupt = threading.Event()
    real_up = ws.stack.up

    def up_then_signal(config_file: Path, exclude: Any = None, guard: Any = None, cancel: Any = None) -> Any:
        result = real_up(config_file, exclude, guard, cancel)
        interrupt.set()  # as the update ends
        return result

    ws.stack.up = up_then_signal  # type: ignore[method-assign]
    built: list[Any] = []
    with pytest.raises(Cancelled, match="no release was begun"):
        api.up("prod", on_build=built.append, lock_wait=600, interrupt=interrupt)
    assert len(ws.stack.ups) == 1 and not built  # type: ignore[attr-defined]
