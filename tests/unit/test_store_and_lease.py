"""The release store and its lease, on an in-memory API server that keeps resourceVersions (409 on a stale write)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from canary.core import records
from canary.core.records import Phase, ReleaseState
from canary.errors import ClusterUnreachable, Conflict, Forbidden, LeaseLost, StackBusy, StackError
from canary.state import cache as cache_module
from canary.state import store as store_module
from canary.state.cache import Cache, Legacy
from canary.state.lease import Lease
from canary.state.store import ReleaseStore
from tests.unit.fakes import FakeKube
from tests.unit.support import BOUND_S


def _state(release: str = "r1", phase: Phase = Phase.PROGRESSING, updated: str = "2026-12-01T00:00:01.000Z") -> ReleaseState:
    return ReleaseState(release=release, stack="prod", app="web", namespace="shop", phase=phase, updated=updated)


def _store(kube: FakeKube, tmp_path: Path) -> ReleaseStore:
    return ReleaseStore(kube, "shop", "web", "prod", Cache(tmp_path, "prod", "web"))  # type: ignore[arg-type]


def _record(release: str, n: int) -> records.EventRecord:
    return records.EventRecord(time=f"2026-12-01T00:00:{n % 60:02d}.000Z", stack="prod", app="web", release=release, message=f"event {n}")


def test_the_state_is_kept_in_the_app_s_namespace_and_read_back(tmp_path: Path) -> None:
    kube = FakeKube()
    store = _store(kube, tmp_path)
    assert store.load() is None
    store.save(_state())
    store.save(_state(updated="2026-12-01T00:00:02.000Z").model_copy(update={"weight": 20}))
    cm = kube.objects[("ConfigMap", "shop", "canary-web-state")]
    assert json.loads(cm["data"]["state.json"])["weight"] == 20
    other_machine = _store(kube, tmp_path / "elsewhere")
    loaded = other_machine.load()
    assert loaded is not None and loaded.weight == 20 and loaded.phase is Phase.PROGRESSING


def test_a_stale_state_write_is_refused_every_time_never_an_overwrite(tmp_path: Path) -> None:
    # a holder whose lease was taken over: it used to get one Conflict, take the cluster's version, and
    # overwrite the new holder's state with its next save (the rollback it began on that Conflict)
    kube = FakeKube()
    mine, theirs = _store(kube, tmp_path), _store(kube, tmp_path / "b")
    mine.save(_state())
    theirs.load()
    theirs.save(_state().model_copy(update={"weight": 50}))
    for attempt in ("the step's save", "the rollback's save"):
        with pytest.raises(LeaseLost, match="written by another process since this one wrote it: it holds release r1 in phase Progressing"):
            mine._write_state(records.dump(_state().model_copy(update={"phase": Phase.ROLLING_BACK, "weight": 10})))
        assert _cluster_state(kube)["weight"] == 50, f"{attempt} overwrote the other holder's state"


def _cluster_state(kube: FakeKube) -> dict[str, Any]:
    return json.loads(kube.objects[("ConfigMap", "shop", "canary-web-state")]["data"]["state.json"])  # type: ignore[no-any-return]


def test_a_state_write_the_cluster_took_though_its_answer_was_lost_is_carried_on_from(tmp_path: Path) -> None:
    kube = FakeKube()
    store = _store(kube, tmp_path)
    store.save(_state())
    replace = kube.replace

    def taken_then_timed_out(manifest: Any) -> dict[str, Any]:
        replace(manifest)
        raise ClusterUnreachable("the Kubernetes API server did not answer: ReadTimeoutError")

    kube.replace = taken_then_timed_out  # type: ignore[method-assign]
    store.save(_state().model_copy(update={"weight": 10}))  # taken, unanswered
    kube.replace = replace  # type: ignore[method-assign]
    store.save(_state().model_copy(update={"weight": 20}))  # a Conflict on its own write: not another holder
    assert _cluster_state(kube)["weight"] == 20


def test_records_kept_while_the_cluster_was_down_are_sent_once_each_after_a_partial_resend(tmp_path: Path) -> None:
    kube = FakeKube()
    store = _store(kube, tmp_path)
    store.save(_state())
    kube.down = True
    for n in range(3):
        store.append(_record("r1", n))
    kube.down = False
    replace, calls = kube.replace, [0]

    def second_fails(manifest: Any) -> dict[str, Any]:
        calls[0] += 1
        if calls[0] == 2:
            raise ClusterUnreachable("the Kubernetes API server did not answer: ConnectionResetError")
        return replace(manifest)

    kube.replace = second_fails  # type: ignore[method-assign]
    store.append(_record("r1", 3))  # sends the first kept one, loses the second: both 1.. and 3 stay unsent
    kube.replace = replace  # type: ignore[method-assign]
    store.append(_record("r1", 4))
    sent = [r.message for r in _store(kube, tmp_path / "reader").records("r1")]
    assert sent == [_record("r1", n).message for n in range(5)], sent


def test_a_state_another_machine_wrote_since_wins_over_an_unsent_one_whatever_the_clocks_say(tmp_path: Path) -> None:
    # A saved its state during an outage (unsent) and stopped; B resumed the release from the cluster and
    # ended it, its clock 30 s behind A's. A's unsent state used to win on A (by its later `updated`): a
    # stale Progressing sent to resume, and its next write put that state back over B's in the cluster
    kube = FakeKube()
    a = _store(kube, tmp_path / "a")
    a.save(_state(updated="2026-12-01T00:01:00.000Z"))
    kube.down = True
    a.save(_state(updated="2026-12-01T00:01:40.000Z").model_copy(update={"weight": 30}))
    a.append(_record("r1", 7))
    kube.down = False
    b = _store(kube, tmp_path / "b")
    assert b.load().weight == 0  # type: ignore[union-attr]
    b.save(_state(phase=Phase.FAILED, updated="2026-12-01T00:01:10.000Z"))
    again = _store(kube, tmp_path / "a")  # a later process on A
    loaded = again.load()
    assert loaded is not None and loaded.phase is Phase.FAILED, loaded
    again.append(_record("r2", 0))  # its next write sends what A kept: its record, not its stale state
    held = records.parse_state(json.loads(kube.objects[("ConfigMap", "shop", "canary-web-state")]["data"]["state.json"]))
    assert held.phase is Phase.FAILED and not again.cache.unsent()
    assert "event 7" in [r.message for r in again.records("r1")]


def _answer_lost(kube: FakeKube, plain: Any, then_down: bool = False) -> Any:
    """A replace the API server applies but whose answer is lost (a time-out); ``then_down``: it stops answering."""

    def lost(manifest: Any) -> dict[str, Any]:
        plain(manifest)
        kube.down = kube.down or then_down
        raise ClusterUnreachable("the Kubernetes API server did not answer: ReadTimeoutError")

    return lost


def test_a_state_taken_whose_answer_was_lost_is_still_this_machine_s(tmp_path: Path) -> None:
    # the API server applied a write and died before answering; the release then saved its rollback here.
    # Its resume must see the rollback, not the version the lost answer would have named (the cluster's)
    kube = FakeKube()
    a = _store(kube, tmp_path)
    a.save(_state(updated="2026-12-01T00:01:00.000Z"))
    plain = kube.replace
    kube.replace = _answer_lost(kube, plain, then_down=True)  # type: ignore[method-assign]
    a.save(_state(updated="2026-12-01T00:01:10.000Z").model_copy(update={"failed_in_row": 2}))
    a.append(_record("r1", 1))
    a.save(_state(phase=Phase.ROLLING_BACK, updated="2026-12-01T00:01:20.000Z").model_copy(update={"rollback_pending": True}))
    kube.replace, kube.down = plain, False  # type: ignore[method-assign]
    loaded = _store(kube, tmp_path).load()
    assert loaded is not None and loaded.phase is Phase.ROLLING_BACK and loaded.rollback_pending


def _two_unanswered_states(tmp_path: Path) -> tuple[FakeKube, ReleaseStore]:
    """A state the cluster took with its answer lost (Progressing at 10), then a rollback's that never
    reached it: only the first of the two states sent without an answer is the cluster's."""
    kube = FakeKube()
    a = _store(kube, tmp_path)
    a.save(_state(updated="2026-12-01T00:01:00.000Z"))
    plain = kube.replace

    def state_reset(manifest: Any) -> dict[str, Any]:
        if manifest["metadata"]["name"] == "canary-web-state":
            raise ClusterUnreachable("the Kubernetes API server did not answer: ConnectionResetError")
        return plain(manifest)

    kube.replace = _answer_lost(kube, plain)  # type: ignore[method-assign]
    a.save(_state(updated="2026-12-01T00:01:10.000Z").model_copy(update={"weight": 10}))
    kube.down = True
    a.append(_record("r1", 1))
    kube.down, kube.replace = False, state_reset  # type: ignore[method-assign]
    a.save(_state(phase=Phase.ROLLING_BACK, updated="2026-12-01T00:01:20.000Z").model_copy(update={"rollback_pending": True}))
    kube.replace = plain  # type: ignore[method-assign]
    return kube, a


def test_a_second_state_sent_without_an_answer_does_not_make_the_first_a_stranger_s(tmp_path: Path) -> None:
    # only the last state sent was remembered: the cluster's (the first) then looked like another
    # machine's, a resume here went on judging the canary, and this process's next save was a false LeaseLost
    kube, a = _two_unanswered_states(tmp_path)
    loaded = _store(kube, tmp_path).load()  # a later process here: `canary resume`
    assert loaded is not None and loaded.phase is Phase.ROLLING_BACK and loaded.rollback_pending
    a.save(_state(phase=Phase.ROLLING_BACK, updated="2026-12-01T00:01:30.000Z").model_copy(update={"rollback_step": 1}))
    held = records.parse_state(json.loads(kube.objects[("ConfigMap", "shop", "canary-web-state")]["data"]["state.json"]))
    assert held.phase is Phase.ROLLING_BACK and held.rollback_step == 1


def test_a_rollback_kept_here_is_sent_with_the_next_record_not_dropped(tmp_path: Path) -> None:
    kube, a = _two_unanswered_states(tmp_path)
    a.append(_record("r1", 2))
    held = records.parse_state(json.loads(kube.objects[("ConfigMap", "shop", "canary-web-state")]["data"]["state.json"]))
    assert held.phase is Phase.ROLLING_BACK and held.rollback_pending and not a.cache.state_unsent()


def test_an_unsent_state_of_this_machine_wins_while_nobody_wrote_since(tmp_path: Path) -> None:
    kube = FakeKube()
    a = _store(kube, tmp_path)
    a.save(_state(updated="2026-12-01T00:01:00.000Z"))
    kube.down = True
    a.save(_state(updated="2026-12-01T00:00:30.000Z").model_copy(update={"weight": 30, "rollback_pending": True}))  # its clock stepped back
    a.append(_record("r1", 1))  # (as the recorder writes a state change: the state, then its record)
    kube.down = False
    loaded = _store(kube, tmp_path).load()
    assert loaded is not None and loaded.weight == 30 and loaded.rollback_pending


def test_a_cluster_without_state_is_believed_over_a_local_copy_with_nothing_unsent(tmp_path: Path) -> None:
    kube = FakeKube()
    store = _store(kube, tmp_path)
    store.save(_state())
    kube.objects.clear()  # the namespace made again, the state ConfigMap deleted
    assert store.load() is None


def test_the_journal_is_appended_in_chunks_read_in_order_and_old_releases_are_compacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "CHUNK_BYTES", 600)
    kube = FakeKube()
    store = _store(kube, tmp_path)
    for n in range(12):
        store.append(_record("r1", n))
    chunks = [k for k in kube.objects if k[2].startswith("canary-web-journal-r1-")]
    assert len(chunks) > 2
    assert all(len(kube.objects[k]["data"]["journal.jsonl"]) <= 600 for k in chunks)
    assert [r.message for r in _store(kube, tmp_path / "b").records("r1")] == [f"event {n}" for n in range(12)]
    for release in ("r2", "r3", "r4"):
        store.append(_record(release, 0))
    assert store.releases() == ["r1", "r2", "r3", "r4"]
    assert store.compact(keep=2) == ["r1", "r2"]
    assert store.releases() == ["r3", "r4"]
    # this machine's copy too: it grew by every release it ever ran
    assert {data["release"] for data in store.cache.records()} == {"r3", "r4"}


def test_a_record_with_a_huge_text_is_cut_so_that_it_and_those_after_it_reach_the_journal(tmp_path: Path) -> None:
    # `canary abort --reason` with a megabyte of text (or a hook's endless output): the API server refused the
    # chunk for its size, and the record stayed at the head of the unsent queue, every later record behind it
    kube = FakeKube()
    limit = 1024 * 1024

    def too_large(verb: str, obj: Any) -> Exception | None:
        return store_module.Refused("the cluster refused (422): request entity too large") if len(json.dumps(obj)) > limit else None

    kube.refuse = too_large
    store = _store(kube, tmp_path)
    huge = records.EventRecord(time="2026-12-01T00:00:00.000Z", stack="prod", app="web", release="r1", message="x" * 1_100_000)
    store.append(huge)
    store.append(_record("r1", 1))
    got = [r.message for r in _store(kube, tmp_path / "b").records("r1")]
    assert len(got) == 2 and got[0].endswith("… (cut: 1100000 characters)") and got[1] == "event 1"


def test_compaction_keeps_the_releases_begun_last_whatever_clock_named_them(tmp_path: Path) -> None:
    # release ids carry the clock of the machine that began them: a runner 3 h behind began the release running
    # now, its id sorted first, and compaction right after its first records dropped its journal
    kube = FakeKube()
    store = _store(kube, tmp_path)
    for release in ("20261204t120000-1", "20261204t120500-2", "20261204t121000-3"):
        store.append(_record(release, 0))
    behind = "20261204t091500-4"  # begun last, by a machine whose clock is hours behind
    store.append(_record(behind, 0))
    assert store.compact(keep=2) == ["20261204t120000-1", "20261204t120500-2"]
    assert behind in store.releases()


def test_a_late_record_of_a_release_compaction_dropped_does_not_evict_a_release_kept(tmp_path: Path) -> None:
    # a machine offline for many releases sends a record of one long compacted: its new chunk counted as the newest
    # release, and the next compaction dropped the oldest release kept instead
    kube = FakeKube()
    store = _store(kube, tmp_path)
    for release in ("r1", "r2", "r3"):
        store.append(records.Snapshot(time="2026-12-01T00:00:00.000Z", stack="prod", app="web", release=release))
        store.append(_record(release, 1))
    _store(kube, tmp_path / "offline").append(_record("r0", 7))  # its snapshot's chunk went with r0's compaction
    assert store.compact(keep=3) == ["r0"]
    assert store.releases() == ["r1", "r2", "r3"]


def test_records_the_cluster_cannot_take_are_kept_and_sent_first_when_it_answers(tmp_path: Path) -> None:
    kube = FakeKube()
    store = _store(kube, tmp_path)
    store.append(_record("r1", 0))
    kube.down = True
    store.append(_record("r1", 1))
    store.save(_state(updated="2026-12-01T00:00:05.000Z").model_copy(update={"rollback_pending": True}))
    assert [r.message for r in store.records("r1")] == ["event 0", "event 1"]  # from the local copy
    loaded = store.load()
    assert loaded is not None and loaded.rollback_pending  # the local state: newer than the cluster's
    kube.down = False
    store.append(_record("r1", 2))
    assert [r.message for r in _store(kube, tmp_path / "b").records("r1")] == ["event 0", "event 1", "event 2"]
    remote = _store(kube, tmp_path / "c").load()
    assert remote is not None and remote.rollback_pending and not store.cache.unsent()


def test_requests_from_any_machine_reach_the_release_they_name(tmp_path: Path) -> None:
    kube = FakeKube()
    store = _store(kube, tmp_path)
    _store(kube, tmp_path / "laptop").request("abort", "r1", by="alice")
    _store(kube, tmp_path / "laptop").request("promote", "r0", by="bob")
    found = store.requests("r1")
    assert set(found) == {"abort"} and found["abort"]["by"] == "alice"
    store.clear_request("abort")
    assert store.requests("r1") == {}
    store.request("pause", "r1", by="a")
    store.request("continue", "r1", by="b")
    assert set(store.requests("r1")) == {"continue"}


def test_events_are_recorded_on_the_canary_deployment(tmp_path: Path) -> None:
    kube = FakeKube()
    kube._stamp({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web-canary", "namespace": "shop", "uid": "u-1"}})
    _store(kube, tmp_path).event("RollingBack", "rolling back: error-rate 18 > max 1", warning=True)
    event = kube.events[0]
    assert event["involved"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web-canary", "namespace": "shop", "uid": "u-1"}
    assert event["reason"] == "RollingBack" and event["warning"] and "error-rate 18" in event["message"]


def test_an_event_in_an_outage_is_left_out_like_the_rest_of_an_outage_s_events(tmp_path: Path) -> None:
    # the Deployment's read before the first event was outside the outage's suppression: the release said
    # "Kubernetes Events cannot be recorded", as if RBAC refused them, for an API server that was restarting
    kube = FakeKube()
    kube._stamp({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web-canary", "namespace": "shop", "uid": "u-1"}})
    store = _store(kube, tmp_path)
    kube.down = True
    store.event("RollingBack", "rolling back: error-rate 18 > max 1", warning=True)  # no error
    kube.down = False
    store.event("Synced", "weight 10")
    assert [e["reason"] for e in kube.events] == ["Synced"]


def _legacy_files(root: Path) -> None:
    """What canary 0.1 left for stack prod: a rolled-back release's state and two journal records (one torn line)."""
    old = root / "prod"
    old.mkdir(parents=True)
    (old / "release.json").write_text(json.dumps({"release": "20261127T100000-1", "stack": "prod", "phase": "Failed", "canary_image": "web:2",
                                                  "stable_image": "web:1", "weight": 0, "failed_in_row": 3, "reason": "error-rate 18 > max 1",
                                                  "last_checks": [{"metric": "error-rate", "query": "q", "value": 18.0, "threshold": {"min": None, "max": 1},
                                                                   "verdict": "fail", "effect": "fail", "reason": "error-rate 18 > max 1"}]}))
    (old / "journal.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"time": "2026-11-27T10:00:00.000Z", "stack": "prod", "release": "20261127T100000-1", "type": "state", "phase": "Initializing", "weight": 0,
         "failed_in_row": 0, "message": "release started", "image": "web:2"},
        {"time": "2026-11-27T10:00:05.000Z", "stack": "prod", "release": "20261127T100000-1", "type": "up", "phase": "Progressing", "weight": 10,
         "config": {"canaryWeight": 10}, "removed": [], "targeted": ["route"], "refreshed": False, "seconds": 0.7, "changes": {"update": 1}},
    ]) + "\n{torn")


def test_a_request_written_after_the_one_taken_is_not_cleared_with_it(tmp_path: Path) -> None:
    # a plain promote refused (the last tick failed), then `promote --force` at once: clearing the refused one
    # deleted the forced one, and the release waited on
    kube = FakeKube()
    store = _store(kube, tmp_path)
    store.request("promote", "r1", by="dev")
    taken = store.requests("r1")["promote"]
    time.sleep(0.002)  # (requests carry their time to the millisecond)
    store.request("promote", "r1", by="oncall", reason="known flaky check", force=True)
    store.clear_request("promote", taken)
    assert store.requests("r1")["promote"]["force"] is True
    store.clear_request("promote", store.requests("r1")["promote"])
    assert store.requests("r1") == {}


def test_a_record_sent_again_after_another_machine_went_on_to_a_new_chunk_is_kept_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a write taken with its answer lost is kept unsent; another machine resumed the release and filled a chunk;
    # the next write from the first machine sent the record again into the new chunk (history showed it twice)
    monkeypatch.setattr(store_module, "CHUNK_BYTES", 1000)
    kube = FakeKube()
    a = _store(kube, tmp_path / "a")

    def event(n: int) -> records.EventRecord:
        return records.EventRecord(time=f"2026-12-01T00:00:{n:02d}.000Z", stack="prod", app="web", release="r1", message=f"event {n} " + "x" * 100)

    a.append(event(1))
    plain = kube.replace

    def taken_but_unanswered(manifest: dict[str, Any]) -> Any:
        kube.replace = plain  # type: ignore[method-assign]
        plain(manifest)
        raise ClusterUnreachable("the Kubernetes API server did not answer: ReadTimeoutError")

    kube.replace = taken_but_unanswered  # type: ignore[method-assign]
    a.append(event(2))
    assert [r.message.split()[1] for r in a.records("r1")] == ["1", "2"]  # held by the cluster and kept here: shown once
    b = _store(kube, tmp_path / "b")
    for n in range(3, 9):
        b.append(event(n))
    again = _store(kube, tmp_path / "a")
    again.append(event(9))
    assert [r.message.split()[1] for r in again.records("r1")] == [str(n) for n in range(1, 10)]


@pytest.mark.parametrize("text", ["{not json", json.dumps({"release": "r1", "stack": "prod", "app": "web", "namespace": "shop", "phase": "Verifying"})],
                         ids=["not-json", "a-newer-version-s-phase"])
def test_a_state_this_version_cannot_read_is_named_not_a_traceback(tmp_path: Path, text: str) -> None:
    # `status` or `abort` in an incident, with a newer canary on another machine: a traceback, and no abort written
    kube = FakeKube()
    store = _store(kube, tmp_path)
    store.save(_state())
    cm = kube.objects[("ConfigMap", "shop", "canary-web-state")]
    kube.replace({**cm, "data": {"state.json": text}})
    with pytest.raises(StackError, match=r"ConfigMap shop/canary-web-state cannot be read by this version of canary"):
        _store(kube, tmp_path / "other").load()
    # the release running here meets it as another holder's write: the lease is lost, not an internal error
    with pytest.raises(LeaseLost, match="a state this version of canary cannot read"):
        store.save(_state(phase=Phase.ROLLING_BACK))
    # what this process saved is no one's now: a request it took is not cleared as if the cluster held its effect
    assert not store.state_taken()


def test_the_legacy_file_journal_is_still_readable(tmp_path: Path) -> None:
    _legacy_files(tmp_path)
    legacy = Legacy(tmp_path, "prod")
    state = legacy.state()
    assert state is not None and state.phase is Phase.FAILED and state.canary is not None and state.canary.image == "web:2"
    assert state.last_checks[0].threshold_range is not None and state.last_checks[0].threshold_range.max == 1
    assert [r.type for r in legacy.records()] == ["state", "up"] and legacy.records()[1].targets == ("route",)


def test_the_legacy_journal_is_shown_under_the_stack_s_one_app_and_under_none_of_several(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 0.1 released a stack's one app and named none in its records: in a stack of several apps, `history` and
    # `status` showed that app's releases under every app (a status of "Failed" for an app never released)
    from types import SimpleNamespace

    from canary import api

    _legacy_files(tmp_path / ".canary")
    kube = FakeKube()
    store = _store(kube, tmp_path / "cache")
    apps = ["web"]
    ws = SimpleNamespace(kube=kube, project_dir=tmp_path, name="prod", apps=lambda: apps)
    monkeypatch.delenv("CANARY_STATE_DIR", raising=False)
    monkeypatch.setattr(api, "_store", lambda *a, **k: (ws, "web", store))
    assert [r.type for r in api.history("prod")] == ["state", "up"]
    found = api.status("prod")
    assert found is not None and found.legacy and found.state.phase is Phase.FAILED
    apps.append("shop")
    warnings: list[str] = []
    assert api.history("prod", on_warning=warnings.append) == [] and api.status("prod", on_warning=warnings.append) is None
    assert len(warnings) == 2 and "names no app, and stack prod holds several" in warnings[0] and str(tmp_path / ".canary" / "prod") in warnings[0]


@pytest.mark.parametrize("content", ['["not", "a", "state"]', '{"release": "r1", "phase": "NoSuchPhase"}', "null"])
def test_a_release_file_of_an_earlier_version_that_cannot_be_read_is_named_not_a_traceback(tmp_path: Path, content: str) -> None:
    (tmp_path / "prod").mkdir()
    (tmp_path / "prod" / "release.json").write_text(content)
    with pytest.raises(StackError, match=r"prod/release.json cannot be read .*move the file aside"):
        Legacy(tmp_path, "prod").state()


# --- the lease -----------------------------------------------------------------------------------


def _lease(kube: FakeKube, duration: float = 15.0, renew_every: float = 0.05) -> Lease:
    return Lease(kube, "shop", "web", duration=duration, renew_every=renew_every)  # type: ignore[arg-type]


def _held_by(kube: FakeKube, host: str, pid: int, release: str, renewed: datetime, **where: Any) -> None:
    """``where``: the holder's ``boot`` and ``pidns``, as canary records them now (none: an earlier canary's identity)."""
    stamp = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    holder = {"host": host, "pid": pid, "release": release, "acquired": stamp, **where}
    kube._stamp({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": "canary-web", "namespace": "shop",
                              "annotations": {"canary.dev/holder": json.dumps(holder)}},
                 "spec": {"holderIdentity": f"{host}/{pid}/{release}", "leaseDurationSeconds": 15, "acquireTime": stamp, "renewTime": stamp}})


def test_a_second_release_is_refused_naming_the_holder_and_the_lease_is_given_up_at_the_end() -> None:
    kube = FakeKube()
    first = _lease(kube)
    first.acquire("r1")
    with pytest.raises(StackBusy, match=f"release r1 by pid {os.getpid()} on {socket.gethostname()}"):
        _lease(kube).acquire("r2")
    first.renew()
    first.release()
    holder = _lease(kube).holder()
    assert holder is None
    _lease(kube).acquire("r2")


def test_the_lease_is_given_up_even_while_a_renewal_s_answer_is_late() -> None:
    # the renewal reached the API server, its answer had not come back: the release's give-up write
    # carried the version before it, was refused, and the app stayed held until the lease ran out
    kube = FakeKube()
    answered, taken = threading.Event(), threading.Event()
    plain = kube.replace

    def late(manifest: Any) -> dict[str, Any]:
        written = plain(manifest)
        if manifest["kind"] == "Lease" and manifest["spec"].get("holderIdentity") and threading.current_thread().name == "renewal":
            taken.set()
            answered.wait(5)
        return written

    kube.replace = late  # type: ignore[method-assign]
    lease = _lease(kube)
    lease.acquire("r1")
    renewal = threading.Thread(target=lease.renew, name="renewal")
    renewal.start()
    assert taken.wait(5)
    giving_up = threading.Thread(target=lease.release)
    giving_up.start()
    time.sleep(0.2)
    answered.set()
    giving_up.join(5)
    renewal.join(5)
    assert _lease(kube).holder() is None
    _lease(kube).acquire("r2")


def test_a_lease_held_on_another_host_is_taken_over_once_expired_never_before() -> None:
    kube = FakeKube()
    _held_by(kube, "runner-7", 4242, "r1", datetime.now(UTC) - timedelta(seconds=5))
    with pytest.raises(StackBusy, match="runner-7"):
        _lease(kube).acquire("r1")  # even a resume of the same release waits for an alive holder
    _held_by(kube, "runner-7", 4242, "r1", datetime.now(UTC) - timedelta(seconds=16))
    previous = _lease(kube).acquire("r1")
    assert previous is not None and previous.host == "runner-7" and previous.expired


def test_a_refusal_by_a_holder_on_another_host_says_when_its_lease_runs_out() -> None:
    """Nothing here can see another machine's process: the refusal says when the app can be taken over."""
    kube = FakeKube()
    _held_by(kube, "runner-7", 4242, "r1", datetime.now(UTC) - timedelta(seconds=5))
    with pytest.raises(StackBusy, match=r"runner-7.*its lease expires in (9|10)s .*run the command again then") as resumed:
        _lease(kube).acquire("r1")
    assert "still running" in str(resumed.value)
    with pytest.raises(StackBusy, match=r"is busy: .*runner-7.*expires in"):
        _lease(kube).acquire("r2")
    _held_by(kube, socket.gethostname(), os.getpid(), "r1", datetime.now(UTC))
    with pytest.raises(StackBusy) as local:  # a live process of this host: it is running, no guess about expiry
        _lease(kube).acquire("r2")
    assert "expires" not in str(local.value)


def test_a_release_refused_by_a_live_holder_changes_nothing_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`canary release` from a second machine while another holds the app: refused naming the holder,
    before the stack file is edited (it used to be edited first, and its `canary up` then refused)."""
    from types import SimpleNamespace

    from canary import api

    kube = FakeKube()
    _held_by(kube, "runner-7", 4242, "r1", datetime.now(UTC))

    class Workspace:
        name = "prod"

        def app(self, name: str | None) -> str:
            return "web"

        def facts(self, name: str) -> Any:
            return SimpleNamespace(stable=SimpleNamespace(image="web:1"))

        def namespace(self, name: str) -> str:
            return "shop"

        def store(self, name: str, namespace: str) -> ReleaseStore:
            return ReleaseStore(kube, namespace, name, "prod", Cache(tmp_path, "prod", name))  # type: ignore[arg-type]

    ws = Workspace()
    ws.kube = kube  # type: ignore[attr-defined]
    monkeypatch.setattr(api, "open_stack", lambda *a, **k: ws)
    monkeypatch.setattr(api, "_preflight", lambda *a, **k: None)
    monkeypatch.setattr(api, "set_image", lambda *a, **k: pytest.fail("the stack file was edited"))
    with pytest.raises(StackBusy, match=r"app web is busy: release r1 by pid 4242 on runner-7.*canary abort.*expires in") as refused:
        api.release("prod", "web:2")
    assert "canary resume" not in str(refused.value)


def test_an_unfinished_release_whose_holder_runs_on_another_host_is_named_not_sent_to_resume(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from canary import api

    kube = FakeKube()
    state = records.parse_state({"release": "r1", "stack": "prod", "app": "web", "phase": "Progressing", "weight": 20})
    ws = SimpleNamespace(kube=kube, name="prod", namespace=lambda name: "shop")
    _held_by(kube, "runner-7", 4242, "r1", datetime.now(UTC))
    with pytest.raises(StackBusy, match="is busy: release r1 by pid 4242 on runner-7") as running:
        api._refuse_if_busy(ws, "web", state)  # type: ignore[arg-type]
    assert "canary resume" not in str(running.value)
    _held_by(kube, "runner-7", 4242, "r1", datetime.now(UTC) - timedelta(seconds=60))  # its machine is gone
    with pytest.raises(StackBusy, match="unfinished release r1 in phase Progressing: run `canary resume prod --app web`"):
        api._refuse_if_busy(ws, "web", state)  # type: ignore[arg-type]


def test_a_lease_of_a_dead_process_of_this_host_is_taken_over_at_once() -> None:
    kube = FakeKube()
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    _held_by(kube, socket.gethostname(), child.pid, "r1", datetime.now(UTC))
    assert _lease(kube).acquire("r1") is not None


def _where_pids_are_numbered() -> tuple[str, int]:
    """This machine's boot id and this process's PID namespace, read as a holder's identity records them."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip(), os.stat("/proc/self/ns/pid").st_ino


def test_a_live_release_in_another_pid_namespace_of_this_host_is_not_taken_over_before_its_lease_expires() -> None:
    """A container run with the host's network keeps the host's name: its live release's pid (numbered in the
    container's PID namespace) is no process here, and its unexpired lease was taken over at once."""
    boot, ns = _where_pids_are_numbered()
    kube = FakeKube()
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    _held_by(kube, socket.gethostname(), child.pid, "r1", datetime.now(UTC) - timedelta(seconds=5), boot=boot, pidns=ns + 1)
    for release in ("r1", "r2"):
        with pytest.raises(StackBusy, match=r"its lease expires in (9|10)s"):
            _lease(kube).acquire(release)
    holder = _lease(kube).holder()
    assert holder is not None and holder.alive() and holder.elsewhere()
    # this very process's pid, in that namespace: another process, not this one resuming its own release
    _held_by(kube, socket.gethostname(), os.getpid(), "r1", datetime.now(UTC), boot=boot, pidns=ns + 1)
    with pytest.raises(StackBusy, match="still running"):
        _lease(kube).acquire("r1")
    # once expired (and seen unchanged for two renewals), as any other host's
    _held_by(kube, socket.gethostname(), child.pid, "r1", datetime.now(UTC) - timedelta(seconds=16), boot=boot, pidns=ns + 1)
    previous = _lease(kube).acquire("r2")
    assert previous is not None and previous.expired and previous.pidns == ns + 1


def test_the_lease_records_where_its_holder_s_pid_is_numbered_and_a_dead_one_there_is_taken_over() -> None:
    boot, ns = _where_pids_are_numbered()
    kube = FakeKube()
    _lease(kube).acquire("r1")
    recorded = json.loads(kube.objects[("Lease", "shop", "canary-web")]["metadata"]["annotations"]["canary.dev/holder"])
    assert (recorded.get("boot"), recorded.get("pidns")) == (boot, ns)
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    _held_by(kube, socket.gethostname(), child.pid, "r1", datetime.now(UTC), boot=boot, pidns=ns)
    assert _lease(kube).acquire("r2") is not None  # this host, this boot, this namespace: dead, taken over at once


def test_of_two_contenders_for_a_stale_lease_exactly_one_wins() -> None:
    kube = FakeKube()
    _held_by(kube, "runner-7", 4242, "r1", datetime.now(UTC) - timedelta(seconds=60))
    outcomes: list[str] = []
    barrier = threading.Barrier(2)
    original = kube.get

    def get_then_wait(*args: Any, **kwargs: Any) -> Any:
        found = original(*args, **kwargs)
        if args[1] == "Lease":
            barrier.wait(timeout=5)  # both read the same resourceVersion before either writes
        return found

    kube.get = get_then_wait  # type: ignore[method-assign]

    def contend() -> None:
        try:
            _lease(kube).acquire("r1")
            outcomes.append("won")
        except StackBusy:
            outcomes.append("busy")

    threads = [threading.Thread(target=contend) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(outcomes) == ["busy", "won"]


def test_a_lease_taken_by_someone_else_is_noticed_at_renewal() -> None:
    kube = FakeKube()
    mine = _lease(kube)
    mine.acquire("r1")
    _held_by(kube, "runner-9", 1, "r2", datetime.now(UTC))
    mine.renew()
    assert mine.lost is not None and "runner-9" in mine.lost


def test_a_holder_whose_renewals_failed_checks_its_lease_before_the_next_change(monkeypatch: pytest.MonkeyPatch) -> None:
    # its renewals failed while the cluster did not answer; meanwhile another machine took the expired
    # lease. Before, nothing noticed until a renewal happened to run, and the release went on changing things
    kube = FakeKube()
    mine = _lease(kube)
    mine.acquire("r1")
    mine.fence()  # renewed just now: nothing to ask
    calls = kube.calls
    mine.fence()
    assert kube.calls == calls
    import canary.state.lease as lease_module

    later = lease_module.time.monotonic() + 3 * mine.renew_every
    monkeypatch.setattr(lease_module.time, "monotonic", lambda: later)
    kube.down = True
    with pytest.raises(ClusterUnreachable):  # it cannot tell: the change it guards would fail as well
        mine.fence()
    kube.down = False
    _held_by(kube, "runner-9", 1, "r2", datetime.now(UTC))
    with pytest.raises(LeaseLost, match="runner-9"):
        mine.fence()


def test_a_dead_holder_whose_clock_ran_fast_is_taken_over_after_a_lease_s_duration_seen_here() -> None:
    # a killed runner whose clock was an hour fast: read by its renewTime the lease held the app for an hour
    kube = FakeKube()
    _held_by(kube, "runner-9", 1, "r2", datetime.now(UTC) + timedelta(hours=1))
    start = time.monotonic()
    previous = _lease(kube, duration=0.6, renew_every=0.05).acquire("r3")
    assert previous is not None and previous.host == "runner-9" and time.monotonic() - start >= 0.6
    # a live holder with a fast clock renews meanwhile: refused, never taken
    kube2 = FakeKube()
    _held_by(kube2, "runner-8", 1, "r4", datetime.now(UTC) + timedelta(hours=1))
    renewer = threading.Timer(0.2, lambda: _held_by(kube2, "runner-8", 1, "r4", datetime.now(UTC) + timedelta(hours=1)))
    renewer.start()
    with pytest.raises(StackBusy, match="renewal time lies ahead of this machine's clock"):
        _lease(kube2, duration=0.6, renew_every=0.05).acquire("r5")
    renewer.join()


def test_a_renewal_whose_answer_came_late_counts_from_when_it_was_sent() -> None:
    # the renewal was stamped when its answer came: one answered 9 s late was trusted for two renewal periods
    # after that, while for other machines the lease (renewTime, 15 s) had run out and could be taken
    kube = FakeKube()
    mine = _lease(kube, renew_every=5.0)
    mine.acquire("r1")
    replace = kube.replace

    def slow(manifest: Any) -> Any:
        time.sleep(0.3)  # the answer comes late
        return replace(manifest)

    kube.replace = slow  # type: ignore[method-assign]
    before = time.monotonic()
    mine.renew()
    assert mine._renewed <= before + 0.05, mine._renewed - before


def test_the_renewer_survives_a_renewal_that_raises_anything_and_says_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # an HTML page from an auth proxy (a ValueError, not the cluster's answer) ended the renewer without a word:
    # `lost` stayed None and the release went on while its lease ran out
    said: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", said.append)
    kube = FakeKube()
    lease = _lease(kube)
    lease.acquire("r1")
    replace, calls, renewed = kube.replace, [0], threading.Event()

    def garbled(manifest: Any) -> Any:
        calls[0] += 1
        if calls[0] <= 2:
            raise ValueError("Expecting value: line 1 column 1 (char 0)")
        renewed.set()
        return replace(manifest)

    kube.replace = garbled  # type: ignore[method-assign]
    lease.start_renewing()
    assert renewed.wait(BOUND_S)
    lease.release()
    assert lease.lost is None and [type(args.exc_value) for args in said] == [ValueError]


def test_a_renewer_that_ends_while_the_release_runs_is_a_lost_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the renewer's end is expected here
    kube = FakeKube()
    lease = _lease(kube)
    lease.acquire("r1")
    replace = kube.replace

    class Ends(BaseException):
        """Whatever still ends the thread."""

    def ends(manifest: Any) -> Any:
        raise Ends()

    kube.replace = ends  # type: ignore[method-assign]
    lease.start_renewing()
    assert lease._thread is not None
    lease._thread.join(BOUND_S)
    kube.replace = replace  # type: ignore[method-assign]
    assert lease.lost is not None and "renewals" in lease.lost
    with pytest.raises(LeaseLost):
        lease.fence()


@pytest.mark.parametrize("annotation", ['{"host": "h", "pid": "abc"}', "null", "[1]", '"x"'])
def test_a_holder_annotation_of_another_shape_is_read_from_the_identity(annotation: str) -> None:
    kube = FakeKube()
    _held_by(kube, "runner-3", 77, "r5", datetime.now(UTC))
    lease = kube.objects[("Lease", "shop", "canary-web")]
    lease["metadata"]["annotations"]["canary.dev/holder"] = annotation
    holder = _lease(kube).holder()
    assert holder is not None and holder.host in ("runner-3", "h") and holder.release == "r5" and not holder.expired
    with pytest.raises(StackBusy, match="release r5"):
        _lease(kube).acquire("r6")


def test_a_live_holder_whose_clock_runs_behind_is_not_taken_over_for_looking_expired() -> None:
    # its renewTime, by its own clock 20 s behind this machine's, looks 20 s old: expired here. Before,
    # it was taken over at once while it ran; now only once also seen unchanged for two renewal periods
    kube = FakeKube()
    behind = datetime.now(UTC) - timedelta(seconds=20)
    _held_by(kube, "runner-slow-clock", 4242, "r1", behind)
    contender = _lease(kube, renew_every=0.2)
    holder = contender.holder()
    assert holder is not None and holder.expired  # by this machine's clock

    def renews_as_it_runs() -> None:
        time.sleep(0.1)
        _held_by(kube, "runner-slow-clock", 4242, "r1", behind + timedelta(seconds=5))  # its next renewal

    thread = threading.Thread(target=renews_as_it_runs)
    thread.start()
    with pytest.raises(StackBusy, match="changed while this one watched it"):
        contender.acquire("r2")
    thread.join()
    lease = kube.objects[("Lease", "shop", "canary-web")]
    assert lease["spec"]["holderIdentity"] == "runner-slow-clock/4242/r1"
    # a holder that is really gone: seen unchanged for the two periods, then taken over
    started = time.monotonic()
    previous = _lease(kube, renew_every=0.2).acquire("r2")
    assert previous is not None and previous.host == "runner-slow-clock" and time.monotonic() - started >= 0.4


def test_a_state_or_journal_configmap_deleted_mid_release_is_written_again(tmp_path: Path) -> None:
    # the API server answers 404 to a write of a deleted object; the adapter said "unreachable", so the
    # record was kept unsent and every later write, sending it first, failed the same way: nothing more
    # reached the cluster. A deletion is a change like another (Conflict): read again, write again
    kube = FakeKube()
    store = _store(kube, tmp_path)
    store.save(_state())
    store.append(_record("r1", 0))
    for key in [k for k in kube.objects if k[0] == "ConfigMap"]:
        del kube.objects[key]
    store.append(_record("r1", 1))
    store.save(_state().model_copy(update={"weight": 30}))
    assert not store.cache.unsent()
    assert _cluster_state(kube)["weight"] == 30
    assert [r.message for r in _store(kube, tmp_path / "reader").records("r1")] == [_record("r1", 1).message]


def test_the_kube_adapter_reads_a_404_on_a_write_as_a_change_not_an_outage() -> None:
    from kubernetes.client.exceptions import ApiException

    from canary.adapters.kube import Kube

    class Gone:
        def replace(self, **_: Any) -> Any:
            raise ApiException(status=404, reason="Not Found")

    kube = Kube.__new__(Kube)
    kube._timeout = 1.0
    kube.resource = lambda api_version, kind: Gone()  # type: ignore[method-assign]
    with pytest.raises(Conflict, match="deleted since it was read"):
        kube.replace({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "canary-web-state", "namespace": "shop", "resourceVersion": "7"}})


def test_records_kept_through_a_long_refusal_cost_one_write_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # every record kept while the cluster refused rewrote the whole unsent file, one flushed line at a
    # time: quadratic in the records kept, and a crash midway left only part of them marked unsent
    kube = FakeKube()
    store = _store(kube, tmp_path)
    store.save(_state())
    writes: list[str] = []
    append_line, write_atomic = cache_module.files.append_line, cache_module.files.write_text_atomic

    def counted_append(path: Path, line: str) -> None:
        writes.append(path.name)
        append_line(path, line)

    def counted_atomic(path: Path, text: str, **kw: Any) -> None:
        writes.append(path.name)
        write_atomic(path, text, **kw)

    monkeypatch.setattr(cache_module.files, "append_line", counted_append)
    monkeypatch.setattr(cache_module.files, "write_text_atomic", counted_atomic)
    kube.down = True
    for n in range(30):
        store.append(_record("r1", n))
    assert writes.count("unsent.jsonl") == 30, writes.count("unsent.jsonl")
    assert [d["message"] for d in store.cache.unsent()] == [f"event {n}" for n in range(30)]
    kube.down = False
    store.append(_record("r1", 30))
    assert [r.message for r in _store(kube, tmp_path / "reader").records("r1")] == [f"event {n}" for n in range(31)]


def test_a_record_kept_after_a_torn_line_is_not_glued_to_it_and_lost(tmp_path: Path) -> None:
    # a crash mid-write leaves a torn last line; the next record was appended onto it, and the line,
    # no longer JSON, was skipped with the record in it (the journal here and the records kept unsent)
    kube = FakeKube()
    store = _store(kube, tmp_path)
    store.save(_state())
    kube.down = True
    for n in range(2):
        store.append(_record("r1", n))
    for name in ("unsent.jsonl", "journal.jsonl"):
        with (store.cache.dir / name).open("a") as f:
            f.write('{"app": "web", "mess')
    store.append(_record("r1", 2))
    assert [d["message"] for d in store.cache.unsent()] == ["event 0", "event 1", "event 2"]
    assert [d["message"] for d in store.cache.records() if d.get("type") == "event"] == ["event 0", "event 1", "event 2"]
    kube.down = False
    store.append(_record("r1", 3))
    assert [r.message for r in _store(kube, tmp_path / "reader").records("r1")] == [f"event {n}" for n in range(4)]


def test_a_config_file_is_written_though_the_cache_s_directory_went(tmp_path: Path) -> None:
    # `git clean` of the checkout while an `up` waited for Pulumi's lock: its config write raised
    cache = Cache(tmp_path, "prod", "_stack")
    shutil.rmtree(tmp_path / "prod")
    path = cache.write_config("up-1", "config: {}\n")
    assert path == cache.config_file("up-1") and path.read_text() == "config: {}\n"


def test_status_says_what_this_machine_keeps_that_the_cluster_has_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # records kept through an outage or a refusal reach the cluster only with this machine's next release;
    # `status` here showed this machine's view and did not say other machines see less
    from types import SimpleNamespace

    from click.testing import CliRunner

    from canary import api, cli

    kube = FakeKube()
    store = _store(kube, tmp_path)
    store.save(_state())
    monkeypatch.setattr(api, "_store", lambda *a, **k: (SimpleNamespace(kube=kube), "web", store))
    found = api.status("prod")
    assert found is not None and (found.kept_records, found.kept_state) == (0, False)
    kube.down = True
    store.append(_record("r1", 0))
    store.append(_record("r1", 1))
    store.save(_state(phase=Phase.FAILED))
    kube.down = False
    found = api.status("prod")
    assert found is not None and (found.kept_records, found.kept_state) == (2, True) and found.state.phase is Phase.FAILED
    assert found.to_json()["kept_here"] == {"records": 2, "state": True}
    done = CliRunner().invoke(cli.main, ["status", "prod"])
    assert done.exit_code == 0, done.output
    assert "kept on this machine, not yet in the cluster: 2 journal records and the state" in done.output


def test_withdraw_leaves_a_state_another_holder_wrote_since_and_says_why_one_stays(tmp_path: Path) -> None:
    # a release not begun deletes the first state it wrote; but a machine that resumed that release since
    # (same release id, lease taken over) wrote its own: deleting that left a canary nobody is told to resume
    kube = FakeKube()
    store = _store(kube, tmp_path)
    store.save(_state(phase=Phase.INITIALIZING))
    other = _store(kube, tmp_path / "b")
    assert other.load() is not None
    other.save(_state(phase=Phase.PROGRESSING))  # machine B resumed r1
    assert store.withdraw("r1") is None
    seen = _store(kube, tmp_path / "c").load()
    assert seen is not None and seen.phase is Phase.PROGRESSING
    # this machine's own first state, where a delete is refused too: it stays, and why is said
    kube2 = FakeKube()
    mine = _store(kube2, tmp_path / "d")
    mine.save(_state(release="r2", phase=Phase.INITIALIZING))
    kube2.refuse = lambda verb, obj: Forbidden("deleting ConfigMap: the cluster refused (403 Forbidden): cannot delete") if verb == "delete" else None
    stays = mine.withdraw("r2")
    assert stays is not None and "cannot delete" in stays and stays.startswith("the cluster still holds its first state")
    kube2.refuse = lambda verb, obj: None
    kube2.down = True  # an outage: whether the first state stays is not known, and not said as known
    stays = mine.withdraw("r2")
    assert stays is not None and stays.startswith("the cluster may still hold its first state") and "could not be read" in stays
    kube2.down = False
    assert mine.withdraw("r2") is None and _store(kube2, tmp_path / "e").load() is None


def test_a_request_value_that_is_no_object_neither_counts_nor_stops_the_watch(tmp_path: Path) -> None:
    # `kubectl create configmap canary-web-requests --from-literal=abort=true`: the value parsed to True, whose
    # .get raised AttributeError, which ended the watch's thread; a proper `canary abort` after it was never seen
    kube = FakeKube()
    store = _store(kube, tmp_path)
    good = json.dumps({"release": "r1", "by": "oncall"})
    changes = iter([{"object": {"data": {"abort": "true"}}}, {"object": {"data": {"note": "null", "abort": good}}}])

    class Watching(FakeKube):
        def changes(self, *args: Any, **kwargs: Any) -> Any:
            return changes

    store.kube = Watching()
    store.kube.objects = kube.objects
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    thread = store.watch_requests("r1", lambda found: seen.append(found) or (stop.set() if "abort" in found else None), stop)
    thread.join(timeout=10)
    assert not thread.is_alive() and seen[-1] == {"abort": {"release": "r1", "by": "oncall"}}, seen
    assert store_module._addressed({"abort": "true", "promote": "[1]", "pause": "{"}, "r1") == {}


def _event(n: int) -> records.EventRecord:
    return records.EventRecord(time=f"2026-12-01T00:00:{n:02d}.000Z", stack="prod", app="web", release="r1", message=f"event {n}")


def test_a_journal_write_whose_answer_was_lost_is_not_in_the_journal_twice(tmp_path: Path) -> None:
    # the API server took it, its answer was lost: the record kept unsent went again, met the new version's
    # conflict, and was appended to the chunk read back, which held it already
    kube = FakeKube()
    store = ReleaseStore(kube, "shop", "web", "prod", Cache(tmp_path, "prod", "web"))  # type: ignore[arg-type]
    store.append(_event(1))
    plain = kube.replace

    def lost_once(manifest: Any) -> Any:
        kube.replace = plain  # type: ignore[method-assign]
        plain(manifest)
        raise ClusterUnreachable("the Kubernetes API server did not answer: ReadTimeoutError")

    kube.replace = lost_once  # type: ignore[method-assign]
    store.append(_event(2))
    store.append(_event(3))
    assert [r.message for r in store.records("r1")] == ["event 1", "event 2", "event 3"]
    # a new process (the release resumed after a kill) sending what this one kept unsent: taken once
    again = ReleaseStore(kube, "shop", "web", "prod", Cache(tmp_path, "prod", "web"))  # type: ignore[arg-type]
    again.cache.keep_unsent(records.bounded(records.dump(_event(3))))
    again.append(_event(4))
    assert [r.message for r in again.records("r1")] == ["event 1", "event 2", "event 3", "event 4"]


def _unanswered_once(kube: FakeKube, name: str) -> None:
    """The next GET of ConfigMap ``name`` fails as an outage would (a time-out, a 5xx, a 429 of API priority and
    fairness); every other call is answered."""
    plain = kube.get

    def get(api_version: str, kind: str, obj_name: str, namespace: str | None = None) -> dict[str, Any] | None:
        if obj_name == name:
            kube.get = plain  # type: ignore[method-assign]
            raise ClusterUnreachable("the API server answered 429 Too Many Requests")
        return plain(api_version, kind, obj_name, namespace)

    kube.get = get  # type: ignore[method-assign]


def _rolled_back_elsewhere(tmp_path: Path, unsent: bool = False) -> FakeKube:
    """Machine m1 ran r1 to weight 30 (``unsent``: and kept a record of it in an outage); m2 resumed r1 and rolled it back."""
    kube = FakeKube()
    m1 = _store(kube, tmp_path / "m1")
    m1.load()
    m1.save(_state(updated="2026-12-01T00:01:00.000Z").model_copy(update={"weight": 30}))
    if unsent:
        kube.down = True
        m1.append(_record("r1", 1))
        kube.down = False
    m2 = _store(kube, tmp_path / "m2")
    assert m2.load() is not None
    m2.save(_state(phase=Phase.FAILED, updated="2026-12-01T00:02:00.000Z"))
    return kube


def test_a_state_read_in_an_outage_is_an_error_never_a_stale_copy_nor_no_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `canary resume` on m1, its state GET met a 429: it resumed its own stale Progressing at 30 over m2's rollback.
    # A machine without a copy took the outage for "no release": `abort` said there was none, a release began
    from types import SimpleNamespace

    from canary import api

    kube = _rolled_back_elsewhere(tmp_path)
    unread = r"the release state of web could not be read \(ConfigMap shop/canary-web-state: the API server answered 429"
    for machine in ("m1", "laptop"):  # a copy with nothing unsent (stale), and none
        _unanswered_once(kube, "canary-web-state")
        with pytest.raises(ClusterUnreachable, match=unread):
            _store(kube, tmp_path / machine).load()
    assert _cluster_state(kube)["phase"] == "Failed"
    store = _store(kube, tmp_path / "laptop")
    monkeypatch.setattr(api, "_store", lambda *a, **k: (SimpleNamespace(kube=kube), "web", store))
    _unanswered_once(kube, "canary-web-state")
    with pytest.raises(ClusterUnreachable, match=unread):
        api.abort("prod")  # not "has no release in progress"
    # `canary release` from the laptop: the state unread is no "nothing unfinished", and the stack file is not edited
    _held_by(kube, "m2", 4242, "r1", datetime.now(UTC) - timedelta(seconds=60))  # (a lease that ran out: not busy)
    ws = SimpleNamespace(kube=kube, name="prod", app=lambda name: "web", facts=lambda name: SimpleNamespace(stable=SimpleNamespace(image="web:1")),
                         namespace=lambda name: "shop", store=lambda name, namespace: store)
    monkeypatch.setattr(api, "open_stack", lambda *a, **k: ws)
    monkeypatch.setattr(api, "_preflight", lambda *a, **k: None)
    monkeypatch.setattr(api, "set_image", lambda *a, **k: pytest.fail("the stack file was edited"))
    _unanswered_once(kube, "canary-web-state")
    with pytest.raises(ClusterUnreachable, match=unread):
        api.release("prod", "web:2")


def test_a_state_written_at_an_unknown_version_never_replaces_another_machine_s(tmp_path: Path) -> None:
    # m1 kept a record unsent, so in an outage it goes on from its own copy (its writes the cluster has not taken);
    # its first save then got the cluster's version, whatever it was, and replaced m2's rollback with Progressing at 30
    kube = _rolled_back_elsewhere(tmp_path, unsent=True)
    again = _store(kube, tmp_path / "m1")  # `canary resume` on m1
    _unanswered_once(kube, "canary-web-state")
    loaded = again.load()
    assert loaded is not None and loaded.phase is Phase.PROGRESSING and loaded.weight == 30  # its own copy: it holds unsent records
    with pytest.raises(LeaseLost, match="written by another process since this machine last wrote it: it holds release r1 in phase Failed"):
        again.save(loaded.model_copy(update={"reapply": True}))
    assert _cluster_state(kube)["phase"] == "Failed" and not again.state_taken()
    assert not again.cache.unsent() and "event 1" in [r.message for r in again.records("r1")]  # its records went to the journal
    # this machine's own last write, its version unknown here (a copy read in an outage), is carried on from
    kube2 = FakeKube()
    mine = _store(kube2, tmp_path / "own")
    mine.save(_state())
    kube2.down = True
    mine.append(_record("r1", 2))
    kube2.down = False
    resumed = _store(kube2, tmp_path / "own")
    _unanswered_once(kube2, "canary-web-state")
    assert resumed.load() is not None
    resumed.save(_state(phase=Phase.ROLLING_BACK))
    assert _cluster_state(kube2)["phase"] == "RollingBack" and resumed.state_taken()


def test_status_in_an_outage_shows_this_machine_s_copy_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `canary status` is a display: in an outage it showed this machine's (maybe stale) copy as the release, or
    # "no release recorded" without one; now the copy is shown marked as such, and without one the outage is said
    from types import SimpleNamespace

    from click.testing import CliRunner

    from canary import api, cli

    kube = _rolled_back_elsewhere(tmp_path)
    stores = {"web": _store(kube, tmp_path / "m1")}
    monkeypatch.setattr(api, "_store", lambda *a, **k: (SimpleNamespace(kube=kube), "web", stores["web"]))
    kube.down = True
    found = api.status("prod")
    assert found is not None and found.local_copy and "did not answer" in found.unanswered
    assert found.state.phase is Phase.PROGRESSING and found.state.weight == 30 and not found.running and found.holder is None
    assert found.to_json()["cluster"] == {"answered": False, "error": found.unanswered, "state_from": "this machine's copy"}
    done = CliRunner().invoke(cli.main, ["status", "prod"])
    assert done.exit_code == 0, done.output
    assert "Progressing — THIS MACHINE'S COPY: the cluster did not answer" in done.output
    assert "this is the state as this machine last saved it, and it may be stale" in done.output
    stores["web"] = _store(kube, tmp_path / "laptop")  # no copy here
    done = CliRunner().invoke(cli.main, ["status", "prod"])  # (the console script says a CanaryError, exit 1)
    assert isinstance(done.exception, ClusterUnreachable), done.output
    assert "the release state of web could not be read (ConfigMap shop/canary-web-state" in str(done.exception)
    # the state read, the lease then not: the cluster's state, and nobody said to run it
    kube.down = False
    _unanswered_once(kube, "canary-web")
    found = api.status("prod")
    assert found is not None and not found.local_copy and found.unanswered and found.state.phase is Phase.FAILED
    assert found.to_json()["cluster"]["state_from"] == "the cluster"
    found = api.status("prod")
    assert found is not None and not found.unanswered and found.to_json()["cluster"] == {"answered": True, "error": None, "state_from": "the cluster"}


@pytest.mark.parametrize("name", ["canary-web-journal-r1-0-backup", "canary-web-journal-r1-0-2"])
def test_a_configmap_with_the_journal_s_labels_and_another_name_is_neither_read_nor_deleted(tmp_path: Path, name: str) -> None:
    # a copy kept by hand (kubectl get -o yaml, renamed, applied): its name's tail read as a chunk number made
    # `history` a ValueError traceback and compaction raise inside a release's start; or counted it as a chunk
    kube = FakeKube()
    store = _store(kube, tmp_path)
    store.append(records.Snapshot(time="2026-12-01T00:00:00.000Z", stack="prod", app="web", release="r1"))
    store.append(_record("r1", 1))
    copy = json.loads(json.dumps(kube.objects[("ConfigMap", "shop", "canary-web-journal-r1-0")]))
    copy["metadata"]["name"] = name
    kube.create(copy)
    assert [r.type for r in _store(kube, tmp_path / "b").records("r1")] == ["snapshot", "event"]
    for release in ("r2", "r3"):
        store.append(records.Snapshot(time="2026-12-01T00:00:00.000Z", stack="prod", app="web", release=release))
    assert store.releases() == ["r1", "r2", "r3"]
    assert store.compact(keep=2) == ["r1"]
    assert ("ConfigMap", "shop", name) in kube.objects and ("ConfigMap", "shop", "canary-web-journal-r1-0") not in kube.objects


@pytest.mark.parametrize("line", ["1", "[1]", '"text"', "null", "true"])
def test_a_journal_line_that_is_json_but_no_object_is_skipped(tmp_path: Path, line: str) -> None:
    record = json.dumps({"time": "2026-12-01T00:00:00.000Z", "release": "r0", "type": "event", "message": "m"})
    # canary 0.1's file journal
    (tmp_path / "legacy" / "prod").mkdir(parents=True)
    (tmp_path / "legacy" / "prod" / "journal.jsonl").write_text(f"{record}\n{line}\n")
    assert [r.message for r in Legacy(tmp_path / "legacy", "prod").records()] == ["m"]
    assert [r.message for r in Legacy(tmp_path / "legacy", "prod").records("r0")] == ["m"]
    # a chunk in the cluster
    kube = FakeKube()
    store = _store(kube, tmp_path / "cache")
    store.append(_record("r1", 0))
    chunk = kube.objects[("ConfigMap", "shop", "canary-web-journal-r1-0")]
    kube.replace({**chunk, "data": {"journal.jsonl": chunk["data"]["journal.jsonl"] + f"{line}\n"}})
    assert [r.message for r in _store(kube, tmp_path / "b").records("r1")] == ["event 0"]
    assert [r.message for r in _store(kube, tmp_path / "b").records()] == ["event 0"]
    # this machine's records kept unsent: sent on, the line skipped
    with (store.cache.dir / "unsent.jsonl").open("a") as f:
        f.write(f"{line}\n")
    store.append(_record("r1", 1))
    assert [r.message for r in _store(kube, tmp_path / "c").records("r1")] == ["event 0", "event 1"] and not store.cache.unsent()
