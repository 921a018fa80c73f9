"""Progress arithmetic for one line of headless output."""

from __future__ import annotations

from dataclasses import dataclass, field

from tuimon.number_text import format_duration, format_value, samples_rate
from tuimon.run.events import StepEvent
from tuimon.series.smoothing import DebiasedEMA


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

    def add_step(self, event: StepEvent) -> None:
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
            parts.append(samples_rate(self.samples_per_s))
        if self.total_steps:
            parts.append(f"ETA {format_duration(self.eta)}")
        return f"[{name}] " + "  ".join(parts)
