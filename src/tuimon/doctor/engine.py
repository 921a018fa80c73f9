"""The training doctor: runs every rule on each event and turns verdicts into alerts.

One alert per episode: a rule alerts when its condition starts, stays quiet while it
holds, and its episode ends (an `alert_cleared` event) when the condition clears. A more
specific rule's alert suppresses the alerts it makes redundant (input_nan → nan_loss).
The engine is pure: it reads events and returns events, in the worker (live) or over a
recorded log (`tuimon doctor`).
"""

from __future__ import annotations

import math
from typing import Any, cast

from tuimon.control.commands import RECOVER, SCALE_LR
from tuimon.doctor.context import RunContext
from tuimon.doctor.registry import ALL_RULES, RULES
from tuimon.doctor.rule import Rule, probe_route
from tuimon.doctor.streak import Streak
from tuimon.run.events import (
    ALERT,
    ALERT_CLEARED,
    CONTROL,
    INFO,
    PROBE,
    STEP,
    AlertClearedEvent,
    AlertEvent,
)
from tuimon.run.field_types import has_loss

# What the doctor says: an alert, or that one's episode is over.
DoctorEvent = AlertEvent | AlertClearedEvent

# Failures that restoring the last good weights answers (autofix, the `recover` command).
RECOVERABLE = ("nan_loss", "nan_grad", "divergence")
# One huge step (an LR burst) that blows the loss up is over in a step or two, and ...
BLOW_UPS = ("divergence", "nan_loss", "nan_grad", "exploding_gradients")
# ... some damage it does outlives it: a symptom of these is then the reason the run stays
# stuck, said as a warning linked to the blow-up, not as an info-level consequence.
OUTLIVE_BLOW_UPS = ("dead_relu",)
NO_RESTORE_NOTE = (
    " Restoring the last good weights needs snapshots, which this run does not keep "
    "(Monitor(snapshot_every=20) or autofix=True; monitor.snapshot_every in a config), "
    "so the action offered here only scales the LR."
)


class Doctor:
    def __init__(
        self, overrides: dict[str, dict[str, Any]] | None = None, *, can_restore: bool = True
    ) -> None:
        """`can_restore`: whether the run keeps snapshots; without, no `recover` is offered."""
        overrides = overrides or {}
        self.can_restore = can_restore
        self.ctx = RunContext()
        self.rules: list[Rule[Any]] = []
        for cls in ALL_RULES:
            settings = dict(overrides.get(cls.id) or {})
            if settings.pop("enabled", True) is False:
                continue
            self.rules.append(cls(settings))
        self.active: dict[str, AlertEvent] = {}
        self.silenced: set[str] = set()  # holding, but suppressed by a more specific alert
        # Per rule, its "cleared" verdicts in a row during an episode (`clear_after` end it).
        self._clears = {rule.id: Streak(rule.p["clear_after"]) for rule in self.rules}
        # Rules by the route they read ("step", "probe:batch"…): an event is shown only to
        # its readers, not offered to all ~30 rules (the doctor runs on every step event).
        self._readers: dict[str, list[Rule[Any]]] = {}

    def observe(self, event: dict[str, Any]) -> list[DoctorEvent]:
        """New `alert` / `alert_cleared` events caused by this event."""
        kind = event.get("type")
        if kind in (ALERT, ALERT_CLEARED):
            return []  # our own output, when re-reading a log
        if kind == CONTROL and event.get("command") == RECOVER:
            return self._start_over(RECOVERABLE, event.get("step", self.ctx.step))
        self.ctx.update(event)
        # A probe event goes to the rules that read that probe: "probe:batch" and so on.
        route = probe_route(event.get("probe")) if kind == PROBE else kind
        if type(route) is not str:
            return []  # a damaged log's event: no rule reads it
        readers = self._readers.get(route)
        if readers is None:
            readers = self._readers[route] = [r for r in self.rules if route in r.events]
        step = event.get("step", self.ctx.step)
        finite = kind != STEP or math.isfinite(self.ctx.loss)
        lossless = kind == STEP and not has_loss(event)
        out: list[DoctorEvent] = []
        for rule in readers:
            if rule.needs_finite_loss and not finite:
                continue
            if lossless and rule.reads_loss:
                continue
            verdict = rule.check(event, self.ctx)
            if verdict is None:
                continue
            if not verdict.active:
                if rule.id not in self.active and rule.id not in self.silenced:
                    # Nothing to end: the count of "cleared" verdicts only matters during
                    # an episode, and an episode starts with it at 0.
                    continue
                if self._clears[rule.id].hold():
                    if self.active.pop(rule.id, None) is not None:
                        out.append({"type": ALERT_CLEARED, "rule": rule.id, "step": step})
                        self._release()
                    self.silenced.discard(rule.id)
                continue
            self._clears[rule.id].reset()
            if rule.id in self.active or rule.id in self.silenced:
                continue
            if self._suppressed(rule.id):
                self.silenced.add(rule.id)
                continue
            alert: AlertEvent = {
                "type": ALERT,
                "step": step,
                "rule": rule.id,
                "severity": verdict.severity or rule.severity,
                "message": verdict.message,
                "suggestion": verdict.suggestion,
                "evidence": verdict.evidence,
            }
            if rule.symptom and self.ctx.causes:
                blow_ups = {c: s for c, s in self.ctx.causes.items() if c in BLOW_UPS}
                if rule.id in OUTLIVE_BLOW_UPS and blow_ups:
                    # The blow-up is over, its damage stays: this is what keeps the run down.
                    cause, when = min(blow_ups.items(), key=lambda item: item[1])
                    alert["message"] += (
                        f", since the loss blew up at step {when} ({cause}): dead units do not "
                        "come back, so the run cannot recover by itself"
                    )
                else:
                    cause, when = min(self.ctx.causes.items(), key=lambda item: item[1])
                    alert["severity"] = INFO
                    alert["message"] += f" (likely a consequence of {cause} at step {when})"
                # A cast until run/events.py's AlertEvent has `caused_by`.
                cast(dict[str, Any], alert)["caused_by"] = cause
            if rule.cause:
                self.ctx.causes.setdefault(rule.id, step)
            if verdict.action:
                alert["action"] = verdict.action
                if verdict.action.get("cmd") == RECOVER and not self.can_restore:
                    alert["action"] = {"cmd": SCALE_LR, "factor": verdict.action["lr_factor"]}
                    alert["suggestion"] = (alert["suggestion"] or "") + NO_RESTORE_NOTE
            self.active[rule.id] = alert
            out.append(alert)
        return out

    def _release(self) -> None:
        """Rules silenced only by an episode that just ended may speak at their next look."""
        self.silenced = {rule_id for rule_id in self.silenced if self._suppressed(rule_id)}

    def _suppressed(self, rule_id: str) -> bool:
        """Whether an active alert makes this rule's alert redundant."""
        return any(rule_id in RULES[other].suppresses for other in self.active)

    def _start_over(self, rule_ids: tuple[str, ...], step: int) -> list[DoctorEvent]:
        """After weights were restored: these rules' episodes end, and they judge the run
        afresh, so a failure that comes back is a new episode (autofix may try again)."""
        cleared: list[DoctorEvent] = []
        for index, rule in enumerate(self.rules):
            if rule.id in rule_ids:
                self.rules[index] = type(rule)(rule.p)
                self._readers.clear()
                if self.active.pop(rule.id, None) is not None:
                    cleared.append(
                        {
                            "type": ALERT_CLEARED,
                            "rule": rule.id,
                            "step": step,
                            "reason": "recovered",
                        }
                    )
                self.silenced.discard(rule.id)
                self._clears[rule.id].reset()
        return cleared

    def run(self, events: list[dict[str, Any]]) -> list[DoctorEvent]:
        """Everything the doctor says over a whole log."""
        said: list[DoctorEvent] = []
        for event in events:
            said += self.observe(event)
        return said
