"""Processes of the lab: start one detached with its log, wait until it answers, stop it for good.

Every component runs in its own session (process group) with its pid in a
file under the lab directory, so ``lab down`` and a crashed ``lab up`` can find
and stop everything, including children. No component is left running when
its start fails: the caller gets a ``LabError`` naming it with its log's tail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from canary.adapters import http
from canary.adapters.processes import pid_alive
from canary.errors import LabError


class _Component(subprocess.Popen[bytes]):
    """A lab component: it outlives the process that started it on purpose (``lab up`` returns, the lab
    runs on), so still running when its handle is collected at exit is no leak to warn about."""

    def __del__(self) -> None:  # Popen's own warns "subprocess … is still running" (an error under pytest)
        pass


#: Children started by this process, kept so they are reaped when stopped.
_CHILDREN: dict[int, _Component] = {}


@dataclass(frozen=True)
class Proc:
    name: str
    pid: int
    log: Path


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def start(name: str, argv: Sequence[str], run_dir: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Proc:
    """Start ``argv`` in a new session; stdout and stderr go to ``run_dir/logs/name.log``."""
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "pids").mkdir(parents=True, exist_ok=True)
    log = run_dir / "logs" / f"{name}.log"
    with open(log, "ab") as out:
        try:
            child = _Component(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=dict(env) if env is not None else None, cwd=cwd,
            )
        except OSError as exc:
            raise LabError(f"{name}: cannot start {argv[0]}: {exc.strerror}") from exc
    _CHILDREN[child.pid] = child
    (run_dir / "pids" / f"{name}.pid").write_text(str(child.pid))
    return Proc(name, child.pid, log)


def recorded(run_dir: Path) -> dict[str, int]:
    """Components whose pid files exist, name -> pid."""
    out = {}
    for path in sorted((run_dir / "pids").glob("*.pid")) if (run_dir / "pids").is_dir() else []:
        with contextlib.suppress(ValueError, OSError):
            out[path.stem] = int(path.read_text().strip())
    return out


def stop(name: str, run_dir: Path, grace: float = 5.0) -> None:
    """SIGTERM the component's process group, SIGKILL what is left after ``grace`` seconds."""
    pid_file = run_dir / "pids" / f"{name}.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(pid):
            _reap(pid)
            time.sleep(0.05)
        if not _group_alive(pid):
            break
    _reap(pid)
    pid_file.unlink(missing_ok=True)


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().split(")")[-1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def wait_until(proc: Proc, ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``ready`` until true; LabError with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not pid_alive(proc.pid):
            raise LabError(f"{proc.name} exited before it was ready ({what}); last lines of {proc.log}:\n{log_tail(proc.log)}")
        time.sleep(0.1)
    raise LabError(f"{proc.name} was not ready after {timeout:.0f}s ({what}); last lines of {proc.log}:\n{log_tail(proc.log)}")


def start_listening(start_at: Callable[[int], Proc], ready: Callable[[Proc, int], None], run_dir: Path,
                    attempts: int = 5) -> tuple[Proc, int]:
    """Start a process on a loopback port picked free (``start_at(port)``) and wait until ``ready``; on another
    port when the picked one was taken between the pick and the bind. A pick cannot hold its port: the kernel
    hands free ports to every process that binds port 0 (the Pulumi CLI's and its plugins' servers among
    them), and a test beside running releases lost that race once."""
    attempt = 1
    while True:
        proc = start_at(port := free_port())
        try:
            ready(proc, port)
            return proc, port
        except LabError:
            taken = "address already in use" in log_tail(proc.log, 5).lower()
            stop(proc.name, run_dir)
            if not taken or attempt == attempts:
                raise
        attempt += 1


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str, **kwargs: object) -> bool:
    return http.get_ok(url, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_map() -> dict[int, list[int]]:
    """Every live process's children, read once from /proc (a snapshot: processes come and go)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parent = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    return children


def descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """Every process below ``pid`` (sessions included: the Pulumi CLI runs in one of its own)."""
    children = children_map() if children is None else children
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
