"""An export's output file, written the way tuimon writes files: never through a link.

The file is written under a temporary name in its directory (`mkstemp`: new, unpredictable,
never a link), synced, then put in place: linked to its name exclusively (it must not exist:
a file, a symlink, even a dangling one, at the name is refused) or, with `replace` (the
user's --force), renamed over it, which replaces a symlink instead of following it. A
failure or an interrupt removes the temporary file and leaves the name as it was, so a
half-written export never looks like a finished one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tuimon.run.private_files import TEMP_PREFIX, TEMP_SUFFIX, file_mode, fsync_dir

BUFFER_BYTES = 256 << 10
# Filesystems where link(2) is not offered: the name is then taken exclusively by an empty
# placeholder (O_EXCL | O_NOFOLLOW) that the finished file is renamed over.
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS)


class OutputExists(FileExistsError):
    """Something is at the output's name, and replacing it was not asked for."""


def check_free(path: Path, *, replace: bool) -> None:
    """Refuse early (before a long export) what `output_file` would refuse at its end."""
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    if not replace and os.path.lexists(path):
        raise OutputExists(errno.EEXIST, "exists", str(path))
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(path.parent))


@contextlib.contextmanager
def output_file(path: Path, *, replace: bool) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes `path` once the block ends without an error."""
    fd, temp_name = tempfile.mkstemp(
        prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=TEMP_SUFFIX, dir=path.parent
    )
    temp = Path(temp_name)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb", buffering=BUFFER_BYTES) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(temp, path)
        else:
            _link_exclusively(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    fsync_dir(path.parent)


def _link_exclusively(temp: Path, path: Path) -> None:
    try:
        os.link(temp, path, follow_symlinks=False)
    except FileExistsError:
        raise OutputExists(errno.EEXIST, "exists", str(path)) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            os.close(os.open(path, flags, 0o600))
        except FileExistsError:
            raise OutputExists(errno.EEXIST, "exists", str(path)) from None
        os.replace(temp, path)
        return
    temp.unlink()
