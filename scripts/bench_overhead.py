"""Measure what tuimon.Monitor adds to a training step, on a tiny MLP and a small CNN.

Same model, same data, same process: rounds of the bare loop alternate with rounds of the
loop under Monitor (every probe on, per-layer gradient norms logged every step, event log
with the doctor, system sampler and control server running), in ABBA order so that drift
of a shared machine falls on both kinds alike, and the medians are compared.

Three clocks per round: wall time; the training thread's CPU time (what the Monitor's
hooks and `step()` cost the loop, unaffected by other processes taking the CPU); and the
process's CPU time, which adds the Monitor's background threads (the log writer encoding
events and running the doctor, the system sampler). A monitored round ends with a flush of
the log, so the writer's work for its steps is counted in that round. On a busy machine
the CPU times are the reliable figures; wall time is shown for completeness.

    python scripts/bench_overhead.py                     # both models, CPU, 1 torch thread
    python scripts/bench_overhead.py --models mlp --rounds 15
    python scripts/bench_overhead.py --device cuda --threads 0
    python scripts/bench_overhead.py --models mlp --profile   # cProfile of monitored rounds
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tuimon.config import load_config
from tuimon.monitor.monitor import Monitor, RunOptions
from tuimon.training.datasets import data_shape
from tuimon.training.models import build_model
from tuimon.training.optimization import build_loss, build_optimizer

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    """A model to measure: a config's model, a batch size, and steps per round."""

    config: str
    batch_size: int
    steps: int


CASES = {
    # ~250 us a step on a fast core: the kind of step where fixed per-step costs show.
    "mlp": Case("configs/mlp.yaml", batch_size=32, steps=400),
    # ~30 ms a step: the Monitor's cost must vanish in the noise.
    "cnn": Case("configs/cnn_mnist.yaml", batch_size=64, steps=12),
}


@dataclass
class Round:
    wall: float
    thread_cpu: float
    process_cpu: float


def measure(case: Case, device: torch.device, rounds: int, profile: bool) -> dict[str, object]:
    config = load_config(str(REPO / case.config), ["data.download=false"])
    shape = data_shape(config.data)
    torch.manual_seed(0)
    model = build_model(config, shape).to(device)
    optimizer = build_optimizer(config.optimizer, model.parameters())
    loss_fn = build_loss(config.loss).to(device)
    batches = [
        (
            torch.randn(
                case.batch_size, shape.channels, shape.image_size, shape.image_size, device=device
            ),
            torch.randint(0, shape.num_classes, (case.batch_size,), device=device),
        )
        for _ in range(4)
    ]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_round(monitor: Monitor | None) -> Round:
        sync()
        wall, thread, process = time.perf_counter(), time.thread_time(), time.process_time()
        for i in range(case.steps):
            x, y = batches[i % len(batches)]
            optimizer.zero_grad(set_to_none=True)
            out = model(x)
            loss = loss_fn(out, y)
            loss.backward()
            optimizer.step()
            if monitor is not None:
                monitor.step(loss, inputs=x, targets=y, outputs=out)
        sync()
        thread = time.thread_time() - thread
        if monitor is not None:
            monitor._log.flush()  # the writer's share of this round's steps
        return Round(
            wall=(time.perf_counter() - wall) / case.steps,
            thread_cpu=thread / case.steps,
            process_cpu=(time.process_time() - process) / case.steps,
        )

    # Every probe on: the defaults, with per-layer gradient norms logged on every step.
    settings = config.monitor.model_copy(deep=True)
    settings.probes.layer_norms_every = 1
    for _ in range(2):
        train_round(None)  # warm-up: allocator, first touch of the weights
    bare: list[Round] = []
    monitored: list[Round] = []
    profiler = cProfile.Profile() if profile else None
    with tempfile.TemporaryDirectory() as tmp:
        monitor = Monitor.configured(
            model,
            optimizer,
            run_dir=Path(tmp) / "run",
            quiet=True,
            options=RunOptions(name="bench", settings=settings),
        )
        with monitor:
            train_round(monitor)  # warm-up, and past the dense early probes
            for index in range(rounds):
                order = (None, monitor) if index % 2 == 0 else (monitor, None)
                for which in order:
                    if which is not None and profiler is not None:
                        profiler.enable()
                    result = train_round(which)
                    if which is not None and profiler is not None:
                        profiler.disable()
                    (bare if which is None else monitored).append(result)
        events = sum(1 for _ in (Path(tmp) / "run" / "events.jsonl").open())
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats("tuimon|queue|threading", 40)

    def median(rows: list[Round], key: str) -> float:
        return statistics.median(getattr(r, key) for r in rows)

    results: dict[str, object] = {
        "model": f"{config.model.name} ({case.config})",
        "params": sum(p.numel() for p in model.parameters()),
        "batch_size": case.batch_size,
        "steps_per_round": case.steps,
        "rounds": rounds,
        "events_logged": events,
    }
    for key in ("wall", "thread_cpu", "process_cpu"):
        base, with_monitor = median(bare, key), median(monitored, key)
        results[f"{key}_bare_us"] = 1e6 * base
        results[f"{key}_monitored_us"] = 1e6 * with_monitor
        results[f"{key}_added_us"] = 1e6 * (with_monitor - base)
        results[f"{key}_added_pct"] = 100 * (with_monitor - base) / base
        # Each monitored round against the bare round next to it: slow drift of a shared
        # machine's load cancels within a pair.
        pairs = [getattr(m, key) - getattr(b, key) for b, m in zip(bare, monitored, strict=True)]
        results[f"{key}_added_paired_us"] = 1e6 * statistics.median(pairs)
    walls = [r.wall for r in bare]
    results["wall_bare_spread_pct"] = 100 * (max(walls) - min(walls)) / median(bare, "wall")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn", help=f"any of {', '.join(CASES)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)"
    )
    parser.add_argument("--rounds", type=int, default=9, help="rounds of each kind")
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per round (default: per model)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the monitored rounds")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    report = {"device": str(device), "torch_threads": torch.get_num_threads(), "models": []}
    for name in args.models.split(","):
        case = CASES[name.strip()]
        if args.steps:
            case = Case(case.config, case.batch_size, args.steps)
        results = measure(case, device, args.rounds, args.profile)
        report["models"].append(results)
        print(f"\n{name}: {results['model']}, batch {case.batch_size}, device {device}")
        width = max(len(k) for k in results)
        for key, value in results.items():
            shown = f"{value:.1f}" if isinstance(value, float) else value
            print(f"  {key:<{width}}  {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
