"""Measure what tuimon.Monitor adds to a training step.

Same model, same data, same process: rounds of the bare loop alternate with rounds of the
loop under Monitor (gradient norms every step, event log, system sampler and control
server running), and the median step times are compared. The Monitor's own work inside
the step (its optimizer pre-hook, forward pre-hook and `step()`) is also timed directly,
which is far less noisy than the difference of two end-to-end times.

    python scripts/bench_overhead.py                      # configs/vgg.yaml's model, CPU
    python scripts/bench_overhead.py --device cuda --steps 50 --rounds 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from tuimon.config import load_config
from tuimon.monitor import grad_probe, step_timer
from tuimon.monitor.monitor import Monitor, RunOptions
from tuimon.training.datasets import data_shape
from tuimon.training.models import build_model
from tuimon.training.optimization import build_loss, build_optimizer

REPO = Path(__file__).resolve().parent.parent


class Stopwatch:
    """Accumulates the time spent inside wrapped functions."""

    def __init__(self) -> None:
        self.total = 0.0
        self.per_step: list[float] = []
        self._mark = 0.0

    def end_step(self) -> None:
        """Close one step: what the Monitor spent in it since the previous one."""
        self.per_step.append(self.total - self._mark)
        self._mark = self.total

    def wrap(self, function):  # type: ignore[no-untyped-def]
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - started

        return timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "vgg.yaml"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--steps", type=int, default=4, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each kind")
    parser.add_argument(
        "--layer-norms-every",
        type=int,
        default=1,
        help="log per-layer norms every N steps (computed every step anyway)",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    config = load_config(args.config, ["data.download=false"])
    device = torch.device(args.device)
    batch_size = args.batch_size or config.train.batch_size
    shape = data_shape(config.data)
    torch.manual_seed(0)
    model = build_model(config, shape).to(device)
    optimizer = build_optimizer(config.optimizer, model.parameters())
    loss_fn = build_loss(config.loss).to(device)
    batches = [
        (
            torch.randn(
                batch_size, shape.channels, shape.image_size, shape.image_size, device=device
            ),
            torch.randint(0, shape.num_classes, (batch_size,), device=device),
        )
        for _ in range(4)
    ]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_round(monitor: Monitor | None) -> float:
        sync()
        started = time.perf_counter()
        for i in range(args.steps):
            x, y = batches[i % len(batches)]
            optimizer.zero_grad(set_to_none=True)
            out = model(x)
            loss = loss_fn(out, y)
            loss.backward()
            optimizer.step()
            if monitor is not None:
                monitor.step(loss, inputs=x, targets=y, outputs=out)
                watch.end_step()
        sync()
        return (time.perf_counter() - started) / args.steps

    watch = Stopwatch()
    train_round(None)  # warm-up: allocator, cuDNN autotuning, first-touch of weights

    grad_probe.GradientProbe._before_step = watch.wrap(grad_probe.GradientProbe._before_step)
    step_timer.StepTimer._on_forward = watch.wrap(step_timer.StepTimer._on_forward)
    Monitor.step = watch.wrap(Monitor.step)
    settings = config.monitor.model_copy(deep=True)
    settings.probes.layer_norms_every = args.layer_norms_every
    bare, monitored = [], []
    monitor_steps = 0
    with tempfile.TemporaryDirectory() as tmp:
        monitor = Monitor.configured(
            model,
            optimizer,
            run_dir=Path(tmp) / "run",
            quiet=True,
            options=RunOptions(name="bench", settings=settings),
        )
        with monitor:
            train_round(monitor)  # warm-up of the monitored path
            watch.total = watch._mark = 0.0
            watch.per_step = []
            for _ in range(args.rounds):
                bare.append(train_round(None))
                monitored.append(train_round(monitor))
                monitor_steps += args.steps
        events = sum(1 for _ in (Path(tmp) / "run" / "events.jsonl").open())

    bare_median = statistics.median(bare)
    monitored_median = statistics.median(monitored)
    inside = watch.total / monitor_steps
    results = {
        "model": config.model.name,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "bare_step_s": bare_median,
        "monitored_step_s": monitored_median,
        "end_to_end_overhead_pct": 100 * (monitored_median - bare_median) / bare_median,
        "monitor_time_per_step_s": inside,
        "monitor_time_pct": 100 * inside / bare_median,
        "monitor_median_step_s": statistics.median(watch.per_step),
        "monitor_heaviest_step_s": max(watch.per_step),
        "bare_spread_pct": 100 * (max(bare) - min(bare)) / bare_median,
        "events_logged": events,
    }
    width = max(len(k) for k in results)
    for key, value in results.items():
        shown = f"{value:.6g}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
