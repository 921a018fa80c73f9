"""Bucketed series and min/max decimation: bounded size, no lost spikes."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from tuimon.series.bucketed import BucketSeries
from tuimon.series.decimate import minmax_columns


def brute_force(values, span):
    """Buckets of `span` consecutive points: (last step, min, max, last)."""
    out = []
    for start in range(0, len(values), span):
        chunk = values[start : start + span]
        finite = [v for v in chunk if math.isfinite(v)]
        out.append(
            (start + len(chunk), min(finite, default=math.nan), max(finite, default=math.nan))
        )
    return out


@pytest.mark.parametrize("count", [1, 7, 8, 9, 100, 1000, 4097])
def test_buckets_match_a_brute_force_grouping(count):
    rng = random.Random(count)
    values = [rng.gauss(0, 1) for _ in range(count)]
    series = BucketSeries(capacity=8)
    for step, value in enumerate(values, start=1):
        series.append(step, step * 0.5, step // 10, value)
    assert series.total == count and len(series) <= 16
    expected = brute_force(values, series.span)
    assert series.column("step").tolist() == [e[0] for e in expected]
    assert series.column("lo").tolist() == pytest.approx([e[1] for e in expected])
    assert series.column("hi").tolist() == pytest.approx([e[2] for e in expected])
    assert series.column("count").sum() == count
    assert series.latest == pytest.approx(values[-1])


def test_a_spike_in_a_million_points_survives():
    series = BucketSeries(capacity=256)
    for step in range(1, 1_000_001):
        series.append(step, step, 0, 1e6 if step == 654_321 else 1.0)
    assert len(series) <= 512
    assert series.column("hi").max() == 1e6
    xs, lows, highs = minmax_columns(
        series.column("step"), series.column("lo"), series.column("hi"), 80
    )
    assert highs.max() == 1e6 and lows.min() == 1.0 and len(xs) <= 80


def test_non_finite_values_are_counted_not_plotted():
    series = BucketSeries(capacity=4)
    for step, value in enumerate([1.0, math.nan, 3.0, math.inf, 2.0], start=1):
        series.append(step, step, 0, value)
    assert series.non_finite == 2
    assert np.nanmax(series.column("hi")) == 3.0


def test_round_trip_through_a_dict():
    series = BucketSeries(capacity=4)
    for step in range(1, 30):
        series.append(step, step * 2.0, step // 5, math.sin(step))
    again = BucketSeries.from_dict(series.to_dict())
    for field in ("step", "time", "epoch", "lo", "hi", "last", "count"):
        assert again.column(field).tolist() == series.column(field).tolist()
    again.append(30, 60.0, 6, 5.0)
    series.append(30, 60.0, 6, 5.0)
    assert again.column("hi").tolist() == series.column("hi").tolist()


def test_decimation_keeps_each_columns_extremes():
    x = np.arange(1000, dtype=float)
    y = np.sin(x / 30)
    xs, lows, highs = minmax_columns(x, y, y, width=10)
    assert len(xs) == 10
    for column in range(10):
        chunk = y[column * 100 : (column + 1) * 100]
        assert lows[column] == chunk.min() and highs[column] == chunk.max()
        assert xs[column] == column * 100 + 99


def test_decimation_of_few_points_returns_them_all():
    x = np.array([1.0, 2.0, 3.0])
    xs, lows, highs = minmax_columns(
        x, np.array([1.0, np.nan, 2.0]), np.array([1.0, np.nan, 4.0]), 50
    )
    assert xs.tolist() == [1.0, 3.0] and lows.tolist() == [1.0, 2.0]
    assert highs.tolist() == [1.0, 4.0]
    assert minmax_columns(np.empty(0), np.empty(0), np.empty(0), 50)[0].size == 0
