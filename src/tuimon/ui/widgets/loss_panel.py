"""The main plot: training loss (raw and smoothed) and validation points over steps, epochs
or time; or, picked with `m`, any scalar logged with `mon.log()`."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Group, RenderableType
from rich.text import Text

from tuimon.number_text import format_value
from tuimon.run.run_state import RunState
from tuimon.terminal_text import printable
from tuimon.ui.plotting import (
    METRIC_PREFIX,
    X_LABELS,
    PlotSpec,
    ViewOptions,
    render_plot,
    series_curves,
)
from tuimon.ui.widgets.panel import Panel


class LossPanel(Panel):
    TITLE = "Loss"
    PLOT = True

    def signature(self, state: RunState, options: ViewOptions) -> Any:
        return tuple(
            s.total if s else 0
            for s in (
                state.series.get("loss"),
                state.series.get("metrics/val_loss"),
                state.series.get(f"{METRIC_PREFIX}{options.metric}"),
            )
        )

    def view(
        self, state: RunState, options: ViewOptions, width: int, height: int
    ) -> RenderableType:
        if options.metric is not None and f"{METRIC_PREFIX}{options.metric}" in state.series:
            # A Text, not a str: a str title is parsed as markup, and the name is the log's.
            self.border_title = Text(printable(f"{self.TITLE} · {options.metric}"))
            return self.metric_view(state, options, options.metric, width, height)
        self.border_title = self.TITLE
        loss, smooth = state.series.get("loss"), state.series.get("loss_ema")
        header = Text(no_wrap=True, overflow="ellipsis")
        header.append("train ", style="dim")
        header.append(format_value(loss.latest if loss else None), style="bold")
        header.append("  smoothed ", style="dim")
        header.append(format_value(smooth.latest if smooth else None), style="bold cyan")
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
        spec = PlotSpec(log_y=options.log_y)
        for name, color, points in (
            ("loss", "gray", False),
            ("loss_ema", "cyan", False),
            ("metrics/val_loss", "yellow", True),
        ):
            spec.curves += series_curves(
                state, name, options, width, color, points=points, log_y=options.log_y
            )
        plot = render_plot(spec, width, height - 1, X_LABELS[options.x_mode])
        return Group(header, plot)

    def metric_view(
        self, state: RunState, options: ViewOptions, name: str, width: int, height: int
    ) -> RenderableType:
        """One logged metric alone: its latest value, its range, and its curve."""
        key = f"{METRIC_PREFIX}{name}"
        series = state.series[key]
        header = Text(no_wrap=True, overflow="ellipsis")
        header.append(f"{name} ", style="dim")
        header.append(format_value(state.last_metrics.get(name)), style="bold cyan")
        low, high = series.column("lo"), series.column("hi")
        if np.isfinite(low).any():
            header.append(
                f"  min {format_value(float(np.nanmin(low)))}"
                f"  max {format_value(float(np.nanmax(high)))}",
                style="dim",
            )
        header.append(f"  ({series.total} logged; m: next)", style="dim")
        if options.log_y:
            header.append("  [log]", style="dim")
        spec = PlotSpec(log_y=options.log_y)
        spec.curves += series_curves(state, key, options, width, "cyan", log_y=options.log_y)
        if len(series) <= width // 4:  # few points (once an epoch): mark each one
            spec.curves += series_curves(
                state, key, options, width, "cyan", points=True, log_y=options.log_y
            )
        return Group(header, render_plot(spec, width, height - 1, X_LABELS[options.x_mode]))
