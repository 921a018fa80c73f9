"""A look at sampled batches: input statistics, the label histogram, output rows, and
which standard loss of the outputs and targets the step's loss is.

On probe steps (the first three, then three in a row every `every` steps, so that sorted
data shows as a run of one-class batches) it reduces the batch to a few numbers on the
device; they travel with the step's other values and are decoded on the host.

Scripts seldom tell the Monitor their loss, so the probe finds out: it computes the usual
candidates (cross-entropy, NLL, BCE with and without logits) of this batch's outputs and
targets, and the loss is the one whose value equals the step's. With whether the outputs
are probabilities or log-probabilities, that tells "NLLLoss on raw logits" or "BCE with
logits on sigmoid outputs" apart from the right pairings without knowing any name.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from tuimon.run.events import BatchProbeEvent

RUN = 3  # consecutive probed steps
SCALE_SAMPLES = 16  # samples whose statistics stand for the batch's scale
MATCH = 1e-4  # relative difference under which a candidate loss is the step's loss
CLASS_LOSSES = ("cross_entropy", "nll_loss")
BINARY_LOSSES = ("binary_cross_entropy_with_logits", "binary_cross_entropy")


class BatchProbe:
    def __init__(self, every: int) -> None:
        self.every = every

    def due(self, step: int) -> bool:
        return bool(self.every) and (step <= RUN or step % self.every < RUN)

    def measure(
        self, inputs: Any, targets: Any, outputs: Any, loss: Any = None
    ) -> tuple[torch.Tensor | None, dict[str, Any]]:
        """(numbers on the device, how to read them).

        Few kernels, since each costs a launch: extremes come from one `aminmax`, the
        row-sum error and the logsumexp error from the extremes of the row sums and row
        logsumexps (the largest |v - c| is at one of them), the std from the norm of the
        centred samples, all finished on the host by `decode`.
        """
        groups: list[torch.Tensor] = []  # one float vector per device, in `decode`'s order
        layout: dict[str, Any] = {}
        x = _first_tensor(inputs)
        if x is not None and x.numel():
            layout["inputs"] = {"count": x.numel(), "floating": x.is_floating_point()}
            stats, layout["scale_samples"] = _input_stats(x.detach())
            groups.append(stats)
        y, out = _first_tensor(targets), _first_tensor(outputs)
        classes = out.shape[1] if out is not None and out.dim() == 2 else 0
        scalars: list[torch.Tensor] = []  # of the outputs, on their device
        extremes: tuple[torch.Tensor, torch.Tensor] | None = None
        if out is not None and classes >= 2 and out.is_floating_point():
            o = out.detach().float()
            layout["outputs"] = {"classes": classes}
            extremes = torch.aminmax(o)
            scalars += [*extremes, *torch.aminmax(o.sum(dim=1))]
        labels = None  # class indices, clamped: for the histogram and the candidate losses
        if (
            y is not None
            and out is not None
            and classes >= 2
            and y.dim() == 1
            and not y.is_floating_point()
            and y.shape[0] == out.shape[0]
        ):
            labels = y.long().clamp(0, classes - 1)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1 and out is not None:
            found = _candidate_losses(out.detach(), y, loss.detach(), extremes, labels)
            if found is not None:
                layout["loss"], values = found
                scalars += values
        if scalars:
            groups.append(torch.stack(scalars))
        if labels is not None:
            layout["targets"] = {"classes": classes}
            groups.append(_histogram(labels, classes))
        if not groups:
            return None, layout
        device = groups[0].device
        return torch.cat([g if g.device == device else g.to(device) for g in groups]), layout

    @staticmethod
    def decode(row: list[float], layout: dict[str, Any]) -> BatchProbeEvent:
        """The batch probe event's measured fields (inputs, outputs, loss, targets)."""
        event: BatchProbeEvent = {}
        position = 0
        if "inputs" in layout:
            nonfinite, mean, spread, low, high = row[position : position + 5]
            event["inputs"] = {
                **layout["inputs"],
                "nonfinite": nonfinite,
                "mean": mean if math.isfinite(mean) else math.nan,  # as std_mean's, with Inf
                "std": spread / math.sqrt(layout["scale_samples"]),
                "min": low,
                "max": high,
            }
            position += 5
        if "outputs" in layout:
            low, high, sums_low, sums_high = row[position : position + 4]
            event["outputs"] = {
                **layout["outputs"],
                "min": low,
                "max": high,
                "row_sum_error": _farthest(sums_low, sums_high, 1.0),
            }
            position += 4
        if "loss" in layout:
            names = layout["loss"]["candidates"]
            value, *found, low, high, lse_low, lse_high = row[position : position + len(names) + 5]
            candidates = dict(zip(names, found, strict=True))
            event["loss"] = {
                "value": value,
                "candidates": candidates,
                "matches": [
                    name
                    for name, candidate in candidates.items()
                    if math.isfinite(value)
                    and abs(candidate - value) <= MATCH * max(abs(value), 1e-6)
                ],
                "outputs_min": low,
                "outputs_max": high,
                # |log Σ exp(row)|: 0 for rows of log-probabilities (log_softmax outputs).
                "logsumexp_error": _farthest(lse_low, lse_high, 0.0),
            }
            position += len(names) + 5
        if "targets" in layout:
            classes = layout["targets"]["classes"]
            event["targets"] = {"counts": row[position : position + classes]}
        return event


def _farthest(low: float, high: float, centre: float) -> float:
    """max |v - centre| over values whose extremes are `low` and `high`; NaN stays NaN."""
    if low != low or high != high:
        return math.nan
    return max(abs(low - centre), abs(high - centre))


def _histogram(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """How many of each class, as floats. One kernel on the CPU; elsewhere a scatter, since
    `bincount` on a GPU reads the largest label back to size its output (a sync)."""
    if labels.device.type == "cpu":
        return torch.bincount(labels, minlength=classes).float()
    counts = torch.zeros(classes, device=labels.device)
    return counts.scatter_add_(0, labels, torch.ones(labels.shape[0], device=labels.device))


def _candidate_losses(
    out: torch.Tensor,
    y: torch.Tensor | None,
    loss: torch.Tensor,
    extremes: tuple[torch.Tensor, torch.Tensor] | None,
    labels: torch.Tensor | None = None,
) -> tuple[dict[str, Any], list[torch.Tensor]] | None:
    """(how to read them, [the step's loss, each candidate, outputs min, max, and the
    extremes of the rows' logsumexp]) for a classifier's (B, C) outputs with class indices,
    or a binary one's (B,) or (B, 1) outputs with 0/1 targets; None for anything else
    (regression, no targets). `extremes`: the outputs' (min, max), and `labels`: the
    targets clamped to the classes, where the caller has them already."""
    if y is None or not out.is_floating_point() or out.shape[0] != y.shape[0]:
        return None
    o = out.float()
    y = y.to(o.device, non_blocking=True)  # a script may hand over its CPU copy
    with torch.no_grad():
        if o.dim() == 2 and o.shape[1] >= 2 and y.dim() == 1 and not y.is_floating_point():
            if labels is None:
                target = y.long().clamp(0, o.shape[1] - 1)
            else:
                target = labels.to(o.device, non_blocking=True)
            names = CLASS_LOSSES
            # cross_entropy is nll_loss of log_softmax; and log Σ exp(row) is
            # max(row) - max(log_softmax(row)), since log_softmax keeps each row's order
            # (a fused kernel and a few small ones, where logsumexp takes nine), or +inf
            # where the row holds +inf, as logsumexp says.
            log_probs = o.log_softmax(dim=1)
            values = [F.nll_loss(log_probs, target), F.nll_loss(o, target)]
            top = o.amax(dim=1)
            rows = torch.where(top.isposinf(), top, top - log_probs.amax(dim=1))
            logsumexp = list(torch.aminmax(rows))
        elif o.numel() == y.numel() and (o.dim() == 1 or o.shape[-1] == 1):
            t = y.reshape(o.shape).float()
            names = BINARY_LOSSES
            values = [F.binary_cross_entropy_with_logits(o, t), _bce(o, t)]
            nan = torch.full((), math.nan, device=o.device)
            logsumexp = [nan, nan]
        else:
            return None
        low, high = extremes if extremes is not None else torch.aminmax(o)
        stats = [loss.float().reshape(()).to(o.device), *values, low, high, *logsumexp]
    return {"candidates": list(names)}, stats


def _bce(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """F.binary_cross_entropy's value (logs clamped at -100), written out: the library
    function rejects values outside [0, 1] (on CUDA with a device-side assert), and these
    outputs are whatever the model made, NaN included."""
    p = p.clamp(0, 1)
    log_p, log_q = torch.log(p).clamp(min=-100), torch.log1p(-p).clamp(min=-100)
    return -(t * log_p + (1 - t) * log_q).mean()


def _input_stats(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """([non-finite count over the batch; mean, norm of the centred values, min, max of its
    first samples], how many values those samples hold). One bad value anywhere matters;
    the scale shows in a few samples. With any NaN or Inf the statistics are not finite
    either, and the rules read only the count then. (x·0 is 0 exactly where x is finite:
    one multiply and a count, where `isfinite` takes four kernels.)"""
    if x.is_floating_point():
        bad = torch.count_nonzero(x * 0).float()
    else:
        bad = torch.zeros((), device=x.device)
    head = x[:SCALE_SAMPLES].float()
    mean = head.mean()
    spread = torch.linalg.vector_norm(head - mean)
    low, high = torch.aminmax(head)
    return torch.stack([bad, mean, spread, low, high]), head.numel()


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list | tuple):
        return next((t for t in map(_first_tensor, value) if t is not None), None)
    if isinstance(value, dict):
        return next((t for t in map(_first_tensor, value.values()) if t is not None), None)
    return None
