"""The Python API for scripts: run, resume, inspect and steer releases of a stack's apps.

    from canary.api import up
    outcome = up("staging", on_event=print)          # release what the stack file asks for
    if outcome.exit_code != 0: ...

Wires a release to its adapters from the environment: the Pulumi backend the
CLI uses (``PULUMI_BACKEND_URL`` or ``pulumi login``), the cluster the stack's
kubernetes provider deploys to (``kubernetes:context``/``kubernetes:kubeconfig``
in the stack config, else ``KUBECONFIG``), the release store in the app's
namespace. Every function takes ``project_dir`` (a str or a Path; default:
``$CANARY_PROJECT_DIR``, else found from the current directory), refused unless it
holds a ``Pulumi.yaml`` that parses, and ``env`` (default: this process's
environment). No domain logic lives here.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from canary.adapters import files, http, stackfile
from canary.adapters.kube import ClusterReader, Kube
from canary.adapters.prometheus import PrometheusProvider
from canary.adapters.push import Pusher
from canary.adapters.stack import Stack
from canary.adapters.webhooks import Caller
from canary.core import backtest as backtesting
from canary.core import config as stackconfig
from canary.core import exitcodes, naming, records
from canary.core.naming import Track
from canary.core.records import ENDED, PROMOTION, SKIPPABLE, Phase, ReleaseState, TrackPin
from canary.core.spec import App, Gateway, ReleaseSpec, StackSpec, newer_rules_noted
from canary.errors import CanaryError, Cancelled, ClusterUnreachable, InvalidSpec, LeaseLost, Problem, StackBusy, StackError, StackLocked, broken_rules
from canary.release.machine import Release, ReleaseResult
from canary.release.ports import AppFacts, other_urns
from canary.release.record import Event
from canary.state.cache import Cache, Legacy, state_root
from canary.state.lease import Lease
from canary.state.store import Journal, ReleaseStore

__all__ = ["BacktestResult", "Event", "Phase", "ReleaseResult", "ReleaseState", "UpOutcome", "abort", "backtest", "history", "pause", "proceed",
           "promote", "release", "report", "resume", "status", "up"]


# --- opening a stack ----------------------------------------------------------------------------


@dataclass
class Workspace:
    """One stack of a project, opened: its config, outputs and the cluster it deploys to."""

    project_dir: Path
    name: str
    env: dict[str, str]
    stack: Stack
    spec: StackSpec
    outputs: dict[str, Any]
    kube: Kube
    #: the stack file could not be read at all (its YAML broken): the cluster is the environment's, not its kubernetes config's
    config_unread: bool = False

    def apps(self) -> list[str]:
        declared = set(self.spec.app_configs())
        exported = self.exported()
        if self.spec.names_no_app() and exported:
            declared = set()  # a top-level analysis names no app ("app"): the apps are those the program's components export
        return sorted(declared | exported)

    def exported(self) -> set[str]:
        """The apps the stack's outputs hold: those its last update deployed."""
        return {k.removeprefix(naming.OUTPUT_PREFIX) for k in self.outputs if k.startswith(naming.OUTPUT_PREFIX)}

    def removed(self) -> list[str]:
        """The deployed apps the stack config no longer declares: the next update deletes them (unless a
        component of the program still declares one, which then has no analysis)."""
        exported = self.exported()
        return sorted(name for name in self.apps() if name in exported and not self.spec.declares(name))

    def app(self, name: str | None) -> str:
        apps = self.apps()
        if name is None:
            if len(apps) != 1:
                raise InvalidSpec([Problem("--app", "nothing", f"is required: stack {self.name} holds the apps {', '.join(apps) or 'none'}")], "arguments")
            return apps[0]
        if name not in apps:
            raise InvalidSpec([Problem("--app", name, f"names no app of stack {self.name} (apps: {', '.join(apps) or 'none'})")], "arguments")
        return name

    def stable_uid(self, app: str) -> str | None:
        """The uid of the stable Deployment the stack's last update made (its component exports it)."""
        exported = self.outputs.get(f"{naming.OUTPUT_PREFIX}{app}")
        uids = exported.get("uids") if isinstance(exported, Mapping) else None
        uid = uids.get("stableDeployment") if isinstance(uids, Mapping) else None
        return uid if isinstance(uid, str) else None

    def release_spec(self, app: str, spec: StackSpec | None = None) -> ReleaseSpec | None:
        """The app judged by ``spec``'s analysis (default: the stack config's), with the app and gateway of the
        program's component when it declares them (None: never deployed, or no longer in ``spec``)."""
        exported = self.outputs.get(f"{naming.OUTPUT_PREFIX}{app}")
        stack_spec = spec or self.spec
        if not isinstance(exported, Mapping) or not stack_spec.declares(app):
            return None
        try:
            app_model = App.model_validate(exported["app"])
            gateway = Gateway.model_validate(exported["gateway"])
            # the stack config's own app (canary's own program declares it from there) is the stack config's to give; a
            # component's beside it is refused. Outputs of earlier versions do not say: the stack config's then, as before
            config = stack_spec.app_configs().get(app)
            from_config = exported.get("appFrom") != "component" and config is not None and config.app is not None
            return stack_spec.release_spec(app) if from_config else stack_spec.release_spec(app, app_model, gateway)
        except (KeyError, ValueError) as exc:
            raise InvalidSpec([Problem(f"outputs.{naming.OUTPUT_PREFIX}{app}", "unreadable", f"is not what the component exports: {exc}")], "stack") from exc

    def facts(self, app: str, spec: StackSpec | None = None) -> AppFacts | None:
        """The app as its last ``up`` left it, judged by ``spec``'s analysis (None: never deployed, or no
        longer in ``spec``, so that the next update deletes it)."""
        release_spec = self.release_spec(app, spec)
        if release_spec is None:
            return None
        stack_spec = spec or self.spec
        exported = self.outputs[f"{naming.OUTPUT_PREFIX}{app}"]
        uid = self.stable_uid(app)
        stable_pin = self._running_stable(app, release_spec, _exported_stable(exported), uid)
        others = other_urns(self.outputs, app)
        return AppFacts(spec=release_spec, urns=dict(exported.get("urns") or {}), stable=stable_pin,
                        desired=_pin(exported["desired"]), stack=self.name, copies=dict(exported.get("copies") or {}), others=others,
                        fields=stack_spec.fields(app))

    def _running_stable(self, app: str, spec: ReleaseSpec, exported: TrackPin | None, uid: str | None = None) -> TrackPin | None:
        """What the stable Deployment runs, as a pin. The stack outputs say it — unless an update of
        another app's release rewrote them: a targeted ``up`` recomputes every app's outputs from its own
        snapshot, so the outputs of an app it did not touch can name a template its stable never ran.
        The cluster decides: the pin whose hash the stable Deployment carries, from the outputs or else
        from the app's last release (its stable, or its canary once promoted).

        ``uid``, the stable Deployment's as the stack's last update saw it, proves the cluster canary reads
        is the one the program deploys to: a provider the program builds itself (from a cluster it creates,
        say) is invisible here, and a release would hold its lease, write its state and judge its tracks in
        whatever cluster the kubeconfig points at."""
        if exported is None:
            return None
        try:
            deployment = ClusterReader(self.kube).deployment(spec, Track.STABLE)
        except CanaryError:
            return exported  # the cluster does not answer: the outputs are all there is
        if uid and deployment["uid"] != uid:
            found = f"a Deployment of uid {deployment['uid']}" if deployment["exists"] else "no such Deployment"
            raise InvalidSpec([Problem("kubeconfig", f"{self.kube.source}, server {self.kube.server}", (
                f"is not the cluster stack {self.name} deploys {app} to: its last update made Deployment "
                f"{spec.app.namespace}/{naming.deployment(app, Track.STABLE)} of uid {uid}, this cluster has {found}. "
                "Point canary at the program's cluster (kubernetes:kubeconfig and kubernetes:context in the stack config, "
                "else KUBECONFIG and its current context); if the app's objects were deleted or replaced here by hand (a "
                "namespace or cluster rebuilt), `pulumi refresh` and then a plain `pulumi up` make them and the stack's outputs anew"))],
                f"stack {self.name}")
        return self.pin_running(app, spec.app.namespace, exported, deployment.get("hash"))

    def pin_running(self, app: str, namespace: str, exported: TrackPin, live: str | None) -> TrackPin:
        """Of the pins the app's stable may run — the outputs' ``exported``, its last release's stable, or its canary
        once promoted — the one carrying ``live``, the template hash its stable Deployment carries. ``exported`` when
        none does (the caller compares: the cluster then runs a template nothing here names), when ``live`` is None (no
        such Deployment, or the cluster did not answer), or when the release store does not answer."""
        if not live or live == exported.hash:
            return exported
        with contextlib.suppress(CanaryError):
            state = self.store(app, namespace).load()
            for pin in (state.canary, state.stable) if state is not None else ():
                if pin is not None and pin.hash == live:
                    return pin
        return exported

    def store(self, app: str, namespace: str) -> ReleaseStore:
        return ReleaseStore(self.kube, namespace, app, self.name, Cache(state_root(self.project_dir), self.name, app))

    def namespace(self, app: str) -> str:
        exported = self.outputs.get(f"{naming.OUTPUT_PREFIX}{app}")
        if isinstance(exported, Mapping) and exported.get("namespace"):
            return str(exported["namespace"])
        config = self.spec.app_configs().get(app)
        if config is not None and config.app is not None:
            return config.app.namespace
        return "default"


def _exported_stable(exported: Mapping[str, Any]) -> TrackPin | None:
    """The stable pin an app's stack outputs name (None: none). Recorded before pins kept their protocol, it takes
    what its Services were given then: every Service took the outputs' ``app.appProtocol``."""
    stable, app = exported.get("stable"), exported.get("app")
    if not isinstance(stable, Mapping):
        return None
    if "appProtocol" not in stable:
        stable = {**stable, "appProtocol": (app.get("appProtocol") if isinstance(app, Mapping) else None) or ""}
    return _pin(stable)


def _pin(data: Mapping[str, Any]) -> TrackPin:
    port = data.get("port")
    protocol = data.get("appProtocol")
    return TrackPin(template=dict(data.get("template") or {}), hash=str(data.get("hash", "")), image=str(data.get("image", "")),
                    config_hashes=dict(data.get("config_hashes") or {}), port=int(port) if port is not None else None,
                    app_protocol=str(protocol) if protocol is not None else None)


def _kube(config: Mapping[str, Any], env: Mapping[str, str], project_dir: Path | None = None) -> Kube:
    """The cluster the stack's kubernetes provider deploys to: its ``kubernetes:kubeconfig`` and
    ``kubernetes:context`` when the stack sets them, else ``KUBECONFIG`` and its current context, else
    ``~/.kube/config``, else (in a pod) the pod's service account. A relative ``kubernetes:kubeconfig`` is read
    where the provider reads it: Pulumi starts it in the program's directory (``main`` in ``Pulumi.yaml``, a
    directory or a file's, else the project's), whatever directory canary runs in."""
    def value(key: str) -> str | None:
        raw = config.get(key)
        return None if raw is None else str(getattr(raw, "value", raw))

    program_dir = None
    if project_dir is not None:
        main = stackfile.project_settings(project_dir).get("main")
        program = Path(os.path.normpath(project_dir / str(main))) if main else project_dir  # as Pulumi cleans it; an absolute main stays
        # a main that is not there fails Pulumi's update before any provider starts: the project's directory then
        program_dir = program if program.is_dir() else program.parent if program.exists() else project_dir
    # a str: a file's path or a kubeconfig's content, told apart by Kube as the provider tells them (not by a newline:
    # one line of JSON is content), and never shown; KUBECONFIG: read by Kube, as client-go reads it
    return Kube(value("kubernetes:kubeconfig") or None, context=value("kubernetes:context"), env=env, base_dir=program_dir)


def open_stack(stack: str, project_dir: Path | str | None = None, env: Mapping[str, str] | None = None, read_outputs: bool = True,
               on_invalid: Callable[[InvalidSpec], None] | None = None) -> Workspace:
    """The stack, its config validated. With ``on_invalid``, canary config this version refuses is told to it
    instead of raised, and the workspace knows the apps from the stack's outputs only: what looking at and
    steering a running release needs (its namespace, the cluster), so that a typo in the stack file, or a rule
    newer than the release, never keeps a person from `abort` or `status` at 3 a.m."""
    # resolved (the CLI runs in it: nothing relative to the caller), and refused unless it is a Pulumi project: the
    # Automation API wrote a Pulumi.yaml of its own into any other directory
    project = stackfile.open_project(project_dir)
    environment = dict(env if env is not None else os.environ)
    handle = Stack(project, stack, environment)
    unread = False
    try:
        config = handle.config()
    except InvalidSpec as exc:
        # the YAML itself is broken: nothing of it can be read, the kubernetes config included (the stack's outputs can)
        if on_invalid is None:
            raise
        on_invalid(exc)
        config, unread = {}, True
    path = stackfile.stack_file(project, stack)
    try:
        spec = (StackSpec.model_validate({}) if unread else
                stackconfig.from_config(config, source=f"stack {stack}", stack_file=stackfile.read_stack_file(path) if path.is_file() else None))
    except InvalidSpec as exc:
        if on_invalid is None:
            raise
        on_invalid(exc)
        spec = StackSpec.model_validate({})
    if spec.release is not None:
        raise InvalidSpec([Problem(f"{naming.CONFIG_NAMESPACE}:release", "set", "is written by canary into its release config files only; remove it from the stack file")], f"stack {stack}")
    outputs = handle.outputs() if read_outputs else {}
    return Workspace(project, stack, environment, handle, spec, outputs, _kube(config, environment, project), config_unread=unread)


# --- releases -----------------------------------------------------------------------------------


def _provider_factory(spec: ReleaseSpec) -> Callable[[str | None], PrometheusProvider]:
    providers: dict[str | None, PrometheusProvider] = {}

    def provider_for(address: str | None) -> PrometheusProvider:
        """The stack's Prometheus (with its token and headers), or a template's own address (without)."""
        if address not in providers:
            prom = spec.prometheus
            if prom is not None and (address is None or address.rstrip("/") == prom.address.rstrip("/")):
                token = prom.token.get_secret_value() if prom.token else None
                headers = {k: v.get_secret_value() for k, v in prom.headers.items()}
                providers[address] = PrometheusProvider(prom.address, token=token, headers=headers, timeout=prom.timeout)
            else:
                from datetime import timedelta

                providers[address] = PrometheusProvider(address or "", timeout=prom.timeout if prom else timedelta(seconds=10))
        return providers[address]

    return provider_for


def _note(release: Release, message: str) -> None:
    state = release.recorder.last_saved
    if state is not None:
        release.recorder.event(state, message)


def build(ws: Workspace, facts: AppFacts, on_event: Callable[[Event], None] | None = None, past_config: list[str] | None = None,
          **options: Any) -> Release:
    """A Release of one app wired to the real adapters (``on_build`` sees it before it starts). ``past_config`` (a
    resume's, whose release goes on with its snapshot): the stack config as it is now is refused for no app, and the
    other apps at rest that it cannot judge are pinned from the stack's outputs, each said in ``past_config`` (None: that
    config refused, as a new release refuses it)."""
    on_build = options.pop("on_build", None)
    spec = facts.spec
    app, namespace = spec.app.name, spec.app.namespace
    store = ws.store(app, namespace)
    pusher = None
    if spec.prometheus is not None and spec.prometheus.pushgateway:
        pusher = Pusher(spec.prometheus.pushgateway, ws.name, app, namespace, on_failure=lambda message: _note(release_obj, message))
    facts_of = _facts_once(ws)  # one read of each app for both: which are releasing, what the others run
    at_rest = _pins_at_rest(ws, {*_running(ws, lenient=past_config is not None, facts_of=facts_of), app}, past_config, facts_of)
    configs = stackfile.ReleaseConfigs(ws.stack.stack_file(), store.cache.dir, app, at_rest)
    release_obj = Release(stack=ws.stack, config=configs, cluster=ClusterReader(ws.kube), store=store, lease=Lease(ws.kube, namespace, app),
                          hooks=Caller(), provider_for=_provider_factory(spec), facts=facts, on_event=on_event, pusher=pusher,
                          spec_of=_ended_spec(ws, app), **options)
    if on_build is not None:
        on_build(release_obj)
    return release_obj


def _ended_spec(ws: Workspace, app: str) -> Callable[[ReleaseState], ReleaseSpec]:
    """How a release reads the spec an ended release of the app ran with: the post-rollout hooks that release still
    owes are its own. From its snapshot of the stack config, secrets decrypted by the CLI, judged as ``resume`` judges
    one (a judge this version refuses does not matter to a hook); InvalidSpec when it has none, or this version refuses it."""
    def spec_of(state: ReleaseState) -> ReleaseSpec:
        if not state.snapshot:
            raise InvalidSpec([Problem("snapshot", "nothing", "is not in the release's state: its stack config was not kept")], _snapshot_of(state))
        parsed, _ = _parsed_snapshot(ws, state)
        spec = ws.release_spec(app, parsed)
        if spec is None:
            raise InvalidSpec([Problem(f"apps.{app}", "nothing", "is not in the snapshot, or no longer in the stack's outputs")], _snapshot_of(state))
        return spec

    return spec_of


@dataclass(frozen=True)
class UpOutcome:
    """What ``canary up`` did: the changes applied beside a release, and the release, if one ran."""

    app: str
    applied: dict[str, int]
    release: ReleaseResult | None
    message: str
    exit_code: int
    #: each app's own outcome, when ``up`` released the apps of a stack one after the other
    apps: tuple[UpOutcome, ...] = ()


def _pins_at_rest(ws: Workspace, running: set[str], unjudged: list[str] | None = None,
                  facts_of: Callable[[str], AppFacts | None] | None = None) -> dict[str, Any]:
    """Stable pinned to what it runs, for every deployed app that no release is moving. With ``unjudged`` (a resume's),
    a deployed app the stack config cannot judge now (refused, or no longer declaring it) is pinned to the stable its
    stack outputs name or, when its stable Deployment runs another, its last release's that it runs, and said there: a
    resume's ``up`` applies the release's snapshot, which may still declare it, and unpinned its outputs would name the
    snapshot's desired template as its stable (its next ``canary up`` then taking that for what runs). A ``canary up``
    or a new release (None) refuses such an app, naming the field. ``facts_of``: each app's facts as this pass read them (default: read now)."""
    read = facts_of or ws.facts
    pins = {}
    for name in ws.apps():
        if name in running:
            continue  # its own release pins it (its config, refused or not, is that release's business)
        try:
            facts = read(name)
            pin = facts.stable if facts is not None else None
        except InvalidSpec as exc:
            if unjudged is None:
                raise
            facts, pin, why = None, None, broken_rules(exc.problems)  # not the values: they may be secrets
        else:
            why = "the stack config as it is now, refused or changed since, does not declare it"
        exported = ws.outputs.get(f"{naming.OUTPUT_PREFIX}{name}")
        if facts is None and unjudged is not None and isinstance(exported, Mapping):
            named = _exported_stable(exported)
            pin, said = _unjudged_pin(ws, name, named) if named is not None else (
                None, "its stack outputs name no stable, and the release's updates do not pin it")
            unjudged.append(f"app {name} cannot be judged by the stack config now ({why}): {said}")
        if pin is None:
            continue
        pins[name] = {"release": "", "stable": pin.program_pin(), "route": {"weight": 0}}
    return pins


def _unjudged_pin(ws: Workspace, name: str, exported: TrackPin) -> tuple[TrackPin, str]:
    """The stable an app the stack config cannot judge runs, and how a resume's note says it. Its stack outputs may
    name a template its stable never ran (a targeted ``up`` recomputes every app's outputs from its own snapshot):
    the cluster decides, as ``Workspace.facts`` has it decide, without the ReleaseSpec that config cannot give. Only
    the cluster the stack deployed the app to: its stable Deployment of the uid the stack's last update made (the app
    may be another cluster's, its provider the program's own); a cluster without it, or with another, says nothing of
    what the app runs. Hashes and images only: its config may hold secrets."""
    namespace = ws.namespace(name)
    outputs_pin = f"the release's updates pin it at rest to the stable its stack outputs name ({exported.image or exported.hash})"
    try:
        found = ClusterReader(ws.kube).stable_identity(name, namespace)
    except CanaryError:
        return exported, outputs_pin  # the cluster does not answer: the outputs are all there is
    uid = ws.stable_uid(name)
    if found is None:
        return exported, f"{outputs_pin}, though the cluster canary reads has no Deployment {namespace}/{naming.deployment(name, Track.STABLE)}"
    if uid and found[0] != uid:
        return exported, (f"{outputs_pin}; the cluster canary reads is not the one the stack deployed it to (its stable Deployment is of uid "
                          f"{found[0]}, the stack's last update made uid {uid}), so what it runs was not asked")
    live = found[1]
    pin = ws.pin_running(name, namespace, exported, live)
    if pin is not exported:
        return pin, (f"the release's updates pin it at rest to the stable its Deployment runs ({pin.image or pin.hash}, its last release's), "
                     f"not the one its stack outputs name ({exported.image or exported.hash})")
    if live and live != pin.hash:
        return pin, f"{outputs_pin}, though its stable Deployment runs another template (hash {live}) that neither they nor its last release name"
    return pin, outputs_pin


def _running(ws: Workspace, lenient: bool = False, facts_of: Callable[[str], AppFacts | None] | None = None) -> dict[str, ReleaseState]:
    """The apps whose releases are not finished. ``lenient`` (a resume's): an app the stack config cannot judge now is
    looked for in the namespace the stack's outputs name, as ``resume`` looks for its own; else that config is refused.
    ``facts_of``: each app's facts as this pass read them (default: read now)."""
    read = facts_of or ws.facts
    out = {}
    for name in ws.apps():
        try:
            facts = read(name)
        except InvalidSpec:
            if not lenient:
                raise
            facts = None
        exported = f"{naming.OUTPUT_PREFIX}{name}" in ws.outputs
        if facts is None and not exported:
            continue
        try:
            # an app removed from the config has no facts, and may still have a release to finish
            state = ws.store(name, facts.spec.app.namespace if facts is not None else ws.namespace(name)).load()
        except CanaryError:
            if not exported:
                continue  # never deployed: no release of it can run
            # an app whose state cannot be read may be releasing: taking it for idle would pin its route
            # back to stable under a live release, so nothing is applied
            raise
        if state is not None and state.phase not in ENDED:
            out[name] = state
    return out


def _facts_once(ws: Workspace) -> Callable[[str], AppFacts | None]:
    """``ws.facts`` of each app read once, for one pass over the stack: ``_running`` and ``_pins_at_rest`` both want
    every app's, each a read of its stable Deployment (and maybe its release store), and read by each they doubled the
    API server's requests at every release's start. An app refused is refused again, by the same InvalidSpec. Not kept
    past the pass: its facts would outlive the outputs they were read from, and the cluster (a promotion since)."""
    read: dict[str, AppFacts | None | InvalidSpec] = {}

    def facts_of(name: str) -> AppFacts | None:
        if name not in read:
            try:
                read[name] = ws.facts(name)
            except InvalidSpec as exc:
                read[name] = exc
        found = read[name]
        if isinstance(found, InvalidSpec):
            raise found
        return found

    return facts_of


E = TypeVar("E", bound=CanaryError)


def _raised(kind: type[E], call: Callable[..., Any], *args: Any) -> list[E]:
    """The ``kind`` error ``call(*args)`` raised, as a list (empty when it returned)."""
    try:
        call(*args)
    except kind as exc:
        return [exc]
    return []


def _refuse_if_busy(ws: Workspace, name: str, state: ReleaseState | None) -> None:
    """Refuse before anything changes (the stack file, an ``up``) when a process — here or on another
    machine — holds the app's lease, naming it; or when the app's last release is unfinished (resume it)."""
    holder = Lease(ws.kube, ws.namespace(name), name).holder()
    if holder is not None and holder.alive():
        raise StackBusy(f"app {name} is busy: {holder} (`canary status {ws.name} --app {name}` follows it, `canary abort` stops it)"
                        f"{holder.expiry_note()}")
    if state is not None and state.phase not in ENDED:
        raise StackBusy(f"app {name} has an unfinished release {state.release} in phase {state.phase}: "
                        f"run `canary resume {ws.name} --app {name}` (or `canary abort`, then resume)")


def up(stack: str, *, app: str | None = None, project_dir: Path | str | None = None, env: Mapping[str, str] | None = None,
       on_event: Callable[[Event], None] | None = None, retry: bool = False, why: str = "", **options: Any) -> UpOutcome:
    """Make the stack what its file (and program) ask for: a plain ``up`` of everything but a workload
    change (stable pinned, apps in a release left alone), then a release of each app's workload change.

    With ``app`` (or one app in the stack) that app's change is released; without it, on a stack of
    several apps, each app's change is released in turn and the outcome is the worst of them.
    ``interrupt`` (an Event a signal sets) stops the wait for Pulumi's lock and the stack's update (the
    CLI interrupted, as a release's ``up`` is), and, once that is done, the releases not begun yet."""
    interrupt: threading.Event | None = options.pop("interrupt", None)
    ws = open_stack(stack, project_dir, env)
    # an app the config no longer declares: the update deletes it, as a plain `pulumi up` would
    removed = ws.removed()
    if app in removed:
        raise InvalidSpec([Problem("--app", app, f"is no longer in the stack config: `canary up {ws.name}` deletes it")], "arguments")
    known = [name for name in ws.apps() if name not in removed]
    if ws.spec.names_no_app():
        exported = ws.exported()
        known = [name for name in known if name in exported]  # not the placeholder: the update says which apps there are
    names = [ws.app(app)] if known and app is not None else known

    def refuse_if_busy(name: str, state: ReleaseState | None) -> None:
        try:
            _refuse_if_busy(ws, name, state)
        except StackBusy as exc:
            if name not in removed:
                raise
            raise StackBusy(f"app {name} is no longer in the stack config, and the update would delete it: {exc}") from exc

    running = _running(ws)
    # every app's refusal at once: a stack of several apps is not mended one rerun per app
    busy = [str(exc) for name in [*names, *removed] for exc in _raised(StackBusy, refuse_if_busy, name, running.get(name))]
    if busy:
        raise StackBusy("; ".join(busy))
    existed = {name: f"{naming.OUTPUT_PREFIX}{name}" in ws.outputs for name in names}
    before = dict(ws.outputs)  # how the gateway reached each app before the update (_route_refused)
    problems = [Problem(f"{p.field} (app {name})" if len(names) > 1 and not p.field.startswith("apps.") else p.field, p.value, p.rule)
                for name in names for exc in _raised(InvalidSpec, _preflight, ws, name) for p in exc.problems]
    if problems:
        raise InvalidSpec(problems, f"stack {ws.name}")
    snapshot = ws.stack.stack_file().read_text()
    cache = Cache(state_root(ws.project_dir), stack, "_stack")
    # a config file of this up's own: every app of the stack may be in its `canary up` at once, and one
    # file for all let an `up` run with another's config (an older stack file, without its app's change)
    own = f"up-{os.getpid()}-{threading.get_ident()}"

    def update(now: dict[str, ReleaseState], facts_of: Callable[[str], AppFacts | None]) -> Any:
        """The update with every app ``now`` finds releasing left alone (its route above all), and
        every other app pinned at rest; refused under Pulumi's lock if a release began since ``now``.
        ``facts_of``: each app's facts as ``now`` was read with them."""
        pins = _pins_at_rest(ws, set(now) | set(running), facts_of=facts_of)
        ended = set(running) - set(now)
        if ended:
            # a release that ended while this waited for Pulumi's lock is at rest too: pinned, or the update
            # would apply its desired (maybe rolled back) workload. To the stable it left, read now: the
            # outputs read before may name the stable a promotion has since replaced
            fresh = replace(ws, outputs=ws.stack.outputs())
            pins.update(_pins_at_rest(fresh, set(fresh.apps()) - ended))  # those alone: each app read is a cluster read
        exclude = [urn for other in now if other not in names for facts in [facts_of(other)] if facts is not None for urn in facts.targets("app")]
        config_file = cache.write_config(own, stackfile.release_config(snapshot, pins))

        def none_began() -> None:
            # the CLI holds Pulumi's lock from here: a release that began after `now` was read has had
            # its `up`s already (its canary deployed), and this update would pin its app back at rest
            began = sorted(set(_running(ws)) - set(now) - set(running))
            if began:
                raise _ReleaseBegan(began)

        return ws.stack.up(config_file=config_file, exclude=exclude or None, guard=none_began, cancel=interrupt)

    def apply() -> Any:
        # read again on every attempt: while this waited for Pulumi's lock, another app's release may
        # have begun, and this update must leave that app's resources alone
        for _ in range(len(known) + 1):
            facts_of = _facts_once(ws)  # this attempt's: the next one reads the cluster again
            now = _running(ws, facts_of=facts_of)
            for name in [*names, *removed]:
                if name in now and name not in running:
                    refuse_if_busy(name, now[name])  # its release began since this command looked
            try:
                return update(now, facts_of)
            except _ReleaseBegan as exc:
                _say(on_event, f"a release of {', '.join(exc.apps)} began as this update waited to start: nothing was applied, "
                               "computing it again with that app left alone")
        raise StackBusy(f"stack {ws.name}: releases kept beginning while this update waited to start; run `canary up` again")

    try:
        result = _waiting_for_lock(apply, ws.stack.wait_unlocked, on_event, float(options.get("lock_wait", LOCK_WAIT)), interrupt,
                                   ws.stack.clear_dead_locks)
    finally:
        cache.config_file(own).unlink(missing_ok=True)
    # this update's own outputs: read afterwards, they may be those of another app's update of the stack
    # that began from a stack file without this app's new image, and the change would look like none
    ws.outputs = result.outputs if result.outputs is not None else ws.stack.outputs()
    applied = {k: v for k, v in result.changes.items() if k != "same"}
    if app is None and ws.spec.names_no_app():
        # the apps are those the program's components declare, as the update's outputs say: a new one is
        # deployed for the first time, one the program no longer declares was deleted
        exported = ws.exported()
        removed += [name for name in names if name not in exported]
        names = sorted(exported)
    if not names and not removed:  # a program without apps yet: the update was all there was to do
        names = [ws.app(app)]
    if interrupt is not None and interrupt.is_set():
        # interrupted as the update ended: no release begins (one begun and aborted at once would be a rolled-back
        # workload, refused by the next `canary up` without --retry); the next `canary up` releases the change
        raise Cancelled(f"interrupted: the stack's update applied {sum(applied.values())} changes; no release was begun "
                        f"(`canary up {ws.name}` releases the workload change)")
    outcomes = _each_app(names, lambda name: _release_change(ws, name, existed.get(name, False), applied, snapshot, retry, on_event, why, options,
                                                             before.get(f"{naming.OUTPUT_PREFIX}{name}"), interrupt),
                         applied, interrupt)
    outcomes += [_removal(ws, name, applied) for name in removed]
    if len(outcomes) == 1:
        return outcomes[0]
    worst = next((o for code in _SEVERITY for o in outcomes if o.exit_code == code), outcomes[0])
    return UpOutcome(", ".join(o.app for o in outcomes), applied, worst.release, "\n".join(o.message for o in outcomes), worst.exit_code,
                     tuple(outcomes))


def _removal(ws: Workspace, name: str, applied: dict[str, int]) -> UpOutcome:
    """After the update, an app the stack config (or the program) no longer declares: deleted, or still declared by a
    component of the program, which the update applied without a release (nothing would judge it)."""
    if f"{naming.OUTPUT_PREFIX}{name}" not in ws.outputs:
        return UpOutcome(name, applied, None, f"{name}: removed by the update", exitcodes.OK)
    return UpOutcome(name, applied, None, f"{name}: declared by the program but not in the stack config: its changes are applied without a "
                     f"release; give it an analysis (canary:apps.{name}.analysis) or remove it from the program", exitcodes.INVALID)


def _each_app(names: Sequence[str], release: Callable[[str], UpOutcome], applied: dict[str, int],
              interrupt: threading.Event | None = None) -> list[UpOutcome]:
    """Each app's release after the update, one after the other. Of several apps, one's refusal or error is
    its outcome (with its exit code), not the end of the others': each had its change applied by the update.
    Once interrupted (a signal aborted the release running), the apps after it begin none: begun and aborted at
    once, each would be a rolled-back workload that the next `canary up` refuses without --retry."""
    outcomes = []
    for name in names:
        if interrupt is not None and interrupt.is_set():
            outcomes.append(UpOutcome(name, applied, None, f"{name}: interrupted: no release was begun (`canary up` releases its change)",
                                      exitcodes.FAILED))
            continue
        try:
            outcomes.append(release(name))
        except CanaryError as exc:
            if len(names) == 1:
                raise
            outcomes.append(UpOutcome(name, applied, None, f"{name}: {exc}", exitcodes.for_error(exc)))
    return outcomes


T = TypeVar("T")

#: how long an ``up`` waits for another update of the stack (another app's release) to let go of Pulumi's lock
LOCK_WAIT = 600.0


class _ReleaseBegan(Exception):
    """An app's release began between an update's reading of the releases and its start (never leaves ``up``)."""

    def __init__(self, apps: list[str]) -> None:
        super().__init__(", ".join(apps))
        self.apps = apps


def _say(on_event: Callable[[Event], None] | None, message: str) -> None:
    if on_event is not None:
        on_event(Event(datetime.now(UTC).isoformat(timespec="milliseconds"), "", "", 0, message))


def _waiting_for_lock(action: Callable[[], T], wait_unlocked: Callable[[float], bool], on_event: Callable[[Event], None] | None,
                      wait: float, interrupt: threading.Event | None = None,
                      clear_dead: Callable[[], list[dict[str, Any]]] | None = None) -> T:
    """``action`` (an ``up``), tried again while another update holds the stack's lock — two apps of one
    stack released at once take turns — and for at most ``wait`` seconds; then StackLocked (exit 3).
    Between attempts ``wait_unlocked`` (the stack's) waits until the lock is let go, a second at a time
    so that ``interrupt`` stops the wait (Cancelled). A lock whose holder is a dead process of this host
    (a `canary up` killed in its update) is cleared first, ``clear_dead``, and said: nobody would let it go."""
    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            return action()
        except StackLocked as exc:
            cleared = clear_dead() if clear_dead is not None else []
            if cleared:
                for lock in cleared:
                    _say(on_event, f"cleared Pulumi's stale lock of pid {lock['pid']} on {lock['hostname']} (the process is gone)")
                continue
            if time.monotonic() >= deadline:
                raise
            if not said:
                _say(on_event, f"waiting for Pulumi's lock: {exc}")
                said = True
            while time.monotonic() < deadline and not wait_unlocked(min(1.0, deadline - time.monotonic())):
                if interrupt is not None and interrupt.is_set():
                    raise Cancelled(f"interrupted while waiting for Pulumi's lock ({exc}): nothing was applied") from None
            if interrupt is not None and interrupt.is_set():
                raise Cancelled("interrupted before the stack's update: nothing was applied") from None


#: which outcome of several apps' ``up`` the command ends with: the one a person must act on first
_SEVERITY = (exitcodes.ROLLBACK_PENDING, exitcodes.INVALID, exitcodes.BUSY, exitcodes.FAILED, exitcodes.PROMOTED_UNVERIFIED, exitcodes.OK)


def _release_change(ws: Workspace, name: str, existed: bool, applied: dict[str, int], snapshot: str, retry: bool,
                    on_event: Callable[[Event], None] | None, why: str, options: dict[str, Any], before: Any = None,
                    interrupt: threading.Event | None = None) -> UpOutcome:
    """After the stack's ``up``: release the app's workload change, if it has one (``before``: the app's stack output
    before the update)."""
    facts = ws.facts(name)
    if facts is None:
        raise InvalidSpec([Problem("--app", name, "was not deployed by the update: does the program declare it?")], "up")
    changed = f"{sum(applied.values())} resources changed" if applied else "nothing else changed"
    if not existed or facts.stable is None:
        return UpOutcome(name, applied, None, f"{name}: deployed for the first time, running {facts.desired.image or facts.desired.hash} ({changed})", exitcodes.OK)
    if facts.desired.hash == facts.stable.hash:
        refused = _route_refused(ws, facts, before, interrupt)
        if refused is not None:
            return UpOutcome(name, applied, None, (
                f"{name}: no workload change ({changed}), but the gateway refuses the app's route after this update, which changed how it "
                f"reaches the app ({refused}): no request reaches {name} through it, stable's included. Undo that change (app.appProtocol, "
                "app.servicePort, gateway) and run `canary up` again"), exitcodes.FAILED)
        return UpOutcome(name, applied, None, f"{name}: no workload change ({changed})", exitcodes.OK)
    store = ws.store(name, facts.spec.app.namespace)
    last = store.load()
    if last is not None and last.phase in (Phase.FAILED, Phase.ABORTED) and last.canary is not None and last.canary.hash == facts.desired.hash and not retry:
        return UpOutcome(name, applied, None,
                         f"{name}: the desired workload ({facts.desired.image or facts.desired.hash}) was {last.phase.value.lower()} in release "
                         f"{last.release}; change it, or release it again with --retry", exitcodes.FAILED)
    export = ""
    with contextlib.suppress(CanaryError):
        export_path = store.cache.dir / "stable-export.json"
        # the stack's whole state: its secrets are ciphertext, the rest is not everyone's to read
        files.write_text_atomic(export_path, json.dumps(ws.stack.export()), mode=0o600)
        export = str(export_path)
    result_release = build(ws, facts, on_event, **options).start(facts.desired, snapshot, export, why)
    return UpOutcome(name, applied, result_release, f"{name}: release {result_release.release} {result_release.phase.value}", result_release.exit_code)


#: how long ``canary up`` watches an app's route for a refusal after an update changed how the gateway reaches the app:
#: a change of its Services (``app.appProtocol``, ``app.servicePort``) leaves the route's generation as it was, so no
#: observedGeneration says when the gateway has looked again (Traefik, for one, looks within a couple of seconds)
ROUTE_SETTLE = 10.0


def _route_refused(ws: Workspace, facts: AppFacts, before: Any, interrupt: threading.Event | None = None) -> str | None:
    """Why the gateway refuses the app's route after an update that changed how it reaches the app (its Services'
    ``appProtocol`` or port, the route's parents or host names), as it stands ``ROUTE_SETTLE`` seconds after; None when it
    does not (or the update changed none of that, or the cluster does not answer: the next release reads the route
    at its start anyway). A protocol the gateway does not speak, applied by a plain ``up``, cuts every request to the
    app, stable's too: said as the update's outcome, not found by the next release."""
    def reach(exported: Any) -> tuple[Any, ...] | None:
        if not isinstance(exported, Mapping):
            return None
        app = exported.get("app") if isinstance(exported.get("app"), Mapping) else {}
        return app.get("appProtocol"), app.get("servicePort"), json.dumps(exported.get("gateway"), sort_keys=True, default=str)

    if reach(before) == reach(ws.outputs.get(f"{naming.OUTPUT_PREFIX}{facts.spec.app.name}")):
        return None
    reader = ClusterReader(ws.kube)
    stop = interrupt if interrupt is not None else threading.Event()
    deadline = time.monotonic() + ROUTE_SETTLE
    while True:
        try:
            route = reader.route(facts.spec)
        except CanaryError:
            return None
        # judged at the window's end, not at the first refusal read: a Service change leaves the route's generation as
        # it was, so a refusal from before this update (the one it undoes) reads as current until the gateway looks again
        if time.monotonic() >= deadline or stop.wait(0.25):
            return route.reason if route is not None and route.refused else None


def _preflight(ws: Workspace, name: str) -> None:
    """Every metric query sent once, as a tick would send it, before anything changes: one Prometheus
    rejects is bad input (exit 2), not a failed check found after the canary was deployed."""
    from canary.core import analysis

    facts = ws.facts(name)
    if facts is None:
        return
    problems = analysis.preflight(facts.spec, _provider_factory(facts.spec), facts.fields)
    if problems:
        raise InvalidSpec(problems, f"stack {ws.name}")


def set_image(stack: str, image: str | None, *, app: str | None = None, project_dir: Path | str | None = None,
              image_config: str | None = None) -> tuple[str, str | None]:
    """Write ``image`` as the app's desired image in the stack file (as ``pulumi config set`` would):
    ``app.image``, or for an app a program declares, the key its component names (``image_config``,
    such as ``shop:image`` or ``shop:web.image``; without a namespace, the project's); ``None`` removes that key.
    Returns the app and the image the key held (``None``: there was no key, as for an app in the template form)."""
    from canary.core import units

    try:
        if image is not None:
            units.check_image(image)
    except ValueError as exc:
        raise InvalidSpec([Problem("--image", image, str(exc))], "release") from exc
    project = stackfile.open_project(project_dir)
    path = stackfile.stack_file(project, stack)
    value = stackfile.ABSENT if image is None else image
    if image_config is not None:
        try:
            # a bare key written as it is was a key of no namespace beside the program's own (`image:` by `shop:image`)
            key = stackconfig.image_config_key(image_config, str(stackfile.project_settings(project)["name"]))
        except ValueError as exc:
            raise InvalidSpec([Problem("image_config", repr(image_config), str(exc))], "release") from exc
        old, _ = stackfile.set_value(path, stackconfig.config_key_path(key), value)
        return app or "", None if old is stackfile.ABSENT else str(old)
    spec = stackfile.load_stack_file(path)
    configs = spec.app_configs()
    name = app or (next(iter(configs)) if len(configs) == 1 else None)
    if name is None or name not in configs:
        raise InvalidSpec([Problem("--app", str(app), f"names no app of the stack file ({', '.join(configs) or 'none'})")], "release")
    config = configs[name]
    if config.app is None:
        raise InvalidSpec([Problem("--image", image, f"{name} is declared by the program, not the stack file: change the image there and run canary up, "
                                   "or pass image_config=<the config key it reads the image from> to its CanaryDeployment")], "release")
    prefix: tuple[str, ...] = (f"{naming.CONFIG_NAMESPACE}:apps", name) if spec.apps else ()
    stable_image = (*prefix, "stableImage") if prefix else (f"{naming.CONFIG_NAMESPACE}:stableImage",)
    app_image = (*prefix, "app", "image") if prefix else (f"{naming.CONFIG_NAMESPACE}:app", "image")
    if config.stable_image and not config.app.image:
        keys = [stable_image]
    elif config.stable_image:
        keys = [app_image, stable_image]  # both names set (equal, or the file is refused): both move, or it would be
    else:
        keys = [app_image]
    olds = [stackfile.set_value(path, key, value)[0] for key in keys]
    return name, None if olds[0] is stackfile.ABSENT else str(olds[0])


def release(stack: str, image: str, *, app: str | None = None, project_dir: Path | str | None = None, env: Mapping[str, str] | None = None,
            **kwargs: Any) -> UpOutcome:
    """Release ``image`` as the app's new version: set it in the stack file, then ``up`` (asking for
    ``image`` by name releases it even if an earlier release of it was rolled back). An app never
    deployed is refused before anything changes: its first version has nothing to be compared with."""
    from canary.core import units

    try:
        units.check_image(image)
    except ValueError as exc:
        raise InvalidSpec([Problem("--image", image, str(exc))], "release") from exc
    ws = open_stack(stack, project_dir, env)
    name = ws.app(app)
    facts = ws.facts(name)
    if facts is None and name in ws.removed():
        raise InvalidSpec([Problem("--app", name, f"is no longer in the stack config: `canary up {stack}` deletes it")], "release")
    if facts is None or facts.stable is None:
        raise InvalidSpec([Problem("stack", stack, f"has not deployed {name} yet: run `canary up {stack}` (or pulumi up) to deploy its first version, "
                                   "then release new ones")], "release")
    if facts.stable.image == image:
        raise InvalidSpec([Problem("--image", image, "is already the stable image: nothing to release")], "release")
    _refuse_if_busy(ws, name, ws.store(name, ws.namespace(name)).load())  # before the stack file is edited
    _preflight(ws, name)
    exported = ws.outputs.get(f"{naming.OUTPUT_PREFIX}{name}")
    image_config = exported.get("imageConfig") if isinstance(exported, Mapping) else None
    _, before = set_image(stack, image, app=name, project_dir=project_dir, image_config=image_config)
    try:
        return up(stack, app=name, project_dir=project_dir, env=env, why=f"canary release --image {image}", retry=True, **kwargs)
    except LeaseLost:
        raise  # the release ran, and another process carries it on: the stack file keeps the image it releases
    except CanaryError as exc:
        # no release began (a release's own ending is its outcome, not an error): refused (another release, another
        # update of the stack, bad input), interrupted (Ctrl-C while waiting for Pulumi's lock), the cluster or the
        # stack's update failing first. The stack file goes back to the image that runs (or to no image key): the
        # next `canary up` would release an image nobody asked for again
        set_image(stack, before, app=name, project_dir=project_dir, image_config=image_config)
        said = str(exc)
        advice = said.find(" (`canary up ")
        if isinstance(exc, Cancelled) and advice >= 0:
            # interrupted after the stack's update: up's advice (`canary up` releases the workload change) held for the
            # stack file up read, not for this one, put back to the image that runs: a `canary up` now finds no change
            again = f"canary release {stack}{f' --app {name}' if app is not None else ''} --image {image}"
            raise Cancelled(f"{said[:advice]}; the image in the stack file was restored: run `{again}` again to release it") from exc
        raise


def resume(stack: str, *, app: str | None = None, project_dir: Path | str | None = None, env: Mapping[str, str] | None = None,
           on_event: Callable[[Event], None] | None = None, **options: Any) -> ReleaseResult:
    """Continue (or finish rolling back) an interrupted release, from any machine. It goes on with the release's
    snapshot of the stack config: a stack file refused since (a typo made during the incident, a rule of this
    version newer than the release) does not keep a pending rollback from completing; the journal says so."""
    refused: list[InvalidSpec] = []
    ws = open_stack(stack, project_dir, env, on_invalid=refused.append)
    name = ws.app(app)
    store = ws.store(name, ws.namespace(name))
    state = store.load()
    if state is None:
        # an unfinished release of 0.1 is named whichever app is asked for: 0.1 names none, and it holds the stack
        old = Legacy(state_root(ws.project_dir), stack).state()
        if old is not None and old.phase not in ENDED:
            # (this version's program refuses canaryImage and canaryWeight in the stack file, even a weight of 0)
            raise InvalidSpec([Problem("release", old.release, f"was started by canary 0.1 (a file journal) and stopped in phase {old.phase}: "
                                       "it cannot be resumed by this version. Remove canaryImage and canaryWeight from the stack file if "
                                       f"they are still there, then run `canary up {stack}`: it puts all traffic back on stable and the "
                                       "canary to zero. Then release again")], "resume")
        raise InvalidSpec([Problem("--app", name, "has no release to resume")], "resume")
    spec, note = _snapshot_spec(ws, state)
    if refused:
        if not state.snapshot or spec is ws.spec:  # no snapshot, or one refused too: nothing valid to go on with
            raise refused[0]
        note = "; ".join(filter(None, (note, f"the stack file is refused by this version ({refused[0]}): the release goes on with its "
                                             "snapshot of the stack config")))
    facts = ws.facts(name, spec)
    if facts is None:
        raise InvalidSpec([Problem("--app", name, "is not deployed in the stack any more")], "resume")
    # the stack config as it is now judges no app of this resume: its own is judged by its snapshot, the others at rest
    # are pinned from the stack's outputs when it cannot judge them (a rollback is not kept from completing)
    unjudged: list[str] = []
    release_obj = build(ws, facts, on_event, past_config=unjudged, **options)
    return release_obj.resume(notes=(*((note,) if note else ()), *unjudged))


def _snapshot_of(state: ReleaseState) -> str:
    return f"release {state.release}'s snapshot"


def _parsed_snapshot(ws: Workspace, state: ReleaseState) -> tuple[StackSpec, list[Problem]]:
    """The stack config as ``state``'s release began (its snapshot, secrets decrypted by the CLI), and what the rules
    newer than that release find in it, noted rather than refused; InvalidSpec when this version refuses it otherwise.
    (placed False: a secret this version refuses where it keeps plain text was in the snapshot when the release began;
    refused here, with the stack file refused alike, a pending rollback could not finish.)"""
    with newer_rules_noted() as noted:
        parsed = stackconfig.from_config(ws.stack.config(text=state.snapshot), source=_snapshot_of(state), placed=False)
    return parsed, noted


def _snapshot_spec(ws: Workspace, state: ReleaseState) -> tuple[StackSpec, str]:
    """The stack config as the release began (its snapshot), secrets decrypted by the CLI when needed.
    A snapshot this version refuses (its rules are newer than the release) gives way to the stack
    file's current config — and the journal says so, with the rules it broke (not the values: they may
    be secrets)."""
    if not state.snapshot:
        return ws.spec, ""
    try:
        parsed, noted = _parsed_snapshot(ws, state)
    except InvalidSpec as exc:
        return ws.spec, (f"the release's snapshot of the stack config is refused by this version ({broken_rules(exc.problems)}): "
                         "it goes on with the stack file's current analysis and settings")
    if noted:
        return parsed, (f"the release's snapshot breaks rules newer than the release, which this version refuses ({broken_rules(noted)}): the "
                        "release goes on with it as it is (samples a judge cannot read are no data, and onNoData decides; a probe on "
                        "a port name its container does not declare runs as the API server took it); fix them before the next release")
    return parsed, ""


# --- looking and steering -----------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    state: ReleaseState
    running: bool
    holder: str | None
    legacy: bool = False
    #: kept on this machine, not yet in the cluster (it refused them or did not answer): journal records, and
    #: whether the state is one of them; other machines see the release without them
    kept_records: int = 0
    kept_state: bool = False
    #: what the cluster said when it did not answer ("" when it did): whether a release runs, and who holds the
    #: app, is then unknown (``running`` False, ``holder`` None)
    unanswered: str = ""
    #: the state shown is this machine's copy, as it last saved it (the cluster did not answer): another machine
    #: may have gone on since, and the cluster may hold a newer state
    local_copy: bool = False

    def to_json(self) -> dict[str, Any]:
        data = records.dump(self.state)
        data.pop("snapshot", None)
        for track in ("stable", "canary"):
            if isinstance(data.get(track), dict):
                data[track].pop("template", None)
        return {**data, "running": self.running, "holder": self.holder, "legacy": self.legacy,
                # null while the release runs: a CI script read 1 ("failed") of a release still progressing
                "exit_code": self.state.ended_exit_code,
                "kept_here": {"records": self.kept_records, "state": self.kept_state},
                "cluster": {"answered": not self.unanswered, "error": self.unanswered or None,
                            "state_from": "this machine's copy" if self.local_copy else "the cluster"}}


def _store(stack: str, app: str | None, project_dir: Path | str | None, env: Mapping[str, str] | None,
           on_warning: Callable[[str], None] | None = None) -> tuple[Workspace, str, ReleaseStore]:
    def invalid(exc: InvalidSpec) -> None:
        assert on_warning is not None
        on_warning(f"the stack config is refused ({exc}); acting on the release of the app the stack's outputs name")

    # without anyone to tell, a refusal is raised as ever: a caller never acts on a config it was not told is refused
    ws = open_stack(stack, project_dir, env, on_invalid=invalid if on_warning is not None else None)
    name = ws.app(app)
    namespace = ws.namespace(name)
    if ws.config_unread:
        _same_cluster(ws, name, namespace)
    return ws, name, ws.store(name, namespace)


def _same_cluster(ws: Workspace, app: str, namespace: str) -> None:
    """With the stack file unreadable, the cluster is the environment's (KUBECONFIG, ~/.kube/config, the pod's): a
    request is written there only when its stable Deployment is the one the stack's last update made (its uid)."""
    uid = ws.stable_uid(app)
    deployment = ws.kube.get("apps/v1", "Deployment", naming.deployment(app, Track.STABLE), namespace) if uid else None
    if uid is None or deployment is None or (deployment.get("metadata") or {}).get("uid") != uid:
        raise InvalidSpec([Problem("kubeconfig", f"{ws.kube.source}, server {ws.kube.server}", (
            f"cannot be told to be stack {ws.name}'s cluster: the stack file cannot be read, so its kubernetes:kubeconfig and "
            f"kubernetes:context are unknown, and this cluster's {namespace}/{naming.deployment(app, Track.STABLE)} is not the one the "
            "stack's last update made. Mend the stack file's YAML, or point KUBECONFIG at the stack's cluster"))], f"stack {ws.name}")


def status(stack: str, *, app: str | None = None, project_dir: Path | str | None = None, env: Mapping[str, str] | None = None,
           on_warning: Callable[[str], None] | None = None) -> Status | None:
    """The app's current (or last) release, with its lease holder; an earlier version's file journal
    when the cluster has none. ``on_warning`` hears of stack config this version refuses (the release is
    still shown, found from the stack's outputs)."""
    ws, name, store = _store(stack, app, project_dir, env, on_warning)
    try:
        state = store.load()
    except ClusterUnreachable:
        # a display, in an outage: this machine's copy, said to be one (load() gives it itself only when it holds
        # writes the cluster has not taken: it is not acted on otherwise). Without a copy (or one this version
        # cannot read), the error says the state could not be read
        state = None
        with contextlib.suppress(StackError):
            state = store.copy()
        if state is None:
            raise
    kept_records, kept_state = len(store.cache.unsent()), store.cache.state_unsent()
    if store.unanswered is not None:  # the state is this machine's copy, whichever way it came
        return Status(state, False, None, kept_records=kept_records, kept_state=kept_state, unanswered=store.unanswered, local_copy=True)
    if state is None:
        files = _legacy(ws, on_warning)
        legacy = files.state() if files is not None else None
        return Status(legacy, False, None, legacy=True) if legacy is not None else None
    try:
        holder = Lease(ws.kube, store.namespace, name).holder()
    except ClusterUnreachable as exc:  # the state was read, its lease then not: the cluster's state, nobody known to run it
        return Status(state, False, None, kept_records=kept_records, kept_state=kept_state, unanswered=str(exc))
    running = bool(holder is not None and holder.alive() and holder.release == state.release)
    return Status(state, running, str(holder) if holder is not None else None, kept_records=kept_records, kept_state=kept_state)


def history(stack: str, *, app: str | None = None, release_id: str | None = None, project_dir: Path | str | None = None,
            env: Mapping[str, str] | None = None, on_warning: Callable[[str], None] | None = None) -> Journal:
    """Every journal record of the app's releases (or of one), oldest first, earlier versions' included. When the
    cluster does not answer, this machine's copy, said to be one (``unanswered``: what the cluster said); without
    one, ClusterUnreachable. A ``release_id`` the journal does not hold is bad input, as for ``report``."""
    ws, name, store = _store(stack, app, project_dir, env, on_warning)
    found = store.records(release_id)
    unanswered = found.unanswered if isinstance(found, Journal) else None
    legacy = _legacy(ws, on_warning)
    journal = Journal([*(legacy.records(release_id) if legacy is not None else []), *found], unanswered)
    if unanswered and not journal:
        # "no answer" is not "no record": an empty history (exit 0) said the app had never been released
        raise ClusterUnreachable(f"the journal of {name} could not be read ({unanswered}), and this machine keeps no copy of it"
                                 f"{f' for release {release_id}' if release_id else ''}: try again once the cluster answers")
    if release_id is not None and not journal:
        raise InvalidSpec([Problem("--release", release_id, f"has no journal for app {name} in namespace {store.namespace} "
                                   f"(`canary history {stack}` lists the releases kept)")], "history")
    return journal


def _legacy(ws: Workspace, on_warning: Callable[[str], None] | None = None) -> Legacy | None:
    """canary 0.1's file journal of the stack, when it is this app's. 0.1 released the one app of a stack
    and named none in its records: in a stack that now holds several, which of them it was is unknown, so
    its records are shown under none of them (``on_warning`` hears where the file is)."""
    legacy = Legacy(state_root(ws.project_dir), ws.name)
    if not legacy.exists():
        return None
    if len(ws.apps()) > 1:
        if on_warning is not None:
            on_warning(f"the file journal of canary 0.1 in {legacy.dir} names no app, and stack {ws.name} holds several: "
                       "it is not shown under any of them (read it as a file)")
        return None
    return legacy


def _no_journal(unanswered: str, done: str) -> ClusterUnreachable:
    """The cluster did not answer the journal's read: a release is not ``done`` from this machine's copy, which lacks
    what other machines recorded (a resume, a rollback elsewhere)."""
    return ClusterUnreachable(f"the cluster did not answer ({unanswered}): the journal cannot be read, and a release is not {done} from "
                              "this machine's copy of it (other machines' records are missing). Try again once the cluster answers")


def report(stack: str, *, app: str | None = None, release_id: str | None = None, out: Path | str, project_dir: Path | str | None = None,
           env: Mapping[str, str] | None = None) -> Path:
    """Draw one release of the app (default: the latest) from its journal into ``out``: a PNG or SVG picture,
    or an HTML page with the picture and the decision table, by ``out``'s suffix. Returns ``out``."""
    from canary.core import picture

    out = Path(out)
    picture.output_format(out)  # a bad --out is refused before the cluster is read
    found = history(stack, app=app, release_id=release_id, project_dir=project_dir, env=env)
    if isinstance(found, Journal) and found.unanswered:
        raise _no_journal(found.unanswered, "drawn")
    model = picture.build(found, release_id)
    # matplotlib takes a second to import: only the commands that draw pay for it
    from canary.adapters import plot

    return plot.write(model, out)


# --- backtesting --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BacktestResult:
    """``canary backtest``: an analysis replayed against what Prometheus recorded, and what it was replayed with."""

    stack: str
    app: str
    #: which analysis judged: the stack file's as it is now, or another file's
    config: str
    replay: backtesting.Replay
    release: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    interval: str = ""
    #: a backtest that ran exits 0, whatever it concluded and however it differs from the journal
    exit_code: int = exitcodes.OK

    def to_json(self) -> dict[str, Any]:
        def iso(when: datetime | None) -> str | None:
            return None if when is None else when.isoformat().replace("+00:00", "Z")

        return {"stack": self.stack, "app": self.app, "release": self.release, "from": iso(self.start), "to": iso(self.end),
                "interval": self.interval, "config": self.config, **self.replay.to_json(), "exit_code": self.exit_code}

    def lines(self) -> list[str]:
        if self.release is not None:
            what = f"release {self.release} at its recorded tick times"
        else:
            what = f"{self.start:%Y-%m-%d %H:%M:%S}Z to {self.end:%Y-%m-%d %H:%M:%S}Z, a tick every {self.interval}"
        return [f"backtest of {self.stack}/{self.app}, {what}, judged by {self.config}", *self.replay.lines()]


def backtest(stack: str, *, app: str | None = None, release_id: str | None = None, start: str | datetime | None = None,
             end: str | datetime | None = None, file: Path | str | None = None, project_dir: Path | str | None = None, env: Mapping[str, str] | None = None,
             now: datetime | None = None) -> BacktestResult:
    """Replay the app's analysis against what Prometheus recorded: at a release's recorded ticks (``release_id``,
    set beside its decisions) or every interval from ``start`` to ``end`` (RFC 3339 with a timezone, ``now`` or
    ``-30m``). The analysis is the stack file's as it is now, or ``file``'s (its analysis and metric templates;
    Prometheus and the app stay the stack's). Nothing is applied or recorded."""
    moment = now or datetime.now(UTC)
    first, last = backtesting.check_options(release_id, start, end, moment)
    file = Path(file) if file is not None else None
    if file is not None and not file.is_file():
        raise InvalidSpec([Problem("--file", str(file), "is not a file")], "backtest")
    ws = open_stack(stack, project_dir, env)
    name = ws.app(app)
    facts = ws.facts(name)
    spec = facts.spec if facts is not None else ws.spec.release_spec(name)
    source = f"stack {stack}'s analysis as its stack file says now"
    fields, where = facts.fields if facts is not None else ws.spec.fields(name), f"stack {stack}"
    if file is not None:
        spec, fields = _analysis_of(file, name, spec)
        source = where = f"the analysis of {file}"
    if spec.prometheus is None:
        raise InvalidSpec([Problem("prometheus.address", "nothing", "must be set to backtest: the replay asks Prometheus")], f"stack {stack}")
    provider_for = _provider_factory(spec)

    def provider_for_at(when: datetime) -> Callable[[str | None], PrometheusProvider]:
        return lambda address: provider_for(address).at(when)

    if not provider_for(None).is_online():
        from canary.errors import ProviderUnreachable

        raise ProviderUnreachable(f"Prometheus at {http.origin(spec.prometheus.address)} did not answer: nothing can be replayed")  # its path may hold a token
    interval = spec.analysis.interval
    if release_id is not None:
        namespace = ws.namespace(name)
        journal = ws.store(name, namespace).records(release_id)
        if isinstance(journal, Journal) and journal.unanswered:
            raise _no_journal(journal.unanswered, "replayed")
        legacy = _legacy(ws)
        journal = (legacy.records(release_id) if legacy is not None else []) + journal
        if not journal:
            raise InvalidSpec([Problem("--release", release_id, f"has no journal for app {name} in namespace {namespace} "
                                       f"(`canary history {stack}` lists the releases kept)")], "backtest")
        # read as the replay reads them (a zone-less time is UTC); an unreadable one is refused (InvalidSpec), as the replay refuses it
        first_tick = min(backtesting.recorded_tick_times(journal), default=None)
        _refuse_rejected(spec, provider_for_at(first_tick or moment), where, fields)
        result = backtesting.replay_release(spec, provider_for_at, journal)
    else:
        assert first is not None and last is not None
        _refuse_rejected(spec, provider_for_at(first + interval), where, fields)
        result = backtesting.replay_window(spec, provider_for_at, first, last)
    from canary.core import units

    return BacktestResult(stack, name, source, result, release_id, first, last, units.format_duration(interval))


def _analysis_of(path: Path, name: str, spec: ReleaseSpec) -> tuple[ReleaseSpec, str]:
    """``spec`` judged by another stack file's analysis (and metric templates) for the app, and where that analysis
    stands in the file (``apps.<name>.``, as a problem names a field)."""
    other = stackfile.load_stack_file(path)
    configs = other.app_configs()
    key = name if name in configs else (next(iter(configs)) if len(configs) == 1 else None)
    if key is None:
        raise InvalidSpec([Problem("--file", str(path), f"declares no analysis for app {name} (it has: {', '.join(configs) or 'none'})")], "backtest")
    update = {"analysis": configs[key].analysis, "metric_templates": {**spec.metric_templates, **other.metric_templates}}
    return spec.model_copy(update=update), other.fields(key)


def _refuse_rejected(spec: ReleaseSpec, provider_for: Callable[[str | None], PrometheusProvider], where: str, fields: str) -> None:
    """A query Prometheus rejects is bad input (exit 2), not a failed check at every replayed tick."""
    from canary.core import analysis

    problems = analysis.preflight(spec, provider_for, fields)
    if problems:
        raise InvalidSpec(problems, where)


def _request(stack: str, kind: str, app: str | None, project_dir: Path | str | None, env: Mapping[str, str] | None, by: str, reason: str = "",
             allowed: frozenset[Phase] | None = None, refuse: Callable[[str, ReleaseState], None] | None = None,
             on_warning: Callable[[str], None] | None = None, **fields: Any) -> str:
    """Write a ``kind`` request for the app's release in progress; ``refuse(app, state)`` may raise first. Stack
    config this version refuses does not stop it (``on_warning`` hears of it): a request needs only the release."""
    _, name, store = _store(stack, app, project_dir, env, on_warning)
    state = store.load()
    if state is not None and refuse is not None:
        refuse(name, state)
    if state is None or state.phase in ENDED:
        raise InvalidSpec([Problem("--app", name, f"has no release in progress to {kind}")], kind)
    if allowed is not None and state.phase not in allowed:
        raise InvalidSpec([Problem("--app", name, f"release {state.release} is {state.phase}: {kind} applies in {', '.join(sorted(allowed))}")], kind)
    if kind == "promote" and not fields.get("skip_analysis"):
        # the question it answers: a promote written for WaitingPromotion (every check passed) must not decide a
        # later inconclusive tick (WaitingDecision), which it never saw
        fields = {**fields, "phase": state.phase.value, "step": state.step}
    store.request(kind, state.release, by=by, reason=reason, **fields)
    return state.release


def abort(stack: str, *, app: str | None = None, project_dir: Path | str | None = None, env: Mapping[str, str] | None = None, by: str = "canary abort",
          on_warning: Callable[[str], None] | None = None) -> str:
    """Ask the running release (or the next resume) to roll back and end Aborted; returns the release id."""

    def promoting(name: str, state: ReleaseState) -> None:
        if state.phase in PROMOTION or state.phase is Phase.PROMOTED_UNVERIFIED:
            # the release would ignore it (the new version passed every check): say so now
            raise InvalidSpec([Problem("--app", name, f"release {state.release} is already {state.phase}: the new version passed every check and a promotion is not interrupted")], "abort")
        if state.phase is Phase.ROLLING_BACK:
            # already going back to stable: the release would ignore it too (and end as its rollback says)
            ends = getattr(state.rollback_to, "value", None) or "Failed"
            raise InvalidSpec([Problem("--app", name, f"release {state.release} is already rolling back to stable ({state.reason or 'see canary status'}): it ends {ends}; "
                                       "if no process runs it, canary resume completes the rollback")], "abort")

    return _request(stack, "abort", app, project_dir, env, by, refuse=promoting, on_warning=on_warning)


def promote(stack: str, *, app: str | None = None, project_dir: Path | str | None = None, env: Mapping[str, str] | None = None, by: str = "canary promote",
            force: bool = False, skip_analysis: bool = False, reason: str = "", on_warning: Callable[[str], None] | None = None) -> str:
    """Approve a release waiting for promotion (or a decision); ``force`` and ``skip_analysis`` need a reason."""
    if force and skip_analysis:
        raise InvalidSpec([Problem("--force", "with --skip-analysis", "give one: --force promotes a release waiting after a failed tick, --skip-analysis one in any phase")], "promote")
    if (force or skip_analysis) and not reason.strip():
        raise InvalidSpec([Problem("--reason", "nothing", "is required with --force or --skip-analysis: it is journaled")], "promote")
    # --skip-analysis acts in any phase before promotion (the release takes it there); past it, it would
    # be written and ignored: refused naming the phase
    allowed = SKIPPABLE if skip_analysis else frozenset({Phase.WAITING_PROMOTION, Phase.WAITING_DECISION})

    def failed_last_tick(name: str, state: ReleaseState) -> None:
        if not (force or skip_analysis) and state.promote_needs_force:
            raise InvalidSpec([Problem("--app", name, f"release {state.release}'s last tick did not pass ({state.reason or 'see canary status'}): "
                                       "it promotes after a passing (or, waiting for a decision, an inconclusive) tick; --force --reason TEXT overrides")], "promote")

    return _request(stack, "promote", app, project_dir, env, by, reason, allowed, refuse=failed_last_tick, on_warning=on_warning,
                    force=force, skip_analysis=skip_analysis)


def pause(stack: str, *, app: str | None = None, project_dir: Path | str | None = None, env: Mapping[str, str] | None = None, by: str = "canary pause",
          on_warning: Callable[[str], None] | None = None) -> str:
    """Hold the release at its current step; analysis goes on. Only where it steps (before promotion, not
    rolling back): elsewhere it would be written and never held to."""
    return _request(stack, "pause", app, project_dir, env, by, allowed=SKIPPABLE, on_warning=on_warning)


def proceed(stack: str, *, app: str | None = None, project_dir: Path | str | None = None, env: Mapping[str, str] | None = None, by: str = "canary continue",
            on_warning: Callable[[str], None] | None = None) -> str:
    """Let a paused release take its next steps again."""
    return _request(stack, "continue", app, project_dir, env, by, allowed=SKIPPABLE, on_warning=on_warning)

