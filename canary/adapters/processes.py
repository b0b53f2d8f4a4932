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
"""

from __future__ import annotations

import functools
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

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
