"""Split each step's wall time into waiting for data and computing.

The first forward call after a step marks the end of the wait: whatever ran before it
(the DataLoader's `next()`, host-to-device copies) counts as data time. This works for any
loop, since it needs nothing but a forward pre-hook on the model.
"""

from __future__ import annotations

import time
from typing import Any

import torch


class StepTimer:
    def __init__(self, model: torch.nn.Module) -> None:
        self._last_end = time.perf_counter()
        self._last_call = self._last_end
        self._forward_at: float | None = None
        self._handle = model.register_forward_pre_hook(self._on_forward)

    def remove(self) -> None:
        self._handle.remove()

    def _on_forward(self, module: torch.nn.Module, args: Any) -> None:
        if self._forward_at is not None:
            return
        if module.training:
            self._forward_at = time.perf_counter()
        else:
            # Validation (eval mode) between steps: the time before it went elsewhere, and
            # the next step's wait for data starts after it.
            self._last_end = time.perf_counter()

    def batch_ready(self) -> None:
        """The batch is here (a framework's batch-start hook): what came before was the
        wait for data, whatever the training step then runs before its forward."""
        if self._forward_at is None:
            self._forward_at = time.perf_counter()

    def lap(self) -> tuple[float, float | None]:
        """(seconds since the previous step, of which waiting for data or None if unknown)."""
        now = time.perf_counter()
        step_time = now - self._last_call
        data_time = None
        if self._forward_at is not None:
            data_time = max(0.0, self._forward_at - self._last_end)
        self._last_call = now
        return step_time, data_time

    def restart(self) -> None:
        """Start the next step's clock now (after the monitor's own work, or a pause)."""
        self._last_end = time.perf_counter()
        self._forward_at = None

    def exclude_pause(self) -> None:
        """Forget time spent paused so it is not counted as the next step's time."""
        self._last_call = time.perf_counter()
        self.restart()
