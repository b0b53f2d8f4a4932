"""The lab's demo app in process: HTTP/1.1 and h2c (HTTP/2 with prior knowledge) on one port, answered alike.

The h2c client is h2's own client side over a plain socket, as a gateway reaching a Service port whose appProtocol
is ``kubernetes.io/h2c`` talks to a pod. Everything stays on loopback, every read has a timeout.
"""

from __future__ import annotations

import ast
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset

from canary.lab import demoapp

TIMEOUT = 10


@pytest.fixture
def serve() -> Iterator[object]:
    """Starts a demo server on a free loopback port with the given environment, returns its port; stops them all."""
    servers: list[demoapp.DemoServer] = []

    def start(tag: str = "v2", **env: str) -> int:
        server = demoapp.make_server("127.0.0.1", 0, demoapp.Behaviour(tag, env))
        servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return int(server.server_address[1])

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _h2c(port: int, paths: list[str], method: str = "GET", body: bytes = b"", half_close: bool = False, preface_pause: float = 0.0,
         last_extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[dict[str, str], bytes]]:
    """Sends one request per path, all on one connection at once, and returns each stream's headers and body
    (``last_extra``: more headers on the last request, as bytes)."""
    conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        conn.initiate_connection()
        opening = conn.data_to_send()
        if preface_pause:  # the preface split across two writes, the second a moment later
            sock.sendall(opening[:10])
            time.sleep(preface_pause)
            opening = opening[10:]
        sock.sendall(opening)
        streams = []
        for i, path in enumerate(paths):
            stream_id = conn.get_next_available_stream_id()
            request: list[tuple[Any, Any]] = [(":method", method), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"), (":path", path)]
            if last_extra and i == len(paths) - 1:
                request += last_extra
            conn.send_headers(stream_id, request, end_stream=not body)
            streams.append(stream_id)
        sock.sendall(conn.data_to_send())
        headers: dict[int, dict[str, str]] = {}
        bodies = dict.fromkeys(streams, b"")
        ended: set[int] = set()
        unsent = dict.fromkeys(streams, body)
        writing = [True]  # until the half-close: a half-closed client sends nothing more, not even acknowledgements

        def receive() -> None:
            data = sock.recv(65536)
            assert data, "the demo app closed the connection"
            for event in conn.receive_data(data):
                assert not isinstance(event, StreamReset), event
                if isinstance(event, ResponseReceived):
                    headers[event.stream_id] = dict(event.headers)
                elif isinstance(event, DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded):
                    ended.add(event.stream_id)
            if writing[0]:
                sock.sendall(conn.data_to_send())

        while any(unsent.values()):  # request bodies as the server's flow-control windows let them go
            sent = False
            for stream_id, rest in unsent.items():
                room = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size, len(rest))
                if room:
                    conn.send_data(stream_id, rest[:room], end_stream=room == len(rest))
                    unsent[stream_id], sent = rest[room:], True
            sock.sendall(conn.data_to_send())
            if not sent:
                receive()  # no room left: wait for the server's WINDOW_UPDATE
        if half_close:
            sock.shutdown(socket.SHUT_WR)
            writing[0] = False
        while len(ended) < len(streams):
            receive()
        return [(headers[stream_id], bodies[stream_id]) for stream_id in streams]


def _http11(port: int, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT) as response:
        return response.status, dict(response.headers), response.read()


def test_an_h2c_client_with_prior_knowledge_gets_the_version_over_http2(serve) -> None:
    port = serve("v2")
    [(headers, body)] = _h2c(port, ["/"])
    assert headers[":status"] == "200"
    assert body == b"v2\n"
    assert headers["x-version"] == "v2"
    assert headers["x-protocol"] == "HTTP/2.0"
    assert headers["content-length"] == "3"


def test_several_streams_on_one_connection_are_answered_at_once_not_one_after_the_other(serve) -> None:
    # each answer sleeps the latency on a thread of its own: one stream's latency must not hold up the others
    port = serve("v2", DEMO_LATENCY="0.5")
    started = time.monotonic()
    answers = _h2c(port, ["/", "/a", "/b"])
    assert [(headers[":status"], body) for headers, body in answers] == [("200", b"v2\n")] * 3
    assert time.monotonic() - started < 1.2


def test_metrics_count_the_h2_requests_with_the_http1_labels(serve) -> None:
    port = serve("v2")
    _h2c(port, ["/", "/x"])
    _http11(port)
    [(headers, metrics)] = _h2c(port, ["/metrics"])
    assert headers[":status"] == "200"
    assert b'http_requests_total{method="GET",path="/",status="200"} 3.0' in metrics
    assert b'http_request_duration_seconds_count{method="GET",path="/"} 3.0' in metrics
    _, _, scraped = _http11(port, "/metrics")  # as Prometheus scrapes: HTTP/1.1
    assert b'http_requests_total{method="GET",path="/",status="200"} 3.0' in scraped


def test_http11_still_works_on_the_same_port_and_says_so(serve) -> None:
    port = serve("v1")
    status, headers, body = _http11(port)
    assert (status, body, headers["X-Version"], headers["X-Protocol"]) == (200, b"v1\n", "v1", "HTTP/1.1")
    status, headers, body = _http11(port, "/healthz")
    assert (status, body, headers["X-Protocol"]) == (200, b"ok\n", "HTTP/1.1")


def test_an_http10_request_shorter_than_the_preface_is_answered_without_waiting_for_more(serve) -> None:
    # the peek must not wait for 24 bytes: "GET / HTTP/1.0" and a blank line are 18, and the client then waits
    port = serve("v1")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"X-Protocol: HTTP/1.0" in answer
    assert answer.endswith(b"\r\n\r\nv1\n")


def test_a_preface_split_across_writes_is_still_http2(serve) -> None:
    port = serve("v2")
    [(headers, body)] = _h2c(port, ["/"], preface_pause=0.2)
    assert (headers[":status"], headers["x-protocol"], body) == ("200", "HTTP/2.0", b"v2\n")


def test_a_faulty_version_answers_500_over_h2_too(serve) -> None:
    port = serve("v2", DEMO_ERROR_RATE="1")
    answers = _h2c(port, ["/", "/"])
    assert [(headers[":status"], body) for headers, body in answers] == [("500", b"v2\n")] * 2
    assert all(headers["x-protocol"] == "HTTP/2.0" for headers, _ in answers)
    [(_, metrics)] = _h2c(port, ["/metrics"])
    assert b'http_requests_total{method="GET",path="/",status="500"} 2.0' in metrics
    [(headers, body)] = _h2c(port, ["/healthz"])  # neither failed nor counted, as over HTTP/1.1
    assert (headers[":status"], body) == ("200", b"ok\n")


def test_a_post_body_larger_than_the_flow_control_window_is_read_and_dropped(serve) -> None:
    # h2's initial window is 65535 bytes: the client can send the rest only if the app hands the window back
    port = serve("v2")
    [(headers, body)] = _h2c(port, ["/"], method="POST", body=b"x" * 300_000)
    assert (headers[":status"], body) == ("200", b"v2\n")


def test_a_method_http11_does_not_serve_is_not_served_over_h2_either(serve) -> None:
    port = serve("v2")
    [(headers, _)] = _h2c(port, ["/"], method="PUT")
    assert (headers[":status"], headers["x-protocol"]) == ("501", "HTTP/2.0")


def test_a_client_that_has_sent_all_it_will_still_gets_its_answers(serve) -> None:
    port = serve("v2", DEMO_LATENCY="0.2")
    answers = _h2c(port, ["/", "/"], half_close=True)
    assert [(headers[":status"], body) for headers, body in answers] == [("200", b"v2\n")] * 2


def test_a_stream_the_client_resets_while_its_answer_sleeps_leaves_the_connection_serving(serve) -> None:
    port = serve("v2", DEMO_LATENCY="0.2")
    conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":authority", "demo"), (":path", "/")], end_stream=True)
        conn.reset_stream(1)
        conn.send_headers(3, [(":method", "GET"), (":scheme", "http"), (":authority", "demo"), (":path", "/")], end_stream=True)
        sock.sendall(conn.data_to_send())
        answered: dict[int, str] = {}
        while 3 not in answered:
            data = sock.recv(65536)
            assert data, "the demo app closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, ResponseReceived):
                    answered[event.stream_id] = dict(event.headers)[":status"]
            sock.sendall(conn.data_to_send())
        time.sleep(0.1)  # the reset stream's answer, done sleeping, finds its stream gone: no error escapes its thread
    assert answered == {3: "200"}


def test_a_client_breaking_the_protocol_gets_a_goaway_and_the_server_goes_on(serve) -> None:
    port = serve("v2")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(demoapp.H2_PREFACE + b"\x00\x00\x04\x09\x00\x00\x00\x00\x01nope")  # a CONTINUATION with no HEADERS
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert b"\x07\x00\x00\x00\x00\x00" in received  # a GOAWAY frame (type 7, stream 0), then the close
    [(headers, _)] = _h2c(port, ["/"])
    assert headers[":status"] == "200"


def test_without_h2_an_h2c_connection_is_closed_at_once_and_http11_goes_on(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name == "h2" or name.startswith("h2.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as where h2 is not installed: its import fails
    port = serve("v2")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(demoapp.H2_PREFACE)
        assert sock.recv(4096) == b""
    assert _http11(port)[0] == 200


def test_the_demo_app_imports_nothing_of_canary() -> None:
    # a pod runs it as a script: the package is not importable there, nor worth its start time
    tree = ast.parse(Path(demoapp.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not [name for name in imported if name == "canary" or name.startswith("canary.")]


def test_a_header_value_that_is_no_utf8_is_answered_and_ends_no_other_stream(serve) -> None:
    # a gateway forwards a latin-1 header value as it came: decoded as UTF-8 it raised out of the connection, no
    # GOAWAY sent, and the other stream in flight on it (here the first, slowed down) never answered
    port = serve("v2", DEMO_LATENCY="0.3")
    answers = _h2c(port, ["/", "/x"], last_extra=[(b"x-name", b"caf\xe9")])
    assert [(headers[":status"], body) for headers, body in answers] == [("200", b"v2\n"), ("200", b"v2\n")]


def test_a_client_that_stops_reading_gets_its_connection_closed_and_frees_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that asks (PINGs, each answered) and never reads fills the socket's buffers: the send that would wait
    for ever gives up after H2_WAIT_SECONDS and the connection is closed, its thread and lock freed."""
    monkeypatch.setattr(demoapp, "H2_WAIT_SECONDS", 0.5)
    client_sock, server_sock = socket.socketpair()
    for sock in (client_sock, server_sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection = demoapp._H2Connection(server_sock, demoapp.App(demoapp.Behaviour("v2", {})))
    serving = threading.Thread(target=connection.serve, daemon=True)
    serving.start()
    conn = H2Connection(H2Configuration(client_side=True))
    conn.initiate_connection()
    client_sock.settimeout(0.2)
    deadline = time.monotonic() + TIMEOUT
    try:
        while serving.is_alive() and time.monotonic() < deadline:
            conn.ping(b"12345678")
            client_sock.sendall(conn.data_to_send())
    except OSError:
        pass  # the server reads no more: closed, or as full as the client
    serving.join(TIMEOUT)
    assert not serving.is_alive(), "the demo app's connection still waits to send to a client that reads nothing"
    assert not connection.writable
    assert connection.lock.acquire(timeout=1)
    client_sock.close()
    server_sock.close()
