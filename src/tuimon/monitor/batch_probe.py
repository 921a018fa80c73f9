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
        """(numbers on the device, how to read them)."""
        parts: list[torch.Tensor] = []
        layout: dict[str, Any] = {}
        x = _first_tensor(inputs)
        if x is not None and x.numel():
            layout["inputs"] = {"count": x.numel(), "floating": x.is_floating_point()}
            parts.append(_input_stats(x.detach()))
        y, out = _first_tensor(targets), _first_tensor(outputs)
        classes = out.shape[1] if out is not None and out.dim() == 2 else 0
        if out is not None and classes >= 2 and out.is_floating_point():
            o = out.detach().float()
            layout["outputs"] = {"classes": classes}
            parts.append(torch.stack([o.min(), o.max(), (o.sum(dim=1) - 1).abs().max()]))
        if (
            y is not None
            and classes >= 2
            and y.dim() == 1
            and not y.is_floating_point()
            and y.shape[0] == out.shape[0]
        ):
            layout["targets"] = {"classes": classes}
            counts = torch.zeros(classes, device=y.device)
            counts.scatter_add_(
                0, y.long().clamp(0, classes - 1), torch.ones(y.shape[0], device=y.device)
            )
            parts.append(counts)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1 and out is not None:
            found = _candidate_losses(out.detach(), y, loss.detach())
            if found is not None:
                layout["loss"], values = found
                parts.append(values)
        if not parts:
            return None, layout
        device = parts[0].device
        return torch.cat([p.float().to(device).reshape(-1) for p in parts]), layout

    @staticmethod
    def decode(row: list[float], layout: dict[str, Any]) -> dict[str, Any]:
        event: dict[str, Any] = {}
        position = 0
        if "inputs" in layout:
            nonfinite, mean, std, low, high = row[position : position + 5]
            event["inputs"] = {
                **layout["inputs"],
                "nonfinite": nonfinite,
                "mean": mean,
                "std": std,
                "min": low,
                "max": high,
            }
            position += 5
        if "outputs" in layout:
            low, high, error = row[position : position + 3]
            event["outputs"] = {
                **layout["outputs"],
                "min": low,
                "max": high,
                "row_sum_error": error,
            }
            position += 3
        if "targets" in layout:
            classes = layout["targets"]["classes"]
            event["targets"] = {"counts": row[position : position + classes]}
            position += classes
        if "loss" in layout:
            names = layout["loss"]["candidates"]
            value, *found, low, high, logsumexp = row[position : position + len(names) + 4]
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
                "logsumexp_error": logsumexp,
            }
        return event


def _candidate_losses(
    out: torch.Tensor, y: torch.Tensor | None, loss: torch.Tensor
) -> tuple[dict[str, Any], torch.Tensor] | None:
    """(how to read them, [the step's loss, each candidate, outputs min, max, logsumexp
    error]) for a classifier's (B, C) outputs with class indices, or a binary one's (B,) or
    (B, 1) outputs with 0/1 targets; None for anything else (regression, no targets)."""
    if y is None or not out.is_floating_point() or out.shape[0] != y.shape[0]:
        return None
    o = out.float()
    y = y.to(o.device, non_blocking=True)  # a script may hand over its CPU copy
    with torch.no_grad():
        if o.dim() == 2 and o.shape[1] >= 2 and y.dim() == 1 and not y.is_floating_point():
            target = y.long().clamp(0, o.shape[1] - 1)
            names = CLASS_LOSSES
            values = [F.cross_entropy(o, target), F.nll_loss(o, target)]
            logsumexp = o.logsumexp(dim=1).abs().max()
        elif o.numel() == y.numel() and (o.dim() == 1 or o.shape[-1] == 1):
            t = y.reshape(o.shape).float()
            names = BINARY_LOSSES
            values = [F.binary_cross_entropy_with_logits(o, t), _bce(o, t)]
            logsumexp = torch.full((), math.nan, device=o.device)
        else:
            return None
        stats = [loss.float().reshape(()).to(o.device), *values, o.min(), o.max(), logsumexp]
    return {"candidates": list(names)}, torch.stack(stats)


def _bce(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """F.binary_cross_entropy's value (logs clamped at -100), written out: the library
    function rejects values outside [0, 1] (on CUDA with a device-side assert), and these
    outputs are whatever the model made, NaN included."""
    p = p.clamp(0, 1)
    log_p, log_q = torch.log(p).clamp(min=-100), torch.log1p(-p).clamp(min=-100)
    return -(t * log_p + (1 - t) * log_q).mean()


def _input_stats(x: torch.Tensor) -> torch.Tensor:
    """[non-finite count over the batch; mean, std, min, max of its first samples]. One bad
    value anywhere matters; the scale shows in a few samples. With any NaN or Inf the
    statistics are not finite either, and the rules read only the count then."""
    bad = torch.isfinite(x).logical_not_().sum() if x.is_floating_point() else torch.zeros(())
    head = x[:SCALE_SAMPLES].float()
    std, mean = torch.std_mean(head, correction=0)
    low, high = torch.aminmax(head)
    return torch.stack([bad.float().to(mean.device), mean, std, low, high])


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list | tuple):
        return next((t for t in map(_first_tensor, value) if t is not None), None)
    if isinstance(value, dict):
        return next((t for t in map(_first_tensor, value.values()) if t is not None), None)
    return None
