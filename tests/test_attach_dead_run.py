"""A run whose worker was killed (kill -9: no `end` event, a socket file that refuses
connections): `attach` and `replay` show its history, say the worker is gone, show no ETA,
and stop knocking on the dead socket. Real workers, really killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from tuimon.errors import UsageError
from tuimon.launch import newest_alive_run
from tuimon.run.run_dir import CONTROL_SOCKET
from tuimon.run.worker_liveness import start_event, worker_liveness
from tuimon.ui import connection
from tuimon.ui.app import WORKER_GONE, TuimonApp
from tuimon.ui.screens.choice_screen import ChoiceScreen
from tuimon.ui.screens.lr_screen import LRScreen
from tuimon.ui.widgets.doctor_panel import DoctorPanel
from tuimon.ui.widgets.loss_panel import LossPanel
from tuimon.ui.widgets.status_bar import StatusBar

from conftest import until


def killed_run(write_config, start_worker, steps: int):
    """A real run killed with SIGKILL after `steps` logged steps; returns (worker, pid)."""
    worker = start_worker(write_config())
    deadline = time.monotonic() + 60
    while sum(1 for e in worker.events() if e["type"] == "step") < steps:
        assert time.monotonic() < deadline, "the worker logged no steps"
        assert worker.process.poll() is None, worker.output()
        time.sleep(0.05)
    pid = worker.process.pid
    os.kill(pid, signal.SIGKILL)
    worker.process.wait(timeout=30)
    assert (worker.run_dir / CONTROL_SOCKET).exists()  # left behind, refusing connections
    assert not any(e["type"] == "end" for e in worker.events())
    return worker, pid


def toasts(app) -> str:
    return "\n".join(n.message for n in app._notifications)


async def test_attach_and_replay_of_a_killed_run_show_its_history_and_say_the_worker_is_gone(
    write_config, start_worker, monkeypatch
):
    monkeypatch.setattr(connection, "RETRY_SECONDS", 0.02)  # so a retry loop would show fast
    worker, pid = killed_run(write_config, start_worker, steps=5)
    logged = max(e["step"] for e in worker.events() if e["type"] == "step")
    app = TuimonApp(worker.run_dir, fps=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.shown_status == WORKER_GONE)
        # The history came from the log: every logged step, drawn.
        assert app.state.step == logged
        assert app.state.series["loss"].total == logged
        status = app.query_one_main(StatusBar)
        loss = app.query_one_main(LossPanel)
        await until(pilot, lambda: "showing the log" in "".join(status.plain_lines()))
        await until(pilot, lambda: not loss.is_stale(app.state, app.options))
        bar = "\n".join(status.plain_lines())
        assert WORKER_GONE in bar and f"pid {pid} not running" in bar
        assert f" {logged}/100000000 " in bar
        assert "ETA" not in bar  # the run had 1e8 steps to go: a live one shows an ETA
        assert "train n/a" not in loss.plain_lines()[0]  # the loss header has a value
        plot = "".join(loss.plain_lines()[1:])
        assert any("\u2801" <= c <= "\u28ff" for c in plot)  # the curve's braille dots
        # Not stuck reconnecting: one try, then only the socket file is watched.
        thread = app._connection
        tries = thread.attempts
        await until(pilot, lambda: thread.socket_checks >= 25)
        assert thread.attempts == tries == 1
        # Keys that steer the run say the worker is gone instead of trying.
        for key in ("minus", "p", "s"):
            await pilot.press(key)
        await pilot.press("l")
        await pilot.press("x")
        await pilot.pause()
        assert not isinstance(app.screen, LRScreen | ChoiceScreen)
        said = toasts(app)
        assert said.count(f"worker gone (pid {pid} not running): nothing to send it to") == 5
        assert app.query_one_main(DoctorPanel).no_commands == WORKER_GONE
    # `tuimon replay` of the same run: the log has no end, and the replay says so.
    replay = TuimonApp(worker.run_dir, replay=True, fps=20)
    async with replay.run_test(size=(120, 40)) as pilot:
        status = replay.query_one_main(StatusBar)
        await until(pilot, lambda: "no end event" in "".join(status.plain_lines()))
        bar = "\n".join(status.plain_lines())
        assert "no end event: the worker was killed or is still writing" in bar
        assert f"pid {pid} not running" in bar
        assert "ETA" not in bar and "replay" in bar and f" {logged}/100000000 " in bar


def test_liveness_of_a_pid_here_there_reaped_unreaped_and_reused():
    me = psutil.Process()
    here = socket.gethostname()
    assert worker_liveness({"pid": me.pid, "host": here, "time": time.time()}).verdict == "alive"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    unreaped = worker_liveness({"pid": child.pid, "host": here})
    assert unreaped.verdict == "gone" and unreaped.describe() == f"pid {child.pid} not running"
    child.wait()
    assert worker_liveness({"pid": child.pid, "host": here}).verdict == "gone"
    # The pid is alive but was created after the run started: another process has it now.
    reused = {"pid": me.pid, "host": here, "time": me.create_time() - 60}
    assert worker_liveness(reused).verdict == "gone"
    elsewhere = worker_liveness({"pid": me.pid, "host": "another-machine"})
    assert elsewhere.verdict == "unknown"
    assert "another-machine" in elsewhere.describe() and "cannot check" in elsewhere.describe()
    assert worker_liveness({"host": here}).verdict == "unknown"
    assert worker_liveness({"pid": "1", "host": here}).verdict == "unknown"


def test_start_event_is_read_from_the_head_of_the_log(tmp_path):
    log = tmp_path / "events.jsonl"
    assert start_event(log) is None  # no log yet
    log.write_text('{"type":"start","pid":7,"host":"h"}\n{"type":"step","step":1}\n')
    assert start_event(log) == {"type": "start", "pid": 7, "host": "h"}


async def test_attach_to_a_run_on_another_host_says_unknown_not_gone(tmp_path):
    """A pid recorded on another machine cannot be checked: the UI shows the log and says
    it cannot tell, and keeps trying the socket (the run may be training)."""
    host = "another-machine"
    log = tmp_path / "events.jsonl"
    log.write_text(
        f'{{"type":"start","seq":1,"time":1.0,"name":"far","pid":{os.getpid()},'
        f'"host":"{host}","total_steps":100}}\n'
        '{"type":"step","seq":2,"time":2.0,"step":1,"loss":1.0,"step_time":0.1}\n'
    )
    app = TuimonApp(tmp_path, fps=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.connection_status == "disconnected" and app.notice)
        assert "cannot check" in app.notice and host in app.notice
        assert app.shown_status == "disconnected" and app.state.step == 1


def test_attach_without_a_run_names_the_newest_run_whose_worker_is_gone(tmp_path):
    """`tuimon attach` picks the newest live run; when every one is dead it says which run
    it would have shown, instead of only "no running run"."""
    killed = tmp_path / "runs" / "mlp-1"
    killed.mkdir(parents=True)
    (killed / "events.jsonl").write_text('{"type":"start","pid":1,"host":"h"}\n')
    with pytest.raises(UsageError, match=r"the newest, .*mlp-1, has no live worker"):
        newest_alive_run(tmp_path / "runs")
