"""Rules on how the model is trained: zero_grad, the optimizer's parameters, softmax + CE."""

from __future__ import annotations

from typing import Any

from tuimon.doctor.context import RunContext
from tuimon.doctor.rule import Rule, Verdict, clear


class MissingZeroGrad(Rule):
    id = "missing_zero_grad"
    cause = True
    severity = "error"
    events = ("probe:stale_grad",)
    defaults = {"confirm": 1}
    suppresses = (
        "overfitting",
        "oscillation",
        "divergence",
        "exploding_gradients",
        "stall",
        "dead_relu",
        "lr_too_high",
        "chance_level",
        "vanishing_gradients",
        "nan_loss",
        "nan_grad",
    )
    summary = "gradients from earlier steps are still there at backward"
    fix = "call optimizer.zero_grad() every step"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.stale = 0

    def check(self, event: dict[str, Any], ctx: RunContext) -> Verdict | None:
        if not event.get("stale"):
            self.stale = 0
            return clear()
        self.stale += 1
        if self.stale < self.p["confirm"]:
            return None
        return Verdict(
            True,
            f"at step {event.get('step')} the gradient of {event.get('param')} still held the "
            "values an earlier optimizer step had used: gradients add up across steps",
            "call optimizer.zero_grad() before loss.backward() every step (to accumulate over "
            "micro-batches on purpose, zero after each optimizer.step())",
            {"param": event.get("param"), "checks": self.stale},
        )


class OptimizerMismatch(Rule):
    id = "optimizer_mismatch"
    cause = True
    severity = "error"
    events = ("probe:optimizer",)
    suppresses = ("stall", "chance_level", "lr_too_low", "vanishing_gradients")
    summary = "the optimizer does not hold the model's trainable parameters"
    fix = "build the optimizer from model.parameters() (or freeze what it skips)"

    def check(self, event: dict[str, Any], ctx: RunContext) -> Verdict | None:
        foreign = event.get("not_in_model", 0)
        skipped = event.get("trainable_not_in_optimizer", 0)
        names = ", ".join(event.get("skipped_names") or [])
        if foreign:
            return Verdict(
                True,
                f"the optimizer updates {foreign} tensors the model does not use",
                "it was built for another instance of the model (or before the model was "
                "rebuilt): create it from this model's parameters",
                {"not_in_model": foreign, "trainable_not_in_optimizer": skipped},
            )
        if skipped:
            return Verdict(
                True,
                f"{skipped} trainable parameters get gradients but are not in the optimizer, "
                f"so they never change ({names})",
                "pass them to the optimizer, or freeze them with requires_grad_(False) if they "
                "are meant to stay fixed",
                {"trainable_not_in_optimizer": skipped, "names": event.get("skipped_names")},
                severity="warning",
            )
        return clear()


class SoftmaxBeforeLoss(Rule):
    id = "softmax_before_loss"
    cause = True
    severity = "error"
    events = ("probe:batch",)
    defaults = {"tolerance": 1e-3, "confirm": 2}
    suppresses = ("chance_level", "stall", "lr_too_low", "vanishing_gradients")
    summary = "probabilities (softmax outputs) are fed to a loss that expects logits"
    fix = "remove the softmax before CrossEntropyLoss"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.held = 0

    def check(self, event: dict[str, Any], ctx: RunContext) -> Verdict | None:
        outputs = event.get("outputs") or {}
        if "row_sum_error" not in outputs:
            return None
        loss = ctx.loss_name
        probabilities = (
            outputs["min"] >= 0
            and outputs["max"] <= 1
            and outputs["row_sum_error"] < self.p["tolerance"]
        )
        if not probabilities or not ctx.loss_is_ce:
            self.held = 0
            return clear()
        self.held += 1
        if self.held < self.p["confirm"]:
            return None
        return Verdict(
            True,
            f"the model's outputs are probabilities (every row sums to 1, all in [0, 1]) but "
            f"{loss} expects raw logits and applies log-softmax itself",
            "remove the softmax at the end of the model (keep it for inference only); the "
            "double softmax squashes the gradients and training crawls",
            {"loss": loss, "row_sum_error": outputs["row_sum_error"]},
        )
