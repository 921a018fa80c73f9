"""What a run's loss function is, for the start event's `loss` (the doctor reads it).

The name and the settings that change what a loss value means (label smoothing sets a
floor, reduction its scale), from an `nn.Module` loss, a function such as
`F.cross_entropy`, or a `functools.partial` of one.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

# Attributes of torch's loss modules worth recording (plain numbers, strings, booleans).
LOSS_SETTINGS = (
    "reduction",
    "label_smoothing",
    "ignore_index",
    "beta",
    "delta",
    "margin",
    "log_input",
    "log_target",
    "full",
    "eps",
    "blank",
    "zero_infinity",
)


def describe_loss(loss_fn: Any) -> dict[str, Any]:
    """`{"name": "CrossEntropyLoss", "label_smoothing": 0.1, "reduction": "mean", ...}`."""
    settings: dict[str, Any] = {}
    if isinstance(loss_fn, functools.partial):
        settings = {k: v for k, v in loss_fn.keywords.items() if _plain(v)}
        loss_fn = loss_fn.func
    if isinstance(loss_fn, torch.nn.Module):
        name = type(loss_fn).__name__
        for attr in LOSS_SETTINGS:
            value = getattr(loss_fn, attr, None)
            if _plain(value):
                settings.setdefault(attr, value)
        if getattr(loss_fn, "pos_weight", None) is not None:
            settings.setdefault("pos_weight", True)
        if getattr(loss_fn, "weight", None) is not None:
            settings.setdefault("weight", True)
    else:
        name = getattr(loss_fn, "__name__", None) or type(loss_fn).__name__
    return {"name": name, **settings}


def _plain(value: Any) -> bool:
    return isinstance(value, bool | int | float | str)
