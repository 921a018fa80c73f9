"""Pick the training device from `train.device`: auto | cpu | cuda | cuda:N."""

from __future__ import annotations

import torch

from tuimon.errors import UsageError


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"train.device is {name}, but no CUDA device is available "
                "(torch.cuda.is_available() is False); use auto or cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"train.device is {name}, but only "
                f"{torch.cuda.device_count()} CUDA device(s) are visible"
            )
    return device
