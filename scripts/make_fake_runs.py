"""Write many realistic run directories under a root: for benchmarks of the runs screen
and `tuimon ls` (scripts/bench_runs_screen.py imports it), and for trying them by hand.

Each run's log has the shape a real run writes (run/events.py, encoded by the event log's
codec): a start event, step events of ~330 bytes (per-layer norms every 20 steps, update
ratios every 50), batch and stale-gradient probes, a GPU system sample every 100 steps,
validation metrics every epoch. The runs cycle through every state: completed (with the
state.json a finished run leaves), running, failed, paused, stopped, died. A running or
paused run names a live pid (the caller's process by default); a died one names a pid
that is gone. Some runs carry an alert that fires early and is never cleared, some one
in their tail.

    python scripts/make_fake_runs.py /tmp/runs --runs 100 --steps 100000
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tuimon.run.event_codec import encode_event
from tuimon.run.events import COMPLETED, FAILED, PAUSED, RUNNING, STOPPED
from tuimon.run.replay_cache import write_state_cache
from tuimon.run.run_dir import EVENTS_FILE
from tuimon.run.run_state import RunState

DIED = "died"
STATES = (COMPLETED, RUNNING, FAILED, PAUSED, STOPPED, DIED)
LIVE = (RUNNING, PAUSED)
LAYERS = ("net.1", "net.3", "net.5")
STEPS_PER_EPOCH = 390
STEP_SECONDS = 0.01
TAIL_STEPS = 400  # each run's own last steps (the rest of the body is shared bytes)
GPU_MEM = 7 << 30


@dataclass
class FakeRun:
    run_dir: Path
    state: str  # the state the catalog should report
    steps: int  # steps written so far
    started: float
    seq: int  # the last event's seq

    @property
    def log(self) -> Path:
        return self.run_dir / EVENTS_FILE


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def make_fake_runs(
    root: Path,
    runs: int,
    steps: int,
    *,
    alive_pid: int | None = None,
    gone_pid: int | None = None,
) -> list[FakeRun]:
    """`runs` run directories of `steps` steps each under `root`, states cycling through
    STATES. `alive_pid` (default: this process) is the worker of running and paused runs."""
    root.mkdir(parents=True, exist_ok=True)
    alive_pid = os.getpid() if alive_pid is None else alive_pid
    gone_pid = dead_pid() if gone_pid is None else gone_pid
    alive_since = psutil.Process(alive_pid).create_time()
    body_steps = max(0, steps - TAIL_STEPS)
    # Encoded once and shared by every run, so its times start at 0 (not Unix time): the
    # benches read the tail; an export of a fake run shows a negative `elapsed`.
    body, body_events = _encoded(_steps(1, body_steps, steps, t0=0.0, seq=3, gpu=0))
    made = []
    now = time.time()
    for number in range(runs):
        state = STATES[number % len(STATES)]
        live = state in LIVE
        started = max(alive_since + 0.5, now - 60) if live else now - 3600 * (number + 1)
        started += number * 1e-3  # distinct: a stable order
        run_dir = root / f"fake-{number:03d}-{state}"
        run_dir.mkdir(parents=True, exist_ok=True)
        pid = alive_pid if live else gone_pid
        head = [_start(run_dir, number, steps, pid, started)]
        early_alert = number % 4 == 0
        if early_alert:  # fires at the start and stays open: not in any tail
            head.append(_alert("lr_too_high", "warning", 1, started))
        else:
            head.append(_message("warming up", started))
        for seq, event in enumerate(head, start=1):
            event["seq"] = seq
        tail_events = list(
            _steps(
                body_steps + 1,
                steps,
                steps,
                t0=started,
                seq=3 + body_events,
                gpu=number % 8,
                scale=1 + 0.05 * number,
            )
        )
        if number % 3 == 1:
            tail_events.append(_alert("stall", "error", steps, started + steps * STEP_SECONDS))
        if state == PAUSED:
            tail_events.append(_control("pause", RUNNING, PAUSED, steps, started))
        if state in (COMPLETED, FAILED, STOPPED):
            tail_events.append(_end(state, steps, started))
        seq = 2 + body_events
        for seq, event in enumerate(tail_events, start=3 + body_events):
            event["seq"] = seq
        with (run_dir / EVENTS_FILE).open("wb") as file:
            file.write(b"".join(encode_event(e) + b"\n" for e in head))
            file.write(body)
            file.write(b"".join(encode_event(e) + b"\n" for e in tail_events))
        if state == COMPLETED:  # a finished run's cache, as its worker writes it
            state_of_run = RunState()
            state_of_run.apply_many([*head, *tail_events])
            write_state_cache(run_dir, state_of_run, run_dir / EVENTS_FILE)
        made.append(FakeRun(run_dir, state, steps, started, seq))
    return made


def append_steps(run: FakeRun, count: int) -> int:
    """`count` more steps at the end of a run's log (as its worker would write them); the
    bytes written."""
    events = list(
        _steps(run.steps + 1, run.steps + count, run.steps + count, t0=run.started, seq=run.seq + 1)
    )
    data = b"".join(encode_event(e) + b"\n" for e in events)
    with run.log.open("ab") as file:
        file.write(data)
    run.steps += count
    run.seq += len(events)
    return len(data)


def _encoded(events: Any) -> tuple[bytes, int]:
    lines = [encode_event(e) + b"\n" for e in events]
    return b"".join(lines), len(lines)


def step_event(
    step: int,
    total: int,
    now: float,
    noise: float,
    loss: float,
    *,
    samples: int,
    step_seconds: float,
    steps_per_epoch: int = STEPS_PER_EPOCH,
) -> dict[str, Any]:
    """A step event shaped like a real run's (cosine LR, per-layer norms every 20 steps,
    update ratios every 50): shared by the benches' fake logs."""
    event: dict[str, Any] = {
        "type": "step",
        "step": step,
        "epoch": step // steps_per_epoch,
        "time": now,
        "lr": 0.05 * (1 + math.cos(math.pi * step / total)) / 2,
        "step_time": step_seconds * (0.9 + 0.2 * noise),
        "data_time": step_seconds * 0.1 * noise,
        "samples": samples,
        "optimizer_steps": 1,
        "samples_per_s": samples / step_seconds,
        "loss": loss,
        "grad_norm": 0.5 + noise,
    }
    if step % 20 == 0:
        event["layer_grad_norms"] = {name: 0.1 * (i + 1) for i, name in enumerate(LAYERS)}
    if step % 50 == 0:
        event["update_ratio"] = 1e-3 * (1 + noise)
        event["layer_update_ratios"] = {name: 1e-3 * (i + 1) for i, name in enumerate(LAYERS)}
    return event


def _steps(
    first: int, last: int, total: int, *, t0: float, seq: int, gpu: int = 0, scale: float = 1.0
) -> Any:
    """The events of steps first..last (of `total`), numbered from `seq`."""
    for step in range(first, last + 1):
        now = t0 + step * STEP_SECONDS
        noise = math.sin(step * 12.9898) * 43758.5453 % 1
        loss = scale * (2.3 * math.exp(-step / (total / 5)) + 0.1 + 0.05 * noise)
        events: list[dict[str, Any]] = []
        if step % 20 == 0:
            events.append(_batch_probe(step, now))
        if step % 10 == 1:
            events.append(
                {"type": "probe", "probe": "stale_grad", "step": step, "stale": False,
                 "param": "net.5.bias", "time": now}
            )  # fmt: skip
        event = step_event(step, total, now, noise, loss, samples=128, step_seconds=STEP_SECONDS)
        events.append(event)
        if step % STEPS_PER_EPOCH == 0:
            events.append({"type": "metrics", "step": step, "val_loss": loss + 0.2, "time": now})
        if step % 100 == 0:
            events.append(_system(gpu, now))
        for event in events:
            event["seq"] = seq
            seq += 1
            yield event


def _start(run_dir: Path, number: int, steps: int, pid: int, started: float) -> dict[str, Any]:
    return {
        "type": "start",
        "name": f"fake{number}",
        "run_dir": str(run_dir),
        "pid": pid,
        "host": socket.gethostname(),
        "argv": ["train.py"],
        "config": {"name": f"fake{number}", "optimizer": {"name": "SGD", "lr": 0.05}},
        "model": {"class": "MLP", "params": 55050, "trainable": 55050, "layers": list(LAYERS)},
        "optimizer": {"class": "SGD", "param_groups": 1, "lrs": [0.05]},
        "total_steps": steps,
        "steps_per_epoch": STEPS_PER_EPOCH,
        "start_step": 0,
        "time": started,
    }


def _batch_probe(step: int, now: float) -> dict[str, Any]:
    return {
        "type": "probe",
        "probe": "batch",
        "step": step,
        "inputs": {"count": 100352, "floating": True, "nonfinite": 0.0, "mean": -0.02,
                   "std": 1.0, "min": -4.0, "max": 3.9},
        "outputs": {"classes": 10, "min": -0.31, "max": 0.45, "row_sum_error": 1.45},
        "targets": {"counts": [13.0, 10.0, 12.0, 11.0, 10.0, 20.0, 15.0, 8.0, 13.0, 16.0]},
        "time": now,
    }  # fmt: skip


def _system(gpu: int, now: float) -> dict[str, Any]:
    gpus = [
        {"index": i, "name": "NVIDIA H100 80GB HBM3", "util": 97.0 if i == gpu else 0.0,
         "mem_used": GPU_MEM + (1 << 28) if i == gpu else 1 << 20, "mem_total": 85520809984,
         "process_mem": GPU_MEM if i == gpu else 0}
        for i in range(8)
    ]  # fmt: skip
    return {"type": "system", "host": {"cpu_percent": 50.0, "ram_used": 838852608,
            "ram_total": 25275973632}, "gpus": gpus, "time": now}  # fmt: skip


def _alert(rule: str, severity: str, step: int, now: float) -> dict[str, Any]:
    return {"type": "alert", "step": step, "rule": rule, "severity": severity,
            "message": f"{rule} at step {step}", "time": now}  # fmt: skip


def _message(text: str, now: float) -> dict[str, Any]:
    return {"type": "message", "step": 0, "level": "info", "text": text, "time": now}


def _control(command: str, old: str, new: str, step: int, started: float) -> dict[str, Any]:
    return {"type": "control", "step": step, "command": command, "old": old, "new": new,
            "source": "ctl", "time": started + step * STEP_SECONDS}  # fmt: skip


def _end(status: str, steps: int, started: float) -> dict[str, Any]:
    end: dict[str, Any] = {"type": "end", "status": status, "step": steps,
                           "time": started + steps * STEP_SECONDS}  # fmt: skip
    if status == FAILED:
        end["error"] = "Traceback (most recent call last):\nRuntimeError: fake failure"
    return end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument(
        "--alive-pid",
        type=int,
        help="the worker pid of running and paused runs (default: none"
        " that lives on: they read as died once this script exits)",
    )
    options = parser.parse_args()
    begun = time.perf_counter()
    runs = make_fake_runs(options.root, options.runs, options.steps, alive_pid=options.alive_pid)
    size = sum(run.log.stat().st_size for run in runs)
    print(
        f"{len(runs)} runs of {options.steps} steps under {options.root}: "
        f"{size / 1e6:.0f} MB of logs in {time.perf_counter() - begun:.1f}s"
    )


if __name__ == "__main__":
    main()
