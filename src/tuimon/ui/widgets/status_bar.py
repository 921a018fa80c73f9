"""One line: run name, state, epoch, step progress, throughput, ETA, elapsed; and a second
line, when there is something to say about the connection (the worker is gone, a replayed
log has no `end`).

An ETA is shown only for a run that is running or paused: a killed run's or a replay's
"time left" would be a guess about a run that no longer moves."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.text import Text

from tuimon.headless.progress import format_duration
from tuimon.run.run_state import RunState
from tuimon.ui.plotting import ViewOptions, bar
from tuimon.ui.widgets.lines import fit
from tuimon.ui.widgets.panel import Panel

STATE_STYLE = {
    "running": "bold white on green",
    "paused": "bold black on yellow",
    "stopping": "bold black on yellow",
    "completed": "bold white on blue",
    "stopped": "bold white on blue",
    "failed": "bold white on red",
    "disconnected": "bold white on red",
    "starting": "bold black on cyan",
    "replay": "bold white on magenta",
    "worker gone": "bold white on red",
}
NOTICE_STYLE = "bold yellow"
ETA_STATES = ("running", "paused")


IGNORED_STYLE = "bold black on yellow"
NOT_RECORDING_STYLE = "bold white on red"  # the log cannot be written: say it loudly


class StatusBar(Panel):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shown_state = "starting"
        self.notice = ""  # set by the app: see TuimonApp.notice

    def wanted_height(self) -> int:
        return 2 if self.notice else 1

    @property
    def live(self) -> bool:
        """Whether the clock runs: a live run's elapsed time grows, a replay's does not."""
        return self.shown_state in ("running", "paused", "stopping", "starting")

    def signature(self, state: RunState, options: ViewOptions) -> Any:
        elapsed = state.elapsed(live=self.live)
        whole = int(elapsed) if elapsed is not None else None
        return state.version, self.shown_state, self.notice, whole

    def view(
        self, state: RunState, options: ViewOptions, width: int, height: int
    ) -> RenderableType:
        line = Text(no_wrap=True)
        line.append(f" {state.name} ", style="bold")
        line.append(f" {self.shown_state} ", style=STATE_STYLE.get(self.shown_state, "bold"))
        if state.not_recording:
            line.append(" NOT RECORDING ", style=NOT_RECORDING_STYLE)
        if state.stop_ignored_at is not None and self.shown_state == "running":
            # Monitor(stop="flag") and the loop ran on: the stop did not stop it.
            line.append(f" stop at step {state.stop_ignored_at} ignored ", style=IGNORED_STYLE)
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
            line.append(f"  {rates['samples_per_s']:.0f} samples/s")
        eta = state.eta() if self.shown_state in ETA_STATES else None
        if eta is not None:
            line.append(f"  ETA {format_duration(eta)}")
        line.append(f"  elapsed {format_duration(state.elapsed(live=self.live))}", style="dim")
        lines = [line]
        if self.notice:
            lines.append(Text(f" {self.notice}", style=NOTICE_STYLE))
        return fit(lines, width, height)
