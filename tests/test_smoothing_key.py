"""`S` changes the smoothing of the plots while the app runs: raw, 0.6, 0.9, 0.99 (and the
run's own `monitor.smoothing`), drawn from the raw points with the debiased EMA when the
plot is drawn, and said on the plot's border."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

from tuimon.number_text import format_value
from tuimon.run.run_state import RunState
from tuimon.series.smoothing import DebiasedEMA
from tuimon.ui.app import TuimonApp
from tuimon.ui.plotting import SMOOTHING_LEVELS, ViewOptions, next_smoothing
from tuimon.ui.widgets.loss_panel import LossPanel, metric_spec

from conftest import TESTS_DIR, until, worker_env

STEPS = 150
WIDTH = 400  # wider than the points: nothing is decimated, each point is drawn
RAW_COLOR, SMOOTHED_COLOR = "gray", "cyan"


def noisy_run(smoothing: float = 0.9) -> tuple[RunState, list[float], list[float]]:
    """A run's state from its events: a falling, noisy loss (one NaN step) and a metric
    logged every 10 steps; the losses and the metric's values as logged."""
    rng = random.Random(0)
    losses = [2.0 * 0.98**step + rng.uniform(-0.3, 0.3) for step in range(1, STEPS + 1)]
    losses[40] = float("nan")
    start = {
        "type": "start",
        "seq": 1,
        "time": 100.0,
        "name": "noisy",
        "settings": {"smoothing": smoothing},
    }
    events: list[dict] = [start]
    bleu = []
    for step, loss in enumerate(losses, start=1):
        events.append({"type": "step", "step": step, "time": 100.0 + step, "loss": loss})
        if step % 10 == 0:
            bleu.append(step / 3 + rng.uniform(-5, 5))
            events.append({"type": "metrics", "step": step, "time": 100.0 + step, "bleu": bleu[-1]})
    state = RunState()
    state.apply_many([{**event, "seq": seq} for seq, event in enumerate(events, start=1)])
    return state, losses, bleu


def ema(values: list[float], weight: float) -> list[float]:
    """series/smoothing.py's debiased EMA over the raw points, one value per point."""
    average = DebiasedEMA(weight)
    out = []
    for value in values:
        smoothed = average.update(value)
        assert smoothed is not None
        out.append(smoothed)
    return out


def drawn(spec, color):
    return [curve for curve in spec.curves if curve.color == color]


@pytest.mark.parametrize("weight", [0.6, 0.9, 0.99])
def test_the_smoothed_loss_drawn_is_the_debiased_ema_of_the_raw_points(weight):
    state, losses, _ = noisy_run(smoothing=0.9)
    spec = LossPanel.loss_spec(state, ViewOptions(smoothing=weight), WIDTH)
    [smoothed] = drawn(spec, SMOOTHED_COLOR)
    assert smoothed.xs.tolist() == list(range(1, STEPS + 1))
    np.testing.assert_allclose(smoothed.ys, ema(losses, weight), rtol=1e-12)
    assert drawn(spec, RAW_COLOR), "the raw loss is drawn under it"


def test_each_weight_draws_a_different_curve_and_zero_draws_none():
    state, _, _ = noisy_run()
    curves = {}
    for weight in SMOOTHING_LEVELS[1:]:
        [smoothed] = drawn(LossPanel.loss_spec(state, ViewOptions(smoothing=weight), WIDTH), "cyan")
        curves[weight] = smoothed.ys
    for a, b in ((0.6, 0.9), (0.9, 0.99), (0.6, 0.99)):
        assert not np.allclose(curves[a], curves[b])
    # Heavier smoothing strays less from step to step.
    roughness = {w: float(np.abs(np.diff(ys)).sum()) for w, ys in curves.items()}
    assert roughness[0.6] > roughness[0.9] > roughness[0.99]
    raw_only = LossPanel.loss_spec(state, ViewOptions(smoothing=0.0), WIDTH)
    assert not drawn(raw_only, SMOOTHED_COLOR) and drawn(raw_only, RAW_COLOR)


def test_a_weight_other_than_the_runs_own_is_computed_from_the_raw_points():
    """The state keeps the EMA at the run's weight (0.6 here); 0.9 is computed at draw time
    and is not the state's curve."""
    state, losses, _ = noisy_run(smoothing=0.6)
    assert state.smoothing == 0.6
    own = drawn(LossPanel.loss_spec(state, ViewOptions(), WIDTH), SMOOTHED_COLOR)[0]
    np.testing.assert_allclose(own.ys, state.series["loss_ema"].column("last"))
    np.testing.assert_allclose(own.ys, ema(losses, 0.6), rtol=1e-12)
    other = drawn(LossPanel.loss_spec(state, ViewOptions(smoothing=0.9), WIDTH), "cyan")[0]
    np.testing.assert_allclose(other.ys, ema(losses, 0.9), rtol=1e-12)


def test_the_plot_says_its_weight_and_the_header_the_smoothed_value():
    state, losses, _ = noisy_run(smoothing=0.9)
    panel = LossPanel()
    for options, said in (
        (ViewOptions(), "smoothing 0.9"),  # the run's own
        (ViewOptions(smoothing=0.6), "smoothing 0.6"),
        (ViewOptions(smoothing=0.99), "smoothing 0.99"),
        (ViewOptions(smoothing=0.0), "raw (no smoothing)"),
    ):
        group = panel.view(state, options, 80, 20)
        header = group.renderables[0].plain
        assert panel.border_subtitle == said
        weight = options.smoothing_for(state.smoothing)
        if weight:
            assert f"smoothed {format_value(ema(losses, weight)[-1])}" in header
        else:
            assert "smoothed" not in header


def test_s_cycles_through_the_levels_and_the_runs_own_weight():
    def cycle(start: float, run_weight: float, count: int) -> list[float]:
        weights, weight = [], start
        for _ in range(count):
            weight = next_smoothing(weight, run_weight)
            weights.append(weight)
        return weights

    assert cycle(0.9, 0.9, 4) == [0.99, 0.0, 0.6, 0.9]
    assert cycle(0.95, 0.95, 5) == [0.99, 0.0, 0.6, 0.9, 0.95]
    options = ViewOptions()
    assert options.smoothing_for(0.9) == 0.9
    assert options.next_smoothing(0.9).smoothing == 0.99


def test_the_metric_plot_is_smoothed_too():
    state, _, bleu = noisy_run()
    spec = metric_spec(state, "metrics/bleu", ViewOptions(smoothing=0.6), WIDTH)
    [smoothed] = drawn(spec, SMOOTHED_COLOR)
    np.testing.assert_allclose(smoothed.ys, ema(bleu, 0.6), rtol=1e-12)
    assert drawn(spec, RAW_COLOR)
    raw = metric_spec(state, "metrics/bleu", ViewOptions(smoothing=0.0), WIDTH)
    assert not drawn(raw, RAW_COLOR)  # alone, the raw curve is in the metric's colour
    assert all(c.ys.tolist() == bleu for c in drawn(raw, SMOOTHED_COLOR) if not c.points)


@pytest.fixture(scope="module")
def bleu_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoothing") / "run"
    env = {**worker_env(), "STEPS": "40", "EVERY": "10", "OMP_NUM_THREADS": "1"}
    script = TESTS_DIR / "scripts" / "log_bleu.py"
    done = subprocess.run(
        [sys.executable, str(script), str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return run_dir


async def test_s_in_the_app_redraws_the_plots_at_the_next_weight(bleu_run):
    app = TuimonApp(bleu_run, replay=True, fps=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.connection_status == "replay" and app.state.step == 40)
        main = app.query_one(LossPanel)
        await until(pilot, lambda: main.border_subtitle == "smoothing 0.9")
        for weight, said in ((0.99, "smoothing 0.99"), (0.0, "raw (no smoothing)")):
            await pilot.press("S")
            assert app.options.smoothing == weight
            await until(pilot, lambda said=said: main.border_subtitle == said)
        assert "smoothed" not in main.plain_lines()[0]
        await pilot.press("S")  # 0.6
        await until(pilot, lambda: "smoothed" in main.plain_lines()[0])
        await pilot.press("m")  # the metric plot keeps the weight
        await until(pilot, lambda: app.options.metric == "bleu")
        await until(pilot, lambda: str(main.border_title) == "Loss · bleu")
        assert main.border_subtitle == "smoothing 0.6"
