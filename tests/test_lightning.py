"""TuimonCallback in real Lightning fits on CPU: what the run records, steering through
the real control socket, the doctor on a fault injected through the framework, mixed
precision, and a Lightning script under `tuimon run`.

Lightning is imported once for the whole file (about 10 s); every fit is a tiny module
built here, in this process, except the one `tuimon run` test.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tuimon.control.client import ControlClient
from tuimon.control.commands import CHECKPOINT as CHECKPOINT_COMMAND
from tuimon.control.commands import PAUSE, RESUME, SCALE_LR, STOP
from tuimon.errors import ConfigError
from tuimon.integrations.lightning import TuimonCallback, TuimonLogger
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

from conftest import TESTS_DIR, SteerWhilePaused, worker_env

# Lightning's advice for real data loaders and small logging intervals: not about tuimon.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BATCH = 16
QUIET_TRAINER: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "enable_progress_bar": False,
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
}


class Regressor(pl.LightningModule):
    """y = sum(x) with a two-layer MLP; `fail_at`: training_step raises at that step."""

    def __init__(
        self,
        lr: float = 0.05,
        schedule: Any = None,
        fail_at: int | None = None,
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
        self.lr = lr
        self.schedule = schedule
        self.fail_at = fail_at
        self.raw_losses: list[float] = []  # each micro-batch's loss as training_step made it

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise RuntimeError("injected fault in training_step")
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.raw_losses.append(loss.item())
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        if self.schedule is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class GradReference(pl.Callback):
    """What each optimizer step really used: its gradients' norm and its LR, by step."""

    def __init__(self) -> None:
        self.grad_norms: dict[int, float] = {}
        self.lrs: dict[int, float] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        step = trainer.global_step + 1  # tuimon numbers the step being taken
        self.grad_norms[step] = float(
            torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        )
        self.lrs[step] = optimizer.param_groups[0]["lr"]


class SendAt(pl.Callback):
    """Sends one command through the run's control socket once `trainer.global_step`
    reaches `at` (so it applies at the next step boundary, deterministically)."""

    def __init__(self, tuimon: TuimonCallback, at: int, command: str, **args: Any) -> None:
        self.tuimon, self.at, self.command, self.args = tuimon, at, command, args
        self.replies: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at and not self.replies:
            monitor = self.tuimon.monitor
            assert monitor is not None
            with ControlClient(monitor.run_dir, timeout=30) as client:
                self.replies.append(client.request(self.command, **self.args))


def loader(batches: int, seed: int = 0, shuffle: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * BATCH, 8, generator=generator)
    return DataLoader(
        TensorDataset(x, x.sum(1, keepdim=True)),
        batch_size=BATCH,
        shuffle=shuffle,
        generator=generator,
    )


def fit(
    run_dir: Path,
    module: pl.LightningModule,
    *,
    batches: int = 10,
    val: bool = False,
    extra: tuple[pl.Callback, ...] = (),
    tuimon: TuimonCallback | None = None,
    **trainer_args: Any,
) -> tuple[pl.Trainer, list[dict[str, Any]]]:
    """Fit `module` with a TuimonCallback logging into `run_dir`; the trainer and its log."""
    tuimon = tuimon or TuimonCallback(run_dir=run_dir, quiet=True)
    args = {**QUIET_TRAINER, "max_epochs": 2, **trainer_args}
    trainer = pl.Trainer(callbacks=[tuimon, *extra], **args)
    trainer.fit(module, loader(batches), loader(2, seed=1) if val else None)
    return trainer, events(run_dir)


def events(run_dir: Path) -> list[dict[str, Any]]:
    return list(read_events(run_dir / "events.jsonl"))


def of_type(log: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in log if e["type"] == kind]


def test_a_fit_records_start_steps_true_gradient_norms_validation_and_end(tmp_path):
    reference = GradReference()
    module = Regressor(schedule=lambda n: 0.9**n)
    trainer, log = fit(tmp_path / "run", module, val=True, extra=(reference,))
    [start] = of_type(log, START)
    assert start["optimizer"]["class"] == "SGD" and start["scheduler"] == "LambdaLR"
    assert start["model"]["class"] == "Regressor"
    assert (start["total_steps"], start["steps_per_epoch"], start["epochs"]) == (20, 10, 2)
    steps = of_type(log, STEP)
    assert [s["step"] for s in steps] == list(range(1, trainer.global_step + 1))
    assert trainer.global_step == 20
    for s in steps:
        assert s["loss"] == pytest.approx(module.raw_losses[s["step"] - 1], rel=1e-6)
        assert s["lr"] == pytest.approx(reference.lrs[s["step"]], rel=1e-12)
        assert s["grad_norm"] == pytest.approx(reference.grad_norms[s["step"]], rel=1e-5)
        assert s["samples"] == BATCH and s["epoch"] == (s["step"] - 1) // 10
        # training_step calls self.net, never the module's forward: the wait for data
        # ends at on_train_batch_start, so every step still has its data time.
        assert 0 <= s["data_time"] <= s["step_time"]
    assert steps[1]["lr"] == pytest.approx(0.05 * 0.9)  # the schedule, as the optimizer used it
    # (x, y) batches reach the batch checks.
    assert [e for e in log if e["type"] == "probe" and e["probe"] == "batch"]
    # Validation after each epoch (not the sanity check before training): its val_loss.
    metrics = of_type(log, METRICS)
    assert [(m["step"], m["epoch"]) for m in metrics] == [(10, 0), (20, 1)]
    assert metrics[-1]["val_loss"] == pytest.approx(float(trainer.callback_metrics["val_loss"]))
    end = log[-1]
    assert end["type"] == END and end["status"] == COMPLETED and end["step"] == 20
    assert not of_type(log, ALERT)


def test_accumulated_batches_make_one_step_event_per_optimizer_step(tmp_path):
    reference = GradReference()
    module = Regressor()
    trainer, log = fit(tmp_path / "run", module, extra=(reference,), accumulate_grad_batches=4)
    steps = of_type(log, STEP)
    # 10 batches an epoch in groups of 4, 4, 2: three optimizer steps an epoch.
    assert trainer.global_step == 6
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert [s["samples"] for s in steps] == [4 * BATCH, 4 * BATCH, 2 * BATCH] * 2
    groups = [
        module.raw_losses[i : i + n]
        for i, n in zip((0, 4, 8, 10, 14, 18), (4, 4, 2) * 2, strict=True)
    ]
    for s, group in zip(steps, groups, strict=True):
        # The step's loss is the mean of its micro-batches' own losses (Lightning hands
        # each one back divided by accumulate_grad_batches).
        assert s["loss"] == pytest.approx(sum(group) / len(group), rel=1e-6)
        assert s["grad_norm"] == pytest.approx(reference.grad_norms[s["step"]], rel=1e-5)
        assert s["optimizer_steps"] == 1
    assert of_type(log, START)[0]["steps_per_epoch"] == 3


def cosine(n: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * n / 20))


def test_scale_lr_through_the_socket_halves_the_lr_and_keeps_the_schedule(tmp_path):
    tuimon = TuimonCallback(run_dir=tmp_path / "run", quiet=True)
    send = SendAt(tuimon, 6, SCALE_LR, factor=0.5)
    trainer, log = fit(tmp_path / "run", Regressor(schedule=cosine), tuimon=tuimon, extra=(send,))
    assert send.replies and send.replies[0].get("queued") is True
    [control] = of_type(log, CONTROL)
    applied = control["step"]
    assert control["command"] == SCALE_LR and applied == 7  # the next step boundary
    lrs = {s["step"]: s["lr"] for s in of_type(log, STEP)}
    assert len(lrs) == trainer.global_step == 20
    for step, lr in lrs.items():
        # The optimizer used base * cosine(steps the scheduler has taken), times 0.5 after.
        factor = 0.5 if step > applied else 1.0
        assert lr == pytest.approx(0.05 * cosine(step - 1) * factor, rel=1e-9), step
    optimizer = trainer.optimizers[0]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * cosine(20) * 0.5, abs=1e-15)


def test_stop_through_the_socket_ends_the_fit_with_a_lightning_checkpoint(tmp_path):
    tuimon = TuimonCallback(run_dir=tmp_path / "run", quiet=True)
    send = SendAt(tuimon, 4, STOP)
    trainer, log = fit(tmp_path / "run", Regressor(), tuimon=tuimon, extra=(send,), max_epochs=50)
    # fit returned at the step the stop applied at, far short of its 500 steps.
    assert trainer.should_stop and trainer.global_step == 5
    [control] = of_type(log, CONTROL)
    [saved] = of_type(log, CHECKPOINT)
    end = log[-1]
    assert control["command"] == STOP and control["step"] == saved["step"] == end["step"] == 5
    assert end["type"] == END and end["status"] == STOPPED
    path = Path(saved["path"])
    assert saved["reason"] == "stop" and path.suffix == ".ckpt" and path.is_file()
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 5 and "net.0.weight" in checkpoint["state_dict"]
    assert checkpoint["optimizer_states"] and checkpoint["loops"]  # resumable by Lightning


def test_lightning_resumes_from_the_stops_checkpoint_and_the_run_counts_on(tmp_path):
    tuimon = TuimonCallback(run_dir=tmp_path / "run", quiet=True)
    _, log = fit(tmp_path / "run", Regressor(), tuimon=tuimon, extra=(SendAt(tuimon, 4, STOP),))
    [saved] = of_type(log, CHECKPOINT)
    trainer = pl.Trainer(
        callbacks=[TuimonCallback(run_dir=tmp_path / "resumed", quiet=True)],
        max_epochs=2,
        **QUIET_TRAINER,
    )
    trainer.fit(Regressor(), loader(10), ckpt_path=saved["path"])
    resumed = events(tmp_path / "resumed")
    assert of_type(resumed, START)[0]["start_step"] == 5
    assert [s["step"] for s in of_type(resumed, STEP)] == list(range(6, 21))
    assert resumed[-1]["status"] == COMPLETED and resumed[-1]["step"] == trainer.global_step == 20


class PauseThenResume(pl.Callback):
    """Pauses the run at `at`; once the pause is applied (the training thread blocked
    inside Lightning's hook), a second client asks for a checkpoint, then resumes."""

    def __init__(self, tuimon: TuimonCallback, at: int) -> None:
        self.tuimon, self.at = tuimon, at
        self.steer: SteerWhilePaused | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.at or self.steer is not None:
            return
        monitor = self.tuimon.monitor
        assert monitor is not None
        self.steer = SteerWhilePaused(monitor.run_dir, CHECKPOINT_COMMAND, RESUME)


def test_pause_blocks_inside_lightnings_loop_until_resume_and_a_checkpoint_is_a_ckpt(tmp_path):
    tuimon = TuimonCallback(run_dir=tmp_path / "run", quiet=True)
    steer = PauseThenResume(tuimon, 3)
    trainer, log = fit(tmp_path / "run", Regressor(), tuimon=tuimon, extra=(steer,))
    assert steer.steer is not None
    steer.steer.join()
    commands = [(c["command"], c["step"]) for c in of_type(log, CONTROL)]
    # Paused at the step after the request; checkpointed and resumed there (the loop
    # waited for both).
    assert commands == [(PAUSE, 4), (CHECKPOINT_COMMAND, 4), (RESUME, 4)]
    [saved] = of_type(log, CHECKPOINT)
    assert saved["reason"] == "command" and Path(saved["path"]).suffix == ".ckpt"
    assert Path(saved["path"]).is_file()
    assert trainer.global_step == 20 and log[-1]["status"] == COMPLETED


def test_an_lr_of_100_is_named_by_the_doctor_and_a_healthy_twin_stays_silent(tmp_path, cpu_burner):
    _, faulty = fit(tmp_path / "faulty", Regressor(lr=100.0), batches=32)
    _, healthy = fit(tmp_path / "healthy", Regressor(lr=0.05), batches=32)
    alerts = of_type(faulty, ALERT)
    assert alerts and alerts[0]["rule"] == "nan_grad"
    assert "nan_loss" in {a["rule"] for a in alerts}
    assert of_type(healthy, ALERT) == []
    assert healthy[-1]["status"] == COMPLETED and len(of_type(healthy, STEP)) == 64


def test_an_exception_in_training_step_ends_the_run_failed_with_its_traceback(tmp_path):
    with pytest.raises(RuntimeError, match="injected fault"):
        fit(tmp_path / "run", Regressor(fail_at=3))
    log = events(tmp_path / "run")
    end = log[-1]
    assert end["type"] == END and end["status"] == FAILED and end["step"] == 3
    assert "RuntimeError: injected fault in training_step" in end["error"]
    assert "in training_step" in end["error"]  # the traceback, not only the message
    assert len(of_type(log, STEP)) == 3


def test_bf16_mixed_on_cpu_records_finite_losses_and_no_scale(tmp_path):
    trainer, log = fit(tmp_path / "run", Regressor(), precision="bf16-mixed")
    steps = of_type(log, STEP)
    assert len(steps) == trainer.global_step == 20
    assert all(math.isfinite(s["loss"]) and math.isfinite(s["grad_norm"]) for s in steps)
    assert all("loss_scale" not in s for s in steps)  # bf16 needs no GradScaler
    assert log[-1]["status"] == COMPLETED


def fp16_with_scaler(init_scale: float) -> MixedPrecision:
    """fp16 autocast on the CPU with a real GradScaler: Lightning turns
    `precision="16-mixed"` into bf16 on a CPU, but takes this plugin as it is."""
    return MixedPrecision(
        "16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=init_scale)
    )


def test_fp16_with_a_grad_scaler_records_the_scale_and_skipped_steps(tmp_path):
    # 2**30 overflows fp16 gradients: the scaler skips and halves until 2**14.
    trainer, log = fit(tmp_path / "run", Regressor(), plugins=[fp16_with_scaler(2.0**30)])
    steps = of_type(log, STEP)
    assert len(steps) == trainer.global_step == 20
    scale = 2.0**30
    for s in steps:
        if s["optimizer_steps"] == 0:  # skipped: no gradient norm, the scale halved
            assert "grad_norm" not in s and s["loss_scale"] == scale / 2, s
        else:  # stepped: the gradients' norm, the scale kept (it grows after 2000 steps)
            assert math.isfinite(s["grad_norm"]) and s["loss_scale"] == scale, s
        scale = s["loss_scale"]
    skipped = [s["step"] for s in steps if s["optimizer_steps"] == 0]
    assert skipped[:12] == list(range(1, 13)) and len(skipped) < 20
    assert of_type(log, ALERT) == []  # skipped steps are no nan_grad


def test_a_scaler_that_skips_every_step_is_named_not_called_nan_grad(tmp_path):
    # 2**100 takes ~85 halvings to reach a usable scale: the 30 steps all skip.
    _, log = fit(tmp_path / "run", Regressor(), plugins=[fp16_with_scaler(2.0**100)], max_steps=30)
    assert all(s["optimizer_steps"] == 0 for s in of_type(log, STEP))
    rules = [a["rule"] for a in of_type(log, ALERT)]
    assert rules == ["optimizer_not_stepping"]


class TwoOptimizers(pl.LightningModule):
    """A GAN's shape: manual optimization, two optimizers stepped in every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.first = nn.Linear(8, 1)
        self.second = nn.Linear(8, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        first, second = self.optimizers()
        loss = F.mse_loss(self.first(x), y)
        first.zero_grad()
        self.manual_backward(loss)
        first.step()
        other = F.mse_loss(self.second(x), y)
        second.zero_grad()
        self.manual_backward(other)
        second.step()
        return loss

    def configure_optimizers(self) -> Any:
        return [
            torch.optim.SGD(self.first.parameters(), lr=0.05),
            torch.optim.Adam(self.second.parameters(), lr=0.01),
        ]


def test_manual_optimization_with_two_optimizers_steps_once_per_batch(tmp_path):
    trainer, log = fit(tmp_path / "run", TwoOptimizers())
    steps = of_type(log, STEP)
    # global_step counts both optimizers' steps; tuimon, the batches that stepped.
    assert trainer.global_step == 40 and [s["step"] for s in steps] == list(range(1, 21))
    assert all(s["lr"] == 0.05 and math.isfinite(s["loss"]) for s in steps)  # the first's
    notes = " ".join(of_type(log, START)[0]["notes"])
    assert "2 optimizers" in notes and "manual optimization" in notes


def test_the_logger_sends_every_logged_scalar_once(tmp_path):
    class Logs(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss)
            return loss

    trainer, log = fit(
        tmp_path / "run", Logs(), val=True, logger=TuimonLogger(), log_every_n_steps=5
    )
    metrics = of_type(log, METRICS)
    train = [(m["step"], m["train_loss"]) for m in metrics if "train_loss" in m]
    val = [m["step"] for m in metrics if "val_loss" in m]
    assert [step for step, _ in train] == [5, 10, 15, 20]
    assert val == [10, 20]  # once per validation: the logger's, not the callback's too
    losses = trainer.lightning_module.raw_losses
    assert all(value == pytest.approx(losses[step - 1], rel=1e-6) for step, value in train)


def test_settings_are_checked_when_the_callback_is_made():
    with pytest.raises(ConfigError, match="log_every"):
        TuimonCallback(log_evry=5)
    with pytest.raises(TypeError, match=r"TuimonCallback\(stop=...\): the adapter sets it"):
        TuimonCallback(stop="raise")
    with pytest.raises(ValueError, match="name"):
        TuimonCallback(name="no spaces allowed")


def test_a_lightning_script_under_tuimon_run(tmp_path, monkeypatch):
    from tuimon import cli, launch

    monkeypatch.chdir(tmp_path)
    for name, value in worker_env().items():
        monkeypatch.setenv(name, value)
    ran: list[Path] = []

    def no_ui(run_dir, *, worker=None, **kwargs):  # the worker as launched, without a UI
        worker.wait(timeout=240)
        ran.append(run_dir)
        return launch.worker_exit_code(run_dir, None, worker.returncode)

    monkeypatch.setattr(launch, "run_app", no_ui)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main(["run", "--quiet", str(TESTS_DIR / "scripts" / "lightning_train.py")])
    [run_dir] = ran
    output = (run_dir / "output.log").read_text()
    assert code == 0, output
    assert "FIT DONE 36" in output
    assert "[lightning_train]" not in output  # --quiet reached the callback's Monitor
    log = events(run_dir)
    assert log[0]["type"] == START and log[0]["name"] == "lightning_train"
    assert [s["step"] for s in of_type(log, STEP)] == list(range(1, 37))
    metrics = of_type(log, METRICS)
    assert any("train_loss" in m for m in metrics) and any("val_loss" in m for m in metrics)
    assert log[-1]["type"] == END and log[-1]["status"] == COMPLETED
