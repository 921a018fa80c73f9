"""The learning rate of every param group, with a marker where a command changed it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from rich.console import Group, RenderableType
from rich.text import Text

from tuimon.control.commands import LR_COMMANDS
from tuimon.number_text import format_value
from tuimon.run.events import CONTROL, ControlEvent
from tuimon.run.run_state import RunState
from tuimon.ui.plotting import X_LABELS, PlotSpec, ViewOptions, render_plot, series_curves, x_of
from tuimon.ui.widgets.panel import Panel

GROUP_COLORS = ("green", "magenta", "blue", "orange", "cyan", "yellow")


class LRPanel(Panel):
    TITLE = "Learning rate"
    PLOT = True

    def signature(self, state: RunState, options: ViewOptions) -> Any:
        totals = tuple(s.total for n, s in state.series.items() if n.startswith("lr/"))
        return totals, state.counts[CONTROL]

    def lr_changes(self, state: RunState) -> list[ControlEvent]:
        """The controls that set or scaled an LR, oldest first."""
        controls = cast("Iterable[ControlEvent]", state.controls)
        return [c for c in controls if c.get("command") in LR_COMMANDS]

    def markers(self, state: RunState, options: ViewOptions) -> list[float]:
        """x positions of the LR changes drawn on the plot."""
        found = (x_of(state, c, options) for c in self.lr_changes(state))
        return [x for x in found if x is not None]

    def view(
        self, state: RunState, options: ViewOptions, width: int, height: int
    ) -> RenderableType:
        groups = state.lr_groups
        header = Text(no_wrap=True, overflow="ellipsis")
        for group in range(groups):
            series = state.series[f"lr/{group}"]
            if group:
                header.append(" · ", style="dim")
            header.append(format_value(series.latest), style=f"bold {GROUP_COLORS[group % 6]}")
        if groups > 1:
            header.append(f"  ({groups} groups)", style="dim")
        changes = self.lr_changes(state)
        if changes:
            last = changes[-1]
            header.append(
                f"  {last['command']} {format_value(last.get('old'))}→"
                f"{format_value(last.get('new'))} @ {last.get('step')}",
                style="bold red" if last.get("source") == "autofix" else "bold",
            )
        spec = PlotSpec()
        for group in range(groups):
            spec.curves += series_curves(
                state, f"lr/{group}", options, width, GROUP_COLORS[group % 6]
            )
        spec.vlines = [(x, "red") for x in self.markers(state, options)]
        return Group(header, render_plot(spec, width, height - 1, X_LABELS[options.x_mode]))
