"""The runs screen's table: one row per run, updated in place as the catalog refreshes.

A refresh changes only the cells whose text changed; rows are rebuilt only when the set
or the order of the runs changed, and then the cursor goes back to the run it was on
(not to the row number), so a new run appearing above does not move the user's choice.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from tuimon.catalog.run_summary import RunSummary
from tuimon.ui.runs_view import COLUMNS, row_cells, row_key


class RunsTable(DataTable[Text]):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self.run_dirs: list[Path] = []  # the rows, in order
        self._cells: dict[Path, tuple[Text, ...]] = {}
        self._keys: dict[Path, tuple[Any, ...]] = {}  # what each row's cells were made from
        self.rebuilds = 0  # how many times the rows were rebuilt (tests check in-place updates)

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

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
        for run in runs:
            is_marked = run.run_dir in marked
            key = keys[run.run_dir] = row_key(run, is_marked, today)
            kept = self._cells.get(run.run_dir)
            if kept is not None and self._keys.get(run.run_dir) == key:
                cells[run.run_dir] = kept  # nothing it shows has changed
            else:
                cells[run.run_dir] = row_cells(run, is_marked, now)
        self._keys = keys
        if wanted != self.run_dirs:
            self._rebuild(wanted, cells)
        else:
            for run_dir in wanted:
                before = self._cells.get(run_dir)
                if before is cells[run_dir]:
                    continue
                for (column, _), cell, old in zip(
                    COLUMNS, cells[run_dir], before or (), strict=False
                ):
                    if cell != old:
                        self.update_cell(str(run_dir), column, cell)
            self._cells = cells
        if keep is not None and keep in self.run_dirs:
            row = self.run_dirs.index(keep)
            if row != self.cursor_row:
                self.move_cursor(row=row, animate=False)

    def _rebuild(self, wanted: list[Path], cells: dict[Path, tuple[Text, ...]]) -> None:
        self.rebuilds += 1
        self.clear(columns=False)
        for run_dir in wanted:
            self.add_row(*cells[run_dir], key=str(run_dir))
        self.run_dirs = wanted
        self._cells = cells

    def row_plain(self, run_dir: Path) -> list[str]:
        """A row's cells as plain text, as the table holds them (tests)."""
        return [cell.plain for cell in self._cells.get(run_dir, ())]
