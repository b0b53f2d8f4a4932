"""The durable record of a stack's releases: journal, current state, lock, requests.

Layout, per stack, under ``<project>/.canary/<stack>/`` (or ``$CANARY_STATE_DIR``):

- ``journal.jsonl`` — every decision, append-only, one JSON object per line,
  flushed and fsync'ed before the action it announces is taken;
- ``release.json`` — the current release's state, replaced atomically;
- ``lock`` — who runs a release on this stack (host, pid, start time);
- ``abort`` / ``promote`` — requests from ``canary abort`` / ``canary promote``;
- ``snapshots/`` — the stable config and the stack export taken when a release began.

Nothing here is ever given a secret: callers record config keys the release
changes (images, weight), queries, values and verdicts only.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from canary import processes
from canary.errors import StackBusy


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a crash leaves either the old or the new file, never half of one."""
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename: a temporary file in the same directory
    (with the old file's mode), flushed to disk, renamed over it, then the directory flushed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def record_time(record: dict[str, Any]) -> float:
    """A journal record's time as a Unix timestamp."""
    return datetime.fromisoformat(record["time"]).timestamp()


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    started: str
    release: str

    def __str__(self) -> str:
        return f"release {self.release} by pid {self.pid} on {self.host}, started {self.started}"

    def alive(self) -> bool:
        """True unless the holder is a process of this host that is gone (see ``processes``)."""
        return processes.holder_alive(self.host, self.pid, self.started)


class Journal:
    def __init__(self, root: Path, stack: str) -> None:
        self.dir = root / stack
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "snapshots").mkdir(exist_ok=True)
        self.stack = stack

    @property
    def journal_path(self) -> Path:
        return self.dir / "journal.jsonl"

    # --- records ---------------------------------------------------------------------------

    def record(self, release: str, kind: str, **fields: Any) -> dict[str, Any]:
        """Append one record durably; returns it."""
        entry = {"time": now_iso(), "stack": self.stack, "release": release, "type": kind, **fields}
        line = json.dumps(entry, sort_keys=True, default=str)
        fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return entry

    def records(self, release: str | None = None) -> list[dict[str, Any]]:
        """Every record (of one release), skipping a torn last line a crash may have left."""
        out = []
        try:
            lines = self.journal_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if release is None or entry.get("release") == release:
                out.append(entry)
        return out

    # --- state -----------------------------------------------------------------------------

    def save_state(self, state: dict[str, Any]) -> None:
        write_atomic(self.dir / "release.json", state)

    def load_state(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.dir / "release.json").read_text())  # type: ignore[no-any-return]
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def save_snapshot(self, release: str, name: str, data: Any) -> Path:
        path = self.dir / "snapshots" / f"{release}-{name}.json"
        write_atomic(path, data)
        return path

    # --- lock ------------------------------------------------------------------------------

    def holder(self) -> LockHolder | None:
        try:
            data = json.loads((self.dir / "lock").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return LockHolder(data["host"], int(data["pid"]), data["started"], data["release"])

    def acquire(self, release: str) -> None:
        """Take the stack's release lock, or raise StackBusy naming the holder.

        A lock whose holder is a dead process of this host is stale and taken over.
        """
        path = self.dir / "lock"
        body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": now_iso(), "release": release})
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                holder = self.holder()
                if holder is not None and holder.alive():
                    raise StackBusy(f"stack {self.stack} is busy: {holder}") from None
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            return
        raise StackBusy(f"stack {self.stack} is busy: another process took the lock")

    def release_lock(self) -> None:
        holder = self.holder()
        if holder is not None and holder.pid == os.getpid() and holder.host == socket.gethostname():
            (self.dir / "lock").unlink(missing_ok=True)

    # --- requests from other commands -----------------------------------------------------------

    def request(self, kind: str, release: str, **fields: Any) -> None:
        write_atomic(self.dir / kind, {"release": release, "time": now_iso(), **fields})

    def take_request(self, kind: str, release: str) -> dict[str, Any] | None:
        path = self.dir / kind
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if data.get("release") != release:
            return None
        return data  # type: ignore[no-any-return]

    def clear_request(self, kind: str) -> None:
        (self.dir / kind).unlink(missing_ok=True)


def state_root(project_dir: Path) -> Path:
    return Path(os.environ.get("CANARY_STATE_DIR", project_dir / ".canary"))


def new_release_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}"


@contextlib.contextmanager
def locked(journal: Journal, release: str) -> Iterator[None]:
    journal.acquire(release)
    try:
        yield
    finally:
        journal.release_lock()
