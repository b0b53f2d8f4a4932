"""The Python API for scripts: run, resume, inspect and steer releases of a stack.

    from canary.api import release
    result = release("staging", "registry.example.com/shop/web:1.9.0", on_event=print)
    if result.phase is Phase.SUCCEEDED: ...

Wires the release to its adapters (stack, cluster reader, Prometheus, journal)
from the environment: the user's Pulumi backend and kubeconfig, or the local
lab's when ``lab=True`` (or ``$CANARY_LAB_DIR`` is set).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from canary.journal import Journal, state_root
from canary.release import Event, Phase, Release, ReleaseResult, ReleaseState

__all__ = ["Event", "Phase", "ReleaseResult", "ReleaseState", "abort", "history", "promote", "release", "resume", "status"]


def _lab_wanted(lab: bool | None) -> bool:
    return bool(lab or (lab is None and os.environ.get("CANARY_LAB_DIR")))


def _project_dir(project_dir: Path | None, lab: bool | None = None) -> Path:
    """The project: given, the lab's working copy when releasing on the lab, else found from the cwd."""
    if project_dir is not None:
        return project_dir
    if _lab_wanted(lab):
        from canary.lab.layout import Layout

        return Layout.default().project
    from canary.cli import find_project_dir

    return find_project_dir()


def environment(lab: bool | None = None) -> dict[str, str]:
    """The Pulumi/Kubernetes environment: the lab's, or this process's own."""
    if _lab_wanted(lab):
        from canary.lab.layout import Layout

        return {**os.environ, **Layout.default().pulumi_env()}
    return dict(os.environ)


def journal(stack: str, project_dir: Path | None = None, lab: bool | None = None) -> Journal:
    return Journal(state_root(_project_dir(project_dir, lab)), stack)


def build(stack: str, *, project_dir: Path | None = None, lab: bool | None = None, on_event: Callable[[Event], None] | None = None, **options: Any) -> Release:
    """A Release for ``stack`` wired to the real adapters."""
    from canary.kube import ClusterReader, Kube
    from canary.prometheus import PrometheusProvider
    from canary.stack import Stack

    project = _project_dir(project_dir, lab)
    env = environment(lab)
    stack_port = Stack(project, stack, env)
    kube = Kube(Path(env["KUBECONFIG"]) if env.get("KUBECONFIG") else None)
    providers: dict[str | None, PrometheusProvider] = {}

    def provider_for(address: str | None) -> PrometheusProvider:
        if address not in providers:
            providers[address] = prometheus_provider(release_obj.spec, address)
        return providers[address]

    release_obj = Release(stack_port, ClusterReader(kube), provider_for, journal(stack, project), stack_name=stack, on_event=on_event, **options)
    return release_obj


def prometheus_provider(spec: Any, address: str | None) -> Any:
    """A provider for the stack's Prometheus, or for a template's own address.

    The stack's token and headers are sent to the stack's Prometheus only, never
    to another address a metric template names.
    """
    from canary.prometheus import PrometheusProvider

    prom = spec.prometheus
    timeout = prom.timeout if prom else timedelta(seconds=10)
    if prom is not None and (address is None or address.rstrip("/") == prom.address.rstrip("/")):
        token = prom.token.get_secret_value() if prom.token else None
        headers = {k: v.get_secret_value() for k, v in prom.headers.items()}
        return PrometheusProvider(prom.address, token=token, headers=headers, timeout=timeout)
    return PrometheusProvider(address or "", timeout=timeout)


def release(stack: str, image: str, **kwargs: Any) -> ReleaseResult:
    """Release ``image`` on ``stack`` and return when it is promoted, rolled back or aborted."""
    return build(stack, **kwargs).start(image)


def resume(stack: str, **kwargs: Any) -> ReleaseResult:
    """Continue (or finish rolling back) an interrupted release from the journal."""
    return build(stack, **kwargs).resume()


def status(stack: str, project_dir: Path | None = None, lab: bool | None = None) -> dict[str, Any] | None:
    """The current (or last) release's state, with its holder if it is running."""
    j = journal(stack, project_dir, lab)
    state = j.load_state()
    if state is None:
        return None
    holder = j.holder()
    state["running"] = bool(holder and holder.alive() and holder.release == state["release"])
    state["holder"] = str(holder) if holder else None
    return state


def history(stack: str, project_dir: Path | None = None, release_id: str | None = None, lab: bool | None = None) -> list[dict[str, Any]]:
    return journal(stack, project_dir, lab).records(release_id)


def abort(stack: str, project_dir: Path | None = None, by: str = "canary abort", lab: bool | None = None) -> str:
    """Ask the running release to roll back and end Aborted; returns the release id."""
    from canary.errors import InvalidSpec, Problem

    j = journal(stack, project_dir, lab)
    state = j.load_state()
    phase = Phase(state["phase"]) if state is not None else None
    if state is None or phase in (Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED):
        raise InvalidSpec([Problem("stack", stack, "has no release in progress to abort")], "abort")
    if phase in (Phase.PROMOTING, Phase.FINALISING):
        # The release would ignore the request (the new version passed every check): say so now, not in its log.
        raise InvalidSpec([Problem("stack", stack, f"release {state['release']} is already {state['phase']}: the new version passed every check and a promotion is not interrupted")], "abort")
    j.request("abort", state["release"], by=by)
    j.record(state["release"], "request", request="abort", by=by)
    return str(state["release"])


def promote(stack: str, project_dir: Path | None = None, lab: bool | None = None) -> str:
    """Approve a release waiting for promotion."""
    j = journal(stack, project_dir, lab)
    state = j.load_state()
    if state is None or Phase(state["phase"]) is not Phase.WAITING_PROMOTION:
        from canary.errors import InvalidSpec, Problem

        raise InvalidSpec([Problem("stack", stack, f"has no release waiting for promotion (phase {state['phase'] if state else 'none'})")], "promote")
    j.request("promote", state["release"])
    j.record(state["release"], "request", request="promote")
    return str(state["release"])
