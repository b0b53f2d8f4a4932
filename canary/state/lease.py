"""The release lock of one app: a Kubernetes ``Lease`` in its namespace, which works across machines.

The holder's identity is ``host/pid/release``; the running release renews the
lease every few seconds. A contender takes it over only when it has expired
(not renewed for ``duration`` seconds) or when its holder is a dead process of
this very host (a killed release on this machine need not wait). "This very host" is the host name,
the boot and the PID namespace (``processes.same_host``): a release in a container that shares the
host's name, not its pids, is another host's, whose lease is waited out. Every write
carries the ``resourceVersion`` it read, so of two contenders exactly one wins;
the other is told who holds the app (``StackBusy``, exit 3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from canary.adapters import processes
from canary.adapters.kube import Kube
from canary.core import naming
from canary.errors import CanaryError, Conflict, LeaseLost, StackBusy

API = "coordination.k8s.io/v1"
HOLDER_ANNOTATION = "canary.dev/holder"


def _now() -> datetime:
    return datetime.now(UTC)


def _micro(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    release: str
    acquired: str
    renewed: str
    expired: bool
    #: seconds until the lease runs out unless its holder renews it
    expires_in: float = 0.0
    #: where its pid is numbered (``processes.identity``); None in an identity recorded without them
    boot: str | None = None
    pidns: int | None = None

    def __str__(self) -> str:
        state = ", its lease expired" if self.expired else ""
        return f"release {self.release} by pid {self.pid} on {self.host}, started {self.acquired}{state}"

    def alive(self) -> bool:
        """Holding: not expired, and not a dead process of this host."""
        return not self.expired and processes.holder_alive(self.host, self.pid, self.acquired, self.boot, self.pidns)

    def elsewhere(self) -> bool:
        """Another host's holder (or another PID namespace's of this host): its process cannot be seen from here."""
        return not processes.same_host(self.host, self.boot, self.pidns)

    def expiry_note(self) -> str:
        """For a live holder on another host — whose process nothing here can see, and which may be
        gone with its machine — when its lease runs out and the app can be taken over."""
        if self.expired or not self.elsewhere():
            return ""
        return (f"; if that machine or process is gone, its lease expires in {max(self.expires_in, 0.0):.0f}s "
                "(a running release renews it every few seconds): run the command again then")


#: how far ahead of this machine's clock a lease's renewal time may lie before its holder's clock is taken for fast
CLOCK_SLACK = 2.0


class Lease:
    def __init__(self, kube: Kube, namespace: str, app: str, duration: float = 15.0, renew_every: float = 5.0) -> None:
        self.kube = kube
        self.namespace = namespace
        self.app = app
        self.name = naming.lease(app)
        self.duration = duration
        self.renew_every = renew_every
        self._held: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: when (monotonic) the lease was last taken or renewed by this process
        self._renewed = 0.0
        self.lost: str | None = None

    def _read(self) -> dict[str, Any] | None:
        return self.kube.get(API, "Lease", self.name, self.namespace)

    def holder(self) -> Holder | None:
        obj = self._read()
        return self._holder(obj) if obj else None

    def _holder(self, obj: dict[str, Any]) -> Holder | None:
        spec = obj.get("spec") or {}
        if not spec.get("holderIdentity"):
            return None
        try:
            info = json.loads(((obj.get("metadata") or {}).get("annotations") or {}).get(HOLDER_ANNOTATION, "{}"))
        except ValueError:
            info = {}
        if not isinstance(info, dict):  # written by something else than canary: the identity still says who
            info = {}
        parts = str(spec["holderIdentity"]).split("/")
        host, pid_text, release = parts if len(parts) == 3 else ("?", "0", str(spec["holderIdentity"]))
        try:
            pid = int(info.get("pid", pid_text))
        except (TypeError, ValueError):
            pid = 0
        renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
        try:
            duration = float(spec.get("leaseDurationSeconds") or self.duration)
        except (TypeError, ValueError):
            duration = self.duration
        left = duration - (_now() - renewed).total_seconds() if renewed is not None else 0.0
        expired = renewed is None or left < 0
        boot, pidns = info.get("boot"), info.get("pidns")
        return Holder(str(info.get("host", host)), pid, str(info.get("release", release)),
                      str(info.get("acquired", spec.get("acquireTime", ""))), str(spec.get("renewTime", "")), expired, left,
                      # a value of another shape (written by something else) compares unequal: another host's, never dead
                      boot=None if boot is None else str(boot), pidns=pidns if isinstance(pidns, int) or pidns is None else -1)

    def _body(self, release: str, base: dict[str, Any] | None) -> dict[str, Any]:
        now = _micro(_now())
        me, pid = processes.identity(), os.getpid()
        host = me["host"]
        holder = {"host": host, "pid": pid, "release": release, "acquired": now, "boot": me["boot"], "pidns": me["pidns"]}
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace,
                                "labels": {naming.APP_LABEL: self.app, "app.kubernetes.io/managed-by": naming.MANAGED_BY},
                                "annotations": {HOLDER_ANNOTATION: json.dumps(holder)}}
        transitions = 0
        if base is not None:
            meta["resourceVersion"] = base["metadata"]["resourceVersion"]
            transitions = int((base.get("spec") or {}).get("leaseTransitions") or 0) + 1
        return {"apiVersion": API, "kind": "Lease", "metadata": meta,
                "spec": {"holderIdentity": f"{host}/{pid}/{release}", "leaseDurationSeconds": int(self.duration),
                         "acquireTime": now, "renewTime": now, "leaseTransitions": transitions}}

    def acquire(self, release: str) -> Holder | None:
        """Take the app's lease for ``release``, or raise StackBusy naming the holder. Returns the
        previous holder when one was taken over (expired, or a dead process of this host)."""
        obj = self._read()
        previous = None
        if obj is None:
            try:
                sent = time.monotonic()  # the lease runs from the time it carries, not from when the answer came
                self._held = self.kube.create(self._body(release, None))
                self._renewed = sent
                return None
            except Conflict as exc:
                raise StackBusy(f"app {self.app} is busy: another release took its lease just now") from exc
        holder = self._holder(obj)
        ahead = holder is not None and not holder.expired and holder.elsewhere() and holder.expires_in > self.duration + CLOCK_SLACK
        if holder is not None and ahead:
            # its renewTime lies ahead of this machine's clock: the holder's clock runs fast, and read by it the
            # lease of a machine that died would hold the app for as long as that clock is ahead (an hour: an
            # hour). Counted here instead, as client-go counts it: unchanged for a lease's duration, it ran out
            self._watch_unchanged(obj, holder, self.duration, "its renewal time lies ahead of this machine's clock, and it")
            holder = dataclasses.replace(holder, expired=True)
        if holder is not None and holder.alive() and holder.release != release:
            raise StackBusy(f"app {self.app} is busy: {holder}{holder.expiry_note()}")
        if holder is not None and holder.alive() and holder.release == release and not self._mine(holder):
            raise StackBusy(f"release {release} of {self.app} is still running: {holder}{holder.expiry_note()}")
        if holder is not None and holder.expired and holder.elsewhere() and not ahead:  # (watched above)
            self._watch_unchanged(obj, holder)
        previous = holder
        try:
            sent = time.monotonic()
            self._held = self.kube.replace(self._body(release, obj))
        except Conflict as exc:
            raise StackBusy(f"app {self.app} is busy: another process took its lease just now") from exc
        self._renewed = sent
        return previous

    def _watch_unchanged(self, obj: dict[str, Any], holder: Holder, seconds: float | None = None,
                         why: str = "expired by this machine's clock,") -> None:
        """A lease of another host that this machine's clock says ran out: that clock may run ahead of the
        holder's. It is taken over only once also seen here unchanged for two renewal periods (a live
        holder renews within one), as client-go's leader election counts expiry by its own observation.
        ``seconds``: how long to watch instead (a lease whose renewal time lies ahead: its whole duration)."""
        seen = obj["metadata"]["resourceVersion"]
        deadline = time.monotonic() + (2 * self.renew_every if seconds is None else seconds)
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.5))
            now = self._read()
            if now is None or now["metadata"]["resourceVersion"] != seen:
                current = self._holder(now) if now else None
                raise StackBusy(f"app {self.app} is busy: its lease, {why} changed while this one watched it"
                                f" ({current or 'given up'}): run the command again")

    def _mine(self, holder: Holder) -> bool:
        # the same pid in another PID namespace of this host (pid 1 of two containers) is not this process
        return not holder.elsewhere() and holder.pid == os.getpid()

    def renew(self) -> None:
        """Renew the lease held; a lease lost to another holder is noted in ``lost``. The write carries the
        version this process last wrote: when it is taken, nobody took the lease meanwhile."""
        with self._lock:
            self._renew()

    def _renew(self) -> None:
        for _ in range(2):
            if self._held is None:
                return
            body = dict(self._held)
            body["spec"] = {**body["spec"], "renewTime": _micro(_now())}
            # the renewal counts from when it was sent, as its renewTime says: one whose answer came late (the
            # lease may have run out in between, for another machine) was trusted for two periods after that
            sent = time.monotonic()
            try:
                self._held = self.kube.replace(body)
                self._renewed = sent
                return
            except Conflict:
                current, holder = self._still_mine()
                if current is None:
                    self.lost = f"the lease of {self.app} was taken by {holder or 'nobody'}"
                    self._held = None
                    return
                self._held = current

    def _still_mine(self) -> tuple[dict[str, Any] | None, Holder | None]:
        """After a write refused for its version: the lease as the cluster holds it now when this process
        still holds it (a write of ours whose answer was lost), else None; and its holder, if any."""
        current = self._read()
        holder = self._holder(current) if current else None
        return (current if holder is not None and self._mine(holder) else None), holder

    def fence(self) -> None:
        """Before a change to the cluster: raise ``LeaseLost`` when this process no longer holds the lease.
        A lease not renewed for two renewal periods (the cluster did not answer) is renewed first: a
        contender may have taken it once it ran out, and only a renewal that succeeds proves it did not.
        When the cluster does not answer that either, ``ClusterUnreachable``: the change would fail too."""
        if self._held is not None and time.monotonic() - self._renewed > 2 * self.renew_every:
            self.renew()
        if self.lost:
            raise LeaseLost(f"this release no longer holds app {self.app}: {self.lost}")

    def start_renewing(self) -> None:
        def loop() -> None:
            said = False
            try:
                while not self._stop.wait(self.renew_every):
                    try:
                        self.renew()
                    except CanaryError:
                        pass  # no answer: tried again; still none two periods on, `fence` renews before a change
                    except Exception as exc:  # noqa: BLE001 - a renewer that died let the lease run out under the release
                        # (an HTML page from a proxy, a defect): said once, as a thread's uncaught error, and tried again;
                        # still failing two periods on, the release meets it in `fence`
                        if not said:
                            said = True
                            threading.excepthook(threading.ExceptHookArgs((type(exc), exc, exc.__traceback__, threading.current_thread())))
            finally:
                if not self._stop.is_set():  # ended all the same: the release stops at its next turn, not unleased
                    self.lost = self.lost or f"the renewals of the lease of {self.app} stopped (canary resume continues the release)"

        self._stop.clear()
        self._thread = threading.Thread(target=loop, name="canary-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Give the lease up (nobody holds it after this). Under the renewals' lock: a renewal still in
        flight (a slow API server outlasts the join) ends first, and the write carries its version, not the
        one before it (that write was refused, and the lease stayed held until it ran out)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            held, self._held = self._held, None
            if held is None:
                return
            for _ in range(2):
                body = {**held, "spec": {**held["spec"], "holderIdentity": None, "renewTime": None, "acquireTime": None}}
                try:
                    self.kube.replace(body)
                    return
                except Conflict:
                    # written since: given up only if this process still holds it (a renewal whose answer was lost)
                    with contextlib.suppress(CanaryError):
                        current, _ = self._still_mine()
                        if current is not None:
                            held = current
                            continue
                    return
                except CanaryError:
                    return
