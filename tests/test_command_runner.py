"""The command runner and the autofix policy, apart from a Monitor (no run directory)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tuimon.config.schema import MonitorConfig
from tuimon.control.commands import RUN_COMMANDS
from tuimon.control.protocol import ProtocolError, Request
from tuimon.monitor.autofix import Autofix
from tuimon.monitor.command_runner import HANDLERS, CommandRunner
from tuimon.monitor.snapshots import SnapshotRing


def test_every_run_command_has_exactly_one_handler():
    assert sorted(HANDLERS) == sorted(RUN_COMMANDS)


def runner(**settings):
    model = torch.nn.Linear(2, 1)
    events = []
    recovered = []
    made = CommandRunner(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        scheduler=None,
        settings=MonitorConfig(**settings),
        emit=events.append,
        current_step=lambda: 7,
        drain_steps=lambda: None,
        checkpoint=lambda reason: Path(f"/ckpt/{reason}.pt"),
        grads=SimpleNamespace(clip=None),
        snapshots=SnapshotRing(0),
        on_recover=lambda: recovered.append(True),
    )
    return made, events, recovered


def test_commands_change_the_status_and_say_so():
    commands, events, _ = runner()
    assert commands.submit(Request(cmd="scale-lr", args={"factor": 0.5}, id=1)) == {
        "queued": True,
        "step": 7,
    }
    assert commands.apply_pending() is False
    assert commands.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    commands.queue(Request(cmd="stop", source="api"))
    commands.apply_pending()
    assert commands.status == "stopping" and commands.stop_requested and commands.stop_step == 7
    with pytest.raises(ProtocolError, match="stopping"):
        commands.submit(Request(cmd="pause"))
    assert [(e["command"], e["old"], e["new"]) for e in events] == [
        ("scale-lr", pytest.approx(0.1), pytest.approx(0.05)),
        ("stop", "running", "stopping"),
    ]
    assert events[0]["factor"] == 0.5 and events[0]["request_id"] == 1
    assert events[1]["path"] == "/ckpt/stop.pt" and events[1]["source"] == "api"
    commands.closed = True
    commands.end("stopped")
    with pytest.raises(ProtocolError, match=r"ended \(stopped\)"):
        commands.submit(Request(cmd="stop"))


def test_a_pause_waits_at_the_boundary_until_resumed():
    commands, events, _ = runner()
    commands.queue(Request(cmd="pause"))
    threading.Timer(0.3, lambda: commands.submit(Request(cmd="resume"))).start()
    assert commands.apply_pending() is True  # it waited
    assert commands.status == "running"
    assert [(e["command"], e["old"], e["new"]) for e in events] == [
        ("pause", "running", "paused"),
        ("resume", "paused", "running"),
    ]


def test_autofix_recovers_once_per_incident_and_gives_up_after_its_tries():
    notes = []
    autofix = Autofix(MonitorConfig(autofix=True, autofix_max=1), lambda *said: notes.append(said))
    alert = {"type": "alert", "rule": "nan_loss", "action": {"cmd": "recover", "lr_factor": 0.5}}
    assert autofix.consider({"type": "alert", "rule": "stall"}) is None  # not recoverable
    first = autofix.consider(alert)
    assert first == Request(cmd="recover", args={"lr_factor": 0.5}, source="autofix")
    assert autofix.consider(alert) is None and not notes  # the same incident
    autofix.recovery_applied()
    assert autofix.consider(alert) is None
    assert notes == [("autofix: gave up on nan_loss after 1 tries", "error")]
