"""Measure what tuimon.Monitor adds to a step of a 2-rank DDP job, against one process.

The same tiny MLP (`configs/mlp.yaml`'s model, batch 32) is trained three ways: in one
process, and on each of two ranks of a `torchrun --standalone --nproc-per-node 2` job
(DDP, gloo, CPU). In each, one Monitor lives for the whole measurement and rounds of
steps without `mon.step()` alternate (ABBA) with rounds with it, so what a round with it
adds is the Monitor's cost per step: in the job that includes the command exchange
(one store round trip every `sync_every` steps) and the rank's reports. The figure is the
median over pairs of (monitored − bare) training-thread CPU time per step: the clock that
other processes on a shared machine do not move, and that does not count the time a rank
waits for the other inside DDP's all-reduce.

    python scripts/bench_distributed.py                   # sync_every 4 (the default)
    python scripts/bench_distributed.py --sync-every 1 --rounds 15 --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def worker(out: Path, rounds: int, steps: int, sync_every: int) -> None:
    import torch
    import torch.distributed as dist

    from tuimon.config import load_config
    from tuimon.monitor.monitor import Monitor, RunOptions
    from tuimon.training.datasets import data_shape
    from tuimon.training.models import build_model
    from tuimon.training.optimization import build_loss, build_optimizer

    torch.set_num_threads(1)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    config = load_config(str(REPO / "configs/mlp.yaml"), ["data.download=false"])
    shape = data_shape(config.data)
    torch.manual_seed(0)
    model = build_model(config, shape)
    trained = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    optimizer = build_optimizer(config.optimizer, trained.parameters())
    loss_fn = build_loss(config.loss)
    batches = [
        (
            torch.randn(32, shape.channels, shape.image_size, shape.image_size),
            torch.randint(0, shape.num_classes, (32,)),
        )
        for _ in range(4)
    ]

    def train_round(monitor: Monitor | None) -> float:
        start = time.thread_time()
        for i in range(steps):
            x, y = batches[i % len(batches)]
            optimizer.zero_grad(set_to_none=True)
            out_ = trained(x)
            loss = loss_fn(out_, y)
            loss.backward()
            optimizer.step()
            if monitor is not None:
                monitor.step(loss, inputs=x, targets=y, outputs=out_)
        return (time.thread_time() - start) / steps

    settings = config.monitor.model_copy(update={"sync_every": sync_every})
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TUIMON_RUN_DIR"] = str(Path(tmp) / "run")
        bare: list[float] = []
        monitored: list[float] = []
        monitor = Monitor.configured(
            trained, optimizer, quiet=True, options=RunOptions(name="bench", settings=settings)
        )
        with monitor:
            train_round(monitor)  # warm-up, and past the dense early probes
            train_round(None)
            for index in range(rounds):
                order = (None, monitor) if index % 2 == 0 else (monitor, None)
                for which in order:
                    (bare if which is None else monitored).append(train_round(which))
    pairs = [m - b for b, m in zip(bare, monitored, strict=True)]
    result = {
        "rank": rank,
        "bare_us": 1e6 * statistics.median(bare),
        "monitored_us": 1e6 * statistics.median(monitored),
        "added_us": 1e6 * statistics.median(pairs),
    }
    result["added_pct"] = 100 * result["added_us"] / result["bare_us"]
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    if distributed:
        dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="rounds of each kind")
    parser.add_argument("--steps", type=int, default=200, help="steps per round")
    parser.add_argument("--sync-every", type=int, default=4, help="monitor.sync_every")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker), args.rounds, args.steps, args.sync_every)
        return 0
    me = [str(Path(__file__).resolve())]
    common = ["--rounds", str(args.rounds), "--steps", str(args.steps)]
    common += ["--sync-every", str(args.sync_every)]
    report: dict[str, object] = {"sync_every": args.sync_every, "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        single, job = Path(tmp) / "single", Path(tmp) / "job"
        single.mkdir()
        job.mkdir()
        subprocess.run([sys.executable, *me, "--worker", str(single), *common], check=True)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        torchrun += ["--nproc-per-node", "2", *me, "--worker", str(job), *common]
        subprocess.run(torchrun, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
        report["one process"] = json.loads((single / "rank0.json").read_text())
        for rank in (0, 1):
            report[f"DDP rank {rank}"] = json.loads((job / f"rank{rank}.json").read_text())
    print(f"\nMonitor cost per step, training-thread CPU (sync_every {args.sync_every}):")
    for name in ("one process", "DDP rank 0", "DDP rank 1"):
        row = report[name]
        assert isinstance(row, dict)
        print(
            f"  {name:<12} bare {row['bare_us']:7.0f} µs   with Monitor "
            f"{row['monitored_us']:7.0f} µs   added {row['added_us']:+6.0f} µs "
            f"({row['added_pct']:+.1f}%)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
