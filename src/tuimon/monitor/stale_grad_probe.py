"""Catch a missing `optimizer.zero_grad()`: gradients that survive into the next step.

Every `every` steps, after `optimizer.step()`, the gradient of one small parameter (the
optimizer's last, usually the output bias) is remembered. Each backward that reaches that
parameter before the next `optimizer.step()` looks at what its `.grad` still holds: exactly
the values the step used means nobody zeroed it ("stale seen"); None or zeros means it was
cleared ("reset seen"), which forgives any stale gradient seen before. The verdict is
committed at that next `optimizer.step()`: stale only if the old gradient is still in what
the step is about to use. So a GAN whose generator's backward passes through the
discriminator (leaving gradients in D that D zeroes before its own next step) is fine,
while a loop that never zeroes, or accumulates across optimizer steps, is caught.
Intentional accumulation over micro-batches is not flagged: those gradients were never
used by an optimizer step. The answer stays on the device.
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
        self._stale: torch.Tensor | None = None  # since the last step: 1.0 stale, 0.0 clean
        self._result: torch.Tensor | None = None
        self._handles: list[Any] = []
        trainable = [p for p in layout.params if p.requires_grad]
        self.param: torch.Tensor | None = trainable[-1] if trainable and every else None
        self.param_name = (
            layout.param_names.get(id(self.param), "a parameter") if self.param is not None else ""
        )
        # The gradient hook is there only while a checked step's gradient is remembered:
        # a backward that reaches a hooked parameter pays for the call on every step.
        self._grad_handle: Any = None
        if self.param is not None:
            self._handles = [
                optimizer.register_step_pre_hook(self._before_step),
                optimizer.register_step_post_hook(self._after_step),
            ]

    def remove(self) -> None:
        self._unhook_grad()
        for handle in self._handles:
            handle.remove()

    def take(self) -> torch.Tensor | None:
        """1.0 if the last checked optimizer step used stale gradients, 0.0 if clean."""
        result, self._result = self._result, None
        return result

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._used is not None and self._stale is not None:
            self._result = self._stale.reshape(1)
        self._used = self._stale = None
        self._unhook_grad()

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._steps += 1
        param = self.param
        grad = param.grad if param is not None else None
        if param is not None and grad is not None and probe_due(self._steps, self.every, EARLY):
            self._used = grad.detach().clone()
            if self._grad_handle is None:
                self._grad_handle = param.register_hook(self._on_grad)

    def _unhook_grad(self) -> None:
        if self._grad_handle is not None:
            self._grad_handle.remove()
            self._grad_handle = None

    def _on_grad(self, grad: torch.Tensor) -> None:
        if self._used is None or self.param is None:
            return
        old = self.param.grad
        with torch.no_grad():
            if old is None:
                self._stale = torch.zeros((), device=grad.device)  # reset seen
                return
            same = ((old == self._used).all() & (self._used != 0).any()).float()
            zeroed = (old == 0).all()
            before = self._stale if self._stale is not None else torch.zeros_like(same)
            self._stale = torch.where(zeroed, torch.zeros_like(same), torch.maximum(before, same))
