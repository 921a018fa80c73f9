"""The scalar events of a log, one pass in order: what every export writes.

A step event and a `metrics` event become a `ScalarEvent` (its step, epoch, time and flat
`name -> float` scalars, named by `run/scalars.py`); nothing else of the log is an export's.
A log is read once from its start, never held: memory does not grow with it. Damaged lines
are skipped and counted by the LogReader. A log holds one rank's events; should other ranks'
appear in it, they are not the run's curves and are left out (`rank` picks which is kept).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuimon.run.events import METRICS, START, STEP
from tuimon.run.field_types import as_number
from tuimon.run.log_reader import LogReader, read_events
from tuimon.run.scalars import event_step, metric_scalars, step_scalars


@dataclass(slots=True)
class ScalarEvent:
    """A step's or a metric's scalars at one step (a metric logged without a step is at
    the newest step before it, as every view draws it)."""

    is_step: bool
    step: int
    epoch: int | float | None
    time: float | None  # Unix seconds, as the event log stamped it
    scalars: dict[str, float]


class ScalarStream:
    """The `ScalarEvent`s of the log at `path`, up to byte `end` (a live log grows: a second
    pass stops where the first did). `rank`: whose events are kept; None keeps the log's own
    writer's (the rank on its first event that carries one; events without a rank are every
    log's own). After a pass: `t0` (the start's time, else the first event's), `reader`
    (`skipped`, `damage_note()`), `offset` (bytes read so far, for a progress bar),
    `other_ranks` (events left out)."""

    def __init__(self, path: Path, *, rank: int | None = None, end: int | None = None) -> None:
        self.path = path
        self.rank = rank
        self.end = end
        self.t0: float | None = None
        self.other_ranks = 0  # events of another rank, left out
        self.reader: LogReader = read_events(path)
        self._step = 0  # the newest step seen: where a metric without one goes

    @property
    def offset(self) -> int:
        return self.reader.end_offset

    def __iter__(self) -> Iterator[ScalarEvent]:
        reader, end = self.reader, self.end
        for event in reader:
            if end is not None and reader.end_offset > end:
                return  # written after the first pass looked
            kind = event.get("type")
            rank = event.get("rank")
            if type(rank) is int:
                if self.rank is None:
                    self.rank = rank
                elif rank != self.rank:
                    self.other_ranks += 1
                    continue
            when = _time(event.get("time"))
            if self.t0 is None and when is not None:
                self.t0 = when
            if kind == STEP:
                step = event_step(event)
                if step is None:
                    continue  # a step event without a usable step is damage
                self._step = step
                yield ScalarEvent(True, step, _epoch(event.get("epoch")), when, step_scalars(event))
            elif kind == METRICS:
                scalars = metric_scalars(event)
                if scalars:
                    step = event_step(event)
                    yield ScalarEvent(
                        False,
                        self._step if step is None else step,
                        _epoch(event.get("epoch")),
                        when,
                        scalars,
                    )
            elif kind == START and when is not None:
                self.t0 = when  # elapsed time counts from the start, as every view's does


def _time(value: object) -> float | None:
    number = as_number(value)
    return number if math.isfinite(number) else None


def _epoch(value: object) -> int | float | None:
    if type(value) is int:
        return value
    if type(value) is float and math.isfinite(value):
        return value
    return None
