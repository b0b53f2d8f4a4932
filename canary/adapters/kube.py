"""The Kubernetes adapter: the only module that imports the kubernetes client.

Reads what a release verifies (the HTTPRoute and its status, the Gateways'
classes, Deployments and their pods), reads and writes the objects the release
store keeps (ConfigMaps, a Lease: with ``resourceVersion``, so a lost race is a
``Conflict``, never a silent overwrite), records Events, watches one object,
and applies the few objects the lab installs. The client is built from the same
kubeconfig and context the stack's kubernetes provider uses (``kubernetes:context``,
``kubernetes:kubeconfig``), so verification reads the cluster the program deploys to.

Errors: no answer (or 429, 5xx) -> ``ClusterUnreachable``; 401/403, or no
kubeconfig -> ``Forbidden``; 409 on a write -> ``Conflict``; 404 -> None (or
nothing done); any other refusal (400, 413, 422: invalid, too large, an
admission policy) -> ``Refused``. Each says what the API server said.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import config, dynamic, watch
from kubernetes.client import rest
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from canary.core import naming, routing, workload
from canary.core.naming import Track
from canary.core.spec import ReleaseSpec
from canary.errors import ClusterUnreachable, Conflict, Forbidden, NotReady, Refused

T = TypeVar("T")


def _api_error(exc: ApiException, what: str) -> Exception:
    said = _server_says(exc)
    if exc.status in (401, 403):
        # RBAC, a quota or an admission policy: the API server's message says which
        return Forbidden(f"{what}: the cluster refused ({exc.status} {exc.reason}){said}")
    if exc.status == 409:
        return Conflict(f"{what}: changed since it was read")
    if exc.status in (429, 500, 502, 503, 504) or not exc.status:
        return ClusterUnreachable(f"{what}: the API server answered {exc.status} {exc.reason}")
    return Refused(f"{what}: the cluster refused it ({exc.status} {exc.reason}){said}")


def _server_says(exc: ApiException) -> str:
    """The message of the API server's Status, shortened: the objects canary writes hold no secret,
    and the server names the rule (RBAC's verb and resource, a quota, a webhook's reason)."""
    try:
        body = json.loads(exc.body) if exc.body else None
    except (TypeError, ValueError):
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return f": {' '.join(str(message).split())[:400]}" if message else ""


def _shape_of(exc: Exception) -> str:
    """What went wrong loading a kubeconfig, without a word of its content: the kubernetes client's own
    rule (it names keys and entries, never values), or where a parser stopped."""
    if isinstance(exc, config.ConfigException):
        return str(exc)
    mark = getattr(exc, "problem_mark", None)
    return f"{type(exc).__name__}{f' at line {mark.line + 1}, column {mark.column + 1}' if mark is not None else ''}"


class Kube:
    def __init__(self, kubeconfig: Path | str | None = None, context: str | None = None, timeout: float = 10.0) -> None:
        from canary.adapters import stackfile  # reads a kubeconfig given as content (kubernetes:kubeconfig)

        self._timeout = timeout
        inline = isinstance(kubeconfig, str) and "\n" in kubeconfig
        where = f" context {context}" if context else ""
        #: the kubeconfig and context this client was built from, for messages (never the inline content)
        named = "the kubeconfig given inline (kubernetes:kubeconfig)" if inline else f"kubeconfig {kubeconfig or '(default)'}"
        self.source = named + where
        try:
            if inline:
                self._api = config.new_client_from_config_dict(stackfile.load(str(kubeconfig)), context=context)
            else:
                self._api = config.new_client_from_config(config_file=str(kubeconfig) if kubeconfig else None, context=context)
        except (config.ConfigException, OSError, ValueError, stackfile.YAMLError) as exc:
            if inline:
                # its content holds the cluster's credentials (a Pulumi secret): never in a message or a
                # traceback; a parser's error quotes the line it stopped at
                raise Forbidden(f"cannot load the kubeconfig given inline (kubernetes:kubeconfig){where}: {_shape_of(exc)}") from None
            raise Forbidden(f"cannot load kubeconfig {kubeconfig or '(default)'}{where}: {exc}") from exc
        # no retries of urllib3's own: an unanswered call is one timeout, not four (a lease renewal stalled past
        # the lease), and a write whose answer was lost is not sent again behind the store's back (it appended
        # a journal line twice). The pool is built with the client: built again with the setting
        self._api.configuration.retries = False
        self._api.rest_client.pool_manager.clear()
        self._api.rest_client = rest.RESTClientObject(self._api.configuration)
        self._dynamic: dynamic.DynamicClient | None = None

    @property
    def server(self) -> str:
        """The API server's address this client talks to."""
        return str(self._api.configuration.host)

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnreachable(f"the Kubernetes API server did not answer: {type(exc).__name__}") from exc

    @property
    def dynamic(self) -> dynamic.DynamicClient:
        if self._dynamic is None:
            try:
                self._dynamic = self._call(lambda: dynamic.DynamicClient(self._api))
            except ApiException as exc:
                raise _api_error(exc, "discovering the API") from exc
        return self._dynamic

    def resource(self, api_version: str, kind: str) -> Any:
        return self._call(lambda: self.dynamic.resources.get(api_version=api_version, kind=kind))

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object as a plain dict, or None when it (or its kind) does not exist."""
        try:
            res = self.resource(api_version, kind)
            obj = self._call(lambda: res.get(name=name, namespace=namespace, _request_timeout=self._timeout))
        except (NotFoundError, ResourceNotFoundError):
            return None
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _api_error(exc, f"reading {kind} {name}") from exc
        return obj.to_dict()  # type: ignore[no-any-return]

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict[str, Any]]:
        try:
            res = self.resource(api_version, kind)
            items = self._call(lambda: res.get(namespace=namespace, label_selector=label_selector, _request_timeout=self._timeout))
        except ResourceNotFoundError:
            return []
        except ApiException as exc:
            raise _api_error(exc, f"listing {kind}") from exc
        return [item.to_dict() for item in items.items]

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create one object; ``Conflict`` when it exists."""
        meta = manifest["metadata"]
        try:
            res = self.resource(manifest["apiVersion"], manifest["kind"])
            obj = self._call(lambda: res.create(body=dict(manifest), namespace=meta.get("namespace"), _request_timeout=self._timeout))
        except ApiException as exc:
            raise _api_error(exc, f"creating {manifest['kind']} {meta['name']}") from exc
        return obj.to_dict()  # type: ignore[no-any-return]

    def replace(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Replace one object; its ``metadata.resourceVersion`` must be the one read (else ``Conflict``)."""
        meta = manifest["metadata"]
        try:
            res = self.resource(manifest["apiVersion"], manifest["kind"])
            obj = self._call(lambda: res.replace(body=dict(manifest), name=meta["name"], namespace=meta.get("namespace"), _request_timeout=self._timeout))
        except ApiException as exc:
            if exc.status == 404:  # deleted since it was read: a change like any other, read it again (not an outage to wait out)
                raise Conflict(f"writing {manifest['kind']} {meta['name']}: deleted since it was read") from exc
            raise _api_error(exc, f"writing {manifest['kind']} {meta['name']}") from exc
        return obj.to_dict()  # type: ignore[no-any-return]

    def apply(self, manifest: Mapping[str, Any], field_manager: str = "canary") -> dict[str, Any]:
        """Server-side apply one object."""
        meta = manifest["metadata"]
        try:
            res = self.resource(manifest["apiVersion"], manifest["kind"])
            obj = self._call(
                lambda: res.server_side_apply(
                    body=dict(manifest), name=meta["name"], namespace=meta.get("namespace"),
                    field_manager=field_manager, force_conflicts=True, _request_timeout=self._timeout,
                )
            )
        except ApiException as exc:
            raise _api_error(exc, f"applying {manifest['kind']} {meta['name']}") from exc
        return obj.to_dict()  # type: ignore[no-any-return]

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None, grace_seconds: int | None = None,
               resource_version: str | None = None) -> None:
        """Delete one object (a missing one is not an error); with ``resource_version``, only that version of it
        (else ``Conflict``: it was written since)."""
        body: dict[str, Any] | None = {"gracePeriodSeconds": grace_seconds} if grace_seconds is not None else None
        if resource_version is not None:
            body = {**(body or {}), "preconditions": {"resourceVersion": resource_version}}
        try:
            res = self.resource(api_version, kind)
            self._call(lambda: res.delete(name=name, namespace=namespace, body=body, _request_timeout=self._timeout))
        except (NotFoundError, ResourceNotFoundError):
            return
        except ApiException as exc:
            if exc.status != 404:
                raise _api_error(exc, f"deleting {kind} {name}") from exc

    def apply_all(self, manifests: Iterable[Mapping[str, Any]], field_manager: str = "canary") -> None:
        for manifest in manifests:
            self.apply(manifest, field_manager)
        self._dynamic = None  # new CRDs: rediscover

    def changes(self, api_version: str, kind: str, seconds: int, name: str | None = None, namespace: str | None = None) -> Iterator[dict[str, Any]]:
        """Every change to objects of ``kind`` (one object with ``name``) as ``{"type", "object"}``, until
        the API server ends the watch after ``seconds``. A watch begins with one ``ADDED`` per object."""
        res = self.resource(api_version, kind)
        selector = {"field_selector": f"metadata.name={name}"} if name else {}
        events = watch.Watch().stream(res.get, namespace=namespace, serialize=False, timeout_seconds=seconds,
                                      _request_timeout=seconds + 10, **selector)
        while True:
            try:
                event = self._call(lambda: next(events, None))
            except ApiException as exc:
                raise _api_error(exc, f"watching {kind}") from exc
            if event is None:
                return
            obj = event.get("object")
            yield {"type": str(event["type"]), "object": obj if isinstance(obj, dict) else getattr(obj, "to_dict", lambda: {})()}

    def event(self, involved: Mapping[str, Any], reason: str, message: str, warning: bool = False, component: str = "canary") -> None:
        """Record a core/v1 Event on ``involved`` (apiVersion, kind, name, namespace, uid), as a controller would."""
        now = dt.datetime.now(dt.UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = involved["namespace"]
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
            "involvedObject": dict(involved),
            "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal",
            "source": {"component": component}, "reportingComponent": component, "reportingInstance": component,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
            "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "action": reason,
        }
        try:  # through the dynamic client: the typed CoreV1Api costs 1.3 CPU-s to import (250 pydantic models)
            res = self.resource("v1", "Event")
            self._call(lambda: res.create(body=body, namespace=namespace, _request_timeout=self._timeout))
        except ApiException as exc:
            raise _api_error(exc, f"recording an event on {involved['kind']} {involved['name']}") from exc

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (ClusterUnreachable, Forbidden, ApiException, ResourceNotFoundError) as exc:
                last = exc
                self._dynamic = None
            time.sleep(interval)
        raise NotReady(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def condition(obj: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    """The status condition of type ``kind``, if present."""
    if not obj:
        return None
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond  # type: ignore[no-any-return]
    return None


class ClusterReader:
    """What a release verifies in the cluster: the route and the two tracks."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._controllers: dict[tuple[str, str], str] = {}

    def _controller(self, gateway: str, namespace: str) -> str | None:
        """The controllerName of a Gateway's class (cached): only its status entry counts."""
        key = (namespace, gateway)
        if key not in self._controllers:
            obj = self.kube.get(routing.API_VERSION, "Gateway", gateway, namespace)
            klass = self.kube.get(routing.API_VERSION, "GatewayClass", ((obj or {}).get("spec") or {}).get("gatewayClassName", "")) if obj else None
            controller = ((klass or {}).get("spec") or {}).get("controllerName")
            if controller is None:
                return None
            self._controllers[key] = str(controller)
        return self._controllers[key]

    def route(self, spec: ReleaseSpec) -> routing.RouteState | None:
        app = spec.app
        obj = self.kube.get(routing.API_VERSION, routing.KIND, naming.route(app.name), app.namespace)
        if obj is None:
            return None
        parents = routing.parent_refs([r.model_dump(by_alias=True, exclude_none=True) for r in spec.gateway.parent_refs])
        controllers: dict[str, str] = {}
        for parent in parents:
            namespace = parent.get("namespace") or app.namespace
            controller = self._controller(parent["name"], namespace)
            if controller is not None:
                controllers[f"{namespace}/{parent['name']}"] = controller
        return routing.read_route(obj, app.name, parents, controllers)

    def gateway_classes(self, spec: ReleaseSpec) -> dict[str, routing.GatewayClass]:
        """Each parent Gateway (``namespace/name``) of the app's route whose class can be read: its
        controllerName and the features its status publishes."""
        classes = {}
        for parent in routing.parent_refs([r.model_dump(by_alias=True, exclude_none=True) for r in spec.gateway.parent_refs]):
            namespace = parent.get("namespace") or spec.app.namespace
            gateway = self.kube.get(routing.API_VERSION, "Gateway", parent["name"], namespace)
            name = ((gateway or {}).get("spec") or {}).get("gatewayClassName")
            klass = self.kube.get(routing.API_VERSION, "GatewayClass", name) if name else None
            controller = ((klass or {}).get("spec") or {}).get("controllerName")
            if klass is None or controller is None:
                continue
            published = (klass.get("status") or {}).get("supportedFeatures")
            features = None if published is None else frozenset(str(f.get("name") if isinstance(f, dict) else f) for f in published)
            classes[f"{namespace}/{parent['name']}"] = routing.GatewayClass(str(controller), features)
        return classes

    def deployment(self, spec: ReleaseSpec, track: Track) -> dict[str, Any]:
        """The track's Deployment: its template hash and image, desired/updated/ready replicas,
        whether its rollout is complete, and how many of its pods are alive."""
        app = spec.app
        obj = self.kube.get("apps/v1", "Deployment", naming.deployment(app.name, track), app.namespace) or {}
        template = (obj.get("spec") or {}).get("template") or {}
        status = obj.get("status") or {}
        meta = obj.get("metadata") or {}
        selector = ",".join(f"{k}={v}" for k, v in naming.selector(app.name, track).items())
        pods = self.kube.list("v1", "Pod", app.namespace, label_selector=selector)
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        try:
            image = workload.image(template, app.name, app.container)
        except KeyError:
            image = ""
        replicas = (obj.get("spec") or {}).get("replicas", 0) or 0
        return {
            "exists": bool(obj),
            "hash": workload.declared_hash(template),
            "image": image,
            "replicas": replicas,
            "ready": status.get("readyReplicas", 0) or 0,
            "updated": status.get("updatedReplicas", 0) or 0,
            "available": status.get("availableReplicas", 0) or 0,
            "rolled_out": int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
            and (status.get("updatedReplicas", 0) or 0) >= replicas and (status.get("replicas", 0) or 0) <= replicas,
            "pods": len(live),
            "uid": meta.get("uid", ""),
        }

    def prune_copies(self, spec: ReleaseSpec, keep: set[str]) -> list[str]:
        """Let go of the app's ConfigMap and Secret copies whose names are not in ``keep``: a copy another app
        reads too loses this app's label only; one only this app read is deleted. Both are conditional on the
        copy as read: one another app's ``up`` declared meanwhile is left for a later prune (``Conflict``)."""
        app = spec.app
        dropped = []
        for kind in ("ConfigMap", "Secret"):
            found = {obj["metadata"]["name"]: obj for selector in (naming.copy_user(app.name), f"{naming.APP_LABEL}={app.name},{naming.COPY_OF_LABEL}")
                     for obj in self.kube.list("v1", kind, app.namespace, label_selector=selector)}
            for name, obj in sorted(found.items()):
                if name in keep:
                    continue
                meta = obj["metadata"]
                labels = dict(meta.get("labels") or {})
                try:
                    if naming.copy_users(labels) - {app.name}:
                        labels.pop(naming.copy_user(app.name), None)
                        if labels.get(naming.APP_LABEL) == app.name:
                            del labels[naming.APP_LABEL]
                        kept = {k: v for k, v in meta.items() if k != "managedFields"}
                        self.kube.replace({**obj, "apiVersion": "v1", "kind": kind, "metadata": {**kept, "labels": labels}})
                    else:
                        self.kube.delete("v1", kind, name, app.namespace, resource_version=meta["resourceVersion"])
                        dropped.append(name)
                except Conflict:
                    continue
        return dropped
