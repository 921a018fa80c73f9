"""What is known about a run, built from its events: the model behind every view of it.

The same class serves the worker (which keeps one up to date from its own event log, so a
client that attaches gets the whole run as one compact snapshot instead of replaying a
million events) and the UI (which starts from that snapshot and applies live events).
Everything here is bounded: long series are bucketed, lists are capped. No Textual, no torch.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from tuimon.run.event_log import RESERVED_METRIC_KEYS
from tuimon.run.log_reader import read_events
from tuimon.series.bucketed import BucketSeries
from tuimon.series.smoothing import DebiasedEMA

SNAPSHOT_VERSION = 1
MAX_ITEMS = 2000  # alerts, messages, controls, checkpoints kept
HISTORY = 120  # system samples kept for sparklines
WINDOW = 200  # recent steps for throughput, data-wait share and ETA

RUN_STATES = ("starting", "running", "paused", "stopping", "completed", "stopped", "failed")
# A `message` event with this field true: a Monitor(stop="flag") loop ran on past a stop,
# so the run is running again and takes commands (`stop_requested_at`: the stop's step).
STOP_IGNORED = "stop_ignored"


class RunState:
    def __init__(self, capacity: int = 2048, smoothing: float = 0.9) -> None:
        self.lock = threading.RLock()
        self.capacity = capacity
        self.smoothing = smoothing
        self.version = 0
        self.seq = 0
        self.last_time = 0.0  # of the newest event seen
        self.start: dict[str, Any] | None = None
        self.end: dict[str, Any] | None = None
        self.status = "starting"
        self.series: dict[str, BucketSeries] = {}
        self.controls: deque[dict[str, Any]] = deque(maxlen=MAX_ITEMS)
        self.alerts: deque[dict[str, Any]] = deque(maxlen=MAX_ITEMS)
        self.messages: deque[dict[str, Any]] = deque(maxlen=MAX_ITEMS)
        self.checkpoints: deque[dict[str, Any]] = deque(maxlen=MAX_ITEMS)
        # Events applied, by type: these keep counting when the deques above are full, so
        # a view can tell that something new arrived.
        self.counts: Counter[str] = Counter()
        self.last_step: dict[str, Any] | None = None
        self.stop_ignored_at: int | None = None  # the step of a stop the loop did not obey
        self.last_metrics: dict[str, Any] = {}
        self.layer_grad_norms: dict[str, float] = {}
        self.layer_update_ratios: dict[str, float] = {}
        self.system: dict[str, Any] | None = None
        self.cpu_history: deque[float] = deque(maxlen=HISTORY)
        self.gpu_history: dict[int, dict[str, deque[float]]] = {}
        self._recent: deque[tuple[float, float, float, float]] = deque(maxlen=WINDOW)
        self._ema = DebiasedEMA(smoothing)

    # -- building ------------------------------------------------------------------------

    def apply_many(self, events: list[dict[str, Any]]) -> None:
        with self.lock:
            for event in events:
                self._apply(event)
            if events:
                self.version += 1

    def apply(self, event: dict[str, Any]) -> None:
        self.apply_many([event])

    def _apply(self, event: dict[str, Any]) -> None:
        seq = event.get("seq")
        if isinstance(seq, int):
            if seq <= self.seq:
                return  # already in the snapshot this state started from
            self.seq = seq
        when = event.get("time")
        if isinstance(when, int | float):
            self.last_time = max(self.last_time, float(when))
        self.counts[str(event.get("type"))] += 1
        handler = getattr(self, f"_on_{event.get('type')}", None)
        if handler is not None:
            handler(event)

    def _on_start(self, event: dict[str, Any]) -> None:
        self.start = event
        self.status = "running"
        smoothing = (event.get("settings") or {}).get("smoothing")
        if isinstance(smoothing, int | float) and "loss" not in self.series:
            self.smoothing = float(smoothing)
            self._ema = DebiasedEMA(self.smoothing)

    def _on_step(self, event: dict[str, Any]) -> None:
        step = float(event.get("step", 0))
        elapsed = self.elapsed_at(event.get("time"))
        epoch = self._epoch_x(event)
        loss = _number(event.get("loss"))
        self._add("loss", step, elapsed, epoch, loss)
        smoothed = self._ema.update(loss)
        self._add("loss_ema", step, elapsed, epoch, math.nan if smoothed is None else smoothed)
        if "grad_norm" in event:
            self._add("grad_norm", step, elapsed, epoch, _number(event["grad_norm"]))
        if "update_ratio" in event:
            self._add("update_ratio", step, elapsed, epoch, _number(event["update_ratio"]))
        lrs = event.get("lrs") or [event.get("lr")]
        for group, lr in enumerate(lrs):
            self._add(f"lr/{group}", step, elapsed, epoch, _number(lr))
        if event.get("layer_grad_norms"):
            self.layer_grad_norms = event["layer_grad_norms"]
        if event.get("layer_update_ratios"):
            self.layer_update_ratios = event["layer_update_ratios"]
        self._recent.append(
            (
                _number(event.get("step_time")),
                _number(event.get("data_time")),
                float(event.get("samples") or 0),
                _number(event.get("time")),
            )
        )
        self.last_step = {
            k: v for k, v in event.items() if k not in ("layer_grad_norms", "layer_update_ratios")
        }

    def _on_metrics(self, event: dict[str, Any]) -> None:
        step = float(event.get("step", 0))
        elapsed = self.elapsed_at(event.get("time"))
        epoch = self._epoch_x(event)
        for key, value in event.items():
            if key in RESERVED_METRIC_KEYS:
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._add(f"metrics/{key}", step, elapsed, epoch, float(value))
                self.last_metrics[key] = value

    def _on_control(self, event: dict[str, Any]) -> None:
        self.controls.append(event)
        if event.get("command") == "stop":
            self.stop_ignored_at = None  # a new stop: the loop gets its chance again
        if event.get("command") in ("pause", "resume", "stop") and event.get("new") in RUN_STATES:
            self.status = event["new"]

    def _on_alert(self, event: dict[str, Any]) -> None:
        self.alerts.append(dict(event))

    def _on_alert_cleared(self, event: dict[str, Any]) -> None:
        """The episode is over: the newest alert of that rule is marked cleared."""
        for alert in reversed(self.alerts):
            if alert.get("rule") == event.get("rule"):
                alert["cleared_at"] = event.get("step")
                break

    def _on_message(self, event: dict[str, Any]) -> None:
        self.messages.append(event)
        if event.get(STOP_IGNORED):
            requested = event.get("stop_requested_at")
            self.stop_ignored_at = requested if isinstance(requested, int) else self.step
            if self.status == "stopping":
                self.status = "running"

    def _on_checkpoint(self, event: dict[str, Any]) -> None:
        self.checkpoints.append(event)

    def _on_system(self, event: dict[str, Any]) -> None:
        self.system = event
        cpu = (event.get("host") or {}).get("cpu_percent")
        if isinstance(cpu, int | float):
            self.cpu_history.append(float(cpu))
        for gpu in event.get("gpus") or []:
            history = self.gpu_history.setdefault(
                int(gpu.get("index", 0)),
                {"util": deque(maxlen=HISTORY), "mem": deque(maxlen=HISTORY)},
            )
            if isinstance(gpu.get("util"), int | float):
                history["util"].append(float(gpu["util"]))
            used, total = gpu.get("mem_used"), gpu.get("mem_total")
            if isinstance(used, int | float) and isinstance(total, int | float) and total:
                history["mem"].append(100.0 * used / total)

    def _on_end(self, event: dict[str, Any]) -> None:
        self.end = event
        self.status = str(event.get("status", "completed"))

    def _add(self, name: str, step: float, elapsed: float, epoch: float, value: float) -> None:
        series = self.series.get(name)
        if series is None:
            series = self.series[name] = BucketSeries(self.capacity)
        series.append(step, elapsed, epoch, value)

    # -- reading ---------------------------------------------------------------------------

    def elapsed_at(self, when: Any) -> float:
        started = (self.start or {}).get("time")
        if isinstance(when, int | float) and isinstance(started, int | float):
            return max(0.0, when - started)
        return math.nan

    def _epoch_x(self, event: dict[str, Any]) -> float:
        """Fractional epoch when the run's epoch length is known, else the epoch number."""
        per_epoch = (self.start or {}).get("steps_per_epoch")
        if isinstance(per_epoch, int) and per_epoch > 0:
            return float(event.get("step", 0)) / per_epoch
        return float(event.get("epoch") or 0)

    @property
    def name(self) -> str:
        return str((self.start or {}).get("name", "run"))

    @property
    def step(self) -> int:
        return int((self.last_step or {}).get("step", (self.start or {}).get("start_step", 0)))

    @property
    def total_steps(self) -> int | None:
        total = (self.start or {}).get("total_steps")
        return total if isinstance(total, int) else None

    @property
    def lr_groups(self) -> int:
        return sum(1 for name in self.series if name.startswith("lr/"))

    def rates(self) -> dict[str, float | None]:
        """Recent samples/s, seconds per step and share of step time spent waiting for data."""
        with self.lock:
            recent = list(self._recent)
        step_time = sum(r[0] for r in recent if math.isfinite(r[0]))
        data_time = sum(r[1] for r in recent if math.isfinite(r[1]))
        samples = sum(r[2] for r in recent if math.isfinite(r[0]))
        count = sum(1 for r in recent if math.isfinite(r[0]))
        return {
            "samples_per_s": samples / step_time if step_time > 0 and samples else None,
            "seconds_per_step": step_time / count if count else None,
            "data_wait_share": data_time / step_time if step_time > 0 else None,
        }

    def eta(self) -> float | None:
        total, rate = self.total_steps, self.rates()["seconds_per_step"]
        if total is None or rate is None or self.status not in ("running", "paused"):
            return None
        return max(0, total - self.step) * rate

    def elapsed(self, live: bool = True) -> float | None:
        """Seconds since the start: until now for a live run, else until its last event."""
        if self.start is None:
            return None
        if self.end is not None and isinstance(self.end.get("elapsed"), int | float):
            return float(self.end["elapsed"])
        until = time.time() if live else self.last_time
        return max(0.0, until - float(self.start.get("time", 0)))

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything, JSON-serializable: what a client needs to draw the whole run."""
        with self.lock:
            return {
                "version": SNAPSHOT_VERSION,
                "seq": self.seq,
                "capacity": self.capacity,
                "smoothing": self.smoothing,
                "start": self.start,
                "end": self.end,
                "status": self.status,
                "series": {name: s.to_dict() for name, s in self.series.items()},
                "controls": list(self.controls),
                "alerts": list(self.alerts),
                "messages": list(self.messages),
                "checkpoints": list(self.checkpoints),
                "last_step": self.last_step,
                "stop_ignored_at": self.stop_ignored_at,
                "last_metrics": self.last_metrics,
                "layer_grad_norms": self.layer_grad_norms,
                "layer_update_ratios": self.layer_update_ratios,
                "system": self.system,
                "cpu_history": list(self.cpu_history),
                "gpu_history": {
                    str(k): {n: list(v) for n, v in h.items()} for k, h in self.gpu_history.items()
                },
                "recent": list(self._recent),
                "ema": [self._ema._biased, self._ema._count],
                "last_time": self.last_time,
            }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> RunState:
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown snapshot version {data.get('version')!r}")
        state = cls(int(data["capacity"]), float(data["smoothing"]))
        state.seq = int(data["seq"])
        state.start, state.end, state.status = data["start"], data["end"], data["status"]
        state.series = {name: BucketSeries.from_dict(s) for name, s in data["series"].items()}
        state.controls.extend(data["controls"])
        state.alerts.extend(data["alerts"])
        state.messages.extend(data["messages"])
        state.checkpoints.extend(data["checkpoints"])
        state.counts.update(
            control=len(state.controls), alert=len(state.alerts), message=len(state.messages)
        )
        state.last_step = data["last_step"]
        state.stop_ignored_at = data.get("stop_ignored_at")
        state.last_metrics = dict(data["last_metrics"])
        state.layer_grad_norms = dict(data["layer_grad_norms"])
        state.layer_update_ratios = dict(data["layer_update_ratios"])
        state.system = data["system"]
        state.cpu_history.extend(data["cpu_history"])
        for index, history in data["gpu_history"].items():
            state.gpu_history[int(index)] = {
                name: deque(values, maxlen=HISTORY) for name, values in history.items()
            }
        state._recent.extend(tuple(r) for r in data["recent"])
        state._ema._biased, state._ema._count = data["ema"]
        state.last_time = float(data.get("last_time", 0.0))
        state.version = 1
        return state


def load_run_state(path: str | Path, chunk: int = 10_000) -> RunState:
    """A run's state read from its event log (for `replay`, or a run whose worker is gone)."""
    state = RunState()
    batch: list[dict[str, Any]] = []
    for event in read_events(path):
        batch.append(event)
        if len(batch) >= chunk:
            state.apply_many(batch)
            batch = []
    state.apply_many(batch)
    return state


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)
