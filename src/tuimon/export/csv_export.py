"""A run as CSV: one row per step, every scalar a column, metrics on their step's row.

The header must name every column before the first row, so the log is read twice, each time
as a stream: once for the column names (`scan_columns`), once to write the rows (`CsvRows`).
Columns: `step`, `epoch`, `time` (Unix seconds), `elapsed` (seconds since the run's start),
then every scalar in the order it first appeared, named as `run/scalars.py` names it (`loss`,
`lr`, `lr/1`, `layer_grad_norms/fc1`, `val_loss`, `bleu`, `metrics/loss` for a metric named
like a step field). A scalar named like one of the export's own columns (only `elapsed` can
be) is kept apart as `metrics/elapsed` (a metric) or `step/elapsed` (a step's extra). Values
are `repr(float)`: exact when read back with `float()`, NaN and the infinities as `nan`,
`inf`, `-inf`; an empty cell is a scalar that step did not have.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import BinaryIO, Final

from tuimon.export.scalar_stream import ScalarEvent, ScalarStream
from tuimon.export.step_rows import StepRow, StepRows
from tuimon.run.scalars import METRIC_PREFIX

STEP_COLUMN: Final = "step"
EPOCH_COLUMN: Final = "epoch"
TIME_COLUMN: Final = "time"
ELAPSED_COLUMN: Final = "elapsed"
ROW_COLUMNS: Final = (STEP_COLUMN, EPOCH_COLUMN, TIME_COLUMN, ELAPSED_COLUMN)
STEP_PREFIX: Final = "step/"
MAX_COLUMNS = 4096  # scalar columns at most: a bound a damaged or hostile log cannot pass
ELAPSED_DECIMALS = 6


def csv_scalars(event: ScalarEvent) -> dict[str, float]:
    """The event's scalars under their column names."""
    scalars = event.scalars
    if ELAPSED_COLUMN in scalars:
        scalars = dict(scalars)
        value = scalars.pop(ELAPSED_COLUMN)
        scalars[(STEP_PREFIX if event.is_step else METRIC_PREFIX) + ELAPSED_COLUMN] = value
    return scalars


class ColumnScan:
    """The first pass: every scalar column in first-seen order (at most MAX_COLUMNS;
    `over_limit` says some were left out), and how far the log was read."""

    def __init__(self) -> None:
        self.columns: dict[str, None] = {}
        self.over_limit = False

    def add(self, event: ScalarEvent) -> None:
        columns = self.columns
        for name in csv_scalars(event):
            if name not in columns:
                if len(columns) >= MAX_COLUMNS:
                    self.over_limit = True
                    continue
                columns[name] = None


class CsvRows:
    """The second pass's writer: rows to `file` (UTF-8, `\\n` line ends) as events come.

    `clean` is applied to the header's names (the command makes them printable when the
    CSV goes to a terminal: a name is text a script chose)."""

    def __init__(
        self,
        file: BinaryIO,
        columns: list[str],
        t0: float | None,
        clean: Callable[[str], str] = str,
    ) -> None:
        self._text = io.TextIOWrapper(
            file, encoding="utf-8", errors="backslashreplace", newline="", write_through=False
        )
        self._writer = csv.writer(self._text, lineterminator="\n")
        self._writer.writerow([clean(name) for name in (*ROW_COLUMNS, *columns)])
        self._index = {name: at for at, name in enumerate(columns, start=len(ROW_COLUMNS))}
        self._width = len(ROW_COLUMNS) + len(columns)
        self._t0 = t0
        self._rows = StepRows()
        self.rows = 0

    def add(self, event: ScalarEvent) -> None:
        done = self._rows.add(event, csv_scalars(event))
        if done:
            self._write(done)

    def finish(self) -> None:
        """Write the rows still waiting and hand the file back (not closed)."""
        self._write(self._rows.finish())
        self._text.flush()
        self._text.detach()

    def _write(self, rows: list[StepRow]) -> None:
        index, width, t0 = self._index, self._width, self._t0
        for row in rows:
            cells = [""] * width
            cells[0] = str(row.step)
            if row.epoch is not None:
                cells[1] = repr(row.epoch)
            if row.time is not None:
                cells[2] = repr(row.time)
                if t0 is not None:
                    cells[3] = repr(round(row.time - t0, ELAPSED_DECIMALS))
            for name, value in row.values.items():
                at = index.get(name)
                if at is not None:
                    cells[at] = repr(value)
            self._writer.writerow(cells)
        self.rows += len(rows)


def scan_columns(stream: ScalarStream, progress: Callable[[int], None]) -> ColumnScan:
    """Pass 1 over `stream`."""
    scan = ColumnScan()
    for count, event in enumerate(stream):
        scan.add(event)
        if not count & 0x3FF:
            progress(stream.offset)
    progress(stream.offset)
    return scan
