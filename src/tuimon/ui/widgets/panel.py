"""The base of every panel: redraw from the RunState only when what it shows has changed."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console, RenderableType
from textual.widgets import Static

from tuimon.run.run_state import RunState
from tuimon.ui.plotting import ViewOptions
from tuimon.ui.terminal_safe import TerminalSafe


class Panel(Static):
    """A bordered box whose content is a function of (state, options, size)."""

    TITLE = ""
    PLOT = False  # plots are costly to draw: the app spreads their redraws over ticks

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", markup=False, **kwargs)
        self.border_title = self.TITLE
        self._drawn: Any = None
        self.draws = 0  # how many times the content was rebuilt (tests check the caching)
        self.last_view: RenderableType = ""  # as drawn (through TerminalSafe)

    def signature(self, state: RunState, options: ViewOptions) -> Any:
        """What the panel shows depends on: redraw only when this changes."""
        return state.version

    def view(
        self, state: RunState, options: ViewOptions, width: int, height: int
    ) -> RenderableType:
        raise NotImplementedError

    def _key(self, state: RunState, options: ViewOptions) -> Any:
        size = self.content_size
        # id(state): a replaced state (a reconnect's snapshot) is always drawn afresh.
        return (id(state), self.signature(state, options), options, size.width, size.height)

    def is_stale(self, state: RunState, options: ViewOptions) -> bool:
        with state.lock:
            return self._key(state, options) != self._drawn

    def refresh_view(self, state: RunState, options: ViewOptions) -> bool:
        """Redraw if what the panel shows has changed; True if it did."""
        size = self.content_size
        if size.width <= 0 or size.height <= 0:
            return False
        with state.lock:
            key = self._key(state, options)
            if key == self._drawn:
                return False
            # Whatever the view holds from the log is drawn as plain, printable text.
            renderable = TerminalSafe(self.view(state, options, size.width, size.height))
        self._drawn = key
        self.draws += 1
        self.last_view = renderable
        self.update(renderable)
        return True

    def plain_lines(self) -> list[str]:
        """The panel's content as plain text lines, as drawn at its current width."""
        console = Console(
            width=max(self.content_size.width, 1), color_system=None, file=io.StringIO()
        )
        with console.capture() as captured:
            console.print(self.last_view)
        return captured.get().rstrip("\n").split("\n")
