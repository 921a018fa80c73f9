"""Unix socket addresses that work whatever the length of the run directory's path.

AF_UNIX paths are limited to about 107 bytes; a run directory deep in a home tree easily
exceeds that. On Linux a long path is reached through /proc/self/fd/<dirfd>/NAME instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
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


def listen(path: Path, backlog: int) -> socket.socket:
    """Bind a listening socket at `path`, readable and writable by this user only.

    The mode comes from the umask at bind(): a chmod afterwards would follow a symlink
    put in the socket's place. With TUIMON_GROUP_ACCESS too the socket stays 0600: the
    group may read a run, not steer it.
    """
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket (or a link: unlink removes the link, not its target)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        with short_address(path) as address:
            sock.bind(address)
        info = path.lstat()
        if not stat.S_ISSOCK(info.st_mode) or stat.S_IMODE(info.st_mode) & 0o077:
            raise OSError(f"{path} is not the private socket just bound: refusing to serve it")
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.listen(backlog)
    return sock
