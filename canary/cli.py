"""The ``canary`` command line: parse arguments, call the library, print, and set the exit code.

Exit codes: 0 success; 1 a release rolled back, failed or was aborted; 2
invalid input, a stack that does not exist included (message on stderr); 3
refused because the stack is busy; 4 a rollback could not be applied yet
(``canary resume`` completes it). No domain logic lives here.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from canary import flagger, stackconfig
from canary.errors import CanaryError, InvalidSpec, LabError, StackNotFound

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_BUSY = 0, 1, 2, 3


def _die(message: str, code: int) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def find_project_dir(start: Path | None = None) -> Path:
    """The directory holding Pulumi.yaml: $CANARY_PROJECT_DIR, the cwd or a parent, else the package's checkout."""
    if env := os.environ.get("CANARY_PROJECT_DIR"):
        return Path(env)
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "Pulumi.yaml").is_file() and (candidate / "stacks").is_dir():
            return candidate
    return Path(__file__).resolve().parent.parent


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="canary", prog_name="canary")
def main() -> None:
    """Progressive delivery with Pulumi: weighted canary releases gated by Prometheus checks."""


@main.command()
@click.argument("stack", required=False)
@click.option("--file", "file_", type=click.Path(path_type=Path, dir_okay=False), help="Validate a stack config file anywhere on disk.")
@click.option("--project-dir", type=click.Path(path_type=Path, file_okay=False), help="Project directory (default: found from the cwd).")
def validate(stack: str | None, file_: Path | None, project_dir: Path | None) -> None:
    """Validate the config of STACK (stacks/Pulumi.STACK.yaml) or of --file PATH.

    Nothing is applied. Every problem is listed with its field, value and rule.
    """
    if (stack is None) == (file_ is None):
        _die("canary validate: give either STACK or --file PATH", EXIT_INVALID)
    path = file_ if file_ is not None else stackconfig.stack_file(project_dir or find_project_dir(), str(stack))
    if stack is not None and not path.is_file():
        _die(f"stack {stack!r}: no config file {path.name} in {path.parent}", EXIT_INVALID)
    try:
        spec = stackconfig.load_stack_file(path)
    except InvalidSpec as exc:
        _die(str(exc), EXIT_INVALID)
    from canary import schedule

    click.echo(
        f"{path.name}: valid — app {spec.app.namespace}/{spec.app.name}, stable {spec.stable_image}, "
        f"canary {spec.canary_image or 'none'} at {spec.canary_weight}%, steps {schedule.weights(spec.analysis)}, "
        f"{len(spec.analysis.metrics)} metrics, {len(spec.analysis.webhooks)} webhooks"
    )


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
@click.option("--stable-image", help="The stable image (Flagger keeps it in the Deployment, not the Canary).")
@click.option("--gateway", help="Gateway parentRef as NAME[.NAMESPACE][:SECTION], when the Canary has no gatewayRefs.")
def import_flagger(manifests: tuple[Path, ...], stable_image: str | None, gateway: str | None) -> None:
    """Print the stack config equivalent to a Flagger Canary and its MetricTemplates.

    What canary does not carry over is listed on stderr, field by field.
    """
    texts = []
    for path in manifests:
        try:
            texts.append((str(path), path.read_text()))
        except OSError as exc:
            _die(f"{path}: cannot be read: {exc.strerror}", EXIT_INVALID)
    try:
        result = flagger.convert(flagger.load_manifests(texts), stable_image=stable_image, parent_ref=_parent_ref(gateway))
    except InvalidSpec as exc:
        _die(str(exc), EXIT_INVALID)
    header = "# Imported from " + ", ".join(p.name for p in manifests) + " by canary import-flagger.\n"
    header += "".join(f"# note: {note}\n" for note in result.notes)
    click.echo(header + stackconfig.dump_stack_file(result.spec), nl=False)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)


@main.command()
@click.argument("stack")
@click.option("--weight", type=click.IntRange(0, 100), default=None, help="Weight to report the tick at (default: the stack's canaryWeight).")
@click.option("--json", "as_json", is_flag=True, help="Print the tick as JSON.")
@click.option("--project-dir", type=click.Path(path_type=Path, file_okay=False))
def check(stack: str, weight: int | None, as_json: bool, project_dir: Path | None) -> None:
    """Run one analysis tick for STACK against its Prometheus now, and explain every check.

    Exit 0 when every check passes, 1 otherwise, 2 on invalid config or a query
    Prometheus rejects. Secrets must be readable: the
    token is taken from $CANARY_PROMETHEUS_TOKEN when the stack stores it encrypted.
    """
    from canary import analysis
    from canary.api import prometheus_provider

    path = stackconfig.stack_file(project_dir or find_project_dir(), stack)
    try:
        spec = stackconfig.load_stack_file(path)
    except InvalidSpec as exc:
        _die(str(exc), EXIT_INVALID)
    if spec.prometheus is None:
        _die(f"stack {stack}: prometheus.address: must be set to run checks", EXIT_INVALID)
    encrypted = spec.prometheus.token is not None and spec.prometheus.token.get_secret_value() == stackconfig.ENCRYPTED
    if encrypted and not os.environ.get("CANARY_PROMETHEUS_TOKEN"):
        _die(f"stack {stack}: prometheus.token is encrypted in the stack file; set CANARY_PROMETHEUS_TOKEN to run checks", EXIT_INVALID)
    if any(v.get_secret_value() == stackconfig.ENCRYPTED for v in spec.prometheus.headers.values()):
        click.echo("note: headers stored encrypted in the stack file are not sent", err=True)
        spec = spec.model_copy(update={"prometheus": spec.prometheus.model_copy(update={"headers": {}})})
    if token := os.environ.get("CANARY_PROMETHEUS_TOKEN"):
        from pydantic import SecretStr

        spec = spec.model_copy(update={"prometheus": spec.prometheus.model_copy(update={"token": SecretStr(token)})})

    def provider_for(address: str | None) -> Any:
        return prometheus_provider(spec, address)

    if problems := analysis.preflight(spec, provider_for):  # a query Prometheus rejects is a config defect, as for a release
        _die(str(InvalidSpec(problems, f"stack {stack}")), EXIT_INVALID)
    result = analysis.run_tick(spec, provider_for, failed_in_row=0, weight=spec.canary_weight if weight is None else weight)
    if as_json:
        click.echo(json.dumps(tick_to_dict(result), indent=2))
    else:
        for c in result.checks:
            click.echo(f"{c.verdict.value:>8}  {c.reason}")
        click.echo(result.reason)
    sys.exit(EXIT_OK if result.outcome is analysis.Outcome.ADVANCE else EXIT_FAILED)


def tick_to_dict(result: Any) -> dict[str, Any]:
    return {
        "outcome": result.outcome.value,
        "reason": result.reason,
        "failedInRow": result.failed_in_row,
        "threshold": result.threshold,
        "weight": result.weight,
        "checks": [
            {
                "metric": c.metric,
                "query": c.query,
                "value": c.value,
                "thresholdRange": {"min": c.threshold.min, "max": c.threshold.max},
                "verdict": c.verdict.value,
                "effect": c.effect.value,
                "reason": c.reason,
            }
            for c in result.checks
        ],
    }


def run() -> None:
    """Console-script entry: map stray library errors to exit codes instead of tracebacks."""
    try:
        main(standalone_mode=True)
    except InvalidSpec as exc:
        _die(str(exc), EXIT_INVALID)
    except StackNotFound as exc:  # a stack named on the command line that does not exist is bad input
        _die(f"canary: {exc}", EXIT_INVALID)
    except LabError as exc:
        _die(f"lab: {exc}", EXIT_FAILED)
    except CanaryError as exc:
        _die(f"canary: {exc}", EXIT_FAILED)


@main.group()
def lab() -> None:
    """The local lab: Kubernetes control plane, fake kubelet, Traefik gateway, Prometheus, Pulumi CLI."""


def _layout() -> Any:
    from canary.lab.layout import Layout

    return Layout.default()


@lab.command("up")
def lab_up() -> None:
    """Start every lab component that is not already running (idempotent)."""
    from canary.lab import cluster

    layout = _layout()
    start = time.monotonic()
    try:
        cluster.up(layout, say=lambda line: click.echo(line, err=True))
    except LabError as exc:
        _die(f"lab up failed: {exc}", EXIT_FAILED)
    click.echo(f"lab is up in {time.monotonic() - start:.1f}s — source {layout.env_file} to use kubectl and pulumi", err=True)


@lab.command("down")
def lab_down() -> None:
    """Stop every lab component and remove the lab's network namespace."""
    from canary.lab import cluster

    cluster.down(_layout(), say=lambda line: click.echo(line, err=True))


@lab.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def lab_status(as_json: bool) -> None:
    """Each component's state and address; exit 0 when every component runs."""
    from canary.lab import cluster

    layout = _layout()
    report = cluster.status(layout)
    pods = cluster.pods(layout)
    if as_json:
        click.echo(json.dumps({"dir": str(layout.dir), "components": report, "pods": pods, "env": str(layout.env_file)}, indent=2))
    else:
        for row in report:
            click.echo(f"{row['component']:<24} {row['state']:<10} {row['address']}")
        for pod in pods:
            click.echo(f"  pod {pod['namespace']}/{pod['pod']:<32} {pod['image']:<16} {pod['ip']}:{pod['port']} {'serving' if pod['serving'] else 'starting'}")
    sys.exit(EXIT_OK if all(r["state"] == "running" for r in report) else EXIT_FAILED)


def _print_event(event: Any) -> None:
    click.echo(f"{event.time[11:23]}  {event.phase:<16} w={event.weight:>3}  {event.message}", err=False)


@main.command()
@click.argument("stack")
@click.option("--image", required=True, help="The new version's image, e.g. registry.example.com/shop/web:1.9.0.")
@click.option("--lab", is_flag=True, default=None, help="Use the local lab's Pulumi backend and cluster (default when $CANARY_LAB_DIR is set).")
@click.option("--route-timeout", type=click.FloatRange(1, 3600), default=60, show_default=True, help="Seconds to wait for the gateway to accept a route change.")
@click.option("--project-dir", type=click.Path(path_type=Path, file_okay=False))
def release(stack: str, image: str, lab: bool | None, route_timeout: float, project_dir: Path | None) -> None:
    """Release IMAGE on STACK: step the canary weight up under analysis, then promote or roll back.

    Exit 0 when promoted, 1 when rolled back, failed or aborted, 2 on invalid input,
    3 when another release holds the stack, 4 when a rollback could not be applied
    (run `canary resume STACK` once the cluster answers).
    """
    from canary import api
    from canary.errors import StackBusy

    _abort_on_signals(stack, project_dir, lab)
    try:
        result = api.release(stack, image, project_dir=project_dir, lab=lab, on_event=_print_event, route_timeout=route_timeout)
    except InvalidSpec as exc:
        _die(str(exc), EXIT_INVALID)
    except StackBusy as exc:
        _die(str(exc), EXIT_BUSY)
    _finish(result)


def _abort_on_signals(stack: str, project_dir: Path | None, lab: bool | None) -> None:
    """SIGINT/SIGTERM roll the release back to stable (it ends Aborted); a second signal stops at once.

    An `up` in progress is cancelled by the CLI itself (it shares the terminal's
    signal), which releases Pulumi's lock; the rollback then runs with fresh `up`s.
    """
    import signal

    from canary import api

    def handle(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            api.abort(stack, project_dir, by=f"signal {name}", lab=lab)
            click.echo(f"{name}: rolling back to stable; send it again to stop at once", err=True)
        except InvalidSpec:
            raise SystemExit(128 + signum) from None

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def _finish(result: Any) -> NoReturn:
    click.echo(f"release {result.release}: {result.phase} — {result.reason or 'done'}")
    sys.exit(result.exit_code)


@main.command()
@click.argument("stack")
@click.option("--lab", is_flag=True, default=None, help="Use the local lab's Pulumi backend and cluster.")
@click.option("--route-timeout", type=click.FloatRange(1, 3600), default=60, show_default=True, help="Seconds to wait for the gateway to accept a route change.")
@click.option("--project-dir", type=click.Path(path_type=Path, file_okay=False))
def resume(stack: str, lab: bool | None, route_timeout: float, project_dir: Path | None) -> None:
    """Continue or finish an interrupted release of STACK from its journal."""
    from canary import api
    from canary.errors import StackBusy

    _abort_on_signals(stack, project_dir, lab)
    try:
        result = api.resume(stack, project_dir=project_dir, lab=lab, on_event=_print_event, route_timeout=route_timeout)
    except InvalidSpec as exc:
        _die(str(exc), EXIT_INVALID)
    except StackBusy as exc:
        _die(str(exc), EXIT_BUSY)
    _finish(result)


@main.command()
@click.argument("stack")
@click.option("--json", "as_json", is_flag=True)
@click.option("--project-dir", type=click.Path(path_type=Path, file_okay=False))
def status(stack: str, as_json: bool, project_dir: Path | None) -> None:
    """The current or last release of STACK: phase, weight, failed checks, last checks and why."""
    from canary import api

    state = api.status(stack, project_dir)
    if state is None:
        _die(f"stack {stack}: no release recorded", EXIT_INVALID)
    if as_json:
        click.echo(json.dumps(state, indent=2, default=str))
        return
    click.echo(f"release {state['release']} of {stack}: {state['phase']}{' (running)' if state['running'] else ''}")
    shifting = f" (shifting to {state['shifting_to']})" if state.get("shifting_to") is not None else ""
    click.echo(f"  canary {state['canary_image']} over stable {state['stable_image']} at weight {state['weight']}{shifting}")
    click.echo(f"  failed checks in a row: {state['failed_in_row']}")
    if state.get("reason"):
        click.echo(f"  reason: {state['reason']}")
    if state.get("rollback_pending"):
        click.echo(f"  ROLLBACK PENDING: run canary resume {stack}")
    for check in state.get("last_checks") or []:
        value = "—" if check["value"] is None else f"{check['value']:.4g}"
        bounds = " ".join(f"{k} {v:g}" for k, v in check["threshold"].items() if v is not None)
        click.echo(f"  {check['verdict']:>8} {check['metric']}: {value} ({bounds}) — {check['reason']}")


def _targets(record: dict[str, Any]) -> str:
    """The "(only route, canary-deployment) " of an `up` limited to some resources (an older journal says True: the route)."""
    targeted = record.get("targeted")
    if not targeted:
        return ""
    return f"(only {', '.join(targeted) if isinstance(targeted, list) else 'route'}) "


@main.command()
@click.argument("stack")
@click.option("--json", "as_json", is_flag=True)
@click.option("--release", "release_id", help="Only this release.")
@click.option("--project-dir", type=click.Path(path_type=Path, file_okay=False))
def history(stack: str, as_json: bool, release_id: str | None, project_dir: Path | None) -> None:
    """Every recorded decision, up, check and webhook call of STACK's releases."""
    from canary import api

    records = api.history(stack, project_dir, release_id)
    if as_json:
        click.echo(json.dumps(records, indent=1, default=str))
        return
    for r in records:
        kind = r["type"]
        if kind == "tick":
            text = f"tick {r['outcome']}: {r['reason']}"
        elif kind == "up":
            text = f"up {_targets(r)}{r['seconds']}s {r['changes']} config {r['config']}"
        elif kind == "webhook":
            text = f"webhook {r['name']} ({r['hook_type']}) {'ok' if r['ok'] else 'FAILED'}: {r['detail']}"
        else:
            text = r.get("message") or {k: v for k, v in r.items() if k not in ("time", "stack", "release", "type")}
        click.echo(f"{r['time']}  {r['release']}  {r.get('phase', ''):<16} {kind:<9} {text}")


@main.command()
@click.argument("stack")
@click.option("--project-dir", type=click.Path(path_type=Path, file_okay=False))
def abort(stack: str, project_dir: Path | None) -> None:
    """Ask STACK's running release to roll back to stable and end Aborted."""
    from canary import api

    try:
        release_id = api.abort(stack, project_dir)
    except InvalidSpec as exc:
        _die(str(exc), EXIT_INVALID)
    click.echo(f"abort requested for release {release_id}; it rolls back within a fraction of a second")


@main.command()
@click.argument("stack")
@click.option("--project-dir", type=click.Path(path_type=Path, file_okay=False))
def promote(stack: str, project_dir: Path | None) -> None:
    """Approve STACK's release that waits for promotion."""
    from canary import api

    try:
        release_id = api.promote(stack, project_dir)
    except InvalidSpec as exc:
        _die(str(exc), EXIT_INVALID)
    click.echo(f"promotion approved for release {release_id}")


@main.command()
@click.option("--healthy", default="demo:v2", show_default=True, help="The version that should be promoted.")
@click.option("--faulty", default="demo:v2-faulty", show_default=True, help="The version that should be rolled back.")
def demo(healthy: str, faulty: str) -> None:
    """On the running lab: reset the lab stack to demo:v1, release a healthy and a faulty version, show both timelines.

    Exit 0 when the healthy version was promoted and the faulty one rolled back.
    """
    from canary import api
    from canary.lab import cluster
    from canary.lab.layout import Layout
    from canary.stack import Stack

    layout = Layout.default()
    if not cluster.running(layout):
        _die("the lab is not running: start it with `canary lab up`", EXIT_FAILED)
    click.echo("== resetting the lab stack to its stable state (demo:v1, 100/0, no canary)")
    stack = Stack(layout.project, cluster.LAB_STACK, api.environment(lab=True))
    stack.set_config({"stableImage": "demo:v1", "canaryWeight": 0}, remove=("canaryImage",))
    stack.up()
    results = []
    for image in (healthy, faulty):
        click.echo(f"\n== releasing {image}")
        results.append(api.release(cluster.LAB_STACK, image, lab=True, on_event=_print_event))
        click.echo(f"release {results[-1].release}: {results[-1].phase} — {results[-1].reason}")
    journal = api.journal(cluster.LAB_STACK, lab=True)
    for result in results:
        click.echo(f"\n== timeline of release {result.release} ({result.phase})")
        click.echo(render_timeline(journal.records(result.release)))
    ok = results[0].phase.value == "Succeeded" and results[1].phase.value == "Failed"
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


def render_timeline(records: list[dict[str, Any]]) -> str:
    """One line per decision, state change and check, with seconds since the release began."""
    from canary.journal import record_time

    if not records:
        return "(no records)"
    start = record_time(records[0])
    lines = []
    for r in records:
        at = record_time(r) - start
        if r["type"] in ("state", "decision", "event"):
            text = r.get("message", "")
        elif r["type"] == "tick":
            text = "checks: " + "; ".join(c["reason"] for c in r["checks"])
        elif r["type"] == "up":
            text = f"pulumi up {_targets(r)}{r['seconds']:.1f}s"
        else:
            continue
        lines.append(f"  +{at:6.1f}s  {r.get('phase', ''):<16} w={r.get('weight', ''):<3} {text}")
    return "\n".join(lines)
