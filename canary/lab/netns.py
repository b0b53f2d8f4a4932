"""The lab's network namespace, and the loopback bridge from the host into it.

Pod addresses (10.244.0.0/16) exist only inside a network namespace the lab
creates (``ip netns add``): the whole range is put on that namespace's loopback,
so a demo process can bind the exact pod IP the fake kubelet assigned, and
nothing of it touches the host's interfaces. Every lab component runs inside
it. The host reaches the API server, the gateway and Prometheus through a
forwarder (``python -m canary.lab.netns``) that listens on the host's
127.0.0.1 and connects inside the namespace: its listening sockets are opened
before it enters the namespace, so they stay on the host.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence

from canary.errors import LabError

POD_CIDR = "10.244.0.0/16"
_CLONE_NEWNET = 0x40000000


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ip = shutil.which("ip")
    if ip is None:
        raise LabError("network: the ip command (Debian package iproute2) is not installed")
    done = subprocess.run([ip, *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise LabError(f"network: ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def exists(name: str) -> bool:
    return name in _ip("netns", "list", check=False).stdout.split()


def create(name: str) -> None:
    """Create the namespace with loopback up and the pod range on it (idempotent)."""
    if os.geteuid() != 0:
        raise LabError("network: the lab needs root to create its network namespace")
    if not exists(name):
        _ip("netns", "add", name)
    _ip("-n", name, "link", "set", "lo", "up")
    addrs = _ip("-n", name, "addr", "show", "dev", "lo").stdout
    if POD_CIDR not in addrs:
        _ip("-n", name, "addr", "add", POD_CIDR, "dev", "lo")


def delete(name: str) -> None:
    if exists(name):
        _ip("netns", "delete", name)


def prefix(name: str) -> list[str]:
    """The argv prefix that runs a command inside the namespace."""
    return ["ip", "netns", "exec", name]


def enter(name: str) -> None:
    """Move this (single-threaded) process into the namespace."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise LabError(f"network: setns into {name} failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass


async def _serve(ports: Sequence[int], sockets: list[object]) -> None:
    async def handle(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and accepted
        # sockets have proto 0: without it, Nagle held a response's tail until the client's
        # delayed ACK, about 40 ms on every API-server reply of more than a few KiB.
        for side in (writer, up_writer):
            sock = side.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    servers = []
    for port, sock in zip(ports, sockets, strict=True):
        servers.append(await asyncio.start_server(lambda r, w, p=port: handle(p, r, w), sock=sock, backlog=512))
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: list[str] | None = None) -> int:
    """``python -m canary.lab.netns NAMESPACE PORT...``: forward host 127.0.0.1:PORT into the namespace."""
    args = list(sys.argv[1:] if argv is None else argv)
    name, ports = args[0], [int(p) for p in args[1:]]
    sockets = []
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            print(f"forwarder: cannot listen on 127.0.0.1:{port}: {exc.strerror}", file=sys.stderr, flush=True)
            return 1
        sock.listen(512)
        sockets.append(sock)
    enter(name)  # connections opened from now on are inside the namespace
    print(f"forwarding 127.0.0.1:{','.join(map(str, ports))} into {name}", flush=True)
    try:
        asyncio.run(_serve(ports, sockets))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
