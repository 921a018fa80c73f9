"""Whether a run's worker still lives, from the pid and host its `start` event recorded.

A worker killed with SIGKILL writes no `end` event and may leave its socket file behind,
which then refuses connections. The socket alone cannot tell a dead worker from a busy
one; the pid can, but only on the host that recorded it. Elsewhere the answer is
"unknown", never "gone": a run on another machine may well be training.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import psutil

from tuimon.run.events import START
from tuimon.run.log_reader import read_events

# The start event is the log's first line; a few more are read in case something precedes it.
START_SEARCH_EVENTS = 16
# Process start times are rounded (clock ticks); a process created this long after the
# run's start event is a newer process that was given the same pid.
PID_REUSE_SLACK_S = 1.0

Liveness = Literal["alive", "gone", "unknown"]


@dataclass(frozen=True)
class WorkerLiveness:
    verdict: Liveness  # alive, gone, or unknown (cannot be checked from this host)
    pid: int | None = None
    host: str | None = None

    def describe(self) -> str:
        """In words, for a status line: "pid 1234 not running"."""
        if self.pid is None:
            return "the log records no worker pid"
        if self.verdict == "gone":
            return f"pid {self.pid} not running"
        if self.verdict == "alive":
            return f"pid {self.pid} running"
        return f"pid {self.pid} on host {self.host}: cannot check it from {socket.gethostname()}"


def start_event(log_path: str | Path) -> dict[str, Any] | None:
    """The run's `start` event (its first line), or None when the log has none yet."""
    try:
        for event in islice(read_events(log_path), START_SEARCH_EVENTS):
            if event.get("type") == START:
                return event
    except (OSError, ValueError):
        return None
    return None


def worker_liveness(start: dict[str, Any] | None) -> WorkerLiveness:
    """Whether the process that wrote `start` is alive, gone, or cannot be checked here."""
    start = start or {}
    pid, host = start.get("pid"), start.get("host")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return WorkerLiveness("unknown")
    host = str(host) if host is not None else None
    if host is not None and host != socket.gethostname():
        return WorkerLiveness("unknown", pid, host)
    started = start.get("time")
    return WorkerLiveness(_pid_state(pid, started), pid, host)


def _pid_state(pid: int, started: Any) -> Liveness:
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return "gone"  # killed, not yet reaped by its parent
        created = process.create_time()
    except psutil.NoSuchProcess:
        return "gone"
    except (psutil.AccessDenied, OSError, OverflowError):
        return "alive"  # someone's process: it exists
    if isinstance(started, int | float) and created > started + PID_REUSE_SLACK_S:
        return "gone"  # the pid now belongs to a process started after the run
    return "alive"
