"""The metrics screen (`M`) lists every scalar a run logged and plots any of them, for one
run or several overlaid.

The runs are real: tests/scripts/log_bleu.py, a tiny torch loop with a Monitor that logs
`mon.log(bleu=..., token_acc=...)` every 10 steps, run to its end in a child process (two
of them, different seeds; the second also logs a metric with a hostile name).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from textual.app import App
from textual.widgets import DataTable

from tuimon.number_text import format_value
from tuimon.run.log_reader import read_events
from tuimon.run.scalar_history import ScalarHistory
from tuimon.ui.app import TuimonApp
from tuimon.ui.screens.metrics_screen import MetricsScreen

from conftest import TESTS_DIR, until, worker_env

SCRIPT = TESTS_DIR / "scripts" / "log_bleu.py"
STEPS, EVERY = 40, 10
# Markup, an OSC that would set the terminal's title, and a CSI colour.
HOSTILE = "[red]evil\x1b]0;pwned\x07\x1b[31m"
HOSTILE_SHOWN = "[red]evil"  # what is left of it to see: the sequences are dropped


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two runs of the script, to their end (both at once: each is a torch import)."""
    root = tmp_path_factory.mktemp("bleu")
    first, second = root / "bleu-a", root / "bleu-b"
    children = []
    for run_dir, seed, extra in ((first, "0", None), (second, "1", HOSTILE)):
        env = {**worker_env(), "STEPS": str(STEPS), "EVERY": str(EVERY), "SEED": seed}
        env["OMP_NUM_THREADS"] = "1"
        if extra:
            env["EXTRA_METRIC"] = extra
        children.append(
            subprocess.Popen(
                [sys.executable, str(SCRIPT), str(run_dir)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for child in children:
        output, _ = child.communicate(timeout=240)
        assert child.returncode == 0, output
    return first, second


def last_logged(run_dir: Path, name: str) -> tuple[float, int]:
    """The newest value of a logged metric, and how many times it was logged."""
    values = [e[name] for e in read_events(run_dir / "events.jsonl") if name in e]
    return values[-1], len(values)


def table_lines(screen: MetricsScreen) -> list[str]:
    """The table as drawn on the screen, line by line."""
    table = screen.query_one(DataTable)
    return [
        "".join(segment.text for segment in table.render_line(y)) for y in range(table.size.height)
    ]


async def test_m_lists_bleu_logged_by_a_script_filters_and_plots_it(runs, monkeypatch):
    run_dir = runs[0]
    bleu, logged = last_logged(run_dir, "bleu")
    assert logged == STEPS // EVERY
    read_on = set()  # the threads that read the log for the screen
    update = ScalarHistory.update

    def update_recording_thread(self: ScalarHistory) -> bool:
        read_on.add(threading.current_thread() is threading.main_thread())
        return update(self)

    monkeypatch.setattr(ScalarHistory, "update", update_recording_thread)

    app = TuimonApp(run_dir, replay=True, fps=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.connection_status == "replay")
        await pilot.press("M")
        await until(pilot, lambda: isinstance(app.screen, MetricsScreen))
        screen = app.screen
        assert isinstance(screen, MetricsScreen)
        await until(pilot, lambda: "bleu" in screen.row_texts())
        rows = screen.row_texts()
        # Every scalar: the step's own fields and the script's metrics.
        for name in ("loss", "lr", "grad_norm", "step_time", "samples_per_s", "token_acc"):
            assert name in rows, sorted(rows)
        assert rows["bleu"] == ["bleu", format_value(bleu), str(logged)]
        assert rows["loss"][2] == str(STEPS)
        # The first scalar plotted is the loss.
        await until(pilot, lambda: "loss" in screen.plot_text())

        await pilot.press("slash", "b", "l", "e")
        await until(pilot, lambda: list(screen.row_texts()) == ["bleu"])
        assert "loss" not in screen.row_texts()
        await until(
            pilot, lambda: any(line.lstrip().startswith("bleu ") for line in table_lines(screen))
        )
        await pilot.press("enter")
        await until(pilot, lambda: screen.plotted == "bleu" and "bleu" in screen.plot_text())
        plot = screen.plot_text()
        assert plot.splitlines()[0].startswith(f"bleu  latest {format_value(bleu)}")
        assert "smoothing 0.9" in plot  # the run's own weight, passed from the app
        await pilot.press("S")
        await until(pilot, lambda: "smoothing 0.99" in screen.plot_text())
        assert "elapsed s" not in plot and "step" in plot.splitlines()[-1]
        await pilot.press("t", "y")  # elapsed seconds on x, a log y axis
        await until(pilot, lambda: "elapsed s" in screen.plot_text())
        await until(pilot, lambda: "[log]" in screen.plot_text().splitlines()[0])

        # Esc clears the filter: every scalar again, the cursor still on bleu.
        await pilot.press("escape")
        await until(pilot, lambda: "loss" in screen.row_texts())
        assert screen.filter_text == "" and screen.selected_name() == "bleu"
        # Keys typed into the filter are text, not the screen's or the app's keys
        # (t: x axis, y: log, s: checkpoint, p: pause).
        options = screen.options
        await pilot.press("slash", *"step_ty")
        await until(pilot, lambda: screen.filter_text == "step_ty")
        assert screen.row_texts() == {} and screen.options == options
        await pilot.press("backspace")
        await until(pilot, lambda: list(screen.row_texts()) == ["step_time"])
        await pilot.press("escape")
        await until(pilot, lambda: "loss" in screen.row_texts())
        await pilot.press("escape")  # and closes
        await until(pilot, lambda: not isinstance(app.screen, MetricsScreen))
    assert read_on == {False}, "a log was read on the UI thread"


async def test_a_growing_log_updates_the_table_and_keeps_the_filter_and_cursor(runs, tmp_path):
    lines = (runs[0] / "events.jsonl").read_bytes().splitlines(keepends=True)
    run_dir = tmp_path / "growing"
    run_dir.mkdir()
    half = len(lines) // 2
    log = run_dir / "events.jsonl"
    log.write_bytes(b"".join(lines[:half]))
    app = App[None]()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = MetricsScreen([run_dir])
        await app.push_screen(screen)
        await until(pilot, lambda: "loss" in screen.row_texts())
        await pilot.press("slash", "s")  # loss, samples, samples_per_s, step_time…
        await until(pilot, lambda: "lr" not in screen.row_texts())
        await pilot.press("tab")  # from the filter to the table
        await pilot.press("down")
        chosen = screen.selected_name()
        assert chosen is not None and chosen != next(iter(screen.row_texts()))
        before = int(screen.row_texts()["loss"][-1])
        with log.open("ab") as out:
            out.write(b"".join(lines[half:]))
        await until(pilot, lambda: int(screen.row_texts()["loss"][-1]) == STEPS)
        assert before < STEPS
        assert screen.filter_text == "s" and "lr" not in screen.row_texts()
        assert screen.selected_name() == chosen


async def test_several_runs_are_listed_side_by_side_and_overlaid_with_a_legend(runs):
    first, second = runs
    app = App[None]()
    async with app.run_test(size=(140, 40)) as pilot:
        screen = MetricsScreen([first, second])
        await app.push_screen(screen)
        await until(pilot, lambda: "bleu" in screen.row_texts())
        rows = screen.row_texts()
        bleu_a, count = last_logged(first, "bleu")
        bleu_b, _ = last_logged(second, "bleu")
        assert bleu_a != bleu_b
        assert rows["bleu"] == [
            "bleu",
            format_value(bleu_a),
            format_value(bleu_b),
            f"{count}/{count}",
        ]
        # The hostile name: only the second run logged it; shown as text, never as markup
        # or escape codes.
        [hostile] = [name for name in rows if name.startswith("[red]")]
        assert rows[hostile][1:3] == ["—", format_value(1.0)]

        await pilot.press("slash", *"bleu", "enter")
        await until(pilot, lambda: screen.plotted == "bleu" and "bleu" in screen.plot_text())
        plot = screen.plot_text()
        legend = plot.rstrip("\n").splitlines()[-1]
        assert first.name in legend and second.name in legend, plot

        await pilot.press("escape", "slash", *"[red]")
        await until(pilot, lambda: list(screen.row_texts()) == [hostile])
        await until(pilot, lambda: any(HOSTILE_SHOWN in line for line in table_lines(screen)))
        assert not any("\x1b" in line or "\x07" in line for line in table_lines(screen))
        await pilot.press("enter")
        await until(pilot, lambda: screen.plotted == hostile)
        await until(pilot, lambda: HOSTILE_SHOWN in screen.plot_text())
        assert "\x1b" not in screen.plot_text() and "\x07" not in screen.plot_text()


def test_the_script_logs_bleu_and_step_fields(runs):
    """The script is what the screen reads: a real run with bleu and per-step timings."""
    history = ScalarHistory(runs[0])
    assert history.update()
    names = history.names()
    assert "bleu" in names and "step_time" in names and "samples_per_s" in names
    series = history.series("bleu")
    assert series is not None and series.total == STEPS // EVERY
    assert history.status == "completed"
    assert os.path.getsize(runs[0] / "events.jsonl") == history.offset


async def test_on_a_live_run_the_table_follows_its_log(write_config, start_worker):
    """Attached to a live worker, the screen reads the same events.jsonl and keeps up."""
    worker = start_worker(write_config())
    app = TuimonApp(worker.run_dir, fps=20)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.connection_status == "connected" and app.state.step > 0)
        await pilot.press("M")
        await until(pilot, lambda: isinstance(app.screen, MetricsScreen))
        screen = app.screen
        assert isinstance(screen, MetricsScreen)
        await until(pilot, lambda: "loss" in screen.row_texts())
        first = int(screen.row_texts()["loss"][-1])
        await until(pilot, lambda: int(screen.row_texts()["loss"][-1]) > first)
        assert "samples_per_s" in screen.row_texts()
        await pilot.press("q")  # closes the screen, not the app
        await until(pilot, lambda: not isinstance(app.screen, MetricsScreen))
        assert app.is_running
