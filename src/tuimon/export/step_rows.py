"""One row per step, a step's scalars and the metrics logged at it joined, in bounded memory.

A metric logged at step N belongs on step N's row, but the log need not put it next to that
step's event: a framework may log a metric before the step's event reaches the log, an
evaluation may land a few batches later. Rows therefore wait in a window: a row is written
once the newest step is `window` steps past it (or more than `max_pending` rows wait),
lowest step first, so every late metric within the window still joins its row. A metric at
a step that has no step event (logged before the first step) gets a row of its own. When the
steps go back (a `recover` restored an earlier snapshot), the rows of the abandoned stretch
are written first and the steps that follow make new rows: the CSV keeps what the log says,
in the order it happened.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from tuimon.export.scalar_stream import ScalarEvent

WINDOW_STEPS = 1024  # how far behind the newest step a row still takes late metrics
MAX_PENDING = 4096  # rows waiting at most (a log whose steps jump around)


@dataclass(slots=True)
class StepRow:
    step: int
    epoch: int | float | None = None
    time: float | None = None
    has_step: bool = False  # a step event filled it (not only metrics)
    values: dict[str, float] = field(default_factory=dict)

    def merge(self, event: ScalarEvent, scalars: dict[str, float]) -> None:
        if event.is_step:
            self.has_step = True
            self.epoch = event.epoch if event.epoch is not None else self.epoch
            self.time = event.time if event.time is not None else self.time
        else:  # a metric's epoch and time only where no step says them
            if self.epoch is None:
                self.epoch = event.epoch
            if self.time is None:
                self.time = event.time
        self.values.update(scalars)


class StepRows:
    """Feed `add` the events in log order; it returns the rows that are done, and `finish`
    the rest, each in step order."""

    def __init__(self, window: int = WINDOW_STEPS, max_pending: int = MAX_PENDING) -> None:
        self.window = window
        self.max_pending = max_pending
        self._pending: dict[int, StepRow] = {}
        self._order: list[int] = []  # a heap of the pending steps
        self._newest = -1  # the newest step a step event had

    def add(self, event: ScalarEvent, scalars: dict[str, float]) -> list[StepRow]:
        done: list[StepRow] = []
        step = event.step
        if event.is_step:
            if step <= self._newest:
                # The same step again or an earlier one: the run went back. What waits
                # belongs to the stretch it left.
                done = self.finish()
            self._newest = step
        row = self._pending.get(step)
        if row is None:
            row = self._pending[step] = StepRow(step)
            heapq.heappush(self._order, step)
        row.merge(event, scalars)
        limit = self._newest - self.window
        order = self._order
        while order and (order[0] < limit or len(order) > self.max_pending):
            done.append(self._pending.pop(heapq.heappop(order)))
        return done

    def finish(self) -> list[StepRow]:
        """Every row still waiting, lowest step first."""
        rows = [self._pending[step] for step in sorted(self._order)]
        self._pending.clear()
        self._order.clear()
        return rows
