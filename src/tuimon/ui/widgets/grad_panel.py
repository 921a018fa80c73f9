"""Global gradient norm over time (log scale) and the latest norm of every layer; under
mixed precision, the GradScaler's loss scale and the steps it skipped."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tuimon.number_text import format_value, scale_text
from tuimon.run.run_state import RunState
from tuimon.ui.plotting import X_LABELS, PlotSpec, ViewOptions, render_plot, series_curves
from tuimon.ui.widgets.lines import fit
from tuimon.ui.widgets.panel import Panel

TABLE_MIN_WIDTH = 60  # below this the per-layer view shrinks to one summary line


class GradPanel(Panel):
    TITLE = "Gradients"
    PLOT = True

    def signature(self, state: RunState, options: ViewOptions) -> Any:
        grad = state.series.get("grad_norm")
        return (
            grad.total if grad else 0,
            id(state.layer_grad_norms),
            id(state.layer_update_ratios),
            state.loss_scale,
            state.skipped_steps,
        )

    def view(
        self, state: RunState, options: ViewOptions, width: int, height: int
    ) -> RenderableType:
        grad, ratio = state.series.get("grad_norm"), state.series.get("update_ratio")
        header = Text(no_wrap=True, overflow="ellipsis")
        header.append("global ", style="dim")
        header.append(format_value(grad.latest if grad else None), style="bold")
        header.append("  update/weight ", style="dim")
        header.append(format_value(ratio.latest if ratio else None), style="bold")
        heads = [header]
        scaler = self.scaler_line(state)
        if scaler is not None and header.cell_len + 2 + scaler.cell_len <= width:
            header.append("  ")
            header.append_text(scaler)
        elif scaler is not None:  # a line of its own, rather than cut off
            heads.append(scaler)
        top = len(heads)
        layers = self.layer_rows(state)
        wide = width >= TABLE_MIN_WIDTH and layers
        plot_width = int(width * 0.55) if wide else width
        spec = PlotSpec(log_y=True)
        spec.curves += series_curves(state, "grad_norm", options, plot_width, "orange", log_y=True)
        if not wide:
            summary = self.extremes_line(layers)
            plot = render_plot(
                spec, width, height - top - (1 if summary else 0), X_LABELS[options.x_mode]
            )
            parts: list[RenderableType] = [*heads, plot]
            if summary:
                parts.append(fit([summary], width, 1))
            return Group(*parts)
        plot = render_plot(spec, plot_width, height - top, X_LABELS[options.x_mode])
        table = Table.grid(padding=(0, 1))
        table.add_column(width=plot_width)
        table.add_column(width=width - plot_width - 1)
        table.add_row(plot, self.layer_table(layers, width - plot_width - 1, height - top))
        return Group(*heads, table)

    def scaler_line(self, state: RunState) -> Text | None:
        """The GradScaler's "scale 2^13 · 3 skipped", only for a run that has one (its steps
        carry `loss_scale`); a skipped step is one whose gradients held inf/NaN."""
        if state.loss_scale is None:
            return None
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append("scale ", style="dim")
        line.append(scale_text(state.loss_scale), style="bold")
        if state.skipped_steps:
            line.append(f" · {state.skipped_steps} skipped", style="yellow")
        return line

    def layer_rows(self, state: RunState) -> list[tuple[str, float, float | None]]:
        """(layer, latest gradient norm, update/weight ratio), in model order."""
        ratios = state.layer_update_ratios
        return [
            (name, norm, ratios.get(name))
            for name, norm in state.layer_grad_norms.items()
            if isinstance(norm, int | float) and math.isfinite(norm)
        ]

    def extremes_line(self, layers: list[tuple[str, float, float | None]]) -> Text | None:
        if not layers:
            return None
        low = min(layers, key=lambda row: row[1])
        high = max(layers, key=lambda row: row[1])
        line = Text(no_wrap=True)
        line.append("min ", style="dim")
        line.append(f"{low[0]} {format_value(low[1])}", style="cyan")
        line.append("  max ", style="dim")
        line.append(f"{high[0]} {format_value(high[1])}", style="red")
        return line

    def layer_table(
        self, layers: list[tuple[str, float, float | None]], width: int, height: int
    ) -> Text:
        """One line per layer: name, norm, a log-scale bar; smallest and largest stand out."""
        norms = [n for _, n, _ in layers if n > 0]
        low, high = (min(norms), max(norms)) if norms else (1.0, 1.0)
        span = math.log10(high / low) if high > low else 1.0
        name_width = max(6, min(18, width - 30))
        bar_width = max(3, width - name_width - 22)
        rows = shown_rows(layers, height - 1)
        lines: list[Text] = [Text(f"{'layer':<{name_width}} {'grad':>9} {'upd/w':>9}", style="dim")]
        for name, norm, ratio in rows:
            filled = round(math.log10(norm / low) / span * bar_width) if norm > 0 else 0
            style = "bold red" if norm == high else "bold cyan" if norm == low else ""
            line = Text(no_wrap=True)
            line.append(f"{name[-name_width:]:<{name_width}} ", style=style)
            line.append(f"{format_value(norm):>9} ", style=style)
            line.append(f"{format_value(ratio) if ratio is not None else '':>9} ")
            line.append("█" * filled + "·" * (bar_width - filled), style=style or "dim")
            lines.append(line)
        return fit(lines, width, height)


def shown_rows(
    layers: list[tuple[str, float, float | None]], room: int
) -> list[tuple[str, float, float | None]]:
    """The layers that fit in `room` lines, in model order, always with the extremes."""
    if len(layers) <= room:
        return layers
    if room <= 0:
        return []
    norms = [norm for _, norm, _ in layers]
    must = {norms.index(min(norms)), norms.index(max(norms))}
    others = [i for i in range(len(layers)) if i not in must][: max(0, room - len(must))]
    return [layers[i] for i in sorted(must | set(others))][:room]
