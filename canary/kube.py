"""The Kubernetes adapter: the only module that imports the kubernetes client.

Reads what the release must verify (the HTTPRoute and its status, Deployments
and their pods) and applies the few objects the lab installs (CRDs, the Node,
the GatewayClass and Gateway). Errors are mapped to ``ClusterUnreachable``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config, dynamic, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from canary.errors import ClusterUnreachable

T = TypeVar("T")


class Kube:
    def __init__(self, kubeconfig: Path | None = None, timeout: float = 10.0) -> None:
        self._timeout = timeout
        try:
            self._api = config.new_client_from_config(config_file=str(kubeconfig) if kubeconfig else None)
        except (config.ConfigException, OSError) as exc:
            raise ClusterUnreachable(f"cannot load kubeconfig {kubeconfig or '(default)'}: {exc}") from None
        self._api.configuration.retries = False
        self._dynamic: dynamic.DynamicClient | None = None

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ApiException:
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnreachable(f"the Kubernetes API server did not answer: {type(exc).__name__}") from None

    @property
    def dynamic(self) -> dynamic.DynamicClient:
        if self._dynamic is None:
            self._dynamic = self._call(lambda: dynamic.DynamicClient(self._api))
        return self._dynamic

    def resource(self, api_version: str, kind: str) -> Any:
        return self._call(lambda: self.dynamic.resources.get(api_version=api_version, kind=kind))

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object as a plain dict, or None when it does not exist."""
        try:
            res = self.resource(api_version, kind)
            obj = self._call(lambda: res.get(name=name, namespace=namespace, _request_timeout=self._timeout))
        except (NotFoundError, ResourceNotFoundError):
            return None
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise ClusterUnreachable(f"reading {kind} {name}: HTTP {exc.status} {exc.reason}") from None
        return obj.to_dict()  # type: ignore[no-any-return]

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict[str, Any]]:
        try:
            res = self.resource(api_version, kind)
            items = self._call(lambda: res.get(namespace=namespace, label_selector=label_selector, _request_timeout=self._timeout))
        except ApiException as exc:
            raise ClusterUnreachable(f"listing {kind}: HTTP {exc.status} {exc.reason}") from None
        return [item.to_dict() for item in items.items]

    def changes(self, api_version: str, kind: str, seconds: int) -> Iterator[str]:
        """The type of every change to objects of ``kind`` (``ADDED``, ``MODIFIED``, ``DELETED`` …), until the
        API server ends the watch after ``seconds``. A watch begins with one ``ADDED`` per existing object."""
        res = self.resource(api_version, kind)
        events = watch.Watch().stream(res.get, serialize=False, timeout_seconds=seconds, _request_timeout=seconds + 10)
        while True:
            try:
                event = self._call(lambda: next(events, None))
            except ApiException as exc:
                raise ClusterUnreachable(f"watching {kind}: HTTP {exc.status} {exc.reason}") from None
            if event is None:
                return
            yield str(event["type"])

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
            raise ClusterUnreachable(f"applying {manifest['kind']} {meta['name']}: HTTP {exc.status} {exc.body}") from None
        return obj.to_dict()  # type: ignore[no-any-return]

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None, grace_seconds: int | None = None) -> None:
        """Delete one object (a missing one is not an error)."""
        body = {"gracePeriodSeconds": grace_seconds} if grace_seconds is not None else None
        try:
            res = self.resource(api_version, kind)
            self._call(lambda: res.delete(name=name, namespace=namespace, body=body, _request_timeout=self._timeout))
        except (NotFoundError, ResourceNotFoundError):
            return
        except ApiException as exc:
            if exc.status != 404:
                raise ClusterUnreachable(f"deleting {kind} {name}: HTTP {exc.status} {exc.reason}") from None

    def apply_all(self, manifests: Iterable[Mapping[str, Any]], field_manager: str = "canary") -> None:
        for manifest in manifests:
            self.apply(manifest, field_manager)
        self._dynamic = None  # new CRDs: rediscover

    def version(self) -> str:
        info = self._call(lambda: client.VersionApi(self._api).get_code(_request_timeout=self._timeout))
        return str(info.git_version)

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (ClusterUnreachable, ApiException, ResourceNotFoundError) as exc:
                last = exc
                self._dynamic = None
            time.sleep(interval)
        raise ClusterUnreachable(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def condition(obj: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    """The status condition of type ``kind``, if present."""
    if not obj:
        return None
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond  # type: ignore[no-any-return]
    return None


class ClusterReader:
    """What the release verifies in the cluster: the route and the two Deployments."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def route(self, spec: Any) -> Any:
        from canary import routing

        obj = self.kube.get(routing.API_VERSION, routing.KIND, spec.app.name, spec.app.namespace)
        return None if obj is None else routing.read_route(obj, spec)

    def deployment(self, spec: Any, track: str) -> dict[str, Any]:
        """Image, desired/ready replicas and the number of live pods of ``<app>-<track>``."""
        name = f"{spec.app.name}-{track}"
        obj = self.kube.get("apps/v1", "Deployment", name, spec.app.namespace) or {}
        containers = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or [{}]
        status = obj.get("status") or {}
        pods = self.kube.list("v1", "Pod", spec.app.namespace, label_selector=f"app.kubernetes.io/name={spec.app.name},canary/track={track}")
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return {
            "exists": bool(obj),
            "image": containers[0].get("image"),
            "replicas": (obj.get("spec") or {}).get("replicas", 0),
            "ready": status.get("readyReplicas", 0) or 0,
            "updated": status.get("updatedReplicas", 0) or 0,
            "pods": len(live),
        }
