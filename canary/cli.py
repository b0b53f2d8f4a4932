"""The ``canary`` command line: parse arguments, call the API, print, and set the exit code.

Exit codes live in ``canary.core.exitcodes`` (the README's table). The CLI
also wires the local lab for ``--lab``: its environment and working copy are
handed to the API like any other. No domain logic lives here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from canary.core import exitcodes
from canary.errors import CanaryError, InvalidSpec, LabError, Problem


def _die(message: str, code: int) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def _echo_json(data: Any, indent: int = 2) -> None:
    """Every --json output: JSON any parser reads, a non-finite number written as "+Inf", "-Inf" or "NaN" (Python's
    json writes Infinity, which JSON has not: a p99 in the +Inf bucket made `status --json` unreadable to a script)."""
    from canary.core import records

    click.echo(json.dumps(records.finite_json(data), indent=indent, default=str, allow_nan=False))


class Where:
    """The project and environment a command acts on: the user's, or the lab's (``--lab``: its backend and
    cluster, and its working copy of the project unless ``--project-dir`` names another; the lab's tests give
    each test a project of its own)."""

    def __init__(self, project_dir: Path | None, lab: bool | None) -> None:
        self.lab = bool(lab or (lab is None and os.environ.get("CANARY_LAB_DIR")))
        self.project_dir = project_dir
        self.env: dict[str, str] | None = None
        if self.lab:
            from canary.lab.layout import Layout

            layout = Layout.for_project(project_dir)
            if not layout.dir.is_dir() or (project_dir is None and not (layout.project / "Pulumi.yaml").is_file()):
                # before the lab's environment is made (it writes the lab's passphrase)
                raise InvalidSpec([Problem("--lab", str(layout.dir), "the lab is not up: run canary lab up")], "lab")
            self.project_dir = project_dir or layout.project
            self.env = {**os.environ, **layout.pulumi_env()}

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"project_dir": self.project_dir, "env": self.env}


_project = click.option("--project-dir", type=click.Path(path_type=Path, file_okay=False),
                        help="The Pulumi project (default: $CANARY_PROJECT_DIR, else the current directory or its nearest parent holding "
                             "Pulumi.yaml; with --lab, the lab's working copy).")
_lab = click.option("--lab", is_flag=True, default=None, help="Use the local lab's Pulumi backend, cluster and working copy (the default when $CANARY_LAB_DIR is set).")
_app = click.option("--app", help="The app, when the stack holds several.")


class _Seconds(click.FloatRange):
    """A number of seconds within a range; nan and inf are refused (click's FloatRange lets nan through,
    and a wait bounded by nan never ends)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds.", param, ctx)
        return number


_route_timeout = click.option("--route-timeout", type=_Seconds(1, 3600), default=60, show_default=True,
                              help="Seconds to wait for the gateway to accept a route change.")
_lock_wait = click.option("--lock-wait", type=_Seconds(0, 86400), default=600, show_default=True,
                          help="Seconds the first `up` waits while another update holds the stack's Pulumi lock (another app's release), then exit 3.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="canary", prog_name="canary")
def main() -> None:
    """Progressive delivery with Pulumi: canary, A/B and blue/green releases gated by Prometheus checks."""


def run() -> None:
    """Console-script entry: map library errors to exit codes and a message, never a traceback."""
    try:
        main(standalone_mode=True)
    except InvalidSpec as exc:
        _die(str(exc), exitcodes.INVALID)
    except LabError as exc:
        _die(f"lab: {exc}", exitcodes.FAILED)
    except CanaryError as exc:
        _die(f"canary: {exc}", exitcodes.for_error(exc))


# --- config ---------------------------------------------------------------------------------------


@main.command()
@click.argument("stack", required=False)
@click.option("--file", "file_", type=click.Path(path_type=Path, dir_okay=False), help="Validate a stack config file anywhere on disk.")
@_project
def validate(stack: str | None, file_: Path | None, project_dir: Path | None) -> None:
    """Validate the config of STACK (its stack file) or of --file PATH.

    Nothing is applied. Every problem is listed with its field, value and rule.
    """
    from canary.adapters import stackfile
    from canary.core import config as stackconfig
    from canary.core import naming, schedule

    if (stack is None) == (file_ is None):
        _die("canary validate: give either STACK or --file PATH", exitcodes.INVALID)
    path = file_ if file_ is not None else stackfile.stack_file(stackfile.open_project(project_dir), str(stack))
    if stack is not None and not path.is_file():
        _die(f"stack {stack!r}: no config file {path.name} in {path.parent}", exitcodes.INVALID)
    spec, unchecked = stackfile.check_stack_file(path)
    apps = []
    for name, config in spec.app_configs().items():
        image = (config.app.image if config.app else None) or config.stable_image or "from the program"
        where = f"{config.app.namespace}/{name}" if config.app else name
        # a top-level analysis without app names no app: it judges each one the program's components declare
        what = "every app the program's components declare" if spec.names_no_app() else f"app {where}, image {image}"
        apps.append(f"{what}, {schedule.describe(config.analysis)}, {len(config.analysis.metrics)} metrics, "
                    f"{len(config.analysis.webhooks)} webhooks")
    # a secret as a whole is neither refused (up decrypts and accepts it) nor called valid (it was not read)
    keys = ", ".join(f"{naming.CONFIG_NAMESPACE}:{key}" for key in unchecked)
    verdict = f"valid, but {keys} not checked" if unchecked else "valid"
    click.echo(f"{path.name}: {verdict} — " + "; ".join(apps) if apps else f"{path.name}: {verdict}")
    for key in unchecked:
        click.echo(f"{path.name}: {naming.CONFIG_NAMESPACE}:{key} is not checked: it is a secret as a whole (set with --secret and "
                   "without --path), and validate does not decrypt; canary up and pulumi up decrypt it and refuse it, before anything "
                   f"is applied, if it is invalid. To have it checked here, {stackconfig.keep_fields_secret(key)}", err=True)


def _parent_ref(text: str | None) -> dict[str, str] | None:
    """NAME[.NAMESPACE][:SECTION] -> a parentRef mapping."""
    if text is None:
        return None
    rest, _, section = text.partition(":")
    name, _, namespace = rest.partition(".")
    ref = {"name": name}
    if namespace:
        ref["namespace"] = namespace
    if section:
        ref["sectionName"] = section
    return ref


@main.command("import-flagger")
@click.argument("manifests", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--stable-image", help="The app's image (Flagger keeps it in the Deployment, not the Canary).")
@click.option("--gateway", help="Gateway parentRef as NAME[.NAMESPACE][:SECTION]; replaces the Canary's gatewayRefs (a note says so).")
@click.option("--out", "out", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the stack file here (only once the import succeeded), never over an existing file unless --merge.")
@click.option("--merge", is_flag=True, help="With --out: replace only the canary:* keys of the existing stack file, keeping the rest and its secrets.")
def import_flagger(manifests: tuple[Path, ...], stable_image: str | None, gateway: str | None, out: Path | None, merge: bool) -> None:
    """Print (or write with --out) the stack config equivalent to a Flagger Canary and its MetricTemplates.

    What canary does not carry over is listed on stderr, field by field.
    """
    from canary.adapters import stackfile
    from canary.core import config as stackconfig
    from canary.core import flagger

    if merge and out is None:
        _die("--merge needs --out FILE: the stack file to merge the import into", exitcodes.INVALID)
    texts = []
    for path in manifests:
        try:
            texts.append((str(path), stackfile.read_text(path, "manifest")))
        except InvalidSpec as exc:
            _die(str(exc), exitcodes.INVALID)
    try:
        result = flagger.convert(stackfile.load_manifests(texts), stable_image=stable_image, parent_ref=_parent_ref(gateway))
    except CanaryError as exc:
        # before the error: what was left out or written as a default on the way often explains the refusal
        for note in exc.notes:
            click.echo(f"note: {note}", err=True)
        raise
    header = "# Imported from " + ", ".join(p.name for p in manifests) + " by canary import-flagger.\n"
    header += "".join(f"# note: {note}\n" for note in result.notes)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if out is None:
        click.echo(header + stackfile.dump_stack_file(result.spec), nl=False)
        return
    # written whole or not at all, and only now that the import succeeded: `> stacks/Pulumi.prod.yaml` emptied
    # the stack file on a refused import and replaced its salt and secrets on a successful one
    kept = stackfile.write_imported(out, header, stackconfig.to_config(result.spec), merge=merge)
    for key in kept:
        click.echo(f"note: {key}: kept from {out} (it holds a secret the import does not write)", err=True)
    click.echo(f"{out}: {'merged' if merge else 'written'}", err=True)


# --- releases -----------------------------------------------------------------------------------


def _print_event(event: Any) -> None:
    app = f"{event.app}  " if getattr(event, "app", "") else ""
    click.echo(f"{event.time[11:23]}  {app}{event.phase:<16} w={event.weight:>3}  {event.message}")


def _on_signals(abort: Callable[[str], None]) -> None:
    """SIGINT/SIGTERM roll the release back to stable (it ends Aborted); a second signal stops at once.

    The Pulumi CLI runs in a session of its own, so a terminal's Ctrl-C reaches
    only canary, which interrupts an ``up`` in progress itself. Command hooks
    run in sessions of their own too: the second signal kills them before
    canary exits (a load generator outlived it, and ran beside the next one
    after ``canary resume``). A SIGKILL of canary kills them too on Linux
    (``processes.spawn``), and what they started in their groups where libc
    has ``_Fork`` (glibc 2.34 or later); elsewhere they run on.
    """
    # imported now: an import in the handler could wait for a lock the interrupted main thread holds
    from canary.adapters import webhooks

    def stop_now(signum: int, frame: Any) -> None:
        # os._exit: no atexit runs, no thread is waited for; the hooks' groups are killed first
        webhooks.stop_all()
        # stderr may be gone (`canary … 2>&1 | tee log`, the tee killed by the first Ctrl-C): the exit must not depend on it
        with contextlib.suppress(OSError):
            os.write(2, f"{signal.Signals(signum).name}: stopped at once; the command hooks still running were killed\n".encode())
        os._exit(128 + signum)

    def handle(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        signal.signal(signal.SIGINT, stop_now)
        signal.signal(signal.SIGTERM, stop_now)
        # on a thread of its own: the handler runs on the main thread between two of its bytecodes, maybe
        # while that thread holds a lock the abort takes (the Pulumi command's), which would never be let go
        threading.Thread(target=abort, args=(f"signal {name}",), name="canary-signal-abort", daemon=True).start()
        # os.write, as stop_now: sys.stderr's buffer, taken by the main thread's write this handler interrupted (a pipe
        # nobody read), raised "reentrant call" into that write
        with contextlib.suppress(OSError):
            os.write(2, f"{name}: aborting (a release in progress rolls back to stable); send it again to stop at once\n".encode())

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


class _Running:
    """The release a command is running, for the signal handler (it exists only once `up` decided)."""

    def __init__(self) -> None:
        self.release: Any = None
        self.pending: str | None = None
        #: set by a signal: stops `up`'s wait for Pulumi's lock and its stack update, before any release exists
        self.interrupt = threading.Event()

    def abort(self, by: str) -> None:
        # every release built from now on is aborted too: `canary up` of several apps (and the demo) went on
        # to the next app's release, with the signals back at their defaults
        self.pending = by
        self.interrupt.set()
        if self.release is not None:
            self.release.request_abort(by)

    def built(self, release: Any) -> None:
        """``on_build``: the release the next signal aborts (once a signal came, it aborts it at once)."""
        self.release = release
        if self.pending:
            release.request_abort(self.pending)


def _options(route_timeout: float, running: _Running, lock_wait: float) -> dict[str, Any]:
    return {"route_timeout": route_timeout, "lock_wait": lock_wait, "on_build": running.built}


def _finish_up(outcome: Any) -> NoReturn:
    for one in outcome.apps or (outcome,):
        if one.release is not None:
            result = one.release
            click.echo(f"release {result.release}: {result.phase} — {result.reason or 'done'}")
            if result.unapplied:
                click.echo(f"not applied by the rollback (changed in the stack file during the release): {', '.join(result.unapplied)}")
        else:
            click.echo(one.message)
    sys.exit(outcome.exit_code)


@main.command()
@click.argument("stack")
@_app
@click.option("--retry", is_flag=True, help="Release a workload that an earlier release rolled back.")
@_lab
@_route_timeout
@_lock_wait
@_project
def up(stack: str, app: str | None, retry: bool, lab: bool | None, route_timeout: float, lock_wait: float, project_dir: Path | None) -> None:
    """Make STACK what its stack file and program ask for: apply every change but a workload change,
    then release the app's workload change progressively (a no-op when nothing changed).

    Exit codes as for release.
    """
    from canary import api

    where = Where(project_dir, lab)
    running = _Running()
    _on_signals(running.abort)
    _finish_up(api.up(stack, app=app, retry=retry, on_event=_print_event, interrupt=running.interrupt, **where.kwargs,
                      **_options(route_timeout, running, lock_wait)))


@main.command()
@click.argument("stack")
@click.option("--image", required=True, help="The new version's image, e.g. registry.example.com/shop/web:1.9.0.")
@_app
@_lab
@_route_timeout
@_lock_wait
@_project
def release(stack: str, image: str, app: str | None, lab: bool | None, route_timeout: float, lock_wait: float, project_dir: Path | None) -> None:
    """Release IMAGE on STACK: set it as the app's image in the stack file, then `canary up`.

    Exit 0 when promoted, 1 when rolled back, failed or aborted, 2 on invalid
    input, 3 when another release holds the app, 4 when a rollback could not be applied yet,
    5 when promoted but not verified (run `canary resume STACK` in both cases).
    """
    from canary import api

    where = Where(project_dir, lab)
    running = _Running()
    _on_signals(running.abort)
    _finish_up(api.release(stack, image, app=app, on_event=_print_event, interrupt=running.interrupt, **where.kwargs,
                           **_options(route_timeout, running, lock_wait)))


@main.command()
@click.argument("stack")
@_app
@_lab
@_route_timeout
@_lock_wait
@_project
def resume(stack: str, app: str | None, lab: bool | None, route_timeout: float, lock_wait: float, project_dir: Path | None) -> None:
    """Continue or finish an interrupted release of STACK, from any machine."""
    from canary import api

    where = Where(project_dir, lab)
    running = _Running()
    _on_signals(running.abort)
    result = api.resume(stack, app=app, on_event=_print_event, **where.kwargs, **_options(route_timeout, running, lock_wait))
    click.echo(f"release {result.release}: {result.phase} — {result.reason or 'done'}")
    sys.exit(result.exit_code)


# --- looking ------------------------------------------------------------------------------------


@main.command()
@click.argument("stack")
@_app
@click.option("--json", "as_json", is_flag=True,
              help="Print the state as JSON, with running, holder, exit_code (null while the release is not finished), kept_here and cluster.")
@_lab
@_project
def status(stack: str, app: str | None, as_json: bool, lab: bool | None, project_dir: Path | None) -> None:
    """The current or last release of STACK's app: phase, step, failed checks, last checks and why."""
    from canary import api
    from canary.core.records import SKIPPABLE

    found = api.status(stack, app=app, on_warning=_warn, **Where(project_dir, lab).kwargs)
    if found is None:
        _die(f"stack {stack}: no release recorded", exitcodes.INVALID)
    if as_json:
        _echo_json(found.to_json())
        return
    state = found.state
    click.echo(f"release {state.release} of {stack}/{state.app or '?'}: {state.phase}{' (running)' if found.running else ''}"
               + (" — from the file journal of an earlier version" if found.legacy else "")
               + (" — THIS MACHINE'S COPY: the cluster did not answer" if found.local_copy else ""))
    if found.local_copy:
        click.echo(f"  the cluster did not answer ({found.unanswered}): this is the state as this machine last saved it, and it may be "
                   "stale (another machine may have gone on since); whether a release runs is unknown")
    elif found.unanswered:
        click.echo(f"  the cluster did not answer when the app's lease was read ({found.unanswered}): whether a release runs, and where, is unknown")
    canary = state.canary.image or state.canary.hash if state.canary else "?"
    stable = state.stable.image or state.stable.hash if state.stable else "?"
    shifting = f" (shifting to step {state.shifting_to})" if state.shifting_to is not None else ""
    click.echo(f"  canary {canary} over stable {stable} at weight {state.weight}{shifting}" + (" — PAUSED" if state.paused and state.phase in SKIPPABLE else ""))
    click.echo(f"  failed checks: {state.failed_in_row} in a row, {state.failed_total} in all")
    if found.holder:
        click.echo(f"  held by {found.holder}")
    if found.kept_records or found.kept_state:
        kept = " and ".join(([f"{found.kept_records} journal record{'s' if found.kept_records != 1 else ''}"] if found.kept_records else [])
                            + (["the state"] if found.kept_state else []))
        click.echo(f"  kept on this machine, not yet in the cluster: {kept} (other machines see the release without them; "
                   "the next release of the app from this machine sends them)")
    if state.reason:
        click.echo(f"  reason: {state.reason}")
    if state.forced:
        click.echo(f"  promoted without a passing analysis: {state.forced}")
    if state.rollback_pending:
        click.echo(f"  ROLLBACK PENDING: run canary resume {stack}")
    if state.phase.value == "PromotedUnverified":
        click.echo(f"  PROMOTED, NOT VERIFIED: run canary resume {stack} to verify")
    if state.post_rollout_owed and not found.running:
        click.echo(f"  its post-rollout webhooks were not called (its process stopped first): run canary resume {stack} to call them")
    if state.unapplied:
        click.echo(f"  changed in the stack file during the release, not applied by the rollback: {', '.join(state.unapplied)}")
    for check in state.last_checks:
        value = "—" if check.value is None else f"{check.value:.4g}"
        bounds = f" ({check.threshold_range})" if check.threshold_range else ""
        click.echo(f"  {check.verdict.value:>12} {check.metric}: {value}{bounds} — {check.reason}")


def _describe(record: Any) -> str:
    kind = record.type
    if kind == "tick":
        return f"tick {record.outcome.value}: {record.reason}"
    if kind == "up":
        targets = ", ".join(record.targets) if record.targets else "all"
        from canary.core import records

        # as dumped: a record of an earlier version held the route's A/B match values, which are never printed
        return f"up ({targets}) {record.seconds}s {record.changes} pinned {records.dump(record)['pinned']}"
    if kind == "webhook":
        return f"webhook {record.name} ({record.hook_type}) {'ok' if record.ok else 'FAILED'}: {record.detail}"
    if kind == "verified":
        return f"verified {record.what}: {record.details}"
    if kind == "request":
        return f"request {record.request} by {record.by}" + (f": {record.reason}" if record.reason else "")
    if kind == "snapshot":
        return f"snapshot: stable {record.stable_image or record.stable_hash}" + (f", export {record.export}" if record.export else "")
    return str(getattr(record, "message", ""))


@main.command()
@click.argument("stack")
@_app
@click.option("--json", "as_json", is_flag=True, help="Print the records as a JSON list; when the cluster did not answer, each has \"from\": \"this machine's copy\".")
@click.option("--release", "release_id", help="Only this release (exit 2 when the journal holds none of it).")
@_lab
@_project
def history(stack: str, app: str | None, as_json: bool, release_id: str | None, lab: bool | None, project_dir: Path | None) -> None:
    """Every recorded decision, up, check and webhook call of STACK's app's releases."""
    from canary import api
    from canary.core import records
    from canary.state.store import Journal

    found = api.history(stack, app=app, release_id=release_id, on_warning=_warn, **Where(project_dir, lab).kwargs)
    copy = found.unanswered if isinstance(found, Journal) else None  # the cluster did not answer: this machine's copy
    said = f"the cluster did not answer ({copy}): these are the records this machine keeps; other machines' are missing"
    if as_json:
        if copy:
            _warn(said)
        _echo_json([{**records.dump(r), **({"from": "this machine's copy"} if copy else {})} for r in found], indent=1)
        return
    if copy:
        click.echo(f"THIS MACHINE'S COPY: {said}")
    for r in found:
        click.echo(f"{r.time}  {r.release}  {r.phase:<16} {r.type:<9} {_describe(r)}")


@main.command()
@click.argument("stack")
@_app
@click.option("--release", "release_id", help="The release to draw (default: the latest).")
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The file to write: .png or .svg (the picture), or .html (the picture and the decision table).")
@_lab
@_project
def report(stack: str, app: str | None, release_id: str | None, out: Path, lab: bool | None, project_dir: Path | None) -> None:
    """Draw a release of STACK's app from its journal: the canary's weight over time, each metric's canary and
    stable values in their threshold band, failed checks, gates, requests and the decision. Prints the file's path.

    Exit 2 when --out has another suffix or the release is not in the journal.
    """
    from canary import api

    click.echo(api.report(stack, app=app, release_id=release_id, out=out, **Where(project_dir, lab).kwargs))


# --- steering -----------------------------------------------------------------------------------


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _steer(what: str, call: Callable[[], str], said: str) -> None:
    release_id = call()
    click.echo(f"{what} requested for release {release_id}; {said}")


@main.command()
@click.argument("stack")
@_app
@_lab
@_project
def abort(stack: str, app: str | None, lab: bool | None, project_dir: Path | None) -> None:
    """Ask STACK's running release to roll back to stable and end Aborted (from any machine)."""
    from canary import api

    _steer("abort", lambda: api.abort(stack, app=app, on_warning=_warn, **Where(project_dir, lab).kwargs), "it rolls back within a second")


@main.command()
@click.argument("stack")
@_app
@click.option("--force", is_flag=True, help="Promote although the last tick did not pass (needs --reason).")
@click.option("--skip-analysis", is_flag=True, help="Promote now, from any phase before promotion (an emergency; needs --reason).")
@click.option("--reason", default="", help="Why: journaled, shown by status and the report.")
@_lab
@_project
def promote(stack: str, app: str | None, force: bool, skip_analysis: bool, reason: str, lab: bool | None, project_dir: Path | None) -> None:
    """Approve STACK's release that waits for promotion or for a decision."""
    from canary import api

    _steer("promotion", lambda: api.promote(stack, app=app, force=force, skip_analysis=skip_analysis, reason=reason, on_warning=_warn, **Where(project_dir, lab).kwargs),
           "forced" if force else "the release takes it within a second (blue/green, waiting before its switch: switches, then judges green "
           "for an interval before it promotes)")


@main.command()
@click.argument("stack")
@_app
@_lab
@_project
def pause(stack: str, app: str | None, lab: bool | None, project_dir: Path | None) -> None:
    """Hold STACK's release at its current step; analysis goes on (Flagger's suspend)."""
    from canary import api

    _steer("pause", lambda: api.pause(stack, app=app, on_warning=_warn, **Where(project_dir, lab).kwargs), "it holds its step")


@main.command("continue")
@click.argument("stack")
@_app
@_lab
@_project
def continue_(stack: str, app: str | None, lab: bool | None, project_dir: Path | None) -> None:
    """Let STACK's paused release take its next steps again."""
    from canary import api

    _steer("continue", lambda: api.proceed(stack, app=app, on_warning=_warn, **Where(project_dir, lab).kwargs), "it goes on")


# --- checks -------------------------------------------------------------------------------------


@main.command()
@click.argument("stack")
@_app
@click.option("--weight", type=click.IntRange(0, 100), default=0, help="The weight to judge the tick at (at 100, compare and judge are not judged: stable serves no request).")
@click.option("--json", "as_json", is_flag=True, help="Print the tick as JSON.")
@_lab
@_project
def check(stack: str, app: str | None, weight: int, as_json: bool, lab: bool | None, project_dir: Path | None) -> None:
    """Run one analysis tick for STACK's app against its Prometheus now, and explain every check.

    Reads the stack file, so an encrypted token is taken from $CANARY_PROMETHEUS_TOKEN. Also says which
    label the app's series carry the pod name in, when it is not the configured one. Exit 0 when every
    check passes, 1 otherwise, 2 on invalid config or a query Prometheus rejects.
    """
    from pydantic import SecretStr

    from canary import api
    from canary.adapters import stackfile
    from canary.core import analysis, records
    from canary.core import config as stackconfig

    project_dir = Where(project_dir, lab).project_dir
    path = stackfile.stack_file(stackfile.open_project(project_dir), stack)
    spec = stackfile.load_stack_file(path)
    configs = spec.app_configs()
    name = app or (next(iter(configs)) if len(configs) == 1 else None)
    from_program = [n for n, c in configs.items() if c.app is None]  # only their analysis is in the stack file
    if name in from_program:
        _die(f"stack {stack}: app {name}: is declared by the program (its CanaryDeployment), not the stack file, which holds only its "
             f"analysis: canary check reads the stack file alone and cannot check it. `canary release {stack} --app {name} --image …` "
             "sends every query once before it changes anything, and refuses the release if Prometheus rejects one", exitcodes.INVALID)
    if name is None or name not in configs:
        declared = ", ".join(n for n in configs if n not in from_program) or "none"
        _die(f"stack {stack}: --app must name an app the stack file declares ({declared})"
             + (f"; {', '.join(from_program)}: declared by the program, which canary check cannot read" if from_program else ""), exitcodes.INVALID)
    release_spec = spec.release_spec(name)
    prom = release_spec.prometheus
    if prom is None:
        _die(f"stack {stack}: prometheus.address: must be set to run checks", exitcodes.INVALID)
    # an address stored as a Pulumi secret reads as the placeholder: queried, it was "Prometheus at ://" unreachable (exit 1)
    templates = release_spec.metric_templates
    used = dict.fromkeys(m.template_ref.name for m in release_spec.analysis.metrics if m.template_ref is not None)
    secret = ["prometheus.address"] if prom.address == stackconfig.ENCRYPTED else []
    secret += [f"metricTemplates.{t}.provider.address" for t in used if t in templates and templates[t].provider.address == stackconfig.ENCRYPTED]
    if secret:
        _die(f"stack {stack}: {', '.join(secret)}: {'is a Pulumi secret' if len(secret) == 1 else 'are Pulumi secrets'}, which canary check "
             "cannot decrypt (it reads the stack file alone), so it cannot query that Prometheus. To run checks, set the address without "
             f"--secret when it carries no credential; `canary release {stack} --image …` decrypts it and sends every query once before it "
             "changes anything, refusing the release if Prometheus rejects one", exitcodes.INVALID)
    encrypted = prom.token is not None and prom.token.get_secret_value() == stackconfig.ENCRYPTED
    if encrypted and not os.environ.get("CANARY_PROMETHEUS_TOKEN"):
        _die(f"stack {stack}: prometheus.token is encrypted in the stack file; set CANARY_PROMETHEUS_TOKEN to run checks", exitcodes.INVALID)
    updates: dict[str, Any] = {}
    if any(v.get_secret_value() == stackconfig.ENCRYPTED for v in prom.headers.values()):
        click.echo("note: headers stored encrypted in the stack file are not sent", err=True)
        updates["headers"] = {}
    if token := os.environ.get("CANARY_PROMETHEUS_TOKEN"):
        updates["token"] = SecretStr(token)
    release_spec = release_spec.model_copy(update={"prometheus": prom.model_copy(update=updates)})
    provider_for = api._provider_factory(release_spec)
    warned: list[str] = []
    if problems := analysis.preflight(release_spec, provider_for, spec.fields(name), warned):
        _die(str(InvalidSpec(problems, f"stack {stack}")), exitcodes.INVALID)
    for warning in warned:
        click.echo(f"warning: {warning}", err=True)
    note = _pod_label_note(release_spec, provider_for(None))
    if note:
        click.echo(f"note: {note}", err=True)
    result = analysis.run_tick(release_spec, provider_for, analysis.TickContext(weight=weight))
    if as_json:
        _echo_json({"outcome": result.outcome.value, "reason": result.reason, "weight": weight, "score": result.score,
                    "checks": [records.dump(c) for c in result.checks], "note": note})
    else:
        for c in result.checks:
            click.echo(f"{c.verdict.value:>12}  {c.reason}")
        click.echo(result.reason)
    sys.exit(exitcodes.OK if result.outcome is records.Outcome.ADVANCE else exitcodes.FAILED)


def _pod_label_note(spec: Any, provider: Any) -> str:
    """Which label the app's request series carry pod names in, when it is not the configured one."""
    from canary.core import metrics
    from canary.errors import MetricError

    configured = spec.prometheus.pod_label
    if spec.prometheus.request_count is not None:
        # the app counts its requests its own way: its http_requests_total (if any) says nothing of them, and the
        # preflight has run prometheus.requestCount over stable's pods, refusing it when it found no series
        return ""
    try:
        series = provider.series_labels(f'{metrics.REQUESTS_METRIC}{{{spec.prometheus.namespace_label}="{spec.app.namespace}"}}')
    except MetricError:
        return ""
    if not series:
        return (f"no {metrics.REQUESTS_METRIC} series labelled {spec.prometheus.namespace_label}={spec.app.namespace!r} yet: the pod "
                "label cannot be checked (is prometheus.namespaceLabel the label your Prometheus puts a pod's namespace in?)")
    labels = set().union(*(s.keys() for s in series))
    if configured in labels:
        return ""
    candidates = [label for label in ("pod", "kubernetes_pod_name", "pod_name") if label in labels]
    hint = f"; they carry {', '.join(candidates)}: set prometheus.podLabel to it" if candidates else ""
    return f"the app's {metrics.REQUESTS_METRIC} series have no {configured} label{hint}"


@main.command()
@click.argument("stack")
@_app
@click.option("--release", "release_id", metavar="ID", help="Replay this release at its recorded tick times and compare with its decisions.")
@click.option("--from", "start", metavar="TIME", help="Replay a window from TIME: RFC 3339 with a timezone (2026-12-01T07:30:00Z), or -30m (before now).")
@click.option("--to", "end", metavar="TIME", help="The window's end: RFC 3339 with a timezone, `now`, or -5m.")
@click.option("--file", "file_", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Judge with this stack file's analysis (and metric templates) instead of STACK's own.")
@click.option("--json", "as_json", is_flag=True, help="Print the replay as JSON (ticks, conclusion, recorded ending, differences, notes).")
@_lab
@_project
def backtest(stack: str, app: str | None, release_id: str | None, start: str | None, end: str | None, file_: Path | None, as_json: bool,
             lab: bool | None, project_dir: Path | None) -> None:
    """Replay STACK's analysis against what Prometheus recorded and say what it would have decided, tick by tick.

    With --release ID the replay runs at the release's recorded tick times and every tick where its outcome, the
    weight or the step it was judged at (an iteration, blue/green's switch), differs from the journal is named; with
    --from/--to it ticks every analysis.interval.
    The analysis is the stack file's as it is now (edit thresholds there, or pass --file). Nothing is applied.
    Exit 0 when the backtest ran (whatever it concluded, differences included: see --json's `differences`),
    2 on invalid input, 1 when Prometheus or the cluster could not be read.
    """
    from canary import api

    result = api.backtest(stack, app=app, release_id=release_id, start=start, end=end, file=file_, **Where(project_dir, lab).kwargs)
    if as_json:
        _echo_json(result.to_json())
    else:
        for line in result.lines():
            click.echo(line)
    sys.exit(result.exit_code)


# --- the lab ------------------------------------------------------------------------------------


@main.group()
def lab() -> None:
    """The local lab: Kubernetes control plane, fake kubelet, Traefik gateway, Prometheus, Pulumi CLI."""


def _layout(project_dir: Path | None = None) -> Any:
    from canary.lab.layout import Layout

    return Layout.for_project(project_dir)


@lab.command("up")
@_project
def lab_up(project_dir: Path | None) -> None:
    """Start every lab component that is not already running (idempotent)."""
    from canary.lab import cluster

    layout = _layout(project_dir)
    start = time.monotonic()
    try:
        cluster.up(layout, say=lambda line: click.echo(line, err=True))
    except LabError as exc:
        _die(f"lab up failed: {exc}", exitcodes.FAILED)
    click.echo(f"lab is up in {time.monotonic() - start:.1f}s — source {layout.env_file} to use kubectl and pulumi", err=True)


@lab.command("down")
@_project
def lab_down(project_dir: Path | None) -> None:
    """Stop every lab component and remove the lab's network namespace."""
    from canary.lab import cluster

    cluster.down(_layout(project_dir), say=lambda line: click.echo(line, err=True))


@lab.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@_project
def lab_status(as_json: bool, project_dir: Path | None) -> None:
    """Each component's state and address; exit 0 when every component runs."""
    from canary.lab import cluster

    layout = _layout(project_dir)
    report = cluster.status(layout)
    pods = cluster.pods(layout)
    if as_json:
        _echo_json({"dir": str(layout.dir), "components": report, "pods": pods, "env": str(layout.env_file)})
    else:
        for row in report:
            click.echo(f"{row['component']:<24} {row['state']:<10} {row['address']}")
        for pod in pods:
            click.echo(f"  pod {pod['namespace']}/{pod['pod']:<32} {pod['image']:<16} {pod['ip']}:{pod['port']} {'serving' if pod['serving'] else 'starting'}")
    sys.exit(exitcodes.OK if all(r["state"] == "running" for r in report) else exitcodes.FAILED)


@main.command()
@click.option("--healthy", default="demo:v2", show_default=True, help="The version that should be promoted.")
@click.option("--faulty", default="demo:v2-faulty", show_default=True, help="The version that should be rolled back.")
@click.option("--reports", type=click.Path(path_type=Path, file_okay=False),
              help="Where to write each release's report, <release>.html (default: the lab directory's reports/, e.g. .lab/reports).")
@_project
def demo(healthy: str, faulty: str, reports: Path | None, project_dir: Path | None) -> None:
    """On the running lab: reset the lab stack to demo:v1, release a healthy and a faulty version, show both timelines
    and write both reports (canary report), printing their paths.

    Exit 0 when the healthy version was promoted and the faulty one rolled back.
    """
    from canary import api
    from canary.lab import cluster
    from canary.lab import demo as lab_demo

    layout = _layout(project_dir)
    if not cluster.running(layout):
        _die("the lab is not running: start it with `canary lab up`", exitcodes.FAILED)
    where = Where(layout.project, True)
    click.echo("== resetting the lab stack to its stable state (demo:v1, route at rest, no canary)")
    lab_demo.reset(layout)
    outcomes = []
    running = _Running()
    _on_signals(running.abort)  # Ctrl-C rolls the release back, as in `canary release` (it left traffic on the canary)
    for image in (healthy, faulty):
        if running.pending:  # stopped by a signal: no further release
            break
        click.echo(f"\n== releasing {image}")
        running.release = None
        outcome = api.release(cluster.LAB_STACK, image, on_event=_print_event, on_build=running.built, **where.kwargs)
        result = outcome.release
        outcomes.append(result)
        click.echo(f"release {result.release}: {result.phase} — {result.reason}" if result else outcome.message)
    for result in outcomes:
        if result is None:
            continue
        click.echo(f"\n== timeline of release {result.release} ({result.phase})")
        click.echo(lab_demo.timeline(api.history(cluster.LAB_STACK, release_id=result.release, **where.kwargs)))
        out = (reports or layout.dir / "reports") / f"{result.release}.html"
        try:
            click.echo(f"report: {api.report(cluster.LAB_STACK, release_id=result.release, out=out, **where.kwargs)}")
        except CanaryError as exc:  # the demo's outcome stands without its picture
            click.echo(f"report of release {result.release} not written: {exc}", err=True)
    sys.exit(exitcodes.OK if _demo_ok(outcomes) else exitcodes.FAILED)


def _demo_ok(outcomes: list[Any]) -> bool:
    """The healthy version promoted and the faulty one rolled back: both releases ran (a signal stops the demo after one)."""
    phases = [result.phase.value if result is not None else None for result in outcomes]
    return phases == ["Succeeded", "Failed"]
