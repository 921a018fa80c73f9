"""Models that break on purpose, imported by worker processes as `faulty_models:...`."""

from __future__ import annotations

from torch import nn


class RaisesAtStep(nn.Module):
    """A small MLP whose n-th training forward raises, like a bug deep in user code."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, step: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size**2, 16),
            nn.ReLU(),
            nn.Linear(16, num_classes),
        )
        self.fail_at = step
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.fail_at:
                raise RuntimeError(f"boom at step {self.fail_at}")
        return self.net(x)


def raises_at(in_channels: int, image_size: int, num_classes: int, step: int = 5) -> nn.Module:
    return RaisesAtStep(in_channels, image_size, num_classes, step)
