"""The demo app: a tiny HTTP service standing in for one pod of a released version.

Run as a process (``python -m canary.demoapp --listen 127.0.0.1:8080 --version v2
--error-rate 0.2 --latency 0.6``, or as the script ``canary/demoapp.py``, which is
how the lab starts it: it imports nothing of canary, so a pod starts without the
package's imports). It answers every path with its version in the
body and the ``X-Version`` header, returns 500 for the configured share of
requests and adds the configured latency, and exports the two conventional
series with prometheus_client on ``/metrics``:

- ``http_requests_total{method, path, status}`` (counter)
- ``http_request_duration_seconds{method, path}`` (histogram)

``/healthz`` and ``/metrics`` are neither counted nor slowed down or failed.
The behaviours of the lab's image tags live in ``IMAGE_BEHAVIOURS``.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

#: image tag -> (version reported, share of 500s, added latency in seconds)
IMAGE_BEHAVIOURS: dict[str, tuple[str, float, float]] = {
    "v1": ("v1", 0.0, 0.0),
    "v2": ("v2", 0.0, 0.0),
    "v2-faulty": ("v2-faulty", 0.2, 0.0),
    "v2-slow": ("v2-slow", 0.0, 0.6),
}

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)


class _Handler(BaseHTTPRequestHandler):
    version_text: ClassVar[str] = "v1"
    error_rate: ClassVar[float] = 0.0
    latency: ClassVar[float] = 0.0
    registry: ClassVar[CollectorRegistry]
    requests: ClassVar[Counter]
    duration: ClassVar[Histogram]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Version", self.version_text)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path == "/metrics":
            self._reply(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
            return
        if self.path == "/healthz":
            self._reply(200, b"ok\n")
            return
        start = time.perf_counter()
        if self.latency:
            time.sleep(self.latency)
        status = 500 if random.random() < self.error_rate else 200
        self._reply(status, f"{self.version_text}\n".encode())
        self.requests.labels(method="GET", path="/", status=str(status)).inc()
        self.duration.labels(method="GET", path="/").observe(time.perf_counter() - start)

    do_POST = do_GET


def make_server(host: str, port: int, version: str, error_rate: float, latency: float) -> ThreadingHTTPServer:
    """A server (not yet serving) with its own metric registry."""
    registry = CollectorRegistry()
    handler = type(
        "DemoHandler",
        (_Handler,),
        {
            "version_text": version,
            "error_rate": error_rate,
            "latency": latency,
            "registry": registry,
            "requests": Counter("http_requests_total", "HTTP requests answered", ["method", "path", "status"], registry=registry),
            "duration": Histogram("http_request_duration_seconds", "HTTP request duration", ["method", "path"], buckets=_BUCKETS, registry=registry),
        },
    )
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be a share between 0 and 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be zero or more seconds")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="canary-demoapp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT to bind")
    parser.add_argument("--image", help="a lab image (demo:v1, demo:v2-faulty …): sets version, error rate and latency")
    parser.add_argument("--version", dest="version_text", default="v1")
    parser.add_argument("--error-rate", type=_share, default=0.0, help="share of requests answered 500 (0..1)")
    parser.add_argument("--latency", type=_seconds, default=0.0, help="seconds added to every request")
    args = parser.parse_args(argv)
    if args.image:
        tag = args.image.rsplit(":", 1)[-1]
        if tag not in IMAGE_BEHAVIOURS:
            parser.error(f"--image: unknown demo tag {tag!r}; known: {', '.join(IMAGE_BEHAVIOURS)}")
        args.version_text, args.error_rate, args.latency = IMAGE_BEHAVIOURS[tag]
    host, _, port = args.listen.rpartition(":")
    server = make_server(host or "127.0.0.1", int(port), args.version_text, args.error_rate, args.latency)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
