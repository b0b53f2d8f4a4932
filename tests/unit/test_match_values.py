"""A/B match values (a tester's token, a secret in the stack file): in the gateway's route, never in what canary records or prints.

The release state's ``route`` and the journal's ``up`` records name a match's headers and query parameters and their
match types, the values ``routing.NOT_RECORDED``; whatever applies or compares a route (a shift, a resume's re-apply,
verification) takes the values from the spec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from canary import api
from canary.adapters import stackfile
from canary.cli import _describe
from canary.core import records
from canary.core.records import Phase
from canary.core.routing import Match, RouteShape
from tests.unit.fakes import Metrics, World, make

SECRET = "tester-S3CRET-8f2a91c4"
NOT_RECORDED = "<not recorded>"  # routing.NOT_RECORDED: what records hold in place of a value
TESTERS = [{"headers": {"X-Tester": {"exact": SECRET}}, "queryParams": {"beta": {"regex": "^on-" + SECRET}}}]
WHOLE = Match(headers=(("X-Tester", "Exact", SECRET),), query_params=(("beta", "RegularExpression", "^on-" + SECRET),))


def _with_testers(strategy: str, iterations: int = 2, match: list[dict[str, Any]] | None = None) -> Any:
    def change(v: dict[str, Any]) -> None:
        for key in ("stepWeight", "maxWeight", "stepWeights"):
            v["analysis"].pop(key, None)
        v["analysis"].update(strategy=strategy, iterations=iterations, match=match or TESTERS)
    return change


def _saving(world: World) -> list[dict[str, Any]]:
    """Every state the release saves, as the store writes it."""
    saved: list[dict[str, Any]] = []
    save = world.store.save

    def keep(state: records.ReleaseState) -> None:
        saved.append(records.dump(state))
        save(state)

    world.store.save = keep  # type: ignore[method-assign]
    return saved


@pytest.mark.parametrize("strategy", ["ab", "blueGreen"])
def test_a_release_with_a_secret_match_records_and_prints_no_value_and_the_route_still_gets_it(strategy: str) -> None:
    world = make(Metrics(0.0), _with_testers(strategy))
    saved = _saving(world)
    result = world.start()
    assert result.phase is Phase.SUCCEEDED, result.reason
    assert saved and world.store.journal
    for data in saved:
        assert SECRET not in json.dumps(data), data.get("route")
    for record in world.store.journal:
        assert SECRET not in json.dumps(records.dump(record)) and SECRET not in _describe(record), record.type
    assert not [e for e in world.events if SECRET in str(e)]
    state = world.store.state
    assert state is not None
    assert SECRET not in json.dumps(api.Status(state, running=False, holder=None).to_json())
    # the records name what is matched on
    ups = [r for r in world.store.journal if r.type == "up" and r.pinned["route"].get("matches")]
    assert ups and ups[0].pinned["route"]["matches"] == [{"headers": [["X-Tester", "Exact", NOT_RECORDED]],
                                                          "queryParams": [["beta", "RegularExpression", NOT_RECORDED]]}]
    # the gateway's route held the values: the program read them from the release config files, each removed after its up
    assert (WHOLE,) in [shape.matches for kind, shape in world.cluster.log if kind == "route"]
    assert any(SECRET in json.dumps(f["pins"]) for f in world.config.files.values())
    assert world.config.discarded == list(world.config.files)


def test_a_state_and_an_up_record_of_an_earlier_version_load_as_saved_and_print_no_value() -> None:
    route = {"weight": 0, "matches": [{"headers": [["X-Tester", "Exact", SECRET]], "queryParams": []}]}
    state = records.parse_state({"v": 2, "release": "r1", "stack": "test", "app": "web", "phase": "Progressing", "step": 1, "route": route})
    up = records.parse({"v": 2, "time": "2026-12-01T00:00:00.000Z", "stack": "test", "app": "web", "release": "r1", "phase": "Progressing",
                        "type": "up", "targets": ["route"], "pinned": {"stable": "a", "route": route}})
    assert state.route == route and isinstance(up, records.Up) and up.pinned["route"] == route  # loaded, not rewritten
    assert SECRET not in json.dumps(records.dump(state)) and SECRET not in json.dumps(records.dump(up)) and SECRET not in _describe(up)
    assert records.dump(state)["route"]["matches"] == [{"headers": [["X-Tester", "Exact", NOT_RECORDED]], "queryParams": []}]


def _killed_at_iteration(world: World, iteration: int) -> None:
    """The release killed as it judges ``iteration`` (its route applied and recorded)."""

    class Killed(BaseException):
        pass

    def on_sleep(now: float) -> None:
        state = world.store.state
        if state is not None and state.phase is Phase.PROGRESSING and state.step == iteration and not state.advance:
            raise Killed

    world.clock.on_sleep = on_sleep
    with pytest.raises(Killed):
        world.start()
    world.clock.on_sleep = None


def _verified_shapes(world: World) -> list[RouteShape]:
    shapes: list[RouteShape] = []
    verify = world.release.verify.route

    def route(spec: Any, shape: RouteShape, *args: Any, **kwargs: Any) -> None:
        shapes.append(shape)
        verify(spec, shape, *args, **kwargs)

    world.release.verify.route = route  # type: ignore[method-assign]
    return shapes


def test_a_resumed_ab_release_re_applies_and_verifies_the_spec_s_matches_with_their_values() -> None:
    world = make(Metrics(0.0), _with_testers("ab", iterations=3))
    _killed_at_iteration(world, 2)
    assert world.store.state is not None and SECRET not in json.dumps(records.dump(world.store.state))
    world.cluster.set_shape(RouteShape())  # the route lost its rule meanwhile: the resume puts it back, values and all
    resumed = world.rebuild()
    shapes = _verified_shapes(resumed)
    ups = len(world.stack.ups)
    result = resumed.release.resume()
    assert result.phase is Phase.SUCCEEDED, result.reason
    reapplied = world.stack.ups[ups]
    assert reapplied["refresh"] and RouteShape.from_json(reapplied["pins"]["route"]).matches == (WHOLE,)
    assert shapes and shapes[0].matches == (WHOLE,)
    assert not [s for s in shapes for m in s.matches if NOT_RECORDED in str(m)]
    assert not [e for e in resumed.events if "the analysis's matches are applied" in str(e)]


def test_a_resume_whose_analysis_matches_on_other_names_applies_them_and_warns() -> None:
    world = make(Metrics(0.0), _with_testers("ab", iterations=3))
    _killed_at_iteration(world, 2)
    other = [{"headers": {"X-Insider": {"exact": SECRET}}}]
    resumed = make(world.metrics, _with_testers("ab", iterations=3, match=other), stack=world.stack, cluster=world.cluster, store=world.store,
                   config=world.config, hooks=world.hooks, clock=world.clock)
    ups = len(world.stack.ups)
    result = resumed.release.resume()
    assert result.phase is Phase.SUCCEEDED, result.reason
    assert RouteShape.from_json(world.stack.ups[ups]["pins"]["route"]).matches == (Match(headers=(("X-Insider", "Exact", SECRET),)),)
    warned = [e.message for e in resumed.events if "the analysis's matches are applied" in e.message]
    assert warned and "header X-Tester (Exact)" in warned[0] and "header X-Insider (Exact)" in warned[0] and SECRET not in warned[0]


def test_a_release_config_file_is_private_and_removed_once_its_up_is_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stackfile, "_MATCH_VALUES", {})  # this process's, for this test alone
    stack = tmp_path / "Pulumi.dev.yaml"
    stack.write_text("config:\n  canary:app: {name: web, image: demo:v1}\n")
    configs = stackfile.ReleaseConfigs(stack, tmp_path, "web")
    route = {"weight": 0, "matches": [{"headers": [["X-Tester", "Exact", SECRET]], "queryParams": []}]}
    path = configs.write("r1", stack.read_text(), {"release": "r1", "route": route})
    # the file is plain config, which Pulumi keeps in every update's history: the values stay in this process
    assert path.stat().st_mode & 0o777 == 0o600 and SECRET not in path.read_text() and "<not recorded>" in path.read_text()
    assert stackfile.route_matches("web", "r1") == route["matches"]
    configs.discard(path)
    assert not path.exists()
