"""The kube adapter on the real API server: a service-account token that rotates during a release, the
pod's service account when there is no kubeconfig (a CI job in a pod), and a watch across its windows.

A token bound to a Secret (a TokenRequest's ``boundObjectRef``) is refused once that Secret is deleted:
the way to make an old token die at a moment of the test's choosing, as a rotation does.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from canary.adapters import stackfile
from canary.adapters.kube import Kube
from canary.errors import CanaryError, Forbidden
from canary.lab.layout import Layout

SA = "canary-ci"


@pytest.fixture
def namespace(lab: Layout) -> Iterator[str]:
    admin = Kube(lab.kubeconfig)
    name = f"t-kube-creds-{secrets.token_hex(3)}"
    admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    for manifest in (
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SA, "namespace": name}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": SA, "namespace": name},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "update"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": SA, "namespace": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SA},
         "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": name}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe", "namespace": name}, "data": {"n": "0"}},
    ):
        admin.create(manifest)
    yield name
    admin.delete("v1", "Namespace", name)


def _token(admin: Kube, namespace: str, bound_to: str) -> str:
    """A token of the service account, bound to a new Secret ``bound_to``: valid until that Secret goes."""
    secret = admin.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": bound_to, "namespace": namespace}})
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
        "expirationSeconds": 3600, "boundObjectRef": {"apiVersion": "v1", "kind": "Secret", "name": bound_to, "uid": secret["metadata"]["uid"]}}}
    answer = admin.dynamic.request("post", f"/api/v1/namespaces/{namespace}/serviceaccounts/{SA}/token", body=body)
    return str(answer.status.token)


def _refused(lab: Layout, token: str, namespace: str) -> bool:
    config = _kubeconfig(lab, {"token": token})
    try:
        Kube(config).get("v1", "ConfigMap", "probe", namespace)
    except Forbidden:
        return True
    return False


def _kubeconfig(lab: Layout, user: dict[str, Any]) -> str:
    document = stackfile.load(lab.kubeconfig.read_text())
    document["users"] = [{"name": "ci", "user": user}]
    document["contexts"][0]["context"]["user"] = "ci"
    return stackfile.dump(document)


def test_a_token_file_rotated_during_a_release_is_read_again(lab: Layout, namespace: str, tmp_path: Path) -> None:
    admin = Kube(lab.kubeconfig)
    token_a, token_b = _token(admin, namespace, "bound-a"), _token(admin, namespace, "bound-b")
    token_file = tmp_path / "token"
    token_file.write_text(token_a)
    config = tmp_path / "kubeconfig"
    config.write_text(_kubeconfig(lab, {"tokenFile": str(token_file)}))
    kube = Kube(config)
    assert kube.get("v1", "ConfigMap", "probe", namespace) is not None

    token_file.write_text(token_b)  # the rotation: B in the file, A dead
    admin.delete("v1", "Secret", "bound-a", namespace)
    deadline = time.monotonic() + 60  # the API server caches a token's verdict for a few seconds
    while not _refused(lab, token_a, namespace):
        assert time.monotonic() < deadline, "token A still accepted a minute after its Secret went"
        time.sleep(1)
    assert kube.get("v1", "ConfigMap", "probe", namespace) is not None
    assert not _refused(lab, token_b, namespace)


def test_with_no_kubeconfig_in_a_pod_the_pods_service_account_is_used(lab: Layout, namespace: str, tmp_path: Path) -> None:
    admin = Kube(lab.kubeconfig)
    service_account = tmp_path / "serviceaccount"
    service_account.mkdir()
    token_a = _token(admin, namespace, "bound-a")
    (service_account / "token").write_text(token_a)
    (service_account / "ca.crt").write_bytes((lab.pki / "ca.crt").read_bytes())
    env = {"HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(lab.api_port)}
    kube = Kube(env=env, service_account=service_account)
    assert kube.get("v1", "ConfigMap", "probe", namespace) is not None

    (service_account / "token").write_text(_token(admin, namespace, "bound-b"))  # the kubelet rotated it
    admin.delete("v1", "Secret", "bound-a", namespace)
    deadline = time.monotonic() + 60
    while not _refused(lab, token_a, namespace):
        assert time.monotonic() < deadline, "token A still accepted a minute after its Secret went"
        time.sleep(1)
    assert kube.get("v1", "ConfigMap", "probe", namespace) is not None


def test_a_watch_goes_on_across_its_windows_without_missing_a_change(lab: Layout, namespace: str) -> None:
    # windows of 2 s on the real API server: each resumed at the last resourceVersion (an event's or a
    # bookmark's), not one change lost between them
    kube = Kube(lab.kubeconfig)
    kube.WATCH_WINDOW = 2
    seen: list[str] = []
    failed: list[BaseException] = []

    def consume() -> None:
        try:
            for change in kube.changes("v1", "ConfigMap", 9, name="probe", namespace=namespace):
                seen.append((change["object"].get("data") or {}).get("n", ""))
        except CanaryError as exc:
            failed.append(exc)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    for n in range(1, 13):
        time.sleep(0.6)
        obj = kube.get("v1", "ConfigMap", "probe", namespace)
        assert obj is not None
        kube.replace({**obj, "data": {"n": str(n)}})
    thread.join(20)
    assert not failed and not thread.is_alive()
    assert seen == [str(n) for n in range(13)], seen
