"""The base of every panel: redraw from the RunState only when what it shows has changed."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from textual.widgets import Static

from tuimon.run.run_state import RunState
from tuimon.ui.plotting import ViewOptions


class Panel(Static):
    """A bordered box whose content is a function of (state, options, size)."""

    TITLE = ""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", markup=False, **kwargs)
        self.border_title = self.TITLE
        self._drawn: Any = None
        self.draws = 0  # how many times the content was rebuilt (tests check the caching)

    def signature(self, state: RunState, options: ViewOptions) -> Any:
        """What the panel shows depends on: redraw only when this changes."""
        return state.version

    def view(
        self, state: RunState, options: ViewOptions, width: int, height: int
    ) -> RenderableType:
        raise NotImplementedError

    def refresh_view(self, state: RunState, options: ViewOptions) -> None:
        size = self.content_size
        if size.width <= 0 or size.height <= 0:
            return
        with state.lock:
            key = (self.signature(state, options), options, size.width, size.height)
            if key == self._drawn:
                return
            renderable = self.view(state, options, size.width, size.height)
        self._drawn = key
        self.draws += 1
        self.update(renderable)
