"""The learning rate judged by the update-to-weight ratio ‖Δw‖/‖w‖ (healthy: about 1e-3)."""

from __future__ import annotations

import math

from tuimon.control.commands import SCALE_LR
from tuimon.doctor.context import RunContext
from tuimon.doctor.rule import Rule, Verdict, clear, nice_factor
from tuimon.doctor.streak import Streak
from tuimon.run.events import StepEvent


class LrTooHigh(Rule[StepEvent]):
    id = "lr_too_high"
    cause = True
    defaults = {
        "high": 0.1,
        "target": 0.01,
        "warmup": 10,
        "patience": 2,
        "min_progress": 0.05,
        "rise": 0.5,
    }
    clear_after = 2
    summary = (
        "past the first steps, each step changes the weights by over 10% of their size "
        "and the loss gains nothing"
    )
    fix = "scale the LR down to bring ‖Δw‖/‖w‖ near 1e-2"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.big_steps = Streak(self.p["patience"])  # high-ratio probes since the last progress
        self.loss_at_start = math.nan  # the loss when the big steps last paid off
        self.lowest = math.inf  # the lowest smoothed loss so far

    def check(self, event: StepEvent, ctx: RunContext) -> Verdict | None:
        smoothed = ctx.smoothed
        if smoothed is not None:
            self.lowest = min(self.lowest, smoothed)
        ratio = event.get("update_ratio")
        if not isinstance(ratio, int | float) or not math.isfinite(ratio):
            return None
        # The first steps are not judged: adaptive optimizers (Adadelta at LR 1, as in
        # pytorch/examples' MNIST) take big steps on small fresh weights, then settle.
        if ratio <= self.p["high"] or ctx.step < self.p["warmup"] or smoothed is None:
            self.big_steps.reset()
            return clear()
        # Big steps that still bring the loss down are fine. Steps that made the loss
        # climb well above its lowest are judged at once; a loss that merely stands still
        # needs `patience` high-ratio probes without `min_progress` between them.
        rising = smoothed > (1 + self.p["rise"]) * self.lowest
        if not self.big_steps.count or ctx.loss < (1 - self.p["min_progress"]) * self.loss_at_start:
            self.loss_at_start = ctx.loss
            self.big_steps.reset()
        if not self.big_steps.hold() and not rising:
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
            {"cmd": SCALE_LR, "factor": factor},
        )


EARLY_STEPS = 10  # a gradient's early level: its largest norm over these first steps


class LrTooLow(Rule[StepEvent]):
    id = "lr_too_low"
    symptom = True
    defaults = {
        "low": 1e-5,
        "target": 1e-3,
        "patience": 3,
        "decayed": 0.1,
        "far_chance": 0.5,
        "far_initial": 0.7,
        "min_grad": 0.01,
        "still_layers": 0.5,
    }
    suppresses = ("stall", "chance_level")
    clear_after = 2
    needs_finite_loss = True
    summary = (
        "each step barely changes the weights (‖Δw‖/‖w‖ < 1e-5) though the gradient is not "
        "negligible, and the loss is high"
    )
    fix = "scale the LR up to bring ‖Δw‖/‖w‖ near 1e-3"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.tiny_steps = Streak(self.p["patience"])  # probes with ‖Δw‖/‖w‖ under `low`
        self.early_grad = 0.0  # the largest gradient norm of the first steps
        self.last_lr: float | None = None  # at the previous probe

    def check(self, event: StepEvent, ctx: RunContext) -> Verdict | None:
        grad = event.get("grad_norm")
        grad = float(grad) if isinstance(grad, int | float) and math.isfinite(grad) else None
        if grad is not None and ctx.step <= EARLY_STEPS:
            self.early_grad = max(self.early_grad, grad)
        ratio = event.get("update_ratio")
        if not isinstance(ratio, int | float) or not math.isfinite(ratio):
            return None
        # A warm-up schedule starts the LR tiny on purpose: no verdict while it still rises.
        rising = ctx.lr is not None and self.last_lr is not None and ctx.lr > self.last_lr
        self.last_lr = ctx.lr
        if rising:
            self.tiny_steps.reset()
            return None
        # A schedule that has annealed the LR, or a converged run, are not "too low".
        annealed = ctx.lr is not None and ctx.lr < self.p["decayed"] * ctx.max_lr
        far = ctx.unconverged(self.p["far_chance"], self.p["far_initial"])
        if ratio >= self.p["low"] or annealed or not far or self._no_gradient(event, grad):
            self.tiny_steps.reset()
            return clear()
        if not self.tiny_steps.hold():
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
            {"cmd": SCALE_LR, "factor": factor},
        )

    def _no_gradient(self, event: StepEvent, grad: float | None) -> bool:
        """Tiny updates because there is (almost) nothing to follow, not because of the LR:
        the gradient fell to a sliver of its early level, or most layers did not move at
        all (dead units; dead_relu and vanishing_gradients name those)."""
        if grad is not None and grad < self.p["min_grad"] * self.early_grad:
            return True
        layers = event.get("layer_update_ratios") or {}
        still = sum(1 for value in layers.values() if value == 0)
        return bool(layers) and still >= self.p["still_layers"] * len(layers)
