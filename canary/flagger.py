"""Import Flagger ``Canary`` and ``MetricTemplate`` manifests as canary stack config.

Pure translation of parsed manifests into a ``ReleaseSpec`` plus a list of
notes: every manifest field canary does not carry over is named in a note, never
dropped silently. Reading files is the caller's job (``load_manifests``
accepts text).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from canary.errors import InvalidSpec, Problem
from canary.spec import ReleaseSpec, parse_spec

#: Placeholders for what Flagger manifests do not say (the image lives in the Deployment).
PLACEHOLDER_TAG = "change-me"
PLACEHOLDER_GATEWAY = "change-me"

# The fields canary carries over; any other field of a manifest is named in a note.
_CANARY_FIELDS = {"targetRef", "service", "analysis", "provider"}
_SERVICE_FIELDS = {"port", "targetPort", "gatewayRefs", "hosts"}
_ANALYSIS_FIELDS = {"interval", "threshold", "maxWeight", "stepWeight", "stepWeights", "metrics", "webhooks"}
_METRIC_FIELDS = {"name", "templateRef", "thresholdRange", "interval", "templateVariables"}
_WEBHOOK_FIELDS = {"name", "type", "url", "timeout", "metadata"}


@dataclass(frozen=True)
class ImportResult:
    spec: ReleaseSpec
    notes: tuple[str, ...]


def load_manifests(texts: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """Parse (source name, YAML text) pairs into manifests; InvalidSpec names the file."""
    manifests: list[dict[str, Any]] = []
    for source, text in texts:
        try:
            documents = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise InvalidSpec([Problem("file", source, f"must be valid YAML: {getattr(exc, 'problem', exc)}{where}")], source) from None
        for doc in documents:
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc:
                raise InvalidSpec([Problem("kind", source, "every document must be a Kubernetes manifest with a kind")], source)
            manifests.append(doc)
    return manifests


def convert(
    manifests: list[dict[str, Any]],
    *,
    stable_image: str | None = None,
    parent_ref: Mapping[str, str] | None = None,
) -> ImportResult:
    """One Canary (and the MetricTemplates it references) to a spec and notes."""
    notes: list[str] = []
    canaries = [m for m in manifests if m.get("kind") == "Canary"]
    templates_in = [m for m in manifests if m.get("kind") == "MetricTemplate"]
    for other in manifests:
        if other.get("kind") not in ("Canary", "MetricTemplate"):
            notes.append(f"{other.get('kind')} {other.get('metadata', {}).get('name', '?')}: not a Flagger Canary or MetricTemplate; ignored")
    if len(canaries) != 1:
        raise InvalidSpec([Problem("kind", f"{len(canaries)} Canary manifests", "exactly one Canary manifest is required")], "Flagger manifests")
    canary = canaries[0]
    _api(canary)
    meta = canary.get("metadata", {})
    spec = canary.get("spec") or {}
    _unsupported("spec", spec, _CANARY_FIELDS, notes)
    if spec.get("provider") not in (None, "gatewayapi", "gatewayapi:v1"):
        notes.append(f"spec.provider: {spec['provider']!r} is replaced by a Gateway API HTTPRoute")
    target = spec.get("targetRef") or {}
    if target.get("kind", "Deployment") != "Deployment":
        raise InvalidSpec([Problem("spec.targetRef.kind", str(target.get("kind")), "must be Deployment")], "Canary")
    name = target.get("name") or meta.get("name")
    service = spec.get("service") or {}
    _unsupported("spec.service", service, _SERVICE_FIELDS, notes)
    app: dict[str, Any] = {"name": name, "namespace": meta.get("namespace", "default")}
    if "port" in service:
        app["servicePort"] = service["port"]
    target_port = service.get("targetPort", service.get("port"))
    if isinstance(target_port, int):
        app["port"] = target_port
    elif target_port is not None:
        notes.append(f"spec.service.targetPort: named port {target_port!r} is not supported; set canary:app.port")
    gateway = _gateway(service, parent_ref, notes)
    if stable_image is None:
        stable_image = f"{name}:{PLACEHOLDER_TAG}"
        notes.append(f"stableImage: not in Flagger manifests (it lives in Deployment {name}); written as {stable_image}, set it")
    analysis_in = spec.get("analysis") or {}
    analysis = _analysis(analysis_in, notes)
    metric_templates = _templates(templates_in, notes)
    values = {
        "app": app,
        "gateway": gateway,
        "stableImage": stable_image,
        "canaryWeight": 0,
        "analysis": analysis,
    }
    if metric_templates:
        values["metricTemplates"] = metric_templates
    addresses = {t["provider"].get("address") for t in metric_templates.values() if t["provider"].get("address")}
    if addresses:
        values["prometheus"] = {"address": sorted(addresses)[0]}
    elif any("templateRef" not in m for m in analysis.get("metrics", [])):
        values["prometheus"] = {"address": "http://prometheus.monitoring:9090"}
        notes.append("prometheus.address: built-in metrics need one and the manifests name none; written as http://prometheus.monitoring:9090")
    return ImportResult(parse_spec(values, "imported Flagger manifests"), tuple(notes))


def _api(manifest: Mapping[str, Any]) -> None:
    api = str(manifest.get("apiVersion", ""))
    if not api.startswith("flagger.app/"):
        raise InvalidSpec([Problem("apiVersion", api, "must be flagger.app/v1beta1")], str(manifest.get("kind")))


def _unsupported(path: str, data: Mapping[str, Any], known: set[str], notes: list[str]) -> None:
    for key in data:
        if key not in known:
            notes.append(f"{path}.{key}: not supported by canary; ignored")


def _gateway(service: Mapping[str, Any], parent_ref: Mapping[str, str] | None, notes: list[str]) -> dict[str, Any]:
    refs = [dict(parent_ref)] if parent_ref else []
    if not refs:
        for ref in service.get("gatewayRefs") or []:
            refs.append({k: ref[k] for k in ("name", "namespace", "sectionName", "port") if k in ref})
    if not refs:
        refs = [{"name": PLACEHOLDER_GATEWAY}]
        notes.append(f"gateway.parentRefs: the Canary has no spec.service.gatewayRefs; written as {PLACEHOLDER_GATEWAY}, set it")
    gateway: dict[str, Any] = {"parentRefs": refs}
    hosts = [h for h in service.get("hosts") or [] if h != "*"]
    if hosts:
        gateway["hostnames"] = hosts
    return gateway


def _analysis(data: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    _unsupported("spec.analysis", data, _ANALYSIS_FIELDS, notes)
    out = {k: data[k] for k in ("interval", "threshold", "maxWeight", "stepWeight", "stepWeights") if k in data}
    if "threshold" in data:
        notes.append("spec.analysis.threshold: canary counts failed checks in a row (a passing check resets the count)")
    metrics = []
    for i, metric in enumerate(data.get("metrics") or []):
        _unsupported(f"spec.analysis.metrics[{i}]", metric, _METRIC_FIELDS, notes)
        out_metric: dict[str, Any] = {k: metric[k] for k in ("name", "thresholdRange", "interval", "templateVariables") if k in metric}
        if "templateRef" in metric:
            ref = metric["templateRef"]
            out_metric["templateRef"] = {k: ref[k] for k in ("name", "namespace") if k in ref}
        elif metric.get("name") == "request-duration":
            notes.append(f"spec.analysis.metrics[{i}]: request-duration is the p95 in canary (Flagger's built-in is the p99; use request-duration-p99 for that)")
        metrics.append(out_metric)
    if metrics:
        out["metrics"] = metrics
    webhooks = []
    for i, hook in enumerate(data.get("webhooks") or []):
        _unsupported(f"spec.analysis.webhooks[{i}]", hook, _WEBHOOK_FIELDS, notes)
        out_hook: dict[str, Any] = {"name": hook.get("name"), "type": hook.get("type") or "rollout"}
        metadata = dict(hook.get("metadata") or {})
        if "cmd" in metadata:
            out_hook["cmd"] = metadata.pop("cmd")
            metadata.pop("type", None)
            if hook.get("url"):
                notes.append(
                    f"spec.analysis.webhooks[{i}].url: {hook['url']} (a Flagger load tester) is replaced by "
                    "running metadata.cmd locally as the webhook's cmd"
                )
        elif "url" in hook:
            out_hook["url"] = hook["url"]
        if "timeout" in hook:
            out_hook["timeout"] = hook["timeout"]
        if metadata:
            out_hook["metadata"] = {str(k): str(v) for k, v in metadata.items()}
        webhooks.append(out_hook)
    if webhooks:
        out["webhooks"] = webhooks
    return out


def _templates(manifests: list[dict[str, Any]], notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for manifest in manifests:
        _api(manifest)
        name = manifest.get("metadata", {}).get("name")
        spec = manifest.get("spec") or {}
        provider = spec.get("provider") or {}
        _unsupported(f"MetricTemplate {name}: spec", spec, {"provider", "query"}, notes)
        ptype = provider.get("type", "prometheus")
        if ptype != "prometheus":
            raise InvalidSpec([Problem(f"MetricTemplate {name}: spec.provider.type", str(ptype), "must be prometheus (the only provider canary supports)")], "MetricTemplate")
        out_provider: dict[str, Any] = {"type": "prometheus"}
        if provider.get("address"):
            out_provider["address"] = provider["address"]
        if provider.get("secretRef"):
            notes.append(f"MetricTemplate {name}: spec.provider.secretRef: set the token as a Pulumi secret: pulumi config set --secret --path prometheus.token")
        for key in provider:
            if key not in ("type", "address", "secretRef"):
                notes.append(f"MetricTemplate {name}: spec.provider.{key}: not supported by canary; ignored")
        out[name] = {"provider": out_provider, "query": spec.get("query", "")}
    return out
