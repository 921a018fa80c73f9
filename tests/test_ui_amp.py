"""Under mixed precision the user sees the GradScaler's loss scale and how many steps it
skipped, beside the gradient norm ("scale 2^11 · 3 skipped"), and only for a run with a
scaler.

The runs are real float16 autocast loops on the CPU with `torch.amp.GradScaler("cpu")`
and a Monitor(scaler=...): a summed loss, whose gradients overflow float16 at the
scaler's first scale, so it skips its first steps while it finds its scale.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tuimon import Monitor
from tuimon.doctor.rules.mixed_precision import scale_text
from tuimon.run.log_reader import read_events
from tuimon.run.replay_cache import load_replay_state
from tuimon.run.run_state import RunState, load_run_state
from tuimon.ui.app import TuimonApp
from tuimon.ui.widgets.grad_panel import GradPanel

STEPS = 60


def train(run_dir: Path, *, fp16: bool) -> None:
    """A small classifier; under `fp16`, autocast to float16 with a GradScaler."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05 / 64, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu") if fp16 else None
    x, y = torch.randn(640, 16), torch.randint(0, 4, (640,))
    with Monitor(model, optimizer, scaler=scaler, run_dir=run_dir, quiet=True) as mon:
        for n in range(STEPS):
            xb, yb = x[n % 10 * 64 :][:64], y[n % 10 * 64 :][:64]
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
                loss = F.cross_entropy(model(xb), yb, reduction="sum")
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            mon.step(loss)


@pytest.fixture(scope="module")
def amp_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("amp") / "run"
    train(run_dir, fp16=True)
    return run_dir


def step_events(run_dir: Path) -> list[dict[str, Any]]:
    return [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "step"]


def expected(run_dir: Path) -> tuple[float, int]:
    """The last step's loss scale, and the steps the scaler skipped, as the log says."""
    events = step_events(run_dir)
    return events[-1]["loss_scale"], sum(1 for e in events if e["optimizer_steps"] == 0)


def test_the_run_state_keeps_the_latest_scale_and_counts_skipped_steps(amp_run):
    scale, skipped = expected(amp_run)
    assert skipped >= 1 and step_events(amp_run)[0]["optimizer_steps"] == 0  # it did skip
    one_by_one = RunState()
    for event in read_events(amp_run / "events.jsonl"):
        one_by_one.apply(event)
    loaded = load_run_state(amp_run / "events.jsonl")  # a log loaded in bulk
    # An attaching client's copy: the worker's snapshot, through JSON.
    attached = RunState.from_snapshot(json.loads(json.dumps(one_by_one.snapshot())))
    cached = load_replay_state(amp_run)  # a replay (state.json, when it stands for the log)
    for state in (one_by_one, loaded, attached, cached):
        assert (state.loss_scale, state.skipped_steps) == (scale, skipped)


def test_a_run_state_without_a_scaler_has_no_scale(tmp_path):
    state = RunState()
    state.apply({"type": "step", "step": 1, "loss": 1.0, "optimizer_steps": 1})
    state.apply({"type": "step", "step": 2, "loss": 1.0, "optimizer_steps": 0})
    # A damaged log's fields count for nothing.
    state.apply({"type": "step", "step": 3, "loss": 1.0, "optimizer_steps": False})
    state.apply({"type": "step", "step": 4, "loss": 1.0, "loss_scale": "big"})
    assert (state.loss_scale, state.skipped_steps) == (None, 1)
    # A snapshot from before mixed precision: neither key.
    old = state.snapshot()
    del old["loss_scale"], old["skipped_steps"]
    assert (RunState.from_snapshot(old).loss_scale, RunState.from_snapshot(old).skipped_steps) == (
        None,
        0,
    )


async def header_of(run_dir: Path, size: tuple[int, int] = (120, 40)) -> list[str]:
    """The Gradients panel's first two lines in a replay of the run."""
    app = TuimonApp(run_dir, replay=True, fps=20)
    async with app.run_test(size=size) as pilot:
        deadline = time.monotonic() + 30
        while app.connection_status != "replay" or app.state.step < STEPS:
            assert time.monotonic() < deadline, "the replay never loaded"
            await pilot.pause(0.05)
        app.refresh_panels(everything=True)
        await pilot.pause()
        return app.query_one(GradPanel).plain_lines()[:2]


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 60)])
async def test_the_gradients_panel_shows_the_scale_and_the_skipped_steps(amp_run, size):
    scale, skipped = expected(amp_run)
    header = await header_of(amp_run, size)
    shown = f"scale {scale_text(scale)} · {skipped} skipped"
    assert scale_text(scale).startswith("2^")
    if size[0] >= 200:  # room beside the gradient norm
        assert header[0].startswith("global ") and header[0].endswith(shown), header
    else:  # else on a line of its own, not cut off
        assert header[0].startswith("global ") and header[1].strip() == shown, header


async def test_a_run_without_a_scaler_shows_no_scale(tmp_path):
    train(tmp_path / "run", fp16=False)
    header = await header_of(tmp_path / "run")
    assert header[0].startswith("global ")
    assert not any("scale" in line or "skipped" in line for line in header), header
