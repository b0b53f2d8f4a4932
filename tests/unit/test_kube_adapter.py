"""The kube adapter's loading of a kubeconfig given as content (kubernetes:kubeconfig, a Pulumi secret)."""

from __future__ import annotations

import socket
import threading
import time
import traceback
from pathlib import Path

import pytest

from canary.adapters.kube import Kube
from canary.errors import CanaryError, Forbidden

TOKEN = "sa-token-s3cr3t-0123456789"

KUBECONFIG = f"""apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {{server: "https://127.0.0.1:1"}}
users:
- name: u
  user: {{token: {TOKEN}}}
contexts:
- name: prod
  context: {{cluster: c, user: u}}
current-context: prod
"""


@pytest.mark.parametrize(("content", "context", "said"), [
    (KUBECONFIG, "staging", "Expected object with name staging in kube-config/contexts list"),  # a context it does not have
    (KUBECONFIG.replace(f"{{token: {TOKEN}}}", f"{{token: {TOKEN}: x}}"), None, "at line 8, column"),  # a parser's error quotes the line
], ids=["missing-context", "parser-error"])
def test_an_inline_kubeconfig_that_cannot_be_loaded_is_named_never_shown(content: str, context: str | None, said: str) -> None:
    with pytest.raises(Forbidden) as info:
        Kube(content, context=context)
    message = str(info.value)
    assert "kubeconfig given inline (kubernetes:kubeconfig)" in message and said in message, message
    assert TOKEN not in message and "https://127.0.0.1:1" not in message
    assert TOKEN not in "".join(traceback.format_exception(info.value))


def test_a_kubeconfig_file_that_cannot_be_loaded_is_named_by_its_path() -> None:
    with pytest.raises(Forbidden, match=r"cannot load kubeconfig /nonexistent/kubeconfig"):
        Kube("/nonexistent/kubeconfig")


def test_an_unanswered_call_is_sent_once(tmp_path: Path) -> None:
    # the client's pool was built before retries were turned off: urllib3 tried an unanswered call four
    # times (a lease renewal stalled past the lease) and sent a write whose answer was lost again
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(10)
    connections: list[float] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            connections.append(time.monotonic())
            conn.recv(65536)
            conn.close()  # read the request, answer nothing

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG.replace('"https://127.0.0.1:1"', f'"https://127.0.0.1:{server.getsockname()[1]}", insecure-skip-tls-verify: true'))
    try:
        with pytest.raises(CanaryError):
            Kube(str(kubeconfig), timeout=2).get("v1", "ConfigMap", "x", "ns")
    finally:
        server.close()
        thread.join(timeout=5)
    assert len(connections) == 1, connections
