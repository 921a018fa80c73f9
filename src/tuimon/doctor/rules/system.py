"""Rules on the machine: GPU memory headroom."""

from __future__ import annotations

from typing import Any

from tuimon.doctor.context import RunContext
from tuimon.doctor.rule import Rule, Verdict, clear


class GpuMemoryPressure(Rule):
    id = "gpu_memory_pressure"
    events = ("system",)
    defaults = {"threshold": 0.95, "patience": 3}
    summary = "GPU memory is near its limit"
    fix = "smaller batch, mixed precision, gradient checkpointing"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.held = 0

    def check(self, event: dict[str, Any], ctx: RunContext) -> Verdict | None:
        known = [
            (gpu, gpu["mem_used"] / gpu["mem_total"])
            for gpu in event.get("gpus") or []
            if isinstance(gpu.get("mem_used"), int | float)
            and isinstance(gpu.get("mem_total"), int | float)
            and gpu["mem_total"] > 0
        ]
        fullest = max(known, key=lambda pair: pair[1]) if known else None
        if fullest is None:
            return None
        gpu, share = fullest
        if share < self.p["threshold"]:
            self.held = 0
            return clear()
        self.held += 1
        if self.held < self.p["patience"]:
            return None
        gib = 2**30
        return Verdict(
            True,
            f"GPU{gpu.get('index', 0)} memory is {share:.0%} full "
            f"({gpu['mem_used'] / gib:.1f} of {gpu['mem_total'] / gib:.1f} GiB)",
            "an out-of-memory error is near: lower the batch size, use mixed precision "
            "(torch.autocast), or gradient checkpointing",
            {"gpu": gpu.get("index", 0), "share": share},
        )
