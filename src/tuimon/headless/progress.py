"""Progress arithmetic and formatting for one line of headless output."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tuimon.series.smoothing import DebiasedEMA


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_value(value: float | None) -> str:
    """Four significant digits; scientific notation for very small or large magnitudes."""
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-3 or magnitude >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4g}"


def show_value(value: Any) -> str:
    """A control event's old or new value: a number, one per param group, a state name."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, float):
        return format_value(value)
    if isinstance(value, list):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    return str(value)


@dataclass
class Progress:
    """Running view of a run built from its step events."""

    total_steps: int | None = None
    epochs: int | None = None
    smoothing: float = 0.9
    step: int = 0
    epoch: int = 0
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    ema: DebiasedEMA = field(init=False)
    _window_samples: int = 0
    _window_time: float = 0.0
    _window_steps: int = 0
    samples_per_s: float | None = None
    seconds_per_step: float | None = None
    # The latest value of every scalar logged with `mon.log()`, in first-logged order.
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ema = DebiasedEMA(self.smoothing)

    def add_step(self, event: dict) -> None:
        self.step = int(event.get("step", self.step))
        self.epoch = int(event.get("epoch") or 0)
        loss = event.get("loss")
        if isinstance(loss, int | float):
            self.loss = float(loss)
            self.ema.update(self.loss)
        self.lr = event.get("lr", self.lr)
        self.grad_norm = event.get("grad_norm", self.grad_norm)
        step_time = event.get("step_time")
        if isinstance(step_time, int | float) and step_time > 0:
            self._window_time += step_time
            self._window_steps += 1
            self._window_samples += int(event.get("samples") or 0)

    def add_metrics(self, values: dict[str, float]) -> None:
        self.metrics.update(values)

    def metrics_text(self) -> str:
        """Every logged metric, compact: `val_loss 0.1132  bleu 21.3`."""
        return "  ".join(f"{name} {format_value(value)}" for name, value in self.metrics.items())

    def close_window(self) -> None:
        """Fold the steps since the last line into the rate estimates."""
        if self._window_steps and self._window_time > 0:
            rate = self._window_time / self._window_steps
            self.seconds_per_step = (
                rate
                if self.seconds_per_step is None
                else (0.5 * self.seconds_per_step + 0.5 * rate)
            )
            if self._window_samples:
                self.samples_per_s = self._window_samples / self._window_time
        self._window_samples, self._window_time, self._window_steps = 0, 0.0, 0

    @property
    def eta(self) -> float | None:
        if self.total_steps is None or self.seconds_per_step is None:
            return None
        return max(0, self.total_steps - self.step) * self.seconds_per_step

    def line(self, name: str) -> str:
        parts = []
        epochs = f"/{self.epochs}" if self.epochs else ""
        parts.append(f"epoch {self.epoch + 1}{epochs}")
        if self.total_steps:
            percent = 100 * self.step / self.total_steps
            parts.append(f"step {self.step}/{self.total_steps} ({percent:.1f}%)")
        else:
            parts.append(f"step {self.step}")
        parts.append(f"loss {format_value(self.loss)} (smoothed {format_value(self.ema.value)})")
        parts.append(f"lr {format_value(self.lr)}")
        parts.append(f"grad {format_value(self.grad_norm)}")
        if self.metrics:
            parts.append(self.metrics_text())
        if self.samples_per_s is not None:
            parts.append(f"{self.samples_per_s:.0f} samples/s")
        if self.total_steps:
            parts.append(f"ETA {format_duration(self.eta)}")
        return f"[{name}] " + "  ".join(parts)
