"""The app through Pilot, attached to a real worker running configs/mlp.yaml."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from rich.console import Console
from textual.widgets import Button, Input, Static

from tuimon.control.client import is_alive
from tuimon.ui.app import WORKER_GONE, TuimonApp
from tuimon.ui.screens.choice_screen import ChoiceScreen
from tuimon.ui.screens.lr_screen import LRScreen
from tuimon.ui.screens.text_screen import TextScreen
from tuimon.ui.widgets.loss_panel import LossPanel
from tuimon.ui.widgets.lr_panel import LRPanel

from conftest import ENDLESS_CONFIG, REPO, until

MLP = str(REPO / "configs" / "mlp.yaml")
# The shipped MLP job, made endless, with a constant LR so every change is easy to see.
MLP_ARGS = (
    "--set",
    "train.epochs=100000",
    "--set",
    "scheduler=null",
    "--set",
    "monitor.system_interval=0.2",
)
# The run the key tests share (in file order: -, p, l, q then x, which stops it): one
# worker start instead of five. Each test asserts on what happened since it attached.
SHARED_ARGS = (*MLP_ARGS, "--set", "monitor.lr_max=0.5")


def shared_mlp(shared_workers):
    """The shared MLP run (a new one if a test before has ended it)."""
    return shared_workers.live(Path(MLP).read_text(), *SHARED_ARGS)


def control_commands(worker):
    return [e["command"] for e in worker.events() if e["type"] == "control"]


def wait_for_log(worker, predicate, timeout: float = 60.0):
    """The run's events once `predicate` holds for them (fails after `timeout`)."""
    deadline = time.monotonic() + timeout
    while not predicate(events := worker.events()):
        assert time.monotonic() < deadline, "the log never got there"
        time.sleep(0.05)
    return events


@pytest.fixture(autouse=True)
def one_thread_workers(monkeypatch):
    """Workers started here train on one thread: an endless run at full speed on both
    cores would starve the app under test (CI has two) while it waits for a few steps.
    Nothing here is about torch's thread count."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def rendered(renderable) -> str:
    """A Rich renderable as plain text (wide enough not to wrap)."""
    console = Console(width=200, color_system=None, file=io.StringIO())
    with console.capture() as captured:
        console.print(renderable)
    return captured.get()


def controls(app, command):
    return [c for c in app.state.controls if c.get("command") == command]


def is_step(event):
    return event["type"] == "step"


def logged_steps(worker):
    return [e for e in worker.events() if is_step(e)]


async def test_minus_halves_the_lr_and_the_plot_marks_it(shared_workers):
    worker = shared_mlp(shared_workers)
    app = TuimonApp(worker.run_dir, fps=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.step > 3)
        assert app.shown_status == "running"
        await pilot.press("minus")
        await until(pilot, lambda: controls(app, "scale-lr"))
        [change] = controls(app, "scale-lr")
        assert change["source"] == "ui" and change["factor"] == 0.5
        assert change["new"] == pytest.approx(change["old"] / 2)
        await until(pilot, lambda: app.state.step > change["step"] + 3)
        panel = app.query_one(LRPanel)
        assert panel.markers(app.state, app.options) == [change["step"]]
        # Drawn for the state as it is now, controls included (they are in its signature).
        await until(pilot, lambda: not panel.is_stale(app.state, app.options))
        assert "scale-lr" in panel.plain_lines()[0]  # the header names the change
    # The run goes on for the next tests (test_x_... stops it through the UI).
    events = wait_for_log(
        worker, lambda es: any(is_step(e) and e["step"] > change["step"] + 3 for e in es)
    )
    steps = [e for e in events if is_step(e)]
    before = [e["lr"] for e in steps if e["step"] <= change["step"]]
    after = [e["lr"] for e in steps if e["step"] > change["step"]]
    assert before == pytest.approx([1e-3] * len(before))
    assert after and after == pytest.approx([5e-4] * len(after))


async def test_p_pauses_until_p_again(shared_workers):
    worker = shared_mlp(shared_workers)
    app = TuimonApp(worker.run_dir, fps=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.step > 3)
        earlier = len(app.state.controls)  # the shared run's, before this test
        await pilot.press("p")
        await until(pilot, lambda: app.shown_status == "paused")
        paused_at = controls(app, "pause")[-1]["step"]
        # The system sampler keeps ticking (0.2 s) while the run is paused.
        seq = app.state.system["seq"]
        await until(pilot, lambda: app.state.system["seq"] >= seq + 15)
        assert app.state.step == paused_at
        assert max(e["step"] for e in logged_steps(worker)) == paused_at
        await pilot.press("p")
        await until(pilot, lambda: app.state.step > paused_at + 5)
        assert app.shown_status == "running"
        assert [c["command"] for c in list(app.state.controls)[earlier:]] == ["pause", "resume"]


async def test_l_refuses_bad_learning_rates_in_place(shared_workers):
    worker = shared_mlp(shared_workers)  # its monitor.lr_max is 0.5
    app = TuimonApp(worker.run_dir, fps=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.step > 3)
        earlier = len(app.state.controls)  # the shared run's, before this test
        logged = len(control_commands(worker))
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LRScreen))
        screen = app.screen
        # The panels behind the dialog keep updating.
        loss = app.query_one_main(LossPanel)
        drawn = loss.draws
        await until(pilot, lambda: loss.draws > drawn + 1)
        for text, reason in (
            ("abc", "must be a number"),
            ("-1", "must be > 0"),
            ("nan", "must be finite"),
            ("1e6", "absurdly large"),
            ("0.9", "limit 0.5"),  # the run's own monitor.lr_max
        ):
            field = screen.query_one(Input)
            field.value = text
            await pilot.press("enter")
            await pilot.pause()
            error = rendered(screen.query_one("#lr-error", Static).content)
            assert reason in error, (text, error)
            assert app.screen is screen  # still asking
        assert len(app.state.controls) == earlier  # nothing was sent
        screen.query_one(Input).value = "0.003"
        await pilot.press("enter")
        await until(pilot, lambda: controls(app, "set-lr"))
        assert not isinstance(app.screen, LRScreen)
        [change] = controls(app, "set-lr")
        assert change["new"] == pytest.approx(0.003) and change["source"] == "ui"
    # The refused values reached the run as nothing: its log got the one set-lr.
    events = wait_for_log(
        worker, lambda es: any(is_step(e) and e["step"] > change["step"] for e in es)
    )
    assert [e["command"] for e in events if e["type"] == "control"][logged:] == ["set-lr"]


async def test_quit_can_leave_a_launched_run_running(shared_workers):
    worker = shared_mlp(shared_workers)
    app = TuimonApp(worker.run_dir, launched=True, worker=worker.process, fps=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.step > 3)
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        assert [b.id for b in app.screen.query(Button)] == ["stop", "leave", "cancel"]
        await pilot.click("#leave")
        await until(pilot, lambda: not app.is_running)
    assert not app.stopped_run
    assert worker.process.poll() is None and is_alive(worker.run_dir)
    # Still training: test_x_... (next) stops it and checks its exit.
    with worker.client() as client:
        assert client.request("status")["status"]["state"] == "running"


async def test_x_asks_then_stops_the_run(shared_workers):
    worker = shared_mlp(shared_workers)
    app = TuimonApp(worker.run_dir, fps=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.step > 3)
        earlier = len(app.state.controls)  # the shared run's, before this test
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        await pilot.press("escape")  # changed my mind: nothing happens
        await pilot.pause(0.3)
        assert len(app.state.controls) == earlier and app.shown_status == "running"
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        assert [b.id for b in app.screen.query(Button)] == ["stop", "cancel"]
        await pilot.click("#stop")
        await until(pilot, lambda: app.shown_status == "stopped", timeout=60)
        assert controls(app, "stop")[0]["source"] == "ui"
    assert worker.wait_exit() == 0


FAILING = ENDLESS_CONFIG.replace(
    "  name: mlp\n  hidden: [32]\n", "  name: faulty_models:raises_at\n  step: 5\n"
)


async def test_a_crashed_run_shows_failed_and_its_traceback(write_config, start_worker):
    worker = start_worker(write_config(FAILING), ready=False)
    app = TuimonApp(worker.run_dir, fps=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.shown_status == "failed")
        assert app.state.step == 4
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, TextScreen))
        body = rendered(app.screen.query_one("#text-content", Static).content)
        assert "RuntimeError: boom at step 5" in body and "Traceback" in body
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, TextScreen))
        assert app.is_running  # the UI stays up
    assert worker.wait_exit() == 1


async def test_worker_gone_when_the_worker_dies_then_reconnects(
    write_config, start_worker, tmp_path
):
    config = write_config()
    worker = start_worker(config)
    app = TuimonApp(worker.run_dir, fps=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.step > 3)
        worker.process.kill()  # the worker vanishes without an `end` event
        worker.process.wait()
        # Its pid is not running: the app says so (tests/test_attach_dead_run.py has more).
        await until(pilot, lambda: app.shown_status == WORKER_GONE)
        assert f"pid {worker.process.pid} not running" in app.notice
        # A worker comes back on the same socket path (here: a new run in the same dir):
        # the app watches the socket file and attaches to it.
        (worker.run_dir / "events.jsonl").unlink()
        again = start_worker(config, run_dir=worker.run_dir)
        await until(pilot, lambda: app.connection_status == "connected")
        await until(pilot, lambda: app.shown_status == "running")
        assert app.notice == ""
        again.client().request("stop")
        await until(pilot, lambda: app.shown_status == "stopped")
    assert again.wait_exit() == 0


async def test_keys_are_bindings_with_ids_and_help_lists_them(tmp_path):
    from tuimon.ui import keymap
    from tuimon.ui.screens.help_screen import HelpScreen

    app = TuimonApp(tmp_path, fps=20)
    async with app.run_test(size=(100, 30)) as pilot:
        ids = {b.id for b in app.BINDINGS}
        assert {
            "lr-up",
            "lr-down",
            "lr-set",
            "pause",
            "checkpoint",
            "stop",
            "apply",
            "metric",
            "log-y",
            "x-axis",
            "error",
            "help",
            "quit",
        } <= ids
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = " ".join(rendered(s.content) for s in app.screen.query(Static))
        for key in keymap.KEYS:
            assert key.help in text
        await pilot.press("escape")
        await pilot.press("y")
        assert app.options.log_y
        await pilot.press("t")
        await pilot.press("t")
        assert app.options.x_mode == "time"


USER_SCRIPT = """
import sys
import torch
import tuimon

print("hello from the user's script", flush=True)
print("and from its stderr", file=sys.stderr, flush=True)
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with tuimon.Monitor(model, opt) as mon:
    while not mon.should_stop:
        x = torch.randn(8, 4)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss, inputs=x)
"""


async def test_tuimon_run_attaches_to_a_users_script(tmp_path):
    from tuimon.launch import start_script_worker

    script = tmp_path / "train.py"
    script.write_text(USER_SCRIPT)
    run_dir, process = start_script_worker(str(script), [], base=tmp_path / "runs")
    try:
        assert run_dir.parent == (tmp_path / "runs").resolve()
        app = TuimonApp(run_dir, launched=True, worker=process, fps=20)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.state.step > 5)
            assert app.state.name == "train" and app.shown_status == "running"
            await pilot.press("o")
            await until(pilot, lambda: isinstance(app.screen, TextScreen))
            output = rendered(app.screen.query_one("#text-content", Static).content)
            assert "hello from the user's script" in output
            assert "and from its stderr" in output
            await pilot.press("escape")
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
            await pilot.click("#stop")
            await until(pilot, lambda: not app.is_running)
        assert app.stopped_run
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    events = [e for e in (run_dir / "events.jsonl").read_text().splitlines() if e]
    assert '"status":"stopped"' in events[-1]


async def test_help_shows_every_key_at_80x24(tmp_path):
    """`?` on the smallest terminal tuimon supports lists every key, the last one too."""
    from tuimon.ui import keymap
    from tuimon.ui.screens.help_screen import HelpScreen

    app = TuimonApp(tmp_path, fps=20)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        table = app.screen.query(Static).last()
        dialog = app.screen.query_one("#dialog")
        assert table.region.height >= len(keymap.KEYS)
        assert dialog.content_region.contains_region(table.region)
