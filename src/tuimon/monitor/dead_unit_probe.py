"""Dead units seen from the gradients of the layers that feed them, for any activation.

Most scripts apply ReLU as a function (`F.relu`), which no module hook sees. But a unit
that is dead for a whole batch passes back no gradient, so the row of its Linear layer's
weight gradient (a Conv's output-channel slice) is exactly zero, and so is its bias
gradient. On probe steps, just before `optimizer.step()` where gradients are final, this
counts per layer the share of such units, on the device, no sync:

- a unit counts only when its row was zero on `PERSIST` probes in a row and over at least
  `MIN_ROWS` samples (rows of the layer's input): with a batch of one, or dropout, a healthy
  unit is silent for many batches, a dead one for all of them;
- a layer whose whole weight gradient is zero but whose bias gradient is not has a dead
  *input*, not dead units (the layer before it is the one to name); without a bias that
  cannot be told apart, so such a layer reports nothing;
- the layer that runs last (the logits) has no activation after it, and is never judged;
  frozen layers, layers outside the optimizer and layers that did not run report nothing;
  embeddings (rows unused by a batch are zero by design) are not looked at.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tuimon.monitor.param_layout import ParamLayout
from tuimon.monitor.probe_schedule import probe_due

EARLY = (1, 2, 3, 10, 20)  # units can be dead from initialization
PERSIST = 3  # probes in a row a unit's gradient must be zero to count (rules: PERSIST_LOOKS)
MIN_ROWS = 64  # ... and samples (positions, for a Conv) seen by those probes together

FEEDING = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # weight [out, ...]: a row per unit
Feeding = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d


class DeadUnitProbe:
    def __init__(
        self,
        model: nn.Module,
        layout: ParamLayout,
        optimizer: torch.optim.Optimizer,
        every: int,
    ) -> None:
        self.every = every
        trained = {id(p) for p in layout.params}
        self.layers: list[tuple[str, Feeding]] = [
            (name, module)
            for name, module in model.named_modules()
            if isinstance(module, FEEDING) and id(module.weight) in trained
        ]
        # Per layer and unit: probes, and rows, since its gradient was last non-zero.
        self._streaks: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self._ran: list[int] = []  # indices of the layers that ran in the armed step, in order
        self._rows = [0] * len(self.layers)  # rows each layer saw in the armed step
        self._forward_handles: list[Any] = []
        self._pending: torch.Tensor | None = None
        self._handles = [optimizer.register_step_pre_hook(self._before_step)] if every else []
        self.arm(1)  # Monitor.step() arms each next step; the first one is armed here

    def remove(self) -> None:
        self._disarm()
        for handle in self._handles:
            handle.remove()

    def arm(self, next_step: int) -> None:
        """Watch the next step if it is a probe step: forward hooks note which layers run
        in training mode, and in what order, until its optimizer step."""
        self._disarm()
        if not self._handles or not self.layers or not probe_due(next_step, self.every, EARLY):
            return
        for index, (_, module) in enumerate(self.layers):
            self._forward_handles.append(module.register_forward_hook(self._noter(index)))

    def take(self) -> torch.Tensor | None:
        """Per layer, the share of dead units (NaN: not judged) of the last probed step."""
        sample, self._pending = self._pending, None
        return sample

    def decode(self, row: list[float]) -> dict[str, float]:
        return {
            name: value
            for (name, _), value in zip(self.layers, row, strict=True)
            if value == value  # NaN: not judged on that step
        }

    def _noter(self, index: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if module.training and isinstance(output, torch.Tensor) and output.dim():
                self._ran.append(index)
                units = output.shape[-1] if isinstance(module, nn.Linear) else output.shape[1]
                self._rows[index] += output.numel() // max(units, 1)

        return hook

    def _disarm(self) -> None:
        for handle in self._forward_handles:
            handle.remove()
        self._forward_handles = []

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._forward_handles:
            return
        ran, self._ran = self._ran, []
        rows, self._rows = self._rows, [0] * len(self.layers)
        self._disarm()
        if not ran:
            return
        logits = ran[-1]  # the last layer to run feeds no activation
        judged = set(ran) - {logits}
        shares: list[torch.Tensor | None] = []
        for index, (_, module) in enumerate(self.layers):
            grad = module.weight.grad
            if index not in judged or grad is None or grad.is_sparse or not grad.numel():
                shares.append(None)
                continue
            shares.append(self._measure(index, module, grad, rows[index]))
        found = [s for s in shares if s is not None]
        if not found:
            return
        device = found[0].device
        nan = torch.full((), float("nan"), device=device)
        self._pending = torch.stack([s.to(device) if s is not None else nan for s in shares])

    def _measure(
        self, index: int, module: Feeding, grad: torch.Tensor, samples: int
    ) -> torch.Tensor:
        """The share of units of this layer dead for long enough; keeps their streaks."""
        with torch.no_grad():
            # Whether each row has a non-zero (or NaN) entry: |g|'s row maximum is one
            # reduction, where ne(0).any() first writes a mask of the whole gradient.
            rows = grad.detach().reshape(grad.shape[0], -1).abs().amax(dim=1).ne(0)
            bias = getattr(module, "bias", None)
            live = rows
            if isinstance(bias, torch.Tensor) and bias.grad is not None:
                live = rows | bias.grad.detach().ne(0)
            kept = self._streaks[index]
            if kept is None or kept[0].shape != live.shape or kept[0].device != live.device:
                zeros = torch.zeros(live.shape, dtype=torch.int64, device=live.device)
                kept = (zeros, zeros)
            probes = torch.where(live, 0, kept[0] + 1)
            seen = torch.where(live, 0, kept[1] + samples)
            self._streaks[index] = (probes, seen)
            share = ((probes >= PERSIST) & (seen >= MIN_ROWS)).float().mean()
            if live is rows:  # no bias: an all-zero gradient may be a dead input instead
                share = torch.where(rows.any(), share, torch.full_like(share, float("nan")))
            return share
