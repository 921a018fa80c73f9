"""The fault zoo's deliberate bugs, each applied where a real one would be.

They exist so that every rule of the training doctor can be shown to catch the mistake it
is meant for, on a real training run (configs/faults/). All are off by default.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
from torch import nn

from tuimon.config.schema import FaultsConfig

Batch = TypeVar("Batch")


def apply_init_faults(model: nn.Module, faults: FaultsConfig) -> None:
    """Bad initialization: scaled weights, biases set to one value."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                if faults.weight_scale != 1.0:
                    module.weight.mul_(faults.weight_scale)
                if faults.bias_init is not None and module.bias is not None:
                    module.bias.fill_(faults.bias_init)


def optimizer_params(model: nn.Module, faults: FaultsConfig) -> Iterable[nn.Parameter]:
    """All parameters, or (the bug) only those of the last layer."""
    if faults.optimizer_params == "all":
        return model.parameters()
    last = [m for m in model.modules() if list(m.parameters(recurse=False))][-1]
    return last.parameters()


def corrupt_inputs(inputs: torch.Tensor, faults: FaultsConfig) -> torch.Tensor:
    """A NaN pixel in a share of the batches (a broken sample, a division by zero)."""
    if faults.nan_inputs and float(torch.rand(())) < faults.nan_inputs:
        inputs = inputs.clone()
        inputs.view(-1)[0] = float("nan")
    return inputs


def loss_inputs(outputs: torch.Tensor, faults: FaultsConfig) -> torch.Tensor:
    """What reaches the loss: the logits, or (the bug) their softmax."""
    return outputs.softmax(dim=1) if faults.softmax_before_loss else outputs


def corrupt_grads(model: nn.Module, step: int, faults: FaultsConfig) -> None:
    """A NaN in one gradient at one step (or every N steps), as a bad op's backward would
    leave on some batches."""
    every = faults.nan_grad_every
    if faults.nan_grad_at == step or (every and step % every == 0):
        for param in model.parameters():
            if param.grad is not None:
                param.grad.view(-1)[0] = float("nan")
                return


def optimizer_step(optimizer: torch.optim.Optimizer, faults: FaultsConfig) -> None:
    """`optimizer.step()`, or (the bug) nothing: what a GradScaler does when it finds
    inf/NaN gradients on every step (an fp16 overflow that is not transient)."""
    if not faults.skip_optimizer_step:
        optimizer.step()


def epoch_order(order: torch.Tensor, labels: torch.Tensor, faults: FaultsConfig) -> torch.Tensor:
    """The epoch's sample order, or (the bug) sorted by class."""
    if not faults.sort_by_label:
        return order
    classes = labels[order].reshape(len(order), -1)[:, 0]
    return order[torch.sort(classes, stable=True).indices]


def slow_storage(batches: Iterator[Batch], faults: FaultsConfig) -> Iterator[Batch]:
    """The batches, each (the bug) after a wait for storage: the loop blocks on I/O, as
    with a cold network filesystem and too few DataLoader workers."""
    for batch in batches:
        if faults.slow_storage_ms:
            time.sleep(faults.slow_storage_ms / 1000)
        yield batch
