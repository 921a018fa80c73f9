"""What differs between runs' configs: the rows of compare's side-by-side config diff.

A run's config is its start event's `config` (the YAML a config run was started with). A
script's Monitor has no config, but its start event still says what it trained with
(model class and size, optimizer and its LRs, scheduler, precision, the Monitor's
settings...), so those facts stand in for it. Each
config is flattened to dotted keys ("optimizer.lr"); a key is a difference when any two
runs disagree on it, a run without it included. Pure: no Textual, no torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ABSENT = "—"  # a key this run's config does not have
MAX_KEYS = 4096  # keys kept per run: a bound a hostile log cannot pass
MAX_DEPTH = 16
# Start-event fields that describe how a run trains, for a run started without a config.
START_FACTS = (
    "model",
    "optimizer",
    "scheduler",
    "loss",
    "precision",
    "framework",
    "total_steps",
    "epochs",
    "steps_per_epoch",
    "grad_clip",
    "data",
    "device",
    "settings",
)


@dataclass(frozen=True)
class DiffRow:
    """One key: its value in each run, as text (`ABSENT` where a run does not have it)."""

    key: str
    values: tuple[str, ...]
    differs: bool


def run_config(start: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config a run's start event records, or, without one, its start facts."""
    if not start:
        return {}
    config = start.get("config")
    if isinstance(config, Mapping) and config:
        return dict(config)
    return {name: start[name] for name in START_FACTS if name in start}


def flatten(config: Mapping[str, Any]) -> dict[str, Any]:
    """Nested mappings as dotted keys: {"optimizer": {"lr": 0.1}} -> {"optimizer.lr": 0.1}.
    Lists and scalars are values; an empty mapping is a value too ({})."""
    flat: dict[str, Any] = {}
    stack: list[tuple[str, Mapping[str, Any], int]] = [("", config, 0)]
    while stack and len(flat) < MAX_KEYS:
        prefix, mapping, depth = stack.pop()
        for name, value in mapping.items():
            key = f"{prefix}{name}"
            if isinstance(value, Mapping) and value and depth < MAX_DEPTH:
                stack.append((f"{key}.", value, depth + 1))
            elif len(flat) < MAX_KEYS:
                flat[key] = value
    return flat


def value_text(value: Any) -> str:
    """A config value as the diff shows it: strings bare, null as "null", numbers as
    Python writes them, lists and mappings as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int | float):
        return repr(value)
    try:
        return json.dumps(value, separators=(", ", ": "), default=str)
    except (TypeError, ValueError):
        return str(value)


def config_diff(
    configs: Sequence[tuple[str, Mapping[str, Any]]], *, every_key: bool = False
) -> list[DiffRow]:
    """The keys whose values differ between any two of the (name, config) pairs, sorted by
    key; with `every_key`, every key any of them has (`differs` tells which)."""
    flats = [flatten(config) for _, config in configs]
    keys = sorted(set().union(*flats)) if flats else []
    rows: list[DiffRow] = []
    for key in keys:
        values = tuple(value_text(flat[key]) if key in flat else ABSENT for flat in flats)
        present = [key in flat for flat in flats]
        differs = len(set(values)) > 1 or len(set(present)) > 1
        if differs or every_key:
            rows.append(DiffRow(key, values, differs))
    return rows
