"""Every scalar of one run over time, read from its log and followed as it grows.

The metrics screen and compare need series the live RunState does not keep (step_time,
samples_per_s, any step extra, every logged metric), for runs the UI is not connected to.
This reads `events.jsonl` once, then only the bytes written since (`LogReader.end_offset`),
so following a live run costs what it writes. Each scalar is a BucketSeries (bounded
however long the run); points wait in columns and are folded in bulk, as `load_run_state`
does. Pure: no torch, no Textual.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tuimon.run.events import END, METRICS, START, STEP
from tuimon.run.field_types import as_number
from tuimon.run.log_reader import read_events
from tuimon.run.run_dir import EVENTS_FILE
from tuimon.run.scalars import event_step, metric_scalars, step_scalars
from tuimon.run.step_columns import SeriesColumns
from tuimon.series.bucketed import BucketSeries

MAX_SERIES = 512  # scalars kept per run: a bound a damaged or hostile log cannot pass
FOLD_EVERY = 65536  # events read between folds into the series


class ScalarHistory:
    """The scalars of the run in `run_dir`; `update()` reads what is new."""

    def __init__(self, run_dir: str | Path, capacity: int = 2048) -> None:
        self.run_dir = Path(run_dir)
        self.log_path = self.run_dir / EVENTS_FILE
        self.capacity = capacity
        self.offset = 0  # the byte after the last whole line read
        self.start: dict[str, Any] | None = None
        self.end: dict[str, Any] | None = None
        self.skipped = 0  # damaged lines left out
        self._series: dict[str, BucketSeries] = {}
        self._pending: dict[str, SeriesColumns] = {}
        self._t0: float | None = None
        self._step = 0  # the newest step seen: where a metric without one is drawn
        self._epoch = 0.0

    def names(self) -> list[str]:
        """Every scalar seen, in the order each first appeared."""
        return list(self._series)

    def series(self, name: str) -> BucketSeries | None:
        return self._series.get(name)

    @property
    def status(self) -> str | None:
        """How the run ended (its `end` event's status), or None while it has not."""
        return None if self.end is None else str(self.end.get("status"))

    def update(self) -> bool:
        """Read the log's new whole lines; True when any scalar (or the start/end) came."""
        try:
            size = self.log_path.stat().st_size
        except OSError:
            return False
        if size < self.offset:  # replaced or truncated: read it again from the start
            self.__init__(self.run_dir, self.capacity)  # type: ignore[misc]
        if size == self.offset:
            return False
        reader = read_events(self.log_path, self.offset)
        changed = False
        for count, event in enumerate(reader, start=1):
            changed = self._apply(event) or changed
            if not count % FOLD_EVERY:
                self._fold()
        self._fold()
        self.offset = reader.end_offset
        self.skipped += reader.skipped
        return changed

    def _apply(self, event: dict[str, Any]) -> bool:
        kind = event.get("type")
        rank = event.get("rank")
        if type(rank) is int and rank != 0:
            return False  # another rank's own values: a job's curves are rank 0's
        if kind == STEP:
            scalars = step_scalars(event)
        elif kind == METRICS:
            scalars = metric_scalars(event)
        elif kind == START:
            self.start = event
            when = as_number(event.get("time"))
            self._t0 = when if math.isfinite(when) else self._t0
            return True
        elif kind == END:
            self.end = event
            return True
        else:
            return False
        step = event_step(event)
        if step is None:
            step = self._step
        elif kind == STEP:
            self._step = step
        epoch = as_number(event.get("epoch"))
        if math.isfinite(epoch):
            self._epoch = epoch
        elapsed = self._elapsed(event.get("time"))
        added = False
        for name, value in scalars.items():
            columns = self._pending.get(name)
            if columns is None:
                if name not in self._series and len(self._series) >= MAX_SERIES:
                    continue
                columns = self._pending[name] = SeriesColumns()
                if name not in self._series:
                    self._series[name] = BucketSeries(self.capacity)  # keeps first-seen order
            columns.add(float(step), elapsed, self._epoch, value)
            added = True
        return added

    def _elapsed(self, when: Any) -> float:
        when = as_number(when)
        if not math.isfinite(when):
            return 0.0
        if self._t0 is None:
            self._t0 = when  # a log without its start: time from its first event
        return max(0.0, when - self._t0)

    def _fold(self) -> None:
        for name, columns in self._pending.items():
            self._series[name] = columns.fold_into(self._series.get(name), self.capacity)
        self._pending.clear()
