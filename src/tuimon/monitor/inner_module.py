"""The user's model behind its wrappers: torch.compile's and (Distributed)DataParallel's.

Names, hooks and checkpoints are those of the module the user wrote: no "_orig_mod." or
"module." prefixes, and a checkpoint loads into the bare model on any number of ranks.
"""

from __future__ import annotations

import torch


def inner_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module behind `torch.compile(model)` and DistributedDataParallel (in either
    order), or `model` itself: its names, hooks and checkpoints are the user's model's."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
            model = model.module
            continue
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner
