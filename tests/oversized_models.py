"""A custom model too large for any machine: tuimon cannot size a custom callable before
running it, so its allocation failure must still end in a clear error naming the model."""

from __future__ import annotations

from torch import nn


def huge_linear(num_classes: int) -> nn.Module:
    """10^14 float32 weights: 400 TB, beyond any allocator."""
    return nn.Sequential(nn.Flatten(), nn.Linear(10**7, 10**7), nn.Linear(10**7, num_classes))
