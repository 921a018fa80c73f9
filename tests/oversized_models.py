"""A custom model too large for any machine: tuimon cannot size a custom callable before
running it, so its allocation failure must still end in a clear error naming the model."""

from __future__ import annotations

from torch import nn


def huge_linear(num_classes: int) -> nn.Module:
    """10^14 float32 weights: 400 TB, beyond any allocator."""
    return nn.Sequential(nn.Flatten(), nn.Linear(10**7, 10**7), nn.Linear(10**7, num_classes))


# What PyTorch says when a model does not fit on the GPU (recorded on an 80 GB card); this
# machine has none, so the device's refusal is replayed from `_apply`, which `.to()` uses.
CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
    "79.15 GiB of which 3.12 GiB is free."
)


class _TooBigForTheDevice(nn.Sequential):
    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        if getattr(self, "_built", False):
            raise RuntimeError(CUDA_OOM)
        return super()._apply(fn, recurse)


def device_oom(num_classes: int) -> nn.Module:
    """Fits in host memory, fails when moved to the device."""
    model = _TooBigForTheDevice(nn.Flatten(), nn.LazyLinear(num_classes))
    model._built = True
    return model
