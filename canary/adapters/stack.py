"""The stack adapter: the only module that imports ``pulumi.automation``.

Selects a stack of the project directory with the project's own program run
inline (its ``__main__.py``, in this process: the CLI honours the project's
``stackConfigDir``), runs ``up`` with a release's config file and targets,
reads the stack's config, outputs and state (a file backend's files directly,
any other backend through the CLI), and maps CLI failures to the error tree:
``StackLocked`` (another update holds Pulumi's lock: temporary), ``StackNotFound``,
``ClusterUnreachable``, ``Forbidden``, ``Cancelled`` and ``StackError``.

The Pulumi CLI runs in a session of its own (``InterruptibleCommand``): a
terminal's Ctrl-C reaches canary only, and canary interrupts an ``up`` itself
(SIGINT, as the CLI expects, so it cancels cleanly and releases its lock).
One ``Stack`` object serves a whole release (building a workspace runs the CLI).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pulumi import automation as auto
from pulumi.automation import errors as auto_errors

from canary.adapters import processes, stackfile
from canary.errors import Cancelled, ClusterUnreachable, Forbidden, StackError, StackLocked, StackNotFound

_UNREACHABLE = re.compile(
    r"(connection refused|no such host|i/o timeout|dial tcp|unable to load kubernetes client|"
    r"configured Kubernetes cluster is unreachable|context deadline exceeded|TLS handshake timeout|the server is currently unable)",
    re.I,
)
# A file backend's checkpoint read while another update of the stack rewrites it: the blob store
# replaces the checkpoint atomically but truncates and rewrites its ``.attrs`` file beside it, so a
# concurrent reader (an ``up`` loading the stack before it takes the lock) can read that file empty.
_TORN_CHECKPOINT = re.compile(r"failed to load checkpoint: (unexpected )?(EOF|end of JSON input)")
#: a file backend's lock listed, then gone before the CLI read it (its holder had just let go)
_LOCK_GONE = re.compile(r"open [^\n]*\.pulumi/locks/[^\n]*\.json: no such file or directory")
_FORBIDDEN = re.compile(r"(forbidden|Unauthorized|is not allowed|no configuration has been provided)", re.I)


@dataclass(frozen=True)
class UpResult:
    """What one ``up`` did: its duration and the changes by kind of operation."""

    seconds: float
    changes: dict[str, int]
    events: int = 0
    diagnostics: tuple[str, ...] = field(default=())
    #: the stack's outputs as this update set them (its root resource's outputs event; secrets shown as
    #: ``[secret]``), None when it sent none. Read after the update, they may be another update's: an app
    #: of the same stack whose ``up`` began from an older stack file.
    outputs: dict[str, Any] | None = None


#: the version of each CLI checked in this process, by its root and PATH
_CHECKED: dict[tuple[str, str], Any] = {}


class InterruptibleCommand(auto.PulumiCommand):
    """The Pulumi CLI in a session of its own, which canary can interrupt.

    The Automation API's ``PulumiCommand.run`` starts the CLI in the caller's
    process group, where a terminal's Ctrl-C reaches it too: the CLI cancels its
    update and the release ends Failed instead of rolling back. This ``run`` keeps
    the same contract (arguments, environment, streamed output, a
    ``CommandError`` on failure) with the CLI in a new session; ``interrupt``
    sends it SIGINT, which cancels an update gracefully.
    """

    def __init__(self, root: str | None) -> None:
        # the CLI's version is checked once per process and CLI (a `pulumi version` run, 0.1–0.2 s),
        # not again for each stack opened: a release opens its stack twice
        key = (root or "", os.environ.get("PATH", ""))
        if key in _CHECKED:
            self.command = os.path.join(root, "bin", "pulumi") if root else "pulumi"
            self.version = _CHECKED[key]
        else:
            super().__init__(root=root)
            _CHECKED[key] = self.version
        self._running: set[subprocess.Popen[str]] = set()
        #: the CLIs sent SIGINT already: a second one makes Pulumi stop at once instead of cancelling cleanly
        self._signalled: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()
        self.interrupted = False
        #: while set (by an ``up`` that may be cancelled), a CLI running when it is set, or started after, is
        #: interrupted: an abort between the caller's last look and the CLI's start is not lost, and a signal
        #: during ``canary up``'s stack update stops it (nothing else interrupts that one)
        self.cancel: threading.Event | None = None

    def run(self, args: list[str], cwd: str, additional_env: Mapping[str, str],
            on_output: auto.OnOutput | None = None, on_error: auto.OnOutput | None = None) -> auto.CommandResult:
        argv = list(args)
        if "--non-interactive" not in argv:
            argv.insert(0, "--non-interactive")
        # the CLI's check for a newer version of itself is a request to Pulumi Cloud at each start (ten
        # per release, from runners often without egress): off unless the environment asks for it
        env = {"PULUMI_SKIP_UPDATE_CHECK": "true", **os.environ, **additional_env, "PULUMI_AUTOMATION_API": "true"}
        if os.path.isabs(self.command):
            env["PATH"] = os.pathsep.join([os.path.dirname(self.command), env.get("PATH", "")])
        process = subprocess.Popen([self.command, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                   cwd=cwd, env=env, text=True, encoding="utf-8", start_new_session=True)
        with self._lock:
            self._running.add(process)
        cancel = self.cancel
        if cancel is not None and cancel.is_set():
            self.interrupt()
        out: list[str] = []
        err: list[str] = []

        def pump(stream: Any, sink: list[str], callback: auto.OnOutput | None) -> None:
            for line in iter(stream.readline, ""):
                line = line.rstrip()
                sink.append(line)
                if callback is not None:
                    callback(line)
            stream.close()

        readers = [threading.Thread(target=pump, args=(process.stdout, out, on_output), daemon=True),
                   threading.Thread(target=pump, args=(process.stderr, err, on_error), daemon=True)]
        for reader in readers:
            reader.start()
        try:
            while True:
                try:
                    code = process.wait(timeout=0.2 if cancel is not None else None)
                    break
                except subprocess.TimeoutExpired:
                    if cancel is not None and cancel.is_set():
                        self.interrupt()  # once per CLI, whoever else interrupts it too
            # The CLI is done; its plugins (language host, provider) end with it. One that lingers would
            # keep the output pipes open and this call waiting for ever: its session goes with the CLI.
            for reader in readers:
                reader.join(timeout=10)
            if any(reader.is_alive() for reader in readers):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                for reader in readers:
                    reader.join(timeout=5)
        finally:
            with self._lock:
                self._running.discard(process)
                self._signalled.discard(process)
        result = auto.CommandResult(stdout="\n".join(out), stderr="\n".join(err), code=code)
        if code != 0:
            raise auto_errors.create_command_error(result)
        return result

    def interrupt(self, grace: float = 10.0) -> bool:
        """SIGINT every running CLI's session (it cancels its update and releases its lock); after
        ``grace`` seconds, SIGKILL what is still there. True when something was running. Each CLI is sent
        SIGINT once, however often this is called (an abort and a signal, say): Pulumi takes a second
        SIGINT for "stop at once", which leaves the update unfinished and its lock behind."""
        with self._lock:
            running = [process for process in self._running if process not in self._signalled]
            self._signalled.update(running)
            busy = bool(self._running)
        if not busy:
            return False
        self.interrupted = True
        if not running:
            return True
        for process in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGINT)

        def finish() -> None:
            # the CLI's own children (language host, provider) must not outlive it either
            deadline = time.monotonic() + grace
            for process in running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(0.0, deadline - time.monotonic()))
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)

        threading.Thread(target=finish, name="pulumi-interrupt", daemon=True).start()
        return True


#: a passphrase at least this long is hidden wherever it appears, inside a longer word too: text that
#: happens to contain it is rare, and a part of it shown would be a hint. A shorter one is hidden only
#: where it stands as a value of its own (see ``_redact``).
SECRET_ANYWHERE = 8
#: what a short passphrase is a part of, not a value of its own, when it touches it: a word, a host or
#: file name (``api.dev.example``, ``my-dev``, ``stacks/dev``)
_JOINED = r"[\w.\-/@+~]"


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with each passphrase of ``secrets`` replaced by ``<secret>``.

    A long one wherever it appears. A short one (``dev``) cannot be hidden that way: it is a piece of
    ordinary words and names, and replacing it there mangles them and names it at the same time
    (``api.<secret>.example``). It is replaced where it stands as a value of its own — between spaces,
    quotes, ``=``, ``:``, brackets, at a line's ends — which is how a passphrase appears when it appears
    as such (``PULUMI_CONFIG_PASSPHRASE=dev``, ``"dev"``)."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):  # the longest first: one may hold another
        pattern = re.escape(secret) if len(secret) >= SECRET_ANYWHERE else rf"(?<!{_JOINED}){re.escape(secret)}(?!{_JOINED})"
        text = re.sub(pattern, "<secret>", text)
    return text


def _passphrases(env: Mapping[str, str], cwd: Path) -> tuple[str, ...]:
    """The stack's passphrases, to hide from the CLI's errors: each ``*PASSPHRASE`` variable's value, and the content of
    ``PULUMI_CONFIG_PASSPHRASE_FILE`` as the CLI takes it (trimmed of white space at both ends; a relative name from
    ``cwd``, where the CLI runs). A file that cannot be read adds nothing (the CLI says so itself), and neither does one
    that is no regular file: a pipe read here would be drained before the CLI reads it."""
    found = [v for k, v in env.items() if "PASSPHRASE" in k and not k.endswith("_FILE")]
    name = env.get("PULUMI_CONFIG_PASSPHRASE_FILE", "")
    if name:
        path = cwd / name  # an absolute name stays as it is
        with contextlib.suppress(OSError, ValueError):
            if path.is_file():
                # Python's white space takes in all of Go's (strings.TrimSpace): what is left is within the passphrase
                found.append(path.read_text(encoding="utf-8", errors="replace").strip())
    return tuple(found)


def _map_error(exc: BaseException, what: str, secrets: tuple[str, ...] = (), interrupted: bool = False) -> Exception:
    text = _redact(str(exc), secrets)
    if interrupted:
        return Cancelled(f"{what}: interrupted")
    if isinstance(exc, auto.ConcurrentUpdateError):
        holder = re.search(r"created by ([^\n]*)", text) or re.search(r"(locked by [^\n.]*)", text)
        return StackLocked(f"{what}: the stack is locked by another update ({holder.group(1).strip() if holder else 'unknown holder'})")
    if torn := _TORN_CHECKPOINT.search(text):
        return StackLocked(f"{what}: the stack's checkpoint was being written by another update (read as {torn.group(0)!r})")
    if _LOCK_GONE.search(text):
        return StackLocked(f"{what}: another update's lock was being let go as this one looked at it")
    if isinstance(exc, auto.StackNotFoundError):
        return StackNotFound(f"{what}: no such stack in the Pulumi backend (pulumi stack ls lists them; pulumi stack init creates one)")
    if isinstance(exc, OSError):
        return StackError(f"{what}: the Pulumi CLI could not run: {exc}")
    refusal = re.search(r"canary: ([^\n\"]+)", text)
    if refusal:
        return StackError(f"{what} refused: {refusal.group(1).strip()}")
    if _UNREACHABLE.search(text):
        line = next((ln.strip() for ln in text.splitlines() if _UNREACHABLE.search(ln)), "")
        return ClusterUnreachable(f"{what}: the Kubernetes API server did not answer: {line[:300]}")
    if _FORBIDDEN.search(text):
        line = next((ln.strip() for ln in text.splitlines() if _FORBIDDEN.search(ln)), "")
        return Forbidden(f"{what}: the cluster refused: {line[:300]}")
    detail = _diagnosed_errors(text)
    return StackError(f"{what} failed: {' | '.join(detail)[:800] or text[-800:]}")


_NOISE = re.compile(r"^(error: )?(update failed|preview failed|\d+ errors? occurred:?|\d+ errored|an unhandled error occurred:.*)$", re.I)


def _diagnosed_errors(text: str) -> list[str]:
    """The CLI's own error lines (its Diagnostics section when there is one), with the ``* …`` lines a
    multi-error message continues on (``- …``: the program's list of refused fields), less the
    summaries that say nothing (``update failed``)."""
    section = text.split("Diagnostics:", 1)[1] if "Diagnostics:" in text else text
    section = re.split(r"\n(?:Outputs|Resources|Duration):", section, maxsplit=1)[0]
    found: list[str] = []
    in_error = False
    for raw in section.splitlines():
        line = raw.strip()
        if line.startswith("error:"):
            in_error = True
        elif not (in_error and line.startswith(("* ", "- "))):
            in_error = False
            continue
        if line and not _NOISE.match(line) and line not in found:
            found.append(line)
    return found[-4:]


def _cli_root(env: Mapping[str, str]) -> str | None:
    """The CLI found on the PATH of ``env`` (the lab's tools), not only on this process's."""
    found = shutil.which("pulumi", path=env.get("PATH"))
    if found is None:
        return None
    path = Path(found).resolve()
    return str(path.parent.parent) if path.parent.name == "bin" else None


def backend_url(env: Mapping[str, str]) -> str:
    """The backend the CLI uses: ``PULUMI_BACKEND_URL``, else the one ``pulumi login`` chose
    (``$PULUMI_HOME/credentials.json``), else Pulumi Cloud."""
    if url := env.get("PULUMI_BACKEND_URL"):
        return url
    home = Path(env.get("PULUMI_HOME") or Path.home() / ".pulumi").expanduser()
    try:
        current = json.loads((home / "credentials.json").read_text()).get("current")
    except (OSError, ValueError, AttributeError):
        current = None
    return str(current or "https://api.pulumi.com")


def file_backend(env: Mapping[str, str], project_dir: Path) -> Path | None:
    """The directory of a ``file://`` backend, or None. As the CLI reads it: its query is options,
    ``~`` is the home directory, a relative path is relative to the project directory."""
    url = backend_url(env)
    if not url.startswith("file://"):
        return None
    return project_dir / Path(url.removeprefix("file://").split("?")[0]).expanduser()


def short_name(stack: str) -> str:
    """``org/project/dev`` or ``org/dev`` -> ``dev``."""
    return stack.rsplit("/", 1)[-1]


def checkpoint_path(root: Path, project: str, stack: str) -> Path:
    """The checkpoint file of ``stack`` in the file backend at ``root`` (project-scoped layout)."""
    return root / ".pulumi" / "stacks" / project / f"{short_name(stack)}.json"


def read_checkpoint(root: Path, project: str, stack: str) -> dict[str, Any] | None:
    """What ``pulumi stack export`` prints for ``stack`` of the file backend at ``root``, read from its
    checkpoint file; None when the layout is not the one read here (the CLI then answers).

    The layout is the DIY backend's with project-scoped stacks (``meta.yaml`` version 1):
    ``.pulumi/stacks/<project>/<stack>.json``, replaced by the CLI with an atomic
    rename, so a read sees one whole checkpoint. A compressed variant (which the
    CLI picks when it is the newest) and checkpoint versions other than 3 are left
    to the CLI.
    """
    path = checkpoint_path(root, project, stack)
    try:
        meta = stackfile.load((root / ".pulumi" / "meta.yaml").read_text())
        if not isinstance(meta, dict) or meta.get("version") != 1 or any(path.with_name(path.name + ext).exists() for ext in (".gz", ".zst")):
            return None
        document = json.loads(path.read_bytes())
    except (OSError, ValueError, stackfile.YAMLError):
        return None
    if not isinstance(document, dict) or document.get("version") != 3:
        return None
    checkpoint = document.get("checkpoint")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("latest"), dict):
        return None
    return {"version": 3, "deployment": checkpoint["latest"]}


def outputs_of(export: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stack outputs recorded in an export (the root stack resource's outputs); None if absent."""
    for resource in (export.get("deployment") or {}).get("resources") or []:
        if resource.get("type") == "pulumi:pulumi:Stack":
            return dict(resource.get("outputs") or {})
    return None


def project_program(project_dir: Path) -> Callable[[], None]:
    """The project's own Pulumi program, to run inline: its ``main`` (``Pulumi.yaml``) or ``__main__.py``."""
    settings = stackfile.project_settings(project_dir)
    main = project_dir / str(settings.get("main") or "")
    path = main / "__main__.py" if main.is_dir() else main

    def run() -> None:
        if str(project_dir) not in sys.path:
            sys.path.insert(0, str(project_dir))
        runpy.run_path(str(path), run_name="__main__")

    return run


class _Summary:
    """The engine's summary event of one ``up``, in the shape the Automation API returns."""

    def __init__(self) -> None:
        self.changes: dict[str, int] = {}
        self._start = datetime.now(UTC)

    def see(self, event: Any) -> None:
        summary = getattr(event, "summary_event", None)
        if summary is not None:
            self.changes = {str(k): int(v) for k, v in (summary.resource_changes or {}).items()}

    def as_update_summary(self, show_secrets: bool = True) -> auto.UpdateSummary:
        return auto.UpdateSummary(kind="update", start_time=self._start, message="", environment={}, config={},
                                  result="succeeded", end_time=datetime.now(UTC), resource_changes=self.changes)


class Stack:
    """One stack of a Pulumi project, driven through the Automation API."""

    def __init__(self, project_dir: Path, name: str, env: Mapping[str, str] | None = None,
                 program: Callable[[], None] | None = None, create: bool = False) -> None:
        # resolved (the CLI runs there: paths given to it must not be relative) and checked before the Automation API
        # sees it: it writes a Pulumi.yaml of its own into a directory without one
        self.project_dir = project_dir = stackfile.check_project(project_dir, "project_dir")
        self.name = name
        self.project = str(stackfile.project_settings(project_dir)["name"])
        self._env = dict(env or os.environ)
        self._secrets = _passphrases(self._env, project_dir)
        try:
            self.command = InterruptibleCommand(_cli_root(self._env))
        except (OSError, subprocess.CalledProcessError, auto.InvalidVersionError) as exc:
            raise StackError(f"the Pulumi CLI could not run: {exc}") from exc
        opts = auto.LocalWorkspaceOptions(work_dir=str(project_dir), env_vars=self._env, pulumi_command=self.command,
                                          program=program or project_program(project_dir))
        try:
            self._stack = self._known_stack(opts) or (auto.create_or_select_stack if create else auto.select_stack)(
                stack_name=name, project_name=self.project, program=opts.program, opts=opts)
        except auto.CommandError as exc:
            raise _map_error(exc, f"stack {name}", self._secrets) from exc

    def _known_stack(self, opts: auto.LocalWorkspaceOptions) -> auto.Stack | None:
        """The stack without ``pulumi stack select`` when a file backend holds its checkpoint.

        Selecting is a CLI process (0.16 s, on every command) that checks the stack
        exists and makes it the CLI's current stack; every command here names the
        stack (``--stack``), and the checkpoint file says it exists.
        """
        root = file_backend(self._env, self.project_dir)
        if root is None or not self.project:
            return None
        checkpoint = checkpoint_path(root, self.project, self.name)
        if not any(checkpoint.with_name(checkpoint.name + ext).is_file() for ext in ("", ".gz", ".zst")):
            return None
        workspace = auto.LocalWorkspace(**opts.__dict__)
        workspace.select_stack = lambda stack_name: None  # type: ignore[method-assign] - for this construction only
        try:
            return auto.Stack.select(self.name, workspace)
        finally:
            del workspace.select_stack

    @property
    def file_backend(self) -> Path | None:
        return file_backend(self._env, self.project_dir)

    # --- config ------------------------------------------------------------------------------

    def config(self, text: str | None = None) -> dict[str, Any]:
        """The stack's config map (``namespace:key`` -> ConfigValue), secrets decrypted: read from the
        stack file (or ``text``, a snapshot of it) when nothing in it needs the CLI, else ``pulumi config``."""
        plain = stackfile.plain_config(self.project_dir, self.name, text)
        if plain is not None:
            return {key: auto.ConfigValue(value=value, secret=False) for key, value in plain.items()}
        if text is not None:
            return self._config_of_text(text)
        path = stackfile.stack_file(self.project_dir, self.name)
        if path.is_file():
            stackfile.read_stack_file(path)  # a broken file is bad input naming the line, not a stack error
        try:
            return dict(self._stack.get_all_config())
        except auto.CommandError as exc:
            raise _map_error(exc, f"reading config of {self.name}", self._secrets) from exc

    def _config_of_text(self, text: str) -> dict[str, Any]:
        """``pulumi config`` of a snapshot of the stack file (its secrets decrypted by the CLI)."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="canary-config-") as tmp:
            path = Path(tmp) / "Pulumi.snapshot.yaml"
            path.write_text(text)
            os.chmod(path, 0o600)
            argv = ["config", "--json", "--show-secrets", "--config-file", str(path), "--stack", self.name]
            result = _untorn(lambda: self._cli(argv, f"reading config of {self.name}"))
        data = json.loads(result.stdout or "{}")
        return {key: auto.ConfigValue(value=entry.get("value") if isinstance(entry.get("value"), str) else json.dumps(entry.get("objectValue", entry.get("value"))),
                                      secret=bool(entry.get("secret"))) for key, entry in data.items()}

    def stack_file(self) -> Path:
        return stackfile.stack_file(self.project_dir, self.name)

    # --- updates -----------------------------------------------------------------------------

    def up(self, config_file: Path | None = None, targets: list[str] | None = None, exclude: list[str] | None = None,
           refresh: bool = False, on_event: Callable[[Any], None] | None = None, guard: Callable[[], None] | None = None,
           cancel: threading.Event | None = None) -> UpResult:
        """Apply the program; ``config_file`` replaces the stack file for this update, ``targets``
        limit it to those URNs (``exclude`` leaves those out), ``refresh`` first reads them back.
        ``cancel`` set (before the CLI starts, or while it runs) interrupts it: Cancelled.

        ``guard`` runs once the CLI holds Pulumi's lock, before the program: what it raises ends the
        update before the program declares anything (so nothing changes) and is raised here as it is."""
        program, refused = self._guarded(guard)
        events = 0
        diagnostics: list[str] = []
        summary = _Summary()
        outputs: dict[str, Any] | None = None

        def handle(event: Any) -> None:
            nonlocal events, outputs
            events += 1
            summary.see(event)
            done = getattr(event, "res_outputs_event", None)
            if done is not None and done.metadata.type == "pulumi:pulumi:Stack" and done.metadata.new is not None:
                outputs = dict(done.metadata.new.outputs or {})
            diag = getattr(event, "diagnostic_event", None)
            if diag is not None and diag.severity in ("error", "warning"):
                diagnostics.append(diag.message.strip()[:300])
            if on_event is not None:
                on_event(event)

        start = time.monotonic()
        self.command.interrupted = False
        self.command.cancel = cancel
        try:
            with self._answered_from(summary):
                self._stack.up(on_event=handle, color="never", target=targets, exclude=exclude, suppress_progress=True,
                               refresh=refresh or None, config_file=str(config_file) if config_file else None, program=program)
        except auto.CommandError as exc:
            if refused:
                raise refused[0] from None
            raise _map_error(exc, f"pulumi up of {self.name}", self._secrets, self.command.interrupted) from exc
        finally:
            self.command.cancel = None
        return UpResult(time.monotonic() - start, summary.changes, events, tuple(diagnostics), outputs)

    def _guarded(self, guard: Callable[[], None] | None) -> tuple[Callable[[], Any] | None, list[BaseException]]:
        """The workspace's program with ``guard`` run first (None: the program as it is), and where
        what the guard raised is kept. The inline program runs after the CLI took the stack's lock."""
        refused: list[BaseException] = []
        if guard is None:
            return None, refused
        program = self._stack.workspace.program
        assert program is not None, "a stack of this module always has an inline program"

        def guarded() -> Any:
            try:
                guard()
            except BaseException as exc:
                refused.append(exc)
                raise
            return program()

        return guarded, refused

    def interrupt(self) -> bool:
        """Cancel the ``up`` in progress, if any (SIGINT to the CLI's session)."""
        return self.command.interrupt()

    @contextlib.contextmanager
    def _answered_from(self, summary: _Summary) -> Iterator[None]:
        """Skip the bookkeeping the Automation API does after every ``up``.

        It runs ``pulumi stack output`` twice and ``pulumi stack history`` once to
        build its result: three more CLI processes, about 0.2 s each, on every
        step. The engine's summary event already says what changed, and outputs
        are read when needed (``outputs``), so for one ``up`` this stack answers
        those two calls from the event. A contract test checks that ``Stack.up``
        still calls exactly these two.
        """
        self._stack.outputs = dict  # type: ignore[method-assign]
        self._stack.info = summary.as_update_summary  # type: ignore[method-assign]
        try:
            yield
        finally:
            del self._stack.outputs
            del self._stack.info

    # --- state -------------------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """The stack's state (checkpoint), its secrets left encrypted (not the Automation API's
        ``export_stack``, which passes ``--show-secrets``). A file backend's checkpoint is read directly."""
        root = self.file_backend
        state = read_checkpoint(root, self.project, self.name) if root is not None and self.project else None
        return state if state is not None else _untorn(self._export_cli)

    def _export_cli(self) -> dict[str, Any]:
        result = self._cli(["stack", "export", "--stack", self.name], f"exporting {self.name}")
        state = json.loads(result.stdout)
        return {"version": state.get("version"), "deployment": state.get("deployment")}

    def outputs(self) -> dict[str, Any]:
        """The stack's outputs as the last update left them (secrets shown as ``[secret]``)."""
        return _untorn(self._outputs)

    def _outputs(self) -> dict[str, Any]:
        root = self.file_backend
        state = read_checkpoint(root, self.project, self.name) if root is not None and self.project else None
        found = outputs_of(state) if state is not None else None
        if found is not None:
            return {k: ("[secret]" if isinstance(v, dict) and "ciphertext" in v else v) for k, v in found.items()}
        result = self._cli(["stack", "output", "--json", "--stack", self.name], f"reading outputs of {self.name}")
        return dict(json.loads(result.stdout or "{}"))

    def _cli(self, args: list[str], what: str) -> auto.CommandResult:
        workspace = self._stack.workspace
        env = {**({"PULUMI_HOME": workspace.pulumi_home} if workspace.pulumi_home else {}), **workspace.env_vars}
        try:
            return self.command.run(args, workspace.work_dir, env)
        except auto.CommandError as exc:
            raise _map_error(exc, what, self._secrets) from exc

    def destroy(self, remove: bool = True) -> None:
        """Delete the stack's resources (and the stack itself when ``remove``)."""
        try:
            self._stack.destroy(color="never", suppress_progress=True)
            if remove:
                self._stack.workspace.remove_stack(self.name)
        except auto.CommandError as exc:
            raise _map_error(exc, f"destroying {self.name}", self._secrets) from exc

    # --- Pulumi's own lock (file backend) ---------------------------------------------------

    def locks(self) -> list[dict[str, Any]]:
        """Pulumi's locks on this stack in a file backend: pid, hostname, timestamp. Other backends
        keep their locks to themselves: a concurrent update there shows as ``StackLocked``."""
        return [lock.info for lock in self._lock_files()]

    def _lock_files(self) -> list[_LockFile]:
        root = self.file_backend
        if root is None or not self.project:
            return []
        lock_dir = root / ".pulumi" / "locks" / "organization" / self.project / short_name(self.name)
        found = []
        for path in sorted(lock_dir.glob("*.json")) if lock_dir.is_dir() else []:
            seen = _LockFile.read(path)
            if seen is not None:
                found.append(seen)
        return found

    def wait_unlocked(self, timeout: float) -> bool:
        """Wait for Pulumi's lock on this stack to be let go, for at most ``timeout`` seconds; False
        when it is still held then. An ``up`` refused for the lock is tried again after this.

        In a file backend the lock directory is watched every 0.1 s while a lock is there: the
        waiting update starts within 0.1 s of the holder letting go, with no CLI run for each
        look (a refused ``up`` is a CLI process, started every 2 s before). A lock that is not seen (gone already, or a backend that keeps its locks to
        itself) means a plain pause of ``LOCK_RETRY`` (2 s) or ``timeout`` if shorter — the callers pass a second, to
        stop at a signal — so a refusal never becomes a busy loop of ``up``s."""
        deadline = time.monotonic() + max(0.0, timeout)
        if not self.locks():
            time.sleep(max(0.0, min(LOCK_RETRY, deadline - time.monotonic())))
            return True
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(LOCK_WATCH, left))
            if not self.locks():
                return True
        return False

    def check_unlocked(self) -> None:
        """StackLocked naming the holders when Pulumi's lock on the stack is another host's: nothing here can see
        whether its update still runs (a runner killed inside its ``up`` on another machine never lets go). A lock
        of this host is not: a live process lets go as its update ends (another app's step, which an ``up`` waits
        for), a dead one is ``clear_dead_locks``'s. Only a file backend's locks are read."""
        foreign = [lock for lock in self.locks() if not processes.same_host(lock.get("hostname", ""))]
        if foreign:
            held = ", ".join(f"pid {lock['pid']} on {lock['hostname']} since {lock['timestamp']}" for lock in foreign)
            raise StackLocked(f"stack {self.name} is locked by a running Pulumi update: {held} (another host's: whether it "
                              "still runs cannot be seen from here)")

    def clear_dead_locks(self) -> list[dict[str, Any]]:
        """Remove Pulumi's lock only when every holder is a dead process of this host (a CLI killed mid-update:
        nobody will let its lock go); returns what was cleared. A live holder (another app's release of this
        stack, another host's update) is left alone: the next ``up`` waits for it.

        Exactly the lock files judged are removed, each only while it is still the file read (its inode and
        content), not through ``pulumi cancel``: that lists the lock directory again and deletes every file
        in it, a live lock taken after this listing (another app's ``up`` of the stack starting) with them."""
        held = self._lock_files()
        if not held or any(_lock_alive(lock.info) for lock in held):
            return []
        cleared = []
        for lock in held:
            try:
                if lock.remove():
                    cleared.append(lock.info)
            except OSError as exc:
                raise StackError(f"clearing Pulumi's stale lock {lock.path} of {self.name}: {exc.strerror or type(exc).__name__}") from exc
        return cleared


@dataclass(frozen=True)
class _LockFile:
    """One lock file of a file backend as read: where, its identity (device, inode) and bytes, and what it says."""

    path: Path
    inode: tuple[int, int]
    raw: bytes
    info: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> _LockFile | None:
        """The lock file as it is now; None when it is gone or not a lock (its holder letting go, a torn write)."""
        try:
            with path.open("rb") as file:
                st = os.fstat(file.fileno())
                raw = file.read()
            data = {str(k).lower(): v for k, v in json.loads(raw).items()}
            info = {"pid": int(data.get("pid", 0)), "hostname": str(data.get("hostname", "")),
                    "timestamp": str(data.get("timestamp", "")), "file": path.name}
        except (OSError, ValueError, TypeError, AttributeError):
            return None
        return cls(path, (st.st_dev, st.st_ino), raw, info)

    def remove(self) -> bool:
        """Delete the file if it is still this one, unchanged; False when it is gone or another now.
        (A lock file is named by a fresh UUID and never rewritten: the same name, inode and bytes are the same lock.)"""
        now = _LockFile.read(self.path)
        if now is None or now.inode != self.inode or now.raw != self.raw:
            return False
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


#: the pause before an ``up`` refused for Pulumi's lock is tried again, when the lock cannot be watched
LOCK_RETRY = 2.0
#: how often a file backend's lock directory is looked at while an ``up`` waits for the lock
LOCK_WATCH = 0.1


T = TypeVar("T")

#: how long a read of the stack (outputs, state, config) is tried again while its checkpoint is torn
TORN_WAIT = 3.0


def _untorn(read: Callable[[], T]) -> T:
    """``read`` — of the stack's outputs, state or config, which take no lock — tried again every
    0.1 s for at most ``TORN_WAIT`` seconds while it fails as StackLocked: another update was writing
    the checkpoint (read torn) or letting go of its lock as this looked. ``canary status`` and
    ``history`` run beside a release's ``up``s, and such a read lasts milliseconds."""
    deadline = time.monotonic() + TORN_WAIT
    while True:
        try:
            return read()
        except StackLocked:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _lock_alive(lock: Mapping[str, Any]) -> bool:
    """A lock is alive unless it belongs to this host and its process is gone (see ``processes``)."""
    return processes.holder_alive(lock.get("hostname", ""), int(lock["pid"]), lock.get("timestamp"))
