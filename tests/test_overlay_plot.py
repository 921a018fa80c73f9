"""draw_overlay: several runs on one plot, drawn without an App (pure Rich Text out)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rich.style import Style

from tuimon.series.smoothing import smooth
from tuimon.ui.overlay_plot import (
    EMPTY_TEXT,
    OverlayCurve,
    debiased_ema,
    draw_overlay,
    drawable_points,
    plot_color,
)
from tuimon.ui.run_colors import PALETTE

STEPS = np.arange(1.0, 201.0)
NOISY = 1.0 / STEPS + 0.3 * np.sin(STEPS * 1.7) ** 2  # a falling loss with a lot of noise


def curve(label="run", color="cyan", xs=STEPS, ys=NOISY, baseline=False) -> OverlayCurve:
    return OverlayCurve(label, color, np.asarray(xs, float), np.asarray(ys, float), baseline)


def cell_colors(text) -> set[int]:
    """Colour numbers of the curve cells (braille), the legend left out."""
    numbers = set()
    for span in text.spans:
        if any("\u2800" <= c <= "\u28ff" for c in text.plain[span.start : span.end]):
            color = Style.parse(str(span.style)).color
            if color is not None and color.number is not None:
                numbers.add(color.number)
    return numbers


def test_smoothing_zero_is_the_raw_curve_and_more_changes_what_is_drawn():
    curves = [curve()]
    raw = draw_overlay(curves, 80, 20, x_label="step")
    assert draw_overlay(curves, 80, 20, x_label="step", smoothing=0.0).plain == raw.plain
    smoothed = draw_overlay(curves, 80, 20, x_label="step", smoothing=0.9)
    assert smoothed.plain != raw.plain
    _, ys = drawable_points(curves[0], smoothing=0.9)
    assert np.allclose(ys, smooth(NOISY.tolist(), 0.9))  # the debiased EMA, over every point
    assert np.array_equal(drawable_points(curves[0])[1], NOISY)
    # Smoothed, the noise is gone: far fewer distinct drawn values than raw.
    assert np.std(np.diff(ys)) < np.std(np.diff(NOISY)) / 3


@pytest.mark.parametrize("weight", [0.01, 0.3, 0.6, 0.9, 0.99, 0.999])
@pytest.mark.parametrize("size", [1, 2, 700, 6000])  # across the blocks' boundaries
def test_numpy_ema_is_the_debiased_ema_of_series_smoothing(weight, size):
    values = np.random.default_rng(size).normal(size=size) * 10 + np.linspace(0, 100, size)
    expected = np.array(smooth(values.tolist(), weight))
    assert np.allclose(debiased_ema(values, weight), expected, rtol=1e-9, atol=1e-9)
    huge = np.full(size, 1e100)  # the largest value drawn: no overflow
    assert np.allclose(debiased_ema(huge, weight), huge)


def test_every_palette_colour_reaches_the_curve_cells():
    """plotext knows neither "yellow" nor "bright_*" by name: the numbers must reach it."""
    for first, second in zip(PALETTE[::2], PALETTE[1::2], strict=True):
        text = draw_overlay(
            [curve("a", first), curve("b", second, ys=NOISY * 2)], 80, 16, x_label="step"
        )
        assert cell_colors(text) == {plot_color(first), plot_color(second)}


def test_legend_names_each_run_in_its_colour_with_the_baseline_first():
    curves = [curve("first", "cyan"), curve("base", "magenta", baseline=True)]
    text = draw_overlay(curves, 80, 16, x_label="step")
    legend = text.plain.splitlines()[-1]
    assert legend.startswith("◆ base (baseline)") and "■ first" in legend
    swatches = [str(s.style) for s in text.spans if text.plain[s.start] in "■◆"]
    assert swatches == ["magenta", "cyan"]


def test_a_legend_too_wide_for_one_line_takes_a_line_per_run_within_the_height():
    curves = [curve(f"a-rather-long-run-name-{i}", PALETTE[i]) for i in range(6)]
    text = draw_overlay(curves, 40, 30, x_label="step")
    lines = text.plain.splitlines()
    assert len(lines) <= 30 and all(len(line) <= 40 for line in lines)
    assert [line[:2] for line in lines[-6:]] == ["■ "] * 6
    crowded = draw_overlay(curves, 40, 6, x_label="step").plain.splitlines()
    assert len(crowded) <= 6 and crowded[-1].startswith("+")  # "+N more"


def test_time_axis_label_and_log_axis():
    text = draw_overlay([curve()], 80, 20, x_label="elapsed s", log_y=True)
    assert "elapsed s" in text.plain
    # On a log axis, values that are not positive are left out, not drawn or crashed on.
    xs, ys = drawable_points(curve(ys=NOISY - 0.5), log_y=True)
    assert (ys > 0).all() and xs.size == (NOISY > 0.5).sum()


@pytest.mark.parametrize(
    "ys",
    [
        [],
        [1.0],
        [math.nan],
        [math.inf, -math.inf, math.nan],
        [1.0, math.nan, 2.0, math.inf, 0.5],
        [-1.0, 0.0, -2.0],
        [5.0, 5.0, 5.0],
        [1e308, -1e308, 1e-308],  # a range that overflows: clipped to what plotext draws
        [1e308, 1e308],
    ],
)
@pytest.mark.parametrize("log_y", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.99])
def test_awkward_series_draw_without_raising(ys, log_y, smoothing):
    xs = np.arange(len(ys), dtype=float)
    text = draw_overlay(
        [curve(xs=xs, ys=ys), curve("other", "red", xs=[], ys=[])],
        60,
        12,
        x_label="step",
        log_y=log_y,
        smoothing=smoothing,
    )
    assert len(text.plain.splitlines()) <= 12
    finite = [y for y in ys if math.isfinite(y) and (y > 0 or not log_y)]
    assert (EMPTY_TEXT in text.plain) == (not finite)


def test_no_curves_small_sizes_and_mismatched_lengths():
    assert draw_overlay([], 80, 20, x_label="step").plain == EMPTY_TEXT
    assert draw_overlay([curve()], 5, 20, x_label="step").plain == ""
    assert "■ run" in draw_overlay([curve()], 80, 2, x_label="step").plain
    odd = OverlayCurve("odd", "green", np.arange(10.0), np.arange(4.0))
    assert drawable_points(odd)[0].size == 4
    draw_overlay([odd], 80, 20, x_label="step")


def test_hostile_labels_are_printable_text_not_markup():
    text = draw_overlay(
        [curve("\x1b]0;title\x07[red]x[/]\x9b31m", "cyan")], 80, 12, x_label="step\x1b[2J"
    )
    assert "\x1b" not in text.plain and "\x07" not in text.plain and "\x9b" not in text.plain
    assert "[red]x[/]" in text.plain


def test_the_single_run_plot_draws_yellow_and_survives_a_diverged_value():
    """The single-run panels share plot_color and the clip: the validation loss's yellow
    reaches the cells, and a series spanning ±1e308 draws instead of raising."""
    from tuimon.ui.plotting import Curve, PlotSpec, render_plot

    xs = np.arange(50, dtype=float)
    spec = PlotSpec(
        curves=[
            Curve(xs, np.linspace(1.0, 2.0, 50), "yellow"),
            Curve(xs, np.where(xs == 25, 1e308, -1e308), "cyan"),
        ]
    )
    text = render_plot(spec, 60, 12)
    assert plot_color("yellow") in cell_colors(text)
    assert len(text.plain.splitlines()) == 12
