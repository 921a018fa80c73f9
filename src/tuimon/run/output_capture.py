"""Copy what a headless run prints into the run directory's `output.log`.

The copy is a convenience while the terminal is what the user reads, and the only
record once that terminal is gone (`tuimon CONFIG --headless` outlives a dropped SSH
session). A copy that cannot be
written (a full disk, a quota, an I/O error) is abandoned at its first failure — without
an exception at run time or at exit — and the real stream goes on alone.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO, cast

from tuimon.run.private_files import open_private_append


class _Copy:
    """The file both streams are copied to; gives up for good at its first failure."""

    def __init__(self, file: TextIO) -> None:
        self._file: TextIO | None = file
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        self._attempt(lambda file: file.write(text))

    def flush(self) -> None:
        self._attempt(lambda file: file.flush())

    def close(self) -> None:
        with self.lock:
            file, self._file = self._file, None
        if file is not None:
            _close_quietly(file)

    def _attempt(self, action: Callable[[TextIO], object]) -> None:
        # Called with self.lock held by the tee, so writes of stdout and stderr never mix.
        file = self._file
        if file is None:
            return
        try:
            action(file)
        except (OSError, ValueError):  # ValueError: closed at shutdown
            self._file = None
            _close_quietly(file)


def _close_quietly(file: TextIO) -> None:
    # A buffered file that cannot flush raises on close, and again when collected: drop
    # its buffer first so neither happens.
    with contextlib.suppress(OSError, ValueError):
        file.close()
    buffer = getattr(file, "buffer", None)
    raw = getattr(buffer, "raw", None)
    with contextlib.suppress(OSError, ValueError):
        if raw is not None and not raw.closed:
            raw.close()


class _Tee(io.TextIOBase):
    """One of stdout/stderr, copied. A terminal that went away (a dropped SSH session:
    writes fail with EIO) is given up, and the copy goes on alone."""

    def __init__(self, stream: TextIO, copy: _Copy) -> None:
        self._stream = stream
        self._copy = copy
        self.terminal_gone = False

    def write(self, text: str) -> int:
        with self._copy.lock:
            self._to_terminal(lambda: self._stream.write(text))
            self._copy.write(text)
        return len(text)

    def flush(self) -> None:
        self._to_terminal(self._stream.flush)
        with self._copy.lock:
            self._copy.flush()

    def _to_terminal(self, action: Callable[[], object]) -> None:
        if self.terminal_gone:
            return
        try:
            action()
        except (OSError, ValueError):
            self.terminal_gone = True

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")


@contextlib.contextmanager
def tee_output(path: Path) -> Iterator[None]:
    """While active, stdout and stderr also go (line-buffered) to `path`."""
    copy = _Copy(cast(TextIO, open_private_append(path, binary=False, buffering=1)))
    saved = sys.stdout, sys.stderr
    tees = _Tee(saved[0], copy), _Tee(saved[1], copy)
    sys.stdout, sys.stderr = tees
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        copy.close()
        if any(tee.terminal_gone for tee in tees):
            _silence_lost_terminal()


def _silence_lost_terminal() -> None:
    """Point fds 1 and 2 at /dev/null, so what is still buffered for the lost terminal
    (and Python's flush at exit) no longer fails with EIO and exit code 120."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(null, fd)
        os.close(null)
