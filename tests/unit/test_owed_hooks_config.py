"""Post-rollout hooks an ended release still owes, called by another process (the app's next release, or a resume):
they are that release's own, from its snapshot of the stack config, never the caller's. In-memory doubles."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from canary import api
from canary.adapters import stackfile
from canary.core import config as stackconfig
from canary.core.records import Phase, ReleaseState
from canary.core.spec import ReleaseSpec
from canary.errors import InvalidSpec, Problem, StackError
from canary.release.ports import AppFacts
from tests.conftest import base_values
from tests.unit.fakes import NEW, STABLE, URNS, FakeClock, FakeCluster, FakeConfig, FakeHooks, FakeLease, FakeStack, FakeStore, Metrics, make, spec


def _notifiers(*names: str) -> Any:
    def mutate(values: dict[str, Any]) -> None:
        values["analysis"]["webhooks"] = [{"name": name, "type": "post-rollout", "url": f"http://{name}/"} for name in names]

    return mutate


def _owing(snapshot: str = "config: {}\n") -> ReleaseState:
    """Release r0 of web, ended Failed before its process called its post-rollout hooks."""
    return ReleaseState(release="r0", stack="test", app="web", namespace="prod", phase=Phase.FAILED, stable=STABLE, canary=NEW,
                        snapshot=snapshot, post_rollout_owed=True, reason="request-error-rate failed 3 times")


def _called(store: FakeStore, release: str) -> list[str]:
    return [r.name for r in store.of("webhook") if r.release == release and r.hook_type == "post-rollout"]


# --- the machine: whose hooks


@pytest.mark.parametrize("now", [("notify-new",), ()], ids=["changed", "removed"])
def test_the_next_release_calls_the_owed_hooks_of_the_release_that_owes_them(now: tuple[str, ...]) -> None:
    # r0's end was told to the post-rollout hooks of the release that called them (or to none, once they were removed)
    then = spec(_notifiers("notify-old"))
    asked: list[str] = []

    def spec_of(state: ReleaseState) -> ReleaseSpec:
        asked.append(state.release)
        return then

    world = make(Metrics(0.0), _notifiers(*now), spec_of=spec_of)
    world.store.state = _owing()
    assert world.start().phase is Phase.SUCCEEDED
    assert asked == ["r0"]
    assert _called(world.store, "r0") == ["notify-old"]
    assert [name for name, kind in world.hooks.calls if kind == "post-rollout"] == ["notify-old", *now]  # r0's, then this release's own


def test_owed_hooks_whose_config_cannot_be_read_are_not_called_and_the_journal_says_why() -> None:
    def unreadable(state: ReleaseState) -> ReleaseSpec:
        raise InvalidSpec([Problem("analysis.bogus", "1", "is not a field")], f"release {state.release}'s snapshot")

    world = make(Metrics(0.0), _notifiers("notify-new"), spec_of=unreadable)
    store = world.store
    store.state = _owing()
    kept: list[ReleaseState] = []
    save = store.save
    store.save = lambda state: (kept.append(state), save(state))[-1]  # type: ignore[method-assign]
    assert world.start().phase is Phase.SUCCEEDED
    assert _called(store, "r0") == []  # none rather than the wrong ones
    said = [e.message for e in store.of("event") if e.release == "r0"]
    assert any("post-rollout webhooks not called" in m and "analysis.bogus" in m for m in said), said
    assert kept[0].release == "r0" and not kept[0].post_rollout_owed  # the debt cleared before this release replaced it
    assert [name for name, kind in world.hooks.calls if kind == "post-rollout"] == ["notify-new"]  # this release's own end


def test_a_resume_of_an_ended_release_calls_none_when_its_config_cannot_be_read() -> None:
    # the resume's own hooks are the current stack file's when the snapshot is refused: not the ended release's receivers
    def unreadable(state: ReleaseState) -> ReleaseSpec:
        raise InvalidSpec([Problem("snapshot", "nothing", "is not in the release's state")], "r0")

    world = make(Metrics(0.0), _notifiers("notify-new"), spec_of=unreadable)
    world.store.state = _owing()
    result = world.release.resume()
    assert result.phase is Phase.FAILED and world.hooks.calls == []
    assert world.store.state is not None and not world.store.state.post_rollout_owed  # no later resume could call them either
    assert any("post-rollout webhooks not called" in e.message for e in world.store.of("event"))


@pytest.mark.parametrize("by", ["resume", "release"])
def test_owed_hooks_not_called_are_told_on_the_console_with_what_to_do_and_to_no_receiver(by: str, capsys: pytest.CaptureFixture[str]) -> None:
    # the person running `canary resume` or the next `canary release` read that they were not called, but not what was left to
    # do; the current config's event hooks and alerts (any severity reaches them) are not the ended release's receivers
    from canary import cli

    def unreadable(state: ReleaseState) -> ReleaseSpec:
        raise InvalidSpec([Problem("analysis.bogus", "s3cret", "is not a field")], f"release {state.release}'s snapshot")

    def receivers(values: dict[str, Any]) -> None:
        values["analysis"]["webhooks"] = [{"name": "events-new", "type": "event", "url": "http://events-new/"}]
        values["analysis"]["alerts"] = [{"name": "chat", "type": "slack", "url": "https://chat.example.com/hook", "severity": "info"}]

    class Heard(FakeHooks):
        def __init__(self) -> None:
            super().__init__()
            self.bodies: list[str] = []

        def call(self, hook: Any, body: Any, cancel: Any = None) -> Any:
            self.bodies.append(json.dumps(body))
            return super().call(hook, body, cancel)

        def alert(self, alert: Any, body: Any) -> Any:
            self.bodies.append(json.dumps(body))
            return super().alert(alert, body)

    heard = Heard()
    world = make(Metrics(0.0), receivers, spec_of=unreadable, hooks=heard)
    world.store.state = _owing()
    if by == "resume":
        assert world.release.resume().phase is Phase.FAILED
    else:
        assert world.start().phase is Phase.SUCCEEDED
    told = [e for e in world.events if e.release == "r0" and "post-rollout webhooks not called" in e.message]
    assert len(told) == 1, [e.message for e in world.events]
    cli._print_event(told[0])
    line = capsys.readouterr().out
    assert "for release r0 (ended Failed)" in line and "analysis.bogus: is not a field" in line and "call them by hand" in line, line
    assert "s3cret" not in line
    assert len([e for e in world.store.of("event") if "post-rollout webhooks not called" in e.message]) == 1
    # told to people, never to this config's receivers: the event hook and the alert hear of this release alone
    assert not any("post-rollout webhooks not called" in body for body in heard.bodies), heard.bodies
    assert bool(heard.bodies) is (by == "release")


def test_owed_hooks_are_kept_when_the_snapshot_cannot_be_decrypted_for_now() -> None:
    # a transient failure of `pulumi config --show-secrets` (a KMS key's credentials expired, the backend down) is no proof
    # that the hooks can never be called: the debt was cleared, and no later resume called them
    def undecrypted(state: ReleaseState) -> ReleaseSpec:
        raise StackError("reading config of test: failed to decrypt: AccessDeniedException")

    world = make(Metrics(0.0), _notifiers("notify-new"), spec_of=undecrypted)
    world.store.state = _owing()
    with pytest.raises(StackError):
        world.release.resume()
    assert world.store.state is not None and world.store.state.post_rollout_owed
    assert world.hooks.calls == []


# --- the wiring: the snapshot read as resume reads it


class _Config(FakeConfig):
    """The release config files in memory; called (as the stack adapter's ``config``, the fake stack's name for
    these files), a snapshot's stack config read as canary reads a plain stack file."""

    def __init__(self, project_dir: Path) -> None:
        from canary.adapters import stack as stack_adapter

        super().__init__()
        self._real = stack_adapter.Stack.__new__(stack_adapter.Stack)
        self._real.project_dir, self._real.name, self._real._env, self._real._secrets = project_dir, "test", {}, ()

    def __call__(self, text: str | None = None) -> dict[str, Any]:
        return self._real.config(text)


def _stack_text(*names: str, **extra: Any) -> str:
    values = base_values()
    values["analysis"]["interval"] = "10s"
    values["analysis"]["webhooks"] = [{"name": name, "type": "post-rollout", "url": f"http://{name}/"} for name in names]
    values["analysis"]["metrics"] = [{"name": "request-error-rate", "thresholdRange": {"max": 1}}]
    return json.dumps({"config": {f"canary:{key}": value for key, value in {**values, **extra}.items()}})  # YAML reads JSON


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """``wired(now, owing)``: api.build's release of web with its stack file ``now``, and r0 ended owing its post-rollout
    hooks, its snapshot ``owing``. Returns the release, the store and the hooks' caller."""
    (tmp_path / "Pulumi.yaml").write_text("name: shop\nruntime: python\n")
    config, cluster, hooks, store = _Config(tmp_path), FakeCluster(), FakeHooks(), FakeStore()
    store.cache = SimpleNamespace(dir=tmp_path)  # type: ignore[attr-defined]
    monkeypatch.setattr(api, "Caller", lambda: hooks)
    monkeypatch.setattr(api, "Lease", lambda *args: FakeLease())
    monkeypatch.setattr(api, "ClusterReader", lambda kube: cluster)
    monkeypatch.setattr(api, "_provider_factory", lambda spec: lambda address: Metrics(0.0))
    monkeypatch.setattr(stackfile, "ReleaseConfigs", lambda *args, **kwargs: config)
    monkeypatch.setattr(api.Workspace, "store", lambda self, app, namespace: store)

    def build(now: str, owing: str) -> Any:
        path = tmp_path / "Pulumi.test.yaml"
        path.write_text(now)
        stack_spec = stackconfig.from_config(config(now), source="stack test")
        release_spec = stack_spec.release_spec("web")
        facts = AppFacts(spec=release_spec, urns=URNS, stable=STABLE, desired=NEW, stack="test")
        stack = FakeStack(cluster, config, facts)
        stack.stack_file = lambda: path  # type: ignore[attr-defined]
        dumped = {"mode": "json", "by_alias": True, "exclude_none": True}
        exported = {"app": release_spec.app.model_dump(**dumped), "gateway": release_spec.gateway.model_dump(**dumped), "appFrom": "stackConfig",
                    "stable": STABLE.model_dump(mode="json"), "desired": NEW.model_dump(mode="json")}
        ws = api.Workspace(tmp_path, "test", {}, stack, stack_spec, {"canary/web": exported}, kube=None)  # type: ignore[arg-type]
        store.state = _owing(owing)
        return api.build(ws, facts, clock=FakeClock()), store, hooks

    return build


@pytest.mark.parametrize("now", [("notify-new",), ()], ids=["changed", "removed"])
def test_a_release_built_by_the_api_calls_the_owed_hooks_of_the_snapshot_of_the_release_that_owes_them(wired: Any, now: tuple[str, ...]) -> None:
    release, store, hooks = wired(_stack_text(*now), owing=_stack_text("notify-old"))
    assert release.start(NEW, _stack_text(*now)).phase is Phase.SUCCEEDED
    assert _called(store, "r0") == ["notify-old"]
    assert [name for name, kind in hooks.calls if kind == "post-rollout"] == ["notify-old", *now]


@pytest.mark.parametrize("owing", ["", _stack_text("notify-old", bogus=1)], ids=["no-snapshot", "refused-snapshot"])
def test_a_release_built_by_the_api_calls_none_of_its_own_hooks_for_an_unreadable_snapshot(wired: Any, owing: str) -> None:
    release, store, hooks = wired(_stack_text("notify-new"), owing=owing)
    assert release.start(NEW, _stack_text("notify-new")).phase is Phase.SUCCEEDED
    assert _called(store, "r0") == []
    said = [e.message for e in store.of("event") if e.release == "r0" and "post-rollout webhooks not called" in e.message]
    assert said and ("its stack config was not kept" in said[0] if not owing else "bogus: is not a known field" in said[0]), said
    assert "got" not in said[0]  # the rules, not the values: a snapshot's may be secrets
    assert [name for name, kind in hooks.calls if kind == "post-rollout"] == ["notify-new"]

