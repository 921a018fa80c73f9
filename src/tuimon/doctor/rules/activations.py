"""Activation health from sampled forward hooks: dead ReLUs, saturated sigmoid/tanh."""

from __future__ import annotations

from collections import deque
from typing import Any

from tuimon.doctor.context import RunContext
from tuimon.doctor.rule import Rule, Verdict, clear


class _LayerShareRule(Rule):
    """Fires when some layer's share (dead units, saturated values) stays above a bound."""

    events = ("probe:activations",)
    key = ""
    defaults = {"layer_threshold": 0.5, "patience": 3, "far_chance": 0.5, "far_initial": 0.7}

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.held: deque[bool] = deque(maxlen=int(self.p["patience"]))

    def worst(self, event: dict[str, Any]) -> tuple[str, float] | None:
        layers = {
            name: stats[self.key]
            for name, stats in (event.get("layers") or {}).items()
            if isinstance(stats.get(self.key), int | float)
        }
        if not layers:
            return None
        name = max(layers, key=lambda n: layers[n])
        return name, layers[name]

    def check(self, event: dict[str, Any], ctx: RunContext) -> Verdict | None:
        found = self.worst(event)
        if found is None:
            return None
        name, share = found
        # A network that has learned its task can afford idle or confident units; one that
        # has not is being held back by them.
        far = ctx.unconverged(self.p["far_chance"], self.p["far_initial"])
        bad = share > self.p["layer_threshold"] and (far or ctx.smoothed is None)
        self.held.append(bad)
        if not bad:
            return clear()
        if len(self.held) < self.p["patience"] or not all(self.held):
            return None
        return self.verdict(name, share, ctx)

    def verdict(self, layer: str, share: float, ctx: RunContext) -> Verdict:
        raise NotImplementedError


class DeadRelu(_LayerShareRule):
    id = "dead_relu"
    symptom = True
    cause = True
    key = "dead"
    summary = "most units of a ReLU layer never activate (active in < 1% of samples)"
    fix = "lower the LR, LeakyReLU, check bias init, BatchNorm"

    def verdict(self, layer: str, share: float, ctx: RunContext) -> Verdict:
        return Verdict(
            True,
            f"{share:.0%} of the units after {layer} are dead: active for under 1% of the "
            f"samples, over the last {len(self.held)} probes",
            "dead units get no gradient and never recover: lower the LR, use LeakyReLU, check "
            "that biases do not start very negative, or add BatchNorm before the ReLU",
            {"layer": layer, "dead_share": share},
        )


class SaturatedActivations(_LayerShareRule):
    id = "saturated_activations"
    symptom = True
    key = "saturated"
    summary = "sigmoid/tanh outputs sit at their flat ends (|tanh| > 0.99, sigmoid < .01/> .99)"
    fix = "normalize inputs, smaller init, BatchNorm, or ReLU"

    def verdict(self, layer: str, share: float, ctx: RunContext) -> Verdict:
        return Verdict(
            True,
            f"{share:.0%} of the outputs of {layer} are at the flat ends of the activation, "
            f"where its gradient is ~0, over the last {len(self.held)} probes",
            "inputs to the activation are too large: normalize the inputs, initialize smaller "
            "(Xavier/Glorot), add BatchNorm, or use ReLU",
            {"layer": layer, "saturated_share": share},
        )
