"""Gradient norms measured where they are final: just before `optimizer.step()`.

An optimizer step pre-hook takes every gradient's norm with one fused kernel
(`torch._foreach_norm`) and keeps the vector of per-parameter norms on the device; nothing
here reads a value back to the CPU. Global and per-layer norms are summed from those
vectors later, on the host, a batch of steps at a time (`summarize`), so the hot path is
two kernel launches. Optional clipping (also fused) happens here too, so it works the same
for the built-in trainer and for any loop that uses Monitor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

NOT_IN_MODEL = "(not in model)"


@dataclass
class GradSample:
    """One optimizer step: per-parameter gradient norms on the device, and the LRs used."""

    norms: torch.Tensor | None
    lrs: list[float]


class GradientProbe:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._model = model
        self._optimizer = optimizer
        self.clip: float | None = None
        self._pending: GradSample | None = None
        self._index_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._map_params()
        self._handle = optimizer.register_step_pre_hook(self._before_step)

    def _map_params(self) -> None:
        """Give every parameter the optimizer holds a layer: its module's name."""
        layer_of: dict[int, str] = {}
        for name, param in self._model.named_parameters():
            layer_of[id(param)] = name.rsplit(".", 1)[0] if "." in name else name
        self.params = [p for group in self._optimizer.param_groups for p in group["params"]]
        self.layer_names: list[str] = []
        index: dict[str, int] = {}
        columns = []
        for param in self.params:
            layer = layer_of.get(id(param), NOT_IN_MODEL)
            if layer not in index:
                index[layer] = len(self.layer_names)
                self.layer_names.append(layer)
            columns.append(index[layer])
        # Row i of a step's norm vector belongs to layer columns[i]: summing squares through
        # this one-hot matrix gives every layer's norm.
        self._layer_matrix = torch.zeros(len(self.params), max(len(self.layer_names), 1))
        self._layer_matrix[
            torch.arange(len(self.params)), torch.tensor(columns, dtype=torch.long)
        ] = 1

    def remove(self) -> None:
        self._handle.remove()

    def take(self) -> GradSample | None:
        """The sample of the optimizer step since the last call, if there was one."""
        sample, self._pending = self._pending, None
        return sample

    def summarize(self, rows: list[list[float]]) -> list[tuple[float, dict[str, float]]]:
        """Global and per-layer norms from steps' per-parameter norms, all at once, on the
        host. Rows from before an add_param_group() get a global norm only."""
        width = len(self.params)
        if not rows or any(len(row) != width for row in rows):
            return [(math.sqrt(sum(v * v for v in row)), {}) for row in rows]
        squares = torch.tensor(rows, dtype=torch.float64).square()
        totals = squares.sum(dim=1).sqrt().tolist()
        layers = (squares @ self._layer_matrix.double()).sqrt().tolist()
        return [
            (total, dict(zip(self.layer_names, values, strict=True)))
            for total, values in zip(totals, layers, strict=True)
        ]

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        lrs = [_lr(group["lr"]) for group in optimizer.param_groups]
        if sum(len(group["params"]) for group in optimizer.param_groups) != len(self.params):
            self._map_params()  # add_param_group() was called
        present = [
            i for i, p in enumerate(self.params) if p.grad is not None and not p.grad.is_sparse
        ]
        if not present:
            self._pending = GradSample(norms=None, lrs=lrs)
            return
        grads = [self.params[i].grad for i in present]
        device = grads[0].device
        norms = _per_param_norms(grads, device)
        if len(present) < len(self.params):
            # Parameters without a gradient this step count as zero.
            row = torch.zeros(len(self.params), device=device, dtype=norms.dtype)
            norms = row.index_copy_(0, self._index(tuple(present), device), norms)
        if self.clip is not None:
            total = norms.float().square().sum().sqrt()
            _scale_(grads, (self.clip / (total + 1e-6)).clamp(max=1.0))
        self._pending = GradSample(norms=norms, lrs=lrs)

    def _index(self, present: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if present not in self._index_cache:
            self._index_cache = {present: torch.tensor(present, device=device)}
        return self._index_cache[present]


def _per_param_norms(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Norm of every gradient as one vector on `device`, via fused kernels."""
    if all(g.device == device for g in grads):
        return torch.stack(torch._foreach_norm(grads))
    # Model-parallel: fuse per device, then gather the (tiny) norms on one device.
    norms: list[torch.Tensor] = [torch.empty(0)] * len(grads)
    for dev in dict.fromkeys(g.device for g in grads):
        positions = [i for i, g in enumerate(grads) if g.device == dev]
        found = torch._foreach_norm([grads[i] for i in positions])
        for i, norm in zip(positions, found, strict=True):
            norms[i] = norm.float().to(device)
    return torch.stack(norms)


def _scale_(grads: list[torch.Tensor], coef: torch.Tensor) -> None:
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    for dev, group in by_device.items():
        torch._foreach_mul_(group, coef.to(dev))


def _lr(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)
