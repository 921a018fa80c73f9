"""`tuimon --root DIR` in a real terminal: every run in its state (one killed with SIGKILL
shows `died`), a finished run's replay and a live run's UI opened with enter, `q` back to
the runs screen as it was left each time, then `q` to quit."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_runs_screen import Runs, start_runs

from tuimon.control.client import is_alive

from tmux_terminal import Tmux, tmux_server

STATES = ("running", "completed", "failed", "died")
ALL_SHOWN = "tuimon runs · 4 runs under runs"  # unfiltered ("1 of 4 runs" when filtered)
NAMES = ("live-run", "mlp", "broken", "killed-run")


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    yield from tmux_server("runs", tmp_path)


@pytest.fixture
def runs(tmp_path: Path, monkeypatch) -> Iterator[Runs]:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield from start_runs(tmp_path / "runs", tmp_path)


def test_every_state_shows_and_a_replay_returns_to_the_runs_screen(tmux, runs, tmp_path):
    rc = tmp_path / "rc.txt"
    tmux.start("runs", f"{sys.executable} -m tuimon --root runs; echo $? > {rc}", 160, 40)
    screen = tmux.wait_for(
        "runs", lambda s: all(w in s for w in (*STATES, *NAMES)) and ALL_SHOWN in s
    )
    assert "Machine GPUs" in screen

    # Only the completed run, then enter: its replay, in this terminal.
    tmux.keys("runs", "/")
    tmux.wait_for("runs", lambda s: "filter:" in s or "state:running" in s)
    tmux.keys("runs", "mlp", "Enter")
    tmux.wait_for("runs", lambda s: "1 of 4 runs" in s and "died" not in s)
    tmux.keys("runs", "Enter")
    replay = tmux.wait_for("runs", lambda s: "replay" in s and "Loss" in s and "Doctor" in s)
    assert "4 runs" not in replay and "1 of 4 runs" not in replay

    # q leaves the replay: the runs screen again, with its filter kept.
    tmux.keys("runs", "q")
    tmux.wait_for("runs", lambda s: "1 of 4 runs" in s and "filter: mlp" in s)
    tmux.keys("runs", "Escape")
    tmux.wait_for("runs", lambda s: ALL_SHOWN in s and all(w in s for w in STATES))

    # enter on the live run: its own UI, attached to the worker; q leaves the run going.
    tmux.keys("runs", "/")
    tmux.keys("runs", "live", "Enter")
    tmux.wait_for("runs", lambda s: "1 of 4 runs" in s and "live-run" in s)
    tmux.keys("runs", "Enter")
    tmux.wait_for("runs", lambda s: "live-run" in s and "running" in s and "Loss" in s)
    tmux.keys("runs", "q")
    tmux.wait_for("runs", lambda s: "1 of 4 runs" in s and "filter: live" in s)
    assert is_alive(runs.live.run_dir)
    tmux.keys("runs", "Escape")
    tmux.wait_for("runs", lambda s: ALL_SHOWN in s)

    tmux.keys("runs", "q")
    deadline = time.monotonic() + 60
    while not rc.exists() or not rc.read_text().strip():
        assert time.monotonic() < deadline, f"tuimon did not quit:\n{tmux.screen('runs')}"
        time.sleep(0.2)
    assert rc.read_text().strip() == "0"
