"""Two lines under the status bar for a distributed job: how its ranks keep up.

The first line sums the job up (ranks, the spread of their steps, the slowest rank, the
laggards by name and host); the second has one cell per rank (its rate and last step), in
rank order when they all fit, else the laggards first and a count of the rest, so 64 or
4096 ranks still take two lines. A dead, failed, silent or stuck rank's cell says so in
capitals on red; a slow or lagging one is yellow. Absent for a single-process run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from rich.console import RenderableType
from rich.text import Text

from tuimon.run.events import ERROR, RankSummary
from tuimon.run.run_state import RunState
from tuimon.terminal_text import printable
from tuimon.ui.plotting import ViewOptions
from tuimon.ui.rank_laggards import (
    DEAD,
    DEFAULT_LIMITS,
    FAILED_RANK,
    NONFINITE,
    REASONS,
    SILENT,
    STUCK,
    Laggard,
    LaggardLimits,
    find_laggards,
    limits_for,
    rank_rate,
    slowest,
)
from tuimon.ui.widgets.lines import fit
from tuimon.ui.widgets.panel import Panel

BLOCKING_STYLE: Final = "bold white on red"
WARNING_STYLE: Final = "bold black on yellow"
OK_STYLE: Final = "green"
NAMED_LAGGARDS: Final = 3  # laggards named on the first line; the rest are counted
GAP: Final = "  "
EVEN_RATES: Final = 0.95  # a slowest rank is named when its rate is below this share of the top
# What a blocking laggard's cell says in place of its rate.
TAGS: Final = {
    DEAD: "DEAD",
    FAILED_RANK: "FAILED",
    NONFINITE: "NaN",
    SILENT: "SILENT",
    STUCK: "STUCK",
}


class RankStrip(Panel):
    """The job's ranks at a glance (shown by the app only when world_size > 1)."""

    def signature(self, state: RunState, options: ViewOptions) -> Any:
        return state.ranks_version, state.world_size

    def is_stale(self, state: RunState, options: ViewOptions) -> bool:
        """A single-process run has no strip to draw (it is hidden, with no size)."""
        return state.world_size > 1 and super().is_stale(state, options)

    def view(
        self, state: RunState, options: ViewOptions, width: int, height: int
    ) -> RenderableType:
        limits = limits_for((state.start or {}).get("settings"))
        return fit(strip_lines(state.ranks, state.world_size, width, limits), width, height)


def strip_lines(
    ranks: Sequence[RankSummary],
    world_size: int,
    width: int,
    limits: LaggardLimits = DEFAULT_LIMITS,
) -> list[Text]:
    """The strip's two lines for these ranks, the second fitted to `width` cells."""
    laggards = find_laggards(ranks, limits)
    return [_summary(ranks, world_size, laggards), _cells(ranks, laggards, width)]


def _summary(ranks: Sequence[RankSummary], world_size: int, laggards: dict[int, Laggard]) -> Text:
    line = Text(no_wrap=True)
    line.append(f"{world_size} ranks", style="bold")
    if len(ranks) < world_size:
        line.append(f" ({len(ranks)} known)", style="yellow")
    steps = [r["step"] for r in ranks if r.get("step") is not None]
    if steps:
        low, high = min(steps), max(steps)
        line.append(f" · step {low}" if low == high else f" · steps {low}–{high}")
    rates = [rate for r in ranks if (rate := rank_rate(r)[0]) is not None]
    slow = slowest(ranks)
    if slow is not None:
        rate, unit = rank_rate(slow)
        if rate is not None and rate < EVEN_RATES * max(rates):
            line.append(f" · slowest r{slow['rank']} {_number(rate)} {unit}")
        else:
            line.append(f" · {_number(rate)} {unit} each" if len(rates) > 1 else "")
    if not laggards:
        if ranks:
            line.append(" · all ranks keep up", style=OK_STYLE)
        return line
    ordered = _worst_first(laggards)
    line.append(" · ")
    for index, laggard in enumerate(ordered[:NAMED_LAGGARDS]):
        if index:
            line.append(", ")
        summary = next((r for r in ranks if r["rank"] == laggard.rank), None)
        host = (summary or {}).get("host")
        where = f"r{laggard.rank}" + (f" ({printable(host, keep_newlines=False)})" if host else "")
        style = BLOCKING_STYLE if laggard.severity == ERROR else WARNING_STYLE
        line.append(f"{where} {printable(laggard.words, keep_newlines=False)}", style=style)
    if len(ordered) > NAMED_LAGGARDS:
        line.append(f", +{len(ordered) - NAMED_LAGGARDS} more laggards")
    return line


def _cells(ranks: Sequence[RankSummary], laggards: dict[int, Laggard], width: int) -> Text:
    """One cell per rank: every rank in order when they fit, else the laggards first."""
    cells = {r["rank"]: _cell(r, laggards.get(r["rank"])) for r in ranks}
    total = sum(cell.cell_len for cell in cells.values()) + len(GAP) * (len(cells) - 1)
    if total <= width:
        order = list(cells)
    else:
        first = [laggard.rank for laggard in _worst_first(laggards)]
        order = first + [rank for rank in cells if rank not in laggards]
    line = Text(no_wrap=True)
    for index, rank in enumerate(order):
        cell = cells[rank]
        left = len(order) - index
        more = f"{GAP}+{left - 1} more" if left > 1 else ""
        needed = (len(GAP) if index else 0) + cell.cell_len
        if line.cell_len + needed + len(more) > width and index:
            line.append(f"{GAP}+{left} more", style="dim")
            break
        if index:
            line.append(GAP)
        line.append_text(cell)
    return line


def _cell(summary: RankSummary, laggard: Laggard | None) -> Text:
    step = summary.get("step")
    at = f" @{step}" if step is not None else ""
    rank = summary["rank"]
    if laggard is not None and laggard.severity == ERROR:
        tag = TAGS.get(laggard.reasons[0], laggard.reasons[0].upper())
        return Text(f"r{rank} {tag}{at}", style=BLOCKING_STYLE)
    rate, unit = rank_rate(summary)
    shown = f" {_number(rate)}{'/s' if unit == 'samples/s' else 'it/s'}" if rate else ""
    if laggard is not None:
        return Text(f"r{rank}!{shown}{at}", style=WARNING_STYLE)
    return Text(f"r{rank}{shown}{at}")


def _worst_first(laggards: dict[int, Laggard]) -> list[Laggard]:
    """Blocking ones first, by their worst reason (a dead rank before the ranks that
    failed waiting for it), then by rank."""
    return sorted(
        laggards.values(),
        key=lambda g: (g.severity != ERROR, REASONS.index(g.reasons[0]), g.rank),
    )


def _number(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"
