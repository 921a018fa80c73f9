"""Signals that stop a run: the first one stops at the next step, the second aborts.

One mechanism for every run: a script's Monitor takes SIGTERM and SIGHUP (only where
nobody else handles them, so a user's or a framework's handler stays in charge), and the
built-in worker also hands SIGINT to it. A closed terminal (SIGHUP) thus ends a script
cleanly, with a checkpoint and an `end` event, instead of killing it mid-step. The
built-in worker instead ignores SIGHUP once its run has a log (`ignore_hangup`): like a
job under nohup or tmux, `tuimon CONFIG --headless` outlives a dropped SSH session, its
output goes on into the run directory, and `tuimon attach` finds it again.

The handler only queues a stop; the training thread applies it at a step boundary, with
a checkpoint, like any other stop command.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

# Handlers that are "nobody's": Python's own defaults, which a Monitor may replace.
_DEFAULT_HANDLERS: tuple[Any, ...] = (signal.SIG_DFL, signal.default_int_handler, None)


class StopOnSignal:
    """Turns the first of these signals into a stop request and a second into an abort."""

    def __init__(self, request_stop: Callable[[str], None]) -> None:
        self.request_stop = request_stop
        self.count = 0
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def install(self, signums: Sequence[int], *, replace: bool = False) -> None:
        """Take these signals (on the main thread only; `replace`: even from another handler)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in signums:
            current = signal.getsignal(signum)
            if replace or current in _DEFAULT_HANDLERS:
                self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        """Give the signals back to whoever had them (unless someone took them since)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            # A forked child (a DataLoader worker) inherited this handler: it has no run to
            # stop, so the signal does what it would have done there.
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt  # the `with` block, or the exit hooks, still write `end`
        print(
            f"\ntuimon: {signal.Signals(signum).name}: stopping at the next step (again to abort)",
            file=sys.stderr,
            flush=True,
        )
        self.request_stop("signal")


def ignore_hangup() -> None:
    """Outlive the terminal: a dropped SSH session no longer ends this process (the
    run's output already goes to its run directory as well)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
