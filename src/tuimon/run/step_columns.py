"""Points of a series gathered as columns and folded into its buckets in bulk.

Replaying a log of a million steps through `BucketSeries.append` costs a million Python
calls per series; here a chunk of points becomes numpy arrays and is folded into the
series in a few vectorized operations. The result is exactly the buckets the appends would
have made: buckets are runs of `span` consecutive points from the first, `span` is the
smallest power of two that keeps them within 2 x capacity, and each keeps the min and max
of its finite values, its last finite value, and the step, time and epoch of its last point.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np

from tuimon.run.field_types import as_number
from tuimon.series.bucketed import FIELDS, BucketSeries

# Series a step event adds a point to only when it holds the field.
OPTIONAL_STEP_SERIES = ("grad_norm", "update_ratio")
MAX_LR_GROUPS = 64  # LR groups plotted: a bound on the series one event can add
ROW = 9  # step, time, epoch, loss, smoothed loss, grad norm, update ratio, LR, flags


class StepRows:
    """The points step events add, one row per step: step, time, epoch, loss, smoothed
    loss, the optional series (with a flag each for whether the step held it: 1 for the
    gradient norm, 2 for the update ratio) and the first LR group; the LRs of further groups
    wait in columns of their own. RunState._on_step writes the rows (one call less per
    step: a million of them in a long replay)."""

    def __init__(self) -> None:
        self.rows = array("d")  # ROW numbers per step
        self.more_lrs: dict[str, SeriesColumns] = {}

    def __len__(self) -> int:
        return len(self.rows) // ROW

    def add_more_lrs(self, step: float, time: float, epoch: float, lrs: list[Any]) -> None:
        for group, lr in enumerate(lrs[1:MAX_LR_GROUPS], start=1):
            name = f"lr/{group}"
            columns = self.more_lrs.get(name)
            if columns is None:
                columns = self.more_lrs[name] = SeriesColumns()
            columns.add(step, time, epoch, as_number(lr))

    def fold_into(self, series: dict[str, BucketSeries], capacity: int) -> None:
        """The rows into `series` (by name; created as needed); the rows are emptied."""
        if self.rows:
            table = np.frombuffer(self.rows).reshape(-1, ROW)
            self.rows = array("d")
            flags = table[:, 8].astype(int)
            wanted = {
                "loss": (3, None),
                "loss_ema": (4, None),
                "grad_norm": (5, flags & 1 != 0),
                "update_ratio": (6, flags & 2 != 0),
                "lr/0": (7, None),
            }
            for name, (column, present) in wanted.items():
                rows = table if present is None else table[present]
                if not len(rows):
                    continue
                old = series.get(name) or BucketSeries(capacity)
                series[name] = extend_series(
                    old, rows[:, 0], rows[:, 1], rows[:, 2], np.ascontiguousarray(rows[:, column])
                )
        for name, columns in self.more_lrs.items():
            series[name] = columns.fold_into(series.get(name), capacity)


class SeriesColumns:
    """Points waiting to be folded into one series."""

    def __init__(self) -> None:
        self.step = array("d")
        self.time = array("d")
        self.epoch = array("d")
        self.value = array("d")

    def __len__(self) -> int:
        return len(self.value)

    def add(self, step: float, time: float, epoch: float, value: float) -> None:
        self.step.append(step)
        self.time.append(time)
        self.epoch.append(epoch)
        self.value.append(value)

    def fold_into(self, series: BucketSeries | None, capacity: int) -> BucketSeries:
        """`series` (or a new one) with these points appended; the columns are emptied."""
        series = series if series is not None else BucketSeries(capacity)
        if len(self):
            series = extend_series(
                series,
                np.frombuffer(self.step),
                np.frombuffer(self.time),
                np.frombuffer(self.epoch),
                np.frombuffer(self.value),
            )
            self.__init__()  # type: ignore[misc]
        return series


def extend_series(
    series: BucketSeries, step: np.ndarray, time: np.ndarray, epoch: np.ndarray, value: np.ndarray
) -> BucketSeries:
    """A new series: `series` with the points appended, as `append` one by one would."""
    data = series.to_dict()
    span, capacity = int(data["span"]), int(data["capacity"])
    cols = {name: np.asarray(data[name], dtype=float) for name in FIELDS}
    finite = np.isfinite(value)
    value = np.where(finite, value, np.nan)
    points: _Points = (step, time, epoch, value, finite)
    first = 0
    if len(cols["count"]) and cols["count"][-1] < span:
        # The newest bucket is not full yet: its share of the new points goes into it.
        first = min(len(value), span - int(cols["count"][-1]))
        head = _reduce(*_sliced(points, slice(None, first)), size=first)
        for name in ("step", "time", "epoch"):
            cols[name][-1] = head[name][0]
        cols["lo"][-1] = np.fmin(cols["lo"][-1], head["lo"][0])
        cols["hi"][-1] = np.fmax(cols["hi"][-1], head["hi"][0])
        if not np.isnan(head["last"][0]):
            cols["last"][-1] = head["last"][0]
        cols["count"][-1] += first
    if first < len(value):
        rest = _reduce(*_sliced(points, slice(first, None)), size=span)
        cols = {name: np.concatenate([cols[name], rest[name]]) for name in FIELDS}
    while len(cols["count"]) > 2 * capacity:
        cols = _merge_pairs(cols)
        span *= 2
    data.update(
        span=span,
        total=int(data["total"]) + len(value),
        non_finite=int(data["non_finite"]) + int(np.count_nonzero(~finite)),
        **cols,
    )
    return BucketSeries.from_dict(data)


# A stretch of points: step, time, epoch, value and whether the value is finite.
_Points = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _sliced(points: _Points, part: slice) -> _Points:
    step, time, epoch, value, finite = points
    return step[part], time[part], epoch[part], value[part], finite[part]


def _reduce(
    step: np.ndarray,
    time: np.ndarray,
    epoch: np.ndarray,
    value: np.ndarray,
    finite: np.ndarray,
    size: int,
) -> dict[str, np.ndarray]:
    """Buckets of `size` consecutive points (the last may hold fewer)."""
    count = len(value)
    starts = np.arange(0, count, size)
    ends = np.minimum(starts + size, count)
    index = np.where(finite, np.arange(count), -1)
    last_finite = np.maximum.reduceat(index, starts)
    return {
        "step": step[ends - 1],
        "time": time[ends - 1],
        "epoch": epoch[ends - 1],
        "lo": np.fmin.reduceat(value, starts),
        "hi": np.fmax.reduceat(value, starts),
        "last": np.where(last_finite >= 0, value[np.maximum(last_finite, 0)], np.nan),
        "count": (ends - starts).astype(float),
    }


def _merge_pairs(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each pair of neighbouring buckets becomes one (an odd last bucket stays alone)."""
    if len(cols["count"]) % 2:
        cols = {name: np.append(column, column[-1]) for name, column in cols.items()}
        cols["count"][-1] = 0
        for name in ("lo", "hi", "last"):
            cols[name][-1] = np.nan
    pairs = {name: column.reshape(-1, 2) for name, column in cols.items()}
    merged = {name: pairs[name][:, 1] for name in ("step", "time", "epoch")}
    merged["lo"] = np.fmin(pairs["lo"][:, 0], pairs["lo"][:, 1])
    merged["hi"] = np.fmax(pairs["hi"][:, 0], pairs["hi"][:, 1])
    last = pairs["last"]
    merged["last"] = np.where(np.isnan(last[:, 1]), last[:, 0], last[:, 1])
    merged["count"] = pairs["count"].sum(axis=1)
    return merged
