"""One run's log followed as it grows: a summary kept up to date from new bytes only.

The first read takes the log's `start` event (its first line) and its tail
(catalog/log_tail.py); every later `update()` reads only the bytes written since
(`read_events(path, offset)` from LogReader.end_offset, never inside a torn line). A log
that shrank or was replaced is read anew; a jump of more than MAX_FOLLOW_BYTES (a catalog
that was not refreshed for a long while) is read as a new tail, keeping the open alerts.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tuimon.catalog.cached_alerts import cached_open_alerts
from tuimon.catalog.log_tail import MAX_TAIL_BYTES, RECENT_STEPS, read_tail
from tuimon.catalog.run_summary import (
    DIED,
    ENDED_STATUSES,
    UNKNOWN,
    RunSummary,
    compact_alert,
    worst_alert,
)
from tuimon.control.commands import STATUS_COMMANDS
from tuimon.run.events import (
    ALERT,
    ALERT_CLEARED,
    CONTROL,
    END,
    END_STATUSES,
    MESSAGE,
    RUN_STATUSES,
    RUNNING,
    START,
    STARTING,
    STEP,
    STOPPING,
    SYSTEM,
)
from tuimon.run.field_types import as_dict, as_list, as_number, as_step, has_loss, typed_event
from tuimon.run.log_reader import read_events
from tuimon.run.run_dir import EVENTS_FILE
from tuimon.run.worker_liveness import Liveness, start_event, worker_liveness

MAX_FOLLOW_BYTES = 2 * MAX_TAIL_BYTES  # new bytes past this are read as a new tail
MIN_TREND_STEPS = 8  # losses needed for a trend
LIVENESS_INTERVAL_S = 1.0  # a live pid is checked again after this long
STARTING_GRACE_S = 60.0  # a log without a start event this old is not starting
STOP_IGNORED = "stop_ignored"  # a message event's flag: the loop ran on past a stop


class RunFollower:
    """What a catalog knows of one run, updated from the bytes its log gained."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.log = run_dir / EVENTS_FILE
        self.bytes_read = 0  # every byte read from the log so far (the head, tails, follows)
        self._reset()

    def _reset(self) -> None:
        self.inode: tuple[int, int] | None = None
        self.offset = 0  # the byte after the last whole line read
        self.size = 0
        self.mtime = 0.0
        self.window_start = 0  # where the first tail began (0: the whole log was read)
        self.start: dict[str, Any] | None = None
        self.end: dict[str, Any] | None = None
        self.phase: str = STARTING
        self.step: int | None = None
        self.loss: float | None = None
        self.losses: deque[float] = deque(maxlen=RECENT_STEPS)
        self.system: dict[str, Any] | None = None
        self.open_alerts: dict[str, dict[str, Any]] = {}
        self.touched_rules: set[str] = set()  # rules whose alerts the read events decided
        self.last_time: float | None = None
        self.skipped = 0
        self.liveness: Liveness | None = None
        self.liveness_checked = -math.inf  # time.monotonic() of the last pid check
        self.cache_pending = False  # alerts from state.json not merged yet

    # -- reading ---------------------------------------------------------------------------

    def update(self, info: os.stat_result | None = None) -> bool:
        """Read what the log gained since the last call (`info`: the log's stat, when the
        caller just took it); whether anything was read. Raises OSError when the log
        cannot be read (gone, or not readable)."""
        info = os.stat(self.log) if info is None else info
        identity = (info.st_dev, info.st_ino)
        if self.inode is not None and (identity != self.inode or info.st_size < self.offset):
            self._reset()  # replaced or truncated: a new log
        self.mtime = info.st_mtime
        if self.inode is None:
            self.inode = identity
            self._read_head()
            self._read_tail(first=True)
            return True
        if info.st_size == self.size:
            return False
        if info.st_size - self.offset > MAX_FOLLOW_BYTES:
            self._read_tail(first=False)
        else:
            self._follow()
        self.size = max(info.st_size, self.offset)  # it may have grown while read
        return True

    def _read_head(self) -> None:
        start = start_event(self.log)
        if start is not None:
            self.start = typed_event(start)
            self.bytes_read += self._head_bytes()

    def _head_bytes(self) -> int:
        """Roughly what reading the start event cost: its line (for the byte count)."""
        with open(self.log, "rb") as file:
            return len(file.readline(1 << 20))

    def _read_tail(self, *, first: bool) -> None:
        tail = read_tail(self.log)
        self.bytes_read += tail.bytes_read
        self.skipped += tail.skipped
        self._apply(tail.events)
        self.offset, self.size = tail.end, tail.size
        if first:
            self.window_start = tail.start
            self.cache_pending = tail.start > 0 and self.end is not None

    def _follow(self) -> None:
        reader = read_events(self.log, offset=self.offset)
        self._apply(reader)
        self.bytes_read += reader.end_offset - self.offset
        self.offset = reader.end_offset
        self.skipped += reader.skipped

    def _apply(self, events: Iterable[dict[str, Any]]) -> None:
        for raw in events:
            if raw.get("type") == STEP:  # most events: checked here, field by field
                self._on_step(raw)
                continue
            event = typed_event(raw)
            if event is None:
                self.skipped += 1
                continue
            kind = event["type"]
            when = as_number(event.get("time"))
            if math.isfinite(when):
                self.last_time = when
            if kind == SYSTEM:
                self.system = event
            elif kind == ALERT:
                self._on_alert(event)
            elif kind == ALERT_CLEARED:
                rule = event.get("rule")
                if type(rule) is str:
                    self.open_alerts.pop(rule, None)
                    self.touched_rules.add(rule)
            elif kind == CONTROL:
                new = event.get("new")
                if event.get("command") in STATUS_COMMANDS and new in RUN_STATUSES:
                    self.phase = new
            elif kind == MESSAGE:
                if event.get(STOP_IGNORED) and self.phase == STOPPING:
                    self.phase = RUNNING
            elif kind == END:
                self.end = event
            elif kind == START:
                if self.start is None:
                    self.start = event
                if self.phase == STARTING:
                    self.phase = RUNNING

    def _on_step(self, event: dict[str, Any]) -> None:
        step = as_step(event.get("step"))
        if step is None:
            self.skipped += 1  # a step event needs a valid step (field_types.typed_event)
            return
        self.step = step
        when = as_number(event.get("time"))
        if math.isfinite(when):
            self.last_time = when
        if self.phase == STARTING:
            self.phase = RUNNING
        if has_loss(event):
            loss = as_number(event["loss"])  # NaN for an int too large for a float
            self.loss = loss
            if math.isfinite(loss):
                self.losses.append(loss)

    def _on_alert(self, event: dict[str, Any]) -> None:
        rule = event.get("rule")
        if type(rule) is not str:
            return
        self.open_alerts.pop(rule, None)  # re-inserted: the newest last
        self.open_alerts[rule] = compact_alert(event)
        self.touched_rules.add(rule)

    def merge_cached_alerts(self) -> None:
        """Alerts that fired before the tail and were still open at the run's end, from
        its state.json (when that stands for this log); the tail's own events win."""
        self.cache_pending = False
        cached = cached_open_alerts(self.run_dir, self.size)
        merged = {rule: a for rule, a in cached.items() if rule not in self.touched_rules}
        merged.update(self.open_alerts)
        self.open_alerts = merged

    # -- liveness and the summary ------------------------------------------------------------

    def check_liveness(self, now_monotonic: float) -> bool:
        """Check the worker's pid (a run without an `end`), at most once a second; a pid
        found gone stays gone until the log grows again. Whether the verdict changed."""
        if self.end is not None or self.start is None:
            return False
        if self.liveness == "gone" or now_monotonic - self.liveness_checked < LIVENESS_INTERVAL_S:
            return False
        self.liveness_checked = now_monotonic
        before, self.liveness = self.liveness, worker_liveness(self.start).verdict
        return self.liveness != before

    def forget_liveness(self) -> None:
        """The log grew: a pid found gone is checked again (a resumed or reused run)."""
        if self.liveness == "gone":
            self.liveness = None
            self.liveness_checked = -math.inf

    def summary(self, now: float) -> RunSummary:
        start = self.start or {}
        name = start.get("name")
        started = _time(start.get("time"))
        ended = _time(self.end.get("time")) if self.end is not None else None
        status = self._status(now)
        if ended is not None:
            duration = ended - started if started is not None else None
        elif status == DIED:
            last = self.last_time
            duration = last - started if started is not None and last is not None else None
        else:
            duration = now - started if started is not None else None
        alerts = list(self.open_alerts.values())
        # An ended run holds no GPU any more: what it held at its last sample is history.
        gpus, gpu_mem = _gpu_use(self.system) if status not in ENDED_STATUSES else ([], None)
        distributed = as_dict(start.get("distributed"))
        pid = start.get("pid")
        host = start.get("host")
        framework = start.get("framework")
        return RunSummary(
            run_dir=self.run_dir,
            name=name if type(name) is str and name else self.run_dir.name,
            status=status,
            step=self.step,
            total_steps=as_step(start.get("total_steps")),
            loss=self.loss,
            loss_trend=_trend(self.losses),
            alert=worst_alert(alerts),
            alerts_open=len(alerts),
            gpus=gpus,
            gpu_mem=gpu_mem,
            started=started,
            ended=ended,
            duration=duration if duration is None or duration >= 0 else 0.0,
            pid=pid if type(pid) is int else None,
            host=host if type(host) is str else None,
            framework=framework if type(framework) is str else None,
            world_size=as_step(distributed.get("world_size")) or None,
            updated=self.last_time,
            skipped=self.skipped,
        )

    def _status(self, now: float) -> str:
        if self.end is not None:
            status = self.end.get("status")
            return status if status in END_STATUSES else UNKNOWN
        if self.liveness == "gone":
            return DIED
        if self.start is None and now - self.mtime > STARTING_GRACE_S:
            return UNKNOWN  # a log that never got its start event: no worker to check
        return self.phase

    def sort_key(self) -> float:
        """Newest start first; a run whose log has no start yet, by its log's mtime."""
        started = _time((self.start or {}).get("time"))
        return started if started is not None else self.mtime


def _time(value: Any) -> float | None:
    number = as_number(value)
    return number if math.isfinite(number) else None


def _trend(losses: deque[float]) -> float | None:
    """Relative change of the mean loss, older half → newer half; None with too few."""
    if len(losses) < MIN_TREND_STEPS:
        return None
    values = list(losses)
    half = len(values) // 2
    older = sum(values[:half]) / half
    newer = sum(values[half:]) / (len(values) - half)
    if older == 0 or not math.isfinite(older) or not math.isfinite(newer):
        return None
    return (newer - older) / abs(older)


def _gpu_use(system: dict[str, Any] | None) -> tuple[list[int], int | None]:
    """The GPUs a run's process held memory on at its latest system sample, and how much."""
    gpus: list[int] = []
    total = 0
    for gpu in as_list((system or {}).get("gpus")):
        gpu = as_dict(gpu)
        index = as_step(gpu.get("index"))
        used = gpu.get("process_mem")
        if index is not None and type(used) is int and used > 0:
            gpus.append(index)
            total += used
    return gpus, (total if gpus else None)
