"""A look at sampled batches: input statistics, the label histogram, output rows.

On probe steps (the first three, then three in a row every `every` steps, so that sorted
data shows as a run of one-class batches) it reduces the batch to a few numbers on the
device; they travel with the step's other values and are decoded on the host.
"""

from __future__ import annotations

from typing import Any

import torch

RUN = 3  # consecutive probed steps
SCALE_SAMPLES = 16  # samples whose statistics stand for the batch's scale


class BatchProbe:
    def __init__(self, every: int) -> None:
        self.every = every

    def due(self, step: int) -> bool:
        return bool(self.every) and (step <= RUN or step % self.every < RUN)

    def measure(
        self, inputs: Any, targets: Any, outputs: Any
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
        return event


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
