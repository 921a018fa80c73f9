"""Framework adapters end to end, as a user meets them: `tuimon run` on a Lightning script
in a real terminal (tmux), steered with the UI's keys, and a Hugging Face Trainer script
under `tuimon run --quiet`.

The other adapter tests steer through the control socket from inside the process; these
go through the UI's key bindings, the detached worker `tuimon run` starts, and the run
directory it makes. Every wait polls the screen or the log up to a deadline.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tuimon.control.commands import CHECKPOINT as CHECKPOINT_COMMAND
from tuimon.control.commands import PAUSE, RESUME, SCALE_LR, SET_LR, STOP
from tuimon.run.events import (
    ALERT,
    CHECKPOINT,
    COMPLETED,
    CONTROL,
    END,
    METRICS,
    START,
    STEP,
    STOPPED,
)
from tuimon.run.log_reader import read_events

from conftest import TESTS_DIR, worker_env
from tmux_terminal import Tmux, tmux_server

LIGHTNING_SCRIPT = TESTS_DIR / "scripts" / "lightning_ui_train.py"
HF_SCRIPT = TESTS_DIR / "scripts" / "hf_train.py"
# The script's SGD learning rate, and one it blows up at (the doctor names it).
START_LR = 0.02
TYPED_LR = 0.005
BLOW_UP_LR = 50.0
UI = "ui"  # the control events' source for a key pressed in the UI
DEADLINE = 120.0  # seconds: generous, for a busy 2-core machine


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    yield from tmux_server("frameworks", tmp_path)


def events(run: Path) -> list[dict[str, Any]]:
    return list(read_events(run / "events.jsonl"))


def of_type(log: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in log if e["type"] == kind]


def wait_for_event(
    run: Path, predicate: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """The first event of the run's log that matches, polling the log up to DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        for event in events(run):
            if predicate(event):
                return event
        time.sleep(0.1)
    pytest.fail(f"no {what} in the log within {DEADLINE}s")


def applied(command: str, after_seq: int = 0) -> Callable[[dict[str, Any]], bool]:
    """A control event for `command`, sent from the UI, logged after event `after_seq`."""
    return lambda e: (
        e["type"] == CONTROL
        and e.get("command") == command
        and e.get("source") == UI
        and e["seq"] > after_seq
    )


def steps_after(run: Path, control: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """The first `count` steps logged after a control event (the ones it applied to)."""
    wait_for_event(
        run,
        lambda e: e["type"] == STEP and e["step"] >= control["step"] + count,
        f"{count} steps after {control['command']}",
    )
    return [s for s in of_type(events(run), STEP) if s["seq"] > control["seq"]][:count]


def test_a_lightning_fit_is_steered_from_the_ui(tmux, tmp_path):
    """`tuimon run lightning_ui_train.py`: the panels show the fit; `-`, `+` and `l` change
    the LR Lightning's optimizer steps with; `p` pauses inside the fit (a checkpoint `s`
    asks for meanwhile is Lightning's `.ckpt`, at the paused step); a blow-up the doctor
    names is fixed with `a`; `x` stops the fit through Lightning, and tuimon exits 0."""
    exit_file = tmp_path / "tuimon-exit-code"
    tmux.start(
        UI,
        f"sh -c '{sys.executable} -m tuimon run {LIGHTNING_SCRIPT}; echo $? > {exit_file}'",
    )
    titles = ("Loss", "Learning rate", "Gradients", "Doctor")
    tmux.wait_for(UI, lambda s: all(t in s for t in titles) and "running" in s)
    [run] = list((tmp_path / "runs").iterdir())
    start = wait_for_event(run, lambda e: e["type"] == START, "start")
    assert start["name"] == "lightning_ui_train"
    assert start["framework"].startswith("lightning")
    first = wait_for_event(run, lambda e: e["type"] == STEP and "grad_norm" in e, "a step")
    assert first["lr"] == START_LR and first["loss"] > 0
    tmux.wait_for(UI, lambda s: "lightning_ui_train" in s and str(START_LR) in s)

    # `-` halves the LR: every step after the control event ran at the new one.
    tmux.keys(UI, "-")
    down = wait_for_event(run, applied(SCALE_LR), "the scale-lr of -")
    assert (down["old"], down["new"]) == (START_LR, START_LR / 2)
    assert {s["lr"] for s in steps_after(run, down, 5)} == {START_LR / 2}
    tmux.wait_for(UI, lambda s: "scale-lr at step" in s)  # the "applied" toast

    tmux.keys(UI, "+")
    up = wait_for_event(run, applied(SCALE_LR, down["seq"]), "the scale-lr of +")
    assert (up["old"], up["new"]) == (START_LR / 2, START_LR)
    assert {s["lr"] for s in steps_after(run, up, 5)} == {START_LR}

    tmux.keys(UI, "l")
    tmux.wait_for(UI, lambda s: "New learning rate" in s)
    tmux.keys(UI, str(TYPED_LR), "Enter")
    typed = wait_for_event(run, applied(SET_LR), "the set-lr of l")
    assert (typed["old"], typed["new"]) == (START_LR, TYPED_LR)
    assert {s["lr"] for s in steps_after(run, typed, 5)} == {TYPED_LR}

    # `p`: the fit waits inside its step. A checkpoint asked for while paused is taken
    # there, at the paused step, with Lightning's own save_checkpoint.
    tmux.keys(UI, "p")
    pause = wait_for_event(run, applied(PAUSE), "the pause of p")
    tmux.wait_for(UI, lambda s: "paused" in s)
    tmux.keys(UI, "s")
    saved = wait_for_event(run, lambda e: e["type"] == CHECKPOINT, "a checkpoint")
    assert saved["step"] == pause["step"]
    assert saved["path"].endswith(".ckpt") and Path(saved["path"]).is_file()
    assert max(s["step"] for s in of_type(events(run), STEP)) <= pause["step"]
    checkpoint = wait_for_event(run, applied(CHECKPOINT_COMMAND), "the checkpoint of s")
    assert checkpoint["path"] == saved["path"]
    tmux.keys(UI, "p")
    resume = wait_for_event(run, applied(RESUME), "the resume of p")
    assert resume["step"] == pause["step"]
    assert len(steps_after(run, resume, 3)) == 3
    tmux.wait_for(UI, lambda s: "running" in s)

    # A learning rate SGD blows up at: the doctor names it and offers a fix; `a` applies it.
    tmux.keys(UI, "l")
    tmux.wait_for(UI, lambda s: "New learning rate" in s)
    tmux.keys(UI, f"{BLOW_UP_LR:g}", "Enter")
    blow_up = wait_for_event(run, applied(SET_LR, typed["seq"]), "the set-lr of l")
    assert blow_up["new"] == BLOW_UP_LR
    # Healthy until then, steering included: not one alert (no false alarm).
    assert not [e for e in of_type(events(run), ALERT) if e["seq"] < blow_up["seq"]]
    alert = wait_for_event(
        run,
        lambda e: e["type"] == ALERT and e["seq"] > blow_up["seq"] and "action" in e,
        "an alert with a fix",
    )
    tmux.wait_for(UI, lambda s: "[a] apply" in s)
    tmux.keys(UI, "a")
    fixed = wait_for_event(run, applied(alert["action"]["cmd"], alert["seq"]), "the alert's fix")
    # `a` applies the selected alert's fix: the newest when the key arrived, which on a
    # busy machine may be a later alert than the first (nan_loss's ×0.1 after
    # lr_too_high's ×0.01). Whichever it was, it is a fix the doctor offered.
    offered = [
        e["action"]
        for e in of_type(events(run), ALERT)
        if e["seq"] > blow_up["seq"] and e["seq"] < fixed["seq"] and "action" in e
    ]
    assert {"cmd": fixed["command"], "factor": fixed["factor"]} in offered
    assert fixed["new"] == pytest.approx(BLOW_UP_LR * fixed["factor"])

    # `x` asks first; the safe choice has the focus, Tab moves it to "Stop the run".
    tmux.keys(UI, "x")
    tmux.wait_for(UI, lambda s: "Stop the run?" in s)
    tmux.keys(UI, "Tab")
    time.sleep(0.5)  # keys sent together could read as one escape sequence
    tmux.keys(UI, "Enter")
    end = wait_for_event(run, lambda e: e["type"] == END, "the end")
    assert end["status"] == STOPPED
    stop = wait_for_event(run, applied(STOP), "the stop of x")
    assert stop["path"].endswith(".ckpt") and Path(stop["path"]).is_file()
    tmux.wait_for(UI, lambda s: "stopped" in s)
    tmux.keys(UI, "q")  # the run has ended: q quits at once
    deadline = time.monotonic() + DEADLINE
    while not exit_file.is_file() or not exit_file.read_text().strip():
        assert time.monotonic() < deadline, "tuimon run did not exit after q"
        time.sleep(0.1)
    assert exit_file.read_text().strip() == "0"
    assert "FIT DONE" in (run / "output.log").read_text()  # Lightning's fit returned


def test_a_hugging_face_trainer_script_under_tuimon_run(tmp_path, monkeypatch):
    """`tuimon run --quiet hf_train.py`: the Trainer's callback logs into the run `tuimon
    run` made, one step per optimizer step with loss, LR and gradient norm, and the run
    ends `completed` when the Trainer does."""
    from tuimon import cli, launch

    monkeypatch.chdir(tmp_path)
    for name, value in worker_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ran: list[Path] = []

    def no_ui(run_dir, *, worker=None, **kwargs):  # the worker as launched, without a UI
        worker.wait(timeout=300)
        ran.append(run_dir)
        return launch.worker_exit_code(run_dir, None, worker.returncode)

    monkeypatch.setattr(launch, "run_app", no_ui)
    code = cli.main(["run", "--quiet", str(HF_SCRIPT)])
    [run] = ran
    assert run.parent == tmp_path / "runs"
    output = (run / "output.log").read_text()
    assert code == 0, output
    assert "TRAIN DONE" in output
    assert "[hf_train]" not in output  # --quiet reached the callback's Monitor
    log = events(run)
    assert log[0]["type"] == START and log[0]["name"] == "hf_train"
    assert log[0]["framework"].startswith("transformers")
    steps = of_type(log, STEP)
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1)) and len(steps) >= 8
    for step in steps:
        assert step["loss"] > 0 and step["grad_norm"] > 0 and step["lr"] >= 0
    # HF's linear schedule: warm-up to the script's learning rate, then down to 0.
    assert max(s["lr"] for s in steps) == pytest.approx(1e-3)
    assert steps[-1]["lr"] < steps[len(steps) // 2]["lr"]
    # The Trainer's own logs (on_log) are metrics of the same run.
    assert any("train_loss" in m for m in of_type(log, METRICS))
    assert log[-1]["type"] == END and log[-1]["status"] == COMPLETED
