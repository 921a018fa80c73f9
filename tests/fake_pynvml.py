"""A stand-in for the `pynvml` module, fed real recorded `nvidia-smi` values.

There is no GPU where the tests run, so NVML itself cannot be called; this fake answers
NVML's calls from fixtures/nvml_recorded.json (public outputs of real H100, A100, GTX 680
and GB10 machines). A value the source printed as N/A raises NVMLError_NotSupported, as
NVML does.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

RECORDED = Path(__file__).parent / "fixtures" / "nvml_recorded.json"
NOT_SUPPORTED = "NotSupported"
NVML_TEMPERATURE_GPU = 0


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_FunctionNotFound(NVMLError):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


def recorded_machines() -> list[dict[str, Any]]:
    return json.loads(RECORDED.read_text())["machines"]


class FakeNVML:
    """Quacks like the pynvml module for the calls tuimon makes."""

    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported

    def __init__(self, machine: dict[str, Any], missing: tuple[str, ...] = ()) -> None:
        self.machine = machine
        self.calls: dict[str, int] = {}
        self.initialized = False
        for name in missing:
            setattr(self, name, self._missing(name))

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _missing(self, name: str) -> Any:
        def call(*args: Any) -> Any:
            self._count(name)
            raise NVMLError_FunctionNotFound(name)

        return call

    def nvmlInit(self) -> None:
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.initialized = False

    def nvmlSystemGetDriverVersion(self) -> str:
        return _value(self.machine, "driver_version")

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return _value(self.machine, "cuda_driver_version")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.machine["devices"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        return self.machine["devices"][index]

    def nvmlDeviceGetName(self, handle: dict[str, Any]) -> str:
        return _value(handle, "name")

    def nvmlDeviceGetUUID(self, handle: dict[str, Any]) -> str:
        return _value(handle, "uuid")

    def nvmlDeviceGetUtilizationRates(self, handle: dict[str, Any]) -> Any:
        if NOT_SUPPORTED in (handle.get("utilization_gpu"), handle.get("utilization_memory")):
            raise NVMLError_NotSupported()
        return SimpleNamespace(
            gpu=handle.get("utilization_gpu"), memory=handle.get("utilization_memory")
        )

    def nvmlDeviceGetMemoryInfo(self, handle: dict[str, Any]) -> Any:
        if NOT_SUPPORTED in (handle.get("memory_total"), handle.get("memory_used")):
            raise NVMLError_NotSupported()
        return SimpleNamespace(
            total=handle.get("memory_total"),
            used=handle.get("memory_used"),
            free=handle.get("memory_free"),
        )

    def nvmlDeviceGetTemperature(self, handle: dict[str, Any], sensor: int) -> int:
        assert sensor == NVML_TEMPERATURE_GPU
        return _value(handle, "temperature_c")

    def nvmlDeviceGetPowerUsage(self, handle: dict[str, Any]) -> int:
        self._count("nvmlDeviceGetPowerUsage")
        return _value(handle, "power_mw")

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: dict[str, Any]) -> int:
        return _value(handle, "power_limit_mw")

    def nvmlDeviceGetComputeRunningProcesses(self, handle: dict[str, Any]) -> list[Any]:
        if "processes" not in handle:
            raise NVMLError_NotSupported()
        return [
            SimpleNamespace(pid=p["pid"], usedGpuMemory=p["used_gpu_memory"])
            for p in handle["processes"]
            if p.get("type", "C") == "C"
        ]


def _value(record: dict[str, Any], key: str) -> Any:
    value = record.get(key, NOT_SUPPORTED)
    if value == NOT_SUPPORTED:
        raise NVMLError_NotSupported()
    return value
