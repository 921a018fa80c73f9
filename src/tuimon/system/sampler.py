"""A background thread that turns host and GPU samples into `system` events."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tuimon.run.events import SYSTEM, SystemEvent
from tuimon.system.host import HostSampler
from tuimon.system.nvml import NVML


class SystemSampler:
    def __init__(
        self,
        emit: Callable[[SystemEvent], Any],
        interval: float = 1.0,
        nvml: NVML | None = None,
    ) -> None:
        self._emit = emit
        self._interval = interval
        self.nvml = nvml or NVML()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuimon-system", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def sample(self, host: HostSampler) -> SystemEvent:
        gpus = self.nvml.sample()
        event: SystemEvent = {"type": SYSTEM, "host": host.sample(), "gpus": gpus}
        if not gpus:
            event["gpu_status"] = f"no NVIDIA GPU ({self.nvml.reason})"
        return event

    def _run(self) -> None:
        try:
            host = HostSampler()
            self.nvml.init()
            while not self._stop.is_set():
                self._emit(self.sample(host))
                self._stop.wait(self._interval)
        finally:
            self.nvml.shutdown()
