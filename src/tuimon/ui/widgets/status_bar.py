"""One line: run name, status, epoch, step progress, throughput, ETA, elapsed; and a second
line, when there is something to say about the connection (the worker is gone, a replayed
log has no `end`).

An ETA is shown only for a run that is running or paused: a killed run's or a replay's
"time left" would be a guess about a run that no longer moves."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.text import Text

from tuimon.number_text import format_duration, samples_rate
from tuimon.run.events import (
    COMPLETED,
    FAILED,
    PAUSED,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
)
from tuimon.run.run_state import RunState
from tuimon.ui.plotting import ViewOptions, bar
from tuimon.ui.widgets.lines import fit
from tuimon.ui.widgets.panel import Panel

# What the bar shows beside a run's own status (run/events.py's RunStatus): how the UI
# sees the run.
REPLAY = "replay"  # a finished run's log, read back
DISCONNECTED = "disconnected"  # the run's socket does not answer
WORKER_GONE = "worker gone"  # the run's worker was killed: no `end` will come

STATUS_STYLE = {
    RUNNING: "bold white on green",
    PAUSED: "bold black on yellow",
    STOPPING: "bold black on yellow",
    COMPLETED: "bold white on blue",
    STOPPED: "bold white on blue",
    FAILED: "bold white on red",
    DISCONNECTED: "bold white on red",
    STARTING: "bold black on cyan",
    REPLAY: "bold white on magenta",
    WORKER_GONE: "bold white on red",
}
NOTICE_STYLE = "bold yellow"
ETA_STATUSES = (RUNNING, PAUSED)
LIVE_STATUSES = (RUNNING, PAUSED, STOPPING, STARTING)  # the elapsed clock runs


IGNORED_STYLE = "bold black on yellow"
WIDE = 100  # columns from which the bar also says the framework and precision
NOT_RECORDING_STYLE = "bold white on red"  # the log cannot be written: say it loudly


class StatusBar(Panel):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shown_status: str = STARTING  # set by the app: see TuimonApp.shown_status
        self.notice = ""  # set by the app: see TuimonApp.notice

    def wanted_height(self) -> int:
        return 2 if self.notice else 1

    @property
    def live(self) -> bool:
        """Whether the clock runs: a live run's elapsed time grows, a replay's does not."""
        return self.shown_status in LIVE_STATUSES

    def signature(self, state: RunState, options: ViewOptions) -> Any:
        elapsed = state.elapsed(live=self.live)
        whole = int(elapsed) if elapsed is not None else None
        return state.version, self.shown_status, self.notice, whole

    def view(
        self, state: RunState, options: ViewOptions, width: int, height: int
    ) -> RenderableType:
        line = Text(no_wrap=True)
        line.append(f" {state.name} ", style="bold")
        line.append(f" {self.shown_status} ", style=STATUS_STYLE.get(self.shown_status, "bold"))
        if state.not_recording:
            line.append(" NOT RECORDING ", style=NOT_RECORDING_STYLE)
        if state.stop_ignored_at is not None and self.shown_status == RUNNING:
            # Monitor(stop="flag") and the loop ran on: the stop did not stop it.
            line.append(f" stop at step {state.stop_ignored_at} ignored ", style=IGNORED_STYLE)
        runs_in = state.runs_in
        if runs_in and width >= WIDE:  # at 80 columns the progress matters more
            line.append(f" {runs_in}", style="dim")
        start = state.start or {}
        epoch = (state.last_step or {}).get("epoch", 0)
        epochs = start.get("epochs")
        line.append(f"  epoch {int(epoch) + 1}" + (f"/{epochs}" if epochs else ""))
        total = state.total_steps
        if total:
            fraction = state.step / total
            line.append("  ")
            line.append(bar(fraction, 12 if width < 100 else 24), style="cyan")
            line.append(f" {state.step}/{total} {100 * fraction:.1f}%")
        else:
            line.append(f"  step {state.step}")
        rates = state.rates()
        if rates["samples_per_s"]:
            line.append(f"  {samples_rate(rates['samples_per_s'])}")
        eta = state.eta() if self.shown_status in ETA_STATUSES else None
        if eta is not None:
            line.append(f"  ETA {format_duration(eta)}")
        line.append(f"  elapsed {format_duration(state.elapsed(live=self.live))}", style="dim")
        lines = [line]
        if self.notice:
            lines.append(Text(f" {self.notice}", style=NOTICE_STYLE))
        return fit(lines, width, height)
