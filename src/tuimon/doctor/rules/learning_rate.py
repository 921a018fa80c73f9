"""The learning rate judged by the update-to-weight ratio ‖Δw‖/‖w‖ (healthy: about 1e-3)."""

from __future__ import annotations

import math
from typing import Any

from tuimon.doctor.context import RunContext
from tuimon.doctor.rule import Rule, Verdict, clear, nice_factor


class LrTooHigh(Rule):
    id = "lr_too_high"
    cause = True
    defaults = {"high": 0.1, "target": 0.01, "patience": 2, "min_progress": 0.05}
    clear_after = 2
    summary = "each step changes the weights by over 10% of their size, and the loss gains nothing"
    fix = "scale the LR down to bring ‖Δw‖/‖w‖ near 1e-2"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.held = 0
        self.loss_at_start = math.nan  # the loss when the big steps last paid off

    def check(self, event: dict[str, Any], ctx: RunContext) -> Verdict | None:
        ratio = event.get("update_ratio")
        if not isinstance(ratio, int | float) or not math.isfinite(ratio):
            return None
        if ratio <= self.p["high"]:
            self.held = 0
            return clear()
        # Big steps that still bring the loss down fast (Adam's first steps) are fine: count
        # only the high-ratio probes since the loss last fell by `min_progress`.
        if self.held == 0 or ctx.loss < (1 - self.p["min_progress"]) * self.loss_at_start:
            self.loss_at_start = ctx.loss
            self.held = 0
        self.held += 1
        if self.held < self.p["patience"]:
            return None
        factor = max(0.01, min(0.5, nice_factor(self.p["target"] / ratio)))
        lr = ctx.lr
        return Verdict(
            True,
            f"each step changes the weights by {ratio:.2g} of their size (healthy ≈ 1e-3)",
            f"{ctx.lr_text()} is too high: try {lr * factor:.3g} (×{factor:g}, press a)"
            if lr
            else f"scale the learning rate by {factor:g}",
            {"update_ratio": ratio, "lr": lr, "factor": factor},
            {"cmd": "scale-lr", "factor": factor},
        )


class LrTooLow(Rule):
    id = "lr_too_low"
    symptom = True
    defaults = {
        "low": 1e-5,
        "target": 1e-3,
        "patience": 3,
        "decayed": 0.1,
        "far_chance": 0.5,
        "far_initial": 0.7,
    }
    suppresses = ("stall", "chance_level")
    clear_after = 2
    needs_finite_loss = True
    summary = "each step barely changes the weights (‖Δw‖/‖w‖ < 1e-5) and the loss is high"
    fix = "scale the LR up to bring ‖Δw‖/‖w‖ near 1e-3"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.held = 0

    def check(self, event: dict[str, Any], ctx: RunContext) -> Verdict | None:
        ratio = event.get("update_ratio")
        if not isinstance(ratio, int | float) or not math.isfinite(ratio):
            return None
        # A schedule that has annealed the LR, or a converged run, are not "too low".
        annealed = ctx.lr is not None and ctx.lr < self.p["decayed"] * ctx.max_lr
        far = ctx.unconverged(self.p["far_chance"], self.p["far_initial"])
        if ratio >= self.p["low"] or annealed or not far:
            self.held = 0
            return clear()
        self.held += 1
        if self.held < self.p["patience"]:
            return None
        factor = min(100.0, max(2.0, nice_factor(self.p["target"] / max(ratio, 1e-12))))
        lr = ctx.lr
        return Verdict(
            True,
            f"each step changes the weights by only {ratio:.2g} of their size (healthy ≈ "
            f"1e-3) while the loss is still {ctx.smoothed:.4g}",
            f"{ctx.lr_text()} is too low: try {lr * factor:.3g} (×{factor:g}, press a)"
            if lr
            else f"scale the learning rate by {factor:g}",
            {"update_ratio": ratio, "lr": lr, "factor": factor},
            {"cmd": "scale-lr", "factor": factor},
        )
