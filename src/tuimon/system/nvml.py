"""NVML, queried so that a missing driver, GPU or field is a value (None), never an error.

Every call goes through `_query`, which turns any NVMLError into None (shown as "n/a");
a function the installed driver lacks is remembered and not called again. NVML is loaded
lazily, on the sampler thread, and never from the UI.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from tuimon.run.events import GpuSample


class NVML:
    """Per-GPU samples through NVML; `reason` says why there are none."""

    def __init__(self, module: Any = None) -> None:
        # pynvml, or anything with its functions (a test's recorded GPUs); None: loaded
        # on first use.
        self._module: Any = module
        self._lock = threading.Lock()
        self._initialized = False
        self.available = False
        self.reason = "NVML not initialized yet"
        self.driver_version: str | None = None
        self.cuda_driver_version: int | None = None
        self._missing_functions: set[str] = set()

    def init(self) -> bool:
        """Load and initialize NVML once; False (with `reason`) when there is no usable GPU."""
        with self._lock:
            if self._initialized:
                return self.available
            self._initialized = True
            try:
                if self._module is None:
                    import pynvml

                    self._module = pynvml
                self._module.nvmlInit()
            except ImportError:
                self.reason = "nvidia-ml-py is not installed"
                return False
            except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, …
                self.reason = _describe_error(exc)
                return False
            count = self._query("nvmlDeviceGetCount")
            if not count:
                self.reason = "no NVIDIA GPU found by NVML"
                return False
            self.available = True
            self.reason = ""
            self.driver_version = _text(self._query("nvmlSystemGetDriverVersion"))
            self.cuda_driver_version = self._query("nvmlSystemGetCudaDriverVersion")
            return True

    def shutdown(self) -> None:
        with self._lock:
            if self.available and self._module is not None:
                self._query("nvmlShutdown")
            self.available = False
            self._initialized = False

    def sample(self, pid: int | None = None) -> list[GpuSample]:
        """One dict per GPU; any field NVML cannot give is None."""
        if not self.init():
            return []
        nv = self._module
        assert nv is not None
        pid = os.getpid() if pid is None else pid
        devices: list[GpuSample] = []
        for index in range(self._query("nvmlDeviceGetCount") or 0):
            handle = self._query("nvmlDeviceGetHandleByIndex", index)
            if handle is None:
                devices.append({"index": index, "name": None})
                continue
            util = self._query("nvmlDeviceGetUtilizationRates", handle)
            memory = self._query("nvmlDeviceGetMemoryInfo", handle)
            temperature = self._query(
                "nvmlDeviceGetTemperature", handle, getattr(nv, "NVML_TEMPERATURE_GPU", 0)
            )
            power = self._query("nvmlDeviceGetPowerUsage", handle)
            limit = self._query("nvmlDeviceGetEnforcedPowerLimit", handle)
            devices.append(
                {
                    "index": index,
                    "name": _text(self._query("nvmlDeviceGetName", handle)),
                    "uuid": _text(self._query("nvmlDeviceGetUUID", handle)),
                    "util": _field(util, "gpu"),
                    "mem_util": _field(util, "memory"),
                    "mem_used": _field(memory, "used"),
                    "mem_total": _field(memory, "total"),
                    "temperature": temperature,
                    "power_w": power / 1000 if isinstance(power, int | float) else None,
                    "power_limit_w": limit / 1000 if isinstance(limit, int | float) else None,
                    "process_mem": self._process_memory(handle, pid),
                }
            )
        return devices

    def _process_memory(self, handle: Any, pid: int) -> int | None:
        """GPU memory this process holds on a device; None if NVML cannot tell.

        No process on the GPU means this run holds nothing there (0). Processes without us
        may mean we do not use it, or that we run in a container without the host's PID
        namespace (NVML reports host PIDs): that is "n/a", not 0.
        """
        processes = self._query("nvmlDeviceGetComputeRunningProcesses", handle)
        if processes is None:
            return None
        for process in processes:
            if getattr(process, "pid", None) == pid:
                used = getattr(process, "usedGpuMemory", None)
                return used if isinstance(used, int) else None
        return None if processes else 0

    def _query(self, name: str, *args: Any) -> Any:
        if name in self._missing_functions or self._module is None:
            return None
        function = getattr(self._module, name, None)
        if function is None:
            self._missing_functions.add(name)
            return None
        try:
            return function(*args)
        except Exception as exc:
            if type(exc).__name__ == "NVMLError_FunctionNotFound":
                self._missing_functions.add(name)
            return None


def _field(struct: Any, name: str) -> Any:
    return getattr(struct, name, None) if struct is not None else None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None


def _describe_error(exc: Exception) -> str:
    kind = type(exc).__name__
    if "LibraryNotFound" in kind:
        return "NVML library not found: no NVIDIA driver on this machine"
    if "DriverNotLoaded" in kind:
        return "NVIDIA driver not loaded"
    if "LibRmVersionMismatch" in kind:
        return "NVIDIA driver and library versions differ (reboot or reload the driver)"
    if "NoPermission" in kind:
        return "no permission to query NVML"
    return f"NVML failed to start: {exc}"
