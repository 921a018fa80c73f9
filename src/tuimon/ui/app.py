"""The tuimon app: live panels for one run, and keys that steer it.

Data flow: a connection thread (ui/connection.py) applies the run's events to a RunState
and posts coalesced messages; a timer redraws the panels at most `fps` times a second, each
only if what it shows changed. Keys send commands over the run's control socket from
short-lived thread workers; their effect comes back as `control` events like any other.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, cast

from textual import on, work
from textual.app import App, ComposeResult
from textual.containers import Container, Horizontal
from textual.events import Resize
from textual.widgets import Footer

from tuimon.control.client import ControlClient, ControlError
from tuimon.control.commands import (
    CHECKPOINT,
    MAX_LR,
    PAUSE,
    RESUME,
    SCALE_LR,
    SET_LR,
    STOP,
    describe,
)
from tuimon.headless.alert_text import cleared_at, stale_action_text
from tuimon.number_text import show_value
from tuimon.run.events import (
    ALERT,
    CONTROL,
    END_STATUSES,
    ERROR,
    FAILED,
    PAUSED,
    RUNNING,
    STARTING,
    AlertEvent,
    ControlEvent,
)
from tuimon.run.rank_logs import read_rank_logs
from tuimon.run.run_dir import OUTPUT_FILE
from tuimon.run.run_state import RunState
from tuimon.terminal_text import printable
from tuimon.ui import keymap
from tuimon.ui.connection import ReplayLoader, RunConnection
from tuimon.ui.messages import CommandResult, ConnectionChanged, StateReplaced
from tuimon.ui.plotting import ViewOptions, metric_names, smoothing_text
from tuimon.ui.screens.choice_screen import ChoiceScreen
from tuimon.ui.screens.help_screen import HelpScreen
from tuimon.ui.screens.lr_screen import LRScreen
from tuimon.ui.screens.metrics_screen import MetricsScreen
from tuimon.ui.screens.rank_screen import RankScreen
from tuimon.ui.screens.text_screen import TextScreen
from tuimon.ui.widgets.doctor_panel import DoctorPanel
from tuimon.ui.widgets.gpu_panel import GpuPanel
from tuimon.ui.widgets.grad_panel import GradPanel
from tuimon.ui.widgets.host_panel import HostPanel
from tuimon.ui.widgets.loss_panel import LossPanel
from tuimon.ui.widgets.lr_panel import LRPanel
from tuimon.ui.widgets.metrics_panel import MetricsPanel
from tuimon.ui.widgets.panel import Panel
from tuimon.ui.widgets.rank_strip import RankStrip
from tuimon.ui.widgets.status_bar import DISCONNECTED, REPLAY, WORKER_GONE, StatusBar

NARROW_WIDTH = 110  # below this the bottom row wraps: LR | Gradients over GPU | Host
SHORT_HEIGHT = 32  # below this GPU | Host shrink to two lines each
# Connection statuses after which the state is the log's, not a live worker's: a job's
# other ranks' own logs then say how each one ended (rank 0's last report may not).
RANK_LOGS_READ_WHEN = ("replay", "ended", "worker-gone")
OUTPUT_TAIL_LINES = 2000
_Panel = TypeVar("_Panel", bound=Panel)


def default_fps() -> float:
    """Redraws per second: 10 locally, 4 over SSH where every frame crosses the network."""
    return 4.0 if os.environ.get("SSH_CONNECTION") else 10.0


class TuimonApp(App[None]):
    CSS_PATH = "styles.tcss"
    TITLE = "tuimon"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = keymap.bindings()

    def __init__(
        self,
        run_dir: str | Path,
        *,
        replay: bool = False,
        launched: bool = False,
        worker: subprocess.Popen[bytes] | None = None,
        lr_factor: float = 2.0,
        fps: float | None = None,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.replay = replay
        self.launched = launched
        self.worker = worker
        self.lr_factor = lr_factor
        self.fps = fps or default_fps()
        self.state = RunState()
        self.options = ViewOptions()
        self.connection_status = "loading" if replay else "connecting"
        self.connection_detail = ""  # the connection's line: why there is none, and so on
        self.stopped_run = False  # the user quit with "stop the run"
        self._announced_controls = 0
        self._announced_alerts = 0
        self._connection: RunConnection | ReplayLoader | None = None
        self._plot_drawn_at: dict[str | None, float] = {}
        self._panels: list[Panel] = []
        self.ticks_skipped = 0  # refresh ticks left out while a replay was loading

    # -- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield RankStrip(id="ranks")
        with Horizontal(id="top"):
            yield LossPanel(id="loss")
            with Container(id="side"):
                yield DoctorPanel(id="doctor")
                yield MetricsPanel(id="metrics")
        with Container(id="middle"):
            yield LRPanel(id="lr")
            yield GradPanel(id="grad")
            with Container(id="system"):
                yield GpuPanel(id="gpu")
                yield HostPanel(id="host")
        yield Footer()

    def on_mount(self) -> None:
        if self.replay:
            self._connection = ReplayLoader(self.run_dir, self.post_message)
        else:
            self._connection = RunConnection(self.run_dir, self.post_message, self._worker_alive)
        self._connection.start()
        # Kept, not queried each tick: while a dialog is open, queries see the dialog's screen.
        self._panels = list(self.query(Panel))
        self._fit_layout()
        self.query_one(DoctorPanel).focus()
        self.set_interval(1 / self.fps, self._tick)

    def on_unmount(self) -> None:
        if self._connection is not None:
            self._connection.stop()

    def on_resize(self, event: Resize) -> None:
        self._fit_layout()
        self.call_after_refresh(self.refresh_panels, True)

    def _fit_layout(self) -> None:
        stack = self.screen_stack
        if not stack:
            return  # shutting down
        main = stack[0]
        main.set_class(self.size.width < NARROW_WIDTH, "-narrow")
        main.set_class(self.size.height < SHORT_HEIGHT, "-short")

    # -- drawing --------------------------------------------------------------------------

    def _tick(self) -> None:
        """The refresh timer. Idle while a replay's state is being read: the empty state was
        drawn once, and the thread reading the log needs the CPU (and the GIL)."""
        if self.replay and self.connection_status == "loading":
            self.ticks_skipped += 1
            return
        self.refresh_panels()

    def refresh_panels(self, everything: bool = False) -> None:
        """Redraw what changed. Text panels every tick; at most one plot per tick (the one
        longest out of date), unless `everything` (a resize, a new view option, a new state),
        so a tick never costs more than one plotext drawing."""
        stack = self.screen_stack
        if not self._panels or not stack:
            return  # not mounted yet, or shutting down (the timer may still fire once)
        if isinstance(stack[-1], MetricsScreen) and not everything:
            # The panels are hidden under a full screen: drawn again when it closes.
            self._announce_news()
            return
        self._fit_status_bar()
        self._fit_rank_strip()
        self.query_one_main(DoctorPanel).no_commands = self.no_commands
        self._fit_metrics()
        plots = []
        for panel in self._panels:
            if panel.PLOT and not everything:
                plots.append(panel)
            else:
                panel.refresh_view(self.state, self.options)
        stale = [p for p in plots if p.is_stale(self.state, self.options)]
        if stale:
            oldest = min(stale, key=lambda p: self._plot_drawn_at.get(p.id, 0.0))
            oldest.refresh_view(self.state, self.options)
            self._plot_drawn_at[oldest.id] = time.monotonic()
        top = stack[-1]
        if isinstance(top, RankScreen):
            top.refresh_view(self.state)
        self._announce_news()

    def _fit_rank_strip(self) -> None:
        """The rank strip is shown for a distributed job only."""
        strip = self.query_one_main(RankStrip)
        wanted = self.state.world_size > 1
        if strip.display != wanted:
            strip.display = wanted

    def _fit_status_bar(self) -> None:
        """The status bar's status, and a second line when there is a notice."""
        bar = self.query_one_main(StatusBar)
        bar.shown_status = self.shown_status
        bar.notice = self.notice
        wanted = bar.wanted_height()
        if bar.styles.height is None or bar.styles.height.value != wanted:
            bar.styles.height = wanted

    def _fit_metrics(self) -> None:
        """The Metrics panel grows with the number of logged metrics (CSS caps it)."""
        panel = self.query_one_main(MetricsPanel)
        with self.state.lock:
            wanted = panel.wanted_height(self.state)
        if panel.styles.height is None or panel.styles.height.value != wanted:
            panel.styles.height = wanted

    def query_one_main(self, kind: type[_Panel]) -> _Panel:
        """A panel of the main screen, whatever dialog is on top of it."""
        return next(panel for panel in self._panels if isinstance(panel, kind))

    @property
    def shown_status(self) -> str:
        """The run's status as the user should see it, connection included: a RunStatus,
        or replay, worker gone, disconnected."""
        if self.replay:
            return REPLAY
        status = self.state.status
        if status in END_STATUSES:
            return status
        if self.connection_status == "worker-gone":
            return WORKER_GONE
        if self.connection_status == "worker-exited":
            return FAILED
        if self.connection_status in ("connecting", "starting") and self.state.start is None:
            return STARTING
        if self.connection_status == "disconnected":
            return DISCONNECTED
        return status

    @property
    def notice(self) -> str:
        """A line under the status bar: that the run's events are not being recorded (a
        full disk), what a replay's log lacks, why the socket does not answer, that the
        worker is gone, how many damaged lines of the log were skipped.
        Empty when all is well."""
        connection = ""
        if self.connection_status == "worker-gone":
            connection = (
                f"{self.connection_detail} — showing the log; keys that steer the run are off"
            )
        elif self.connection_status in ("replay", "disconnected"):
            connection = self.connection_detail
        with self.state.lock:
            damage = self.state.damage_note()
            unrecorded = self.state.not_recording
        recording = f"NOT RECORDING: {unrecorded}" if unrecorded else ""
        return " · ".join(part for part in (recording, connection, damage) if part)

    @property
    def no_commands(self) -> str | None:
        """Why keys that steer the run cannot reach it, or None when they can."""
        if self.replay:
            return REPLAY
        if self.connection_status == "worker-gone":
            return WORKER_GONE
        return None

    def toast(self, message: str, **kwargs: Any) -> None:
        """A notification whose text may come from the log or the socket: control
        characters are neutralized and [brackets] are shown as they are, never as markup."""
        title = kwargs.pop("title", "")
        self.notify(printable(message), title=printable(title), markup=False, **kwargs)

    def _announce_news(self) -> None:
        """Toasts for what changed: applied commands and new alerts."""
        state = self.state
        with state.lock:
            controls = cast("Iterable[ControlEvent]", state.controls)
            new_controls = _newest(controls, state.counts[CONTROL] - self._announced_controls)
            alerts = cast("Iterable[AlertEvent]", state.alerts)
            new_alerts = _newest(alerts, state.counts[ALERT] - self._announced_alerts)
            self._announced_controls = state.counts[CONTROL]
            self._announced_alerts = state.counts[ALERT]
        for control in new_controls:
            old, new = control.get("old"), control.get("new")
            self.toast(
                f"{control.get('command')} at step {control.get('step')}: "
                f"{show_value(old)} → {show_value(new)}",
                title=f"applied ({control.get('source')})",
            )
        for alert in new_alerts:
            self.toast(
                str(alert.get("message", "")),
                title=str(alert.get("rule")),
                severity="error" if alert.get("severity") == ERROR else "warning",
            )

    # -- messages from the connection -----------------------------------------------------

    @on(StateReplaced)
    def replace_state(self, message: StateReplaced) -> None:
        self.state = message.state
        # History is not news: only what happens from now on gets a toast.
        self._announced_controls = self.state.counts[CONTROL]
        self._announced_alerts = self.state.counts[ALERT]
        self.refresh_panels(everything=True)

    @work(thread=True, group="rank-logs", exit_on_error=False)
    def _read_rank_logs(self, state: RunState) -> None:
        """A replayed, ended or killed job's other ranks: how far each got and how it
        ended, from their own logs (ranks/<N>/events.jsonl), off the UI thread; the next
        tick draws it. Nothing to read for a single-process run."""
        try:
            finals = read_rank_logs(self.run_dir)
        except (OSError, ValueError):
            return  # rank 0's view of them stays: the job's log holds its reports
        if finals:
            state.apply_rank_finals(finals)

    @on(ConnectionChanged)
    def connection_changed(self, message: ConnectionChanged) -> None:
        before, self.connection_status = self.connection_status, message.status
        self.connection_detail = message.detail
        if message.status in RANK_LOGS_READ_WHEN:
            self._read_rank_logs(self.state)
        if message.status == "disconnected" and before == "connected":
            self.toast("lost the run's socket; reconnecting…", severity="warning")
        elif message.status == "connected" and before == "disconnected":
            self.toast("reconnected to the run")
        elif message.status == "worker-exited":
            code = self.worker.poll() if self.worker is not None else None
            self.toast(
                f"the worker exited (code {code}) before the run started: press e",
                severity="error",
                timeout=30,
            )
        elif message.status == "worker-gone":
            self.toast(f"{message.detail}: showing the log", severity="warning", timeout=30)
        elif message.status == "unreadable":
            self.toast(message.detail, severity="error", timeout=30)
        elif message.status == "ended":
            self.toast(f"the run has ended: {self.state.status}")
        self.refresh_panels()

    @on(CommandResult)
    def command_result(self, message: CommandResult) -> None:
        if message.ok:
            self.toast(message.detail, title=message.command)
        else:
            self.toast(message.detail, title=f"{message.command} refused", severity="error")

    def _worker_alive(self) -> bool | None:
        if self.worker is None:
            return None
        return self.worker.poll() is None

    # -- commands -------------------------------------------------------------------------

    def steerable(self) -> bool:
        """Whether a command can reach the run; if not, the user is told why."""
        if self.replay:
            self.toast("a replay is read-only", severity="warning")
            return False
        if self.connection_status == "worker-gone":
            self.toast(f"{self.connection_detail}: nothing to send it to", severity="warning")
            return False
        return True

    def send(self, cmd: str, **args: Any) -> None:
        if not self.steerable():
            return
        if self.shown_status in END_STATUSES:
            self.toast(f"the run has ended ({self.shown_status})", severity="warning")
            return
        self._send(cmd, args)

    @work(thread=True, group="commands", exit_on_error=False)
    def _send(self, cmd: str, args: dict[str, Any]) -> None:
        try:
            with ControlClient(self.run_dir, timeout=5) as client:
                client.request(cmd, source="ui", **args)
            detail = f"sent {describe({'cmd': cmd, **args})}: applies at the next step"
            self.post_message(CommandResult(cmd, True, detail))
        except (ControlError, OSError) as exc:
            self.post_message(CommandResult(cmd, False, str(exc)))

    def action_scale_lr_up(self) -> None:
        self.send(SCALE_LR, factor=self.lr_factor)

    def action_scale_lr_down(self) -> None:
        self.send(SCALE_LR, factor=1 / self.lr_factor)

    def action_type_lr(self) -> None:
        if not self.steerable():
            return
        lr = self.state.series.get("lr/0")

        def chosen(value: float | None) -> None:
            if value is not None:
                self.send(SET_LR, value=value)

        self.push_screen(LRScreen(lr.latest if lr else None, self._lr_max()), chosen)

    def _lr_max(self) -> float:
        """The run's `monitor.lr_max` (its start event's settings), else the default."""
        with self.state.lock:
            settings = (self.state.start or {}).get("settings")
        value = settings.get("lr_max") if isinstance(settings, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf:
            return float(value)
        return MAX_LR

    def action_toggle_pause(self) -> None:
        self.send(RESUME if self.state.status == PAUSED else PAUSE)

    def action_checkpoint(self) -> None:
        self.send(CHECKPOINT)

    def action_stop_run(self) -> None:
        if not self.steerable():
            return
        if self.shown_status in END_STATUSES:
            self.toast("there is no running run to stop", severity="warning")
            return

        def chosen(choice: str | None) -> None:
            if choice == "stop":
                self.send(STOP)

        self.push_screen(
            ChoiceScreen(
                "Stop the run? It saves a checkpoint, then ends.",
                [("stop", "Stop the run", "error"), ("cancel", "Keep training", "default")],
            ),
            chosen,
        )

    def action_apply_alert(self) -> None:
        alert = self.query_one_main(DoctorPanel).selected_alert
        if not alert or not alert.get("action"):
            self.toast("the selected alert has no action to apply", severity="warning")
            return
        action: dict[str, Any] = dict(alert["action"])
        cmd = action.pop("cmd")
        if cleared_at(alert) is None or self.replay or self.shown_status in END_STATUSES:
            self.send(cmd, **action)  # (send refuses for a replay or a finished run)
            return
        # The episode is over: its fix answers a problem that is gone (an early lr_too_high
        # that cleared must not cut a healthy run's LR). Refused unless asked for deliberately.
        refusal = stale_action_text(alert)

        def chosen(choice: str | None) -> None:
            if choice == "apply":
                self.send(cmd, **action)
            else:
                self.toast(f"not applied: {refusal}", severity="warning")

        self.push_screen(
            ChoiceScreen(
                f"{alert.get('rule')}: {refusal}. Apply it anyway ({describe(alert['action'])})?",
                [("apply", "Apply anyway", "warning"), ("cancel", "Don't apply", "default")],
            ),
            chosen,
        )

    def action_toggle_log(self) -> None:
        self.options = replace(self.options, log_y=not self.options.log_y)
        self.refresh_panels(everything=True)

    def action_cycle_metric(self) -> None:
        with self.state.lock:
            names = metric_names(self.state)
        if not names:
            self.toast("no metrics logged yet: mon.log(name=value) adds them", severity="warning")
            return
        self.options = self.options.next_metric(names)
        self.toast(f"main plot: {self.options.metric or 'loss'}")
        self.refresh_panels(everything=True)

    def action_cycle_smoothing(self) -> None:
        """`S`: the next smoothing weight of the plots (raw, 0.6, 0.9, 0.99, the run's own)."""
        with self.state.lock:
            run_weight = self.state.smoothing
        self.options = self.options.next_smoothing(run_weight)
        self.toast(f"plots: {smoothing_text(self.options.smoothing_for(run_weight))}")
        self.refresh_panels(everything=True)

    def action_show_metrics(self) -> None:
        """`M`: every scalar of this run, read from its log (live, replayed or dead alike)."""
        if isinstance(self.screen, MetricsScreen):
            return
        with self.state.lock:
            weight = self.options.smoothing_for(self.state.smoothing)
        self.push_screen(
            MetricsScreen([self.run_dir], smoothing=weight),
            lambda _: self.refresh_panels(everything=True),
        )

    def action_cycle_x(self) -> None:
        self.options = self.options.next_x_mode()
        self.toast(f"x axis: {self.options.x_mode}")
        self.refresh_panels(everything=True)

    def action_show_error(self) -> None:
        error = (self.state.end or {}).get("error")
        if error:
            self.push_screen(TextScreen("The run failed with this traceback", str(error)))
        elif self.connection_status == "worker-exited":
            self.push_screen(
                TextScreen(
                    "The worker exited before the run started: its output", self.output_tail()
                )
            )
        else:
            self.toast("no error: the run has not failed", severity="information")

    def action_show_output(self) -> None:
        self.push_screen(
            TextScreen(f"Output of the run ({self.run_dir / OUTPUT_FILE})", self.output_tail())
        )

    def action_show_ranks(self) -> None:
        if self.state.world_size <= 1:
            self.toast("one process: ranks are for a distributed (torchrun) job")
            return
        if not isinstance(self.screen, RankScreen):
            self.push_screen(RankScreen(self.state))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_quit_ui(self) -> None:
        if not (self.launched and self.shown_status in (RUNNING, PAUSED, STARTING)):
            self.exit()
            return

        def chosen(choice: str | None) -> None:
            if choice == "stop":
                try:
                    with ControlClient(self.run_dir, timeout=5) as client:
                        client.request(STOP, source="ui")
                except (ControlError, OSError) as exc:
                    self.toast(f"could not stop the run: {exc}", severity="error")
                    return
                self.stopped_run = True
                self.exit()
            elif choice == "leave":
                self.exit()

        self.push_screen(
            ChoiceScreen(
                "Quit tuimon. Stop the run too, or leave it running (tuimon attach reconnects)?",
                [
                    ("stop", "Stop the run", "error"),
                    ("leave", "Leave it running", "primary"),
                    ("cancel", "Cancel", "default"),
                ],
            ),
            chosen,
        )

    def output_tail(self) -> str:
        path = self.run_dir / OUTPUT_FILE
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            return f"(no output: {exc})"
        return "\n".join(lines[-OUTPUT_TAIL_LINES:]) or "(no output yet)"


_Item = TypeVar("_Item")


def _newest(items: Iterable[_Item], count: int) -> list[_Item]:
    """The last `count` items, or all that are kept if fewer."""
    return list(items)[-count:] if count > 0 else []
