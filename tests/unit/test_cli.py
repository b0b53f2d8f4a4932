"""The command line as a user meets it without a cluster: validate, import-flagger, arguments, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from canary.adapters import stackfile
from canary.errors import InvalidSpec, StackBusy, StackLocked, StackNotFound
from tests.conftest import FIXTURES, ROOT


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "canary", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "lab"])
def test_validate_stack(stack: str) -> None:
    done = _cli("validate", stack)
    assert done.returncode == 0, done.stderr
    assert f"Pulumi.{stack}.yaml: valid — app " in done.stdout


def test_validate_file_anywhere(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text((ROOT / "stacks" / "Pulumi.prod.yaml").read_text().replace("threshold: 3", "threshold: 0"))
    done = _cli("validate", "--file", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert "analysis.threshold" in done.stderr and "greater than or equal to 1" in done.stderr and "(got 0)" in done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr


def test_validate_names_the_path_of_a_mistyped_pod_template_field(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "config:\n"
        "  canary:app:\n"
        "    name: web\n"
        "    template:\n"
        "      spec:\n"
        "        containers:\n"
        "          - {name: web, image: web:1, imagePullPolicyy: Always}\n"
        "  canary:gateway: {parentRefs: [{name: public}]}\n"
        "  canary:analysis: {stepWeight: 10}\n"
    )
    done = _cli("validate", "--file", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert "app.template.spec.containers[0].imagePullPolicyy: is not a field of Container (did you mean imagePullPolicy?)" in done.stderr


def test_validate_says_a_top_level_analysis_without_app_judges_the_programs_apps(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.shared.yaml"
    path.write_text("config:\n"
                    "  canary:prometheus: {address: 'http://prometheus:9090'}\n"
                    "  canary:analysis: {stepWeight: 25, metrics: [{name: request-error-rate, thresholdRange: {max: 1}}]}\n")
    done = _cli("validate", "--file", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Pulumi.shared.yaml: valid — every app the program's components declare, weights [25, 50]"), done.stdout
    assert "app app" not in done.stdout


_WHOLE_SECRET_PROMETHEUS = (
    "config:\n"
    "  canary:app: {name: web, image: 'registry.example.com/shop/web:1.0.0'}\n"
    "  canary:gateway: {parentRefs: [{name: public}]}\n"
    "  canary:prometheus:\n"
    "    secure: v1:Zm9vYmFy:YmFy\n"
    "  canary:analysis: {stepWeight: 10, metrics: [{name: request-error-rate, thresholdRange: {max: 1}}]}\n"
)


def test_validate_says_a_whole_object_secret_is_not_checked_rather_than_refusing_it(tmp_path: Path) -> None:
    # pulumi config set --secret canary:prometheus '{"address": …, "token": …}': canary up decrypts and accepts it
    path = tmp_path / "Pulumi.whole.yaml"
    path.write_text(_WHOLE_SECRET_PROMETHEUS)
    done = _cli("validate", "--file", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Pulumi.whole.yaml: valid, but canary:prometheus not checked — app default/web")
    assert "canary:prometheus is not checked: it is a secret as a whole" in done.stderr
    assert "canary up and pulumi up decrypt it" in done.stderr and "pulumi config set --path canary:prometheus.<field>" in done.stderr
    assert "valid dictionary" not in done.stderr and "Zm9v" not in done.stdout + done.stderr


def test_validate_leaves_a_judge_s_scrape_rule_to_up_when_prometheus_is_a_secret_as_a_whole(tmp_path: Path) -> None:
    # the secret may hold scrapeInterval: 1s, which canary up (decrypting) accepts; validate measured the step against 15s
    path = tmp_path / "Pulumi.whole.yaml"
    path.write_text(_WHOLE_SECRET_PROMETHEUS.replace("{name: request-error-rate, thresholdRange: {max: 1}}",
                                                     "{name: request-error-rate, thresholdRange: {max: 1}, interval: 30s, "
                                                     "judge: {step: 2s, minSamples: 6}}"))
    done = _cli("validate", "--file", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "valid, but canary:prometheus not checked" in done.stdout, done.stdout
    plain = path.read_text().replace("  canary:prometheus:\n    secure: v1:Zm9vYmFy:YmFy\n", "  canary:prometheus: {address: 'http://prometheus:9090'}\n")
    path.write_text(plain)
    done = _cli("validate", "--file", str(path), cwd=tmp_path)  # a plain one without scrapeInterval: 15s, and the rule holds
    assert done.returncode == 2 and "judge.step" in done.stderr and "twice the scrape interval" in done.stderr, done.stderr


def test_validate_takes_a_webhook_url_held_as_a_secret_as_canary_up_does(tmp_path: Path) -> None:
    # pulumi config set --secret --path canary:analysis.webhooks[0].url: it was refused as "<encrypted>" is no URL
    path = tmp_path / "Pulumi.sec.yaml"
    path.write_text("config:\n  canary:app: {name: web, image: 'registry.example.com/shop/web:1.0.0'}\n"
                    "  canary:gateway: {parentRefs: [{name: public}]}\n  canary:prometheus: {address: 'http://prometheus:9090'}\n"
                    "  canary:analysis:\n    stepWeight: 10\n    metrics: [{name: request-error-rate, thresholdRange: {max: 1}}]\n"
                    "    webhooks:\n      - name: gate\n        type: confirm-promotion\n        url:\n          secure: v1:Zm9vYmFy:YmFy\n")
    done = _cli("validate", "--file", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 webhooks" in done.stdout


@pytest.mark.parametrize("command", [("validate", "--file"), ("import-flagger",)], ids=["validate", "import-flagger"])
def test_a_file_that_is_not_utf8_is_refused_naming_it(tmp_path: Path, command: tuple[str, ...]) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00bad")
    done = _cli(*command, str(path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and str(path) in done.stderr and "UTF-8" in done.stderr, done.stderr


def test_validate_takes_a_reference_to_templates_held_as_a_whole_object_secret(tmp_path: Path) -> None:
    # canary:metricTemplates held as one secret: the metric naming one of them was refused ("none defined")
    path = tmp_path / "Pulumi.whole.yaml"
    path.write_text(_WHOLE_SECRET_PROMETHEUS.replace("  canary:prometheus:\n    secure: v1:Zm9vYmFy:YmFy\n",
                                                     "  canary:prometheus: {address: 'http://prometheus:9090'}\n"
                                                     "  canary:metricTemplates:\n    secure: v1:Zm9vYmFy:YmFy\n")
                    .replace("{name: request-error-rate, thresholdRange: {max: 1}}", "{name: errors, templateRef: {name: error-rate}, thresholdRange: {max: 1}}"))
    done = _cli("validate", "--file", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "valid, but canary:metricTemplates not checked" in done.stdout, done.stdout


def test_validate_still_refuses_what_it_can_check_beside_a_whole_object_secret(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.whole.yaml"
    path.write_text(_WHOLE_SECRET_PROMETHEUS.replace("stepWeight: 10", "stepWeight: 0"))
    done = _cli("validate", "--file", str(path), cwd=tmp_path)
    assert done.returncode == 2 and "analysis.stepWeight" in done.stderr and "prometheus" not in done.stderr


def test_a_command_that_uses_the_file_refuses_a_whole_object_secret_saying_why(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.whole.yaml"
    path.write_text(_WHOLE_SECRET_PROMETHEUS)
    with pytest.raises(InvalidSpec) as info:
        stackfile.load_stack_file(path)
    [problem] = info.value.problems
    assert problem.field == "prometheus" and "is a secret as a whole" in problem.rule and "pulumi config rm canary:prometheus" in problem.rule


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["validate", "nosuchstack"], "no config file Pulumi.nosuchstack.yaml"),
        (["validate"], "give either STACK or --file"),
        (["validate", "prod", "--file", "x.yaml"], "give either STACK or --file"),
        (["validate", "--bogus"], "No such option"),
        (["nosuchcommand"], "No such command"),
        (["release", "prod"], "Missing option '--image'"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], message: str) -> None:
    done = _cli(*args)
    assert done.returncode == 2
    assert message in done.stderr


def test_validate_from_outside_the_project_with_project_dir(tmp_path: Path) -> None:
    done = _cli("validate", "prod", "--project-dir", str(ROOT), cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_outside_any_project_a_command_says_where_it_looked(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "canary", "validate", "prod"], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          env={k: v for k, v in __import__("os").environ.items() if k != "CANARY_PROJECT_DIR"})
    assert done.returncode == 2 and "--project-dir" in done.stderr and "Traceback" not in done.stderr


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "canary"
    done = subprocess.run([str(exe), "validate", "lab"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr


def test_import_flagger_prints_a_stack_file_that_validates(tmp_path: Path) -> None:
    done = _cli("import-flagger", str(FIXTURES / "flagger-canary.yaml"), str(FIXTURES / "flagger-metric-template.yaml"),
                "--stable-image", "registry.example.com/team/podinfo:6.0.0", "--gateway", "public.gateway:https")
    assert done.returncode == 0, done.stderr
    path = tmp_path / "Pulumi.imported.yaml"
    path.write_text(done.stdout)
    spec = stackfile.load_stack_file(path)
    assert spec.app is not None and spec.app.image == "registry.example.com/team/podinfo:6.0.0"
    assert spec.analysis is not None and spec.analysis.failure_limit == spec.analysis.threshold
    assert "note:" in done.stderr


def test_a_refused_import_flagger_prints_the_notes_gathered_before_the_error(tmp_path: Path) -> None:
    # the Canary's only check is its load test, which canary runs in the background and never judges: the note saying
    # so explains the refusal, and was lost with it
    canary = (FIXTURES / "flagger-canary.yaml").read_text()
    start = canary.index("    metrics:\n")
    path = tmp_path / "canary.yaml"
    path.write_text(canary[:start] + canary[canary.index("    webhooks:\n"):])
    done = _cli("import-flagger", str(path), "--out", str(tmp_path / "Pulumi.prod.yaml"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    note = done.stderr.find("note: spec.analysis.webhooks[0].metadata.cmd: runs in the background")
    error = done.stderr.find("invalid imported Flagger manifests:")
    assert 0 <= note < error and "spec.analysis.metrics" in done.stderr[error:], done.stderr
    assert not (tmp_path / "Pulumi.prod.yaml").exists()


@pytest.mark.parametrize(
    ("error", "code"),
    [(StackNotFound("stack nosuch: no such stack in the Pulumi backend"), 2), (StackBusy("app web is busy: release r1 by pid 1 on h"), 3),
     (StackLocked("stack prod is locked by a Pulumi update"), 3)],
)
@pytest.mark.parametrize("command", ["up", "release", "resume", "status", "abort"])
def test_library_errors_become_exit_codes_and_a_message(command: str, error: Exception, code: int, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from canary import api, cli

    def fails(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(api, command, fails)
    monkeypatch.setattr(sys, "argv", ["canary", command, "nosuch", *(["--image", "web:1"] if command == "release" else [])])
    with pytest.raises(SystemExit) as info:
        cli.run()
    err = capsys.readouterr().err
    assert info.value.code == code and str(error) in err and "Traceback" not in err


def test_promote_force_needs_a_reason(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from canary import api, cli

    monkeypatch.setattr(api, "_request", lambda *a, **k: "r1")
    monkeypatch.setattr(sys, "argv", ["canary", "promote", "prod", "--force"])
    with pytest.raises(SystemExit) as info:
        cli.run()
    assert info.value.code == 2 and "--reason" in capsys.readouterr().err


def test_promote_with_both_force_and_skip_analysis_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from canary import api, cli

    monkeypatch.setattr(api, "_request", lambda *a, **k: "r1")
    monkeypatch.setattr(sys, "argv", ["canary", "promote", "prod", "--force", "--skip-analysis", "--reason", "x"])
    with pytest.raises(SystemExit) as info:
        cli.run()
    assert info.value.code == 2 and "--force: give one" in capsys.readouterr().err


# (False, None): a failed tick; (False, True): a resume judging again the step whose last tick passed
@pytest.mark.parametrize(("advance", "passed", "force", "refused"),
                         [(False, None, False, True), (False, False, False, True), (False, None, True, False), (True, None, False, False), (False, True, False, False),
                          # waiting for a decision: an inconclusive last tick is the question asked; a failed one needs --force
                          ("decision", False, False, False), ("decision", True, False, True), ("decision", True, True, False)])
def test_promote_after_a_failed_last_tick_is_refused_at_once_unless_forced(advance: bool | str, passed: bool | None, force: bool, refused: bool,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from canary import api
    from canary.core.records import Phase, ReleaseState
    from canary.errors import InvalidSpec

    if advance == "decision":
        state = ReleaseState(release="r1", stack="prod", app="web", phase=Phase.WAITING_DECISION, weight=50, advance=False, passed=False,
                             failed_last=bool(passed), reason="error-rate 7 > max 5")
    else:
        state = ReleaseState(release="r1", stack="prod", app="web", phase=Phase.WAITING_PROMOTION, weight=50, advance=bool(advance), passed=passed,
                             reason="error-rate 7 > max 5")

    class Store:
        asked: list[str] = []

        def load(self) -> ReleaseState:
            return state

        def request(self, kind: str, release: str, **fields: Any) -> None:
            self.asked.append(kind)
            self.fields = fields

    store = Store()
    opened: list[str] = []
    monkeypatch.setattr(api, "_store", lambda stack, *a, **k: (opened.append(stack), "web", store))
    if refused:
        with pytest.raises(InvalidSpec) as info:
            api.promote("prod", force=force, reason="hotfix" if force else "")
        assert "last tick did not pass (error-rate 7 > max 5)" in str(info.value) and "--force" in str(info.value)
        assert store.asked == []
    else:
        assert api.promote("prod", force=force, reason="hotfix" if force else "") == "r1"
        assert store.asked == ["promote"]
        # the question it answers, which the release checks: a left-over promote decides no later question
        assert (store.fields["phase"], store.fields["step"]) == (state.phase.value, state.step)
    assert opened == ["prod"]  # the stack is opened once (it was twice: a workspace and a Kubernetes client each time)


# PromotedUnverified: the abort was written and said to roll back within a second; a resume then verified
# the promotion and ignored it
@pytest.mark.parametrize(("phase", "refused"), [("Progressing", False), ("Promoting", True), ("Finalising", True), ("PromotedUnverified", True)])
def test_abort_opens_the_stack_once_and_is_refused_during_promotion(phase: str, refused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from canary import api
    from canary.core.records import Phase, ReleaseState
    from canary.errors import InvalidSpec

    state = ReleaseState(release="r1", stack="prod", app="web", phase=Phase(phase), weight=20)
    asked: list[str] = []
    opened: list[str] = []
    store = type("Store", (), {"load": lambda self: state, "request": lambda self, kind, release, **f: asked.append(kind)})()
    monkeypatch.setattr(api, "_store", lambda stack, *a, **k: (opened.append(stack), "web", store))
    if refused:
        with pytest.raises(InvalidSpec) as info:
            api.abort("prod")
        assert f"already {phase}" in str(info.value) and "not interrupted" in str(info.value)
        assert asked == []
    else:
        assert api.abort("prod") == "r1"
        assert asked == ["abort"]
    assert opened == ["prod"]


def test_an_app_whose_release_state_cannot_be_read_is_not_taken_for_idle() -> None:
    """`canary up` pins every idle app's route at rest: an app it cannot read may be mid-release, so it stops."""
    from types import SimpleNamespace

    from canary import api
    from canary.core import naming
    from canary.errors import CanaryError

    class Unreadable:
        def load(self) -> None:
            raise CanaryError("configmaps is forbidden")

    def ws(outputs: dict[str, Any]) -> Any:
        facts = SimpleNamespace(spec=SimpleNamespace(app=SimpleNamespace(namespace="shop")))
        return SimpleNamespace(apps=lambda: ["web"], facts=lambda name: facts, store=lambda name, ns: Unreadable(), outputs=outputs)

    assert api._running(ws({})) == {}  # never deployed: nothing of it can run
    with pytest.raises(CanaryError, match="forbidden"):
        api._running(ws({f"{naming.OUTPUT_PREFIX}web": {}}))


@pytest.mark.parametrize(("option", "value"), [("--route-timeout", "nan"), ("--lock-wait", "nan"), ("--lock-wait", "inf")])
def test_a_wait_of_nan_or_infinite_seconds_is_refused_naming_the_option(option: str, value: str) -> None:
    # a wait bounded by nan never ends: click's FloatRange let nan through
    done = _cli("up", "dev", option, value)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"Invalid value for '{option}'" in done.stderr and value in done.stderr, done.stderr


@pytest.mark.parametrize(("phase", "refused"), [("Initializing", False), ("Progressing", False), ("WaitingDecision", False),
                                                ("Promoting", True), ("Finalising", True), ("RollingBack", True), ("PromotedUnverified", True)])
def test_promote_skip_analysis_is_refused_past_analysis_where_the_release_would_ignore_it(phase: str, refused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from canary import api
    from canary.core.records import Phase, ReleaseState
    from canary.errors import InvalidSpec

    state = ReleaseState(release="r1", stack="prod", app="web", phase=Phase(phase), weight=20)
    asked: list[str] = []
    store = type("Store", (), {"load": lambda self: state, "request": lambda self, kind, release, **f: asked.append(kind)})()
    monkeypatch.setattr(api, "_store", lambda stack, *a, **k: (None, "web", store))
    if refused:
        with pytest.raises(InvalidSpec, match=f"release r1 is {phase}: promote applies in"):
            api.promote("prod", skip_analysis=True, reason="hotfix")
        assert asked == []
    else:
        assert api.promote("prod", skip_analysis=True, reason="hotfix") == "r1"
        assert asked == ["promote"]


def test_a_signal_aborts_every_release_built_after_it_too() -> None:
    # `canary up` of several apps: Ctrl-C aborted the app releasing, and the next app's release began
    # unaborted, with the signals back at their defaults (a second Ctrl-C killed canary mid-release)
    from canary.cli import _Running

    asked: list[tuple[str, str]] = []

    class Built:
        def __init__(self, name: str) -> None:
            self.name = name

        def request_abort(self, by: str) -> None:
            asked.append((self.name, by))

    running = _Running()
    running.built(Built("a"))
    running.abort("signal SIGINT")
    running.built(Built("b"))
    assert asked == [("a", "signal SIGINT"), ("b", "signal SIGINT")]


def test_demo_rolls_its_release_back_on_ctrl_c_as_release_does(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # `canary demo` installed no handler: Ctrl-C was a KeyboardInterrupt in the middle of a step, the
    # release's traffic left on its canary
    import signal

    from canary import api, cli
    from canary.lab import cluster
    from canary.lab import demo as lab_demo
    from canary.lab.layout import Layout

    aborted: list[str] = []

    class Built:
        def request_abort(self, by: str) -> None:
            aborted.append(by)

    def release(stack: str, image: str, **kwargs: Any) -> Any:
        kwargs["on_build"](Built())
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # type: ignore[operator]  # Ctrl-C, mid-release
        raise SystemExit(1)

    monkeypatch.setattr(cluster, "running", lambda layout: True)
    monkeypatch.setattr(lab_demo, "reset", lambda layout: None)
    monkeypatch.setattr(Layout, "pulumi_env", lambda self: {})  # the lab's tools are not built where unit tests run
    monkeypatch.setattr(api, "release", release)
    monkeypatch.delenv("CANARY_LAB_DIR", raising=False)
    (tmp_path / "Pulumi.yaml").write_text("name: canary\nruntime: python\n")  # the project the lab is of
    (tmp_path / ".lab" / "project").mkdir(parents=True)  # a running lab's working copy
    (tmp_path / ".lab" / "project" / "Pulumi.yaml").write_text("name: canary\nruntime: python\n")
    monkeypatch.setattr(sys, "argv", ["canary", "demo", "--project-dir", str(tmp_path)])
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit):
            cli.run()
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])
    assert aborted == ["signal SIGINT"]


def test_the_demo_stopped_by_a_signal_after_one_release_fails_rather_than_crashing() -> None:
    # Ctrl-C during the healthy release's promotion (the abort ignored, it ends Succeeded): the demo indexed a second release
    from types import SimpleNamespace

    from canary import cli
    from canary.core.records import Phase

    done = [SimpleNamespace(phase=Phase.SUCCEEDED), SimpleNamespace(phase=Phase.FAILED)]
    assert cli._demo_ok(done) and not cli._demo_ok(done[:1]) and not cli._demo_ok([]) and not cli._demo_ok([None, done[1]])


def test_a_signal_that_lands_while_the_main_thread_holds_the_aborts_lock_does_not_hang_it(tmp_path: Path) -> None:
    """The handler runs on the main thread between two of its bytecodes: an abort that takes a lock the main thread
    holds (the Pulumi command's, while it starts an up) waited on itself for ever."""
    script = tmp_path / "handler.py"
    script.write_text(
        "import os, signal, sys, threading, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from canary import cli\n"
        "lock = threading.Lock()\n"
        "done = threading.Event()\n"
        "by = []\n"
        "def abort(who):\n"
        "    with lock:\n"
        "        by.append(who)\n"
        "        done.set()\n"
        "cli._on_signals(abort)\n"
        "with lock:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.2)\n"
        "assert done.wait(5)\n"
        "print('main thread went on; aborted by', by[0], flush=True)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0 and "main thread went on; aborted by signal SIGTERM" in done.stdout, done.stdout + done.stderr
