"""A resume past a stack config refused since its release began: the release goes on with its snapshot, and the stack's
other apps at rest stay pinned to the stable they run, whatever the stack config now says of them. A new release still
refuses that config, naming the field. The API, with the stack's CLI, the cluster and the release machine's own run
stood in for."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from canary import api
from canary.core import naming
from canary.core.naming import Track
from canary.core.records import Phase, ReleaseState, TrackPin
from canary.errors import ClusterUnreachable, InvalidSpec
from canary.state.cache import Cache
from canary.state.store import ReleaseStore
from tests.unit.fakes import FakeKube

#: the stack file as the release began: both apps' analyses, their app and gateway the program's components'
_SNAPSHOT = """config:
  canary:apps:
    web:
      analysis: {stepWeight: 10, skipAnalysis: true}
    api:
      analysis: {stepWeight: 10, skipAnalysis: true}
"""

_APP = """
      app: {name: NAME, namespace: shop, image: NAME:9}
      gateway: {parentRefs: [{name: public}]}"""

#: the stack file now: an app declared in it too (refused beside its component's), or a field this version refuses
_NOW = {
    "own app declared twice": _SNAPSHOT.replace("\n    api:", _APP.replace("NAME", "web") + "\n    api:"),
    "other app declared twice": _SNAPSHOT + _APP.replace("NAME", "api").lstrip("\n") + "\n",
    "stack file refused": _SNAPSHOT.replace("stepWeight: 10, skipAnalysis: true}\n    api", "stepWieght: 10, skipAnalysis: true}\n    api"),
}


def _pin(image: str) -> dict[str, Any]:
    return {"template": {"spec": {"containers": [{"name": "main", "image": image}]}}, "hash": image.replace(":", "") * 4, "image": image,
            "config_hashes": {}}


def _at_rest_pin(image: str) -> dict[str, Any]:
    # a pin of outputs from before pins kept their protocol: the one its Services were given, the outputs' app's (none)
    return {**_pin(image), "appProtocol": ""}


class _Stack:
    """The Stack adapter with its CLI calls answered: the stack file read as canary reads it, the outputs of a program
    whose components declare web (stable web:1, desired web:2, in a release) and api (stable api:1, desired api:5)."""

    def __init__(self, project_dir: Path, name: str, env: Any = None, **_: Any) -> None:
        from canary.adapters import stack as stack_adapter

        self.name = name
        self._real = stack_adapter.Stack.__new__(stack_adapter.Stack)
        self._real.project_dir, self._real.name, self._real._env, self._real._secrets = project_dir.resolve(), name, dict(env or {}), ()
        self._real._stack = SimpleNamespace(get_all_config=lambda: {})

    def config(self, text: str | None = None) -> dict[str, Any]:
        return self._real.config(text)

    def stack_file(self) -> Path:
        return self._real.project_dir / f"Pulumi.{self._real.name}.yaml"

    def outputs(self) -> dict[str, Any]:
        def exported(app: str, stable: str, desired: str) -> dict[str, Any]:
            return {"app": {"name": app, "namespace": "shop", "image": desired}, "gateway": {"parentRefs": [{"name": "public"}]},
                    "namespace": "shop", "appFrom": "component", "stable": _pin(stable), "desired": _pin(desired), "urns": {},
                    "imageConfig": f"shop:{app}Image"}

        return {"canary/web": exported("web", "web:1", "web:2"), "canary/api": exported("api", "api:1", "api:5")}


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, ReleaseStore]:
    (tmp_path / "Pulumi.yaml").write_text("name: shop\nruntime: python\n")
    kube = FakeKube()
    stores = {app: ReleaseStore(kube, "shop", app, "prod", Cache(tmp_path / "state", "prod", app)) for app in ("web", "api")}  # type: ignore[arg-type]
    monkeypatch.setattr(api, "Stack", _Stack)
    monkeypatch.setattr(api, "_kube", lambda config, env, project_dir: kube)
    monkeypatch.setattr(api.Workspace, "store", lambda self, app, namespace: stores[app])
    monkeypatch.chdir(tmp_path)
    return stores


@pytest.mark.parametrize("phase", [Phase.ROLLING_BACK, Phase.PROGRESSING])
@pytest.mark.parametrize("now", list(_NOW))
def test_a_resume_goes_on_with_its_snapshot_and_keeps_the_other_apps_pinned_at_rest(stack: dict[str, ReleaseStore], monkeypatch: pytest.MonkeyPatch,
                                                                                 now: str, phase: Phase) -> None:
    """`Workspace.facts` judged every app of the stack by the stack config as it is now: its app declared there beside
    its component's, web's own or api's, refused the resume before anything ran, traffic left on a failing canary.
    A stack file refused outright let it run, with api unpinned: the resume's `up`s, from the snapshot, rewrote api's
    outputs to name its desired api:5 as the stable it runs."""
    Path("Pulumi.prod.yaml").write_text(_NOW[now])
    stack["web"].save(ReleaseState(release="r1", stack="prod", app="web", namespace="shop", phase=phase, weight=20, snapshot=_SNAPSHOT))
    resumed: list[tuple[api.Release, tuple[str, ...]]] = []

    def resume(self: api.Release, notes: tuple[str, ...] = ()) -> Any:
        resumed.append((self, tuple(notes)))

    monkeypatch.setattr(api.Release, "resume", resume)
    api.resume("prod", app="web")
    [(release, notes)] = resumed
    assert release.spec.app.image == "web:2" and release.facts.stable is not None and release.facts.stable.image == "web:1"
    assert release.config.at_rest == {"api": {"release": "", "stable": _at_rest_pin("api:1"), "route": {"weight": 0}}}  # type: ignore[attr-defined]
    said = [n for n in notes if n.startswith("app api cannot be judged by the stack config now")]
    if now == "own app declared twice":
        assert said == [], notes
    else:
        # (this cluster holds no api-stable: said, as the resume's `up` makes it anew)
        assert len(said) == 1 and said[0].endswith("pin it at rest to the stable its stack outputs name (api:1), though the cluster canary "
                                                   "reads has no Deployment shop/api-stable"), notes
    if now == "other app declared twice":
        assert "apps.api.app: declares api's app, which a component of the program declares too" in said[0], said


def _stable_runs(store: ReleaseStore, image: str) -> None:
    """The app's stable Deployment in the cluster, its pod template carrying ``image``'s pin's hash."""
    template = {"metadata": {"annotations": {naming.HASH_ANNOTATION: _pin(image)["hash"]}}, "spec": _pin(image)["template"]["spec"]}
    store.kube.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": naming.deployment(store.app, Track.STABLE), "namespace": "shop"},
                       "spec": {"replicas": 2, "template": template}})


@pytest.mark.parametrize(("cluster", "pinned", "note"), [
    ("runs its last release's stable", "api:0", "pin it at rest to the stable its Deployment runs (api:0, its last release's), not the one its stack outputs name (api:1)"),
    ("runs a template nothing names", "api:1", "pin it at rest to the stable its stack outputs name (api:1), though its stable Deployment runs another "
                                               f"template (hash {_pin('api:7')['hash']}) that neither they nor its last release name"),
    ("does not answer", "api:1", "pin it at rest to the stable its stack outputs name (api:1)"),
])
@pytest.mark.parametrize("now", list(_NOW))
def test_an_app_the_config_cannot_judge_is_pinned_to_what_its_stable_deployment_runs(stack: dict[str, ReleaseStore], monkeypatch: pytest.MonkeyPatch,
                                                                                    now: str, cluster: str, pinned: str, note: str) -> None:
    """api's outputs name api:1 as its stable, but a targeted `up` of web recomputed them from api's own snapshot: its
    stable Deployment runs api:0, the stable of its last release. An app the stack config judges is pinned to what the
    cluster runs; one it could not judge was pinned to its outputs' api:1 unchecked, and the resume's `up` wrote that
    pin into the stack's outputs again (its whole-stack fallback applied it). The cluster not answering, or running a
    template neither the outputs nor the release store name, leaves the outputs' pin, said."""
    Path("Pulumi.prod.yaml").write_text(_NOW[now])
    stack["web"].save(ReleaseState(release="r2", stack="prod", app="web", namespace="shop", phase=Phase.ROLLING_BACK, weight=20, snapshot=_SNAPSHOT))
    stack["api"].save(ReleaseState(release="r1", stack="prod", app="api", namespace="shop", phase=Phase.FAILED, weight=0,
                                   stable=TrackPin.model_validate(_pin("api:0")), canary=TrackPin.model_validate(_pin("api:5"))))
    if cluster == "does not answer":
        def unreachable(*args: Any) -> Any:
            raise ClusterUnreachable("the Kubernetes API server did not answer")

        monkeypatch.setattr(api.ClusterReader, "deployment", unreachable)
        monkeypatch.setattr(api.ClusterReader, "stable_identity", unreachable, raising=False)
    _stable_runs(stack["api"], "api:0" if cluster == "runs its last release's stable" else "api:7")
    resumed: list[tuple[api.Release, tuple[str, ...]]] = []
    monkeypatch.setattr(api.Release, "resume", lambda self, notes=(): resumed.append((self, tuple(notes))))
    api.resume("prod", app="web")
    [(release, notes)] = resumed
    # the last release's stable as its state recorded it (before pins kept their protocol), the outputs' as read from them
    expected = _pin(pinned) if pinned == "api:0" else _at_rest_pin(pinned)
    assert release.config.at_rest == {"api": {"release": "", "stable": expected, "route": {"weight": 0}}}  # type: ignore[attr-defined]
    said = [n for n in notes if n.startswith("app api cannot be judged by the stack config now")]
    if now == "own app declared twice":
        assert said == [], notes  # judged: its facts asked the cluster already
    else:
        assert len(said) == 1 and said[0].endswith(note), notes


@pytest.mark.parametrize(("cluster", "note"), [
    ("has no such Deployment", "pin it at rest to the stable its stack outputs name (api:1), though the cluster canary reads has no "
                               "Deployment shop/api-stable"),
    ("is not the stack's", "pin it at rest to the stable its stack outputs name (api:1); the cluster canary reads is not the one the stack "
                           "deployed it to (its stable Deployment is of uid uid-3, the stack's last update made uid uid-elsewhere), so what it runs was not asked"),
])
def test_an_app_the_config_cannot_judge_is_not_pinned_from_a_cluster_that_does_not_hold_its_stable(
        stack: dict[str, ReleaseStore], monkeypatch: pytest.MonkeyPatch, cluster: str, note: str) -> None:
    """The cluster canary reads may not be the one the stack deployed api to (its provider the program's own, another
    cluster's): its stable Deployment there, of another uid, runs api:0 as its last release's stable did, and api was
    pinned to that, the note saying both that this cluster is not api's and that api runs what it holds. A cluster
    without api's stable Deployment was said as one that does not answer, and the resume's `up` made it anew unsaid."""
    Path("Pulumi.prod.yaml").write_text(_NOW["other app declared twice"])
    stack["web"].save(ReleaseState(release="r2", stack="prod", app="web", namespace="shop", phase=Phase.ROLLING_BACK, weight=20, snapshot=_SNAPSHOT))
    stack["api"].save(ReleaseState(release="r1", stack="prod", app="api", namespace="shop", phase=Phase.FAILED, weight=0,
                                   stable=TrackPin.model_validate(_pin("api:0")), canary=TrackPin.model_validate(_pin("api:5"))))
    if cluster == "is not the stack's":
        _stable_runs(stack["api"], "api:0")
        real_uid = api.Workspace.stable_uid
        monkeypatch.setattr(api.Workspace, "stable_uid", lambda self, app: "uid-elsewhere" if app == "api" else real_uid(self, app))
    resumed: list[tuple[api.Release, tuple[str, ...]]] = []
    monkeypatch.setattr(api.Release, "resume", lambda self, notes=(): resumed.append((self, tuple(notes))))
    api.resume("prod", app="web")
    [(release, notes)] = resumed
    assert release.config.at_rest == {"api": {"release": "", "stable": _at_rest_pin("api:1"), "route": {"weight": 0}}}  # type: ignore[attr-defined]
    said = [n for n in notes if n.startswith("app api cannot be judged by the stack config now")]
    assert len(said) == 1 and said[0].endswith(note), notes


@pytest.mark.parametrize(("now", "field"), [("own app declared twice", "apps.web.app"), ("other app declared twice", "apps.api.app")])
def test_a_new_release_still_refuses_that_config_naming_the_field(stack: dict[str, ReleaseStore], now: str, field: str) -> None:
    Path("Pulumi.prod.yaml").write_text(_NOW[now])
    with pytest.raises(InvalidSpec) as refused:
        api.release("prod", "web:3", app="web")
    assert field in [p.field for p in refused.value.problems], refused.value
    # the image it would release is not left in the stack file
    assert yaml.safe_load(Path("Pulumi.prod.yaml").read_text()) == yaml.safe_load(_NOW[now])
