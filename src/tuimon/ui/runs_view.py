"""What the runs screen shows, without Textual: each run's row as text, the filter, the sort.

Pure functions of the catalog's `RunSummary`s, so they are tested without an app, and the
screen only puts their output in a table. Text from a log (a run's name, an alert's rule)
goes through `printable` and into `Text` objects: never markup, never escape codes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text

from tuimon.catalog.run_summary import DIED, UNKNOWN, RunSummary
from tuimon.number_text import MISSING, format_duration, format_value, human_bytes
from tuimon.run.events import (
    COMPLETED,
    ERROR,
    FAILED,
    INFO,
    PAUSED,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    WARNING,
)
from tuimon.terminal_text import printable
from tuimon.ui.run_colors import run_color

STATUS_STYLES: dict[str, str] = {
    RUNNING: "bold green",
    STARTING: "green",
    PAUSED: "bold yellow",
    STOPPING: "yellow",
    COMPLETED: "blue",
    STOPPED: "cyan",
    FAILED: "bold red",
    DIED: "bold magenta",
    UNKNOWN: "dim",
}
# The "state" sort: runs that need a look first (alive, then those that ended badly).
STATUS_ORDER: tuple[str, ...] = (
    RUNNING,
    PAUSED,
    STARTING,
    STOPPING,
    DIED,
    FAILED,
    STOPPED,
    COMPLETED,
    UNKNOWN,
)
SEVERITY_STYLES = {ERROR: "bold red", WARNING: "yellow", INFO: "dim"}
SEVERITY_MARKS = {ERROR: "✖", WARNING: "⚠", INFO: "ℹ"}

# What the runs screen exits with (and the launcher then opens): the run's own UI on a
# live worker, or its log read back.
OPEN_ATTACH = "attach"
OPEN_REPLAY = "replay"

# The sorts `o` cycles through, in order: (id, what the screen calls it).
SORT_STARTED = "started"
SORT_NAME = "name"
SORT_STATE = "state"
SORT_LOSS = "loss"
SORT_STEP = "step"
SORTS: tuple[str, ...] = (SORT_STARTED, SORT_NAME, SORT_STATE, SORT_LOSS, SORT_STEP)
SORT_TITLES = {
    SORT_STARTED: "newest first",
    SORT_NAME: "by name",
    SORT_STATE: "by state (live and failed first)",
    SORT_LOSS: "by last loss (lowest first)",
    SORT_STEP: "by step (furthest first)",
}

TREND_FLAT = 0.02  # a relative change of the mean loss below this reads as flat
STATE_PREFIX = "state:"

# (column key, header): the table's columns, in order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("mark", " "),
    ("run", "run"),
    ("state", "state"),
    ("step", "step"),
    ("loss", "loss"),
    ("alert", "worst alert"),
    ("gpu", "GPU (memory)"),
    ("started", "started"),
    ("duration", "duration"),
)
NAME_WIDTH = 32  # a longer run name is cut in the middle of its row
ALERT_WIDTH = 28


@dataclass
class RunsViewState:
    """What the user chose on the runs screen, kept while a run's own UI is open so the
    screen comes back as it was left."""

    filter_text: str = ""
    sort: str = SORT_STARTED
    cursor: Path | None = None  # the run under the cursor
    marked: list[Path] = field(default_factory=list)  # selected for compare, in order


def next_sort(sort: str) -> str:
    """The sort after `sort` in the cycle (`o`)."""
    index = SORTS.index(sort) if sort in SORTS else -1
    return SORTS[(index + 1) % len(SORTS)]


def _started_key(run: RunSummary) -> float:
    return -(run.started if run.started is not None else -math.inf)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def sort_runs(runs: Sequence[RunSummary], sort: str) -> list[RunSummary]:
    """The runs in the order of `sort`; ties (and missing values, put last) by newest."""
    newest = sorted(runs, key=_started_key)
    if sort == SORT_NAME:
        return sorted(newest, key=lambda r: r.name.casefold())
    if sort == SORT_STATE:
        order = {status: i for i, status in enumerate(STATUS_ORDER)}
        return sorted(newest, key=lambda r: order.get(r.status, len(order)))
    if sort == SORT_LOSS:
        return sorted(
            newest,
            key=lambda r: (0, r.loss) if r.loss is not None and _finite(r.loss) else (1, 0.0),
        )
    if sort == SORT_STEP:
        return sorted(newest, key=lambda r: -(r.step if r.step is not None else -1))
    return newest


@dataclass(frozen=True)
class RunFilter:
    """`/`: words that must all be in the run's name, and `state:S` terms, one of which
    its state must start with (`state:fail`, `state:died state:failed`). Case-blind."""

    words: tuple[str, ...] = ()
    states: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> RunFilter:
        words: list[str] = []
        states: list[str] = []
        for term in text.casefold().split():
            if term.startswith(STATE_PREFIX):
                if term[len(STATE_PREFIX) :]:
                    states.append(term[len(STATE_PREFIX) :])
            else:
                words.append(term)
        return cls(tuple(words), tuple(states))

    def __bool__(self) -> bool:
        return bool(self.words or self.states)

    def matches(self, run: RunSummary) -> bool:
        name = f"{run.name} {run.run_dir.name}".casefold()
        if not all(word in name for word in self.words):
            return False
        return not self.states or any(run.status.startswith(s) for s in self.states)


def visible_runs(runs: Sequence[RunSummary], filter_text: str, sort: str) -> list[RunSummary]:
    """The rows of the table: the runs the filter lets through, in the sort's order."""
    run_filter = RunFilter.parse(filter_text)
    return sort_runs([r for r in runs if run_filter.matches(r)], sort)


def trend_arrow(trend: float | None) -> Text:
    """↓ green (the loss falls), ↑ red (it rises), → flat; nothing when too few steps."""
    if trend is None or not math.isfinite(trend):
        return Text("")
    if trend <= -TREND_FLAT:
        return Text("↓", style="green")
    if trend >= TREND_FLAT:
        return Text("↑", style="bold red")
    return Text("→", style="dim")


def _clip(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    half = (width - 1) // 2
    return f"{text[:half]}…{text[-(width - 1 - half) :]}"


def name_cell(run: RunSummary) -> Text:
    cell = Text(no_wrap=True)
    cell.append("● ", style=run_color(run.run_dir))
    cell.append(_clip(printable(run.name, keep_newlines=False), NAME_WIDTH))
    return cell


def status_cell(run: RunSummary) -> Text:
    return Text(run.status, style=STATUS_STYLES.get(run.status, ""))


def step_cell(run: RunSummary) -> Text:
    if run.step is None:
        return Text(MISSING, style="dim")
    if run.total_steps:
        return Text(f"{run.step}/{run.total_steps}")
    return Text(str(run.step))


def loss_cell(run: RunSummary) -> Text:
    if run.loss is None:
        return Text(MISSING, style="dim")
    cell = Text(format_value(run.loss), style="" if math.isfinite(run.loss) else "bold red")
    arrow = trend_arrow(run.loss_trend)
    if arrow:
        cell.append(" ")
        cell.append_text(arrow)
    return cell


def alert_cell(run: RunSummary) -> Text:
    alert: dict[str, Any] | None = run.alert
    if not alert:
        return Text("")
    severity = str(alert.get("severity", WARNING))
    cell = Text(no_wrap=True)
    style = SEVERITY_STYLES.get(severity, "")
    cell.append(f"{SEVERITY_MARKS.get(severity, '!')} ", style=style)
    cell.append(_clip(printable(alert.get("rule", "?"), keep_newlines=False), ALERT_WIDTH), style)
    if run.alerts_open > 1:
        cell.append(f" +{run.alerts_open - 1}", style="dim")
    return cell


def gpu_cell(run: RunSummary) -> Text:
    if not run.gpus:
        return Text(MISSING, style="dim")
    text = ",".join(str(i) for i in run.gpus)
    if run.gpu_mem:
        text += f" ({human_bytes(run.gpu_mem)})"
    return Text(text)


def started_text(started: float | None, now: float) -> str:
    """The start time: hh:mm:ss today, `Mon dd hh:mm` before."""
    if started is None or not math.isfinite(started):
        return MISSING
    local = time.localtime(started)
    if time.strftime("%Y-%m-%d", local) == time.strftime("%Y-%m-%d", time.localtime(now)):
        return time.strftime("%H:%M:%S", local)
    return time.strftime("%b %d %H:%M", local)


def row_cells(run: RunSummary, marked: bool, now: float | None = None) -> tuple[Text, ...]:
    """The table row of one run, in the order of COLUMNS."""
    now = time.time() if now is None else now
    return (
        Text("✓", style="bold") if marked else Text(" "),
        name_cell(run),
        status_cell(run),
        step_cell(run),
        loss_cell(run),
        alert_cell(run),
        gpu_cell(run),
        Text(started_text(run.started, now)),
        Text(format_duration(run.duration) if run.duration is not None else MISSING),
    )


def row_key(run: RunSummary, marked: bool, today: int) -> tuple[Any, ...]:
    """Everything a row's text depends on (`today`: the day of the year, for the start
    time): a refresh rebuilds only the rows whose key changed (a live run's duration moves
    each second; a finished run's row stays as it was)."""
    alert = run.alert or {}
    loss = "nan" if run.loss is not None and math.isnan(run.loss) else run.loss
    duration = format_duration(run.duration) if run.duration is not None else None
    return (
        run.name,
        run.status,
        run.step,
        run.total_steps,
        loss,
        run.loss_trend,
        alert.get("rule"),
        alert.get("severity"),
        run.alerts_open,
        tuple(run.gpus),
        run.gpu_mem,
        run.started,
        duration,
        marked,
        today,
    )


def row_text(run: RunSummary, marked: bool = False, now: float | None = None) -> list[str]:
    """The row as plain strings (tests, `tuimon ls`-like captures)."""
    return [cell.plain for cell in row_cells(run, marked, now)]
