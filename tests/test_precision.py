"""`train.precision` in the built-in trainer: 32, bf16 and fp16 (a GradScaler, on the CPU
here), trained for real, in-process; one torchrun job for fp16 under DDP."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from tuimon.config import load_config
from tuimon.errors import ConfigError
from tuimon.monitor.monitor import Monitor
from tuimon.run.checkpoint import load_checkpoint, save_checkpoint
from tuimon.run.log_reader import read_events
from tuimon.training.build_checks import load_run_config
from tuimon.training.trainer import REPLICAS_IDENTICAL, Trainer

from conftest import run_tuimon

# grad_clip 0.3 clips from the first step on (the gradient norm starts near 0.6): the
# fp16 run matches the 32 one only if the scaler unscales before the probe clips.
CONFIG = """\
name: p
model: {name: mlp, hidden: [32]}
data:
  name: synthetic
  synthetic: {num_samples: 640, channels: 1, image_size: 8, num_classes: 4}
  val_split: 0.25
optimizer: {name: SGD, lr: 0.2}
train:
  max_steps: 30
  batch_size: 32
  seed: 0
  grad_clip: 0.3
  precision: PRECISION
monitor: {log_every: 5, system_interval: 5}
"""
NAN_GRAD_AT = 20  # the fault zoo's NaN gradient, at this step of the fp16 run
FIRST_SCALE = 2.0**16  # a GradScaler's initial scale


def config_text(precision: str, extra: str = "") -> str:
    return CONFIG.replace("PRECISION", precision) + extra


class Run:
    """A trainer run to its end in this process: its trainer, log and the dtypes its
    first layer's forward produced while training."""

    def __init__(self, tmp_path: Path, text: str, overrides: Sequence[str] = ()) -> None:
        path = tmp_path / "c.yaml"
        path.write_text(text)
        self.trainer = Trainer(load_config(path, list(overrides)))
        self.trainer.setup()
        first = next(m for m in self.trainer.module.modules() if isinstance(m, torch.nn.Linear))
        self.dtypes: set[torch.dtype] = set()
        hook = first.register_forward_hook(lambda _m, _i, out: self.dtypes.add(out.dtype))
        self.status = self.trainer.run(tmp_path / "run", quiet=True)
        hook.remove()
        self.events = list(read_events(tmp_path / "run" / "events.jsonl"))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    @property
    def start(self) -> dict[str, Any]:
        return self.of_type("start")[0]

    @property
    def steps(self) -> list[dict[str, Any]]:
        return self.of_type("step")


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return Run(tmp_path_factory.mktemp("full"), config_text("32"))


@pytest.fixture(scope="module")
def fp16(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """fp16 with a NaN gradient at one step: the scaler skips it and halves its scale."""
    extra = f"faults: {{nan_grad_at: {NAN_GRAD_AT}}}\n"
    return Run(tmp_path_factory.mktemp("fp16"), config_text("fp16", extra))


def test_32_is_float32_without_a_scaler(full: Run) -> None:
    assert full.status == "completed"
    assert full.start["config"]["train"]["precision"] == 32
    assert full.start["precision"] == "32"
    assert full.dtypes == {torch.float32}
    assert full.trainer.precision.scaler is None
    assert not [note for note in full.start["notes"] if "precision" in note]
    steps = full.steps
    assert [e["step"] for e in steps] == list(range(1, 31))
    assert not [e for e in steps if "loss_scale" in e]
    assert all(e["optimizer_steps"] == 1 for e in steps)


def test_bf16_trains_under_autocast_with_finite_losses(tmp_path: Path, full: Run) -> None:
    run = Run(tmp_path, config_text("bf16"))
    assert run.status == "completed"
    assert run.start["config"]["train"]["precision"] == "bf16"
    assert run.start["precision"] == "bf16"
    assert any("torch.autocast(cpu, bfloat16)" in note for note in run.start["notes"])
    assert run.dtypes == {torch.bfloat16}  # the forward ran in bfloat16
    losses = [e["loss"] for e in run.steps]
    assert len(losses) == 30 and all(math.isfinite(loss) for loss in losses)
    assert not [e for e in run.steps if "loss_scale" in e]  # bf16 needs no scaling
    # It learns as the float32 run does (bfloat16 keeps ~3 significant digits).
    assert losses[-1] < losses[0]
    assert losses == pytest.approx([e["loss"] for e in full.steps], rel=0.02)
    assert [e["step"] for e in run.of_type("metrics")] == [15, 30]  # validated, by epoch


def test_fp16_records_the_loss_scale_and_the_step_the_scaler_skipped(fp16: Run, full: Run) -> None:
    assert fp16.status == "completed"
    assert fp16.start["config"]["train"]["precision"] == "fp16"
    notes = " ".join(fp16.start["notes"])
    assert "GradScaler" in notes and "fp16 on the CPU is for testing" in notes
    assert fp16.dtypes == {torch.float16}
    steps = {e["step"]: e for e in fp16.steps}
    assert sorted(steps) == list(range(1, 31))
    # Every step says the scale after its update(): the initial one until the NaN step,
    # where the scaler skipped optimizer.step() and halved it.
    scales = [steps[n]["loss_scale"] for n in sorted(steps)]
    assert scales == [FIRST_SCALE] * (NAN_GRAD_AT - 1) + [FIRST_SCALE / 2] * (31 - NAN_GRAD_AT)
    skipped = steps[NAN_GRAD_AT]
    assert skipped["optimizer_steps"] == 0 and "grad_norm" not in skipped
    assert all(steps[n]["optimizer_steps"] == 1 for n in steps if n != NAN_GRAD_AT)
    # The unscaled gradients were measured and clipped: the same norms, the same training
    # as float32 up to the NaN (a scaled gradient would be clipped 65536 times too hard).
    before = range(1, NAN_GRAD_AT)
    full_steps = {e["step"]: e for e in full.steps}
    assert [steps[n]["grad_norm"] for n in before] == pytest.approx(
        [full_steps[n]["grad_norm"] for n in before], rel=0.01
    )
    assert [steps[n]["loss"] for n in before] == pytest.approx(
        [full_steps[n]["loss"] for n in before], rel=0.01
    )
    # The NaN never reached the weights: training went on with finite losses.
    assert all(math.isfinite(e["loss"]) for e in fp16.steps)
    assert all(math.isfinite(p.detach().float().sum()) for p in fp16.trainer.module.parameters())
    # A skipped step is the scaler doing its job, not a NaN gradient in the run.
    assert not [e for e in fp16.of_type("alert") if e.get("rule") == "nan_grad"]


def test_a_resumed_fp16_run_continues_at_the_saved_scale(tmp_path: Path, fp16: Run) -> None:
    trainer = fp16.trainer
    scaler = trainer.precision.scaler
    assert scaler is not None and scaler.get_scale() == FIRST_SCALE / 2
    path = save_checkpoint(
        tmp_path / "fp16.pt",
        model=trainer.module,
        optimizer=trainer.optimizer,
        scheduler=trainer.scheduler,
        step=30,
        epoch=2,
        scaler=scaler,
    )
    # The scaler's state is plain numbers: the weights-only loader takes it.
    fresh = torch.amp.GradScaler("cpu")
    load_checkpoint(
        path,
        model=trainer.module,
        optimizer=trainer.optimizer,
        scheduler=None,
        scaler=fresh,
    )
    assert fresh.state_dict() == scaler.state_dict()
    resumed = Run(tmp_path, config_text("fp16"), [f"train.resume={path}", "train.max_steps=35"])
    assert resumed.status == "completed"
    assert [e["step"] for e in resumed.steps] == [31, 32, 33, 34, 35]
    assert {e["loss_scale"] for e in resumed.steps} == {FIRST_SCALE / 2}


@pytest.mark.parametrize(
    ("value", "hint"),
    [("8", ""), ("half", " (did you mean fp16?)"), ("16", " (did you mean fp16?)"), ("32.0", "")],
)
def test_a_bad_precision_is_refused_at_its_line(tmp_path: Path, value: str, hint: str) -> None:
    text = config_text(value)
    line = 1 + text.splitlines().index(f"  precision: {value}")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_run_config(path, [])
    assert info.value.problems == [
        f"{path}:{line}:3: train.precision: must be 32, bf16 or fp16, not {value}{hint}"
        if value[0].isdigit()
        else f"{path}:{line}:3: train.precision: must be 32, bf16 or fp16, not '{value}'{hint}"
    ]


def test_fp16_under_ddp_scales_alike_on_both_ranks(tmp_path: Path) -> None:
    """Two processes (gloo), each with its own GradScaler: the fault's NaN gradient (put
    on every rank after DDP's all-reduce) makes both skip the same step and halve their
    scale alike, and the replicas end identical."""
    config = tmp_path / "c.yaml"
    config.write_text(
        config_text("fp16", "faults: {nan_grad_at: 4}\n")
        .replace("max_steps: 30", "max_steps: 8")
        .replace("batch_size: 32", "batch_size: 16\n  device: cpu")
    )
    done = run_tuimon(
        config, "--headless", "--nproc-per-node", "2", "--run-dir", "run", cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "run"
    for log in (run / "events.jsonl", run / "ranks" / "1" / "events.jsonl"):
        events = list(read_events(log))
        steps = [e for e in events if e["type"] == "step"]
        assert [e["loss_scale"] for e in steps] == [FIRST_SCALE] * 3 + [FIRST_SCALE / 2] * 5
        assert [e["optimizer_steps"] for e in steps] == [1, 1, 1, 0, 1, 1, 1, 1]
        notes = [e["text"] for e in events if e["type"] == "message"]
        assert any(note.startswith(REPLICAS_IDENTICAL) for note in notes), notes
        assert [e["status"] for e in events if e["type"] == "end"] == ["completed"]


def test_the_trainers_checkpoint_keeps_the_scale_for_a_resume(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Run(
        tmp_path / "a",
        config_text("fp16", "faults: {nan_grad_at: 5}\n").replace("max_steps: 30", "max_steps: 10"),
    )
    assert first.steps[-1]["loss_scale"] == FIRST_SCALE / 2
    path = tmp_path / "a" / "run" / "checkpoints" / "step-00000010.pt"
    assert torch.load(path, weights_only=True)["scaler"]["scale"] == FIRST_SCALE / 2
    second = Run(
        tmp_path / "b", config_text("fp16"), [f"train.resume={path}", "train.max_steps=12"]
    )
    assert [(e["step"], e["loss_scale"]) for e in second.steps] == [
        (11, FIRST_SCALE / 2),
        (12, FIRST_SCALE / 2),
    ]


@pytest.mark.parametrize("unscale_first", [False, True], ids=["scaler-step-only", "unscale_-first"])
def test_a_fused_optimizer_s_skipped_step_is_not_a_nan_gradient(
    tmp_path: Path, unscale_first: bool
) -> None:
    """A GradScaler calls a fused optimizer's step() even when it found inf/NaN (the
    kernel skips the update): the step still reads as skipped, and norms are unscaled."""
    norms: dict[bool, list[float]] = {}
    for fused in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
        scaler = torch.amp.GradScaler("cpu")
        inputs, labels = torch.randn(32, 8), torch.randint(0, 3, (32,))
        run_dir = tmp_path / f"fused-{fused}"
        with Monitor(
            model, optimizer, scaler=scaler, run_dir=run_dir, quiet=True, log_every=2
        ) as mon:
            for step in range(1, 7):
                optimizer.zero_grad()
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = torch.nn.functional.cross_entropy(model(inputs), labels)
                scaler.scale(loss).backward()
                if step == 4:
                    model[0].weight.grad.view(-1)[0] = float("inf")
                if unscale_first:
                    scaler.unscale_(optimizer)
                scaler.step(optimizer)
                scaler.update()
                mon.step(loss)
        events = list(read_events(run_dir / "events.jsonl"))
        steps = {e["step"]: e for e in events if e["type"] == "step"}
        assert [steps[n]["optimizer_steps"] for n in range(1, 7)] == [1, 1, 1, 0, 1, 1]
        assert "grad_norm" not in steps[4]
        assert [steps[n]["loss_scale"] for n in (3, 4)] == [FIRST_SCALE, FIRST_SCALE / 2]
        assert not [e for e in events if e["type"] == "alert" and e.get("rule") == "nan_grad"]
        norms[fused] = [steps[n]["grad_norm"] for n in (1, 2, 3, 5, 6)]
    assert norms[True] == pytest.approx(norms[False], rel=1e-3)  # unscaled, both ways
