"""Rules on mixed precision: a GradScaler's loss scale that keeps collapsing.

Under float16 a `torch.amp.GradScaler` multiplies the loss by its scale before backward,
skips `optimizer.step()` when the gradients hold inf/NaN and halves the scale, and doubles
it again after `growth_interval` good steps in a row. A healthy scaler skips a few steps at
the start while it finds its scale (from 2^16 down), then at most one step per
`growth_interval` (when it tries a scale one step too high). A scale that falls and falls,
with skipped step after skipped step and no growth back, means something overflows (or is
NaN) on a share of the batches whatever the scale: those steps are lost, and a tiny scale
makes the other steps' small gradients underflow.

The step events carry `loss_scale` (the scale after the step's `update()`) and
`optimizer_steps` (0: the scaler skipped the step). A scaler that skips every step is
`optimizer_not_stepping`'s verdict (the weights do not change at all); this rule names the
scale's collapse in a run that still steps now and then.
"""

from __future__ import annotations

import math
from collections import deque

from tuimon.doctor.context import RunContext
from tuimon.doctor.rule import Rule, Verdict, clear
from tuimon.doctor.streak import Streak
from tuimon.number_text import scale_text
from tuimon.run.events import ERROR, StepEvent
from tuimon.run.field_types import as_number

FIX = (
    "train in bf16 (torch.autocast(dtype=torch.bfloat16): float32's range, no GradScaler "
    "needed) or fp32; lower the LR; clip gradients after scaler.unscale_(optimizer); and "
    "find the op that overflows or makes NaN gradients in float16 (run a few steps under "
    "torch.autograd.detect_anomaly(); the usual ones are exp, pow or a large matmul in "
    "float16, and sqrt, log or a division at 0)"
)


class LossScaleCollapse(Rule[StepEvent]):
    id = "loss_scale_collapse"
    reads_loss = False  # reads the scale and skipped steps only
    cause = True
    # window: steps looked at; skips: skipped steps in it; fall: how far the scale fell
    # from its peak in the window without growing back; min_scale: a scale the optimizer
    # still steps at below this (1) means float16 overflows even unscaled; confirm: such
    # steps in a row.
    defaults = {"window": 100, "skips": 10, "fall": 64.0, "min_scale": 1.0, "confirm": 3}
    suppresses = (
        "optimizer_not_stepping",  # skipping every step after a collapse: one verdict
        "chance_level",
        "stall",
        "lr_too_low",
        "vanishing_gradients",
        "oscillation",
    )
    clear_after = 20
    summary = "a GradScaler's loss scale keeps collapsing: fp16 overflows on many steps, skipped"
    fix = "bf16 (or fp32), a lower LR, clip after unscale_; find the op that overflows in fp16"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        # (step, scale after it, whether the optimizer stepped) since the first real
        # optimizer step: the skips before it are the scaler finding its scale.
        self.recent: deque[tuple[int, float, bool]] = deque(maxlen=max(1, int(self.p["window"])))
        self.skipped = 0  # skipped steps in `recent`
        self.below = Streak(self.p["confirm"])  # stepped steps in a row at a scale < min_scale

    def check(self, event: StepEvent, ctx: RunContext) -> Verdict | None:
        scale, steps = as_number(event.get("loss_scale")), event.get("optimizer_steps")
        if not math.isfinite(scale) or type(steps) is not int:
            return None  # no GradScaler (or a log from before these fields, or damaged)
        stepped = steps > 0
        if not self.recent and not stepped:
            return None  # finding its scale, or never stepping: optimizer_not_stepping's
        if len(self.recent) == self.recent.maxlen and not self.recent[0][2]:
            self.skipped -= 1
        self.recent.append((ctx.step, scale, stepped))
        self.skipped += not stepped
        if stepped:
            self.below.update(scale < self.p["min_scale"])
        if self.below.reached:
            return self._verdict(scale, ctx, below=True)
        if self.skipped < self.p["skips"]:
            return clear()
        peak = max(s for _, s, _ in self.recent)
        if scale > 0 and peak / scale < self.p["fall"]:
            return clear()  # skips, but the scale grows back: the scaler at work
        return self._verdict(scale, ctx, below=False)

    def _verdict(self, scale: float, ctx: RunContext, *, below: bool) -> Verdict:
        peak_step, peak = max(
            ((step, s) for step, s, _ in self.recent), key=lambda item: (item[1], -item[0])
        )
        looked = len(self.recent)
        fell = f"fell from {scale_text(peak)} at step {peak_step} to {scale_text(scale)}"
        skipped = (
            f"the GradScaler skipped {self.skipped} of the last {looked} steps (inf/NaN "
            "gradients), where a healthy one skips a few while it finds its scale, then at "
            "most one per growth_interval"
        )
        if below:
            message = (
                f"the loss scale {fell}, below 1, and the optimizer still steps at it: "
                f"float16 overflows (or the gradients are NaN) even unscaled; {skipped}"
            )
        else:
            message = f"the loss scale {fell} without growing back: {skipped}"
        return Verdict(
            True,
            message,
            f"the skipped steps are lost and the shrinking scale makes the other steps' small "
            f"gradients underflow: {FIX}",
            {
                "scale_from": peak,
                "scale_to": scale,
                "since": peak_step,
                "skipped": self.skipped,
                "window": looked,
                "step": ctx.step,
            },
            severity=ERROR if below else None,
        )
