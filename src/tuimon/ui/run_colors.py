"""One colour per run, the same in every view and every session: the runs table, compare
plots and their legends all call `run_color`, so a run keeps its colour across screens and
across days (a hash of its directory's name, not the order it was selected in)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

# Distinct on dark and light terminals; plotext and Rich both know these names.
PALETTE: tuple[str, ...] = (
    "cyan",
    "magenta",
    "green",
    "yellow",
    "blue",
    "red",
    "bright_cyan",
    "bright_magenta",
    "bright_green",
    "bright_yellow",
    "bright_blue",
    "bright_red",
)


def run_color(run_dir: str | Path) -> str:
    """The run's own colour, from its directory's name (stable across sessions)."""
    name = Path(run_dir).name or str(run_dir)
    return PALETTE[zlib.crc32(name.encode("utf-8", "surrogateescape")) % len(PALETTE)]


def run_colors(run_dirs: Sequence[str | Path]) -> list[str]:
    """Colours for runs shown together: each its own colour, except that two runs whose
    colours collide get the next free ones (in the given order), so a legend never shows
    two runs in one colour while the palette has room."""
    taken: set[str] = set()
    colors: list[str] = []
    for run_dir in run_dirs:
        color = run_color(run_dir)
        if color in taken and len(taken) < len(PALETTE):
            start = PALETTE.index(color)
            color = next(
                PALETTE[(start + i) % len(PALETTE)]
                for i in range(len(PALETTE))
                if PALETTE[(start + i) % len(PALETTE)] not in taken
            )
        taken.add(color)
        colors.append(color)
    return colors
