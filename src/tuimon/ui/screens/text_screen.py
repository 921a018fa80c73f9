"""Long text in a scrollable box: a failed run's traceback, or the run's output."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tuimon.terminal_text import printable


class TextScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q", "dismiss", "Close")]

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_text = title
        self.body = text

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="wide"):
            # Both may come from the run (a traceback, its output, a path): plain text,
            # with control characters neutralized, never markup.
            yield Static(Text(printable(self.title_text)), classes="dialog-title")
            with VerticalScroll(id="text-body"):
                yield Static(Text(printable(self.body)), id="text-content")
            yield Static("Esc closes · ↑/↓ PgUp/PgDn scroll", classes="dialog-hint")

    def on_mount(self) -> None:
        scroll = self.query_one("#text-body", VerticalScroll)
        scroll.focus()
        scroll.scroll_end(animate=False)
