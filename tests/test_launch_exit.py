"""How `tuimon` ends and what it starts: exit codes, a dropped terminal, a safe worker.

Real processes in a real terminal (tmux): the UI is quit with `q` after its run ended, a
headless run loses its terminal, a worker starts in a directory holding a planted module.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from test_tmux import step_count
from test_tmux import tmux as tmux  # the fixture

from tuimon.control.client import is_alive
from tuimon.launch import start_config_worker
from tuimon.run.log_reader import read_events

from conftest import ENDLESS_CONFIG, run_tuimon

FAILING = ENDLESS_CONFIG.replace(
    "  name: mlp\n  hidden: [32]\n", "  name: faulty_models:raises_at\n  step: 5\n"
)
SCRIPT = """
import sys
import torch
import tuimon

model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
with tuimon.Monitor(model, optimizer, total_steps=20) as mon:
    for step in range(20):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mon.step(loss)
        if sys.argv[1] == "fail" and step == 10:
            raise ValueError("a bug in the user's loop")
"""


def wait_for_file(path: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)
    return path.read_text().strip()


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("config", "failed", "1"), ("script", "failed", "1"), ("script", "completed", "0")],
)
def test_the_exit_code_says_whether_the_run_it_launched_failed(tmux, tmp_path, kind, status, code):
    if kind == "config":
        (tmp_path / "failing.yaml").write_text(FAILING)
        target = "failing.yaml"
    else:
        (tmp_path / "train.py").write_text(SCRIPT)
        target = f"run train.py {'fail' if status == 'failed' else 'ok'}"
    tmux.start("ui", f"sh -c '{sys.executable} -m tuimon {target}; echo $? > rc'")
    tmux.wait_for("ui", lambda s: status in s and "Loss" in s, timeout=240)
    tmux.run("send-keys", "-t", "ui", "q")
    assert wait_for_file(tmp_path / "rc") == code
    [run] = list((tmp_path / "runs").iterdir())
    end = list(read_events(run / "events.jsonl"))[-1]
    assert end["type"] == "end" and end["status"] == status


def test_a_headless_run_outlives_its_terminal(tmux, tmp_path):
    (tmp_path / "endless.yaml").write_text(ENDLESS_CONFIG)
    tmux.start("job", f"{sys.executable} -m tuimon endless.yaml --headless --run-dir run")
    run = tmp_path / "run"
    deadline = time.monotonic() + 120
    while not (run / "events.jsonl").is_file() or step_count(run) < 5:
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.2)
    tmux.run("kill-session", "-t", "job")  # the terminal closes: SIGHUP
    output_before = (run / "output.log").stat().st_size
    before = step_count(run)
    deadline = time.monotonic() + 60
    while step_count(run) <= before + 20:
        assert time.monotonic() < deadline, "the run died with its terminal"
        time.sleep(0.2)
    assert is_alive(run)
    # Its progress lines go on into the run directory.
    while (run / "output.log").stat().st_size <= output_before:
        assert time.monotonic() < deadline, "the output stopped with the terminal"
        time.sleep(0.2)
    stop = run_tuimon("ctl", run, "stop", timeout=60)
    assert stop.returncode == 0, stop.stderr
    deadline = time.monotonic() + 60
    while (end := list(read_events(run / "events.jsonl"))[-1])["type"] != "end":
        assert time.monotonic() < deadline, "no end event after the stop"
        time.sleep(0.2)
    assert end["status"] == "stopped"
    assert "Traceback" not in (run / "output.log").read_text()


def test_the_worker_does_not_import_modules_from_the_current_directory(tmp_path, monkeypatch):
    """A `yaml.py` where the user stands must not run inside the worker the UI starts."""
    marker = tmp_path / "planted-module-ran"
    (tmp_path / "yaml.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (tmp_path / "short.yaml").write_text(ENDLESS_CONFIG.replace("100000000", "3"))
    monkeypatch.chdir(tmp_path)
    run, worker = start_config_worker("short.yaml", [], "short", str(tmp_path / "run"))
    assert worker.wait(timeout=120) == 0, (run / "output.log").read_text()
    assert not marker.exists()
    assert list(read_events(run / "events.jsonl"))[-1]["status"] == "completed"
