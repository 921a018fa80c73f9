"""`?`: every key of a screen and what it does, from the same registry as its bindings."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from tuimon.ui.keymap import KEYS, Key

# The hints share the title's line: at 80x24 every row of the run UI's table fits.
RUN_KEYS_TITLE = "tuimon keys · Esc closes · ↑ ↓ select a Doctor alert"


class HelpScreen(ModalScreen[None]):
    """The keys of the run UI (KEYS), or of another screen (the runs screen, compare)."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, keys: Sequence[Key] = KEYS, title: str = RUN_KEYS_TITLE) -> None:
        super().__init__()
        self.keys = keys
        self.title_text = title

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", justify="right")
        table.add_column()
        for key in self.keys:
            table.add_row(key.display, key.help)
        with Vertical(id="dialog"):
            yield Static(self.title_text, classes="dialog-title")
            yield Static(table)
