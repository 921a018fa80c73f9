"""Reduce a series to what a plot of `width` columns can show: min and max per column.

Drawing min then max for every column gives a vertical stroke per column, so a spike in a
million points still shows, while plotext only ever sees about 2 x width points.
"""

from __future__ import annotations

import numpy as np


def minmax_columns(
    x: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    width: int,
    x_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Points (x, y) to draw: per column, the column's min then its max (once if equal).

    `x` must be non-decreasing; NaN values are ignored; columns with no finite value are
    left out.
    """
    keep = np.isfinite(x) & np.isfinite(lo) & np.isfinite(hi)
    x, lo, hi = x[keep], lo[keep], hi[keep]
    if x.size == 0 or width <= 0:
        return np.empty(0), np.empty(0)
    x0, x1 = x_range if x_range is not None else (float(x[0]), float(x[-1]))
    if x.size <= width or x1 <= x0:
        return _interleave(x, lo, hi)
    columns = np.minimum(((x - x0) / (x1 - x0) * width).astype(np.int64), width - 1)
    starts = np.flatnonzero(np.r_[True, columns[1:] != columns[:-1]])
    col_lo = np.minimum.reduceat(lo, starts)
    col_hi = np.maximum.reduceat(hi, starts)
    # Each column is drawn at the x of its last point, so the curve ends at the newest.
    ends = np.r_[starts[1:], x.size] - 1
    return _interleave(x[ends], col_lo, col_hi)


def _interleave(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    same = lo == hi
    xs = np.repeat(x, np.where(same, 1, 2))
    ys = np.empty(xs.size)
    positions = np.cumsum(np.where(same, 1, 2)) - np.where(same, 1, 2)
    ys[positions] = lo
    two = ~same
    ys[positions[two] + 1] = hi[two]
    return xs, ys
