"""Unix socket addresses that work whatever the length of the run directory's path.

AF_UNIX paths are limited to about 107 bytes; a run directory deep in a home tree easily
exceeds that. On Linux a long path is reached through /proc/self/fd/<dirfd>/NAME instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

_MAX_PATH = 100


@contextlib.contextmanager
def short_address(path: Path) -> Iterator[str]:
    """Yield an address for `path` short enough for bind() and connect()."""
    text = str(path)
    if len(text.encode()) <= _MAX_PATH:
        yield text
        return
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{dir_fd}/{path.name}"
    finally:
        os.close(dir_fd)


def connect(path: Path, timeout: float | None = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with short_address(path) as address:
            sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


def listen(path: Path) -> socket.socket:
    """Bind a listening socket at `path`, readable and writable by this user only."""
    if path.exists() or path.is_symlink():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        with short_address(path) as address:
            sock.bind(address)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock
