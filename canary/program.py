"""The Pulumi program: Kubernetes resources as a pure function of the validated spec.

Declares, in the app's namespace: Deployment and Service ``<app>-stable`` (the
stable image), Deployment and Service ``<app>-canary`` (the canary image; zero
replicas while idle), and one Gateway API ``HTTPRoute`` ``<app>`` whose two
backendRefs carry the weights ``100 - w`` and ``w``. Given the same spec it
declares the same resources; it never queries metrics or the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from canary import routing, units
from canary.spec import CONFIG_KEYS, Probe, ReleaseSpec
from canary.stackconfig import PROJECT, from_config

MANAGED_BY = "canary"
#: Pod label telling canary pods from stable pods (values "stable" and "canary").
TRACK_LABEL = "canary/track"


@dataclass(frozen=True)
class Resources:
    stable: k8s.apps.v1.Deployment
    canary: k8s.apps.v1.Deployment
    stable_service: k8s.core.v1.Service
    canary_service: k8s.core.v1.Service
    route: k8s.apiextensions.CustomResource


def labels(spec: ReleaseSpec, track: str, image: str | None = None) -> dict[str, str]:
    """Standard app.kubernetes.io labels plus the track label; the version only for what runs an image.

    Services and the route carry no version: an image change must not update them
    (an updated Service makes Pulumi wait for its endpoints again).
    """
    out = {
        "app.kubernetes.io/name": spec.app.name,
        "app.kubernetes.io/instance": f"{spec.app.name}-{track}",
        "app.kubernetes.io/part-of": spec.app.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        TRACK_LABEL: track,
    }
    if image is not None:
        out["app.kubernetes.io/version"] = units.image_tag(image)[:63].strip("-_.") or "unknown"
    return out


def selector(spec: ReleaseSpec, track: str) -> dict[str, str]:
    """Immutable selector: app name and track only (never the version)."""
    return {"app.kubernetes.io/name": spec.app.name, TRACK_LABEL: track}


def _probe(probe: Probe | None) -> dict[str, Any] | None:
    if probe is None:
        return None
    return {
        "httpGet": {"path": probe.path, "port": "http"},
        "initialDelaySeconds": probe.initial_delay_seconds,
        "periodSeconds": probe.period_seconds,
        "timeoutSeconds": probe.timeout_seconds,
        "failureThreshold": probe.failure_threshold,
    }


def _deployment(spec: ReleaseSpec, track: str, image: str, replicas: int, opts: pulumi.ResourceOptions) -> k8s.apps.v1.Deployment:
    name = f"{spec.app.name}-{track}"
    pod_labels = labels(spec, track, image)
    container: dict[str, Any] = {
        "name": spec.app.name,
        "image": image,
        "ports": [{"name": "http", "containerPort": spec.app.port, "protocol": "TCP"}],
        "env": [{"name": k, "value": v} for k, v in sorted(spec.app.env.items())],
    }
    resources = spec.app.resources.model_dump(exclude_defaults=True)
    if resources:
        container["resources"] = resources
    if (readiness := _probe(spec.app.probes.readiness)) is not None:
        container["readinessProbe"] = readiness
    if (liveness := _probe(spec.app.probes.liveness)) is not None:
        container["livenessProbe"] = liveness
    return k8s.apps.v1.Deployment(
        f"{track}-deployment",
        metadata={"name": name, "namespace": spec.app.namespace, "labels": pod_labels},
        spec={
            "replicas": replicas,
            "selector": {"matchLabels": selector(spec, track)},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(spec.app.port)},
                },
                "spec": {"containers": [container]},
            },
        },
        opts=opts,
    )


def _service(spec: ReleaseSpec, track: str, opts: pulumi.ResourceOptions) -> k8s.core.v1.Service:
    return k8s.core.v1.Service(
        f"{track}-service",
        metadata={"name": f"{spec.app.name}-{track}", "namespace": spec.app.namespace, "labels": labels(spec, track)},
        spec={
            "selector": selector(spec, track),
            "ports": [{"name": "http", "port": spec.app.service_port, "targetPort": "http", "protocol": "TCP"}],
        },
        opts=opts,
    )


def program(spec: ReleaseSpec) -> Resources:
    """Declare the app's resources for ``spec`` and export what a release reads back."""
    opts = pulumi.ResourceOptions()
    if spec.app.create_namespace:
        ns = k8s.core.v1.Namespace("namespace", metadata={"name": spec.app.namespace})
        opts = pulumi.ResourceOptions(depends_on=[ns])
    weight = spec.canary_weight if spec.canary_image else 0
    canary_image = spec.canary_image or spec.stable_image
    # Order within one update: the stable Deployment (awaited until Ready), then
    # the route, then the canary Deployment. A promotion is then one `up` in the
    # order Flagger follows — stable runs the new version before traffic moves to
    # it, and the canary loses its pods only after the route has left it.
    stable = _deployment(spec, "stable", spec.stable_image, spec.app.replicas, opts)
    stable_service = _service(spec, "stable", opts)
    canary_service = _service(spec, "canary", opts)
    route = k8s.apiextensions.CustomResource(
        "route",
        api_version=routing.API_VERSION,
        kind=routing.KIND,
        metadata={"name": spec.app.name, "namespace": spec.app.namespace, "labels": labels(spec, "route")},
        spec=routing.route_spec(spec, weight),
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[stable, stable_service, canary_service])),
    )
    canary_opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[route]))
    canary = _deployment(spec, "canary", canary_image, spec.app.replicas if spec.canary_image else 0, canary_opts)
    pulumi.export("stableWeight", 100 - weight)
    pulumi.export("canaryWeight", weight)
    pulumi.export("stableImage", spec.stable_image)
    pulumi.export("canaryImage", spec.canary_image)
    pulumi.export("namespace", spec.app.namespace)
    pulumi.export("routeName", spec.app.name)
    pulumi.export("stableService", routing.stable_name(spec))
    pulumi.export("canaryService", routing.canary_name(spec))
    return Resources(stable, canary, stable_service, canary_service, route)


def spec_from_pulumi_config() -> ReleaseSpec:
    """Read this stack's config inside a running Pulumi program and validate it."""
    raw: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        full = f"{PROJECT}:{key}"
        value = pulumi.runtime.get_config(full)
        if value is not None:
            raw[full] = _ConfigValue(value, pulumi.runtime.is_config_secret(full))
    return from_config(raw, source=f"stack {pulumi.get_stack()}")


@dataclass(frozen=True)
class _ConfigValue:
    value: Any
    secret: bool
