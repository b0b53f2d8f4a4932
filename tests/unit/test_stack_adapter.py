"""The stack adapter: backends, the state read from files, error mapping, the CLI in its own session,
and the contract with the Automation API internals it relies on (fails loudly on an SDK upgrade)."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pulumi import automation as auto
from pulumi.automation import errors as auto_errors

from canary.adapters import stack as stack_adapter
from canary.adapters.stack import InterruptibleCommand, backend_url, checkpoint_path, file_backend, outputs_of, read_checkpoint
from canary.errors import Cancelled, ClusterUnreachable, Forbidden, StackError, StackLocked, StackNotFound
from tests.unit.support import poll


def backend(tmp_path: Path, checkpoint: object, meta: str = "version: 1\n", project: str = "canary") -> Path:
    root = tmp_path / "state"
    (root / ".pulumi" / "stacks" / project).mkdir(parents=True)
    (root / ".pulumi" / "meta.yaml").write_text(meta)
    (root / ".pulumi" / "stacks" / project / "dev.json").write_text(json.dumps(checkpoint))
    return root


LATEST = {"manifest": {"time": "2026-11-27T00:00:00Z"}, "secrets_providers": {"type": "passphrase"},
          "resources": [{"urn": "urn:x", "type": "pulumi:pulumi:Stack", "outputs": {"canary/web": {"namespace": "demo"}, "t": {"ciphertext": "v1:AAAA"}}}]}


def test_read_checkpoint_is_what_stack_export_prints(tmp_path: Path) -> None:
    root = backend(tmp_path, {"version": 3, "checkpoint": {"stack": "organization/canary/dev", "latest": LATEST}})
    assert read_checkpoint(root, "canary", "dev") == {"version": 3, "deployment": LATEST}
    assert read_checkpoint(root, "canary", "organization/canary/dev") == {"version": 3, "deployment": LATEST}  # the short name
    assert outputs_of({"version": 3, "deployment": LATEST}) == {"canary/web": {"namespace": "demo"}, "t": {"ciphertext": "v1:AAAA"}}


@pytest.mark.parametrize(
    ("checkpoint", "meta", "extra"),
    [
        ({"version": 3, "checkpoint": {"stack": "dev", "latest": LATEST}}, "version: 0\n", None),
        ({"version": 2, "checkpoint": {"stack": "dev", "latest": LATEST}}, "version: 1\n", None),
        ({"version": 3, "checkpoint": {"stack": "dev"}}, "version: 1\n", None),
        ([1, 2], "version: 1\n", None),
        ({"version": 3, "checkpoint": {"stack": "dev", "latest": LATEST}}, "version: 1\n", "dev.json.gz"),
        ({"version": 3, "checkpoint": {"stack": "dev", "latest": LATEST}}, "version: [1\n", None),
    ],
    ids=["legacy-layout", "older-checkpoint-version", "no-latest", "not-an-object", "gzip-variant", "bad-meta"],
)
def test_read_checkpoint_leaves_other_layouts_to_the_cli(tmp_path: Path, checkpoint: object, meta: str, extra: str | None) -> None:
    root = backend(tmp_path, checkpoint, meta)
    if extra:
        (root / ".pulumi" / "stacks" / "canary" / extra).write_bytes(b"\x1f\x8b")
    assert read_checkpoint(root, "canary", "dev") is None


def test_the_backend_is_the_one_the_cli_uses(tmp_path: Path) -> None:
    assert file_backend({"PULUMI_BACKEND_URL": "file:///srv/state"}, tmp_path) == Path("/srv/state")
    assert file_backend({"PULUMI_BACKEND_URL": "file://state"}, tmp_path) == tmp_path / "state"
    assert file_backend({"PULUMI_BACKEND_URL": "file://~/state"}, tmp_path) == Path.home() / "state"
    assert file_backend({"PULUMI_BACKEND_URL": "file:///srv/state?no_tmp_dir=true"}, tmp_path) == Path("/srv/state")
    assert file_backend({"PULUMI_BACKEND_URL": "s3://bucket"}, tmp_path) is None
    # no PULUMI_BACKEND_URL: the one `pulumi login` chose, in PULUMI_HOME's credentials
    home = tmp_path / "home"
    home.mkdir()
    assert backend_url({"PULUMI_HOME": str(home)}) == "https://api.pulumi.com"
    (home / "credentials.json").write_text(json.dumps({"current": "file:///var/pulumi", "accounts": {}}))
    assert file_backend({"PULUMI_HOME": str(home)}, tmp_path) == Path("/var/pulumi")
    (home / "credentials.json").write_text(json.dumps({"current": "gs://bucket/state"}))
    assert backend_url({"PULUMI_HOME": str(home)}) == "gs://bucket/state" and file_backend({"PULUMI_HOME": str(home)}, tmp_path) is None
    assert checkpoint_path(Path("/s"), "shop", "acme/shop/prod") == Path("/s/.pulumi/stacks/shop/prod.json")


def _error(cls: type[auto.CommandError], stderr: str) -> auto.CommandError:
    return cls(auto.CommandResult(stdout="", stderr=stderr, code=255))


@pytest.mark.parametrize(
    ("error", "expected", "fragment"),
    [
        (_error(auto.ConcurrentUpdateError, "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or delete the lock file with `pulumi cancel`.\n  file:///s/.pulumi/locks/x.json: created by alice@host (pid 42) at 2026-12-01T10:00:00Z"), StackLocked, "alice@host (pid 42)"),
        (_error(auto.StackNotFoundError, "error: no stack named 'x' found"), StackNotFound, "no such stack"),
        # a file backend's checkpoint read while another update of the stack rewrote its attributes file
        (_error(auto.CommandError, "error: failed to load checkpoint: EOF"), StackLocked, "being written by another update"),
        (_error(auto.CommandError, "error: failed to load checkpoint: unexpected EOF"), StackLocked, "being written by another update"),
        # a file backend's lock, listed and then removed by its holder before the CLI opened it (seen with
        # twenty apps, five to a stack: a healthy release rolled back on it)
        (_error(auto.CommandError, "error: 2 errors occurred:\n    1) open /s/.pulumi/locks/organization/canary/dev/58f6.json: no such file or directory\n    2) NotFound"),
         StackLocked, "lock was being let go"),
        (_error(auto.CommandError, "error: Get \"https://10.0.0.1:6443\": dial tcp 10.0.0.1:6443: connect: connection refused"), ClusterUnreachable, "did not answer"),
        (_error(auto.CommandError, "error: deployments.apps \"web\" is forbidden: User cannot patch"), Forbidden, "refused"),
        (_error(auto.CommandError, "error: before hook \"canary-stable-guard-web\" failed: canary: the workload of web changed"), StackError, "refused: the workload of web changed"),
        (_error(auto.CommandError, "error: something else entirely"), StackError, "something else entirely"),
    ],
)
def test_cli_failures_map_to_the_error_tree_without_the_passphrase(error: auto.CommandError, expected: type[Exception], fragment: str) -> None:
    mapped = stack_adapter._map_error(error, "pulumi up of dev", secrets=("hunter2",))
    assert type(mapped) is expected and fragment in str(mapped)
    leaking = _error(auto.CommandError, "error: bad passphrase hunter2")
    assert "hunter2" not in str(stack_adapter._map_error(leaking, "x", secrets=("hunter2",)))
    assert isinstance(stack_adapter._map_error(error, "x", interrupted=True), Cancelled)


def test_a_failed_up_says_what_the_cluster_refused_not_only_that_it_failed() -> None:
    stdout = ("Updating (dev):\n ~ kubernetes:apps/v1:Deployment web-canary updating\n\nDiagnostics:\n"
              "  pulumi:pulumi:Stack (canary-dev):\n    warning: using pulumi-language-python from $PATH\n    error: update failed\n\n"
              "  kubernetes:apps/v1:Deployment (web-canary):\n    error: 1 error occurred:\n"
              "    \t* the Kubernetes API server reported that \"dev/web-canary\" failed: Deployment.apps \"web-canary\" is invalid: "
              "spec.template.spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to cpu limit of 1\n\n"
              "Outputs:\n  - canary/web: {error: nothing}\nResources:\n    2 errored\n")
    error = auto.CommandError(auto.CommandResult(stdout=stdout, stderr="", code=255))
    mapped = str(stack_adapter._map_error(error, "pulumi up of dev"))
    assert "must be less than or equal to cpu limit of 1" in mapped, mapped
    assert "update failed" not in mapped and "1 error occurred" not in mapped and "errored" not in mapped and "warning" not in mapped


def test_a_program_that_refuses_its_config_says_which_fields() -> None:
    """The program's refusal lists its problems on lines of their own under ``error: invalid stack …:``."""
    stdout = ("Updating (dev):\n\nDiagnostics:\n  pulumi:pulumi:Stack (canary-dev):\n"
              "    warning: using pulumi-language-python from $PATH\n    error: invalid stack dev:\n"
              "      - analysis: is required (or declare apps under apps.<name>) (got nothing)\n"
              "    error: an unhandled error occurred: invalid stack dev:\n"
              "      - analysis: is required (or declare apps under apps.<name>) (got nothing)\n\n"
              "Resources:\n    1 errored\n")
    error = auto.CommandError(auto.CommandResult(stdout=stdout, stderr="", code=255))
    mapped = str(stack_adapter._map_error(error, "pulumi up of dev"))
    assert mapped.count("analysis: is required") == 1, mapped
    assert "invalid stack dev:" in mapped and "unhandled" not in mapped, mapped


def test_a_cli_whose_plugin_outlives_it_does_not_hang_the_run(tmp_path: Path) -> None:
    """A plugin left running with the CLI's output pipes open must not keep ``run`` waiting after the CLI exits."""
    plugin = tmp_path / "plugin.pid"
    command = _fake_cli(tmp_path, f"sleep 300 & echo $! > {plugin}; echo done; exit 0")
    started = time.monotonic()
    try:
        result = command.run(["up"], str(tmp_path), {})
        assert result.stdout == "done" and time.monotonic() - started < 30
    finally:  # the plugin is the test's to stop: left, it outlived the suite
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(plugin.read_text()), signal.SIGKILL)


def _fake_cli(tmp_path: Path, body: str) -> InterruptibleCommand:
    """A `pulumi` that answers `version` and otherwise runs ``body`` (a shell script)."""
    bin_dir = tmp_path / "cli" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "pulumi"
    script.write_text(f"#!/bin/sh\nif [ \"$1\" = version ]; then echo v3.260.0; exit 0; fi\n{body}\n")
    script.chmod(0o755)
    return InterruptibleCommand(str(tmp_path / "cli"))


def test_each_cli_is_sent_sigint_once_however_often_it_is_interrupted(tmp_path: Path) -> None:
    # Pulumi takes a second SIGINT for "stop at once", leaving its update unfinished and its lock behind
    ints = tmp_path / "ints"
    command = _fake_cli(tmp_path, f"trap 'echo int >> {ints}' INT\ni=0\nwhile [ $i -lt 40 ]; do sleep 0.1; i=$((i+1)); done")
    done = threading.Thread(target=_run_quietly, args=(command, tmp_path), daemon=True)
    done.start()
    assert poll(lambda: bool(command._running), 5.0)
    time.sleep(0.2)  # the script's trap is set
    assert command.interrupt(grace=3.0) and command.interrupt(grace=3.0)
    done.join(10)
    assert not done.is_alive()
    assert ints.read_text().count("int") == 1


def _run_quietly(command: InterruptibleCommand, tmp_path: Path) -> None:
    with contextlib.suppress(auto.CommandError):
        command.run(["up"], str(tmp_path), {})


def test_the_cli_s_version_is_checked_once_per_process_not_for_each_stack_opened(tmp_path: Path) -> None:
    """A release opens its stack twice; each PulumiCommand ran ``pulumi version`` (0.1–0.2 s of CPU)."""
    bin_dir = tmp_path / "cli" / "bin"
    bin_dir.mkdir(parents=True)
    count = tmp_path / "versions"
    (bin_dir / "pulumi").write_text(f"#!/bin/sh\nif [ \"$1\" = version ]; then echo x >> {count}; echo v3.260.0; exit 0; fi\n")
    (bin_dir / "pulumi").chmod(0o755)
    first, second = InterruptibleCommand(str(tmp_path / "cli")), InterruptibleCommand(str(tmp_path / "cli"))
    assert count.read_text().count("x") == 1
    assert str(first.version) == str(second.version) == "3.260.0" and first.command == second.command == str(bin_dir / "pulumi")


def test_outputs_read_while_another_update_writes_the_checkpoint_are_read_again(tmp_path: Path) -> None:
    """`canary status` beside a release's `up`s: the CLI read the checkpoint torn ("failed to load
    checkpoint: EOF"), and the command failed as if the stack were locked (exit 3). Reads take no lock:
    a torn one is read again."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: canary\nruntime: python\n")
    root = backend(tmp_path, {"version": 3, "checkpoint": {"latest": LATEST}})
    (root / ".pulumi" / "stacks" / "canary" / "dev.json.gz").write_bytes(b"")  # leaves the read to the CLI
    torn = tmp_path / "torn-once"
    command = _fake_cli(tmp_path, f"""case "$*" in *"stack output"*)
  if [ ! -e {torn} ]; then touch {torn}; echo "error: failed to load checkpoint: EOF" >&2; exit 1; fi
  echo '{{"canary/web": {{"namespace": "demo"}}}}';;
esac""")
    env = {**os.environ, "PATH": f"{Path(command.command).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PULUMI_BACKEND_URL": f"file://{root}", "PULUMI_CONFIG_PASSPHRASE": "x", "PULUMI_HOME": str(tmp_path / "home")}
    stack = stack_adapter.Stack(project, "dev", env=env, program=lambda: None)
    assert stack.outputs() == {"canary/web": {"namespace": "demo"}}
    assert torn.exists()  # the first read was torn


@pytest.mark.parametrize("project", [None, "", "name: [\n", "runtime: python\n"], ids=["no-pulumi-yaml", "empty", "unparsable", "no-name"])
def test_a_directory_that_is_no_pulumi_project_is_refused_before_the_automation_api_writes_one(tmp_path: Path, project: str | None) -> None:
    # the Automation API, given a directory without a Pulumi.yaml, wrote one of its own there (name: '')
    from canary.errors import InvalidSpec

    command = _fake_cli(tmp_path, "exit 0")
    work = tmp_path / "work"
    work.mkdir()
    if project is not None:
        (work / "Pulumi.yaml").write_text(project)
    before = sorted(p.name for p in work.iterdir())
    env = {**os.environ, "PATH": f"{Path(command.command).parent}{os.pathsep}{os.environ.get('PATH', '')}", "PULUMI_HOME": str(tmp_path / "home")}
    with pytest.raises(InvalidSpec, match="project_dir: "):
        stack_adapter.Stack(work, "dev", env=env, program=lambda: None)
    assert sorted(p.name for p in work.iterdir()) == before
    if project is not None:
        assert (work / "Pulumi.yaml").read_text() == project


def test_the_cli_runs_in_a_session_of_its_own_and_streams_its_output(tmp_path: Path) -> None:
    command = _fake_cli(tmp_path, 'echo "sid $(ps -o sid= -p $$)"; echo "to stderr" >&2; echo "$PULUMI_AUTOMATION_API"')
    seen: list[str] = []
    result = command.run(["up"], str(tmp_path), {}, on_output=seen.append)
    sid = int(result.stdout.splitlines()[0].split()[1])
    assert sid != os.getsid(0)  # not this process's session: a terminal's Ctrl-C does not reach it
    assert result.stderr == "to stderr" and seen[-1] == "true"


def test_the_cli_skips_its_update_check_unless_the_environment_asks_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each CLI start asked Pulumi Cloud for a newer version: ten requests a release, from a runner."""
    command = _fake_cli(tmp_path, 'echo "check=${PULUMI_SKIP_UPDATE_CHECK:-unset}"')
    monkeypatch.delenv("PULUMI_SKIP_UPDATE_CHECK", raising=False)
    assert command.run(["up"], str(tmp_path), {}).stdout == "check=true"
    monkeypatch.setenv("PULUMI_SKIP_UPDATE_CHECK", "false")
    assert command.run(["up"], str(tmp_path), {}).stdout == "check=false"
    assert command.run(["up"], str(tmp_path), {"PULUMI_SKIP_UPDATE_CHECK": "0"}).stdout == "check=0"


def test_a_failing_cli_raises_the_automation_api_s_error(tmp_path: Path) -> None:
    command = _fake_cli(tmp_path, 'echo "error: the stack is currently locked by 1 lock(s)" >&2; exit 255')
    with pytest.raises(auto.ConcurrentUpdateError):
        command.run(["up"], str(tmp_path), {})


def test_interrupt_sends_sigint_to_the_cli_and_the_run_ends(tmp_path: Path) -> None:
    marker, ready = tmp_path / "got-sigint", tmp_path / "handler-set"
    # A Python CLI, not a shell one: dash can miss a SIGINT that lands between its `: > ready` and its
    # `wait` (it then sleeps on, and was killed at the grace's end in loaded CI runs, its trap never run).
    # Python's handler runs whenever the signal lands, in or out of the sleep.
    handler = (f'import pathlib, signal, sys, time; signal.signal(signal.SIGINT, lambda *_: (pathlib.Path("{marker}").touch(), sys.exit(130))); '
               f'pathlib.Path("{ready}").touch(); time.sleep(30)')
    command = _fake_cli(tmp_path, f"exec '{sys.executable}' -c '{handler}'")
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            command.run(["up"], str(tmp_path), {})
        except auto.CommandError as exc:
            outcome["error"] = exc

    import threading

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    while not (command._running and ready.exists()) and time.monotonic() < deadline:
        time.sleep(0.01)  # the script has installed its trap (under load a fixed pause was not always enough)
    start = time.monotonic()
    # a grace that a loaded machine cannot eat up before the shell's trap runs (it failed at 2 s in CI
    # runs with four lab workers on two cores); the run still ends well before the script's sleep would
    assert command.interrupt(grace=8.0)
    thread.join(timeout=15)
    assert not thread.is_alive() and time.monotonic() - start < 10
    assert marker.exists() and isinstance(outcome.get("error"), auto.CommandError)
    assert command.interrupted


@pytest.mark.parametrize(("set_after", "bound"), [(None, 15.0), (0.3, 5.0)], ids=["before-the-cli-starts", "while-it-runs"])
def test_a_cli_is_interrupted_by_its_cancel_token_set_before_it_starts_or_while_it_runs(tmp_path: Path, set_after: float | None,
                                                                                        bound: float) -> None:
    # before: an abort between the release's last look at its token and the CLI's start found nothing to interrupt
    # and was lost: the whole up ran (minutes, when it awaits a crash-looping canary). While: `canary up`'s stack
    # update, whose token a signal sets, went on to its end (its Deployments waited for) before the signal was heard
    command = _fake_cli(tmp_path, f"exec '{sys.executable}' -c 'import time; time.sleep(30)'")
    command.cancel = threading.Event()
    if set_after is None:
        command.cancel.set()
    else:
        threading.Timer(set_after, command.cancel.set).start()
    start = time.monotonic()
    with pytest.raises(auto.CommandError):
        command.run(["up"], str(tmp_path), {})
    assert time.monotonic() - start < bound and command.interrupted


def test_a_signal_to_this_process_group_does_not_reach_the_cli(tmp_path: Path) -> None:
    """What a terminal's Ctrl-C does: SIGINT to the foreground group. The CLI must not get it."""
    marker = tmp_path / "got-sigint"
    script = tmp_path / "parent.py"
    started = tmp_path / "cli-started"
    script.write_text(
        "import signal\n"
        "signal.signal(signal.SIGINT, lambda *a: print('parent got SIGINT', flush=True))\n"
        "from canary.adapters.stack import InterruptibleCommand\n"
        f"command = InterruptibleCommand({str(tmp_path / 'cli')!r})\n"
        f"print(command.run(['up'], {str(tmp_path)!r}, {{}}).stdout, flush=True)\n"
    )
    _fake_cli(tmp_path, f'trap "touch {marker}; exit 130" INT; touch {started}; sleep 1.5; echo finished')
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 20
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(parent.pid, signal.SIGINT)
    out, _ = parent.communicate(timeout=20)
    assert "parent got SIGINT" in out and "finished" in out and not marker.exists()


# --- the contract with the Automation API ---------------------------------------------------------


def test_the_automation_api_internals_canary_patches_are_as_expected() -> None:
    """canary answers `Stack.up`'s two follow-up calls (outputs, info) from the engine's summary, runs the
    CLI through its own `PulumiCommand.run`, selects a stack without `pulumi stack select`, and reads
    pulumi-kubernetes args as plain data. An SDK upgrade that changes any of these fails here first."""
    up_source = inspect.getsource(auto.Stack.up)
    assert "self.outputs()" in up_source and "self.info(" in up_source, "Stack.up no longer calls outputs()/info(): revisit Stack._answered_from"
    assert "config_file" in inspect.signature(auto.Stack.up).parameters
    run_params = list(inspect.signature(auto.PulumiCommand.run).parameters)
    assert run_params == ["self", "args", "cwd", "additional_env", "on_output", "on_error"], run_params
    assert "pulumi_command.run(" in inspect.getsource(auto.Stack._run_pulumi_cmd_sync)
    assert callable(auto_errors.create_command_error)
    assert "select_stack" in inspect.getsource(auto.Stack.select) or "select_stack" in inspect.getsource(auto.Stack.__init__)
    assert list(inspect.signature(auto.CommandResult.__init__).parameters) == ["self", "stdout", "stderr", "code"]
    import pulumi_kubernetes as k8s
    from pulumi import _types as pulumi_types

    args = k8s.core.v1.ContainerPortArgs(container_port=8080, name="http")
    assert pulumi_types.is_input_type(type(args)) and pulumi_types.input_type_to_dict(args) == {"containerPort": 8080, "name": "http"}


def _with_locks(tmp_path: Path, locks: list[dict[str, Any]]) -> tuple[Any, Path, list[str]]:
    """A Stack whose file backend holds ``locks`` (one file each, named by its ``file``), its lock directory,
    and the `pulumi cancel`s it runs (as the file backend's: every file of the lock directory deleted)."""
    from canary.adapters.stack import Stack

    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    lock_dir = tmp_path / "state" / ".pulumi" / "locks" / "organization" / "canary" / "prod"
    lock_dir.mkdir(parents=True, exist_ok=True)
    for old in lock_dir.glob("*.json"):
        old.unlink()
    for lock in locks:
        _write_lock(lock_dir, lock)
    cancelled: list[str] = []

    def cancel(_: Any) -> None:
        cancelled.append("cancel")
        for path in lock_dir.glob("*.json"):
            path.unlink()

    stack = object.__new__(Stack)
    stack.name, stack.project, stack.project_dir, stack._secrets = "prod", "canary", project, ()
    stack._env = {"PULUMI_BACKEND_URL": f"file://{tmp_path / 'state'}"}
    stack._stack = type("Auto", (), {"cancel": cancel})()
    return stack, lock_dir, cancelled


def _write_lock(lock_dir: Path, lock: dict[str, Any]) -> None:
    """A lock file as the file backend writes it (Go's field names)."""
    (lock_dir / lock["file"]).write_text(json.dumps({"pid": lock["pid"], "username": "u", "hostname": lock["hostname"], "timestamp": lock["timestamp"]}))


def test_a_live_lock_is_left_to_the_next_up_s_wait_and_a_dead_one_of_this_host_is_cleared(tmp_path: Path) -> None:
    # a resume raised StackLocked (exit 3) when another app of the stack was in the middle of a step's up,
    # which its lock wait would have waited out
    import socket
    from datetime import UTC, datetime

    now = datetime.now(UTC).isoformat()
    live = {"pid": os.getpid(), "hostname": socket.gethostname(), "timestamp": now, "file": "a.json"}
    stack, lock_dir, cancelled = _with_locks(tmp_path, [live])
    assert stack.locks() == [live]
    assert stack.clear_dead_locks() == [] and (lock_dir / "a.json").exists()
    elsewhere = {"pid": 1, "hostname": "another-host", "timestamp": now, "file": "b.json"}
    stack, lock_dir, cancelled = _with_locks(tmp_path, [elsewhere])
    assert stack.clear_dead_locks() == [] and (lock_dir / "b.json").exists()  # another host's: nothing here can tell
    dead = {"pid": 2**22 + 12345, "hostname": socket.gethostname(), "timestamp": now, "file": "c.json"}
    stack, lock_dir, cancelled = _with_locks(tmp_path, [dead])
    assert stack.clear_dead_locks() == [dead] and not (lock_dir / "c.json").exists()
    stack, lock_dir, cancelled = _with_locks(tmp_path, [dead, live])
    assert stack.clear_dead_locks() == [] and sorted(p.name for p in lock_dir.glob("*.json")) == ["a.json", "c.json"]  # a live holder among them: its update lets go
    assert cancelled == []  # never `pulumi cancel`: it deletes whatever lock is there when it runs


def test_clearing_a_dead_lock_leaves_a_live_lock_taken_after_the_dead_one_was_judged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dead holder judged, then `pulumi cancel` run: it lists the lock directory again and deletes every
    file in it, so another app's `up` of the same stack that took the lock in between (the dead lock let go
    by it, or by a resume of its own) lost its lock mid-update, and a third update could run beside it."""
    import socket
    from datetime import UTC, datetime

    now = datetime.now(UTC).isoformat()
    dead = {"pid": 2**22 + 12345, "hostname": socket.gethostname(), "timestamp": now, "file": "dead-cli.json"}
    live = {"pid": os.getpid(), "hostname": socket.gethostname(), "timestamp": now, "file": "live-up.json"}
    rewritten = {**dead, "file": "rewritten.json"}
    stack, lock_dir, _ = _with_locks(tmp_path, [dead, rewritten])
    judged = stack_adapter._lock_alive

    def judge_then_the_other_app_locks(lock: dict[str, Any]) -> bool:
        alive = judged(lock)
        if lock["file"] == "rewritten.json":  # the last one judged: the other app's `up` takes the lock now
            _write_lock(lock_dir, live)
            _write_lock(lock_dir, {**rewritten, "timestamp": "2030-01-01T00:00:00Z"})  # another lock under a judged name
        return alive

    monkeypatch.setattr(stack_adapter, "_lock_alive", judge_then_the_other_app_locks)
    assert stack.clear_dead_locks() == [dead]
    assert sorted(p.name for p in lock_dir.glob("*.json")) == ["live-up.json", "rewritten.json"]


@pytest.mark.parametrize(("stderr", "kept", "hidden"), [
    # a short passphrase is a piece of ordinary words and names: hidden where it stands alone, not inside them
    ("error: no such host api.dev.example (developer mode, stacks/dev, my-dev): PULUMI_CONFIG_PASSPHRASE=dev, 'dev' dev",
     ["api.dev.example", "developer", "stacks/dev", "my-dev"], ["=dev", "'dev'", " dev\n", "dev'"]),
    ("error: bad value \"dev\": dev", [], ['"dev"', ": dev"]),
], ids=["words-and-names", "quoted"])
def test_a_short_passphrase_is_hidden_where_it_stands_alone_not_inside_words(stderr: str, kept: list[str], hidden: list[str]) -> None:
    """A passphrase `dev` was replaced inside every word: "api.<secret>.example", "<secret>eloper" — the
    message mangled, and the passphrase told by what was left around it."""
    message = str(stack_adapter._map_error(_error(auto.CommandError, stderr), "pulumi up of prod", secrets=("dev",))) + "\n"
    for word in kept:
        assert word in message, message
    for shown in hidden:
        assert shown not in message, message
    assert "<secret>" in message


def test_a_long_passphrase_is_hidden_wherever_it_appears() -> None:
    secret = "Tr0ub4dor-and-3"
    message = str(stack_adapter._map_error(_error(auto.CommandError, f"error: decrypting with x{secret}y failed: {secret}"),
                                           "pulumi up of prod", secrets=(secret, "")))
    assert secret not in message and "Tr0ub" not in message and message.count("<secret>") == 2, message


@pytest.mark.parametrize("relative", [True, False], ids=["relative-to-the-project", "absolute"])
def test_a_passphrase_read_from_a_file_is_hidden_from_the_cli_s_errors(tmp_path: Path, relative: bool) -> None:
    """Only PULUMI_CONFIG_PASSPHRASE's value was hidden: a passphrase in PULUMI_CONFIG_PASSPHRASE_FILE, the
    way CI hands one over, was printed whole with the CLI's error (the file's content as the CLI reads it,
    without its trailing newline; a relative name from the project, where the CLI runs)."""
    secret = "Tr0ub4dor-and-3"
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: canary\nruntime: python\n")
    (project / "pass.txt").write_text(f"  {secret}\n")
    root = backend(tmp_path, {"version": 3, "checkpoint": {"latest": LATEST}})
    (root / ".pulumi" / "stacks" / "canary" / "dev.json.gz").write_bytes(b"")  # leaves the read to the CLI
    command = _fake_cli(tmp_path, f'echo "error: failed to decrypt with {secret}: {secret}." >&2; exit 1')
    env = {**os.environ, "PATH": f"{Path(command.command).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PULUMI_BACKEND_URL": f"file://{root}", "PULUMI_HOME": str(tmp_path / "home"),
           "PULUMI_CONFIG_PASSPHRASE_FILE": "pass.txt" if relative else str(project / "pass.txt")}
    env.pop("PULUMI_CONFIG_PASSPHRASE", None)
    stack = stack_adapter.Stack(project, "dev", env=env, program=lambda: None)
    with pytest.raises(StackError) as refused:
        stack.outputs()
    assert secret not in str(refused.value) and str(refused.value).count("<secret>") == 2, refused.value


@pytest.mark.parametrize("name", ["missing.txt", "a-directory", "bad\0name", ""], ids=["missing", "directory", "unusable-name", "empty"])
def test_a_passphrase_file_that_cannot_be_read_adds_nothing_and_raises_nothing(tmp_path: Path, name: str) -> None:
    (tmp_path / "a-directory").mkdir()
    env = {"PULUMI_CONFIG_PASSPHRASE": "from-the-variable", "PULUMI_CONFIG_PASSPHRASE_FILE": name}
    assert stack_adapter._passphrases(env, tmp_path) == ("from-the-variable",)


def test_check_unlocked_names_another_host_s_lock_and_lets_this_host_s_live_one_be_waited_for(tmp_path: Path) -> None:
    """A resume looks before it applies anything: another host's lock (a runner killed inside its `up` on another
    machine) is named, pid, host and since; a live process of this host (another app's step) lets go as its
    update ends, so it is left to the `up`'s wait (refusing it refused a resume beside any release of the stack)."""
    import socket
    from datetime import UTC, datetime

    now = datetime.now(UTC).isoformat()
    live = {"pid": os.getpid(), "hostname": socket.gethostname(), "timestamp": now, "file": "a.json"}
    stack, _, _ = _with_locks(tmp_path, [])
    stack.check_unlocked()
    stack, _, _ = _with_locks(tmp_path, [live])
    stack.check_unlocked()
    elsewhere = {"pid": 4711, "hostname": "machine-a", "timestamp": "2026-12-01T00:00:30Z", "file": "b.json"}
    stack, _, cancelled = _with_locks(tmp_path, [live, elsewhere])
    with pytest.raises(StackLocked) as locked:
        stack.check_unlocked()
    assert "locked by a running Pulumi update: pid 4711 on machine-a since 2026-12-01T00:00:30Z" in str(locked.value), locked.value
    assert f"pid {os.getpid()}" not in str(locked.value) and cancelled == []
