"""Metrics: the provider port, the built-in queries, and turning a metric of the spec into a query.

Two layers, as in Flagger: a provider answers one PromQL query with one scalar
(``MetricsProvider``), and, apart from it, the query templates — the built-in
ones below and the user's ``metricTemplates`` — rendered so that a missing
variable is an error. Pure; the Prometheus adapter lives in ``prometheus.py``.

The built-ins select canary pods only, by pod name, with the labels the
reference Flagger MetricTemplate uses (``namespace``, ``kubernetes_pod_name``):
the canary Deployment is ``<app>-canary`` and ``{{ target }}`` is that name, so
stable traffic never drowns the canary's signal.
"""

from __future__ import annotations

from typing import Protocol

_CANARY_PODS = 'namespace="{{ namespace }}",kubernetes_pod_name=~"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)?"'

_SUCCESS_RATE = (
    f'sum(rate(http_requests_total{{{_CANARY_PODS},status!~"5.."}}[{{{{ interval }}}}]))'
    f" / sum(rate(http_requests_total{{{_CANARY_PODS}}}[{{{{ interval }}}}])) * 100"
)


def _duration_quantile(q: float) -> str:
    return (
        f"histogram_quantile({q}, sum(rate(http_request_duration_seconds_bucket{{{_CANARY_PODS}}}"
        f"[{{{{ interval }}}}])) by (le)) * 1000"
    )


#: Built-in metric name -> (query template, unit). Durations are in milliseconds.
BUILTIN_METRICS: dict[str, tuple[str, str]] = {
    "request-success-rate": (_SUCCESS_RATE, "%"),
    "request-error-rate": (f"100 - ({_SUCCESS_RATE})", "%"),
    # The reference example reads request-duration as the p95; Flagger's own built-in is a p99.
    "request-duration": (_duration_quantile(0.95), "ms"),
    "request-duration-p95": (_duration_quantile(0.95), "ms"),
    "request-duration-p99": (_duration_quantile(0.99), "ms"),
}

#: Requests the canary pods answered during the interval, for the minimum-request guard.
REQUEST_COUNT_QUERY = f"sum(increase(http_requests_total{{{_CANARY_PODS}}}[{{{{ interval }}}}]))"


class MetricsProvider(Protocol):
    """One query in, one scalar out. Raises the ``MetricError`` family, never returns NaN."""

    def run_query(self, query: str) -> float: ...

    def is_online(self) -> bool: ...
