"""Catch a missing `optimizer.zero_grad()`: gradients that survive an optimizer step.

Every `every` steps, after `optimizer.step()`, the gradient of one small parameter (the
optimizer's last, usually the output bias) is remembered. When the next backward reaches
that parameter, a hook looks at what its `.grad` still holds: None or zeros means it was
cleared; exactly the values the step used means nobody zeroed it, and new gradients are
about to pile on. Intentional accumulation over micro-batches is not flagged: those
gradients were never used by an optimizer step. The answer stays on the device.
"""

from __future__ import annotations

from typing import Any

import torch

from tuimon.monitor.param_layout import ParamLayout
from tuimon.monitor.probe_schedule import probe_due

EARLY = (1, 2, 5)  # a missing zero_grad is there from the first step


class StaleGradProbe:
    def __init__(self, layout: ParamLayout, optimizer: torch.optim.Optimizer, every: int) -> None:
        self.every = every
        self._steps = 0
        self._used: torch.Tensor | None = None
        self._result: torch.Tensor | None = None
        self._handles: list[Any] = []
        trainable = [p for p in layout.params if p.requires_grad]
        self.param = trainable[-1] if trainable and every else None
        self.param_name = (
            layout.param_names.get(id(self.param), "a parameter") if self.param is not None else ""
        )
        if self.param is not None:
            self._handles = [
                optimizer.register_step_post_hook(self._after_step),
                self.param.register_hook(self._on_grad),
            ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def take(self) -> torch.Tensor | None:
        """1.0 if the last checked backward found stale gradients, 0.0 if clean."""
        result, self._result = self._result, None
        return result

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._steps += 1
        grad = self.param.grad if self.param is not None else None
        if grad is not None and probe_due(self._steps, self.every, EARLY):
            self._used = grad.detach().clone()

    def _on_grad(self, grad: torch.Tensor) -> None:
        if self._used is None or self.param is None:
            return
        old = self.param.grad
        with torch.no_grad():
            if old is None:
                self._result = torch.zeros(1, device=grad.device)
            else:
                same = (old == self._used).all() & (self._used != 0).any()
                self._result = same.float().reshape(1)
        self._used = None
