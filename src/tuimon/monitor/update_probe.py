"""Update-to-weight ratio ‖Δw‖/‖w‖, the classic sign of an LR far off (~1e-3 is healthy).

Every `every` optimizer steps a pre-hook copies the parameters (one fused kernel) and the
post-hook measures the norms of the change and of the weights, per parameter, on the
device. The copy lives only across that one `optimizer.step()`.
"""

from __future__ import annotations

from typing import Any

import torch

from tuimon.monitor.grad_probe import Tensors, per_param_norms
from tuimon.monitor.param_layout import ParamLayout
from tuimon.monitor.probe_schedule import probe_due

EARLY = (1, 2, 3, 5, 10, 20)


class UpdateProbe:
    def __init__(self, layout: ParamLayout, optimizer: torch.optim.Optimizer, every: int) -> None:
        self.layout = layout
        self.every = every
        self._steps = 0
        self._before: Tensors | None = None
        self._pending: torch.Tensor | None = None
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def due(self, step: int) -> bool:
        """Every `every` steps, and a few times at the start, where a far too high LR does
        its damage before the first regular probe."""
        return probe_due(step, self.every, EARLY)

    def take(self) -> torch.Tensor | None:
        """[‖Δw‖ per parameter…, ‖w‖ per parameter…] of the last probed step, if any."""
        sample, self._pending = self._pending, None
        return sample

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._steps += 1
        if self.due(self._steps) and self.layout.params:
            with torch.no_grad():
                self._before = torch._foreach_mul([p.detach() for p in self.layout.params], 1.0)

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._before is None:
            return
        with torch.no_grad():
            params = [p.detach() for p in self.layout.params]
            device = params[0].device
            deltas = torch._foreach_sub(params, self._before)
            self._pending = torch.cat(
                [per_param_norms(deltas, device), per_param_norms(params, device)]
            )
        self._before = None

    def reduce(self, row: list[float]) -> tuple[float, dict[str, float]]:
        """(global ratio, {layer: ratio}) from one probed row."""
        half = len(row) // 2
        [(delta, delta_layers), (weight, weight_layers)] = self.layout.reduce(
            [row[:half], row[half:]]
        )
        ratios = {
            layer: delta_layers[layer] / weight_layers[layer]
            for layer in delta_layers
            if weight_layers.get(layer)
        }
        return (delta / weight if weight else float("nan")), ratios
