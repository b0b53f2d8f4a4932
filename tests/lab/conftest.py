"""The lab for end-to-end tests: started once per session; a test that needs it fails (never skips) when it cannot start.

Each test gets its own stack and namespace in a temporary copy of the project,
so that tests never touch the repository's stack files and never see each
other's resources; the stack is destroyed afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import yaml

from canary.errors import LabError
from canary.kube import ClusterReader, Kube
from canary.lab import cluster
from canary.lab.layout import Layout
from canary.stack import Stack
from tests.conftest import ROOT

T = TypeVar("T")


@pytest.fixture(scope="session")
def lab() -> Layout:
    layout = Layout.default()
    try:
        cluster.up(layout, say=lambda line: None)
    except LabError as exc:
        pytest.fail(f"the lab could not start: {exc}", pytrace=False)
    return layout


@dataclass
class LabStack:
    layout: Layout
    project: Path
    name: str
    namespace: str
    stack: Stack
    kube: Kube

    @property
    def env(self) -> dict[str, str]:
        import os

        return {**os.environ, **self.layout.pulumi_env()}

    @property
    def reader(self) -> ClusterReader:
        return ClusterReader(self.kube)

    def spec(self) -> Any:
        return self.stack.spec()


def make_project(layout: Layout, tmp_path: Path, name: str, mutate: Callable[[dict[str, Any]], None] | None = None) -> Path:
    project = tmp_path / "project"
    (project / "stacks").mkdir(parents=True)
    for file in ("Pulumi.yaml", "__main__.py"):
        shutil.copyfile(ROOT / file, project / file)
    document = yaml.safe_load((ROOT / "stacks" / "Pulumi.lab.yaml").read_text())
    document["config"]["canary:app"]["namespace"] = name
    # Every test stack's route answers its own host name only, so routes of other stacks never take its traffic.
    document["config"]["canary:gateway"]["hostnames"] = [host(name)]
    for hook in document["config"]["canary:analysis"].get("webhooks", []):
        if hook.get("cmd", "").startswith("hey "):
            hook["cmd"] = hook["cmd"].replace("hey ", f"hey -host {host(name)} ", 1)
    if mutate:
        mutate(document["config"])
    (project / "stacks" / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    cluster.init_stack(layout, name, project)
    return project


@pytest.fixture
def lab_stack(lab: Layout, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LabStack]:
    """A stack of its own (name and namespace from the test's name), deployed at its stable state."""
    name = "t-" + request.node.name.removeprefix("test_").replace("_", "-")[:40].strip("-").lower()
    mutate = getattr(request, "param", None)
    project = make_project(lab, tmp_path, name, mutate)
    import os

    stack = Stack(project, name, {**os.environ, **lab.pulumi_env()})
    stack.up()
    handle = LabStack(lab, project, name, name, stack, Kube(lab.kubeconfig))
    yield handle
    stack.destroy()


def host(stack: str) -> str:
    return f"{stack}.lab.test"


def drive(url: str, count: int, workers: int = 8, seconds: float = 120, host_name: str | None = None) -> dict[str, int]:
    """A bounded burst: ``count`` GETs (at most ``seconds``); answers counted by X-Version (or status)."""
    session = requests.Session()
    if host_name:
        session.headers["Host"] = host_name
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=workers))
    deadline = time.monotonic() + seconds

    def one(_: int) -> str:
        if time.monotonic() > deadline:
            return "skipped"
        try:
            response = session.get(url, timeout=10)
        except requests.RequestException as exc:
            return type(exc).__name__
        return response.headers.get("X-Version", f"status-{response.status_code}")

    counts: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for answer in pool.map(one, range(count)):
            counts[answer] = counts.get(answer, 0) + 1
    return counts


def wait_until(condition: Callable[[], T], what: str | Callable[[], str], timeout: float, process: subprocess.Popen[str] | None = None,
               every: float = 0.05) -> T:
    """Poll ``condition`` until it is truthy and return its value; fail naming ``what`` (a callable: as it
    is at the timeout) at the timeout, or at once (with its output) when ``process`` — the release under
    test — exits first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the release exited {process.returncode} before {what() if callable(what) else what}:\n{out[-2000:]}\n{err[-2000:]}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g}s: {what() if callable(what) else what}")
        time.sleep(every)


@contextlib.contextmanager
def running(process: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """The release under test, killed (and reaped) if the test leaves it running."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
