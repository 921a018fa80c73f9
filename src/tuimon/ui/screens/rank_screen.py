"""`R`: every rank of a distributed job in a table, laggards marked, redrawn when it changes.

One row per rank: who it is (rank, node, host, pid, device), how far it got (step,
status), how fast (step time, data time, samples/s), its memory, its latest non-finite
step, how long ago rank 0 heard from it, and why it is a laggard. The app's timer calls
`refresh_view`; the table takes the new ranks only when they changed (a `ranks` event, a
replay's rank logs read).

The table draws only the rows on screen (a job of 4096 ranks costs what 30 rows cost to
draw: Textual's DataTable builds every row, seconds at that size, on the UI thread), with
fixed column widths. Every cell is plain, printable text: hosts and errors come from the
log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, cast

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.geometry import Size
from textual.screen import ModalScreen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static

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

# (title, width, right-aligned): a cell longer than its column is cut with an ellipsis.
COLUMNS: Final = (
    ("rank", 5, True),
    ("node", 4, True),
    ("host", 20, False),
    ("pid", 8, True),
    ("device", 8, False),
    ("step", 9, True),
    ("status", 9, False),
    ("step time", 9, True),
    ("data time", 9, True),
    ("samples/s", 9, True),
    ("memory", 10, True),
    ("NaN/inf", 8, True),
    ("heard", 8, True),
    ("laggard", 60, False),  # why, in words: last, as it is the widest
)
STATUS_COLUMN: Final = 6
GAP: Final = 2
TABLE_WIDTH: Final = sum(width for _, width, _ in COLUMNS) + GAP * (len(COLUMNS) - 1)
_HEADER_STYLE: Final = Style(bold=True, underline=True)


class RankTable(ScrollView, can_focus=True):
    """The ranks, one line each under a header that stays on top; only what is on
    screen is formatted."""

    DEFAULT_CSS = """
    RankTable {
        height: 1fr;
    }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ranks: Sequence[RankSummary] = ()
        self.laggards: dict[int, Laggard] = {}

    def show(self, ranks: Sequence[RankSummary], laggards: dict[int, Laggard]) -> None:
        """These ranks from now on (copies: the state's change under its lock, which
        drawing does not take)."""
        self.ranks = [cast(RankSummary, dict(summary)) for summary in ranks]
        self.laggards = laggards
        self.virtual_size = Size(TABLE_WIDTH, len(ranks) + 1)
        self.refresh()

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        if y == 0:
            header = [title for title, _, _ in COLUMNS]
            line = _strip(header, [_HEADER_STYLE] * len(COLUMNS))
        else:
            index = scroll_y + y - 1
            if index >= len(self.ranks):
                return Strip.blank(width)
            summary = self.ranks[index]
            laggard = self.laggards.get(summary["rank"])
            styles: list[Style | None] = [None] * len(COLUMNS)
            if laggard is not None:  # its status and why
                style = Style.parse(BLOCKING_STYLE if laggard.severity == ERROR else WARNING_STYLE)
                styles[STATUS_COLUMN] = styles[-1] = style
            line = _strip(row_cells(summary, laggard), styles)
        return line.crop_extend(scroll_x, scroll_x + width, None)

    def row_texts(self) -> dict[int, list[str]]:
        """Every row's cells by rank, as shown (tests read the table through this)."""
        return {r["rank"]: row_cells(r, self.laggards.get(r["rank"])) for r in self.ranks}


class RankScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q", "dismiss", "Close")]

    def __init__(self, state: RunState) -> None:
        super().__init__()
        self.state = state
        self._drawn: Any = None
        self.draws = 0  # how many times the table took new ranks (tests check the caching)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="wide"):
            yield Static("", id="rank-title", classes="dialog-title")
            yield RankTable(id="rank-table")
            yield Static("Esc closes · ↑/↓ PgUp/PgDn ←/→ scroll", classes="dialog-hint")

    def on_mount(self) -> None:
        self.refresh_view(self.state)
        self.query_one(RankTable).focus()

    def refresh_view(self, state: RunState) -> bool:
        """Show the ranks anew if they changed (or the state was replaced); True if so.
        Nothing before the screen is mounted (the app's timer may tick in between)."""
        if not self.is_mounted:
            return False
        with state.lock:
            key = (id(state), state.ranks_version, state.world_size)
            if key == self._drawn:
                return False
            limits = limits_for((state.start or {}).get("settings"))
            ranks = state.ranks  # replaced, never changed in place, when ranks change
            laggards = find_laggards(ranks, limits)
            title = f"Ranks of {state.name} · world size {state.world_size}"
            if laggards:
                title += f" · {len(laggards)} laggard{'s' if len(laggards) > 1 else ''}"
        self.state = state
        self._drawn = key
        self.draws += 1
        self.query_one("#rank-title", Static).update(Text(printable(title, keep_newlines=False)))
        self.query_one(RankTable).show(ranks, laggards)
        return True


def rank_rows(
    ranks: Sequence[RankSummary], limits: LaggardLimits = DEFAULT_LIMITS
) -> dict[int, list[str]]:
    """Every rank's cells, as the table shows them, by rank."""
    laggards = find_laggards(ranks, limits)
    return {r["rank"]: row_cells(r, laggards.get(r["rank"])) for r in ranks}


def row_cells(summary: RankSummary, laggard: Laggard | None) -> list[str]:
    """One rank's cells as text (not yet fitted to their columns)."""
    status: str = summary.get("status", MISSING)
    why = ""
    if laggard is not None:
        why = laggard.words
        if laggard.severity == ERROR:  # the status a stalled or dead rank cannot report
            status = TAGS.get(laggard.reasons[0], status)
    age = summary.get("age")
    memory = summary.get("memory")
    values = (
        summary["rank"],
        summary.get("node"),
        summary.get("host"),
        summary.get("pid"),
        summary.get("device"),
        summary.get("step"),
        status,
        _seconds(summary.get("step_time")),
        _seconds(summary.get("data_time")),
        _rate(summary.get("samples_per_s")),
        human_bytes(memory) if memory is not None else None,
        summary.get("nonfinite_step"),
        f"{format_duration(age)} ago" if age is not None else None,
        why,
    )
    return [MISSING if value is None else printable(value, keep_newlines=False) for value in values]


def _strip(cells: list[str], styles: list[Style | None]) -> Strip:
    """A line of cells, each fitted to its column and in its style."""
    segments = []
    for index, (cell, (_, width, right), style) in enumerate(
        zip(cells, COLUMNS, styles, strict=True)
    ):
        if index:
            segments.append(Segment(" " * GAP))
        segments.append(Segment(_fit(cell, width, right), style))
    return Strip(segments, TABLE_WIDTH)


def _fit(text: str, width: int, right: bool) -> str:
    """`text` in exactly `width` cells: cut with an ellipsis, or padded on one side."""
    if cell_len(text) > width:
        return set_cell_size(text, width - 1) + "…"
    padding = " " * (width - cell_len(text))
    return padding + text if right else text + padding


def _seconds(value: float | None) -> str | None:
    return None if value is None else seconds_text(value)


def _rate(value: float | None) -> str | None:
    return None if value is None else f"{value:.0f}" if value >= 100 else f"{value:.3g}"
