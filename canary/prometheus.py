"""The Prometheus metrics provider: the only module that imports prometheus-api-client.

Answers one PromQL query with one scalar, or raises the ``MetricError`` family:
``NoValues`` (empty or NaN), ``MultipleValues``, ``BadQuery`` and
``ProviderUnreachable`` (connection refused, time-out, HTTP errors). Auth
headers and the bearer token are sent on every request and never appear in an
error message.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from canary.errors import BadQuery, MultipleValues, NoValues, ProviderUnreachable


class PrometheusProvider:
    def __init__(self, address: str, *, token: str | None = None, headers: Mapping[str, str] | None = None, timeout: timedelta = timedelta(seconds=10)) -> None:
        self.address = address.rstrip("/")
        self._secrets = [s for s in [token, *(headers or {}).values()] if s]
        request_headers = dict(headers or {})
        if token:
            request_headers["Authorization"] = f"Bearer {token}"
        self._timeout = max(timeout.total_seconds(), 0.001)
        # No retries inside a check: one query costs at most one timeout; the next tick is the retry.
        self._client = PrometheusConnect(
            url=self.address, headers=request_headers, disable_ssl=False, timeout=self._timeout, retry=Retry(total=0, raise_on_status=False)
        )

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<secret>")
        return text

    def run_query(self, query: str) -> float:
        try:
            result: Any = self._client.custom_query(query, params={"timeout": f"{self._timeout:g}s"}, timeout=self._timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ProviderUnreachable(f"Prometheus at {self.address} did not answer within {self._timeout:g}s ({type(exc).__name__})") from None
        except PrometheusApiClientException as exc:
            text = self._scrub(str(exc))
            status = re.search(r"HTTP Status Code (\d+)", text)
            code = int(status.group(1)) if status else 0
            if code in (400, 422):
                raise BadQuery(f"Prometheus rejected the query: {_rejection(text)}") from None
            raise ProviderUnreachable(f"Prometheus at {self.address} answered HTTP {code or '?'}: {text[:300]}") from None
        except requests.RequestException as exc:
            raise ProviderUnreachable(f"Prometheus at {self.address} failed: {type(exc).__name__}") from None
        return _scalar(result)

    def is_online(self) -> bool:
        try:
            return bool(self._client.check_prometheus_connection())
        except (requests.RequestException, PrometheusApiClientException):
            return False


def _rejection(text: str) -> str:
    """Prometheus's own reason from the client's exception text, which ends with the body as a bytes literal.

    The reason quotes the query's parts (``invalid parameter "query": … function "rate"``),
    so it is read by decoding the body, not by cutting at the first quote.
    """
    literal = re.search(r"\((b'.*'|b\".*\")\)\s*$", text, re.DOTALL)
    if literal:
        try:
            return str(json.loads(ast.literal_eval(literal.group(1)))["error"])[:500]
        except (ValueError, SyntaxError, KeyError, TypeError):
            pass
    return text[:300]


def _scalar(result: Any) -> float:
    """One float from a query result (vector of one sample, or a scalar)."""
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        samples = [result[1]]  # resultType scalar: [time, "value"]
    elif isinstance(result, list):
        if len(result) > 1:
            labels = ", ".join(str(r.get("metric", {})) for r in result[:3])
            raise MultipleValues(f"the query returned {len(result)} series ({labels}); aggregate it to one, e.g. with sum()")
        samples = [r["value"][1] for r in result]
    else:
        raise NoValues(f"unexpected result {str(result)[:100]}")
    if not samples:
        raise NoValues("the query returned no samples")
    value = float(samples[0])
    if math.isnan(value):
        raise NoValues("the query returned NaN (no requests in the window?)")
    return value
