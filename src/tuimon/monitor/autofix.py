"""Autofix: when the doctor names a blow-up it can undo, ask for a `recover`.

A policy, apart from the commands it leads to: which alerts it acts on (the doctor's
RECOVERABLE rules), whether it may (`monitor.autofix`), how often (`autofix_max`, then it
gives up and says so) and one recovery per incident. It decides on the event log's
thread; the command runner applies the recover at the next step boundary.
"""

from __future__ import annotations

from collections.abc import Callable

from tuimon.config.schema import MonitorConfig
from tuimon.control.commands import RECOVER
from tuimon.control.protocol import Request
from tuimon.doctor.engine import RECOVERABLE
from tuimon.doctor.rules.loss import RECOVER as RECOVER_ACTION
from tuimon.run.events import ERROR, AlertEvent, Severity

SOURCE = "autofix"  # the recover's `source` in its control event


class Autofix:
    def __init__(self, settings: MonitorConfig, note: Callable[[str, Severity], None]) -> None:
        self._settings = settings
        self._note = note
        self.tries = 0
        self.pending = False  # a recover is queued and not yet applied

    def consider(self, alert: AlertEvent) -> Request | None:
        """The recover to queue for this alert, or None."""
        rule = alert.get("rule")
        if rule not in RECOVERABLE:
            return None
        # One recovery per incident: a NaN gradient and the NaN loss it causes arrive
        # together, and the second must not cut the LR again before the first is applied.
        if not self._settings.autofix or self.pending:
            return None
        if self.tries >= self._settings.autofix_max:
            self._note(f"autofix: gave up on {rule} after {self.tries} tries", ERROR)
            return None
        self.tries += 1
        self.pending = True
        # Some verdicts (NaN from the inputs) carry no action: the plain recover then.
        action = alert.get("action") or RECOVER_ACTION
        args = {k: v for k, v in action.items() if k != "cmd"}
        return Request(cmd=RECOVER, args=args, source=SOURCE)

    def recovery_applied(self) -> None:
        """A recover was applied (this one's, or anyone's): the next incident may have one."""
        self.pending = False
