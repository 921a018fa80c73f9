"""Compare under Pilot: two real trainings of configs/mlp.yaml with different LRs, overlaid."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from rich.style import Style
from textual.app import App
from textual.widgets import Static

from tuimon.run.scalar_history import ScalarHistory
from tuimon.ui.overlay_plot import plot_color
from tuimon.ui.run_colors import run_color, run_colors
from tuimon.ui.screens.compare_screen import (
    CompareScreen,
    ConfigDiffScreen,
    OverlayPanel,
    metric_order,
    relative_change,
)
from tuimon.ui.screens.help_screen import HelpScreen

from conftest import REPO, until

MLP = str(REPO / "configs" / "mlp.yaml")
RUNS = {"a": ("mlp-lr-high", "0.01"), "b": ("mlp-lr-low", "0.001")}
HOSTILE_NAME = "\x1b]0;pwned\x07[bold red]evil[/]\x1b[31m"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    """Two finished 40-step trainings that differ in their name and their LR."""
    root = tmp_path_factory.mktemp("compare")
    processes = []
    for directory, (name, lr) in RUNS.items():
        command = [sys.executable, "-m", "tuimon", MLP, "--headless", "--quiet"]
        command += ["--run-dir", str(root / directory), "--set", "train.max_steps=40"]
        command += ["--set", f"optimizer.lr={lr}", "--set", f"name={name}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two at once on a 2-core box
        processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL))
    for process in processes:
        assert process.wait(timeout=240) == 0
    return [root / directory for directory in RUNS]


class CompareApp(App[None]):
    """Compare on its own, as the runs screen opens it."""

    def __init__(self, run_dirs: list[Path], baseline: Path | None = None) -> None:
        super().__init__()
        self.compare = CompareScreen(run_dirs, baseline)

    def on_mount(self) -> None:
        self.push_screen(self.compare)


def panel(screen: CompareScreen, name: str) -> OverlayPanel:
    return screen.query_one(f"#compare-{name}", OverlayPanel)


def braille_colors(text) -> set[int]:
    """The colour numbers of the plot's curve cells (braille), legend left out."""
    numbers = set()
    for span in text.spans:
        cells = text.plain[span.start : span.end]
        if any("\u2800" <= c <= "\u28ff" for c in cells):
            color = Style.parse(str(span.style)).color
            if color is not None:
                numbers.add(color.number)
    return numbers


def legend(text) -> str:
    return text.plain.splitlines()[-1]


def rendered(renderable) -> str:
    console = Console(width=200, file=io.StringIO(), force_terminal=True)
    with console.capture() as captured:
        console.print(renderable)
    return captured.get()


async def drawn(pilot, screen: CompareScreen, runs: int) -> None:
    """Until the logs were read and the loss plot shows `runs` curves."""
    await until(pilot, lambda: screen.runs_read == runs)
    assert len(panel(screen, "loss").curves) == runs
    assert "reading logs" not in screen.title_text().plain
    await fresh(pilot, screen)


async def fresh(pilot, screen: CompareScreen) -> None:
    """Until every plot has drawn what it was last shown."""
    await until(pilot, lambda: not any(p.stale for p in screen.query(OverlayPanel)))


async def test_both_runs_drawn_in_their_own_colours_with_a_legend(two_runs):
    app = CompareApp(two_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.compare
        await drawn(pilot, screen, 2)
        colors = run_colors(two_runs)
        # A run keeps its colour: the one the runs table gives it.
        assert screen.run_palette == colors
        assert colors[0] == run_color(two_runs[0])
        for name in ("loss", "lr"):
            text = panel(screen, name).text
            assert braille_colors(text) >= {plot_color(c) for c in colors}
            line = legend(text)
            assert "mlp-lr-high" in line and "mlp-lr-low" in line
            swatches = [span for span in text.spans if text.plain[span.start] == "■"]
            assert [str(span.style) for span in swatches] == colors
        # Validation: the runs' val_loss (one point each, at the end of training).
        assert panel(screen, "val").border_title == "val_loss"
        assert len(panel(screen, "val").curves) == 2


async def test_keys_change_the_axis_and_the_smoothing(two_runs):
    app = CompareApp(two_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.compare
        await drawn(pilot, screen, 2)
        loss = panel(screen, "loss")
        raw = loss.text.plain
        assert "step" in raw.splitlines()[-2] and "elapsed s" not in raw
        await pilot.press("t")
        await until(pilot, lambda: "elapsed s" in loss.text.plain)
        assert "x: elapsed s" in screen.title_text().plain
        await pilot.press("t")
        await until(pilot, lambda: "elapsed s" not in loss.text.plain)
        await pilot.press("S")
        await until(pilot, lambda: loss.smoothing == 0.6 and loss.text.plain != raw)
        assert "smoothing 0.6" in screen.title_text().plain
        for _ in range(3):  # 0.9, 0.99, then back to none
            await pilot.press("S")
        await until(pilot, lambda: loss.smoothing == 0.0 and loss.text.plain == raw)
        await pilot.press("y")
        await until(pilot, lambda: loss.log_y and "log y" in screen.title_text().plain)
        val = panel(screen, "val")
        await pilot.press("v")  # the validation plot's next metric
        await until(pilot, lambda: val.border_title == "val_acc")
        assert screen.runs_text().plain.splitlines()[0].startswith("› 1")
        await pilot.press("tab")
        await until(pilot, lambda: screen.runs_text().plain.splitlines()[1].startswith("› 2"))


async def test_baseline_is_listed_first_and_each_run_is_given_relative_to_it(two_runs):
    app = CompareApp(two_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.compare
        await drawn(pilot, screen, 2)
        await pilot.press("2", "b")  # select the second run, pin it
        loss = panel(screen, "loss")
        await until(pilot, lambda: "(baseline)" in legend(loss.text))
        assert legend(loss.text).startswith("◆ mlp-lr-low (baseline)")
        assert [c.baseline for c in loss.curves] == [False, True]
        lines = screen.runs_text().plain.splitlines()
        assert "vs baseline" in lines[0] and lines[1].endswith("baseline")
        # The change: the first run's last loss against the baseline's, both at step 40.
        last = []
        for run_dir in two_runs:
            history = ScalarHistory(run_dir)
            history.update()
            series = history.series("loss")
            assert series is not None and series.column("step")[-1] == 40
            last.append(float(series.column("last")[-1]))
        percent = (last[0] - last[1]) / abs(last[1]) * 100
        assert f"{percent:+.1f}% vs baseline at step 40" in lines[0]
        await pilot.press("b")  # pinning the baseline again unpins it
        await until(pilot, lambda: "(baseline)" not in legend(loss.text))
        assert "vs baseline" not in screen.runs_text().plain


async def test_config_diff_shows_what_differs_side_by_side(two_runs):
    app = CompareApp(two_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.compare
        await drawn(pilot, screen, 2)
        await pilot.press("D")
        await until(pilot, lambda: isinstance(app.screen, ConfigDiffScreen))
        diff = app.screen
        assert isinstance(diff, ConfigDiffScreen)
        rows = {row[0]: row[1:] for row in diff.rows()}
        assert rows["optimizer.lr"] == ["0.01", "0.001"]
        assert rows["name"] == ["mlp-lr-high", "mlp-lr-low"]
        assert "train.max_steps" not in rows and "model.hidden" not in rows
        title = diff.query_one("#diff-title", Static).content
        assert "2 keys differ" in str(title)
        await pilot.press("a")  # every key, the identical ones too
        await until(pilot, lambda: diff.every_key)
        rows = {row[0]: row[1:] for row in diff.rows()}
        assert rows["train.max_steps"] == ["40", "40"]
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is screen)
        await pilot.press("question_mark")  # the keys, from the same registry as the bindings
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        keys = app.screen.query(Static).last().content
        assert "pin the selected run" in rendered(keys)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is screen)


def fake_run(run_dir: Path, name: str, losses: list[float], **start) -> None:
    """A log as a script could write it: a start (named `name`), then steps."""
    run_dir.mkdir(parents=True)
    events = [{"type": "start", "name": name, "config": {"lr": 0.1, name: 1}, "time": 0.0}]
    events[0].update(start)
    events += [
        {"type": "step", "step": i + 1, "loss": loss, "lr": 0.1, "time": float(i + 1)}
        for i, loss in enumerate(losses)
    ]
    with open(run_dir / "events.jsonl", "w") as log:
        log.writelines(json.dumps(event) + "\n" for event in events)


async def test_hostile_names_stay_text_and_a_growing_log_is_followed(tmp_path):
    hostile, plain = tmp_path / "hostile", tmp_path / "plain"
    fake_run(hostile, HOSTILE_NAME, [3.0, float("nan"), 2.0, float("inf"), 1.0])
    # The plain run's worker was a real process, gone without an end: it died.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=60)
    fake_run(plain, "plain", [2.0, 1.5], pid=gone.pid, host=socket.gethostname(), time=time.time())
    app = CompareApp([hostile, plain])
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.compare
        await drawn(pilot, screen, 2)
        loss = panel(screen, "loss")
        for text in (loss.text, screen.runs_text()):
            assert "\x1b" not in text.plain and "\x07" not in text.plain
            assert "[bold red]evil[/]" in text.plain  # shown as written, not as markup
            assert "\x1b]0;" not in rendered(text)
        assert "[bold red]evil[/]" in legend(loss.text)
        lines = screen.runs_text().plain.splitlines()
        assert "  running  " in lines[0]  # no pid to check: what its log says, as on runs
        assert "  died  " in lines[1]  # its pid is gone, and no end in its log
        await pilot.press("D")
        await until(pilot, lambda: isinstance(app.screen, ConfigDiffScreen))
        keys = [row[0] for row in app.screen.rows()]
        assert keys == sorted(keys) and all("\x1b" not in key for key in keys)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is screen)
        # The plain run's log grows, as a live run's does: its curve follows.
        with open(plain / "events.jsonl", "a") as log:
            for step in (3, 4, 5):
                event = {"type": "step", "step": step, "loss": 1.0, "time": float(step)}
                log.write(json.dumps(event) + "\n")
        await until(
            pilot,
            lambda: any(
                c.xs.size == 5 and c.xs[-1] == 5 for c in loss.curves if c.label == "plain"
            ),
        )


async def test_logs_are_read_off_the_ui_thread(two_runs, monkeypatch):
    threads: list[threading.Thread] = []
    real_update = ScalarHistory.update

    def update(self: ScalarHistory) -> bool:
        threads.append(threading.current_thread())
        return real_update(self)

    monkeypatch.setattr(ScalarHistory, "update", update)
    app = CompareApp(two_runs, baseline=two_runs[0])
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.compare
        await drawn(pilot, screen, 2)
        await until(pilot, lambda: len(threads) >= 4)  # the first read and a timer's
        assert "◆ mlp-lr-high (baseline)" in legend(panel(screen, "loss").text)
    assert len(threads) >= 4
    assert threading.main_thread() not in threads


def test_relative_change_reads_both_runs_at_the_same_x():
    run = (np.array([0.0, 10.0, 20.0]), np.array([4.0, 2.0, 1.0]))
    base = (np.array([0.0, 10.0]), np.array([4.0, 4.0]))  # shorter: compared at x=10
    assert relative_change(run, base) == (10.0, 2.0, -50.0)
    assert relative_change(base, run) == (10.0, 4.0, 100.0)
    empty = (np.empty(0), np.empty(0))
    assert relative_change(run, empty) is None
    zero = (np.array([0.0, 20.0]), np.array([0.0, 0.0]))
    assert relative_change(run, zero) is None  # no percentage of zero


def test_metric_order_puts_val_loss_first_and_leaves_step_fields_out():
    names = ["lr", "loss", "lr/1", "grad_norm", "layer_grad_norms/net.1", "bleu", "val_acc"]
    assert metric_order([*names, "val_loss", "metrics/loss"]) == [
        "val_loss",
        "val_acc",
        "bleu",
        "metrics/loss",
    ]


async def test_m_opens_every_metric_of_these_runs(two_runs):
    from tuimon.ui.screens import metrics_screen

    app = CompareApp(two_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await drawn(pilot, app.compare, 2)
        await pilot.press("M")
        await until(pilot, lambda: isinstance(app.screen, metrics_screen.MetricsScreen))


async def test_a_read_landing_after_the_screen_closed_draws_nothing(two_runs):
    app = CompareApp(two_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.compare
        await drawn(pilot, screen, 2)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is not screen)
        reads = screen.reads
        # What the reading thread hands over when its read ends after the screen closed.
        screen._take(screen.runs[:1], 1)
        assert screen.reads == reads + 1 and app.is_running and app.return_code is None


async def test_a_live_run_grows_on_the_plot_and_shows_died_when_killed(
    two_runs, start_worker, write_config, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # leave a core to the app under test
    live = start_worker(write_config())
    app = CompareApp([two_runs[0], live.run_dir])
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.compare
        await until(pilot, lambda: screen.runs_read == 2)  # the live one may have no step yet
        loss = panel(screen, "loss")

        def last_step() -> float:
            live_curves = [c for c in loss.curves if c.label == "endless" and c.xs.size]
            return float(live_curves[0].xs[-1]) if live_curves else -1.0

        await until(pilot, lambda: last_step() > 0)
        first = last_step()
        await until(pilot, lambda: last_step() > first)  # read again as the log grew
        assert "  running  " in screen.runs_text().plain.splitlines()[1]
        live.process.send_signal(signal.SIGKILL)
        live.process.wait(timeout=30)
        await until(pilot, lambda: "  died  " in screen.runs_text().plain.splitlines()[1])
