"""The demo app: a tiny HTTP service standing in for one container of a released version.

Run as a script (``python canary/lab/demoapp.py --listen 10.244.0.7:8080 --image demo:v2``;
it imports nothing of canary, so a pod starts without the package's imports).
It answers every path with its version in the body and the ``X-Version``
header, answers 500 for a share of requests, adds latency, and exports the two
conventional series with prometheus_client on ``/metrics``:

- ``http_requests_total{method, path, status}`` (counter)
- ``http_request_duration_seconds{method, path}`` (histogram)

``/healthz`` and ``/metrics`` are neither counted nor slowed down or failed.

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
import json
import os
import random
import re
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


class _Handler(BaseHTTPRequestHandler):
    behaviour: ClassVar[Behaviour]
    registry: ClassVar[CollectorRegistry]
    requests: ClassVar[Counter]
    duration: ClassVar[Histogram]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def _reply(self, status: int, body: bytes, version: str, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Version", version)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        version, error_rate, latency = self.behaviour.now()
        if self.path == "/metrics":
            self._reply(200, generate_latest(self.registry), version, CONTENT_TYPE_LATEST)
            return
        if self.path == "/healthz":
            self._reply(200, b"ok\n", version)
            return
        start = time.perf_counter()
        if latency:
            time.sleep(latency)
        status = 500 if random.random() < error_rate else 200
        self._reply(status, f"{version}\n".encode(), version)
        self.requests.labels(method="GET", path="/", status=str(status)).inc()
        self.duration.labels(method="GET", path="/").observe(time.perf_counter() - start)

    do_POST = do_GET


def make_server(host: str, port: int, behaviour: Behaviour) -> ThreadingHTTPServer:
    """A server (not yet serving) with its own metric registry."""
    registry = CollectorRegistry()
    handler = type(
        "DemoHandler",
        (_Handler,),
        {
            "behaviour": behaviour,
            "registry": registry,
            "requests": Counter("http_requests_total", "HTTP requests answered", ["method", "path", "status"], registry=registry),
            "duration": Histogram("http_request_duration_seconds", "HTTP request duration", ["method", "path"], buckets=_BUCKETS, registry=registry),
        },
    )
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


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
