"""Layouts at 80x24 and 200x60: every panel shown with its title, nothing spilling over."""

from __future__ import annotations

import json
import time

import pytest
from rich.cells import cell_len

from tuimon.run.run_state import RunState
from tuimon.series.bucketed import BucketSeries
from tuimon.ui.app import TuimonApp
from tuimon.ui.widgets.panel import Panel
from tuimon.ui.widgets.status_bar import StatusBar

from conftest import ENDLESS_CONFIG, run_tuimon

TITLES = {
    "loss": "Loss",
    "doctor": "Doctor",
    "metrics": "Metrics",
    "lr": "Learning rate",
    "grad": "Gradients",
    "gpu": "GPU",
    "host": "Host",
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A real short run (60 steps, with an alert and a note added to its log)."""
    root = tmp_path_factory.mktemp("finished")
    config = root / "config.yaml"
    config.write_text(
        ENDLESS_CONFIG.replace("max_steps: 100000000", "max_steps: 60")
        + "  probes: {update_ratio_every: 10}\n"
    )
    done = run_tuimon(config, "--headless", "--run-dir", root / "run", cwd=root)
    assert done.returncode == 0, done.stderr
    log = root / "run" / "events.jsonl"
    lines = log.read_text().splitlines()
    alert = {
        "type": "alert",
        "seq": 10**6,
        "time": time.time(),
        "step": 30,
        "rule": "oscillation",
        "severity": "warning",
        "message": "loss swings 3.1x its trend over the last 50 steps",
        "suggestion": "halve the learning rate",
        "evidence": {"ratio": 3.1},
        "action": {"cmd": "scale-lr", "factor": 0.5},
    }
    # The alert goes before the `end` line, as a live run would have written it.
    lines.insert(-1, json.dumps(alert))
    log.write_text("\n".join(lines) + "\n")
    return root / "run"


@pytest.mark.parametrize(("width", "height"), [(80, 24), (200, 60), (120, 40)])
async def test_every_panel_fits_with_its_title(finished_run, width, height):
    app = TuimonApp(finished_run, replay=True, fps=20)
    async with app.run_test(size=(width, height)) as pilot:
        deadline = time.monotonic() + 30
        while app.connection_status != "replay" or app.state.step < 60:
            assert time.monotonic() < deadline
            await pilot.pause(0.05)
        app.refresh_panels(everything=True)
        await pilot.pause()
        assert app.screen.has_class("-narrow") == (width < 110)
        screen = app.screen.region
        regions = []
        for panel_id, title in TITLES.items():
            panel = app.query_one(f"#{panel_id}", Panel)
            region = panel.region
            assert panel.border_title == title
            assert screen.contains_region(region), (panel_id, region)
            assert region.width >= len(title) + 4 and region.height >= 3, (panel_id, region)
            regions.append(region)
            content = panel.content_size
            lines = panel.plain_lines()
            assert len(lines) <= content.height, (panel_id, len(lines), content)
            assert max(cell_len(line) for line in lines) <= content.width, panel_id
        for i, a in enumerate(regions):
            for b in regions[i + 1 :]:
                assert not a.overlaps(b)
        status = app.query_one(StatusBar)
        assert status.region.height == 1 and "replay" in status.plain_lines()[0]
        svg = app.export_screenshot()
        shown = ("Loss", "Doctor", "Metrics", "Learning", "Gradients", "GPU", "Host")
        for title in (*shown, "oscillation", "val_loss"):
            assert title in svg, title


def million_step_state() -> RunState:
    state = RunState()
    state.apply_many(
        [
            {
                "type": "start",
                "seq": 1,
                "time": 0.0,
                "name": "big",
                "total_steps": 2_000_000,
                "steps_per_epoch": 1000,
            }
        ]
    )
    for name in ("loss", "loss_ema", "grad_norm", "lr/0"):
        series = state.series[name] = BucketSeries(state.capacity)
        for step in range(1, 1_000_001):
            series.append(step, step * 0.01, step / 1000, 1.0 / step**0.5)
    state.last_step = {"step": 1_000_000, "epoch": 999}
    return state


async def test_a_million_steps_arrive_as_a_small_snapshot_and_draw(tmp_path):
    """The snapshot's size is bounded by the buckets, not the run; how fast it draws is a
    benchmark (scripts/bench_ui.py, scripts/bench_replay.py), not a timed test."""
    state = million_step_state()
    wire = json.dumps(state.snapshot())
    assert len(wire) < 2_000_000  # bounded by the bucket capacity, not by the run length
    received = RunState.from_snapshot(json.loads(wire))
    (tmp_path / "events.jsonl").write_text("")
    app = TuimonApp(tmp_path, replay=True, fps=20)
    async with app.run_test(size=(200, 60)) as pilot:
        app.state = received
        app.refresh_panels(everything=True)
        await pilot.pause()
        loss = app.query_one("#loss", Panel)
        assert loss.draws >= 1 and "1000000" in "".join(loss.plain_lines()).replace(".0", "")
