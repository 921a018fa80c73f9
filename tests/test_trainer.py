"""The built-in trainer, in-process: schedules, accumulation, clipping, learning."""

from __future__ import annotations

import statistics

import pytest

from tuimon.config import load_config
from tuimon.run.log_reader import read_events
from tuimon.training.trainer import Trainer

from conftest import REPO

BASE = """\
name: t
model: {name: mlp, hidden: [32]}
data:
  name: synthetic
  synthetic: {num_samples: 640, channels: 1, image_size: 8, num_classes: 4}
  val_split: 0.25
optimizer: {name: SGD, lr: 0.1}
train: {max_steps: 40, batch_size: 32, seed: 0}
monitor: {log_every: 5, system_interval: 5}
"""


def train(tmp_path, text=BASE, overrides=()):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    trainer = Trainer(load_config(path, list(overrides)))
    trainer.setup()
    status = trainer.run(tmp_path / "run", quiet=True)
    events = list(read_events(tmp_path / "run" / "events.jsonl"))
    return trainer, status, events


def steps_of(events):
    return [e for e in events if e["type"] == "step"]


def test_the_mlp_config_halves_its_loss_within_150_steps(tmp_path):
    _, status, events = train(
        tmp_path,
        (REPO / "configs" / "mlp.yaml").read_text(),
        ["train.max_steps=150", "monitor.system_interval=5"],
    )
    losses = [e["loss"] for e in steps_of(events)]
    assert status == "completed" and len(losses) == 150
    first, last = statistics.mean(losses[:5]), statistics.mean(losses[-10:])
    assert first > 2.0  # ln(10) = 2.30 at the start: it starts from chance
    assert last < first / 2


def test_reduce_on_plateau_is_fed_the_validation_loss(tmp_path):
    text = BASE.replace("optimizer: {name: SGD, lr: 0.1}", "optimizer: {name: SGD, lr: 1e-6}")
    text += "scheduler: {name: ReduceLROnPlateau, factor: 0.5, patience: 0, threshold: 0.5}\n"
    _, _, events = train(tmp_path, text, ["train.val_every=10"])
    vals = [e for e in events if e["type"] == "metrics"]
    assert [e["step"] for e in vals] == [10, 20, 30, 40]
    lrs = {e["step"]: e["lr"] for e in steps_of(events)}
    # The first validation sets the best; at LR 1e-6 no later one improves it by 50%, so
    # each of them halves the LR for the steps after it.
    assert lrs[11] == pytest.approx(1e-6)
    assert lrs[21] == pytest.approx(5e-7) and lrs[31] == pytest.approx(2.5e-7)


def test_warmup_then_cosine_over_the_whole_run(tmp_path):
    text = BASE + "scheduler: {name: CosineAnnealingLR, interval: step, warmup_steps: 10}\n"
    trainer, _, events = train(tmp_path, text)
    lrs = [e["lr"] for e in steps_of(events)]
    assert lrs[0] == pytest.approx(0.01)  # warmup_start_factor 0.1
    assert lrs[:11] == sorted(lrs[:11]) and lrs[10] == pytest.approx(0.1)
    assert lrs[10:] == sorted(lrs[10:], reverse=True) and lrs[-1] < 0.002
    assert trainer.scheduler._schedulers[1].T_max == 30  # the run, after warmup


def test_one_cycle_gets_its_length_from_the_run(tmp_path):
    text = BASE + "scheduler: {name: OneCycleLR, interval: step}\n"
    trainer, status, events = train(tmp_path, text)
    lrs = [e["lr"] for e in steps_of(events)]
    assert status == "completed" and trainer.scheduler.total_steps == 40
    assert max(lrs) == pytest.approx(0.1, rel=0.05) and lrs[0] < 0.01 and lrs[-1] < 1e-4


def test_step_lr_per_epoch(tmp_path):
    text = BASE + "scheduler: {name: StepLR, step_size: 1, gamma: 0.5}\n"
    _, _, events = train(tmp_path, text, ["train.max_steps=45"])
    by_epoch = {e["epoch"]: e["lr"] for e in steps_of(events)}
    # 480 samples / 32 = 15 steps per epoch; the LR halves at each epoch end.
    assert by_epoch == pytest.approx({0: 0.1, 1: 0.05, 2: 0.025})


def test_accumulation_counts_optimizer_steps(tmp_path):
    trainer, _, events = train(tmp_path, overrides=["train.accumulate=3", "train.max_steps=10"])
    assert trainer.steps_per_epoch == 5  # 15 batches / 3
    steps = steps_of(events)
    assert [e["step"] for e in steps] == list(range(1, 11))
    assert [e["epoch"] for e in steps] == [0] * 5 + [1] * 5


def test_grad_clip_from_the_config(tmp_path):
    trainer, _, events = train(tmp_path, overrides=["train.grad_clip=0.001"])
    start = events[0]
    assert start["grad_clip"] == 0.001
    assert trainer.monitor._probes.grads.clip == 0.001
    # Updates are tiny: the weights barely move from their initial values.
    assert all(e["grad_norm"] > 0.001 for e in steps_of(events))


def test_too_little_data_for_one_step_is_a_usage_error(tmp_path):
    from tuimon.errors import UsageError

    with pytest.raises(UsageError, match="make no full step"):
        train(tmp_path, overrides=["train.accumulate=20"])


def test_device_cuda_without_cuda_is_a_usage_error(tmp_path):
    import torch

    from tuimon.errors import UsageError

    if torch.cuda.is_available():
        pytest.fail("this test expects a machine without CUDA, as CI is")
    with pytest.raises(UsageError, match="no CUDA device is available"):
        train(tmp_path, overrides=["train.device=cuda"])
