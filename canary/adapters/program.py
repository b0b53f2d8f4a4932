"""The Pulumi side of canary: the ``CanaryDeployment`` component and the project's own program.

The only module that imports pulumi-kubernetes (and pulumi outside the stack
adapter). A ``CanaryDeployment`` declares, in the app's namespace:

- ``<app>-stable`` and ``<app>-canary`` Deployments (the canary at zero replicas
  between releases) and a Service for each, the apex Service ``<app>`` (stable
  only), the HTTPRoute ``<app>``;
- content-addressed copies of the ConfigMaps and Secrets the template reads
  (``settings-3f2a9c01b4``), kept in the cluster when they leave the program, so
  that stable goes on reading its version while the canary reads the new one;
- an autoscaler per track, a PodDisruptionBudget and a PodMonitor when asked.

What each track runs is pinned by ``canary:release`` when the orchestrator
runs the ``up`` (its release config file); without it the component declares
the desired state, and resource hooks refuse what would bypass a release (a
new stable template, a route or canary cut short mid-release) unless the stack
sets ``canary:rollout: direct``. The component exports ``canary/<app>``: the
app as validated, the URNs of its resources, and the stable and desired
templates with their hashes — what a release reads back.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pulumi
import pulumi.runtime.settings
import pulumi_kubernetes as k8s
from pulumi import _types as pulumi_types

from canary.adapters import stackfile
from canary.core import config as stackconfig
from canary.core import naming, routing, units, workload
from canary.core.naming import Track
from canary.core.spec import App, Gateway, PodMonitor, Prometheus, Rollout, StackSpec, app_problems, newer_rules_noted, scrape_of
from canary.errors import InvalidSpec, Problem

TemplateInput = Mapping[str, Any] | Any

# pulumi-kubernetes loads its modules lazily, on first attribute access, and that is not thread-safe:
# two programs run at once in one process (two apps released from one API client) could each find a
# half-loaded module ("module 'pulumi_kubernetes.core.v1' has no attribute 'Namespace'"). Loaded here,
# under the import lock, once.
_KINDS = (k8s.core.v1.Namespace, k8s.core.v1.Service, k8s.core.v1.ConfigMap, k8s.core.v1.Secret, k8s.apps.v1.Deployment,
          k8s.autoscaling.v2.HorizontalPodAutoscaler, k8s.policy.v1.PodDisruptionBudget, k8s.apiextensions.CustomResource)


# --- inputs -------------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """pulumi-kubernetes args (``PodTemplateSpecArgs`` …) as plain data in Kubernetes' field names."""
    if pulumi_types.is_input_type(type(value)):
        return {name: plain(item) for name, item in pulumi_types.input_type_to_dict(value).items()}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def desired_template(app: App, template: TemplateInput | None = None) -> dict[str, Any]:
    """The pod template the app asks for: the full form (the component's ``template`` or
    ``app.template``) or the simple one, with ``app.image`` on the main container."""
    given = plain(template) if template is not None else app.template
    if given is not None:
        out = json.loads(json.dumps(given))
        if app.image:
            out = workload.with_image(out, app.name, app.image, app.container)
        return out  # type: ignore[no-any-return]
    container: dict[str, Any] = {
        "name": app.name,
        "image": app.image,
        "ports": [{"name": "http", "containerPort": app.container_port, "protocol": "TCP"}],
    }
    if app.env:
        container["env"] = [{"name": k, "value": v} for k, v in sorted(app.env.items())]
    resources = app.resources.model_dump(exclude_defaults=True)
    if resources:
        container["resources"] = resources
    for kind in ("readiness", "liveness"):
        probe = getattr(app.probes, kind)
        if probe is not None:
            container[f"{kind}Probe"] = {
                "httpGet": {"path": probe.path, "port": "http"},
                "initialDelaySeconds": probe.initial_delay_seconds,
                "periodSeconds": probe.period_seconds,
                "timeoutSeconds": probe.timeout_seconds,
                "failureThreshold": probe.failure_threshold,
            }
    return {
        "metadata": {"labels": {"app.kubernetes.io/name": app.name},
                     "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(app.container_port)}},
        "spec": {"containers": [container]},
    }


# --- the guards ---------------------------------------------------------------------------------


def _template_changed(args: pulumi.ResourceHookArgs) -> bool:
    old = ((args.old_inputs or {}).get("spec") or {}).get("template") or {}
    new = ((args.new_inputs or {}).get("spec") or {}).get("template") or {}
    old_hash, new_hash = workload.declared_hash(old), workload.declared_hash(new)
    if old_hash and new_hash:
        return old_hash != new_hash
    return workload.strip(old) != workload.strip(new)  # type: ignore[no-any-return]


def _stable_guard(app: str, stack: str) -> pulumi.ResourceHook:
    def guard(args: pulumi.ResourceHookArgs) -> None:
        if _template_changed(args):
            raise RuntimeError(
                f"canary: the workload of {app} changed: plain `pulumi up` does not roll it onto stable unchecked. "
                f"Release it with `canary up {stack} --app {app}` (set canary:rollout: direct to roll it out directly)"
            )

    return pulumi.ResourceHook(f"canary-stable-guard-{app}", guard)


def _to_canary(spec: Mapping[str, Any], app: str) -> bool:
    """The route has a rule before its last that sends requests to the canary (A/B testing, blue/green's testers)."""
    canary = naming.service(app, Track.CANARY)
    rules = [r for r in spec.get("rules") or [] if isinstance(r, Mapping)]
    return any(isinstance(ref, Mapping) and ref.get("name") == canary for rule in rules[:-1] for ref in rule.get("backendRefs") or [])


def _plain(check: Callable[[pulumi.ResourceHookArgs], None]) -> Callable[[pulumi.ResourceHookArgs], Awaitable[None] | None]:
    """A route hook that reads its inputs and outputs as plain values. A secret one reaches a hook as an ``Output``:
    the route's spec, once a release declared it with A/B matches (a tester's token), and in the old inputs of every
    update after. Such a hook is awaited by the engine: the values are awaited first (None when unknown, as in a
    preview), then ``check`` runs on them."""

    def hook(args: pulumi.ResourceHookArgs) -> Awaitable[None] | None:
        kinds = ("new_inputs", "old_inputs", "new_outputs", "old_outputs")
        if not any(isinstance(value, pulumi.Output) for kind in kinds for value in (getattr(args, kind) or {}).values()):
            check(args)
            return None

        async def plain() -> None:
            resolved: dict[str, Any] = {}
            for kind in kinds:
                props = getattr(args, kind)
                resolved[kind] = None if props is None else {key: (await value.future()) if isinstance(value, pulumi.Output) else value
                                                             for key, value in props.items()}
            check(pulumi.ResourceHookArgs(urn=args.urn, id=args.id, name=args.name, type=args.type, **resolved))

        return plain()

    return hook


def _secret_if(secret: bool, value: Any) -> Any:
    return pulumi.Output.secret(value) if secret else value


def _route_guard(app: str, stack: str) -> pulumi.ResourceHook:
    def guard(args: pulumi.ResourceHookArgs) -> None:
        old_spec = (args.old_inputs or {}).get("spec") or {}
        new_spec = (args.new_inputs or {}).get("spec") or {}
        state = routing.read_route({"spec": old_spec}, app, [])
        new_state = routing.read_route({"spec": new_spec}, app, [])
        # (rules that send nothing to the canary are no release: a route adopted with a path rule to the app)
        if (state.canary_weight or _to_canary(old_spec, app) or state.mirrored) and not (new_state.canary_weight or _to_canary(new_spec, app)):
            raise RuntimeError(
                f"canary: a release of {app} is in progress (its route sends traffic to the canary): "
                f"see `canary status {stack} --app {app}`, then `canary resume` or `canary abort`"
            )

    return pulumi.ResourceHook(f"canary-route-guard-{app}", _plain(guard))


#: What canary's route keeps of a route it adopts, whatever it declares: its name. Kubernetes cannot rename an object, so a
#: route adopted under another name would be *replaced*, canary's created and the old one deleted, and Pulumi runs update
#: hooks for in-place updates only: a replacement runs create hooks, which are given no old inputs, so
#: ``_adopted_route_guard`` would never see the route it drops. Kept, every adoption is an update the guard sees, and the
#: guard refuses the rename itself. (A create, as in a new stack where no route is adopted, declares canary's name:
#: ignore_changes only keeps what an old state holds.) Not the namespace: a later change of ``app.namespace`` leaves the
#: route's spec as it was (its backends name no namespace), so no update would move it, and the route would stay behind
#: in the old namespace, silently, before Services that are gone; replaced, it moves with the app. (A route adopted from
#: another namespace than the app's is replaced unchecked: its backends would be the app's only with a ReferenceGrant.)
_ADOPTED_ROUTE_KEPT = ("metadata.name",)


def _parent_key(ref: Mapping[str, Any], namespace: str | None) -> tuple[str, str, str, str, str, int | None]:
    """A parentRef with the Gateway API's defaults filled in (a Gateway, in the route's namespace), to compare two routes'."""
    port, group = ref.get("port"), ref.get("group")
    number = int(port) if isinstance(port, int | float) and not isinstance(port, bool) else None  # numbers reach a hook as floats
    return (routing.GROUP if group is None else str(group), str(ref.get("kind") or "Gateway"), str(ref.get("namespace") or namespace or "default"),
            str(ref.get("name")), str(ref.get("sectionName") or ""), number)


def _parent_config(key: tuple[str, str, str, str, str, int | None]) -> str:
    """A parentRef as ``gateway.parentRefs`` writes it (no double quotes: canary reads a hook's refusal up to the first)."""
    group, kind, namespace, name, section, port = key
    fields = [f"name: {name}", f"namespace: {namespace}", *([f"sectionName: {section}"] if section else []), *([f"port: {port}"] if port else [])]
    if (group, kind) != (routing.GROUP, "Gateway"):
        fields.insert(0, f"kind: {kind} ({group or 'core'})")
    return "{" + ", ".join(fields) + "}"


def _adopted_route_guard(app: str, other_ports: Sequence[Any] = (), namespace: str | None = None) -> pulumi.ResourceHook:
    """Refuse to take over a route that canary's route would change beyond sending its requests to the app's tracks.

    - Its identity: a route of another name or namespace than canary's (``namespace/<app>``) cannot be updated into it
      (``_ADOPTED_ROUTE_KEPT``: the guard sees it, as an update that keeps its name, and refuses).
    - Its hostnames and parentRefs, which canary's route takes from ``gateway=`` alone: a route adopted for
      ``shop.example.com`` by a component without hostnames would answer every host of the listener, or move to
      another Gateway. Compared only while the route is not canary's own yet (its label): a later change of
      ``gateway=`` is the team's to make.
    - Its rules: canary's send all of the app's requests to the app, so a rule that sends some elsewhere (``/static``
      to a CDN proxy), or answers them itself (a redirect), would silently be dropped. Canary's own route (every later
      update) passes. ``other_ports``: the apex Service's ports beside canary's ``http`` (``service=``): a route to one
      of them (the app's gRPC port) would be moved to ``http`` by canary's route.

    Run in previews too: ``pulumi preview`` shows the refusal before the up has created anything."""
    ours = set(naming.owned_names(app))
    others = {port for port in other_ports if isinstance(port, int | float) and not isinstance(port, bool)}

    def describe(rule: Mapping[str, Any]) -> str:
        matches = [m for m in rule.get("matches") or [] if isinstance(m, Mapping)]
        paths = [str((m.get("path") or {}).get("value")) for m in matches if isinstance(m.get("path"), Mapping)]
        return f"paths {', '.join(paths)}" if paths else ("its matches" if matches else "every request")

    def theirs(ref: Mapping[str, Any], namespace: str, port: Any) -> bool:
        return (ref.get("kind", "Service") != "Service" or ref.get("group", "") not in ("", "core") or ref.get("name") not in ours
                or ref.get("namespace", namespace) != namespace or (port is not None and ref.get("port", port) != port)
                or ref.get("port", port) in others)

    def own_filter(item: Any) -> bool:
        """A filter canary's own route carries: its mirror to the canary, the affinity cookie it sets."""
        if not isinstance(item, Mapping):
            return False
        if item.get("type") == "RequestMirror":
            return (item.get("requestMirror") or {}).get("backendRef", {}).get("name") in ours
        headers = (item.get("responseHeaderModifier") or {}) if item.get("type") == "ResponseHeaderModifier" else {}
        return (bool(headers) and set(headers) == {"add"}
                and all(isinstance(h, Mapping) and str(h.get("name", "")).lower() == "set-cookie" for h in headers["add"] or []))

    def dropped_rules(old: Mapping[str, Any], route_namespace: str) -> list[str]:
        rules = (old.get("spec") or {}).get("rules") or []
        # the port the route sends the app's requests to (its rules' most common): a rule to another port of the app (its
        # gRPC port) would be sent to that one by canary's route. (Not compared with canary's own port: a route on the
        # Service's port 8080 adopted by an app on 80, or app.servicePort changed, moves every rule alike)
        to_app = [ref.get("port") for rule in rules if isinstance(rule, Mapping) for ref in rule.get("backendRefs") or []
                  if isinstance(ref, Mapping) and ref.get("name") in ours and ref.get("port") is not None]
        counts = Counter(to_app)
        port = max(reversed(to_app), key=lambda p: counts[p]) if to_app else None  # (a tie: the later rule's, the catch-all's)
        dropped = []
        for i, rule in enumerate(r for r in rules if isinstance(r, Mapping)):
            refs = [ref for ref in rule.get("backendRefs") or [] if isinstance(ref, Mapping)]
            elsewhere = sorted({f"{ref['namespace'] + '/' if ref.get('namespace') else ''}{ref.get('name')}:{ref.get('port', port)}"
                                if ref.get("name") in ours else str(ref.get("name")) for ref in refs if theirs(ref, route_namespace, port)})
            kept_out = [key for key in ("timeouts", "retry", "sessionPersistence") if rule.get(key)]
            kept_out += sorted({str(f.get("type")) for f in [*(rule.get("filters") or []), *(f for ref in refs for f in ref.get("filters") or [])]
                                if isinstance(f, Mapping) and not own_filter(f)})
            if elsewhere or not refs:
                dropped.append(f"rules[{i}] ({describe(rule)}) to {', '.join(elsewhere)}" if elsewhere else f"rules[{i}] ({describe(rule)}) without backends")
            elif kept_out:
                dropped.append(f"rules[{i}] ({describe(rule)}) with {', '.join(kept_out)}")
        return dropped

    def identity(old: Mapping[str, Any], name: str | None, old_namespace: str, where: str) -> str | None:
        kind = old.get("kind") or routing.KIND
        if kind == routing.KIND and name == naming.route(app) and (namespace is None or old_namespace == namespace):
            return None
        return (f"is {kind} {old_namespace}/{name}, and canary's route is {routing.KIND} {where}/{naming.route(app)}: an object keeps its "
                "kind, name and namespace, so it cannot become canary's route in place, and Pulumi would replace it (canary's created, "
                "it deleted) unchecked")

    def gateway_problems(old: Mapping[str, Any], new: Mapping[str, Any], old_namespace: str, where: str) -> list[str]:
        old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
        problems = []
        old_hosts, new_hosts = sorted(set(old_spec.get("hostnames") or [])), sorted(set(new_spec.get("hostnames") or []))
        if old_hosts != new_hosts:
            # none: the route answers every host name its listeners accept (a route adopted for one host would capture the rest)
            every = "every host name of its listeners (no hostnames)"
            problems.append(f"it answers {', '.join(old_hosts) or every} and canary's route would answer {', '.join(new_hosts) or every}: "
                            + (f"set gateway.hostnames to [{', '.join(old_hosts)}]" if old_hosts else "leave gateway.hostnames out"))
        old_refs = sorted({_parent_key(r, old_namespace) for r in old_spec.get("parentRefs") or [] if isinstance(r, Mapping)}, key=str)
        new_refs = sorted({_parent_key(r, where) for r in new_spec.get("parentRefs") or [] if isinstance(r, Mapping)}, key=str)
        if old_refs != new_refs:
            foreign = [key for key in old_refs if key[:2] != (routing.GROUP, "Gateway")]
            fix = (f"gateway.parentRefs declares Gateways only ({', '.join(_parent_config(key) for key in foreign)} is not one): leave route out of adopt"
                   if foreign else f"set gateway.parentRefs to [{', '.join(_parent_config(key) for key in old_refs)}]")
            problems.append(f"its parentRefs are [{', '.join(_parent_config(key) for key in old_refs)}] and canary's route would be attached "
                            f"to [{', '.join(_parent_config(key) for key in new_refs)}]: {fix}")
        return problems

    def guard(args: pulumi.ResourceHookArgs) -> None:
        old, new = args.old_inputs or {}, args.new_inputs or {}
        where = namespace or (new.get("metadata") or {}).get("namespace") or "default"
        # where the route is: the live object's (a route declared without a namespace is in the provider's default one)
        live, declared = (args.old_outputs or {}).get("metadata") or {}, old.get("metadata") or {}
        old_namespace = live.get("namespace") or declared.get("namespace") or "default"
        own = (declared.get("labels") or {}).get(naming.APP_LABEL) == app
        renamed = identity(old, live.get("name") or declared.get("name"), old_namespace, where)
        # hostnames and parentRefs: compared while the route is the team's (a later change of gateway= is theirs to make)
        problems = [] if own else gateway_problems(old, new, old_namespace, where)
        dropped = dropped_rules(old, old_namespace)
        if dropped:
            problems.append(
                f"it has rules canary's route would drop: {'; '.join(dropped)}; canary's rules send all of {app}'s requests to {app}'s "
                "Services on its port, with no filters, timeouts or retries of yours: move those rules to an HTTPRoute of their own "
                "(same parentRefs and hostnames; the more specific match still wins)")
        lost = " | ".join(problems)
        fix = f"Fix {'that' if len(problems) == 1 else 'those'}, then "
        if renamed:
            raise RuntimeError(
                f"canary: the route adopted for {app} (adopt.route) {renamed}. "
                + (f"And canary's route would lose what it holds: {lost}. {fix}" if problems else "It holds nothing canary's route would lose: ")
                + f"leave route out of adopt, with the route out of your program (canary's route is then created beside the old one, and "
                f"the old one deleted at the end of the up), or first name it {naming.route(app)} in {where}, in your program as it was "
                "before canary (one up), then adopt it")
        if problems:
            raise RuntimeError(f"canary: the route adopted for {app} (adopt.route) cannot be taken over as it is: {lost}. {fix}adopt it, "
                               "or leave route out of adopt")

    return pulumi.ResourceHook(f"canary-adopted-route-guard-{app}", _plain(guard), pulumi.ResourceHookOptions(on_dry_run=True))


def _adopted_service_guard(app: str, service_port: int) -> pulumi.ResourceHook:
    """Refuse to take over a Service whose port that canary's ``http`` port replaces (the one on ``app.servicePort``/TCP,
    else the one named ``http``) carries another ``appProtocol`` than ``app.appProtocol``: the adoption's apply would
    change how in-cluster clients and a gateway talk to the pods (an h2c app's dropped: HTTP/1.1 to pods that answer
    HTTP/2 only). Compared only while the Service is not canary's own yet (its label): a later change of
    ``app.appProtocol`` is the team's to make. Run in previews too."""
    def guard(args: pulumi.ResourceHookArgs) -> None:
        old, new = args.old_inputs or {}, args.new_inputs or {}
        if ((old.get("metadata") or {}).get("labels") or {}).get(naming.APP_LABEL) == app:
            return
        old_ports = [p for p in (old.get("spec") or {}).get("ports") or [] if isinstance(p, Mapping)]
        replaced = (next((p for p in old_ports if p.get("port") == service_port and (p.get("protocol") or "TCP") == "TCP"), None)
                    or next((p for p in old_ports if p.get("name") == "http"), None))
        http = next((p for p in (new.get("spec") or {}).get("ports") or [] if isinstance(p, Mapping) and p.get("name") == "http"), {})
        before, after = (replaced or {}).get("appProtocol"), http.get("appProtocol")
        if replaced is None or before == after:
            return
        fix = f"set app.appProtocol to {before}" if before else "leave app.appProtocol out"
        raise RuntimeError(f"canary: the Service adopted for {app} (adopt.service) cannot be taken over as it is: its port "
                           f"{replaced.get('name') or replaced.get('port')} has appProtocol {before or 'none'}, and canary's http port, which "
                           f"takes its place, would have {after or 'none'}: clients and the gateway would talk to the pods another way. "
                           f"{fix[0].upper()}{fix[1:]}, then adopt it")

    return pulumi.ResourceHook(f"canary-adopted-service-guard-{app}", guard, pulumi.ResourceHookOptions(on_dry_run=True))


def _other_ports(service: Mapping[str, Any]) -> list[Any]:
    """The port numbers ``service=`` declares beside canary's ``http`` one."""
    return [p.get("port") for p in (service.get("spec") or {}).get("ports") or [] if isinstance(p, Mapping)]


def _before_update(guards: list[pulumi.ResourceHook]) -> pulumi.ResourceOptions | None:
    return pulumi.ResourceOptions(hooks=pulumi.ResourceHookBinding(before_update=guards)) if guards else None


def _stable_size_guard(app: str, min_replicas: int) -> pulumi.ResourceHook:
    """Refuse to create stable without a size when an autoscaler owns it: it would start with one pod and take all
    the traffic. That happens only when stable replaces a Deployment that declared no replicas (ignore_changes keeps
    the old declaration), as one an autoscaler of the program sized before canary adopted it."""

    def guard(args: pulumi.ResourceHookArgs) -> None:
        replicas = ((args.new_inputs or {}).get("spec") or {}).get("replicas")
        if isinstance(replicas, (int, float)) and replicas < min_replicas:  # numbers reach a hook as floats
            # the replaced Deployment declared fewer than its autoscaler kept: all the traffic would move to them
            raise RuntimeError(
                f"canary: {naming.deployment(app, Track.STABLE)} would start with {int(replicas)} pod(s), below autoscaler.minReplicas "
                f"({min_replicas}), and take all of {app}'s traffic: it replaces a Deployment that declared {int(replicas)} (its autoscaler "
                "sized it since). Declare its current count on that Deployment first (one up), or leave deployment out of adopt"
            )
        if replicas is None:
            raise RuntimeError(
                f"canary: {naming.deployment(app, Track.STABLE)} would start with one pod and take all of {app}'s traffic: it replaces a "
                "Deployment that declared no replicas (an autoscaler sized it), and the autoscaler's size is not declared again "
                "once set. Declare replicas on that Deployment first (its current count, in the program before canary, one up), "
                f"or leave deployment out of adopt: {naming.deployment(app, Track.STABLE)} is then created at autoscaler.minReplicas "
                "and the old Deployment deleted at the end of the up"
            )

    return pulumi.ResourceHook(f"canary-stable-size-guard-{app}", guard)


#: The annotation of a Deployment whose size the program declares over another field manager's: the autoscaler's
#: (which owns the size while it runs), or stable's ``replicas`` over whatever the autoscaler left it at once removed
_FORCED = "pulumi.com/patchForce"


def _undeclared_size_guard(app: str, namespace: str) -> pulumi.ResourceHook:
    """Refuse an up that leaves stable's size to the default when it was declared (an autoscaler, ``replicas``):
    stable would be sized to that one pod, whatever it runs now, under all the traffic."""

    def guard(args: pulumi.ResourceHookArgs) -> None:
        old = (((args.old_inputs or {}).get("metadata") or {}).get("annotations") or {}).get(_FORCED)
        new = (((args.new_inputs or {}).get("metadata") or {}).get("annotations") or {}).get(_FORCED)
        if old == "true" and new != "true":
            deployment = naming.deployment(app, Track.STABLE)
            raise RuntimeError(
                f"canary: {app}'s autoscaler or replicas is removed and its replicas is not set: {deployment} would be sized "
                f"to the default of 1 pod, whatever it runs now, and keep all of {app}'s traffic. Set {app}'s replicas to the "
                f"count it should keep (now: kubectl -n {namespace} get deployment {deployment}), then up"
            )

    return pulumi.ResourceHook(f"canary-undeclared-size-guard-{app}", guard)


def _canary_guard(app: str, stack: str) -> pulumi.ResourceHook:
    def guard(args: pulumi.ResourceHookArgs) -> None:
        old = int(((args.old_inputs or {}).get("spec") or {}).get("replicas") or 0)
        new = int(((args.new_inputs or {}).get("spec") or {}).get("replicas") or 0)
        if old > 0 and new == 0:
            raise RuntimeError(
                f"canary: a release of {app} is in progress (its canary runs {old} pods): "
                f"see `canary status {stack} --app {app}`, then `canary resume` or `canary abort`"
            )

    return pulumi.ResourceHook(f"canary-canary-guard-{app}", guard)


# --- one component per app ---------------------------------------------------------------------

#: The apps each program run declared so far (app name -> the component that declares it). Keyed by the
#: run's connection to the engine: a real run (or one of two inline programs run at once in one process)
#: has its own, and so has each program a test runs under Pulumi's mocks, which keep one root resource
#: across programs.
_DECLARED: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()
#: per run, app name -> (its namespace, the component that declares it)
_NAMESPACES: weakref.WeakKeyDictionary[Any, dict[str, tuple[str, str]]] = weakref.WeakKeyDictionary()
_DECLARED_LOCK = threading.Lock()


def _claim(app: str, namespace: str, component: str) -> None:
    """Record that ``component`` declares ``app`` in this program run, or refuse a second component of it:
    the stack output, the release key and the hooks are by app name, so the second would silently take
    the first's output and have both pinned by one release. Refuse too an app of the same namespace whose
    Services and Deployments would share a name with it (``web-canary`` beside ``web``)."""
    run = pulumi.runtime.settings.get_monitor()
    if run is None:
        return
    with _DECLARED_LOCK:
        declared = _DECLARED.setdefault(run, {})
        first = declared.setdefault(app, component)
        clash = None
        if first == component:
            names = {(namespace, obj) for obj in naming.owned_names(app)}
            clash = next((other for other, (other_namespace, other_component) in _NAMESPACES.setdefault(run, {}).items()
                          if other != app and names & {(other_namespace, obj) for obj in naming.owned_names(other)}
                          and other_component != component), None)
            if clash is None:
                _NAMESPACES[run][app] = (namespace, component)
            else:
                del declared[app]
    if first != component:
        raise InvalidSpec([Problem("app.name", repr(app), (
            f"is already the app of CanaryDeployment {first} in this program: one component per app, as its stack output "
            f"{naming.OUTPUT_PREFIX}{app}, its release key {naming.CONFIG_NAMESPACE}:release.{app} and its hooks are named by the app; "
            "give each app a name of its own (web-eu, web-us)"))], f"CanaryDeployment {component}")
    if clash is not None:
        shared = sorted(set(naming.owned_names(app)) & set(naming.owned_names(clash)))
        raise InvalidSpec([Problem("app.name", repr(app), (
            f"clashes with app {clash} (CanaryDeployment {_NAMESPACES[run][clash][1]}) in namespace {namespace}: both would own the "
            f"Service and Deployment named {', '.join(shared)}; rename one"))], f"CanaryDeployment {component}")


# --- the component ------------------------------------------------------------------------------


class CanaryDeployment(pulumi.ComponentResource):
    """An app released progressively by canary: two tracks, their Services and the route between them.

    ``adopt`` moves what a program declared before it used canary under the component, in one ``up``
    without downtime: ``{"deployment": "web", "service": "web", "route": "web"}`` names (a resource
    at the stack's root, a URN or a ``pulumi.Alias``) the Deployment that ``<app>-stable`` replaces,
    the Service that becomes the apex Service and the HTTPRoute that becomes the route. ``<app>-stable``
    is created and Ready first, then the Service and the route move to it (updated in place when they
    were named ``<app>``), and the old Deployment is deleted last. See examples/existing-program.
    The route is taken over only in place, and only with what canary's route keeps of it: the up refuses one
    named otherwise, or whose hostnames, parentRefs (``gateway``) or rules canary's would change
    (``_adopted_route_guard``). ``service`` and ``route`` declare what the adopted Service and route carried
    beside what canary declares (their labels and annotations; the Service's type and ports), which the
    adoption's apply would otherwise remove.

    ``prometheus`` declares the PodMonitor (``{"podMonitor": {"interval": "30s"}}``) and nothing else: where
    Prometheus is and how often it scrapes are the stack config's ``canary:prometheus``, which releases query
    by (the ``up``s of a release in progress only warn of the others, and ignore them, as an ``image_config`` no
    program reads, which is then not exported). An app the stack config declares too (``canary:app`` naming it,
    ``canary:apps.<app>.app`` or ``.gateway``) is refused: a release would judge the stack config's.
    """

    #: who declares the app: the program's own argument (``"component"``) or the stack config, for canary's own program
    _APP_FROM = "component"

    def __init__(
        self,
        name: str,
        app: App | Mapping[str, Any],
        gateway: Gateway | Mapping[str, Any],
        *,
        template: TemplateInput | None = None,
        config_maps: Mapping[str, Any] | None = None,
        secrets: Mapping[str, Any] | None = None,
        prometheus: Mapping[str, Any] | None = None,
        rollout: Rollout | str | None = None,
        service: Mapping[str, Any] | None = None,
        route: Mapping[str, Any] | None = None,
        adopt: Mapping[str, str | pulumi.Alias] | None = None,
        image_config: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        config = pulumi.Config(naming.CONFIG_NAMESPACE)
        image_key, image_problems = _image_config(image_config)
        try:
            # every argument checked before the component declares anything
            given = _arguments(name, app, gateway, prometheus, rollout if rollout is not None else config.get("rollout"),
                               "rollout" if rollout is not None else "canary:rollout", template, config_maps, secrets, adopt, service, route)
            # the rules newer than a release in progress, which its `up`s only warn of: prometheus= given more than podMonitor
            # (those fields ignored, as earlier versions ignored them), an image_config no program reads (not exported: the
            # release pins its images, and only `canary release --image`, which waits for the release to end, reads it), a
            # probe on a port name its container does not declare (applied as it is: the API server takes it)
            ignored = {**{problem.field: "ignored: releases read canary:prometheus" for problem in given.held},
                       **({"image_config": "not exported, a key no program reads"} if image_problems else {})}
            _refuse_unless_in_flight(name, given.app, (config.get_object("release") or {}).get(given.app.name),
                                     [*image_problems, *given.held, *given.newer, *_check_against_stack_config(name, given.app, given.pod_monitor, self._APP_FROM)],
                                     ignored)
            _claim(given.app.name, given.app.namespace, name)
        except InvalidSpec as exc:
            # what `program()` does with invalid stack config: Pulumi prints a RunError's message, not a traceback
            raise pulumi.RunError(str(InvalidSpec(list(dict.fromkeys([*image_problems, *exc.problems])), exc.source))) from exc
        super().__init__(naming.COMPONENT_TYPE, name, None, opts)
        self.app, self.gateway, self.pod_monitor, self.rollout = given.app, given.gateway, given.pod_monitor, given.rollout
        desired, moved, apex, route_metadata = given.desired, given.moved, given.apex, given.route_metadata
        stack = pulumi.get_stack()
        spec_app = self.app
        # app.port beside a pod template the user wrote says where the pods listen whatever the template declares
        port_given = spec_app.port is not None and (template is not None or spec_app.template is not None)
        if template is not None and spec_app.port is None:
            # the Services (and the PodMonitor) target the main container's port of the template given, as for app.template
            spec_app = self.app = spec_app.model_copy(update={"port": spec_app.model_copy(update={"template": desired}).container_port})
        namespace = spec_app.namespace
        child = pulumi.ResourceOptions(parent=self)
        if spec_app.create_namespace:
            # kept when the app goes (removed from the stack, createNamespace turned off, the stack destroyed): deleting
            # a namespace deletes all it holds, another app's too (both may declare it: the provider's apply takes both)
            ns = k8s.core.v1.Namespace(f"{name}-namespace", metadata={"name": namespace},
                                       opts=_merge(child, pulumi.ResourceOptions(retain_on_delete=True)))
            child = pulumi.ResourceOptions(parent=self, depends_on=[ns])

        # content-addressed copies of the config the template reads
        cm_names = sorted({*spec_app.config_maps, *(config_maps or {})})
        secret_names = sorted({*spec_app.secrets, *(secrets or {})})
        _warn_unhashed(self, spec_app.name, desired, cm_names, secret_names)
        cm_data = _config_data(spec_app.config_maps, config_maps, "data")
        secret_data = pulumi.Output.secret(_config_data(spec_app.secrets, secrets, "stringData"))
        # the hashes of secret content name the copies and the template: they are not secret themselves
        copies = pulumi.Output.unsecret(pulumi.Output.all(cm_data, secret_data).apply(lambda both: _copy_names(both[0], both[1])))
        copy_resources = self._copies(name, namespace, cm_names, secret_names, cm_data, secret_data, copies, child)

        override = (config.get_object("release") or {}).get(spec_app.name)
        desired_pin = copies.apply(lambda c: _pin(desired, spec_app, c["hashes"]))
        if override:
            stable_pin: Any = pulumi.Output.from_input(override["stable"])
            canary_pin: Any = pulumi.Output.from_input(override.get("canary") or desired_pin)
            canary_replicas = int(override.get("canary", {}).get("replicas", 0)) if override.get("canary") else 0
            shape = routing.RouteShape.from_json(_route_with_values(spec_app.name, override))
        else:
            stable_pin = desired_pin
            canary_pin = desired_pin
            canary_replicas = 0
            shape = routing.AT_REST
        guarded = override is None and self.rollout is Rollout.CHECKED

        def track_template(pin: Mapping[str, Any], track: Track) -> dict[str, Any]:
            names = {name: naming.copy_name(name, h) for key, h in pin.get("config_hashes", {}).items()
                     for kind, _, name in [key.partition("/")] if kind == "configMap"}
            secret_names = {name: naming.copy_name(name, h) for key, h in pin.get("config_hashes", {}).items()
                            for kind, _, name in [key.partition("/")] if kind == "secret"}
            renamed = workload.rename_references(pin["template"], names, secret_names)
            return workload.for_track(renamed, spec_app.name, track, pin["hash"])

        stable_template = pulumi.Output.from_input(stable_pin).apply(lambda p: track_template(p, Track.STABLE))
        canary_template = pulumi.Output.from_input(canary_pin).apply(lambda p: track_template(p, Track.CANARY))

        hooks = (lambda hook: pulumi.ResourceOptions(hooks=pulumi.ResourceHookBinding(before_update=[hook]))) if guarded else (lambda hook: pulumi.ResourceOptions())
        stable_opts = _merge(child, hooks(_stable_guard(spec_app.name, stack)), moved.get("deployment"))
        # a size declared (replicas, or the autoscaler's) is applied over the one another manager left: an autoscaler removed
        # leaves stable at its last size, owned by the autoscaler's manager, and the team's replicas must take it
        declared = bool(spec_app.autoscaler) or "replicas" in spec_app.model_fields_set
        if spec_app.autoscaler:
            # Stable is created at the autoscaler's minimum, not at the one pod a Deployment without replicas gets, and
            # Ready at that size before traffic moves to it. Later ups leave the size to the autoscaler: ignore_changes keeps
            # the declared value, and under server-side apply the provider sends the live one, or nothing once the
            # autoscaler owns the field. A Deployment that declared replicas before (adopted, or this app before its
            # autoscaler) keeps that value instead of falling back to one pod.
            stable_opts = _merge(stable_opts, pulumi.ResourceOptions(
                ignore_changes=["spec.replicas"],
                hooks=pulumi.ResourceHookBinding(before_create=[_stable_size_guard(spec_app.name, spec_app.autoscaler.min_replicas)])))
        elif not declared:
            stable_opts = _merge(stable_opts, pulumi.ResourceOptions(
                hooks=pulumi.ResourceHookBinding(before_update=[_undeclared_size_guard(spec_app.name, namespace)])))
        stable_replicas = spec_app.autoscaler.min_replicas if spec_app.autoscaler else spec_app.replicas
        self.stable = self._deployment(name, Track.STABLE, stable_template, stable_replicas, stable_opts, copy_resources, forced=declared)
        autoscalers = {Track.STABLE: self._autoscaler(name, Track.STABLE, self.stable, child)} if spec_app.autoscaler else {}
        # each Service targets the port its track's pods serve: a release that changes the port keeps stable's
        # Services on the port stable still listens on until stable takes the new version. By the port's name
        # where the templates name it: each pod is then reached on its own port, through stable's rolling update too
        def port_of(pin: Any) -> Any:
            return pulumi.Output.all(pin, desired_pin).apply(lambda both: _track_port(both[0], both[1], spec_app, port_given))

        def http_of(pin: Any) -> Any:
            # the track's http port: its target, and the appProtocol the gateway speaks to its pods (_track_protocol)
            return pulumi.Output.all(pin, desired_pin).apply(
                lambda both: _http_port(spec_app, _track_target(both[0], both[1], spec_app, port_given), _track_protocol(both[0], both[1], spec_app)))

        stable_port, canary_port = port_of(stable_pin), port_of(canary_pin)
        # after stable (a plain `pulumi up` whose stable change the guard refuses leaves its Service as it was)
        self.stable_service = self._service(name, Track.STABLE, http_of(stable_pin), _merge(child, pulumi.ResourceOptions(depends_on=[self.stable])))
        self.canary_service = self._service(name, Track.CANARY, http_of(canary_pin), child)
        # after stable is Ready, and its autoscaler there to keep its size: the apex Service selects stable pods only
        # (an adopted Service changes its selector here), and the route sends all traffic to them
        ready = [self.stable, *autoscalers.values()]
        adopted_service = [_adopted_service_guard(spec_app.name, spec_app.service_port)] if "service" in moved else []
        self.apex_service = self._apex(name, apex, http_of(stable_pin), _merge(child, pulumi.ResourceOptions(depends_on=ready), moved.get("service"),
                                                                           _before_update(adopted_service)))
        route_opts = _merge(child, pulumi.ResourceOptions(depends_on=[*ready, self.stable_service, self.canary_service]), moved.get("route"))
        adopted_route: list[pulumi.ResourceHook] = []
        if "route" in moved:
            # the adopted route keeps its name and namespace for the update, which the guard sees and refuses if they are not canary's
            route_opts = _merge(route_opts, pulumi.ResourceOptions(ignore_changes=list(_ADOPTED_ROUTE_KEPT)))
            adopted_route = [_adopted_route_guard(spec_app.name, _other_ports(apex), namespace)]
        self.route = k8s.apiextensions.CustomResource(
            f"{name}-route",
            api_version=routing.API_VERSION,
            kind=routing.KIND,
            # what route= declares of its metadata (an adopted route's labels and annotations, which an apply without them would remove)
            metadata={"name": naming.route(spec_app.name), "namespace": namespace,
                      "labels": {**(route_metadata.get("labels") or {}), naming.APP_LABEL: spec_app.name},
                      **({"annotations": route_metadata["annotations"]} if route_metadata.get("annotations") else {})},
            # with A/B matches, a secret: their values may be (a tester's token), and Pulumi's state keeps it encrypted
            spec=_secret_if(bool(shape.matches), routing.route_spec(spec_app.name, [r.model_dump(by_alias=True, exclude_none=True) for r in self.gateway.parent_refs],
                                                                     self.gateway.hostnames, spec_app.service_port, shape)),
            opts=_merge(route_opts, _before_update([*adopted_route, *([_route_guard(spec_app.name, stack)] if guarded else [])])),
        )
        canary_opts = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[self.route]))
        self.canary = self._deployment(name, Track.CANARY, canary_template, canary_replicas,
                                       pulumi.ResourceOptions.merge(canary_opts, hooks(_canary_guard(spec_app.name, stack))), copy_resources,
                                       forced=bool(spec_app.autoscaler))
        if spec_app.autoscaler:
            autoscalers[Track.CANARY] = self._autoscaler(name, Track.CANARY, self.canary, child)
        extra = {f"{track.value}Autoscaler": hpa for track, hpa in autoscalers.items()}
        extra.update(self._extras(name, child, pulumi.Output.all(stable_port, canary_port)))
        urns: dict[str, Any] = {
            "stableDeployment": self.stable.urn, "canaryDeployment": self.canary.urn, "route": self.route.urn,
            "stableService": self.stable_service.urn, "canaryService": self.canary_service.urn, "apexService": self.apex_service.urn,
            **{key: resource.urn for key, resource in extra.items()},
            "copies": [r.urn for r in copy_resources],
        }
        exported = {
            "app": self.app.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"secrets"}),
            "gateway": self.gateway.model_dump(mode="json", by_alias=True, exclude_none=True),
            "namespace": namespace,
            "urns": urns,
            "stable": stable_pin,
            "desired": desired_pin,
            "copies": copies.apply(lambda c: c["names"]),
            "rollout": self.rollout.value,
            # who declared the app: a release judges a component's app, never beside the stack config's (refused)
            "appFrom": self._APP_FROM,
            # what the orchestrator checks that the cluster it reads is the one this program deploys to
            "uids": {"stableDeployment": self.stable.metadata.apply(_uid)},
        }
        if image_key:
            # the stack config key the program reads the image from, with its namespace: `canary release --image` sets it
            exported["imageConfig"] = image_key
        pulumi.export(f"{naming.OUTPUT_PREFIX}{spec_app.name}", exported)
        self.register_outputs({"urns": urns})

    def _copies(self, name: str, namespace: str, cm_names: Sequence[str], secret_names: Sequence[str], cm_data: pulumi.Output[Any],
                secret_data: pulumi.Output[Any], copies: pulumi.Output[Any], child: pulumi.ResourceOptions) -> list[pulumi.Resource]:
        """One ConfigMap (or Secret) per config object the template reads, named by its content.
        Retained on delete: a copy a running stable reads stays when the program moves on. Everything in a
        copy but its reader's label follows from its name and content, so another app (in this stack or
        another) reading the same config declares the same object beside it, without a conflict."""
        resources: list[pulumi.Resource] = []
        # never protected, whatever the component is: a copy is replaced (a new name) at every change of its content,
        # which Pulumi refuses for a protected resource; retained on delete, it stays for the stable that reads it
        keep = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(retain_on_delete=True, delete_before_replace=False, protect=False))
        labels = {naming.copy_user(self.app.name): "true", "app.kubernetes.io/managed-by": naming.MANAGED_BY}
        for original in cm_names:
            resources.append(k8s.core.v1.ConfigMap(
                f"{name}-configmap-{original}",
                metadata={"name": copies.apply(lambda c, o=original: c["names"][f"configMap/{o}"]), "namespace": namespace,
                          "labels": {**labels, naming.COPY_OF_LABEL: original}},
                data=cm_data.apply(lambda d, o=original: d[o]),
                immutable=True,
                opts=keep,
            ))
        for original in secret_names:
            resources.append(k8s.core.v1.Secret(
                f"{name}-secret-{original}",
                metadata={"name": copies.apply(lambda c, o=original: c["names"][f"secret/{o}"]), "namespace": namespace,
                          "labels": {**labels, naming.COPY_OF_LABEL: original}},
                string_data=secret_data.apply(lambda d, o=original: d[o]),
                immutable=True,
                opts=keep,
            ))
        return resources

    def _deployment(self, name: str, track: Track, template: Any, replicas: int | None, opts: pulumi.ResourceOptions,
                    depends: Sequence[pulumi.Resource], *, forced: bool) -> k8s.apps.v1.Deployment:
        app = self.app
        spec: dict[str, Any] = {
            "selector": {"matchLabels": naming.selector(app.name, track)},
            "template": template,
            # stable never dips below its size while it takes a new template (promotion)
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
        }
        if replicas is not None:
            spec["replicas"] = replicas
        annotations = {_FORCED: "true"} if forced else {}
        return k8s.apps.v1.Deployment(
            f"{name}-{track.value}",
            metadata={"name": naming.deployment(app.name, track), "namespace": app.namespace,
                      "labels": {naming.APP_LABEL: app.name, naming.TRACK_LABEL: track.value}, "annotations": annotations},
            spec=spec,
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=list(depends))),
        )

    def _service(self, name: str, track: Track, http: Any, opts: pulumi.ResourceOptions) -> k8s.core.v1.Service:
        app = self.app
        return k8s.core.v1.Service(
            f"{name}-{track.value}-service",
            metadata={"name": naming.service(app.name, track), "namespace": app.namespace,
                      "labels": {naming.APP_LABEL: app.name, naming.TRACK_LABEL: track.value}},
            spec={"selector": naming.selector(app.name, track), "ports": [http]},
            opts=opts,
        )

    def _apex(self, name: str, given: Mapping[str, Any], http: Any, opts: pulumi.ResourceOptions) -> k8s.core.v1.Service:
        """The apex Service: what ``service=`` declares of it (an adopted Service's type, ports, labels and
        annotations, which an apply without them would remove), with canary's selector and ``http`` port."""
        app = self.app
        metadata = given.get("metadata") or {}
        spec = dict(given.get("spec") or {})
        spec["selector"] = naming.selector(app.name, Track.STABLE)
        spec["ports"] = [http, *spec.get("ports", [])]
        declared: dict[str, Any] = {"name": naming.apex_service(app.name), "namespace": app.namespace,
                                    "labels": {**(metadata.get("labels") or {}), naming.APP_LABEL: app.name}}
        if metadata.get("annotations"):
            declared["annotations"] = metadata["annotations"]
        return k8s.core.v1.Service(f"{name}-apex-service", metadata=declared, spec=spec, opts=opts)

    def _autoscaler(self, name: str, track: Track, deployment: k8s.apps.v1.Deployment,
                    opts: pulumi.ResourceOptions) -> k8s.autoscaling.v2.HorizontalPodAutoscaler:
        app = self.app
        assert app.autoscaler is not None
        spec: dict[str, Any] = {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": naming.deployment(app.name, track)},
            "minReplicas": app.autoscaler.min_replicas,
            "maxReplicas": app.autoscaler.max_replicas,
        }
        if app.autoscaler.metrics:
            spec["metrics"] = app.autoscaler.metrics
        if app.autoscaler.behavior:
            spec["behavior"] = app.autoscaler.behavior
        return k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-{track.value}-autoscaler",
            metadata={"name": naming.autoscaler(app.name, track), "namespace": app.namespace, "labels": {naming.APP_LABEL: app.name}},
            spec=spec,
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[deployment])),
        )

    def _extras(self, name: str, opts: pulumi.ResourceOptions, ports: Any) -> dict[str, pulumi.Resource]:
        app = self.app
        out: dict[str, pulumi.Resource] = {}
        if app.disruption_budget is not None:
            budget: dict[str, Any] = {"selector": {"matchLabels": naming.selector(app.name, Track.STABLE)}}
            if app.disruption_budget.min_available is not None:
                budget["minAvailable"] = app.disruption_budget.min_available
            else:
                budget["maxUnavailable"] = app.disruption_budget.max_unavailable
            out["disruptionBudget"] = k8s.policy.v1.PodDisruptionBudget(
                f"{name}-disruption-budget",
                metadata={"name": naming.disruption_budget(app.name), "namespace": app.namespace, "labels": {naming.APP_LABEL: app.name}},
                spec=budget,
                opts=opts,
            )
        if self.pod_monitor is not None:
            monitor = self.pod_monitor
            out["podMonitor"] = k8s.apiextensions.CustomResource(
                f"{name}-pod-monitor",
                api_version="monitoring.coreos.com/v1",
                kind="PodMonitor",
                metadata={"name": naming.pod_monitor(app.name), "namespace": app.namespace, "labels": {naming.APP_LABEL: app.name}},
                spec={
                    "selector": {"matchLabels": {naming.APP_LABEL: app.name}},
                    # each track's pods scraped on the port they serve (a release moving the port: stable on the old one)
                    "podMetricsEndpoints": ports.apply(lambda served: [
                        {"portNumber": port, "path": monitor.path, "interval": units.format_duration(monitor.interval)}
                        for port in sorted({int(p) for p in served})]),
                },
                opts=opts,
            )
        return out


def _merge(*options: pulumi.ResourceOptions | None) -> pulumi.ResourceOptions:
    merged = pulumi.ResourceOptions()
    for more in options:
        merged = pulumi.ResourceOptions.merge(merged, more)
    return merged


def _http_port(app: App, target: Any, app_protocol: str | None) -> dict[str, Any]:
    """canary's ``http`` port of each of the app's Services (stable's, canary's, the apex): ``app.servicePort`` to the
    pods' ``target``, with the track's ``appProtocol`` when it has one (the gateway reads it from the route's backends,
    stable's and canary's Services, to choose how it talks to the pods: h2c for gRPC)."""
    port: dict[str, Any] = {"name": "http", "port": app.service_port, "targetPort": target, "protocol": "TCP"}
    if app_protocol:
        port["appProtocol"] = app_protocol
    return port


#: The keys of ``adopt``: the stable Deployment, the apex Service and the route, each taking over a resource of the program from before canary.
ADOPTABLE = ("deployment", "service", "route")


@dataclass(frozen=True)
class _Arguments:
    """The component's arguments as ``_arguments`` validated them, each value by name: the caller reads some before the
    component exists (to refuse or warn) and the rest once it does."""

    app: App
    gateway: Gateway
    pod_monitor: PodMonitor | None
    rollout: Rollout
    #: the pod template the app asks for (``desired_template``)
    desired: dict[str, Any]
    #: the aliases of ``adopt``, by the key adopted
    moved: dict[str, pulumi.ResourceOptions]
    #: what ``service`` declares of the apex Service
    apex: dict[str, Any]
    #: what ``route`` declares of the route's metadata
    route_metadata: dict[str, Any]
    #: the problems of ``prometheus=`` that only the caller may refuse (``_prometheus_problems``)
    held: list[Problem]
    #: the template's problems under rules newer than some releases in flight (``newer_rules_noted``)
    newer: list[Problem]


def _arguments(name: str, app: Any, gateway: Any, prometheus: Any, rollout: Any, rollout_field: str, template: Any, config_maps: Any,
               secrets: Any, adopt: Any, service: Any = None, route: Any = None) -> _Arguments:
    """The component's arguments validated, the pod template the app asks for, the aliases of ``adopt`` and
    what ``service`` declares of the apex Service and ``route`` of the route's metadata; else ``InvalidSpec`` listing
    every problem, each naming the argument and the rule, as the stack config's are. With them, the problems of
    ``prometheus=`` that only the caller may refuse (``_prometheus_problems``), then those of the template's rules newer than
    some releases in flight (``newer_rules_noted``): neither refused in an ``up`` of a release in progress."""
    problems: list[Problem] = []
    moved: dict[str, pulumi.ResourceOptions] = {}
    try:
        moved = _adoption(adopt)
    except InvalidSpec as exc:
        problems.extend(exc.problems)

    def model(cls: Any, value: Any, what: str) -> Any:
        outputs = list(_outputs_in(value, what))
        if outputs:
            problems.extend(Problem(path, "an Output", _OUTPUT_RULE + _output_hint(path)) for path in outputs)
            return None
        try:
            return _model(cls, value, what)
        except InvalidSpec as exc:
            problems.extend(exc.problems)
            return None

    spec_app: App | None = model(App, app, "app")
    spec_gateway: Gateway | None = model(Gateway, gateway, "gateway")
    spec_monitor: PodMonitor | None = None
    held: list[Problem] = []  # refused but in an `up` of a release in progress (the caller's to tell)
    newer: list[Problem] = []  # likewise: the template's problems under rules newer than some releases in flight
    if prometheus is not None:
        prometheus = _prometheus_given(prometheus)
        held, refused = _prometheus_problems(prometheus)
        problems.extend(refused)
        if not refused and prometheus.get("podMonitor") is not None:
            spec_monitor = model(PodMonitor, prometheus["podMonitor"], "prometheus.podMonitor")
    spec_rollout = Rollout.CHECKED
    try:
        spec_rollout = Rollout(rollout or Rollout.CHECKED)
    except (ValueError, TypeError):
        problems.append(Problem(rollout_field, repr(rollout), "must be 'checked' or 'direct'"))
    for what, given_config in (("config_maps", config_maps), ("secrets", secrets)):
        if given_config is not None and not isinstance(given_config, Mapping):
            problems.append(Problem(what, type(given_config).__name__, "must be a mapping of name to data"))
        for config_name in given_config if isinstance(given_config, Mapping) else ():
            try:
                naming.check_copied_name(str(config_name))
            except ValueError as exc:
                problems.append(Problem(f"{what}.{config_name}", str(config_name), str(exc)))
    given = plain(template) if template is not None else None
    outputs = list(_outputs_in(given, "template"))
    if given is not None and not isinstance(given, Mapping):
        problems.append(Problem("template", type(given).__name__, "must be a pod template: a mapping or a PodTemplateSpecArgs"))
    elif outputs:
        # the template's hash names what a track runs, and is taken before the up: it needs the values themselves
        problems += [Problem(path, "an Output", "must be a plain value, not a pulumi Output: the template is hashed before the up")
                     for path in outputs]
    elif spec_app is not None:
        # the rules the stack config's app follows, with the template argument in place of app.template
        effective = spec_app if given is None else spec_app.model_copy(update={"template": given})
        with newer_rules_noted() as newer:
            problems += app_problems(effective, "app", "template" if given is not None else None)
        if effective.template is None:
            for what, given_config in (("config_maps", config_maps), ("secrets", secrets)):
                problems += [Problem(f"{what}.{name}", str(name), "needs a template that reads it: the simple form's pod reads no "
                                     "ConfigMap or Secret") for name in (given_config or {}) if isinstance(given_config, Mapping)]
        if effective.template is None and not effective.image:
            problems.append(Problem("app.image", "nothing", "is required: the image the app runs (or give a template)"))
    apex: dict[str, Any] = {}
    if service is not None and spec_app is not None:
        apex = plain(service)
        problems += _service_problems(apex, spec_app)
    route_metadata: dict[str, Any] = {}
    if route is not None and spec_app is not None:
        given_route = plain(route)
        problems += _route_problems(given_route, spec_app)
        if isinstance(given_route, Mapping):
            route_metadata = dict(given_route.get("metadata") or {})
    if problems or spec_app is None or spec_gateway is None:
        raise InvalidSpec([*problems, *held, *newer], f"CanaryDeployment {name}")
    desired = desired_template(spec_app, given)
    # (its probe ports are the template's, checked with it above: app.image changes the image alone)
    problems = workload.check(desired, "template")
    if problems:
        raise InvalidSpec([*problems, *held, *newer], f"CanaryDeployment {name}")
    return _Arguments(app=spec_app, gateway=spec_gateway, pod_monitor=spec_monitor, rollout=spec_rollout, desired=desired, moved=moved,
                      apex=apex, route_metadata=route_metadata, held=held, newer=newer)


def _prometheus_given(prometheus: Any) -> Any:
    """``prometheus=`` as a mapping of the fields given: the earlier form passed canary's ``Prometheus`` itself."""
    if isinstance(prometheus, Prometheus):
        return {Prometheus.model_fields[name].alias or name: getattr(prometheus, name) for name in sorted(prometheus.model_fields_set)}
    return prometheus


def _prometheus_problems(prometheus: Any) -> tuple[list[Problem], list[Problem]]:
    """The rules of ``prometheus=``: ``podMonitor`` alone. The other fields of ``canary:prometheus`` say how releases query
    Prometheus and how often it scrapes the pods, which the release reads from the stack config alone (the program never
    queries metrics): taken here, they were silently ignored. Returned apart: those fields, which earlier versions took
    (an ``up`` of a release one of them began only warns, and ignores them), then what no version took."""
    if not isinstance(prometheus, Mapping):
        return [], [Problem("prometheus", type(prometheus).__name__, "must be a mapping: {'podMonitor': {...}}, the PodMonitor the component declares")]
    stack_fields = {field.alias or name for name, field in Prometheus.model_fields.items()} - {"podMonitor"}
    # (values not shown: any of them may be a secret)
    return ([Problem(f"prometheus.{key}", "set", (
                f"is the stack config's: releases read it from canary:prometheus, never from the component; set it there "
                f"(pulumi config set --path canary:prometheus.{key} …) and keep podMonitor alone here")) for key in prometheus if key in stack_fields],
            [Problem(f"prometheus.{key}", "set", "is not a field of the component's prometheus: it takes podMonitor (interval, path) alone")
             for key in prometheus if key != "podMonitor" and key not in stack_fields])


def _stack_value(key: str) -> Any:
    """``canary:<key>`` as the engine gives the program (decrypted), parsed; None when unset or unreadable (the
    stack config's own checks, in `canary validate` and every release, name what is wrong with it)."""
    raw = pulumi.runtime.get_config(f"{naming.CONFIG_NAMESPACE}:{key}")
    try:
        return json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None


def _stack_scrape() -> tuple[timedelta, str] | None:
    """How often the stack config says Prometheus scrapes the pods (what a release sizes its judges' steps by), and the
    field that says so; None when ``canary:prometheus`` is invalid (refused by every release anyway)."""
    from pydantic import ValidationError

    given = _stack_value("prometheus")
    if given is None:
        return scrape_of(None)
    try:
        return scrape_of(Prometheus.model_validate(given, by_alias=True, by_name=False))
    except ValidationError:
        return None


def _scrape_advice(interval: str, field: str) -> str:
    """What to set in the stack config so that releases judge at ``interval``, the component's PodMonitor's, given the
    field the scrape interval comes from now (``_stack_scrape``): a config that is then valid. Without ``canary:prometheus``,
    its ``scrapeInterval`` alone is not one: ``address`` is required beside it."""
    if field == "prometheus.podMonitor.interval":
        # scrapeInterval beside it must equal it (the stack's PodMonitor is how often Prometheus scrapes)
        return f"Set canary:prometheus.podMonitor.interval to {interval} in the stack config"
    if _stack_value("prometheus") is None:
        return (f"Set canary:prometheus in the stack config, with its address (where releases query Prometheus, required) and "
                f"scrapeInterval {interval}: pulumi config set --path canary:prometheus.address <url>, then pulumi config set "
                f"--path canary:prometheus.scrapeInterval {interval}")
    return f"Set canary:prometheus.scrapeInterval to {interval} in the stack config"


def _check_against_stack_config(component: str, app: App, monitor: PodMonitor | None, app_from: str) -> list[Problem]:
    """What the stack config contradicts: the app declared there too (a release would judge the stack config's app
    and gateway, not the component's), a PodMonitor scraping otherwise than the scrape interval releases judge with (at a
    1m scrape, the default step's rate over 30s is empty: no data, a rollback)."""
    problems: list[Problem] = []
    if app_from == "component":
        single, apps = _stack_value("app"), _stack_value("apps")
        if isinstance(single, Mapping) and single.get("name") == app.name:
            also = " and canary:gateway" if _stack_value("gateway") is not None else ""
            problems.append(Problem(f"{naming.CONFIG_NAMESPACE}:app", repr(app.name), (
                f"declares app {app.name} in the stack config, which CanaryDeployment {component} declares too: a release would judge "
                f"the stack config's app and gateway, not the component's. Keep one: remove canary:app{also} from the stack config "
                "(canary:analysis then judges every app the program's components declare), or the component")))
        entry = apps.get(app.name) if isinstance(apps, Mapping) else None
        for key in ("app", "gateway"):
            if isinstance(entry, Mapping) and entry.get(key) is not None:
                problems.append(Problem(f"{naming.CONFIG_NAMESPACE}:apps.{app.name}.{key}", "set", (
                    f"declares {app.name}'s {key} in the stack config, which CanaryDeployment {component} declares too: a release would "
                    f"judge the stack config's, not the component's. Keep one: remove apps.{app.name}.{key} from the stack config "
                    f"(apps.{app.name}.analysis stays), or the component")))
    scrape = _stack_scrape() if monitor is not None else None
    if monitor is not None and scrape is not None and scrape[0] != monitor.interval:
        interval = units.format_duration(monitor.interval)
        problems.append(Problem("prometheus.podMonitor.interval", interval, (
            f"differs from the scrape interval releases judge {app.name} with, {units.format_duration(scrape[0])} "
            f"({naming.CONFIG_NAMESPACE}:{scrape[1]}): a judge's default step is twice it, and a rate over less than two "
            f"scrapes is empty. {_scrape_advice(interval, scrape[1])}, or give the PodMonitor {units.format_duration(scrape[0])}")))
    return problems


def _in_flight(release: Any) -> bool:
    """Whether this ``up`` is one of a release in progress: its release config pins ``canary:release.<app>`` with the
    release's id (``canary up``'s own update of an app at rest pins it with none)."""
    return isinstance(release, Mapping) and bool(release.get("release"))


def _refuse_unless_in_flight(component: str, app: App, release: Any, problems: Sequence[Problem], ignored: Mapping[str, str]) -> None:
    """Refuse ``problems``, but in an ``up`` of a release in progress: warn only. The release was checked when it began,
    by the version that began it, and a rule newer than it refused here failed its every ``up``, its rollback's too,
    its traffic left on the canary. ``ignored``: the refused arguments it goes on without, and how (said in the warning)."""
    if not problems:
        return
    if _in_flight(release):
        without = [f"{field} ({how})" for field, how in ignored.items()]
        pulumi.log.warn(f"CanaryDeployment {component}: the release of {app.name} in progress goes on as it began"
                        + (f", without {', '.join(without)}" if without else "")
                        + f"; once it ends, every `up` refuses this: {'; '.join(map(str, problems))}")
        return
    raise InvalidSpec(problems, f"CanaryDeployment {component}")


#: What canary declares of the apex Service itself, and why ``service=`` may not: the rest is the program's.
_APEX_OWN = {
    "metadata.name": "is canary's: the apex Service is named like the app",
    "metadata.namespace": "is canary's: the apex Service is in app.namespace",
    "spec.selector": "is canary's: the apex Service selects the stable pods only (canary.dev/app, canary.dev/track: stable), "
                     "so that in-cluster clients never reach a canary",
}


def _dns_label(value: str) -> bool:
    try:
        units.check_dns_label(value)
    except ValueError:
        return False
    return True


def _metadata_problems(metadata: Any, what: str, own: Mapping[str, str], marks: str, app: App) -> list[Problem]:
    """The rules of the ``metadata`` of ``service=`` or ``route=``: labels and annotations the API server takes (a refusal
    there would fail the up halfway, stable already made), and not the label that marks ``marks`` as the app's."""
    if not isinstance(metadata, Mapping):
        return [Problem(f"{what}.metadata", type(metadata).__name__, "must be a mapping of labels and annotations")]
    problems: list[Problem] = []
    for key in metadata:
        if key not in ("labels", "annotations"):
            problems.append(Problem(f"{what}.metadata.{key}", workload.shown(metadata[key]),
                                    own.get(f"metadata.{key}", "is not one of labels, annotations: the other metadata are the API server's")))
    for key in ("labels", "annotations"):
        given = metadata.get(key)
        if given is not None and not (isinstance(given, Mapping) and all(isinstance(k, str) for k in given)):
            problems.append(Problem(f"{what}.metadata.{key}", workload.shown(given), "must be a mapping of names to strings"))
            continue
        for name, value in (given or {}).items():
            if not units.is_qualified_name(name):
                problems.append(Problem(f"{what}.metadata.{key}.{name}", repr(name), "must be a qualified name: " + units.QUALIFIED_NAME_RULE))
            elif not isinstance(value, str) and not isinstance(value, pulumi.Output):
                problems.append(Problem(f"{what}.metadata.{key}.{name}", workload.shown(value), "must be a string (quote it)"))
            elif key == "labels" and isinstance(value, str) and not units.is_label_value(value):
                problems.append(Problem(f"{what}.metadata.labels.{name}", repr(value), "must be a label value: at most 63 letters, digits, "
                                        "'-', '_' or '.', beginning and ending with a letter or digit (or empty)"))
    labels = metadata.get("labels") or {}
    if isinstance(labels, Mapping) and naming.APP_LABEL in labels and labels[naming.APP_LABEL] != app.name:
        problems.append(Problem(f"{what}.metadata.labels.{naming.APP_LABEL}", workload.shown(labels[naming.APP_LABEL]), f"is canary's: it marks {marks}"))
    return problems


#: What canary declares of the route itself, and why ``route=`` may not.
_ROUTE_OWN = {
    "metadata.name": "is canary's: the route is named like the app (a route adopted under another name is refused)",
    "metadata.namespace": "is canary's: the route is in app.namespace",
}


def _route_problems(route: Any, app: App) -> list[Problem]:
    """The rules of ``route=``: the route's ``metadata.labels`` and ``metadata.annotations`` (an adopted route's, which an
    apply without them would remove: external-dns's, a policy's selector), values may be Outputs. Its spec is canary's:
    its rules are the release's, its parentRefs and hostnames ``gateway``'s."""
    if not isinstance(route, Mapping):
        return [Problem("route", type(route).__name__, "must be a mapping of metadata (an HTTPRoute's labels and annotations)")]
    problems = [Problem(path, "an Output", "must be a plain value, not a pulumi Output: canary checks it before the up (label and annotation values may be Outputs)")
                for path in _outputs_in(route, "route") if not path.startswith(("route.metadata.labels.", "route.metadata.annotations."))]
    if problems:
        return problems
    for key in route:
        if key != "metadata":
            problems.append(Problem(f"route.{key}", workload.shown(route[key]), "is not metadata: canary declares the route's spec, its rules "
                                    "for the release and its parentRefs and hostnames from gateway"))
    return [*problems, *_metadata_problems(route.get("metadata") or {}, "route", _ROUTE_OWN, f"the route of {app.name}", app)]


def _service_problems(service: Any, app: App) -> list[Problem]:
    """The rules of ``service=``: ``metadata.labels``, ``metadata.annotations`` and the fields of a ServiceSpec
    but ``selector``, its ``ports`` beside canary's ``http`` port, each named, none taking its name or number.
    Outputs are accepted where canary reads nothing (label and annotation values, the spec's other fields)."""
    if not isinstance(service, Mapping):
        return [Problem("service", type(service).__name__, "must be a mapping of metadata and spec (a Service's fields)")]
    problems = [Problem(path, "an Output", "must be a plain value, not a pulumi Output: canary checks it against its own port and labels before the up")
                for path in _outputs_in(service, "service") if not _output_allowed(path)]
    if problems:
        return problems
    for key in service:
        if key not in ("metadata", "spec"):
            problems.append(Problem(f"service.{key}", workload.shown(service[key]), "is not one of metadata, spec: canary declares the apex Service's kind and name"))
    problems += _metadata_problems(service.get("metadata") or {}, "service", _APEX_OWN, f"the apex Service of {app.name}", app)
    spec = service.get("spec") or {}
    if not isinstance(spec, Mapping):
        return [*problems, Problem("service.spec", type(spec).__name__, "must be a mapping of a Service's spec fields")]
    if "selector" in spec:
        problems.append(Problem("service.spec.selector", workload.shown(spec["selector"]), _APEX_OWN["spec.selector"]))
    if spec.get("type") == "ExternalName":
        problems.append(Problem("service.spec.type", "'ExternalName'", "must not be ExternalName: the apex Service sends its clients to the stable pods"))
    checked = workload.check(_without_outputs({k: v for k, v in spec.items() if k != "selector"}), "service.spec", "V1ServiceSpec")
    problems += checked
    if checked or not isinstance(spec.get("ports"), list):
        return problems
    names: dict[str, int] = {}
    numbers: dict[tuple[int, str], int] = {}
    for i, port in enumerate(spec["ports"]):
        path = f"service.spec.ports[{i}]"
        protocol = port.get("protocol") or "TCP"
        if protocol not in ("TCP", "UDP", "SCTP"):
            problems.append(Problem(f"{path}.protocol", repr(protocol), "must be TCP, UDP or SCTP (as written: upper case)"))
        if isinstance(port.get("appProtocol"), str):  # (its type is the schema's check, above)
            try:
                units.check_app_protocol(port["appProtocol"])
            except ValueError as exc:
                problems.append(Problem(f"{path}.appProtocol", workload.shown(port["appProtocol"]), str(exc)))
        if not isinstance(port.get("port"), int) or not 1 <= port["port"] <= 65535:
            problems.append(Problem(f"{path}.port", workload.shown(port.get("port")), "must be a port number, 1 to 65535"))
            continue
        if isinstance(port.get("name"), str) and not _dns_label(port["name"]):
            problems.append(Problem(f"{path}.name", repr(port["name"]), "must be a port name: at most 63 lower-case letters, digits or '-', "
                                    "beginning and ending with a letter or digit"))
        if "name" not in port:
            problems.append(Problem(f"{path}.name", "nothing", "is required: the apex Service has canary's port http beside it, "
                                    "and Kubernetes requires every port of a Service of several to be named"))
        elif port["name"] == "http":
            problems.append(Problem(f"{path}.name", "'http'", f"clashes with canary's port http (port {app.service_port}, app.servicePort): name it otherwise"))
        elif port["name"] in names:
            problems.append(Problem(f"{path}.name", repr(port["name"]), f"is the name of service.spec.ports[{names[port['name']]}] too"))
        else:
            names[port["name"]] = i
        number = port["port"]
        if number == app.service_port and protocol == "TCP":
            problems.append(Problem(f"{path}.port", str(number), f"clashes with canary's port http ({number}/TCP, app.servicePort): "
                                    "give it another number, or change app.servicePort"))
        elif (number, protocol) in numbers:
            problems.append(Problem(f"{path}.port", str(number), f"is the port ({number}/{protocol}) of service.spec.ports[{numbers[(number, protocol)]}] too"))
        else:
            numbers[(number, protocol)] = i
    return problems


def _output_allowed(path: str) -> bool:
    """An Output in ``service`` where canary reads nothing: a label's or annotation's value, a spec field but the ports' names, numbers and protocols."""
    if path.startswith(("service.metadata.labels.", "service.metadata.annotations.")):
        return True
    if not path.startswith("service.spec.") or path.startswith("service.spec.selector"):
        return False
    if path.startswith("service.spec.ports"):
        return re.fullmatch(r"service\.spec\.ports\[\d+\]\.(?!name$|port$|protocol$)[A-Za-z]+.*", path) is not None
    return True


def _without_outputs(value: Any) -> Any:
    """``value`` without its Outputs, whose types the API server checks once they resolve."""
    if isinstance(value, Mapping):
        return {k: _without_outputs(v) for k, v in value.items() if not isinstance(v, pulumi.Output)}
    if isinstance(value, list):
        return [_without_outputs(v) for v in value if not isinstance(v, pulumi.Output)]
    return value


#: Why ``app``, ``gateway`` and ``prometheus`` take plain values: they are checked before the component declares
#: anything (a refused argument applies nothing), the app's name keys its stack output and its release, and what a
#: release pins (the template's hash, the image ``canary release --image`` sets) must be known before the up: an
#: Output's value is known only during the up, and not at all in a preview.
_OUTPUT_RULE = "must be a plain value, not a pulumi Output: the component checks it and pins releases by it before the up, when an Output has no value yet; "
_OUTPUT_HINTS = {
    "app.namespace": "pass the namespace's name itself (the name you give a Namespace resource, not its metadata.name), "
                     "and order the component after it with opts=ResourceOptions(depends_on=[namespace])",
    "app.image": "pass the image reference itself, with its tag or digest (the one your build pushes, read from config: "
                 "with image_config= naming that key, `canary release --image` sets it)",
}


def _image_config(given: Any) -> tuple[str | None, list[Problem]]:
    """``image_config`` with its namespace (a key without one is the project's, as ``pulumi.Config()`` reads it), and
    what is wrong with it: ``image`` set bare in the stack file is a key canary validate calls unknown, and
    ``shop image`` none that a program can read."""
    if given is None:
        return None, []
    try:
        return stackconfig.image_config_key(given, pulumi.get_project()), []
    except ValueError as exc:
        return None, [Problem("image_config", repr(given), str(exc))]


def _output_hint(path: str) -> str:
    if path.startswith(("app.configMaps.", "app.secrets.")):
        return "give the data with the component's config_maps= or secrets= instead, which take Outputs (hashed once resolved)"
    return _OUTPUT_HINTS.get(path, "pass the value itself")


def _outputs_in(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, pulumi.Output):
        yield path
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _outputs_in(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _outputs_in(item, f"{path}[{i}]")


def _adoption(adopt: Mapping[str, str | pulumi.Alias] | None) -> dict[str, pulumi.ResourceOptions]:
    """Aliases from the resources a program declared before it used canary onto the children that take
    them over: a name (a resource at the stack's root, of the child's type), a URN or a ``pulumi.Alias``."""
    if adopt is not None and not isinstance(adopt, Mapping):
        raise InvalidSpec([Problem("adopt", type(adopt).__name__, f"must be a mapping of {', '.join(ADOPTABLE)} to what each takes over")], "adopt")
    unknown = sorted(set(adopt or {}) - set(ADOPTABLE))
    if unknown:
        raise InvalidSpec([Problem(f"adopt.{key}", str((adopt or {})[key]), f"is not one of {', '.join(ADOPTABLE)}") for key in unknown], "adopt")

    def alias(old: str | pulumi.Alias) -> str | pulumi.Alias:
        if isinstance(old, pulumi.Alias) or str(old).startswith("urn:pulumi:"):
            return old
        return pulumi.Alias(name=str(old), parent=pulumi.ROOT_STACK_RESOURCE)

    return {part: pulumi.ResourceOptions(aliases=[alias(old)]) for part, old in (adopt or {}).items()}


def _model(cls: Any, value: Any, what: str) -> Any:
    if isinstance(value, cls):
        return value
    from pydantic import ValidationError

    from canary.core.spec import _problem_from_error

    if not isinstance(value, Mapping):
        raise InvalidSpec([Problem(what, type(value).__name__, f"must be a mapping or canary's {cls.__name__}")], what)
    try:
        return cls.model_validate(dict(value), by_alias=True, by_name=False)  # the config keys' names, as the stack file spells them
    except ValidationError as exc:
        # not chained: pydantic's own message quotes every input it refused, secrets included, and Pulumi
        # prints the program's traceback whole
        raise InvalidSpec([_problem_from_error({**e, "loc": (what, *e["loc"])}) for e in exc.errors()], what) from None


def _config_data(declared: Mapping[str, Any], given: Mapping[str, Any] | None, field: str) -> pulumi.Output[dict[str, dict[str, Any]]]:
    """Name (as the template reads it) -> data of the config objects of the app: from the stack
    config, and from the component's argument (data that may hold Outputs, e.g. ``cm.data``)."""
    out: dict[str, Any] = {}
    for name, item in declared.items():
        data = item.model_dump(by_alias=True).get(field) or {}
        out[name] = {k: (v.get_secret_value() if hasattr(v, "get_secret_value") else v) for k, v in data.items()}
    for name, data in (given or {}).items():
        out[str(name)] = data
    return pulumi.Output.from_input(out)  # type: ignore[arg-type]


def _copy_names(config_maps: Mapping[str, Mapping[str, Any]], secrets: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    hashes = {f"configMap/{n}": workload.content_hash(d) for n, d in config_maps.items()}
    hashes.update({f"secret/{n}": workload.content_hash(d) for n, d in secrets.items()})
    names = {key: naming.copy_name(key.partition("/")[2], h) for key, h in hashes.items()}
    return {"hashes": hashes, "names": names}


def _warn_unhashed(component: pulumi.Resource, app: str, template: Mapping[str, Any], config_maps: Sequence[str], secrets: Sequence[str]) -> None:
    """Say which ConfigMaps and Secrets the template reads that the component is not given: their content is
    not in the template's hash, so an edit of one reaches stable and canary at once, with no release. Not
    refused: config kept outside the program is legitimate."""
    refs = workload.referenced(template)
    outside = [f"ConfigMap {name}" for name in sorted(refs["configMap"] - set(config_maps))]
    outside += [f"Secret {name}" for name in sorted(refs["secret"] - set(secrets))]
    if outside:
        pulumi.log.warn(f"{app} reads {', '.join(outside)}, not given to its CanaryDeployment (config_maps=/secrets=, or app.configMaps/"
                        "app.secrets): their changes are not released, they reach stable and canary alike", resource=component)


def _uid(metadata: Any) -> str | None:
    """A resource's ``metadata.uid`` (a typed ObjectMeta from the engine, a mapping under the mocks)."""
    return (metadata.get("uid") if isinstance(metadata, Mapping) else getattr(metadata, "uid", None)) if metadata is not None else None


def _track_port(pin: Mapping[str, Any], desired: Mapping[str, Any], app: App, port_given: bool) -> int:
    """The port a track's Services target. A track running the desired workload: the app's port (a change of
    ``app.port`` alone, the template as it was, is the Services' own and reaches them at the next ``up``).
    Another workload (stable pinned during a release): the port its pin recorded. A pin recorded before pins
    kept their port: ``app.port`` when it is given beside a template of the user's (where the pods listen,
    whatever the template declares), else that template's declared port where it and the desired template's
    differ (the simple form, whose template declares ``app.port``: a release moving the port), else the app's."""
    if pin.get("hash") == desired.get("hash"):
        return app.container_port
    if pin.get("port"):
        return int(pin["port"])
    if port_given:
        return app.container_port
    old = workload.declared_port(pin.get("template"), app.name, app.container)
    new = workload.declared_port(desired.get("template"), app.name, app.container)
    return old if old is not None and new is not None and old != new else app.container_port


def _track_target(pin: Mapping[str, Any], desired: Mapping[str, Any], app: App, port_given: bool) -> int | str:
    """A track's Services' ``targetPort``: its port (``_track_port``) by the name its template gives it, else by number.
    A release that moves the port keeps the name (the simple form's is ``http``): stable's Services are then the same
    before and after it takes the new version, and each pod is reached on its own port while stable rolls."""
    port = _track_port(pin, desired, app, port_given)
    template = desired.get("template") if pin.get("hash") == desired.get("hash") else pin.get("template")
    name = workload.port_name(template, app.name, app.container, port)
    # a name the new version drops (http renamed web) would leave each new pod out of stable's Services as stable
    # rolls: the number is targeted meanwhile, where the new version keeps it. Renamed and moved, neither reaches a
    # new pod, and the name at least keeps them out of the Services rather than in them on a port they do not serve
    desired_port = app.container_port  # _track_port of the desired workload
    if name is not None and workload.port_name(desired.get("template"), app.name, app.container, desired_port) != name and desired_port == port:
        return port
    return name or port


def _route_with_values(app: str, override: Mapping[str, Any]) -> Any:
    """The route a release config pins, its A/B match values (left out of the file: ``stackfile.route_matches``) given
    back. A route whose values this process does not hold is refused rather than declared: its matches would hold
    ``<not recorded>``, and every tester would be sent to stable."""
    route = override.get("route")
    if not isinstance(route, Mapping) or not route.get("matches") or json.dumps(routing.NOT_RECORDED) not in json.dumps(route["matches"]):
        return route  # values given (or none to give)
    values = stackfile.route_matches(app, str(override.get("release", "")))
    if values is None:
        raise pulumi.RunError(f"canary:release.{app}.route: its A/B match values are not in this process (a release config file is "
                              "applied by the canary process that wrote it, not by `pulumi up`)")
    return {**route, "matches": values}


def _track_protocol(pin: Mapping[str, Any], desired: Mapping[str, Any], app: App) -> str | None:
    """The ``appProtocol`` a track's Services give the gateway. A track running the desired workload: ``app.appProtocol``
    (a change of it alone, the workload as it was, reaches every Service at the next ``up``). Another workload (stable
    pinned during a release): the one its pin recorded, so that a release that brings a protocol together with the
    version that speaks it leaves stable's Services speaking what stable speaks until stable takes the new version. A
    pin recorded before pins kept it: the app's, as then."""
    if pin.get("hash") == desired.get("hash") or "appProtocol" not in pin:
        return app.app_protocol
    return pin["appProtocol"] or None


def _pin(template: Mapping[str, Any], app: App, config_hashes: Mapping[str, str]) -> dict[str, Any]:
    refs = workload.referenced(template)
    relevant = {k: v for k, v in config_hashes.items() if k.partition("/")[2] in refs[k.partition("/")[0]]}
    return {
        "template": dict(template),
        "hash": workload.template_hash(template, relevant),
        "image": workload.image(template, app.name, app.container),
        "config_hashes": relevant,
        "port": app.container_port,
        # what the gateway speaks to the pods ("" for no appProtocol): stable's Services keep it while a release runs
        "appProtocol": app.app_protocol or "",
    }


# --- the project's own program ------------------------------------------------------------------


def stack_spec_from_pulumi_config() -> StackSpec:
    """This stack's ``canary:`` config, read inside a running Pulumi program and validated."""
    raw: dict[str, Any] = {}
    for key in _config_keys():
        full = f"{naming.CONFIG_NAMESPACE}:{key}"
        value = pulumi.runtime.get_config(full)
        if value is not None:
            raw[full] = _ConfigValue(value, pulumi.runtime.is_config_secret(full))
    # a plain `pulumi up` reads the stack file: a plain-text value beside an encrypted one shows there only
    # (canary's own ups read a release config file, a snapshot of the stack file checked when the release began)
    path = stackfile.stack_file(Path.cwd(), pulumi.get_stack())
    in_release = f"{naming.CONFIG_NAMESPACE}:release" in raw
    file_config = stackfile.read_stack_file(path) if not in_release and path.is_file() else None
    if in_release:
        # a release's config was checked when it began, by the version that began it: what a newer rule refuses (a
        # judge's step against the scrape interval, a probe on a port name its container does not declare) is the
        # orchestrator's to note, and the component's to warn of in a release's `up`. Refused here, every `up` of a
        # resumed release failed, its rollback's too
        with newer_rules_noted():
            return stackconfig.from_config(raw, source=f"stack {pulumi.get_stack()}", stack_file=None, placed=False)
    return stackconfig.from_config(raw, source=f"stack {pulumi.get_stack()}", stack_file=file_config)


def _config_keys() -> tuple[str, ...]:
    """The spec's keys, then every other key of the namespace the engine gave the program: one that is not
    a field (``canary:metric_templates``, or ``canary:prometheus.timeout`` set without --path) is refused
    here as `canary validate` and `canary up` refuse it, not left out unseen."""
    from canary.core.spec import CONFIG_KEYS

    prefix = f"{naming.CONFIG_NAMESPACE}:"
    given = {*pulumi.runtime.config.CONFIG.get(), *pulumi.runtime.get_config_env()}  # set in process, or by the language host
    others = sorted(key.removeprefix(prefix) for key in given if key.startswith(prefix) and key.removeprefix(prefix) not in CONFIG_KEYS)
    return CONFIG_KEYS + tuple(others)


class _ConfigValue:
    def __init__(self, value: Any, secret: bool) -> None:
        self.value = value
        self.secret = secret


class _StackConfigApp(CanaryDeployment):
    """A component of canary's own program: its app is the stack config's, not a second declaration of it."""

    _APP_FROM = "stackConfig"


def program() -> list[CanaryDeployment]:
    """The project's program: one component per app its stack config declares. Invalid config
    stops the program with the problems listed (a RunError: no traceback)."""
    try:
        return _program()
    except InvalidSpec as exc:
        raise pulumi.RunError(str(exc)) from exc


def _program() -> list[CanaryDeployment]:
    spec = stack_spec_from_pulumi_config()
    components = []
    for name, config in spec.app_configs().items():
        if config.app is None or config.gateway is None:
            raise InvalidSpec([Problem(f"apps.{name}.app", "nothing", "this project's program declares apps from the stack config: set app and gateway")], "stack")
        app = config.app
        if config.stable_image and not app.image:
            app = app.model_copy(update={"image": config.stable_image})
        monitor = spec.prometheus.pod_monitor if spec.prometheus is not None else None
        components.append(_StackConfigApp(name, app, config.gateway, prometheus={"podMonitor": monitor} if monitor else None, rollout=spec.rollout))
    return components
