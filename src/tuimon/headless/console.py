"""Prints a run's progress and its notable events, as a listener on the event log."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from tuimon.control.commands import describe
from tuimon.headless.progress import Progress
from tuimon.number_text import format_value, show_value
from tuimon.run.events import (
    FAILED,
    INFO,
    RESERVED_METRIC_KEYS,
    WARNING,
    Action,
    AlertClearedEvent,
    AlertEvent,
    CheckpointEvent,
    ControlEvent,
    EndEvent,
    MessageEvent,
    MetricsEvent,
    StartEvent,
    StepEvent,
)
from tuimon.terminal_text import printable


class ConsoleReporter:
    """A progress line every `print_every` seconds; alerts, controls and the end at once."""

    def __init__(
        self,
        name: str,
        print_every: float = 5.0,
        stream: TextIO | None = None,
        smoothing: float = 0.9,
    ) -> None:
        self.name = name
        self.print_every = print_every
        self._stream = stream
        self._smoothing = smoothing
        self.progress = Progress(smoothing=smoothing)
        self._last_print = time.monotonic()
        self._last_metrics_print = -math.inf
        self._actions: dict[str, Action] = {}  # the fix of each holding alert, by rule

    def __call__(self, event: dict[str, Any]) -> None:
        """An event of the log: `_on_<type>` handles its type (the names of run/events.py),
        typed as that type's event."""
        kind = event.get("type")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _print(self, text: str) -> None:
        """Every line goes out through here: names, messages, paths and tracebacks come
        from the run, and an escape sequence in them must not reach the terminal."""
        stream = self._stream or sys.stdout
        print(printable(text), file=stream, flush=True)

    def _on_start(self, event: StartEvent) -> None:
        self.progress = Progress(
            total_steps=event.get("total_steps"),
            epochs=event.get("epochs"),
            smoothing=self._smoothing,
        )
        device = (event.get("device") or {}).get("name", "?")
        model = event.get("model") or {}
        params = model.get("params")
        size = f", {params / 1e6:.2f}M params" if isinstance(params, int) else ""
        self._print(
            f"[{self.name}] run {event.get('run_dir')} on {device}: "
            f"{model.get('class', 'model')}{size}"
        )
        for note in event.get("notes") or []:
            self._print(f"[{self.name}] note: {note}")
        if event.get("resumed_from"):
            self._print(
                f"[{self.name}] resumed from {event['resumed_from']} at step "
                f"{event.get('start_step')}"
            )

    def _on_step(self, event: StepEvent) -> None:
        self.progress.add_step(event)
        now = time.monotonic()
        if now - self._last_print >= self.print_every:
            self._last_print = now
            self.progress.close_window()
            self._print(self.progress.line(self.name))

    def _on_metrics(self, event: MetricsEvent) -> None:
        """Validation results are printed at once; scalars logged more often than every
        `print_every` seconds (a train accuracy each step) ride on the progress line."""
        values = {
            k: float(v)
            for k, v in event.items()
            if k not in RESERVED_METRIC_KEYS and isinstance(v, int | float)
        }
        self.progress.add_metrics(values)
        now = time.monotonic()
        if values and now - self._last_metrics_print >= self.print_every:
            self._last_metrics_print = now
            shown = "  ".join(f"{k} {format_value(v)}" for k, v in values.items())
            self._print(f"[{self.name}] step {event.get('step')}: {shown}")

    def _on_alert(self, event: AlertEvent) -> None:
        severity = str(event.get("severity", WARNING)).upper()
        self._print(
            f"[{self.name}] {severity} {event.get('rule')} at step {event.get('step')}: "
            f"{event.get('message')}"
        )
        if event.get("suggestion"):
            self._print(f"[{self.name}]   suggestion: {event['suggestion']}")
        if event.get("action"):
            self._actions[str(event.get("rule"))] = event["action"]

    def _on_alert_cleared(self, event: AlertClearedEvent) -> None:
        action = self._actions.pop(str(event.get("rule")), None)
        stale = f": its fix ({describe(action)}) no longer applies" if action else ""
        self._print(
            f"[{self.name}] cleared: {event.get('rule')} at step {event.get('step')}{stale}"
        )

    def _on_control(self, event: ControlEvent) -> None:
        self._print(
            f"[{self.name}] {event.get('command')} at step {event.get('step')}: "
            f"{show_value(event.get('old'))} -> {show_value(event.get('new'))} "
            f"(from {event.get('source')})"
        )

    def _on_checkpoint(self, event: CheckpointEvent) -> None:
        self._print(f"[{self.name}] checkpoint at step {event.get('step')}: {event.get('path')}")

    def _on_message(self, event: MessageEvent) -> None:
        self._print(f"[{self.name}] {event.get('level', INFO)}: {event.get('text')}")

    def _on_end(self, event: EndEvent) -> None:
        self.progress.close_window()
        self._print(self.progress.line(self.name))
        status = event.get("status")
        elapsed = event.get("elapsed")
        took = f" in {elapsed:.1f}s" if isinstance(elapsed, int | float) else ""
        self._print(f"[{self.name}] {status} at step {event.get('step')}{took}")
        if status == FAILED and event.get("error"):
            # The full traceback is in the log and on stderr; one line says what it was.
            self._print(f"[{self.name}] error: {str(event['error']).strip().splitlines()[-1]}")
