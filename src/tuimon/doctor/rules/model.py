"""Rules on how the model is trained: zero_grad, the optimizer's parameters and whether it
steps, and what the loss is given (softmax before CE, raw logits to NLL)."""

from __future__ import annotations

from typing import Any

from tuimon.doctor.context import RunContext
from tuimon.doctor.rule import Rule, Verdict, clear, probe_route
from tuimon.doctor.streak import Streak
from tuimon.run.events import (
    BATCH_PROBE,
    ERROR,
    OPTIMIZER_PROBE,
    STALE_GRAD_PROBE,
    WARNING,
    BatchProbeEvent,
    OptimizerProbeEvent,
    StaleGradProbeEvent,
    StepEvent,
)

# Candidate losses the batch probe compares with the step's loss (monitor/batch_probe.py).
CE, NLL = "cross_entropy", "nll_loss"
BCE_LOGITS, BCE = "binary_cross_entropy_with_logits", "binary_cross_entropy"


class MissingZeroGrad(Rule[StaleGradProbeEvent]):
    id = "missing_zero_grad"
    cause = True
    severity = ERROR
    events = (probe_route(STALE_GRAD_PROBE),)
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
        self.stale = Streak(self.p["confirm"])  # probes in a row that found stale gradients

    def check(self, event: StaleGradProbeEvent, ctx: RunContext) -> Verdict | None:
        if not event.get("stale"):
            self.stale.reset()
            return clear()
        if not self.stale.hold():
            return None
        return Verdict(
            True,
            f"at step {event.get('step')} the gradient of {event.get('param')} still held the "
            "values an earlier optimizer step had used: gradients add up across steps",
            "call optimizer.zero_grad() before loss.backward() every step (to accumulate over "
            "micro-batches on purpose, zero after each optimizer.step())",
            {"param": event.get("param"), "checks": self.stale.count},
        )


class OptimizerMismatch(Rule[OptimizerProbeEvent]):
    id = "optimizer_mismatch"
    cause = True
    severity = ERROR
    events = (probe_route(OPTIMIZER_PROBE),)
    suppresses = ("stall", "chance_level", "lr_too_low", "vanishing_gradients")
    summary = "the optimizer does not hold the model's trainable parameters"
    fix = "build the optimizer from model.parameters() (or freeze what it skips)"

    def check(self, event: OptimizerProbeEvent, ctx: RunContext) -> Verdict | None:
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
                severity=WARNING,
            )
        return clear()


class SoftmaxBeforeLoss(Rule[BatchProbeEvent]):
    id = "softmax_before_loss"
    cause = True
    severity = ERROR
    events = (probe_route(BATCH_PROBE),)
    defaults = {"tolerance": 1e-3, "confirm": 2}
    suppresses = ("chance_level", "stall", "lr_too_low", "vanishing_gradients")
    summary = "probabilities (softmax or sigmoid outputs) are fed to a loss that expects logits"
    fix = "remove the softmax before CrossEntropyLoss (the sigmoid before BCEWithLogitsLoss)"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.seen = Streak(self.p["confirm"])  # probed batches in a row that show it

    def check(self, event: BatchProbeEvent, ctx: RunContext) -> Verdict | None:
        outputs = event.get("outputs") or {}
        found = event.get("loss") or {}
        if "row_sum_error" in outputs:
            verdict = self._softmax(outputs, ctx)
        elif found.get("candidates", {}).keys() >= {BCE_LOGITS}:
            verdict = self._sigmoid(found)
        else:
            return None
        if verdict is None:
            self.seen.reset()
            return clear()
        return verdict if self.seen.hold() else None

    def _softmax(self, outputs: dict[str, Any], ctx: RunContext) -> Verdict | None:
        loss = ctx.loss_name
        probabilities = (
            outputs["min"] >= 0
            and outputs["max"] <= 1
            and outputs["row_sum_error"] < self.p["tolerance"]
        )
        if not probabilities or not ctx.loss_is_ce:
            return None
        return Verdict(
            True,
            f"the model's outputs are probabilities (every row sums to 1, all in [0, 1]) but "
            f"{loss} expects raw logits and applies log-softmax itself",
            "remove the softmax at the end of the model (keep it for inference only); the "
            "double softmax squashes the gradients and training crawls",
            {"loss": loss, "row_sum_error": outputs["row_sum_error"]},
        )

    def _sigmoid(self, found: dict[str, Any]) -> Verdict | None:
        # The step's loss is BCE-with-logits of outputs that all lie in [0, 1]: a sigmoid
        # came first. (Sigmoid outputs with BCELoss match binary_cross_entropy instead.)
        low, high = found.get("outputs_min", -1.0), found.get("outputs_max", 2.0)
        matches = found.get("matches") or []
        if BCE_LOGITS not in matches or BCE in matches or not (low >= 0 and high <= 1):
            return None
        return Verdict(
            True,
            f"the model's outputs are probabilities (all in [{low:.3g}, {high:.3g}]: a "
            "sigmoid) but the loss is BCEWithLogitsLoss, which applies the sigmoid itself",
            "remove the sigmoid at the end of the model (apply it for inference only) and keep "
            "BCEWithLogitsLoss, the numerically stable pairing; the double sigmoid squashes "
            "the gradients and training crawls",
            {"loss": "BCEWithLogitsLoss", "outputs_min": low, "outputs_max": high},
        )


class LossInputMismatch(Rule[BatchProbeEvent]):
    id = "loss_input_mismatch"
    cause = True
    severity = ERROR
    events = (probe_route(BATCH_PROBE),)
    defaults = {"tolerance": 0.01, "confirm": 2}
    suppresses = (
        "divergence",
        "oscillation",
        "stall",
        "chance_level",
        "softmax_before_loss",
        "lr_too_high",
        "exploding_gradients",
    )
    summary = "NLLLoss gets raw logits (or probabilities), not log-probabilities"
    fix = "add log_softmax before NLLLoss, or use CrossEntropyLoss on the logits"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.seen = Streak(self.p["confirm"])  # probed batches in a row that show it

    def check(self, event: BatchProbeEvent, ctx: RunContext) -> Verdict | None:
        found = event.get("loss") or {}
        if NLL not in (found.get("candidates") or {}):
            return None
        matches = found.get("matches") or []
        error = found.get("logsumexp_error", 0.0)
        # log_softmax outputs match both NLL and CE (log_softmax is idempotent) and their
        # rows' log Σ exp is 0; NLL of anything else is a mismatch.
        if NLL not in matches or CE in matches or not error > self.p["tolerance"]:
            self.seen.reset()
            return clear()
        if not self.seen.hold():
            return None
        value = found.get("value", float("nan"))
        kind = (
            "probabilities"
            if found.get("outputs_min", -1.0) >= 0 and found.get("outputs_max", 2.0) <= 1
            else "raw logits"
        )
        negative = (
            f"; the loss is negative ({value:.4g}) and can fall without bound" if value < 0 else ""
        )
        return Verdict(
            True,
            f"the loss is NLLLoss of the model's {kind} (each row's log Σ exp is "
            f"{error:.3g}, not 0){negative}: NLLLoss expects log-probabilities",
            "NLLLoss expects log-probabilities: add F.log_softmax(x, dim=1) at the end of the "
            "model (as pytorch/examples do), or drop it and use CrossEntropyLoss on the logits",
            {"loss": "NLLLoss", "inputs": kind, "logsumexp_error": error, "value": value},
        )


class OptimizerNotStepping(Rule[StepEvent]):
    id = "optimizer_not_stepping"
    cause = True
    severity = ERROR
    defaults = {"steps": 20}
    suppresses = (
        "chance_level",
        "stall",
        "lr_too_low",
        "vanishing_gradients",
        "oscillation",
        "dead_relu",
        "loss_scale_collapse",  # a scaler skipping every step: this verdict alone
    )
    clear_after = 1  # one real optimizer step ends it
    reads_loss = False  # counts optimizer steps only: a step without a loss is judged too
    summary = "optimizer.step() has not run for 20 steps (a GradScaler skipping every step)"
    fix = "find the op that overflows in fp16; use bf16, a lower LR, clip after unscale_"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.skipped = Streak(self.p["steps"])  # steps in a row without an optimizer step
        self.since: int | None = None

    def check(self, event: StepEvent, ctx: RunContext) -> Verdict | None:
        steps = event.get("optimizer_steps")
        if not isinstance(steps, int):
            return None  # a log from before the field existed
        if steps > 0:
            self.skipped.reset()
            self.since = None
            return clear()
        # A GradScaler skips a few steps while it finds its scale: only a run counts.
        self.since = self.since or ctx.step
        if not self.skipped.hold():
            return None
        skipped = self.skipped.count
        return Verdict(
            True,
            f"optimizer.step() has not run for {skipped} steps (since step {self.since}): "
            "the weights do not change at all",
            "a GradScaler skips optimizer.step() when it finds inf/NaN gradients: here it does "
            "so every step, so the fp16 overflow is not transient. Train in bf16 (or fp32), "
            "lower the LR, clip gradients after scaler.unscale_(optimizer), and find the op "
            "that overflows (torch.autograd.detect_anomaly, or check each layer's output for "
            "inf). If nothing calls optimizer.step(), call it; with gradient accumulation, "
            "call mon.step() once per optimizer step, not per micro-batch",
            {"skipped": skipped, "since": self.since},
        )
