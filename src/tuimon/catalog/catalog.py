"""Every run under some roots, kept up to date cheaply: the runs screen's and `tuimon ls`'s
model.

`refresh()` rescans the roots at stat level (new runs appear, deleted ones vanish), reads
only what each log gained since the last refresh (catalog/run_follower.py), checks the pid
of each run without an `end` (at most once a second), and returns the summaries newest
start first. Alerts still open at a long finished run's end come from its state.json
(catalog/cached_alerts.py), a few runs per refresh within a small time budget, so a first
refresh of many runs stays fast. It never writes anything.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuimon.catalog.roots import scan_run_dirs
from tuimon.catalog.run_follower import RunFollower
from tuimon.catalog.run_summary import RunSummary
from tuimon.run.field_types import as_number

BACKFILL_BUDGET_S = 0.02  # per refresh, for reading state.json alerts of finished runs


class RunCatalog:
    """The runs under `roots`, followed incrementally; safe to call from a worker thread
    (one refresh at a time)."""

    def __init__(self, roots: Sequence[Path], *, backfill_budget_s: float = BACKFILL_BUDGET_S):
        self.roots = [Path(root) for root in roots]
        self.backfill_budget_s = backfill_budget_s
        self._lock = threading.Lock()
        self._followers: dict[str, RunFollower] = {}
        self._summaries: dict[str, RunSummary] = {}
        self._bytes_read_gone = 0  # bytes read for runs no longer listed

    @property
    def bytes_read(self) -> int:
        """Every byte read from event logs so far (what the tests hold the catalog to)."""
        with self._lock:
            return self._bytes_read_gone + sum(f.bytes_read for f in self._followers.values())

    def refresh(self) -> list[RunSummary]:
        """Rescan, read what is new, and return every run's summary, newest start first."""
        with self._lock:
            found = {str(path): (path, log) for path, log in scan_run_dirs(self.roots)}
            for key in list(self._followers):
                if key not in found:
                    self._drop(key)
            now, clock = time.time(), time.monotonic()
            changed: set[str] = set()
            for key, (path, log) in found.items():
                follower = self._followers.get(key)
                if follower is None:
                    follower = self._followers[key] = RunFollower(path)
                try:
                    if follower.update(log):
                        follower.forget_liveness()
                        changed.add(key)
                except OSError:
                    self._drop(key)  # deleted since the scan, or not readable
                    continue
                except Exception:
                    pass  # a log no reader expected: what was read so far stands
                if follower.check_liveness(clock):
                    changed.add(key)
            changed.update(self._backfill(time.monotonic() + self.backfill_budget_s))
            summaries = {}
            for key, follower in self._ordered():
                summary = self._summaries.get(key)
                if summary is None or summary.live or key in changed:
                    summary = follower.summary(now)  # a live run's duration grows
                summaries[key] = summary
            self._summaries = summaries
            return list(summaries.values())

    def complete_alerts(self) -> list[RunSummary]:
        """Read every pending state.json now (`tuimon ls`: one look, no budget), then the
        summaries as `refresh()` returns them."""
        self.backfill_budget_s, budget = float("inf"), self.backfill_budget_s
        try:
            return self.refresh()
        finally:
            self.backfill_budget_s = budget

    def summary(self, run_dir: Path) -> RunSummary | None:
        """The run's summary as of the last refresh, or None when it is not listed."""
        with self._lock:
            found = self._summaries.get(str(run_dir))
            if found is not None:
                return found
            real = os.path.realpath(run_dir)
            for summary in self._summaries.values():
                if os.path.realpath(summary.run_dir) == real:
                    return summary
            return None

    def latest_system(self) -> dict[str, Any] | None:
        """The newest `system` event of any live run on this host (for the machine's GPU
        panel: a run on another host samples that host's GPUs)."""
        here = socket.gethostname()
        with self._lock:
            best: dict[str, Any] | None = None
            best_time = -float("inf")
            for key, follower in self._followers.items():
                summary = self._summaries.get(key)
                if summary is None or not summary.live or follower.system is None:
                    continue
                if summary.host is not None and summary.host != here:
                    continue
                when = as_number(follower.system.get("time"))
                if when > best_time or best is None:
                    best, best_time = follower.system, when
            return best

    def _ordered(self) -> list[tuple[str, RunFollower]]:
        return sorted(self._followers.items(), key=lambda item: item[1].sort_key(), reverse=True)

    def _backfill(self, deadline: float) -> list[str]:
        """Merge pending state.json alerts until `deadline`; the runs that got them."""
        done = []
        for key, follower in self._followers.items():
            if follower.cache_pending:
                if time.monotonic() > deadline:
                    break
                follower.merge_cached_alerts()
                done.append(key)
        return done

    def _drop(self, key: str) -> None:
        follower = self._followers.pop(key)
        self._bytes_read_gone += follower.bytes_read
        self._summaries.pop(key, None)
