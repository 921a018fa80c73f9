"""Copy what a headless run prints into the run directory's `output.log`."""

from __future__ import annotations

import contextlib
import io
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


class _Tee(io.TextIOBase):
    def __init__(self, stream: TextIO, copy: TextIO, lock: threading.Lock) -> None:
        self._stream = stream
        self._copy = copy
        self._lock = lock

    def write(self, text: str) -> int:
        with self._lock:
            self._stream.write(text)
            with contextlib.suppress(ValueError):  # the copy was closed at shutdown
                self._copy.write(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()
        with contextlib.suppress(ValueError):
            self._copy.flush()

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
    copy = path.open("a", encoding="utf-8", buffering=1)
    lock = threading.Lock()
    saved = sys.stdout, sys.stderr
    sys.stdout = _Tee(saved[0], copy, lock)  # type: ignore[assignment]
    sys.stderr = _Tee(saved[1], copy, lock)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        copy.close()
