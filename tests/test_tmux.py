"""End to end in a real terminal: tmux runs `tuimon`, we type keys and read the screen."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuimon.control.client import is_alive
from tuimon.run.log_reader import read_events

from conftest import REPO, run_tuimon, worker_env
from tmux_terminal import Tmux, tmux_server

MLP = str(REPO / "configs" / "mlp.yaml")


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    yield from tmux_server("e2e", tmp_path)


def step_count(run: Path) -> int:
    return sum(1 for e in read_events(run / "events.jsonl") if e["type"] == "step")


def test_launch_steer_detach_and_attach(tmux, tmp_path):
    command = f"{sys.executable} -m tuimon {MLP} --set train.epochs=100000 --set scheduler=null"
    tmux.start("ui", command)
    titles = ("Loss", "Learning rate", "Gradients", "GPU", "Doctor", "Host")
    screen = tmux.wait_for("ui", lambda s: all(t in s for t in titles) and "running" in s)
    assert "no NVIDIA GPU" in screen  # this machine has none, and the panel says why
    [run] = list((tmp_path / "runs").iterdir())

    tmux.run("send-keys", "-t", "ui", "-")
    # The toast names the command when it is sent; the run applies it at its next step.
    tmux.wait_for("ui", lambda s: "scale-lr at step" in s)  # the "applied" toast
    changes = [e for e in read_events(run / "events.jsonl") if e["type"] == "control"]
    assert [(c["command"], c["source"]) for c in changes] == [("scale-lr", "ui")]

    # Close the terminal: the UI gets SIGHUP and dies; the run must go on.
    tmux.run("kill-session", "-t", "ui")
    before = step_count(run)
    deadline = time.monotonic() + 30
    while step_count(run) <= before + 20:
        assert time.monotonic() < deadline, "the run stopped with its terminal"
        time.sleep(0.2)
    assert is_alive(run)

    tmux.start("again", f"{sys.executable} -m tuimon attach")
    screen = tmux.wait_for("again", lambda s: "mlp" in s and "running" in s and "Loss" in s)
    assert "scale-lr" in screen  # the history came along: the LR change is still shown

    stop = run_tuimon("ctl", run, "stop", timeout=60)
    assert stop.returncode == 0, stop.stderr
    tmux.wait_for("again", lambda s: "stopped" in s)
    end = list(read_events(run / "events.jsonl"))[-1]
    assert end["type"] == "end" and end["status"] == "stopped"


def test_replay_shows_a_finished_run_at_80x24(tmux, tmp_path):
    done = run_tuimon(
        MLP, "--headless", "--run-dir", "run", "--set", "train.max_steps=50", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    tmux.start("replay", f"{sys.executable} -m tuimon replay run", width=80, height=24)
    screen = tmux.wait_for("replay", lambda s: "replay" in s and "Loss" in s)
    lines = screen.splitlines()
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    for title in ("Loss", "Learning rate", "Gradients", "GPU", "Doctor", "Host"):
        assert title in screen
    tmux.run("send-keys", "-t", "replay", "q")
    deadline = time.monotonic() + 10
    while tmux.run("has-session", "-t", "replay").returncode == 0:
        assert time.monotonic() < deadline, "q did not quit a replay"
        time.sleep(0.1)


METRICS_SCRIPT = """
import sys
import torch
import torch.nn.functional as F
import tuimon

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
with tuimon.Monitor(model, optimizer, run_dir=sys.argv[1], quiet=True) as mon:
    for step in range(60):
        x = torch.randn(32, 8)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        output = model(x)
        loss = F.cross_entropy(output, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mon.step(loss, inputs=x, targets=y, outputs=output)
        mon.log(train_acc=(output.argmax(1) == y).float().mean().item())
"""


def test_a_scripts_own_metric_is_on_screen_and_m_plots_it(tmux, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(METRICS_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), "run"], cwd=tmp_path, env=worker_env(), timeout=120
    )
    assert done.returncode == 0
    tmux.start("metrics", f"{sys.executable} -m tuimon replay run", width=80, height=24)
    screen = tmux.wait_for("metrics", lambda s: "Metrics" in s and "train_acc" in s)
    assert "Loss · train_acc" not in screen
    tmux.run("send-keys", "-t", "metrics", "m")
    tmux.wait_for("metrics", lambda s: "Loss · train_acc" in s and "▶train_acc" in s)


def test_attach_to_a_killed_run_shows_its_log_and_says_the_worker_is_gone(
    tmux, tmp_path, write_config, start_worker
):
    """`tuimon attach` on a run killed with SIGKILL: its history, "worker gone", no ETA."""
    worker = start_worker(write_config())
    deadline = time.monotonic() + 60
    while step_count(worker.run_dir) < 10:
        assert time.monotonic() < deadline, "the worker logged no steps"
        time.sleep(0.05)
    pid = worker.process.pid
    os.kill(pid, signal.SIGKILL)
    worker.process.wait(timeout=30)
    tmux.start("dead", f"{sys.executable} -m tuimon attach {worker.run_dir.name}")
    screen = tmux.wait_for(
        "dead", lambda s: f"pid {pid} not running" in s and "worker gone" in s and "Loss" in s
    )
    assert "ETA" not in screen and "/100000000" in screen  # the step count, but no ETA
    tmux.run("send-keys", "-t", "dead", "-")
    tmux.wait_for("dead", lambda s: "nothing to send it to" in toast_text(s))


def toast_text(screen: str) -> str:
    """The words of the toasts on a screen (each toast line starts with ▌), joined."""
    parts = [line.split("▌", 1)[1].rstrip("│╮╯─ ") for line in screen.splitlines() if "▌" in line]
    return " ".join(" ".join(parts).split())


def test_replay_of_a_crafted_log_leaves_the_terminal_title_alone(tmux, tmp_path):
    """A log whose run name, messages and traceback hold an OSC title sequence (and CSI
    clears, 8-bit CSI, Rich markup): the pane's title is the one it had before."""
    from test_escape_codes import MARKUP, write_crafted_log

    write_crafted_log(tmp_path / "run")
    # The pane waits for Enter, so its title is set before tuimon can write anything.
    tmux.start("evil", f"sh -c 'read go; exec {sys.executable} -m tuimon replay run'")
    tmux.run("select-pane", "-t", "evil", "-T", "title-before-replay")
    tmux.run("send-keys", "-t", "evil", "Enter")
    screen = tmux.wait_for("evil", lambda s: "replay" in s and "Doctor" in s and "pwned" in s)
    assert MARKUP[:18] in screen  # markup shown as typed
    tmux.run("send-keys", "-t", "evil", "e")  # the traceback, escapes and all
    tmux.wait_for("evil", lambda s: "RuntimeError: boom" in s)
    title = tmux.run("display", "-p", "-t", "evil", "#{pane_title}").stdout.strip()
    assert title == "title-before-replay"


def test_a_two_rank_job_in_the_ui_steers_both_ranks(tmux, tmp_path):
    """`tuimon CONFIG --nproc-per-node 2` in a real terminal: the UI shows the rank strip,
    `-` changes the LR on both ranks at one step, `R` lists both ranks, `x` stops the job."""
    command = (
        f"{sys.executable} -m tuimon {MLP} --nproc-per-node 2 "
        "--set train.epochs=100000 --set scheduler=null"
    )
    tmux.start("ui", command)
    tmux.wait_for("ui", lambda s: "2 ranks" in s and "Loss" in s and "running" in s, timeout=120)
    [run] = list((tmp_path / "runs").iterdir())

    tmux.run("send-keys", "-t", "ui", "-")
    tmux.wait_for("ui", lambda s: "scale-lr at step" in s)

    def scale_steps() -> list[int]:
        logs = (run / "events.jsonl", run / "ranks" / "1" / "events.jsonl")
        return [
            e["step"]
            for log in logs
            for e in read_events(log)
            if e["type"] == "control" and e["command"] == "scale-lr"
        ]

    deadline = time.monotonic() + 60
    while len(scale_steps()) < 2:
        assert time.monotonic() < deadline, "rank 1 never applied the scale-lr"
        time.sleep(0.2)
    first, second = scale_steps()
    assert first == second

    tmux.run("send-keys", "-t", "ui", "R")
    table = tmux.wait_for("ui", lambda s: "Ranks of mlp" in s and "world size 2" in s)
    assert "rank  node  host" in table
    tmux.run("send-keys", "-t", "ui", "Escape")
    tmux.wait_for("ui", lambda s: "Ranks of mlp" not in s)

    tmux.run("send-keys", "-t", "ui", "x")
    tmux.wait_for("ui", lambda s: "Stop the run?" in s)
    # The safe choice has the focus: Tab moves it round to "Stop the run".
    tmux.run("send-keys", "-t", "ui", "Tab")
    time.sleep(0.5)  # keys sent together could read as one escape sequence
    tmux.run("send-keys", "-t", "ui", "Enter")
    tmux.wait_for("ui", lambda s: "stopped" in s, timeout=120)
    logs = (run / "events.jsonl", run / "ranks" / "1" / "events.jsonl")
    deadline = time.monotonic() + 60  # rank 1 writes its own end a moment later
    while (ends := [list(read_events(log))[-1] for log in logs])[1]["type"] != "end":
        assert time.monotonic() < deadline, "rank 1's log has no end"
        time.sleep(0.2)
    assert [e["status"] for e in ends] == ["stopped", "stopped"]
    assert ends[0]["step"] == ends[1]["step"]
