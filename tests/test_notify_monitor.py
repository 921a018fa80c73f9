"""Notifications from real runs (issue 12, item 5): a real Monitor loop, a real local
HTTP server (tests/test_notify.py's HookServer) or a real command, `tuimon CONFIG
--headless` and `tuimon run --notify`. Every wait is on the server, with a deadline."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_notify import SINK, HookServer, closed_port
from torch import nn

from tuimon import Monitor
from tuimon.run.events import ALERT, END, MESSAGE, STEP, WARNING
from tuimon.run.log_reader import read_events
from tuimon.run.run_dir import NOTIFY_ENV

from conftest import REPO, TESTS_DIR, run_tuimon, worker_env

LOOP = TESTS_DIR / "scripts" / "notify_loop.py"
# A part of the URL that must never reach the run's files (a Slack hook's path is its key).
SECRET = "/hook/T0SECRET/B0SECRET?token=s3cr3t"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One torch thread, here and in the processes started: on CI's two cores a second
    mostly spins. Nothing here is about torch's threads."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def hook() -> Iterator[HookServer]:
    server = HookServer()
    yield server
    server.close()


def tiny() -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    return (
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        torch.randn(32, 8),
        torch.randn(32, 1),
    )


def train(mon: Monitor, model: nn.Module, opt: torch.optim.Optimizer, x, y, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss)


def nan_step(mon: Monitor) -> None:
    """A step whose loss is NaN: the doctor's nan_loss (severity error)."""
    mon.step(torch.tensor(float("nan")))


def events(run: Path) -> list[dict[str, Any]]:
    return list(read_events(run / "events.jsonl"))


def no_secret_in(run: Path) -> None:
    for path in run.rglob("*"):
        if path.is_file() and path.suffix in (".jsonl", ".json", ".yaml", ".log"):
            text = path.read_text(errors="replace")
            assert "SECRET" not in text and "s3cr3t" not in text, path


def test_a_run_that_completes_sends_exactly_one_message(hook, tmp_path):
    model, opt, x, y = tiny()
    run = tmp_path / "run"
    with Monitor(model, opt, run_dir=run, quiet=True, log_every=1, notify=hook.url(SECRET)) as mon:
        train(mon, model, opt, x, y, 20)
    # close() waited for it: no wait needed here.
    [message] = hook.bodies()
    assert message["event"] == "completed" and message["status"] == "completed"
    assert message["step"] == 20 and message["run_dir"] == str(run)
    assert message["run"] == mon.name and message["pid"] > 0 and message["host"]
    assert "completed at step 20" in message["text"]
    assert hook.received[0]["path"] == SECRET
    log = events(run)
    assert log[-1]["type"] == END
    assert log[0]["settings"]["notify"]["url"] == f"http://127.0.0.1:{hook.port}/…"
    no_secret_in(run)


def test_a_run_that_raises_sends_exactly_one_failed_message_with_the_traceback_tail(hook, tmp_path):
    model, opt, x, y = tiny()
    run = tmp_path / "run"
    with (
        pytest.raises(RuntimeError, match="deliberate"),
        Monitor(model, opt, run_dir=run, quiet=True, notify=hook.url()) as mon,
    ):
        train(mon, model, opt, x, y, 5)
        raise RuntimeError("a deliberate failure in the loop")
    [message] = hook.bodies()
    assert message["event"] == "failed" and message["severity"] == "error" and message["step"] == 5
    assert message["error"].rstrip().endswith("RuntimeError: a deliberate failure in the loop")
    assert "test_notify_monitor.py" in message["error"]  # where: the traceback's tail
    assert message["message"] == "RuntimeError: a deliberate failure in the loop"


def test_an_error_alert_sends_one_message_per_episode(hook, tmp_path):
    model, opt, x, y = tiny()
    notify = {"url": hook.url(), "when": ["error"]}
    with Monitor(
        model, opt, run_dir=tmp_path / "run", quiet=True, log_every=1, notify=notify
    ) as mon:
        train(mon, model, opt, x, y, 10)
        for _ in range(5):  # one episode: NaN five steps in a row
            nan_step(mon)
        hook.wait_for(1, rule="nan_loss")
    log = events(tmp_path / "run")
    alerts = [e for e in log if e["type"] == ALERT and e["severity"] == "error"]
    assert [a["rule"] for a in alerts].count("nan_loss") == 1
    sent = hook.bodies()
    # One message per error alert the doctor raised, and nothing for the end (not in `on`).
    assert [m["rule"] for m in sent] == [a["rule"] for a in alerts]
    [nan] = [m for m in sent if m["rule"] == "nan_loss"]
    assert nan["event"] == "error" and nan["step"] == 11 and "nan" in nan["message"]


def test_a_hang_is_said_once_and_a_new_step_re_arms_it(hook, tmp_path):
    model, opt, x, y = tiny()
    notify = {"url": hook.url(), "when": ["hang"], "hang_after": 1}
    with Monitor(model, opt, run_dir=tmp_path / "run", quiet=True, notify=notify) as mon:
        train(mon, model, opt, x, y, 3)
        [first] = hook.wait_for(1, event="hang", step=3)  # the loop stops stepping
        assert first["idle_seconds"] >= 1 and first["status"] == "running"
        train(mon, model, opt, x, y, 2)  # it moves again: the watch is re-armed
        hook.wait_for(1, event="hang", step=5)
    steps = [m["step"] for m in hook.bodies()]
    assert steps.count(3) == 1 and steps.count(5) == 1  # once per episode
    assert len(steps) == len(set(steps))


@pytest.mark.parametrize("receiver", ["server error", "connection refused", "failing command"])
def test_a_failing_receiver_never_stops_training_and_is_reported_once(receiver, tmp_path, capfd):
    server = HookServer(status=500)
    try:
        notify: dict[str, Any] = {
            "server error": {"url": server.url()},
            "connection refused": {"url": f"http://127.0.0.1:{closed_port()}/hook"},
            "failing command": {"command": f"{sys.executable} {SINK} {tmp_path / 'x'} 2"},
        }[receiver]
        model, opt, x, y = tiny()
        run = tmp_path / "run"
        with Monitor(model, opt, run_dir=run, quiet=True, log_every=1, notify=notify) as mon:
            train(mon, model, opt, x, y, 5)
            nan_step(mon)  # an error alert: its message fails
            train(mon, model, opt, x, y, 5)
        # and the end's message fails too
        assert mon.global_step == 11 and mon.status == "completed"
        log = events(run)
        warnings = [
            e
            for e in log
            if e["type"] == MESSAGE and e["level"] == WARNING and "notif" in e["text"]
        ]
        assert len(warnings) == 1, warnings
        assert "further failures to notify are not reported" in warnings[0]["text"]
        assert log[-1]["type"] == END and log[-1]["status"] == "completed"
        notifier = mon._notifier
        assert notifier is not None
        # Every message failed: each error alert's and the end's (perhaps after close's
        # bounded wait, on a loaded machine).
        expected = 1 + sum(e["type"] == ALERT and e["severity"] == "error" for e in log)
        assert expected >= 2
        deadline = time.monotonic() + 120
        while notifier.failed < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert notifier.failed == expected
        err = capfd.readouterr().err
        assert err.count("tuimon: warning: notification to") == 1
    finally:
        server.close()


def test_a_slow_receiver_never_slows_the_steps(tmp_path):
    server = HookServer(hold=True)  # each request waits until the test releases it
    try:
        model, opt, x, y = tiny()
        notify = {"url": server.url(), "when": ["error", "completed"]}
        with Monitor(
            model, opt, run_dir=tmp_path / "run", quiet=True, log_every=1, notify=notify
        ) as mon:
            train(mon, model, opt, x, y, 3)
            nan_step(mon)
            assert server.entered.wait(60), "the alert's message never reached the server"
            # The receiver holds its answer; the loop goes on regardless.
            train(mon, model, opt, x, y, 50)
            assert mon.global_step == 54 and not server.release.is_set()
            assert len(server.received) == 1  # still the alert's, unanswered
            server.release.set()
        events_sent = [b["event"] for b in server.bodies()]
        assert events_sent.count("completed") == 1 and "error" in events_sent
    finally:
        server.close()


def test_many_messages_while_the_receiver_hangs_are_dropped_not_waited_for(tmp_path):
    server = HookServer(hold=True)
    try:
        model, opt, x, y = tiny()
        notify = {"url": server.url(), "when": ["error"]}
        with Monitor(model, opt, run_dir=tmp_path / "run", quiet=True, notify=notify) as mon:
            notifier = mon._notifier
            assert notifier is not None
            from tuimon.notify.notifier import QUEUE_SIZE
            from tuimon.notify.payloads import from_alert

            alert = {"step": 1, "rule": "nan_loss", "severity": "error", "message": "x"}
            for _ in range(QUEUE_SIZE * 3):  # from the training thread: never blocks
                notifier.queue(from_alert(alert, notifier.run))
            assert notifier.dropped >= QUEUE_SIZE
            train(mon, model, opt, x, y, 3)
            server.release.set()
        said = [e["text"] for e in events(tmp_path / "run") if e["type"] == MESSAGE]
        assert sum("were dropped" in text for text in said) == 1  # said once, at the end
    finally:
        server.close()


def test_a_command_gets_the_end_as_json_on_stdin(tmp_path):
    out = tmp_path / "got.jsonl"
    model, opt, x, y = tiny()
    notify = f"{sys.executable} {SINK} {out}"
    with Monitor(model, opt, run_dir=tmp_path / "run", quiet=True, notify=notify) as mon:
        train(mon, model, opt, x, y, 4)
    [message] = [json.loads(line) for line in out.read_text().splitlines()]
    assert message["event"] == "completed" and message["step"] == 4
    assert message["run_dir"] == str(tmp_path / "run") and "text" in message


def test_a_config_run_notifies_its_end(hook, tmp_path):
    """`tuimon configs/mlp.yaml --headless --quiet --set monitor.notify.url=...`."""
    done = run_tuimon(
        REPO / "configs" / "mlp.yaml",
        "--headless",
        "--quiet",
        "--run-dir",
        "run",
        "--set",
        f"monitor.notify.url={hook.url(SECRET)}",
        "--set",
        "train.max_steps=20",
        "--set",
        "data.synthetic.num_samples=1000",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    [message] = hook.bodies()
    assert message["event"] == "completed" and message["step"] == 20
    assert message["run"] == "mlp" and message["run_dir"].endswith("run")
    no_secret_in(tmp_path / "run")


@pytest.mark.parametrize("how", ["completes", "fails", "never closes"])
def test_a_script_under_tuimon_run_notify_is_heard_even_when_it_exits_at_once(hook, tmp_path, how):
    """The script reads TUIMON_NOTIFY (what `tuimon run --notify` sets) and calls os._exit
    right after the Monitor closes: the end's message was sent before close returned. A
    script that never closes its Monitor is heard from its exit (the atexit close)."""
    env = {**worker_env(), NOTIFY_ENV: hook.url(SECRET)}
    fail = how == "fails"
    mode = {"completes": [], "fails": ["fail"], "never closes": ["no-close"]}[how]
    done = subprocess.run(
        [sys.executable, str(LOOP), *mode],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == (1 if fail else 0), done.stderr
    assert "NOTIFY LOOP" in done.stdout
    [message] = hook.bodies()  # no wait: it arrived before the process exited
    assert message["event"] == ("failed" if fail else "completed")
    assert message["step"] == (5 if fail else 12) and message["run"] == "notify_loop"
    if fail:
        assert "deliberate failure at step 5" in message["error"]
    [run] = (tmp_path / "runs").iterdir()
    no_secret_in(run)


def test_tuimon_run_notify_end_to_end(hook, tmp_path, monkeypatch):
    """`tuimon run --quiet --notify URL notify_loop.py`, the UI replaced by a wait."""
    from tuimon import cli, launch

    monkeypatch.chdir(tmp_path)
    for name, value in worker_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(NOTIFY_ENV, raising=False)
    ran: list[Path] = []

    def no_ui(run_dir, *, worker=None, **kwargs):
        worker.wait(timeout=300)
        ran.append(run_dir)
        return launch.worker_exit_code(run_dir, None, worker.returncode)

    monkeypatch.setattr(launch, "run_app", no_ui)
    code = cli.main(["run", "--quiet", "--notify", hook.url(), str(LOOP)])
    [run] = ran
    assert code == 0, (run / "output.log").read_text()
    [message] = hook.bodies()
    assert message["event"] == "completed" and message["run_dir"] == str(run)
    assert [e["step"] for e in events(run) if e["type"] == STEP][-1] == 12


def test_notifying_runs_on_its_own_threads_only(hook, tmp_path):
    """The training thread only queues: every POST comes from the notifier's thread."""
    seen: list[str] = []
    original = __import__("tuimon.notify.delivery", fromlist=["post_json"]).post_json

    def spy(*args: Any, **kwargs: Any) -> None:
        seen.append(threading.current_thread().name)
        original(*args, **kwargs)

    import tuimon.notify.notifier as notifier_module

    model, opt, x, y = tiny()
    patch = pytest.MonkeyPatch()
    patch.setattr(notifier_module, "post_json", spy)
    try:
        with Monitor(
            model, opt, run_dir=tmp_path / "run", quiet=True, log_every=1, notify=hook.url()
        ) as mon:
            train(mon, model, opt, x, y, 3)
            nan_step(mon)
            hook.wait_for(1, event="error")
    finally:
        patch.undo()
    assert seen and set(seen) == {"tuimon-notify"}


@pytest.mark.parametrize("format", ["slack", "ntfy"])
def test_slack_and_ntfy_bodies_reach_the_server_as_they_expect(hook, tmp_path, format):
    model, opt, x, y = tiny()
    notify = {"url": hook.url("/base/my-topic"), "format": format}
    with Monitor(model, opt, run_dir=tmp_path / "run", quiet=True, notify=notify) as mon:
        train(mon, model, opt, x, y, 3)
    [received] = hook.received
    if format == "slack":  # an incoming webhook: {"text"} POSTed to the hook itself
        assert received["path"] == "/base/my-topic" and set(received["body"]) == {"text"}
        assert "completed at step 3" in received["body"]["text"]
    else:  # ntfy's JSON publishing: to the server's root, the topic in the body
        assert received["path"] == "/base/"
        assert received["body"]["topic"] == "my-topic" and received["body"]["priority"] == 3
        assert "completed at step 3" in received["body"]["title"]
        assert received["body"]["tags"] == ["white_check_mark"]


def test_a_receiver_that_never_answers_cannot_hold_the_end_of_the_run(tmp_path, monkeypatch):
    """close() gives the queue a bounded time (here cut to 1 s), then ends the run anyway."""
    import tuimon.notify.notifier as notifier_module

    monkeypatch.setattr(notifier_module, "CLOSE_FLUSH_SECONDS", 1.0)
    server = HookServer(hold=True)  # never released before the run has ended
    try:
        model, opt, x, y = tiny()
        notify = {"url": server.url(), "when": ["completed"], "timeout": 300}
        run = tmp_path / "run"
        with Monitor(model, opt, run_dir=run, quiet=True, notify=notify) as mon:
            train(mon, model, opt, x, y, 3)
        assert server.entered.is_set() or server.wait_for(1, event="completed")
        assert not server.release.is_set()  # the end's POST is still unanswered
        log = events(run)
        assert log[-1]["type"] == END and log[-1]["status"] == "completed"
    finally:
        server.close()
