"""Change the learning rate of a running job without breaking its schedule.

Scaling by f scales every LR-like quantity the optimizer and scheduler keep (the group's
`lr`, `initial_lr`, `max_lr`, `min_lr`, the scheduler's `base_lrs`, `eta_min`, `max_lrs`…),
so a cosine or one-cycle schedule continues at exactly f× its curve and ReduceLROnPlateau
continues from the new value. Setting an LR is scaling by new/current.

A change is planned first and applied only if every value it writes is finite and the LRs
it leads to stay within the run's limits: `set-lr 5e-324` would otherwise scale the
schedule by 5e-323 (and the next change by ~1e322, making `eta_min` 0·inf = NaN for
good), and repeated `scale-lr 1000` would walk past any limit `set-lr` has. A refused
change writes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import torch

# Per-group keys that schedulers (LRScheduler, OneCycleLR, CyclicLR) keep in param groups.
LR_GROUP_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
# Scheduler attributes holding one LR per param group.
_LIST_ATTRS = ("base_lrs", "_last_lr", "max_lrs")
# Scheduler attributes holding one LR shared by all groups.
_SHARED_ATTRS = ("eta_min",)
# Values the LR will reach again (a one-cycle rises to max_lr): none of them may be raised
# beyond the maximum either. Floors (`min_lr`, `eta_min`) may legitimately sit below the
# minimum.
_PEAK_NAMES = frozenset({"lr", "_last_lr", "max_lr", "max_lrs"})
# The base LRs are a peak only for schedules that go back to them (a warm restart, a
# cycle); after a StepLR has decayed 100x, `set-lr` scales its base 100x too, a value the
# schedule never returns to, and refusing that would refuse a healthy command.
_RESTARTING = ("CosineAnnealingWarmRestarts", "CyclicLR")
_BASE_NAMES = frozenset({"initial_lr", "base_lrs"})

# An LR below this is float noise, not a choice; above the maximum, a typo (3e4 for 3e-4).
DEFAULT_MIN_LR = 1e-12
DEFAULT_MAX_LR = 100.0


class LrRefused(ValueError):
    """An LR change that would leave an LR out of bounds, a value non-finite, or that names
    a param group the optimizer lacks. Nothing was changed; the text says why."""


@dataclass(frozen=True)
class LrLimits:
    """The range every LR a command leads to must stay within."""

    minimum: float = DEFAULT_MIN_LR
    maximum: float = DEFAULT_MAX_LR

    @classmethod
    def of(cls, settings: Any) -> LrLimits:
        """The limits of a run's monitor settings (`lr_min`, `lr_max`), defaults where a
        setting is absent."""
        return cls(
            float(getattr(settings, "lr_min", DEFAULT_MIN_LR)),
            float(getattr(settings, "lr_max", DEFAULT_MAX_LR)),
        )


@dataclass
class _Write:
    """One value the change writes: `container[key] = value` (or setattr for objects)."""

    container: Any
    key: Any
    old: float
    new: float
    name: str  # what the value is, for a refusal: "lr", "base_lrs", "eta_min"…
    group: int | None  # its param group, None for one shared by all
    peak: bool = False  # a value the LR reaches again: held to the maximum too


@dataclass
class LrChange:
    """A planned LR change, checked and not yet applied: `apply()` makes it in one go."""

    optimizer: torch.optim.Optimizer
    groups: list[int]
    writes: list[_Write] = field(default_factory=list)

    def apply(self) -> tuple[list[float], list[float]]:
        """Write every planned value; (old, new) LRs of all groups."""
        old = current_lrs(self.optimizer)
        for write in self.writes:
            if isinstance(write.container, dict):
                _assign(write.container, write.key, write.new)
            elif isinstance(write.container, list):
                write.container[write.key] = write.new
            else:
                setattr(write.container, write.key, write.new)
        return old, current_lrs(self.optimizer)


def current_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [_as_float(group["lr"]) for group in optimizer.param_groups]


def plan_scale_lr(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    factor: float,
    group: int | None = None,
    limits: LrLimits = LrLimits(),
) -> LrChange:
    """The change `scale_lr` would make, checked; raises LrRefused and changes nothing."""
    change = _scaled(optimizer, scheduler, factor, _group_indices(optimizer, group))
    _check(_mark_peaks(change, scheduler), limits)
    return change


def _scaled(
    optimizer: torch.optim.Optimizer, scheduler: Any, factor: float, groups: list[int]
) -> LrChange:
    """Every LR-like value of `groups` and their schedule times `factor`, unchecked."""
    if not math.isfinite(factor) or factor <= 0:
        raise LrRefused(f"the scale factor must be finite and > 0, got {show_lr(factor)}")
    change = LrChange(optimizer, groups)
    for index in groups:
        param_group = optimizer.param_groups[index]
        for key in LR_GROUP_KEYS:
            if key in param_group and param_group[key] is not None:
                old = _as_float(param_group[key])
                change.writes.append(_Write(param_group, key, old, old * factor, key, index))
    for sched in _schedulers(scheduler):
        for attr in _LIST_ATTRS:
            values = getattr(sched, attr, None)
            if isinstance(values, list):
                for index in groups:
                    if index < len(values) and _is_number(values[index]):
                        old = float(values[index])
                        change.writes.append(_Write(values, index, old, old * factor, attr, index))
        if len(groups) == len(optimizer.param_groups):
            for attr in _SHARED_ATTRS:
                value = getattr(sched, attr, None)
                if _is_number(value):
                    change.writes.append(
                        _Write(sched, attr, float(value), float(value) * factor, attr, None)
                    )
    return change


def plan_set_lr(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    value: float,
    group: int | None = None,
    limits: LrLimits = LrLimits(),
) -> LrChange:
    """The change `set_lr` would make, checked; raises LrRefused and changes nothing."""
    groups = _group_indices(optimizer, group)
    reference = current_lrs(optimizer)[groups[0]]
    # The target itself first, so the reason names the value that was asked for.
    _check_value(value, reference, "lr", group, limits)
    if reference > 0:
        change = _scaled(optimizer, scheduler, value / reference, groups)
        for write in change.writes:
            if write.name == "lr" and write.group == groups[0]:
                write.new = value  # exactly what was asked, not reference * (value/reference)
        _check(_mark_peaks(change, scheduler), limits)
        return change
    # Nothing to scale from (an LR of exactly 0): set it and its schedule base outright.
    change = LrChange(optimizer, groups)
    for index in groups:
        param_group = optimizer.param_groups[index]
        for key in ("lr", "initial_lr"):
            if key in param_group and param_group[key] is not None:
                old = _as_float(param_group[key])
                change.writes.append(_Write(param_group, key, old, value, key, index))
        for sched in _schedulers(scheduler):
            base = getattr(sched, "base_lrs", None)
            if isinstance(base, list) and index < len(base) and _is_number(base[index]):
                change.writes.append(
                    _Write(base, index, float(base[index]), value, "base_lrs", index)
                )
    _check(_mark_peaks(change, scheduler), limits)
    return change


def scale_lr(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    factor: float,
    group: int | None = None,
    limits: LrLimits = LrLimits(),
) -> tuple[list[float], list[float]]:
    """Multiply the LR (of one group, or all) and the schedule by `factor`; (old, new) LRs.
    Raises LrRefused, changing nothing, if a resulting value is out of bounds."""
    return plan_scale_lr(optimizer, scheduler, factor, group, limits).apply()


def set_lr(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    value: float,
    group: int | None = None,
    limits: LrLimits = LrLimits(),
) -> tuple[list[float], list[float]]:
    """Make the LR `value` now (of `group`, or of group 0 with the others keeping their
    ratio to it) and let the schedule continue in its shape from there. Raises LrRefused,
    changing nothing, if a resulting value is out of bounds."""
    return plan_set_lr(optimizer, scheduler, value, group, limits).apply()


def show_lr(value: float) -> str:
    """A value as a person would type it: 5e-324, 1e+06, 0.1 (the shorter of the exact
    repr and 6 significant digits)."""
    exact, short = repr(value), f"{value:.6g}"
    return exact if len(exact) <= len(short) else short


def _check(change: LrChange, limits: LrLimits) -> None:
    several = len(change.optimizer.param_groups) > 1
    for write in change.writes:
        if not math.isfinite(write.new):
            raise LrRefused(
                f"the schedule's {_describe(write, several)} would become {write.new!r}"
            )
        group = write.group if several else None
        _check_value(write.new, write.old, write.name, group, limits, peak=write.peak)


def _mark_peaks(change: LrChange, scheduler: Any) -> LrChange:
    """Flag the writes the LR will reach again (see _PEAK_NAMES and _RESTARTING)."""
    restarting = any(type(s).__name__ in _RESTARTING for s in _schedulers(scheduler))
    for write in change.writes:
        write.peak = write.name in _PEAK_NAMES or (restarting and write.name in _BASE_NAMES)
    return change


def _check_value(
    new: float, old: float, name: str, group: int | None, limits: LrLimits, *, peak: bool = True
) -> None:
    """Refuse a value that leaves the limits; one already outside may move back toward them
    (and an LR of exactly 0, scaled, stays 0)."""
    where = f" of group {group}" if group is not None else ""
    if not math.isfinite(new):
        raise LrRefused(f"resulting {name} {new!r}{where} is not finite")
    if name == "lr" and new < limits.minimum and new != old and (old == 0 or new < old):
        raise LrRefused(
            f"resulting lr {show_lr(new)}{where} is below the minimum {show_lr(limits.minimum)}"
        )
    if peak and new > limits.maximum and new > old:
        what = "lr" if name == "lr" else f"schedule's {name}"
        raise LrRefused(
            f"resulting {what}{where} {show_lr(new)} is above the maximum {show_lr(limits.maximum)}"
        )


def _describe(write: _Write, several: bool) -> str:
    return (
        f"{write.name} of group {write.group}"
        if several and write.group is not None
        else write.name
    )


def _group_indices(optimizer: torch.optim.Optimizer, group: int | None) -> list[int]:
    count = len(optimizer.param_groups)
    if group is None:
        return list(range(count))
    if not 0 <= group < count:
        raise LrRefused(f"param group {group} does not exist: {_valid_groups(count)}")
    return [group]


def _valid_groups(count: int) -> str:
    if count == 1:
        return "the optimizer has 1 param group, group 0"
    if count <= 10:
        return f"the optimizer has {count} param groups: {', '.join(map(str, range(count)))}"
    return f"the optimizer has {count} param groups: 0 to {count - 1}"


def _assign(param_group: dict[str, Any], key: str, value: float) -> None:
    current = param_group[key]
    if isinstance(current, torch.Tensor):
        current.fill_(value)  # tensor LRs (capturable/fused optimizers) must stay tensors
    else:
        param_group[key] = value


def _schedulers(scheduler: Any) -> list[Any]:
    """The scheduler and, for SequentialLR / ChainedScheduler, everything inside it; a
    list or tuple (a framework's several schedulers on one optimizer) is each of them."""
    if scheduler is None:
        return []
    if isinstance(scheduler, list | tuple):
        return [found for one in scheduler for found in _schedulers(one)]
    found = [scheduler]
    for child in getattr(scheduler, "_schedulers", []) or []:
        found += _schedulers(child)
    return found


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_float(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)
