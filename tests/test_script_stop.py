"""Stop must stop: real training scripts in their own processes, stopped from outside.

The scripts are written the way pytorch/examples writes them (F.relu, log_softmax +
nll_loss, Adadelta lr=1 + StepLR, a DataLoader) and never look at `mon.should_stop`.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

import tuimon
from tuimon.run.run_dir import RUN_DIR_ENV
from tuimon.run.run_state import load_run_state
from tuimon.ui.plotting import ViewOptions
from tuimon.ui.widgets.status_bar import StatusBar

from conftest import Worker, run_tuimon, worker_env

NATURAL_STEPS = 1_000_000  # what the scripts would train if nothing stopped them

SCRIPT = """
import sys
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, TensorDataset
import tuimon


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return F.log_softmax(self.fc2(x), dim=1)


torch.manual_seed(0)
data = TensorDataset(torch.randn(256, 1, 8, 8), torch.randint(0, 4, (256,)))
loader = DataLoader(data, batch_size=32, shuffle=True)
model = Net()
optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
scheduler = StepLR(optimizer, step_size=1, gamma=0.7)


def train(mon):
    for epoch in range({epochs}):
        model.train()
        for data, target in loader:
            optimizer.zero_grad()
            output = model(data)
            loss = F.nll_loss(output, target)
            loss.backward()
            optimizer.step()
            try:
                mon.step(loss, inputs=data, targets=target)
            except Exception:  # user code that swallows errors must not swallow a stop
                print("SWALLOWED", flush=True)
        scheduler.step()


{run}
print("SCRIPT END", flush=True)
"""

WITH_BLOCK = """
with tuimon.Monitor(model, optimizer, scheduler, {kwargs}) as mon:
    train(mon)
print("AFTER WITH", flush=True)
"""
# A script that never closes its Monitor: the exit hooks must still end the run.
NO_WITH = """
mon = tuimon.Monitor(model, optimizer, scheduler, {kwargs})
train(mon)
"""


def write_script(tmp_path: Path, run: str, kwargs: str = "") -> Path:
    epochs = NATURAL_STEPS // 8
    body = SCRIPT.replace("{epochs}", str(epochs)).replace("{run}", run.format(kwargs=kwargs))
    path = tmp_path / "train.py"
    path.write_text(body, encoding="utf-8")
    return path


def start_script(tmp_path: Path, script: Path, under_tuimon_run: bool) -> Worker:
    """The script as `tuimon run` starts it (RUN_DIR_ENV set), or run directly."""
    env = worker_env()
    run_dir = tmp_path / "runs" / "train-run"
    if under_tuimon_run:
        run_dir.mkdir(parents=True)
        env[RUN_DIR_ENV] = str(run_dir)
    process = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    if not under_tuimon_run:
        run_dir = wait_until(lambda: next((tmp_path / "runs").glob("train-*"), None), process)
    worker = Worker(process, run_dir)
    worker.wait_ready()
    return worker


def wait_until(find, process, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = find()
        except FileNotFoundError:
            found = None
        if found:
            return found
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"script exited {process.returncode}:\n{out}\n{err}")
        time.sleep(0.05)
    process.kill()
    pytest.fail("timed out")


def first_step(worker: Worker) -> None:
    wait_until(lambda: any(e["type"] == "step" for e in worker.events()), worker.process)


def finish(worker: Worker) -> tuple[int, str, str]:
    try:
        out, err = worker.process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        out, err = worker.process.communicate()
        pytest.fail(f"the script did not stop:\n{out}\n{err}")
    return worker.process.returncode, out, err


@pytest.fixture
def started(tmp_path):
    workers: list[Worker] = []
    yield workers
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.communicate(timeout=30)


@pytest.mark.parametrize(
    ("run", "under_tuimon_run"),
    [(WITH_BLOCK, True), (NO_WITH, True), (NO_WITH, False)],
    ids=["with-block-tuimon-run", "never-closed-tuimon-run", "never-closed-direct"],
)
def test_ctl_stop_ends_a_script_that_never_polls_should_stop(
    tmp_path, started, run, under_tuimon_run
):
    worker = start_script(tmp_path, write_script(tmp_path, run), under_tuimon_run)
    started.append(worker)
    first_step(worker)
    stop = run_tuimon("ctl", worker.run_dir, "stop", timeout=60)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    code, out, err = finish(worker)
    assert code == 0, err
    assert "SWALLOWED" not in out  # `except Exception` did not catch the stop
    # The script ended at the stop; with a `with` block, the code after the block runs.
    assert ("AFTER WITH" in out) == ("SCRIPT END" in out) == (run == WITH_BLOCK)
    assert "Traceback" not in err
    events = worker.events()
    end = events[-1]
    assert end["type"] == "end" and end["status"] == "stopped"
    assert end["step"] < NATURAL_STEPS
    [checkpoint] = [e for e in events if e["type"] == "checkpoint"]
    assert checkpoint["reason"] == "stop" and Path(checkpoint["path"]).is_file()
    [control] = [e for e in events if e["type"] == "control"]
    # The stop ended the loop at the very step boundary where it was applied.
    assert control["command"] == "stop" and control["step"] == checkpoint["step"] == end["step"]


@pytest.mark.parametrize(
    ("run", "signum"),
    [(WITH_BLOCK, signal.SIGTERM), (NO_WITH, signal.SIGTERM), (WITH_BLOCK, signal.SIGHUP)],
    ids=["with-block", "never-closed", "hangup"],
)
def test_a_stop_signal_ends_a_script_with_an_end_event(tmp_path, started, run, signum):
    """SIGHUP (the script's terminal closed) ends it as cleanly as SIGTERM does."""
    worker = start_script(tmp_path, write_script(tmp_path, run), under_tuimon_run=False)
    started.append(worker)
    first_step(worker)
    worker.process.send_signal(signum)
    code, _out, err = finish(worker)
    assert code == 0, err
    assert f"{signal.Signals(signum).name}: stopping at the next step" in err
    events = worker.events()
    assert events[-1]["type"] == "end" and events[-1]["status"] == "stopped"
    [checkpoint] = [e for e in events if e["type"] == "checkpoint"]
    assert Path(checkpoint["path"]).is_file()
    assert [e["source"] for e in events if e["type"] == "control"] == ["signal"]


def test_a_flag_mode_loop_that_ignores_the_stop_is_reported_and_steerable(tmp_path, started):
    script = write_script(tmp_path, NO_WITH, kwargs="stop='flag', stop_ignored_after=5")
    worker = start_script(tmp_path, script, under_tuimon_run=True)
    started.append(worker)
    first_step(worker)
    assert run_tuimon("ctl", worker.run_dir, "stop", timeout=60).returncode == 0
    warned = wait_until(
        lambda: [e for e in worker.events() if e["type"] == "message" and e.get("stop_ignored")],
        worker.process,
    )
    [stop] = [e for e in worker.events() if e["type"] == "control"]
    assert warned[0]["level"] == "warning"
    assert warned[0]["stop_requested_at"] == stop["step"]
    assert warned[0]["step"] == stop["step"] + 5
    assert "should_stop" in warned[0]["text"] and "stop='raise'" in warned[0]["text"]
    status = run_tuimon("ctl", worker.run_dir, "status", timeout=60)
    assert "stop_ignored: True" in status.stdout
    assert f"stop_requested_at: {stop['step']}" in status.stdout
    assert "state: running" in status.stdout
    # Commands are taken again (before this change: "the run is stopping", forever).
    set_lr = run_tuimon("ctl", worker.run_dir, "set-lr", "0.25", timeout=60)
    assert set_lr.returncode == 0, set_lr.stderr
    assert "applied at step" in set_lr.stdout
    later = wait_until(
        lambda: [
            e for e in worker.events() if e["type"] == "step" and e["lr"] == pytest.approx(0.25)
        ],
        worker.process,
    )
    assert later
    # The UI learns it from the log: running again, and the status bar says why.
    state = load_run_state(worker.events_path)
    assert state.status == "running" and state.stop_ignored_at == stop["step"]
    bar = StatusBar()
    bar.shown_status = state.status
    console = Console(width=200, color_system=None, file=io.StringIO())
    with console.capture() as captured:
        console.print(bar.view(state, ViewOptions(), 200, 1))
    assert f"stop at step {stop['step']} ignored" in captured.get()


def test_stop_modes_are_checked_and_stop_training_is_not_an_exception(tmp_path):
    import torch

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"stop='raise'.*stop='flag'"):
        tuimon.Monitor(model, opt, run_dir=tmp_path / "r", stop="halt")
    assert not issubclass(tuimon.StopTraining, Exception)
    assert issubclass(tuimon.StopTraining, BaseException)


def test_ctl_stop_of_a_config_run_ends_stopped_with_one_checkpoint(write_config, start_worker):
    """The built-in trainer polls should_stop (stop='flag') and ends at once: no warning."""
    worker = start_worker(write_config())
    first_step(worker)
    assert run_tuimon("ctl", worker.run_dir, "stop", timeout=60).returncode == 0
    assert worker.wait_exit() == 0
    events = worker.events()
    assert events[-1]["type"] == "end" and events[-1]["status"] == "stopped"
    assert len([e for e in events if e["type"] == "checkpoint"]) == 1
    assert not [e for e in events if e["type"] == "message" and e.get("stop_ignored")]
    assert events[0]["loss"] == {"name": "CrossEntropyLoss"}
