"""The release store: one app's release state, journal, requests and Events, kept in its namespace.

- ``canary-<app>-state`` (ConfigMap): the ``ReleaseState``, replaced whole with
  the ``resourceVersion`` it was read at;
- ``canary-<app>-requests`` (ConfigMap): abort, promote, pause and continue
  requests from any machine; the running release watches it;
- ``canary-<app>-journal-<release>-<n>`` (ConfigMaps): the journal, in chunks
  of at most ``CHUNK_BYTES``; the journals of the last ``KEEP_RELEASES``
  releases are kept;
- Events on the canary Deployment for every decision.

Only the lease holder writes the state and the journal. Every record is also
written to the local cache first; a record or state the cluster could not
take (its API server down, or a refusal: RBAC, a quota, an admission policy)
is kept there and sent before anything else once it answers, so a release that
ends "rollback pending" loses nothing, and a refusal never stops a rollback.
``refused`` says what the cluster said until it takes a write again. Nothing
stored holds a secret value: records carry queries, values and verdicts, and
the snapshot's secrets are Pulumi ciphertext.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from canary.adapters.kube import Kube
from canary.core import naming, records
from canary.core.naming import Track
from canary.errors import CanaryError, ClusterUnreachable, Conflict, Forbidden, LeaseLost, Refused, StackError
from canary.state.cache import Cache

CHUNK_BYTES = 256 * 1024
KEEP_RELEASES = 20
REQUEST_KINDS = ("abort", "promote", "pause", "continue")
#: a write that fails with one of these is kept on this machine and sent again later (an outage ends;
#: a refusal ends once a person fixes the RBAC, the quota or the policy that the error names)
_KEPT = (ClusterUnreachable, Forbidden, Refused)


def _configmap(name: str, namespace: str, app: str, kind: str, data: dict[str, str], extra_labels: dict[str, str] | None = None,
               version: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace,
                            "labels": {naming.APP_LABEL: app, naming.STORE_KIND_LABEL: kind, "app.kubernetes.io/managed-by": naming.MANAGED_BY,
                                       **(extra_labels or {})}}
    if version is not None:
        meta["resourceVersion"] = version
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def _addressed(data: Mapping[str, Any], release: str) -> dict[str, dict[str, Any]]:
    """The requests of a requests ConfigMap's ``data`` addressed to ``release``: each a JSON object. Anything
    else a hand or a tool put there (``abort=true``) is no request, and never stops the others being read."""
    out = {}
    for kind, text in data.items():
        try:
            parsed = json.loads(text)
        except (TypeError, ValueError):
            continue
        if isinstance(parsed, dict) and parsed.get("release") == release:
            out[kind] = parsed
    return out


def _state_of(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """The release state a state ConfigMap holds (None: none, or not readable)."""
    try:
        held = json.loads(((obj or {}).get("data") or {}).get("state.json") or "null")
    except ValueError:
        return None
    return held if isinstance(held, dict) else None


def _holds_snapshot(text: str) -> bool:
    """Whether a journal chunk holds a release's first record (its snapshot, written as the release begins)."""
    for line in text.splitlines():
        try:
            if json.loads(line).get("type") == "snapshot":
                return True
        except (ValueError, AttributeError):
            continue
    return False


class Journal(list[Any]):
    """Journal records, and where they come from: ``unanswered`` is what the cluster said when it did not answer
    and the records are this machine's copy (None: the cluster's). A copy lacks what other machines recorded."""

    def __init__(self, found: Iterable[Any] = (), unanswered: str | None = None) -> None:
        super().__init__(found)
        self.unanswered = unanswered


class ReleaseStore:
    def __init__(self, kube: Kube, namespace: str, app: str, stack: str, cache: Cache) -> None:
        self.kube = kube
        self.namespace = namespace
        self.app = app
        self.stack = stack
        self.cache = cache
        self._state_version: str | None = None
        #: another process wrote the cluster's state since this one did: what this one saved is not the cluster's
        self._superseded = False
        self._chunk: dict[str, Any] | None = None  # the journal chunk last written: name, lines, version
        self._lock = threading.Lock()
        self._deployment_uid: str | None = None
        #: what the cluster said when it last refused a write of the state, of the journal: until it takes one
        self._refusals: dict[str, str] = {}
        #: what the cluster said when ``load`` last could not read the state (None: it answered)
        self.unanswered: str | None = None

    @property
    def refused(self) -> str | None:
        """What the cluster said when it refused a write of this store (the state's, else the journal's),
        until it takes that kind of write again; None when it takes them."""
        return self._refusals.get("state") or self._refusals.get("journal")

    def _kept(self, kind: str, exc: CanaryError) -> None:
        if not isinstance(exc, ClusterUnreachable):
            self._refusals[kind] = str(exc)

    # --- state ---------------------------------------------------------------------------------

    def load(self) -> records.ReleaseState | None:
        """The app's current (or last) release; None when the cluster holds none. The local copy when it is
        newer than the cluster's (records the cluster did not take yet), and, when the cluster does not answer,
        only then: this machine's own writes the cluster has not taken are the newest it knows of. Any other
        copy here may be stale (another machine resumed the release and ended it since), and "no answer" is
        not "no release": ``ClusterUnreachable``, never a stale state to resume or None to begin over."""
        self.unanswered = None
        local = self.cache.load_state()
        name = naming.state_configmap(self.app)
        try:
            obj = self.kube.get("v1", "ConfigMap", name, self.namespace)
        except ClusterUnreachable as exc:
            self.unanswered = str(exc)
            if local and (self.cache.unsent() or self.cache.state_unsent()):
                return self._parsed(local, "the copy kept on this machine")
            raise ClusterUnreachable(
                f"the release state of {self.app} could not be read (ConfigMap {self.namespace}/{name}: {exc}): whether a release "
                "of it runs, and in which phase, is unknown until the cluster answers; a copy kept on this machine is not taken "
                "for it (another machine may have gone on since). Try again"
            ) from exc
        remote = None
        if obj is not None:
            self._state_version = obj["metadata"]["resourceVersion"]
            text = (obj.get("data") or {}).get("state.json")
            remote = self._json(text) if text else None
        # the local copy wins only with records the cluster did not take yet (written while it did not
        # answer), and only while the cluster's state is still the one this machine last wrote: another
        # machine that went on since (a resume) holds the newer one, whatever the two clocks say. A cluster
        # without state (its ConfigMap deleted, the namespace made again) is believed unless this machine
        # holds records or a state it could not send
        unsent = self.cache.unsent() or self.cache.state_unsent()
        if local and unsent and (remote is None or self._ours(obj) and local.get("release") == remote.get("release")):
            return self._parsed(local, "the copy kept on this machine")
        return self._parsed(remote, None) if remote else None

    def copy(self) -> records.ReleaseState | None:
        """This machine's copy of the state (the one it last saved), whatever the cluster holds: for a display
        that says so (``status`` in an outage), never to act on. None when there is none."""
        local = self.cache.load_state()
        return self._parsed(local, "the copy kept on this machine") if local else None

    def _json(self, text: str) -> dict[str, Any]:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise self._unreadable(None, "not a JSON object")
        return data

    def _parsed(self, data: Mapping[str, Any], where: str | None) -> records.ReleaseState:
        """A state, or StackError naming where it is: one written by a newer canary (a phase this version does not
        know) or edited by hand is said to be so, not a traceback out of `status` or `abort` in an incident."""
        try:
            return records.parse_state(data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise self._unreadable(where, type(exc).__name__) from None

    def _unreadable(self, where: str | None, why: str) -> StackError:
        place = where or f"ConfigMap {self.namespace}/{naming.state_configmap(self.app)}"
        return StackError(f"the release state of {self.app} in {place} cannot be read by this version of canary ({why}): a newer "
                          "version wrote it, or it was edited by hand. Run the version that releases this app (`canary status` "
                          "of that version shows the release)")

    def _ours(self, obj: dict[str, Any] | None) -> bool:
        """Nobody but this machine wrote the cluster's state since this machine last did: it still holds the
        version of this machine's last write it answered, or one of the states this machine sent since without
        an answer (taken, its answer lost: that version is then this machine's)."""
        if obj is None:
            return False
        version = obj["metadata"]["resourceVersion"]
        if version == self.cache.taken():
            return True
        held = (obj.get("data") or {}).get("state.json")
        if held is not None and held in self.cache.sent():
            self.cache.adopt(version)
            return True
        return False

    def save(self, state: records.ReleaseState) -> None:
        """The state, here and in the cluster. The journal kept here is sent first; when the cluster refuses
        it (a quota on new chunks, a policy) the state is still written: whole, it needs none of them."""
        data = records.dump(state)
        with self._lock:
            self.cache.save_state(data)
            try:
                self._flush_unsent(with_state=False)
            except ClusterUnreachable:
                return  # the state would not go either: kept here, sent with the journal once the cluster answers
            except _KEPT as exc:
                self._kept("journal", exc)
            self._state_or_kept(data)

    def _state_or_kept(self, data: dict[str, Any]) -> None:
        """The state written, or kept here (marked unsent) with the refusal noted."""
        try:
            self._write_state(data)
        except _KEPT as exc:
            self._kept("state", exc)
        else:
            self._refusals.pop("state", None)

    def _write_state(self, data: dict[str, Any]) -> None:
        name = naming.state_configmap(self.app)
        text = json.dumps(data, sort_keys=True)
        version = self._state_version
        if version is None:
            # the version is unknown (the state was never read here, or read from this machine's copy in an
            # outage): the cluster's state is replaced only when it is this machine's last write. Another's, at
            # whatever version it has now, is the newer state (a resume elsewhere, its rollback), never overwritten
            existing = self.kube.get("v1", "ConfigMap", name, self.namespace)
            if existing is None:
                self._state_version = self._put(name, text, None)
                return
            if not self._ours(existing):
                raise self._lost_to(existing, "since this machine last wrote it")
            version = existing["metadata"]["resourceVersion"]
        try:
            self._state_version = self._put(name, text, version)
        except Conflict:
            current = self.kube.get("v1", "ConfigMap", name, self.namespace) or {}
            held = (current.get("data") or {}).get("state.json")
            # (the cache's sent states: writes of this machine whose answers were lost, if any)
            if current and (held is None or held not in self.cache.sent()):
                raise self._lost_to(current, "since this one wrote it") from None
            # deleted (by hand, or with its namespace's content): written again, as at the start; or this
            # process's own write, taken by the cluster though its answer was lost: carried on from
            self._state_version = self._put(name, text, (current.get("metadata") or {}).get("resourceVersion"))

    def _lost_to(self, current: dict[str, Any], since: str) -> LeaseLost:
        """Someone else wrote the cluster's state (``current``): only a holder of the lease may, so this release no
        longer holds the app. The version read stays the old one: no later save of this process overwrites theirs,
        and the state saved here is not sent over theirs later either. The error to raise, naming what they hold."""
        self.cache.superseded()
        self._superseded = True
        held = (current.get("data") or {}).get("state.json")
        try:
            theirs = records.parse_state(json.loads(held)) if held else None
            said = f"release {theirs.release} in phase {theirs.phase}" if theirs is not None else "no state"
        except (ValueError, TypeError, KeyError, AttributeError):  # a newer canary's: the lease is lost all the same
            said = "a state this version of canary cannot read"
        return LeaseLost(f"the release state of {self.app} was written by another process {since}: it holds {said}")

    def withdraw(self, release: str) -> str | None:
        """A release not begun whose end the cluster refused to take: the state it wrote first, deleted while
        the cluster holds exactly that write (this process's last, not ended), so that no machine takes it for
        an unfinished release to resume. None when the cluster holds no such state (any more); else what is
        known of the one that may stay, and why."""
        first = "its first state (Initializing), which other machines take for an unfinished release"
        with self._lock:
            name = naming.state_configmap(self.app)
            try:
                current = self.kube.get("v1", "ConfigMap", name, self.namespace)
            except CanaryError as exc:
                return f"the cluster may still hold {first}: it could not be read to delete it ({exc})"
            held = _state_of(current)
            if not held or held.get("release") != release or held.get("phase") in {p.value for p in records.ENDED}:
                return None
            version = current["metadata"]["resourceVersion"] if current else None
            if version != self._state_version:
                return None  # written since by another holder of the lease (a resume of this release): theirs
            try:
                self.kube.delete("v1", "ConfigMap", name, self.namespace, resource_version=version)
            except Conflict:
                return None  # written in between: theirs, as above
            except CanaryError as exc:
                return f"the cluster still holds {first}, and it could not be deleted ({exc})"
            self._state_version = None  # the next write creates it again
            return None

    def _put(self, name: str, text: str, version: str | None) -> str:
        """Create (no version) or replace the state ConfigMap; its new resourceVersion. Until the cluster
        answers, ``text`` counts as sent without an answer: it may have been taken, the next write tells."""
        body = _configmap(name, self.namespace, self.app, "state", {"state.json": text}, version=version)
        self.cache.save_sent(text)
        try:
            written = self.kube.create(body) if version is None else self.kube.replace(body)
        except (Conflict, Forbidden, Refused):
            self.cache.discard_sent(text)  # answered: not taken
            raise
        version = str(written["metadata"]["resourceVersion"])
        self.cache.save_taken(version)
        return version

    # --- the journal ---------------------------------------------------------------------------

    def append(self, entry: Any) -> None:
        """One journal record, on disk here and then in the cluster, before the action it announces."""
        data = records.bounded(records.dump(entry))
        with self._lock:
            self.cache.record(data)
            try:
                self._flush_unsent()
                self._send(data)
            except _KEPT as exc:
                self.cache.keep_unsent(data)
                self._kept("journal", exc)
            else:
                self._refusals.pop("journal", None)

    def _flush_unsent(self, with_state: bool = True) -> None:
        """What the cluster did not take yet: the journal's records, in order, each once; then (``with_state``)
        the state saved here, unless another machine wrote the cluster's since."""
        pending = self.cache.unsent()
        for i, data in enumerate(pending):
            try:
                self._send(data)
            except _KEPT:
                if i:  # what went is not sent again: only what is left stays unsent (one write, not one per record)
                    self.cache.replace_unsent(pending[i:])
                raise
        if pending:
            self.cache.clear_unsent()
        local = self.cache.load_state() if with_state and self.cache.state_unsent() else None
        if local is None:
            return
        current = self.kube.get("v1", "ConfigMap", naming.state_configmap(self.app), self.namespace)
        if current is None or self._ours(current):
            self._state_version = current["metadata"]["resourceVersion"] if current is not None else None
            self._state_or_kept(local)
        else:
            # another machine wrote the state since this one last could (it resumed the release, or began
            # another): its state is the newer; this machine's records went to the journal, its state does not
            self.cache.superseded()
            self._superseded = True

    def _send(self, data: dict[str, Any]) -> None:
        release = str(data["release"])
        line = json.dumps(data, sort_keys=True, default=str)
        chunk = self._chunk
        if chunk is None or chunk["release"] != release:
            chunk = self._chunk = self._last_chunk(release)
        if line in chunk["lines"] or line in chunk["earlier"]:
            return  # taken already: a write whose answer was lost, sent again from the records kept unsent
        if chunk["lines"] and chunk["size"] + len(line) + 1 > CHUNK_BYTES:
            chunk = self._chunk = {"release": release, "index": chunk["index"] + 1, "lines": [], "size": 0, "version": None,
                                   "earlier": {*chunk["earlier"], *chunk["lines"]}}
        lines = [*chunk["lines"], line]
        name = naming.journal_configmap(self.app, release, chunk["index"])
        body = _configmap(name, self.namespace, self.app, "journal", {"journal.jsonl": "\n".join(lines) + "\n"},
                          {naming.RELEASE_LABEL: release}, chunk["version"])
        try:
            written = self.kube.create(body) if chunk["version"] is None else self.kube.replace(body)
        except Conflict:
            self._chunk = None  # read it again: the next call retries from what the cluster holds
            chunk = self._chunk = self._last_chunk(release)
            if line in chunk["lines"]:
                return  # the write whose answer was lost had been taken (each record carries its time: no two alike)
            lines = [*chunk["lines"], line]
            body = _configmap(naming.journal_configmap(self.app, release, chunk["index"]), self.namespace, self.app, "journal",
                              {"journal.jsonl": "\n".join(lines) + "\n"}, {naming.RELEASE_LABEL: release}, chunk["version"])
            written = self.kube.create(body) if chunk["version"] is None else self.kube.replace(body)
        chunk.update(lines=lines, size=chunk["size"] + len(line) + 1, version=written["metadata"]["resourceVersion"])

    def _last_chunk(self, release: str) -> dict[str, Any]:
        """The release's last chunk, to append to, and the lines of those before it (``earlier``): a record whose
        write was taken with its answer lost may be sent again after another machine went on to a new chunk."""
        chunks = self._chunks(release)
        if not chunks:
            return {"release": release, "index": 0, "lines": [], "size": 0, "version": None, "earlier": set()}
        earlier = {ln for _, obj in chunks[:-1] for ln in ((obj.get("data") or {}).get("journal.jsonl") or "").splitlines() if ln.strip()}
        index, obj = chunks[-1]
        text = (obj.get("data") or {}).get("journal.jsonl", "")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return {"release": release, "index": index, "lines": lines, "size": len(text), "version": obj["metadata"]["resourceVersion"],
                "earlier": earlier}

    def _chunks(self, release: str | None = None) -> list[tuple[int, dict[str, Any]]]:
        selector = f"{naming.APP_LABEL}={self.app},{naming.STORE_KIND_LABEL}=journal"
        if release is not None:
            selector += f",{naming.RELEASE_LABEL}={release}"
        items = self.kube.list("v1", "ConfigMap", self.namespace, label_selector=selector)
        out = []
        for obj in items:
            release = (obj["metadata"].get("labels") or {}).get(naming.RELEASE_LABEL, "")
            index = self._chunk_index(obj["metadata"].get("name") or "", release)
            if index is not None:
                out.append(((release, index), obj))
        out.sort(key=lambda item: item[0])
        return [(key[1], obj) for key, obj in out]

    def _chunk_index(self, name: str, release: str) -> int | None:
        """The number of a journal chunk named as this version names them; None for any other ConfigMap with the
        journal's labels (a copy kept by hand, ``...-r1-0-backup``): not read as the journal, never deleted with it."""
        try:
            index = int(name.rsplit("-", 1)[-1])
        except ValueError:
            return None
        return index if name == naming.journal_configmap(self.app, release, index) else None

    def records(self, release: str | None = None) -> Journal:
        """Every journal record the cluster holds (of one release), oldest first, with the ones this
        machine could not send yet; from the local copy when the cluster does not answer, and then said
        to be (``Journal.unanswered``): it holds only what this machine recorded."""
        unanswered = None
        try:
            chunks = self._chunks(release)
        except ClusterUnreachable as exc:
            unanswered = str(exc)
            raw = self.cache.records()
        else:
            raw = []
            for _, obj in chunks:
                for line in ((obj.get("data") or {}).get("journal.jsonl") or "").splitlines():
                    with contextlib.suppress(ValueError):
                        data = json.loads(line)
                        if isinstance(data, dict):  # a line of a hand's (`1`) is no record
                            raw.append(data)
            # the records kept here that the cluster has not taken (one whose write was taken, its answer lost, is there once)
            taken = {json.dumps(data, sort_keys=True, default=str) for data in raw}
            raw.extend(data for data in self.cache.unsent() if json.dumps(data, sort_keys=True, default=str) not in taken)
        out = Journal(unanswered=unanswered)
        for data in raw:
            if release is not None and data.get("release") != release:
                continue
            with contextlib.suppress(ValueError):
                out.append(records.parse(data))
        return out

    def state_taken(self) -> bool:
        """The cluster holds the state last saved (False while it is kept on this machine only, and once another
        process wrote the cluster's since: what was saved here is then no one's)."""
        return not self._superseded and not self.cache.state_unsent()

    def releases(self) -> list[str]:
        """The releases whose journals the cluster keeps, oldest first."""
        return sorted({(obj["metadata"].get("labels") or {}).get(naming.RELEASE_LABEL, "") for _, obj in self._chunks()} - {""})

    def compact(self, keep: int = KEEP_RELEASES) -> list[str]:
        """Delete the journals of all but the last ``keep`` releases (here too); returns the releases dropped."""
        with self._lock:  # (a record from the hooks' thread is appended under it)
            self.cache.compact(keep)
        chunks = self._chunks()
        # in the order the API server's clock created their first chunks: release ids carry the clock of the
        # machine that began them, and a runner's clock hours behind made the release running now the oldest.
        # A release whose beginning (its snapshot record) is gone comes first: its chunk holds records a machine
        # kept unsent until long after compaction dropped the release, and counted by its new chunk it evicted a
        # release kept
        begun: dict[str, str] = {}
        beginning: set[str] = set()
        for _, obj in chunks:
            release = (obj["metadata"].get("labels") or {}).get(naming.RELEASE_LABEL, "")
            created = str(obj["metadata"].get("creationTimestamp") or "")
            begun[release] = min(begun.get(release, created), created)
            if _holds_snapshot((obj.get("data") or {}).get("journal.jsonl") or ""):
                beginning.add(release)
        releases = sorted(begun, key=lambda release: (release in beginning, begun[release], release))
        dropped = releases[:-keep] if len(releases) > keep else []
        for _, obj in chunks:
            if (obj["metadata"].get("labels") or {}).get(naming.RELEASE_LABEL) in dropped:
                self.kube.delete("v1", "ConfigMap", obj["metadata"]["name"], self.namespace)
        return dropped

    # --- requests from any machine ---------------------------------------------------------------

    def request(self, kind: str, release: str, by: str, reason: str = "", **fields: Any) -> None:
        """Ask the running release (or the next resume) to abort, promote, pause or continue."""
        assert kind in REQUEST_KINDS
        name = naming.requests_configmap(self.app)
        value = json.dumps({"release": release, "time": records_now(), "by": by, "reason": reason, **fields})
        for _ in range(5):
            obj = self.kube.get("v1", "ConfigMap", name, self.namespace)
            if obj is None:
                try:
                    self.kube.create(_configmap(name, self.namespace, self.app, "requests", {kind: value}))
                    return
                except Conflict:
                    continue
            data = dict(obj.get("data") or {})
            data[kind] = value
            if kind in ("pause", "continue"):
                data.pop("continue" if kind == "pause" else "pause", None)
            try:
                self.kube.replace(_configmap(name, self.namespace, self.app, "requests", data, version=obj["metadata"]["resourceVersion"]))
                return
            except Conflict:
                continue
        raise Conflict(f"the requests of {self.app} kept changing: try again")

    def requests(self, release: str) -> dict[str, dict[str, Any]]:
        """The requests addressed to ``release`` (a request for another release is ignored)."""
        obj = self.kube.get("v1", "ConfigMap", naming.requests_configmap(self.app), self.namespace)
        return _addressed((obj or {}).get("data") or {}, release)

    def clear_request(self, kind: str, taken: Mapping[str, Any] | None = None) -> None:
        """Delete the request of ``kind``; only when it is still ``taken`` (the one the release acted on), if given: one
        written since (`promote --force` after a plain promote was refused) is left for the release to read."""
        name = naming.requests_configmap(self.app)
        for _ in range(5):
            obj = self.kube.get("v1", "ConfigMap", name, self.namespace)
            if obj is None or kind not in (obj.get("data") or {}):
                return
            if taken is not None and _addressed({kind: obj["data"][kind]}, str(taken.get("release"))).get(kind, {}).get("time") != taken.get("time"):
                return
            data = {k: v for k, v in (obj.get("data") or {}).items() if k != kind}
            try:
                self.kube.replace(_configmap(name, self.namespace, self.app, "requests", data, version=obj["metadata"]["resourceVersion"]))
                return
            except Conflict:
                continue

    def watch_requests(self, release: str, on_change: Callable[[dict[str, dict[str, Any]]], None], stop: threading.Event) -> threading.Thread:
        """Call ``on_change`` with the requests for ``release`` whenever they change (a watch on the
        requests ConfigMap, re-opened when the API server ends it), and once at the start."""
        name = naming.requests_configmap(self.app)

        def loop() -> None:
            while not stop.is_set():
                try:
                    on_change(self.requests(release))
                    for change in self.kube.changes("v1", "ConfigMap", 30, name=name, namespace=self.namespace):
                        if stop.is_set():
                            return
                        on_change(_addressed((change.get("object") or {}).get("data") or {}, release))
                except Exception:  # noqa: BLE001 — whatever ends a watch, it is opened again: a dead watch never sees an abort
                    stop.wait(1.0)

        thread = threading.Thread(target=loop, name="canary-requests", daemon=True)
        thread.start()
        return thread

    # --- events ----------------------------------------------------------------------------------

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        """A Kubernetes Event on the canary Deployment (``kubectl describe deployment <app>-canary``)."""
        name = naming.deployment(self.app, Track.CANARY)
        with contextlib.suppress(ClusterUnreachable):  # an outage's events are lost with it; a refusal is said by the caller
            if self._deployment_uid is None:
                obj = self.kube.get("apps/v1", "Deployment", name, self.namespace)
                if obj is None:
                    return
                self._deployment_uid = obj["metadata"]["uid"]
            involved = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "namespace": self.namespace, "uid": self._deployment_uid}
            self.kube.event(involved, reason, f"[{self.stack}] {message}", warning)


def records_now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
