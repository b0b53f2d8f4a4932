"""The lab's components outlive the process that starts them (``lab up`` returns, the lab runs on)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from canary.adapters.processes import pid_alive
from canary.errors import LabError
from canary.lab import procs

STARTER = "import pathlib, sys; from canary.lab import procs; procs.start('sleeper', ['sleep', '60'], pathlib.Path(sys.argv[1]))"


def test_a_component_left_running_when_its_starter_exits_is_no_warning_and_runs_on(tmp_path: Path) -> None:
    # A pytest worker that restored the lab printed "Exception ignored in Popen.__del__: ResourceWarning:
    # subprocess … is still running" at exit, once per component, under the project's warnings-as-errors.
    try:
        done = subprocess.run([sys.executable, "-W", "error", "-c", STARTER, str(tmp_path)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        assert pid_alive(procs.recorded(tmp_path)["sleeper"])
    finally:
        procs.stop("sleeper", tmp_path, grace=1)
    assert procs.recorded(tmp_path) == {}


def _http_server(run_dir: Path) -> tuple[Callable[[int], procs.Proc], Callable[[procs.Proc, int], None]]:
    def start_at(port: int) -> procs.Proc:
        return procs.start("web", [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)], run_dir)

    def ready(proc: procs.Proc, port: int) -> None:
        procs.wait_until(proc, lambda: procs.http_ok(f"http://127.0.0.1:{port}/"), 10, "GET /")

    return start_at, ready


def test_a_port_taken_between_its_pick_and_the_bind_is_picked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What failed a lab run: another process bound the picked port before the demo pod did ("Address already in use").
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        picks = iter([taken.getsockname()[1], procs.free_port()])
        real = procs.free_port
        monkeypatch.setattr(procs, "free_port", lambda: next(picks, None) or real())
        proc, port = procs.start_listening(*_http_server(tmp_path), tmp_path)
        try:
            assert port != taken.getsockname()[1]
            assert procs.http_ok(f"http://127.0.0.1:{port}/")
            assert "Address already in use" in (tmp_path / "logs" / "web.log").read_text()  # the first attempt's
        finally:
            procs.stop(proc.name, tmp_path, grace=1)


def test_a_process_that_fails_otherwise_is_not_started_again(tmp_path: Path) -> None:
    starts: list[int] = []

    def start_at(port: int) -> procs.Proc:
        starts.append(port)
        return procs.start("broken", [sys.executable, "-c", "raise SystemExit('no such config')"], tmp_path)

    with pytest.raises(LabError, match="no such config"):
        procs.start_listening(start_at, _http_server(tmp_path)[1], tmp_path)
    assert len(starts) == 1
    assert procs.recorded(tmp_path) == {}


def test_the_lab_env_file_puts_canary_itself_on_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the README's walkthrough runs `source .lab/env`, then `canary up lab`: canary, installed in the project's
    # environment, was not on the PATH the file set
    import shlex

    from canary.lab import cluster
    from canary.lab.layout import Layout

    layout = Layout(tmp_path / ".lab", tmp_path, tools_dir=tmp_path / "tools")
    layout.dir.mkdir()
    tools = [str(tmp_path / "tools" / name) for name in ("pulumi", "provider", "bin")]
    monkeypatch.setattr(Layout, "pulumi_env", lambda self: {"KUBECONFIG": "kubeconfig", "PATH": ":".join([*tools, "/usr/bin"])})
    cluster.write_env_file(layout)
    done = subprocess.run(["bash", "-c", f"source {shlex.quote(str(layout.env_file))} && command -v canary"],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and Path(done.stdout.strip()).parent == Path(sys.executable).parent, done.stdout + done.stderr


@contextlib.contextmanager
def _demo_app() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The lab's demo app (demo:v1) on a free loopback port, answering /healthz; killed at the end if still running."""
    import time
    import urllib.request

    from canary.lab import demoapp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = subprocess.Popen([sys.executable, demoapp.__file__, "--listen", f"127.0.0.1:{port}", "--image", "demo:v1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "the demo app did not start"
                time.sleep(0.05)
        yield app, port
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()


def test_the_demo_app_answers_for_its_drain_after_sigterm_then_stops() -> None:
    # a deleted pod's app stopped at once: the gateway, a moment behind the EndpointSlice, sent it a request or two
    # more, answered 502 (one request of a release's stable rollout under traffic)
    import signal
    import time
    import urllib.request

    from canary.lab import demoapp

    with _demo_app() as (app, port):
        app.send_signal(signal.SIGTERM)
        time.sleep(demoapp.DRAIN_SECONDS / 2)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200  # still answering: draining
        assert app.wait(timeout=demoapp.DRAIN_SECONDS + 5) == 0


def test_a_new_pod_on_a_draining_pod_s_address_takes_it_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # kwok hands a freed pod IP to the next pod first: in a rolling update the next new pod of the app needed the
    # address a deleted pod's app was still draining on, failed to bind, and its probe was answered by the old version
    import time

    from canary.lab import pods

    monkeypatch.setattr(pods, "Kube", lambda *a, **k: None)
    supervisor = pods.Supervisor(tmp_path)
    with _demo_app() as (old, port):
        run = pods.Running("uid-old", "shop", "web-1", "127.0.0.1", port, "demo:v1", {}, [old])
        supervisor._stop(run, "pod deleted", wait=False)
        time.sleep(0.1)
        assert old.poll() is None  # draining
        supervisor._free(f"127.0.0.1:{port}")
        assert old.poll() is not None
        with socket.socket() as new:
            new.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            new.bind(("127.0.0.1", port))  # the new pod's app binds its address
