"""Headless output: progress arithmetic and formatting, and what gets printed when."""

from __future__ import annotations

import io

import pytest

from tuimon.headless.console import ConsoleReporter
from tuimon.headless.progress import Progress
from tuimon.number_text import format_duration, format_value
from tuimon.series.smoothing import DebiasedEMA, smooth


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59.4, "59s"),
        (61, "1m01s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (3 * 86400 + 7200, "3d02h"),
        (None, "?"),
        (float("inf"), "?"),
        (-1, "?"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (2.302585, "2.303"),
        (0.0005, "5.000e-04"),
        (123456.0, "1.235e+05"),
        (0.0, "0"),
        (None, "n/a"),
        (float("nan"), "nan"),
    ],
)
def test_format_value(value, text):
    assert format_value(value) == text


def test_debiased_ema_starts_at_the_first_value_and_skips_nan():
    ema = DebiasedEMA(0.9)
    assert ema.value is None
    assert ema.update(4.0) == pytest.approx(4.0)  # a biased EMA would say 0.4
    assert ema.update(float("nan")) == pytest.approx(4.0)
    assert ema.update(2.0) == pytest.approx((0.9 * 0.1 * 4 + 0.1 * 2) / (1 - 0.81))
    assert smooth([1.0, 1.0, 1.0], 0.5) == pytest.approx([1.0, 1.0, 1.0])


def test_progress_eta_and_throughput():
    progress = Progress(total_steps=100, epochs=2)
    for step in range(1, 11):
        progress.add_step(
            {
                "step": step,
                "epoch": 0,
                "loss": 1.0,
                "lr": 0.1,
                "grad_norm": 2.0,
                "step_time": 0.5,
                "samples": 64,
            }
        )
    progress.close_window()
    assert progress.samples_per_s == pytest.approx(128)
    assert progress.eta == pytest.approx(90 * 0.5)
    line = progress.line("run")
    assert "step 10/100 (10.0%)" in line and "ETA 45s" in line and "128 samples/s" in line
    assert "epoch 1/2" in line


def test_console_prints_alerts_at_once_and_progress_on_a_timer():
    out = io.StringIO()
    console = ConsoleReporter("run", print_every=3600, stream=out)
    console(
        {
            "type": "start",
            "total_steps": 10,
            "epochs": 1,
            "run_dir": "/r",
            "device": {"name": "cpu"},
            "model": {"class": "MLP", "params": 1000},
            "notes": ["CIFAR10 is not in data/"],
        }
    )
    console({"type": "step", "step": 1, "loss": 2.0, "step_time": 0.1, "samples": 8})
    console(
        {
            "type": "alert",
            "rule": "nan_loss",
            "severity": "error",
            "step": 1,
            "message": "loss is NaN",
            "suggestion": "lower the LR",
        }
    )
    console(
        {"type": "control", "command": "set-lr", "old": 0.1, "new": 0.05, "step": 1, "source": "ui"}
    )
    console(
        {
            "type": "end",
            "status": "failed",
            "step": 1,
            "elapsed": 1.5,
            "error": "Traceback...\nRuntimeError: boom",
        }
    )
    text = out.getvalue()
    assert "note: CIFAR10 is not in data/" in text
    assert "ERROR nan_loss at step 1: loss is NaN" in text and "suggestion: lower the LR" in text
    assert "set-lr at step 1: 0.1 -> 0.05 (from ui)" in text
    assert "failed at step 1 in 1.5s" in text and "error: RuntimeError: boom" in text
    assert text.count("ETA") == 1  # only the closing line: the timer never came round
