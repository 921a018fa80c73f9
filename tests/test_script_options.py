"""Scripts get the same switches as configs: name=, run length and epochs, loss_fn=,
doctor settings, `tuimon run --autofix`, and a `recover` offered only when it can work."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tuimon
from tuimon.control.client import ControlClient
from tuimon.doctor.engine import RECOVERABLE
from tuimon.errors import ConfigError
from tuimon.run.log_reader import read_events
from tuimon.run.run_dir import RUN_DIR_ENV
from tuimon.run.run_state import RunState
from tuimon.ui.plotting import ViewOptions
from tuimon.ui.widgets.status_bar import StatusBar

from conftest import worker_env

GAN_SCRIPT = """
import torch
import torch.nn as nn
import tuimon

torch.manual_seed(0)
netG = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh())
netD = nn.Sequential(nn.Linear(16, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
criterion = nn.BCEWithLogitsLoss()
optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
real_data = torch.rand(256, 16) * 2 - 1

with (
    tuimon.Monitor(netG, optimizerG, name="G", loss_fn=criterion, total_steps=40) as monG,
    tuimon.Monitor(netD, optimizerD, name="D", loss_fn=criterion, total_steps=40) as monD,
):
    for i in range(40):
        real = real_data[(i * 32) % 256 :][:32]
        # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
        netD.zero_grad()
        errD_real = criterion(netD(real), torch.ones(32, 1))
        errD_real.backward()
        fake = netG(torch.randn(32, 8))
        errD_fake = criterion(netD(fake.detach()), torch.zeros(32, 1))
        errD_fake.backward()
        optimizerD.step()
        monD.step(errD_real + errD_fake, inputs=real)
        # (2) Update G: maximize log(D(G(z)))
        netG.zero_grad()
        errG = criterion(netD(fake), torch.ones(32, 1))
        errG.backward()
        optimizerG.step()
        monG.step(errG, inputs=fake)
print("GAN DONE")
"""


def run_script(tmp_path: Path, text: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    script = tmp_path / "gan.py"
    script.write_text(text, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )


def test_two_named_monitors_in_one_script_both_log_under_tuimon_run(tmp_path):
    given = tmp_path / "runs" / "gan-20260101-000000"
    given.mkdir(parents=True)
    done = run_script(tmp_path, GAN_SCRIPT, {**worker_env(), RUN_DIR_ENV: str(given)})
    assert done.returncode == 0, done.stderr
    assert "GAN DONE" in done.stdout
    sibling = given.with_name(given.name + "-D")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [given.name, sibling.name]
    for path, name in ((given, "G"), (sibling, "D")):
        events = list(read_events(path / "events.jsonl"))
        start, end = events[0], events[-1]
        assert start["name"] == name and start["run_dir"] == str(path.resolve())
        assert start["loss"] == {"name": "BCEWithLogitsLoss", "reduction": "mean"}
        assert end["type"] == "end" and end["status"] == "completed" and end["step"] == 40
        assert len([e for e in events if e["type"] == "step"]) == 40


def test_without_tuimon_run_each_named_monitor_gets_its_own_run(tmp_path):
    done = run_script(tmp_path, GAN_SCRIPT, worker_env())
    assert done.returncode == 0, done.stderr
    names = sorted(p.name.split("-")[0] for p in (tmp_path / "runs").iterdir())
    assert names == ["D", "G"]


def mnist_like(steps_per_epoch: int = 6):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32 * steps_per_epoch, 1, 8, 8), torch.randint(0, 4, (192,)))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    return model, DataLoader(data, batch_size=32, shuffle=True)


def train(mon, model, opt, loader, epochs, pass_epoch=False):
    for epoch in range(epochs):
        for data, target in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(data), target, label_smoothing=0.1)
            loss.backward()
            opt.step()
            if pass_epoch:
                mon.step(loss, inputs=data, epoch=epoch)
            else:
                mon.step(loss, inputs=data)
        mon.log(val_loss=loss.detach())


def test_epochs_and_progress_reach_the_status_bar(tmp_path):
    model, loader = mnist_like()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with tuimon.Monitor(
        model, opt, run_dir=tmp_path / "a", quiet=True, epochs=3, steps_per_epoch=len(loader)
    ) as mon:
        train(mon, model, opt, loader, epochs=3)
    events = list(read_events(mon.run_dir / "events.jsonl"))
    start = events[0]
    assert (start["total_steps"], start["epochs"], start["steps_per_epoch"]) == (18, 3, 6)
    steps = [e for e in events if e["type"] == "step"]
    assert [e["epoch"] for e in steps] == [0] * 6 + [1] * 6 + [2] * 6
    assert [e["epoch"] for e in events if e["type"] == "metrics"] == [0, 1, 2]
    # The status bar of the live run (every event but the end): epoch, progress, ETA.
    state = RunState()
    state.apply_many(events[:-1])
    bar = StatusBar()
    bar.shown_status = state.status
    console = Console(width=200, color_system=None, file=io.StringIO())
    with console.capture() as captured:
        console.print(bar.view(state, ViewOptions(), 200, 1))
    line = captured.get()
    assert "epoch 3/3" in line and "18/18 100.0%" in line and "ETA" in line


def test_an_explicit_epoch_and_total_steps(tmp_path):
    model, loader = mnist_like()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with tuimon.Monitor(model, opt, run_dir=tmp_path / "b", quiet=True, total_steps=12) as mon:
        train(mon, model, opt, loader, epochs=2, pass_epoch=True)
    events = list(read_events(mon.run_dir / "events.jsonl"))
    assert events[0]["total_steps"] == 12 and events[0]["steps_per_epoch"] is None
    assert [e["epoch"] for e in events if e["type"] == "step"] == [0] * 6 + [1] * 6
    with pytest.raises(ValueError, match="total_steps"):
        tuimon.Monitor(model, opt, run_dir=tmp_path / "c", total_steps=0)
    with pytest.raises(ValueError, match="letters, digits"):
        tuimon.Monitor(model, opt, run_dir=tmp_path / "d", name="G/D")


def test_doctor_settings_and_loss_fn_reach_the_run(tmp_path):
    model, loader = mnist_like()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    with tuimon.Monitor(
        model,
        opt,
        run_dir=tmp_path / "a",
        quiet=True,
        loss_fn=criterion,
        doctor={"rules": {"stall": {"enabled": False}}, "autofix": True},
        rules={"stall": {"enabled": False}, "divergence": {"ratio": 5}},
        snapshot_every=7,
    ) as mon:
        assert "stall" not in {rule.id for rule in mon.doctor.rules}
        assert next(r for r in mon.doctor.rules if r.id == "divergence").p["ratio"] == 5
        train(mon, model, opt, loader, epochs=1)
    start = next(read_events(mon.run_dir / "events.jsonl"))
    assert start["settings"]["autofix"] is True and start["settings"]["snapshot_every"] == 7
    assert start["settings"]["rules"]["stall"]["enabled"] is False
    assert start["loss"] == {
        "name": "CrossEntropyLoss",
        "reduction": "mean",
        "label_smoothing": 0.1,
        "ignore_index": -100,
    }
    partial = tuimon.Monitor(
        model, opt, run_dir=tmp_path / "p", quiet=True, loss_fn=F.cross_entropy
    )
    partial.close()
    assert next(read_events(partial.run_dir / "events.jsonl"))["loss"] == {"name": "cross_entropy"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"autofx": True}, "autofx: unknown key (did you mean autofix?)"),
        ({"rules": {"stal": {}}}, "rules.stal: unknown key (did you mean stall?)"),
        ({"rules": {"stall": {"windw": 5}}}, "unknown threshold of stall (did you mean window?)"),
        ({"snapshot_every": -1}, "snapshot_every"),
    ],
)
def test_bad_doctor_settings_are_refused_clearly(tmp_path, monkeypatch, settings, message):
    monkeypatch.chdir(tmp_path)
    model = nn.Linear(2, 1)
    with pytest.raises(ConfigError) as raised:
        tuimon.Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), **settings)
    assert message in str(raised.value)
    assert not (tmp_path / "runs").exists()


AUTOFIX_SCRIPT = """
import torch, tuimon
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with tuimon.Monitor(model, opt) as mon:
    print("AUTOFIX", mon.settings.autofix, flush=True)
"""


def test_tuimon_run_autofix_reaches_the_scripts_monitor(tmp_path, monkeypatch):
    from tuimon import cli, launch

    script = tmp_path / "fix.py"
    script.write_text(AUTOFIX_SCRIPT, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    for name, value in worker_env().items():
        monkeypatch.setenv(name, value)
    ran: list[Path] = []

    def no_ui(run_dir, *, worker=None, **kwargs):  # the worker as launched, without a UI
        worker.wait(timeout=120)
        ran.append(run_dir)
        return 0

    monkeypatch.setattr(launch, "run_app", no_ui)
    assert cli.main(["run", "--autofix", str(script)]) == 0
    assert cli.main(["run", str(script)]) == 0
    with_fix, without = (next(read_events(path / "events.jsonl")) for path in ran)
    assert with_fix["settings"]["autofix"] is True and without["settings"]["autofix"] is False
    assert "AUTOFIX True" in (ran[0] / "output.log").read_text()


def blow_up_loop(run_dir: Path, **settings) -> tuple[list[dict], dict]:
    """A regression that learns, until the script raises the LR 10x and it goes NaN; then
    the script applies what the doctor offers for it, as pressing `a` would."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(64, 16)
    y = x.sum(1, keepdim=True)
    offered: dict = {}
    with tuimon.Monitor(
        model, opt, run_dir=run_dir, quiet=True, loss_fn=nn.MSELoss(), log_every=1, **settings
    ) as mon:
        for i in range(120):
            if i == 40:
                for group in opt.param_groups:
                    group["lr"] = 0.5
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss, inputs=x, targets=y)
            if not offered and not torch.isfinite(loss):
                deadline = time.monotonic() + 60
                while not (alerts := [a for a in mon.history.alerts if a["rule"] in RECOVERABLE]):
                    assert time.monotonic() < deadline, "the doctor did not see the blow-up"
                    time.sleep(0.05)
                offered = alerts[0]
                args = {k: v for k, v in offered["action"].items() if k != "cmd"}
                with ControlClient(mon.run_dir) as client:
                    client.request(offered["action"]["cmd"], source="test", **args)
    return list(read_events(mon.run_dir / "events.jsonl")), offered


def test_recover_is_offered_only_when_snapshots_make_it_work(tmp_path):
    events, offered = blow_up_loop(tmp_path / "plain")
    actions = [a["action"] for a in events if a["type"] == "alert" and a.get("action")]
    assert actions and all(action["cmd"] != "recover" for action in actions)
    assert offered["action"] == {"cmd": "scale-lr", "factor": 0.1}
    assert "needs snapshots" in offered["suggestion"]
    assert "snapshot_every" in offered["suggestion"]

    events, offered = blow_up_loop(tmp_path / "snapshots", snapshot_every=5)
    assert offered["action"]["cmd"] == "recover"
    [control] = [e for e in events if e["type"] == "control"]
    assert control["command"] == "recover" and control["restored_step"] is not None
    # It worked: finite losses from the restore on, at a tenth of the LR, learning again.
    after = [e for e in events if e["type"] == "step" and e["step"] > control["step"]]
    assert after and all(math.isfinite(e["loss"]) for e in after)
    assert after[-1]["lr"] == pytest.approx(0.05) and after[-1]["loss"] < 0.1
