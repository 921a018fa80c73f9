"""A Rich renderable whose every character reaches the terminal as plain, printable text.

Panels draw text that came from the run's log or socket: its name, alert messages and
notes, metric and layer names, a GPU's name. Rather than trust each line of each panel to
remember, every panel's drawing passes through here on its way to the screen: each
segment's text goes through `printable`, so no ESC, BEL or 8-bit CSI in the data can set
the terminal's title or move its cursor. Rich's `Text` removes only a few controls (BEL,
backspace, CR...) and keeps ESC.
"""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.segment import Segment

from tuimon.terminal_text import printable


class TerminalSafe:
    """Draws `renderable`, with control characters in its text neutralized."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for segment in console.render(self.renderable, options):
            if segment.control:
                continue  # cursor moves and the like: no panel draws them on purpose
            text = printable(segment.text)
            yield segment if text == segment.text else Segment(text, segment.style)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.renderable)
