"""The Prometheus metrics provider: the only module that imports prometheus-api-client.

Answers one PromQL query with one scalar (``run_query``), or with the samples of
a window (``run_range``, for the statistical judge), or raises the ``MetricError`` family:
``NoValues`` (empty or NaN), ``MultipleValues``, ``BadQuery`` (rejected, or a
range vector or string where a number was due) and
``ProviderUnreachable`` (connection refused, time-out, HTTP errors, an answer
without a result or only in part). Auth
headers and the bearer token are sent on every request, to Prometheus' own
origin only (a redirect to another host gets none of them), and never appear in
an error message. ``at(when)`` is the same provider evaluating at a past moment
(Prometheus' ``time`` parameter; ranges end there): what ``canary backtest`` replays with.
"""

from __future__ import annotations

import ast
import copy
import html
import json
import math
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, quote_plus, unquote

from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from canary.adapters import http
from canary.errors import BadQuery, MultipleValues, NoValues, ProviderUnreachable

#: A header value this long is masked wherever it appears; a shorter one is a piece of ordinary words and names
#: (``prod`` of "production"), masked only where it stands as a value of its own: between spaces, quotes, ``=``,
#: ``:``, brackets, at a line's ends. The token is masked everywhere, whatever its length.
_MASKED_ANYWHERE = 8
#: What joins a short value to the word or name it is part of.
_JOINED = r"[\w.\-/@+~]"


class PrometheusProvider:
    def __init__(self, address: str, *, token: str | None = None, headers: Mapping[str, str] | None = None, timeout: timedelta = timedelta(seconds=10)) -> None:
        self.address = address.rstrip("/")
        #: what errors name Prometheus by: the address's path and query may carry a token (a tenant's path, an API key)
        self._origin = http.origin(self.address)
        #: header values too short to be taken out wherever they appear (a tenant ``prod``): masked anywhere, "production"
        #: read "<secret>uction" and named the tenant by it; masked where they stand as a value of their own only
        short = {s for s in (headers or {}).values() if s and len(s) < _MASKED_ANYWHERE}
        self._secrets = [s for s in [token, *(h for h in (headers or {}).values() if h not in short), *_beyond_the_origin(self.address)] if s]
        self._words = short - set(self._secrets)  # one that is the token too, or part of the address, is masked anywhere
        request_headers = dict(headers or {})
        if token:
            request_headers["Authorization"] = f"Bearer {token}"
        self._timeout = max(timeout.total_seconds(), 0.001)
        # No retries inside a check: one query costs at most one timeout; the next tick is the retry.
        # a redirect to another host gets none of them (requests would send all but Authorization along)
        session = http.private_session(request_headers)
        # the client returns data.result alone: the answer's warnings (a partial answer) are kept here, per thread
        answer = self._answer = threading.local()
        session.hooks["response"].append(lambda response, *args, **kwargs: setattr(answer, "warnings", _warnings(response)))
        self._client = PrometheusConnect(
            url=self.address, headers=request_headers, disable_ssl=False, timeout=self._timeout, retry=Retry(total=0, raise_on_status=False),
            session=session,
        )
        #: the moment queries are evaluated at; None: now
        self.when: datetime | None = None

    def at(self, when: datetime) -> PrometheusProvider:
        """This provider (same client, same secrets) answering as Prometheus would have at ``when`` (aware)."""
        if when.tzinfo is None:
            raise ValueError("the evaluation time needs a timezone")
        other = copy.copy(self)
        other.when = when
        return other

    def _params(self) -> dict[str, str]:
        params = {"timeout": _duration(self._timeout)}
        if self.when is not None:
            params["time"] = f"{self.when.timestamp():.3f}"
        return params

    def _scrub(self, text: str) -> str:
        """``text`` with each secret taken out, in every form an echoing server's error can carry it."""
        anywhere = {f for secret in self._secrets for f in _forms(secret)}
        words = {f for secret in self._words for f in _forms(secret)} - anywhere
        for form in sorted(anywhere | words, key=len, reverse=True):  # the longest first: one may hold another
            pattern = re.escape(form) if form in anywhere else rf"(?<!{_JOINED}){re.escape(form)}(?!{_JOINED})"
            text = re.sub(pattern, "<secret>", text)
        return text

    def _cause(self, exc: BaseException) -> RuntimeError:
        """What an error keeps of the client's or the transport's: its type and its text, scrubbed."""
        return RuntimeError(f"{type(exc).__name__}: {self._scrub(str(exc))}")

    def _ask(self, ask: Any) -> Any:
        """One request; the client's failures mapped (its HTTP errors derive from OSError, via requests). A
        partial answer (Thanos, Cortex or Mimir with a store down, Prometheus with a remote read failing: its
        ``warnings``) is no answer: the series it lacks may be the canary's errors. PromQL's own notes on a
        query (``PromQL info: …``) are not warnings of that kind."""
        self._answer.warnings = []
        try:
            result = ask()
        except PrometheusApiClientException as exc:
            raw = str(exc)
            # read before scrubbing: a short secret (a tenant header "0") would be scrubbed out of "400" too
            status = re.search(r"HTTP Status Code (\d+)", raw)
            code = int(status.group(1)) if status else 0
            text = self._scrub(raw)
            # the cause kept is the client's error with the secrets taken out: a server may echo them
            cause = self._cause(exc)
            if code in (400, 422):
                # the reason is read from the body as sent, scrubbed, and only then cut: cut first, a secret straddling
                # the cut was left in by half, which no form of it matches
                raise BadQuery(f"Prometheus rejected the query: {_rejection(raw, self._scrub)}") from cause
            raise ProviderUnreachable(f"Prometheus at {self._origin} answered HTTP {code or '?'}: {text[:300]}") from cause
        except (KeyError, TypeError) as exc:
            # answered 200 without data.result (``{"status": "error"}`` from a proxy or a query frontend): no answer
            raise ProviderUnreachable(f"Prometheus at {self._origin} answered without a result ({type(exc).__name__}: {self._scrub(str(exc))[:100]})") from None
        except OSError as exc:
            # requests' Timeout errors say "timed out"; a refused or reset connection is not a slow Prometheus
            if "timeout" in type(exc).__name__.lower() or "timed out" in str(exc).lower():
                raise ProviderUnreachable(f"Prometheus at {self._origin} did not answer within {self._timeout:g}s ({type(exc).__name__})") \
                    from self._cause(exc)
            said = str(exc).lower()
            if "refused" in said:
                why = "connection refused"
            elif "aborted" in said or "reset" in said or "disconnected" in said:
                why = "the connection was closed without an answer"  # a proxy in front of a Prometheus that is down
            else:
                why = type(exc).__name__
            # the cause kept is the transport's error with the secrets taken out: it quotes the URL asked, path and query
            raise ProviderUnreachable(f"Prometheus at {self._origin} could not be reached ({why})") from self._cause(exc)
        partial = [w for w in getattr(self._answer, "warnings", []) if not w.startswith("PromQL info")]
        if partial:
            raise ProviderUnreachable(f"Prometheus at {self._origin} answered in part ({self._scrub(partial[0])[:200]}): "
                                      "a partial answer may lack the canary's series, so it is no answer")
        return result

    def run_query(self, query: str) -> float:
        result = self._ask(lambda: self._client.custom_query(query, params=self._params(), timeout=self._timeout))
        return _scalar(result, self._scrub)

    def run_range(self, query: str, seconds: float, step: float) -> list[float]:
        """The query's values over the ``seconds`` before now (or ``at``'s moment), one every ``step`` seconds (NaN dropped)."""
        end = self.when or datetime.now(UTC)
        start = end - timedelta(seconds=seconds)
        result = self._ask(lambda: self._client.custom_query_range(query, start_time=start, end_time=end, step=_duration(step),
                                                                    params={"timeout": _duration(self._timeout)}, timeout=self._timeout))
        if isinstance(result, list) and len(result) > 1:
            raise MultipleValues(f"the query returned {len(result)} series; aggregate it to one, e.g. with sum()")
        values = [float(v) for series in (result or []) for _, v in series.get("values", [])]
        return [v for v in values if not math.isnan(v)]

    def series_labels(self, selector: str) -> list[dict[str, str]]:
        """The label sets of the series ``selector`` matches (for ``canary check`` to say which labels exist)."""
        result = self._ask(lambda: self._client.custom_query(f"last_over_time({selector}[5m])", timeout=self._timeout))
        return [dict(series.get("metric", {})) for series in result or []]

    def is_online(self) -> bool:
        try:
            return bool(self._client.check_prometheus_connection())
        except (OSError, PrometheusApiClientException):
            return False


def _warnings(response: Any) -> list[str]:
    """The ``warnings`` of a Prometheus API answer (none when it is no JSON object)."""
    if b'"warnings"' not in response.content:
        return []  # most answers: not parsed a second time (the client parses it for its result)
    try:
        body = response.json()
    except ValueError:
        return []
    found = body.get("warnings") if isinstance(body, dict) else None
    return [str(w) for w in found] if isinstance(found, list) else []


def _beyond_the_origin(address: str) -> list[str]:
    """What ``address`` carries beyond its origin (its user info, path, query, fragment, each query value), as
    given and percent-decoded: scrubbed from what a server or the transport says, as a secret is."""
    # the path whole, and of its segments only those that read as tokens (``/api/v1`` would take every "api" and "v1"
    # of an error's text; a tenant's ``/t/<token>`` echoed alone, "unknown tenant <token>", is the token); a query's
    # values, not a short one (``?orgId=1``): masked, every "1" of an error's text went with it
    found = http.url_parts(address, path=lambda path: [path.rstrip("/"), *(s for s in path.split("/") if http.opaque(s))], least_value=4)
    if found is None:
        return [address]  # a malformed address is never shown whole either
    return [form for part in found for form in {part, unquote(part)} if form]


def _duration(seconds: float) -> str:
    """A duration as Prometheus's API parses one: whole units only (``3.333s`` is refused, ``3333ms`` is not)."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def _forms(secret: str) -> set[str]:
    """A secret as it is, as a JSON body quotes it (Go's encoder also escapes ``<``, ``>`` and ``&``), as an HTML
    page or a URL quotes it (a proxy's 401 page, a redirect's echo), and each of those as the client's error shows a
    body: a bytes literal."""
    quoted = json.dumps(secret)[1:-1]
    go = quoted.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    forms = {secret, quoted, go, html.escape(secret, quote=True), quote(secret, safe=""), quote_plus(secret, safe="")}
    for form in list(forms):
        literal = repr(form.encode())
        forms.add(literal[2:-1])
        if literal[1] == '"':  # alone it needs no escaped ': inside a body quoted with ' it does
            forms.add(literal[2:-1].replace("'", "\\'"))
    return forms


def _rejection(text: str, scrub: Callable[[str], str]) -> str:
    """Prometheus's own reason from the client's exception text, which ends with the body as a bytes literal,
    ``scrub``-bed before it is cut (a secret cut in half is in no form ``scrub`` knows).

    The reason quotes the query's parts (``invalid parameter "query": … function "rate"``),
    so it is read by decoding the body, not by cutting at the first quote.
    """
    literal = re.search(r"\((b'.*'|b\".*\")\)\s*$", text, re.DOTALL)
    if literal:
        try:
            return scrub(str(json.loads(ast.literal_eval(literal.group(1)))["error"]))[:500]
        except (ValueError, SyntaxError, KeyError, TypeError):
            pass
    return scrub(text)[:300]


def _scalar(result: Any, scrub: Callable[[str], str]) -> float:
    """One float from a query result (vector of one sample, or a scalar).

    A range vector (matrix) or a string is a query that can never give one value: a config defect,
    reported as ``BadQuery`` naming what came back (``scrub``-bed, then cut: the server's text).
    """
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        samples = [result[1]]  # resultType scalar (or string): [time, "value"]
    elif isinstance(result, list):
        if any(isinstance(r, dict) and "values" in r and "value" not in r for r in result):
            raise BadQuery("the query returned a range vector (matrix), not one value: drop the range selector "
                           "or reduce it over time, e.g. with rate() or max_over_time()")
        if len(result) > 1:
            labels = scrub(", ".join(str(r.get("metric", {})) for r in result[:3]))
            raise MultipleValues(f"the query returned {len(result)} series ({labels}); aggregate it to one, e.g. with sum()")
        try:
            samples = [r["value"][1] for r in result]
        except (KeyError, IndexError, TypeError) as exc:
            raise BadQuery(f"the query returned a result that is not a number: {scrub(str(result))[:100]}") from exc
    else:
        raise NoValues(f"unexpected result {scrub(str(result))[:100]}")
    if not samples:
        raise NoValues("the query returned no samples")
    try:
        value = float(samples[0])
    except (TypeError, ValueError) as exc:
        raise BadQuery(f"the query returned a string, not a number: {scrub(str(samples[0]))[:100]!r}") from exc
    if math.isnan(value):
        raise NoValues("the query returned NaN (no requests in the window?)")
    return value
