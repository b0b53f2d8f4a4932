"""examples/existing-program on the lab (issue 14): a team's program deployed with plain `pulumi up`, moved
under canary without one failed request while traffic flows through the gateway, then released through
every weight.

The example runs as a user runs it: a copy of its directory, its own stack in the lab's backend (its own
namespace and host name, so that it runs beside the other lab tests), the Pulumi CLI for the program as
it was before canary, and the canary CLI afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from canary.adapters import stackfile
from canary.adapters.kube import Kube
from canary.adapters.stack import Stack
from canary.core import naming
from canary.core.naming import Track
from canary.errors import CanaryError
from canary.lab import cluster
from canary.lab.layout import Layout
from tests.conftest import ROOT
from tests.lab.conftest import stack_name
from tests.lab.helpers import LabStack, RouteWatcher, Steady, assert_stable_state, drive, host, wait_until

EXAMPLE = ROOT / "examples" / "existing-program"


def _example(layout: Layout, tmp_path: Path, name: str) -> Path:
    """A copy of the example whose stack ``name`` runs in namespace ``name`` behind host ``host(name)``,
    with the program as it was before canary in ``__main__.py`` (the adopted one waits in ``after.py``)."""
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    lab_file = project / "Pulumi.lab.yaml"
    document = stackfile.load(lab_file.read_text())
    config = document["config"]
    config["shop:namespace"] = name
    config["shop:hostname"] = host(name)
    for hook in config["canary:apps"]["web"]["analysis"]["webhooks"]:
        hook["cmd"] = hook["cmd"].replace("shop.lab.test", host(name))
    lab_file.unlink()
    (project / f"Pulumi.{name}.yaml").write_text(stackfile.dump(document))
    shutil.copyfile(project / "__main__.py", project / "after.py")
    shutil.copyfile(project / "before.py", project / "__main__.py")
    cluster.init_stack(layout, name, project)
    return project


def _pulumi(project: Path, env: dict[str, str], *args: str, timeout: float = 600) -> str:
    done = subprocess.run(["pulumi", *args], cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"pulumi {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.long(5)
@pytest.mark.timeout(1500)
def test_the_existing_program_is_adopted_without_a_failed_request_and_then_released(lab: Layout, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    name = stack_name(request)
    project = _example(lab, tmp_path, name)
    env = {**os.environ, **lab.pulumi_env(), "CANARY_LAB_DIR": str(lab.dir)}
    kube = Kube(lab.kubeconfig)
    handle = LabStack(lab, project, name, name, env, kube)
    url, host_name = f"{lab.gateway_url}/", host(name)
    try:
        # before canary: the team's program, with plain pulumi
        _pulumi(project, env, "config", "set", "--secret", "apiToken", "s3cr3t-for-the-shop", "--stack", name)
        _pulumi(project, env, "up", "--yes", "--skip-preview", "--stack", name)
        # the gateway takes a new route within moments; until then another stack's route without host names answers
        wait_until(lambda: drive(url, 10, host_name=host_name) == {"v1": 10}, "the program's route answering", 60, every=0.5)
        assert drive(url, 40, host_name=host_name) == {"v1": 40}
        service, route = (kube.get(*kind, "web", name) for kind in (("v1", "Service"), ("gateway.networking.k8s.io/v1", "HTTPRoute")))
        assert service is not None and route is not None

        # the adoption, while users keep asking
        shutil.copyfile(project / "after.py", project / "__main__.py")
        preview = _pulumi(project, env, "preview", "--stack", name)
        assert "+-1 to replace" in preview and "2 to update" in preview and "to delete" not in preview, preview[-3000:]
        with Steady(url, host_name) as steady:
            time.sleep(2)
            adopted = handle.cli("up", name)
            time.sleep(3)  # the gateway's last changes, and the old pods' end, under traffic too
        print(f"during the adoption: {dict(steady.counts)}, failures {steady.failures[:5]}")
        assert adopted.returncode == 0, adopted.stdout[-3000:] + adopted.stderr[-3000:]
        assert "web: deployed for the first time, running demo:v1" in adopted.stdout, adopted.stdout[-3000:]
        assert not steady.failures, (steady.failures[:20], dict(steady.counts))
        assert set(steady.counts) == {"v1"} and steady.counts["v1"] >= 100, dict(steady.counts)

        assert kube.get("apps/v1", "Deployment", "web", name) is None  # the old Deployment is gone …
        assert_stable_state(handle, "demo:v1")  # … web-stable runs the same image, the route is at rest
        stable = kube.get("apps/v1", "Deployment", "web-stable", name)
        assert stable is not None
        container = stable["spec"]["template"]["spec"]["containers"][0]
        assert container["envFrom"][0]["secretRef"]["name"].startswith("web-secrets-")  # the content-addressed copies
        assert stable["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"].startswith("web-config-")
        # the Service and the route were taken over in place (aliases), not deleted and created again
        new_service = kube.get("v1", "Service", "web", name)
        new_route = kube.get("gateway.networking.k8s.io/v1", "HTTPRoute", "web", name)
        assert new_service is not None and new_route is not None
        assert new_service["metadata"]["uid"] == service["metadata"]["uid"] and new_route["metadata"]["uid"] == route["metadata"]["uid"]
        assert new_service["spec"]["selector"] == naming.selector("web", Track.STABLE)
        # … keeping what the program's Service declared beside canary's port (service=), which the apply would have removed
        assert new_service["metadata"]["labels"].get("app") == "web", new_service["metadata"]
        assert {(p["name"], p["port"]) for p in new_service["spec"]["ports"]} == {("http", 80), ("metrics", 9090)}, new_service["spec"]
        assert new_service["spec"]["type"] == service["spec"]["type"]
        urns = [r["urn"] for r in Stack(project, name, env).export()["deployment"]["resources"]]
        assert not [urn for urn in urns if "::kubernetes:" in urn and urn.endswith("::web")], urns  # the old URNs live on as the children's aliases

        # a release: the image is the program's config (the app is declared by the program), canary up releases it
        _pulumi(project, env, "config", "set", "image", "demo:v2", "--stack", name)
        with RouteWatcher(handle) as watcher:
            released = handle.cli("up", name)
        assert released.returncode == 0, released.stdout[-3000:] + released.stderr[-3000:]
        assert [w for w in watcher.canary_weights if w] == [10, 20, 30, 40, 50], watcher.seen
        assert watcher.seen[-1] == (100, 0) and watcher.stable_images[-1] == "demo:v2", watcher.seen
        assert_stable_state(handle, "demo:v2")
        assert "Succeeded" in released.stdout and "promoted demo:v2" in released.stdout, released.stdout[-3000:]
        assert drive(url, 40, host_name=host_name) == {"v2": 40}

        # `canary release --image` on an app the program declares: it sets the key the component names
        again = handle.release("demo:v3")
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert stackfile.read_stack_file(project / f"Pulumi.{name}.yaml")["shop:image"] == "demo:v3"
        assert_stable_state(handle, "demo:v3")
    finally:
        try:
            Stack(project, name, env).destroy()
        except CanaryError as exc:
            print(f"could not destroy stack {name}: {exc}")
