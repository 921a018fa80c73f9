"""Activation health from sampled probes: dead ReLUs, saturated sigmoid/tanh."""

from __future__ import annotations

from typing import ClassVar

from tuimon.doctor.context import RunContext
from tuimon.doctor.rule import Rule, Verdict, clear, probe_route
from tuimon.doctor.streak import Streak
from tuimon.run.events import (
    ACTIVATIONS_PROBE,
    DEAD_UNITS_PROBE,
    ActivationsProbeEvent,
    DeadUnitsProbeEvent,
)

# Module hooks' shares per activation layer, or dead units seen from zero gradient rows
# (monitor/dead_unit_probe.py).
LayerProbeEvent = ActivationsProbeEvent | DeadUnitsProbeEvent
PERSIST_LOOKS = 3  # probes in a row a unit's gradient is zero before that probe counts it


class _LayerShareRule(Rule[LayerProbeEvent]):
    """Fires when some layer's share (dead units, saturated values) stays above a bound.

    Each probe that measures it (module hooks, gradients) keeps its own record: one that
    sees the fault for `patience` looks in a row is enough, and it clears when no probe
    sees it any more.
    """

    events: ClassVar[tuple[str, ...]] = (probe_route(ACTIVATIONS_PROBE),)
    key = ""
    defaults = {
        "layer_threshold": 0.5,
        "patience": 3,
        "far_chance": 0.5,
        "far_initial": 0.7,
    }

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.held: dict[str, Streak] = {}  # per probe, its looks in a row that see it

    def shares(self, event: LayerProbeEvent) -> dict[str, float]:
        """{layer: share} in this probe event."""
        return {
            name: stats[self.key]
            for name, stats in (event.get("layers") or {}).items()
            if isinstance(stats, dict) and isinstance(stats.get(self.key), int | float)
        }

    def check(self, event: LayerProbeEvent, ctx: RunContext) -> Verdict | None:
        layers = self.shares(event)
        if not layers:
            return None
        # The worst layer; of equals the later one (a dead layer leaves every layer before
        # it without gradient too, and layers come in the model's order).
        top = max(layers.values())
        name = [n for n, share in layers.items() if share >= top][-1]
        share = layers[name]
        # A network that has learned its task can afford idle or confident units; one that
        # has not is being held back by them.
        far = ctx.unconverged(self.p["far_chance"], self.p["far_initial"]) and self.stuck(ctx)
        bad = share > self.p["layer_threshold"] and (far or ctx.smoothed is None)
        probe = str(event.get("probe"))
        held = self.held.setdefault(probe, Streak(self.looks_needed(probe)))
        if not held.update(bad):
            if bad:
                return None
            others = any(looks.count for p, looks in self.held.items() if p != probe)
            return None if others else clear()
        return self.verdict(name, share, ctx, probe)

    def stuck(self, ctx: RunContext) -> bool:
        """Whether the loss is not learning its way out by itself (some rules ask)."""
        return True

    def looks_needed(self, probe: str) -> int:
        return int(self.p["patience"])

    def verdict(self, layer: str, share: float, ctx: RunContext, probe: str) -> Verdict:
        raise NotImplementedError


class DeadRelu(_LayerShareRule):
    id = "dead_relu"
    symptom = True
    cause = True
    # ReLU modules (forward hooks) and any activation, F.relu too (zero gradient rows).
    events = (probe_route(ACTIVATIONS_PROBE), probe_route(DEAD_UNITS_PROBE))
    key = "dead"
    defaults = {**_LayerShareRule.defaults, "window": 50, "min_progress": 0.05}
    summary = (
        "most units of a ReLU layer never activate (active in < 1% of samples, or no "
        "gradient at all for whole batches)"
    )
    fix = "lower the LR, LeakyReLU, check bias init, BatchNorm"

    def shares(self, event: LayerProbeEvent) -> dict[str, float]:
        if event.get("probe") != DEAD_UNITS_PROBE:
            return super().shares(event)
        layers = event.get("layers") or {}
        return {name: v for name, v in layers.items() if isinstance(v, int | float)}

    def stuck(self, ctx: RunContext) -> bool:
        # Many units of a healthy ReLU net die early (pytorch/examples' MNIST loses half of
        # fc1's at Adadelta lr=1) while its loss falls fast: only a net that stopped
        # learning is held back by them.
        return not ctx.learning(int(self.p["window"]), self.p["min_progress"])

    def looks_needed(self, probe: str) -> int:
        # A unit counts in a dead_units share only once its gradient was zero on the last
        # PERSIST_LOOKS probes: those looks are part of the patience already.
        if probe == DEAD_UNITS_PROBE:
            return max(1, int(self.p["patience"]) - PERSIST_LOOKS + 1)
        return super().looks_needed(probe)

    def verdict(self, layer: str, share: float, ctx: RunContext, probe: str) -> Verdict:
        looks = self.looks_needed(probe)
        if probe == DEAD_UNITS_PROBE:
            looks += PERSIST_LOOKS - 1
            message = (
                f"{share:.0%} of the units of {layer} are dead: their gradient is exactly zero "
                f"for whole batches, over the last {looks} probes (the ReLU after {layer} "
                "never fires for them)"
            )
        else:
            message = (
                f"{share:.0%} of the units after {layer} are dead: active for under 1% of the "
                f"samples, over the last {looks} probes"
            )
        return Verdict(
            True,
            message,
            "dead units get no gradient and never recover: lower the LR, use LeakyReLU, check "
            "that biases do not start very negative, or add BatchNorm before the ReLU",
            {"layer": layer, "dead_share": share, "probe": probe},
        )


class SaturatedActivations(_LayerShareRule):
    id = "saturated_activations"
    symptom = True
    key = "saturated"
    summary = "sigmoid/tanh outputs sit at their flat ends (|tanh| > 0.99, sigmoid < .01/> .99)"
    fix = "normalize inputs, smaller init, BatchNorm, or ReLU"

    def verdict(self, layer: str, share: float, ctx: RunContext, probe: str) -> Verdict:
        looks = self.looks_needed(probe)
        return Verdict(
            True,
            f"{share:.0%} of the outputs of {layer} are at the flat ends of the activation, "
            f"where its gradient is ~0, over the last {looks} probes",
            "inputs to the activation are too large: normalize the inputs, initialize smaller "
            "(Xavier/Glorot), add BatchNorm, or use ReLU",
            {"layer": layer, "saturated_share": share},
        )
