"""Metrics: the provider port, the built-in queries, and the request counter behind evidence.

Two layers, as in Flagger: a provider answers one PromQL query with one scalar
(``MetricsProvider``) or a series of samples (``RangeProvider``), and, apart
from it, the query templates — the built-in ones below and the user's
``metricTemplates`` — rendered so that a missing variable is an error. Pure;
the Prometheus adapter lives in ``canary.adapters.prometheus``.

The built-ins select one track's pods by pod name (``{{ target }}`` is the
canary Deployment, or the stable one when a metric is compared with stable)
through the label Prometheus puts pod names in (``{{ podLabel }}``: Flagger's
``kubernetes_pod_name`` by default, ``pod`` with kube-prometheus-stack), so
stable traffic never drowns the canary's signal, within the app's namespace by
the label Prometheus puts it in (``{{ namespaceLabel }}``: ``namespace`` by
default, ``kubernetes_namespace`` with the classic kubernetes_sd relabelling).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

_PODS = '{{ namespaceLabel }}="{{ namespace }}",{{ podLabel }}=~"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)?"'
#: The counter every built-in reads, and the one a template must read to be judged as a share of requests.
REQUESTS_METRIC = "http_requests_total"

#: Answers other than 5xx over all answers. A track that answered nothing but 5xx has no such series: the
#: empty numerator is 0 (``or on() vector(0)``), so that it reads 0 % success — 100 % errors — not "no data";
#: a track with no requests at all still has no data (the denominator is empty).
_SUCCESS_RATE = (
    f'(sum(rate({REQUESTS_METRIC}{{{_PODS},status!~"5.."}}[{{{{ interval }}}}])) or on() vector(0))'
    f" / sum(rate({REQUESTS_METRIC}{{{_PODS}}}[{{{{ interval }}}}])) * 100"
)


def _duration_quantile(q: float) -> str:
    return f"histogram_quantile({q}, sum(rate(http_request_duration_seconds_bucket{{{_PODS}}}[{{{{ interval }}}}])) by (le)) * 1000"


@dataclass(frozen=True)
class Builtin:
    query: str
    unit: str
    #: a share of the canary's requests, in percent: judged on how many requests there were
    rate: bool = False
    #: which way is worse, for the rate's confidence bound: the error rate up, the success rate down
    higher_is_worse: bool = True


BUILTIN_METRICS: dict[str, Builtin] = {
    "request-success-rate": Builtin(_SUCCESS_RATE, "%", rate=True, higher_is_worse=False),
    "request-error-rate": Builtin(f"100 - ({_SUCCESS_RATE})", "%", rate=True),
    # The reference example reads request-duration as the p95; Flagger's own built-in is a p99.
    "request-duration": Builtin(_duration_quantile(0.95), "ms"),
    "request-duration-p95": Builtin(_duration_quantile(0.95), "ms"),
    "request-duration-p99": Builtin(_duration_quantile(0.99), "ms"),
}

#: Requests a track's pods answered during the window: the minimum-request guard and the evidence of rates. The
#: built-in count, as Flagger's apps label them; ``prometheus.requestCount`` replaces it for an app that counts its
#: requests in another counter or under other labels.
REQUEST_COUNT_QUERY = f"sum(increase({REQUESTS_METRIC}{{{_PODS}}}[{{{{ interval }}}}]))"
#: Whether the app's namespace has series of the built-in count's counter, for the preflight to tell a pod label that
#: is not there from a counter (or a namespace label) that is not.
SERIES_LABELS_QUERY = f'count by (__name__) ({REQUESTS_METRIC}{{{{{{ namespaceLabel }}}}="{{{{ namespace }}}}"}})'


_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`|#[^\n]*')
#: a series selector: a metric name with its label matchers, or one read over a range (``name[1m]``)
_SELECTOR = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)\s*(?:(\{[^}]*\})|(?=\[))")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
#: what a share of the canary's requests may match on beside the labels the request count selects by
_SHARE_LABELS = frozenset({"status", "code"})


def counters(count: str) -> dict[str, tuple[str, ...]]:
    """The series a rendered request ``count`` reads, each with the labels it selects them by (in the count's order;
    those of every selector of that name, when it has several): what a share of the same requests reads."""
    found: dict[str, tuple[str, ...]] = {}
    for match in _SELECTOR.finditer(_STRING.sub('""', count)):
        labels = tuple(dict.fromkeys(m.group(1) for m in _MATCHER.finditer(match.group(2) or "")))
        name = match.group(1)
        found[name] = tuple(label for label in found[name] if label in labels) if name in found else labels
    return found


def reads(query: str, names: Iterable[str]) -> bool:
    """Whether ``query`` (its text outside strings and comments) reads a series of one of ``names``."""
    text = _STRING.sub('""', query)
    return any(re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", text) for name in names)


def unlike_the_count(query: str, count: str) -> list[str]:
    """How the request selectors of a rendered ``query`` select other requests than the rendered request ``count``
    does: the labels they match on beyond the count's own and the status, or that one has no selector at all (or
    misses a label the count selects by). Empty: the query's share is over the counted requests."""
    text = _STRING.sub('""', query)
    found: list[str] = []
    for name, counted in counters(count).items():
        for match in re.finditer(rf"(?<![\w:]){re.escape(name)}(?![\w:])\s*(\{{[^}}]*\}})?", text):
            if match.group(1) is None:
                found.append(f"{name} without a selector")
                continue
            labels = {m.group(1) for m in _MATCHER.finditer(match.group(1))}
            if not set(counted) <= labels:
                found.append(f"{name} not selected by {' and '.join(counted)}")
            found += sorted(labels - set(counted) - _SHARE_LABELS)
    return list(dict.fromkeys(found))


class MetricsProvider(Protocol):
    """One query in, one scalar out. Raises the ``MetricError`` family, never returns NaN."""

    def run_query(self, query: str) -> float: ...

    def is_online(self) -> bool: ...


class RangeProvider(Protocol):
    """One query over a window, sampled every ``step`` seconds: the values (NaN dropped)."""

    def run_range(self, query: str, seconds: float, step: float) -> list[float]: ...

    def series_labels(self, selector: str) -> list[dict[str, str]]: ...
