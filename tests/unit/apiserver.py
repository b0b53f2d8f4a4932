"""A Kubernetes API server in a thread, just enough of one for the kube adapter's own tests.

It serves discovery of v1 ConfigMaps, and gets, lists and watches them, over TLS (a certificate made for the
test, so the adapter's in-cluster path can be tried too), and checks bearer tokens: ``tokens`` holds the
accepted ones, anything else is answered 401. A watch resumes from its ``resourceVersion`` as the real one
does, answers 410 for a version older than ``oldest``, and ends after ``timeoutSeconds``; ``stall`` lists
watch requests (by their number, from 1) that get their headers and then silence: a connection gone half
open.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

NAMESPACE = "ns"
DISCOVERY = {
    "/version": {"major": "1", "minor": "33", "gitVersion": "v1.33.0"},
    "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        {"name": "configmaps", "singularName": "configmap", "namespaced": True, "kind": "ConfigMap",
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
    ]},
}


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    if shutil.which("openssl") is None:
        # `./run` installs it with the other Debian packages: missing, the set-up is broken, not the platform
        pytest.fail("no openssl to make the fake API server's certificate: install it (./run does)", pytrace=False)
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


class ApiServer:
    def __init__(self, directory: Path) -> None:
        self.ca, key = certificate(directory)
        self.tokens: set[str] = set()
        self.seen: list[tuple[str, str]] = []  # (path and query, the bearer token sent)
        self.stall: set[int] = set()
        self.watches = 0
        self.version = 100
        self.oldest = 0
        self.objects: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[int, str, dict[str, Any]]] = []  # (resourceVersion, type, object)
        self.changed = threading.Condition()
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closing.set()
        with self.changed:
            self.changed.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- the objects ---------------------------------------------------------------------------

    def put(self, name: str, data: dict[str, str]) -> None:
        with self.changed:
            self.version += 1
            kind = "MODIFIED" if name in self.objects else "ADDED"
            obj = {"apiVersion": "v1", "kind": "ConfigMap", "data": data,
                   "metadata": {"name": name, "namespace": NAMESPACE, "resourceVersion": str(self.version)}}
            self.objects[name] = obj
            self.log.append((self.version, kind, obj))
            self.changed.notify_all()

    def remove(self, name: str) -> None:
        with self.changed:
            self.version += 1
            obj = self.objects.pop(name)
            self.log.append((self.version, "DELETED", {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.version)}}))
            self.changed.notify_all()

    # --- the HTTP side -------------------------------------------------------------------------

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        url = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        auth = request.headers.get("Authorization") or ""
        token = auth.removeprefix("Bearer ").removeprefix("bearer ")
        self.seen.append((request.path, token))
        if token not in self.tokens:
            return self.answer(request, 401, {"kind": "Status", "status": "Failure", "reason": "Unauthorized", "code": 401, "message": "Unauthorized"})
        if url.path in DISCOVERY:
            return self.answer(request, 200, DISCOVERY[url.path])
        prefix = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
        name = query.get("fieldSelector", "").removeprefix("metadata.name=") or None
        if url.path.startswith(prefix + "/"):
            obj = self.objects.get(url.path.removeprefix(prefix + "/"))
            return self.answer(request, 200, obj) if obj else self.answer(request, 404, {"kind": "Status", "code": 404, "reason": "NotFound"})
        if url.path != prefix:
            return self.answer(request, 404, {"kind": "Status", "code": 404, "reason": "NotFound"})
        if query.get("watch") in ("True", "true"):
            return self.watch(request, query, name)
        with self.changed:
            items = [o for n, o in self.objects.items() if name in (None, n)]
            return self.answer(request, 200, {"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.version)}, "items": items})

    def answer(self, request: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def watch(self, request: BaseHTTPRequestHandler, query: dict[str, str], name: str | None) -> None:
        with self.changed:
            self.watches += 1
            number = self.watches
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Transfer-Encoding", "chunked")
        request.end_headers()
        request.wfile.flush()
        if number in self.stall:  # headers, then nothing: the connection went half open
            self.closing.wait()
            return

        def send(event: dict[str, Any]) -> None:
            line = json.dumps(event).encode() + b"\n"
            request.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            request.wfile.flush()

        deadline = time.monotonic() + float(query.get("timeoutSeconds", "30"))
        with self.changed:
            if "resourceVersion" not in query:  # the state first, as ADDED, then what changes
                since = self.version
                for obj in self.objects.values():
                    if name in (None, obj["metadata"]["name"]):
                        send({"type": "ADDED", "object": obj})
            else:
                since = int(query["resourceVersion"])
                if since < self.oldest:
                    send({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}})
                    since = None  # type: ignore[assignment]
            while since is not None and not self.closing.is_set():
                for version, kind, obj in self.log:
                    if version > since and name in (None, obj["metadata"]["name"]):
                        send({"type": kind, "object": obj})
                since = self.version
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
        request.wfile.write(b"0\r\n\r\n")
        request.wfile.flush()
