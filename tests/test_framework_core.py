"""The pieces every framework adapter stands on, in plain torch loops: a GradScaler's loss
scale and skipped steps, gradients measured where a closure step makes them final, a
framework's own checkpointing, and FrameworkRun's one step per optimizer step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tuimon.control.client import ControlClient
from tuimon.integrations.framework_run import FrameworkRun
from tuimon.monitor.monitor import Monitor, RunOptions
from tuimon.run.log_reader import read_events


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def batches(count: int, size: int = 16):
    generator = torch.Generator().manual_seed(1)
    for _ in range(count):
        yield torch.randn(size, 8, generator=generator), torch.randint(0, 3, (size,))


def events_of(run_dir: Path, kind: str | None = None) -> list[dict]:
    events = list(read_events(run_dir / "events.jsonl"))
    return [e for e in events if kind is None or e["type"] == kind]


def total_norm(model: nn.Module) -> float:
    return float(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters())))


def test_a_scaler_s_scale_and_skipped_steps_are_recorded(tmp_path):
    # float16 autocast on the CPU with a CPU GradScaler: the scale starts at 2^24, so the
    # first steps overflow and are skipped while the scaler backs off; every 5 good steps
    # it grows again. Each step event has the scale after that step's update().
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=5)
    scales, norms = [], []
    with Monitor(model, optimizer, scaler=scaler, run_dir=tmp_path / "run", quiet=True) as mon:
        for x, y in batches(40):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            norms.append(total_norm(model))
            scaler.step(optimizer)
            scaler.update()
            scales.append(scaler.get_scale())
            mon.step(loss)
    steps = events_of(tmp_path / "run", "step")
    assert [e["loss_scale"] for e in steps] == scales
    skipped = [e for e in steps if e["optimizer_steps"] == 0]
    assert 1 <= len(skipped) < len(steps)  # 2^24 overflows float16: it backed off first
    for event in skipped:
        assert "grad_norm" not in event  # a skipped step measured nothing: no nan_grad
        assert not torch.isfinite(torch.tensor(norms[event["step"] - 1]))
    for event in steps:
        if event["optimizer_steps"]:
            assert event["grad_norm"] == pytest.approx(norms[event["step"] - 1], rel=1e-4)
    assert not [e for e in events_of(tmp_path / "run", "alert")]


def test_no_scaler_or_a_disabled_one_records_no_scale(tmp_path):
    for name, scaler in (("none", None), ("off", torch.amp.GradScaler("cpu", enabled=False))):
        model = mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        run_dir = tmp_path / name
        with Monitor(model, optimizer, scaler=scaler, run_dir=run_dir, quiet=True) as mon:
            for x, y in batches(3):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                mon.step(loss)
        assert [("loss_scale" in e) for e in events_of(run_dir, "step")] == [False] * 3


def test_gradients_of_a_closure_step_are_measured_where_they_are_final(tmp_path):
    # optimizer.step(closure) runs the forward and backward inside the step (Lightning's
    # automatic optimization), so the optimizer's pre-hook comes before the gradients:
    # measure_grads() in the closure, after backward, gives this step's norms.
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    expected = []
    with Monitor(model, optimizer, run_dir=tmp_path / "run", quiet=True) as mon:
        for x, y in batches(12):

            def closure(x=x, y=y):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                expected.append(total_norm(model))
                mon.measure_grads()
                return loss

            loss = optimizer.step(closure)
            mon.step(loss)
    steps = events_of(tmp_path / "run", "step")
    assert [e["grad_norm"] for e in steps] == pytest.approx(expected, rel=1e-5)
    assert {e["optimizer_steps"] for e in steps} == {1}


def test_a_measured_step_the_scaler_skipped_leaves_no_gradient_norm(tmp_path):
    # Lightning's fp16 path: closure, unscale_, on_before_optimizer_step (measure), then
    # scaler.step, which skips optimizer.step() on inf gradients.
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=1000)
    with Monitor(model, optimizer, scaler=scaler, run_dir=tmp_path / "run", quiet=True) as mon:
        for x, y in batches(30):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            mon.measure_grads()
            scaler.step(optimizer)
            scaler.update()
            mon.step(loss)
    steps = events_of(tmp_path / "run", "step")
    skipped = [e for e in steps if e["optimizer_steps"] == 0]
    assert skipped and len(skipped) < len(steps)
    assert all("grad_norm" not in e for e in skipped)
    good = [e for e in steps if e["optimizer_steps"] == 1]
    assert all(torch.isfinite(torch.tensor(e["grad_norm"])) for e in good)
    assert not events_of(tmp_path / "run", "alert")


def test_a_framework_s_own_checkpointing_writes_the_checkpoint(tmp_path):
    asked: list[Path] = []

    def save(path: Path) -> Path:
        asked.append(path)
        written = path.with_suffix(".ckpt")
        written.parent.mkdir(parents=True, exist_ok=True)
        written.write_text("the framework's own format")
        return written

    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    options = RunOptions(checkpoint_writer=save)
    with Monitor.configured(
        model, optimizer, run_dir=tmp_path / "run", quiet=True, options=options
    ) as mon:
        for x, y in batches(4):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            mon.step(loss)
        path = mon.checkpoint("manual")
    assert path.suffix == ".ckpt" and path.read_text() == "the framework's own format"
    assert asked == [path.with_suffix(asked[0].suffix)]
    [saved] = events_of(tmp_path / "run", "checkpoint")
    assert saved["path"] == str(path) and saved["step"] == 4
    assert not list((tmp_path / "run").rglob("*.pt"))  # tuimon wrote no file of its own


def train_micro_batches(run: FrameworkRun, model, optimizer, accumulate: int, batches_in):
    """A framework-style loop: hooks per micro-batch, an optimizer step every `accumulate`."""
    expected = []
    window = []
    for index, (x, y) in enumerate(batches_in):
        loss = F.cross_entropy(model(x), y)
        (loss / accumulate).backward()
        run.add_loss(loss)
        window.append(float(loss.detach()))
        if (index + 1) % accumulate == 0:
            optimizer.step()
            optimizer.zero_grad()
            expected.append(sum(window) / len(window))
            window = []
            run.step(samples=len(y) * accumulate)
            if run.should_stop:
                break
    return expected


def test_a_framework_run_records_one_step_per_optimizer_step(tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    run = FrameworkRun({"run_dir": tmp_path / "run", "quiet": True, "name": "fw"})
    run.start(model, optimizer, total_steps=5)
    expected = train_micro_batches(run, model, optimizer, 4, batches(20))
    run.log(
        {"eval_loss": torch.tensor(0.5), "eval_accuracy": 0.75, "loss": 9.0, "epoch": 1.0},
        renames={"eval_loss": "val_loss"},
    )
    run.finish()
    steps = events_of(tmp_path / "run", "step")
    assert [e["loss"] for e in steps] == pytest.approx(expected, rel=1e-6)
    assert [e["samples"] for e in steps] == [64] * 5
    [metrics] = events_of(tmp_path / "run", "metrics")
    assert metrics["val_loss"] == 0.5 and metrics["eval_accuracy"] == 0.75
    assert "loss" not in metrics and metrics["step"] == 5
    assert events_of(tmp_path / "run")[-1]["status"] == "completed"


def test_a_framework_run_stops_as_a_flag_and_fails_with_the_traceback(tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    run = FrameworkRun({"run_dir": tmp_path / "stopped", "quiet": True})
    mon = run.start(model, optimizer)
    with ControlClient(mon.run_dir) as client:
        assert client.request("stop")["ok"]
    expected = train_micro_batches(run, model, optimizer, 2, batches(40))
    run.finish()
    assert len(expected) == 1 and run.should_stop  # applied at the first step boundary
    assert events_of(tmp_path / "stopped")[-1]["status"] == "stopped"

    run = FrameworkRun({"run_dir": tmp_path / "failed", "quiet": True})
    run.start(mlp(), torch.optim.SGD(model.parameters(), lr=0.05))
    try:
        raise ValueError("shapes do not match")
    except ValueError as exc:
        run.fail(exc)
    end = events_of(tmp_path / "failed")[-1]
    assert end["status"] == "failed"
    assert "Traceback" in end["error"] and "ValueError: shapes do not match" in end["error"]


def test_a_step_without_a_loss_has_none_and_raises_no_alarm(tmp_path, capsys):
    # A framework loop whose training step returns nothing (Lightning's manual
    # optimization, a GAN): the step has no loss, not a NaN that nan_loss would name.
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    run = FrameworkRun({"run_dir": tmp_path / "run", "print_every": 5})
    mon = run.start(model, optimizer)
    for x, y in batches(30):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        run.step(inputs=x, targets=y)
    run.finish()
    steps = events_of(tmp_path / "run", "step")
    assert len(steps) == 30 and not [e for e in steps if "loss" in e]
    assert all(e["grad_norm"] > 0 for e in steps)  # the rest is recorded as ever
    assert not events_of(tmp_path / "run", "alert")
    assert mon.history.step == 30
    assert "step 30" in capsys.readouterr().out


def test_a_step_without_a_loss_is_still_judged_by_the_rules_that_need_none():
    from tuimon.doctor.engine import Doctor

    doctor = Doctor({})
    said = []
    for step in range(1, 31):
        said += doctor.observe({"type": "step", "step": step, "optimizer_steps": 0, "lr": 0.1})
    assert [e["rule"] for e in said if e["type"] == "alert"] == ["optimizer_not_stepping"]


def test_the_status_bar_says_which_framework_and_precision_run_the_loop():
    import io

    from rich.console import Console

    from tuimon.run.run_state import RunState
    from tuimon.ui.plotting import ViewOptions
    from tuimon.ui.widgets.status_bar import StatusBar

    def bar_line(start: dict, width: int) -> str:
        state = RunState()
        state.apply_many([{"type": "start", "name": "fit", **start}])
        console = Console(width=width, color_system=None, file=io.StringIO())
        with console.capture() as captured:
            console.print(StatusBar().view(state, ViewOptions(), width, 1))
        return captured.get()

    adapter = {"framework": "lightning 2.6.6", "precision": "bf16-mixed"}
    assert "lightning 2.6.6 · bf16-mixed" in bar_line(adapter, 160)
    assert "lightning" not in bar_line(adapter, 80)  # narrow: the progress matters more
    plain = bar_line({"framework": None, "precision": "32"}, 160)
    assert "·" not in plain and "32" not in plain.split("step")[0]
    assert "fp16" in bar_line({"precision": "fp16"}, 160)
