"""Rules on gradients: non-finite values, explosion, and vanishing in early layers."""

from __future__ import annotations

import math
import statistics

from tuimon.control.commands import SET_GRAD_CLIP
from tuimon.doctor.context import RunContext
from tuimon.doctor.rule import Rule, Verdict, clear
from tuimon.doctor.rules.loss import recover_before
from tuimon.doctor.streak import Streak
from tuimon.run.events import ERROR, NOT_IN_MODEL, STEP, StepEvent


class NanGrad(Rule[StepEvent]):
    id = "nan_grad"
    cause = True
    severity = ERROR
    clear_after = 20
    suppresses = ("exploding_gradients", "divergence", "dead_relu", "stall", "chance_level")
    summary = "a gradient is NaN or infinite"
    fix = "restore the last good weights, LR ×0.1; look for sqrt/log/division at 0"

    def check(self, event: StepEvent, ctx: RunContext) -> Verdict | None:
        grad = event.get("grad_norm")
        if not isinstance(grad, int | float):
            return None
        if math.isfinite(grad):
            return clear()
        if not math.isfinite(ctx.loss):
            return None  # a NaN loss explains it: nan_loss speaks for both
        return Verdict(
            True,
            f"the gradient norm is {grad} at step {ctx.step} while the loss is finite "
            f"({ctx.loss:.4g})",
            "an operation with an infinite derivative (sqrt or log at 0, a division by a tiny "
            "number) or a float16 overflow: add epsilons, clip gradients; restore the last good "
            "weights with a lower LR (press a)",
            {"step": ctx.step, "grad_norm": str(grad), "loss": ctx.loss},
            recover_before(ctx.step),
        )


class ExplodingGradients(Rule[StepEvent]):
    """Gradients that explode over time (norms grow by orders of magnitude) or across
    layers (the first layer gets far more than the last: AUTOTRAINER's β3 = 70)."""

    id = "exploding_gradients"
    cause = True
    # The baseline is the median of the first steps' norms: explosions start early.
    defaults = {
        "baseline_from": 1,
        "baseline_steps": 5,
        "growth": 100.0,
        "huge": 1e6,
        "patience": 3,
        "layer_ratio": 70.0,
    }
    clear_after = 20
    summary = (
        "gradient norms grow by orders of magnitude, are huge, or the first layer's is ≫ the last's"
    )
    fix = "clip gradients at 2× their early norm, lower the LR; normalization, smaller init"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.early: list[float] = []
        self.baseline: float | None = None
        self.growing = Streak(self.p["patience"])  # steps with a grown or huge norm
        self.spread_looks = Streak(self.p["patience"])  # per-layer looks with first ≫ last
        self.spread: tuple[str, float, str, float] | None = None

    def check(self, event: StepEvent, ctx: RunContext) -> Verdict | None:
        looked = self._look_across_layers(event)
        over_time = self._over_time(event, ctx)
        if over_time is not None and over_time.active:
            return over_time
        if self.spread_looks.reached and self.spread is not None:
            return self._across_verdict(ctx)
        if self.spread_looks.count or (looked is False and over_time is None):
            return None  # building up across layers: no verdict either way yet
        return over_time

    def _look_across_layers(self, event: StepEvent) -> bool | None:
        """Whether this event's per-layer norms show first ≫ last (None: none in it)."""
        norms = _layer_norms(event)
        if norms is None:
            return None
        (first, low), (last, high) = norms[0], norms[-1]
        spread = high > 0 and low / high > self.p["layer_ratio"]
        self.spread_looks.update(spread)
        self.spread = (first, low, last, high) if spread else None
        return spread

    def _across_verdict(self, ctx: RunContext) -> Verdict:
        assert self.spread is not None
        first, low, last, high = self.spread
        looks = self.spread_looks.count
        return Verdict(
            True,
            f"the first layer ({first}) gets {low / high:.3g}× the gradient of the last "
            f"({last}): {low:.3g} against {high:.3g}, over the last {looks} looks "
            "— gradients explode on their way back through the layers",
            "the layers multiply the gradient up: initialize smaller (Xavier/He instead of "
            "large weights), add BatchNorm/LayerNorm, use ReLU over saturating activations, "
            "or residual connections; clip gradients meanwhile",
            {"first": first, "first_norm": low, "last": last, "last_norm": high},
        )

    def _over_time(self, event: StepEvent, ctx: RunContext) -> Verdict | None:
        # A script that clips hands over the norm before clipping: the one that grows.
        grad = event.get("grad_norm_unclipped", event.get("grad_norm"))
        if not isinstance(grad, int | float) or not math.isfinite(grad):
            return None
        if self.baseline is None:
            if ctx.step >= self.p["baseline_from"]:
                self.early.append(grad)
            if len(self.early) >= self.p["baseline_steps"]:
                self.baseline = statistics.median(self.early)
            if grad <= self.p["huge"]:
                return None
        base = self.baseline
        grown = base is not None and base > 0 and grad > self.p["growth"] * base
        if not (grown or grad > self.p["huge"]):
            self.growing.reset()
            return clear()
        if not self.growing.hold():
            return None
        clip = 2 * base if base else 1.0
        times = f"{grad / base:.3g}× its early level ({base:.3g})" if base else "huge"
        return Verdict(
            True,
            f"gradient norm is {grad:.3g} at step {ctx.step}, {times}",
            f"clip gradients at {clip:.3g} (press a), lower the LR, or add normalization",
            {"grad_norm": grad, "baseline": base, "lr": ctx.lr},
            {"cmd": SET_GRAD_CLIP, "value": float(f"{clip:.3g}")},
        )


def _layer_norms(event: StepEvent) -> list[tuple[str, float]] | None:
    """The event's finite per-layer gradient norms, in the model's order (None: under 2)."""
    layers = event.get("layer_grad_norms")
    if not layers:
        return None
    norms = [
        (name, float(value))
        for name, value in layers.items()
        if name != NOT_IN_MODEL and isinstance(value, int | float) and math.isfinite(value)
    ]
    return norms if len(norms) >= 2 else None


class VanishingGradients(Rule[StepEvent]):
    id = "vanishing_gradients"
    symptom = True
    cause = True
    events = (STEP,)
    defaults = {"warmup": 20, "ratio": 1e-3, "tiny": 1e-7, "patience": 3}
    summary = "early layers get orders of magnitude less gradient than late ones, or ~none"
    fix = "ReLU instead of sigmoid/tanh, BatchNorm, He init"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.vanished = Streak(self.p["patience"])

    def check(self, event: StepEvent, ctx: RunContext) -> Verdict | None:
        norms = _layer_norms(event)
        if norms is None or ctx.step < self.p["warmup"]:
            return None
        (first, low), (last, high) = norms[0], norms[-1]
        total = math.sqrt(sum(v * v for _, v in norms))
        ratio = low / high if high > 0 else math.inf
        # Exactly zero is no gradient at all (dead units, a frozen or detached layer): that is
        # for dead_relu and optimizer_mismatch to name, not a vanishing signal.
        vanished = (low > 0 and ratio < self.p["ratio"]) or 0 < total < self.p["tiny"]
        if not self.vanished.update(vanished):
            return None if vanished else clear()
        if total < self.p["tiny"]:
            message = f"the whole gradient is {total:.2g} at step {ctx.step}: nothing learns"
        else:
            message = (
                f"the first layer ({first}) gets {ratio:.1e}× the gradient of the last "
                f"({last}): {low:.2g} against {high:.2g}"
            )
        return Verdict(
            True,
            message,
            "signals die on the way back: use ReLU instead of sigmoid/tanh, add BatchNorm, "
            "use He/Kaiming initialization, or residual connections",
            {"first": first, "first_norm": low, "last": last, "last_norm": high, "ratio": ratio},
        )
