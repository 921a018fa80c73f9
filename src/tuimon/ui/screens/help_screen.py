"""`?`: every key and what it does, from the same registry as the bindings."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from tuimon.ui.keymap import KEYS


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", justify="right")
        table.add_column()
        for key in KEYS:
            table.add_row(key.display, key.help)
        with Vertical(id="dialog"):
            # The hints share the title's line: at 80x24 every row of the table fits.
            yield Static(
                "tuimon keys · Esc closes · ↑ ↓ select a Doctor alert", classes="dialog-title"
            )
            yield Static(table)
