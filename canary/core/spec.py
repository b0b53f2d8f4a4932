"""The spec: frozen models of everything a stack's config says, and their validation.

This module owns the config surface (the README's config reference) and its
rules; it turns any invalid input into ``InvalidSpec`` listing every problem as
field, value and rule, before anything is applied. It performs no I/O: reading
a stack file or the Automation API's config map happens in the adapters, and
turning config maps into plain values in ``config``.

A stack holds one app (``canary:app``, ``canary:gateway``, ``canary:analysis``)
or several (``canary:apps``: name -> the same three keys); ``StackSpec.apps``
gives both forms as one map. ``ReleaseSpec`` is one app with the stack-wide
settings it needs (Prometheus, metric templates): what a release runs on.
"""

from __future__ import annotations

import contextlib
import enum
import math
import re
import shlex
import types
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from datetime import timedelta
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from canary.core import metrics, naming, templates, units, workload
from canary.core.re2 import beyond_re2
from canary.errors import InvalidSpec, Problem

#: Shortest analysis interval accepted: below it a rate() has too few samples to mean anything.
MIN_INTERVAL = timedelta(seconds=1)

Duration = Annotated[
    timedelta,
    BeforeValidator(units.parse_duration),
    PlainSerializer(units.format_duration, return_type=str),
]
#: a duration that may be zero ("0s": none at all)
DurationOrZero = Annotated[
    timedelta,
    BeforeValidator(lambda v: units.parse_duration(v, allow_zero=True)),
    PlainSerializer(units.format_duration, return_type=str),
]
DnsLabel = Annotated[str, AfterValidator(units.check_dns_label)]
#: an app's name names its Services too: a DNS-1035 label (a letter first), with room for ``-stable``/``-canary``
AppName = Annotated[str, AfterValidator(lambda v: units.check_dns1035_label(v, 56))]
DnsName = Annotated[str, AfterValidator(units.check_dns_subdomain)]
CopiedName = Annotated[str, AfterValidator(naming.check_copied_name)]
Hostname = Annotated[str, AfterValidator(units.check_hostname)]
Image = Annotated[str, AfterValidator(units.check_image)]
AppProtocol = Annotated[str, AfterValidator(units.check_app_protocol)]
Quantity = Annotated[str, BeforeValidator(units.check_quantity)]


def _not_bool(v: object) -> object:
    if isinstance(v, bool):  # pydantic reads true as 1: a count or a weight is never true or false
        raise ValueError("must be a number, not true or false")
    return v


#: an integer field's value: a number (or its text, as `pulumi config set` stores it), never a boolean
Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
StepWeight = Annotated[int, BeforeValidator(_not_bool), Field(ge=1, le=100)]

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _scalar_text(v: object) -> object:
    """A string field's value: `pulumi config set --path canary:app.env.WORKERS 4` stores the number 4, and
    `true` a boolean; a Kubernetes user means the text, as a manifest's YAML would be quoted. A mapping or a
    list has no text form: refused."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        # how it was written is gone (1.10 and 1.1 are one number): a version, a ratio, a header's value must be
        # exactly as written, so it is quoted rather than guessed
        # (the value is shown beside the rule, never in it: a secret's value is hidden there)
        raise ValueError("is read as a number, not as the text written (1.10 and 1.1 are one number): quote it")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, Mapping | list):
        raise ValueError(f"must be a string (a number or true/false is taken as its text), not a {'mapping' if isinstance(v, Mapping) else 'list'}")
    if v is None:
        raise ValueError("must be a string (a number or true/false is taken as its text), not empty")
    return v


#: a map's string value: a number or boolean as `pulumi config set --path` stores it is taken as its text
Text = Annotated[str, BeforeValidator(_scalar_text)]
#: a value kept exactly as given (a file's content, an environment variable): never stripped
Verbatim = Annotated[str, StringConstraints(strip_whitespace=False), BeforeValidator(_scalar_text)]
SecretText = Annotated[SecretStr, BeforeValidator(_scalar_text)]


class _Model(BaseModel):
    # Code builds models by field name (``App(create_namespace=True)``); config is read by its camelCase
    # names only (``parse_stack`` validates with by_name=False): the program reads canary:metricTemplates,
    # never canary:metric_templates, so validation must not accept the one the program ignores.
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        str_strip_whitespace=True,
    )


# --- the app ------------------------------------------------------------------------------------


class Resources(_Model):
    requests: dict[Literal["cpu", "memory", "ephemeral-storage"], Quantity] = {}
    limits: dict[Literal["cpu", "memory", "ephemeral-storage"], Quantity] = {}

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        for name, request in self.requests.items():
            if name in self.limits and units.quantity_value(request) > units.quantity_value(self.limits[name]):
                raise ValueError(f"requests.{name} {request} must not be above limits.{name} {self.limits[name]}: the API server refuses such a pod")
        return self


#: the largest value of the Kubernetes API's int32 fields
INT32_MAX = 2**31 - 1


class Probe(_Model):
    """An HTTP GET probe against the container port."""

    path: str = "/healthz"
    # (the API server's int32 fields: a larger value was refused only by the up that creates the canary)
    initial_delay_seconds: Int = Field(0, ge=0, le=INT32_MAX)
    period_seconds: Int = Field(10, ge=1, le=INT32_MAX)
    timeout_seconds: Int = Field(1, ge=1, le=INT32_MAX)
    failure_threshold: Int = Field(3, ge=1, le=INT32_MAX)

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute HTTP path starting with '/'")
        return v


class Probes(_Model):
    readiness: Probe | None = None
    liveness: Probe | None = None


class ConfigMapData(_Model):
    """A ConfigMap the app reads, declared with the app: its content is part of what a release changes."""

    data: dict[str, Verbatim] = {}


class SecretData(_Model):
    """A Secret the app reads; every value must be a Pulumi secret."""

    model_config = ConfigDict(**{**_Model.model_config, "str_strip_whitespace": False})  # a key file ends with its newline

    string_data: dict[str, SecretText] = {}


class Autoscaler(_Model):
    """A HorizontalPodAutoscaler (autoscaling/v2) for each track, as Flagger's autoscalerRef."""

    min_replicas: Int = Field(1, ge=1, le=1000)
    max_replicas: Int = Field(ge=1, le=1000)
    metrics: list[dict[str, Any]] = []
    behavior: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaler:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) must not exceed maxReplicas ({self.max_replicas})")
        return self


class DisruptionBudget(_Model):
    """A PodDisruptionBudget for the stable track."""

    min_available: int | str | None = None
    max_unavailable: int | str | None = None

    @field_validator("min_available", "max_unavailable", mode="before")
    @classmethod
    def _not_bool(cls, v: object) -> object:
        if isinstance(v, bool):  # read as 1 or 0 otherwise
            raise ValueError("must be a count of pods or a percentage such as 50%, not true or false")
        return v

    @model_validator(mode="after")
    def _one(self) -> DisruptionBudget:
        if (self.min_available is None) == (self.max_unavailable is None):
            raise ValueError("must set exactly one of minAvailable or maxUnavailable")
        for value in (self.min_available, self.max_unavailable):
            if isinstance(value, int) and not 0 <= value <= INT32_MAX:
                raise ValueError(f"{value!r} must be a count of pods (0 to {INT32_MAX}) or a percentage such as 50%")
            if isinstance(value, str) and not re.fullmatch(r"\d{1,3}%", value):
                raise ValueError(f"{value!r} must be a count or a percentage such as 50%")
            if isinstance(value, str) and int(value[:-1]) > 100:
                raise ValueError(f"{value!r} must be a percentage from 0% to 100%")
        return self


_SIMPLE_FIELDS = ("env", "resources", "probes")


class App(_Model):
    """What runs: the pod template (in Kubernetes' field names, or the simple form), its size, its ports."""

    name: AppName
    namespace: DnsLabel = "default"
    create_namespace: bool = False
    #: the main container's image: what a release changes most often
    image: Image | None = None
    replicas: Int = Field(1, ge=1, le=1000)
    #: the canary's size; unset: sized by its weight, ceil(replicas × weight / 100), at least 1
    canary_replicas: Int | None = Field(None, ge=1, le=1000)
    port: Int | None = Field(None, ge=1, le=65535, description="the container port the Services target")
    service_port: Int = Field(80, ge=1, le=65535)
    #: the ``appProtocol`` of the Services' ``http`` port: how the gateway talks to the pods (``kubernetes.io/h2c`` for
    #: gRPC and other HTTP/2 without TLS, ``kubernetes.io/ws`` for WebSocket); unset, the gateway's default (HTTP/1.1)
    app_protocol: AppProtocol | None = None
    # the simple form of a one-container pod
    resources: Resources = Resources()
    probes: Probes = Probes()
    env: dict[str, Verbatim] = {}
    # the full form: a pod template as Kubernetes spells it (checked field by field)
    template: dict[str, Any] | None = None
    #: the main container's name in the template (default: the one named like the app, else the only one)
    container: DnsLabel | None = None
    config_maps: dict[CopiedName, ConfigMapData] = {}
    secrets: dict[CopiedName, SecretData] = {}
    autoscaler: Autoscaler | None = None
    disruption_budget: DisruptionBudget | None = None

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not _ENV_NAME.match(name):
                raise ValueError(f"variable name {name!r} must consist of letters, digits, '_', '-' or '.', not starting with a digit")
        return v

    @property
    def container_port(self) -> int:
        """The port the Services target: ``port``, or the main container's (its only one, else the one named
        ``http``), else 8080. An app whose main port would be a guess is refused by ``app_problems``."""
        if self.port is not None:
            return self.port
        port = workload.declared_port(self.template, self.name, self.container) if self.template is not None else None
        return port if port is not None else 8080


class ParentRef(_Model):
    name: DnsLabel
    namespace: DnsLabel | None = None
    section_name: DnsLabel | None = None
    port: Int | None = Field(None, ge=1, le=65535)


class Gateway(_Model):
    parent_refs: list[ParentRef] = Field(min_length=1, max_length=32)
    hostnames: list[Hostname] = Field([], max_length=16)

    @model_validator(mode="after")
    def _distinct(self) -> Gateway:
        # the Gateway API refuses a repeated parentRef or hostname when the route is applied: refused here first
        refs = [f"{r.name}{f'.{r.namespace}' if r.namespace else ''}{f':{r.section_name}' if r.section_name else ''}{f' port {r.port}' if r.port else ''}"
                for r in self.parent_refs]
        for what, items in (("parentRefs", refs), ("hostnames", list(self.hostnames))):
            repeated = sorted({item for item in items if items.count(item) > 1})
            if repeated:
                raise ValueError(f"{what} must be distinct: {', '.join(repeated)} is given twice")
        return self


class PodMonitor(_Model):
    """A Prometheus Operator PodMonitor for both tracks' pods."""

    interval: Duration = timedelta(seconds=15)
    path: str = "/metrics"

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return Probe._absolute(v)


class Prometheus(_Model):
    address: str
    timeout: Duration = timedelta(seconds=10)
    token: SecretStr | None = None
    headers: dict[str, SecretText] = {}
    #: the label Prometheus puts a pod's name in: Flagger's kubernetes_pod_name, or pod (kube-prometheus-stack)
    pod_label: str = "kubernetes_pod_name"
    #: the label Prometheus puts a pod's namespace in: namespace, or kubernetes_namespace (the classic kubernetes_sd
    #: relabelling, the one that yields kubernetes_pod_name): every built-in query selects the app's namespace by it
    namespace_label: str = "namespace"
    pod_monitor: PodMonitor | None = None
    #: a Pushgateway that receives each release's metrics (canary_status, canary_weight …)
    pushgateway: str | None = None
    #: how often Prometheus scrapes the app's pods (its scrape_interval): a rate over less than two scrapes is empty,
    #: so a judge's step (each sample's stretch) is held to twice it. Unset: podMonitor.interval when a PodMonitor is
    #: declared, else 15s, Prometheus' common setting
    scrape_interval: Duration | None = None
    #: how the app's requests are counted, a template of "the requests a track's pods answered in {{ interval }}": what
    #: minRequests, the evidence of rates and a zero's measurement read. Unset: the built-in count over
    #: http_requests_total by namespaceLabel and podLabel (metrics.REQUEST_COUNT_QUERY)
    request_count: str | None = None

    @field_validator("address")
    @classmethod
    def _url(cls, v: str) -> str:
        # an address held as a Pulumi secret is read from the stack file still encrypted (validate, release --image):
        # checked once decrypted (canary up), as a webhook's URL is
        return v if v == ENCRYPTED else _check_url(v, _PROMETHEUS_AUTH)

    @field_validator("pushgateway")
    @classmethod
    def _push_url(cls, v: str | None) -> str | None:
        return None if v is None else v if v == ENCRYPTED else _check_url(v, "canary pushes to the Pushgateway without credentials")

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: timedelta) -> timedelta:
        if not timedelta(0) < v <= timedelta(minutes=5):
            raise ValueError("must be greater than 0 and at most 5m")
        return v

    @field_validator("headers")
    @classmethod
    def _header_names(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name in v:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
        return v

    @field_validator("pod_label", "namespace_label")
    @classmethod
    def _label(cls, v: str) -> str:
        if not _LABEL_NAME.match(v):
            raise ValueError("must be a Prometheus label name (letters, digits, '_', not starting with a digit)")
        return v

    @field_validator("request_count")
    @classmethod
    def _count(cls, v: str | None) -> str | None:
        if v is not None:
            templates.request_count_placeholders(v)
        return v

    @field_validator("scrape_interval")
    @classmethod
    def _one_scrape(cls, v: timedelta | None, info: ValidationInfo) -> timedelta | None:
        monitor = info.data.get("pod_monitor")
        if v is not None and monitor is not None and monitor.interval != v:
            raise ValueError(f"differs from podMonitor.interval ({units.format_duration(monitor.interval)}), which is how often "
                             "Prometheus scrapes the pods: declare one, or both alike")
        return v

    def scrape(self) -> tuple[timedelta, str]:
        """How often Prometheus scrapes the app's pods, and the field that says so."""
        if self.pod_monitor is not None:
            return self.pod_monitor.interval, "prometheus.podMonitor.interval"
        if self.scrape_interval is not None:
            return self.scrape_interval, "prometheus.scrapeInterval"
        return DEFAULT_SCRAPE_INTERVAL, f"prometheus.scrapeInterval, unset: {units.format_duration(DEFAULT_SCRAPE_INTERVAL)}"


#: how often Prometheus scrapes when the stack does not say (its common setting)
DEFAULT_SCRAPE_INTERVAL = timedelta(seconds=15)


def scrape_of(prometheus: Prometheus | None) -> tuple[timedelta, str] | None:
    """How often the app's pods are scraped, and the field that says so (the default without a ``prometheus``);
    None: unknown, ``prometheus`` being a secret as a whole, read only once decrypted."""
    if prometheus is None:
        return DEFAULT_SCRAPE_INTERVAL, f"prometheus.scrapeInterval, unset: {units.format_duration(DEFAULT_SCRAPE_INTERVAL)}"
    # a Prometheus no field of which was given is the stand-in for one that is a secret as a whole
    return prometheus.scrape() if prometheus.model_fields_set else None


#: Where a secret value read from a file (still encrypted) stands in the spec.
ENCRYPTED = "<encrypted>"


#: the rule of a URL with user info: its value is never shown (it holds a password)
CREDENTIALS_IN_URL = "must not carry credentials in the URL"


#: where Prometheus's credentials go instead of its URL
_PROMETHEUS_AUTH = "use prometheus.token or prometheus.headers"


def _check_url(v: str, credentials: str = "") -> str:
    """An http:// or https:// URL; with ``credentials`` (where they go instead), one without user info. Without it, user
    info is taken (a webhook's ``user:password@``, sent as basic auth, never shown): it runs to the last ``@`` before
    the host, as an HTTP client reads it."""
    if credentials and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]*@", v):
        raise ValueError(f"{CREDENTIALS_IN_URL} ({credentials})")
    port = re.match(r"^https?://(?:[^\s/?#]*@)?[^\s/:?#@]+(:(\d{1,5}))?(/[^\s]*)?$", v)
    if not port:
        raise ValueError("must be an http:// or https:// URL")
    if port.group(2) is not None and not 1 <= int(port.group(2)) <= 65535:
        raise ValueError(f"must be an http:// or https:// URL; its port {port.group(2)} is not one (1-65535)")
    return v


#: a URL's scheme (if any: ``prometheus:9090`` is a common slip) and host (a name or a bracketed address) and port, past
#: any user info; what follows them (a path, a query, a fragment) starts with ``/``, ``?`` or ``#``
_ORIGIN = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)?(?:[^/?#]*@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)(:\d{1,5})?(?=[/?#]|$)")


def _origin(v: str) -> str | None:
    """``v``'s scheme, host and port only, to show a refused URL by: its user info, path, query and fragment may hold
    a password or a token. None when they cannot be told apart (a host with odd characters, a port that is no
    number): it may be ``user:password`` without its ``@``."""
    found = _ORIGIN.match(v)
    return "".join(part for part in found.groups() if part) if found else None


# --- metrics ------------------------------------------------------------------------------------


class Provider(_Model):
    type: Literal["prometheus"] = "prometheus"
    address: str | None = None

    @field_validator("address")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else v if v == ENCRYPTED else _check_url(v, _PROMETHEUS_AUTH)


class MetricTemplate(_Model):
    provider: Provider = Provider()
    query: str

    @field_validator("query")
    @classmethod
    def _query(cls, v: str) -> str:
        templates.placeholders(v)
        return v


class ThresholdRange(_Model):
    min: Float | None = None
    max: Float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> ThresholdRange:
        for name in ("min", "max"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number")
        if self.min is None and self.max is None:
            raise ValueError("must set min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) must not be greater than max ({self.max:g})")
        return self

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def covers(self, other: ThresholdRange) -> bool:
        """Every value ``other`` lets pass, this range lets pass too."""
        low_ok = self.min is None or (other.min is not None and other.min >= self.min)
        high_ok = self.max is None or (other.max is not None and other.max <= self.max)
        return low_ok and high_ok

    def __str__(self) -> str:
        if self.min is not None and self.max is not None:
            return f"[{self.min:g}, {self.max:g}]"
        return f"max {self.max:g}" if self.max is not None else f"min {self.min:g}"


class TemplateRef(_Model):
    name: DnsLabel
    namespace: DnsLabel | None = None


class NoDataPolicy(enum.StrEnum):
    """What a metric with no data means for the tick."""

    FAIL = "fail"  # counts as a failed check (the default: never promote on missing data)
    HOLD = "hold"  # neither passes nor fails, for at most analysis.holdLimit
    PASS = "pass"  # counts as a pass (only for metrics that may legitimately be empty)


class Evidence(enum.StrEnum):
    """Whether a metric is a share of the canary's requests, judged on how many there were."""

    AUTO = "auto"  # built-in success/error rates; ratios (a division) over the request counter with a 0..100 range selecting what the count does
    RATE = "rate"
    NONE = "none"


class CompareBy(enum.StrEnum):
    DIFFERENCE = "difference"  # canary - stable
    RATIO = "ratio"  # canary / stable


class Compare(_Model):
    """Judge the canary against stable in the same window: the range applies to the difference or the ratio."""

    to: Literal["stable"] = "stable"
    by: CompareBy = CompareBy.DIFFERENCE
    threshold_range: ThresholdRange


class Direction(enum.StrEnum):
    INCREASE = "increase"  # only a canary higher than stable fails (latency, errors)
    DECREASE = "decrease"  # only a canary lower than stable fails (throughput, success rate)
    EITHER = "either"


class Judge(_Model):
    """A Mann–Whitney comparison of the canary's and stable's samples over the window (Kayenta's)."""

    test: Literal["mann-whitney"] = "mann-whitney"
    confidence: Float = Field(0.98, gt=0.5, lt=1)
    #: the confidence interval of the shift must clear tolerance × |shift| (Kayenta's 0.25); below 1,
    #: since the interval's near end never lies beyond the shift itself
    tolerance: Float = Field(0.25, ge=0)
    direction: Direction = Direction.INCREASE
    #: the smallest ratio of means (canary / stable) that counts as worse; 1.0 = any shift in that direction
    allowed_increase: Float = Field(1.0, ge=1, allow_inf_nan=False)
    allowed_decrease: Float = Field(1.0, gt=0, le=1)
    #: the spacing of the samples taken from query_range, and the stretch each is over (the judge's queries are rendered
    #: with ``{{ interval }}`` = step, so that no two samples share a scrape: the test takes them as independent). At
    #: least twice the scrape interval: a rate over fewer than two scrapes is empty. Unset: twice the scrape interval
    #: (``step_at``), the shortest that holds, so that ``judge: {}`` is valid at any scrape
    step: Duration | None = None
    #: fewer samples than this on either side: no verdict (no data)
    #: (at most the points Prometheus returns for one series, MAX_RANGE_POINTS: more could never be read)
    min_samples: Int = Field(10, ge=3, le=11000)

    @field_validator("tolerance")
    @classmethod
    def _tolerance(cls, v: float) -> float:
        if v >= 1:
            raise ValueError("must be below 1: the shift's interval must clear tolerance × |shift|, and its near end never "
                             "lies beyond the shift itself, so at 1 or above no shift is ever found higher or lower")
        return v

    def step_at(self, scrape: timedelta) -> timedelta:
        """The step the judge samples at when Prometheus scrapes every ``scrape``: its own, else twice that."""
        return self.step if self.step is not None else 2 * scrape


class Metric(_Model):
    name: DnsLabel
    template_ref: TemplateRef | None = None
    threshold_range: ThresholdRange | None = None
    #: outside thresholdRange but inside this band: inconclusive, the release waits for a person
    inconclusive_range: ThresholdRange | None = None
    interval: Duration | None = None
    template_variables: dict[str, Text] = {}
    on_no_data: NoDataPolicy = NoDataPolicy.FAIL
    #: whether the metric is a share of the canary's requests (``auto``: a built-in rate, or a template that divides).
    #: A template's share is a fraction when it divides, is not scaled to percent (``* 100``, ``100 -``) and no bound
    #: is above 1; else a percentage (``rate`` on a template without a division: a recording rule's percentage)
    evidence: Evidence = Evidence.AUTO
    compare: Compare | None = None
    judge: Judge | None = None
    #: evaluated and recorded, never acted on
    dry_run: bool = False
    #: the metric's weight in the release score (analysis.score)
    weight: Float = Field(1.0, gt=0, le=100)
    #: with analysis.score: a failure of this metric fails the tick whatever the score
    critical: bool = False

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and v < MIN_INTERVAL:
            raise ValueError(f"must be at least {units.format_duration(MIN_INTERVAL)}")
        return v

    @model_validator(mode="after")
    def _judged(self) -> Metric:
        if self.threshold_range is None and self.compare is None and self.judge is None:
            raise ValueError("must set thresholdRange, compare or judge: how the metric is judged")
        if self.critical and self.dry_run:
            raise ValueError("is critical and dryRun: a dry-run metric is never acted on, so its failure fails nothing")
        if self.inconclusive_range is not None:
            if self.threshold_range is None:
                raise ValueError("inconclusiveRange needs a thresholdRange to widen")
            if not self.inconclusive_range.covers(self.threshold_range):
                raise ValueError(f"inconclusiveRange {self.inconclusive_range} must contain thresholdRange {self.threshold_range}")
        return self


# --- webhooks and alerts ------------------------------------------------------------------------


class WebhookType(enum.StrEnum):
    CONFIRM_ROLLOUT = "confirm-rollout"
    PRE_ROLLOUT = "pre-rollout"
    ROLLOUT = "rollout"
    CONFIRM_TRAFFIC_INCREASE = "confirm-traffic-increase"
    CONFIRM_PROMOTION = "confirm-promotion"
    POST_ROLLOUT = "post-rollout"
    ROLLBACK = "rollback"
    EVENT = "event"


class Webhook(_Model):
    name: DnsLabel
    type: WebhookType
    url: str | None = None
    cmd: str | None = None
    timeout: Duration = timedelta(seconds=60)
    metadata: dict[str, Text] = {}
    #: a rollout command that generates load, as a Flagger load tester runs one: started when the interval
    #: starts, stopped when it ends, its exit status recorded but never judged (timeout is not used)
    background: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        # a URL held as a Pulumi secret is read from the stack file still encrypted (validate): checked once decrypted
        return None if v is None else v if v == ENCRYPTED else _check_url(v)

    @field_validator("cmd")
    @classmethod
    def _cmd(cls, v: str | None) -> str | None:
        # split as it will be run (like a shell command line, without a shell): an unbalanced quote
        # would otherwise fail every call of the hook, each a failed check
        if v is not None:
            try:
                words = shlex.split(v)
            except ValueError as exc:
                raise ValueError(f"cannot be split into a command line: {exc}") from None
            if not words or not words[0]:
                raise ValueError("must name a command")
            if re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                # no shell runs it: NAME=value would be taken for the program's name (and said, value and all, as such)
                raise ValueError("must begin with the command, not a variable assignment (NAME=…): it runs without a shell; "
                                 "use `env NAME=… command`, or `sh -c '…'`")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: timedelta) -> timedelta:
        if not timedelta(0) < v <= timedelta(hours=1):
            raise ValueError("must be greater than 0 and at most 1h")
        return v

    @model_validator(mode="after")
    def _target(self) -> Webhook:
        if bool(self.url) == bool(self.cmd):
            raise ValueError("must set exactly one of url (HTTP POST) or cmd (local command)")
        if self.background and (self.type is not WebhookType.ROLLOUT or not self.cmd):
            # only a rollout hook has an interval to run through; any other hook's answer is what it is for
            raise ValueError("background needs a rollout hook with a cmd (a load generator run through each interval)")
        return self


class Severity(enum.StrEnum):
    INFO = "info"
    WARN = "warn"
    ERROR = "error"


class AlertType(enum.StrEnum):
    SLACK = "slack"
    MSTEAMS = "msteams"
    DISCORD = "discord"


class Alert(_Model):
    """A chat notification (Flagger's alert providers); the URL must be a Pulumi secret."""

    name: DnsLabel
    type: AlertType
    url: SecretStr
    #: the lowest severity sent: info sends everything, warn warnings and errors, error errors only
    severity: Severity = Severity.INFO
    channel: str | None = None
    username: str = "canary"
    timeout: Duration = timedelta(seconds=5)


# --- strategies ---------------------------------------------------------------------------------


class StringMatch(_Model):
    """Flagger's string match, as the Gateway API can express it: exact or a regular expression."""

    #: matched as given: a query parameter's value may begin or end with a space, and so may a pattern
    exact: Verbatim | None = None
    regex: Verbatim | None = None

    @model_validator(mode="after")
    def _one(self) -> StringMatch:
        if (self.exact is None) == (self.regex is None):
            raise ValueError("must set exactly one of exact or regex (the Gateway API has no prefix or suffix match)")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} does not compile: {exc}") from exc
            except RecursionError:
                raise ValueError(f"regex {self.regex!r} nests groups too deeply to be checked") from None
            beyond = beyond_re2(self.regex)
            if beyond:
                raise ValueError(f"regex {self.regex!r} uses {beyond}")
        return self


class HTTPMatch(_Model):
    """One A/B condition: every header and query parameter given must match (Flagger's analysis.match)."""

    headers: dict[str, StringMatch] = {}
    query_params: dict[str, StringMatch] = {}

    @model_validator(mode="after")
    def _something(self) -> HTTPMatch:
        if not self.headers and not self.query_params:
            raise ValueError("must match on at least one header or query parameter")
        for kind, matches, longest in (("header", self.headers, 4096), ("query parameter", self.query_params, 1024)):
            # the Gateway API's limits, which the API server enforces only at the `up`
            if len(matches) > 16:
                raise ValueError(f"has {len(matches)} {kind}s: the Gateway API allows at most 16 in one match")
            for name, match in matches.items():
                if not _HEADER_NAME.match(name) or len(name) > 256:
                    raise ValueError(f"{kind} name {name!r} must be 1 to 256 letters, digits or !#$%&'*+-.^_`|~ (the Gateway API's rule)")
                value = match.exact if match.exact is not None else match.regex
                if not value or len(value) > longest:
                    raise ValueError(f"{kind} {name}: its {'exact' if match.exact is not None else 'regex'} value must be 1 to {longest} "
                                     f"characters (the Gateway API's rule), not {len(value or '')}")
        seen: dict[str, str] = {}
        for name, match in self.headers.items():
            if name.lower() in seen:
                # header names are case-insensitive, and a gateway considers only the first of two equal names
                raise ValueError(f"headers {seen[name.lower()]!r} and {name!r} are the same header (names are case-insensitive): "
                                 "a gateway would ignore the second")
            seen[name.lower()] = name
            if match.exact is not None and match.exact != match.exact.strip(" \t"):
                raise ValueError(f"header {name} exact {match.exact!r} begins or ends with whitespace, which HTTP strips from a header's "
                                 "value: it would never match")
        return self


class SessionAffinity(_Model):
    """A client routed to the canary keeps a cookie and stays on it for the release (Flagger's sessionAffinity)."""

    cookie_name: str = "canary-affinity"
    max_age: Duration = timedelta(days=1)

    @field_validator("max_age")
    @classmethod
    def _whole_seconds(cls, v: timedelta) -> timedelta:
        # the cookie's Max-Age is whole seconds: 500ms would be Max-Age=0, a cookie that expires at once
        if v.total_seconds() != int(v.total_seconds()):
            raise ValueError("must be whole seconds (the cookie's Max-Age), such as 30s or 1h")
        return v

    @field_validator("cookie_name")
    @classmethod
    def _cookie(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", v):
            raise ValueError("must be a cookie name (letters, digits and !#$%&'*+.^_`|~-)")
        return v


class Strategy(enum.StrEnum):
    CANARY = "canary"  # weighted steps
    AB = "ab"  # requests matching analysis.match go to the canary, for iterations intervals
    BLUE_GREEN = "blueGreen"  # the canary at full size without user traffic for iterations intervals, then all at once


class Score(_Model):
    """The release score (Kayenta's): 100 × the weight of passing metrics over all judged ones."""

    #: above 0: at 0 every score passes (only a critical metric or a rollout webhook could still fail a tick)
    pass_: Float = Field(95, gt=0, le=100, alias="pass")
    marginal: Float = Field(75, ge=0, le=100)

    @model_validator(mode="after")
    def _order(self) -> Score:
        if self.marginal > self.pass_:
            raise ValueError(f"marginal ({self.marginal:g}) must not exceed pass ({self.pass_:g})")
        return self


class Analysis(_Model):
    #: unset: Flagger's rule (match with iterations: A/B; iterations alone: blue/green; weights: canary)
    strategy: Strategy | None = None
    interval: Duration = timedelta(minutes=1)
    #: failed checks in a row before rollback (the seed's count)
    threshold: Int = Field(5, ge=1, le=1000)
    #: failed checks in all before rollback (Flagger's count); default: threshold
    failure_limit: Int | None = Field(None, ge=1, le=1000)
    step_weight: StepWeight | None = None
    max_weight: StepWeight = 50
    step_weights: list[StepWeight] | None = None
    iterations: Int | None = Field(None, ge=1, le=1000)
    match: list[HTTPMatch] | None = None
    mirror: bool = False
    mirror_weight: Int | None = Field(None, ge=1, le=100)
    session_affinity: SessionAffinity | None = None
    skip_analysis: bool = False
    min_requests: Int | None = Field(None, ge=1)
    #: after each shift, no data does not count until the canary has samples or this passed
    warmup: DurationOrZero = timedelta(seconds=30)
    #: how long no data (onNoData: hold) or too little evidence may hold a step; then it fails. Default 10 intervals
    hold_limit: Duration | None = None
    #: one-sided confidence of the evidence bound on rate metrics
    confidence: Float = Field(0.95, ge=0.5, le=0.9999)
    score: Score | None = None
    #: how long an inconclusive release waits for canary promote or abort before it rolls back
    decision_timeout: Duration = timedelta(hours=1)
    metrics: list[Metric] = []
    webhooks: list[Webhook] = []
    #: the ``name`` webhooks are sent (default: the app's): a Flagger Canary's name, which Flagger's webhooks send and its
    #: load tester keys gates on (``<name>.<namespace>``), where it differs from its Deployment's. A Kubernetes object's
    #: name, as a Canary's is
    webhook_name: DnsName | None = None
    alerts: list[Alert] = []

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: timedelta) -> timedelta:
        if v < MIN_INTERVAL:
            raise ValueError(f"must be at least {units.format_duration(MIN_INTERVAL)}")
        return v

    @field_validator("match")
    @classmethod
    def _few_enough(cls, v: list[HTTPMatch] | None) -> list[HTTPMatch] | None:
        if v is not None and len(v) > 64:  # every entry is one match of the route's A/B rule
            raise ValueError(f"has {len(v)} entries: the Gateway API allows at most 64 matches in one rule")
        return v

    @field_validator("step_weights")
    @classmethod
    def _increasing(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v:
                raise ValueError("must list at least one weight")
            for a, b in zip(v, v[1:], strict=False):
                if b <= a:
                    raise ValueError(f"must be strictly increasing ({a} is followed by {b})")
        return v

    @model_validator(mode="after")
    def _steps(self) -> Analysis:
        weighted = {"step_weight", "max_weight", "step_weights"} & self.model_fields_set
        if self.strategy is Strategy.CANARY and self.iterations is not None:
            raise ValueError("strategy canary steps through weights: set stepWeight or stepWeights, not iterations")
        if self.strategy in (Strategy.AB, Strategy.BLUE_GREEN) and self.iterations is None:
            raise ValueError(f"strategy {self.strategy} needs iterations: how many intervals are analysed before the switch")
        if self.strategy is Strategy.AB and not self.match:
            raise ValueError("strategy ab needs match: the requests sent to the canary")
        if self.iterations is not None:
            if weighted:
                raise ValueError("set iterations (A/B testing or blue/green) or weights (stepWeight, maxWeight, stepWeights), not both")
            if self.session_affinity is not None:
                raise ValueError("sessionAffinity needs weighted steps (stepWeight or stepWeights), not iterations")
            return self
        if self.match is not None:
            raise ValueError("match (A/B testing) needs iterations: how many intervals the matched requests are analysed")
        if self.step_weights is not None:
            if {"step_weight", "max_weight"} & self.model_fields_set:
                raise ValueError("set either stepWeights or stepWeight/maxWeight, not both")
            return self
        if self.step_weight is None:
            raise ValueError("must set stepWeight (with maxWeight), stepWeights, or iterations")
        if self.step_weight > self.max_weight:
            raise ValueError(f"stepWeight ({self.step_weight}) must not exceed maxWeight ({self.max_weight})")
        return self

    @property
    def kind(self) -> Strategy:
        """The strategy: as set, else Flagger's rule (match with iterations is A/B testing,
        iterations alone blue/green, weights a canary)."""
        if self.strategy is not None:
            return self.strategy
        if self.iterations is None:
            return Strategy.CANARY
        return Strategy.AB if self.match else Strategy.BLUE_GREEN

    @property
    def failures_allowed(self) -> int:
        """Failed checks in all that roll back: failureLimit, or threshold."""
        return self.failure_limit if self.failure_limit is not None else self.threshold

    @property
    def hold_bound(self) -> timedelta:
        return self.hold_limit if self.hold_limit is not None else self.interval * 10


# --- the stack ----------------------------------------------------------------------------------


class Rollout(enum.StrEnum):
    CHECKED = "checked"  # plain `pulumi up` refuses a workload change: releases go through canary
    DIRECT = "direct"  # plain `pulumi up` rolls workload changes straight onto stable (emergencies)


class AppConfig(_Model):
    """One app's keys: what runs (app; absent when a program's component declares it), its route, its analysis."""

    app: App | None = None
    gateway: Gateway | None = None
    analysis: Analysis
    #: the earlier name of app.image
    stable_image: Image | None = None


class StackSpec(_Model):
    """Everything one stack's ``canary:`` config says."""

    app: App | None = None
    gateway: Gateway | None = None
    analysis: Analysis | None = None
    stable_image: Image | None = None
    apps: dict[AppName, AppConfig] = {}
    prometheus: Prometheus | None = None
    metric_templates: dict[DnsLabel, MetricTemplate] = {}
    rollout: Rollout = Rollout.CHECKED
    #: written by canary into a release's config file only: what each track runs (see ARCHITECTURE.md)
    release: dict[str, Any] | None = None
    # set by versions before 0.2, refused with how to move on
    canary_image: Any = None
    canary_weight: Any = None

    def app_configs(self) -> dict[str, AppConfig]:
        """Every app of the stack by name, whichever form the config uses."""
        if self.apps:
            return dict(self.apps)
        if self.analysis is None:
            return {}
        name = self.app.name if self.app is not None else "app"
        return {name: AppConfig(app=self.app, gateway=self.gateway, analysis=self.analysis, stable_image=self.stable_image)}

    def names_no_app(self) -> bool:
        """A top-level analysis without ``app``: it judges every app the program's components declare."""
        return self.app is None and not self.apps and self.analysis is not None

    def fields(self, name: str) -> str:
        """Where app ``name``'s settings stand in the stack config, as a problem's field begins: ``apps.<name>.``
        in a stack of apps, nothing in the single-app form."""
        return f"apps.{name}." if self.apps else ""

    def declares(self, name: str) -> bool:
        """Whether the config gives app ``name`` an analysis (its own, or a top-level one naming no app)."""
        return name in self.app_configs() or self.names_no_app()

    def release_spec(self, name: str, app: App | None = None, gateway: Gateway | None = None) -> ReleaseSpec:
        """One app with the stack-wide settings; ``app``/``gateway`` are a program's component's, refused where
        the config declares them too."""
        if not self.declares(name):
            raise InvalidSpec([Problem(f"apps.{name}", "nothing", "is not in the stack config: it has no analysis")], "stack")
        configs = self.app_configs()
        if name not in configs:
            # a top-level analysis with the app declared by the program's component: it is that app's
            configs = {name: next(iter(configs.values()))}
        config = configs[name]
        # both: the stack config's would silently win, and the release judge another app than the program deploys
        twice = [key for key, ours, theirs in (("app", config.app, app), ("gateway", config.gateway, gateway)) if ours is not None and theirs is not None]
        if twice:
            raise InvalidSpec([Problem(f"{self.fields(name)}{key}", "set", f"declares {name}'s {key}, which a component of the program declares "
                                       "too: keep one (remove it from the stack config, or the app from the program)") for key in twice], "stack")
        resolved = config.app or app
        if resolved is None or (config.gateway or gateway) is None:
            raise InvalidSpec([Problem(f"apps.{name}", "no app", "is declared neither in the stack config nor by a component of the program")], "stack")
        if config.stable_image and not resolved.image:
            resolved = resolved.model_copy(update={"image": config.stable_image})
        return ReleaseSpec(app=resolved, gateway=config.gateway or gateway, analysis=config.analysis,  # type: ignore[arg-type]
                           prometheus=self.prometheus, metric_templates=self.metric_templates, rollout=self.rollout)


class ReleaseSpec(_Model):
    """One app and everything a release of it needs: what runs, its route, how it is judged."""

    app: App
    gateway: Gateway
    analysis: Analysis
    prometheus: Prometheus | None = None
    metric_templates: dict[DnsLabel, MetricTemplate] = {}
    rollout: Rollout = Rollout.CHECKED

    @property
    def target(self) -> str:
        """The canary Deployment's name: ``{{ target }}`` in metric templates."""
        return naming.deployment(self.app.name, naming.Track.CANARY)

    @property
    def stable(self) -> str:
        """The stable Deployment's name: ``{{ stable }}`` (and Flagger's ``{{ primary }}``)."""
        return naming.deployment(self.app.name, naming.Track.STABLE)

    def judge_step(self, judge: Judge) -> timedelta:
        """The step ``judge`` samples at: its own, else twice the stack's scrape interval (a release's Prometheus is
        always read, decrypted; the default stands in for one that is not)."""
        scrape = scrape_of(self.prometheus)
        return judge.step_at(scrape[0] if scrape is not None else DEFAULT_SCRAPE_INTERVAL)


#: The top-level stack config keys, in the config namespace.
CONFIG_KEYS = tuple(StackSpec.model_fields[name].alias or name for name in StackSpec.model_fields)


def metric_query(spec: ReleaseSpec, metric: Metric) -> tuple[str, str | None]:
    """The template of a metric and the provider address its template names (if any)."""
    if metric.template_ref is None:
        return metrics.BUILTIN_METRICS[metric.name].query, None
    template = spec.metric_templates[metric.template_ref.name]
    return template.query, template.provider.address


# --- cross-field rules --------------------------------------------------------------------------


def app_problems(app: App, field: str, template_field: str | None = None) -> list[Problem]:
    """What is wrong with ``app`` beyond its fields' own rules, each problem named under ``field``; its
    template's under ``template_field`` (default ``<field>.template``: a component takes it apart)."""
    problems: list[Problem] = []
    at = template_field or f"{field}.template"
    if app.template is None and app.container is not None:
        problems.append(Problem(f"{field}.container", app.container,
                                f"names the main container of template: set it only with template (the simple form's one container is named {app.name})"))
    if app.template is not None:
        problems += workload.check(app.template, at)
        problems += _newer(workload.probe_port_problems(app.template, at))
        simple = [name for name in _SIMPLE_FIELDS if name in app.model_fields_set]
        if simple:
            problems.append(Problem(f"{field}.{simple[0]}", "set", "describe the pod either with template or with env/resources/probes, not both"))
        try:
            main = workload.main_container(app.template, app.name, app.container)
        except workload.AmbiguousContainer as exc:
            problems.append(Problem(f"{field}.container", "nothing", (
                f"is required: the template has several containers ({', '.join(exc.names)}) and none is named like the app ({app.name}): "
                "set it to the app's own container, the one whose image image sets and whose port the Services target")))
        except KeyError as exc:
            where = f"{field}.container" if app.container else f"{at}.spec.containers"
            problems.append(Problem(where, str(exc), "names no container of the template" if app.container else "must list at least one container"))
        else:
            if app.port is None:
                try:
                    declared = workload.main_port(main)
                    if declared is not None and not 1 <= declared <= 65535:
                        # the Services would target it: the API server refuses the Service at the up, stable already made
                        problems.append(Problem(f"{field}.port", "nothing", f"is required: the main container {main.get('name')} declares port "
                                                f"{declared}, which is no TCP port (1 to 65535)"))
                except workload.AmbiguousPort as exc:
                    problems.append(Problem(f"{field}.port", "nothing", (
                        f"is required: the main container {main.get('name')} lists several ports ({', '.join(exc.ports)}) and none is named "
                        "http: set it to the container port the Services target")))
            if not main.get("image") and app.image is None:
                problems.append(Problem(f"{field}.image", "nothing", f"is required: the template's main container {main.get('name')} has no image"))
            elif main.get("image") and app.image is None:
                try:
                    units.check_image(str(main["image"]))
                except ValueError as exc:
                    problems.append(Problem(f"{at}: main container image", str(main["image"]), str(exc)))
        refs = workload.referenced(app.template)
        for kind, declared in (("configMap", app.config_maps), ("secret", app.secrets)):
            for name in declared:
                if name not in refs[kind]:
                    problems.append(Problem(f"{field}.{kind}s.{name}", name, f"is declared but the template reads no {kind} of that name"))
    else:
        # the simple form's pod mounts nothing: its copies would be made, read by no pod, and their edits never released
        for kind, declared in (("configMap", app.config_maps), ("secret", app.secrets)):
            for name in declared:
                problems.append(Problem(f"{field}.{kind}s.{name}", name, f"needs a template that reads it (a volume, envFrom or "
                                        f"env[].valueFrom): the simple form (image, env, resources, probes) reads no {kind}"))
    if app.autoscaler is not None:
        for i, metric in enumerate(app.autoscaler.metrics):
            problems += workload.check(metric, f"{field}.autoscaler.metrics[{i}]", "V2MetricSpec")
        if app.autoscaler.behavior is not None:
            problems += workload.check(app.autoscaler.behavior, f"{field}.autoscaler.behavior", "V2HorizontalPodAutoscalerBehavior")
        if "replicas" in app.model_fields_set:
            problems.append(Problem(f"{field}.replicas", str(app.replicas), "must not be set with an autoscaler: it owns the replica count"))
    return problems


#: Prometheus answers a range query with at most this many points per series
MAX_RANGE_POINTS = 11000


#: while set (a resume reading the snapshot of a release in flight, a release's own `up` reading its config), what the
#: rules newer than some releases in flight find is noted here, not refused: such a rule must not keep a release that
#: began before it from going on, nor its rollback from completing. They are a judge's step against the scrape interval
#: (its samples have no data, and onNoData decides) and a probe or lifecycle hook on a port name its container does not
#: declare (the API server took it, the stable may well run with it)
_NEWER_RULES_NOTED: ContextVar[list[Problem] | None] = ContextVar("newer_rules_noted", default=None)


@contextlib.contextmanager
def newer_rules_noted() -> Iterator[list[Problem]]:
    """Within it, the problems the rules newer than a release in flight find are listed in what it yields instead of
    refusing the config."""
    noted: list[Problem] = []
    token = _NEWER_RULES_NOTED.set(noted)
    try:
        yield noted
    finally:
        _NEWER_RULES_NOTED.reset(token)


def _newer(problems: list[Problem]) -> list[Problem]:
    """``problems`` of a rule newer than some releases in flight: noted while ``newer_rules_noted`` is on, else refused."""
    noted = _NEWER_RULES_NOTED.get()
    if noted is None:
        return problems
    noted += problems
    return []


def _judge_problems(judge: Judge, window: timedelta, where: str, window_field: str, scrape: tuple[timedelta, str] | None) -> list[Problem]:
    """A judge whose step is shorter than two scrapes reads empty samples; one whose window holds fewer samples than
    it needs never reaches a verdict; one with more points than Prometheus returns is refused at every tick.
    ``scrape`` None: unknown here (``prometheus`` a secret as a whole, checked once decrypted), and so is an unset step."""
    if judge.step is None and scrape is None:
        return []  # twice a scrape interval that only the secret holds
    least = 2 * scrape[0] if scrape is not None else timedelta(0)
    effective = judge.step_at(least / 2)
    step = effective.total_seconds()
    shown = units.format_duration(effective) if judge.step is not None else f"unset: {units.format_duration(effective)}, twice the scrape interval"
    span = f"{units.format_duration(window)} ({window_field})"
    if scrape is not None and effective < least:
        # each sample is a rate over one step (its own stretch, sharing no scrape with the next): over one scrape or
        # less, a rate has one point at most and is empty
        rule = (f"is shorter than twice the scrape interval, {units.format_duration(scrape[0])} ({scrape[1]}): each of the judge's "
                f"samples is a rate over one step, and a rate over fewer than two scrapes is empty; use a step of at least "
                f"{units.format_duration(least)}")
        points = math.floor(window.total_seconds() / least.total_seconds() + 1e-9) + 1
        if points < judge.min_samples and least * (judge.min_samples - 1) <= units.MAX_DURATION:
            longer = least * (judge.min_samples - 1)
            rule += (f", and then {window_field} (the judge's window, now {units.format_duration(window)}) of at least "
                     f"{units.format_duration(longer)} for judge.minSamples {judge.min_samples}" + (f" (or minSamples of at most {points})" if points >= 3 else ""))
        return [Problem(f"{where}.judge.step", shown, rule)]
    points = math.floor(window.total_seconds() / step + 1e-9) + 1
    if points < judge.min_samples:
        # only what can be followed: a step is at least twice the scrape interval, a window at most MAX_DURATION, minSamples at least 3
        most_ms = math.floor(window.total_seconds() / (judge.min_samples - 1) * 1000)
        longer = timedelta(seconds=step * (judge.min_samples - 1))
        ways = ([f"{window_field} (the judge's window) of at least {units.format_duration(longer)}"] if longer <= units.MAX_DURATION else []) + \
               ([f"a step of at most {units.format_duration(timedelta(milliseconds=most_ms))}"] if timedelta(milliseconds=most_ms) >= least else []) + \
               ([f"minSamples of at most {points}"] if points >= 3 else [])
        return [Problem(f"{where}.judge.step", shown, f"gives {points} samples over the window of {span}, fewer than judge.minSamples "
                        f"{judge.min_samples}: the judge could never reach a verdict; use {' or '.join(ways)}")]
    if points > MAX_RANGE_POINTS:
        least_step = units.format_duration(timedelta(seconds=math.ceil(window.total_seconds() / (MAX_RANGE_POINTS - 1))))
        return [Problem(f"{where}.judge.step", shown, f"gives {points} samples over the window of {span}, more than the "
                        f"{MAX_RANGE_POINTS} points Prometheus returns: use a step of at least {least_step}")]
    return []


def _analysis_problems(analysis: Analysis, field: str, metric_templates: Mapping[str, MetricTemplate], prometheus: Prometheus | None) -> list[Problem]:
    scrape = scrape_of(prometheus)
    problems: list[Problem] = []
    seen: set[str] = set()
    for i, metric in enumerate(analysis.metrics):
        where = f"{field}.metrics[{i}]"
        if metric.name in seen:
            problems.append(Problem(f"{where}.name", metric.name, "must be unique among analysis.metrics"))
        seen.add(metric.name)
        rate = metric.evidence is Evidence.RATE or (metric.evidence is Evidence.AUTO and metric.template_ref is None
                                                     and metric.name in metrics.BUILTIN_METRICS and metrics.BUILTIN_METRICS[metric.name].rate)
        if rate and metric.threshold_range is None and metric.compare is None:
            problems.append(Problem(where, f"{metric.name} judged by judge alone",
                                    "is a share of the canary's requests, which passes only on enough requests (evidence), and judge "
                                    "alone gives no range to hold its bound against: add thresholdRange or compare, or set evidence: none"))
        if rate and metric.threshold_range is None and metric.compare is not None and metric.compare.by is CompareBy.RATIO:
            problems.append(Problem(f"{where}.compare.by", "ratio",
                                    "on a share of requests needs thresholdRange as well: at 0 % on both tracks (a healthy service) "
                                    "no count of requests bounds canary / stable, so every tick would hold until holdLimit rolled a "
                                    "healthy release back; use by: difference, or add thresholdRange"))
        problems += _percent_problems(metric, where)
        if metric.judge is not None:
            judged = _judge_problems(metric.judge, metric.interval or analysis.interval, where, f"{where}.interval" if metric.interval else f"{field}.interval",
                                     scrape)
            problems += _newer(judged)
        if metric.template_ref is None:
            if metric.name not in metrics.BUILTIN_METRICS:
                problems.append(Problem(f"{where}.name", metric.name, "names no built-in metric and has no templateRef; built-ins: " + ", ".join(metrics.BUILTIN_METRICS)))
            elif metric.template_variables:
                problems.append(Problem(f"{where}.templateVariables", str(metric.template_variables), "built-in metrics take no variables"))
            continue
        template = metric_templates.get(metric.template_ref.name)
        if template is None:
            known = ", ".join(metric_templates) or "none defined"
            problems.append(Problem(f"{where}.templateRef.name", metric.template_ref.name, f"must name a metricTemplates entry ({known})"))
            continue
        wanted = templates.placeholders(template.query).variables
        missing = sorted(wanted - metric.template_variables.keys())
        if missing:
            problems.append(Problem(f"{where}.templateVariables", str(metric.template_variables), f"must define {', '.join(missing)} used by template {metric.template_ref.name}"))
        for name, rule in templates.variable_problems(template.query, metric.template_variables).items():
            problems.append(Problem(f"{where}.templateVariables.{name}", repr(metric.template_variables[name]), f"{rule} (template {metric.template_ref.name})"))
        if template.provider.address is None and prometheus is None:
            problems.append(Problem(f"metricTemplates.{metric.template_ref.name}.provider.address", "None", "must be set when the stack has no prometheus address"))
    if prometheus is None and any(m.template_ref is None for m in analysis.metrics):
        problems.append(Problem("prometheus.address", "None", "must be set: built-in metrics query the stack's Prometheus"))
    elif prometheus is None and any(m.judge is not None or m.compare is not None for m in analysis.metrics if m.template_ref is None):
        problems.append(Problem("prometheus.address", "None", "must be set: comparisons query the stack's Prometheus"))
    for section, items in (("webhooks", analysis.webhooks), ("alerts", analysis.alerts)):
        names: set[str] = set()
        for i, item in enumerate(items):
            if item.name in names:  # the journal and `canary history` tell them apart by name
                problems.append(Problem(f"{field}.{section}[{i}].name", item.name, f"must be unique among analysis.{section}"))
            names.add(item.name)
    if analysis.mirror_weight is not None and not analysis.mirror:
        problems.append(Problem(f"{field}.mirrorWeight", str(analysis.mirror_weight), "needs mirror: true"))
    if analysis.mirror and analysis.kind is Strategy.AB:
        problems.append(Problem(f"{field}.mirror", "true", "mirrors stable's traffic during weighted or blue/green analysis; A/B testing routes matched requests instead"))
    rollout_hook = any(w.type is WebhookType.ROLLOUT and not w.background for w in analysis.webhooks)
    acting = [m for m in analysis.metrics if not m.dry_run]
    if analysis.score is not None and not analysis.metrics:
        problems.append(Problem(f"{field}.score", "set", "needs metrics to score"))
    elif analysis.score is not None and not acting:
        # a score over no metric acted on is 100: every tick would pass, whatever the metrics said
        problems.append(Problem(f"{field}.score", "set", "needs a metric that is not dryRun: every metric is, so nothing would be scored"))
    elif not acting and not rollout_hook and not analysis.skip_analysis \
            and not any(w.type in (WebhookType.PRE_ROLLOUT, WebhookType.CONFIRM_PROMOTION) for w in analysis.webhooks):
        # nothing acts on a tick, and nothing else decides: every tick would pass ("all 0 checks passed") and the release
        # promote on nothing. A background rollout hook is a load generator, whose exit status is recorded but never judged;
        # a pre-rollout hook (a smoke test) or a confirm-promotion gate (a person) still decides
        shown = f"{len(analysis.metrics)} dryRun" if analysis.metrics else "none"
        problems.append(Problem(f"{field}.metrics", shown, "needs a metric that is not dryRun (or a rollout webhook): "
                                "every tick would pass whatever happened, and the release promote on no check at all (a background rollout hook "
                                "is a load generator, never judged); to promote without analysis, say so with skipAnalysis: true, or let a "
                                "person decide with a confirm-promotion webhook"))
    top = max(analysis.step_weights) if analysis.step_weights else analysis.max_weight
    at_all = analysis.kind is Strategy.BLUE_GREEN or (analysis.kind is Strategy.CANARY and top == 100)
    if at_all and acting and not analysis.skip_analysis and not rollout_hook and all(m.threshold_range is None for m in acting):
        # compare and judge weigh the canary against stable, which serves no request at all traffic: nothing would judge it there
        where = "blue/green's switch" if analysis.kind is Strategy.BLUE_GREEN else "the weight of 100"
        problems.append(Problem(f"{field}.metrics", f"{len(acting)} compare/judge only", (
            f"judge the canary only against stable: at all traffic ({where}) stable serves no request, so nothing would judge the "
            "canary there and it would pass on no check; give a metric a thresholdRange (or add a rollout webhook)")))
    return problems


def _percent_problems(metric: Metric, where: str) -> list[Problem]:
    """A built-in metric whose unit is percent (a share of requests, 0..100) with a range that could never
    pass (``min: 101``) or never fail (``max: 100`` on the error rate)."""
    builtin = metrics.BUILTIN_METRICS.get(metric.name)
    if metric.template_ref is not None or builtin is None or builtin.unit != "%":
        return []
    problems: list[Problem] = []
    for name, bounds in (("thresholdRange", metric.threshold_range), ("inconclusiveRange", metric.inconclusive_range)):
        for side in ("min", "max"):
            value = getattr(bounds, side) if bounds is not None else None
            if value is not None and not 0 <= value <= 100:
                never = "pass" if (side == "min" and value > 100) or (side == "max" and value < 0) else "fail on this side"
                problems.append(Problem(f"{where}.{name}.{side}", f"{value:g}", f"must be within 0..100: {metric.name} is a percentage of "
                                        "requests" + (f", so the check could never {never}" if name == "thresholdRange" else "")))
    bounds = metric.threshold_range
    if not problems and bounds is not None and not metric.dry_run and metric.compare is None and metric.judge is None \
            and (bounds.min is None or bounds.min <= 0) and (bounds.max is None or bounds.max >= 100):
        problems.append(Problem(f"{where}.thresholdRange", str(bounds), f"lets every value of {metric.name} (a percentage, 0..100) pass: "
                                "the check could never fail; narrow it, or set dryRun: true to record the metric only"))
    return problems


def _stack_problems(spec: StackSpec) -> list[Problem]:
    problems: list[Problem] = []
    for key in ("canaryImage", "canaryWeight"):
        value = spec.canary_image if key == "canaryImage" else spec.canary_weight
        if value is not None:
            problems.append(Problem(key, str(value), "is no longer stack config: a release's progress lives in the cluster (see canary status); remove the key"))
    single = [k for k, v in (("app", spec.app), ("gateway", spec.gateway), ("analysis", spec.analysis), ("stableImage", spec.stable_image)) if v is not None]
    if spec.apps and single:
        problems.append(Problem(single[0], "set", "a stack with apps declares each app under apps.<name>, not at the top level"))
    if not spec.apps and spec.analysis is None:
        problems.append(Problem("analysis", "nothing", "is required (or declare apps under apps.<name>)"))
    if not spec.apps and spec.app is None and spec.gateway is not None:
        problems.append(Problem("app", "nothing", "is required with gateway: the app the route sends to"))
    for name, config in spec.app_configs().items():
        field = f"apps.{name}" if spec.apps else ""

        def at(sub: str, field: str = field) -> str:
            return f"{field}.{sub}" if field else sub

        app = config.app
        if spec.apps and app is not None and app.name != name:
            problems.append(Problem(at("app.name"), app.name, f"must be the app's key in apps ({name})"))
        if app is not None:
            problems += app_problems(app, at("app"))
            if config.gateway is None:
                problems.append(Problem(at("gateway"), "nothing", "is required with app: the route's parentRefs"))
            image_key = "stableImage" if not spec.apps else at("stableImage")
            image = config.stable_image
            if image and app.image and image != app.image:
                problems.append(Problem(image_key, image, f"is the earlier name of app.image and differs from it ({app.image}): keep one"))
            if not (image or app.image) and app.template is None:
                problems.append(Problem(at("app.image"), "nothing", "is required: the image the app runs"))
        problems += _analysis_problems(config.analysis, at("analysis"), spec.metric_templates, spec.prometheus)
        for i, alert in enumerate(config.analysis.alerts):
            if not alert.url.get_secret_value().startswith(("http://", "https://", "<")):  # "<…>": ciphertext not decrypted here
                problems.append(Problem(at(f"analysis.alerts[{i}].url"), "<secret>", "must be an http:// or https:// URL"))
    return problems + _name_clashes(spec) + _hook_name_clashes(spec)


def _hook_name_clashes(spec: StackSpec) -> list[Problem]:
    """Two apps whose hooks would be sent one ``name`` in one namespace: a load tester keys its gates on
    ``<name>.<namespace>``, so a gate opened for one would open for the other's release too."""
    rule = "(a load tester keys gates on <name>.<namespace>) would open for "
    if spec.names_no_app() and spec.analysis is not None and spec.analysis.webhook_name:
        return [Problem("analysis.webhookName", spec.analysis.webhook_name, (
            f"is sent by every app a top-level analysis without app judges (each app the program's components declare): a gate opened "
            f"for one {rule}all; set it per app, under apps.<name>.analysis"))]
    problems: list[Problem] = []
    configs = spec.app_configs() if spec.apps else {}
    for name, config in configs.items():
        if not config.analysis.webhook_name:
            continue
        namespace = config.app.namespace if config.app is not None else None  # None: declared by the program, unknown here
        for other_name, other in configs.items():
            same_namespace = namespace is not None and other.app is not None and other.app.namespace == namespace
            if other_name != name and (other.analysis.webhook_name or other_name) == config.analysis.webhook_name and same_namespace:
                problems.append(Problem(f"apps.{name}.analysis.webhookName", config.analysis.webhook_name, (
                    f"is also the name app {other_name}'s hooks are sent: a gate opened for one {rule}both; give each app its own")))
                break
    return problems


def _name_clashes(spec: StackSpec) -> list[Problem]:
    """Two apps of one namespace whose objects would share a name: app ``web-canary`` beside ``web`` wants
    the Service ``web-canary``, which is ``web``'s canary Service. (Two apps reading a ConfigMap or Secret of
    one name and content share its copy: see ``naming.COPY_USER_PREFIX``.)"""
    owner: dict[tuple[str, str], str] = {}
    problems: list[Problem] = []
    for name, config in spec.app_configs().items():
        if config.app is None:
            continue
        namespace = config.app.namespace
        objects = naming.owned_names(name)
        for obj in objects:
            other = owner.get((namespace, obj))
            if other is not None and other != name:
                problems.append(Problem(f"apps.{name}", name, f"clashes with app {other} in namespace {namespace}: both would own "
                                        f"the Service and Deployment named {obj}; rename one"))
                break
        else:
            for obj in objects:
                owner[(namespace, obj)] = name
    return problems


#: Fields whose values are secrets: never shown in a problem.
_SECRET_FIELDS = re.compile(r"(^|\.)(token|stringData)(\.|\[|$)|^prometheus\.headers(\.|\[|$)|alerts\[\d+\]\.url")
#: Fields whose values are URLs, a password or a token in them (``user:password@``, ``?token=``, a path): shown by their
#: origin only (``_origin``); and where a webhook or a provider given as its URL stands, as a string of the wrong shape.
_URL_FIELDS = re.compile(r"(^|\.)(prometheus\.(address|pushgateway)|provider(\.address)?|webhooks(\[\d+\](\.url)?)?)$")
#: Sections that hold secrets: the value of a field they do not know (a misspelled ``tokn``) is not shown either.
_SECRET_SECTIONS = re.compile(r"(^|\.)(prometheus|secrets|alerts\[\d+\])\.")
#: Where secrets sit, one level up: the value found there when it has the wrong shape (a Secret's data
#: given as a string without ``stringData``, an alert given as its URL) is the secret itself.
_SECRET_HOLDERS = re.compile(r"(^|\.)(prometheus|secrets|secrets\.[^.\[]+|alerts|alerts\[\d+\])$")


def field_name(parts: Iterable[str | int]) -> str:
    """A problem's field, from the parts of its path (pydantic's location, a config path's parts): a key after a dot,
    an index in brackets (``analysis.alerts[0].url``). Every problem writes it so, and fields are compared as text
    (which top-level key a problem is under, whether a secret's path is above or below it)."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts).removeprefix(".")


def _problem_from_error(error: Mapping[str, Any]) -> Problem:
    field = field_name(error["loc"]).replace(".[key]", "[key]")  # pydantic's "[key]": a mapping's key is refused, not its value
    rule = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if error["type"] == "extra_forbidden":
        rule = "is not a known field" + _did_you_mean(error["loc"])
    elif error["type"] == "missing":
        rule = "is required"
    value = error.get("input")
    if error["type"] == "missing":
        shown = "nothing"  # pydantic's input is the parent mapping, which may hold a secret
    else:
        hidden = (_SECRET_FIELDS.search(field) or _SECRET_HOLDERS.search(field)
                  or (error["type"] == "extra_forbidden" and _SECRET_SECTIONS.search(field)))
        shown = "<secret>" if hidden else _short(value)
        if rule.startswith(CREDENTIALS_IN_URL):
            shown = "<a URL with credentials>"  # its password is not shown
        elif not hidden and isinstance(value, str) and _URL_FIELDS.search(field):
            origin = _origin(value) if value.strip() else value  # a blank one is shown as it is
            shown = repr(origin) if origin is not None else "<not shown: it may hold credentials>"
    return Problem(field or "(top level)", shown, rule)


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """`` (did you mean stepWeight?)`` for an unknown field whose camelCase form, or a field one edit
    away, is known where it stands; empty otherwise."""
    known = _fields_at(loc[:-1])
    key = str(loc[-1]) if loc else ""
    if not known:
        return ""
    near = to_camel(key) if to_camel(key) in known else workload.nearest(key, dict.fromkeys(known))
    return f" (did you mean {near}?)" if near else ""


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """The config names of the fields of the model at ``loc`` of a stack's config (a component's ``app``,
    ``gateway`` and ``prometheus`` stand where the stack's do); empty when ``loc`` names no model."""
    kind: Any = StackSpec
    for part in loc:
        kind = _unwrapped(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            by_alias = {field.alias or name: field for name, field in kind.model_fields.items()}
            if str(part) not in by_alias:
                return []
            kind = by_alias[str(part)].annotation
        elif get_origin(kind) is dict:
            kind = get_args(kind)[1]
        elif get_origin(kind) is list:
            kind = get_args(kind)[0]
        else:
            return []
    kind = _unwrapped(kind)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return [field.alias or name for name, field in kind.model_fields.items()]
    return []


def _unwrapped(kind: Any) -> Any:
    """``Annotated[X, …]`` and ``X | None`` as ``X``."""
    while True:
        if get_origin(kind) is Annotated:
            kind = get_args(kind)[0]
        elif get_origin(kind) in (Union, types.UnionType) and len([a for a in get_args(kind) if a is not type(None)]) == 1:
            kind = next(a for a in get_args(kind) if a is not type(None))
        else:
            return kind


def _short(value: object) -> str:
    """A value for a message. A mapping shows its keys only: its values may be secrets (a token
    decrypted by the Automation API) and a whole section is noise next to the rule."""
    if isinstance(value, Mapping):
        return "a mapping of " + (", ".join(str(k) for k in value) or "nothing")
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _literal_paths(values: Mapping[str, Any]) -> list[Problem]:
    """Keys such as ``prometheus.timeout``: ``pulumi config set canary:prometheus.timeout 5s`` without
    --path stores one key of that name, not the field. Its value is not shown: it may be a secret."""
    problems = []
    for key in values:
        head = re.split(r"[.\[]", key, maxsplit=1)[0]
        if key != head and head in CONFIG_KEYS:
            full = f"{naming.CONFIG_NAMESPACE}:{key}"
            problems.append(Problem(key, "a key of its own", f"was set with a dotted name but without --path, so it is one key named "
                                    f"{full!r}, not a field of {head}: run `pulumi config rm {full}` and set it again with "
                                    f"`pulumi config set --path {full} …` (with --secret for a secret)"))
    return problems


def parse_stack(values: Mapping[str, Any], source: str = "stack config", unchecked: tuple[str, ...] = ()) -> StackSpec:
    """Validate a stack's config values (top-level keys without namespace) into a stack spec.

    Raises ``InvalidSpec`` listing every problem found; nothing partial is returned. ``unchecked`` are
    top-level keys left out of ``values`` because they could not be read (a secret as a whole): the
    problems their absence alone causes are not reported.
    """
    literal = _literal_paths(values)
    values = {k: v for k, v in values.items() if k not in {p.field for p in literal}}
    try:
        spec = StackSpec.model_validate(dict(values), by_alias=True, by_name=False)
    except ValidationError as exc:
        # not chained: pydantic's own message quotes every input it refused, secrets included
        raise InvalidSpec(literal + [_problem_from_error(e) for e in exc.errors()], source) from None
    problems = literal + [p for p in _stack_problems(spec) if not _absent(p, unchecked)]
    if problems:
        raise InvalidSpec(problems, source)
    return spec


def _absent(problem: Problem, unchecked: tuple[str, ...]) -> bool:
    """Whether ``problem`` is about a key that was left out unread (``prometheus.address`` of ``prometheus``;
    the top-level ``analysis`` a stack needs unless its ``apps`` are unread)."""
    if "apps" in unchecked and problem.field == "analysis" and problem.value == "nothing":
        return True
    if "metricTemplates" in unchecked and re.search(r"\.templateRef\.name$", problem.field):
        return True  # the templates it names are in the unread key
    return any(problem.field == key or problem.field.startswith((f"{key}.", f"{key}[")) for key in unchecked)


def parse_spec(values: Mapping[str, Any], source: str = "stack config") -> ReleaseSpec:
    """The one app a single-app stack config declares, validated (see ``parse_stack``)."""
    stack = parse_stack(values, source)
    configs = stack.app_configs()
    if len(configs) != 1:
        raise InvalidSpec([Problem("apps", ", ".join(configs), "holds several apps: name the one meant")], source)
    return stack.release_spec(next(iter(configs)))
