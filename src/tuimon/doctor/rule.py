"""The shape of a training-doctor rule, and the verdict it gives.

A rule looks at the events it cares about (plus the shared RunContext) and says, when it
has an opinion: the condition holds (with the numbers, a suggestion and maybe a command
that fixes it), or it has cleared. The engine turns verdicts into one alert per episode.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from tuimon.doctor.context import RunContext
from tuimon.run.events import PROBE, STEP, WARNING, Action, Severity

# The event a rule reads (StepEvent, BatchProbeEvent…): a misspelt field is a type error.
E = TypeVar("E", bound=Mapping[str, Any])


@dataclass
class Verdict:
    active: bool
    message: str = ""
    suggestion: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    action: Action | None = None  # a command that fixes it (control/commands.py)
    severity: Severity | None = None  # overrides the rule's default when set


def probe_route(probe: object) -> str:
    """The route of a probe event, by its probe name: "probe:batch", "probe:dead_units"."""
    return f"{PROBE}:{probe}"


class Rule(Generic[E]):
    id: ClassVar[str]
    severity: ClassVar[Severity] = WARNING
    # Event types it reads (STEP, METRICS…); probe events by their probe's route:
    # probe_route(BATCH_PROBE) is "probe:batch".
    events: ClassVar[tuple[str, ...]] = (STEP,)
    # Thresholds; every one can be overridden in the config: monitor.rules.<id>.<name>.
    defaults: ClassVar[dict[str, float]] = {}
    # Rules whose alerts this rule's (more specific) alert makes redundant while active:
    # symptoms of the fault this rule names.
    suppresses: ClassVar[tuple[str, ...]] = ()
    # Rules that read the loss curve learn nothing from a NaN step (the smoothed loss
    # stands still), so the engine does not ask them then.
    needs_finite_loss: ClassVar[bool] = False
    # A step without a loss (a framework loop that returned none): only rules that do not
    # read the loss are asked; the others would take "unknown" for NaN.
    reads_loss: ClassVar[bool] = True
    # An episode ends after this many "cleared" verdicts in a row (overridable).
    clear_after: ClassVar[int] = 3
    # A root cause: once it has alerted, later alerts of symptom rules point back to it.
    cause: ClassVar[bool] = False
    # What usually follows a cause (dead units after a blow-up): said as info, with the link.
    symptom: ClassVar[bool] = False
    summary: ClassVar[str] = ""  # what it detects, for the README and `tuimon doctor`
    fix: ClassVar[str] = ""  # the fix it suggests, in short

    def __init__(self, params: dict[str, float] | None = None) -> None:
        self.p = {"clear_after": self.clear_after, **self.defaults, **(params or {})}

    def check(self, event: E, ctx: RunContext) -> Verdict | None:
        raise NotImplementedError


def clear() -> Verdict:
    return Verdict(active=False)


def nice_factor(value: float) -> float:
    """A round LR factor near `value`: 0.5, 0.2, 0.1, 0.05 … or 2, 5, 10 …"""
    exponent = math.floor(math.log10(value))
    mantissa = value / 10**exponent
    step = min((1, 2, 5, 10), key=lambda m: abs(math.log(mantissa / m)))
    return step * 10**exponent
