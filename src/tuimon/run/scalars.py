"""Every scalar an event carries, under one name each: what the metrics screen lists, what
compare overlays and what `tuimon export` writes as columns.

A step event's numbers (loss, lr, grad_norm, step_time, samples_per_s, loss_scale, and
whatever else an adapter or a script added) and a `metrics` event's (`mon.log()`, a
framework's logged values) become flat `name -> float` maps. Per-layer dicts become
`field/layer` names, further LR groups `lr/1`, `lr/2`. A metric that shares a step field's
name (a script logging `loss` itself) is kept apart as `metrics/<name>`, so neither hides
the other. Pure: no torch, no Textual.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from tuimon.run.events import RESERVED_METRIC_KEYS, StepEvent

# The fields a step event may carry by contract: a metric named like one is prefixed.
STEP_FIELDS: Final = frozenset(StepEvent.__required_keys__ | StepEvent.__optional_keys__)
METRIC_PREFIX: Final = "metrics/"
LR: Final = "lr"
# Not scalars of the run: the log's own keys, and the list of LRs (read as lr, lr/1, …).
_NOT_SCALARS: Final = RESERVED_METRIC_KEYS | {"lrs"}
MAX_NAME = 100  # longer keys are not shown as columns (a damaged or hostile log)
MAX_PER_DICT = 256  # entries of one dict-valued field (per-layer norms) made into scalars
MAX_LR_GROUPS = 64


def event_step(event: Mapping[str, Any]) -> int | None:
    """The event's step, when it has a usable one."""
    step = event.get("step")
    if type(step) is int and step >= 0:
        return step
    if type(step) is float and step.is_integer() and step >= 0:
        return int(step)
    return None


def step_scalars(event: Mapping[str, Any]) -> dict[str, float]:
    """Every numeric scalar of a step event, flat (see the module's docstring)."""
    scalars: dict[str, float] = {}
    for key, value in event.items():
        if key in _NOT_SCALARS or type(key) is not str or len(key) > MAX_NAME:
            continue
        number = _number(value)
        if number is not None:
            scalars[key] = number
        elif type(value) is dict:
            for inner, item in list(value.items())[:MAX_PER_DICT]:
                inner_number = _number(item)
                if inner_number is not None and type(inner) is str and len(inner) <= MAX_NAME:
                    scalars[f"{key}/{inner}"] = inner_number
    lrs = event.get("lrs")
    if type(lrs) is list and len(lrs) > 1:
        first = _number(lrs[0])
        if first is not None:
            scalars.setdefault(LR, first)
        for group, lr in enumerate(lrs[1:MAX_LR_GROUPS], start=1):
            number = _number(lr)
            if number is not None:
                scalars[f"{LR}/{group}"] = number
    return scalars


def metric_scalars(event: Mapping[str, Any]) -> dict[str, float]:
    """A `metrics` event's scalars, named as logged (`metrics/<name>` where a step field
    has that name)."""
    scalars: dict[str, float] = {}
    for key, value in event.items():
        if key in RESERVED_METRIC_KEYS or type(key) is not str or len(key) > MAX_NAME:
            continue
        number = _number(value)
        if number is not None:
            scalars[metric_name(key)] = number
    return scalars


def metric_name(key: str) -> str:
    """The name a logged metric is shown under."""
    return METRIC_PREFIX + key if key in STEP_FIELDS or key.startswith(METRIC_PREFIX) else key


def _number(value: Any) -> float | None:
    """A JSON number as a float (NaN and ±Inf kept: they are what the run logged); bools,
    strings and ints too large for a float are not scalars."""
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value) if abs(value) < 2**1023 else None
    return None
