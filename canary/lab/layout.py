"""Where the lab keeps things: its directory, ports, tool binaries and environment.

The lab directory is ``<project>/.lab`` — the project being the one every other
command finds from the current directory (or ``--project-dir``) — or
``$CANARY_LAB_DIR``. It holds the PKI, etcd's data, logs, pid files, the
kubeconfig, the environment file, the Pulumi file backend, the lab's working
copy of the project and the launcher of the Python language host. Tools come
from the build cache (``tools/build-lab-tools.sh``), keyed by the versions in
``canary/lab/versions.env`` (package data: an installed canary needs no checkout).
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

from canary.errors import InvalidSpec, LabError


@cache
def versions() -> dict[str, str]:
    out = {}
    for line in resources.files("canary.lab").joinpath("versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _project(project_dir: Path | None) -> Path:
    """The project the lab belongs to: given, ``$CANARY_PROJECT_DIR``, or found from the current directory. One given
    or named is checked as every command checks it (InvalidSpec, exit 2): taken as it was, a directory that does not
    exist had a lab described (``lab status``) or found not running (``demo``) in it."""
    from canary.adapters.stackfile import check_project, find_project_dir

    if project_dir is not None:
        return check_project(project_dir, "--project-dir")
    if os.environ.get("CANARY_PROJECT_DIR"):
        return find_project_dir()  # checked, naming the variable
    try:
        return find_project_dir()
    except InvalidSpec as exc:
        raise LabError("project: the lab needs a Pulumi project (Pulumi.yaml with stacks/Pulumi.lab.yaml): run it in one or give --project-dir") from exc


@dataclass(frozen=True)
class Layout:
    dir: Path
    project_dir: Path
    tools_dir: Path = field(default_factory=lambda: Path(os.environ.get("CANARY_TOOLS", Path.home() / ".cache" / "canary" / "tools")))
    netns: str = "canary-lab"
    api_port: int = 16443
    gateway_port: int = 18080
    prometheus_port: int = 19090
    pushgateway_port: int = 19091
    etcd_port: int = 12379
    traefik_ping_port: int = 18082
    #: Inside the namespace only: the API server's advertised address and the fake node's.
    advertise_ip: str = "10.244.255.253"
    node_ip: str = "10.244.255.254"
    node_name: str = "lab-node"
    gateway_name: str = "lab"
    gateway_namespace: str = "default"
    gateway_class: str = "canary-lab"

    @classmethod
    def for_project(cls, project_dir: Path | None = None) -> Layout:
        """The lab of the project (its ``.lab``), or of ``$CANARY_LAB_DIR`` when set."""
        env = os.environ.get("CANARY_LAB_DIR")
        if env:
            lab_dir = Path(env).resolve()
            project = _project(project_dir) if project_dir else _lab_source(lab_dir) or _project(None)
            return cls(dir=lab_dir, project_dir=project)
        project = _project(project_dir)
        if project.name == "project" and project.parent.name == ".lab":
            # the lab's own working copy: its lab is the one it lives in
            return cls(dir=project.parent, project_dir=_lab_source(project.parent) or project)
        return cls(dir=project / ".lab", project_dir=project)

    @property
    def versions(self) -> dict[str, str]:
        return versions()

    def tool(self, tool: str, binary: str | None = None) -> Path:
        """Path of a built tool's binary; LabError naming the build command when missing."""
        key = {"pulumi": "PULUMI_VERSION", "pulumi-resource-kubernetes": "PULUMI_KUBERNETES_VERSION",
               "kubernetes": "KUBERNETES_VERSION", "kwok": "KWOK_VERSION", "etcd": "ETCD_VERSION", "traefik": "TRAEFIK_VERSION",
               "gateway-api-crds": "GATEWAY_API_VERSION"}[tool]
        base = self.tools_dir / f"{tool}-{self.versions[key]}"
        path = base / "bin" / (binary or tool) if binary != "" else base
        if not (base / ".complete").exists() or not path.exists():
            raise LabError(f"{tool}: not built at {base}; run tools/build-lab-tools.sh {tool}")
        return path

    def crds_dir(self) -> Path:
        return self.tool("gateway-api-crds", "") / "crds"

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    @property
    def project(self) -> Path:
        """The lab's working copy of the project: its stack file carries the lab's secrets salt."""
        return self.dir / "project"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def env_file(self) -> Path:
        return self.dir / "env"

    @property
    def pulumi_home(self) -> Path:
        return self.dir / "pulumi-home"

    @property
    def backend_dir(self) -> Path:
        return self.dir / "state"

    @property
    def bin_dir(self) -> Path:
        """The lab's own launchers: the Python language host for plain ``pulumi up``."""
        return self.dir / "bin"

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def pushgateway_url(self) -> str:
        return f"http://127.0.0.1:{self.pushgateway_port}"

    def passphrase(self) -> str:
        """The lab stack's secrets passphrase: random, made once, kept 0600 in the lab directory."""
        path = self.dir / "passphrase"
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    def write_launchers(self) -> None:
        """``pulumi-language-python``: this interpreter running canary's language host."""
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        launcher = self.bin_dir / "pulumi-language-python"
        launcher.write_text(f'#!/bin/sh\n# The lab\'s Python language host for plain `pulumi up` (canary.lab.langhost).\nexec "{sys.executable}" -m canary.lab.langhost "$@"\n')
        launcher.chmod(0o755)
        (self.dir / "source").write_text(str(self.project_dir) + "\n")

    def pulumi_env(self) -> dict[str, str]:
        """Environment for the Pulumi CLI against the lab: local backend, offline, tools on PATH."""
        bins = [self.tool("pulumi").parent, self.tool("pulumi-resource-kubernetes").parent, self.bin_dir]
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PULUMI_HOME": str(self.pulumi_home),
            "PULUMI_BACKEND_URL": f"file://{self.backend_dir}",
            "PULUMI_CONFIG_PASSPHRASE": self.passphrase(),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PATH": os.pathsep.join([*map(str, bins), os.environ.get("PATH", "")]),
        }


def _lab_source(lab_dir: Path) -> Path | None:
    """The project a lab directory was started for (written at ``lab up``)."""
    try:
        text = (lab_dir / "source").read_text().strip()
    except OSError:
        return None
    return Path(text) if text else None
