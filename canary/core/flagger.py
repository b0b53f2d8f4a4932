"""Import Flagger ``Canary`` and ``MetricTemplate`` manifests as canary stack config.

Pure translation of parsed manifests into a ``ReleaseSpec`` plus a list of
notes: every manifest field canary does not carry over is named in a note, never
dropped silently. What Flagger itself would refuse — a field of the wrong shape,
a missing ``targetRef``, a field ``spec.analysis`` does not have (a typo) — is
``InvalidSpec``, and every problem names the manifest's field, not canary's.
Reading and parsing the files is the caller's job (the stack-file adapter).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from canary.core import naming, units
from canary.core.spec import StackSpec, parse_stack
from canary.errors import CanaryError, InvalidSpec, Problem

#: Placeholders for what Flagger manifests do not say (the image lives in the Deployment).
PLACEHOLDER_TAG = "change-me"
PLACEHOLDER_GATEWAY = "change-me"

# The fields canary carries over; any other field of a manifest is named in a note.
_CANARY_FIELDS = {"targetRef", "service", "analysis", "canaryAnalysis", "provider", "skipAnalysis", "metricsServer"}
#: What ``kubectl get -o yaml`` prints for several objects (or the API for a list of one kind): read item by item.
_LIST_KINDS = ("List", "CanaryList", "MetricTemplateList")
_SERVICE_FIELDS = {"port", "targetPort", "appProtocol", "gatewayRefs", "hosts"}
_ANALYSIS_FIELDS = {
    "interval", "threshold", "maxWeight", "stepWeight", "stepWeights", "metrics", "webhooks",
    "iterations", "match", "mirror", "mirrorWeight", "sessionAffinity",
}
#: Carried over as they are: canary spells them as Flagger does (and judges them by the same rules).
_AS_IS = ("interval", "threshold", "maxWeight", "stepWeight", "stepWeights", "iterations", "match", "mirror", "mirrorWeight")
#: Flagger's values for what a Canary leaves out, written out because canary's defaults differ (threshold 5,
#: maxWeight 50): left to canary's, a bad version would get five failed intervals instead of Flagger's one.
FLAGGER_THRESHOLD = 1
FLAGGER_MAX_WEIGHT = 100
#: Flagger's timeout for a webhook that sets none (canary's is 60s).
FLAGGER_WEBHOOK_TIMEOUT = "10s"
#: The window Flagger queries a built-in metric over when the metric sets no interval (canary's is analysis.interval).
FLAGGER_METRIC_INTERVAL = "1m"
#: The load tester's own bound on a command it runs (its -timeout flag's default).
_LOAD_TESTER_TIMEOUT = "1h"
#: Flagger's cookie attributes beside its name and Max-Age, which canary's affinity cookie does not set.
_COOKIE_ATTRIBUTES = ("domain", "httpOnly", "partitioned", "path", "sameSite", "secure")
#: The Max-Age Flagger gives the affinity cookie when sessionAffinity.maxAge is 0 (unset).
FLAGGER_COOKIE_MAX_AGE = 86400
#: The load tester's task types that run one tool on the words of metadata.cmd.
_LOAD_TESTER_TOOLS = {"helm": "helm", "helmv3": "helm", "kubectl": "kubectl"}
#: Flagger runs an analysis interval shorter than this at this (canary would take it as written).
FLAGGER_MIN_INTERVAL = timedelta(seconds=10)
#: Flagger runs an analysis interval it cannot parse at this, its default.
FLAGGER_DEFAULT_INTERVAL = timedelta(minutes=1)
#: What Flagger's Canary CRD lets through as an analysis interval: a number then m or s, whatever follows
#: (its API server refuses any other string, so Flagger never runs it).
_CRD_INTERVAL = re.compile(r"^[0-9]+(m|s)")
#: Go's duration units (Flagger parses durations with Go's time.ParseDuration), in seconds.
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
#: Flagger's placeholders whose meaning differs in canary, with the suffix that names its canary or primary
#: Service (``{{ target }}-canary``) when no more of a name follows it.
_FLAGGER_PLACEHOLDER = re.compile(r"\{\{\s*(target|service|name|ingress|route)\s*\}\}(-canary(?![A-Za-z0-9])|-primary(?![A-Za-z0-9]))?")
#: Flagger's built-in metrics (canary has more: a name of another is no built-in to Flagger).
_FLAGGER_BUILTINS = ("request-success-rate", "request-duration")
_METRIC_FIELDS = {"name", "templateRef", "thresholdRange", "threshold", "interval", "templateVariables"}
_WEBHOOK_FIELDS = {"name", "type", "url", "timeout", "metadata"}
#: A URL's host, past any user info (never shown) and before its port, path or query. The user info runs to the last
#: ``@`` before the path, as Flagger's (Go's) URL parser reads it: a password holding an ``@`` is no host.
_URL_HOST = re.compile(r"\bhttps?://(?:[^/?#\s'\"]*@)?([^/?#:@\s'\"]+)", re.IGNORECASE)
#: Top-level domains public hosts commonly end in (every two-letter one is a country's and counts too): the last
#: label of a two-label host that is none of these is taken for a namespace (``flagger-loadtester.test``). Left out:
#: TLDs that few public hosts end in but many clusters name a namespace (prod, int, build, tools: Flagger's own
#: example hook is ``web-canary.prod``); a public host of theirs gets a note too many, which is advice, never a refusal.
#: Kept though namespaces bear them too: dev, app, shop, store, live, which many public hosts end in.
_KNOWN_TLDS = frozenset({
    "com", "net", "org", "edu", "gov", "mil", "info", "biz", "name", "pro", "aero", "coop", "museum", "jobs", "mobi",
    "travel", "app", "dev", "page", "cloud", "tech", "online", "site", "website", "xyz", "shop", "store", "blog", "live",
    "news", "media", "email", "network", "services", "solutions", "systems", "software", "run", "codes",
    "zone", "link", "top", "one", "google", "aws", "azure", "microsoft", "amazon", "arpa",
})
#: Every field of Flagger's CanaryAnalysis (flagger.app/v1beta1): one outside this set is a typo
#: that Flagger would not take either, so it is refused, not noted as unsupported.
FLAGGER_ANALYSIS_FIELDS = frozenset({
    "interval", "iterations", "mirror", "mirrorWeight", "maxWeight", "stepWeight", "stepWeights", "stepWeightPromotion",
    "threshold", "primaryReadyThreshold", "canaryReadyThreshold", "alerts", "metrics", "webhooks", "match", "sessionAffinity",
})
#: Where each field of the imported spec came from in the manifests, for problems found when it is validated.
_ORIGINS = (
    ("analysis.skipAnalysis", "spec.skipAnalysis"),
    ("analysis.failureLimit", "spec.analysis.threshold"),  # canary's failureLimit is Flagger's threshold, carried over twice
    ("analysis.webhookName", "metadata.name"),
    ("analysis", "spec.analysis"),
    ("app.servicePort", "spec.service.port"),
    ("app.port", "spec.service.targetPort"),
    ("app.appProtocol", "spec.service.appProtocol"),
    ("app.name", "spec.targetRef.name"),
    ("app.namespace", "metadata.namespace"),
    ("gateway.parentRefs", "spec.service.gatewayRefs"),
    ("gateway.hostnames", "spec.service.hosts"),
    ("app.image", "--stable-image"),
)


@dataclass(frozen=True)
class ImportResult:
    spec: StackSpec
    notes: tuple[str, ...]


def convert(
    manifests: list[dict[str, Any]],
    *,
    stable_image: str | None = None,
    parent_ref: Mapping[str, str] | None = None,
) -> ImportResult:
    """One Canary (and the MetricTemplates it references) to a spec and notes. A refused import's error carries
    the notes gathered before it (``CanaryError.notes``): a field left out or a default written often explains it."""
    notes: list[str] = []
    try:
        return _convert(manifests, notes, stable_image=stable_image, parent_ref=parent_ref)
    except CanaryError as exc:
        exc.notes = tuple(notes)
        raise


def _convert(
    manifests: list[dict[str, Any]],
    notes: list[str],
    *,
    stable_image: str | None,
    parent_ref: Mapping[str, str] | None,
) -> ImportResult:
    manifests = _items(manifests)
    canaries = [m for m in manifests if m.get("kind") == "Canary"]
    templates_in = [m for m in manifests if m.get("kind") == "MetricTemplate"]
    for other in manifests:
        if other.get("kind") not in ("Canary", "MetricTemplate"):
            other_name = _mapping(other.get("metadata"), "metadata", str(other.get("kind"))).get("name", "?")
            notes.append(f"{other.get('kind')} {other_name}: not a Flagger Canary or MetricTemplate; ignored")
    if len(canaries) != 1:
        raise InvalidSpec([Problem("kind", f"{len(canaries)} Canary manifests", "exactly one Canary manifest is required")], "Flagger manifests")
    canary = canaries[0]
    _api(canary)
    meta = _mapping(canary.get("metadata"), "metadata")
    spec = _mapping(canary.get("spec"), "spec")
    _unsupported("spec", spec, _CANARY_FIELDS, notes)
    if spec.get("provider") not in (None, "gatewayapi", "gatewayapi:v1"):
        notes.append(f"spec.provider: {spec['provider']!r} is replaced by a Gateway API HTTPRoute")
    if spec.get("targetRef") is None:
        raise InvalidSpec([Problem("spec.targetRef", "nothing", "is required: the Deployment the Canary releases (kind, name)")], "Canary")
    target = _mapping(spec.get("targetRef"), "spec.targetRef")
    if target.get("kind", "Deployment") != "Deployment":
        raise InvalidSpec([Problem("spec.targetRef.kind", str(target.get("kind")), "must be Deployment")], "Canary")
    name = target.get("name")
    if not name:
        raise InvalidSpec([Problem("spec.targetRef.name", "nothing", "is required: the Deployment's name")], "Canary")
    canary_name = _string(meta.get("name"), "metadata.name", "Canary")
    webhook_name = None
    if canary_name and canary_name != name:
        # Flagger's webhooks send canary.Name, and its load tester keys gates on "<name>.<namespace>": sent the app's
        # name instead, a gate opened for the Canary would never be seen
        namespace = meta.get("namespace", "default")
        webhook_name = canary_name
        notes.append(f"metadata.name: the Canary is {canary_name}, its Deployment {name}: written as analysis.webhookName, so that "
                     f"canary's webhooks send {canary_name} as Flagger's do (its load tester keys gates, /gate/check, /gate/open, "
                     f"/gate/close, /rollback/check, on {canary_name}.{namespace}); the app is named {name}")
    service = _mapping(spec.get("service"), "spec.service")
    _unsupported("spec.service", service, _SERVICE_FIELDS, notes)
    app: dict[str, Any] = {"name": name, "namespace": meta.get("namespace", "default")}
    if "port" in service:
        app["servicePort"] = service["port"]
    target_port = service.get("targetPort", service.get("port"))
    if isinstance(target_port, int):
        app["port"] = target_port
    elif target_port is not None:
        notes.append(f"spec.service.targetPort: named port {target_port!r} is not supported; set canary:app.port")
    if "appProtocol" in service:
        app["appProtocol"] = service["appProtocol"]  # on the port of each Service the Canary makes, as Flagger sets it
    gateway = _gateway(service, parent_ref, notes)
    if stable_image is None:
        stable_image = f"{name}:{PLACEHOLDER_TAG}"
        notes.append(f"app.image: not in Flagger manifests (it lives in Deployment {name}); written as {stable_image}, set it")
    if spec.get("analysis") is None and spec.get("canaryAnalysis") is not None:
        # Flagger's earlier name, which it still reads when spec.analysis is absent
        spec["analysis"] = spec["canaryAnalysis"]
        notes.append("spec.canaryAnalysis: read as spec.analysis, as Flagger reads it when spec.analysis is absent")
    elif spec.get("canaryAnalysis") is not None:
        notes.append("spec.canaryAnalysis: ignored, as Flagger ignores it beside spec.analysis")
    analysis_in = _mapping(spec.get("analysis"), "spec.analysis")
    analysis = _analysis(analysis_in, notes)
    if "skipAnalysis" in spec:
        analysis["skipAnalysis"] = spec["skipAnalysis"]
    if webhook_name is not None:
        analysis["webhookName"] = webhook_name
    flagger_names = {
        "target": str(name),
        "name": canary_name,
        "service": service.get("name") or name,
        "ingress": _mapping(spec.get("ingressRef"), "spec.ingressRef").get("name") or name,
    }
    metric_templates, template_namespaces = _templates(templates_in, notes, flagger_names)
    _check_template_refs(analysis, metric_templates)
    app["image"] = stable_image
    values = {
        "app": app,
        "gateway": gateway,
        "analysis": analysis,
    }
    if metric_templates:
        values["metricTemplates"] = metric_templates
    addresses = {t["provider"].get("address") for t in metric_templates.values() if t["provider"].get("address")}
    metrics_server = _string(spec.get("metricsServer"), "spec.metricsServer", "Canary")
    if metrics_server:
        # Flagger queries the built-in metrics there (it overrides the -metrics-server flag for this Canary);
        # a template with an address of its own keeps it
        values["prometheus"] = {"address": metrics_server}
        notes.append("spec.metricsServer: written as prometheus.address, where Flagger queries the built-in metrics")
        unset = sorted(name for name, t in metric_templates.items() if not t["provider"].get("address"))
        if unset:
            notes.append(f"MetricTemplate {', '.join(unset)}: spec.provider.address: not set; they query prometheus.address, "
                         f"written as {metrics_server} (spec.metricsServer): check it is the Prometheus they were written for")
    elif addresses:
        values["prometheus"] = {"address": sorted(addresses)[0]}
        unset = sorted(name for name, t in metric_templates.items() if not t["provider"].get("address"))
        if unset:
            # in Flagger these ask the Prometheus of its -metrics-server flag, which may be another one
            notes.append(f"MetricTemplate {', '.join(unset)}: spec.provider.address: not set (Flagger's -metrics-server flag); "
                         f"they query prometheus.address, written as {values['prometheus']['address']}: check it is the same Prometheus")
    else:
        # Flagger's templates may leave the address to its -metrics-server flag, which no manifest holds
        needs = [why for why, needed in (("built-in metrics need one", any("templateRef" not in m for m in analysis.get("metrics", []))),
                                         ("the MetricTemplates leave it to Flagger's -metrics-server flag", bool(metric_templates))) if needed]
        if needs:
            values["prometheus"] = {"address": "http://prometheus.monitoring:9090"}
            notes.append(f"prometheus.address: {' and '.join(needs)}, and the manifests name none; written as http://prometheus.monitoring:9090, set it")
    try:
        imported = parse_stack(values, "imported Flagger manifests")
    except InvalidSpec as exc:
        problems = [Problem(_manifest_field(p.field, gateway_given=parent_ref is not None, address_given=bool(metrics_server)), p.value, p.rule)
                    for p in exc.problems]
        raise InvalidSpec(list(dict.fromkeys(problems)), exc.source) from None  # threshold's, once
    _check_template_namespaces(analysis, template_namespaces, meta.get("namespace"))
    return ImportResult(imported, tuple(notes))


def _manifest_field(field: str, gateway_given: bool = False, address_given: bool = False) -> str:
    """The manifest field a field of the imported spec came from: ``analysis.interval`` -> ``spec.analysis.interval``
    (the parentRef comes from ``--gateway`` when it was given, Prometheus' address from ``spec.metricsServer``)."""
    if gateway_given and field.startswith("gateway.parentRefs"):
        return "--gateway"
    if address_given and field == "prometheus.address":
        return "spec.metricsServer"
    if field.startswith("metricTemplates."):
        name, _, rest = field.removeprefix("metricTemplates.").partition(".")
        return f"MetricTemplate {name}: spec.{rest}" if rest else f"MetricTemplate {name}"
    for ours, theirs in _ORIGINS:
        if field == ours or field.startswith((f"{ours}.", f"{ours}[")):
            return theirs + field[len(ours):]
    return field


def _items(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The manifests with each List (``kubectl get canary -o yaml``) replaced by its items; InvalidSpec naming
    an item that is no manifest. A List inside a List is left as it is (and noted as no Canary)."""
    out: list[dict[str, Any]] = []
    for manifest in manifests:
        if manifest.get("kind") not in _LIST_KINDS:
            out.append(manifest)
            continue
        for i, item in enumerate(_mappings(manifest.get("items"), "items", str(manifest["kind"]))):
            if "kind" not in item:
                raise InvalidSpec([Problem(f"items[{i}]", _shown(item), "must be a Kubernetes manifest with a kind")], str(manifest["kind"]))
            out.append(item)
    return out


def _mapping(value: Any, field: str, source: str = "Canary") -> dict[str, Any]:
    """``value`` as a mapping (absent: empty); InvalidSpec naming the field when it has another shape."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpec([Problem(field, _shown(value), f"must be a mapping, not {_type(value)}")], source)
    return dict(value)


def _mappings(value: Any, field: str, source: str = "Canary") -> list[dict[str, Any]]:
    """``value`` as a list of mappings (absent: empty); InvalidSpec naming the field or the item otherwise."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidSpec([Problem(field, _shown(value), f"must be a list of mappings, not {_type(value)}")], source)
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise InvalidSpec([Problem(f"{field}[{i}]", _shown(item), f"must be a mapping, not {_type(item)}")], source)
    return [dict(item) for item in value]


def _string(value: Any, field: str, source: str) -> str | None:
    """``value`` as a string (absent: None); InvalidSpec naming the field when it has another shape."""
    if value is None or isinstance(value, str):
        return value
    raise InvalidSpec([Problem(field, _shown(value), f"must be a string, not {_type(value)}")], source)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "a list"}.get(type(value), type(value).__name__)


def go_duration(text: str) -> timedelta | None:
    """``text`` read as Go's ``time.ParseDuration`` reads it ("1m30s", "1.5m", "90s", "0"), or None where it
    refuses it: the durations Flagger runs, and the ones it cannot parse."""
    rest, sign = text, 1
    if rest[:1] in ("-", "+"):
        sign, rest = (-1 if rest[0] == "-" else 1), rest[1:]
    if rest == "0":
        return timedelta(0)
    seconds, pos = 0.0, 0
    while pos < len(rest):
        part = _GO_PART.match(rest, pos)
        if part is None or part.group(1) in ("", "."):
            return None
        seconds += float(part.group(1)) * _GO_UNITS[part.group(2)]
        pos = part.end()
    if not rest:
        return None
    try:
        return timedelta(seconds=sign * seconds)
    except OverflowError:
        return None


def _check_template_refs(analysis: Mapping[str, Any], metric_templates: Mapping[str, Any]) -> None:
    """Every templateRef names a MetricTemplate given with the Canary: Flagger would look it up in the cluster, canary cannot."""
    problems = []
    for i, metric in enumerate(analysis.get("metrics", [])):
        ref = metric.get("templateRef")
        if ref is not None and (not isinstance(ref.get("name"), str) or ref["name"] not in metric_templates):
            given = ", ".join(map(str, metric_templates)) or "none"
            problems.append(Problem(f"spec.analysis.metrics[{i}].templateRef.name", str(ref.get("name")),
                                    f"must name a MetricTemplate given with the Canary (given: {given}); pass its manifest too"))
    if problems:
        raise InvalidSpec(problems, "Flagger manifests")


def _check_template_namespaces(analysis: Mapping[str, Any], namespaces: Mapping[str, str | None], canary_namespace: str | None) -> None:
    """Each templateRef's namespace (the Canary's when it names none, as Flagger reads it) is the one of the
    MetricTemplate given by that name. Checked once the Canary itself is valid (its namespace among it)."""
    problems = []
    for i, metric in enumerate(analysis.get("metrics", [])):
        ref = metric.get("templateRef")
        if ref is not None:
            wanted, found = ref.get("namespace") or canary_namespace, namespaces.get(ref["name"])
            if wanted and found and wanted != found:
                problems.append(Problem(f"spec.analysis.metrics[{i}].templateRef.namespace", str(wanted),
                                        f"names MetricTemplate {wanted}/{ref['name']}, but the one given is {found}/{ref['name']}; pass that one"))
    if problems:
        raise InvalidSpec(problems, "Flagger manifests")


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
    if refs and service.get("gatewayRefs"):
        notes.append("spec.service.gatewayRefs: replaced by --gateway")
    if not refs:
        for i, ref in enumerate(_mappings(service.get("gatewayRefs"), "spec.service.gatewayRefs")):
            kind, group = ref.get("kind", "Gateway"), ref.get("group", "gateway.networking.k8s.io")
            if (kind, group) != ("Gateway", "gateway.networking.k8s.io"):
                # a parent of another kind (a mesh's Service) cannot carry canary's route: refused, not turned into a Gateway
                raise InvalidSpec([Problem(f"spec.service.gatewayRefs[{i}]", f"{group or 'core'}/{kind}",
                                           "must be a Gateway (gateway.networking.k8s.io): canary routes through a Gateway API Gateway")], "Canary")
            refs.append({k: ref[k] for k in ("name", "namespace", "sectionName", "port") if k in ref})
            for key in ref:
                if key not in ("name", "namespace", "sectionName", "port", "kind", "group"):
                    notes.append(f"spec.service.gatewayRefs[{i}].{key}: not supported by canary; ignored")
    if not refs:
        refs = [{"name": PLACEHOLDER_GATEWAY}]
        notes.append(f"gateway.parentRefs: the Canary has no spec.service.gatewayRefs; written as {PLACEHOLDER_GATEWAY}, set it")
    gateway: dict[str, Any] = {"parentRefs": refs}
    hosts_in = service.get("hosts") or []
    if not isinstance(hosts_in, list):
        raise InvalidSpec([Problem("spec.service.hosts", _shown(hosts_in), f"must be a list of host names, not {_type(hosts_in)}")], "Canary")
    hosts = [h for h in hosts_in if h != "*"]
    if hosts:
        gateway["hostnames"] = hosts
    return gateway


def _analysis(data: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    unknown = [key for key in data if key not in FLAGGER_ANALYSIS_FIELDS]
    if unknown:
        rule = "is not a field of Flagger's Canary spec.analysis (a typo?); its fields: " + ", ".join(sorted(FLAGGER_ANALYSIS_FIELDS))
        raise InvalidSpec([Problem(f"spec.analysis.{key}", _shown(data[key]), rule) for key in unknown], "Canary")
    _unsupported("spec.analysis", data, _ANALYSIS_FIELDS, notes)
    out = {k: data[k] for k in _AS_IS if k in data}
    _unroutable_matches(out.get("match"))
    _flagger_ignores(out, notes)
    _flagger_defaults(data, out, notes)
    _flagger_steps(out, notes)
    if "sessionAffinity" in data:
        affinity = dict(_mapping(data["sessionAffinity"], "spec.analysis.sessionAffinity"))
        if "primaryCookieName" in affinity:
            # Flagger also pins the clients sent to the primary; canary's route keeps only the canary's
            notes.append(f"spec.analysis.sessionAffinity.primaryCookieName: not supported ({affinity.pop('primaryCookieName')!r} dropped): "
                         "clients routed to stable are not pinned there; those routed to the canary keep its cookie")
        for key in _COOKIE_ATTRIBUTES:
            if key in affinity:
                notes.append(f"spec.analysis.sessionAffinity.{key}: {affinity.pop(key)!r} not carried over: canary's "
                             "affinity cookie has no such attribute (it sets only its name and Max-Age)")
        if _unset(affinity.get("maxAge")):
            del affinity["maxAge"]
            notes.append(f"spec.analysis.sessionAffinity.maxAge: 0 is run by Flagger as {FLAGGER_COOKIE_MAX_AGE}s (a day); written as {FLAGGER_COOKIE_MAX_AGE}s")
            affinity["maxAge"] = f"{FLAGGER_COOKIE_MAX_AGE}s"
        elif isinstance(affinity.get("maxAge"), int) and not isinstance(affinity["maxAge"], bool):
            affinity["maxAge"] = f"{affinity['maxAge']}s"  # Flagger's maxAge is in seconds
        out["sessionAffinity"] = affinity
    if "threshold" in data:
        out["failureLimit"] = out["threshold"]
        notes.append(
            "spec.analysis.threshold: carried over as failureLimit (failed checks in all, Flagger's count) "
            "and as threshold (failed checks in a row); either rolls back"
        )
    if out.get("mirror") is True and "iterations" not in out:
        notes.append("spec.analysis.mirror: Flagger mirrors for one interval only, at weight 0 before the first step (every request "
                     "answered by the primary and copied to the canary), then shifts the weights without mirroring; canary has no "
                     "such step: it copies requests to the canary at every weighted step, beside the share the canary answers "
                     "(see Mirroring in canary's README)")
    metrics = []
    for i, metric in enumerate(_mappings(data.get("metrics"), "spec.analysis.metrics")):
        if metric.get("query"):
            _inline_query(i, metric, notes)
        _unsupported(f"spec.analysis.metrics[{i}]", metric, _METRIC_FIELDS, notes)
        out_metric: dict[str, Any] = {k: metric[k] for k in ("name", "thresholdRange", "interval", "templateVariables") if k in metric}
        if not metric.get("interval"):
            _metric_interval(i, metric, out_metric, notes)
        if "threshold" in metric:
            _deprecated_threshold(i, metric, out_metric, notes)
        if "templateRef" in metric:
            ref = _mapping(metric["templateRef"], f"spec.analysis.metrics[{i}].templateRef")
            out_metric["templateRef"] = {k: ref[k] for k in ("name", "namespace") if k in ref}
        elif metric.get("name") == "request-duration":
            notes.append(f"spec.analysis.metrics[{i}]: request-duration is the p95 in canary (Flagger's built-in is the p99; use request-duration-p99 for that)")
        metrics.append(out_metric)
    _valid_names(metrics, "spec.analysis.metrics", notes)
    if metrics:
        out["metrics"] = metrics
    webhooks = []
    for i, hook in enumerate(_mappings(data.get("webhooks"), "spec.analysis.webhooks")):
        _unsupported(f"spec.analysis.webhooks[{i}]", hook, _WEBHOOK_FIELDS, notes)
        out_hook: dict[str, Any] = {"name": hook.get("name"), "type": hook.get("type") or "rollout"}
        metadata = _mapping(hook.get("metadata"), f"spec.analysis.webhooks[{i}].metadata")
        # Flagger's metadata is a map of strings; str() made an empty cmd the command "None", a list "['a', 'b']"
        wrong = [Problem(f"spec.analysis.webhooks[{i}].metadata.{key}", _shown(value),
                         f"must be a string, not {_type(value)}: Flagger's webhook metadata maps strings to strings (quote it)")
                 for key, value in metadata.items() if not isinstance(value, str)]
        wrong += [Problem(f"spec.analysis.webhooks[{i}].metadata", _shown(key), f"keys must be strings, not {_type(key)} (quote it)")
                  for key in metadata if not isinstance(key, str)]
        if wrong:
            raise InvalidSpec(wrong, "Canary")
        queued = False  # a load tester's cmd task: Flagger's call returns before it runs, its timeout bounds nothing of it
        if "cmd" in metadata:
            queued = _load_tester_hook(i, hook, metadata, out_hook, notes) == "cmd"
            _cluster_internal_hosts(f"spec.analysis.webhooks[{i}].metadata.cmd", hook.get("name"), out_hook["cmd"], notes)
        elif "url" in hook:
            out_hook["url"] = hook["url"]
            _cluster_internal_hosts(f"spec.analysis.webhooks[{i}].url", hook.get("name"), hook["url"], notes)
        if out_hook["type"] == "event":
            notes.append(f"spec.analysis.webhooks[{i}]: an event hook is sent Flagger's event payload (eventMessage, eventType, "
                         "timestamp in its metadata) with canary's fields beside it (see Webhooks in canary's README)")
        if out_hook.get("background"):
            pass  # Flagger's timeout bounded its call to the load tester, which answers at once; nothing to bound here
        elif "timeout" in hook:
            out_hook["timeout"] = hook["timeout"]
        elif out_hook.get("cmd") or out_hook.get("url"):
            out_hook["timeout"] = FLAGGER_WEBHOOK_TIMEOUT
            notes.append(f"spec.analysis.webhooks[{i}].timeout: not set; written as {FLAGGER_WEBHOOK_TIMEOUT}, Flagger's default "
                         "(canary's is 60s)" + (f", which bounded the call to the load tester: it ran the command for up to its own "
                                                f"-timeout ({_LOAD_TESTER_TIMEOUT} by default); raise timeout if the command "
                                                "needs longer" if queued else ""))
        if metadata:
            out_hook["metadata"] = metadata
        webhooks.append(out_hook)
    _valid_names(webhooks, "spec.analysis.webhooks", notes)
    if webhooks:
        out["webhooks"] = webhooks
    return out


def cluster_internal(host: str) -> str | None:
    """Why ``host`` looks like a name only the cluster's DNS resolves, or None. Kept to the sure cases: a name without
    a dot (a Service of the caller's namespace), one ending in ``.svc`` or ``.cluster.local``, and ``<service>.<namespace>``
    whose last label is no top-level domain canary knows (an IP address, ``localhost`` and longer names are left alone)."""
    host = host.lower().rstrip(".")
    labels = host.split(".")
    if not host or host.startswith("[") or "localhost" in labels or all(label.isdigit() for label in labels):
        return None
    if len(labels) == 1:
        return "a name without a dot, which Kubernetes resolves to a Service of the caller's namespace"
    if host.endswith((".svc", ".cluster.local")):
        return "a name ending in .svc or .cluster.local, the cluster's own DNS domain"
    if len(labels) == 2 and len(labels[1]) != 2 and labels[1] not in _KNOWN_TLDS:
        return f"<service>.<namespace>: {labels[1]} is no top-level domain canary knows"
    return None


def _cluster_internal_hosts(field: str, name: Any, text: str, notes: list[str]) -> None:
    """A note for each host of a URL in ``text`` (a hook's url, or a load tester's command now run locally) that looks
    cluster-internal: Flagger called it from inside the cluster, canary calls it from where canary runs (a CI runner),
    where it fails or times out every time. Names the hook and the host only: the URL may carry credentials or a token."""
    if not isinstance(text, str):
        return
    seen = set()
    for found in _URL_HOST.finditer(text):
        host = found.group(1).lower()
        why = cluster_internal(host)
        if why is None or host in seen:
            continue
        seen.add(host)
        notes.append(f"{field}: webhook {name!r} calls host {host}, which looks cluster-internal ({why}): Flagger called it from "
                     "inside the cluster, canary calls it from where canary runs, where it likely does not resolve and the hook "
                     "fails every time (a gate that never opens, a load test that never runs); make it reachable from there "
                     "(kubectl port-forward, an ingress) and point the hook at that, or run canary in the cluster")


def slug(name: str) -> str:
    """``name`` as a DNS-1123 label, canary's names for metrics and webhooks: lower case, every run of other
    characters one '-' ("404s percentage" -> "404s-percentage"), at most 63 characters; empty when nothing is left."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63].rstrip("-")


def _valid_names(items: list[dict[str, Any]], field: str, notes: list[str]) -> None:
    """Rename, with a note, the items whose Flagger name (any string) is no DNS-1123 label; refuse a new name
    that another item has (one would take the other's journal records and results)."""
    taken = {item["name"]: i for i, item in enumerate(items) if isinstance(item.get("name"), str) and slug(item["name"]) == item["name"]}
    problems = []
    for i, item in enumerate(items):
        name = item.get("name")
        if not isinstance(name, str) or not name or slug(name) == name:
            continue
        new = slug(name)
        if not new:
            continue  # nothing of it is left to name it by: the spec's own check refuses it, naming the field
        if new in taken:
            problems.append(Problem(f"{field}[{i}].name", name, f"would be written as {new!r}, the name of {field}[{taken[new]}]: rename one"))
            continue
        taken[new] = i
        item["name"] = new
        notes.append(f"{field}[{i}].name: {name!r} is no DNS-1123 label (canary's names are); written as {new!r}")
    if problems:
        raise InvalidSpec(problems, "Canary")


def _load_tester_hook(i: int, hook: Mapping[str, Any], metadata: dict[str, str], out_hook: dict[str, Any], notes: list[str]) -> str:
    """A webhook calling Flagger's load tester with ``metadata.cmd``, as the local command the load tester would
    have run. Type ``cmd`` (the default) is queued and answered at once, its outcome never reported: a rollout
    one becomes a ``background`` command, any other is run to its end and judged (noted). ``bash`` runs through
    ``bash -c`` and ``helm``/``helmv3``/``kubectl`` run that tool on the cmd's words, all answered with the
    outcome, as canary judges a cmd hook. Any other type (``concord``, ``ngrinder``) is refused. Returns the type."""
    field = f"spec.analysis.webhooks[{i}]"
    kind = metadata.pop("type", "cmd") or "cmd"
    command = metadata.pop("cmd")
    if kind == "cmd":
        out_hook["cmd"] = f"sh -c {shlex.quote(command)}"
    elif kind == "bash":
        out_hook["cmd"] = f"bash -c {shlex.quote(command)}"
    elif kind in _LOAD_TESTER_TOOLS:
        # the load tester splits these at blanks (no quotes, no shell) and runs the tool on the words
        out_hook["cmd"] = shlex.join([_LOAD_TESTER_TOOLS[kind], *command.split()])
        notes.append(f"{field}.metadata.type: {kind}: runs `{out_hook['cmd']}` where canary runs, which needs "
                     f"{_LOAD_TESTER_TOOLS[kind]} there and the cluster access the load tester had")
    else:
        raise InvalidSpec([Problem(f"{field}.metadata.type", kind,
                                   "must be cmd, bash, helm, helmv3 or kubectl: canary runs a load tester's command locally, "
                                   f"and a {kind} task is no command line (write the whole command as the hook's cmd)")], "Canary")
    if hook.get("url"):
        # by its host only: the URL may carry credentials or a token, and notes go to the terminal and the stack file
        found = _URL_HOST.search(str(hook["url"]))
        notes.append(f"{field}.url: the Flagger load tester{f' at {found.group(1)}' if found else ''} is replaced by running "
                     "metadata.cmd locally as the webhook's cmd")
    for key in ("logCmdOutput", "returnCmdOutput"):
        if key in metadata:
            notes.append(f"{field}.metadata.{key}: {metadata.pop(key)!r} left out: it set what the load tester logs or answers; "
                         "canary records a command's exit status, and the last lines of its output when it fails")
    if kind != "cmd":
        return kind
    if out_hook["type"] == "rollout":
        out_hook["background"] = True
        notes.append(f"{field}.metadata.cmd: runs in the background through each analysis interval and is stopped at its end, "
                     "its exit status recorded but not judged (background: true), as Flagger's load tester runs it without "
                     "reporting how it ended; it is started again each interval, where the load tester let a run go on "
                     "across intervals, so a load test longer than the interval is cut at the interval's end"
                     + ("; timeout left out: it bounded the call to the load tester" if "timeout" in hook else ""))
    else:
        notes.append(f"{field}.metadata.cmd: Flagger's load tester starts a cmd and answers yes at once, whatever it does; "
                     f"canary runs this {out_hook['type']} hook's command to its end within its timeout, and a non-zero exit "
                     "or the timeout is a no")
    return kind


def _inline_query(i: int, metric: Mapping[str, Any], notes: list[str]) -> None:
    """A metric's ``query``, Flagger's deprecated in-line PromQL, which canary does not take. Flagger runs it beside
    the metric's template or built-in check: there it is left out with a note; a metric it alone defines is refused."""
    field = f"spec.analysis.metrics[{i}].query"
    how = ("write it as a MetricTemplate (spec.provider.type: prometheus, spec.query: this query), pass its manifest too, "
           "and reference it from the metric with templateRef")
    if "templateRef" in metric or metric.get("name") in _FLAGGER_BUILTINS:
        notes.append(f"{field}: Flagger runs this in-line PromQL too, beside the metric's {'template' if 'templateRef' in metric else 'built-in'}; "
                     f"to keep that check, {how.replace('reference it from the metric', 'reference it from a metric of its own')}")
        return
    raise InvalidSpec([Problem(field, _shown(metric["query"]), f"is Flagger's deprecated in-line PromQL, which canary does not take: {how}")], "Canary")


def _metric_interval(i: int, metric: Mapping[str, Any], out_metric: dict[str, Any], notes: list[str]) -> None:
    """A metric without ``interval`` as Flagger queries it: a built-in over 1m, where canary's window would be the
    analysis interval (at 15s, usually empty: no data). For a template Flagger renders ``{{ interval }}`` as
    nothing (a range Prometheus refuses); its built-in window is written there too."""
    out_metric["interval"] = FLAGGER_METRIC_INTERVAL
    why = "Flagger's window for a built-in metric without one"
    if "templateRef" in metric:
        why = ("Flagger renders a MetricTemplate's {{ interval }} as nothing for a metric without one (a query Prometheus "
               f"refuses) and queries its built-in metrics over {FLAGGER_METRIC_INTERVAL}")
    notes.append(f"spec.analysis.metrics[{i}].interval: not set; written as {FLAGGER_METRIC_INTERVAL} (canary's default is "
                 f"the analysis interval): {why}")


def _deprecated_threshold(i: int, metric: Mapping[str, Any], out_metric: dict[str, Any], notes: list[str]) -> None:
    """A metric's deprecated ``threshold``, as Flagger still judges it without a ``thresholdRange``: the least
    success rate for request-success-rate, the most for any other metric (request-duration's in ms, as canary's)."""
    field, threshold = f"spec.analysis.metrics[{i}].threshold", metric["threshold"]
    if "thresholdRange" in metric:
        notes.append(f"{field}: ignored by Flagger beside thresholdRange; left out")
        return
    bound = "min" if metric.get("name") == "request-success-rate" and "templateRef" not in metric else "max"
    out_metric["thresholdRange"] = {bound: threshold}
    notes.append(f"{field}: Flagger's deprecated spelling; written as thresholdRange.{bound}: {threshold}, as Flagger judges it")


#: What a literal escapes in a regular expression (Go's regexp.QuoteMeta: RE2, which gateways match with)
_RE2_META = re.compile(r"([\\.+*?()|\[\]{}^$])")
#: Flagger's string match operators the Gateway API has no match type for, with the regex matching the same values
_UNROUTABLE = {"prefix": "^{}.*", "suffix": ".*{}$"}


def _unroutable_matches(match: Any) -> None:
    """A ``prefix`` or ``suffix`` match (Flagger's Istio-shaped StringMatch has them) is refused naming its field and
    the equivalent ``regex``: the Gateway API matches a header or query parameter only exactly or by a regular
    expression. Canary's own validation would call it an unknown field, which reads like a typo."""
    problems = []
    for i, item in enumerate(match if isinstance(match, list) else []):
        for kind, what in (("headers", "header"), ("queryParams", "query parameter")):
            given = item.get(kind) if isinstance(item, Mapping) else None
            for name, string_match in (given.items() if isinstance(given, Mapping) else ()):
                for operator, pattern in _UNROUTABLE.items():
                    if not isinstance(string_match, Mapping) or operator not in string_match:
                        continue
                    value = string_match[operator]
                    rule = (f"canary cannot route a {operator} match: the Gateway API matches a {what} only exactly or by a regular "
                            "expression (Exact, RegularExpression)")
                    if isinstance(value, str) and value:
                        regex = pattern.format(_RE2_META.sub(r"\\\1", value)).replace("'", "''")  # in YAML's single quotes
                        rule += f"; write it as regex: '{regex}', which matches the same values"
                    problems.append(Problem(f"spec.analysis.match[{i}].{kind}.{name}.{operator}", _shown(value), rule))
    if problems:
        raise InvalidSpec(problems, "Canary")


def _unset(value: Any) -> bool:
    """Whether Flagger reads a number field as not set: its Go fields drop a zero (``omitempty``)."""
    return isinstance(value, int) and not isinstance(value, bool) and value == 0


def _flagger_ignores(out: dict[str, Any], notes: list[str]) -> None:
    """Drop, with a note, what Flagger's scheduler never reads, where canary would refuse the combination:
    a zero iterations, mirrorWeight or maxWeight (unset, to Flagger); the weights of a Canary with iterations
    (Flagger's strategy is then blue/green or A/B, which steps through no weights); maxWeight beside
    stepWeights (Flagger's last step is the last of stepWeights); mirrorWeight without mirror."""
    for key in ("iterations", "mirrorWeight", "maxWeight"):
        if key in out and _unset(out[key]):
            del out[key]
            notes.append(f"spec.analysis.{key}: 0 is read by Flagger as not set; left out")
    if isinstance(out.get("iterations"), int) and out["iterations"] > 0:
        weights = [key for key in ("stepWeight", "stepWeights", "maxWeight") if key in out]
        for key in weights:
            del out[key]
        if weights:
            notes.append(f"spec.analysis.{', '.join(weights)}: ignored by Flagger beside iterations (the strategy is blue/green, "
                         "or A/B testing with match, and steps through no weights); left out")
    elif "stepWeights" in out and "maxWeight" in out and "stepWeight" not in out:
        del out["maxWeight"]
        notes.append("spec.analysis.maxWeight: ignored by Flagger beside stepWeights (the last of them is the last step); left out")
    if "mirrorWeight" in out and out.get("mirror") is not True:
        notes.append(f"spec.analysis.mirrorWeight: {out.pop('mirrorWeight')} ignored by Flagger without mirror: true; left out")


def _flagger_defaults(data: Mapping[str, Any], out: dict[str, Any], notes: list[str]) -> None:
    """What Flagger would run the Canary with where it differs from canary's reading of the same spec."""
    threshold = data.get("threshold")
    if threshold is None:
        out["threshold"] = FLAGGER_THRESHOLD
        notes.append(f"spec.analysis.threshold: not set; written as {FLAGGER_THRESHOLD}, Flagger's default "
                     "(canary's is 5): the first failed check rolls back, as in Flagger")
    elif isinstance(threshold, int | float) and not isinstance(threshold, bool) and threshold <= 0:
        out["threshold"] = FLAGGER_THRESHOLD
        notes.append(f"spec.analysis.threshold: {threshold} is run by Flagger as {FLAGGER_THRESHOLD} (a threshold below 1 is its "
                     f"default): the first failed check rolls back; written as {FLAGGER_THRESHOLD}")
    if "stepWeight" in out and out.get("maxWeight") is None and "stepWeights" not in out:
        out["maxWeight"] = FLAGGER_MAX_WEIGHT
        notes.append(f"spec.analysis.maxWeight: not set; written as {FLAGGER_MAX_WEIGHT}, Flagger's default (canary's is 50)")
    _interval(data.get("interval"), out, notes)


def _flagger_steps(out: dict[str, Any], notes: list[str]) -> None:
    """The weights Flagger steps through where canary would read the fields otherwise: Flagger adds
    ``stepWeight`` until the weight reaches its maximum (the last of ``stepWeights`` when they are set,
    else ``maxWeight``), overshooting it (20 up to 50 is 20, 40, 60), where canary stops at
    ``maxWeight``; and a ``stepWeight`` beside ``stepWeights`` wins. Written as the ``stepWeights``
    Flagger runs."""
    step, listed = out.get("stepWeight"), out.get("stepWeights")
    if "iterations" in out or "stepWeight" not in out or (listed is not None and not isinstance(listed, list)):
        return  # (stepWeights of another shape: not replaced by weights, but refused by the spec's own check)
    if _unset(step) and isinstance(listed, list) and listed:
        del out["stepWeight"]
        notes.append("spec.analysis.stepWeight: 0 is read by Flagger as not set beside stepWeights; left out")
        return
    top = min(listed[-1], 100) if isinstance(listed, list) and listed and isinstance(listed[-1], int) else out.get("maxWeight")
    if not (isinstance(step, int) and not isinstance(step, bool) and step > 0 and isinstance(top, int) and not isinstance(top, bool) and 0 < top <= 100):
        return  # not weights Flagger would run (above 100 it never reaches maxWeight): the spec's own checks name them
    weights = [min(step * k, 100) for k in range(1, -(-top // step) + 1)]
    if listed is None and weights[-1] == top:
        return  # canary steps through the same weights
    given = f"stepWeight {step} with stepWeights {listed}" if listed is not None else f"stepWeight {step} up to maxWeight {top}"
    for key in ("stepWeight", "maxWeight"):
        out.pop(key, None)
    out["stepWeights"] = weights
    notes.append(f"spec.analysis.stepWeights: {given} is stepped by Flagger through {weights} (it adds stepWeight until it "
                 f"reaches {top}, past it; canary would stop at maxWeight); written as stepWeights {weights}")


def _interval(given: Any, out: dict[str, Any], notes: list[str]) -> None:
    """The analysis interval Flagger runs: a Go duration, at least 10s; its default, 1m, for one it cannot
    parse. A string its CRD refuses and Go cannot parse either is refused (any other shape is left to the
    spec's own check)."""
    if given is None:
        return
    if not isinstance(given, str) or not _CRD_INTERVAL.match(given):
        # (a sign, a bare number: Go would read "-1m" and "+5m", but the CRD refuses them, so no such Canary runs)
        raise InvalidSpec([Problem("spec.analysis.interval", _shown(given),
                                   "must be a duration such as 30s, 1m or 1m30s: Flagger's Canary CRD refuses an interval "
                                   "that is not a string starting with a number and m or s")], "Canary")
    interval = go_duration(given)
    if interval is None:
        out["interval"] = units.format_duration(FLAGGER_DEFAULT_INTERVAL)
        notes.append(f"spec.analysis.interval: {given!r} is not a duration Flagger can parse, and Flagger runs its default, "
                     f"{out['interval']}, instead; written as {out['interval']} (set the interval you meant)")
        return
    if interval < FLAGGER_MIN_INTERVAL:
        out["interval"] = units.format_duration(FLAGGER_MIN_INTERVAL)
        notes.append(f"spec.analysis.interval: {given} is below Flagger's minimum, {out['interval']}, "
                     f"at which Flagger runs it; written as {out['interval']}")
        return
    try:
        same = units.parse_duration(given) == interval
    except ValueError:
        same = False
    if not same:
        out["interval"] = units.format_duration(interval)
        notes.append(f"spec.analysis.interval: {given} written as {out['interval']}, the duration Flagger reads it as")


def _templates(manifests: list[dict[str, Any]], notes: list[str], names: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str | None]]:
    """The templates as canary's ``metricTemplates`` (keyed by name), and each one's namespace. ``names``: the
    values of Flagger's placeholders for the Canary (``target``, ``name``, ``service``, ``ingress``)."""
    out: dict[str, Any] = {}
    namespaces: dict[str, str | None] = {}
    for manifest in manifests:
        _api(manifest)
        metadata = _mapping(manifest.get("metadata"), "metadata", "MetricTemplate")
        name = _string(metadata.get("name"), "metadata.name", "MetricTemplate")
        namespace = _string(metadata.get("namespace"), f"MetricTemplate {name}: metadata.namespace", "MetricTemplate")
        if not name:
            raise InvalidSpec([Problem("metadata.name", "nothing", "is required: Canary metrics reference the template by it")], "MetricTemplate")
        if name in out:
            # canary's metricTemplates are keyed by name alone: one would silently replace the other
            where = " and ".join(ns or "(no namespace)" for ns in (namespaces[name], namespace))
            raise InvalidSpec([Problem(f"MetricTemplate {name}", f"given twice ({where})",
                                       "must be given once: canary keys templates by name; pass only the one the Canary's templateRef names")], "MetricTemplate")
        namespaces[name] = namespace
        spec = _mapping(manifest.get("spec"), f"MetricTemplate {name}: spec", "MetricTemplate")
        provider = _mapping(spec.get("provider"), f"MetricTemplate {name}: spec.provider", "MetricTemplate")
        _unsupported(f"MetricTemplate {name}: spec", spec, {"provider", "query"}, notes)
        ptype = provider.get("type", "prometheus")
        if ptype != "prometheus":
            raise InvalidSpec([Problem(f"MetricTemplate {name}: spec.provider.type", str(ptype), "must be prometheus (the only provider canary supports)")], "MetricTemplate")
        out_provider: dict[str, Any] = {"type": "prometheus"}
        address = _string(provider.get("address"), f"MetricTemplate {name}: spec.provider.address", "MetricTemplate")
        if address:
            out_provider["address"] = address
        if provider.get("secretRef"):
            notes.append(f"MetricTemplate {name}: spec.provider.secretRef: set the token as a Pulumi secret: pulumi config set --secret --path canary:prometheus.token …")
        for key in provider:
            if key not in ("type", "address", "secretRef"):
                notes.append(f"MetricTemplate {name}: spec.provider.{key}: not supported by canary; ignored")
        query = spec.get("query", "")
        out[name] = {"provider": out_provider, "query": _flagger_query(name, query, names, notes) if isinstance(query, str) else query}
    return out, namespaces


def _flagger_query(template: str, query: str, names: Mapping[str, Any], notes: list[str]) -> str:
    """A template's query with Flagger's names written as canary's objects are named. Flagger's ``{{ target }}`` is
    the targetRef (its canary Deployment); its canary Service is ``{{ target }}-canary`` and its primary
    ``{{ target }}-primary`` (and likewise after ``{{ service }}``), which canary names ``{{ target }}`` and
    ``{{ stable }}``. ``{{ name }}`` and ``{{ ingress }}`` are written as the manifest fixes them; ``{{ route }}``,
    which depends on Flagger's mesh provider (a Knative revision), is refused. Each rewrite is noted."""
    field, app = f"MetricTemplate {template}: spec.query", names["target"]
    canary, stable = naming.deployment(app, naming.Track.CANARY), naming.deployment(app, naming.Track.STABLE)
    said: dict[str, str] = {}

    def rewrite(match: re.Match[str]) -> str:
        placeholder, suffix = match.group(1), match.group(2) or ""
        given = match.group(0)
        if placeholder == "route":
            raise InvalidSpec([Problem(field, "{{ route }}", "has no value canary can know: Flagger's depends on its mesh provider "
                                       "(under Knative, the latest revision's name); write the name it stands for")], "MetricTemplate")
        if placeholder in ("target", "service") and suffix:
            flaggers = f"{names[placeholder]}{suffix}"
            ours, what = ("{{ target }}", f"canary's canary Deployment and Service, {canary}") if suffix == "-canary" \
                else ("{{ stable }}", f"canary's stable Deployment and Service, {stable}")
            said[f"{{{{ {placeholder} }}}}{suffix}"] = f"(Flagger's {flaggers}) written as {ours}: {what}"
            return ours
        if placeholder == "target":
            said["{{ target }}"] = (f"is canary's canary Deployment, {canary}, where Flagger's was the targetRef, {app}: check what "
                                    f"it selects (a pod name pattern such as {{{{ target }}}}-[0-9a-zA-Z]+ selects the canary's pods in both)")
            return given
        if placeholder == "service":
            value = naming.apex_service(app)
            said["{{ service }}"] = (f"(Flagger's Service {names['service']}) written as {value}, canary's Service of that role "
                                     "(it selects stable's pods, as Flagger's selects the primary's)")
            return value
        value, origin = names[placeholder], ("metadata.name" if placeholder == "name" else "spec.ingressRef.name")
        try:
            units.check_dns_subdomain(value if isinstance(value, str) else "")
        except ValueError as exc:
            raise InvalidSpec([Problem(origin, _shown(value), f"{exc}: {field} uses it as {{{{ {placeholder} }}}}")], "Canary") from None
        said[f"{{{{ {placeholder} }}}}"] = f"written as {value}, its value for this Canary" + (
            "; canary routes through the Gateway, not this Ingress: the series it selects may hold none of canary's traffic"
            if placeholder == "ingress" else "")
        return value + suffix

    written = _FLAGGER_PLACEHOLDER.sub(rewrite, query)
    notes.extend(f"{field}: {placeholder} {what}" for placeholder, what in said.items())
    return written
