"""Measure the UI's refresh cost and memory for runs of 1e3, 1e5 and 1e6 steps.

For each size, a synthetic run (step events with loss, LR, gradient norms, per-layer norms,
validation metrics, system samples, a few LR changes and alerts) is applied to a RunState,
then the app is driven headless with Textual's Pilot at 200x60:

- full refresh: every panel rebuilt (plots decimated and drawn by plotext) and painted, as
  after a resize or a new view option;
- live tick: what one timer tick costs while training: 100 new steps applied, the text
  panels and one plot (the app spreads plot redraws over ticks) rebuilt and painted;
- memory: the state's Python allocations and its snapshot's size on the wire.

    python scripts/bench_ui.py
    python scripts/bench_ui.py --sizes 1000 100000 --repeats 30
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from tempfile import TemporaryDirectory

from tuimon.run.run_state import RunState
from tuimon.ui.app import TuimonApp
from tuimon.ui.widgets.panel import Panel

LAYERS = [f"features.{i}" for i in range(0, 40, 3)] + ["classifier.0", "classifier.3"]


def synthetic_events(steps: int, start_step: int = 0, t0: float = 1_000_000.0):
    """A plausible run: loss decaying with noise, a cosine LR, occasional events."""
    if start_step == 0:
        yield {
            "type": "start",
            "time": t0,
            "name": f"bench-{steps}",
            "total_steps": steps * 2,
            "steps_per_epoch": 390,
            "epochs": max(1, steps * 2 // 390),
            "settings": {},
            "model": {"layers": LAYERS},
        }
    for step in range(start_step + 1, start_step + steps + 1):
        noise = math.sin(step * 12.9898) * 43758.5453 % 1
        event = {
            "type": "step",
            "step": step,
            "epoch": step // 390,
            "time": t0 + step * 0.05,
            "loss": 2.3 * math.exp(-step / 20000) + 0.1 + 0.2 * noise,
            "lr": 0.05 * (1 + math.cos(math.pi * step / (2 * steps))) / 2,
            "grad_norm": 1.0 + noise,
            "samples": 128,
            "step_time": 0.05,
            "data_time": 0.005,
        }
        if step % 20 == 0:
            event["layer_grad_norms"] = {name: 10 ** (-i / 4) for i, name in enumerate(LAYERS)}
        if step % 50 == 0:
            event["update_ratio"] = 1e-3 * (1 + noise)
        yield event
        if step % 390 == 0:
            yield {
                "type": "metrics",
                "step": step,
                "time": t0 + step * 0.05,
                "val_loss": 2.0 * math.exp(-step / 20000) + 0.3,
                "val_acc": 0.8,
            }
        if step % 20 == 0:
            yield {
                "type": "system",
                "time": t0 + step * 0.05,
                "host": {
                    "cpu_percent": 50 + 40 * noise,
                    "ram_used": 8e9,
                    "ram_total": 32e9,
                    "process_rss": 2e9,
                    "cpu_count": 16,
                },
                "gpus": [
                    {
                        "index": 0,
                        "name": "NVIDIA H100 80GB HBM3",
                        "util": 90 + 9 * noise,
                        "mem_used": 61e9,
                        "mem_total": 85.5e9,
                        "temperature": 65,
                        "power_w": 650.0,
                        "power_limit_w": 700.0,
                        "process_mem": 60e9,
                    }
                ],
            }
        if step % max(1, steps // 5) == 0:
            yield {
                "type": "control",
                "step": step,
                "time": t0 + step * 0.05,
                "command": "scale-lr",
                "old": 0.05,
                "new": 0.025,
                "source": "bench",
            }


def build_state(steps: int) -> tuple[RunState, float, int]:
    """The state after `steps` steps; seconds spent applying events, bytes the state holds."""
    state = RunState()
    ingest = 0.0
    batch = []
    for seq, event in enumerate(synthetic_events(steps), start=1):
        event["seq"] = seq
        batch.append(event)
        if len(batch) == 10_000:
            started = time.perf_counter()
            state.apply_many(batch)
            ingest += time.perf_counter() - started
            batch = []
    started = time.perf_counter()
    state.apply_many(batch)
    ingest += time.perf_counter() - started
    # What the state holds: measured by rebuilding it from its snapshot under tracemalloc.
    wire = json.loads(json.dumps(state.snapshot()))
    gc.collect()
    tracemalloc.start()
    held_state = RunState.from_snapshot(wire)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del held_state
    return state, ingest, held


async def measure(state: RunState, steps: int, repeats: int, run_dir: Path) -> dict[str, float]:
    """Median CPU time (this process) and wall time of a full refresh and of a live tick.

    CPU time is the cost; wall time also holds the wait for Textual's next frame (it paints
    at most 60 times a second), so it is the latency a user sees.
    """
    app = TuimonApp(run_dir, replay=True, fps=1)
    async with app.run_test(size=(200, 60)) as pilot:
        app.state = state
        panels = list(app.query(Panel))
        full: list[tuple[float, float]] = []
        live: list[tuple[float, float]] = []
        for _ in range(repeats):
            for panel in panels:
                panel._drawn = None  # force every panel to rebuild
            cpu, wall = time.process_time(), time.perf_counter()
            app.refresh_panels(everything=True)
            await pilot.pause()  # let Textual lay out and paint the frame
            full.append((time.process_time() - cpu, time.perf_counter() - wall))
        next_step = steps
        for _ in range(repeats):
            new = list(synthetic_events(100, start_step=next_step))
            for offset, event in enumerate(new, start=1):
                event["seq"] = state.seq + offset
            next_step += 100
            cpu, wall = time.process_time(), time.perf_counter()
            state.apply_many(new)
            app.refresh_panels()
            await pilot.pause()
            live.append((time.process_time() - cpu, time.perf_counter() - wall))
    return {
        "full_cpu_ms": 1000 * statistics.median(c for c, _ in full),
        "full_wall_ms": 1000 * statistics.median(w for _, w in full),
        "tick_cpu_ms": 1000 * statistics.median(c for c, _ in live),
        "tick_wall_ms": 1000 * statistics.median(w for _, w in live),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    rows = []
    with TemporaryDirectory() as tmp:
        (Path(tmp) / "events.jsonl").write_text("")
        for steps in args.sizes:
            state, ingest, held = build_state(steps)
            snapshot = len(json.dumps(state.snapshot()))
            timing = asyncio.run(measure(state, steps, args.repeats, Path(tmp)))
            rows.append(
                {
                    "steps": steps,
                    "ingest_s": ingest,
                    "events_per_s": steps / ingest if ingest else 0.0,
                    "state_mib": held / 2**20,
                    "snapshot_kib": snapshot / 1024,
                    **timing,
                }
            )
    keys = list(rows[0])
    print("  ".join(f"{k:>20}" for k in keys))
    for row in rows:
        print(
            "  ".join(
                f"{row[k]:>20.4g}" if isinstance(row[k], float) else f"{row[k]:>20}" for k in keys
            )
        )
    if len(rows) > 1:
        ratio = rows[-1]["full_cpu_ms"] / rows[0]["full_cpu_ms"]
        print(
            f"full refresh at {rows[-1]['steps']} steps = {ratio:.2f}x the one at "
            f"{rows[0]['steps']} steps"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
