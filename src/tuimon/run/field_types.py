"""A field of an event read as the type it must have, whatever a damaged log holds there.

A log line can be valid JSON and still hold `"step": "x"`, `"loss": [1]` or a 400-digit
int; every reader of events (the run state, the doctor) goes through these, so a wrong
type becomes "not a number" or "no step" instead of an exception far from the log.
"""

from __future__ import annotations

import math
from typing import Any

from tuimon.run.events import STEP

MAX_STEP = 2**53  # steps (and seqs) beyond this are damage, not a run
NAN = math.nan


def as_number(value: Any) -> float:
    """A field as a float: NaN for what is not a number (text, a bool, a list, null, an
    int too large for a float)."""
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            return NAN
    return NAN


def as_step(value: Any) -> int | None:
    """A step number (or a count): an integer in [0, MAX_STEP], else None (a float such
    as 1e308 is not a step: no writer puts one there)."""
    if type(value) is int and 0 <= value <= MAX_STEP:
        return value
    return None


def as_dict(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else {}


def as_list(value: Any) -> list[Any]:
    return value if type(value) is list else []


# Fields that must be numbers where they appear (NaN and the infinities included: they
# are what the doctor looks for), and those that must be objects or lists.
NUMBER_FIELDS = frozenset(
    {
        "time",
        "lr",
        "grad_norm",
        "grad_norm_unclipped",
        "update_ratio",
        "step_time",
        "data_time",
        "samples",
        "samples_per_s",
        "optimizer_steps",
        "epoch",
        "elapsed",
        "val_loss",
    }
)
STEP_FIELDS = frozenset({"step", "seq", "total_steps", "steps_per_epoch", "epochs", "start_step"})
DICT_FIELDS = frozenset(
    {
        "config",
        "data",
        "optimizer",
        "model",
        "settings",
        "host",
        "inputs",
        "outputs",
        "targets",
        "layers",
        "layer_grad_norms",
        "layer_update_ratios",
        "action",
        "evidence",
    }
)
LIST_FIELDS = frozenset({"lrs", "gpus", "notes", "skipped_names"})


def _types(loss: tuple[type, ...]) -> dict[str, tuple[type, ...]]:
    types: dict[str, tuple[type, ...]] = {key: (float, int) for key in NUMBER_FIELDS}
    types.update({key: (int,) for key in STEP_FIELDS})
    types.update({key: (dict,) for key in DICT_FIELDS})
    types.update({key: (list,) for key in LIST_FIELDS})
    types["loss"] = loss
    return types


# The types a field of a known name may have: a step's loss is a number; a start's or a
# probe's `loss`, an object.
_STEP_TYPES = _types((float, int))
_OTHER_TYPES = _types((dict,))


def typed_event(event: Any) -> dict[str, Any] | None:
    """The event with every field of a known name that has the wrong type left out (a
    copy, made only when one does), or None when it is no event: not an object, or a
    `type` that is not text. A `step` event needs a valid step."""
    if type(event) is not dict:
        return None
    kind = event.get("type")
    if type(kind) is not str:
        return None
    types = _STEP_TYPES if kind == STEP else _OTHER_TYPES
    wrong = []
    for key, value in event.items():
        allowed = types.get(key)
        if allowed is None:
            continue
        kind_of_value = type(value)
        if kind_of_value not in allowed or (kind_of_value is int and not _int_ok(key, value)):
            wrong.append(key)
    if wrong:
        event = {key: value for key, value in event.items() if key not in wrong}
    if kind == STEP and "step" not in event:
        return None
    return event


def _int_ok(key: str, value: int) -> bool:
    """A step within range; a number a float can hold."""
    if key in STEP_FIELDS:
        return 0 <= value <= MAX_STEP
    return math.isfinite(as_number(value))
