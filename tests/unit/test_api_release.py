"""``canary release``'s handling of the stack file around its ``up`` (the workspace and the ``up`` stood in for)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from canary import api
from canary.errors import Cancelled, ClusterUnreachable, LeaseLost, StackBusy, StackError
from tests.unit.support import NoCliStack


def _one_deployed_app(monkeypatch: pytest.MonkeyPatch, image: str) -> None:
    """The workspace ``release`` opens stood in for: one app, web, deployed and running ``image``, nothing busy."""
    ws = SimpleNamespace(app=lambda app: "web", facts=lambda name: SimpleNamespace(stable=SimpleNamespace(image=image)),
                         store=lambda name, namespace: SimpleNamespace(load=lambda: None), namespace=lambda name: "shop", outputs={})
    monkeypatch.setattr(api, "open_stack", lambda *args, **kwargs: ws)
    monkeypatch.setattr(api, "_refuse_if_busy", lambda *args: None)
    monkeypatch.setattr(api, "_preflight", lambda *args: None)


@pytest.fixture
def images(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The images ``release`` set in the stack file, in order; the workspace is one deployed app on demo:v1."""
    _one_deployed_app(monkeypatch, "demo:v1")
    written: list[str] = []

    def set_image(stack: str, image: str, **kwargs: Any) -> tuple[str, str]:
        written.append(image)
        return "web", "demo:v1"

    monkeypatch.setattr(api, "set_image", set_image)
    return written


@pytest.mark.parametrize(("raised", "restored"), [
    (StackBusy("app web is busy"), True), (LeaseLost("the lease of web was taken"), False),
    # no release began: Ctrl-C while waiting for Pulumi's lock, the cluster not answering, the stack's update failing
    (Cancelled("interrupted while waiting for Pulumi's lock: nothing was applied"), True),
    (ClusterUnreachable("reading the release state of web: connection refused"), True),
    (StackError("pulumi up of prod failed"), True),
], ids=["busy", "lease-lost", "interrupted", "cluster-unreachable", "update-failed"])
def test_the_stack_file_goes_back_only_when_nothing_was_applied(monkeypatch: pytest.MonkeyPatch, images: list[str], raised: Exception,
                                                               restored: bool) -> None:
    # a LeaseLost (a StackBusy) came after traffic had moved, another process carrying the release on:
    # the stack file was put back to the old image as if the release had been refused
    def up(*args: Any, **kwargs: Any) -> Any:
        raise raised

    monkeypatch.setattr(api, "up", up)
    with pytest.raises(type(raised)):
        api.release("prod", "demo:v2")
    assert images == (["demo:v2", "demo:v1"] if restored else ["demo:v2"])


@pytest.mark.parametrize(("app", "again"), [(None, "canary release prod --image demo:v2"), ("web", "canary release prod --app web --image demo:v2")])
def test_interrupted_after_the_update_it_says_the_image_was_restored_and_to_release_again(monkeypatch: pytest.MonkeyPatch, images: list[str],
                                                                                         app: str | None, again: str) -> None:
    # up's advice was passed on as it was, "`canary up prod` releases the workload change": with the image put back, that up finds none
    def up(*args: Any, **kwargs: Any) -> Any:
        raise Cancelled("interrupted: the stack's update applied 2 changes; no release was begun (`canary up prod` releases the workload change)")

    monkeypatch.setattr(api, "up", up)
    with pytest.raises(Cancelled) as raised:
        api.release("prod", "demo:v2", app=app)
    assert images == ["demo:v2", "demo:v1"]
    assert str(raised.value) == (f"interrupted: the stack's update applied 2 changes; no release was begun; the image in the stack file was "
                                 f"restored: run `{again}` again to release it")


def test_up_of_several_apps_names_every_app_s_refusal_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # `canary up` of a stack of several apps stopped at the first app's refusal: one rerun per app to find them all
    from canary.errors import InvalidSpec, Problem

    ws = SimpleNamespace(apps=lambda: ["api", "web", "worker"], removed=lambda: [], app=lambda app: app, name="prod", outputs={},
                         spec=SimpleNamespace(names_no_app=lambda: False))
    monkeypatch.setattr(api, "open_stack", lambda *args, **kwargs: ws)
    monkeypatch.setattr(api, "_running", lambda ws: {})
    busy = {"api", "worker"}

    def refuse_if_busy(ws: Any, name: str, state: Any) -> None:
        if name in busy:
            raise StackBusy(f"app {name} is busy")

    def preflight(ws: Any, name: str) -> None:
        if name != "web":
            raise InvalidSpec([Problem("analysis.metrics[0].name", "q", "Prometheus rejected it")], "stack prod")

    monkeypatch.setattr(api, "_refuse_if_busy", refuse_if_busy)
    monkeypatch.setattr(api, "_preflight", preflight)
    with pytest.raises(StackBusy, match="app api is busy; app worker is busy"):
        api.up("prod")
    busy.clear()
    with pytest.raises(InvalidSpec) as info:
        api.up("prod")
    assert [p.field for p in info.value.problems] == ["analysis.metrics[0].name (app api)", "analysis.metrics[0].name (app worker)"]


def test_up_of_several_apps_releases_every_app_whatever_one_app_s_release_raised() -> None:
    # one app's refusal at its release's start (another machine's release of it began meanwhile) ended the
    # whole loop: the apps after it were left with their change applied by the update and no release
    from canary.errors import ClusterUnreachable

    released: list[str] = []

    def release(name: str) -> api.UpOutcome:
        released.append(name)
        if name == "api":
            raise StackBusy("app api is held by release r9 on host b")
        if name == "web":
            raise ClusterUnreachable("the Kubernetes API server did not answer")
        return api.UpOutcome(name, {}, None, f"{name}: no workload change", 0)

    outcomes = api._each_app(["api", "web", "worker"], release, {"update": 3})
    assert released == ["api", "web", "worker"]
    assert [(o.app, o.exit_code) for o in outcomes] == [("api", 3), ("web", 1), ("worker", 0)]
    assert outcomes[0].message == "api: app api is held by release r9 on host b"
    with pytest.raises(StackBusy):  # one app alone: its error is the command's
        api._each_app(["api"], release, {})


def test_a_refused_release_of_an_app_with_no_image_key_leaves_the_stack_file_as_it_was(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # an app in the template form has no app.image: a release refused as busy left `image: web:2.0.0` in the
    # stack file, so the next `canary up` released what the refusal said it had not
    (tmp_path / "Pulumi.yaml").write_text("name: shop\nruntime: python\n")
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text("config:\n  # the shop\n  canary:app:\n    name: web\n    namespace: shop\n    template:\n      spec:\n        containers:\n"
                    "          - name: web\n            image: web:1.0.0\n  canary:gateway:\n    parentRefs:\n      - name: public\n"
                    "  canary:analysis:\n    interval: 1m\n    threshold: 3\n    stepWeight: 10\n    maxWeight: 50\n"
                    "    skipAnalysis: true\n")  # (no metric: the release's analysis is not what this test is about)
    before = path.read_text()
    _one_deployed_app(monkeypatch, "web:1.0.0")
    written: list[str] = []

    def up(*args: Any, **kwargs: Any) -> Any:
        written.append(path.read_text())
        raise StackBusy("app web is busy")

    monkeypatch.setattr(api, "up", up)
    with pytest.raises(StackBusy):
        api.release("prod", "web:2.0.0", project_dir=tmp_path)
    assert "image: web:2.0.0" in written[0]  # what the up was asked to release
    assert path.read_text() == before


@pytest.mark.parametrize("broken", ["config:\n  canary:analysis: {stepWeight: 10\n", "config:\n  canary:rollout: checked\n confg: 1\n"],
                         ids=["unclosed-brace", "mis-indented-key"])
def test_abort_goes_on_past_a_stack_file_whose_yaml_is_broken_in_the_stack_s_cluster_only(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, broken: str) -> None:
    # a value this version refuses was warned about and the abort went on; a YAML typo (made during the incident)
    # exited 2 and no abort was written. The cluster is then the environment's: proven the stack's by its Deployment
    (tmp_path / "Pulumi.yaml").write_text("name: shop\nruntime: python\n")
    (tmp_path / "Pulumi.prod.yaml").write_text(broken)
    deployments = {"uid": "uid-1"}
    kube = SimpleNamespace(source="KUBECONFIG", server="https://127.0.0.1:6443",
                           get=lambda api_version, kind, name, namespace: {"metadata": {"uid": deployments["uid"]}})
    monkeypatch.setattr(api, "Stack", NoCliStack)
    monkeypatch.setattr(api, "_kube", lambda config, env, project_dir: kube)
    asked: list[str] = []
    store = SimpleNamespace(load=lambda: SimpleNamespace(phase=api.Phase.PROGRESSING, release="r1"),
                            request=lambda kind, release, **kw: asked.append(kind))
    monkeypatch.setattr(api.Workspace, "store", lambda self, app, namespace: store)
    warnings: list[str] = []
    api.abort("prod", project_dir=tmp_path, on_warning=warnings.append)
    assert asked == ["abort"] and warnings and "must be valid YAML" in warnings[0], warnings
    deployments["uid"] = "another"  # KUBECONFIG points at another cluster: nothing written there
    with pytest.raises(api.InvalidSpec, match="cannot be told to be stack prod's cluster"):
        api.abort("prod", project_dir=tmp_path, on_warning=warnings.append)
    assert asked == ["abort"]


@pytest.mark.parametrize("phase", [api.Phase.PROMOTED_UNVERIFIED, api.Phase.FINALISING, api.Phase.PROMOTING, api.Phase.ROLLING_BACK])
@pytest.mark.parametrize("call", ["pause", "proceed"])
def test_pause_and_continue_are_refused_where_no_step_holds(monkeypatch: pytest.MonkeyPatch, phase: Any, call: str) -> None:
    # accepted with exit 0 ("it holds its step") where no loop runs or no step is taken: abort and promote refuse there
    asked: list[str] = []
    store = SimpleNamespace(load=lambda: SimpleNamespace(phase=phase, release="r1"), request=lambda kind, release, **kw: asked.append(kind))
    monkeypatch.setattr(api, "_store", lambda *a, **k: (None, "web", store))
    with pytest.raises(api.InvalidSpec, match=f"is {phase}"):
        getattr(api, call)("prod")
    assert not asked


_BOTH_NAMES = """config:
  canary:stableImage: reg/web:1
  canary:app:
    name: web
    image: reg/web:1
    namespace: shop
  canary:gateway:
    parentRefs:
      - name: public
  canary:analysis:
    stepWeight: 10
    skipAnalysis: true
"""


@pytest.mark.parametrize("refused", [False, True], ids=["released", "refused"])
def test_release_moves_both_image_names_and_a_refusal_puts_them_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, refused: bool) -> None:
    # a file with both names (valid when equal): release wrote app.image only, the up refused the file it had made
    # invalid ("stableImage is the earlier name of app.image and differs from it"), and the file stayed so
    from canary.adapters import stackfile
    from canary.errors import InvalidSpec, Problem

    (tmp_path / "Pulumi.yaml").write_text("name: shop\nruntime: python\n")
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text(_BOTH_NAMES)
    ws = SimpleNamespace(app=lambda app: "web", facts=lambda name: SimpleNamespace(stable=SimpleNamespace(image="reg/web:1")),
                         store=lambda name, namespace: SimpleNamespace(load=lambda: None), namespace=lambda name: "shop", outputs={},
                         removed=lambda: [])
    monkeypatch.setattr(api, "open_stack", lambda *args, **kwargs: ws)
    monkeypatch.setattr(api, "_refuse_if_busy", lambda *args: None)
    monkeypatch.setattr(api, "_preflight", lambda *args: None)
    seen: list[Any] = []

    def up(*args: Any, **kwargs: Any) -> Any:
        spec = stackfile.load_stack_file(path)  # valid: both names moved
        seen.append((spec.stable_image, spec.app.image if spec.app else None))
        if refused:
            raise InvalidSpec([Problem("analysis.metrics[0].name", "q", "Prometheus rejected it")], "stack prod")
        return "done"

    monkeypatch.setattr(api, "up", up)
    if refused:
        with pytest.raises(InvalidSpec):
            api.release("prod", "reg/web:2", project_dir=tmp_path)
        assert stackfile.load_stack_file(path).app.image == "reg/web:1" and "reg/web:2" not in path.read_text()  # type: ignore[union-attr]
    else:
        assert api.release("prod", "reg/web:2", project_dir=tmp_path) == "done"
    assert seen == [("reg/web:2", "reg/web:2")]


@pytest.mark.parametrize("phase", ["RollingBack", "Promoting"])
def test_an_abort_the_release_would_ignore_is_refused_saying_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, phase: str) -> None:
    # an abort of a release already rolling back after a failure was written, ignored by the release and left in its requests
    (tmp_path / "Pulumi.yaml").write_text("name: shop\nruntime: python\n")
    (tmp_path / "Pulumi.prod.yaml").write_text("config: {}\n")
    kube = SimpleNamespace(source="KUBECONFIG", server="https://127.0.0.1:6443", get=lambda api_version, kind, name, namespace: {"metadata": {"uid": "uid-1"}})
    monkeypatch.setattr(api, "Stack", NoCliStack)
    monkeypatch.setattr(api, "_kube", lambda config, env, project_dir: kube)
    asked: list[str] = []
    state = SimpleNamespace(phase=api.Phase(phase), release="r1", reason="error-rate 9 > max 1 for 3 checks in a row", rollback_to=api.Phase.FAILED)
    store = SimpleNamespace(load=lambda: state, request=lambda kind, release, **kw: asked.append(kind))
    monkeypatch.setattr(api.Workspace, "store", lambda self, app, namespace: store)
    with pytest.raises(api.InvalidSpec) as refused:
        api.abort("prod", project_dir=tmp_path, on_warning=lambda text: None)
    assert asked == []
    said = str(refused.value)
    assert ("already rolling back to stable (error-rate 9 > max 1 for 3 checks in a row): it ends Failed" in said) if phase == "RollingBack" \
        else "a promotion is not interrupted" in said, said
