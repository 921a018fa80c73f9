"""Training loss (raw and smoothed) and validation points over steps, epochs or time."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from tuimon.headless.progress import format_value
from tuimon.run.run_state import RunState
from tuimon.ui.plotting import X_LABELS, PlotSpec, ViewOptions, render_plot, series_curves
from tuimon.ui.widgets.panel import Panel


class LossPanel(Panel):
    TITLE = "Loss"
    PLOT = True

    def signature(self, state: RunState, options: ViewOptions) -> Any:
        return tuple(
            s.total if s else 0
            for s in (state.series.get("loss"), state.series.get("metrics/val_loss"))
        )

    def view(
        self, state: RunState, options: ViewOptions, width: int, height: int
    ) -> RenderableType:
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
