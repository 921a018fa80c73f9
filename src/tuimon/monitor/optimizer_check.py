"""At the start: does the optimizer hold exactly the model's trainable parameters?"""

from __future__ import annotations

import torch

from tuimon.run.events import OPTIMIZER_PROBE, PROBE, OptimizerProbeEvent


def optimizer_check(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> OptimizerProbeEvent:
    """A `probe` event: tensors the optimizer updates that the model lacks, and trainable
    parameters of the model the optimizer skips (they get gradients, never change)."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    in_model = {id(p) for p in named.values()}
    skipped = [name for name, p in named.items() if p.requires_grad and id(p) not in held]
    return {
        "type": PROBE,
        "probe": OPTIMIZER_PROBE,
        "not_in_model": sum(1 for pid in held if pid not in in_model),
        "trainable_not_in_optimizer": len(skipped),
        "skipped_names": skipped[:5],
    }
