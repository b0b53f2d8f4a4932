"""The demo app: a tiny HTTP service standing in for one container of a released version.

Run as a script (``python canary/lab/demoapp.py --listen 10.244.0.7:8080 --image demo:v2``;
it imports nothing of canary, so a pod starts without the package's imports).
It answers every path with its version in the body and the ``X-Version``
header, answers 500 for a share of requests, adds latency, and exports the two
conventional series with prometheus_client on ``/metrics``:

- ``http_requests_total{method, path, status}`` (counter)
- ``http_request_duration_seconds{method, path}`` (histogram)

``/healthz`` and ``/metrics`` are neither counted nor slowed down or failed.

It speaks HTTP/1.1 and, on the same port, HTTP/2 over cleartext with prior knowledge (h2c: a connection that opens
with the HTTP/2 preface), as a gateway does to a Service port whose ``appProtocol`` is ``kubernetes.io/h2c``; the h2
package is imported only when such a connection arrives (without it, the connection is closed). Every answer of
either protocol carries, beside ``X-Version``, the header ``X-Protocol`` with the request's protocol (``HTTP/1.1``
or ``HTTP/2.0``), so that a response read through the gateway tells how the gateway reached the pod.

Its behaviour comes from, in order (later wins):

1. the image's tag (``IMAGE_BEHAVIOURS``; ``v2-flaky-20s`` alternates 20 s
   healthy and 20 s answering half the requests with 500);
2. the environment: ``DEMO_VERSION``, ``DEMO_ERROR_RATE`` (0..1), ``DEMO_LATENCY`` (seconds);
3. the file ``DEMO_CONFIG`` names (a mounted ConfigMap, say), lines ``key: value``
   with the keys ``version``, ``error_rate``, ``latency``, read again every second;

so that a change of env or config alone makes a version faulty. ``--role sidecar``
runs an idle process (a sidecar container), ``--role init`` one that exits 0 at
once (an init container). A set-cookie response is never sent: session
affinity is the gateway's job.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

#: image tag -> (version reported, share of 500s, added latency in seconds)
IMAGE_BEHAVIOURS: dict[str, tuple[str, float, float]] = {
    "v1": ("v1", 0.0, 0.0),
    "v2": ("v2", 0.0, 0.0),
    "v3": ("v3", 0.0, 0.0),
    "v2-faulty": ("v2-faulty", 0.2, 0.0),
    "v2-slow": ("v2-slow", 0.0, 0.6),
    "v2-broken": ("v2-broken", 1.0, 0.0),  # every answer a 500
}
#: ``v2-flaky-<N>s``: N seconds healthy, N seconds answering this share with 500, and so on
FLAKY = re.compile(r"^(?P<version>v\d+)-flaky-(?P<period>\d+)s$")
FLAKY_ERROR_RATE = 0.5
#: images of containers that are not the app: a sidecar that idles, an init container that exits 0
ROLES = {"sidecar": "sidecar", "init": "init"}
#: how long the app answers after SIGTERM (its pod deleted) before it stops: a preStop pause's drain
DRAIN_SECONDS = 1.0

#: the first bytes of an HTTP/2 connection whose client knows the server speaks it (h2c with prior knowledge)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: how long the rest of a preface begun may take to arrive (a peek cannot wait for more bytes, so it looks again)
PREFACE_SECONDS = 5.0
#: how long an HTTP/2 answer waits on its client: for room in its flow-control window, or, once the client has
#: sent all it will (EOF), for the answers still in flight before the connection closes
H2_WAIT_SECONDS = 10.0
#: bytes read from an HTTP/2 connection at once (h2 itself bounds a frame to 16 KiB and a header list to 64 KiB)
H2_READ_BYTES = 65536

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)


def known_tag(tag: str) -> bool:
    return tag in IMAGE_BEHAVIOURS or tag in ROLES or FLAKY.match(tag) is not None


class Behaviour:
    """What the app does now: version, error rate, latency (the flaky tag and the config file change it over time)."""

    def __init__(self, tag: str, env: dict[str, str]) -> None:
        self.started = time.monotonic()
        self.period = 0.0
        flaky = FLAKY.match(tag)
        if flaky:
            self.version, self.error_rate, self.latency = tag, 0.0, 0.0
            self.period = float(flaky.group("period"))
        else:
            self.version, self.error_rate, self.latency = IMAGE_BEHAVIOURS.get(tag, (tag, 0.0, 0.0))
        self.version = env.get("DEMO_VERSION", self.version)
        self.error_rate = float(env.get("DEMO_ERROR_RATE", self.error_rate))
        self.latency = float(env.get("DEMO_LATENCY", self.latency))
        self.config = env.get("DEMO_CONFIG", "")
        self._read_at = 0.0
        self._from_file: dict[str, str] = {}

    def _file(self) -> dict[str, str]:
        if not self.config or time.monotonic() - self._read_at < 1.0:
            return self._from_file
        self._read_at = time.monotonic()
        try:
            lines = open(self.config).read().splitlines()  # noqa: SIM115 - one read
        except OSError:
            return self._from_file
        found = {}
        for line in lines:
            key, sep, value = line.partition(":")
            if sep:
                found[key.strip()] = value.strip()
        self._from_file = found
        return found

    def now(self) -> tuple[str, float, float]:
        settings = self._file()
        version = settings.get("version", self.version)
        error_rate = float(settings.get("error_rate", self.error_rate))
        latency = float(settings.get("latency", self.latency))
        if self.period:
            faulty_window = int((time.monotonic() - self.started) / self.period) % 2 == 1
            error_rate = FLAKY_ERROR_RATE if faulty_window else error_rate
        return version, error_rate, latency


@dataclass(frozen=True)
class Reply:
    """One answer, whichever the protocol: each protocol adds its own framing (status line or ``:status``,
    Content-Length) and the ``X-Protocol`` header."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]


class App:
    """What the app answers to a request, asked alike by the HTTP/1.1 handler and by each HTTP/2 stream, so that both
    protocols fail, slow down and count the same way; one per server, with its own metric registry."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests_total", "HTTP requests answered", ["method", "path", "status"], registry=self.registry)
        self.duration = Histogram("http_request_duration_seconds", "HTTP request duration", ["method", "path"], buckets=_BUCKETS, registry=self.registry)

    def answer(self, method: str, path: str) -> Reply:
        version, error_rate, latency = self.behaviour.now()
        if method not in ("GET", "POST"):  # what http.server answers itself for a method without a do_ method
            return _reply(501, f"unsupported method {method!r}\n".encode(), version)
        if path == "/metrics":
            return _reply(200, generate_latest(self.registry), version, CONTENT_TYPE_LATEST)
        if path == "/healthz":
            return _reply(200, b"ok\n", version)
        start = time.perf_counter()
        if latency:
            time.sleep(latency)
        status = 500 if random.random() < error_rate else 200
        self.requests.labels(method="GET", path="/", status=str(status)).inc()
        self.duration.labels(method="GET", path="/").observe(time.perf_counter() - start)
        return _reply(status, f"{version}\n".encode(), version)


def _reply(status: int, body: bytes, version: str, content_type: str = "text/plain; charset=utf-8") -> Reply:
    return Reply(status, body, (("Content-Type", content_type), ("X-Version", version)))


class _Handler(BaseHTTPRequestHandler):
    app: ClassVar[App]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        # here rather than in the App's reply: http.server's own error answers (400, 501) carry it too
        self.send_header("X-Protocol", self.request_version)

    def do_GET(self) -> None:
        reply = self.app.answer(self.command, self.path)
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_POST = do_GET


def _opens_with_h2_preface(sock: socket.socket, timeout: float | None) -> bool:
    """Whether the client's first bytes are the HTTP/2 preface. Only peeks, so that the HTTP/1.1 handler still reads
    every byte; an HTTP/1.x request shorter than the preface (``GET / HTTP/1.0`` and a blank line) is told apart by
    its first byte that differs, without waiting for more."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + PREFACE_SECONDS
    try:
        first = sock.recv(len(H2_PREFACE), socket.MSG_PEEK)
        while first and len(first) < len(H2_PREFACE) and H2_PREFACE.startswith(first) and time.monotonic() < deadline:
            time.sleep(0.01)  # a preface split across packets: a peek returns what is there at once, so look again
            first = sock.recv(len(H2_PREFACE), socket.MSG_PEEK)
    except OSError:
        return False  # reset or timed out: the HTTP/1.1 handler meets the same and closes, as it always did
    return first == H2_PREFACE


class _H2Connection:
    """One HTTP/2 connection. The server's thread for the connection reads it; each request is answered, once its
    stream has ended, on a thread of its own, so that one answer's latency holds up neither the reading nor the other
    streams. h2's state is shared: every use of it and of the socket holds ``lock``.

    Bounded: h2 refuses a client more open streams than it advertises (100) and reads at most a frame (16 KiB) and a
    header list (64 KiB) ahead; request bodies are dropped as they come and their flow-control window handed back;
    the answering threads are as many as the open streams (``slots``), and a stream the client reset while its
    answer still sleeps keeps its slot until then."""

    def __init__(self, sock: socket.socket, app: App) -> None:
        from h2.config import H2Configuration
        from h2.connection import H2Connection

        self.sock, self.app = sock, app
        # a client that stops reading must not hold the lock, and with it the reading and every answer, for ever: a
        # send that makes no headway for H2_WAIT_SECONDS fails (the socket's own timeout would bound the reads too)
        whole = int(H2_WAIT_SECONDS)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", whole, int((H2_WAIT_SECONDS - whole) * 1e6)))
        # headers as bytes: a value that is no UTF-8 (a latin-1 one a gateway forwards as it came) must not end the connection
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.lock = threading.Condition()
        self.reading = True  # until the client's EOF, GOAWAY or a protocol error: no window update comes after that
        self.writable = True  # until the socket fails or the connection is closed: answers then are dropped
        self.pending: dict[int, tuple[str, str]] = {}  # stream -> (method, path), from its headers until its end
        self.slots = threading.BoundedSemaphore(self.conn.local_settings.max_concurrent_streams)
        self.answering: list[threading.Thread] = []

    def serve(self) -> None:
        from h2.exceptions import H2Error

        with self.lock:
            self.conn.initiate_connection()
            self._flush()
        client_done = False
        while self.reading:
            try:
                data = self.sock.recv(H2_READ_BYTES)
            except OSError:
                break
            if not data:
                client_done = True
                break
            with self.lock:
                try:
                    for event in self.conn.receive_data(data):
                        self._on(event)
                except H2Error:
                    self._flush()  # the GOAWAY h2 prepared says why
                    break
                self._flush()
                self.lock.notify_all()  # a WINDOW_UPDATE may let an answer waiting for room go on
        with self.lock:
            self.reading = False
            self.lock.notify_all()
        if client_done:  # a client that has sent all it will may still read: as HTTP/1.1 does, answer what it asked
            deadline = time.monotonic() + H2_WAIT_SECONDS
            for thread in self.answering:
                thread.join(max(0.0, deadline - time.monotonic()))
        with self.lock:
            self.writable = False

    def _on(self, event: Any) -> None:
        from h2.errors import ErrorCodes
        from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded, StreamReset

        if isinstance(event, RequestReceived):
            headers = dict(event.headers)  # h2 has checked that each pseudo-header comes once
            self.pending[event.stream_id] = (headers.get(b":method", b"").decode("latin-1"), headers.get(b":path", b"").decode("latin-1"))
        elif isinstance(event, DataReceived):
            # a POST's body is read and dropped, its window handed back at once so that the client sends the rest
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, StreamEnded):
            request = self.pending.pop(event.stream_id, None)
            if request is None:
                return
            if not self.slots.acquire(blocking=False):
                self.conn.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
                return
            thread = threading.Thread(target=self._answer, args=(event.stream_id, *request), daemon=True)
            self.answering = [*(t for t in self.answering if t.is_alive()), thread]
            thread.start()
        elif isinstance(event, StreamReset):
            self.pending.pop(event.stream_id, None)
        elif isinstance(event, ConnectionTerminated):
            self.reading = False

    def _answer(self, stream_id: int, method: str, path: str) -> None:
        try:
            self._send(stream_id, self.app.answer(method, path))
        finally:
            self.slots.release()

    def _send(self, stream_id: int, reply: Reply) -> None:
        from h2.errors import ErrorCodes
        from h2.exceptions import H2Error

        headers = [(":status", str(reply.status)), *((name.lower(), value) for name, value in reply.headers),
                   ("x-protocol", "HTTP/2.0"), ("content-length", str(len(reply.body)))]
        body, deadline = reply.body, time.monotonic() + H2_WAIT_SECONDS
        with self.lock:
            try:
                if not self.writable:
                    return
                self.conn.send_headers(stream_id, headers, end_stream=not body)
                self._flush()
                while body and self.writable:
                    room = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
                    if room <= 0:
                        if not self.reading or time.monotonic() >= deadline:
                            self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)  # the client gives no room: give up
                            self._flush()
                            return
                        self.lock.wait(max(0.0, deadline - time.monotonic()))
                        continue
                    self.conn.send_data(stream_id, body[:room], end_stream=len(body) <= room)
                    body = body[room:]
                    self._flush()
            except H2Error:
                pass  # the client reset the stream, or the connection ended, while the answer was on its way

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if not data or not self.writable:
            return
        try:
            self.sock.sendall(data)
        except OSError:
            # the client is gone, or reads nothing: the connection is closed, which ends the reading too
            self.writable = False
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)


class DemoServer(ThreadingHTTPServer):
    """A threading HTTP server, a thread per connection, that serves a connection opening with the HTTP/2 preface
    with h2 and any other with the HTTP/1.1 handler, unchanged."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        super().__init__(address, type("DemoHandler", (_Handler,), {"app": app}))

    def finish_request(self, request: Any, client_address: Any) -> None:
        # the handler's own socket timeout (none, as http.server's default) bounds the peek as it bounds HTTP/1.1's reads
        if not _opens_with_h2_preface(request, _Handler.timeout):
            super().finish_request(request, client_address)
            return
        try:
            import h2.connection  # noqa: F401 - imported here only: a pod's start does without it
        except ImportError:
            sys.stderr.write("demoapp: an HTTP/2 (h2c) connection closed: the h2 package is not installed\n")
            return
        _H2Connection(request, self.app).serve()


def make_server(host: str, port: int, behaviour: Behaviour) -> DemoServer:
    """A server (not yet serving) with its own metric registry."""
    return DemoServer((host, port), App(behaviour))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="canary-demoapp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT to bind")
    parser.add_argument("--image", default="demo:v1", help="a lab image (demo:v1, demo:v2-faulty, demo:v2-flaky-20s …)")
    parser.add_argument("--role", choices=("app", "sidecar", "init"), default="app")
    args = parser.parse_args(argv)
    tag = args.image.rsplit(":", 1)[-1]
    if not known_tag(tag):
        parser.error(f"--image: unknown demo tag {tag!r}; known: {', '.join([*IMAGE_BEHAVIOURS, *ROLES])}, vN-flaky-<seconds>s")
    if args.role == "init":
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.role == "sidecar":
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        return 0
    env = dict(os.environ)
    mounts = json.loads(env.get("DEMO_MOUNTS", "{}"))
    if env.get("DEMO_CONFIG"):
        for inside, real in mounts.items():
            if env["DEMO_CONFIG"].startswith(inside.rstrip("/") + "/"):
                env["DEMO_CONFIG"] = real + env["DEMO_CONFIG"][len(inside.rstrip("/")):]
    host, _, port = args.listen.rpartition(":")
    server = make_server(host or "127.0.0.1", int(port), Behaviour(tag, env))
    # a deleted pod's app keeps answering for a moment, as one with a preStop pause does: its endpoint is gone from
    # the Service by then, and the gateway (which follows EndpointSlices within about 0.1 s) has stopped sending to it
    drain = float(env.get("DEMO_DRAIN_SECONDS", DRAIN_SECONDS))

    def drain_then_stop() -> None:
        time.sleep(drain)
        server.shutdown()

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=drain_then_stop, daemon=True).start())
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
