"""The control channel against a real worker process: real socket, real training."""

from __future__ import annotations

import math
import shutil
import signal

import pytest
import torch

from tuimon.control.client import CommandRefused, ControlClient, ControlError
from tuimon.run.run_state import RunState

from conftest import ENDLESS_CONFIG, run_tuimon, wait_for


@pytest.fixture(autouse=True)
def one_thread_workers(monkeypatch):
    """Workers started here train on one thread: an endless run at full speed on both
    cores (CI has two) only burns the CPU the test and its clients need. Nothing here is
    about torch's thread count."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def is_step(event):
    return event.get("type") == "step"


def control_of(cmd):
    return lambda e: e.get("type") == "control" and e.get("command") == cmd


# These five share one worker (shared_workers), in this order: the garbage changes nothing,
# set-lr then starts from the config's LR, and the stop ends the worker last.


def test_garbage_gets_error_replies_and_the_run_continues(shared_workers):
    worker = shared_workers.live()
    garbage = {
        b"not json at all\n": "not JSON",
        b"[1, 2, 3]\n": "must be a JSON object",
        b'{"no_cmd": 1}\n': 'needs a "cmd"',
        b'{"cmd": "fly"}\n': "unknown command 'fly'",
        b'{"cmd": "paus"}\n': "did you mean pause?",
        b'{"cmd": "set-lr", "value": "abc"}\n': "must be a number",
        b'{"cmd": "set-lr", "value": -1}\n': "must be > 0",
        b'{"cmd": "set-lr", "value": NaN}\n': "must be finite",
        b'{"cmd": "set-lr"}\n': 'needs "value"',
        b'{"cmd": "scale-lr", "factor": 0}\n': "must be > 0",
        b'{"cmd": "pause", "extra": 1}\n': "takes no argument 'extra'",
        b"\xff\xfe\xfd\n": "not UTF-8",
    }
    with worker.client() as client:
        client.subscribe()
        controls_before = len(
            RunState.from_snapshot(client.request("history")["snapshot"]).controls
        )
        for data, expected in garbage.items():
            client.send_raw(data)
            reply = client.wait_reply()
            assert reply["ok"] is False, data
            assert expected in reply["error"], (data, reply["error"])
        client.send_raw(b'{"cmd": "ping"' + b" " * (70 * 1024) + b"}\n")
        assert "longer than" in client.wait_reply()["error"]
        # The same connection still works, and the run is still training.
        status = client.request("status")["status"]
        assert status["state"] == "running"
        first, seen = wait_for(client, is_step)
        _, later = wait_for(client, lambda e: is_step(e) and e["step"] > first["step"])
        # Nothing was applied: a command queued by the garbage would have been applied at
        # a step boundary since, and its `control` event streamed before these steps.
        assert not [e for e in seen + later if e.get("type") == "control"]
        history = RunState.from_snapshot(client.request("history")["snapshot"])
        assert len(history.controls) == controls_before


def test_set_lr_applies_at_a_step_boundary(shared_workers):
    # The garbage test before it on this worker changed nothing: the LR is the config's.
    worker = shared_workers.live()
    with worker.client() as client:
        client.subscribe()
        wait_for(client, is_step)
        reply = client.request("set-lr", value=0.01, source="test")
        assert reply["ok"] and reply["queued"]
        control, before = wait_for(client, control_of("set-lr"))
        assert control["old"] == pytest.approx(0.1)
        assert control["new"] == pytest.approx(0.01)
        assert control["source"] == "test"
        assert control["request_id"] == reply["id"]
        # Steps up to the boundary ran at the old LR, every later one at the new.
        assert all(e["lr"] == pytest.approx(0.1) for e in before if is_step(e))
        after = [wait_for(client, is_step)[0] for _ in range(3)]
        assert [e["step"] for e in after] == [control["step"] + i for i in (1, 2, 3)]
        assert all(e["lr"] == pytest.approx(0.01) for e in after)
        # An attaching client gets the whole run so far as one snapshot.
        history = RunState.from_snapshot(client.request("history")["snapshot"])
        assert history.name == "endless" and history.series["loss"].total >= after[-1]["step"]
        assert [c["command"] for c in history.controls] == ["set-lr"]
        assert history.series["lr/0"].latest == pytest.approx(0.01)
    # The worker trains on for the next tests; test_stop_... ends it and checks the exit.


def test_pause_stops_steps_until_resume(shared_workers):
    worker = shared_workers.live()
    with worker.client() as client:
        client.subscribe()
        wait_for(client, is_step)
        client.request("pause")
        paused, _ = wait_for(client, control_of("pause"))
        assert (paused["old"], paused["new"]) == ("running", "paused")
        assert client.request("status")["status"]["state"] == "paused"
        # The sampler keeps its 0.1 s clock while paused: five samples with no step between.
        seen = []
        for _ in range(5):
            _, between = wait_for(client, lambda e: e.get("type") == "system")
            seen += between
        assert not [e for e in seen if is_step(e)]
        client.request("resume")
        resumed, between = wait_for(client, control_of("resume"))
        assert not [e for e in between if is_step(e)]
        assert resumed["step"] == paused["step"]
        first, _ = wait_for(client, is_step)
        assert first["step"] == paused["step"] + 1


def test_checkpoint_command_writes_a_loadable_checkpoint(shared_workers):
    worker = shared_workers.live()
    with worker.client() as client:
        client.subscribe()
        wait_for(client, lambda e: is_step(e) and e["step"] >= 2)
        client.request("checkpoint")
        control, before = wait_for(client, control_of("checkpoint"))
    [noted] = [e for e in before if e["type"] == "checkpoint"]
    assert control["new"] == noted["path"]
    state = torch.load(noted["path"], weights_only=False)
    assert state["step"] == control["step"] == noted["step"]
    assert set(state) >= {"model", "optimizer", "scheduler", "rng", "step", "epoch"}


def test_stop_saves_a_checkpoint_and_exits_zero(shared_workers):
    worker = shared_workers.live()
    with worker.client() as client:
        client.subscribe()
        wait_for(client, lambda e: is_step(e) and e["step"] >= 3)
        client.request("stop", source="test")
        control, _ = wait_for(client, control_of("stop"))
        end, _ = wait_for(client, lambda e: e.get("type") == "end")
    assert worker.wait_exit() == 0
    assert control["new"] == "stopping"
    assert end["status"] == "stopped"
    assert end["step"] == control["step"]
    checkpoint = torch.load(control["path"], weights_only=False)
    assert checkpoint["step"] == control["step"]
    # Nothing after the stop: the log ends with `end`, and its steps end at the stop.
    events = worker.events()
    assert events[-1]["type"] == "end"
    assert max(e["step"] for e in events if is_step(e)) == control["step"]
    assert not (worker.run_dir / "control.sock").exists()
    # Whatever the tests before it asked of this worker, it ran every step it logged once.
    steps = [e["step"] for e in events if is_step(e)]
    assert steps == list(range(1, control["step"] + 1))


COSINE = ENDLESS_CONFIG.replace(
    "train:\n  max_steps: 100000000",
    "scheduler:\n  name: CosineAnnealingLR\n  interval: step\n  T_max: 400\n"
    "train:\n  max_steps: 100000000",
)


def cosine(step: int, base: float = 0.1, t_max: int = 400) -> float:
    return base * (1 + math.cos(math.pi * step / t_max)) / 2


def test_scale_lr_keeps_the_cosine_schedule_shape(write_config, start_worker):
    worker = start_worker(write_config(COSINE))
    with worker.client() as client:
        client.subscribe()
        wait_for(client, lambda e: is_step(e) and e["step"] >= 5)
        client.request("scale-lr", factor=0.5)
        control, before = wait_for(client, control_of("scale-lr"))
        boundary = control["step"]
        after = [wait_for(client, is_step)[0] for _ in range(30)]
        client.request("stop")
    assert worker.wait_exit() == 0
    # The LR logged for step s is the one its optimizer step used: the cosine at s - 1.
    for event in (e for e in before if is_step(e)):
        assert event["lr"] == pytest.approx(cosine(event["step"] - 1), rel=1e-6)
    assert [e["step"] for e in after] == list(range(boundary + 1, boundary + 31))
    for event in after:
        assert event["lr"] == pytest.approx(0.5 * cosine(event["step"] - 1), rel=1e-6)


def test_sigint_stops_gracefully_with_exit_130(write_config, start_worker):
    worker = start_worker(write_config())
    with worker.client() as client:
        client.subscribe()
        wait_for(client, is_step)
        worker.process.send_signal(signal.SIGINT)
        end, _ = wait_for(client, lambda e: e.get("type") == "end")
    assert worker.wait_exit() == 130
    assert end["status"] == "stopped"
    assert [e for e in worker.events() if e["type"] == "checkpoint"]


def test_ctl_cli_applies_and_refuses(write_config, start_worker):
    worker = start_worker(write_config())
    ctl = ("ctl", worker.run_dir)
    done = run_tuimon(*ctl, "set-lr", "0.02", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "applied at step" in done.stdout and "0.1 -> 0.02" in done.stdout
    for bad, message in (
        ("abc", "must be a number"),
        ("-1", "must be > 0"),
        ("nan", "must be finite"),
        # Refused by the run, against its LR limits, and said in its reply.
        ("1e9", "set-lr 1e+09: resulting lr 1e+09 is above the maximum 100"),
        ("5e-324", "set-lr 5e-324: resulting lr 5e-324 is below the minimum 1e-12"),
    ):
        refused = run_tuimon(*ctl, "set-lr", bad, timeout=60)
        assert refused.returncode == 2
        assert message in refused.stderr
        assert "Traceback" not in refused.stderr
    no_group = run_tuimon(*ctl, "set-lr", "0.1", "--group", "999", timeout=60)
    assert no_group.returncode == 2, no_group.stderr
    assert "param group 999 does not exist" in no_group.stderr
    assert "the optimizer has 1 param group, group 0" in no_group.stderr
    clip = run_tuimon(*ctl, "set-grad-clip", "1.5", timeout=60)
    assert "set-grad-clip None -> 1.5" in clip.stdout
    unclip = run_tuimon(*ctl, "set-grad-clip", "0", timeout=60)
    assert unclip.returncode == 0, unclip.stderr
    assert "set-grad-clip 1.5 -> None" in unclip.stdout
    bad_clip = run_tuimon(*ctl, "set-grad-clip", "-1", timeout=60)
    assert bad_clip.returncode == 2 and "must be >= 0" in bad_clip.stderr
    recover = run_tuimon(*ctl, "recover", "0.5", timeout=60)
    assert "recover 0.02 -> 0.01" in recover.stdout  # no snapshot kept: only the LR halves
    status = run_tuimon(*ctl, "status", timeout=60)
    assert "state: running" in status.stdout
    stop = run_tuimon(*ctl, "stop", timeout=60)
    assert "stopping" in stop.stdout
    assert worker.wait_exit() == 0
    lrs = [e["new"] for e in worker.events() if e["type"] == "control" and e["command"] == "set-lr"]
    assert lrs == [pytest.approx(0.02)]
    notes = [e["text"] for e in worker.events() if e["type"] == "message"]
    assert any("no good snapshot to restore" in text for text in notes)


def test_lr_commands_beyond_the_limits_are_refused_and_change_nothing(write_config, start_worker):
    worker = start_worker(write_config(COSINE))
    with worker.client() as client:
        client.subscribe()
        wait_for(client, lambda e: is_step(e) and e["step"] >= 3)
        with pytest.raises(CommandRefused) as denormal:
            client.request("set-lr", value=5e-324)
        assert str(denormal.value) == (
            "set-lr 5e-324: resulting lr 5e-324 is below the minimum 1e-12"
        )
        outcomes = []
        for _ in range(3):
            try:
                client.request("scale-lr", factor=1000)
            except CommandRefused as exc:
                outcomes.append(str(exc))
                continue
            control, _ = wait_for(client, control_of("scale-lr"))
            outcomes.append(control["new"])
        # At the floor, a recover (autofix's command) restores but leaves the LR alone.
        client.request("set-lr", value=1e-12)
        floor, _ = wait_for(client, control_of("set-lr"))
        client.request("recover", lr_factor=0.1)
        recover, before = wait_for(client, control_of("recover"))
        client.request("stop")
    assert worker.wait_exit() == 0
    # The cosine's LR (<= 0.1) x 1000 is within 100; another x 1000 is refused, twice.
    assert outcomes[0] <= 100
    assert all("resulting lr" in o and "above the maximum 100" in o for o in outcomes[1:])
    assert floor["new"] == 1e-12
    assert recover["old"] == recover["new"]
    assert any(
        "recover: the LR is unchanged" in e.get("text", "") and "below the minimum" in e["text"]
        for e in before
    )
    events = worker.events()
    lrs = [e["lr"] for e in events if is_step(e)]
    assert all(math.isfinite(lr) and 0 < lr <= 100 for lr in lrs)
    commands = [e["command"] for e in events if e["type"] == "control"]
    assert commands == ["scale-lr", "set-lr", "recover", "stop"]


def test_ctl_checkpoint_says_why_it_failed(write_config, start_worker):
    worker = start_worker(write_config())
    checkpoints = worker.run_dir / "checkpoints"
    shutil.rmtree(checkpoints, ignore_errors=True)
    checkpoints.write_text("a file where the checkpoint directory belongs")
    done = run_tuimon("ctl", worker.run_dir, "checkpoint", timeout=60)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "checkpoint failed" in done.stderr
    assert "None -> None" not in done.stdout
    worker.process.send_signal(signal.SIGKILL)


def test_ctl_on_a_missing_run_fails_clearly(tmp_path):
    done = run_tuimon("ctl", tmp_path, "pause", timeout=60)
    assert done.returncode == 1
    assert "no control socket" in done.stderr


def test_client_refuses_a_socket_nobody_listens_on(tmp_path):
    import socket

    path = tmp_path / "control.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # a stale socket file left by a killed worker
    with pytest.raises(ControlError, match="refuses connections"):
        ControlClient(tmp_path)
