"""The stack adapter: the only module that imports ``pulumi.automation``.

Selects a stack of the project directory with the project's program inline
(config read from and written to ``stacks/Pulumi.<stack>.yaml``, because the
workspace runs the CLI in the project directory, which honours
``stackConfigDir``), writes the release's config changes into that file in
one atomic edit (the CLI only for a file shape the edit does not know), runs
``up`` with engine events, exports state snapshots (a file backend's
checkpoint read directly), and maps CLI failures to the project's error tree:
``StackBusy`` (locked), ``StackNotFound``, ``ClusterUnreachable`` and
``StackError`` (a stack file that does not parse is ``InvalidSpec``, naming
the line).

One ``Stack`` object is reused for a whole release (building a workspace runs
``pulumi version``; selecting a stack a file backend holds runs nothing).
Values set here are never secrets: they are written in plain text (and, on
the CLI path, pass on its command line).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pulumi import automation as auto

from canary import journal, processes, stackconfig
from canary.errors import ClusterUnreachable, StackBusy, StackError, StackNotFound
from canary.spec import ReleaseSpec

_UNREACHABLE = re.compile(
    r"(connection refused|no such host|i/o timeout|dial tcp|unable to load kubernetes client|"
    r"configured Kubernetes cluster is unreachable|context deadline exceeded|TLS handshake timeout|the server is currently unable)",
    re.I,
)


@dataclass(frozen=True)
class UpResult:
    """What one ``up`` did: its duration and the changes by kind of operation."""

    seconds: float
    changes: dict[str, int]
    events: int = 0
    diagnostics: tuple[str, ...] = field(default=())


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


def _program() -> None:
    from canary.program import program, spec_from_pulumi_config

    program(spec_from_pulumi_config())


def _map_error(exc: Exception, what: str, secrets: tuple[str, ...] = ()) -> Exception:
    text = str(exc)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<secret>")
    if isinstance(exc, auto.ConcurrentUpdateError):
        holder = re.search(r"locked by ([^\n]*)", text)
        return StackBusy(f"{what}: the stack is locked by another update ({holder.group(1).strip() if holder else 'unknown holder'})")
    if isinstance(exc, auto.StackNotFoundError):
        return StackNotFound(f"{what}: no such stack in the Pulumi backend (pulumi stack ls lists them; pulumi stack init creates one)")
    if _UNREACHABLE.search(text):
        line = next((ln.strip() for ln in text.splitlines() if _UNREACHABLE.search(ln)), "")
        return ClusterUnreachable(f"{what}: the Kubernetes API server did not answer: {line[:300]}")
    detail = [ln.strip() for ln in text.splitlines() if "error" in ln.lower()][-3:]
    return StackError(f"{what} failed: {' | '.join(detail)[:800] or text[-800:]}")


def _command(env: Mapping[str, str]) -> auto.PulumiCommand | None:
    """The CLI found on the PATH of ``env`` (the lab's tools), not only on this process's."""
    found = shutil.which("pulumi", path=env.get("PATH"))
    if found is None:
        return None
    path = Path(found).resolve()
    if path.parent.name != "bin":
        return None
    return auto.PulumiCommand(root=str(path.parent.parent))


def _lock_alive(lock: Mapping[str, Any]) -> bool:
    """A lock is alive unless it belongs to this host and its process is gone (see ``processes``)."""
    return processes.holder_alive(lock.get("hostname", ""), int(lock["pid"]), lock.get("timestamp"))


def file_backend(env: Mapping[str, str], project_dir: Path) -> Path | None:
    """The directory of a ``file://`` backend (``PULUMI_BACKEND_URL``), or None. As the CLI
    reads it: its query is options, ``~`` is the home directory, and a relative path is
    relative to the CLI's working directory, the project directory."""
    backend = env.get("PULUMI_BACKEND_URL", "")
    if not backend.startswith("file://"):
        return None
    return project_dir / Path(backend.removeprefix("file://").split("?")[0]).expanduser()


def checkpoint_path(root: Path, stack: str) -> Path | None:
    """The checkpoint file of ``stack`` in the file backend at ``root`` (project-scoped layout),
    or None for a fully qualified name, which this layout does not spell."""
    if "/" in stack:
        return None
    return root / ".pulumi" / "stacks" / stackconfig.PROJECT / f"{stack}.json"


def read_checkpoint(root: Path, stack: str) -> dict[str, Any] | None:
    """What ``pulumi stack export`` prints for ``stack`` of the file backend at ``root``, read
    from its checkpoint file; None when the layout is not the one read here (the CLI then exports).

    The layout is the DIY backend's with project-scoped stacks (``meta.yaml`` version 1):
    ``.pulumi/stacks/<project>/<stack>.json``, which the CLI replaces by an atomic
    rename, so a read sees one whole checkpoint. A compressed variant of the file
    (``.gz``, ``.zst``), which the CLI would pick when it is the newest, and
    checkpoint versions other than 3, which it would migrate, are left to the CLI.
    """
    path = checkpoint_path(root, stack)
    if path is None:
        return None
    try:
        meta = yaml.safe_load((root / ".pulumi" / "meta.yaml").read_text())
        if not isinstance(meta, dict) or meta.get("version") != 1 or any(path.with_name(path.name + ext).exists() for ext in (".gz", ".zst")):
            return None
        document = json.loads(path.read_bytes())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not isinstance(document, dict) or document.get("version") != 3:
        return None
    checkpoint = document.get("checkpoint")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("latest"), dict):
        return None
    return {"version": 3, "deployment": checkpoint["latest"]}


class Stack:
    """One stack of the project, driven through the Automation API."""

    def __init__(self, project_dir: Path, name: str, env: Mapping[str, str] | None = None, create: bool = False) -> None:
        self.project_dir = project_dir
        self.name = name
        self._env = dict(env or {})
        self._secrets = tuple(v for k, v in self._env.items() if "PASSPHRASE" in k and not k.endswith("_FILE"))
        opts = auto.LocalWorkspaceOptions(work_dir=str(project_dir), env_vars=self._env, pulumi_command=_command(self._env))
        select = auto.create_or_select_stack if create else auto.select_stack
        try:
            self._stack = self._known_stack(opts) or select(stack_name=name, project_name=stackconfig.PROJECT, program=_program, opts=opts)
        except Exception as exc:  # noqa: BLE001 - mapped to the error tree
            raise _map_error(exc, f"stack {name}", self._secrets) from None

    def _known_stack(self, opts: auto.LocalWorkspaceOptions) -> auto.Stack | None:
        """The stack without ``pulumi stack select`` when a file backend holds its checkpoint.

        Selecting is a CLI process (0.16 s, on every command) that checks the stack
        exists and makes it the CLI's current stack; every command here names the
        stack (``--stack``), and the checkpoint file says it exists. None (select
        through the CLI) for any other backend or a stack it does not hold.
        """
        root = file_backend(self._env, self.project_dir)
        checkpoint = checkpoint_path(root, self.name) if root is not None else None
        if checkpoint is None or not (self.project_dir / "Pulumi.yaml").is_file():
            return None
        if not any(checkpoint.with_name(checkpoint.name + ext).is_file() for ext in ("", ".gz", ".zst")):
            return None
        opts.program = _program
        workspace = auto.LocalWorkspace(**opts.__dict__)
        workspace.select_stack = lambda stack_name: None  # type: ignore[method-assign] - for this construction only
        try:
            return auto.Stack.select(self.name, workspace)
        finally:
            del workspace.select_stack

    # --- config ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The stack's config map (``project:key`` -> ConfigValue), secrets decrypted.

        Read from the stack file when nothing in it needs the CLI (see
        ``stackconfig.plain_config``): the same map, without a CLI process of
        0.16 s at the start of every release; otherwise ``pulumi config``.
        """
        plain = stackconfig.plain_config(self.project_dir, self.name)
        if plain is not None:
            return {key: auto.ConfigValue(value=value, secret=False) for key, value in plain.items()}
        try:
            return dict(self._stack.get_all_config())
        except Exception as exc:  # noqa: BLE001
            self._explain_config_file()
            raise _map_error(exc, f"reading config of {self.name}", self._secrets) from None

    def _explain_config_file(self) -> None:
        """InvalidSpec naming the line when the CLI could not read config because the stack file is bad.

        Pulumi only says "invalid YAML file"; a broken file is bad input (exit 2),
        not a stack error, and the user needs the file and the line to fix it.
        """
        path = stackconfig.stack_file(self.project_dir, self.name)
        if path.is_file():
            stackconfig.read_stack_file(path)

    def spec(self) -> ReleaseSpec:
        return stackconfig.from_config(self.config(), source=f"stack {self.name}")

    def set_config(self, values: Mapping[str, Any], remove: tuple[str, ...] = ()) -> None:
        """Set plain (never secret) top-level keys and remove others, in the stack file itself.

        The edit is a line edit of ``stacks/Pulumi.<stack>.yaml``, checked by
        parsing the result, and lands with one atomic rename: no CLI process
        (about 0.2 s each, two for a set and a remove), and no half-written file
        if the orchestrator dies mid-write, which the CLI's own in-place write
        allows. A file whose shape the edit does not understand is left to the
        CLI (``pulumi config set-all``, then ``rm-all``).
        """
        plain = {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
        path = stackconfig.stack_file(self.project_dir, self.name)
        try:
            text = path.read_text()
        except OSError:
            text = None
        edited = stackconfig.edit_plain_keys(text, plain, remove) if text is not None else None
        if edited is not None:
            try:
                journal.write_text_atomic(path, edited)
                return
            except OSError as exc:
                raise StackError(f"writing config of {self.name}: cannot write {path}: {exc.strerror}") from None
        try:
            if plain:
                self._stack.set_all_config({f"{stackconfig.PROJECT}:{k}": auto.ConfigValue(value=v) for k, v in plain.items()})
            if remove:
                self._stack.remove_all_config([f"{stackconfig.PROJECT}:{k}" for k in remove])
        except Exception as exc:  # noqa: BLE001
            raise _map_error(exc, f"writing config of {self.name}", self._secrets) from None

    # --- updates -----------------------------------------------------------------------------

    def up(self, on_event: Callable[[Any], None] | None = None, target: list[str] | None = None, refresh: bool = False) -> UpResult:
        """Apply the stack config; ``target`` limits the update to those URNs; ``refresh``
        first reads the (targeted) resources back from the cluster, for a checkpoint that may lag it."""
        events = 0
        diagnostics: list[str] = []
        summary = _Summary()

        def handle(event: Any) -> None:
            nonlocal events
            events += 1
            summary.see(event)
            diag = getattr(event, "diagnostic_event", None)
            if diag is not None and diag.severity in ("error", "warning"):
                diagnostics.append(diag.message.strip()[:300])
            if on_event is not None:
                on_event(event)

        start = time.monotonic()
        try:
            with self._answered_from(summary):
                self._stack.up(on_event=handle, color="never", target=target, suppress_progress=True, refresh=refresh or None)
        except Exception as exc:  # noqa: BLE001
            raise _map_error(exc, f"pulumi up of {self.name}", self._secrets) from None
        return UpResult(time.monotonic() - start, summary.changes, events, tuple(diagnostics))

    @contextlib.contextmanager
    def _answered_from(self, summary: _Summary) -> Iterator[None]:
        """Skip the bookkeeping the Automation API does after every ``up``.

        It runs ``pulumi stack output`` twice and ``pulumi stack history`` once
        to build its result: three more CLI processes, about 0.2 s each, on
        every weight step. The engine's own summary event already says what
        changed, and nothing here reads the outputs, so for the length of one
        ``up`` this stack object answers those two calls from the event. The
        checkpoint and the stack's history are written by the CLI as always.
        """
        self._stack.outputs = dict  # type: ignore[method-assign]
        self._stack.info = summary.as_update_summary  # type: ignore[method-assign]
        try:
            yield
        finally:
            del self._stack.outputs
            del self._stack.info

    def export(self) -> dict[str, Any]:
        """The stack's state (checkpoint) for the audit record, its secrets left encrypted.

        On a file backend it is read from the checkpoint file itself (what
        ``pulumi stack export`` prints, without the CLI process, 0.17 s on the
        lab's machine, that the snapshot waits for before any ``up``); any other
        backend, or a file layout this read does not know, goes through the CLI.
        Not ``export_stack()``: the Automation API exports with ``--show-secrets``,
        which would put decrypted secrets into the journal (and costs the
        passphrase's key derivation on every call).
        """
        root = file_backend(self._env, self.project_dir)
        state = read_checkpoint(root, self.name) if root is not None else None
        return state if state is not None else self._export_cli()

    def _export_cli(self) -> dict[str, Any]:
        workspace = self._stack.workspace
        try:
            env = {**({"PULUMI_HOME": workspace.pulumi_home} if workspace.pulumi_home else {}), **workspace.env_vars}
            result = workspace.pulumi_command.run(["stack", "export", "--stack", self.name], workspace.work_dir, env)
            state = json.loads(result.stdout)
        except Exception as exc:  # noqa: BLE001
            raise _map_error(exc, f"exporting {self.name}", self._secrets) from None
        return {"version": state.get("version"), "deployment": state.get("deployment")}

    def outputs(self) -> dict[str, Any]:
        try:
            return {k: v.value for k, v in self._stack.outputs().items()}
        except Exception as exc:  # noqa: BLE001
            raise _map_error(exc, f"reading outputs of {self.name}", self._secrets) from None

    def destroy(self, remove: bool = True) -> None:
        """Delete the stack's resources (and the stack itself when ``remove``)."""
        try:
            self._stack.destroy(color="never", suppress_progress=True)
            if remove:
                self._stack.workspace.remove_stack(self.name)
        except Exception as exc:  # noqa: BLE001
            raise _map_error(exc, f"destroying {self.name}", self._secrets) from None

    def locks(self) -> list[dict[str, Any]]:
        """Pulumi's own locks on this stack (file backend only): pid, hostname, timestamp."""
        root = file_backend(self._env, self.project_dir)
        if root is None:
            return []
        lock_dir = root / ".pulumi" / "locks" / "organization" / stackconfig.PROJECT / self.name
        found = []
        for path in sorted(lock_dir.glob("*.json")) if lock_dir.is_dir() else []:
            try:
                data = {k.lower(): v for k, v in json.loads(path.read_text()).items()}
            except (OSError, ValueError):
                continue
            found.append({"pid": int(data.get("pid", 0)), "hostname": str(data.get("hostname", "")), "timestamp": str(data.get("timestamp", "")), "file": path.name})
        return found

    def check_unlocked(self) -> None:
        """StackBusy naming the holder when Pulumi's lock on the stack is taken."""
        for lock in self.locks():
            state = "alive" if _lock_alive(lock) else "dead: run canary resume or pulumi cancel"
            raise StackBusy(f"stack {self.name} is locked by a Pulumi update: pid {lock['pid']} on {lock['hostname']} since {lock['timestamp']} ({state})")

    def clear_stale_lock(self) -> list[dict[str, Any]]:
        """Remove Pulumi's lock only when every holder is a dead process of this host; returns what was cleared."""
        locks = self.locks()
        if not locks:
            return []
        for lock in locks:
            if _lock_alive(lock):
                raise StackBusy(f"stack {self.name} is locked by a running Pulumi update: pid {lock['pid']} on {lock['hostname']} since {lock['timestamp']}")
        self.cancel()
        return locks

    def cancel(self) -> None:
        """Remove the stack's Pulumi lock (only for a lock whose holder is known dead)."""
        try:
            self._stack.cancel()
        except Exception as exc:  # noqa: BLE001
            raise _map_error(exc, f"cancelling {self.name}", self._secrets) from None
