"""Whether a lock's holder is still there: a pid that answers can still be gone (a zombie, a reused pid)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from canary.adapters import processes
from canary.adapters.stack import _lock_alive

HOST = socket.gethostname()


def now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _zombie() -> subprocess.Popen[bytes]:
    """A child that has exited and is not reaped yet: kill(pid, 0) still succeeds on it."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    os.kill(child.pid, 0)  # the old check: "alive"
    return child


def test_a_running_process_that_took_the_lock_is_alive() -> None:
    assert processes.holder_alive(HOST, os.getpid(), now_iso())


def test_a_zombie_holds_nothing() -> None:
    child = _zombie()
    try:
        assert not processes.holder_alive(HOST, child.pid, now_iso())
        assert not processes.pid_alive(child.pid)  # the lab's components are judged by the same check
    finally:
        child.wait()


def test_a_pid_gone_or_reused_by_a_newer_process_is_not_the_holder() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not processes.holder_alive(HOST, child.pid, now_iso())
    # This process started long after a lock taken in 2020: it cannot be that lock's holder.
    assert not processes.holder_alive(HOST, os.getpid(), "2020-01-01T00:00:00.000Z")
    # Within the tolerance it still counts (clocks and /proc's whole-second boot time).
    assert processes.holder_alive(HOST, os.getpid(), None)


def test_another_hosts_holder_is_assumed_alive() -> None:
    assert processes.holder_alive(HOST + "-elsewhere", 1, now_iso())


def test_pulumi_s_lock_held_by_a_zombie_is_stale() -> None:
    child = _zombie()
    try:
        assert not _lock_alive({"hostname": HOST, "pid": child.pid, "timestamp": now_iso()})
        assert _lock_alive({"hostname": HOST, "pid": os.getpid(), "timestamp": now_iso()})
    finally:
        child.wait()
