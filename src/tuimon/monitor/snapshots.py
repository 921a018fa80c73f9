"""In-memory copies of the model and optimizer, so a blown-up run can go back.

Taken every few steps on the device (a copy, no sync); a snapshot counts as good once its
step's loss and gradient norm have come back finite. Kept only when autofix or
`monitor.snapshot_every` asks for it: each one costs a model and optimizer's memory.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from tuimon.monitor.lr_control import LR_GROUP_KEYS
from tuimon.monitor.probe_schedule import probe_due

KEPT = 3


@dataclass
class Snapshot:
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    good: bool = False


class SnapshotRing:
    def __init__(self, every: int) -> None:
        self.every = every
        self._ring: deque[Snapshot] = deque(maxlen=KEPT)

    def maybe_take(
        self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        # Step 1 too: a run that blows up at once can still go back to (almost) its start.
        if not probe_due(step, self.every, early=(1,)):
            return
        with torch.no_grad():
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._ring.append(Snapshot(step, state, copy.deepcopy(optimizer.state_dict())))

    def verify(self, step: int, loss: float | None, grad_norm: float | None) -> None:
        """Mark the snapshot of `step` good once its values are known to be finite."""
        for snapshot in self._ring:
            if snapshot.step == step:
                snapshot.good = (loss is None or math.isfinite(loss)) and (
                    grad_norm is None or math.isfinite(grad_norm)
                )

    def newest_good(self, before_step: int | None) -> Snapshot | None:
        """The newest good snapshot at or before `before_step` (or any good one)."""
        candidates = [
            s for s in self._ring if s.good and (before_step is None or s.step <= before_step)
        ]
        if not candidates:
            candidates = [s for s in self._ring if s.good]
        return candidates[-1] if candidates else None

    def restore(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        before_step: int | None,
        exact_step: int | None = None,
    ) -> int | None:
        """Load the newest good snapshot at or before `before_step`; its step, or None.

        `exact_step`: that snapshot, as another rank chose it (every replica of a DDP job
        must go back to the same step, whatever its own losses said).
        The optimizer's state (momentum, Adam moments) comes back too, but not its LRs:
        those are the schedule's, and the caller scales them next.
        """
        if exact_step is not None:
            snapshot = next((s for s in self._ring if s.step == exact_step), None)
        else:
            snapshot = self.newest_good(before_step)
        if snapshot is None:
            return None
        lrs = [{k: g[k] for k in LR_GROUP_KEYS if k in g} for g in optimizer.param_groups]
        model.load_state_dict(snapshot.model)
        optimizer.load_state_dict(copy.deepcopy(snapshot.optimizer))
        for group, saved in zip(optimizer.param_groups, lrs, strict=True):
            group.update(saved)
        return snapshot.step
