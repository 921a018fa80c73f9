"""Every scalar logged with `mon.log()`: its latest value and a sparkline of its history.

The metric the main plot shows (picked with `m`) is marked; its curve is in the Loss panel.
"""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.text import Text

from tuimon.number_text import format_value
from tuimon.run.events import METRICS
from tuimon.run.run_state import RunState
from tuimon.ui.plotting import METRIC_PREFIX, ViewOptions, metric_names, trend_sparkline
from tuimon.ui.widgets.lines import fit
from tuimon.ui.widgets.panel import Panel

MARK = "▶"  # the metric the main plot shows
MIN_SPARK = 4


class MetricsPanel(Panel):
    TITLE = "Metrics"

    def signature(self, state: RunState, options: ViewOptions) -> Any:
        return state.counts[METRICS], options.metric

    def wanted_height(self, state: RunState) -> int:
        """Rows (border included) to list every metric, or the hint when there is none."""
        return max(1, len(metric_names(state))) + 2

    def view(
        self, state: RunState, options: ViewOptions, width: int, height: int
    ) -> RenderableType:
        names = metric_names(state)
        if not names:
            return fit([Text("no mon.log() metrics yet", style="dim")], width, height)
        shown = names
        if len(names) > height:
            # Keep the plotted one in view, and say how many more there are.
            keep = names.index(options.metric) if options.metric in names else 0
            first = max(0, min(keep - (height - 2), len(names) - (height - 1)))
            shown = names[first : first + height - 1]
        values = {name: format_value(state.last_metrics.get(name)) for name in shown}
        value_width = max((len(v) for v in values.values()), default=1)
        room = width - len(MARK) - value_width - 2  # two spaces: after the name, the value
        # Whole names first: the sparkline takes what is left, if that is enough.
        name_width = min(max((len(n) for n in shown), default=4), max(4, room))
        spark_width = room - name_width
        lines: list[Text] = []
        for name in shown:
            plotted = name == options.metric
            line = Text(no_wrap=True, overflow="ellipsis")
            line.append(MARK if plotted else " " * len(MARK), style="bold cyan")
            label = name if len(name) <= name_width else name[: name_width - 1] + "…"
            line.append(f"{label:<{name_width}} ", style="bold cyan" if plotted else "bold")
            line.append(f"{values[name]:>{value_width}} ")
            if spark_width >= MIN_SPARK:
                history = state.series[f"{METRIC_PREFIX}{name}"].column("last")
                line.append(trend_sparkline(history, spark_width), style="cyan")
            lines.append(line)
        if len(shown) < len(names):
            lines.append(Text(f"  +{len(names) - len(shown)} more (m cycles)", style="dim"))
        return fit(lines, width, height)
