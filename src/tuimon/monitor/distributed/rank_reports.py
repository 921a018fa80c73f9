"""Every rank's numbers, reported through torchrun's store and gathered on rank 0.

Each rank's reporter thread puts a small summary (its step, status, mean step and data
time, samples/s, memory, the last non-finite loss) under `rank/<r>` twice a second,
with a beat counter that moves even when training does not: rank 0 can then tell a
slow step from a dead or frozen process. Rank 0's collector reads every rank's key in
one round trip and writes a `ranks` event to the job's log when something changed. No
file is shared: this is how ranks on other machines reach the job's log.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import psutil

from tuimon.monitor.distributed.job_store import JobStore
from tuimon.run.events import (
    FAILED,
    PAUSED,
    RANKS,
    RUNNING,
    STOPPING,
    RanksEvent,
    RankSummary,
    RunStatus,
)

REPORT_INTERVAL = 0.5  # seconds between a rank's reports (its beat)
COLLECT_INTERVAL = 0.5  # seconds between rank 0's reads of every rank
EVENT_INTERVAL = 2.0  # at most this often a `ranks` event for mere progress
_CHANGES = ("status", "alive", "nonfinite_step", "error")  # logged at once when they change


def identity(rank: int, local_rank: int, node: int, device: str) -> RankSummary:
    return {
        "rank": rank,
        "local_rank": local_rank,
        "node": node,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": device,
    }


@dataclass
class _Window:
    """Steps recorded since the last report."""

    steps: int = 0
    step_time: float = 0.0
    data_time: float = 0.0
    samples: int = 0


class RankReporter:
    """One rank's reports: fed by the training thread, sent by a thread of its own."""

    def __init__(
        self,
        store: JobStore,
        me: RankSummary,
        *,
        memory: Callable[[], int | None],
        status: Callable[[], RunStatus],
    ) -> None:
        """`memory`: bytes in use now. `status`: the rank's status now (read each report)."""
        self._store = store
        self._me = me
        self._memory = memory
        self._status = status
        self._lock = threading.Lock()
        # One report in flight at a time, and none after the last: the reporter thread's
        # report, built before the end, must not land after the end's and undo it.
        self._send_lock = threading.Lock()
        self._ended = False
        self._window = _Window()
        self._report: dict[str, Any] = {"step": 0, "status": RUNNING, "beat": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuimon-rank-report", daemon=True)

    def start(self) -> None:
        self._send()
        self._thread.start()

    def record(
        self,
        step: int,
        step_time: float,
        data_time: float | None,
        samples: int | None,
        loss: float | None,
    ) -> None:
        """A step's host values (from the device buffer: nothing here syncs the GPU)."""
        with self._lock:
            window = self._window
            window.steps += 1
            window.step_time += step_time
            window.data_time += data_time or 0.0
            window.samples += samples or 0
            self._report["step"] = step
            if loss is not None and not math.isfinite(loss):
                self._report["nonfinite_step"] = step

    def send(self, error: str | None = None) -> None:
        """The end's report (how this rank ended, and why it failed), the last one sent;
        never raises."""
        if error:
            with self._lock:
                self._report["error"] = error[-2000:]
        with contextlib.suppress(Exception):  # the store is gone: the job is ending anyway
            self._send(last=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(REPORT_INTERVAL):
            try:
                self._send()
            except Exception:  # the store is gone (the job is ending): stop reporting
                return

    def _send(self, last: bool = False) -> None:
        with self._send_lock:
            if self._ended:
                return
            self._ended = last
            self._send_report()

    def _send_report(self) -> None:
        with self._lock:
            window, self._window = self._window, _Window()
            report = self._report
            report["beat"] += 1
            report["status"] = self._status()
            if window.steps:
                report["step_time"] = window.step_time / window.steps
                report["data_time"] = window.data_time / window.steps
                report["samples_per_s"] = (
                    window.samples / window.step_time
                    if window.samples and window.step_time
                    else None
                )
            report["memory"] = self._memory()
            value = dict(report)
        self._store.set(f"rank/{self._me['rank']}", value)


@dataclass
class _Heard:
    """What rank 0 last heard from one rank, on rank 0's clock."""

    beat: int = -1
    beat_at: float = field(default_factory=time.monotonic)
    step: int = -1
    step_at: float = field(default_factory=time.monotonic)


class RankCollector:
    """Rank 0: every rank's latest report, as `ranks` events for the job's log."""

    def __init__(
        self,
        store: JobStore,
        ranks: list[RankSummary],
        emit: Callable[[RanksEvent], object],
        current_step: Callable[[], int],
        timeout: float,
        on_lost: Callable[[RankSummary], None],
        me: int = 0,
    ) -> None:
        self._store = store
        self._me = me
        self.ranks: dict[int, dict[str, Any]] = {
            summary["rank"]: dict(summary) for summary in ranks
        }
        self._emit = emit
        self._current_step = current_step
        self._timeout = timeout
        self._on_lost = on_lost
        self._heard = {rank: _Heard() for rank in self.ranks}
        self._lost: set[int] = set()
        self._reporting: set[int] = set()  # ranks whose first report has arrived
        self._lock = threading.Lock()  # the collector thread and close() both collect
        self._last_event = 0.0
        self._logged: dict[int, tuple[Any, ...]] = {}
        self._host = socket.gethostname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuimon-rank-collect", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def summaries(self) -> list[RankSummary]:
        return [cast(RankSummary, dict(self.ranks[rank])) for rank in sorted(self.ranks)]

    def lost(self) -> list[RankSummary]:
        """Other ranks that failed, whose process is gone, or that went unheard past the
        timeout: why this rank's collective failed, when it did."""
        with contextlib.suppress(Exception):  # the store may be gone with the job
            self.collect()
        return [
            cast(RankSummary, dict(summary))
            for rank, summary in sorted(self.ranks.items())
            if rank != self._me and (rank in self._lost or summary.get("status") == FAILED)
        ]

    def _run(self) -> None:
        while not self._stop.wait(COLLECT_INTERVAL):
            try:
                self.collect()
            except Exception:  # the store is gone: the job is ending
                return
            self._maybe_emit()

    def collect(self) -> None:
        """Read every rank's report once; work out ages, liveness and who is lost."""
        with self._lock:
            self._collect()

    def _collect(self) -> None:
        for rank in sorted(set(self.ranks) - self._reporting):
            if self._store.has(f"rank/{rank}"):
                self._reporting.add(rank)
        present = sorted(self._reporting)
        reports = self._store.get_many([f"rank/{rank}" for rank in present])
        now = time.monotonic()
        for rank, report in zip(present, reports, strict=True):
            summary, heard = self.ranks[rank], self._heard[rank]
            if report.get("beat") != heard.beat:
                heard.beat, heard.beat_at = report.get("beat", -1), now
            if report.get("step") != heard.step:
                heard.step, heard.step_at = report.get("step", 0), now
            for name in (
                "step",
                "status",
                "step_time",
                "data_time",
                "samples_per_s",
                "memory",
                "nonfinite_step",
                "error",
            ):
                if name in report:
                    summary[name] = report[name]
        for rank, summary in self.ranks.items():
            heard = self._heard[rank]
            summary["age"] = round(now - heard.beat_at, 2)
            summary["step_age"] = round(now - heard.step_at, 2)
            summary["alive"] = self._alive(summary)
            ended = summary.get("status") not in (None, RUNNING, PAUSED, STOPPING)
            gone = summary["alive"] is False or summary["age"] > self._timeout
            if gone and not ended and rank not in self._lost:
                self._lost.add(rank)
                self._on_lost(cast(RankSummary, dict(summary)))

    def _alive(self, summary: dict[str, Any]) -> bool | None:
        """On this host: is the rank's process still running (a zombie is not)."""
        if summary.get("host") != self._host or not isinstance(summary.get("pid"), int):
            return None
        try:
            return psutil.Process(summary["pid"]).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.Error:
            return None

    def emit_now(self, settle: float = 0.0) -> None:
        """One last `ranks` event, as every rank was last heard (the run is ending).

        `settle`: wait up to this many seconds for every other rank's own end (ranks end
        within moments of each other), so the job's log says how each one ended."""
        deadline = time.monotonic() + settle
        while True:
            try:
                self.collect()
            except Exception:  # the store is gone: log what was known
                break
            if time.monotonic() >= deadline or all(
                summary.get("status") not in (None, RUNNING, PAUSED, STOPPING)
                or summary.get("alive") is False
                for rank, summary in self.ranks.items()
                if rank != self._me
            ):
                break
            time.sleep(0.1)
        self._maybe_emit(force=True)

    def _maybe_emit(self, force: bool = False) -> None:
        now = time.monotonic()
        state = {
            rank: tuple(summary.get(name) for name in _CHANGES)
            for rank, summary in self.ranks.items()
        }
        changed = state != self._logged
        progressed = now - self._last_event >= EVENT_INTERVAL and any(
            summary.get("step_age", 0) < EVENT_INTERVAL
            or summary.get("age", 0) > 2 * REPORT_INTERVAL
            for summary in self.ranks.values()
        )
        if not (changed or progressed or force):
            return
        self._logged = state
        self._last_event = now
        event: RanksEvent = {
            "type": RANKS,
            "step": self._current_step(),
            "world_size": len(self.ranks),
            "ranks": self.summaries(),
        }
        self._emit(event)
