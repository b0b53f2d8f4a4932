"""The lab for end-to-end tests: started once; a test that needs it fails (never skips) when it cannot start.

Every test here carries the ``lab`` marker. Each test releases on a stack and a
namespace of its own, in a temporary copy of the project, so tests run in
parallel (pytest-xdist) without seeing each other's resources; the stack is
destroyed afterwards. A test marked ``disruptive`` (it stops a lab component,
or the whole lab) holds the lab alone: the others hold a shared lock on it,
the disruptive ones an exclusive one, and restore the lab before they let go.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from canary import api
from canary.adapters import stackfile
from canary.adapters.kube import Kube
from canary.adapters.stack import Stack
from canary.errors import CanaryError, LabError
from canary.lab import cluster
from canary.lab.layout import Layout
from tests.conftest import ROOT
from tests.lab.helpers import LabStack, descendants, host
from tests.lab.holds import LabHolds

LAB_TEST_TIMEOUT = 600


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    # The tests that take minutes first, the longest of them first (the sort keeps the rest in order):
    # started last, one of them would hold the parallel run open for minutes with the other workers idle.
    def minutes(item: pytest.Item) -> float:
        marker = item.get_closest_marker("long")
        return -(marker.args[0] if marker.args else 2) if marker else 0

    items.sort(key=minutes)
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.lab)
            if item.get_closest_marker("timeout") is None:
                # A lab test's bound against a hang, setup and teardown included: a release with its
                # stack's deploy and destroy takes 1-3 minutes alone, up to twice that with three other
                # workers' releases on the two cores (300 s cut two healthy tests short in a CI run).
                item.add_marker(pytest.mark.timeout(LAB_TEST_TIMEOUT))


@pytest.fixture(scope="session")
def lab_layout() -> Layout:
    layout = Layout.for_project(ROOT)
    try:
        LabHolds(layout.dir).ensure_running(lambda: cluster.running(layout), lambda: cluster.up(layout, say=lambda line: None))
    except LabError as exc:
        pytest.fail(f"the lab could not start: {exc}", pytrace=False)
    return layout


@pytest.fixture
def lab(lab_layout: Layout, request: pytest.FixtureRequest) -> Iterator[Layout]:
    """The running lab, shared with the other tests — or held alone by a ``disruptive`` test, which
    leaves it running again."""
    disruptive = request.node.get_closest_marker("disruptive") is not None
    with LabHolds(lab_layout.dir).held(exclusive=disruptive):
        if disruptive:
            cluster.up(lab_layout, say=lambda line: None)
        yield lab_layout
        if disruptive:
            try:
                cluster.up(lab_layout, say=lambda line: None)
            except LabError as exc:
                pytest.fail(f"the lab could not be restored after a disruptive test: {exc}", pytrace=False)


@contextlib.contextmanager
def watchdog(layout: Layout, namespace: str, seconds: float) -> Iterator[None]:
    """When the block runs longer than ``seconds``, print what it may be waiting for (the Pulumi
    processes below this one, the namespace's objects and their conditions): shown with a failure."""
    done = threading.Event()

    def report() -> None:
        if done.wait(seconds):
            return
        print(f"--- still running after {seconds:g}s: {namespace}")
        for pid in descendants(os.getpid()):
            with contextlib.suppress(OSError):
                print("  process", pid, Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160])
        kube = Kube(layout.kubeconfig)
        with contextlib.suppress(CanaryError, Exception):
            for kind, version in (("Deployment", "apps/v1"), ("Pod", "v1"), ("Service", "v1"), ("HTTPRoute", "gateway.networking.k8s.io/v1")):
                for obj in kube.list(version, kind, namespace):
                    status = obj.get("status") or {}
                    conditions = status.get("conditions") or [c for p in status.get("parents") or [] for c in p.get("conditions") or []]
                    print(f"  {kind} {obj['metadata']['name']}: " + ", ".join(f"{c['type']}={c['status']}" for c in conditions))

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def make_project(layout: Layout, tmp_path: Path, name: str, mutate: object = None, init: bool = True) -> Path:
    """A copy of the project whose stack ``name`` is the lab stack in namespace ``name``, answering its own host name."""
    project = tmp_path / "project"
    (project / "stacks").mkdir(parents=True)
    for file in ("Pulumi.yaml", "__main__.py"):
        shutil.copyfile(ROOT / file, project / file)
    document = stackfile.load((ROOT / "stacks" / "Pulumi.lab.yaml").read_text())
    config = document["config"]
    config["canary:app"]["namespace"] = name
    # Every test stack's route answers its own host name only, so routes of other stacks never take its traffic.
    config["canary:gateway"]["hostnames"] = [host(name)]
    for hook in config["canary:analysis"].get("webhooks", []):
        if hook.get("cmd", "").startswith("hey "):
            hook["cmd"] = hook["cmd"].replace("hey ", f"hey -host {host(name)} ", 1)
    if callable(mutate):
        mutate(config)
    (project / "stacks" / f"Pulumi.{name}.yaml").write_text(stackfile.dump(document))
    if init:
        cluster.init_stack(layout, name, project)
    return project


def stack_name(request: pytest.FixtureRequest) -> str:
    """``t-<the test's name>``, cut to fit a namespace, with a short hash of the whole name (parameters included)."""
    import hashlib

    name = request.node.name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    base = "".join(c if c.isalnum() else "-" for c in name.removeprefix("test_").lower())[:34].strip("-")
    return f"t-{base}-{digest}"


@pytest.fixture
def lab_stack(lab: Layout, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LabStack]:
    """A stack of its own (name and namespace from the test's name), deployed at its stable state (demo:v1)."""
    name = stack_name(request)
    mutate = getattr(request, "param", None)
    project = make_project(lab, tmp_path, name, mutate)
    env = {**os.environ, **lab.pulumi_env(), "CANARY_LAB_DIR": str(lab.dir)}
    try:
        with watchdog(lab, name, 200):
            outcome = api.up(name, project_dir=project, env=env)
        assert outcome.exit_code == 0, outcome.message
    except BaseException:
        _destroy(project, name, env)  # a first deploy cut short (a time-out) leaves no namespace behind
        raise
    handle = LabStack(lab, project, name, name, env, Kube(lab.kubeconfig))
    yield handle
    _destroy(project, name, env)


def _destroy(project: Path, name: str, env: dict[str, str]) -> None:
    try:
        Stack(project, name, env).destroy()
    except CanaryError as exc:  # a test that broke the stack on purpose: say so, do not hide the test's own result
        print(f"could not destroy stack {name}: {exc}")
    try:
        # the component keeps a namespace it created (it may hold others' objects); the test's own is deleted
        Kube(Path(env["KUBECONFIG"])).delete("v1", "Namespace", name)
    except (CanaryError, KeyError) as exc:
        print(f"could not delete namespace {name}: {exc}")
