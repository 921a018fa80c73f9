"""Rules on the loss curve: non-finite values, divergence, oscillation, stalls, chance level."""

from __future__ import annotations

import math
from collections import deque
from typing import cast

from tuimon.control.commands import RECOVER as RECOVER_COMMAND
from tuimon.control.commands import SCALE_LR
from tuimon.doctor.context import RunContext
from tuimon.doctor.rule import Rule, Verdict, clear
from tuimon.doctor.streak import Streak
from tuimon.run.events import ERROR, Action, StepEvent

# Restore the last good weights and scale the LR by 0.1: the fix of a blow-up (and
# autofix's command when an alert carries none).
RECOVER: Action = {"cmd": RECOVER_COMMAND, "lr_factor": 0.1}


def recover_before(step: int) -> Action:
    """RECOVER from the last good weights at or before `step` (before the blow-up)."""
    # A cast until run/events.py's Action has the recover command's `before_step`.
    return cast(Action, {**RECOVER, "before_step": step})


class NanLoss(Rule[StepEvent]):
    id = "nan_loss"
    cause = True
    severity = ERROR
    clear_after = 20  # finite steps in a row
    suppresses = (
        "divergence",
        "exploding_gradients",
        "oscillation",
        "stall",
        "chance_level",
        "dead_relu",
        "saturated_activations",
        "vanishing_gradients",
    )
    defaults = {"growth": 10.0}
    summary = "the loss is NaN or infinite"
    fix = (
        "a blow-up: restore the last good weights, LR ×0.1; a numerical fault (step 1, or "
        "in one step with steady gradients): fix the log/division/sqrt at 0"
    )

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.last_finite: tuple[int, float] | None = None
        self.early_grad: float | None = None  # the first finite gradient norm
        self.peak_grad = 0.0  # the largest finite gradient norm of the finite steps

    def check(self, event: StepEvent, ctx: RunContext) -> Verdict | None:
        if math.isfinite(ctx.loss):
            self.last_finite = (ctx.step, ctx.loss)
            grad = event.get("grad_norm")
            if isinstance(grad, int | float) and math.isfinite(grad):
                self.early_grad = grad if self.early_grad is None else self.early_grad
                self.peak_grad = max(self.peak_grad, grad)
            return clear()
        before = (
            f"from {self.last_finite[1]:.4g} at step {self.last_finite[0]} "
            if self.last_finite
            else ""
        )
        evidence = {
            "step": ctx.step,
            "loss": str(ctx.loss),
            "lr": ctx.lr,
            "grad_norm": ctx.grad_norm,
            "last_finite_step": self.last_finite[0] if self.last_finite else None,
        }
        if ctx.last_input_nan_step is not None and ctx.step - ctx.last_input_nan_step < 50:
            return Verdict(
                True,
                f"loss went {before}to {ctx.loss} at step {ctx.step}, right "
                f"after a batch with NaN inputs (step {ctx.last_input_nan_step})",
                "fix the data first: the NaN comes in with the inputs "
                "(see input_nan), not from the learning rate",
                evidence,
            )
        if self._numerical(ctx):
            evidence["peak_grad_norm"] = self.peak_grad
            when = (
                "at the very first step, before any update"
                if ctx.smoothed is None
                else f"in one step {before}while gradient norms stayed small "
                f"(at most {self.peak_grad:.3g})"
            )
            return Verdict(
                True,
                f"loss became {ctx.loss} at step {ctx.step} {when}: a numerical fault in "
                "the loss or the data, not a learning rate that blew up",
                "look for a log of 0, a division by zero or a sqrt at 0 in the loss and the "
                "data (a batch statistic that is 0, a probability of exactly 0 or 1): add an "
                "eps or clamp, or use the fused forms (log_softmax + nll_loss, "
                "BCEWithLogitsLoss, torch.special.xlogy); a lower LR would not fix it",
                evidence,
            )
        lr = ctx.lr
        suggestion = (
            f"{ctx.lr_text()} blew up: restore the last good weights and use LR "
            f"{lr * RECOVER['lr_factor']:.3g} (press a), and clip gradients"
            if lr
            else "lower the learning rate and clip gradients"
        )
        return Verdict(
            True,
            f"loss went {before}to {ctx.loss} at step {ctx.step}",
            suggestion,
            evidence,
            recover_before(ctx.step),
        )

    def _numerical(self, ctx: RunContext) -> bool:
        """Non-finite before any update, or from one finite step to the next while the
        gradients never grew: the loss or the data computes an undefined value. A blow-up
        of the weights shows first as growing gradients (or a loss that climbs)."""
        if ctx.smoothed is None:
            return True  # no finite loss yet in this run
        if self.last_finite is None or self.last_finite[0] != ctx.step - 1:
            return False
        if self.early_grad is None:
            return False
        return self.peak_grad <= self.p["growth"] * max(self.early_grad, 1e-12)


class Divergence(Rule[StepEvent]):
    id = "divergence"
    cause = True
    severity = ERROR
    defaults = {"warmup": 20, "ratio": 2.0, "climb": 0.5, "rise_steps": 10, "patience": 5}
    clear_after = 20
    needs_finite_loss = True
    # Not dead_relu: units killed by the blow-up are why the run stays stuck after it.
    suppresses = (
        "oscillation",
        "stall",
        "chance_level",
        "vanishing_gradients",
        "saturated_activations",
    )
    summary = "the smoothed loss climbs far above its best and keeps climbing"
    fix = "restore the last good weights, LR ×0.1, clip gradients"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.climbing = Streak(self.p["patience"])  # looks far above the best

    def check(self, event: StepEvent, ctx: RunContext) -> Verdict | None:
        smoothed, best, initial = ctx.smoothed, ctx.best, ctx.initial
        if smoothed is None or best is None or initial is None or ctx.step < self.p["warmup"]:
            return None
        # "Far above": twice the best, and back up at least half of the way made down. It
        # starts while climbing; it lasts until the loss is back near its best.
        margin = max(best * (self.p["ratio"] - 1), self.p["climb"] * (initial - best), 1e-12)
        if smoothed <= best + margin:
            self.climbing.reset()
            return clear()
        earlier = ctx.smoothed_ago(int(self.p["rise_steps"]))
        rising = earlier is not None and smoothed > earlier
        if not (rising or self.climbing.reached):
            self.climbing.reset()
            return None
        if not self.climbing.hold():
            return None
        factor = smoothed / best if best > 0 else math.inf
        lr = ctx.lr
        suggestion = (
            f"{ctx.lr_text()} is too high: restore the last good weights and try "
            f"{lr * RECOVER['lr_factor']:.3g} (press a), or clip gradients"
            if lr
            else "lower the learning rate or clip gradients"
        )
        return Verdict(
            True,
            f"loss rose {factor:.3g}× above its best ({best:.4g} at step {ctx.best_step}) "
            f"in {ctx.step - ctx.best_step} steps and is still climbing (now {smoothed:.4g})",
            suggestion,
            {
                "best": best,
                "best_step": ctx.best_step,
                "smoothed": smoothed,
                "ratio": factor,
                "lr": lr,
            },
            recover_before(ctx.best_step),
        )


class Oscillation(Rule[StepEvent]):
    id = "oscillation"
    symptom = True
    defaults = {
        "warmup": 100,
        "window": 100,
        "swing": 0.5,
        "min_progress": 0.05,
        "far_chance": 0.4,
        "far_initial": 0.5,
        "checks": 2,
        "every": 25,
        "still": 1e-4,
    }
    clear_after = 4
    needs_finite_loss = True
    summary = "the loss swings far more than its trend, with no progress (LR too high)"
    fix = "halve the LR"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.losses: deque[float] = deque(maxlen=int(self.p["window"]))
        self.bouncing = Streak(self.p["checks"])

    def check(self, event: StepEvent, ctx: RunContext) -> Verdict | None:
        self.losses.append(ctx.loss)
        if ctx.step < self.p["warmup"] or ctx.step % int(self.p["every"]):
            return None
        if len(self.losses) < self.p["window"] * 0.8:
            return None
        ordered = sorted(self.losses)
        n = len(ordered)
        median = ordered[n // 2]
        low, high = ordered[int(0.1 * (n - 1))], ordered[int(0.9 * (n - 1))]
        spread = (high - low) / max(abs(median), 1e-12)
        then, now = ctx.smoothed_ago(int(self.p["window"])), ctx.smoothed
        if then is None or now is None or ctx.initial is None:
            return None
        progress = (then - now) / max(abs(then), 1e-12)
        # Weights that barely move (‖Δw‖/‖w‖ under `still`) cannot make the loss bounce:
        # its swings are the batches' own spread, and halving the LR would be wrong advice.
        moving = ctx.update_ratio is None or ctx.update_ratio >= self.p["still"]
        holds = (
            spread > self.p["swing"]
            and progress < self.p["min_progress"]
            and moving
            and ctx.unconverged(self.p["far_chance"], self.p["far_initial"])
        )
        if not holds:
            self.bouncing.reset()
            return clear()
        if not self.bouncing.hold():
            return None
        lr = ctx.lr
        return Verdict(
            True,
            f"over the last {n} steps the loss swings by {spread:.0%} of its level "
            f"(median {median:.4g}) and made {max(progress, 0):.1%} progress",
            f"{ctx.lr_text()} makes it bounce: halve it (to {lr / 2:.3g}, press a)"
            if lr
            else "lower the learning rate",
            {"spread": spread, "progress": progress, "median": median, "window": n, "lr": lr},
            {"cmd": SCALE_LR, "factor": 0.5},
        )


class Stall(Rule[StepEvent]):
    id = "stall"
    symptom = True
    clear_after = 4
    defaults = {
        "warmup": 200,
        "window": 200,
        "min_improvement": 0.01,
        "far_chance": 0.5,
        "far_initial": 0.7,
        "checks": 2,
        "every": 25,
    }
    needs_finite_loss = True
    summary = "the loss stopped improving while still far from converged"
    fix = "raise the LR, check data and labels, or a bigger model"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.stalled = Streak(self.p["checks"])

    def check(self, event: StepEvent, ctx: RunContext) -> Verdict | None:
        if ctx.step < self.p["warmup"] or ctx.step % int(self.p["every"]):
            return None
        then, now = ctx.smoothed_ago(int(self.p["window"])), ctx.smoothed
        if then is None or now is None:
            return None
        improvement = (then - now) / max(abs(then), 1e-12)
        far = ctx.unconverged(self.p["far_chance"], self.p["far_initial"])
        if improvement >= self.p["min_improvement"] or not far:
            self.stalled.reset()
            return clear()
        if not self.stalled.hold():
            return None
        window = int(self.p["window"])
        return Verdict(
            True,
            f"loss improved {max(improvement, 0):.2%} over the last {window} steps and sits "
            f"at {now:.4g}, far from converged (started at {ctx.initial:.4g})",
            f"{ctx.lr_text()} may be too low: try it ×3; if that does not help, check the data "
            "and labels, or give the model more capacity",
            {
                "improvement": improvement,
                "window": window,
                "smoothed": now,
                "initial": ctx.initial,
                "lr": ctx.lr,
            },
        )


class ChanceLevel(Rule[StepEvent]):
    id = "chance_level"
    symptom = True
    defaults = {"warmup": 100, "tolerance": 0.05, "patience": 100}
    suppresses = ("stall", "lr_too_low", "vanishing_gradients")
    clear_after = 10
    needs_finite_loss = True
    summary = "a classifier's loss sits at ln(C): it predicts uniformly"
    fix = "check labels, loss argument order, a detached graph, the LR"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.at_chance = Streak(self.p["patience"])  # steps at ln(C)

    def check(self, event: StepEvent, ctx: RunContext) -> Verdict | None:
        chance, smoothed = ctx.chance_loss, ctx.smoothed
        if chance is None or smoothed is None or ctx.step < self.p["warmup"] or not ctx.loss_is_ce:
            return None
        # Measured against the way from the floor (label smoothing's) up to ln(C).
        distance = abs(smoothed - chance) / max(chance - ctx.loss_floor, 1e-12)
        if distance >= self.p["tolerance"]:
            self.at_chance.reset()
            # Only well away from ln(C) is the episode over (no flapping at the edge).
            return clear() if distance >= 2 * self.p["tolerance"] else None
        if not self.at_chance.hold():
            return None
        classes, steps = ctx.num_classes, self.at_chance.count
        return Verdict(
            True,
            f"loss has sat at {smoothed:.4g} ≈ ln({classes}) = {chance:.4g} for "
            f"{steps} steps: the model predicts every class with the same probability",
            "check that labels match their inputs (shuffled or misaligned labels), that the "
            "loss gets (logits, targets) in that order, that the graph is not detached, and "
            "that the LR is not far too low",
            {
                "smoothed": smoothed,
                "chance": chance,
                "classes": classes,
                "steps": steps,
            },
        )
