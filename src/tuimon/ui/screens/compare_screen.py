"""`c` on the runs screen: several runs' loss, validation metric and LR overlaid.

Each run keeps its colour (`run_colors`, as in the runs table) on every plot and in every
legend. A thread reads the runs' logs (`ScalarHistory`: the whole log once, then only what
each appended) and hands the UI copies of the columns it draws, so a log is never read on
the UI thread and a live run's curves keep growing. One run can be pinned as the baseline:
it is listed first and marked, and every other run's latest loss is given relative to the
baseline's at the same step (or time). `D` shows where the runs' configs differ.
Every name shown came from a log: it is made printable and never read as markup.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Static

from tuimon.catalog.run_summary import DIED
from tuimon.number_text import format_value
from tuimon.run.config_diff import ABSENT, config_diff, run_config
from tuimon.run.events import RUNNING
from tuimon.run.scalar_history import ScalarHistory
from tuimon.run.scalars import LR, METRIC_PREFIX, STEP_FIELDS
from tuimon.run.worker_liveness import worker_liveness
from tuimon.terminal_text import printable
from tuimon.ui.keymap import COMPARE_KEYS, compare_bindings
from tuimon.ui.overlay_plot import OverlayCurve, draw_overlay, drawable_points
from tuimon.ui.plotting import X_LABELS
from tuimon.ui.run_colors import run_colors
from tuimon.ui.screens.help_screen import HelpScreen

LOSS = "loss"
VAL_LOSS = "val_loss"
X_AXES = ("step", "time")  # BucketSeries columns: step, elapsed seconds since the start
SMOOTHING = (0.0, 0.6, 0.9, 0.99)
VALIDATION_PREFIXES = ("val_", "eval_", "val/", "eval/", "validation", "test_")
MAX_METRICS = 64  # metric candidates copied per read: a bound a hostile log cannot pass
READ_EVERY = 1.0  # seconds between reads of the logs' new bytes


@dataclass
class RunCurves:
    """What the UI draws of one run: copies made on the reading thread."""

    run_dir: Path
    name: str  # from the start event, else the directory's name (raw: shown printable)
    status: str | None = None
    start: dict[str, Any] | None = None
    # name -> (step, elapsed seconds, latest value per bucket)
    columns: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)  # validation-like names, first seen first


def is_metric(name: str) -> bool:
    """A scalar that is not one of a step's own fields (nor their per-layer or LR groups):
    what a run logged as a metric (`mon.log`, a framework's validation)."""
    head = name.split("/", 1)[0]
    return name.startswith(METRIC_PREFIX) or (head not in STEP_FIELDS and head != LR)


def metric_order(names: Sequence[str]) -> list[str]:
    """Metrics for the validation plot: val_loss first, then validation-looking names,
    then the other metrics, each group in first-seen order."""
    metrics = [n for n in names if is_metric(n)]
    validation = [n for n in metrics if n != VAL_LOSS and n.startswith(VALIDATION_PREFIXES)]
    rest = [n for n in metrics if n != VAL_LOSS and n not in validation]
    return ([VAL_LOSS] if VAL_LOSS in metrics else []) + validation + rest


def run_status(history: ScalarHistory) -> str:
    """How the run ended, or without an end: died when its pid is gone, else running (a
    run on another host keeps what its log says, as on the runs screen: its pid cannot
    be checked from here)."""
    if history.status is not None:
        return history.status
    return DIED if worker_liveness(history.start).verdict == "gone" else RUNNING


def read_curves(history: ScalarHistory, name: str, status: str) -> RunCurves:
    """Copies of the columns compare draws, from what `history` has read (on a thread)."""
    start = history.start
    label = start.get("name") if isinstance(start, dict) else None
    metrics = metric_order(history.names())[:MAX_METRICS]
    curves = RunCurves(
        run_dir=history.run_dir,
        name=label if isinstance(label, str) and label else name,
        status=status,
        start=dict(start) if isinstance(start, dict) else None,
        metrics=metrics,
    )
    for scalar in (LOSS, LR, *metrics):
        series = history.series(scalar)
        if series is not None and len(series):
            curves.columns[scalar] = (
                series.column("step"),
                series.column("time"),
                series.column("last"),
            )
    return curves


def run_labels(runs: Sequence[RunCurves]) -> list[str]:
    """Each run's legend label: its name, or where two runs share one (two runs of one
    config), its directory's name."""
    names = [r.name for r in runs]
    return [r.run_dir.name if names.count(r.name) > 1 else r.name for r in runs]


def relative_change(
    run: tuple[np.ndarray, np.ndarray], base: tuple[np.ndarray, np.ndarray]
) -> tuple[float, float, float] | None:
    """(x, run's value, % vs the baseline) at the run's last x, or at the baseline's last
    when the baseline is shorter (both read at the same x); None without overlap."""
    xs, ys = run
    bxs, bys = base
    if not xs.size or not bxs.size:
        return None
    x = min(float(xs[-1]), float(bxs[-1]))
    if x < float(bxs[0]) or x < float(xs[0]):
        return None
    value = float(np.interp(x, xs, ys))
    reference = float(np.interp(x, bxs, bys))
    if reference == 0:
        return None
    return x, value, (value - reference) / abs(reference) * 100


class OverlayPanel(Widget):
    """One plot of compare: its curves drawn by `draw_overlay` at the panel's size."""

    DEFAULT_CSS = """
    OverlayPanel {
        border: round $primary-darken-1;
        border-title-color: $text;
        border-title-style: bold;
        height: 1fr;
        width: 1fr;
    }
    """

    def __init__(self, title: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.border_title = Text(title)
        self.curves: list[OverlayCurve] = []
        self.x_label = X_LABELS["step"]
        self.log_y = False
        self.smoothing = 0.0
        self.text = Text("")  # what it drew last (tests read it)
        self.stale = True  # shown new curves or options not drawn yet

    def show(
        self,
        title: str,
        curves: list[OverlayCurve],
        *,
        x_label: str,
        log_y: bool,
        smoothing: float,
    ) -> None:
        self.border_title = Text(printable(title, keep_newlines=False))
        self.curves = curves
        self.x_label, self.log_y, self.smoothing = x_label, log_y, smoothing
        self.stale = True
        self.refresh()

    def render(self) -> Text:
        size = self.content_size
        self.text = draw_overlay(
            self.curves,
            size.width,
            size.height,
            x_label=self.x_label,
            log_y=self.log_y,
            smoothing=self.smoothing,
        )
        self.stale = False
        return self.text


class CompareScreen(Screen[None]):
    """The runs in `run_dirs` overlaid; `baseline` (one of them) pinned from the start."""

    BINDINGS = compare_bindings()
    DEFAULT_CSS = """
    CompareScreen #compare-title { height: 1; padding: 0 1; }
    CompareScreen #compare-loss { height: 2fr; }
    CompareScreen #compare-lower { height: 1fr; }
    CompareScreen #compare-runs { height: auto; max-height: 10; padding: 0 1; }
    """

    def __init__(self, run_dirs: Sequence[Path], baseline: Path | None = None) -> None:
        super().__init__()
        self.run_dirs = [Path(d) for d in run_dirs]
        self.run_palette = run_colors(self.run_dirs)
        self.histories = [ScalarHistory(d) for d in self.run_dirs]
        self.runs = [RunCurves(d, d.name) for d in self.run_dirs]
        self.baseline: int | None = None
        if baseline is not None and Path(baseline) in self.run_dirs:
            self.baseline = self.run_dirs.index(Path(baseline))
        self.selected = 0
        self.x_axis = X_AXES[0]
        self.log_y = False
        self.smoothing = SMOOTHING[0]
        self.metric: str | None = None  # the validation plot's; None: the default
        self.reads = 0  # reads of the logs taken by the UI (tests wait on it)
        self.runs_read = 0  # runs whose log the first read has been through
        self._reading = threading.Lock()
        self._read: list[RunCurves] = []  # the reading thread's last copies
        self.composed = False

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(""), id="compare-title")
            yield OverlayPanel(LOSS, id="compare-loss")
            with Horizontal(id="compare-lower"):
                yield OverlayPanel("validation", id="compare-val")
                yield OverlayPanel(LR, id="compare-lr")
            yield Static(Text(""), id="compare-runs")
        yield Footer()

    def on_mount(self) -> None:
        self.composed = True
        self.redraw()
        self.read_logs()
        self.set_interval(READ_EVERY, self.read_logs)

    # -- reading ------------------------------------------------------------------------

    @work(thread=True, group="compare-read", exit_on_error=False)
    def read_logs(self) -> None:
        """Read the logs' new bytes off the UI thread; one read at a time."""
        if not self._reading.acquire(blocking=False):
            return
        try:
            runs, news = self._read_all()
            if news:  # waits for the UI thread to take them: a read ends once shown
                self.app.call_from_thread(self._take, runs, len(runs))
        finally:
            self._reading.release()

    def _read_all(self) -> tuple[list[RunCurves], bool]:
        """Every run's curves, copied anew only for runs whose log grew; and whether
        anything changed since the last read. The first read shows each run as soon as
        its log is read (a long log takes seconds)."""
        runs: list[RunCurves] = []
        first = not self._read
        news = first
        for index, history in enumerate(self.histories):
            if first and index:
                waiting = [RunCurves(d, d.name) for d in self.run_dirs[index:]]
                self.app.call_from_thread(self._take, runs + waiting, index)
            grew = history.update()
            status = run_status(history)
            previous = self._read[index] if self._read else None
            if previous is None or grew:
                runs.append(read_curves(history, self.run_dirs[index].name, status))
                news = True
            elif previous.status != status:
                runs.append(replace(previous, status=status))
                news = True
            else:
                runs.append(previous)
        self._read = runs
        return runs, news

    def _take(self, runs: list[RunCurves], read: int) -> None:
        """Show `runs`, of which the first `read` have had their logs read."""
        self.runs = runs
        self.runs_read = read
        self.reads += 1
        self.redraw()

    # -- drawing ------------------------------------------------------------------------

    @property
    def labels(self) -> list[str]:
        return run_labels(self.runs)

    def validation_metric(self) -> str | None:
        """The metric the validation plot shows: the one picked with `v`, else val_loss,
        else the first metric any run logged."""
        names = self.metric_names()
        if self.metric in names:
            return self.metric
        return names[0] if names else None

    def metric_names(self) -> list[str]:
        names: list[str] = []
        for run in self.runs:
            names += [n for n in run.metrics if n not in names]
        return metric_order(names)

    def curves(self, scalar: str) -> list[OverlayCurve]:
        """`scalar` of every run that has it, in the run's colour, on the current x axis."""
        curves = []
        for index, (run, label) in enumerate(zip(self.runs, self.labels, strict=True)):
            columns = run.columns.get(scalar)
            if columns is None:
                continue
            step, elapsed, last = columns
            xs = step if self.x_axis == "step" else elapsed
            curves.append(
                OverlayCurve(
                    label, self.run_palette[index], xs, last, baseline=index == self.baseline
                )
            )
        return curves

    def redraw(self) -> None:
        if not self.composed or not self.is_attached:  # a read landing before or after
            return
        x_label = X_LABELS[self.x_axis]
        options: dict[str, Any] = {
            "x_label": x_label,
            "log_y": self.log_y,
            "smoothing": self.smoothing,
        }
        self.query_one("#compare-loss", OverlayPanel).show(LOSS, self.curves(LOSS), **options)
        metric = self.validation_metric()
        val_curves = self.curves(metric) if metric else []
        val_title = metric or "validation: none logged"
        self.query_one("#compare-val", OverlayPanel).show(val_title, val_curves, **options)
        self.query_one("#compare-lr", OverlayPanel).show(LR, self.curves(LR), **options)
        self.query_one("#compare-title", Static).update(self.title_text())
        self.query_one("#compare-runs", Static).update(self.runs_text())

    def title_text(self) -> Text:
        title = Text(f"Compare {len(self.runs)} runs", style="bold")
        title.append(f" · x: {X_LABELS[self.x_axis]}")
        if self.smoothing:
            title.append(f" · smoothing {self.smoothing:g}")
        if self.log_y:
            title.append(" · log y")
        if self.runs_read < len(self.runs):
            title.append(f" · reading logs ({self.runs_read}/{len(self.runs)})…", style="dim")
        return title

    def runs_text(self) -> Text:
        """A line per run: the selection mark, its number, colour and name, its status,
        its latest loss and, with a baseline, how it compares at the same x."""
        lines: list[Text] = []
        losses = [drawable_points(c, smoothing=self.smoothing) for c in self.curves_by_run(LOSS)]
        for index, (run, label) in enumerate(zip(self.runs, self.labels, strict=True)):
            line = Text(no_wrap=True, overflow="ellipsis")
            line.append("› " if index == self.selected else "  ", style="bold")
            line.append(f"{index + 1} ")
            line.append("◆ " if index == self.baseline else "■ ", style=self.run_palette[index])
            line.append(printable(label, keep_newlines=False), style=self.run_palette[index])
            line.append(f"  {printable(run.status or '…', keep_newlines=False)}", "dim")
            points = losses[index]
            if points[0].size:
                line.append(f"  loss {format_value(float(points[1][-1]))}")
            if index == self.baseline:
                line.append("  baseline", style="bold")
            elif self.baseline is not None:
                change = relative_change(points, losses[self.baseline])
                if change is not None:
                    x, value, percent = change
                    at = f"step {x:.0f}" if self.x_axis == "step" else f"{x:.0f} s"
                    style = "green" if percent < 0 else "red" if percent > 0 else ""
                    line.append(f"  {percent:+.1f}% vs baseline", style=style)
                    line.append(f" at {at}", style="dim")
                    if x < float(points[0][-1]):  # the baseline is shorter: read earlier
                        line.append(f" (loss there {format_value(value)})", style="dim")
            lines.append(line)
        return Text("\n").join(lines)

    def curves_by_run(self, scalar: str) -> list[OverlayCurve]:
        """`scalar` of each run in run order, an empty curve where a run lacks it."""
        empty = np.empty(0)
        by_run = []
        for index, run in enumerate(self.runs):
            columns = run.columns.get(scalar)
            if columns is None:
                by_run.append(OverlayCurve("", self.run_palette[index], empty, empty))
                continue
            xs = columns[0] if self.x_axis == "step" else columns[1]
            by_run.append(OverlayCurve("", self.run_palette[index], xs, columns[2]))
        return by_run

    # -- keys ---------------------------------------------------------------------------

    def action_next_run(self) -> None:
        self.selected = (self.selected + 1) % max(1, len(self.runs))
        self.redraw()

    def action_select_run(self, index: int) -> None:
        if 0 <= index < len(self.runs):
            self.selected = index
            self.redraw()

    def action_pin_baseline(self) -> None:
        """Pin the selected run as the baseline; pinning the baseline again unpins it."""
        self.baseline = None if self.baseline == self.selected else self.selected
        self.redraw()

    def action_cycle_x(self) -> None:
        self.x_axis = X_AXES[(X_AXES.index(self.x_axis) + 1) % len(X_AXES)]
        self.redraw()

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y
        self.redraw()

    def action_cycle_smoothing(self) -> None:
        at = SMOOTHING.index(self.smoothing) if self.smoothing in SMOOTHING else 0
        self.smoothing = SMOOTHING[(at + 1) % len(SMOOTHING)]
        self.redraw()

    def action_next_metric(self) -> None:
        names = self.metric_names()
        if names:
            current = self.validation_metric()
            at = names.index(current) if current in names else -1
            self.metric = names[(at + 1) % len(names)]
            self.redraw()

    def action_config_diff(self) -> None:
        configs = [
            (label, run_config(run.start))
            for run, label in zip(self.runs, self.labels, strict=True)
        ]
        self.app.push_screen(ConfigDiffScreen(configs, self.run_palette))

    def action_all_metrics(self) -> None:
        from tuimon.ui.screens.metrics_screen import MetricsScreen  # when asked for

        self.app.push_screen(MetricsScreen(self.run_dirs))

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(COMPARE_KEYS, "compare · keys · Esc closes"))

    def action_close(self) -> None:
        self.dismiss(None)


class ConfigDiffScreen(ModalScreen[None]):
    """The runs' configs side by side: a column per run headed by its name in its
    colour, a row per key that differs (`a`: every key)."""

    DEFAULT_CSS = """
    ConfigDiffScreen { align: center middle; }
    ConfigDiffScreen #diff-box {
        width: 90%; height: 85%; border: round $primary; background: $surface; padding: 0 1;
    }
    ConfigDiffScreen #diff-table { height: 1fr; }
    """
    BINDINGS = [
        Binding("a", "toggle_all", "All keys"),
        Binding("escape,q", "dismiss(None)", "Close"),
    ]

    def __init__(self, configs: list[tuple[str, dict[str, Any]]], palette: list[str]) -> None:
        super().__init__()
        self.configs = configs
        self.run_palette = palette
        self.every_key = False

    def compose(self) -> ComposeResult:
        with Vertical(id="diff-box"):
            yield Static(Text(""), id="diff-title", classes="dialog-title")
            yield DataTable(id="diff-table", zebra_stripes=True, cursor_type="row")
            yield Static(Text("a: all keys / differences · Esc closes"), classes="dialog-hint")

    def on_mount(self) -> None:
        self.fill()
        self.query_one(DataTable).focus()

    def rows(self) -> list[list[str]]:
        """The table's cells as shown: key, then each run's value (tests read it)."""
        table = self.query_one(DataTable)
        return [
            [cell.plain if isinstance(cell, Text) else str(cell) for cell in table.get_row_at(i)]
            for i in range(table.row_count)
        ]

    def fill(self) -> None:
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_column(Text("key", style="bold"), key="key")
        for index, (name, _) in enumerate(self.configs):
            header = Text(
                printable(name, keep_newlines=False), style=f"bold {self.run_palette[index]}"
            )
            table.add_column(header, key=f"run-{index}")
        diff = config_diff(self.configs, every_key=self.every_key)
        for row in diff:
            style = "" if row.differs else "dim"
            cells = [Text(printable(row.key, keep_newlines=False), style=style)]
            for value in row.values:
                shown = printable(value, keep_newlines=False)
                cells.append(Text(shown, style="dim" if value == ABSENT else style))
            table.add_row(*cells)
        if not self.configs or not any(config for _, config in self.configs):
            what = "no config recorded yet (the logs are still being read?)"
        elif self.every_key:
            what = f"every key ({len(diff)})"
        else:
            differ = "1 key differs" if len(diff) == 1 else f"{len(diff)} keys differ"
            what = differ if diff else "the configs are identical"
        self.query_one("#diff-title", Static).update(Text(f"Config diff · {what}"))

    def action_toggle_all(self) -> None:
        self.every_key = not self.every_key
        self.fill()
