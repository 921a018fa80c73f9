"""The training doctor's alerts, newest first, with the key that applies each fix."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, cast

from rich.console import RenderableType
from rich.text import Text
from textual.binding import Binding

from tuimon.control.commands import describe
from tuimon.headless.alert_text import APPLY_KEY, cleared_at, without_key_hint
from tuimon.number_text import show_value
from tuimon.run.events import (
    ALERT,
    ALERT_CLEARED,
    CONTROL,
    ERROR,
    INFO,
    MESSAGE,
    WARNING,
    AlertEvent,
    ControlEvent,
)
from tuimon.run.run_state import RunState
from tuimon.ui.plotting import ViewOptions
from tuimon.ui.widgets.lines import fit, wrap
from tuimon.ui.widgets.panel import Panel

SEVERITY_STYLE = {
    ERROR: "bold white on red",
    WARNING: "bold black on yellow",
    INFO: "bold white on blue",
}


def autofix_text(control: ControlEvent) -> str:
    restored = control.get("restored_step")
    back = (
        f"restored the weights of step {restored}"
        if restored is not None
        else ("no snapshot to restore")
    )
    return f"{back}, LR {show_value(control.get('old'))} → {show_value(control.get('new'))}"


class DoctorPanel(Panel):
    TITLE = "Doctor"
    can_focus = True
    BINDINGS = [
        Binding("up", "select(-1)", "Previous alert", show=False),
        Binding("down", "select(1)", "Next alert", show=False),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.selected = 0  # index into the alerts, newest first
        # The selected alert itself: a new alert above it does not move the selection, so
        # `a` applies the fix of the alert that is highlighted, not of one that just arrived.
        self._selected_key: tuple[Any, Any] | None = None
        self._alerts: list[AlertEvent] = []
        # Set by the app: why no command can reach the run (a replay, a worker that is
        # gone), or None. Then no fix is offered as `[a] apply`.
        self.no_commands: str | None = None

    def signature(self, state: RunState, options: ViewOptions) -> Any:
        counts = state.counts
        return (
            counts[ALERT],
            counts[ALERT_CLEARED],
            counts[CONTROL],
            counts[MESSAGE],
            state.end is not None,
            self.no_commands,
            self.selected,
        )

    @property
    def selected_alert(self) -> AlertEvent | None:
        return self._alerts[self.selected] if 0 <= self.selected < len(self._alerts) else None

    def action_select(self, delta: int) -> None:
        if self._alerts:
            self.move_selection(delta)
            self.app.refresh_panels()  # type: ignore[attr-defined]

    def move_selection(self, delta: int) -> None:
        """Select the alert `delta` places older (positive) or newer than the selected one."""
        if self._alerts:
            self.selected = max(0, min(len(self._alerts) - 1, self.selected + delta))
            self._selected_key = _key(self._alerts[self.selected])

    def view(
        self, state: RunState, options: ViewOptions, width: int, height: int
    ) -> RenderableType:
        self._alerts = list(reversed(cast("Sequence[AlertEvent]", state.alerts)))
        keys = [_key(alert) for alert in self._alerts]
        if self._selected_key in keys:
            self.selected = keys.index(self._selected_key)
        self.selected = min(self.selected, max(0, len(self._alerts) - 1))
        self._selected_key = keys[self.selected] if keys else None
        # Only what fits is wrapped: a long run can hold thousands of alerts and notes.
        return fit(list(islice(self._lines(state, width, height), height)), width, height)

    def _autofix_lines(self, state: RunState, width: int) -> list[Text]:
        lines: list[Text] = []
        controls = cast("Iterable[ControlEvent]", state.controls)
        for fix in reversed([c for c in controls if c.get("source") == "autofix"]):
            text = f"autofix at step {fix.get('step')}: {autofix_text(fix)}"
            lines += wrap(text, width, style="bold magenta", indent="  ")
        return lines

    def _selected_below(self, state: RunState, width: int, height: int) -> bool:
        """Whether the selected alert's lines would end below the panel's last line."""
        used = len(self._autofix_lines(state, width))
        for alert in self._alerts[: self.selected + 1]:
            used += len(self.alert_lines(alert, width, selected=False))
            if used > height:
                return True
        return False

    def _lines(self, state: RunState, width: int, height: int) -> Iterator[Text]:
        ended = state.end is not None or self.no_commands is not None
        if self.selected > 0 and self._selected_below(state, width, height):
            # The selected alert (the one `a` applies) is always in view: the list scrolls.
            yield Text(f"↑ {self.selected} newer (↑ selects)", style="dim")
            for alert in self._alerts[self.selected :]:
                yield from self.alert_lines(
                    alert, width, selected=alert is self.selected_alert, ended=ended
                )
            return
        yield from self._autofix_lines(state, width)
        if not self._alerts:
            yield from wrap("No alerts: nothing wrong seen so far.", width, style="green")
        for index, alert in enumerate(self._alerts):
            yield from self.alert_lines(alert, width, selected=index == self.selected, ended=ended)
        notes = [m.get("text") for m in state.messages if m.get("level") != "debug"]
        for note in [*reversed(notes), *((state.start or {}).get("notes") or [])]:
            yield from wrap(f"note: {note}", width, style="dim", indent="  ")

    def alert_lines(
        self, alert: AlertEvent, width: int, selected: bool, ended: bool = False
    ) -> list[Text]:
        """An alert's lines; its fix is offered as `[a] apply` only while the alert holds
        and the run can still take commands."""
        severity = str(alert.get("severity", WARNING))
        cleared = cleared_at(alert)
        holds = cleared is None and not ended
        head = Text(no_wrap=True)
        head.append(
            f" {severity.upper()} ",
            style="dim" if cleared is not None else SEVERITY_STYLE.get(severity, "bold"),
        )
        head.append(f" {alert.get('rule')} ", style="bold")
        head.append(f"at step {alert.get('step')}", style="dim")
        if cleared is not None:
            head.append(f", cleared at {cleared}", style="green")
        lines = [head, *wrap(str(alert.get("message", "")), width, indent="  ")]
        suggestion = str(alert.get("suggestion") or "")
        if suggestion:
            shown = suggestion if holds else without_key_hint(suggestion)
            lines += wrap(f"→ {shown}", width, style="italic", indent="  ")
        if alert.get("action"):
            fix = describe(alert["action"])
            if holds:
                lines.append(
                    Text(f"[{APPLY_KEY}] apply: {fix}", style="bold green" if selected else "green")
                )
            else:
                why = (
                    "no longer applies" if cleared is not None else self.no_commands or "run ended"
                )
                lines.append(Text(f"fix ({why}): {fix}", style="dim"))
        if selected and len(self._alerts) > 1:  # show which one [a] applies
            for line in lines:
                line.stylize("reverse", 0, len(line))
        return lines


def _key(alert: AlertEvent) -> tuple[Any, Any]:
    """What names one alert across redraws and reconnects (a snapshot has new dicts)."""
    return alert.get("rule"), alert.get("step")
