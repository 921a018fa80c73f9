"""Several runs' curves on one plot, each in its run's colour, with a legend.

Compare and the metrics screen draw one scalar of several runs over each other. Each curve
is smoothed (a debiased EMA, as TensorBoard and W&B smooth) over all its points, then
decimated to min/max per plot column (series/decimate.py), so plotext never sees more than
about 2 x width points per run. Points that cannot be drawn (NaN, Inf, and on a log axis
anything not positive) are left out rather than handed to plotext. plotext keeps its
figure in module state: call this from the UI thread only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotext as plt
from rich.text import Text

from tuimon.series.decimate import minmax_columns
from tuimon.terminal_text import printable
from tuimon.ui.plotting import DRAWABLE, plot_color, tick_labels

SWATCH = "■"
BASELINE_SWATCH = "◆"
BASELINE_NOTE = " (baseline)"
EMPTY_TEXT = "no data yet"
MIN_PLOT_LINES = 3
LEGEND_GAP = "  "


@dataclass
class OverlayCurve:
    """One run's curve: its legend label, its colour (a Rich colour name, e.g. from
    `run_colors`), and its points (x non-decreasing: a step or elapsed-seconds column)."""

    label: str
    color: str
    xs: np.ndarray
    ys: np.ndarray
    baseline: bool = False


def debiased_ema(values: np.ndarray, weight: float) -> np.ndarray:
    """`series/smoothing.smooth` of finite values, in numpy: the same debiased EMA, without
    a Python call per point (compare smooths every curve of every run at each redraw).

    In a block starting at 0, the EMA is w^k (b + (1 - w) cumsum(x_j w^-j)); blocks are
    short enough that w^-j stays below 1e100 (x w^-j is finite for |x| up to `DRAWABLE`),
    and each carries the last EMA over."""
    if weight <= 0:
        return values.astype(float, copy=True)
    block = max(1, int(230 / -math.log(weight)))  # w^-j < e^230 (1e100): x w^-j finite
    biased = np.empty(values.size)
    carried = 0.0
    for start in range(0, values.size, block):
        chunk = values[start : start + block]
        powers = weight ** np.arange(chunk.size)
        sums = np.cumsum(chunk / powers) * (1 - weight)
        biased[start : start + chunk.size] = powers * weight * carried + powers * sums
        carried = float(biased[start + chunk.size - 1])
    return biased / (1 - weight ** np.arange(1, values.size + 1))


def drawable_points(
    curve: OverlayCurve, *, log_y: bool = False, smoothing: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """The curve's points that can be drawn: finite x and y, smoothed when asked (over the
    finite points in order), on a log axis only positive values, clipped to ±`DRAWABLE`."""
    xs = np.asarray(curve.xs, dtype=float)
    ys = np.asarray(curve.ys, dtype=float)
    count = min(xs.size, ys.size)
    xs, ys = xs[:count], ys[:count]
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = np.clip(xs[keep], -DRAWABLE, DRAWABLE), np.clip(ys[keep], -DRAWABLE, DRAWABLE)
    if smoothing > 0 and ys.size:
        ys = debiased_ema(ys, min(smoothing, 0.999))
    if log_y:
        positive = ys > 0
        xs, ys = xs[positive], ys[positive]
    return xs, ys


def draw_overlay(
    curves: list[OverlayCurve],
    width: int,
    height: int,
    *,
    x_label: str,
    log_y: bool = False,
    smoothing: float = 0.0,
) -> Text:
    """The curves over each other, decimated to `width`, with a legend under the plot (the
    baseline first, marked): Rich Text of at most `height` lines no wider than `width`."""
    if width < 10 or height < 1:
        return Text("")
    ordered = sorted(curves, key=lambda c: not c.baseline)  # the baseline first, else as given
    legend = legend_lines(ordered, width, max(1, height - MIN_PLOT_LINES))
    plot_height = height - len(legend)
    points = [drawable_points(c, log_y=log_y, smoothing=smoothing) for c in ordered]
    if plot_height < MIN_PLOT_LINES or not any(xs.size for xs, _ in points):
        body = Text(EMPTY_TEXT, style="dim")
    else:
        body = _plot(ordered, points, width, plot_height, x_label, log_y)
    return Text("\n", no_wrap=True, overflow="crop").join([body, *legend])


def _plot(
    curves: Sequence[OverlayCurve],
    points: Sequence[tuple[np.ndarray, np.ndarray]],
    width: int,
    height: int,
    x_label: str,
    log_y: bool,
) -> Text:
    plt.clf()
    plt.limitsize(False, False)  # plotext would otherwise clip to its idea of the terminal
    plt.plotsize(width, height)
    plt.theme("clear")
    plt.frame(False)
    drawn: list[np.ndarray] = []
    # The baseline is drawn last, so no other run's curve hides it.
    for curve, (xs, ys) in reversed(list(zip(curves, points, strict=True))):
        if not xs.size:
            continue
        cols, lows, highs = minmax_columns(xs, ys, ys, width)
        color = plot_color(curve.color)
        plt.plot(cols.tolist(), highs.tolist(), marker="braille", color=color)
        if not np.array_equal(lows, highs):
            plt.plot(cols.tolist(), lows.tolist(), marker="braille", color=color)
        drawn.extend((lows, highs))
    if log_y:
        plt.yscale("log")
    ticks = _y_ticks(np.concatenate(drawn), max(2, min(5, height // 3)), log_y)
    if ticks:
        plt.yticks(ticks, tick_labels(ticks))
    if x_label and height >= 6:
        plt.xlabel(printable(x_label, keep_newlines=False))
    text = Text.from_ansi(plt.build().rstrip("\n"))
    text.no_wrap = True
    text.overflow = "crop"
    return text


def _y_ticks(ys: np.ndarray, count: int, log_y: bool) -> list[float]:
    if ys.size == 0:
        return []
    low, high = float(ys.min()), float(ys.max())
    if high <= low:
        return [low]
    if log_y:
        return [float(v) for v in np.logspace(math.log10(low), math.log10(high), count)]
    return [float(v) for v in np.linspace(low, high, count)]


def legend_entry(curve: OverlayCurve) -> Text:
    """ "■ name" in the run's colour ("◆ name (baseline)" for the baseline); the name is
    text from a log, so it is made printable and never read as markup."""
    label = printable(curve.label, keep_newlines=False)
    entry = Text(no_wrap=True, overflow="ellipsis")
    entry.append(BASELINE_SWATCH if curve.baseline else SWATCH, style=curve.color)
    entry.append(" ")
    entry.append(label, style=f"bold {curve.color}" if curve.baseline else curve.color)
    if curve.baseline:
        entry.append(BASELINE_NOTE, style="dim")
    return entry


def legend_lines(curves: Sequence[OverlayCurve], width: int, max_lines: int) -> list[Text]:
    """One line with every entry when they fit in `width`, else one entry a line (cut to
    the width), at most `max_lines` lines, the last then saying how many are left out."""
    entries = [legend_entry(c) for c in curves]
    if not entries:
        return []
    compact = Text(LEGEND_GAP, no_wrap=True, overflow="crop").join(entries)
    if compact.cell_len <= width:
        return [compact]
    if len(entries) > max_lines:
        shown = entries[: max(0, max_lines - 1)]
        more = Text(f"+{len(entries) - len(shown)} more", style="dim")
        entries = [*shown, more]
    for entry in entries:
        entry.truncate(width, overflow="ellipsis")
    return entries
