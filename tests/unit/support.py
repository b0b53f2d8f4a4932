"""Shared helpers of the unit tests (and the lab's): a recording HTTP receiver on 127.0.0.1, a loopback server for a
handler of one's own, a free port, a bounded poll, a Stack adapter without the Pulumi CLI.

The receiver answers every request with the status it is told (or, for a
path it is told about, another status and headers: a redirect), records the
method, path, headers and body of each, and can be told to hang (accept a
request and answer nothing until released), so that timeouts can be tested
without a real webhook, chat service or Pushgateway.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

#: The longest any helper here waits for something: a test never hangs on a helper.
BOUND_S = 10.0


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """What the test server answers, and what it got."""

    def __init__(self) -> None:
        self.status = 200
        #: path -> (status, headers) answered to a request for that path instead of ``status`` (a redirect)
        self.answers: dict[str, tuple[int, dict[str, str]]] = {}
        self.requests: list[Received] = []
        #: set to make the server hold every request until ``release`` is set (or BOUND_S passed)
        self.hang = False
        self.release = threading.Event()
        #: set when a request arrived (before any hang)
        self.arrived = threading.Event()
        self._lock = threading.Lock()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, request: Received) -> None:
        with self._lock:
            self.requests.append(request)
        self.arrived.set()

    def wait_for(self, count: int, timeout: float = BOUND_S) -> list[Received]:
        """The first ``count`` requests, once they arrived (bounded)."""
        assert poll(lambda: len(self.requests) >= count, timeout), f"{len(self.requests)} of {count} requests arrived within {timeout}s"
        with self._lock:
            return list(self.requests[:count])


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            receiver.record(Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if receiver.hang:
                receiver.release.wait(BOUND_S)
                return  # the client gave up long ago: answer nothing
            status, headers = receiver.answers.get(self.path, (receiver.status, {}))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_GET = do_DELETE = _any  # noqa: N815 (http.server's method names)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (a timeout under test) is expected, not a failure of the server


@contextmanager
def http_receiver() -> Iterator[Receiver]:
    """A recording HTTP server on 127.0.0.1, shut down on exit (a hanging request released first)."""
    receiver = Receiver()
    server = _Server(("127.0.0.1", 0), _handler(receiver))
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.shutdown()
        server.server_close()
        thread.join(BOUND_S)


@contextmanager
def trickling_server(seconds: float) -> Iterator[str]:
    """A server on 127.0.0.1 that answers one request one byte every 0.2 s for ``seconds`` (then closes), its
    status line and headers too (a client that reads the headers only waits as long): no read ever waits long,
    yet the answer takes ``seconds``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(BOUND_S)
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000

    def serve() -> None:
        with suppress(OSError), listener.accept()[0] as conn:
            conn.recv(65536)
            end = time.monotonic() + seconds
            for byte in answer:
                if time.monotonic() >= end:
                    break
                conn.sendall(bytes([byte]))
                time.sleep(0.2)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(seconds + 1)


def refused_url() -> str:
    """An http:// URL on 127.0.0.1 where nothing listens (a port just bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def poll(condition: Callable[[], bool], timeout: float = BOUND_S, every: float = 0.01) -> bool:
    """Whether ``condition`` became true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


class NoCliStack:
    """The Stack adapter with its CLI calls answered: the stack file read as canary reads it, the outputs ``OUTPUTS``
    (a subclass says what its program exported)."""

    OUTPUTS: dict[str, Any] = {"canary/web": {"namespace": "shop", "uids": {"stableDeployment": "uid-1"}}}

    def __init__(self, project_dir: Path, name: str, env: Any = None, **_: Any) -> None:
        from canary.adapters import stack as stack_adapter

        self._real = stack_adapter.Stack.__new__(stack_adapter.Stack)
        self._real.project_dir, self._real.name, self._real._env, self._real._secrets = project_dir.resolve(), name, dict(env or {}), ()
        self._real._stack = SimpleNamespace(get_all_config=lambda: {})

    def config(self, text: str | None = None) -> dict[str, Any]:
        return self._real.config(text)

    def outputs(self) -> dict[str, Any]:
        return self.OUTPUTS


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A loopback HTTP server on a free port answering with ``handler`` for the block; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
