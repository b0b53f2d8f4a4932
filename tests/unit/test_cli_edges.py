"""The command line's edges without a cluster: the project a command opens, the journal in an outage, --json a
script can read, exit codes a CI script relies on, the Python API's project_dir, --lab's working copy."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from canary.core import records
from canary.core.records import Check, Effect, Outcome, Phase, ReleaseState, Tick, Verdict
from canary.errors import InvalidSpec
from canary.state.cache import Cache
from canary.state.store import ReleaseStore
from tests.unit.fakes import FakeKube

PROJECT = "name: shop\nruntime: python\n"


@pytest.fixture(autouse=True)
def _no_lab_nor_project_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CANARY_LAB_DIR", raising=False)
    monkeypatch.delenv("CANARY_PROJECT_DIR", raising=False)


def _run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``canary ARGS`` in this process, as the console script runs it: its exit code, stdout and stderr."""
    from canary import cli

    monkeypatch.setattr(sys, "argv", ["canary", *args])
    with pytest.raises(SystemExit) as info:
        cli.run()
    out = capsys.readouterr()
    code = info.value.code
    return code if isinstance(code, int) else (0 if code is None else 1), out.out, out.err


# --- the project a command opens ------------------------------------------------------------------

_OPENING = [("status", "dev"), ("history", "dev"), ("abort", "dev"), ("up", "dev"), ("release", "dev", "--image", "web:2"), ("resume", "dev"),
            ("backtest", "dev", "--release", "r1"), ("report", "dev", "--out", "r.png"), ("promote", "dev"), ("check", "dev")]


@pytest.mark.parametrize("args", _OPENING, ids=[a[0] for a in _OPENING])
def test_a_project_dir_without_pulumi_yaml_is_refused_and_left_as_it_was(args: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # the Automation API was handed the directory: it wrote a Pulumi.yaml of its own there (name: '') and the command exited 1
    empty = tmp_path / "emptyproj"
    empty.mkdir()
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(monkeypatch, capsys, *args, "--project-dir", str(empty))
    assert code == 2 and "--project-dir: holds no Pulumi.yaml" in err and str(empty) in err and "Traceback" not in err, err
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("name", ["Pulumi.yml", "Pulumi.json"])
def test_a_project_file_pulumi_reads_and_canary_does_not_is_named_with_what_to_do(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / name).write_text('{"name": "shop", "runtime": "python"}')
    code, _, err = _run(monkeypatch, capsys, "status", "dev", "--project-dir", str(tmp_path))
    assert code == 2 and f"--project-dir: holds {name}, not Pulumi.yaml" in err and "rename them" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_pulumi_yml_project_is_named_when_found_not_passed_over_for_a_parent_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # run inside it, canary took the parent's Pulumi.yaml project: another project than the one pulumi reads there
    (tmp_path / "Pulumi.yaml").write_text(PROJECT)
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "Pulumi.yml").write_text("name: inner\nruntime: python\n")
    monkeypatch.chdir(inner)
    monkeypatch.delenv("CANARY_PROJECT_DIR", raising=False)
    code, _, err = _run(monkeypatch, capsys, "status", "dev")
    assert code == 2 and "holds Pulumi.yml, not Pulumi.yaml" in err and str(inner) in err, err


def test_a_canary_project_dir_that_does_not_exist_is_refused_naming_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CANARY_PROJECT_DIR", str(tmp_path / "nonexistent"))
    code, _, err = _run(monkeypatch, capsys, "status", "dev")
    assert code == 2 and "CANARY_PROJECT_DIR: does not exist" in err and "Traceback" not in err, err
    assert not (tmp_path / "nonexistent").exists()


@pytest.mark.parametrize("args", [("status", "dev"), ("validate", "dev")], ids=["status", "validate"])
def test_a_pulumi_yaml_that_does_not_parse_is_refused_naming_its_line(args: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # a traceback (yaml ParserError); validate read it as empty and looked for the stack file beside it, not in its stackConfigDir
    (tmp_path / "Pulumi.yaml").write_text("name: [\nstackConfigDir: stacks\n")
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "Pulumi.dev.yaml").write_text("config: {}\n")
    code, _, err = _run(monkeypatch, capsys, *args, "--project-dir", str(tmp_path))
    assert code == 2 and "--project-dir: its Pulumi.yaml does not parse: line " in err and "Traceback" not in err, err
    assert "no config file" not in err
    assert (tmp_path / "Pulumi.yaml").read_text() == "name: [\nstackConfigDir: stacks\n"


def test_project_settings_refuse_a_pulumi_yaml_that_does_not_parse(tmp_path: Path) -> None:
    from canary.adapters import stackfile

    assert stackfile.project_settings(tmp_path) == {}  # none at all: nothing to read
    (tmp_path / "Pulumi.yaml").write_text("name: shop\nstackConfigDir: [\n")
    with pytest.raises(InvalidSpec, match=r"Pulumi.yaml: does not parse: line 3"):
        stackfile.project_settings(tmp_path)


def test_a_lab_that_is_not_up_is_said_to_be_so_and_nothing_is_made_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "Pulumi.yaml").write_text(PROJECT)
    code, _, err = _run(monkeypatch, capsys, "status", "lab", "--lab", "--project-dir", str(tmp_path))
    assert code == 2 and "--lab: the lab is not up: run canary lab up" in err and "Traceback" not in err, err
    assert not (tmp_path / ".lab").exists()  # (the lab's environment wrote its passphrase there)


_LAB_COMMANDS = [("demo",), ("lab", "status"), ("lab", "status", "--json"), ("lab", "up"), ("lab", "down")]


@pytest.mark.parametrize("args", _LAB_COMMANDS, ids=[" ".join(a) for a in _LAB_COMMANDS])
@pytest.mark.parametrize("given", ["option", "variable"])
def test_the_lab_s_commands_refuse_a_project_dir_that_does_not_exist_before_touching_a_lab(
        args: tuple[str, ...], given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # `demo` said "the lab is not running" (exit 1) and `lab status` described a lab at /nonexistent/.lab, where every other command exits 2
    from canary.lab import cluster

    for name in ("up", "down", "status", "pods", "running"):
        monkeypatch.setattr(cluster, name, lambda *a, _name=name, **k: pytest.fail(f"cluster.{_name} reached"))
    missing = tmp_path / "nonexistent"
    monkeypatch.chdir(tmp_path)
    if given == "option":
        code, out, err = _run(monkeypatch, capsys, *args, "--project-dir", str(missing))
    else:
        monkeypatch.setenv("CANARY_PROJECT_DIR", str(missing))
        code, out, err = _run(monkeypatch, capsys, *args)
    option = "--project-dir" if given == "option" else "CANARY_PROJECT_DIR"
    assert code == 2 and out == "" and f"{option}: does not exist" in err and str(missing) in err and "Traceback" not in err, err
    assert not missing.exists()


# --- the Python API's project_dir -------------------------------------------------------------------


class _Opened(Exception):
    """The stack adapter reached: what the test needed to see."""


_CALLS = {
    "status": lambda api, d: api.status("dev", project_dir=d),
    "history": lambda api, d: api.history("dev", project_dir=d),
    "abort": lambda api, d: api.abort("dev", project_dir=d),
    "promote": lambda api, d: api.promote("dev", project_dir=d),
    "up": lambda api, d: api.up("dev", project_dir=d),
    "release": lambda api, d: api.release("dev", "web:2", project_dir=d),
    "resume": lambda api, d: api.resume("dev", project_dir=d),
    "report": lambda api, d: api.report("dev", out=str(Path(d) / "r.png"), project_dir=d),
    "backtest": lambda api, d: api.backtest("dev", release_id="r1", project_dir=d),
}


@pytest.mark.parametrize("call", sorted(_CALLS))
def test_the_api_takes_project_dir_as_a_str_as_the_readme_shows(call: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # api.status("dev", project_dir=".lab/project"): AttributeError: 'str' object has no attribute 'resolve'
    from canary import api

    (tmp_path / "Pulumi.yaml").write_text(PROJECT)
    opened: list[Path] = []

    def stack(project_dir: Path, name: str, env: Any = None) -> Any:
        opened.append(project_dir)
        raise _Opened

    monkeypatch.setattr(api, "Stack", stack)
    monkeypatch.chdir(tmp_path.parent)
    with pytest.raises(_Opened):
        _CALLS[call](api, tmp_path.name)
    assert opened == [tmp_path.resolve()]


def test_set_image_takes_project_dir_as_a_str(tmp_path: Path) -> None:
    from canary import api

    (tmp_path / "Pulumi.yaml").write_text(PROJECT)
    (tmp_path / "Pulumi.dev.yaml").write_text("config:\n  canary:app: {name: web, image: 'web:1'}\n  canary:gateway: {parentRefs: [{name: public}]}\n"
                                              "  canary:analysis: {stepWeight: 50, skipAnalysis: true}\n")
    assert api.set_image("dev", "web:2", project_dir=str(tmp_path)) == ("web", "web:1")
    assert "web:2" in (tmp_path / "Pulumi.dev.yaml").read_text()


# --- --lab and --project-dir -------------------------------------------------------------------------


def test_with_lab_the_stack_files_are_the_labs_working_copy_unless_project_dir_names_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a --project-dir given is the project used, with the lab's backend and cluster (the lab's tests give each test
    # a project of its own); without one, the lab's working copy, so that the repository's files never change
    from canary import cli
    from canary.lab.layout import Layout

    monkeypatch.delenv("CANARY_LAB_DIR", raising=False)
    repo = tmp_path / "repo"
    (repo / ".lab" / "project").mkdir(parents=True)
    (repo / "Pulumi.yaml").write_text(PROJECT)
    (repo / ".lab" / "project" / "Pulumi.yaml").write_text(PROJECT)
    monkeypatch.setattr(Layout, "pulumi_env", lambda self: {"PULUMI_BACKEND_URL": "file://lab"})
    monkeypatch.chdir(repo)
    where = cli.Where(None, True)
    assert where.project_dir == (repo / ".lab" / "project").resolve()
    assert where.kwargs["env"]["PULUMI_BACKEND_URL"] == "file://lab"
    assert cli.Where(repo, True).project_dir == repo and cli.Where(repo, True).kwargs["env"]["PULUMI_BACKEND_URL"] == "file://lab"
    assert cli.Where(repo, False).project_dir == repo and cli.Where(repo, False).env is None


# --- the journal when the cluster does not answer ---------------------------------------------------


def _record(release: str, n: int) -> records.EventRecord:
    return records.EventRecord(time=f"2026-12-01T00:00:{n:02d}.000Z", stack="dev", app="web", release=release, message=f"event {n}")


def _down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: int) -> ReleaseStore:
    """The app's store with the cluster not answering, this machine keeping ``kept`` records of release r1."""
    from canary import api

    kube = FakeKube()
    store = ReleaseStore(kube, "shop", "web", "dev", Cache(tmp_path / "cache", "dev", "web"))  # type: ignore[arg-type]
    for n in range(kept):
        store.append(_record("r1", n))
    kube.down = True
    ws = SimpleNamespace(kube=kube, project_dir=tmp_path, name="dev", apps=lambda: ["web"])
    monkeypatch.setattr(api, "_store", lambda *a, **k: (ws, "web", store))
    return store


def test_the_store_says_when_the_journal_is_this_machines_copy(tmp_path: Path) -> None:
    kube = FakeKube()
    store = ReleaseStore(kube, "shop", "web", "dev", Cache(tmp_path, "dev", "web"))  # type: ignore[arg-type]
    store.append(_record("r1", 1))
    found = store.records()
    assert [r.message for r in found] == ["event 1"] and getattr(found, "unanswered", "missing") is None
    kube.down = True
    found = store.records()
    assert [r.message for r in found] == ["event 1"] and "did not answer" in str(getattr(found, "unanswered", ""))


def test_history_in_an_outage_without_a_copy_exits_1_saying_the_journal_could_not_be_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # no output, exit 0: read as "never released"
    _down(tmp_path, monkeypatch, kept=0)
    code, out, err = _run(monkeypatch, capsys, "history", "dev")
    assert code == 1 and out == "" and "the journal of web could not be read" in err and "did not answer" in err, err


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_history_in_an_outage_shows_this_machines_copy_marked_as_such(as_json: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _down(tmp_path, monkeypatch, kept=2)
    code, out, err = _run(monkeypatch, capsys, "history", "dev", *(["--json"] if as_json else []))
    assert code == 0, err
    if as_json:
        found = json.loads(out)
        assert [r["message"] for r in found] == ["event 0", "event 1"] and {r["from"] for r in found} == {"this machine's copy"}
        assert "the cluster did not answer" in err
    else:
        assert out.startswith("THIS MACHINE'S COPY: the cluster did not answer") and "event 1" in out, out


@pytest.mark.parametrize("kept", [0, 2], ids=["no-copy", "a-copy"])
def test_report_in_an_outage_exits_1_saying_the_cluster_did_not_answer(kept: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # "--release: no release is recorded", exit 2: as if the app had never been released
    _down(tmp_path, monkeypatch, kept)
    code, _, err = _run(monkeypatch, capsys, "report", "dev", "--out", str(tmp_path / "r.png"))
    assert code == 1 and "did not answer" in err and "no release is recorded" not in err, err
    assert not (tmp_path / "r.png").exists()


def test_backtest_of_a_release_in_an_outage_exits_1_saying_the_cluster_did_not_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from canary import api

    store = _down(tmp_path, monkeypatch, kept=2)
    spec = SimpleNamespace(prometheus=SimpleNamespace(address="http://127.0.0.1:9"), analysis=SimpleNamespace(interval=timedelta(minutes=1)))
    ws = SimpleNamespace(project_dir=tmp_path, name="dev", apps=lambda: ["web"], app=lambda name: "web", namespace=lambda name: "shop",
                         facts=lambda name: SimpleNamespace(spec=spec, fields=""), store=lambda name, namespace: store)
    monkeypatch.setattr(api, "open_stack", lambda *a, **k: ws)
    monkeypatch.setattr(api, "_provider_factory", lambda spec: (lambda address: SimpleNamespace(is_online=lambda: True)))
    code, _, err = _run(monkeypatch, capsys, "backtest", "dev", "--release", "r1")
    assert code == 1 and "did not answer" in err and "replayed" in err, err


def test_history_of_a_release_the_journal_does_not_hold_exits_2_naming_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                               capsys: pytest.CaptureFixture[str]) -> None:
    store = _down(tmp_path, monkeypatch, kept=1)
    store.kube.down = False  # type: ignore[attr-defined]
    code, out, err = _run(monkeypatch, capsys, "history", "dev", "--release", "nosuch")
    assert code == 2 and out == "" and "--release: has no journal for app web" in err and "(got nosuch)" in err, err
    code, out, _ = _run(monkeypatch, capsys, "history", "dev", "--release", "r1")
    assert code == 0 and "event 0" in out


# --- --json a script can read -------------------------------------------------------------------------


def _strict(text: str) -> Any:
    """JSON as every other parser reads it: no Infinity, -Infinity or NaN."""
    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


_SLOW = Check(metric="request-duration", query="histogram_quantile(0.99, …)", value=float("inf"), stable_value=float("-inf"), bound=float("nan"),
              verdict=Verdict.FAIL, effect=Effect.FAIL, reason="p99 in the +Inf bucket")


def _state(phase: Phase, rollback_pending: bool = False, checks: tuple[Check, ...] = ()) -> ReleaseState:
    return ReleaseState(release="r1", stack="dev", app="web", namespace="shop", phase=phase, rollback_pending=rollback_pending, last_checks=checks)


def _status(monkeypatch: pytest.MonkeyPatch, state: ReleaseState) -> None:
    from canary import api

    monkeypatch.setattr(api, "status", lambda *a, **k: api.Status(state, False, None))


def test_status_json_writes_an_infinite_value_as_a_string_any_parser_reads(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # "value": Infinity — refused by JSON.parse, jq, Go's encoding/json: the slow canary's status unreadable to a script
    _status(monkeypatch, _state(Phase.PROGRESSING, checks=(_SLOW,)))
    code, out, err = _run(monkeypatch, capsys, "status", "dev", "--json")
    assert code == 0, err
    [check] = _strict(out)["last_checks"]
    assert (check["value"], check["stable_value"], check["bound"]) == ("+Inf", "-Inf", "NaN")


def test_history_json_writes_an_infinite_value_as_a_string_any_parser_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    store = _down(tmp_path, monkeypatch, kept=0)
    store.kube.down = False  # type: ignore[attr-defined]
    store.append(Tick(time="2026-12-01T00:01:00.000Z", stack="dev", app="web", release="r1", outcome=Outcome.FAIL, failed_in_row=1, threshold=2,
                      reason="slow", checks=(_SLOW,), score=float("-inf")))
    code, out, err = _run(monkeypatch, capsys, "history", "dev", "--json")
    assert code == 0, err
    [tick] = _strict(out)
    assert tick["checks"][0]["value"] == "+Inf" and tick["score"] == "-Inf"


def test_the_json_writer_leaves_finite_numbers_and_other_values_alone() -> None:
    data = {"a": [1, 2.5, float("inf"), (float("-inf"), None)], "b": {"c": float("nan"), "d": "Infinity", "e": True}}
    assert records.finite_json(data) == {"a": [1, 2.5, "+Inf", ["-Inf", None]], "b": {"c": "NaN", "d": "Infinity", "e": True}}


# --- status --json's exit code -----------------------------------------------------------------------


@pytest.mark.parametrize(("phase", "pending", "code"), [
    (Phase.INITIALIZING, False, None), (Phase.PROGRESSING, False, None), (Phase.WAITING_PROMOTION, False, None), (Phase.PROMOTING, False, None),
    (Phase.ROLLING_BACK, False, None), (Phase.ROLLING_BACK, True, 4), (Phase.SUCCEEDED, False, 0), (Phase.FAILED, False, 1),
    (Phase.ABORTED, False, 1), (Phase.PROMOTED_UNVERIFIED, False, 5)])
def test_status_json_has_no_exit_code_while_the_release_is_not_finished(phase: Phase, pending: bool, code: int | None, monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # "exit_code": 1 of a release still Progressing: a CI script read a running release as failed
    _status(monkeypatch, _state(phase, pending))
    _, out, err = _run(monkeypatch, capsys, "status", "dev", "--json")
    assert _strict(out)["exit_code"] == code, err


@pytest.mark.parametrize("owed", [True, False])
def test_status_says_when_an_ended_release_still_owes_its_post_rollout_hooks(owed: bool, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # only `status --json` showed it: a person reading the text never learnt that `resume` would call them
    _status(monkeypatch, _state(Phase.SUCCEEDED).model_copy(update={"post_rollout_owed": owed}))
    code, out, err = _run(monkeypatch, capsys, "status", "dev")
    assert code == 0, err
    assert ("post-rollout webhooks were not called" in out and "canary resume dev" in out) is owed, out


# --- validate ------------------------------------------------------------------------------------------


def test_a_secret_in_plain_text_is_reported_with_every_other_problem_of_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # the plain token was the only problem reported: each fix revealed the next
    path = tmp_path / "x.yaml"
    path.write_text("config:\n  canary:app: {name: web, image: 'web:1'}\n  canary:gateway: {parentRefs: [{name: public}]}\n"
                    "  canary:prometheus: {address: 'http://prometheus:9090', token: s3cr3t-token-value}\n"
                    "  canary:analysis: {stepWeight: 0, threshold: 0, metrics: [{name: request-error-rate, thresholdRange: {max: 1}}]}\n")
    code, out, err = _run(monkeypatch, capsys, "validate", "--file", str(path))
    assert code == 2 and out == "", out
    assert "prometheus.token: must be a Pulumi secret" in err and "analysis.stepWeight" in err and "analysis.threshold" in err, err
    assert "s3cr3t" not in err


def test_a_problem_beside_a_plain_secret_never_quotes_it() -> None:
    from canary.core import config

    values = {"canary:app": {"name": "web", "image": "web:1"}, "canary:gateway": {"parentRefs": [{"name": "public"}]},
              "canary:prometheus": {"address": "http://prometheus:9090", "token": "s3cr3t-token-value", "headers": {"X-Key": "hdr-s3cr3t"},
                                    "tokn": "s3cr3t-token-value"},
              "canary:analysis": {"stepWeight": 10, "metrics": [{"name": "request-error-rate", "thresholdRange": {"max": 1}}]}}
    for read in (lambda: config.from_file_values(values, "x.yaml"), lambda: config.from_config(values)):  # validate's, and up's
        with pytest.raises(InvalidSpec) as info:
            read()
        text = str(info.value)
        assert "prometheus.token: must be a Pulumi secret" in text and "prometheus.headers" in text and "tokn" in text, text
        assert "s3cr3t" not in text


# --- backtest: a journal's times ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["decision", "snapshot", "state"])
def test_backtest_refuses_any_record_whose_time_it_cannot_read_as_report_does(kind: str) -> None:
    # only ticks were checked: a decision out of place misplaced the shifts and gates' answers between ticks, exit 0
    from canary.core import backtest

    base = {"stack": "dev", "app": "web", "release": "r1"}
    tick = Tick(time="2026-12-01T00:01:00.000Z", outcome=Outcome.ADVANCE, failed_in_row=0, threshold=2, reason="ok", **base)
    other = {"decision": records.Decision(time="garbage", message="promote", **base),
             "snapshot": records.Snapshot(time="garbage", **base),
             "state": records.StateChange(time="garbage", message="analysis starts", **base)}[kind]
    with pytest.raises(InvalidSpec, match=rf"--release: has a {kind} without a readable time in its journal \(time 'garbage'"):
        backtest.recorded_tick_times([tick, other])
    with pytest.raises(InvalidSpec, match=rf"has a {kind} without a readable time"):
        backtest.replay_release(SimpleNamespace(), lambda when: (lambda address: None), [tick, other])  # type: ignore[arg-type]
    assert backtest.recorded_tick_times([tick]) == [backtest._time(tick.time)]


# --- help -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "history"])
def test_the_help_says_where_the_project_comes_from_and_what_json_prints(command: str, monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(monkeypatch, capsys, command, "--help")
    flat = " ".join(out.split())
    assert code == 0 and "$CANARY_PROJECT_DIR" in flat and "Print the " in flat.split("--json", 1)[1].split("--", 1)[0], flat


# --- check: an app the program declares ------------------------------------------------------------------------------------

_COMPONENT_STACK = """\
config:
  canary:prometheus: {address: "http://prometheus:9090"}
  canary:apps:
    orders:
      analysis:
        stepWeight: 10
        metrics: [{name: request-error-rate, thresholdRange: {max: 1}}]
"""


@pytest.mark.parametrize("args", [("--app", "orders"), ()], ids=["named", "the-only-app"])
def test_check_of_an_app_the_program_declares_says_so_and_what_runs_its_queries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                                capsys: pytest.CaptureFixture[str], args: tuple[str, ...]) -> None:
    # it said `--app must name an app the stack file declares (orders)`: it listed the very app it refused
    (tmp_path / "Pulumi.yaml").write_text(PROJECT)
    (tmp_path / "Pulumi.prod.yaml").write_text(_COMPONENT_STACK)
    code, out, err = _run(monkeypatch, capsys, "check", "prod", *args, "--project-dir", str(tmp_path))
    assert code == 2 and out == "", out
    assert "app orders: is declared by the program (its CanaryDeployment), not the stack file" in err, err
    assert "canary release prod --app orders --image" in err and "declares (orders)" not in err, err


def test_check_of_an_app_no_one_declares_lists_the_stack_file_s_apps_and_names_the_program_s_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "Pulumi.yaml").write_text(PROJECT)
    (tmp_path / "Pulumi.prod.yaml").write_text(_COMPONENT_STACK.replace(
        "  canary:apps:\n", "  canary:apps:\n    web:\n      app: {name: web, namespace: shop, image: 'web:1'}\n"
        "      gateway: {parentRefs: [{name: public}]}\n      analysis: {stepWeight: 10, metrics: [{name: request-error-rate, thresholdRange: {max: 1}}]}\n"))
    code, _, err = _run(monkeypatch, capsys, "check", "prod", "--app", "payments", "--project-dir", str(tmp_path))
    assert code == 2 and "--app must name an app the stack file declares (web); orders: declared by the program" in err, err


_SECRET_ADDRESS_STACK = """\
config:
  canary:prometheus: {address: PROMETHEUS}
  canary:metricTemplates:
    errors: {provider: {address: TEMPLATE}, query: 'sum(rate(errors_total{pod=~"{{ target }}-.*"}[{{ interval }}]))'}
  canary:app: {name: web, namespace: shop, image: 'web:1'}
  canary:gateway: {parentRefs: [{name: public}]}
  canary:analysis:
    stepWeight: 10
    metrics: [{name: errors, templateRef: {name: errors}, thresholdRange: {max: 1}}]
"""


@pytest.mark.parametrize(("prometheus", "template", "fields"), [
    ("{secure: v1:AAAA}", '"http://127.0.0.1:9"', "prometheus.address: is a Pulumi secret"),
    ('"http://127.0.0.1:9"', "{secure: v1:AAAA}", "metricTemplates.errors.provider.address: is a Pulumi secret"),
    ("{secure: v1:AAAA}", "{secure: v1:BBBB}", "prometheus.address, metricTemplates.errors.provider.address: are Pulumi secrets"),
], ids=["prometheus", "template", "both"])
def test_check_refuses_an_address_it_cannot_decrypt_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                             prometheus: str, template: str, fields: str) -> None:
    # the README lets the address be a Pulumi secret: check queried the placeholder, "Prometheus at :// could not be reached", exit 1
    (tmp_path / "Pulumi.yaml").write_text(PROJECT)
    (tmp_path / "Pulumi.prod.yaml").write_text(_SECRET_ADDRESS_STACK.replace("PROMETHEUS", prometheus).replace("TEMPLATE", template))
    code, out, err = _run(monkeypatch, capsys, "check", "prod", "--project-dir", str(tmp_path))
    assert code == 2 and out == "" and f"stack prod: {fields}, which canary check cannot decrypt" in err, err
    assert "canary release prod --image" in err and "://" not in err and "v1:" not in err, err


class _Series:
    """A Prometheus answering ``series_labels`` with ``series``, recording the selectors asked."""

    def __init__(self, series: list[dict[str, str]]) -> None:
        self.series = series
        self.selectors: list[str] = []

    def series_labels(self, selector: str) -> list[dict[str, str]]:
        self.selectors.append(selector)
        return self.series


def test_check_looks_for_the_app_s_series_by_the_namespace_label() -> None:
    """Before, ``canary check`` asked for namespace="prod" whatever prometheus.namespaceLabel said: under the classic
    kubernetes_sd relabelling it found none, and said only that the pod label could not be checked."""
    from canary import cli
    from tests.helpers import set_path, spec_with

    classic = spec_with(set_path("prometheus.namespaceLabel", "kubernetes_namespace"), set_path("prometheus.podLabel", "pod"))
    prometheus = _Series([{"__name__": "http_requests_total", "kubernetes_namespace": "prod", "kubernetes_pod_name": "web-stable-1"}])
    assert cli._pod_label_note(classic, prometheus) == \
        "the app's http_requests_total series have no pod label; they carry kubernetes_pod_name: set prometheus.podLabel to it"
    assert prometheus.selectors == ['http_requests_total{kubernetes_namespace="prod"}']
    assert "is prometheus.namespaceLabel the label your Prometheus puts a pod's namespace in?" in cli._pod_label_note(spec_with(), _Series([]))
