"""Measure what tuimon adds to a step inside Lightning, the HF Trainer and Accelerate.

For each framework, rounds of training without tuimon alternate (ABBA) with rounds with
its adapter, on the same tiny model and data, in one process. A round is a whole `fit` /
`train()` / loop of `--steps` steps, but only the steps after `--warmup` are timed, from
inside the framework (a timing callback, or the loop itself), so building the trainer
and the Monitor's start are not counted: what is left is the per-step cost. Two clocks:
the training thread's CPU time (what the adapter's hooks and `Monitor.step()` cost the
loop, unaffected by other processes) and wall time. Medians over rounds are compared.

A tiny MLP makes the framework's own per-step work small, so this is the worst case: in
a real model the same microseconds are a smaller share.

    python scripts/bench_integrations.py                  # all three, CPU, 1 torch thread
    python scripts/bench_integrations.py --frameworks lightning --rounds 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")


@dataclass
class Window:
    """Times the steps after `warmup`, from the framework's own per-step hooks."""

    warmup: int
    steps: int = 0
    cpu_start: float = 0.0
    wall_start: float = 0.0
    cpu: float = 0.0
    wall: float = 0.0
    timed: int = 0

    def step_done(self) -> None:
        self.steps += 1
        if self.steps == self.warmup:
            self.cpu_start, self.wall_start = time.thread_time(), time.perf_counter()
        elif self.steps > self.warmup:
            self.cpu = time.thread_time() - self.cpu_start
            self.wall = time.perf_counter() - self.wall_start
            self.timed = self.steps - self.warmup


@dataclass
class Results:
    bare_cpu: list[float] = field(default_factory=list)
    with_cpu: list[float] = field(default_factory=list)
    bare_wall: list[float] = field(default_factory=list)
    with_wall: list[float] = field(default_factory=list)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


def tensors(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(count, 32, generator=generator), torch.randint(0, 10, (count,))


# -- Lightning ---------------------------------------------------------------------------


def lightning_round(steps: int, warmup: int, tmp: Path, monitored: bool) -> Window:
    import lightning.pytorch as pl

    from tuimon.integrations.lightning import TuimonCallback

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    window = Window(warmup)

    class Timer(pl.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            window.step_done()

    x, y = tensors(32 * steps)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    callbacks: list[Any] = [Timer()]
    if monitored:
        callbacks.insert(0, TuimonCallback(run_dir=tmp / f"pl-{time.monotonic_ns()}", quiet=True))
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=str(tmp),
    )
    trainer.fit(Classifier(), loader)
    return window


# -- Hugging Face Trainer ----------------------------------------------------------------


class TokenData(torch.utils.data.Dataset):
    def __init__(self, count: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 100, (count, 16), generator=generator)
        self.labels = torch.randint(0, 2, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


def hf_round(steps: int, warmup: int, tmp: Path, monitored: bool) -> Window:
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from tuimon.integrations.transformers import TuimonCallback

    window = Window(warmup)

    class Timer(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            window.step_done()

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=32,
        num_labels=2,
    )
    args = TrainingArguments(
        output_dir=str(tmp / f"hf-{time.monotonic_ns()}"),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=50,
        disable_tqdm=True,
    )
    callbacks: list[Any] = [Timer()]
    if monitored:
        callbacks.insert(
            0, TuimonCallback(run_dir=tmp / f"hfrun-{time.monotonic_ns()}", quiet=True)
        )
    trainer = Trainer(
        model=BertForSequenceClassification(config),
        args=args,
        train_dataset=TokenData(8 * steps),
        callbacks=callbacks,
    )
    trainer.train()
    return window


# -- Accelerate --------------------------------------------------------------------------


def accelerate_round(steps: int, warmup: int, tmp: Path, monitored: bool) -> Window:
    from accelerate import Accelerator

    from tuimon.integrations.accelerate import monitor

    accelerator = Accelerator(cpu=True)
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    x, y = tensors(32 * steps)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    run = None
    if monitored:
        run = monitor(
            accelerator,
            model,
            optimizer,
            scheduler,
            run_dir=tmp / f"acc-{time.monotonic_ns()}",
            quiet=True,
        )
    window = Window(warmup)
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        if run is not None:
            run.step(loss)
        window.step_done()
    if run is not None:
        run.close()
    accelerator.end_training()
    return window


ROUNDS: dict[str, Callable[[int, int, Path, bool], Window]] = {
    "lightning": lightning_round,
    "hf": hf_round,
    "accelerate": accelerate_round,
}


def measure(name: str, rounds: int, steps: int, warmup: int) -> Results:
    results = Results()
    run_round = ROUNDS[name]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run_round(steps, warmup, tmp, True)  # warm-up: imports, first compilations
        run_round(steps, warmup, tmp, False)
        for index in range(rounds):
            order = (False, True) if index % 2 == 0 else (True, False)
            for monitored in order:
                window = run_round(steps, warmup, tmp, monitored)
                cpu, wall = window.cpu / window.timed, window.wall / window.timed
                if monitored:
                    results.with_cpu.append(cpu)
                    results.with_wall.append(wall)
                else:
                    results.bare_cpu.append(cpu)
                    results.bare_wall.append(wall)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", nargs="+", choices=sorted(ROUNDS), default=list(ROUNDS))
    parser.add_argument("--rounds", type=int, default=7, help="rounds of each kind")
    parser.add_argument("--steps", type=int, default=220, help="steps per round")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.rounds} rounds of each kind, {args.steps} steps")
    for name in args.frameworks:
        results = measure(name, args.rounds, args.steps, args.warmup)
        bare = statistics.median(results.bare_cpu)
        added = statistics.median(
            m - b for b, m in zip(results.bare_cpu, results.with_cpu, strict=True)
        )
        wall_bare = statistics.median(results.bare_wall)
        wall_added = statistics.median(
            m - b for b, m in zip(results.bare_wall, results.with_wall, strict=True)
        )
        print(
            f"  {name:<11} step {1e6 * bare:7.0f} µs CPU   adapter adds {1e6 * added:+6.0f} µs "
            f"({100 * added / bare:+.1f}%)   wall {1e6 * wall_bare:7.0f} µs, "
            f"adds {1e6 * wall_added:+6.0f} µs ({100 * wall_added / wall_bare:+.1f}%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
