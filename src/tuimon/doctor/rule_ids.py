"""The rule ids, as docs/CONTRACTS.md lists them. Alerts and config overrides name these;
they never change."""

from __future__ import annotations

RULE_IDS: tuple[str, ...] = (
    "nan_loss",
    "nan_grad",
    "divergence",
    "oscillation",
    "stall",
    "chance_level",
    "exploding_gradients",
    "vanishing_gradients",
    "dead_relu",
    "saturated_activations",
    "lr_too_high",
    "lr_too_low",
    "missing_zero_grad",
    "optimizer_mismatch",
    "input_nan",
    "input_scale",
    "class_imbalance",
    "unshuffled_data",
    "softmax_before_loss",
    "loss_input_mismatch",
    "optimizer_not_stepping",
    "loss_scale_collapse",
    "overfitting",
    "dataloader_bottleneck",
    "gpu_memory_pressure",
    # A distributed job's ranks (rank 0's `ranks` events).
    "straggler",
    "stalled_rank",
    "rank_nan",
)
