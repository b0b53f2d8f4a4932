"""Durable local files: atomic replacement, fsync'ed appends, an advisory lock. Standard library only.

A crash leaves a file replaced here either old or new, never half of one, and
an appended line is on disk before the call returns.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str, mode: int | None = None, durable: bool = True) -> None:
    """Replace ``path`` with ``text`` in one rename: a temporary file in the same directory
    (with the old file's mode, or ``mode``), flushed to disk, renamed over it, then the directory flushed.
    Not ``durable``: still old or new after a crash, but a power cut may lose the change (no flushes)."""
    write_bytes_atomic(path, text.encode(), mode, durable)


def write_bytes_atomic(path: Path, data: bytes, mode: int | None = None, durable: bool = True) -> None:
    """As ``write_text_atomic``, for bytes (an image)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode if mode is not None else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if mode is None:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def create_text_atomic(path: Path, text: str) -> None:
    """Create ``path`` with ``text``, whole or not at all; FileExistsError if it exists (even one created
    meanwhile by another process: the complete file is linked into place, which never replaces one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def append_line(path: Path, line: str) -> None:
    """Append one line and flush it to disk before returning. A torn last line (a crash mid-write) is
    ended first: the new line is never glued to it, and lost with it, when the file is read."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        os.write(fd, ("\n" if torn else "").encode() + (line.rstrip("\n") + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked_in_place(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on the existing file ``path`` itself, for a block that replaces it by
    ``write_text_atomic``: no lock file is left beside it (a stack file lives in the user's repository).
    A replacement made while this waited leaves it holding the old file's lock, so the file is opened
    and locked again until the lock held is the file's at the path."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR)
        except PermissionError:  # a read-only file in a writable directory is still replaced by a rename
            fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            held = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                break
        except BaseException:
            os.close(fd)
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
