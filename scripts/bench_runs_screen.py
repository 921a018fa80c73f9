"""Measure the runs screen on many long runs: how long it takes to open, and what each
refresh costs.

100 runs of 1e5 steps each (scripts/make_fake_runs.py: real-shaped logs, ~33 MB each,
every state) are written under a temporary root, then:

- open: a fresh RunsApp (and a fresh catalog) under Textual's Pilot, headless at 200x50,
  from `run_test()` until the table holds every run: the app's start, the catalog's first
  read of every log (head and tail), the table filled and drawn;
- refresh, nothing new: the timer's work when no log grew: the catalog's refresh (a stat
  of each run, the pid checks), the machine GPU rows, and the table updated in place;
- refresh, a little appended: the same after 10 steps were appended to each live run's
  log (the append itself is not timed);
- repaint: the CPU time Textual then spends drawing the changed lines of the table.

The median, the 90th percentile and the worst of the repeats are printed (on a busy
machine the worst is mostly other processes' doing); the targets are < 1 s to open and
< 50 ms per refresh.

    python scripts/bench_runs_screen.py
    python scripts/bench_runs_screen.py --runs 100 --steps 100000 --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from tuimon.catalog.catalog import RunCatalog
from tuimon.catalog.machine_gpus import machine_gpus
from tuimon.system.nvml import NVML
from tuimon.ui.runs_app import RunsApp
from tuimon.ui.screens.runs_screen import CatalogRead, RunsScreen

sys.path.insert(0, str(Path(__file__).parent))
from make_fake_runs import LIVE, FakeRun, append_steps, make_fake_runs

# The child of open_in_new_process: what `tuimon --root ROOT` does (runs_launch.py), in
# the same order (the catalog's first read starts before Textual is imported), until the
# table holds every run.
OPEN_CHILD = """
import asyncio, sys
from pathlib import Path
from tuimon.runs_launch import start_first_read
root, count = Path(sys.argv[1]), int(sys.argv[2])
catalog = start_first_read([root])
from tuimon.system.nvml import NVML
from tuimon.ui.runs_app import RunsApp

async def main():
    app = RunsApp([root], catalog=catalog, nvml=NVML(), refresh_s=3600.0)
    async with app.run_test(size=(200, 50)) as pilot:
        while len(app.runs_screen.table.run_dirs) < count:
            await pilot.pause(0.01)

asyncio.run(main())
"""
SIZE = (200, 50)
# How often a measurement looks at the table: 10 ms (a tighter loop would itself take the
# GIL from the catalog's thread, and the figures are read to 10 ms anyway).
POLL_S = 0.01
NO_TIMER = 3600.0  # the app's own timer stays out of the measurements


async def open_once(root: Path, count: int, nvml: NVML) -> float:
    """Seconds from starting the app to a table holding `count` rows."""
    began = time.perf_counter()
    app = RunsApp([root], nvml=nvml, refresh_s=NO_TIMER)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.runs_screen
        while len(screen.table.run_dirs) < count:
            await pilot.pause(POLL_S)
        took = time.perf_counter() - began
    return took


def open_in_new_process(root: Path, count: int) -> float:
    """Seconds for `python` to start, import the UI, open the screen on every run and exit:
    what a user waits for after typing `tuimon` (an upper bound: the exit is included)."""
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", OPEN_CHILD, str(root), str(count)],
        capture_output=True,
        text=True,
    )
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"the open in a new process failed:\n{done.stderr}")
    return took


def refresh_once(screen: RunsScreen, catalog: RunCatalog, nvml: NVML) -> float:
    """One timer tick's work, as the screen does it (here all on one thread)."""
    began = time.perf_counter()
    runs = catalog.refresh()
    gpus, reason = machine_gpus(runs, catalog.latest_system(), nvml)
    screen.catalog_read(CatalogRead(runs, gpus, reason, 0.0))
    return time.perf_counter() - began


async def refresh_and_paint(
    pilot: Any, screen: RunsScreen, catalog: RunCatalog, nvml: NVML, paint_cpu: list[float]
) -> float:
    """One tick (timed on the wall clock), then the repaint it causes (timed as this
    process's CPU time: Pilot's wait for the next frame is idle, not cost)."""
    took = refresh_once(screen, catalog, nvml)
    cpu = time.process_time()
    await pilot.pause()
    paint_cpu.append(time.process_time() - cpu)
    return took


async def refreshes(
    root: Path, runs: list[FakeRun], nvml: NVML, repeats: int, paint_cpu: list[float]
) -> tuple[list[float], list[float]]:
    catalog = RunCatalog([root])
    app = RunsApp([root], catalog=catalog, nvml=nvml, refresh_s=NO_TIMER)
    idle: list[float] = []
    grown: list[float] = []
    async with app.run_test(size=SIZE) as pilot:
        screen = app.runs_screen
        while len(screen.table.run_dirs) < len(runs):
            await pilot.pause(POLL_S)
        live = [run for run in runs if run.state in LIVE]
        # Not timed: the first tick after opening (the app's first full paint settles).
        await refresh_and_paint(pilot, screen, catalog, nvml, [])
        for _ in range(repeats):
            idle.append(await refresh_and_paint(pilot, screen, catalog, nvml, paint_cpu))
        for _ in range(repeats):
            for run in live:
                append_steps(run, 10)
            grown.append(await refresh_and_paint(pilot, screen, catalog, nvml, paint_cpu))
        assert len(screen.table.run_dirs) == len(runs)
    return idle, grown


def row(what: str, samples: list[float], target: float) -> str:
    ordered = sorted(samples)
    median, worst = statistics.median(ordered), ordered[-1]
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    verdict = "ok" if median < target else "OVER"
    return (
        f"{what:<38} {median * 1e3:>9.1f} {p90 * 1e3:>9.1f} {worst * 1e3:>9.1f}"
        f" {target * 1e3:>8.0f}  {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5, help="opens (refreshes: 8x as many)")
    options = parser.parse_args()
    with TemporaryDirectory(prefix="tuimon-bench-runs-") as tmp:
        root = Path(tmp) / "runs"
        began = time.perf_counter()
        runs = make_fake_runs(root, options.runs, options.steps)
        size = sum(run.log.stat().st_size for run in runs)
        print(
            f"{len(runs)} runs of {options.steps} steps: {size / 1e9:.1f} GB of logs, "
            f"written in {time.perf_counter() - began:.0f}s"
        )
        nvml = NVML()
        opens = [asyncio.run(open_once(root, len(runs), nvml)) for _ in range(options.repeats)]
        fresh = [open_in_new_process(root, len(runs)) for _ in range(options.repeats)]
        paint: list[float] = []
        idle, grown = asyncio.run(refreshes(root, runs, nvml, 8 * options.repeats, paint))
        live = sum(1 for run in runs if run.state in LIVE)
        print(f"\n{'measure':<38} {'median ms':>9} {'p90 ms':>9} {'worst ms':>9} {'target':>8}")
        print(row("open (until every row is shown)", opens, 1.0))
        print(row("open in a new process (python -m)", fresh, 1.0))
        print(row("refresh, nothing new", idle, 0.05))
        print(row(f"refresh, 10 steps on {live} live runs", grown, 0.05))
        print(row("repaint after a refresh (CPU)", paint, 0.05))
        nvml.shutdown()


if __name__ == "__main__":
    main()
