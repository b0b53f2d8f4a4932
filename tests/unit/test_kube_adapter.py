"""The kube adapter: where its client comes from (a kubeconfig given as content, a file, the pod's service
account), credentials that change during a release, and watches that outlive a dead connection."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from canary import api
from canary.adapters import kube as kube_adapter
from canary.adapters.kube import Kube
from canary.errors import CanaryError, Forbidden
from tests.unit.apiserver import NAMESPACE, ApiServer

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
    assert "kubeconfig given as content in the stack config's kubernetes:kubeconfig" in message and said in message, message
    assert TOKEN not in message and "https://127.0.0.1:1" not in message
    assert TOKEN not in "".join(traceback.format_exception(info.value))


def test_a_kubeconfig_file_that_cannot_be_loaded_is_named_by_its_path() -> None:
    with pytest.raises(Forbidden, match=r"cannot load kubeconfig /nonexistent/kubeconfig"):
        Kube(Path("/nonexistent/kubeconfig"))


def _one_line(server: ApiServer) -> str:
    """A kubeconfig of the fake API server as one line of JSON (``jq -c``, a stack output pasted into the stack config)."""
    return json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                       "clusters": [{"name": "c", "cluster": {"server": server.url, "certificate-authority": str(server.ca)}}],
                       "users": [{"name": "u", "user": {"token": TOKEN}}], "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]})


def test_a_one_line_kubeconfig_in_the_stack_config_is_its_content(tmp_path: Path, apiserver: ApiServer) -> None:
    # the stack's kubernetes provider takes a value that names no file as the kubeconfig's content; canary took a
    # value without a newline for a path, failed to read it, and printed it, the token with it
    apiserver.tokens = {TOKEN}
    kube = api._kube({"kubernetes:kubeconfig": _one_line(apiserver)}, {"HOME": str(tmp_path)})
    assert kube.source == "the kubeconfig given as content in the stack config's kubernetes:kubeconfig"
    assert kube.get("v1", "ConfigMap", "x", NAMESPACE) is None


@pytest.mark.parametrize(("edit", "context", "said"), [
    (lambda text: text, "staging", "Expected object with name staging in kube-config/contexts list"),
    (lambda text: text[:-1], None, "at line 1, column"),  # a parser's error quotes the line: the whole document
], ids=["missing-context", "parser-error"])
def test_a_one_line_kubeconfig_in_the_stack_config_that_cannot_be_loaded_is_named_never_shown(
        tmp_path: Path, apiserver: ApiServer, edit: Callable[[str], str], context: str | None, said: str) -> None:
    with pytest.raises(Forbidden) as info:
        api._kube({"kubernetes:kubeconfig": edit(_one_line(apiserver)), "kubernetes:context": context}, {"HOME": str(tmp_path)})
    message = str(info.value)
    assert "cannot load the kubeconfig given as content in the stack config's kubernetes:kubeconfig" in message and said in message, message
    assert TOKEN not in "".join(traceback.format_exception(info.value)) and apiserver.url not in message


@pytest.mark.parametrize("value", ["{gone}/kubeconfig", "~/gone/kubeconfig", "~nosuchaccount/kubeconfig", "kubeconfig-gone"])
def test_a_stack_config_kubeconfig_naming_no_file_names_the_key_not_the_value(tmp_path: Path, value: str) -> None:
    # the value could have been content as well as a path: the message names where it is set, never what it holds
    value = value.format(gone=tmp_path / "gone")
    with pytest.raises(Forbidden) as info:
        api._kube({"kubernetes:kubeconfig": value}, {"HOME": str(tmp_path)})
    message = str(info.value)
    assert message.startswith("the stack config's kubernetes:kubeconfig names no file that exists, and is no kubeconfig's content"), message
    assert value.lstrip("~") not in message and "gone" not in message, message


@pytest.mark.parametrize("passwd", [True, False], ids=["passwd-home", "no-passwd-entry-HOME"])
def test_a_stack_config_kubeconfig_under_the_home_directory_is_read_as_the_provider_reads_it(
        tmp_path: Path, apiserver: ApiServer, monkeypatch: pytest.MonkeyPatch, passwd: bool) -> None:
    # the provider takes "~/" as the account's home (its passwd entry), which a CI container's HOME may not be
    pwd = pytest.importorskip("pwd")
    account, home = tmp_path / "account", tmp_path / "home"
    account.mkdir()
    home.mkdir()
    read = account if passwd else home
    (read / "kc").write_text(_kubeconfig(tmp_path, apiserver, f"{{token: {TOKEN}}}").read_text().replace(
        f"certificate-authority: {apiserver.ca.name}", f"certificate-authority: {apiserver.ca}"))

    def entry(uid: int) -> Any:
        if not passwd:
            raise KeyError(uid)
        return type("Entry", (), {"pw_dir": str(account)})()

    monkeypatch.setattr(pwd, "getpwuid", entry)
    apiserver.tokens = {TOKEN}
    kube = api._kube({"kubernetes:kubeconfig": "~/kc"}, {"HOME": str(home)})
    assert kube.source == f"kubeconfig {read / 'kc'} (the stack config's kubernetes:kubeconfig)"
    assert kube.get("v1", "ConfigMap", "x", NAMESPACE) is None


@pytest.mark.parametrize(("main", "program"), [(None, "."), ("app", "app"), ("app/__main__.py", "app")],
                         ids=["project-directory", "main-directory", "main-file"])
def test_a_relative_stack_config_kubeconfig_is_read_from_the_program_directory_as_the_provider_reads_it(
        tmp_path: Path, apiserver: ApiServer, monkeypatch: pytest.MonkeyPatch, main: str | None, program: str) -> None:
    # Pulumi starts the kubernetes provider in the program's directory (the project's, or main's): canary read the
    # value from its own current directory, failed there, or read another environment's file of the same name (a monorepo)
    project, elsewhere = tmp_path / "prod", tmp_path / "staging"
    (project / "app").mkdir(parents=True)
    elsewhere.mkdir()
    (project / "app" / "__main__.py").write_text("")
    (project / "Pulumi.yaml").write_text("name: shop\nruntime: python\n" + (f"main: {main}\n" if main else ""))
    (project / program / "kc.yaml").write_text(_kubeconfig(tmp_path, apiserver, f"{{token: {TOKEN}}}").read_text().replace(
        f"certificate-authority: {apiserver.ca.name}", f"certificate-authority: {apiserver.ca}"))
    (elsewhere / "kc.yaml").write_text(KUBECONFIG)  # the other environment's cluster
    monkeypatch.chdir(elsewhere)
    apiserver.tokens = {TOKEN}
    ws = _opened(monkeypatch, project, "kc.yaml")
    assert ws.kube.source == f"kubeconfig {project.resolve() / program / 'kc.yaml'} (the stack config's kubernetes:kubeconfig)"
    assert ws.kube.get("v1", "ConfigMap", "x", NAMESPACE) is None


def test_relative_paths_in_a_stack_config_kubeconfig_given_as_content_are_read_from_the_program_directory(
        tmp_path: Path, apiserver: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # the provider reads the content's certificate-authority (a tokenFile, ...) from its own directory, the program's
    (tmp_path / "Pulumi.yaml").write_text("name: shop\nruntime: python\n")
    content = _kubeconfig(tmp_path, apiserver, f"{{token: {TOKEN}}}").read_text()  # certificate-authority: relative
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    apiserver.tokens = {TOKEN}
    kube = _opened(monkeypatch, tmp_path, content).kube
    assert kube.source == "the kubeconfig given as content in the stack config's kubernetes:kubeconfig"
    assert kube.get("v1", "ConfigMap", "x", NAMESPACE) is None


def _opened(monkeypatch: pytest.MonkeyPatch, project: Path, kubeconfig: str) -> api.Workspace:
    """Stack ``prod`` of ``project`` opened as ``canary status`` opens it (config it cannot judge told, not raised: it sets
    no apps), its stack config setting ``kubernetes:kubeconfig`` alone."""
    class Opened:
        def __init__(self, *args: Any) -> None:
            pass

        def config(self) -> dict[str, Any]:
            return {"kubernetes:kubeconfig": kubeconfig}

        def outputs(self) -> dict[str, Any]:
            return {}

    monkeypatch.setattr(api, "Stack", Opened)
    return api.open_stack("prod", project, {"HOME": str(project)}, on_invalid=lambda exc: None)


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


# --- against a fake API server ------------------------------------------------------------------


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path)
    yield server
    server.close()


def _kubeconfig(tmp_path: Path, server: ApiServer, user: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {{server: "{server.url}", certificate-authority: {server.ca.name}}}
users:
- name: u
  user: {user}
contexts:
- name: c
  context: {{cluster: c, user: u}}
current-context: c
""")
    return path


# --- credentials that change during a release


def test_a_kubeconfig_mounted_from_a_secret_reads_the_rotated_token_beside_its_link(tmp_path: Path, apiserver: ApiServer) -> None:
    # a Secret volume: kubeconfig -> ..data/kubeconfig, ..data -> a dated directory the kubelet swaps and deletes
    # when the Secret changes. Relative paths were read from where the link led: the old token's deleted file
    mount = tmp_path / "mount"
    mount.mkdir()
    for dated, token in (("..2026_a", "token-a"), ("..2026_b", "token-b")):
        (mount / dated).mkdir()
        (mount / dated / "token").write_text(token)
        (mount / dated / apiserver.ca.name).write_bytes(apiserver.ca.read_bytes())
        (mount / dated / "kubeconfig").write_text(_kubeconfig(tmp_path, apiserver, "{tokenFile: token}").read_text())
    (mount / "..data").symlink_to("..2026_a")
    for name in ("kubeconfig", "token", apiserver.ca.name):
        (mount / name).symlink_to(f"..data/{name}")
    kube = Kube(mount / "kubeconfig")
    apiserver.tokens = {"token-a"}
    assert kube.get("v1", "ConfigMap", "x", NAMESPACE) is None
    (mount / "..tmp").symlink_to("..2026_b")
    (mount / "..tmp").replace(mount / "..data")
    for name in os.listdir(mount / "..2026_a"):
        (mount / "..2026_a" / name).unlink()
    (mount / "..2026_a").rmdir()
    apiserver.tokens = {"token-b"}
    assert kube.get("v1", "ConfigMap", "x", NAMESPACE) is None
    assert apiserver.seen[-1][1] == "token-b"


def test_a_token_file_rewritten_during_a_release_is_read_again(tmp_path: Path, apiserver: ApiServer) -> None:
    # a projected service-account token rotates (hourly, or when the object it is bound to is replaced): the
    # client read the file once, and a release of tens of minutes ended in 401s
    token = tmp_path / "token"
    token.write_text("token-a\n")
    kube = Kube(_kubeconfig(tmp_path, apiserver, "{tokenFile: token}"))
    apiserver.tokens = {"token-a"}
    apiserver.put("x", {"k": "1"})
    assert kube.get("v1", "ConfigMap", "x", NAMESPACE) is not None

    token.write_text("token-b\n")  # a rotation: the old token is refused from now on
    apiserver.tokens = {"token-b"}
    assert kube.get("v1", "ConfigMap", "x", NAMESPACE) is not None
    assert apiserver.seen[-1][1] == "token-b"


def test_a_token_file_replaced_by_a_symlink_swap_is_read_again(tmp_path: Path, apiserver: ApiServer) -> None:
    # the kubelet writes a projected token into a new directory and swaps the ..data symlink
    for name, value in (("a", "token-a"), ("b", "token-b")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "token").write_text(value)
    (tmp_path / "..data").symlink_to("a")
    kube = Kube(_kubeconfig(tmp_path, apiserver, "{tokenFile: ..data/token}"))
    apiserver.tokens = {"token-a"}
    kube.get("v1", "ConfigMap", "x", NAMESPACE)
    (tmp_path / "..next").symlink_to("b")
    (tmp_path / "..next").replace(tmp_path / "..data")
    apiserver.tokens = {"token-b"}
    assert kube.get("v1", "ConfigMap", "x", NAMESPACE) is None  # answered (404), not refused
    assert {t for _, t in apiserver.seen} == {"token-a", "token-b"}


def test_an_exec_plugins_credential_is_fetched_again_when_it_expires(tmp_path: Path, apiserver: ApiServer) -> None:
    # the kubernetes client runs the plugin again once the credential is within 5 minutes of its
    # expirationTimestamp (its own hook): this holds that, so that canary's token-file hook keeps it
    plugin = tmp_path / "plugin.py"
    runs = tmp_path / "runs"
    plugin.write_text(f"""import datetime, json, pathlib
runs = pathlib.Path({str(runs)!r})
n = len(runs.read_text().splitlines()) if runs.exists() else 0
runs.write_text("run\\n" * (n + 1))
expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5, seconds=2)
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {{"token": f"exec-{{n}}", "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}}}}))
""")
    user = f'{{exec: {{apiVersion: client.authentication.k8s.io/v1beta1, command: "{sys.executable}", args: ["{plugin}"]}}}}'
    kube = Kube(_kubeconfig(tmp_path, apiserver, user))
    apiserver.tokens = {"exec-0"}
    kube.get("v1", "ConfigMap", "x", NAMESPACE)
    time.sleep(2.5)  # the credential has expired (less than the client's 5 minutes of margin left)
    apiserver.tokens = {"exec-1"}
    assert kube.get("v1", "ConfigMap", "x", NAMESPACE) is None
    assert apiserver.seen[-1][1] == "exec-1"


def test_an_exec_plugins_credential_without_an_expiry_is_fetched_again_when_refused(tmp_path: Path, apiserver: ApiServer) -> None:
    # kept until the process ended: a plugin's token rotated (or revoked) during a release was refused on every call
    # after it, where client-go runs the plugin again on a 401
    plugin = tmp_path / "plugin.py"
    runs = tmp_path / "runs"
    plugin.write_text(f"""import json, pathlib
runs = pathlib.Path({str(runs)!r})
n = len(runs.read_text().splitlines()) if runs.exists() else 0
runs.write_text("run\\n" * (n + 1))
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential", "status": {{"token": f"exec-{{n}}"}}}}))
""")
    user = f'{{exec: {{apiVersion: client.authentication.k8s.io/v1beta1, command: "{sys.executable}", args: ["{plugin}"]}}}}'
    kube = Kube(_kubeconfig(tmp_path, apiserver, user))
    apiserver.tokens = {"exec-0"}
    kube.get("v1", "ConfigMap", "x", NAMESPACE)
    apiserver.tokens = {"exec-1"}  # the old one revoked
    assert kube.get("v1", "ConfigMap", "x", NAMESPACE) is None  # answered (404), not refused
    assert [t for _, t in apiserver.seen][-2:] == ["exec-0", "exec-1"]
    apiserver.tokens = {"nobody"}  # refused again after a new credential: Forbidden, once more only
    with pytest.raises(Forbidden):
        kube.get("v1", "ConfigMap", "x", NAMESPACE)
    assert len(runs.read_text().splitlines()) == 3


# --- where the client comes from


def _in_a_pod(tmp_path: Path, apiserver: ApiServer, monkeypatch: pytest.MonkeyPatch, token: str = "pod-token") -> Path:
    service_account = tmp_path / "serviceaccount"
    service_account.mkdir()
    (service_account / "token").write_text(token)
    (service_account / "ca.crt").write_bytes(apiserver.ca.read_bytes())
    monkeypatch.setattr(kube_adapter, "SERVICE_ACCOUNT", service_account, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kube/config
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(apiserver.port))
    return service_account


def test_with_no_kubeconfig_in_a_pod_the_pods_service_account_is_used(tmp_path: Path, apiserver: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # a CI job running in a pod, as the stack's kubernetes provider and kubectl do: it failed with a kubeconfig error
    service_account = _in_a_pod(tmp_path, apiserver, monkeypatch)
    apiserver.tokens = {"pod-token"}
    apiserver.put("x", {"k": "1"})
    kube = api._kube({}, dict(os.environ))
    assert kube.get("v1", "ConfigMap", "x", NAMESPACE) is not None

    (service_account / "token").write_text("pod-token-2")  # the kubelet rotated it
    apiserver.tokens = {"pod-token-2"}
    assert kube.get("v1", "ConfigMap", "x", NAMESPACE) is not None


def test_a_kubeconfig_variable_naming_files_that_do_not_exist_falls_back_as_client_go_does(
        tmp_path: Path, apiserver: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # KUBECONFIG is a list whose missing files client-go skips: its first entry was read, and a CI job whose
    # KUBECONFIG names a file that is not there (a leftover of the image) failed in a pod the provider deployed from
    _in_a_pod(tmp_path, apiserver, monkeypatch)
    apiserver.tokens = {"pod-token"}
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "gone"))
    kube = api._kube({}, dict(os.environ))
    assert kube.source == f"the pod's service account ({kube_adapter.SERVICE_ACCOUNT})"
    assert kube.get("v1", "ConfigMap", "x", NAMESPACE) is None

    # the first file of the list that exists
    real = _kubeconfig(tmp_path, apiserver, "{token: file-token}")
    apiserver.tokens = {"file-token"}
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(tmp_path / "gone"), str(real)]))
    kube = api._kube({}, dict(os.environ))
    assert kube.source == f"kubeconfig {real}"
    assert kube.get("v1", "ConfigMap", "x", NAMESPACE) is None


def test_a_kubeconfig_variable_naming_only_missing_files_outside_a_pod_is_named(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "KUBECONFIG": os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")])}
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text(KUBECONFIG)  # not read: KUBECONFIG is set
    with pytest.raises(Forbidden) as info:
        Kube(env=env)
    assert (f"no kubeconfig: KUBECONFIG names {tmp_path / 'a'}, {tmp_path / 'b'}, which do not exist, kubernetes:kubeconfig "
            "is not set, and KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set") in str(info.value), str(info.value)


def test_the_service_accounts_paths_are_given(tmp_path: Path, apiserver: ApiServer) -> None:
    service_account = tmp_path / "sa"
    service_account.mkdir()
    (service_account / "token").write_text("pod-token")
    (service_account / "ca.crt").write_bytes(apiserver.ca.read_bytes())
    apiserver.tokens = {"pod-token"}
    env = {"HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(apiserver.port)}
    assert Kube(env=env, service_account=service_account).get("v1", "ConfigMap", "x", NAMESPACE) is None


def test_a_context_asked_for_without_a_kubeconfig_is_refused_not_ignored_in_a_pod(tmp_path: Path, apiserver: ApiServer) -> None:
    # kubernetes:context names an entry of a kubeconfig: in a pod without one it was ignored, and the pod's own
    # cluster used where another had been asked for
    service_account = tmp_path / "sa"
    service_account.mkdir()
    (service_account / "token").write_text("pod-token")
    (service_account / "ca.crt").write_bytes(apiserver.ca.read_bytes())
    env = {"HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(apiserver.port)}
    with pytest.raises(Forbidden) as info:
        Kube(context="prod-eu", env=env, service_account=service_account)
    assert "kubernetes:context prod-eu names a kubeconfig context, but there is no kubeconfig" in str(info.value)
    assert "pod-token" not in str(info.value)


@pytest.mark.parametrize(("env", "files", "said"), [
    ({}, {}, "no kubeconfig: KUBECONFIG and kubernetes:kubeconfig are not set, {home}/.kube/config does not exist, and "
             "KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set (not in a pod)"),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, {"ca.crt": "x"},
     "no kubeconfig, and the in-cluster service account (KUBERNETES_SERVICE_HOST=10.0.0.1, KUBERNETES_SERVICE_PORT=443) "
     "has no token: {sa}/token: No such file or directory"),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, {"token": TOKEN, "ca.crt": ""},
     "has no CA certificate: {sa}/ca.crt is empty"),
], ids=["nothing", "no-token", "empty-ca"])
def test_no_source_of_credentials_says_which_were_tried(tmp_path: Path, env: dict[str, str], files: dict[str, str], said: str) -> None:
    service_account = tmp_path / "sa"
    service_account.mkdir()
    for name, content in files.items():
        (service_account / name).write_text(content)
    with pytest.raises(Forbidden) as info:
        Kube(env={"HOME": str(tmp_path), **env}, service_account=service_account)
    assert said.format(home=tmp_path, sa=service_account) in str(info.value), str(info.value)
    assert TOKEN not in "".join(traceback.format_exception(info.value))


@pytest.mark.parametrize(("content", "said"), [
    (KUBECONFIG.replace(f"{{token: {TOKEN}}}", f"{{token: {TOKEN}: x}}"), "at line 8, column"),  # a parser's error quotes the line
    ("- a\n- b\n", "Expected a mapping (apiVersion, clusters, contexts, users), got list"),
    (KUBECONFIG.replace("- name: prod\n  context: {cluster: c, user: u}", "- prod"), "Expected all values in kube-config/contexts list to have 'name' key"),
    (KUBECONFIG.replace("- name: prod\n  context: {cluster: c, user: u}", "- 1"), "not shaped as a kubeconfig"),
], ids=["parser-error", "a-list", "a-context-without-a-name", "a-context-not-a-mapping"])
def test_a_malformed_kubeconfig_file_is_named_never_shown(tmp_path: Path, content: str, said: str) -> None:
    # a file with a token on the line the parser stopped at: its error quoted the line, in a traceback
    path = tmp_path / "kubeconfig"
    path.write_text(content)
    with pytest.raises(Forbidden) as info:
        Kube(path)
    message = str(info.value)
    assert f"cannot load kubeconfig {path}" in message and said in message, message
    assert TOKEN not in "".join(traceback.format_exception(info.value))


# --- watches


def _consume(kube: Kube, seconds: int) -> tuple[list[tuple[float, dict[str, Any]]], threading.Thread]:
    seen: list[tuple[float, dict[str, Any]]] = []

    def run() -> None:
        with contextlib.suppress(CanaryError):
            for change in kube.changes("v1", "ConfigMap", seconds, name="requests", namespace=NAMESPACE):
                seen.append((time.monotonic(), change))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return seen, thread


def _wait_for(what: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.05)
    return False


def _requests_client(tmp_path: Path, apiserver: ApiServer, data: dict[str, str]) -> Kube:
    """A client of the fake API server, whose requests ConfigMap holds ``data``, watching in 1 s windows."""
    apiserver.tokens = {TOKEN}
    apiserver.put("requests", data)
    kube = Kube(_kubeconfig(tmp_path, apiserver, f"{{token: {TOKEN}}}"))
    kube.WATCH_WINDOW = 1
    return kube


def test_a_watch_on_a_connection_gone_half_open_is_resumed_within_seconds(tmp_path: Path, apiserver: ApiServer) -> None:
    # a watch had only a total timeout (its window + 10 s): on a connection gone silent, an abort written from
    # another machine waited up to 40 s, where a second is promised
    apiserver.stall = {1}
    kube = _requests_client(tmp_path, apiserver, {"abort": "no"})
    kube.WATCH_SILENCE = 1
    seen, _ = _consume(kube, 30)
    assert _wait_for(lambda: apiserver.watches >= 1, 5)
    written = time.monotonic()
    apiserver.put("requests", {"abort": "yes"})  # while the watch's connection says nothing
    assert _wait_for(lambda: any(c["object"]["data"] == {"abort": "yes"} for _, c in seen), 6), [c for _, c in seen]
    arrived = next(t for t, c in seen if c["object"]["data"] == {"abort": "yes"})
    assert arrived - written < 4
    assert [c["type"] for _, c in seen] == ["ADDED", "MODIFIED"]


def test_a_watch_goes_on_across_its_windows_without_missing_a_change(tmp_path: Path, apiserver: ApiServer) -> None:
    kube = _requests_client(tmp_path, apiserver, {"n": "0"})
    seen, thread = _consume(kube, 4)
    for n in range(1, 8):
        time.sleep(0.4)
        apiserver.put("requests", {"n": str(n)})
    thread.join(10)
    assert [c["object"]["data"]["n"] for _, c in seen] == [str(n) for n in range(8)]
    assert apiserver.watches >= 3


def test_a_watch_whose_version_is_gone_lists_again(tmp_path: Path, apiserver: ApiServer) -> None:
    kube = _requests_client(tmp_path, apiserver, {"n": "0"})
    seen, thread = _consume(kube, 3)
    assert _wait_for(lambda: apiserver.watches >= 1, 5)
    with apiserver.changed:
        apiserver.oldest = apiserver.version + 10  # compacted: the next window's version is too old
        apiserver.version += 10
    apiserver.remove("requests")
    thread.join(10)
    assert [c["type"] for _, c in seen] == ["ADDED", "DELETED"]


# --- the route written around Pulumi ------------------------------------------------------------


def _live_route(managers: list[dict[str, Any]]) -> dict[str, Any]:
    from canary.core import routing
    from tests.unit.fakes import spec

    s = spec()
    refs = [r.model_dump(by_alias=True, exclude_none=True) for r in s.gateway.parent_refs]
    return {"apiVersion": routing.API_VERSION, "kind": routing.KIND,
            "metadata": {"name": s.app.name, "namespace": s.app.namespace, "resourceVersion": "7",
                         "labels": {"canary.dev/app": s.app.name, "team": "shop"}, "managedFields": managers},
            "spec": {"parentRefs": refs, "hostnames": list(s.gateway.hostnames), "timeouts": {"request": "10s"},
                     "rules": routing.route_spec(s.app.name, refs, s.gateway.hostnames, s.app.service_port, routing.RouteShape(weight=20))["rules"]}}


class _RouteKube:
    def __init__(self, live: dict[str, Any]) -> None:
        self.live, self.applied, self.replaced = live, [], []  # type: ignore[var-annotated]

    def get(self, *args: Any) -> dict[str, Any]:
        return self.live

    def apply(self, manifest: dict[str, Any], field_manager: str = "canary") -> dict[str, Any]:
        self.applied.append((field_manager, manifest))
        return manifest

    def replace(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.replaced.append(manifest)
        return manifest


def test_the_route_is_written_at_rest_as_pulumis_applier_whoever_else_applied_it() -> None:
    # a person's `kubectl apply --server-side` mid-incident listed first: the route was forced as kubectl, taking
    # its rules from Pulumi, whose next up (the resume's) would then conflict
    from canary.adapters.kube import ClusterReader
    from canary.core import routing
    from tests.unit.fakes import spec

    pulumi_fields = {"f:metadata": {"f:labels": {"f:canary.dev/app": {}}}, "f:spec": {"f:parentRefs": {}, "f:hostnames": {}, "f:rules": {}}}
    kube = _RouteKube(_live_route([{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {"f:rules": {}, "f:timeouts": {}}}},
                                   {"manager": "pulumi-kubernetes-3f9a2c1b", "operation": "Apply", "fieldsV1": pulumi_fields}]))
    ClusterReader(kube).restore_route(spec(), routing.AT_REST)  # type: ignore[arg-type]
    [(manager, manifest)] = kube.applied
    assert manager == "pulumi-kubernetes-3f9a2c1b"
    # the fields Pulumi owns and nothing else (not kubectl's timeouts, not the team's label)
    assert manifest["metadata"]["labels"] == {"canary.dev/app": "web"}
    assert set(manifest["spec"]) == {"parentRefs", "hostnames", "rules"}
    assert routing.read_route({"spec": manifest["spec"]}, "web", []).weights == (100, 0)


def test_a_route_pulumi_applied_client_side_is_updated_not_applied() -> None:
    from canary.adapters.kube import ClusterReader
    from canary.core import routing
    from tests.unit.fakes import spec

    kube = _RouteKube(_live_route([{"manager": "pulumi-kubernetes", "operation": "Update", "fieldsV1": {"f:spec": {"f:rules": {}}}},
                                   {"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {"f:rules": {}}}}]))
    ClusterReader(kube).restore_route(spec(), routing.AT_REST)  # type: ignore[arg-type]
    assert not kube.applied
    [manifest] = kube.replaced
    assert "managedFields" not in manifest["metadata"] and manifest["metadata"]["resourceVersion"] == "7"
    assert manifest["spec"]["timeouts"] == {"request": "10s"} and routing.read_route(manifest, "web", []).weights == (100, 0)


# --- an API server that accepts and never answers; Events' size


def test_discovery_against_an_api_server_that_never_answers_ends_at_the_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """API discovery (the dynamic client's /version, /api, /apis) was sent without a timeout: a hung API
    server (it accepts, it never answers: stopped, or its process wedged) held a release for ever."""
    import tempfile

    from canary.errors import ClusterUnreachable

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # no discovery cache of an earlier run
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])  # and never a byte back

    threading.Thread(target=accept, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG.replace('"https://127.0.0.1:1"', f'"https://127.0.0.1:{server.getsockname()[1]}", insecure-skip-tls-verify: true'))
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            Kube(str(kubeconfig), timeout=1).get("coordination.k8s.io/v1", "Lease", "canary-web", "demo")
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.append(exc)

    start = time.monotonic()
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(15)
    took = time.monotonic() - start
    server.close()
    for conn in held:
        conn.close()  # a hung call (the old client) ends with its connection
    assert not thread.is_alive(), "Kube(timeout=1).get still blocked in API discovery after 15 s"
    assert len(outcome) == 1 and isinstance(outcome[0], ClusterUnreachable), outcome
    assert took < 6, took


def test_a_request_that_names_its_timeout_keeps_it_one_that_names_none_gets_the_client_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default is for discovery only: a call's own timeout and a watch's (connect, read) pair stand."""
    from kubernetes.client import rest

    sent: list[Any] = []
    original = rest.RESTClientObject.request

    def request(self: Any, method: str, url: str, **kw: Any) -> Any:
        # patched for the class: another test's watch, still winding down on its thread, goes through untouched
        return sent.append(kw["_request_timeout"]) if url.startswith("https://x/") else original(self, method, url, **kw)

    monkeypatch.setattr(rest.RESTClientObject, "request", request)
    kube = Kube(KUBECONFIG, timeout=3)
    client = kube._api.rest_client
    client.request("GET", "https://x/version")
    client.request("GET", "https://x/api", _request_timeout=(3, 7))
    client.request("GET", "https://x/api", _request_timeout=5)
    assert sent == [3, (3, 7), 5]


@pytest.mark.parametrize("message", [
    "; ".join(f"latency-p99-{i} (Mann–Whitney): canary − stable 0.41 ≥ 0.25" for i in range(30)),
    "é" * 600,  # two bytes each: the cut falls inside one
    "x" * 1023 + "−",  # three bytes, from byte 1024 on
    "short − one",
], ids=["mann-whitney", "two-byte", "three-byte-at-the-edge", "short"])
def test_an_event_message_is_cut_to_the_api_server_s_1024_bytes_never_inside_a_character(message: str) -> None:
    """The API server counts an Event's message in bytes (Go's len): cut at 1024 characters, a message with
    "−", "≤" or "–" in it was refused (422) and its Event lost."""
    sent: dict[str, Any] = {}

    class Events:
        def create(self, body: dict[str, Any], namespace: str, _request_timeout: float) -> None:
            sent.update(body)

    kube = Kube.__new__(Kube)
    kube._timeout = 1
    kube.resource = lambda *_: Events()  # type: ignore[method-assign]
    kube._call = lambda fn: fn()  # type: ignore[method-assign]
    kube.event({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web-canary", "namespace": "demo", "uid": "u"}, "CheckFailed", message, True)
    cut = sent["message"]
    assert len(cut.encode("utf-8")) <= 1024 and message.startswith(cut)
    assert len(cut.encode("utf-8")) > 1024 - 4 or cut == message


def test_condition_helper_reads_status() -> None:
    obj = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert kube_adapter.condition(obj, "Ready") == {"type": "Ready", "status": "True"}
    assert kube_adapter.condition(obj, "Accepted") is None and kube_adapter.condition(None, "Ready") is None


def test_the_route_reader_names_a_parent_gateway_that_does_not_exist_only_while_the_route_is_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollback waits for a gateway that has not taken its route at rest (it may serve the canary's weight), not
    for one that is not there: the reader tells them apart by reading the Gateway, and only then."""
    from canary.core.routing import RouteShape
    from tests.unit.fakes import FakeKube, spec

    monkeypatch.setattr(kube_adapter, "GATEWAY_FRESH", 0.0)  # every read reads the Gateway (see the next test)
    kube = FakeKube()
    rules = [{"backendRefs": [{"name": "web-stable", "weight": 100}, {"name": "web-canary", "weight": 0}]}]
    kube.objects[("HTTPRoute", "prod", "web")] = {"metadata": {"name": "web", "namespace": "prod", "generation": 4}, "spec": {"rules": rules}}
    reader = kube_adapter.ClusterReader(kube)  # type: ignore[arg-type]
    gone = reader.route(spec())
    assert gone is not None and gone.shows(RouteShape()) and not gone.accepted
    assert gone.missing == ("public",) and gone.pending == () and gone.settled and gone.reason == "gateway public does not exist"
    kube.objects[("Gateway", "gateway", "public")] = {"metadata": {"name": "public", "namespace": "gateway"}, "spec": {"gatewayClassName": "envoy"}}
    unreported = reader.route(spec())
    assert unreported is not None and unreported.pending == ("public",) and not unreported.settled
    accepted = [{"type": "Accepted", "status": "True", "reason": "Accepted", "observedGeneration": 4}]
    kube.objects[("HTTPRoute", "prod", "web")]["status"] = {"parents": [{"parentRef": {"name": "public", "namespace": "gateway"}, "conditions": accepted}]}
    reads = kube.calls
    taken = reader.route(spec())
    assert taken is not None and taken.accepted and taken.settled and kube.calls - reads == 3  # the route, the Gateway and its class


def test_the_route_reader_reads_a_parent_gateway_once_a_second_while_the_route_waits() -> None:
    """Verification reads the route every 50 ms while a gateway has not taken it: each read read every parent Gateway
    again, two reads a parent for a missing one (its class looked up each time), 20 to 40 requests a second."""
    from tests.unit.fakes import FakeKube, spec

    kube = FakeKube()
    rules = [{"backendRefs": [{"name": "web-stable", "weight": 100}, {"name": "web-canary", "weight": 0}]}]
    kube.objects[("HTTPRoute", "prod", "web")] = {"metadata": {"name": "web", "namespace": "prod", "generation": 4}, "spec": {"rules": rules}}
    reader = kube_adapter.ClusterReader(kube)  # type: ignore[arg-type]
    reader.route(spec())
    before = kube.calls
    for _ in range(10):
        state = reader.route(spec())
        assert state is not None and state.missing == ("public",)
    assert kube.calls - before == 10  # the route alone, each time
