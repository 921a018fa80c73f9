"""System sampling: NVML degrades to n/a without a GPU; real recorded GPUs read correctly."""

from __future__ import annotations

import ctypes
import threading

import pynvml
import pytest

from tuimon.system.host import HostSampler
from tuimon.system.nvml import NVML
from tuimon.system.sampler import SystemSampler

from fake_pynvml import FakeNVML, recorded_machines


def machine_with(name: str) -> dict:
    return next(m for m in recorded_machines() if any(d.get("name") == name for d in m["devices"]))


def test_missing_nvml_library_is_reported_not_raised(monkeypatch):
    # The real pynvml, with its shared library absent (as on this machine, or any
    # machine without an NVIDIA driver).
    def no_library(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "CDLL", no_library)
    nvml = NVML()
    assert nvml.init() is False
    assert nvml.sample() == []
    assert "NVML library not found" in nvml.reason


def test_system_event_says_why_there_is_no_gpu(monkeypatch):
    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "CDLL", lambda *a, **k: (_ for _ in ()).throw(OSError("x")))
    event = SystemSampler(emit=lambda e: None).sample(HostSampler())
    assert event["type"] == "system" and event["gpus"] == []
    assert event["gpu_status"].startswith("no NVIDIA GPU (NVML library not found")
    host = event["host"]
    assert 0 < host["ram_used"] <= host["ram_total"]
    assert host["process_rss"] > 0 and host["cpu_count"] >= 1


def test_recorded_h100_reads_every_field():
    nvml = NVML(module=FakeNVML(machine_with("NVIDIA H100 80GB HBM3")))
    [gpu] = nvml.sample(pid=12345)
    assert gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["mem_total"] == 85520809984 and gpu["mem_used"] == 1048576
    assert gpu["util"] == 0 and gpu["temperature"] == 34
    assert gpu["power_w"] == pytest.approx(71.53) and gpu["power_limit_w"] == 700
    assert gpu["process_mem"] == 0  # no process on the GPU: this run holds nothing there
    assert nvml.driver_version == "560.35.03" and nvml.cuda_driver_version == 12060


def test_recorded_a100_under_training_finds_this_process():
    machine = machine_with("NVIDIA A100-SXM4-80GB")
    nvml = NVML(module=FakeNVML(machine))
    gpus = nvml.sample(pid=280059)
    assert len(gpus) == 8
    assert gpus[1]["util"] == 100
    assert gpus[1]["process_mem"] == 16768827392
    # Another process's GPU: we cannot tell (different PID namespace?), so n/a, not 0.
    assert gpus[0]["process_mem"] is None


def test_not_supported_fields_become_none():
    nvml = NVML(module=FakeNVML(machine_with("NVIDIA GeForce GTX 680")))
    [gpu] = nvml.sample()
    assert gpu["util"] is None and gpu["mem_util"] is None
    assert gpu["power_w"] is None and gpu["power_limit_w"] is None
    assert gpu["temperature"] == 35 and gpu["mem_total"] == 2097152000
    unified = NVML(module=FakeNVML(machine_with("NVIDIA GB10")))
    [gb10] = unified.sample(pid=114687)
    assert gb10["mem_total"] is None and gb10["mem_used"] is None
    assert gb10["process_mem"] == 20064501760
    assert unified.driver_version is None


def test_a_function_the_driver_lacks_is_not_called_again():
    fake = FakeNVML(machine_with("NVIDIA H100 80GB HBM3"), missing=("nvmlDeviceGetPowerUsage",))
    nvml = NVML(module=fake)
    for _ in range(3):
        [gpu] = nvml.sample()
        assert gpu["power_w"] is None and gpu["temperature"] == 34
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 1


def test_sampler_thread_emits_until_stopped():
    events = []
    enough = threading.Event()

    def emit(event):
        events.append(event)
        if len(events) >= 3:
            enough.set()

    machine = machine_with("NVIDIA H100 80GB HBM3")
    fake = FakeNVML(machine)
    sampler = SystemSampler(emit, interval=0.01, nvml=NVML(module=fake))
    sampler.start()
    assert enough.wait(timeout=10)
    sampler.stop()
    count = len(events)
    assert all(e["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3" for e in events)
    assert fake.initialized is False  # NVML shut down with the thread
    assert len(events) == count  # nothing after stop()


def test_ctypes_is_what_pynvml_loads_with():
    # Guards the monkeypatching above: pynvml loads its library through ctypes.CDLL.
    assert pynvml.CDLL is ctypes.CDLL
