"""The runs screen: every run under the roots, live, with keys to open, stop and compare.

A timer asks a thread worker to refresh the catalog (stat the roots, read only what each
log appended) and to read the machine's GPUs; the result comes back as a message and the
table is updated in place. The UI thread never reads a log or calls NVML.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from tuimon.catalog.catalog import RunCatalog
from tuimon.catalog.machine_gpus import MachineGpu, machine_gpus
from tuimon.catalog.roots import missing_roots
from tuimon.catalog.run_summary import RunSummary
from tuimon.control.client import ControlClient, ControlError
from tuimon.control.commands import STOP
from tuimon.errors import UsageError
from tuimon.run.events import STOPPING
from tuimon.system.nvml import NVML
from tuimon.terminal_text import printable
from tuimon.ui.keymap import RUNS_KEYS, runs_bindings
from tuimon.ui.runs_view import (
    OPEN_ATTACH,
    OPEN_REPLAY,
    SORT_TITLES,
    RunsViewState,
    next_sort,
    visible_runs,
)
from tuimon.ui.screens.choice_screen import ChoiceScreen
from tuimon.ui.screens.help_screen import HelpScreen
from tuimon.ui.screens.text_screen import TextScreen
from tuimon.ui.widgets.machine_gpu_panel import MachineGpuPanel
from tuimon.ui.widgets.runs_table import RunsTable

REFRESH_S = 1.0  # how often the catalog is read again
NO_RUNS_HINT = "no runs yet: tuimon CONFIG.yaml or tuimon run SCRIPT.py starts one"


class CatalogRead(Message):
    """A refresh's result, from the catalog thread."""

    def __init__(
        self,
        runs: list[RunSummary],
        gpus: list[MachineGpu],
        reason: str,
        seconds: float,
        missing: list[Path] | None = None,
        error: str = "",
    ) -> None:
        super().__init__()
        self.runs = runs
        self.missing = missing or []  # roots that are not directories
        self.error = error  # why this read failed ("" when it did not)
        self.gpus = gpus
        self.reason = reason
        self.seconds = seconds


class RunsScreen(Screen[None]):
    BINDINGS = [*runs_bindings(), Binding("escape", "clear_filter", show=False)]

    def __init__(
        self,
        catalog: RunCatalog,
        view: RunsViewState,
        *,
        roots: Sequence[Path] = (),
        nvml: NVML | None = None,
        refresh_s: float = REFRESH_S,
    ) -> None:
        super().__init__()
        self.catalog = catalog
        self.view = view
        self.roots = list(roots)
        self.nvml = nvml
        self.refresh_s = refresh_s
        self.runs: list[RunSummary] = []
        self.gpus: list[MachineGpu] = []
        self.gpu_reason = ""
        self.missing_roots: list[Path] = []
        self.error = ""  # why the last read of the catalog failed, on the title line
        self.title_text = Text()  # the line above the table, as drawn
        self.last_refresh_s = 0.0  # the last read's cost, in the worker thread
        self._reading = False
        # Set by the first key that closes the screen: keys typed ahead while the app
        # shuts down (`q` then `r`) must not change what it closes with.
        self.leaving = False
        self.toasts: list[str] = []  # every notification shown, in order (tests read them)

    # -- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static("", id="runs-title", markup=False)
        yield Input(
            value=self.view.filter_text,
            placeholder="filter: words of the name, state:running, state:failed …",
            id="runs-filter",
        )
        yield RunsTable(id="runs-table")
        yield MachineGpuPanel(id="runs-gpus")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#runs-filter", Input).display = bool(self.view.filter_text)
        self.query_one(RunsTable).focus()
        self._draw_title()
        self.refresh_catalog()
        self.set_interval(self.refresh_s, self.refresh_catalog)

    @property
    def table(self) -> RunsTable:
        return self.query_one(RunsTable)

    # -- refreshing -----------------------------------------------------------------------

    def refresh_catalog(self) -> None:
        """Ask the catalog thread for a fresh read, unless one is still under way."""
        if self._reading:
            return
        self._reading = True
        self._read_catalog()

    @work(thread=True, group="catalog", exit_on_error=False)
    def _read_catalog(self) -> None:
        began = time.perf_counter()
        try:
            runs = self.catalog.refresh()
            gpus, reason = machine_gpus(runs, self.catalog.latest_system(), self.nvml)
            missing = missing_roots(self.roots)
        except Exception as exc:  # a bug must not stop the refreshes: say it, go on
            error = f"reading the runs failed: {type(exc).__name__}: {exc}"
            read = CatalogRead(
                self.runs, self.gpus, self.gpu_reason, 0.0, self.missing_roots, error
            )
            self.post_message(read)
            return
        took = time.perf_counter() - began
        self.post_message(CatalogRead(runs, gpus, reason, took, missing))

    @on(CatalogRead)
    def catalog_read(self, message: CatalogRead) -> None:
        self._reading = False
        self.runs = message.runs
        self.gpus, self.gpu_reason = message.gpus, message.reason
        self.last_refresh_s = message.seconds
        self.missing_roots = message.missing
        self.error = message.error
        self.redraw()

    def redraw(self) -> None:
        table = self.table
        present = {run.run_dir for run in self.runs}
        self.view.marked = [p for p in self.view.marked if p in present]
        rows = visible_runs(self.runs, self.view.filter_text, self.view.sort)
        # The first drawing puts the cursor back where the user left it (after a run's UI).
        table.show(rows, set(self.view.marked), cursor=None if table.run_dirs else self.view.cursor)
        if table.selected is not None:
            self.view.cursor = table.selected
        self.query_one(MachineGpuPanel).show(self.gpus, self.gpu_reason)
        self._draw_title()

    def _draw_title(self) -> None:
        shown = len(self.table.run_dirs)
        total = len(self.runs)
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append("tuimon runs", style="bold")
        count = f"{total} runs" if shown == total else f"{shown} of {total} runs"
        where = ", ".join(printable(str(root), keep_newlines=False) for root in self.roots)
        title.append(f" · {count} under {where or '?'}")
        title.append(f" · {SORT_TITLES.get(self.view.sort, self.view.sort)}", style="dim")
        if self.view.filter_text:
            title.append(f" · filter: {printable(self.view.filter_text, keep_newlines=False)}")
        if not self.runs and not self.error:
            title.append(f" · {NO_RUNS_HINT}", style="dim")
        if self.error:
            title.append(f" · {printable(self.error, keep_newlines=False)}", style="bold red")
        if self.missing_roots:
            missing = ", ".join(printable(str(p), keep_newlines=False) for p in self.missing_roots)
            title.append(f" · no such directory: {missing}", style="bold yellow")
        if self.view.marked:
            title.append(f" · {len(self.view.marked)} selected", style="bold")
        self.title_text = title
        self.query_one("#runs-title", Static).update(title)

    # -- the selected run -----------------------------------------------------------------

    def selected_run(self) -> RunSummary | None:
        run_dir = self.table.selected
        if run_dir is None:
            self.toast("no run selected", severity="warning")
            return None
        return next((run for run in self.runs if run.run_dir == run_dir), None)

    def toast(self, message: str, **kwargs: Any) -> None:
        """A notification quoting run names: printable, never markup."""
        self.toasts.append(printable(message))
        self.app.notify(printable(message), markup=False, **kwargs)

    def action_open_run(self) -> None:
        run = self.selected_run()
        if run is None:
            return
        self._leave(OPEN_ATTACH if run.live else OPEN_REPLAY, run)

    def action_replay_run(self) -> None:
        run = self.selected_run()
        if run is not None:
            self._leave(OPEN_REPLAY, run)

    def _leave(self, how: str, run: RunSummary) -> None:
        """The runs screen closes; the launcher opens the run's UI, then comes back."""
        if self.leaving:
            return
        self.leaving = True
        self.view.cursor = run.run_dir
        self.app.exit((how, run.run_dir))

    def action_doctor_report(self) -> None:
        run = self.selected_run()
        if run is None:
            return
        self.toast(f"reading {run.name}'s log for the doctor…")
        self._doctor(run.run_dir, run.name)

    @work(thread=True, group="doctor", exit_on_error=False)
    def _doctor(self, run_dir: Path, name: str) -> None:
        from tuimon.doctor.report import format_report, review

        try:
            said, summary = review(run_dir)
            report = format_report(run_dir, said, summary)
        except (UsageError, OSError) as exc:
            self.app.call_from_thread(
                self.toast, f"no doctor report for {name}: {exc}", severity="error"
            )
            return
        self.app.call_from_thread(
            self.app.push_screen, TextScreen(f"Doctor report: {name} ({run_dir})", report)
        )

    def action_stop_run(self) -> None:
        run = self.selected_run()
        if run is None:
            return
        if run.status == STOPPING:
            self.toast(f"{run.name} is already stopping", severity="warning")
            return
        if not run.live:
            self.toast(f"{run.name} is {run.status}: there is nothing to stop", severity="warning")
            return

        def chosen(choice: str | None) -> None:
            if choice == "stop":
                self._send_stop(run.run_dir, run.name)

        self.app.push_screen(
            ChoiceScreen(
                f"Stop {run.name}? It saves a checkpoint, then ends.",
                [("stop", "Stop the run", "error"), ("cancel", "Keep training", "default")],
            ),
            chosen,
        )

    @work(thread=True, group="commands", exit_on_error=False)
    def _send_stop(self, run_dir: Path, name: str) -> None:
        try:
            with ControlClient(run_dir, timeout=5) as client:
                client.request(STOP, source="ui")
        except (ControlError, OSError) as exc:
            self.app.call_from_thread(self.toast, f"could not stop {name}: {exc}", severity="error")
            return
        self.app.call_from_thread(self.toast, f"sent stop to {name}: it ends at its next step")
        self.app.call_from_thread(self.refresh_catalog)

    def action_mark_run(self) -> None:
        run_dir = self.table.selected
        if run_dir is None:
            return
        if run_dir in self.view.marked:
            self.view.marked.remove(run_dir)
        else:
            self.view.marked.append(run_dir)
        self.redraw()

    def action_compare_runs(self) -> None:
        chosen = list(self.view.marked)
        if len(chosen) < 2:
            self.toast(
                f"select 2 or more runs with space to compare them ({len(chosen)} selected)",
                severity="warning",
            )
            return
        try:  # imported when asked for: the compare screen brings the plotting along
            compare = importlib.import_module("tuimon.ui.screens.compare_screen")
        except ImportError as exc:
            self.toast(f"compare is not available: {exc}", severity="error")
            return
        self.app.push_screen(compare.CompareScreen(chosen, baseline=None))

    def action_filter_runs(self) -> None:
        field = self.query_one("#runs-filter", Input)
        field.display = True
        field.focus()

    @on(Input.Changed, "#runs-filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.view.filter_text = event.value
        self.redraw()

    @on(Input.Submitted, "#runs-filter")
    def filter_done(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            self.action_clear_filter()
            return
        self.table.focus()

    def action_clear_filter(self) -> None:
        field = self.query_one("#runs-filter", Input)
        if not field.display and not self.view.filter_text:
            return
        field.value = ""
        field.display = False
        self.view.filter_text = ""
        self.table.focus()
        self.redraw()

    def action_cycle_sort(self) -> None:
        self.view.sort = next_sort(self.view.sort)
        self.redraw()
        self.toast(f"sorted {SORT_TITLES[self.view.sort]}")

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(RUNS_KEYS, "tuimon runs · keys · Esc closes"))

    def action_quit(self) -> None:
        if not self.leaving:
            self.leaving = True
            self.app.exit(None)
