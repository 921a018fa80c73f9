"""Curves from a RunState, decimated to the plot's width, drawn by plotext into Rich Text.

plotext keeps its figure in module state, so it is only ever called from the UI thread.
It never sees more than about 2 x width points per curve (see series/decimate.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np
import plotext as plt
from rich.color import Color, ColorParseError
from rich.text import Text

from tuimon.number_text import format_value
from tuimon.run.run_state import RunState
from tuimon.series.bucketed import BucketSeries
from tuimon.series.decimate import minmax_columns
from tuimon.series.smoothing import DebiasedEMA

X_MODES = ("step", "epoch", "time")
X_LABELS = {"step": "step", "epoch": "epoch", "time": "elapsed s"}


# Values are clipped to ±this before drawing: plotext computes with a value range, and
# ±1e308 (a diverged run, a damaged log) would overflow it to NaN; clipped, a spike that
# big still reaches the plot's edge.
DRAWABLE = 1e100


METRIC_PREFIX = "metrics/"  # RunState keeps each `mon.log()` scalar as metrics/<name>
# The EMA weights `S` cycles through (and the run's own `monitor.smoothing`); 0 is raw.
SMOOTHING_LEVELS: Final = (0.0, 0.6, 0.9, 0.99)
SAME_WEIGHT: Final = 1e-9  # two weights this close are one


@dataclass(frozen=True)
class ViewOptions:
    log_y: bool = False
    x_mode: str = "step"
    metric: str | None = None  # the logged metric the main plot shows; None: the loss
    smoothing: float | None = None  # EMA weight of smoothed curves; None: the run's own

    def smoothing_for(self, run_weight: float) -> float:
        """The weight drawn: the one picked with `S`, else the run's `monitor.smoothing`."""
        return run_weight if self.smoothing is None else self.smoothing

    def next_smoothing(self, run_weight: float) -> ViewOptions:
        return replace(self, smoothing=next_smoothing(self.smoothing_for(run_weight), run_weight))

    def next_x_mode(self) -> ViewOptions:
        mode = X_MODES[(X_MODES.index(self.x_mode) + 1) % len(X_MODES)]
        return replace(self, x_mode=mode)

    def next_metric(self, names: Sequence[str]) -> ViewOptions:
        """The loss, then each logged metric in turn, then the loss again."""
        cycle: list[str | None] = [None, *names]
        at = cycle.index(self.metric) if self.metric in cycle else 0
        return replace(self, metric=cycle[(at + 1) % len(cycle)])


def next_smoothing(weight: float, run_weight: float) -> float:
    """The next weight up among SMOOTHING_LEVELS and the run's own; after the highest, 0."""
    levels = sorted({*SMOOTHING_LEVELS, run_weight})
    higher = [level for level in levels if level > weight + SAME_WEIGHT]
    return higher[0] if higher else levels[0]


def smoothing_text(weight: float) -> str:
    """How a plot's title says its smoothing: "smoothing 0.9", or "raw" for none."""
    return f"smoothing {weight:g}" if weight > 0 else "raw (no smoothing)"


def smoothed_values(values: np.ndarray, weight: float, span: int = 1) -> np.ndarray:
    """The debiased EMA (series/smoothing.py) of `values`, as TensorBoard draws it; NaN
    before the first finite value. Each value may stand for `span` steps (a bucket of a
    long series, its last point): the weight per value is then `weight ** span`, so the
    curve is smoothed over as many steps however long the run."""
    ema = DebiasedEMA(weight**span)
    out = np.full(values.size, math.nan)
    for i, value in enumerate(values.tolist()):
        smoothed = ema.update(value)
        if smoothed is not None:
            out[i] = smoothed
    return out


def smoothed_curves(
    series: BucketSeries | None,
    x_mode: str,
    weight: float,
    width: int,
    color: str,
    log_y: bool = False,
) -> list[Curve]:
    """The series smoothed at `weight` (nothing at 0), decimated to `width` like the raw
    curve: computed at draw time from the raw points, so any weight can be drawn."""
    if series is None or not len(series) or weight <= 0:
        return []
    x = series.column(x_mode)
    ys = smoothed_values(series.column("last"), weight, series.span)
    if log_y:
        ys = np.where(ys > 0, ys, np.nan)
    return envelope_curves(x, ys, ys, width, color)


def envelope_curves(
    x: np.ndarray, lo: np.ndarray, hi: np.ndarray, width: int, color: str
) -> list[Curve]:
    """Per-column max and min of the points as curves of at most `width` points: one
    curve where they agree."""
    xs, lows, highs = minmax_columns(x, lo, hi, width)
    curves = [Curve(xs, highs, color)]
    if not np.array_equal(lows, highs):
        curves.append(Curve(xs, lows, color))
    return curves


def last_finite(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else None


def metric_names(state: RunState) -> list[str]:
    """Every scalar logged with `mon.log()`, in the order they first appeared."""
    return [name[len(METRIC_PREFIX) :] for name in state.series if name.startswith(METRIC_PREFIX)]


@dataclass
class Curve:
    xs: np.ndarray
    ys: np.ndarray
    color: str
    points: bool = False  # scatter instead of a line


@dataclass
class PlotSpec:
    curves: list[Curve] = field(default_factory=list)
    vlines: list[tuple[float, str]] = field(default_factory=list)
    log_y: bool = False

    @property
    def empty(self) -> bool:
        return not any(c.xs.size for c in self.curves)


def series_curves(
    state: RunState,
    name: str,
    options: ViewOptions,
    width: int,
    color: str,
    points: bool = False,
    log_y: bool = False,
) -> list[Curve]:
    """A series of the state as curves of at most `width` points (see bucket_curves)."""
    return bucket_curves(state.series.get(name), options.x_mode, width, color, points, log_y)


def bucket_curves(
    series: BucketSeries | None,
    x_mode: str,
    width: int,
    color: str,
    points: bool = False,
    log_y: bool = False,
) -> list[Curve]:
    """A series as curves of at most `width` points: its per-column max and min (one curve
    where they agree), or the latest value of each bucket as points."""
    if series is None or not len(series):
        return []
    x = series.column(x_mode)
    if points:
        ys = series.column("last")
        keep = np.isfinite(x) & np.isfinite(ys) & ((ys > 0) if log_y else True)
        return [Curve(x[keep], ys[keep], color, points=True)]
    lo, hi = series.column("lo"), series.column("hi")
    if log_y:
        lo = np.where(lo > 0, lo, np.where(hi > 0, hi, np.nan))
        hi = np.where(hi > 0, hi, np.nan)
    return envelope_curves(x, lo, hi, width, color)


def x_of(state: RunState, event: Mapping[str, Any], options: ViewOptions) -> float | None:
    """Where an event (a control, an alert) falls on the current x axis."""
    step = event.get("step")
    if options.x_mode == "time":
        elapsed = state.elapsed_at(event.get("time"))
        return None if math.isnan(elapsed) else elapsed
    if not isinstance(step, int | float):
        return None
    if options.x_mode == "epoch":
        per_epoch = (state.start or {}).get("steps_per_epoch")
        return step / per_epoch if isinstance(per_epoch, int) and per_epoch else None
    return float(step)


def range_text(series: BucketSeries) -> str | None:
    """ "  min 0.12  max 2.3" over every point of a series, or None when none is finite."""
    low, high = series.column("lo"), series.column("hi")
    if not np.isfinite(low).any():
        return None
    return (
        f"  min {format_value(float(np.nanmin(low)))}  max {format_value(float(np.nanmax(high)))}"
    )


def plot_color(color: str) -> int | str:
    """`color` as plotext draws it: its ANSI number (plotext knows neither "yellow" nor
    "bright_cyan" by name and would draw them uncoloured), so a curve's cells carry the
    same colour as its run's swatch in the legend and in the runs table. A name Rich does
    not know (plotext's "orange") is passed on as it is."""
    try:
        number = Color.parse(color).number
    except ColorParseError:
        return color
    return color if number is None else number


def render_plot(spec: PlotSpec, width: int, height: int, x_label: str = "") -> Text:
    """The plot as Rich Text of exactly `height` lines no wider than `width`."""
    if width < 10 or height < 3:
        return Text("")
    if spec.empty:
        return Text("waiting for data…", style="dim")
    plt.clf()
    plt.limitsize(False, False)  # plotext would otherwise clip to its idea of the terminal
    plt.plotsize(width, height)
    plt.theme("clear")
    plt.frame(False)
    for curve in spec.curves:
        if not curve.xs.size:
            continue
        xs, ys = curve.xs.tolist(), np.clip(curve.ys, -DRAWABLE, DRAWABLE).tolist()
        color = plot_color(curve.color)
        if curve.points:
            plt.scatter(xs, ys, marker="dot", color=color)
        else:
            plt.plot(xs, ys, marker="braille", color=color)
    for x, color in spec.vlines:
        plt.vline(x, plot_color(color))
    if spec.log_y:
        plt.yscale("log")
    ticks = y_ticks(spec, max(2, min(5, height // 3)))
    if ticks:
        plt.yticks(ticks, tick_labels(ticks))
    if x_label and height >= 8:
        plt.xlabel(x_label)
    text = Text.from_ansi(plt.build().rstrip("\n"))
    text.no_wrap = True
    text.overflow = "crop"
    return text


def y_ticks(spec: PlotSpec, count: int) -> list[float]:
    """A few evenly spaced y ticks (log-spaced on a log axis) with short labels."""
    values = [c.ys[np.isfinite(c.ys)] for c in spec.curves if c.ys.size]
    ys = np.clip(np.concatenate(values), -DRAWABLE, DRAWABLE) if values else np.empty(0)
    if spec.log_y:
        ys = ys[ys > 0]
    if ys.size == 0:
        return []
    low, high = float(ys.min()), float(ys.max())
    if high <= low:
        return [low]
    if spec.log_y:
        return [float(v) for v in np.logspace(math.log10(low), math.log10(high), count)]
    return [float(v) for v in np.linspace(low, high, count)]


def tick_labels(ticks: list[float]) -> list[str]:
    """Short labels, with just enough digits that neighbouring ticks read differently."""
    for digits in range(3, 9):
        labels = [f"{t:.{digits}g}" for t in ticks]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def sparkline(values: Sequence[float], width: int, top: float | None = None) -> str:
    """A one-line chart of the last `width` values (▁ to █)."""
    blocks = "▁▂▃▄▅▆▇█"
    recent = [v for v in list(values)[-width:] if math.isfinite(v)]
    if not recent:
        return ""
    high = top if top is not None else max(recent)
    if high <= 0:
        return blocks[0] * len(recent)
    return "".join(blocks[min(7, max(0, int(v / high * 7.999)))] for v in recent)


def trend_sparkline(values: np.ndarray, width: int) -> str:
    """A one-line chart of a whole history, scaled from its lowest to its highest value:
    the finite values averaged into at most `width` columns (▁ to █)."""
    finite = values[np.isfinite(values)]
    if not finite.size or width <= 0:
        return ""
    if finite.size > width:
        starts = np.linspace(0, finite.size, width, endpoint=False).astype(np.int64)
        counts = np.diff(np.r_[starts, finite.size])
        finite = np.add.reduceat(finite, starts) / counts
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return "▄" * finite.size
    levels = ((finite - low) / (high - low) * 7.999).astype(np.int64)
    return "".join("▁▂▃▄▅▆▇█"[level] for level in levels)


def bar(fraction: float | None, width: int) -> str:
    """A fixed-width bar: ███████░░░."""
    if fraction is None or not math.isfinite(fraction) or width <= 0:
        return "·" * max(width, 0)
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "░" * (width - filled)
