"""Rules on the machine: GPU memory headroom."""

from __future__ import annotations

from tuimon.doctor.context import RunContext
from tuimon.doctor.rule import Rule, Verdict, clear
from tuimon.doctor.streak import Streak
from tuimon.run.events import SYSTEM, GpuSample, SystemEvent


class GpuMemoryPressure(Rule[SystemEvent]):
    id = "gpu_memory_pressure"
    events = (SYSTEM,)
    defaults = {"threshold": 0.95, "patience": 3}
    summary = "GPU memory is near its limit"
    fix = "smaller batch, mixed precision, gradient checkpointing"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.full = Streak(self.p["patience"])  # samples with the fullest GPU past threshold

    def check(self, event: SystemEvent, ctx: RunContext) -> Verdict | None:
        known: list[tuple[GpuSample, float, float]] = []  # (gpu, used, total) in bytes
        for sample in event.get("gpus") or []:
            in_use, size = sample.get("mem_used"), sample.get("mem_total")
            if isinstance(in_use, int | float) and isinstance(size, int | float) and size > 0:
                known.append((sample, in_use, size))
        fullest = max(known, key=lambda reading: reading[1] / reading[2]) if known else None
        if fullest is None:
            return None
        gpu, used, total = fullest
        share = used / total
        if share < self.p["threshold"]:
            self.full.reset()
            return clear()
        if not self.full.hold():
            return None
        gib = 2**30
        return Verdict(
            True,
            f"GPU{gpu.get('index', 0)} memory is {share:.0%} full "
            f"({used / gib:.1f} of {total / gib:.1f} GiB)",
            "an out-of-memory error is near: lower the batch size, use mixed precision "
            "(torch.autocast), or gradient checkpointing",
            {"gpu": gpu.get("index", 0), "share": share},
        )
