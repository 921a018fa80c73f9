"""Every scalar a script logs with `mon.log()` is shown: in the Metrics panel, in the main
plot (`m` picks which), and on the headless progress lines.

The run is a real short training loop with a Monitor: a small classifier on synthetic data
that logs its train accuracy every step and, every 25 steps, a validation loss, accuracy
and mean logit margin, as tutorials do.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tuimon
from tuimon.headless.console import ConsoleReporter
from tuimon.number_text import format_value
from tuimon.run.log_reader import read_events
from tuimon.ui.app import TuimonApp
from tuimon.ui.widgets.loss_panel import LossPanel
from tuimon.ui.widgets.metrics_panel import MetricsPanel

STEPS = 120
NAMES = ["train_acc", "val_loss", "val_acc", "margin"]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


def train(run_dir: Path) -> None:
    torch.manual_seed(0)
    centers = torch.randn(4, 16) * 0.5
    labels = torch.randint(0, 4, (640,))
    data = centers[labels] + torch.randn(640, 16)  # overlapping classes: no 100%
    train_x, train_y, val_x, val_y = data[:512], labels[:512], data[512:], labels[512:]
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with tuimon.Monitor(model, optimizer, run_dir=run_dir, quiet=True) as mon:
        for step in range(STEPS):
            batch = torch.randint(0, 512, (32,))
            x, y = train_x[batch], train_y[batch]
            optimizer.zero_grad()
            output = model(x)
            loss = F.nll_loss(output, y)
            loss.backward()
            optimizer.step()
            mon.step(loss, inputs=x, targets=y, outputs=output)
            mon.log(train_acc=(output.argmax(1) == y).float().mean().item())
            if step % 25 == 24:
                model.eval()
                with torch.no_grad():
                    out = model(val_x)
                    top2 = out.topk(2, dim=1).values
                    mon.log(
                        val_loss=F.nll_loss(out, val_y).item(),
                        val_acc=(out.argmax(1) == val_y).float().mean().item(),
                        margin=(top2[:, 0] - top2[:, 1]).mean().item(),
                    )
                model.train()


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("metrics") / "run"
    train(run_dir)
    return run_dir


def last_logged(run_dir: Path) -> dict[str, float]:
    latest: dict[str, float] = {}
    for event in read_events(run_dir / "events.jsonl"):
        if event["type"] == "metrics":
            latest.update({k: v for k, v in event.items() if k in NAMES})
    return latest


async def replayed(pilot, app: TuimonApp) -> None:
    deadline = time.monotonic() + 30
    while app.connection_status != "replay" or app.state.step < STEPS:
        assert time.monotonic() < deadline, "the replay never loaded"
        await pilot.pause(0.05)
    app.refresh_panels(everything=True)
    await pilot.pause()


@pytest.mark.parametrize(("width", "height"), [(80, 24), (200, 60)])
async def test_every_logged_metric_is_listed_and_m_plots_each_in_turn(logged_run, width, height):
    latest = last_logged(logged_run)
    assert set(latest) == set(NAMES)
    app = TuimonApp(logged_run, replay=True, fps=20)
    async with app.run_test(size=(width, height)) as pilot:
        await replayed(pilot, app)
        metrics, main = app.query_one(MetricsPanel), app.query_one(LossPanel)
        listed = metrics.plain_lines()
        if height >= 60:  # room for all four, each with its value and a sparkline
            for name in NAMES:
                [line] = [line for line in listed if line.split()[0] == name]
                assert line.split()[1] == format_value(latest[name])
                assert any(block in line for block in "▁▂▃▄▅▆▇█")
        else:  # at 80x24 what does not fit is counted, not cut off
            assert listed[0].split()[:2] == ["train_acc", format_value(latest["train_acc"])]
            assert listed[-1].strip().startswith("+") and "more" in listed[-1]
        assert main.border_title == "Loss" and "train" in main.plain_lines()[0]

        for name in NAMES:  # m: each metric in turn on the main plot, marked in the list
            await pilot.press("m")
            app.refresh_panels(everything=True)
            await pilot.pause()
            assert app.options.metric == name
            assert main.border_title == f"Loss · {name}"
            assert main.plain_lines()[0].startswith(f"{name} {format_value(latest[name])}")
            marked = [line for line in metrics.plain_lines() if line.startswith("▶")]
            assert marked and marked[0][1:].split()[0] == name
        await pilot.press("m")  # and back to the loss
        app.refresh_panels(everything=True)
        await pilot.pause()
        assert app.options.metric is None and main.border_title == "Loss"


def test_headless_progress_lines_show_every_logged_metric(logged_run):
    out = io.StringIO()
    console = ConsoleReporter("run", print_every=3600, stream=out)
    for event in read_events(logged_run / "events.jsonl"):
        console(event)
    lines = out.getvalue().splitlines()
    latest = last_logged(logged_run)
    progress = [line for line in lines if "loss" in line and "lr" in line and "grad" in line]
    assert progress, lines
    for name in NAMES:  # the closing progress line carries the latest of every metric
        assert f"  {name} {format_value(latest[name])}" in progress[-1]
    # train_acc is logged every step: it rides on the progress line, one line per
    # print_every, instead of a line per step.
    assert sum(1 for line in lines if "train_acc" in line) <= 2
