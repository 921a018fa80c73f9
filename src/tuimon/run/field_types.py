"""A field of an event read as the type it must have, whatever a damaged log holds there.

A log line can be valid JSON and still hold `"step": "x"`, `"loss": [1]` or a 400-digit
int; every reader of events (the run state, the doctor) goes through these, so a wrong
type becomes "not a number" or "no step" instead of an exception far from the log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final, cast

from tuimon.run.events import RANKS, RUN_STATUSES, STEP, SYSTEM, RankSummary

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


def has_loss(event: Mapping[str, Any]) -> bool:
    """Whether a step event has a loss (NaN and inf included): a framework's step may
    have none, and "unknown" must not read as NaN."""
    loss = event.get("loss")
    return type(loss) is float or type(loss) is int


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
        "loss_scale",
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
# Counts: in [0, MAX_STEP]. `rank`: the process of a distributed job that wrote the event.
STEP_FIELDS = frozenset(
    {"step", "seq", "total_steps", "steps_per_epoch", "epochs", "start_step", "rank"}
)
DICT_FIELDS = frozenset(
    {
        "config",
        "data",
        "optimizer",
        "model",
        "settings",
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
    # `host`: a system sample's readings (an object); elsewhere the machine's name.
    if "host" in event and type(event["host"]) is not (dict if kind == SYSTEM else str):
        wrong.append("host")
    if wrong:
        event = {key: value for key, value in event.items() if key not in wrong}
    if kind == STEP and "step" not in event:
        return None
    if kind == RANKS:
        event = _typed_ranks_event(event)
    return event


def _typed_ranks_event(event: dict[str, Any]) -> dict[str, Any]:
    """A `ranks` event (a copy) with a world size that is a count and every summary
    checked (typed_rank_summary); a `ranks` that is not a list is left out."""
    event = dict(event)
    if "world_size" in event and not as_step(event["world_size"]):
        del event["world_size"]
    if "ranks" in event:
        if type(event["ranks"]) is list:
            event["ranks"] = typed_ranks(event["ranks"])
        else:
            del event["ranks"]
    return event


def _int_ok(key: str, value: int) -> bool:
    """A step within range; a number a float can hold."""
    if key in STEP_FIELDS:
        return 0 <= value <= MAX_STEP
    return math.isfinite(as_number(value))


# -- a distributed job's ranks (a `ranks` event's `ranks`, the start's `distributed.ranks`) --

MAX_RANKS: Final = 8192  # ranks read from one list: a world size of a few thousand, bounded
RANK_TEXT_LIMIT: Final = 200  # a host or device name
RANK_ERROR_LIMIT: Final = 4096  # a rank's error: its tail is kept
# A RankSummary's fields by the type they must have; a field of another type is left out.
_RANK_COUNTS: Final = ("rank", "local_rank", "node", "pid", "step", "memory", "nonfinite_step")
_RANK_SECONDS: Final = ("step_time", "data_time", "samples_per_s", "age", "step_age")
_RANK_TEXTS: Final = ("host", "device")
# Fields whose value may be null ("not measured"), kept as None.
_RANK_NULLABLE: Final = frozenset(
    {"step_time", "data_time", "samples_per_s", "memory", "nonfinite_step", "alive"}
)


def typed_rank_summary(value: Any) -> RankSummary | None:
    """One rank's summary with only the fields of the right type (a copy), or None when it
    is not an object or has no usable `rank`. Numbers must be finite, counts in range,
    texts are clipped, `status` must be a run status."""
    if type(value) is not dict:
        return None
    rank = value.get("rank")
    if as_step(rank) is None:
        return None
    summary: dict[str, Any] = {}
    for key in _RANK_COUNTS:
        if key in value:
            field = value[key]
            if as_step(field) is not None or (field is None and key in _RANK_NULLABLE):
                summary[key] = field
    for key in _RANK_SECONDS:
        if key in value:
            field = value[key]
            number = as_number(field)
            if (math.isfinite(number) and number >= 0) or (field is None and key in _RANK_NULLABLE):
                summary[key] = None if field is None else number
    for key in _RANK_TEXTS:
        field = value.get(key)
        if type(field) is str:
            summary[key] = field[:RANK_TEXT_LIMIT]
    if value.get("status") in RUN_STATUSES:
        summary["status"] = value["status"]
    alive = value.get("alive", 0)
    if alive is None or type(alive) is bool:
        summary["alive"] = alive
    error = value.get("error")
    if type(error) is str:
        summary["error"] = error[-RANK_ERROR_LIMIT:]
    return cast(RankSummary, summary)  # built field by field, each of its declared type


def typed_ranks(value: Any) -> list[RankSummary]:
    """A list of rank summaries, each checked (typed_rank_summary); what is not one is
    left out, and at most MAX_RANKS are read."""
    ranks: list[RankSummary] = []
    for item in as_list(value)[:MAX_RANKS]:
        summary = typed_rank_summary(item)
        if summary is not None:
            ranks.append(summary)
    return ranks
