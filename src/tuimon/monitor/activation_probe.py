"""Activation statistics from forward hooks on sampled steps: dead ReLUs, saturation.

Hooks sit on the model's activation modules (nn.ReLU, nn.Sigmoid, nn.Tanh…) only while
armed, for the one step to be probed (a module with a hook takes the slower call path, so
other steps do not pay for them), and an armed hook reduces its layer's output to one
number on the device: the share of units active in under 1% of samples (ReLU), or the
share of outputs at the flat ends (sigmoid, tanh). Activations applied as functions
(F.relu) are not seen.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tuimon.monitor.probe_schedule import probe_due

DEAD_BELOW = 0.01  # a unit active for fewer than 1% of samples counts as dead
EARLY = (1, 2, 3, 10, 20)

KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.ReLU, "dead"),
    (nn.ReLU6, "dead"),
    (nn.Sigmoid, "saturated"),
    (nn.Tanh, "saturated"),
)


class ActivationProbe:
    def __init__(self, model: nn.Module, every: int) -> None:
        self.every = every
        self.layers: list[tuple[str, str]] = []  # (module name, dead | saturated)
        self._values: list[torch.Tensor | None] = []
        self._modules: list[nn.Module] = []
        self._armed = False
        self._handles: list[Any] = []
        if not every:
            return
        for name, module in model.named_modules():
            kind = next((k for cls, k in KINDS if type(module) is cls), None)
            if kind is None:
                continue
            self.layers.append((name or type(module).__name__, kind))
            self._values.append(None)
            self._modules.append(module)

    def remove(self) -> None:
        self._disarm()

    def arm(self, next_step: int) -> None:
        """Measure the next training forward if `next_step` is a probe step: every `every`
        steps, and a few times at the start (units can be dead from initialization)."""
        self._armed = bool(self.layers) and probe_due(next_step, self.every, EARLY)
        if self._armed and not self._handles:
            self._handles = [
                module.register_forward_hook(self._hook(index, module))
                for index, module in enumerate(self._modules)
            ]

    def take(self) -> torch.Tensor | None:
        self._disarm()
        if not self._armed:  # nothing was measured: no hook ran since the last take()
            return None
        values, self._values = self._values, [None] * len(self.layers)
        self._armed = False
        found = [v for v in values if v is not None]
        if not found:
            return None
        device = found[0].device
        nan = torch.full((), float("nan"), device=device)
        return torch.stack([v.to(device) if v is not None else nan for v in values])

    def _disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def decode(self, row: list[float]) -> dict[str, dict[str, float]]:
        return {
            name: {kind: value}
            for (name, kind), value in zip(self.layers, row, strict=True)
            if value == value
        }  # skip NaN: the layer did not run on that step

    def _hook(self, index: int, module: nn.Module) -> Any:
        kind = self.layers[index][1]
        sigmoid = isinstance(module, nn.Sigmoid)

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            if not self._armed or not mod.training or self._values[index] is not None:
                return
            if not isinstance(output, torch.Tensor) or not output.numel():
                return
            y = output.detach()
            with torch.no_grad():
                if kind == "dead":
                    dims = [d for d in range(y.dim()) if d != 1] if y.dim() > 1 else [0]
                    active = (y > 0).float().mean(dim=dims)
                    value = (active < DEAD_BELOW).float().mean()
                elif sigmoid:
                    value = ((y < 0.01) | (y > 0.99)).float().mean()
                else:
                    value = (y.abs() > 0.99).float().mean()
                # NaN activations say nothing about dead units: report none (no sync).
                nan = torch.full((), float("nan"), device=y.device)
                # (y·0 is 0 exactly where y is finite: two kernels, `isfinite` takes four.)
                self._values[index] = torch.where((y * 0).eq(0).all(), value, nan)

        return hook
