"""The local side of the release state: a cache of the cluster's, and the journals of earlier versions.

Per app, under ``<project>/.canary/<stack>/<app>/`` (or ``$CANARY_STATE_DIR``):

- ``journal.jsonl`` — a copy of the journal records this machine wrote (the
  last releases' only, as the cluster keeps them);
- ``unsent.jsonl`` — records the cluster did not take (its API server down):
  sent first when it answers again, so nothing a release decided is lost;
- ``state.json`` — the state this machine last saved (``state.unsent`` while
  the cluster is not known to hold it); ``state.version`` the ``resourceVersion``
  of the state ConfigMap after this machine's last write the cluster took, and
  ``state.sent`` the states sent since without an answer: while the cluster still
  holds that version, or one of those states (taken, its answer lost), nobody
  else wrote the state since,
  and this machine's unsent state is the newer one (no clocks of two machines
  compared);
- ``<release>.config.yaml`` — the release's config file for ``up``.

``Legacy`` reads the file journal of canary 0.1 (``<state dir>/<stack>/journal.jsonl``
and ``release.json``), so ``status`` and ``history`` still show those releases.
Deleting the directory loses nothing the cluster does not hold, but unsent records.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from canary.adapters import files
from canary.core import records
from canary.errors import StackError

#: how many states sent without an answer are remembered (each write after an outage begins sends one)
_SENT_KEPT = 50
# (state.version and state.sent are written without flushes: a power cut that loses one makes this
# machine's unsent state lose to the cluster's, as it did before they existed; state.json is flushed)


def state_root(project_dir: Path) -> Path:
    return Path(os.environ.get("CANARY_STATE_DIR", project_dir / ".canary"))


def _safe(name: str) -> str:
    return name.replace("/", "_")


class Cache:
    def __init__(self, root: Path, stack: str, app: str) -> None:
        self._dir = root / _safe(stack) / app
        self._dir.mkdir(parents=True, exist_ok=True)

    @property
    def dir(self) -> Path:
        """The app's directory, made again if it went (``git clean`` of a checkout mid-release): a write
        here never fails for it, and the cluster, which holds the rest, still gets the write."""
        self._dir.mkdir(parents=True, exist_ok=True)
        return self._dir

    def _at(self, name: str) -> Path:
        """A file of the app's directory, to read (a read makes no directory)."""
        return self._dir / name

    def config_file(self, release: str) -> Path:
        return self._at(f"{release}.config.yaml")  # the path write_config writes

    def write_config(self, release: str, text: str) -> Path:
        path = self.dir / f"{release}.config.yaml"
        files.write_text_atomic(path, text, mode=0o600)
        return path

    def record(self, data: dict[str, Any]) -> None:
        files.append_line(self.dir / "journal.jsonl", _line(data))

    def unsent(self) -> list[dict[str, Any]]:
        return _read_lines(self._at("unsent.jsonl"))

    def keep_unsent(self, data: dict[str, Any]) -> None:
        files.append_line(self.dir / "unsent.jsonl", _line(data))

    def replace_unsent(self, kept: list[dict[str, Any]]) -> None:
        """The records still unsent, in place of the file's, at once: a crash leaves either file, never half."""
        files.write_text_atomic(self.dir / "unsent.jsonl", "".join(_line(d) + "\n" for d in kept), mode=0o600)

    def clear_unsent(self) -> None:
        self._at("unsent.jsonl").unlink(missing_ok=True)

    def records(self) -> list[dict[str, Any]]:
        return _read_lines(self._at("journal.jsonl"))

    def compact(self, keep: int) -> None:
        """Keep the journal records of the last ``keep`` releases (by their first record here)."""
        path = self._at("journal.jsonl")
        lines = _read_lines(path)
        order = list(dict.fromkeys(str(data.get("release", "")) for data in lines))
        if len(order) <= keep:
            return
        kept = set(order[-keep:])
        files.write_text_atomic(path, "".join(_line(d) + "\n" for d in lines if str(d.get("release", "")) in kept))

    def save_taken(self, version: str) -> None:
        """The cluster answered that it took the state saved here, at ``version``."""
        self.adopt(version)
        self._at("state.unsent").unlink(missing_ok=True)
        self._at("state.sent").unlink(missing_ok=True)

    def taken(self) -> str | None:
        try:
            return self._at("state.version").read_text().strip() or None
        except OSError:
            return None

    def adopt(self, version: str) -> None:
        """The cluster holds a state sent from here, its answer lost, at ``version``: this machine's last write.
        (The states sent stay remembered until a write is answered: a process still running may have sent them.)"""
        files.write_text_atomic(self.dir / "state.version", version, durable=False)

    def superseded(self) -> None:
        """Another machine wrote the cluster's state since: the one saved here is not to be sent."""
        self._at("state.unsent").unlink(missing_ok=True)

    def save_sent(self, text: str) -> None:
        """A state about to be sent. Every one sent since the cluster last answered is kept: any of them may
        have been taken with its answer lost (a time-out), and the cluster holding one of them is this machine's."""
        files.write_text_atomic(self.dir / "state.sent", json.dumps([*self.sent()[-(_SENT_KEPT - 1):], text]), mode=0o600, durable=False)

    def discard_sent(self, text: str) -> None:
        """A state the cluster answered it did not take (a conflict, a refusal)."""
        files.write_text_atomic(self.dir / "state.sent", json.dumps([t for t in self.sent() if t != text]), mode=0o600, durable=False)

    def sent(self) -> list[str]:
        try:
            texts = json.loads(self._at("state.sent").read_text())
        except (OSError, ValueError):
            return []
        return [t for t in texts if isinstance(t, str)] if isinstance(texts, list) else []

    def state_unsent(self) -> bool:
        """The state saved here is not known to be the cluster's (its write failed, or is under way)."""
        return self._at("state.unsent").exists()

    def save_state(self, data: dict[str, Any]) -> None:
        """The state, saved here first and marked unsent until the cluster's answer says it took it."""
        (self.dir / "state.unsent").touch()
        files.write_text_atomic(self.dir / "state.json", _line(data), mode=0o600)

    def load_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self._at("state.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def _line(data: dict[str, Any]) -> str:
    """One record as the cache's files hold it (the journal, the unsent records, the state)."""
    return json.dumps(data, sort_keys=True, default=str)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """Every JSON object of the file's lines, skipping a torn last line a crash may have left."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):  # valid JSON but no record (`1`, a hand's edit): skipped as a torn line is
            out.append(data)
    return out


class Legacy:
    """The file journal of canary 0.1: ``<state dir>/<stack>/journal.jsonl`` and ``release.json``."""

    def __init__(self, root: Path, stack: str) -> None:
        self.dir = root / _safe(stack)

    def exists(self) -> bool:
        return (self.dir / "release.json").is_file() or (self.dir / "journal.jsonl").is_file()

    def state(self) -> records.ReleaseState | None:
        path = self.dir / "release.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        try:
            return records.parse_state(data)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            # not a traceback out of `status`: say which file, and what to do with it
            raise StackError(f"the release state an earlier version of canary left in {path} cannot be read ({type(exc).__name__}); "
                             "move the file aside to go on") from None

    def records(self, release: str | None = None) -> list[Any]:
        out = []
        for data in _read_lines(self.dir / "journal.jsonl"):
            if release is not None and data.get("release") != release:
                continue
            try:
                out.append(records.parse(data))
            except ValueError:
                continue
        return out
