"""Steering and looking at a release past a stack config whose app a release cannot be judged by any more (the
stack config declares the app a component of the program declares too): what needs only the release goes on,
what would start or go on with the refused config says which field. The CLI, with the stack's CLI and the
cluster stood in for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from canary import api, cli
from canary.core.records import Phase, ReleaseState
from canary.errors import InvalidSpec
from canary.state.cache import Cache
from canary.state.store import ReleaseStore
from tests.unit.fakes import FakeKube
from tests.unit.support import NoCliStack

#: valid to validate: only a release's judging of it (the component exports web's app too) refuses it
_DECLARED_TWICE = """config:
  canary:apps:
    web:
      app: {name: web, namespace: shop, image: web:1}
      gateway: {parentRefs: [{name: public}]}
      analysis: {stepWeight: 10, skipAnalysis: true}
"""


class _ComponentStack(NoCliStack):
    """The outputs of a program whose component declares web."""

    def outputs(self) -> dict[str, Any]:
        pin = {"template": {}, "hash": "s" * 16, "image": "web:2", "config_hashes": {}}
        return {"canary/web": {"app": {"name": "web", "namespace": "shop", "image": "web:2"}, "gateway": {"parentRefs": [{"name": "public"}]},
                               "namespace": "shop", "appFrom": "component", "stable": pin, "desired": pin, "urns": {}}}


@pytest.fixture
def project(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ReleaseStore:
    (tmp_path / "Pulumi.yaml").write_text("name: shop\nruntime: python\n")
    (tmp_path / "Pulumi.prod.yaml").write_text(_DECLARED_TWICE)
    kube = FakeKube()
    store = ReleaseStore(kube, "shop", "web", "prod", Cache(tmp_path / "state", "prod", "web"))  # type: ignore[arg-type]
    store.save(ReleaseState(release="r1", stack="prod", app="web", namespace="shop", phase=Phase.WAITING_PROMOTION))
    monkeypatch.setattr(api, "Stack", _ComponentStack)
    monkeypatch.setattr(api, "_kube", lambda config, env, project_dir: kube)
    monkeypatch.setattr(api.Workspace, "store", lambda self, app, namespace: store)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidSpec, match="apps.web.app: declares web's app, which a component of the program declares too"):
        api.open_stack("prod").facts("web")  # what a release would be judged by is refused
    return store


@pytest.mark.parametrize("args", [["status", "prod"], ["history", "prod"], ["abort", "prod"], ["promote", "prod"]], ids=lambda a: a[0])
def test_looking_and_steering_go_on_past_a_config_a_release_would_refuse(project: ReleaseStore, args: list[str]) -> None:
    # (they need the release only: its namespace from the stack's outputs, its state, its lease; the analysis never)
    done = CliRunner().invoke(cli.main, args)
    assert done.exit_code == 0 and done.exception is None, (done.output, done.exception)
    if args[0] in ("abort", "promote"):
        assert args[0] in project.requests("r1")


def test_resume_refuses_naming_the_field(project: ReleaseStore) -> None:
    done = CliRunner().invoke(cli.main, ["resume", "prod"])
    assert isinstance(done.exception, InvalidSpec), done.output  # the console script: exit 2, the message below
    assert [p.field for p in done.exception.problems] == ["apps.web.app", "apps.web.gateway"]
