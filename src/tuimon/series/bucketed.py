"""A series that keeps at most ~2 x `capacity` buckets however long the run.

Each bucket covers `span` consecutive points and keeps their min, max and last value, and the
step, time and epoch of its last point. When the buffer fills, neighbouring buckets are
merged pairwise and the span doubles, so memory and drawing cost stay constant for a
million steps, and no spike is lost: a bucket's min/max still covers every point in it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FIELDS = ("step", "time", "epoch", "lo", "hi", "last", "count")


class BucketSeries:
    def __init__(self, capacity: int = 2048) -> None:
        self.capacity = capacity
        self.span = 1
        self.total = 0  # points appended, all time
        self.non_finite = 0  # NaN/Inf points (kept out of min/max, counted here)
        self._n = 0
        self._data = {name: np.empty(2 * capacity) for name in FIELDS}

    def __len__(self) -> int:
        return self._n

    def append(self, step: float, time: float, epoch: float, value: float) -> None:
        self.total += 1
        finite = math.isfinite(value)
        if not finite:
            self.non_finite += 1
        d = self._data
        n = self._n
        if n and d["count"][n - 1] < self.span:
            i = n - 1
            if finite:
                lo, hi = d["lo"][i], d["hi"][i]
                d["lo"][i] = value if math.isnan(lo) else min(lo, value)
                d["hi"][i] = value if math.isnan(hi) else max(hi, value)
                d["last"][i] = value
            d["count"][i] += 1
        else:
            if n == 2 * self.capacity:
                self._merge()
                n = self._n
            i = n
            d["lo"][i] = d["hi"][i] = d["last"][i] = value if finite else math.nan
            d["count"][i] = 1
            self._n = n + 1
        d["step"][i] = step
        d["time"][i] = time
        d["epoch"][i] = epoch

    def _merge(self) -> None:
        """Halve the number of buckets: each new one covers two old ones (called when all
        2 × capacity are used, an even number)."""
        n = self._n
        d = self._data
        with np.errstate(invalid="ignore"):
            for name in ("step", "time", "epoch", "count"):
                pairs = d[name][:n].reshape(-1, 2)
                d[name][: n // 2] = pairs.sum(axis=1) if name == "count" else pairs[:, 1]
            lo = d["lo"][:n].reshape(-1, 2)
            hi = d["hi"][:n].reshape(-1, 2)
            last = d["last"][:n].reshape(-1, 2)
            d["lo"][: n // 2] = np.fmin(lo[:, 0], lo[:, 1])
            d["hi"][: n // 2] = np.fmax(hi[:, 0], hi[:, 1])
            d["last"][: n // 2] = np.where(np.isnan(last[:, 1]), last[:, 0], last[:, 1])
        self._n = n // 2
        self.span *= 2

    def column(self, name: str) -> np.ndarray:
        """A copy of one field over the buckets (step, time, epoch, lo, hi, last, count)."""
        return self._data[name][: self._n].copy()

    @property
    def latest(self) -> float | None:
        return float(self._data["last"][self._n - 1]) if self._n else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "span": self.span,
            "total": self.total,
            "non_finite": self.non_finite,
            **{name: self._data[name][: self._n].tolist() for name in FIELDS},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BucketSeries:
        series = cls(int(data["capacity"]))
        series.span = int(data["span"])
        series.total = int(data["total"])
        series.non_finite = int(data.get("non_finite", 0))
        n = len(data["step"])
        series._n = n
        for name in FIELDS:
            series._data[name][:n] = np.asarray(data[name], dtype=float)
        return series
