"""Where the lab keeps things: its directory, ports, tool binaries and environment.

The lab directory (``.lab/`` in the project, or ``$CANARY_LAB_DIR``) holds the
PKI, etcd's data, logs, pid files, the kubeconfig, the environment file and the
Pulumi file backend. Tools come from the build cache (``tools/build-lab-tools.sh``),
keyed by the versions in ``tools/versions.env``.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from canary.errors import LabError

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent


def _versions(project_dir: Path) -> dict[str, str]:
    path = project_dir / "tools" / "versions.env"
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class Layout:
    dir: Path
    project_dir: Path = PROJECT_DIR
    tools_dir: Path = field(default_factory=lambda: Path(os.environ.get("CANARY_TOOLS", Path.home() / ".cache" / "canary" / "tools")))
    netns: str = "canary-lab"
    api_port: int = 16443
    gateway_port: int = 18080
    prometheus_port: int = 19090
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
    def default(cls) -> Layout:
        return cls(dir=Path(os.environ.get("CANARY_LAB_DIR", PROJECT_DIR / ".lab")).resolve())

    @property
    def versions(self) -> dict[str, str]:
        return _versions(self.project_dir)

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
        """The lab's working copy of the project: its stack file carries the lab's secrets salt and weights."""
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
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def passphrase(self) -> str:
        """The lab stack's secrets passphrase: random, made once, kept 0600 in the lab directory."""
        path = self.dir / "passphrase"
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    def pulumi_env(self) -> dict[str, str]:
        """Environment for the Pulumi CLI against the lab: local backend, offline, tools on PATH."""
        bins = [self.tool("pulumi").parent, self.tool("pulumi-resource-kubernetes").parent, self.project_dir / "tools" / "bin"]
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PULUMI_HOME": str(self.pulumi_home),
            "PULUMI_BACKEND_URL": f"file://{self.backend_dir}",
            "PULUMI_CONFIG_PASSPHRASE": self.passphrase(),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "false",
            "PATH": os.pathsep.join([*map(str, bins), os.environ.get("PATH", "")]),
        }
