"""The lab's components, in start order, each with how to start it and how to tell it works.

``up`` starts what is not running and healthy (so a second ``up`` is a no-op),
``down`` stops everything and removes the network namespace, ``status``
reports each component. A component that cannot start makes ``up`` stop
whatever it started and raise ``LabError`` with the component's name and the
last lines of its log: never a silent partial lab.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canary.adapters import http, stackfile
from canary.adapters.kube import Kube, condition
from canary.errors import CanaryError, LabError
from canary.lab import netns, procs
from canary.lab import prometheus as lab_prometheus
from canary.lab.layout import Layout


@dataclass(frozen=True)
class Component:
    name: str
    start: Callable[[Layout], None]
    healthy: Callable[[Layout], bool]
    address: Callable[[Layout], str] = lambda layout: ""


# --- helpers -----------------------------------------------------------------------------------


def in_netns(name: str, fn: Callable[[], bool]) -> bool:
    """Run ``fn`` on a short-lived thread that entered the namespace (setns affects one thread)."""
    result: list[bool] = []

    def target() -> None:
        try:
            netns.enter(name)
            result.append(fn())
        except Exception:  # noqa: BLE001 - a probe answers False, whatever failed
            result.append(False)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=5)
    return bool(result and result[0])


def _run_in_ns(layout: Layout, name: str, argv: list[str]) -> procs.Proc:
    return procs.start(name, [*netns.prefix(layout.netns), *argv], layout.dir)


def _alive(layout: Layout, name: str) -> bool:
    pid = procs.recorded(layout.dir).get(name)
    return pid is not None and procs.pid_alive(pid)


def _proc(layout: Layout, name: str) -> procs.Proc:
    return procs.Proc(name, procs.recorded(layout.dir)[name], layout.dir / "logs" / f"{name}.log")


def _openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise LabError(f"pki: openssl {args[0]} failed: {done.stderr.strip()[-500:]}")


def _kube(layout: Layout) -> Kube:
    return Kube(layout.kubeconfig, timeout=5)


# --- PKI, kubeconfig, environment ----------------------------------------------------------------


def make_pki(layout: Layout) -> None:
    """A CA, the API server's serving certificate, the service-account key pair, an admin token."""
    pki = layout.pki
    if (pki / "complete").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"),
             "-days", "3650", "-subj", "/CN=canary-lab-ca")
    (pki / "san.cnf").write_text(
        "[req]\ndistinguished_name=dn\n[dn]\n[ext]\nsubjectAltName=IP:127.0.0.1,IP:10.96.0.1,"
        f"IP:{layout.advertise_ip},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pki / "apiserver.key"), "-out", str(pki / "apiserver.csr"),
             "-subj", "/CN=kube-apiserver")
    _openssl("x509", "-req", "-in", str(pki / "apiserver.csr"), "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
             "-CAcreateserial", "-out", str(pki / "apiserver.crt"), "-days", "3650", "-extfile", str(pki / "san.cnf"), "-extensions", "ext")
    _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    token = secrets.token_hex(24)
    _write_private(pki / "admin.token", token)
    _write_private(pki / "tokens.csv", f'{token},admin,admin-uid,"system:masters"\n')
    (pki / "complete").touch()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_kubeconfig(layout: Layout) -> None:
    token = (layout.pki / "admin.token").read_text().strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "canary-lab", "cluster": {"server": layout.api_url, "certificate-authority": str(layout.pki / "ca.crt")}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "canary-lab", "context": {"cluster": "canary-lab", "user": "admin", "namespace": "demo"}}],
        "current-context": "canary-lab",
    }
    _write_private(layout.kubeconfig, stackfile.dump(config))


def write_env_file(layout: Layout) -> None:
    """``source .lab/env`` to use canary, pulumi and kubectl against the lab."""
    env = layout.pulumi_env()
    lines = ["# source this file to use canary, pulumi and kubectl against the canary lab"]
    for key, value in env.items():
        if key == "PATH":
            # the lab's pulumi and kubernetes provider, its language host, and the environment canary runs in (its command)
            bins = [*value.split(os.pathsep)[:3], str(Path(sys.executable).parent)]
            lines.append(f'export PATH="{os.pathsep.join(bins)}{os.pathsep}$PATH"')
        elif key == "PULUMI_CONFIG_PASSPHRASE":
            lines.append(f'export PULUMI_CONFIG_PASSPHRASE_FILE="{layout.dir / "passphrase"}"')
        else:
            lines.append(f'export {key}="{value}"')
    lines.append(f'export CANARY_LAB_DIR="{layout.dir}"')
    _write_private(layout.env_file, "\n".join(lines) + "\n")


# --- components ------------------------------------------------------------------------------------


def _network_start(layout: Layout) -> None:
    netns.create(layout.netns)


def _network_healthy(layout: Layout) -> bool:
    return netns.exists(layout.netns)


def _forwarder_start(layout: Layout) -> None:
    ports = [layout.api_port, layout.gateway_port, layout.prometheus_port, layout.pushgateway_port]
    for port in ports:
        if procs.port_open("127.0.0.1", port):
            raise LabError(f"forwarder: 127.0.0.1:{port} is already in use on this host by another program")
    proc = procs.start("forwarder", [sys.executable, "-m", "canary.lab.netns", layout.netns, *map(str, ports)], layout.dir)
    procs.wait_until(proc, lambda: all(procs.port_open("127.0.0.1", p) for p in ports), 10, "listening on the host's loopback")


def _forwarder_healthy(layout: Layout) -> bool:
    return _alive(layout, "forwarder") and procs.port_open("127.0.0.1", layout.api_port)


def _etcd_start(layout: Layout) -> None:
    etcd = str(layout.tool("etcd"))
    url = f"http://127.0.0.1:{layout.etcd_port}"
    proc = _run_in_ns(layout, "etcd", [
        etcd, "--name=lab", f"--data-dir={layout.dir / 'etcd'}", f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
        f"--listen-peer-urls=http://127.0.0.1:{layout.etcd_port + 1}", f"--initial-advertise-peer-urls=http://127.0.0.1:{layout.etcd_port + 1}",
        f"--initial-cluster=lab=http://127.0.0.1:{layout.etcd_port + 1}", "--log-level=warn", "--quota-backend-bytes=1073741824",
    ])
    procs.wait_until(proc, lambda: _etcd_healthy(layout), 30, f"{url}/health")


def _etcd_healthy(layout: Layout) -> bool:
    return _alive(layout, "etcd") and in_netns(layout.netns, lambda: procs.http_ok(f"http://127.0.0.1:{layout.etcd_port}/health"))


def _apiserver_start(layout: Layout) -> None:
    pki = layout.pki
    proc = _run_in_ns(layout, "kube-apiserver", [
        str(layout.tool("kubernetes", "kube-apiserver")),
        f"--etcd-servers=http://127.0.0.1:{layout.etcd_port}",
        "--bind-address=127.0.0.1", f"--secure-port={layout.api_port}", f"--advertise-address={layout.advertise_ip}",
        "--service-cluster-ip-range=10.96.0.0/16",
        f"--token-auth-file={pki / 'tokens.csv'}", "--authorization-mode=RBAC",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}", f"--client-ca-file={pki / 'ca.crt'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--endpoint-reconciler-type=none", "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
        "--enable-priority-and-fairness=false", "--profiling=false", "--v=1",
    ])
    procs.wait_until(proc, lambda: _apiserver_healthy(layout), 90, f"{layout.api_url}/readyz")


def _apiserver_healthy(layout: Layout) -> bool:
    if not _alive(layout, "kube-apiserver"):
        return False
    return _readyz(layout, (layout.pki / "admin.token").read_text().strip())


def _readyz(layout: Layout, token: str) -> bool:
    status, _ = http.get(f"{layout.api_url}/readyz", headers={"Authorization": f"Bearer {token}"}, verify=str(layout.pki / "ca.crt"), timeout=2)
    return status == 200


_CONTROLLERS = ("deployment-controller,replicaset-controller,endpoints-controller,endpointslice-controller,"
                "garbage-collector-controller,namespace-controller,serviceaccount-controller,"
                "horizontal-pod-autoscaler-controller,disruption-controller")


def _controller_manager_start(layout: Layout) -> None:
    proc = _run_in_ns(layout, "kube-controller-manager", [
        str(layout.tool("kubernetes", "kube-controller-manager")),
        f"--kubeconfig={layout.kubeconfig}", f"--authentication-kubeconfig={layout.kubeconfig}", f"--authorization-kubeconfig={layout.kubeconfig}",
        "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=10257",
        f"--controllers={_CONTROLLERS}", f"--root-ca-file={layout.pki / 'ca.crt'}",
        f"--service-account-private-key-file={layout.pki / 'sa.key'}", "--use-service-account-credentials=false",
        "--concurrent-deployment-syncs=10", "--concurrent-replicaset-syncs=10", "--concurrent-service-endpoint-syncs=10",
        "--endpointslice-updates-batch-period=0s", "--v=1",
    ])
    procs.wait_until(proc, lambda: _cm_healthy(layout), 60, "healthz on 127.0.0.1:10257")


def _cm_healthy(layout: Layout) -> bool:
    return _alive(layout, "kube-controller-manager") and in_netns(layout.netns, lambda: procs.port_open("127.0.0.1", 10257))


def _scheduler_start(layout: Layout) -> None:
    proc = _run_in_ns(layout, "kube-scheduler", [
        str(layout.tool("kubernetes", "kube-scheduler")),
        f"--kubeconfig={layout.kubeconfig}", f"--authentication-kubeconfig={layout.kubeconfig}", f"--authorization-kubeconfig={layout.kubeconfig}",
        "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=10259", "--v=1",
    ])
    procs.wait_until(proc, lambda: _scheduler_healthy(layout), 60, "healthz on 127.0.0.1:10259")


def _scheduler_healthy(layout: Layout) -> bool:
    return _alive(layout, "kube-scheduler") and in_netns(layout.netns, lambda: procs.port_open("127.0.0.1", 10259))


def kwok_stages(layout: Layout) -> str:
    """The fake kubelet's behaviour: a node that is Ready; pods get an IP, and turn Ready once their process serves."""
    pod_ip = '{{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}'
    host_ip = "{{ with NodeIPsWith .spec.nodeName }}hostIP: {{ index . 0 | Quote }}{{ end }}"

    def conditions(ready: str) -> str:
        return "\n".join(
            f"      - type: {t}\n        status: {s!r}\n        lastTransitionTime: {{{{ Now | Quote }}}}"
            for t, s in (("PodScheduled", "True"), ("Initialized", "True"), ("ContainersReady", ready), ("Ready", ready))
        ).replace("'", '"')

    stages = [
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": "lab-node-ready"},
            "spec": {
                "resourceRef": {"apiGroup": "v1", "kind": "Node"},
                "selector": {"matchExpressions": [{"key": '.status.conditions.[] | select( .type == "Ready" ) | .status', "operator": "NotIn", "values": ["True"]}]},
                "next": {"statusTemplate": (
                    "conditions:\n- type: Ready\n  status: \"True\"\n  reason: KubeletReady\n  message: lab node\n"
                    "  lastHeartbeatTime: {{ Now | Quote }}\n  lastTransitionTime: {{ Now | Quote }}\n"
                    "addresses:\n- type: InternalIP\n  address: {{ NodeIP | Quote }}\n- type: Hostname\n  address: {{ NodeName | Quote }}\n"
                    "allocatable: {cpu: \"64\", memory: 256Gi, pods: \"1000\"}\ncapacity: {cpu: \"64\", memory: 256Gi, pods: \"1000\"}\n"
                    "nodeInfo: {architecture: amd64, operatingSystem: linux, kubeletVersion: fake}\nphase: Running\n"
                )},
            },
        },
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": "lab-pod-start"},
            "spec": {
                "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                "selector": {"matchExpressions": [
                    {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                    {"key": ".status.podIP", "operator": "DoesNotExist"},
                ]},
                "next": {"statusTemplate": f"conditions:\n{conditions('False')}\n{host_ip}\npodIP: {pod_ip}\nphase: Pending\nstartTime: {{{{ Now | Quote }}}}\n".replace("\n      ", "\n")},
            },
        },
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": "lab-pod-serving"},
            "spec": {
                "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                "selector": {"matchExpressions": [
                    {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                    {"key": '.metadata.annotations["lab.canary/serving"]', "operator": "In", "values": ["true"]},
                    {"key": '.status.conditions.[] | select( .type == "Ready" ) | .status', "operator": "NotIn", "values": ["True"]},
                ]},
                "next": {"statusTemplate": (
                    f"conditions:\n{conditions('True')}\n".replace("\n      ", "\n")
                    + "containerStatuses:\n{{ range .spec.containers }}\n- image: {{ .image | Quote }}\n  name: {{ .name | Quote }}\n"
                    "  ready: true\n  started: true\n  restartCount: 0\n  state:\n    running:\n      startedAt: {{ Now | Quote }}\n{{ end }}\n"
                    + "phase: Running\n"  # the IP stays as assigned at start: the process is bound to it
                )},
            },
        },
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": "lab-pod-delete"},
            "spec": {
                "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                "selector": {"matchExpressions": [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}]},
                "next": {"delete": True},
            },
        },
    ]
    return stackfile.dump_all(stages)


def _kwok_start(layout: Layout) -> None:
    config = layout.dir / "kwok.yaml"
    config.write_text(kwok_stages(layout))
    _kube(layout).apply({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": layout.node_name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                     "labels": {"kubernetes.io/hostname": layout.node_name, "kubernetes.io/os": "linux", "type": "kwok"}},
    }, field_manager="canary-lab")
    proc = _run_in_ns(layout, "kwok", [
        str(layout.tool("kwok")), f"--config={config}", f"--kubeconfig={layout.kubeconfig}",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        f"--cidr={netns.POD_CIDR}", f"--node-ip={layout.node_ip}", "--server-address=127.0.0.1:10247",
    ])
    procs.wait_until(proc, lambda: _kwok_healthy(layout), 60, f"node {layout.node_name} Ready")
    # A restarted kwok forgets which pod IPs it gave out and would hand them out again:
    # pods from before are recreated (as after a node reboot) so every IP has one owner.
    kube = _kube(layout)
    for pod in kube.list("v1", "Pod"):
        kube.delete("v1", "Pod", pod["metadata"]["name"], pod["metadata"]["namespace"], grace_seconds=0)


def _kwok_healthy(layout: Layout) -> bool:
    if not _alive(layout, "kwok"):
        return False
    try:
        ready = condition(_kube(layout).get("v1", "Node", layout.node_name), "Ready")
    except CanaryError:
        return False
    return bool(ready and ready.get("status") == "True")


def _crds_start(layout: Layout) -> None:
    kube = _kube(layout)
    manifests = []
    for path in sorted(layout.crds_dir().glob("gateway.networking.k8s.io_*.yaml")):
        if "_vap_" in path.name:  # a ValidatingAdmissionPolicy, not a CRD
            continue
        manifests.extend(stackfile.load_all(path.read_text()))
    manifests.append(POD_MONITOR_CRD)
    kube.apply_all(manifests, field_manager="canary-lab")
    kube.wait_for("the Gateway API CRDs to be established", lambda: _crds_healthy(layout), 60)


#: The Prometheus Operator's PodMonitor, as far as the lab needs it: a kind the API server stores
#: (the lab runs no operator; a stack with prometheus.podMonitor declares one, and tests read it back).
POD_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "podmonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com", "scope": "Namespaced",
        "names": {"kind": "PodMonitor", "listKind": "PodMonitorList", "plural": "podmonitors", "singular": "podmonitor"},
        "versions": [{"name": "v1", "served": True, "storage": True,
                      "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}


def _crds_healthy(layout: Layout) -> bool:
    try:
        crd = _kube(layout).get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "httproutes.gateway.networking.k8s.io")
    except CanaryError:
        return False
    established = condition(crd, "Established")
    return bool(established and established.get("status") == "True")


def _traefik_start(layout: Layout) -> None:
    config = {
        "entryPoints": {
            "web": {"address": f":{layout.gateway_port}"},
            "ops": {"address": f"127.0.0.1:{layout.traefik_ping_port}"},
        },
        "ping": {"entryPoint": "ops"},
        "log": {"level": "INFO"},
        # Traefik writes a route's Accepted status when its provider reads the route, and applies the
        # new routing at most every providersThrottleDuration (2 s by default): a weight changed less
        # than 2 s after the one before was accepted up to 2 s before traffic followed it. The lab's
        # gateway applies each change at once, so that an accepted weight is the weight traffic sees.
        "providers": {"providersThrottleDuration": "0s", "kubernetesGateway": {
            "endpoint": layout.api_url,
            "token": str(layout.pki / "admin.token"),
            "certAuthFilePath": str(layout.pki / "ca.crt"),
            "statusAddress": {"ip": "127.0.0.1"},
            "throttleDuration": "0s",
        }},
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
    }
    path = layout.dir / "traefik.yml"
    path.write_text(stackfile.dump(config))
    kube = _kube(layout)
    kube.apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": layout.gateway_class},
                "spec": {"controllerName": "traefik.io/gateway-controller"}}, field_manager="canary-lab")
    kube.apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": layout.gateway_name, "namespace": layout.gateway_namespace},
                "spec": {"gatewayClassName": layout.gateway_class, "listeners": [
                    {"name": "web", "port": layout.gateway_port, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}]}},
               field_manager="canary-lab")
    proc = _run_in_ns(layout, "traefik", [str(layout.tool("traefik")), f"--configFile={path}"])
    procs.wait_until(proc, lambda: _traefik_healthy(layout), 60, f"Gateway {layout.gateway_name} Programmed")


def _traefik_healthy(layout: Layout) -> bool:
    if not _alive(layout, "traefik"):
        return False
    try:
        gateway = _kube(layout).get("gateway.networking.k8s.io/v1", "Gateway", layout.gateway_name, layout.gateway_namespace)
    except CanaryError:
        return False
    programmed = condition(gateway, "Programmed")
    return bool(programmed and programmed.get("status") == "True")


def _prometheus_start(layout: Layout) -> None:
    proc = lab_prometheus.start(layout.dir / "prometheus", f"127.0.0.1:{layout.prometheus_port}", prefix=netns.prefix(layout.netns), proc_dir=layout.dir,
                                pushgateway=f"127.0.0.1:{layout.pushgateway_port}")
    lab_prometheus.wait_ready(proc, layout.prometheus_url, timeout=60)


def _pushgateway_start(layout: Layout) -> None:
    proc = lab_prometheus.start_pushgateway(f"127.0.0.1:{layout.pushgateway_port}", prefix=netns.prefix(layout.netns), proc_dir=layout.dir)
    procs.wait_until(proc, lambda: _pushgateway_healthy(layout), 30, f"GET {layout.pushgateway_url}/-/ready")


def _pushgateway_healthy(layout: Layout) -> bool:
    return _alive(layout, "pushgateway") and procs.http_ok(f"{layout.pushgateway_url}/-/ready")


def _prometheus_healthy(layout: Layout) -> bool:
    return _alive(layout, "prometheus") and procs.http_ok(f"{layout.prometheus_url}/-/ready")


def _pods_start(layout: Layout) -> None:
    proc = procs.start("pods", [*netns.prefix(layout.netns), sys.executable, "-m", "canary.lab.pods", str(layout.dir)], layout.dir)
    procs.wait_until(proc, lambda: "pod supervisor running" in procs.log_tail(proc.log, 50), 30, "pod supervisor running")


def _pods_healthy(layout: Layout) -> bool:
    return _alive(layout, "pods")


LAB_STACK = "lab"


def _lab_stack_files(layout: Layout) -> tuple[Path, Path, bool]:
    """The repository's lab stack file, the working copy's, and whether the copy is missing or older."""
    source = layout.project_dir / "stacks" / f"Pulumi.{LAB_STACK}.yaml"
    stack_file = layout.project / "stacks" / f"Pulumi.{LAB_STACK}.yaml"
    return source, stack_file, not stack_file.exists() or source.stat().st_mtime > stack_file.stat().st_mtime


def _project_start(layout: Layout) -> None:
    """A working copy of the project whose lab stack exists in the lab's Pulumi backend."""
    project = layout.project
    (project / "stacks").mkdir(parents=True, exist_ok=True)
    layout.write_launchers()
    for name in ("Pulumi.yaml", "__main__.py"):
        shutil.copyfile(layout.project_dir / name, project / name)
    source, stack_file, stale = _lab_stack_files(layout)
    if stale:
        # A changed repository file replaces the copy's config; the copy keeps its secrets salt.
        salt = [ln for ln in stack_file.read_text().splitlines() if ln.startswith("encryptionsalt:")] if stack_file.exists() else []
        stack_file.write_text(source.read_text().rstrip("\n") + "\n" + "".join(f"{ln}\n" for ln in salt))
    init_stack(layout, LAB_STACK)


def init_stack(layout: Layout, stack: str, project: Path | None = None) -> None:
    """Create ``stack`` in the lab's backend (a no-op when it exists)."""
    layout.backend_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **layout.pulumi_env()}
    cwd = project or layout.project
    if subprocess.run(["pulumi", "stack", "select", stack], cwd=cwd, env=env, capture_output=True, timeout=60).returncode == 0:
        return
    done = subprocess.run(["pulumi", "stack", "init", stack], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise LabError(f"project: pulumi stack init {stack} failed: {done.stderr.strip()[-500:]}")


def _project_healthy(layout: Layout) -> bool:
    if _lab_stack_files(layout)[2]:
        return False
    env = {**os.environ, **layout.pulumi_env()}
    return (layout.project / "Pulumi.yaml").exists() and subprocess.run(
        ["pulumi", "stack", "select", LAB_STACK], cwd=layout.project, env=env, capture_output=True, timeout=60
    ).returncode == 0


COMPONENTS: tuple[Component, ...] = (
    Component("network", _network_start, _network_healthy, lambda lo: f"netns {lo.netns}, pods {netns.POD_CIDR}"),
    Component("forwarder", _forwarder_start, _forwarder_healthy, lambda lo: f"127.0.0.1:{lo.api_port},{lo.gateway_port},{lo.prometheus_port},{lo.pushgateway_port}"),
    Component("etcd", _etcd_start, _etcd_healthy, lambda lo: f"http://127.0.0.1:{lo.etcd_port} (in netns)"),
    Component("kube-apiserver", _apiserver_start, _apiserver_healthy, lambda lo: lo.api_url),
    Component("kube-controller-manager", _controller_manager_start, _cm_healthy),
    Component("kube-scheduler", _scheduler_start, _scheduler_healthy),
    Component("kwok", _kwok_start, _kwok_healthy, lambda lo: f"node {lo.node_name}"),
    Component("gateway-api-crds", _crds_start, _crds_healthy, lambda lo: "standard channel " + lo.versions["GATEWAY_API_VERSION"]),
    Component("traefik", _traefik_start, _traefik_healthy, lambda lo: f"{lo.gateway_url} (Gateway {lo.gateway_namespace}/{lo.gateway_name})"),
    Component("pushgateway", _pushgateway_start, _pushgateway_healthy, lambda lo: lo.pushgateway_url),
    Component("prometheus", _prometheus_start, _prometheus_healthy, lambda lo: lo.prometheus_url),
    Component("pods", _pods_start, _pods_healthy, lambda lo: "demo processes for pods"),
    Component("project", _project_start, _project_healthy, lambda lo: f"{lo.project} (stack {LAB_STACK}, backend {lo.backend_dir})"),
)

_PROCESSES = ("forwarder", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "traefik", "pushgateway", "prometheus", "pods")


def up(layout: Layout, say: Callable[[str], None] = print) -> dict[str, float]:
    """Start every component that is not healthy; returns seconds spent per component started."""
    layout.dir.mkdir(parents=True, exist_ok=True)
    for tool in ("etcd", "kubernetes", "kwok", "traefik", "gateway-api-crds", "pulumi", "pulumi-resource-kubernetes"):
        layout.tool(tool, "")  # fail fast, before anything starts, when a tool is not built
    make_pki(layout)
    write_kubeconfig(layout)
    write_env_file(layout)
    timings: dict[str, float] = {}
    try:
        for component in COMPONENTS:
            if component.healthy(layout):
                say(f"{component.name}: running")
                continue
            if component.name in _PROCESSES:
                procs.stop(component.name, layout.dir)
            start = time.monotonic()
            component.start(layout)
            timings[component.name] = time.monotonic() - start
            say(f"{component.name}: started in {timings[component.name]:.1f}s")
    except CanaryError as exc:
        say(f"lab up failed; stopping what was started: {exc}")
        down(layout, say=lambda _: None)
        message = str(exc)
        if not any(message.startswith(c.name) for c in COMPONENTS):
            message = f"{component.name}: {message}"
        raise LabError(message) from exc
    return timings


def down(layout: Layout, say: Callable[[str], None] = print) -> None:
    """Stop every component (reverse order) and remove the namespace; leaves data for the next up."""
    for name in reversed(_PROCESSES):
        if name in procs.recorded(layout.dir):
            procs.stop(name, layout.dir)
            say(f"{name}: stopped")
    # Anything still running inside the namespace (e.g. an orphaned demo process) goes with it.
    if netns.exists(layout.netns):
        pids = subprocess.run(["ip", "netns", "pids", layout.netns], capture_output=True, text=True, timeout=10).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        netns.delete(layout.netns)
        say("network: removed")
    # Pods and their processes do not survive the lab: their records go too.
    for stale in (layout.dir / "pods.json",):
        stale.unlink(missing_ok=True)


def status(layout: Layout) -> list[dict[str, Any]]:
    report = []
    for component in COMPONENTS:
        try:
            healthy = component.healthy(layout)
        except Exception:  # noqa: BLE001 - status reports, it never raises
            healthy = False
        pid = procs.recorded(layout.dir).get(component.name)
        report.append({
            "component": component.name,
            "state": "running" if healthy else ("unhealthy" if pid and procs.pid_alive(pid) else "stopped"),
            "pid": pid if pid and procs.pid_alive(pid) else None,
            "address": component.address(layout),
            "log": str(layout.dir / "logs" / f"{component.name}.log") if component.name in _PROCESSES else None,
        })
    return report


def running(layout: Layout) -> bool:
    """Every component of the lab is up and healthy."""
    return all(row["state"] == "running" for row in status(layout))


def pods(layout: Layout) -> list[dict[str, Any]]:
    try:
        return json.loads((layout.dir / "pods.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return []
