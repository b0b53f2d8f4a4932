"""The release spec: frozen models of everything a stack config holds, and their validation.

This module owns the config surface (see the README's config reference) and the
rules; it turns any invalid input into ``InvalidSpec`` listing every problem as
field, value and rule, before anything is applied. It performs no I/O: reading a
stack file or the Automation API's config map happens in ``stackconfig.py``.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from canary import metrics, templates, units
from canary.errors import InvalidSpec, Problem

#: Shortest analysis interval accepted: below it a rate() has too few samples to mean anything.
MIN_INTERVAL = timedelta(seconds=1)

Duration = Annotated[
    timedelta,
    BeforeValidator(units.parse_duration),
    PlainSerializer(units.format_duration, return_type=str),
]
DnsLabel = Annotated[str, AfterValidator(units.check_dns_label)]
AppName = Annotated[str, AfterValidator(lambda v: units.check_dns_label(v, 56))]
Hostname = Annotated[str, AfterValidator(units.check_hostname)]
Image = Annotated[str, AfterValidator(units.check_image)]
Quantity = Annotated[str, BeforeValidator(units.check_quantity)]
Weight = Annotated[int, Field(ge=0, le=100, strict=False)]
StepWeight = Annotated[int, Field(ge=1, le=100)]

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        str_strip_whitespace=True,
    )


class Resources(_Model):
    requests: dict[Literal["cpu", "memory", "ephemeral-storage"], Quantity] = {}
    limits: dict[Literal["cpu", "memory", "ephemeral-storage"], Quantity] = {}


class Probe(_Model):
    """An HTTP GET probe against the container port."""

    path: str = "/healthz"
    initial_delay_seconds: int = Field(0, ge=0)
    period_seconds: int = Field(10, ge=1)
    timeout_seconds: int = Field(1, ge=1)
    failure_threshold: int = Field(3, ge=1)

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute HTTP path starting with '/'")
        return v


class Probes(_Model):
    readiness: Probe | None = None
    liveness: Probe | None = None


class App(_Model):
    name: AppName
    namespace: DnsLabel = "default"
    port: int = Field(8080, ge=1, le=65535, description="container port")
    service_port: int = Field(80, ge=1, le=65535)
    replicas: int = Field(1, ge=1, le=1000)
    resources: Resources = Resources()
    probes: Probes = Probes()
    env: dict[str, str] = {}
    create_namespace: bool = False

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not _ENV_NAME.match(name):
                raise ValueError(f"variable name {name!r} must consist of letters, digits, '_', '-' or '.', not starting with a digit")
        return v


class ParentRef(_Model):
    name: DnsLabel
    namespace: DnsLabel | None = None
    section_name: DnsLabel | None = None
    port: int | None = Field(None, ge=1, le=65535)


class Gateway(_Model):
    parent_refs: list[ParentRef] = Field(min_length=1)
    hostnames: list[Hostname] = []


class Prometheus(_Model):
    address: str
    timeout: Duration = timedelta(seconds=10)
    token: SecretStr | None = None
    headers: dict[str, SecretStr] = {}

    @field_validator("address")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(v)

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


def _check_url(v: str) -> str:
    if not re.match(r"^https?://[^\s/:?#]+(:\d{1,5})?(/[^\s]*)?$", v):
        raise ValueError("must be an http:// or https:// URL")
    return v


class Provider(_Model):
    type: Literal["prometheus"] = "prometheus"
    address: str | None = None

    @field_validator("address")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v)


class MetricTemplate(_Model):
    provider: Provider = Provider()
    query: str

    @field_validator("query")
    @classmethod
    def _query(cls, v: str) -> str:
        templates.placeholders(v)
        return v


class ThresholdRange(_Model):
    min: float | None = None
    max: float | None = None

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
    HOLD = "hold"  # neither passes nor fails: the weight holds, the failure count does not move
    PASS = "pass"  # counts as a pass (only for metrics that may legitimately be empty)


class Metric(_Model):
    name: DnsLabel
    template_ref: TemplateRef | None = None
    threshold_range: ThresholdRange
    interval: Duration | None = None
    template_variables: dict[str, str] = {}
    on_no_data: NoDataPolicy = NoDataPolicy.FAIL

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and v < MIN_INTERVAL:
            raise ValueError(f"must be at least {units.format_duration(MIN_INTERVAL)}")
        return v


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
    metadata: dict[str, str] = {}

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v)

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
        return self


class Analysis(_Model):
    interval: Duration = timedelta(minutes=1)
    threshold: int = Field(5, ge=1, le=1000)
    step_weight: StepWeight | None = None
    max_weight: StepWeight = 50
    step_weights: list[StepWeight] | None = None
    min_requests: int | None = Field(None, ge=1)
    metrics: list[Metric] = []
    webhooks: list[Webhook] = []

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: timedelta) -> timedelta:
        if v < MIN_INTERVAL:
            raise ValueError(f"must be at least {units.format_duration(MIN_INTERVAL)}")
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
        if self.step_weights is not None:
            if {"step_weight", "max_weight"} & self.model_fields_set:
                raise ValueError("set either stepWeights or stepWeight/maxWeight, not both")
            return self
        if self.step_weight is None:
            raise ValueError("must set stepWeight (with maxWeight) or stepWeights")
        if self.step_weight > self.max_weight:
            raise ValueError(f"stepWeight ({self.step_weight}) must not exceed maxWeight ({self.max_weight})")
        return self


class ReleaseSpec(_Model):
    """Everything one stack's config says: what runs, how traffic is routed, how a release is judged."""

    app: App
    gateway: Gateway
    stable_image: Image
    canary_image: Image | None = None
    canary_weight: Weight = 0
    prometheus: Prometheus | None = None
    analysis: Analysis
    metric_templates: dict[str, MetricTemplate] = {}

    @property
    def target(self) -> str:
        """The canary Deployment's name: ``{{ target }}`` in metric templates."""
        return f"{self.app.name}-canary"


#: The top-level stack config keys, in the project's namespace.
CONFIG_KEYS = tuple(ReleaseSpec.model_fields[name].alias or name for name in ReleaseSpec.model_fields)


def metric_query(spec: ReleaseSpec, metric: Metric) -> tuple[str, str | None]:
    """The template of a metric and the provider address its template names (if any)."""
    if metric.template_ref is None:
        return metrics.BUILTIN_METRICS[metric.name][0], None
    template = spec.metric_templates[metric.template_ref.name]
    return template.query, template.provider.address


def _cross_checks(spec: ReleaseSpec) -> list[Problem]:
    """Rules that span several fields; each names the field to fix."""
    problems: list[Problem] = []
    if spec.canary_weight > 0 and spec.canary_image is None:
        problems.append(Problem("canaryWeight", str(spec.canary_weight), "must be 0 while no canaryImage is set"))
    seen: set[str] = set()
    for i, metric in enumerate(spec.analysis.metrics):
        field = f"analysis.metrics[{i}]"
        if metric.name in seen:
            problems.append(Problem(f"{field}.name", metric.name, "must be unique among analysis.metrics"))
        seen.add(metric.name)
        if metric.template_ref is None:
            if metric.name not in metrics.BUILTIN_METRICS:
                problems.append(
                    Problem(
                        f"{field}.name",
                        metric.name,
                        "names no built-in metric and has no templateRef; built-ins: " + ", ".join(metrics.BUILTIN_METRICS),
                    )
                )
            elif metric.template_variables:
                problems.append(Problem(f"{field}.templateVariables", str(metric.template_variables), "built-in metrics take no variables"))
            continue
        template = spec.metric_templates.get(metric.template_ref.name)
        if template is None:
            known = ", ".join(spec.metric_templates) or "none defined"
            problems.append(Problem(f"{field}.templateRef.name", metric.template_ref.name, f"must name a metricTemplates entry ({known})"))
            continue
        wanted = templates.placeholders(template.query).variables
        missing = sorted(wanted - metric.template_variables.keys())
        if missing:
            problems.append(
                Problem(
                    f"{field}.templateVariables",
                    str(metric.template_variables),
                    f"must define {', '.join(missing)} used by template {metric.template_ref.name}",
                )
            )
        if template.provider.address is None and spec.prometheus is None:
            problems.append(
                Problem(f"metricTemplates.{metric.template_ref.name}.provider.address", "None", "must be set when the stack has no prometheus address")
            )
    if spec.prometheus is None and any(m.template_ref is None for m in spec.analysis.metrics):
        problems.append(Problem("prometheus.address", "None", "must be set: built-in metrics query the stack's Prometheus"))
    elif spec.prometheus is None and spec.analysis.min_requests is not None:
        problems.append(Problem("prometheus.address", "None", "must be set: minRequests counts requests in the stack's Prometheus"))
    names: set[str] = set()
    for i, hook in enumerate(spec.analysis.webhooks):
        if hook.name in names:
            problems.append(Problem(f"analysis.webhooks[{i}].name", hook.name, "must be unique among analysis.webhooks"))
        names.add(hook.name)
    return problems


_SECRET_FIELDS = re.compile(r"(^|\.)(token|headers)(\.|$)")


def _problem_from_error(error: Mapping[str, Any]) -> Problem:
    field = ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in error["loc"]).replace(".[", "[")
    rule = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if error["type"] == "extra_forbidden":
        rule = "is not a known field"
    elif error["type"] == "missing":
        rule = "is required"
    value = error.get("input")
    if error["type"] == "missing":
        shown = "nothing"  # pydantic's input is the parent mapping, which may hold a secret
    else:
        shown = "<secret>" if _SECRET_FIELDS.search(field) else _short(value)
    return Problem(field or "(top level)", shown, rule)


def _short(value: object) -> str:
    """A value for a message. A mapping shows its keys only: its values may be secrets (a token
    decrypted by the Automation API) and a whole section is noise next to the rule."""
    if isinstance(value, Mapping):
        return "a mapping of " + (", ".join(str(k) for k in value) or "nothing")
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_spec(values: Mapping[str, Any], source: str = "stack config") -> ReleaseSpec:
    """Validate a stack's config values (top-level keys without namespace) into a spec.

    Raises ``InvalidSpec`` listing every problem found; nothing partial is returned.
    """
    try:
        spec = ReleaseSpec.model_validate(dict(values))
    except ValidationError as exc:
        raise InvalidSpec([_problem_from_error(e) for e in exc.errors()], source) from None
    problems = _cross_checks(spec)
    if problems:
        raise InvalidSpec(problems, source)
    return spec
