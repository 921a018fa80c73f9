"""The machine's GPUs, and which run uses which: the runs screen's GPU panel.

While a run on this host samples the system (its worker's sampler thread, every
`monitor.system_interval`), its newest `system` event says what every GPU of the machine
does; no second NVML reader is needed. With no live run, or none sampled lately, the
panel samples here through the same NA-safe NVML code (system/nvml.py): no driver means
no rows and the reason, never an error. Which run holds memory on a GPU comes from each
live run's own latest sample (`process_mem` > 0 for its pid).
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tuimon.catalog.run_summary import RunSummary
from tuimon.run.field_types import as_dict, as_list, as_number, as_step
from tuimon.system.nvml import NVML

FRESH_SYSTEM_S = 10.0  # a system event older than this is not the machine's present
NO_SAMPLE = "no GPU sample: no live run samples the system here, and no NVML to ask"


@dataclass
class MachineGpu:
    index: int
    name: str | None
    util: float | None  # percent
    mem_used: int | None  # bytes, by every process
    mem_total: int | None
    runs: list[str] = field(default_factory=list)  # run directory names holding memory on it


def machine_gpus(
    summaries: Sequence[RunSummary],
    system_event: dict[str, Any] | None,
    nvml: NVML | None,
    *,
    now: float | None = None,
) -> tuple[list[MachineGpu], str]:
    """Rows for the machine's GPUs, and why there are none ("" when there are some).

    `system_event`: the newest system event of a live run (RunCatalog.latest_system());
    used while fresh, else `nvml` is sampled (NA-safe), else a stale event is better than
    nothing."""
    now = time.time() if now is None else now
    event = as_dict(system_event)
    fresh = bool(event) and now - as_number(event.get("time")) <= FRESH_SYSTEM_S
    if fresh or (event and nvml is None):
        samples = as_list(event.get("gpus"))
        status = event.get("gpu_status")
        reason = status if type(status) is str and status else "the run's sample lists no GPU"
    elif nvml is not None:
        samples = list(nvml.sample())
        reason = nvml.reason or "NVML lists no GPU"
    else:
        samples, reason = [], NO_SAMPLE
    users = _users(summaries)
    rows = []
    for sample in samples:
        gpu = as_dict(sample)
        index = as_step(gpu.get("index"))
        if index is None:
            continue
        name = gpu.get("name")
        rows.append(
            MachineGpu(
                index=index,
                name=name if type(name) is str else None,
                util=_number(gpu.get("util")),
                mem_used=_count(gpu.get("mem_used")),
                mem_total=_count(gpu.get("mem_total")),
                runs=users.get(index, []),
            )
        )
    rows.sort(key=lambda row: row.index)
    return rows, ("" if rows else reason)


def _users(summaries: Sequence[RunSummary]) -> dict[int, list[str]]:
    """GPU index → the live runs of this host holding memory on it."""
    here = socket.gethostname()
    users: dict[int, list[str]] = {}
    for summary in summaries:
        if not summary.live or (summary.host is not None and summary.host != here):
            continue  # ended, or on another machine (its GPU 0 is not ours)
        for index in summary.gpus:
            users.setdefault(index, []).append(summary.run_dir.name)
    return users


def _number(value: Any) -> float | None:
    number = as_number(value)
    return number if math.isfinite(number) else None


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None
