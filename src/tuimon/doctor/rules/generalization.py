"""Training against validation: overfitting."""

from __future__ import annotations

from tuimon.doctor.context import RunContext
from tuimon.doctor.rule import Rule, Verdict, clear
from tuimon.run.events import METRICS, MetricsEvent


class Overfitting(Rule[MetricsEvent]):
    id = "overfitting"
    events = (METRICS,)
    defaults = {"margin": 0.1, "min_rise": 0.02, "train_drop": 0.05, "min_validations": 3}
    clear_after = 2
    summary = "validation loss rises while training loss falls"
    fix = "stop at the best checkpoint; regularize; more data"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.history: list[tuple[int, float, float | None]] = []  # step, val, train

    def check(self, event: MetricsEvent, ctx: RunContext) -> Verdict | None:
        val = event.get("val_loss")
        if not isinstance(val, int | float):
            return None
        self.history.append((int(event.get("step", 0)), float(val), ctx.smoothed))
        if len(self.history) < self.p["min_validations"]:
            return None
        best_step, best_val, best_train = min(self.history, key=lambda h: h[1])
        _, now, train = self.history[-1]
        previous = self.history[-2][1]
        # Up by `margin` of its best, and by enough to matter: `min_rise` of the loss's scale,
        # ln(C) for a classifier, else the starting loss (0.017 -> 0.024 is noise at 2.3).
        floor = best_val + max(
            self.p["margin"] * best_val,
            self.p["min_rise"] * (ctx.chance_loss or ctx.initial or 0.0),
        )
        rising = now > floor and now > previous
        train_falling = (
            train is not None
            and best_train is not None
            and train < (1 - self.p["train_drop"]) * best_train
        )
        if now <= floor:
            return clear()
        if not (rising and train_falling) or train is None:
            return None
        drop = 1 - train / best_train if best_train else 0.0
        return Verdict(
            True,
            f"validation loss rose from {best_val:.4g} (step {best_step}) to {now:.4g} while "
            f"the training loss fell a further {drop:.0%}",
            f"the model is memorizing the training set: keep the weights from step "
            f"{best_step}, add regularization (weight decay, dropout, augmentation) or data",
            {"best_val": best_val, "best_step": best_step, "val": now, "train_drop": drop},
        )
