"""Optimizers, LR schedules and losses built from their torch names and keyword arguments."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, TypeGuard

import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from tuimon.config import callables
from tuimon.config.schema import LossConfig, OptimizerConfig, SchedulerConfig


def build_optimizer(config: OptimizerConfig, params: Iterable[Any]) -> torch.optim.Optimizer:
    cls = callables.resolve_name("optimizer", config.name, callables.optimizer_names())
    return cls(params, lr=config.lr, **config.kwargs)


def build_scheduler(
    config: SchedulerConfig,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
) -> LRScheduler:
    """The scheduler, with `T_max`/`total_steps`/`max_lr` filled in from the run's length
    when omitted, wrapped in a linear warmup when `warmup_steps` is set."""
    cls = callables.resolve_name("scheduler", config.name, callables.scheduler_names())
    kwargs = dict(config.kwargs)
    per_step = config.interval == "step"
    intervals = total_steps if per_step else max(1, math.ceil(total_steps / steps_per_epoch))
    if config.name == "CosineAnnealingLR" and "T_max" not in kwargs:
        kwargs["T_max"] = max(1, intervals - config.warmup_steps)
    if config.name == "OneCycleLR":
        if not per_step:
            raise ValueError("OneCycleLR changes the LR every batch: set interval: step")
        kwargs.setdefault("max_lr", [group["lr"] for group in optimizer.param_groups])
        if not {"total_steps", "epochs", "steps_per_epoch"} & kwargs.keys():
            kwargs["total_steps"] = max(1, total_steps - config.warmup_steps)
    main: LRScheduler = cls(optimizer, **kwargs)
    if not config.warmup_steps:
        return main
    if cls is ReduceLROnPlateau:
        raise ValueError("warmup_steps cannot be combined with ReduceLROnPlateau")
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer,
        start_factor=config.warmup_start_factor,
        end_factor=1.0,
        total_iters=config.warmup_steps,
    )
    return torch.optim.lr_scheduler.SequentialLR(
        optimizer, schedulers=[warmup, main], milestones=[config.warmup_steps]
    )


def is_plateau(scheduler: object) -> TypeGuard[ReduceLROnPlateau]:
    """ReduceLROnPlateau steps on a metric (the validation loss), not on a count."""
    return isinstance(scheduler, ReduceLROnPlateau)


def build_loss(config: LossConfig) -> torch.nn.Module:
    cls = callables.resolve_name("loss", config.name, callables.loss_names())
    return cls(**config.kwargs)
