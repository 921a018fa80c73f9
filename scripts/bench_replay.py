"""How long a replay of a large log takes to a drawn screen, and how much memory
`tuimon doctor` needs over one (issue 8, item 14).

A synthetic log is written the way a real run writes it: the Monitor's step events
(timing, loss, LR, gradient norm; per-layer norms every 20 steps, update ratios every 50),
its sampled probes (batch, stale-gradient, activation and dead-unit probes on their
default schedules), validation metrics each epoch and a system sample every 5 s, encoded
by the event log's own codec. Then:

- load: `load_run_state` over the log (what `tuimon replay` does before it can draw
  when the run has no `state.json`: a run killed before its end, or an older tuimon);
- cache: `state.json` written as the worker writes it at the run's end (from the state
  just loaded), then read back with `load_cached_state` (what `tuimon replay` does first);
- screen: the app in replay mode, driven headless by Textual's Pilot at 200x60, from
  its construction to the first screen drawn with the run on it, without the cache and
  with it;
- doctor: `tuimon doctor` over the log in a subprocess, its wall time and peak RSS.

    python scripts/bench_replay.py                      # 1e6 steps: load and screen
    python scripts/bench_replay.py --steps 200000 --doctor
"""

from __future__ import annotations

import argparse
import asyncio
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from tuimon.run.event_codec import encode_event
from tuimon.run.replay_cache import load_cached_state, write_state_cache
from tuimon.run.run_dir import STATE_FILE
from tuimon.run.run_state import load_run_state

sys.path.insert(0, str(Path(__file__).parent))
from make_fake_runs import step_event

LAYERS = ["net.1", "net.3", "net.5"]
STEPS_PER_EPOCH = 390
STEP_SECONDS = 0.002


def start_event(steps: int, t0: float) -> dict[str, Any]:
    probes = {
        "layer_norms_every": 20,
        "update_ratio_every": 50,
        "batch_every": 20,
        "activations_every": 50,
        "stale_grad_every": 10,
    }
    return {
        "type": "start",
        "name": f"bench-{steps}",
        "pid": 1,
        "host": "bench",
        "config": {"name": f"bench-{steps}", "monitor": {"probes": probes, "rules": {}}},
        "model": {"class": "MLP", "params": 55050, "trainable": 55050, "layers": LAYERS},
        "optimizer": {"class": "SGD", "param_groups": 1, "lrs": [0.1]},
        "loss": {"name": "CrossEntropyLoss"},
        "total_steps": steps,
        "steps_per_epoch": STEPS_PER_EPOCH,
        "epochs": math.ceil(steps / STEPS_PER_EPOCH),
        "start_step": 0,
        "data": {"num_classes": 10, "task": "classification"},
        "settings": {"smoothing": 0.9, "probes": probes},
        "time": t0,
    }


def run_events(steps: int, t0: float = 1_800_000_000.0):
    """The events of a plausible run of `steps` steps, in the order a Monitor logs them."""
    yield start_event(steps, t0)
    next_system = t0
    for step in range(1, steps + 1):
        now = t0 + step * STEP_SECONDS
        noise = math.sin(step * 12.9898) * 43758.5453 % 1
        loss = 2.3 * math.exp(-step / (steps / 5)) + 0.1 + 0.2 * noise
        if step % 20 in (0, 1, 2):
            yield {
                "type": "probe",
                "probe": "batch",
                "step": step,
                "inputs": {
                    "count": 50176,
                    "floating": True,
                    "nonfinite": 0.0,
                    "mean": -0.01,
                    "std": 0.98,
                    "min": -4.3,
                    "max": 3.7,
                },
                "outputs": {"classes": 10, "min": -0.29, "max": 0.28, "row_sum_error": 1.67},
                "targets": {"counts": [8.0, 11.0, 4.0, 3.0, 7.0, 8.0, 2.0, 7.0, 8.0, 6.0]},
                "time": now,
            }
        if step % 10 == 1:
            yield {
                "type": "probe",
                "probe": "stale_grad",
                "step": step,
                "stale": False,
                "param": "net.5.bias",
                "time": now,
            }
        if step % 50 == 0:
            yield {
                "type": "probe",
                "probe": "activations",
                "step": step,
                "layers": {"net.2": {"dead": 0.0}, "net.4": {"dead": 0.0}},
                "time": now,
            }
            yield {
                "type": "probe",
                "probe": "dead_units",
                "step": step,
                "layers": {"net.1": 0.0, "net.3": 0.0},
                "time": now,
            }
        yield step_event(step, steps, now, noise, loss, samples=64, step_seconds=STEP_SECONDS)
        if step % STEPS_PER_EPOCH == 0:
            yield {
                "type": "metrics",
                "step": step,
                "epoch": step // STEPS_PER_EPOCH,
                "val_loss": loss + 0.2,
                "val_acc": 0.8,
                "time": now,
            }
        if now >= next_system:
            next_system = now + 5.0
            yield {
                "type": "system",
                "host": {
                    "cpu_percent": 50.0,
                    "cpu_count": 2,
                    "ram_used": 838852608,
                    "ram_total": 25275973632,
                    "ram_percent": 3.3,
                    "process_rss": 738844672,
                    "process_cpu_percent": 99.0,
                    "load_avg": [1.27, 1.49, 2.01],
                },
                "gpus": [],
                "time": now,
            }
    yield {
        "type": "end",
        "status": "completed",
        "step": steps,
        "time": t0 + steps * STEP_SECONDS,
        "elapsed": steps * STEP_SECONDS,
    }


def write_log(path: Path, steps: int) -> int:
    """The log of a `steps`-step run at `path`; its number of events."""
    count = 0
    with path.open("wb") as file:
        for count, event in enumerate(run_events(steps), start=1):
            event["seq"] = count
            file.write(encode_event(event) + b"\n")
    return count


async def _first_screen(run_dir: Path) -> float:
    """Seconds from the replay app's construction to its first screen with the run on it."""
    from tuimon.ui.app import TuimonApp

    started = time.perf_counter()
    app = TuimonApp(run_dir, replay=True)
    async with app.run_test(size=(200, 60)) as pilot:
        while not (app.connection_status == "replay" and app.state.start is not None):
            await pilot.pause(0.01)
        await pilot.pause()  # the refresh that the new state asked for is painted
        return time.perf_counter() - started


# `tuimon doctor` in a child that reports its own peak RSS: VmHWM belongs to the process
# image (ru_maxrss would also count the parent's pages from before the exec).
DOCTOR = """
import re, sys
from tuimon.cli import main
code = main(["doctor", sys.argv[1]])
status = open("/proc/self/status").read()
print("VmHWM", re.search(r"VmHWM:\\s*(\\d+)", status)[1], file=sys.stderr)
sys.exit(code)
"""


def doctor_figures(run_dir: Path) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, first line) of `tuimon doctor RUN_DIR` in a subprocess."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", DOCTOR, str(run_dir)], capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    peak = [line for line in done.stderr.splitlines() if line.startswith("VmHWM ")]
    rss = int(peak[-1].split()[1]) / 1024 if peak else float("nan")
    return seconds, rss, done.stdout.splitlines()[0] if done.stdout else done.stderr[-300:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--no-screen", action="store_true", help="skip the app measurement")
    parser.add_argument("--no-cache", action="store_true", help="skip the state.json figures")
    parser.add_argument("--doctor", action="store_true", help="also measure tuimon doctor")
    parser.add_argument("--dir", help="keep the log here instead of a temporary directory")
    options = parser.parse_args()
    with TemporaryDirectory() as tmp:
        run_dir = Path(options.dir or tmp)
        run_dir.mkdir(parents=True, exist_ok=True)
        log = run_dir / "events.jsonl"
        began = time.perf_counter()
        events = write_log(log, options.steps)
        size = log.stat().st_size / 2**20
        print(
            f"log: {options.steps:,} steps, {events:,} events, {size:.0f} MiB "
            f"(written in {time.perf_counter() - began:.1f}s)"
        )
        began = time.perf_counter()
        state = load_run_state(log)
        print(f"load_run_state: {time.perf_counter() - began:.2f}s (step {state.step:,})")
        cache = run_dir / STATE_FILE
        cache.unlink(missing_ok=True)
        if not options.no_screen:
            seconds = asyncio.run(_first_screen(run_dir))
            print(f"replay to a drawn screen, without state.json: {seconds:.2f}s")
        if not options.no_cache:
            began = time.perf_counter()
            if not write_state_cache(run_dir, state, log):
                sys.exit("could not write state.json")
            size = cache.stat().st_size / 2**20
            print(f"state.json: {size:.1f} MiB (written in {time.perf_counter() - began:.2f}s)")
            began = time.perf_counter()
            cached = load_cached_state(run_dir)
            if cached is None:
                sys.exit("state.json was not used")
            print(f"load_cached_state: {time.perf_counter() - began:.2f}s (step {cached.step:,})")
            del cached
        del state
        if not options.no_cache and not options.no_screen:
            seconds = asyncio.run(_first_screen(run_dir))
            print(f"replay to a drawn screen, with state.json: {seconds:.2f}s")
        if options.doctor:
            seconds, rss, first = doctor_figures(run_dir)
            print(f"tuimon doctor: {seconds:.1f}s, peak RSS {rss:.0f} MiB")
            print(f"  {first}")
        here = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"this process's peak RSS: {here:.0f} MiB")


if __name__ == "__main__":
    main()
