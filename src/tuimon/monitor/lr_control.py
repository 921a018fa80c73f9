"""Change the learning rate of a running job without breaking its schedule.

Scaling by f scales every LR-like quantity the optimizer and scheduler keep (the group's
`lr`, `initial_lr`, `max_lr`, `min_lr`, the scheduler's `base_lrs`, `eta_min`, `max_lrs`…),
so a cosine or one-cycle schedule continues at exactly f× its curve and ReduceLROnPlateau
continues from the new value. Setting an LR is scaling by new/current.
"""

from __future__ import annotations

from typing import Any

import torch

# Per-group keys that schedulers (LRScheduler, OneCycleLR, CyclicLR) keep in param groups.
LR_GROUP_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
# Scheduler attributes holding one LR per param group.
_LIST_ATTRS = ("base_lrs", "_last_lr", "max_lrs")
# Scheduler attributes holding one LR shared by all groups.
_SHARED_ATTRS = ("eta_min",)


def current_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [_as_float(group["lr"]) for group in optimizer.param_groups]


def scale_lr(
    optimizer: torch.optim.Optimizer, scheduler: Any, factor: float, group: int | None = None
) -> tuple[list[float], list[float]]:
    """Multiply the LR (of one group, or all) and the schedule by `factor`; (old, new) LRs."""
    old = current_lrs(optimizer)
    groups = _group_indices(optimizer, group)
    for index in groups:
        _scale_group(optimizer.param_groups[index], factor)
    for sched in _schedulers(scheduler):
        for attr in _LIST_ATTRS:
            values = getattr(sched, attr, None)
            if isinstance(values, list):
                for index in groups:
                    if index < len(values) and isinstance(values[index], int | float):
                        values[index] = values[index] * factor
        if len(groups) == len(optimizer.param_groups):
            for attr in _SHARED_ATTRS:
                value = getattr(sched, attr, None)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    setattr(sched, attr, value * factor)
    return old, current_lrs(optimizer)


def set_lr(
    optimizer: torch.optim.Optimizer, scheduler: Any, value: float, group: int | None = None
) -> tuple[list[float], list[float]]:
    """Make the LR `value` now (of `group`, or of group 0 with the others keeping their
    ratio to it) and let the schedule continue in its shape from there."""
    groups = _group_indices(optimizer, group)
    reference = current_lrs(optimizer)[groups[0]]
    if reference > 0:
        return scale_lr(optimizer, scheduler, value / reference, group)
    # Nothing to scale from (an LR of exactly 0): set it and its schedule base outright.
    old = current_lrs(optimizer)
    for index in groups:
        pg = optimizer.param_groups[index]
        _assign(pg, "lr", value)
        if "initial_lr" in pg:
            pg["initial_lr"] = value
        for sched in _schedulers(scheduler):
            base = getattr(sched, "base_lrs", None)
            if isinstance(base, list) and index < len(base):
                base[index] = value
    return old, current_lrs(optimizer)


def _group_indices(optimizer: torch.optim.Optimizer, group: int | None) -> list[int]:
    count = len(optimizer.param_groups)
    if group is None:
        return list(range(count))
    if not 0 <= group < count:
        raise ValueError(f"param group {group} does not exist (the optimizer has {count})")
    return [group]


def _scale_group(param_group: dict[str, Any], factor: float) -> None:
    for key in LR_GROUP_KEYS:
        if key in param_group and param_group[key] is not None:
            _assign(param_group, key, _as_float(param_group[key]) * factor)


def _assign(param_group: dict[str, Any], key: str, value: float) -> None:
    current = param_group[key]
    if isinstance(current, torch.Tensor):
        current.fill_(value)  # tensor LRs (capturable/fused optimizers) must stay tensors
    else:
        param_group[key] = value


def _schedulers(scheduler: Any) -> list[Any]:
    """The scheduler and, for SequentialLR / ChainedScheduler, everything inside it."""
    if scheduler is None:
        return []
    found = [scheduler]
    for child in getattr(scheduler, "_schedulers", []) or []:
        found += _schedulers(child)
    return found


def _as_float(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)
