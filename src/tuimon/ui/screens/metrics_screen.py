"""`M`: every scalar a run logged, each with its latest value; any one of them plotted, for
one run or for several overlaid (compare opens it with its runs).

What is listed is `ScalarHistory.names()`: the step fields (loss, lr, grad_norm,
step_time, samples_per_s, loss_scale, an adapter's extras, per-layer norms) and every
`mon.log()` metric. The histories follow each run's `events.jsonl`, a file the UI can read
whether it is attached to a live worker, replaying, or looking at a dead one. They are
read and updated only in a thread worker, on a timer (live runs grow); the UI thread gets
a snapshot (rows of latest values, copies of the plotted scalar's series) and updates the
table in place, so the cursor and the filter stay where they are. plotext draws on the UI
thread only. Names and run names come from logs: every cell and title is plain,
printable text, never markup.
"""

from __future__ import annotations

import copy
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from rich.console import Console, Group, RenderableType
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.events import Resize
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Input, Static

from tuimon.number_text import format_value
from tuimon.run.field_types import as_dict, as_number
from tuimon.run.scalar_history import ScalarHistory
from tuimon.series.bucketed import BucketSeries
from tuimon.terminal_text import printable
from tuimon.ui.overlay_plot import OverlayCurve, draw_overlay
from tuimon.ui.plotting import (
    X_LABELS,
    PlotSpec,
    ViewOptions,
    bucket_curves,
    range_text,
    render_plot,
    smoothed_curves,
    smoothed_values,
    smoothing_text,
)
from tuimon.ui.run_colors import run_colors
from tuimon.ui.terminal_safe import TerminalSafe

REFRESH_S: Final = 1.0  # how often the logs are read again for what they gained
X_MODES: Final = ("step", "time")  # `t`: the step, or the seconds since the run started
DEFAULT_SMOOTHING: Final = 0.9  # monitor.smoothing's default, for a log that does not say
NOT_LOGGED: Final = "—"  # a run that has no value of this scalar
NAME_COLUMN: Final = "name"
POINTS_COLUMN: Final = "points"
SWATCH: Final = "■"
HINT: Final = (
    "/ filter · enter plot · t step/elapsed · y log y · S smoothing · Esc back (clears the filter)"
)


@dataclass(frozen=True)
class ScalarRow:
    """One scalar: its newest value in each run (None where that run has none) and how
    many points each run logged."""

    name: str
    latest: tuple[float | None, ...]
    counts: tuple[int, ...]


@dataclass
class MetricsSnapshot:
    """What the worker read, handed to the UI thread: nothing in it is shared with the
    histories."""

    rows: list[ScalarRow] = field(default_factory=list)
    plotted: str | None = None
    series: list[BucketSeries | None] = field(default_factory=list)  # the plotted, per run
    run_smoothing: float | None = None  # the first run's monitor.smoothing, when it says
    skipped: int = 0  # damaged lines left out, all runs


def read_snapshot(histories: Sequence[ScalarHistory], plotted: str | None) -> MetricsSnapshot:
    """Every scalar of the (already updated) histories, in first-seen order (the first
    run's, then what the others add), and copies of `plotted`'s series."""
    names: dict[str, None] = {}
    for history in histories:
        names.update(dict.fromkeys(history.names()))
    rows = []
    for name in names:
        found = [history.series(name) for history in histories]
        rows.append(
            ScalarRow(
                name,
                tuple(s.latest if s is not None else None for s in found),
                tuple(s.total if s is not None else 0 for s in found),
            )
        )
    series = []
    for history in histories:
        kept = history.series(plotted) if plotted is not None else None
        series.append(copy.deepcopy(kept) if kept is not None and len(kept) else None)
    return MetricsSnapshot(
        rows=rows,
        plotted=plotted,
        series=series,
        run_smoothing=run_smoothing(histories[0].start) if histories else None,
        skipped=sum(history.skipped for history in histories),
    )


def run_smoothing(start: dict[str, Any] | None) -> float | None:
    """The run's `monitor.smoothing`, from its start event's settings."""
    weight = as_number(as_dict(as_dict(start).get("settings")).get("smoothing"))
    return weight if 0 <= weight < 1 else None


def filter_rows(rows: Sequence[ScalarRow], text: str) -> list[ScalarRow]:
    """The rows whose name holds `text`, case-insensitive (all of them for no text)."""
    needle = text.strip().casefold()
    return [row for row in rows if needle in row.name.casefold()] if needle else list(rows)


def row_cells(row: ScalarRow) -> list[str]:
    """A row's cells as text: the name (printable), each run's value, the points."""
    values = [NOT_LOGGED if v is None else format_value(v) for v in row.latest]
    return [
        printable(row.name, keep_newlines=False),
        *values,
        "/".join(str(count) for count in row.counts),
    ]


def plot_view(
    name: str,
    series: Sequence[BucketSeries | None],
    labels: Sequence[str],
    colors: Sequence[str],
    options: ViewOptions,
    weight: float,
    width: int,
    height: int,
) -> RenderableType:
    """The scalar `name` plotted: a header naming it, then one run's raw and smoothed
    curves, or every run's curve overlaid with a legend."""
    header = Text(no_wrap=True, overflow="ellipsis")
    header.append(printable(name, keep_newlines=False), style="bold")
    shown = [
        (s, label, color)
        for s, label, color in zip(series, labels, colors, strict=True)
        if s is not None
    ]
    if len(series) == 1 and shown:
        one = shown[0][0]
        header.append(f"  latest {format_value(one.latest)}", style="bold cyan")
        header.append(range_text(one) or "", style="dim")
        header.append(f"  ({one.total} points)", style="dim")
    header.append(f"  · {smoothing_text(weight)}", style="dim")
    if options.log_y:
        header.append("  [log]", style="dim")
    x_label = X_LABELS[options.x_mode]
    if not shown:
        return Group(header, Text("no points of it yet", style="dim"))
    if len(series) == 1:
        one, _, color = shown[0]
        spec = single_spec(one, options, weight, width, color)
        return Group(header, render_plot(spec, width, height - 1, x_label))
    curves = [
        OverlayCurve(
            label=label,
            color=color,
            xs=s.column(options.x_mode),
            ys=smoothed_values(s.column("last"), weight, s.span)
            if weight > 0
            else s.column("last"),
        )
        for s, label, color in shown
    ]
    return Group(
        header, draw_overlay(curves, width, height - 1, x_label=x_label, log_y=options.log_y)
    )


def single_spec(
    series: BucketSeries, options: ViewOptions, weight: float, width: int, color: str
) -> PlotSpec:
    """One run's scalar: its raw curve (gray under a smoothed one), each point marked when
    there are few, and its smoothed curve at `weight` in the run's colour."""
    x_mode, log_y = options.x_mode, options.log_y
    smoothed = smoothed_curves(series, x_mode, weight, width, color, log_y)
    raw = "gray" if smoothed else color
    spec = PlotSpec(log_y=log_y)
    spec.curves += bucket_curves(series, x_mode, width, raw, log_y=log_y)
    if len(series) <= width // 4:
        spec.curves += bucket_curves(series, x_mode, width, raw, points=True, log_y=log_y)
    spec.curves += smoothed
    return spec


class MetricsScreen(Screen[None]):
    """Every scalar of `run_dirs` (one run, or several compared)."""

    DEFAULT_CSS = """
    MetricsScreen {
        layout: vertical;
    }
    MetricsScreen #metrics-title {
        height: 1;
        text-style: bold;
        padding: 0 1;
    }
    MetricsScreen #metrics-filter {
        display: none;
    }
    MetricsScreen #metrics-filter.-shown {
        display: block;
    }
    MetricsScreen #metrics-table {
        height: 2fr;
    }
    MetricsScreen #metrics-plot {
        height: 3fr;
        border: round $primary-darken-1;
        padding: 0 1;
    }
    MetricsScreen #metrics-hint {
        height: 1;
        color: $text-muted;
        padding: 0 1;
    }
    """

    BINDINGS = [
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("escape", "back", "Back"),
        Binding("q", "close", "Close"),
        Binding("t", "cycle_x", "X axis"),
        Binding("y", "toggle_log", "Log y"),
        Binding("S", "cycle_smoothing", "Smoothing"),
    ]

    class SnapshotRead(Message):
        """The worker's reading, or why there is none."""

        def __init__(self, snapshot: MetricsSnapshot | None, error: str = "") -> None:
            super().__init__()
            self.snapshot = snapshot
            self.error = error

    def __init__(self, run_dirs: Sequence[str | Path], *, smoothing: float | None = None) -> None:
        super().__init__()
        if not run_dirs:
            raise ValueError("MetricsScreen needs at least one run")
        self.run_dirs = [Path(run_dir) for run_dir in run_dirs]
        self.labels = [run_dir.name or str(run_dir) for run_dir in self.run_dirs]
        self.run_colors = run_colors(self.run_dirs)
        self.options = ViewOptions(smoothing=smoothing)
        self.filter_text = ""
        self.snapshot: MetricsSnapshot | None = None
        self.plotted: str | None = None
        self.reads = 0  # snapshots received (tests wait for a fresh one)
        self.error = ""
        self._histories = [ScalarHistory(run_dir) for run_dir in self.run_dirs]
        self._histories_lock = threading.Lock()  # the histories are the worker's alone
        self._reading = False
        self._read_again = False
        self._shown: dict[str, list[str]] = {}  # the table's rows as they are, by name
        self._drawn: Any = None
        self.plot_renderable: RenderableType = ""

    # -- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(Text(self._title()), id="metrics-title")
        yield Input(placeholder="filter: part of a name (Esc clears)", id="metrics-filter")
        table: DataTable[Text] = DataTable(
            id="metrics-table", cursor_type="row", zebra_stripes=True
        )
        yield table
        yield Static("", id="metrics-plot", markup=False)
        yield Static(HINT, id="metrics-hint", markup=False)

    def _title(self) -> str:
        if len(self.run_dirs) == 1:
            title = f"Every scalar of {self.labels[0]}"
        else:
            title = f"Every scalar of {len(self.run_dirs)} runs"
        if self.snapshot is None:
            title += " · reading the log…"
        elif self.snapshot.skipped:
            title += f" · {self.snapshot.skipped} damaged lines left out"
        if self.error:
            title += f" · {self.error}"
        return printable(title, keep_newlines=False)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column(NAME_COLUMN, key=NAME_COLUMN)
        for index, (label, color) in enumerate(zip(self.labels, self.run_colors, strict=True)):
            heading = Text("latest") if len(self.run_dirs) == 1 else Text()
            if len(self.run_dirs) > 1:
                heading.append(SWATCH + " ", style=color)
                heading.append(printable(label, keep_newlines=False), style=color)
            table.add_column(heading, key=f"run-{index}")
        table.add_column(POINTS_COLUMN, key=POINTS_COLUMN)
        table.focus()
        self.request_read()
        self.set_interval(REFRESH_S, self.request_read)

    def on_resize(self, event: Resize) -> None:
        self.call_after_refresh(self.draw_plot)

    # -- reading, off the UI thread -------------------------------------------------------

    def request_read(self) -> None:
        """Read the logs again (one read at a time: a request during one is done after)."""
        if self._reading:
            self._read_again = True
            return
        self._reading = True
        self._read(self.plotted)

    @work(thread=True, group="metrics-read", exit_on_error=False)
    def _read(self, plotted: str | None) -> None:
        snapshot, error = None, ""
        try:
            with self._histories_lock:
                for history in self._histories:
                    history.update()
                snapshot = read_snapshot(self._histories, plotted)
        except (OSError, ValueError) as exc:
            error = f"cannot read the log: {exc}"
        finally:  # always answered, so a failed read does not stop the ones after it
            self.post_message(self.SnapshotRead(snapshot, error))

    @on(SnapshotRead)
    def snapshot_read(self, message: SnapshotRead) -> None:
        self._reading = False
        self.error = message.error
        if message.snapshot is not None:
            self.snapshot = message.snapshot
            self.reads += 1
            if self.plotted is None and self.snapshot.rows:
                names = [row.name for row in self.snapshot.rows]
                self.plotted = "loss" if "loss" in names else names[0]
                self._read_again = True
            self.fill_table()
            self.draw_plot()
        self.query_one("#metrics-title", Static).update(Text(self._title()))
        if self._read_again and self.is_mounted:
            self._read_again = False
            self.request_read()

    # -- the table ------------------------------------------------------------------------

    def fill_table(self) -> None:
        """The filtered rows, updated in place: same rows, new values; or rows rebuilt with
        the cursor kept on the scalar it was on."""
        if self.snapshot is None:
            return
        table: DataTable[Text] = self.query_one(DataTable)
        rows = filter_rows(self.snapshot.rows, self.filter_text)
        cells = {row.name: row_cells(row) for row in rows}
        if list(cells) == list(self._shown):
            columns = list(table.columns)
            for name, texts in cells.items():
                for column, (old, new) in enumerate(zip(self._shown[name], texts, strict=True)):
                    if old != new:
                        table.update_cell(name, columns[column], Text(new))
        else:
            selected = self.selected_name()
            table.clear()
            for name, texts in cells.items():
                table.add_row(*(Text(text) for text in texts), key=name)
            if selected in cells:
                table.move_cursor(row=list(cells).index(selected), animate=False)
        self._shown = cells

    def selected_name(self) -> str | None:
        """The scalar under the table's cursor."""
        table: DataTable[Text] = self.query_one(DataTable)
        if not table.row_count:
            return None
        row = min(table.cursor_row, table.row_count - 1)
        key = table.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value
        return key

    def row_texts(self) -> dict[str, list[str]]:
        """The table's rows as shown (name, each run's value, points), by scalar name."""
        return {name: list(texts) for name, texts in self._shown.items()}

    @on(DataTable.RowSelected)
    def row_selected(self, event: DataTable.RowSelected) -> None:
        self.plot(event.row_key.value)

    def plot(self, name: str | None) -> None:
        """Plot `name` (its series are copied by the next read, at once)."""
        if name is None:
            return
        self.plotted = name
        self.request_read()

    # -- the filter -----------------------------------------------------------------------

    def action_filter(self) -> None:
        box = self.query_one(Input)
        box.add_class("-shown")
        box.focus()

    @on(Input.Changed)
    def filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.fill_table()

    @on(Input.Submitted)
    def filter_submitted(self, event: Input.Submitted) -> None:
        """Enter in the filter: back to the table, and plot the scalar under its cursor."""
        self.query_one(DataTable).focus()
        self.plot(self.selected_name())

    def action_back(self) -> None:
        """Esc: clear the filter if there is one (or it is open), else close."""
        box = self.query_one(Input)
        if self.filter_text or box.has_class("-shown"):
            box.value = ""
            self.filter_text = ""
            box.remove_class("-shown")
            self.query_one(DataTable).focus()
            self.fill_table()
            return
        self.action_close()

    def action_close(self) -> None:
        self.dismiss(None)

    # -- the plot -------------------------------------------------------------------------

    def action_cycle_x(self) -> None:
        mode = X_MODES[(X_MODES.index(self.options.x_mode) + 1) % len(X_MODES)]
        self.options = replace(self.options, x_mode=mode)
        self.draw_plot()

    def action_toggle_log(self) -> None:
        self.options = replace(self.options, log_y=not self.options.log_y)
        self.draw_plot()

    def action_cycle_smoothing(self) -> None:
        self.options = self.options.next_smoothing(self.run_weight)
        self.draw_plot()

    @property
    def run_weight(self) -> float:
        """The run's own smoothing weight (the first run's), else the default."""
        weight = self.snapshot.run_smoothing if self.snapshot is not None else None
        return DEFAULT_SMOOTHING if weight is None else weight

    @property
    def weight(self) -> float:
        """The smoothing weight drawn now."""
        return self.options.smoothing_for(self.run_weight)

    def draw_plot(self) -> None:
        """Draw the plotted scalar, if what it shows (or the room) changed."""
        if self.snapshot is None or not self.is_mounted:
            return
        box = self.query_one("#metrics-plot", Static)
        width, height = box.content_size.width, box.content_size.height
        snapshot = self.snapshot
        name = snapshot.plotted
        totals = tuple(s.total if s is not None else 0 for s in snapshot.series)
        key = (name, totals, self.options, width, height)
        if name is None or width <= 0 or height <= 0 or key == self._drawn:
            return
        view = plot_view(
            name,
            snapshot.series,
            self.labels,
            self.run_colors,
            self.options,
            self.weight,
            width,
            height,
        )
        self._drawn = key
        self.plot_renderable = TerminalSafe(view)
        box.update(self.plot_renderable)

    def plot_text(self) -> str:
        """The plot as plain text, as drawn at its current width."""
        width = max(self.query_one("#metrics-plot", Static).content_size.width, 1)
        console = Console(width=width, color_system=None, file=io.StringIO())
        with console.capture() as captured:
            console.print(self.plot_renderable)
        return captured.get()
