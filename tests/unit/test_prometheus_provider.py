"""The Prometheus adapter's HTTP behaviour against a recording loopback server: auth, timeout, secrets."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from canary.adapters.prometheus import PrometheusProvider
from canary.errors import BadQuery, MultipleValues, ProviderUnreachable
from tests.unit.support import serve

TOKEN = "tok-9f8e7d6c5b4a"


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []
    #: the path and query parameters of every request
    asked: list[tuple[str, dict[str, list[str]]]] = []
    delay = 0.0
    status = 200
    data: dict[str, Any] = {"resultType": "vector", "result": [{"metric": {}, "value": [1, "3.5"]}]}
    #: a body answered with 200 as it is
    raw: bytes | None = None

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        url = urlsplit(self.path)
        type(self).asked.append((url.path, parse_qs(url.query)))
        time.sleep(type(self).delay)
        if type(self).raw is not None:
            body = type(self).raw
            self.send_response(200)
        elif type(self).status != 200:
            body = json.dumps({"status": "error", "error": f"forbidden for {TOKEN}"}).encode()
            self.send_response(type(self).status)
        else:
            body = json.dumps({"status": "success", "data": type(self).data}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:  # the client gave up (the timeout test): nothing to answer
            pass


def _answering(status: int, said: Callable[[BaseHTTPRequestHandler], bytes], content_type: str = "application/json") -> type[BaseHTTPRequestHandler]:
    """A handler answering every query with ``status`` and the body ``said`` makes of the request: the servers, proxies
    and gateways below whose errors quote what they were sent."""

    class _Answer(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = said(self)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return _Answer


@pytest.fixture
def server() -> Iterator[str]:
    _Recorder.seen, _Recorder.asked, _Recorder.delay, _Recorder.status, _Recorder.raw = [], [], 0.0, 200, None
    _Recorder.data = {"resultType": "vector", "result": [{"metric": {}, "value": [1, "3.5"]}]}
    with serve(_Recorder) as address:
        yield address


def test_bearer_token_and_headers_are_sent(server: str) -> None:
    provider = PrometheusProvider(server, token=TOKEN, headers={"X-Scope-OrgID": "tenant-a"})
    assert provider.run_query("up") == 3.5
    headers = _Recorder.seen[-1]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["X-Scope-OrgID"] == "tenant-a"


def test_timeout_is_unreachable(server: str) -> None:
    _Recorder.delay = 2.0
    provider = PrometheusProvider(server, timeout=timedelta(milliseconds=300))
    start = time.monotonic()
    with pytest.raises(ProviderUnreachable, match="did not answer"):
        provider.run_query("up")
    assert time.monotonic() - start < 1.9


@pytest.mark.parametrize(
    ("data", "says"),
    [({"resultType": "matrix", "result": [{"metric": {}, "values": [[1, "1"], [2, "2"]]}]}, "the query returned a range vector (matrix)"),
     ({"resultType": "string", "result": [1700000000.0, "hello"]}, "the query returned a string, not a number: 'hello'")],
    ids=["matrix", "string"],
)
def test_a_result_that_is_no_single_value_is_a_bad_query_naming_its_type(server: str, data: dict[str, Any], says: str) -> None:
    """A template returning a range vector or a string can never give a value: a config defect in the
    error tree (a failed check, refused by the preflight), not a KeyError or ValueError escaping it."""
    _Recorder.data = data
    with pytest.raises(BadQuery, match=says.replace("(", r"\(").replace(")", r"\)")):
        PrometheusProvider(server).run_query("x[1m]")


def test_http_errors_never_leak_the_token(server: str) -> None:
    _Recorder.status = 403
    provider = PrometheusProvider(server, token=TOKEN)
    with pytest.raises(ProviderUnreachable) as info:
        provider.run_query("up")
    assert "403" in str(info.value)
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value.__cause__)


def _echo_credentials(request: BaseHTTPRequestHandler) -> bytes:
    """An error quoting the request's credentials, JSON-encoded as Go encodes (<, > and & escaped)."""
    said = f"bad request, headers: {request.headers.get('Authorization')} {request.headers.get('X-Scope-OrgID')}"
    return json.dumps({"status": "error", "error": said}).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


@pytest.mark.parametrize("status", [400, 503])
@pytest.mark.parametrize("secret", ["plainSECRET1", "tok&en<SECRET>", "back\\slashSECRET", "it's\"SECRET", "it'sSECRET", "ünïcodeSECRET"])
def test_a_secret_echoed_by_the_server_in_any_escaping_stays_out_of_errors(secret: str, status: int) -> None:
    with serve(_answering(status, _echo_credentials)) as address:
        provider = PrometheusProvider(address, token=secret, headers={"X-Scope-OrgID": f"x{secret}"})
        with pytest.raises(Exception) as info:
            provider.run_query("up")
    text = f"{info.value} {info.value.__cause__!r}"
    assert "bad request" in text or str(status) in text, text
    assert "SECRET" not in text, text


@pytest.mark.parametrize("tenant", ["0", "4", "40", "HTTP", "Status Code"])
def test_a_short_header_value_does_not_hide_the_status_of_a_rejected_query(tenant: str) -> None:
    """A tenant header such as X-Scope-OrgID "0" is a secret scrubbed from what is shown; scrubbed before
    the status was read, "400" became "4<secret><secret>" and a rejected query passed for an outage."""
    with serve(_answering(400, _echo_credentials)) as address, pytest.raises(BadQuery) as info:
        PrometheusProvider(address, headers={"X-Scope-OrgID": tenant}).run_query("up")
    assert str(info.value).startswith("Prometheus rejected the query: bad request, headers: None ")
    assert tenant not in str(info.value).removeprefix("Prometheus rejected the query") and tenant not in repr(info.value.__cause__).replace("400", "")


@pytest.mark.parametrize(("as_json", "pads"), [(True, range(450, 500)), (False, range(200, 300))], ids=["json-reason", "plain-body"])
def test_a_secret_straddling_the_cut_of_a_rejection_is_scrubbed_whole(as_json: bool, pads: range) -> None:
    """The reason of a rejected query is cut to a few hundred characters. Cut before it was scrubbed, a token
    straddling the cut was left in by half ("… auth was Bearer s3cr3t-AAAA"), which no form of the token matches,
    and went on to the check's reason, the journal and the preflight's problems."""
    token = "s3cr3t-" + "A" * 40
    pad = [0]  # set by the loop below before each query

    def straddle(request: BaseHTTPRequestHandler) -> bytes:
        """A rejection whose reason ends quoting the Authorization header after ``pad`` characters: as JSON
        (Prometheus's ``error``) or as plain text (a proxy's)."""
        said = "x" * pad[0] + f" rejected, auth was {request.headers.get('Authorization')}"
        return json.dumps({"status": "error", "errorType": "bad_data", "error": said}).encode() if as_json else said.encode()

    texts = []
    with serve(_answering(400, straddle)) as address:
        provider = PrometheusProvider(address, token=token)
        for pad[0] in pads:  # the cut falls inside the token for some of them, whatever the text around the reason
            with pytest.raises(BadQuery) as info:
                provider.run_query("up")
            texts.append(f"{info.value} {info.value.__cause__!r}")
    assert all("rejected" in text for text in texts)
    assert not [text for text in texts if token[:6] in text], "a prefix of the token is in an error"


def test_connection_refused_is_unreachable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ProviderUnreachable, match=r"could not be reached \(connection refused\)"):
        PrometheusProvider(f"http://127.0.0.1:{port}", timeout=timedelta(seconds=1)).run_query("up")


def test_a_connection_closed_without_an_answer_says_so() -> None:
    """What a client sees through a proxy (the lab's forwarder, an ingress) whose Prometheus is down."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def close_each() -> None:
            for _ in range(4):  # the client's attempts, bounded
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                conn.close()

        threading.Thread(target=close_each, daemon=True).start()
        with pytest.raises(ProviderUnreachable, match=r"could not be reached \(the connection was closed without an answer\)"):
            PrometheusProvider(f"http://127.0.0.1:{port}", timeout=timedelta(seconds=1)).run_query("up")


WHEN = datetime(2026, 12, 1, 7, 35, 4, 250000, tzinfo=UTC)


def test_a_provider_at_a_past_moment_sends_prometheus_time_parameter(server: str) -> None:
    provider = PrometheusProvider(server, token=TOKEN)
    past = provider.at(WHEN)
    assert past.run_query("up") == 3.5
    path, params = _Recorder.asked[-1]
    assert path == "/api/v1/query" and params["time"] == [f"{WHEN.timestamp():.3f}"] and params["query"] == ["up"] and params["timeout"] == ["10s"]
    assert _Recorder.seen[-1]["Authorization"] == f"Bearer {TOKEN}"  # the copy keeps the credentials
    provider.run_query("up")
    assert "time" not in _Recorder.asked[-1][1]  # the original still asks about now


def test_a_provider_at_a_past_moment_ends_its_ranges_there(server: str) -> None:
    PrometheusProvider(server).at(WHEN).run_range("up", 60, 5)
    path, params = _Recorder.asked[-1]
    assert path == "/api/v1/query_range"
    assert params["end"] == [str(round(WHEN.timestamp()))] and params["start"] == [str(round(WHEN.timestamp()) - 60)] and params["step"] == ["5s"]


def test_a_provider_at_a_past_moment_needs_a_timezone_and_keeps_secrets_out_of_errors(server: str) -> None:
    provider = PrometheusProvider(server, token=TOKEN, headers={"X-Scope-OrgID": "tenant-secret"})
    with pytest.raises(ValueError, match="timezone"):
        provider.at(datetime(2026, 12, 1, 7, 35))
    _Recorder.status = 403
    with pytest.raises(ProviderUnreachable) as info:
        provider.at(WHEN).run_query("up")
    text = str(info.value) + repr(info.value.__cause__)
    assert TOKEN not in text and "tenant-secret" not in text


class _Redirect(_Recorder):
    """Sends every query on to ``to`` (another origin, or a path of its own, answered as Prometheus would)."""

    to = ""
    seen: list[dict[str, str]] = []
    asked: list[tuple[str, dict[str, list[str]]]] = []

    def do_GET(self) -> None:
        if self.path.startswith("/moved"):
            super().do_GET()
            return
        type(self).seen.append(dict(self.headers))
        self.send_response(302)
        self.send_header("Location", type(self).to + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.mark.parametrize("elsewhere", [True, False], ids=["another-host", "same-origin"])
def test_a_redirect_to_another_host_carries_no_token_and_no_header(server: str, elsewhere: bool) -> None:
    # requests drops Authorization on such a redirect, but sent the other headers (a tenant, an API key) along
    _Redirect.seen, _Redirect.asked = [], []
    with serve(_Redirect) as front:
        # "localhost" is another host than 127.0.0.1 to a client, whatever it resolves to
        _Redirect.to = server.replace("127.0.0.1", "localhost") if elsewhere else f"{front}/moved"
        provider = PrometheusProvider(front, token=TOKEN, headers={"X-Scope-OrgID": "tenant-7", "X-Api-Key": "key-5e6f"})
        assert provider.run_query("up") == 3.5
    first = {k.lower(): v for k, v in _Redirect.seen[0].items()}
    assert first["authorization"] == f"Bearer {TOKEN}" and first["x-api-key"] == "key-5e6f" and first["x-scope-orgid"] == "tenant-7"
    after = {k.lower(): v for k, v in (_Recorder.seen[-1] if elsewhere else _Redirect.seen[-1]).items()}
    if elsewhere:
        assert not {"authorization", "x-api-key", "x-scope-orgid"} & set(after), after
    else:  # its own origin (an auth proxy's new path) still gets them
        assert after["authorization"] == f"Bearer {TOKEN}" and after["x-api-key"] == "key-5e6f", after


def test_steps_and_timeouts_that_are_not_whole_seconds_are_sent_as_prometheus_parses_them(server: str) -> None:
    # "3.333s" and "1.5s" are refused by Prometheus's duration parser: a judge step of 3333ms (the spec's own
    # advice) or a timeout of 1500ms made every query a BadQuery, and a healthy canary was rolled back
    provider = PrometheusProvider(server, timeout=timedelta(milliseconds=1500))
    provider.run_range("up", 60, 10 / 3)
    params = _Recorder.asked[-1][1]
    assert params["step"] == ["3333ms"] and params["timeout"] == ["1500ms"]
    provider.run_query("up")
    assert _Recorder.asked[-1][1]["timeout"] == ["1500ms"]
    PrometheusProvider(server).run_range("up", 60, 5)
    assert _Recorder.asked[-1][1]["step"] == ["5s"] and _Recorder.asked[-1][1]["timeout"] == ["10s"]


@pytest.mark.parametrize("body", [b'{"status": "error", "errorType": "internal", "error": "frontend overloaded"}', b'{"status": "success", "data": null}'],
                         ids=["error-status", "null-data"])
def test_an_answer_without_a_result_is_no_answer_within_the_metric_errors(server: str, body: bytes) -> None:
    # a 200 without data.result (a proxy, a query frontend) raised KeyError, outside the metric errors: the
    # release took it for an internal error and rolled back at once, whatever threshold said
    _Recorder.raw = body
    with pytest.raises(ProviderUnreachable, match="answered without a result"):
        PrometheusProvider(server, token=TOKEN).run_query("up")
    with pytest.raises(ProviderUnreachable, match="answered without a result"):
        PrometheusProvider(server, token=TOKEN).run_range("up", 60, 5)


@pytest.mark.parametrize(("warnings", "partial"), [
    (["store gateway 2 unavailable: partial response"], True),
    (["PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: \"errors\""], False),
], ids=["partial-response", "promql-info"])
def test_a_partial_answer_is_no_answer(server: str, warnings: list[str], partial: bool) -> None:
    # Thanos, Cortex or Mimir with a store down answer "success" with warnings and what they have: an error
    # rate without the store that holds the canary's 5xx series reads 0 and passed
    _Recorder.raw = json.dumps({"status": "success", "data": _Recorder.data, "warnings": warnings}).encode()
    provider = PrometheusProvider(server, token=TOKEN)
    if partial:
        with pytest.raises(ProviderUnreachable, match="answered in part .store gateway 2 unavailable"):
            provider.run_query("up")
        _Recorder.raw = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}, "warnings": warnings}).encode()
        with pytest.raises(ProviderUnreachable, match="answered in part"):
            provider.run_range("up", 60, 5)
    else:
        assert provider.run_query("up") == 3.5
    _Recorder.raw = None
    assert provider.run_query("up") == 3.5  # the next answer is judged on its own


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_address_s_path_and_query_stay_out_of_errors() -> None:
    """An address may be a secret, its path a tenant's token, its query an API key: errors name its origin only,
    and what the transport or the server quotes of it is scrubbed (the cause kept as well)."""
    private = "/api/prom/t0k3n-s3cr3t?apikey=hunter2"
    port = _closed_port()
    with pytest.raises(ProviderUnreachable) as refused:
        PrometheusProvider(f"http://127.0.0.1:{port}{private}", timeout=timedelta(seconds=1)).run_query("up")
    # a proxy whose errors quote the path and query it was asked for
    echo_path = _answering(503, lambda request: json.dumps({"status": "error", "error": f"no route for {request.path}"}).encode())
    with serve(echo_path) as address, pytest.raises(ProviderUnreachable) as echoed:
        PrometheusProvider(f"{address}{private}").run_range("up", 60, 5)
    assert str(refused.value) == f"Prometheus at http://127.0.0.1:{port} could not be reached (connection refused)"
    assert str(echoed.value).startswith(f"Prometheus at {address} answered HTTP 503: ")
    for info in (refused, echoed):
        text = f"{info.value} {info.value.__cause__!r}"
        assert "t0k3n" not in text and "hunter2" not in text, text


def test_a_short_query_value_of_the_address_is_not_scrubbed_out_of_every_error() -> None:
    # ``?orgId=1`` taken for a secret masked every "1" of what Prometheus said (its line numbers, its counts)
    from canary.adapters.prometheus import _beyond_the_origin

    assert "1" not in _beyond_the_origin("http://prometheus:9090/?orgId=1&apikey=hunter2")
    assert "hunter2" in _beyond_the_origin("http://prometheus:9090/?orgId=1&apikey=hunter2")
    # only a query's short values are let be: a short password, path or fragment is masked still
    assert {"pw9", "/t1", "frg"} <= set(_beyond_the_origin("http://bob:pw9@prom:9090/t1?orgId=1#frg"))
    # the path whole, and of its segments only those that read as tokens: "api" and "v1" are not scrubbed out of every
    # error, a tenant's path is, and so is its token echoed alone
    found = set(_beyond_the_origin("http://prom:9090/api/v1/tenant-x9/"))
    assert {"/api/v1/tenant-x9", "tenant-x9"} <= found and not {"api", "v1"} & found, found
    assert _beyond_the_origin("http://[::1") == ["http://[::1"]  # malformed: never shown, whole or in part


def _unknown_tenant(request: BaseHTTPRequestHandler) -> bytes:
    """A gateway in front of Prometheus that rejects the tenant of the address's path, quoting the segment alone, and
    whose 401 page quotes the credentials it was sent as HTML and as a URL quotes them."""
    import html
    from urllib.parse import quote

    tenant = request.path.split("/")[2]
    auth = request.headers.get("Authorization", "")
    return f"<p>unknown tenant {tenant}; sent {html.escape(auth, quote=True)}, retry with {quote(auth, safe='')}</p>".encode()


def test_a_tenant_token_echoed_alone_and_a_token_echoed_html_or_url_quoted_stay_out_of_errors() -> None:
    # the path was masked whole only ("unknown tenant t0k3nABCDEF1234" went out), and a token only as it is or as
    # JSON quotes it (a proxy's HTML page, a URL's echo, showed it)
    with serve(_answering(401, _unknown_tenant, "text/html")) as address, pytest.raises(Exception) as info:
        PrometheusProvider(f"{address}/t/t0k3nABCDEF1234", token="abc<def>&ghi'\"jkSECRET").run_query("up")
    text = f"{info.value} {info.value.__cause__!r}"
    assert "401" in text and "unknown tenant" in text, text
    assert "t0k3nABCDEF1234" not in text and "SECRET" not in text and "ghi" not in text, text


def _echo_tenant(request: BaseHTTPRequestHandler) -> bytes:
    """A query frontend whose error names the tenant it was sent alone, beside words that hold it."""
    tenant, auth = request.headers.get("X-Scope-OrgID"), request.headers.get("Authorization", "").removeprefix("Bearer ")
    said = f"tenant {tenant} (token {auth}) has no series in namespace production, product-db; tenant=\"{tenant}\""
    return json.dumps({"status": "error", "error": said}).encode()


def test_a_short_header_value_is_masked_where_it_stands_alone_not_inside_words() -> None:
    # X-Scope-OrgID "prod" was masked everywhere: "in namespace <secret>uction, <secret>uct-db" named the tenant by
    # what was left and hid the namespace; the token is masked everywhere still, however short
    with serve(_answering(503, _echo_tenant)) as address, pytest.raises(ProviderUnreachable) as info:
        PrometheusProvider(address, token="uct", headers={"X-Scope-OrgID": "prod"}).run_query("up")
    for text in (str(info.value), repr(info.value.__cause__)):
        assert "tenant <secret> (token <secret>)" in text and text.count("prod") == 2 and "tenant=" in text, text
        assert "namespace prod<secret>ion, prod<secret>-db" in text, text


def test_a_long_header_value_is_masked_wherever_it_appears(server: str) -> None:
    _Recorder.data = {"resultType": "vector", "result": [{"metric": {"ns": "prod-tenant-7x"}, "value": [1, "1"]},
                                                          {"metric": {"ns": "prod"}, "value": [1, "2"]}]}
    with pytest.raises(MultipleValues) as info:
        PrometheusProvider(server, headers={"X-Scope-OrgID": "tenant-7", "X-Short": "prod"}).run_query("up")
    assert "'prod-<secret>x'" in str(info.value) and "'<secret>'" in str(info.value) and "tenant-7" not in str(info.value), info.value
