"""Reduce a series to what a plot of `width` columns can show: min and max per column.

Drawing the per-column minima and maxima as two lines (an envelope) keeps every spike of a
million points visible while plotext only ever sees about 2 x width points, and draws two
thin lines instead of filling the band between them.
"""

from __future__ import annotations

import numpy as np


def minmax_columns(
    x: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, min, max) per plot column that holds data; columns without data are left out.

    `x` must be non-decreasing; points with a non-finite x, lo or hi are ignored. Each
    column sits at the x of its last point, so the curve ends at the newest value.
    """
    keep = np.isfinite(x) & np.isfinite(lo) & np.isfinite(hi)
    x, lo, hi = x[keep], lo[keep], hi[keep]
    if x.size == 0 or width <= 0:
        return np.empty(0), np.empty(0), np.empty(0)
    x0, x1 = float(x[0]), float(x[-1])
    if x.size <= width or x1 <= x0:
        return x, lo, hi
    columns = np.minimum(((x - x0) / (x1 - x0) * width).astype(np.int64), width - 1)
    starts = np.flatnonzero(np.r_[True, columns[1:] != columns[:-1]])
    ends = np.r_[starts[1:], x.size] - 1
    return x[ends], np.minimum.reduceat(lo, starts), np.maximum.reduceat(hi, starts)
