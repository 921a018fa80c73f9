"""The runs screen's table: one line per run, updated in place as the catalog refreshes.

A line-based widget (Textual's line API), not a DataTable: a DataTable re-renders every
visible cell when any cell changes (its caches are keyed by an update count), which on
a screen of live runs is every refresh. Here each row is one cached line, rebuilt only
when what it shows changed (runs_view.row_key), so a refresh costs in proportion to the
runs that moved. Rows are reordered only when the set or the order of the runs changed,
and then the cursor goes back to the run it was on (not to the row number), so a new run
appearing above does not move the user's choice.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.events import Click
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tuimon.catalog.run_summary import RunSummary
from tuimon.ui.runs_view import COLUMNS, row_cells, row_key

GAP = 2  # spaces between columns
HEADER_STYLE = Style(bold=True)
CURSOR_STYLE = Style(reverse=True)
CURSOR_BLURRED = Style(underline=True)


class RunsTable(ScrollView, can_focus=True):
    BINDINGS = [
        Binding("up", "cursor(-1)", show=False),
        Binding("down", "cursor(1)", show=False),
        Binding("pageup", "page(-1)", show=False),
        Binding("pagedown", "page(1)", show=False),
        Binding("home", "cursor_to(0)", show=False),
        Binding("end", "cursor_to(-1)", show=False),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_dirs: list[Path] = []  # the rows, in order
        self.cursor_row = 0
        self.rebuilds = 0  # how many times the rows were reordered (tests check in-place updates)
        self._cells: dict[Path, tuple[Text, ...]] = {}
        self._keys: dict[Path, tuple[Any, ...]] = {}  # what each row's cells were made from
        self._widths: list[int] = [len(label) for _, label in COLUMNS]
        self._strips: dict[tuple[Path, bool], Strip] = {}  # a row's line, by (run, cursor)
        self._header: Strip | None = None

    # -- what the table holds ---------------------------------------------------------------

    @property
    def selected(self) -> Path | None:
        """The run under the cursor."""
        if 0 <= self.cursor_row < len(self.run_dirs):
            return self.run_dirs[self.cursor_row]
        return None

    def show(
        self,
        runs: Sequence[RunSummary],
        marked: Collection[Path],
        cursor: Path | None = None,
    ) -> None:
        """Make the table hold `runs` in this order; the cursor stays on its run (or goes
        to `cursor` when given)."""
        now = time.time()
        today = time.localtime(now).tm_yday
        keep = cursor if cursor is not None else self.selected
        wanted = [run.run_dir for run in runs]
        keys: dict[Path, tuple[Any, ...]] = {}
        cells: dict[Path, tuple[Text, ...]] = {}
        changed: set[Path] = set()
        for run in runs:
            is_marked = run.run_dir in marked
            key = keys[run.run_dir] = row_key(run, is_marked, today)
            kept = self._cells.get(run.run_dir)
            if kept is not None and self._keys.get(run.run_dir) == key:
                cells[run.run_dir] = kept  # nothing it shows has changed
            else:
                cells[run.run_dir] = row_cells(run, is_marked, now)
                changed.add(run.run_dir)
        self._keys, self._cells = keys, cells
        widths = [len(label) for _, label in COLUMNS]
        for row in cells.values():
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], cell.cell_len)
        if widths != self._widths:
            self._widths = widths
            self._strips.clear()  # every line is laid out anew
            self._header = None
            changed = set(wanted)
        else:
            for run_dir in changed:
                self._strips.pop((run_dir, False), None)
                self._strips.pop((run_dir, True), None)
        reordered = wanted != self.run_dirs
        if reordered:
            self.rebuilds += 1
            self.run_dirs = wanted
        width = sum(widths) + GAP * len(widths)
        self.virtual_size = Size(width, len(wanted) + 1)  # the header, then a line a run
        if keep is not None and keep in wanted:
            self.cursor_row = wanted.index(keep)
        self.cursor_row = max(0, min(self.cursor_row, len(wanted) - 1))
        if reordered or len(changed) > len(wanted) // 2:
            self.refresh()
        else:
            for run_dir in changed:
                self.refresh_lines(wanted.index(run_dir) + 1)
        self._scroll_to_cursor()

    def row_plain(self, run_dir: Path) -> list[str]:
        """A row's cells as plain text, as the table holds them (tests)."""
        return [cell.plain for cell in self._cells.get(run_dir, ())]

    # -- the cursor ---------------------------------------------------------------------

    def move_cursor(self, *, row: int) -> None:
        self._set_cursor(row)

    def action_cursor(self, delta: int) -> None:
        self._set_cursor(self.cursor_row + delta)

    def action_page(self, direction: int) -> None:
        self._set_cursor(self.cursor_row + direction * max(1, self.size.height - 2))

    def action_cursor_to(self, row: int) -> None:
        self._set_cursor(row if row >= 0 else len(self.run_dirs) - 1)

    def _set_cursor(self, row: int) -> None:
        row = max(0, min(row, len(self.run_dirs) - 1))
        if row == self.cursor_row:
            return
        before, self.cursor_row = self.cursor_row, row
        self.refresh_lines(before + 1)
        self.refresh_lines(row + 1)
        self._scroll_to_cursor()

    def _scroll_to_cursor(self) -> None:
        rows = max(1, self.size.height - 1)  # below the header
        top = int(self.scroll_offset.y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False)
        elif self.cursor_row >= top + rows:
            self.scroll_to(y=self.cursor_row - rows + 1, animate=False)

    def on_click(self, event: Click) -> None:
        if event.y >= 1:
            self._set_cursor(int(self.scroll_offset.y) + event.y - 1)

    def on_focus(self) -> None:
        self._cursor_style_changed()

    def on_blur(self) -> None:
        self._cursor_style_changed()

    def _cursor_style_changed(self) -> None:
        """The cursor is drawn reversed while the table has focus, underlined without."""
        for run_dir in self.run_dirs:
            self._strips.pop((run_dir, True), None)
        self.refresh_lines(self.cursor_row + 1)

    # -- drawing ------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self.rich_style
        if y == 0:  # the header stays at the top
            strip = self._header_strip()
        else:
            row = int(scroll_y) + y - 1
            if row >= len(self.run_dirs):
                return Strip.blank(width, base)
            strip = self._row_strip(self.run_dirs[row], row == self.cursor_row)
        return strip.crop_extend(int(scroll_x), int(scroll_x) + width, base)

    def _line(self, cells: Sequence[Text]) -> Text:
        line = Text(no_wrap=True, end="")
        for cell, width in zip(cells, self._widths, strict=False):
            line.append_text(cell)
            line.append(" " * (width - cell.cell_len + GAP))
        return line

    def _header_strip(self) -> Strip:
        if self._header is None:
            header = self._line([Text(label) for _, label in COLUMNS])
            header.stylize(HEADER_STYLE)
            self._header = self._strip(header)
        return self._header

    def _row_strip(self, run_dir: Path, on_cursor: bool) -> Strip:
        strip = self._strips.get((run_dir, on_cursor))
        if strip is None:
            line = self._line(self._cells.get(run_dir, ()))
            if on_cursor:
                line.stylize(CURSOR_STYLE if self.has_focus else CURSOR_BLURRED)
            strip = self._strips[(run_dir, on_cursor)] = self._strip(line)
        return strip

    def _strip(self, line: Text) -> Strip:
        segments = [s for s in line.render(self.app.console) if not s.control]
        return Strip([Segment(s.text, s.style) for s in segments], line.cell_len)
