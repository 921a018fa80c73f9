"""The app of `tuimon` alone: the runs screen, and nothing else.

It exits with what to open next, `(OPEN_ATTACH | OPEN_REPLAY, run_dir)`, or None to quit;
the launcher (runs_launch.py) opens that run's own UI in this terminal and then this app
again, on the same catalog and view state, so the screen comes back as it was left.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from textual.app import App
from textual.screen import Screen

from tuimon.catalog.catalog import RunCatalog
from tuimon.system.nvml import NVML
from tuimon.ui.runs_view import RunsViewState
from tuimon.ui.screens.runs_screen import REFRESH_S, RunsScreen

RunsChoice = tuple[str, Path]


class RunsApp(App[RunsChoice | None]):
    CSS_PATH = "styles.tcss"
    TITLE = "tuimon runs"
    ENABLE_COMMAND_PALETTE = False

    def __init__(
        self,
        roots: Sequence[Path],
        *,
        catalog: RunCatalog | None = None,
        view: RunsViewState | None = None,
        nvml: NVML | None = None,
        refresh_s: float = REFRESH_S,
    ) -> None:
        super().__init__()
        self.roots = list(roots)
        self.catalog = catalog if catalog is not None else RunCatalog(self.roots)
        self.view = view if view is not None else RunsViewState()
        self.nvml = nvml if nvml is not None else NVML()
        self.refresh_s = refresh_s

    def get_default_screen(self) -> Screen[None]:
        return RunsScreen(
            self.catalog, self.view, roots=self.roots, nvml=self.nvml, refresh_s=self.refresh_s
        )

    @property
    def runs_screen(self) -> RunsScreen:
        return next(s for s in self.screen_stack if isinstance(s, RunsScreen))
