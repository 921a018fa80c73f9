"""`l`: type an exact learning rate. Bad input is refused in place, with the reason."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from tuimon.control.commands import MAX_LR, CommandError, validate_lr
from tuimon.number_text import short_number


class LRScreen(ModalScreen[float | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, current: float | None, maximum: float = MAX_LR) -> None:
        """`maximum`: the run's own `lr_max`, so a value it would refuse is refused here."""
        super().__init__()
        self.current = current
        self.maximum = maximum

    def compose(self) -> ComposeResult:
        now = short_number(self.current) if self.current is not None else "unknown"
        with Vertical(id="dialog"):
            yield Static(f"New learning rate (now {now})", classes="dialog-title")
            yield Input(placeholder="e.g. 0.003 or 3e-4", id="lr-input")
            yield Static("", id="lr-error")
            yield Static("Enter applies at the next step · Esc cancels", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def submit(self, event: Input.Submitted) -> None:
        try:
            value = validate_lr(event.value, maximum=self.maximum)
        except CommandError as exc:
            self.query_one("#lr-error", Static).update(f"refused: {exc}")
            return
        self.dismiss(value)

    @on(Input.Changed)
    def clear_error(self) -> None:
        self.query_one("#lr-error", Static).update("")
