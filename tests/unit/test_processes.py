"""Whether a lock's holder is still there: a pid that answers can still be gone (a zombie, a reused pid)."""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest

from canary.adapters import processes
from canary.adapters.stack import _lock_alive
from tests.conftest import ROOT
from tests.unit.support import BOUND_S, group_members, poll

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


def _gone_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_holder_in_another_pid_namespace_of_this_host_is_assumed_alive() -> None:
    """A container with the host's network keeps the host's name and numbers its pids in a namespace of its
    own: its live holder's pid is no process here, and was judged dead. Judged by pid only when host, boot
    and PID namespace are all this process's; an identity without them (an earlier canary's) as before."""
    boot, ns = processes.boot_id(), processes.pid_namespace()
    assert boot is not None and ns is not None  # Linux, as the runners are
    pid = _gone_pid()
    assert processes.holder_alive(HOST, pid, now_iso(), boot=boot, pidns=ns + 1)  # another container's release
    assert processes.holder_alive(HOST, pid, now_iso(), boot="another-boot", pidns=ns)  # a machine of the same name
    assert processes.holder_alive(HOST, pid, now_iso(), boot=boot, pidns=None)  # a record of half of it: cannot tell
    assert not processes.holder_alive(HOST, pid, now_iso(), boot=boot, pidns=ns)  # this host's, gone
    assert not processes.holder_alive(HOST, pid, now_iso())  # an identity without them: by host name, as before
    assert processes.same_host(**processes.identity())


def test_a_machine_that_reads_only_one_of_boot_and_namespace_knows_its_own_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    # its own lease, recorded with boot None, read as another host's: a renewal whose answer was lost became LeaseLost
    monkeypatch.setattr(processes, "boot_id", lambda: None)
    assert processes.same_host(**processes.identity())
    assert not processes.holder_alive(HOST, _gone_pid(), now_iso(), boot=None, pidns=processes.pid_namespace())


# --- children that die with this process ------------------------------------------------------------

linux_only = pytest.mark.skipif(processes._PRCTL is None, reason="PR_SET_PDEATHSIG is Linux's")


@pytest.mark.skipif(os.name != "posix", reason="ctypes opens this process's own symbols on POSIX")
def test_a_libc_call_comes_declared_as_asked_or_none_where_libc_lacks_it() -> None:
    # the one lookup behind _PRCTL and _FORK: a call libc has, typed for ctypes to convert; none for a name it lacks
    # or a library that does not open (then spawn runs without a death signal, or a command without a watcher)
    getpid = processes._libc_call("getpid", ctypes.CDLL, [], ctypes.c_int)
    assert getpid is not None
    assert (getpid.argtypes, getpid.restype) == ([], ctypes.c_int)  # type: ignore[attr-defined]
    assert getpid() == os.getpid()
    assert processes._libc_call("canary_no_such_call", ctypes.PyDLL, [], ctypes.c_int) is None

    def unopened(path: None) -> ctypes.CDLL:
        raise OSError("no such library")

    assert processes._libc_call("getpid", unopened, [], ctypes.c_int) is None


@linux_only
def test_a_child_spawned_from_a_thread_that_ended_runs_on() -> None:
    # PR_SET_PDEATHSIG fires when the thread that forked ends: set in a child the caller's thread forked, a hook
    # started from a helper thread died with that thread
    started: list[subprocess.Popen[bytes]] = []
    helper = threading.Thread(target=lambda: started.append(processes.spawn(["sleep", "30"])))
    helper.start()
    helper.join()
    try:
        time.sleep(0.3)
        assert started[0].poll() is None, "the child died with the thread that asked for it"
    finally:
        started[0].kill()
        started[0].wait()


@linux_only
def test_a_child_whose_parent_died_before_it_asked_kills_itself() -> None:
    # the kernel signals a parent's death only from the request on: one that came first would leave it unowned
    assert processes._PRCTL is not None
    child = subprocess.Popen(["sleep", "30"], preexec_fn=processes._dies_with(-1, processes._PRCTL))
    try:
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()


def test_a_spawn_that_cannot_start_raises_what_popen_raises() -> None:
    with pytest.raises(FileNotFoundError):
        processes.spawn(["/nonexistent/canary-hook"])


@linux_only
def test_a_spawn_whose_fork_is_stuck_fails_in_bounded_time_and_the_next_one_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    # the caller waited on the spawner without a bound: a fork stuck before its exec (an at-fork handler in the child)
    # held the hook, the release's thread with it, and every later hook
    real = subprocess.Popen
    stuck, late = threading.Event(), []

    def popen(args: list[str], **options: object) -> subprocess.Popen[bytes]:
        if args == ["sleep", "31"]:
            stuck.wait(10)
            late.append(real(args, **options))  # type: ignore[arg-type]
            return late[-1]
        return real(args, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(processes, "SPAWN_WAIT", 0.5)
    monkeypatch.setattr(subprocess, "Popen", popen)
    started = time.monotonic()
    with pytest.raises(OSError, match="not started within 0.5s"):
        processes.spawn(["sleep", "31"])
    assert time.monotonic() - started < 5
    quick = processes.spawn(["true"])  # another thread forks it: the stuck one is not waited for
    assert quick.wait(5) == 0
    stuck.set()
    assert poll(lambda: bool(late) and late[0].poll() is not None, 5.0), "the late child was left running"


@linux_only
def test_a_spawn_whose_caller_gave_up_is_never_started(monkeypatch: pytest.MonkeyPatch) -> None:
    # a spawn queued behind a stuck fork timed out (its hook failed), and still ran when the spawner got to it, to be
    # killed then: a command (a deploy step, a load generator) ran for a moment, with nobody to own it
    real = subprocess.Popen
    stuck, entered, called, failures = threading.Event(), threading.Event(), [], []

    def popen(args: list[str], **options: object) -> subprocess.Popen[bytes]:
        called.append(args)
        if args == ["sleep", "31"]:
            entered.set()
            stuck.wait(BOUND_S)
        return real(args, **options)  # type: ignore[arg-type]

    def first() -> None:
        try:
            processes.spawn(["sleep", "31"])
        except OSError as exc:
            failures.append(exc)

    monkeypatch.setattr(processes, "SPAWN_WAIT", 0.5)
    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(processes, "_SPAWNS", queue.SimpleQueue())  # spawner threads of earlier tests wait on the old one
    monkeypatch.setattr(processes, "_spawner", None)
    helper = threading.Thread(target=first)
    helper.start()
    try:
        assert entered.wait(BOUND_S)
        with pytest.raises(OSError, match="not started within 0.5s"):
            processes.spawn(["sleep", "32"])  # queued behind the stuck one
        quick = processes.spawn(["true"])  # a thread of its own, which finds the abandoned one first in the queue
        assert quick.wait(5) == 0
        assert ["sleep", "32"] not in called, "a spawn was started after its caller gave up"
    finally:
        stuck.set()
        helper.join(BOUND_S)
    assert failures, "the stuck spawn did not time out"


def _sleeps(pgid: int) -> list[int]:
    """The ``sleep`` processes of group ``pgid``."""
    found = []
    for pid in group_members(pgid):
        with suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep":
                found.append(pid)
    return found


def _run_canary(tmp_path: Path, body: str, stdin: int | None = None) -> subprocess.Popen[str]:
    """A Python process that imports canary and runs ``body`` (its stdout: a pipe). Its environment carries
    ``_MARK`` (``_marked``): what it started, exec or not, carries it too."""
    script = tmp_path / "canary_process.py"
    script.write_text(f"import os, sys, time\nsys.path.insert(0, {str(ROOT)!r})\nfrom canary.adapters import processes\n{body}")
    return subprocess.Popen([sys.executable, "-W", "error", str(script)], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, _MARK: str(tmp_path)})


_MARK = "CANARY_TEST_PROCESS"


def _marked(tmp_path: Path) -> list[int]:
    """The processes started by ``_run_canary(tmp_path, …)`` (itself included), by their environment."""
    mark = f"{_MARK}={tmp_path}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        with suppress(OSError):
            if entry.name.isdigit() and mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def _watcher(group: int) -> int | None:
    """The live watcher of a command's group ``group``: the process of the command's session that leads a group
    of its own."""
    for entry in Path("/proc").iterdir():
        with suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, session, ...
            if int(fields[3]) == group and int(fields[2]) == int(entry.name) != group and fields[0] not in ("Z", "X"):
                return int(entry.name)
    return None


def _started(canary: subprocess.Popen[str]) -> tuple[int, int]:
    """The group of the command ``canary`` started, which it prints, and that group's watcher."""
    assert canary.stdout is not None and canary.stderr is not None
    line = canary.stdout.readline()
    assert line, canary.stderr.read()
    group = int(line)
    assert poll(lambda: _watcher(group) is not None), "the command's group has no watcher"
    watcher = _watcher(group)
    assert watcher is not None
    return group, watcher


def _kill_all(group: int, *pids: int) -> None:
    """SIGKILL to ``pids`` and to what is alive in ``group``, each by its pid (0: none)."""
    for pid in [*pids, *(group_members(group) if group else [])]:
        with suppress(ProcessLookupError):
            if pid:
                os.kill(pid, signal.SIGKILL)


@linux_only
def test_a_sigkill_of_canary_kills_what_its_command_started(tmp_path: Path) -> None:
    # only the command itself asked for a signal at its parent's death: what it started (`sh -c "a && b"`, a load
    # generator's workers) was reparented and ran on, with nobody left to stop it
    group = watcher = 0
    with _run_canary(tmp_path, "hook = processes.spawn(['sh', '-c', 'sleep 300 & sleep 300; wait'], start_new_session=True)\n"
                               "print(hook.pid, flush=True)\ntime.sleep(300)\n") as canary:
        try:
            group, watcher = _started(canary)
            assert poll(lambda: len(_sleeps(group)) == 2), "the command did not start its children"
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a Ctrl-C, a CI job's SIGTERM: canary's, not its
                os.kill(watcher, signum)
            canary.kill()
            canary.wait(BOUND_S)
            # (not within a second or two: on a busy machine the watcher may still be starting its interpreter)
            assert poll(lambda: not group_members(group)), f"outlived canary: {_sleeps(group)}"
        finally:
            canary.kill()
            _kill_all(group, watcher)


@linux_only
def test_a_command_in_a_group_of_its_own_keeps_its_status_and_output() -> None:
    hook = processes.spawn(["sh", "-c", "echo started; exit 3"], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert hook.communicate(timeout=BOUND_S) == (b"started\n", None)  # nothing else holds its output
        assert hook.returncode == 3
    finally:
        with suppress(ProcessLookupError):
            os.killpg(hook.pid, signal.SIGKILL)  # what the caller does with a command's group once it exited
    assert poll(lambda: not group_members(hook.pid), 5.0), "its group outlived the kill"


@linux_only
def test_a_command_that_cannot_start_leaves_nothing_behind(tmp_path: Path) -> None:
    with _run_canary(tmp_path, "try:\n    processes.spawn(['/nonexistent/canary-hook'], start_new_session=True)\n"
                               "except FileNotFoundError:\n    print('failed', flush=True)\ntime.sleep(300)\n") as canary:
        try:
            assert canary.stdout is not None and canary.stderr is not None
            assert canary.stdout.readline() == "failed\n", canary.stderr.read()

            def copies() -> list[int]:  # what the canary process started, forks and watchers, that lives on
                return [pid for pid in _marked(tmp_path) if pid != canary.pid and processes.pid_alive(pid)]

            assert poll(lambda: not copies(), 5.0), f"left running: {copies()}"
        finally:
            canary.kill()


def _private_kb(pid: int) -> int | None:
    """The memory of ``pid`` that no other process shares (kB), None once it is gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    return sum(int(line.split()[1]) for line in rollup.splitlines() if line.startswith(("Private_Clean:", "Private_Dirty:")))


@linux_only
def test_a_watcher_holds_no_copy_of_canarys_memory(tmp_path: Path) -> None:
    # the watcher was a fork of canary that never execs: as canary's heap changed after the fork, the watcher ended up
    # with a private copy of it, one per running hook (a CI pod's memory doubled). A fresh interpreter: a few MB
    group = watcher = 0
    with _run_canary(tmp_path, "heap = [str(i) * 3 for i in range(1_000_000)]\n"  # a long-running canary's heap, ~90 MB
                               "hook = processes.spawn(['sleep', '300'], start_new_session=True)\n"
                               "heap = [s + 'x' for s in heap]\n"  # canary goes on working: its heap changes
                               "print(hook.pid, flush=True)\ntime.sleep(300)\n") as canary:
        try:
            group, watcher = _started(canary)
            # polled: one measured between its fork and its exec, on a busy machine, may still be a copy
            assert poll(lambda: (_private_kb(watcher) or 0) < 30_000), f"the watcher's private memory: {_private_kb(watcher)} kB"
            assert processes.pid_alive(watcher)
        finally:
            canary.kill()
            _kill_all(group, watcher)


@linux_only
def test_a_watcher_ends_when_its_group_has_only_zombies_left(tmp_path: Path) -> None:
    # canary as a container's first process (or a subreaper) is given what a killed command started, and reaps only
    # its own children: the group's zombies answered kill(-group, 0), and the watcher lived on as long as canary
    group = watcher = 0
    body = ("import ctypes, signal, subprocess\n"
            "assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0\n"  # PR_SET_CHILD_SUBREAPER, as a container's PID 1
            "hook = processes.spawn(['sh', '-c', 'sleep 300 & echo go; wait'], stdout=subprocess.PIPE, start_new_session=True)\n"
            "assert hook.stdout.readline() == b'go\\n'\n"
            "print(hook.pid, flush=True)\n"
            "sys.stdin.readline()\n"
            "os.killpg(hook.pid, signal.SIGKILL)\nhook.wait()\n"  # as webhooks does: the command's reaped, its child is not
            "print('killed', flush=True)\n"
            "sys.stdin.readline()\n"
            "while True:\n"  # the end: reaped, all of them (no zombie handed on)
            "    try:\n        os.wait()\n    except ChildProcessError:\n        break\n")
    with _run_canary(tmp_path, body, stdin=subprocess.PIPE) as canary:
        try:
            assert canary.stdin is not None and canary.stdout is not None
            group, watcher = _started(canary)
            canary.stdin.write("kill\n")
            canary.stdin.flush()
            assert canary.stdout.readline() == "killed\n"
            assert poll(lambda: not group_members(group)), f"the kill left {group_members(group)}"
            os.killpg(group, 0)  # only zombies left, which still answer
            assert poll(lambda: not processes.pid_alive(watcher)), "the watcher outlived its group"
        finally:
            _kill_all(group, watcher)
            with suppress(OSError, subprocess.TimeoutExpired):
                canary.communicate("end\n", timeout=BOUND_S)
            canary.kill()


@linux_only
def test_a_watcher_that_cannot_start_leaves_the_command_running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "_PYTHON", "/nonexistent/python")
    hook = processes.spawn(["sh", "-c", "echo started; sleep 300"], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert hook.stdout is not None and hook.stdout.readline() == b"started\n"
        assert poll(lambda: _watcher(hook.pid) is None, 5.0), "the watcher's fork outlived its failed exec"
        assert hook.poll() is None
    finally:
        with suppress(ProcessLookupError):
            os.killpg(hook.pid, signal.SIGKILL)
        hook.communicate(timeout=BOUND_S)
    assert poll(lambda: not group_members(hook.pid), 5.0), "its group outlived the kill"


@pytest.mark.parametrize(("executable", "runs"), [("/usr/bin/python3.11", True), ("/srv/app/.venv/bin/python", True),
                                                  ("/usr/bin/uwsgi", False), ("/opt/canary/canary-frozen", False), ("", False)])
def test_a_watcher_runs_only_in_a_python_interpreter(executable: str, runs: bool) -> None:
    # an embedding program names itself in sys.executable: run with Python's flags and the watcher's source, it would do
    # whatever it does with them instead of watching
    assert (processes._interpreter(executable) == executable) is runs
