"""Files and directories of a run, created so that nobody else can read them or redirect them.

A run directory holds the argv, config, host and pid of a run, and its checkpoints: it is
private to its owner (0700, files 0600) unless `TUIMON_GROUP_ACCESS=1` opens it to the
group for reading (0750, files 0640). Nothing here follows a symlink at the file it
creates or appends to (`O_NOFOLLOW`), so a link planted in the run cannot make tuimon
write outside it; files that must be new are created with `O_EXCL`.

Whole files (checkpoints, `config.yaml`) are written with `atomic_write`: a `mkstemp`
file in the same directory (unpredictable name, `O_EXCL`), `fsync`ed, renamed over the
target, then the directory `fsync`ed, as PyTorch's and databases' atomic-write guidance
says. A kill mid-write leaves only a temporary file whose name `remove_leftover_temp_files`
recognises at the next start.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

GROUP_ACCESS_ENV = "TUIMON_GROUP_ACCESS"
# mkstemp's name: `.tuimon-tmp-<pid>-<8 random chars>.part`; the pid tells whether its
# writer is still alive, so a cleanup never removes the file of a run still writing it.
TEMP_PREFIX = ".tuimon-tmp-"
TEMP_SUFFIX = ".part"
_TEMP_NAME = re.compile(
    re.escape(TEMP_PREFIX) + r"(?P<pid>\d+)-[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + r"\Z"
)
# What tuimon before 0.2 named its checkpoint temp files: `.step-00000015.pt.tmp-<pid>`.
_LEGACY_TEMP_NAME = re.compile(r"\.[A-Za-z0-9._-]+\.pt\.tmp-(?P<pid>\d+)\Z")
_DIR_FSYNC_UNSUPPORTED = (errno.EINVAL, errno.ENOTSUP, errno.EBADF)


def group_access() -> bool:
    """Whether `TUIMON_GROUP_ACCESS` opens new run files to the owner's group (read only)."""
    return os.environ.get(GROUP_ACCESS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def dir_mode() -> int:
    return 0o750 if group_access() else 0o700


def file_mode() -> int:
    return 0o640 if group_access() else 0o600


def make_private_dir(path: Path) -> bool:
    """Create `path` (parents as usual) with the run's directory mode; True if it was new.

    An existing directory is left as it is: `run_dir.py` decides whether it may be used.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return False
    restrict_dir(path)
    return True


def restrict_dir(path: Path) -> None:
    """Give a directory of ours the run's directory mode, without following a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, dir_mode())
    finally:
        os.close(fd)


def open_private_append(
    path: Path, *, binary: bool, buffering: int = -1, encoding: str = "utf-8"
) -> IO[bytes] | IO[str]:
    """Open a run file for appending: `events.jsonl` (binary) or `output.log` (text).

    Created with the run's file mode if missing; a symlink, a FIFO or a file of another
    user at `path` is refused (OSError) instead of followed, blocked on or written to.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fd = _open_checked(path, flags)
    if binary:
        return os.fdopen(fd, "ab", buffering=buffering)
    return os.fdopen(fd, "a", buffering=buffering, encoding=encoding)


def create_private_file(path: Path) -> None:
    """Create an empty file that must not exist yet (`O_EXCL`): FileExistsError if it does,
    also when a symlink (even a dangling one) is there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """Yield a file that replaces `path` only once it is completely written and on disk.

    On any error the temporary file is removed and `path` is untouched; a symlink at
    `path` is replaced by the new file, never followed.
    """
    fd, temp_name = tempfile.mkstemp(
        prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=TEMP_SUFFIX, dir=path.parent
    )
    temp = Path(temp_name)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    fsync_dir(path.parent)


def write_private_file(path: Path, data: bytes | str) -> None:
    """Write a whole small file (`config.yaml`) atomically with the run's file mode."""
    with atomic_write(path) as file:
        file.write(data.encode("utf-8") if isinstance(data, str) else data)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (some filesystems cannot fsync a directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def is_temp_name(name: str) -> bool:
    """Whether `name` is one of tuimon's temporary files (a write in progress or killed)."""
    return bool(_TEMP_NAME.match(name) or _LEGACY_TEMP_NAME.match(name))


def remove_leftover_temp_files(directory: Path) -> list[tuple[Path, int]]:
    """Remove tuimon's temporary files that a killed writer left in `directory`.

    Only names `atomic_write` (or an older tuimon) gives are considered, only regular
    files of this user, and only when the process that wrote one is gone. Returns the
    removed files with their sizes.
    """
    removed: list[tuple[Path, int]] = []
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for name in names:
        found = _TEMP_NAME.match(name) or _LEGACY_TEMP_NAME.match(name)
        if not found or _process_alive(int(found["pid"])):
            continue
        path = directory / name
        try:
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append((path, info.st_size))
    return removed


def _open_checked(path: Path, flags: int) -> int:
    """os.open, then refuse what is not a regular file of ours; O_NONBLOCK is cleared."""
    fd = os.open(path, flags, 0o600)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(
                errno.EINVAL, f"{path} is not a regular file: tuimon will not write to it"
            )
        if info.st_uid != os.geteuid():
            raise OSError(
                errno.EPERM, f"{path} belongs to uid {info.st_uid}: tuimon will not write to it"
            )
        os.fchmod(fd, file_mode())
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OverflowError:
        return False
    return True
