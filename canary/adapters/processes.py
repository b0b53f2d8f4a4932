"""Whether the process that took a lock is still there.

Two locks name their holder by host and pid: canary's own release lock (the
journal) and Pulumi's update lock (the file backend). A lock of this host is
stale when its process is gone — and a pid that answers ``kill(pid, 0)`` can
still be gone:

- a **zombie**: killed, not yet reaped. When a release's whole process group is
  killed, the Pulumi CLI's parent dies with it and the CLI waits for the init
  process to reap it; an init that reaps late (or never, as in a container whose
  first process is not an init) would keep the lock "alive" indefinitely;
- a **reused pid**: pids wrap (at 32768 on many Linux machines), so a later,
  unrelated process can carry the dead holder's pid. A process that started
  well after the lock was taken (a minute: ``START_TOLERANCE_S``) is not its
  holder.

Both are read from ``/proc`` (Linux); elsewhere only the pid's existence counts.

"This host" is more than the host name: a container with the host's network (``--network host``,
``hostNetwork: true``) keeps the host's name but numbers its processes in a PID namespace of its
own, where a live holder's pid means nothing here (no such process, or another one). canary's
holder identity therefore records the boot (``/proc/sys/kernel/random/boot_id``) and the PID
namespace (the inode of ``/proc/self/ns/pid``) too; a holder is judged by its pid only when host,
boot and namespace are all this process's, and is otherwise another host's, whose lease runs out
in its time. An identity without them (an earlier canary's; Pulumi's lock files, which record pid
and host name only) is judged by host name alone, as before.

It also starts the children that must not outlive this process however it ends (``spawn``: a command
hook, a load generator among them, is SIGKILLed with canary, and so is what it started in its group where
libc has ``_Fork``).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

#: how much later than the lock's time its holder may appear to have started and
#: still count as the holder. Generous on purpose: the boot time in /proc/stat
#: has whole seconds, and a wall clock stepped forward after the lock was taken
#: moves every computed start time with it; a live holder must never look dead.
#: A reused pid belongs to a process started long after a lock that is stale.
START_TOLERANCE_S = 60.0


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (killed, not yet reaped)."""
    return _look(pid)[0]


@functools.cache
def boot_id() -> str | None:
    """This machine's boot (a new one at each boot): pids of an earlier boot mean nothing now. None off Linux."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


@functools.cache
def pid_namespace() -> int | None:
    """The PID namespace this process's pids are numbers in (the inode of ``/proc/self/ns/pid``). None off Linux."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def identity() -> dict[str, Any]:
    """What a holder record says of this process, beside its pid: where that pid means something."""
    return {"host": socket.gethostname(), "boot": boot_id(), "pidns": pid_namespace()}


def same_host(host: str, boot: str | None = None, pidns: int | None = None) -> bool:
    """Whether a holder's pid is a pid of this process's world: same host name and, when the holder
    recorded them, same boot and PID namespace. A record of either that cannot be compared here (this
    machine reads neither) is another host's: its holder cannot be seen, never judged dead."""
    if host != socket.gethostname():
        return False
    if boot is None and pidns is None:
        return True  # an identity recorded without them (an earlier canary, Pulumi's lock): by host name, as then
    # (one of them unreadable on a machine reads alike for its own processes: None, compared as recorded)
    return boot == boot_id() and pidns == pid_namespace()


def holder_alive(host: str, pid: int, since: str | None = None, boot: str | None = None, pidns: int | None = None) -> bool:
    """True unless the holder is a process of this host that is gone (no such pid, a zombie, or
    a newer process reusing the pid: one started after ``since``, the lock's ISO 8601 time).
    ``boot``, ``pidns``: where the holder's pid is numbered (see ``same_host``), when it said."""
    if not same_host(host, boot, pidns):
        return True  # another host's process (or another PID namespace's, or a machine's of the same name): nothing here can tell
    alive, started = _look(pid)
    if not alive:
        return False
    taken = _timestamp(since)
    return started is None or taken is None or started <= taken + START_TOLERANCE_S


def _look(pid: int) -> tuple[bool, float | None]:
    """Whether ``pid`` is a live process, and its start time (a Unix timestamp) where /proc tells."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, None
    except PermissionError:
        pass  # exists, under another user
    except (OverflowError, ValueError):
        return False, None  # not a pid at all
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self").exists(), None  # gone since kill(), unless there is no /proc at all
    except OSError:
        return True, None
    # after "pid (comm) ": field 3 (state) is index 0, field 22 (starttime, in clock ticks since boot) index 19
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return False, None
    try:
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
        return True, boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return True, None


def _timestamp(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


# --- children that die with this process ------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _libc_call(name: str, loader: Callable[[None], ctypes.CDLL], argtypes: list[Any], restype: Any) -> Callable[..., int] | None:
    """libc's function ``name`` as ``loader`` (``ctypes.CDLL`` or ``ctypes.PyDLL``, which differ in how they call)
    finds it among this process's own symbols, declared ``argtypes`` to ``restype``; None where libc has no such call."""
    try:
        call = getattr(loader(None), name)
    except (OSError, AttributeError):
        return None
    call.argtypes = argtypes
    call.restype = restype
    return call  # type: ignore[no-any-return]


#: libc's ``prctl``, on Linux; None elsewhere (no such call: a child there outlives a SIGKILL of canary). Resolved
#: here, in the parent: the child, a fork of a process with threads, only calls it.
_PRCTL = (_libc_call("prctl", functools.partial(ctypes.CDLL, use_errno=True), [ctypes.c_int, *[ctypes.c_ulong] * 4], ctypes.c_int)
          if sys.platform.startswith("linux") else None)

#: libc's ``_Fork`` (glibc 2.34, musl 1.2.2 and later): a fork that runs no at-fork handler. A library's (gRPC's),
#: run in a command before its exec, wrote into the command's output, and one that waits for its threads would wait
#: there for threads the copy does not have. Called through ``PyDLL``, which keeps the interpreter's lock held: the
#: copy holds it as its forker did. None where libc has no such call, or no ``prctl`` (then a command has no watcher:
#: what it started outlives a SIGKILL of canary). Resolved here, in the parent, as ``_PRCTL``.
_FORK = None if _PRCTL is None else _libc_call("_Fork", ctypes.PyDLL, [], ctypes.c_int)


def _dies_with(parent: int, prctl: Callable[..., int], alive: int | None = None) -> Callable[[], None]:
    """What a child runs between fork and exec: ask the kernel for SIGKILL when its parent dies, then make
    sure that parent is still ``parent`` (one that died before the request took effect sends nothing: the
    child, reparented, kills itself). SIGKILL, not SIGTERM: the kernel sends one signal, and a command that
    handles or ignores SIGTERM would run on with nobody left to follow up (canary kills hooks with SIGKILL
    anyway). Only calls to C and to ``os``: no import, no lock another thread may have held at the fork.

    The kernel signals the child alone: what the command starts (a shell's children) would be reparented
    and run on. A child that leads a process group of its own therefore also starts a watcher of that group
    (``_watch``; ``alive``: the read end of ``_ALIVE``'s pipe), forked by ``_FORK`` twice so that it is not the
    command's child (a command that waits for all its children would wait for it too). The watcher's command
    line is built here, in the parent, but for the two numbers only the child knows."""
    fork = _FORK
    watcher = None if _PYTHON is None else [_PYTHON, "-I", "-S", "-c", _WATCHER, str(round(_WATCH_EVERY * 1000))]

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        if alive is not None and fork is not None and watcher is not None and os.getpgrp() == os.getpid():
            group = os.getpid()
            middle = fork()
            if middle == 0:
                try:
                    if fork() == 0:
                        _watch(watcher, alive, group)
                finally:
                    os._exit(0)
            if middle > 0:
                try:
                    os.waitpid(middle, 0)
                except ChildProcessError:
                    pass  # reaped already (SIGCHLD ignored)
    return preexec


def _watch(watcher: list[str], alive: int, group: int) -> NoReturn:
    """What becomes the watcher of a command's process group, in a fork of canary: it leaves the group (the
    caller's kill of the command's group ends with the group empty, as without it), closes every descriptor
    but ``alive`` (Popen waits for the end of file of its error pipe, a caller for the command's output's, and
    a socket canary closes would stay open to its peer: a watcher holding them would hold all that), and execs ``watcher`` (``_WATCHER``), an interpreter of its own:
    a fork of canary that lives on ends up holding a private copy of canary's memory, page by page as
    canary's heap changes (one per running hook, as much again as canary's). Every signal is blocked, and
    stays blocked across the exec: canary's handlers are not its to run, and a Ctrl-C or SIGTERM sent to
    canary's terminal group is not its to obey (only SIGKILL ends it). If the exec fails there is no watcher."""
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        os.setpgid(0, 0)
        for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
            if fd != alive:
                try:
                    os.close(fd)
                except OSError:
                    pass  # the listing's own, closed already
        os.set_inheritable(alive, True)
        os.chdir("/")  # (holds no directory of canary's busy)
        os.execv(watcher[0], [*watcher, str(alive), str(group)])
    finally:
        os._exit(0)


#: how often a watcher looks whether its group is still there
_WATCH_EVERY = 0.5

def _interpreter(executable: str) -> str | None:
    """``executable`` when it is a Python interpreter a watcher can run in; else None (no watcher): an interpreter
    that cannot tell its own path, or an embedding program (uWSGI, a frozen binary) that names itself there and would
    be run with Python's flags."""
    return executable if executable and os.path.basename(executable).startswith("python") else None


#: the interpreter a watcher runs in, resolved here, in the parent: nothing is looked up between fork and exec
_PYTHON = _interpreter(sys.executable)

#: The watcher program (``python -I -S -c _WATCHER EVERY_MS ALIVE GROUP``), self-contained: no site, no
#: canary, a few MB. When canary ends (``ALIVE`` at its end of file: nobody writes to it) it SIGKILLs the
#: group. It ends once no process of the group is alive but zombies: the caller killed it. A zombie is not
#: alive: where canary is a container's first process (or a subreaper), what a killed command started is
#: reparented to canary, which reaps only its own children, and stays a zombie of the group as long as canary
#: runs. The group's id is the command's pid, its own while the command is not reaped, and a pid is not given
#: again while a process of that group, a zombie included, is there: the group the watcher sees is the
#: command's. The leader (the command) is looked at first; all of ``/proc`` only once it is gone.
_WATCHER = """\
# canary's watcher of a command hook's process group: SIGKILLs the group when canary ends
import os, select, sys

every, alive, group = (int(arg) for arg in sys.argv[1:4])
proc = os.path.isdir("/proc/self")


def lives(pid):
    try:
        with open("/proc/" + str(pid) + "/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rindex(b")") + 2 :].split()
    return fields[0] not in (b"Z", b"X") and int(fields[2]) == group


def group_lives():
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    if not proc:
        return True
    return lives(group) or any(lives(name) for name in os.listdir("/proc") if name.isdigit())


ends = select.poll()  # (not select(): the descriptor's number is canary's, maybe past what select() takes)
ends.register(alive, select.POLLIN)
while True:
    if ends.poll(every) and not os.read(alive, 1):
        try:
            os.killpg(group, 9)
        except OSError:
            pass
        break
    if not group_lives():
        break
"""


#: this process's pid, and the two ends of a pipe that nobody writes: its write end, this process's alone
#: (close-on-exec, never passed to a child), is closed by the kernel when the process ends, however it ends,
#: and a watcher (``_WATCHER``) reads the end of file. A fork of canary that does not exec would hold it too
#: (canary has none); one that spawns makes a pipe of its own.
_ALIVE: tuple[int, int, int] | None = None


#: ``Popen`` calls for the spawner thread, each with the future its caller waits on
_SPAWNS: queue.SimpleQueue[tuple[Callable[[], subprocess.Popen[bytes]], Future[subprocess.Popen[bytes]]]] = queue.SimpleQueue()
_SPAWNER_LOCK = threading.Lock()
_spawner: threading.Thread | None = None


def _serve() -> None:
    while True:
        start, done = _SPAWNS.get()
        if not done.set_running_or_notify_cancel():
            continue  # its caller gave up waiting (the hook failed) before its turn came: never started
        try:
            done.set_result(start())
        except BaseException as exc:  # noqa: BLE001 — the caller's, raised where it waits, as from Popen itself
            done.set_exception(exc)


def spawn(args: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(args, **options)`` for a child that must not outlive this process, whatever ends it
    (a SIGKILL included: a CI job's timeout, the OOM killer, ``kill -9`` of a group the child, in a session of
    its own, is not in). On Linux the child asks for ``PR_SET_PDEATHSIG`` (``_dies_with``), which fires when
    the *thread* that forked it ends: every such child is forked by one daemon thread that lives as long as
    the process, never by the caller's (a hook started from a helper thread would die with that thread).
    The kernel signals the child itself only: what it started (a shell's children) is reparented. A child that
    leads a process group of its own (``start_new_session``, ``process_group=0``) has a watcher, which SIGKILLs
    the whole group when this process ends (``_WATCHER``), and ends once the caller killed it. What leaves the
    group (a command that starts a session of its own) is not followed.
    Elsewhere a plain ``Popen``: the child outlives a SIGKILL of this process.

    Not a wrapper that sets it and execs the command (no ``preexec_fn`` in a process with threads): it costs
    an interpreter's start per hook, and a missing program would no longer fail here."""
    if _PRCTL is None:
        return subprocess.Popen(args, **options)
    global _spawner, _ALIVE
    with _SPAWNER_LOCK:
        if _spawner is None or not _spawner.is_alive():  # (a forked copy of this process has only its forking thread)
            _spawner = threading.Thread(target=_serve, name="canary-spawner", daemon=True)
            _spawner.start()
        if _ALIVE is None or _ALIVE[0] != os.getpid():
            _ALIVE = (os.getpid(), *os.pipe())
        alive = _ALIVE[1]
    done: Future[subprocess.Popen[bytes]] = Future()
    _SPAWNS.put((functools.partial(subprocess.Popen, args, preexec_fn=_dies_with(os.getpid(), _PRCTL, alive), **options), done))
    try:
        return done.result(timeout=SPAWN_WAIT)
    except TimeoutError:
        # a fork stuck before its exec (what a library's at-fork handler does in the child runs there): the caller is
        # not held with it, a hook that cannot start fails, and the next spawn gets a thread of its own
        with _SPAWNER_LOCK:
            _spawner = None
        if not done.cancel():  # still queued (behind the stuck one): skipped when its turn comes
            done.add_done_callback(_kill_if_started)  # being started: killed once it is, with nobody to own it
        raise OSError(errno.ETIMEDOUT, f"not started within {SPAWN_WAIT:g}s: its fork did not reach the command") from None


#: how long ``spawn`` waits for the spawner's fork and exec, which take milliseconds
SPAWN_WAIT = 15.0


def _kill_if_started(done: Future[subprocess.Popen[bytes]]) -> None:
    if done.exception() is None:
        process = done.result()
        try:  # not reaped yet: its pid, and its group's id, are its own
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGKILL)  # what it started with it
        except (ProcessLookupError, PermissionError):
            pass
        process.kill()
        process.wait()
