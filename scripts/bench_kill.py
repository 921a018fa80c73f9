"""How much of a run's log a `kill -9` loses: seconds between the last event on disk and
the kill.

A real training loop under tuimon.Monitor runs in a child process and records, after
every step, the step it reached in a side file (one `pwrite` of 8 bytes: no buffering to
lose). It is killed with SIGKILL at a random moment; the last `step` event in its
`events.jsonl` is then compared with the step the loop had reached and with the time of
the kill. Repeated `--kills` times; prints the median and the worst case.

    python scripts/bench_kill.py --kills 20
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tuimon.run.log_reader import read_events

LOOP = """
import os, struct, sys, time
import torch
import tuimon

side = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT, 0o600)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
with tuimon.Monitor(model, optimizer, run_dir=sys.argv[1], quiet=True) as mon:
    step = 0
    while True:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mon.step(loss)
        step += 1
        os.pwrite(side, struct.pack("<id", step, time.time())[:12], 0)
"""


def one_kill(base: Path, index: int, rng: random.Random) -> tuple[float, int]:
    run_dir, side = base / f"run{index}", base / f"side{index}"
    script = base / "loop.py"
    script.write_text(LOOP)
    child = subprocess.Popen([sys.executable, str(script), str(run_dir), str(side)])
    deadline = time.monotonic() + 120
    while not (side.is_file() and side.stat().st_size >= 12):  # the loop is stepping
        if time.monotonic() > deadline or child.poll() is not None:
            raise RuntimeError("the training loop never started")
        time.sleep(0.05)
    time.sleep(rng.uniform(1.0, 4.0))
    child.send_signal(signal.SIGKILL)
    killed_at = time.time()
    child.wait()
    reached, _ = struct.unpack("<id", side.read_bytes()[:12])
    steps = [e for e in read_events(run_dir / "events.jsonl") if e.get("type") == "step"]
    last_time = steps[-1]["time"] if steps else 0.0
    last_step = steps[-1]["step"] if steps else 0
    return killed_at - last_time, reached - last_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        results = [one_kill(Path(tmp), i, rng) for i in range(args.kills)]
    seconds = [s for s, _ in results]
    steps = [n for _, n in results]
    print(
        f"{args.kills} kills: log lost median {statistics.median(seconds):.3f} s "
        f"(max {max(seconds):.3f} s), median {statistics.median(steps)} steps "
        f"(max {max(steps)})"
    )


if __name__ == "__main__":
    os.environ.setdefault("TUIMON_QUIET", "1")
    main()
