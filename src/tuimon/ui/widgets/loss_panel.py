"""The main plot: training loss (raw and smoothed) and validation points over steps, epochs
or time; or, picked with `m`, any scalar logged with `mon.log()`.

The smoothed curve is drawn at the weight `S` picked (shown on the panel's lower border):
at the run's own `monitor.smoothing` it is the RunState's `loss_ema` (every step's EMA);
at any other it is computed from the raw points when drawn; at 0 there is none."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from tuimon.number_text import format_value
from tuimon.run.run_state import RunState
from tuimon.terminal_text import printable
from tuimon.ui.plotting import (
    METRIC_PREFIX,
    SAME_WEIGHT,
    X_LABELS,
    Curve,
    PlotSpec,
    ViewOptions,
    last_finite,
    range_text,
    render_plot,
    series_curves,
    smoothed_curves,
    smoothed_values,
    smoothing_text,
)
from tuimon.ui.widgets.panel import Panel


class LossPanel(Panel):
    TITLE = "Loss"
    PLOT = True

    def signature(self, state: RunState, options: ViewOptions) -> Any:
        totals = tuple(
            s.total if s else 0
            for s in (
                state.series.get("loss"),
                state.series.get("metrics/val_loss"),
                state.series.get(f"{METRIC_PREFIX}{options.metric}"),
            )
        )
        return totals, state.smoothing  # (the run's own weight: the default drawn)

    def view(
        self, state: RunState, options: ViewOptions, width: int, height: int
    ) -> RenderableType:
        weight = options.smoothing_for(state.smoothing)
        self.border_subtitle = smoothing_text(weight)
        if options.metric is not None and f"{METRIC_PREFIX}{options.metric}" in state.series:
            # A Text, not a str: a str title is parsed as markup, and the name is the log's.
            self.border_title = Text(printable(f"{self.TITLE} · {options.metric}"))
            return self.metric_view(state, options, options.metric, width, height)
        self.border_title = self.TITLE
        loss = state.series.get("loss")
        header = Text(no_wrap=True, overflow="ellipsis")
        header.append("train ", style="dim")
        header.append(format_value(loss.latest if loss else None), style="bold")
        if weight > 0:
            header.append("  smoothed ", style="dim")
            header.append(format_value(self.smoothed_latest(state, weight)), style="bold cyan")
        val = state.last_metrics.get("val_loss")
        if val is not None:
            header.append("  val ", style="dim")
            header.append(format_value(val), style="bold yellow")
        acc = state.last_metrics.get("val_acc")
        if acc is not None:
            header.append(f"  acc {acc:.3f}", style="yellow")
        if loss and loss.non_finite:
            header.append(f"  {loss.non_finite} non-finite", style="bold red")
        if options.log_y:
            header.append("  [log]", style="dim")
        plot = render_plot(
            self.loss_spec(state, options, width), width, height - 1, X_LABELS[options.x_mode]
        )
        return Group(header, plot)

    @staticmethod
    def loss_spec(state: RunState, options: ViewOptions, width: int) -> PlotSpec:
        """What the loss plot draws: the raw loss (gray), its smoothed curve at the chosen
        weight (cyan; none at 0) and the validation loss's points (yellow)."""
        spec = PlotSpec(log_y=options.log_y)
        spec.curves += series_curves(state, "loss", options, width, "gray", log_y=options.log_y)
        spec.curves += smoothed_loss_curves(state, options, width)
        spec.curves += series_curves(
            state, "metrics/val_loss", options, width, "yellow", points=True, log_y=options.log_y
        )
        return spec

    @staticmethod
    def smoothed_latest(state: RunState, weight: float) -> float | None:
        """The smoothed loss's newest value at `weight`."""
        if abs(weight - state.smoothing) < SAME_WEIGHT:
            ema = state.series.get("loss_ema")
            return ema.latest if ema else None
        loss = state.series.get("loss")
        if loss is None or not len(loss):
            return None
        return last_finite(smoothed_values(loss.column("last"), weight, loss.span))

    def metric_view(
        self, state: RunState, options: ViewOptions, name: str, width: int, height: int
    ) -> RenderableType:
        """One logged metric alone: its latest value, its range, and its curve."""
        key = f"{METRIC_PREFIX}{name}"
        series = state.series[key]
        header = Text(no_wrap=True, overflow="ellipsis")
        header.append(f"{name} ", style="dim")
        header.append(format_value(state.last_metrics.get(name)), style="bold cyan")
        header.append(range_text(series) or "", style="dim")
        header.append(f"  ({series.total} logged; m: next)", style="dim")
        if options.log_y:
            header.append("  [log]", style="dim")
        spec = metric_spec(state, key, options, width)
        return Group(header, render_plot(spec, width, height - 1, X_LABELS[options.x_mode]))


def smoothed_loss_curves(state: RunState, options: ViewOptions, width: int) -> list[Curve]:
    """The smoothed loss at the chosen weight: the state's own EMA at the run's weight,
    else the EMA of the raw points, computed now; nothing at 0."""
    weight = options.smoothing_for(state.smoothing)
    if weight <= 0:
        return []
    if abs(weight - state.smoothing) < SAME_WEIGHT and "loss_ema" in state.series:
        return series_curves(state, "loss_ema", options, width, "cyan", log_y=options.log_y)
    return smoothed_curves(
        state.series.get("loss"), options.x_mode, weight, width, "cyan", log_y=options.log_y
    )


def metric_spec(state: RunState, key: str, options: ViewOptions, width: int) -> PlotSpec:
    """One logged metric: its raw curve (cyan, or gray under a smoothed one), each point
    marked when there are few, and its smoothed curve at the chosen weight."""
    series = state.series[key]
    weight = options.smoothing_for(state.smoothing)
    smoothed = smoothed_curves(series, options.x_mode, weight, width, "cyan", options.log_y)
    raw = "gray" if smoothed else "cyan"
    spec = PlotSpec(log_y=options.log_y)
    spec.curves += series_curves(state, key, options, width, raw, log_y=options.log_y)
    if len(series) <= width // 4:  # few points (once an epoch): mark each one
        spec.curves += series_curves(
            state, key, options, width, raw, points=True, log_y=options.log_y
        )
    spec.curves += smoothed
    return spec
