"""`R`: every rank of a distributed job in a table, laggards marked, redrawn when it changes.

One row per rank: who it is (rank, node, host, pid, device), how far it got (step, status,
and why it is a laggard), how fast (step time, data time, samples/s), its memory, its
latest non-finite step, and how long ago rank 0 heard from it. The app's timer calls
`refresh_view`; the table is rebuilt only when the ranks changed (a `ranks` event, or a
replay's rank logs read). Every cell is plain text (terminal-safe, never markup): hosts
and errors come from the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from tuimon.number_text import MISSING, format_duration, human_bytes
from tuimon.run.events import ERROR, RankSummary
from tuimon.run.run_state import RunState
from tuimon.terminal_text import printable
from tuimon.ui.rank_laggards import (
    DEFAULT_LIMITS,
    Laggard,
    LaggardLimits,
    find_laggards,
    limits_for,
    seconds_text,
)
from tuimon.ui.widgets.rank_strip import BLOCKING_STYLE, TAGS, WARNING_STYLE

COLUMNS: Final = (
    "rank",
    "node",
    "host",
    "pid",
    "device",
    "step",
    "status",
    "step time",
    "data time",
    "samples/s",
    "memory",
    "last NaN/inf",
    "heard",
    "laggard",  # why, in words: last, as it is the widest
)
CELL_TEXT: Final = 60  # characters of a text cell (a host, a laggard's words) shown


class RankScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q", "dismiss", "Close")]

    def __init__(self, state: RunState) -> None:
        super().__init__()
        self.state = state
        self._drawn: Any = None
        self.draws = 0  # how many times the table was rebuilt (tests check the caching)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="wide"):
            yield Static("", id="rank-title", classes="dialog-title")
            yield DataTable(id="rank-table", cursor_type="row", zebra_stripes=True)
            yield Static("Esc closes · ↑/↓ PgUp/PgDn scroll", classes="dialog-hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.refresh_view(self.state)
        table.focus()

    def refresh_view(self, state: RunState) -> bool:
        """Rebuild the table if the ranks changed (or the state was replaced); True if so.
        Nothing before the screen is mounted (the app's timer may tick in between)."""
        if not self.is_mounted:
            return False
        with state.lock:
            key = (id(state), state.ranks_version, state.world_size)
            if key == self._drawn:
                return False
            limits = limits_for((state.start or {}).get("settings"))
            rows = rank_rows(state.ranks, limits)
            title = f"Ranks of {state.name} · world size {state.world_size}"
        self.state = state
        self._drawn = key
        self.draws += 1
        self.query_one("#rank-title", Static).update(Text(printable(title, keep_newlines=False)))
        table = self.query_one(DataTable)
        cursor, scroll = table.cursor_row, table.scroll_y
        table.clear()
        for rank, cells in rows:
            table.add_row(*cells, key=str(rank))
        if rows:
            table.move_cursor(row=min(cursor, len(rows) - 1), scroll=False)
            table.scroll_to(y=scroll, animate=False)
        return True


def rank_rows(
    ranks: Sequence[RankSummary], limits: LaggardLimits = DEFAULT_LIMITS
) -> list[tuple[int, tuple[Text, ...]]]:
    """(rank, its cells) for every rank, laggards' status cells styled and worded."""
    laggards = find_laggards(ranks, limits)
    return [(r["rank"], _cells(r, laggards.get(r["rank"]))) for r in ranks]


def _cells(summary: RankSummary, laggard: Laggard | None) -> tuple[Text, ...]:
    status: str = summary.get("status", MISSING)
    style, why = "", ""
    if laggard is not None:
        why = laggard.words
        if laggard.severity == ERROR:  # the status a stalled or dead rank cannot report
            status, style = TAGS.get(laggard.reasons[0], status), BLOCKING_STYLE
        else:
            style = WARNING_STYLE
    age = summary.get("age")
    values = (
        summary["rank"],
        summary.get("node"),
        summary.get("host"),
        summary.get("pid"),
        summary.get("device"),
        summary.get("step"),
        None,  # the status, styled below
        _seconds(summary.get("step_time")),
        _seconds(summary.get("data_time")),
        _rate(summary.get("samples_per_s")),
        human_bytes(summary["memory"]) if summary.get("memory") is not None else None,
        summary.get("nonfinite_step"),
        f"{format_duration(age)} ago" if age is not None else None,
        why,
    )
    cells = [_text(value) for value in values]
    cells[COLUMNS.index("status")] = _text(status, style)
    cells[-1].stylize(style)
    return tuple(cells)


def _text(value: object, style: str = "") -> Text:
    shown = MISSING if value is None else printable(value, keep_newlines=False)
    if len(shown) > CELL_TEXT:
        shown = shown[: CELL_TEXT - 1] + "…"
    return Text(shown, style=style, no_wrap=True)


def _seconds(value: float | None) -> str | None:
    return None if value is None else seconds_text(value)


def _rate(value: float | None) -> str | None:
    return None if value is None else f"{value:.0f}" if value >= 100 else f"{value:.3g}"
