"""Gradient norms measured where they are final: just before `optimizer.step()`.

An optimizer step pre-hook takes every gradient's norm with one fused kernel
(`torch._foreach_norm`) and keeps the vector of per-parameter norms on the device; nothing
here reads a value back to the CPU, and global and per-layer sums happen later on the host
(`ParamLayout.reduce`), so the hot path is two kernel launches. Optional clipping (also
fused) happens here too, so it works the same for the built-in trainer and for any loop.

Where `optimizer.step(closure)` itself runs the forward and backward (Lightning's
automatic optimization), the pre-hook fires before the gradients exist: the framework's
adapter then calls `measure()` where they are final (Lightning's
`on_before_optimizer_step`), and the pre-hook only counts steps and reads the LRs. A
measurement is kept only if the optimizer then stepped: a GradScaler that skipped the step
(inf/NaN gradients) leaves no gradient norm, as in the pre-hook case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tuimon.monitor.param_layout import ParamLayout


@dataclass
class GradSample:
    """One optimizer step: per-parameter gradient norms on the device, and the LRs used."""

    norms: torch.Tensor | None
    lrs: list[float]
    # A GradScaler stepping an optimizer that skips inf/NaN steps itself (a fused one:
    # `_step_supports_amp_scaling`) calls step() every time and hands it `found_inf`, a
    # device flag: then whether it stepped is known only when the values are fetched.
    found_inf: torch.Tensor | None = None


class GradientProbe:
    def __init__(self, layout: ParamLayout, optimizer: torch.optim.Optimizer) -> None:
        self.layout = layout
        self.clip: float | None = None
        self._pending: GradSample | None = None
        self._steps = 0  # optimizer.step() calls since take_step_count()
        self._external = False  # measure() is called where gradients are final
        self._measured: torch.Tensor | None = None  # measure()'s norms, not yet stepped on
        self._optimizer = optimizer
        self._index_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._handle = optimizer.register_step_pre_hook(self._before_step)

    def remove(self) -> None:
        self._handle.remove()

    def take(self) -> GradSample | None:
        """The sample of the optimizer step since the last call, if there was one."""
        sample, self._pending = self._pending, None
        self._measured = None  # measured for a step the optimizer skipped: not a sample
        return sample

    def measure(self) -> None:
        """Take the gradient norms now (they are final: after backward and any unscale),
        instead of in the optimizer's pre-hook. From the first call on, the pre-hook only
        counts steps; the norms become the step's sample when the optimizer steps."""
        self._external = True
        self._measured = self._norms()
        if self._pending is not None:  # the pre-hook ran first (a closure step): complete it
            self._pending = GradSample(norms=self._measured, lrs=self._pending.lrs)

    def take_step_count(self) -> int:
        """How many times the optimizer stepped since the last call: 0 when something (a
        GradScaler that found inf/NaN gradients) skipped `optimizer.step()`."""
        steps, self._steps = self._steps, 0
        return steps

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._steps += 1
        lrs = [_lr(group["lr"]) for group in optimizer.param_groups]
        found_inf = _found_inf(optimizer)
        if self._external:
            # measure() came first (a GradScaler's step), or comes inside this step (a
            # closure's backward) and completes the sample then.
            self._pending = GradSample(norms=self._measured, lrs=lrs, found_inf=found_inf)
            return
        self._pending = GradSample(
            norms=self._norms(_grad_scale(optimizer)), lrs=lrs, found_inf=found_inf
        )

    def _norms(self, grad_scale: torch.Tensor | None = None) -> torch.Tensor | None:
        """Every parameter's gradient norm as one device vector (clipping first if set).
        `grad_scale`: the loss scale the gradients still carry (a GradScaler stepping a
        fused optimizer without unscale_ first): divided out of the norms, and the clip
        applied at the same scale."""
        if self.layout.changed():
            self.layout.refresh()
        params = self.layout.params
        grads = [p.grad for p in params]
        if all(g is not None and not g.is_sparse for g in grads):  # the usual step
            norms = per_param_norms(grads, grads[0].device) if grads else None
        else:
            present = [i for i, g in enumerate(grads) if g is not None and not g.is_sparse]
            if not present:
                return None
            grads = [grads[i] for i in present]
            device = grads[0].device
            found = per_param_norms(grads, device)
            # Parameters without a gradient this step count as zero.
            row = torch.zeros(len(params), device=device, dtype=found.dtype)
            norms = row.index_copy_(0, self._index(tuple(present), device), found)
        if norms is None:
            return None
        if grad_scale is not None:
            norms = norms / grad_scale.to(norms.device)
        if self.clip is not None:
            total = norms.float().square().sum().sqrt()
            _scale_(grads, (self.clip / (total + 1e-6)).clamp(max=1.0))
        return norms

    def _index(self, present: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if present not in self._index_cache:
            self._index_cache = {present: torch.tensor(present, device=device)}
        return self._index_cache[present]


# What torch's fused `_foreach_*` kernels take and return.
Tensors = list[torch.Tensor] | tuple[torch.Tensor, ...]


def per_param_norms(tensors: Tensors, device: torch.device) -> torch.Tensor:
    """Norm of every tensor as one vector on `device`, via fused kernels."""
    if all(t.device == device for t in tensors):
        return torch.stack(torch._foreach_norm(tensors))
    # Model-parallel: fuse per device, then gather the (tiny) norms on one device.
    norms: list[torch.Tensor] = [torch.empty(0)] * len(tensors)
    for dev in dict.fromkeys(t.device for t in tensors):
        positions = [i for i, t in enumerate(tensors) if t.device == dev]
        found = torch._foreach_norm([tensors[i] for i in positions])
        for i, norm in zip(positions, found, strict=True):
            norms[i] = norm.float().to(device)
    return torch.stack(norms)


def _scale_(grads: list[torch.Tensor], coef: torch.Tensor) -> None:
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    for dev, group in by_device.items():
        torch._foreach_mul_(group, coef.to(dev))


def _found_inf(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """The inf/NaN flag a GradScaler gives an optimizer that skips such steps itself (a
    copy, on the device: reading it would sync), or None."""
    flag = getattr(optimizer, "found_inf", None)
    return flag.detach().float().reshape(1).clone() if isinstance(flag, torch.Tensor) else None


def _grad_scale(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """The scale such an optimizer's gradients still carry (None once unscale_ ran)."""
    scale = getattr(optimizer, "grad_scale", None)
    return scale.detach().float() if isinstance(scale, torch.Tensor) else None


def _lr(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)
