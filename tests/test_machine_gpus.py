"""The machine's GPU rows: from a live run's fresh system sample, else NVML sampled here
(recorded real GPUs through tests/fake_pynvml.py; the real no-driver path of this
machine), and which run holds memory on which GPU."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pynvml

from tuimon.catalog.machine_gpus import FRESH_SYSTEM_S, NO_SAMPLE, machine_gpus
from tuimon.catalog.run_summary import DIED, RunSummary
from tuimon.run.events import COMPLETED, PAUSED, RUNNING, SYSTEM
from tuimon.system.nvml import NVML

from fake_pynvml import FakeNVML, recorded_machines

HERE = socket.gethostname()


def machine_with(name: str) -> dict:
    return next(m for m in recorded_machines() if any(d.get("name") == name for d in m["devices"]))


def run(name: str, status: str, gpus: list[int], host: str = HERE) -> RunSummary:
    return RunSummary(run_dir=Path("runs") / name, name=name, status=status, gpus=gpus, host=host)


def system_event(age: float) -> dict:
    gpus = [
        {"index": 1, "name": "B", "util": 50.0, "mem_used": 2 << 30, "mem_total": 80 << 30},
        {"index": 0, "name": "A", "util": 97.0, "mem_used": 9 << 30, "mem_total": 80 << 30},
        {"index": "x", "name": "damaged"},
    ]
    return {"type": SYSTEM, "gpus": gpus, "time": time.time() - age}


def test_a_fresh_sample_of_a_live_run_gives_every_gpu_and_who_uses_it():
    summaries = [
        run("train-a", RUNNING, [0]),
        run("train-b", PAUSED, [0, 1]),
        run("finished", COMPLETED, [1]),  # ended: holds nothing now
        run("killed", DIED, [0]),
        run("elsewhere", RUNNING, [0], host="another-host"),  # its GPU 0 is not ours
    ]
    nvml = NVML(module=FakeNVML(machine_with("NVIDIA H100 80GB HBM3")))
    rows, reason = machine_gpus(summaries, system_event(age=1.0), nvml)
    assert reason == ""
    assert [(r.index, r.name, r.util, r.mem_used) for r in rows] == [
        (0, "A", 97.0, 9 << 30),
        (1, "B", 50.0, 2 << 30),
    ]
    assert rows[0].runs == ["train-a", "train-b"] and rows[1].runs == ["train-b"]
    assert rows[0].mem_total == 80 << 30


def test_without_a_fresh_sample_the_gpus_are_sampled_here():
    machine = machine_with("NVIDIA A100-SXM4-80GB")
    nvml = NVML(module=FakeNVML(machine))
    stale = system_event(age=FRESH_SYSTEM_S + 5)
    rows, reason = machine_gpus([run("train", RUNNING, [1])], stale, nvml)
    assert reason == "" and len(rows) == len(machine["devices"]) == 8
    assert rows[1].util == 100 and rows[1].runs == ["train"]
    assert rows[0].name == "NVIDIA A100-SXM4-80GB" and rows[0].mem_total is not None
    # No sample at all: the same.
    assert len(machine_gpus([], None, nvml)[0]) == 8


def test_not_supported_readings_are_none():
    nvml = NVML(module=FakeNVML(machine_with("NVIDIA GeForce GTX 680")))
    [row] = machine_gpus([], None, nvml)[0]
    assert row.name == "NVIDIA GeForce GTX 680" and row.util is None


def test_no_driver_gives_no_rows_and_says_why(monkeypatch):
    # The real pynvml with its shared library absent, as on any machine without a driver.
    def no_library(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "CDLL", no_library)
    rows, reason = machine_gpus([run("train", RUNNING, [0])], None, NVML())
    assert rows == [] and "NVML library not found" in reason


def test_this_machine_s_own_nvml_never_raises():
    rows, reason = machine_gpus([], None, NVML())
    assert rows or reason  # GPUs, or why there are none


def test_a_run_that_samples_no_gpu_says_so_and_no_nvml_is_no_sample():
    event = {
        "type": SYSTEM,
        "gpus": [],
        "gpu_status": "no NVIDIA GPU (driver)",
        "time": time.time(),
    }
    assert machine_gpus([], event, None) == ([], "no NVIDIA GPU (driver)")
    assert machine_gpus([], None, None) == ([], NO_SAMPLE)
