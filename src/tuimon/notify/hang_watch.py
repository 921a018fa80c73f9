"""The hang watch: a run that is running yet makes no step for `hang_after` seconds.

Pure (the clock is given): the notifier's thread asks it every fraction of `hang_after`.
A run stuck before its first step is a hang too (counted from the start). A pause is not:
the count starts over when the run runs again. One hang per episode: a new step re-arms it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuimon.run.events import RUNNING


@dataclass
class Hang:
    step: int
    idle: float  # seconds since the last step (or since the start, or a resume)


class HangWatch:
    def __init__(self, hang_after: float, step: int, now: float) -> None:
        self.hang_after = hang_after
        self._step = step
        self._since = now
        self._fired = False

    def check(self, step: int, status: str, now: float) -> Hang | None:
        """A hang that starts now, or None (none, or this episode's was already said)."""
        if step != self._step:  # a step: the run moves, and a later stall is a new hang
            self._step, self._since, self._fired = step, now, False
            return None
        if status != RUNNING:  # paused, stopping, ended: not a hang; count again after
            self._since = now
            return None
        idle = now - self._since
        if self._fired or idle < self.hang_after:
            return None
        self._fired = True
        return Hang(step, idle)
