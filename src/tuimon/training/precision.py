"""`train.precision`: how the built-in trainer computes a step (32, bf16 or fp16).

32 wraps nothing. bf16 runs the forward and the loss under `torch.autocast` to bfloat16,
which has float32's range, so no loss scaling is needed. fp16 autocasts to float16 and
adds a `torch.amp.GradScaler`: the loss is scaled before backward so small gradients
survive float16's range, the gradients are unscaled before the optimizer's pre-hook
(tuimon's gradient probe) measures and clips them, and a step whose gradients hold
inf/NaN is skipped and the scale lowered. The Monitor is handed the scaler and records
its scale on every step (`loss_scale`); a skipped step has `optimizer_steps: 0`.

fp16 on the CPU is allowed (torch has a CPU GradScaler and float16 CPU autocast): it lets
the scaler path be tried and tested on a machine without a GPU, and the start event's
notes say it is for that; bf16 is the CPU's mixed precision.
"""

from __future__ import annotations

import contextlib
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from tuimon.config.schema import BF16, FP16, FULL_PRECISION, FaultsConfig
from tuimon.errors import UsageError
from tuimon.training import faults

AUTOCAST_DTYPES = {BF16: torch.bfloat16, FP16: torch.float16}


@dataclass(frozen=True)
class MixedPrecision:
    """A run's precision: the autocast dtype (None for 32) and fp16's GradScaler."""

    setting: int | str
    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    notes: tuple[str, ...] = ()

    def autocast(self) -> AbstractContextManager[Any]:
        """Where the forward and the loss run: under autocast, or as they are (32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of the (micro-batch's) loss, scaled first under fp16."""
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, bugs: FaultsConfig) -> None:
        """The optimizer step. Under fp16: unscale the gradients (so the gradient probe
        measures and clips true values, also for a fused optimizer), step unless they
        hold inf/NaN, update the scale. The fault zoo's skipped step skips it all."""
        if self.scaler is None:
            faults.optimizer_step(optimizer, bugs)
            return
        if bugs.skip_optimizer_step:
            return
        self.scaler.unscale_(optimizer)
        self.scaler.step(optimizer)
        self.scaler.update()


def mixed_precision(setting: int | str, device: torch.device) -> MixedPrecision:
    """The precision `train.precision` asks for on `device`; UsageError naming the key
    when this torch cannot autocast to its dtype there."""
    dtype = AUTOCAST_DTYPES.get(str(setting))
    if setting == FULL_PRECISION or dtype is None:
        return MixedPrecision(FULL_PRECISION, device.type, None, None)
    _check_autocast(setting, device, dtype)
    notes = [_what_it_does(setting, device)]
    scaler = None
    if setting == FP16:
        scaler = torch.amp.GradScaler(device.type)
        if device.type == "cpu":
            notes.append(
                "train.precision fp16 on the CPU is for testing the loss-scaling path: "
                "float16 is slower than 32 there; the CPU's mixed precision is bf16"
            )
    elif device.type == "cuda" and not _native_bf16(device):
        notes.append(
            f"train.precision bf16: {torch.cuda.get_device_name(device)} has no native "
            "bfloat16 (compute capability below 8.0): it is emulated and slow; fp16 "
            "(with its loss scaling) is this GPU's mixed precision"
        )
    return MixedPrecision(setting, device.type, dtype, scaler, tuple(notes))


def _what_it_does(setting: int | str, device: torch.device) -> str:
    name = str(AUTOCAST_DTYPES[str(setting)]).removeprefix("torch.")
    scaling = (
        "a GradScaler scales the loss (loss_scale on every step; a step with inf/NaN "
        "gradients is skipped)"
        if setting == FP16
        else "no loss scaling"
    )
    autocast = f"torch.autocast({device.type}, {name})"
    return f"precision {setting}: forward and loss under {autocast}; {scaling}"


def _check_autocast(setting: int | str, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse what torch would silently run in float32: autocast on a device and dtype it
    does not support only warns, and disables itself."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        with torch.autocast(device.type, dtype=dtype):
            enabled = torch.is_autocast_enabled(device.type)
    if not enabled:
        why = str(said[0].message).strip().splitlines()[0] if said else "autocast stays off"
        raise UsageError(
            f"train.precision: {setting} needs autocast to {dtype} on {device.type}, which "
            f"torch {torch.__version__} does not support there ({why[:200]}); use "
            f"{FULL_PRECISION} or another precision"
        )


def _native_bf16(device: torch.device) -> bool:
    """Ampere (compute capability 8.0) and later compute in bfloat16 natively."""
    return torch.cuda.get_device_capability(device) >= (8, 0)
