"""Every rule, in the order they are evaluated, and checks of the config's overrides."""

from __future__ import annotations

from typing import Any

from tuimon.did_you_mean import did_you_mean
from tuimon.doctor.rule import Rule
from tuimon.doctor.rule_ids import RULE_IDS
from tuimon.doctor.rules.activations import DeadRelu, SaturatedActivations
from tuimon.doctor.rules.data import (
    ClassImbalance,
    DataloaderBottleneck,
    InputNan,
    InputScale,
    UnshuffledData,
)
from tuimon.doctor.rules.generalization import Overfitting
from tuimon.doctor.rules.gradients import ExplodingGradients, NanGrad, VanishingGradients
from tuimon.doctor.rules.learning_rate import LrTooHigh, LrTooLow
from tuimon.doctor.rules.loss import ChanceLevel, Divergence, NanLoss, Oscillation, Stall
from tuimon.doctor.rules.mixed_precision import LossScaleCollapse
from tuimon.doctor.rules.model import (
    LossInputMismatch,
    MissingZeroGrad,
    OptimizerMismatch,
    OptimizerNotStepping,
    SoftmaxBeforeLoss,
)
from tuimon.doctor.rules.ranks import RankNan, StalledRank, Straggler
from tuimon.doctor.rules.system import GpuMemoryPressure

# The specific before the general: a rule can suppress only rules evaluated after it
# would otherwise alert in the same event.
ALL_RULES: tuple[type[Rule[Any]], ...] = (
    StalledRank,
    InputNan,
    NanLoss,
    RankNan,
    NanGrad,
    OptimizerMismatch,
    OptimizerNotStepping,
    LossScaleCollapse,
    MissingZeroGrad,
    LossInputMismatch,
    SoftmaxBeforeLoss,
    Divergence,
    ExplodingGradients,
    ChanceLevel,
    LrTooHigh,
    LrTooLow,
    Oscillation,
    Stall,
    VanishingGradients,
    DeadRelu,
    SaturatedActivations,
    InputScale,
    UnshuffledData,
    ClassImbalance,
    Overfitting,
    Straggler,
    DataloaderBottleneck,
    GpuMemoryPressure,
)
RULES: dict[str, type[Rule[Any]]] = {rule.id: rule for rule in ALL_RULES}
assert set(RULES) == set(RULE_IDS), "every rule id of docs/CONTRACTS.md (rule_ids.py) has one rule"


def override_problems(rule_id: str, override: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, message) for each unknown or non-numeric threshold in a rule's override."""
    rule = RULES[rule_id]
    problems = []
    for key, value in override.items():
        if key == "enabled":
            continue
        if key not in rule.defaults and key != "clear_after":
            valid = ", ".join(["enabled", *rule.defaults, "clear_after"])
            problems.append(
                (
                    key,
                    f"unknown threshold of {rule_id}"
                    f"{did_you_mean(key, rule.defaults)}; valid keys: {valid}",
                )
            )
        elif isinstance(value, bool) or not isinstance(value, int | float):
            problems.append((key, f"expected a number, got {value!r}"))
    return problems
