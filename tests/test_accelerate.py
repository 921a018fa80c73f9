"""tuimon inside a real Accelerate loop on the CPU, written as Accelerate's README writes
it (`prepare`, `accumulate`, `backward`): steps, the tracker's scalars, gradient
accumulation, steering through the control socket, Accelerate's own checkpoint, the
doctor with its silent healthy twin, and mixed precision."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import ProjectConfiguration
from safetensors.torch import load_file
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, TensorDataset

from tuimon.control.client import ControlClient
from tuimon.control.commands import CHECKPOINT as CHECKPOINT_COMMAND
from tuimon.control.commands import PAUSE, RESUME, SCALE_LR, STOP
from tuimon.integrations.accelerate import AcceleratedRun, TuimonTracker, monitor
from tuimon.run.events import (
    ALERT,
    CHECKPOINT,
    COMPLETED,
    CONTROL,
    END,
    FAILED,
    METRICS,
    START,
    STEP,
    STOPPED,
)
from tuimon.run.log_reader import read_events

from conftest import SteerWhilePaused

TOTAL = 100  # the linear decay's length, in optimizer steps (as HF's schedules)


@pytest.fixture(autouse=True)
def fresh_accelerate() -> Iterator[None]:
    """Accelerate's state is process-wide: each test builds its own Accelerator. Tiny
    models on a busy 2-core machine: one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))


def loader(batches: int, size: int = 16) -> DataLoader:
    """A learnable 4-class problem: the class is the argmax of a fixed projection."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batches * size, 8, generator=generator)
    y = (x @ torch.randn(8, 4, generator=generator)).argmax(1)
    return DataLoader(TensorDataset(x, y), batch_size=size)


def linear_decay(step: int) -> float:
    return 1.0 - step / TOTAL


def prepared(accelerator: Accelerator, lr: float, batches: int) -> tuple[Any, ...]:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = LambdaLR(optimizer, linear_decay)
    return accelerator.prepare(model, optimizer, loader(batches), scheduler)


def train(
    accelerator: Accelerator,
    lr: float,
    batches: int,
    run_dir: Path,
    *,
    on_step: Callable[[AcceleratedRun, int], None] | None = None,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    **settings: Any,
) -> dict[str, Any]:
    """Accelerate's README loop, watched; what it saw (losses, norms before each real
    optimizer step, whether Accelerate skipped it) for the test to compare."""
    model, optimizer, data, scheduler = prepared(accelerator, lr, batches)
    seen: dict[str, Any] = {"losses": [], "norms": [], "skipped": [], "scales": []}
    with monitor(
        accelerator, model, optimizer, scheduler, run_dir=run_dir, quiet=True, **settings
    ) as mon:
        for x, y in data:
            with accelerator.accumulate(model):
                with autocast():
                    loss = F.cross_entropy(model(x), y)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    seen["norms"].append(grad_norm(model, accelerator.scaler))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                mon.step(loss, samples=len(y))
            seen["losses"].append(float(loss.detach()))
            if accelerator.sync_gradients:
                seen["skipped"].append(optimizer.step_was_skipped)
                if accelerator.scaler is not None:
                    seen["scales"].append(accelerator.scaler.get_scale())
                if on_step is not None and mon.monitor is not None:
                    on_step(mon, mon.monitor.global_step)
            if mon.should_stop:
                break
    seen["model"], seen["optimizer"], seen["run"] = model, optimizer, mon
    return seen


def grad_norm(model: nn.Module, scaler: Any) -> float:
    """The gradients' norm as the optimizer will use them (unscaled)."""
    total = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()))
    return total / scaler.get_scale() if scaler is not None else total


def events_of(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    events = list(read_events(run_dir / "events.jsonl"))
    return [e for e in events if kind is None or e["type"] == kind]


def alerts(run_dir: Path) -> list[tuple[str, int]]:
    return [(e["rule"], e["step"]) for e in events_of(run_dir, ALERT)]


def send_at(step: int, cmd: str, **args: Any) -> Callable[[AcceleratedRun, int], None]:
    """A command through the real control socket after optimizer step `step`: the next
    step boundary applies it."""

    def on_step(mon: AcceleratedRun, now: int) -> None:
        if now == step:
            assert mon.run_dir is not None
            with ControlClient(mon.run_dir) as client:
                assert client.request(cmd, **args)["ok"]

    return on_step


def test_a_loop_records_steps_and_the_tracker_s_scalars(tmp_path):
    tracker = TuimonTracker()
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers("tiny", config={"lr": 0.05, "batch_size": 16})
    accelerator.log({"eval_loss": 2.5}, step=0)  # before the run: kept, logged at its start
    model, optimizer, data, scheduler = prepared(accelerator, 0.05, 12)
    mon = monitor(accelerator, model, optimizer, scheduler, run_dir=tmp_path / "run", quiet=True)
    assert tracker.tracker is mon.monitor
    losses, norms = [], []
    for x, y in data:
        loss = F.cross_entropy(model(x), y)
        accelerator.backward(loss)
        norms.append(grad_norm(model, None))
        total = accelerator.clip_grad_norm_(model.parameters(), 1e9)  # the norm, unclipped
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        mon.step(loss, samples=len(y), inputs=x, targets=y, grad_norm=total)
        losses.append(float(loss.detach()))
    accelerator.log({"eval_loss": 1.25, "accuracy": 0.75, "loss": 9.0, "split": "val"}, step=12)
    accelerator.end_training()  # the tracker's finish() ends the run

    events = events_of(tmp_path / "run")
    start, end = events[0], events[-1]
    assert start["type"] == START and end == {**end, "type": END, "status": COMPLETED}
    # The insides of what prepare() returned: the user's model, optimizer and schedule.
    assert start["model"]["class"] == "Sequential" and start["optimizer"]["class"] == "SGD"
    assert start["scheduler"] == "LambdaLR"
    assert "accelerate init_trackers config: lr=0.05, batch_size=16" in start["notes"]
    steps = events_of(tmp_path / "run", STEP)
    assert [e["step"] for e in steps] == list(range(1, 13))
    assert [e["loss"] for e in steps] == pytest.approx(losses, rel=1e-6)
    assert [e["grad_norm"] for e in steps] == pytest.approx(norms, rel=1e-4)
    # What clip_grad_norm_ returned, handed over: the norm before clipping.
    assert [e["grad_norm_unclipped"] for e in steps] == pytest.approx(norms, rel=1e-4)
    # The batch handed over reaches the batch checks.
    assert [e for e in events if e["type"] == "probe" and e["probe"] == "batch"]
    assert [e["lr"] for e in steps] == pytest.approx([0.05 * linear_decay(n) for n in range(12)])
    assert {e["samples"] for e in steps} == {16} and {e["optimizer_steps"] for e in steps} == {1}
    assert all("loss_scale" not in e for e in steps)  # full precision: no scaler
    metrics = [{k: e.get(k) for k in ("step", "val_loss", "accuracy")} for e in events]
    metrics = [m for m, e in zip(metrics, events, strict=True) if e["type"] == METRICS]
    assert metrics == [
        {"step": 0, "val_loss": 2.5, "accuracy": None},
        {"step": 12, "val_loss": 1.25, "accuracy": 0.75},
    ]
    assert all("loss" not in e for e in events_of(tmp_path / "run", METRICS))


def test_a_crash_in_the_loop_ends_the_run_failed_with_its_traceback(tmp_path):
    accelerator = Accelerator(cpu=True)
    model, optimizer, _, scheduler = prepared(accelerator, 0.05, 4)
    run_dir = tmp_path / "run"
    with (
        pytest.raises(RuntimeError, match="mat1 and mat2"),
        monitor(accelerator, model, optimizer, scheduler, run_dir=run_dir, quiet=True),
    ):
        model(torch.zeros(2, 3))
    end = events_of(run_dir)[-1]
    assert end["status"] == FAILED and "Traceback" in end["error"]
    assert "mat1 and mat2" in end["error"]


def test_gradient_accumulation_records_one_step_per_optimizer_step(tmp_path):
    # 24 micro-batches, an optimizer step every 4: 6 steps, each with the mean of its 4
    # losses and the norm of the accumulated gradients the optimizer used.
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=4)
    seen = train(accelerator, 0.05, 24, tmp_path / "run")
    steps = events_of(tmp_path / "run", STEP)
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    means = [sum(seen["losses"][i : i + 4]) / 4 for i in range(0, 24, 4)]
    assert [e["loss"] for e in steps] == pytest.approx(means, rel=1e-6)
    assert [e["grad_norm"] for e in steps] == pytest.approx(seen["norms"], rel=1e-4)
    assert {e["samples"] for e in steps} == {64} and {e["optimizer_steps"] for e in steps} == {1}
    # Accelerate steps the schedule once per optimizer step too.
    assert [e["lr"] for e in steps] == pytest.approx([0.05 * linear_decay(n) for n in range(6)])


def test_scale_lr_through_the_socket_halves_the_lr_and_keeps_the_schedule(tmp_path):
    accelerator = Accelerator(cpu=True)
    seen = train(accelerator, 0.05, 16, tmp_path / "run", on_step=send_at(5, SCALE_LR, factor=0.5))
    [control] = events_of(tmp_path / "run", CONTROL)
    assert control["command"] == SCALE_LR and control["step"] == 6
    lrs = {e["step"]: e["lr"] for e in events_of(tmp_path / "run", STEP)}
    # Step n runs at the schedule's LR after n-1 scheduler steps; from the boundary where
    # the command applied on, at half of it: the decay's shape, at 0.5x.
    for n, lr in lrs.items():
        factor = 0.5 if n > control["step"] else 1.0
        assert lr == pytest.approx(0.05 * factor * linear_decay(n - 1)), n
    # The LR the framework's optimizer holds now, and the schedule behind its wrapper.
    optimizer = seen["optimizer"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025 * linear_decay(16))
    assert optimizer.optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_stop_through_the_socket_ends_the_loop_with_accelerate_s_checkpoint(tmp_path):
    accelerator = Accelerator(cpu=True)
    seen = train(accelerator, 0.05, 40, tmp_path / "run", on_step=send_at(3, STOP))
    events = events_of(tmp_path / "run")
    assert events[-1]["type"] == END and events[-1]["status"] == STOPPED
    assert len(seen["losses"]) == 4  # applied at the next boundary; the loop left there
    [checkpoint] = events_of(tmp_path / "run", CHECKPOINT)
    assert checkpoint["step"] == 4 and checkpoint["reason"] == STOP
    saved = Path(checkpoint["path"])
    # accelerator.save_state's own directory, next to where tuimon's file would be.
    assert saved.is_dir() and saved.parent == tmp_path / "run" / "checkpoints"
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin"} <= {
        p.name for p in saved.iterdir()
    }
    weights = load_file(saved / "model.safetensors")
    model = seen["model"]
    for name, param in model.state_dict().items():
        assert torch.equal(weights[name], param), name  # saved after the last step
    with torch.no_grad():  # and Accelerate loads it back
        for param in model.parameters():
            param.zero_()
    accelerator.load_state(str(saved))
    for name, param in model.state_dict().items():
        assert torch.equal(weights[name], param), name
    assert not list((tmp_path / "run").rglob("*.pt"))  # no checkpoint of tuimon's own


def test_pause_blocks_the_loop_until_resume_and_a_checkpoint_is_accelerate_s(tmp_path):
    # Accelerate names its checkpoints itself here (automatic_checkpoint_naming): the
    # checkpoint event gives the directory save_state chose.
    project = ProjectConfiguration(tmp_path / "project", automatic_checkpoint_naming=True)
    accelerator = Accelerator(cpu=True, project_config=project)
    steers: list[SteerWhilePaused] = []

    def pause_at_3(mon: AcceleratedRun, now: int) -> None:
        # Once paused, a second client asks for a checkpoint, then resumes.
        if now == 3:
            assert mon.run_dir is not None
            steers.append(SteerWhilePaused(mon.run_dir, CHECKPOINT_COMMAND, RESUME))

    train(accelerator, 0.05, 8, tmp_path / "run", on_step=pause_at_3)
    [steer] = steers
    steer.join()
    commands = [(e["command"], e["step"]) for e in events_of(tmp_path / "run", CONTROL)]
    assert commands == [(PAUSE, 4), (CHECKPOINT_COMMAND, 4), (RESUME, 4)]
    [saved] = events_of(tmp_path / "run", CHECKPOINT)
    assert saved["reason"] == "command" and saved["step"] == 4
    assert Path(saved["path"]) == tmp_path / "project" / "checkpoints" / "checkpoint_0"
    assert (Path(saved["path"]) / "model.safetensors").is_file()
    steps = events_of(tmp_path / "run", STEP)
    assert [e["step"] for e in steps] == list(range(1, 9))
    assert events_of(tmp_path / "run")[-1]["status"] == COMPLETED


def test_lr_100_is_named_and_its_healthy_twin_is_silent(tmp_path, cpu_burner):
    # The same loop, the same data: LR 100 against 0.05.
    accelerator = Accelerator(cpu=True)
    train(accelerator, 100.0, 40, tmp_path / "fault")
    named = {rule for rule, _ in alerts(tmp_path / "fault")}
    assert "lr_too_high" in named, alerts(tmp_path / "fault")
    train(accelerator, 0.05, 40, tmp_path / "healthy")
    assert len(events_of(tmp_path / "healthy", STEP)) == 40
    assert alerts(tmp_path / "healthy") == []


def test_bf16_mixed_precision_records_steps(tmp_path):
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model, *_ = prepared(accelerator, 0.05, 1)
    dtypes = set()
    first = accelerator.unwrap_model(model)[0]
    first.register_forward_hook(lambda module, args, out: dtypes.add(out.dtype))
    model(torch.zeros(2, 8))
    assert dtypes == {torch.bfloat16}  # Accelerate's autocast is on
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    seen = train(accelerator, 0.05, 12, tmp_path / "run")
    steps = events_of(tmp_path / "run", STEP)
    assert [e["loss"] for e in steps] == pytest.approx(seen["losses"], rel=1e-6)
    assert all(math.isfinite(e["grad_norm"]) and e["optimizer_steps"] == 1 for e in steps)
    assert all("loss_scale" not in e for e in steps)  # bf16 needs no scaler
    assert alerts(tmp_path / "run") == []


def fp16_accelerator(scaler: torch.amp.GradScaler) -> Accelerator:
    """fp16 on the CPU: Accelerate makes no GradScaler there (nor autocast), so the test
    hands it one before `prepare` (the attribute `prepare` and `backward` read, as on
    CUDA, where Accelerate makes it itself) and autocasts to float16 in the loop."""
    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    assert accelerator.scaler is None  # if Accelerate starts making one, use it
    accelerator.scaler = scaler
    return accelerator


def fp16() -> AbstractContextManager[Any]:
    return torch.autocast("cpu", dtype=torch.float16)


def test_fp16_with_a_scaler_records_the_scale_and_skipped_steps(tmp_path):
    # A scale of 2^24 overflows float16 gradients: the first steps are skipped while the
    # scaler backs off, and Accelerate skips the schedule's step with them.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=5)
    seen = train(fp16_accelerator(scaler), 0.05, 30, tmp_path / "run", autocast=fp16)
    steps = events_of(tmp_path / "run", STEP)
    assert [e["loss_scale"] for e in steps] == seen["scales"]
    assert [e["optimizer_steps"] == 0 for e in steps] == seen["skipped"]
    skipped = [e for e in steps if e["optimizer_steps"] == 0]
    assert 1 <= len(skipped) < len(steps)
    assert all("grad_norm" not in e for e in skipped)  # measured nothing: no nan_grad
    good = [e for e in steps if e["optimizer_steps"] == 1]
    norms = [n for n, skip in zip(seen["norms"], seen["skipped"], strict=True) if not skip]
    assert [e["grad_norm"] for e in good] == pytest.approx(norms, rel=1e-3)
    # The schedule moved only on real steps: its LR after k real steps is decay(k).
    done = 0
    for event in steps:
        assert event["lr"] == pytest.approx(0.05 * linear_decay(done))
        done += event["optimizer_steps"]
    assert alerts(tmp_path / "run") == []


def test_a_scaler_that_never_steps_is_named(tmp_path):
    # An infinite scale overflows every step: the optimizer never steps, and the run says
    # so (not as NaN gradients: none were measured).
    scaler = torch.amp.GradScaler("cpu", init_scale=math.inf)
    train(fp16_accelerator(scaler), 0.05, 30, tmp_path / "run", autocast=fp16)
    steps = events_of(tmp_path / "run", STEP)
    assert {e["optimizer_steps"] for e in steps} == {0}
    named = {rule for rule, _ in alerts(tmp_path / "run")}
    assert "optimizer_not_stepping" in named and "nan_grad" not in named, named
