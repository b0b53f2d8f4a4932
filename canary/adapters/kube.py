"""The Kubernetes adapter: the only module that imports the kubernetes client.

Reads what a release verifies (the HTTPRoute and its status, the Gateways'
classes, Deployments and their pods), reads and writes the objects the release
store keeps (ConfigMaps, a Lease: with ``resourceVersion``, so a lost race is a
``Conflict``, never a silent overwrite), records Events, watches one object,
and applies the few objects the lab installs. The client is built from the same
kubeconfig and context the stack's kubernetes provider uses (``kubernetes:context``,
``kubernetes:kubeconfig``), so verification reads the cluster the program deploys to;
with no kubeconfig at all, inside a pod, from the pod's service account, as that provider
and kubectl do (client-go's default loading rules). A bearer token kept in a file (a
kubeconfig user's ``tokenFile``, the service account's projected token) is read again
when the file changes: releases outlive a rotated token.

Errors: no answer (or 429, 5xx) -> ``ClusterUnreachable``; 401/403, or no
kubeconfig -> ``Forbidden``; 409 on a write -> ``Conflict``; 404 -> None (or
nothing done); any other refusal (400, 413, 422: invalid, too large, an
admission policy) -> ``Refused``. Each says what the API server said.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import config, dynamic, watch
from kubernetes.client import ApiClient, Configuration, rest
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from canary.core import naming, routing, workload
from canary.core.naming import Track
from canary.core.spec import ReleaseSpec
from canary.errors import ClusterUnreachable, Conflict, Forbidden, NotReady, Refused

T = TypeVar("T")


def _api_error(exc: ApiException, what: str) -> Exception:
    said = _server_says(exc)
    if exc.status in (401, 403):
        # RBAC, a quota or an admission policy: the API server's message says which
        return Forbidden(f"{what}: the cluster refused ({exc.status} {exc.reason}){said}")
    if exc.status == 409:
        return Conflict(f"{what}: changed since it was read")
    if exc.status in (429, 500, 502, 503, 504) or not exc.status:
        return ClusterUnreachable(f"{what}: the API server answered {exc.status} {exc.reason}")
    return Refused(f"{what}: the cluster refused it ({exc.status} {exc.reason}){said}")


def _server_says(exc: ApiException) -> str:
    """The message of the API server's Status, shortened: the objects canary writes hold no secret,
    and the server names the rule (RBAC's verb and resource, a quota, a webhook's reason)."""
    try:
        body = json.loads(exc.body) if exc.body else None
    except (TypeError, ValueError):
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return f": {' '.join(str(message).split())[:400]}" if message else ""


def _shape_of(exc: Exception) -> str:
    """What went wrong loading a kubeconfig, without a word of its content: the kubernetes client's own
    rule (it names keys and entries, never values), or where a parser stopped."""
    if isinstance(exc, config.ConfigException):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__}{f': {exc.filename}' if exc.filename else ''}"  # a file it names
    if isinstance(exc, (TypeError, AttributeError, KeyError)):
        return f"not shaped as a kubeconfig (apiVersion, clusters, contexts, users: the kubernetes client failed with {type(exc).__name__})"
    mark = getattr(exc, "problem_mark", None)
    return f"{type(exc).__name__}{f' at line {mark.line + 1}, column {mark.column + 1}' if mark is not None else ''}"


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")  # where Kubernetes mounts a pod's service account
TOKEN_REREAD_SECONDS = 60.0  # client-go's cached file token source reads its file again after a minute


class _TokenFile:
    """A bearer token kept in a file, read again before a request whenever the file changed.

    Why a look at the file before each request, not a retry after a 401: a stat costs microseconds, and
    the new token goes with the first request after the rotation, so nothing is ever refused for it; a
    retry would have to be threaded through every call (a write sent with a ``resourceVersion``, a watch
    half read) and would still send one doomed request per rotation. The kubelet rotates a projected
    token by swapping a symlink (a new inode), a CI system rewrites the file (a new mtime or size); the
    re-read every ``TOKEN_REREAD_SECONDS`` catches a rewrite that kept all three. A file that cannot be
    read, or is empty, keeps the last token: a rotation caught half done is read on the next call, and
    the API server's 401 says the rest. The token itself is never part of a message."""

    def __init__(self, path: Path, then: Callable[[Any], None] | None = None) -> None:
        self.path = path
        self._then = then  # the client's own hook (an exec plugin's or an auth provider's expiry), kept
        self._seen: tuple[int, int, int, int] | None = None
        self._read_at = 0.0
        self._token: str | None = None

    def __call__(self, configuration: Any) -> None:
        if self._then is not None:
            # it sets the token it loaded, and itself as the hook again: set ours after it, every time
            self._then(configuration)
            configuration.refresh_api_key_hook = self
        try:
            st = os.stat(self.path)
            seen = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            if seen != self._seen or time.monotonic() - self._read_at >= TOKEN_REREAD_SECONDS:
                token = self.path.read_text(encoding="utf-8").strip()
                if token:
                    self._token, self._seen, self._read_at = token, seen, time.monotonic()
        except (OSError, UnicodeDecodeError):
            pass
        if self._token is not None:
            configuration.api_key["BearerToken"] = f"Bearer {self._token}"


def _token_file(doc: Mapping[str, Any], context: str | None, base: Path) -> Path | None:
    """The ``tokenFile`` of the context's user, when the token comes from it (no inline ``token``, no
    auth provider: the kubernetes client prefers both)."""
    user = _user(doc, context)
    token_file = user.get("tokenFile")
    if not token_file or user.get("token") or user.get("auth-provider"):
        return None
    return base / Path(str(token_file)).expanduser()


def _from_kubeconfig(doc: Any, context: str | None, base: Path | None) -> ApiClient:
    if not isinstance(doc, Mapping):
        raise config.ConfigException(f"Invalid kube-config. Expected a mapping (apiVersion, clusters, contexts, users), got {type(doc).__name__}")
    configuration = Configuration()

    def load() -> None:
        config.kube_config.KubeConfigLoader(config_dict=dict(doc), active_context=context,
                                            config_base_path=str(base) if base is not None else None).load_and_set(configuration)

    load()
    token_file = _token_file(doc, context, base or Path.cwd())
    if token_file is not None:
        configuration.refresh_api_key_hook = _TokenFile(token_file, then=configuration.refresh_api_key_hook)
    client = ApiClient(configuration=configuration)
    if _runs_a_plugin(doc, context):
        # a plugin's credential without an expiry is kept until the API server refuses it; client-go runs the
        # plugin again then (its 401 handling), and so does ``Kube._call``, through this
        _REAUTHENTICATE[client] = load
    return client


#: ApiClient -> how to fetch its credential again (an exec plugin's), for a call the API server refused with 401
_REAUTHENTICATE: weakref.WeakKeyDictionary[ApiClient, Callable[[], None]] = weakref.WeakKeyDictionary()


def _runs_a_plugin(doc: Mapping[str, Any], context: str | None) -> bool:
    user = _user(doc, context)
    return bool(user.get("exec")) and not user.get("token")


def _user(doc: Mapping[str, Any], context: str | None) -> Mapping[str, Any]:
    """The ``user`` entry of the kubeconfig's context (its current one when ``context`` is None), or {}."""
    def named(entries: Any, name: Any, key: str) -> Mapping[str, Any]:
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, Mapping) and entry.get("name") == name and isinstance(entry.get(key), Mapping):
                return entry[key]  # type: ignore[no-any-return]
        return {}

    ctx = named(doc.get("contexts"), context or doc.get("current-context"), "context")
    return named(doc.get("users"), ctx.get("user"), "user")


def _in_cluster(env: Mapping[str, str], service_account: Path) -> ApiClient:
    """The pod's service account: the API server's Service from the environment Kubernetes gives every pod,
    the token and the cluster's CA from the mounted service account (the token read again when rotated)."""
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    token, ca = service_account / "token", service_account / "ca.crt"
    where = f"in-cluster service account (KUBERNETES_SERVICE_HOST={host}, KUBERNETES_SERVICE_PORT={port})"
    for path, what in ((token, "token"), (ca, "CA certificate")):
        try:
            empty = path.stat().st_size == 0
        except OSError as exc:
            raise Forbidden(f"no kubeconfig, and the {where} has no {what}: {path}: {exc.strerror or type(exc).__name__}") from None
        if empty:
            raise Forbidden(f"no kubeconfig, and the {where} has no {what}: {path} is empty")
    configuration = Configuration()
    configuration.host = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    configuration.ssl_ca_cert = str(ca)
    configuration.refresh_api_key_hook = _TokenFile(token)
    configuration.refresh_api_key_hook(configuration)  # the client asks its hook only once it holds a token
    return ApiClient(configuration=configuration)


def _account_home(env: Mapping[str, str]) -> str:
    """The home directory of the account canary runs as: its passwd entry, else ``HOME``. The stack's kubernetes
    provider takes a leading ``~`` of ``kubernetes:kubeconfig`` as this one (where client-go's ``~/.kube/config``
    takes ``HOME`` first): they differ in CI containers that set ``HOME`` elsewhere."""
    try:
        import pwd  # not on every platform: there, HOME
        return pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, AttributeError, KeyError):
        return env.get("HOME") or str(Path.home())


def _stack_kubeconfig_file(value: str, env: Mapping[str, str], base_dir: Path | None = None) -> Path | None:
    """The file the stack config's ``kubernetes:kubeconfig`` names, or None when it is a kubeconfig's content, decided
    as the stack's kubernetes provider decides it: a value that names something that exists (after ``~`` alone or a
    leading ``~/`` is taken as the account's home; ``~user`` is not) is a file, anything else content. Not by its
    newlines: one line of JSON (``jq -c``, a stack output pasted in) is content too, and was read as a path.
    A relative value is looked for in ``base_dir``, the directory the provider runs in (Pulumi starts it in the
    program's directory), not in canary's: run from another directory, canary failed on the project's own file, or
    read another one of the same name (a monorepo's other environment)."""
    if value == "~" or value.startswith("~/"):
        value = _account_home(env) + value[1:]
    if base_dir is not None:
        value = os.path.join(base_dir, value)  # an absolute value stays as it is
    try:
        os.stat(value)
    except (OSError, ValueError):  # none there, a name too long for a path (a whole document), a NUL byte
        return None
    return Path(value)


def _client(kubeconfig: Path | str | None, context: str | None, env: Mapping[str, str], service_account: Path,
            base_dir: Path | None = None) -> tuple[ApiClient, str]:
    """client-go's default loading rules, as the stack's kubernetes provider and kubectl follow them: the
    kubeconfig given, else ``~/.kube/config``, else, with none there and the pod's
    ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT`` set, the pod's service account. (``KUBECONFIG``
    names files, its first one that exists: canary reads one kubeconfig, where client-go merges them; none
    that exists is as if it were unset, but for ``~/.kube/config``, which client-go then does not read.)
    A ``Path`` given is a file; a ``str`` is the stack config's ``kubernetes:kubeconfig``, a file's path or a
    kubeconfig's content (``_stack_kubeconfig_file``), which no message ever shows: it may be the credentials.
    Relative, it and the relative paths in a content given (a ``tokenFile``, a ``certificate-authority``) are read
    from ``base_dir`` as the provider reads them (None: the current directory).
    With the client, where it came from, for messages (never a kubeconfig's content)."""
    from canary.adapters import stackfile  # a kubeconfig is YAML: parsed by the YAML adapter, whose errors name no content

    where = f" context {context}" if context else ""
    named_by = ""
    if isinstance(kubeconfig, str):
        file = _stack_kubeconfig_file(kubeconfig, env, base_dir)
        if file is None:
            inline = f"the kubeconfig given as content in the stack config's kubernetes:kubeconfig{where}"
            try:
                doc = stackfile.load(kubeconfig)
                if not isinstance(doc, (Mapping, list)):
                    # one word or line of text: most likely a path to a file that is not there (the provider too
                    # takes it as content then, and fails on it)
                    raise Forbidden("the stack config's kubernetes:kubeconfig names no file that exists, and is no kubeconfig's content "
                                    "either (not a YAML or JSON mapping): give the path of a kubeconfig file that exists, or its content")
                return _from_kubeconfig(doc, context, base_dir), inline
            except (config.ConfigException, OSError, ValueError, TypeError, AttributeError, KeyError, stackfile.YAMLError) as exc:
                # its content holds the cluster's credentials (a Pulumi secret): never in a message or a
                # traceback; a parser's error quotes the line it stopped at
                raise Forbidden(f"cannot load {inline}: {_shape_of(exc)}") from None
        path, named_by = file, " (the stack config's kubernetes:kubeconfig)"  # a file that exists: its path is no secret
    elif kubeconfig:
        path = Path(kubeconfig).expanduser()  # a file named by the caller: it must be there
    else:
        # KUBECONFIG's files that exist (client-go skips the others), else ~/.kube/config when KUBECONFIG is unset
        named = [Path(entry).expanduser() for entry in env.get("KUBECONFIG", "").split(os.pathsep) if entry]
        candidates = named or [Path(env.get("HOME") or Path.home()).expanduser() / ".kube" / "config"]
        found = next((candidate for candidate in candidates if candidate.exists()), None)
        if found is None:
            looked = (f"KUBECONFIG names {', '.join(map(str, named))}, which do{'es' if len(named) == 1 else ''} not exist, "
                      "kubernetes:kubeconfig is not set" if named else
                      f"KUBECONFIG and kubernetes:kubeconfig are not set, {candidates[0]} does not exist")
            if env.get("KUBERNETES_SERVICE_HOST") and env.get("KUBERNETES_SERVICE_PORT"):
                if context:
                    # a context names an entry of a kubeconfig; without one it would be ignored, and the pod's own
                    # cluster used where another was asked for (client-go refuses it too: no such context)
                    raise Forbidden(f"kubernetes:context {context} names a kubeconfig context, but there is no kubeconfig ({looked}): "
                                    "give the kubeconfig, or remove kubernetes:context to use the pod's service account")
                return _in_cluster(env, service_account), f"the pod's service account ({service_account})"
            raise Forbidden(f"no kubeconfig: {looked}, and KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set (not in a pod): "
                            "set kubernetes:kubeconfig or KUBECONFIG, or run in a pod with a service account")
        path = found
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Forbidden(f"cannot load kubeconfig {path}{named_by}{where}: {getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    try:
        # relative paths in it (tokenFile, certificate-authority) from the directory it is named in, as kubectl
        # reads them: not from where a symlink leads (a Secret volume's kubeconfig is one, into a directory the
        # kubelet swaps and deletes when the Secret changes, which would pin the rotated token's old file)
        return _from_kubeconfig(stackfile.load(text), context, path.absolute().parent), f"kubeconfig {path}{named_by}{where}"
    # the loader indexes the document as it finds it: a list where it wants a mapping is a TypeError
    except (config.ConfigException, OSError, ValueError, TypeError, AttributeError, KeyError, stackfile.YAMLError) as exc:
        # the file holds credentials too: the rule broken and where, never the line a parser quotes
        raise Forbidden(f"cannot load kubeconfig {path}{named_by}{where}: {_shape_of(exc)}") from None


class _BoundedRESTClient(rest.RESTClientObject):
    """The client's REST client, with a timeout for the requests sent without one: API discovery (the
    dynamic client's ``/version``, ``/api``, ``/apis`` …), which takes no ``_request_timeout``, so a hung
    API server (it accepts the connection and never answers) held a release for ever. Every call of
    ``Kube`` names its own timeout, a watch its connect and read timeouts (``changes``): those stand."""

    def __init__(self, configuration: Configuration, timeout: float) -> None:
        super().__init__(configuration)
        self.default_timeout = timeout

    def request(self, method: str, url: str, headers: Any = None, body: Any = None, post_params: Any = None,
                _request_timeout: Any = None) -> Any:
        return super().request(method, url, headers=headers, body=body, post_params=post_params,
                               _request_timeout=_request_timeout or self.default_timeout)


def _cut_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, never inside a character."""
    encoded = text.encode("utf-8", "replace")  # a lone surrogate (undecodable output) as "?": it is no UTF-8
    return encoded.decode("utf-8") if len(encoded) <= limit else encoded[:limit].decode("utf-8", "ignore")


#: the most an Event's message may hold: the API server counts bytes (Go's ``len``), not characters
EVENT_MESSAGE_BYTES = 1024


class Kube:
    WATCH_WINDOW = 4  # seconds the API server keeps one watch request open (``timeoutSeconds``)
    WATCH_SILENCE = 3  # seconds past the window a watch may stay silent before its connection counts as dead

    def __init__(self, kubeconfig: Path | str | None = None, context: str | None = None, timeout: float = 10.0, *,
                 env: Mapping[str, str] | None = None, service_account: Path | None = None, base_dir: Path | None = None) -> None:
        self._timeout = timeout
        #: ``source``: the kubeconfig and context (or the pod's service account) the client was built from; ``base_dir``:
        #: where the stack's kubernetes provider reads a relative ``kubernetes:kubeconfig`` from (``_client``)
        self._api, self.source = _client(kubeconfig, context, os.environ if env is None else env, service_account or SERVICE_ACCOUNT, base_dir)
        # no retries of urllib3's own: an unanswered call is one timeout, not four (a lease renewal stalled past
        # the lease), and a write whose answer was lost is not sent again behind the store's back (it appended
        # a journal line twice). The pool is built with the client: built again with the setting
        self._api.configuration.retries = False
        self._api.rest_client.pool_manager.clear()
        self._api.rest_client = _BoundedRESTClient(self._api.configuration, timeout)
        self._dynamic: dynamic.DynamicClient | None = None

    @property
    def server(self) -> str:
        """The API server's address this client talks to."""
        return str(self._api.configuration.host)

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            try:
                return fn()
            except ApiException as exc:
                reauthenticate = _REAUTHENTICATE.get(self._api) if exc.status == 401 else None
                if reauthenticate is None:
                    raise
                # refused before it was acted on: the plugin's credential again, then the call once more
                try:
                    reauthenticate()
                except (config.ConfigException, OSError, ValueError) as plugin_failed:
                    raise Forbidden(f"the API server refused the credential, and the kubeconfig's exec plugin failed to give another: "
                                    f"{_shape_of(plugin_failed)}") from None
                return fn()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnreachable(f"the Kubernetes API server did not answer: {type(exc).__name__}") from exc

    @property
    def dynamic(self) -> dynamic.DynamicClient:
        """The dynamic client; building it discovers the API (each request bounded by the timeout: ``_BoundedRESTClient``)."""
        if self._dynamic is None:
            try:
                self._dynamic = self._call(lambda: dynamic.DynamicClient(self._api))
            except ApiException as exc:
                raise _api_error(exc, "discovering the API") from exc
        return self._dynamic

    def resource(self, api_version: str, kind: str) -> Any:
        return self._call(lambda: self.dynamic.resources.get(api_version=api_version, kind=kind))

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object as a plain dict, or None when it (or its kind) does not exist."""
        try:
            res = self.resource(api_version, kind)
            obj = self._call(lambda: res.get(name=name, namespace=namespace, _request_timeout=self._timeout))
        except (NotFoundError, ResourceNotFoundError):
            return None
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _api_error(exc, f"reading {kind} {name}") from exc
        return obj.to_dict()  # type: ignore[no-any-return]

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict[str, Any]]:
        try:
            res = self.resource(api_version, kind)
            items = self._call(lambda: res.get(namespace=namespace, label_selector=label_selector, _request_timeout=self._timeout))
        except ResourceNotFoundError:
            return []
        except ApiException as exc:
            raise _api_error(exc, f"listing {kind}") from exc
        return [item.to_dict() for item in items.items]

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create one object; ``Conflict`` when it exists."""
        meta = manifest["metadata"]
        try:
            res = self.resource(manifest["apiVersion"], manifest["kind"])
            obj = self._call(lambda: res.create(body=dict(manifest), namespace=meta.get("namespace"), _request_timeout=self._timeout))
        except ApiException as exc:
            raise _api_error(exc, f"creating {manifest['kind']} {meta['name']}") from exc
        return obj.to_dict()  # type: ignore[no-any-return]

    def replace(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Replace one object; its ``metadata.resourceVersion`` must be the one read (else ``Conflict``)."""
        meta = manifest["metadata"]
        try:
            res = self.resource(manifest["apiVersion"], manifest["kind"])
            obj = self._call(lambda: res.replace(body=dict(manifest), name=meta["name"], namespace=meta.get("namespace"), _request_timeout=self._timeout))
        except ApiException as exc:
            if exc.status == 404:  # deleted since it was read: a change like any other, read it again (not an outage to wait out)
                raise Conflict(f"writing {manifest['kind']} {meta['name']}: deleted since it was read") from exc
            raise _api_error(exc, f"writing {manifest['kind']} {meta['name']}") from exc
        return obj.to_dict()  # type: ignore[no-any-return]

    def apply(self, manifest: Mapping[str, Any], field_manager: str = "canary") -> dict[str, Any]:
        """Server-side apply one object."""
        meta = manifest["metadata"]
        try:
            res = self.resource(manifest["apiVersion"], manifest["kind"])
            obj = self._call(
                lambda: res.server_side_apply(
                    body=dict(manifest), name=meta["name"], namespace=meta.get("namespace"),
                    field_manager=field_manager, force_conflicts=True, _request_timeout=self._timeout,
                )
            )
        except ApiException as exc:
            raise _api_error(exc, f"applying {manifest['kind']} {meta['name']}") from exc
        return obj.to_dict()  # type: ignore[no-any-return]

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None, grace_seconds: int | None = None,
               resource_version: str | None = None) -> None:
        """Delete one object (a missing one is not an error); with ``resource_version``, only that version of it
        (else ``Conflict``: it was written since)."""
        body: dict[str, Any] | None = {"gracePeriodSeconds": grace_seconds} if grace_seconds is not None else None
        if resource_version is not None:
            body = {**(body or {}), "preconditions": {"resourceVersion": resource_version}}
        try:
            res = self.resource(api_version, kind)
            self._call(lambda: res.delete(name=name, namespace=namespace, body=body, _request_timeout=self._timeout))
        except (NotFoundError, ResourceNotFoundError):
            return
        except ApiException as exc:
            if exc.status != 404:
                raise _api_error(exc, f"deleting {kind} {name}") from exc

    def apply_all(self, manifests: Iterable[Mapping[str, Any]], field_manager: str = "canary") -> None:
        for manifest in manifests:
            self.apply(manifest, field_manager)
        self._dynamic = None  # new CRDs: rediscover

    def changes(self, api_version: str, kind: str, seconds: int, name: str | None = None, namespace: str | None = None) -> Iterator[dict[str, Any]]:
        """Every change to objects of ``kind`` (one object with ``name``) as ``{"type", "object"}``, for about
        ``seconds``. It begins with one ``ADDED`` per object (a list), then watches from the list's
        ``resourceVersion``.

        The watch is a run of requests the API server ends after ``WATCH_WINDOW`` seconds, each resumed at the
        last ``resourceVersion`` seen (an event's, or a bookmark's), so none is missed between them. A
        connection that stays silent past its window (``WATCH_SILENCE`` more) is dead: half open, the API
        server or a proxy between gone without a word, which a total timeout would wait out for the whole
        watch. It is dropped and the watch resumed on a new one at once; when that fails too,
        ``ClusterUnreachable`` (the caller lists and watches again). A version the API server no longer
        keeps (410 Gone) is listed again: the objects come again as ``ADDED``, one gone meanwhile as
        ``DELETED``."""
        res = self.resource(api_version, kind)
        selector = {"field_selector": f"metadata.name={name}"} if name else {}
        deadline = time.monotonic() + seconds
        known: dict[tuple[str, str], dict[str, Any]] = {}
        version: str | None = None
        failed = False  # the last window's connection died before it delivered anything
        while True:
            if version is None:
                try:
                    listed = self._call(lambda: res.get(namespace=namespace, _request_timeout=self._timeout, **selector)).to_dict()
                except ApiException as exc:
                    raise _api_error(exc, f"listing {kind}") from exc
                version = str((listed.get("metadata") or {}).get("resourceVersion") or "") or None
                current = {_key(obj): obj for obj in listed.get("items") or []}
                for key in known.keys() - current.keys():
                    yield {"type": "DELETED", "object": known[key]}
                for obj in current.values():
                    yield {"type": "ADDED", "object": obj}
                known = current
            left = deadline - time.monotonic()
            if left <= 0:
                return
            window = max(1, min(self.WATCH_WINDOW, round(left)))
            events = watch.Watch().stream(
                res.get, namespace=namespace, serialize=False, resource_version=version, allow_watch_bookmarks=True,
                timeout_seconds=window, _request_timeout=(self._timeout, window + self.WATCH_SILENCE), **selector,
            )
            delivered = False
            while True:
                try:
                    event = next(events, None)
                except ApiException as exc:
                    if exc.status == 410:  # too old: list again
                        version = None
                        break
                    raise _api_error(exc, f"watching {kind}") from exc
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    if failed and not delivered:
                        raise ClusterUnreachable(f"the Kubernetes API server did not answer a watch of {kind}: {type(exc).__name__}") from exc
                    failed = True
                    break
                if event is None:
                    failed = False
                    break
                delivered = True
                obj = event.get("object")
                obj = obj if isinstance(obj, dict) else getattr(obj, "to_dict", lambda: {})()
                version = str((obj.get("metadata") or {}).get("resourceVersion") or "") or version
                if event["type"] == "BOOKMARK":
                    continue
                if event["type"] == "DELETED":
                    known.pop(_key(obj), None)
                else:
                    known[_key(obj)] = obj
                yield {"type": str(event["type"]), "object": obj}

    def event(self, involved: Mapping[str, Any], reason: str, message: str, warning: bool = False, component: str = "canary") -> None:
        """Record a core/v1 Event on ``involved`` (apiVersion, kind, name, namespace, uid), as a controller would."""
        now = dt.datetime.now(dt.UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = involved["namespace"]
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
            "involvedObject": dict(involved),
            "reason": reason, "message": _cut_utf8(message, EVENT_MESSAGE_BYTES), "type": "Warning" if warning else "Normal",
            "source": {"component": component}, "reportingComponent": component, "reportingInstance": component,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
            "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "action": reason,
        }
        try:  # through the dynamic client: the typed CoreV1Api costs 1.3 CPU-s to import (250 pydantic models)
            res = self.resource("v1", "Event")
            self._call(lambda: res.create(body=body, namespace=namespace, _request_timeout=self._timeout))
        except ApiException as exc:
            raise _api_error(exc, f"recording an event on {involved['kind']} {involved['name']}") from exc

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (ClusterUnreachable, Forbidden, ApiException, ResourceNotFoundError) as exc:
                last = exc
                self._dynamic = None
            time.sleep(interval)
        raise NotReady(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def condition(obj: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    """The status condition of type ``kind``, if present."""
    if not obj:
        return None
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond  # type: ignore[no-any-return]
    return None


#: how long a Gateway read by the route reader stands for it (seconds)
GATEWAY_FRESH = 1.0


class ClusterReader:
    """What a release verifies in the cluster: the route and the two tracks."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._controllers: dict[tuple[str, str], str] = {}
        self._gateways: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}

    def _gateway(self, name: str, namespace: str) -> dict[str, Any] | None:
        """A Gateway as read within the last ``GATEWAY_FRESH`` seconds: while a gateway has not taken a route, the route
        is read every 50 ms, and each read would read every parent Gateway again (two reads a parent for a missing one)."""
        key, now = (namespace, name), time.monotonic()
        seen = self._gateways.get(key)
        if seen is None or now - seen[0] > GATEWAY_FRESH:
            seen = self._gateways[key] = (now, self.kube.get(routing.API_VERSION, "Gateway", name, namespace))
        return seen[1]

    def _controller(self, gateway: str, namespace: str) -> str | None:
        """The controllerName of a Gateway's class (cached): only its status entry counts."""
        key = (namespace, gateway)
        if key not in self._controllers:
            obj = self._gateway(gateway, namespace)
            klass = self.kube.get(routing.API_VERSION, "GatewayClass", ((obj or {}).get("spec") or {}).get("gatewayClassName", "")) if obj else None
            controller = ((klass or {}).get("spec") or {}).get("controllerName")
            if controller is None:
                return None
            self._controllers[key] = str(controller)
        return self._controllers[key]

    def route(self, spec: ReleaseSpec) -> routing.RouteState | None:
        app = spec.app
        obj = self.kube.get(routing.API_VERSION, routing.KIND, naming.route(app.name), app.namespace)
        if obj is None:
            return None
        parents = routing.parent_refs([r.model_dump(by_alias=True, exclude_none=True) for r in spec.gateway.parent_refs])
        controllers: dict[str, str] = {}
        for parent in parents:
            namespace = parent.get("namespace") or app.namespace
            controller = self._controller(parent["name"], namespace)
            if controller is not None:
                controllers[f"{namespace}/{parent['name']}"] = controller
        state = routing.read_route(obj, app.name, parents, controllers)
        if not state.pending:
            return state
        # a parent that has not taken the route: a Gateway that is not there (deleted, or never made) is no gateway
        # that serves it, and a rollback need not wait for it (read only then: a route taken costs no more reads)
        missing: list[str] = []
        for parent in parents:
            namespace = parent.get("namespace") or app.namespace
            if self._gateway(parent["name"], namespace) is None:
                missing.append(f"{namespace}/{parent['name']}")
        return routing.read_route(obj, app.name, parents, controllers, missing) if missing else state

    def gateway_classes(self, spec: ReleaseSpec) -> dict[str, routing.GatewayClass]:
        """Each parent Gateway (``namespace/name``) of the app's route whose class can be read: its
        controllerName and the features its status publishes."""
        classes = {}
        for parent in routing.parent_refs([r.model_dump(by_alias=True, exclude_none=True) for r in spec.gateway.parent_refs]):
            namespace = parent.get("namespace") or spec.app.namespace
            gateway = self.kube.get(routing.API_VERSION, "Gateway", parent["name"], namespace)
            name = ((gateway or {}).get("spec") or {}).get("gatewayClassName")
            klass = self.kube.get(routing.API_VERSION, "GatewayClass", name) if name else None
            controller = ((klass or {}).get("spec") or {}).get("controllerName")
            if klass is None or controller is None:
                continue
            published = (klass.get("status") or {}).get("supportedFeatures")
            features = None if published is None else frozenset(str(f.get("name") if isinstance(f, dict) else f) for f in published)
            classes[f"{namespace}/{parent['name']}"] = routing.GatewayClass(str(controller), features)
        return classes

    def deployment(self, spec: ReleaseSpec, track: Track) -> dict[str, Any]:
        """The track's Deployment: its template hash and image, desired/updated/ready replicas,
        whether its rollout is complete, and how many of its pods are alive."""
        app = spec.app
        obj = self.kube.get("apps/v1", "Deployment", naming.deployment(app.name, track), app.namespace) or {}
        template = (obj.get("spec") or {}).get("template") or {}
        status = obj.get("status") or {}
        meta = obj.get("metadata") or {}
        selector = ",".join(f"{k}={v}" for k, v in naming.selector(app.name, track).items())
        pods = self.kube.list("v1", "Pod", app.namespace, label_selector=selector)
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        try:
            image = workload.image(template, app.name, app.container)
        except KeyError:
            image = ""
        replicas = (obj.get("spec") or {}).get("replicas", 0) or 0
        return {
            "exists": bool(obj),
            "hash": workload.declared_hash(template),
            "image": image,
            "replicas": replicas,
            "ready": status.get("readyReplicas", 0) or 0,
            "updated": status.get("updatedReplicas", 0) or 0,
            "available": status.get("availableReplicas", 0) or 0,
            "rolled_out": int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
            and (status.get("updatedReplicas", 0) or 0) >= replicas and (status.get("replicas", 0) or 0) <= replicas,
            "pods": len(live),
            "uid": meta.get("uid", ""),
        }

    def stable_identity(self, app: str, namespace: str) -> tuple[str, str | None] | None:
        """The uid of the app's stable Deployment and the template hash it carries (None: no such Deployment). One GET
        and no ReleaseSpec, for an app the stack config cannot judge now: what it runs is still the cluster's to say."""
        obj = self.kube.get("apps/v1", "Deployment", naming.deployment(app, Track.STABLE), namespace)
        if obj is None:
            return None
        return str((obj.get("metadata") or {}).get("uid", "")), workload.declared_hash((obj.get("spec") or {}).get("template") or {})

    def restore_route(self, spec: ReleaseSpec, shape: routing.RouteShape) -> None:
        """Write the route's rules as ``shape`` has them, around Pulumi: a rollback's last resort when its ``up``
        cannot run. Written as the field manager that applied the route (Pulumi's, with Server-Side Apply), the
        fields it owns and nothing else, so ownership does not move and the next ``up`` applies over it without
        a conflict; the route's other fields (parentRefs, hostnames, what a transform added) are left as they are."""
        app = spec.app
        live = self.kube.get(routing.API_VERSION, routing.KIND, naming.route(app.name), app.namespace)
        if live is None:
            raise NotReady(f"HTTPRoute {app.namespace}/{naming.route(app.name)} does not exist")
        rules = routing.route_spec(app.name, [r.model_dump(by_alias=True, exclude_none=True) for r in spec.gateway.parent_refs],
                                   spec.gateway.hostnames, app.service_port, shape)["rules"]
        meta = live["metadata"]
        # Pulumi's own apply entry (pulumi-kubernetes-<suffix>), not any other applier of the rules (a kubectl
        # --server-side by a person mid-incident): forced as that one, ownership would move away from Pulumi
        applier = next((m for m in meta.get("managedFields") or [] if m.get("operation") == "Apply"
                        and str(m.get("manager", "")).startswith("pulumi-kubernetes")
                        and "f:rules" in ((m.get("fieldsV1") or {}).get("f:spec") or {})), None)
        if applier is None:  # Pulumi applied it client-side: an update, whose field managers never conflict with an apply
            kept = {k: v for k, v in meta.items() if k != "managedFields"}
            self.kube.replace({**live, "metadata": kept, "spec": {**live["spec"], "rules": rules}})
            return
        owned = applier["fieldsV1"]
        owned_meta, owned_spec = owned.get("f:metadata") or {}, owned.get("f:spec") or {}
        manifest: dict[str, Any] = {"apiVersion": routing.API_VERSION, "kind": routing.KIND,
                                    "metadata": {"name": meta["name"], "namespace": meta["namespace"]}}
        for part in ("labels", "annotations"):
            values = meta.get(part) or {}
            mine = {key[2:]: values[key[2:]] for key in owned_meta.get(f"f:{part}") or {} if key.startswith("f:") and key[2:] in values}
            if mine:
                manifest["metadata"][part] = mine
        spec_out = {key[2:]: live["spec"][key[2:]] for key in owned_spec if key.startswith("f:") and key[2:] in live["spec"]}
        manifest["spec"] = {**spec_out, "rules": rules}
        self.kube.apply(manifest, field_manager=applier["manager"])

    def prune_copies(self, spec: ReleaseSpec, keep: set[str]) -> list[str]:
        """Let go of the app's ConfigMap and Secret copies whose names are not in ``keep``: a copy another app
        reads too loses this app's label only; one only this app read is deleted. Both are conditional on the
        copy as read: one another app's ``up`` declared meanwhile is left for a later prune (``Conflict``)."""
        app = spec.app
        dropped = []
        for kind in ("ConfigMap", "Secret"):
            found = {obj["metadata"]["name"]: obj for selector in (naming.copy_user(app.name), f"{naming.APP_LABEL}={app.name},{naming.COPY_OF_LABEL}")
                     for obj in self.kube.list("v1", kind, app.namespace, label_selector=selector)}
            for name, obj in sorted(found.items()):
                if name in keep:
                    continue
                meta = obj["metadata"]
                labels = dict(meta.get("labels") or {})
                try:
                    if naming.copy_users(labels) - {app.name}:
                        labels.pop(naming.copy_user(app.name), None)
                        if labels.get(naming.APP_LABEL) == app.name:
                            del labels[naming.APP_LABEL]
                        kept = {k: v for k, v in meta.items() if k != "managedFields"}
                        self.kube.replace({**obj, "apiVersion": "v1", "kind": kind, "metadata": {**kept, "labels": labels}})
                    else:
                        self.kube.delete("v1", kind, name, app.namespace, resource_version=meta["resourceVersion"])
                        dropped.append(name)
                except Conflict:
                    continue
        return dropped
