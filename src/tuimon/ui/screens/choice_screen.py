"""A question with a few answers as buttons (stop the run? leave it running?)."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static
from textual.widgets.button import ButtonVariant

from tuimon.terminal_text import printable


class ChoiceScreen(ModalScreen[str | None]):
    """Dismisses with the id of the chosen button, or None on Escape."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, question: str, choices: list[tuple[str, str, ButtonVariant]]) -> None:
        super().__init__()
        self.question = question
        self.choices = choices  # (id, label, variant)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            # Plain, printable text: a question may quote an alert (from the log) with
            # [brackets] or escape sequences in it.
            yield Static(Text(printable(self.question)), classes="dialog-title")
            with Horizontal(classes="buttons"):
                for choice_id, label, variant in self.choices:
                    yield Button(label, id=choice_id, variant=variant)
            yield Static("Esc cancels", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query(Button).last().focus()  # the safe choice (cancel) is last

    @on(Button.Pressed)
    def choose(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)
