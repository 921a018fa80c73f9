"""Gradient norms measured where they are final: just before `optimizer.step()`.

An optimizer step pre-hook takes every gradient's norm with one fused kernel
(`torch._foreach_norm`), sums them into per-layer and global norms on the device, and
optionally clips (also fused) — so clipping works the same for the built-in trainer and for
any loop that uses Monitor. Nothing here reads a value back to the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

NOT_IN_MODEL = "(not in model)"


@dataclass
class GradSample:
    """One optimizer step: [global norm, per-layer norms…] on the device, and the LRs used."""

    norms: torch.Tensor | None
    lrs: list[float]


class GradientProbe:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.layer_names: list[str] = []
        self._param_layer: dict[int, int] = {}
        layer_index: dict[str, int] = {}
        for name, param in model.named_parameters():
            layer = name.rsplit(".", 1)[0] if "." in name else name
            if layer not in layer_index:
                layer_index[layer] = len(self.layer_names)
                self.layer_names.append(layer)
            self._param_layer[id(param)] = layer_index[layer]
        self.clip: float | None = None
        self._optimizer = optimizer
        self._index_cache: tuple[tuple[int, ...], torch.Tensor] | None = None
        self._pending: GradSample | None = None
        self._handle = optimizer.register_step_pre_hook(self._before_step)

    def remove(self) -> None:
        self._handle.remove()

    def take(self) -> GradSample | None:
        """The sample of the optimizer step since the last call, if there was one."""
        sample, self._pending = self._pending, None
        return sample

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        lrs = [_lr(group["lr"]) for group in optimizer.param_groups]
        params = [
            p
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None and not p.grad.is_sparse
        ]
        if not params:
            self._pending = GradSample(norms=None, lrs=lrs)
            return
        grads = [p.grad for p in params]
        device = grads[0].device
        per_param = _per_param_norms(grads, device)
        squares = per_param.square()
        total = squares.sum().sqrt()
        index = self._layer_index(params, device)
        layers = torch.zeros(len(self.layer_names), device=device, dtype=torch.float32)
        layers.index_add_(0, index, squares)
        if self.clip is not None:
            coef = (self.clip / (total + 1e-6)).clamp(max=1.0)
            _scale_(grads, coef)
        self._pending = GradSample(norms=torch.cat([total.view(1), layers.sqrt()]), lrs=lrs)

    def _layer_index(self, params: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        key = tuple(id(p) for p in params)
        if self._index_cache is None or self._index_cache[0] != key:
            indices = []
            for p in params:
                if id(p) not in self._param_layer:
                    # The optimizer holds a tensor the model does not: give it its own row.
                    if NOT_IN_MODEL not in self.layer_names:
                        self.layer_names.append(NOT_IN_MODEL)
                    self._param_layer[id(p)] = self.layer_names.index(NOT_IN_MODEL)
                indices.append(self._param_layer[id(p)])
            self._index_cache = (key, torch.tensor(indices, device=device))
        return self._index_cache[1]


def _per_param_norms(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Norm of every gradient as one float32 vector on `device`, via fused kernels."""
    if all(g.device == device for g in grads):
        return torch.stack(torch._foreach_norm(grads)).float()
    # Model-parallel: fuse per device, then gather the (tiny) norms on one device.
    norms: list[torch.Tensor] = [torch.empty(0)] * len(grads)
    for dev in dict.fromkeys(g.device for g in grads):
        positions = [i for i, g in enumerate(grads) if g.device == dev]
        for i, norm in zip(
            positions, torch._foreach_norm([grads[i] for i in positions]), strict=True
        ):
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
