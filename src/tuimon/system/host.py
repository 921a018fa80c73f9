"""Host load through psutil: CPU, RAM and this process's memory."""

from __future__ import annotations

import os

import psutil

from tuimon.run.events import HostSample


class HostSampler:
    def __init__(self, pid: int | None = None) -> None:
        self._process = psutil.Process(pid or os.getpid())
        # cpu_percent(None) measures since the previous call; prime both counters.
        psutil.cpu_percent(None)
        self._process.cpu_percent(None)

    def sample(self) -> HostSample:
        memory = psutil.virtual_memory()
        sample: HostSample = {
            "cpu_percent": psutil.cpu_percent(None),
            "cpu_count": psutil.cpu_count(),
            "ram_used": memory.total - memory.available,
            "ram_total": memory.total,
            "ram_percent": memory.percent,
        }
        try:
            with self._process.oneshot():
                sample["process_rss"] = self._process.memory_info().rss
                sample["process_cpu_percent"] = self._process.cpu_percent(None)
        except (psutil.Error, OSError):
            sample["process_rss"] = None
            sample["process_cpu_percent"] = None
        try:
            sample["load_avg"] = list(os.getloadavg())
        except (OSError, AttributeError):
            sample["load_avg"] = None
        return sample
