"""One run at a glance, as the runs screen and `tuimon ls` show it.

A summary is built from the start of a run's log and its tail (catalog/log_tail.py), so
each field is what the newest events say: the last step and loss, the trend of the recent
losses, the worst alert still open, the GPUs its process held at its last system sample.
Its status is the log's (run/events.py RUN_STATUSES), except that a run without an `end`
whose worker is gone is DIED, checked by pid (run/worker_liveness.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tuimon.run.events import (
    COMPLETED,
    ERROR,
    FAILED,
    INFO,
    PAUSED,
    RUN_STATUSES,
    RUNNING,
    SEVERITIES,
    STARTING,
    STOPPED,
    STOPPING,
    WARNING,
)
from tuimon.run.field_types import as_step

DIED: Final = "died"  # no `end` event, and the pid its `start` recorded is gone
UNKNOWN: Final = "unknown"  # the log says nothing usable about its status
CATALOG_STATUSES: Final[tuple[str, ...]] = (*RUN_STATUSES, DIED, UNKNOWN)
# Statuses of a run whose worker may still be running (not ended, not died).
LIVE_STATUSES: Final = frozenset({STARTING, RUNNING, PAUSED, STOPPING, UNKNOWN})
ENDED_STATUSES: Final = frozenset({COMPLETED, STOPPED, FAILED, DIED})
# Worst first: an error outranks a warning, a warning an info.
SEVERITY_RANK: Final = {ERROR: 2, WARNING: 1, INFO: 0}


@dataclass
class RunSummary:
    run_dir: Path
    name: str
    status: str  # one of CATALOG_STATUSES
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None  # the last step's loss (NaN stays NaN here; null in JSON)
    # Relative change of the mean loss from the older to the newer half of the recent steps
    # read (negative: falling); None with too few steps.
    loss_trend: float | None = None
    alert: dict[str, Any] | None = None  # the worst open alert: rule, severity, message, step
    alerts_open: int = 0
    gpus: list[int] = field(default_factory=list)  # GPU indices its process held memory on
    gpu_mem: int | None = None  # bytes it held on them, summed
    started: float | None = None  # unix time of the start event
    ended: float | None = None  # unix time of the end event
    duration: float | None = None  # ended - started, or now - started while alive
    pid: int | None = None
    host: str | None = None
    framework: str | None = None
    world_size: int | None = None  # a distributed job's number of ranks
    updated: float | None = None  # unix time of the newest event read
    skipped: int = 0  # damaged lines skipped in what was read

    @property
    def live(self) -> bool:
        """Whether its worker may still be running."""
        return self.status in LIVE_STATUSES

    def to_json(self) -> dict[str, Any]:
        """What `tuimon ls --json` prints for this run (docs/CONTRACTS.md): JSON-safe, with
        NaN and the infinities as null and the path as text."""
        return {
            "run_dir": str(self.run_dir),
            "name": self.name,
            "status": self.status,
            "step": self.step,
            "total_steps": self.total_steps,
            "loss": _finite(self.loss),
            "loss_trend": _finite(self.loss_trend),
            "alert": _json_safe(self.alert),
            "alerts_open": self.alerts_open,
            "gpus": list(self.gpus),
            "gpu_mem": self.gpu_mem,
            "started": _finite(self.started),
            "ended": _finite(self.ended),
            "duration": _finite(self.duration),
            "pid": self.pid,
            "host": self.host,
            "framework": self.framework,
            "world_size": self.world_size,
            "updated": _finite(self.updated),
            "skipped": self.skipped,
        }


def worst_alert(open_alerts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The open alert to show: the highest severity, and of those the newest (the last in
    `open_alerts`, which is in the order they fired)."""
    best: dict[str, Any] | None = None
    best_rank = -1
    for alert in open_alerts:
        rank = SEVERITY_RANK.get(alert.get("severity"), 0)  # type: ignore[arg-type]
        if rank >= best_rank:
            best, best_rank = alert, rank
    return best


def compact_alert(event: dict[str, Any]) -> dict[str, Any]:
    """What a summary keeps of an alert: rule, severity, message, step."""
    severity = event.get("severity")
    message = event.get("message")
    return {
        "rule": event.get("rule"),
        "severity": severity if severity in SEVERITIES else None,
        "message": message[:500] if type(message) is str else None,
        "step": as_step(event.get("step")),
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
