"""The run's commands: queued from any thread, applied on the training thread at a step
boundary, one handler per run command of `control/commands.py`.

The control server (on its own threads), a signal handler and autofix hand requests in;
`Monitor.step()` applies them between two optimizer steps, where changing the LR, saving
a checkpoint or restoring weights cannot tear a step apart. The runner owns what commands
change: the run's status (running, paused, stopping; then how it ended) and the stop's
bookkeeping. It is handed what it acts on (optimizer, event log, probes, checkpointing),
so it never imports the Monitor.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, cast

import torch

from tuimon.config.schema import MonitorConfig
from tuimon.control.commands import (
    CHECKPOINT,
    COMMANDS,
    LR_COMMANDS,
    PAUSE,
    RECOVER,
    RESUME,
    RUN_COMMANDS,
    SCALE_LR,
    SET_GRAD_CLIP,
    SET_LR,
    STOP,
)
from tuimon.control.protocol import ProtocolError, Request
from tuimon.monitor import lr_control
from tuimon.monitor.distributed.command_sync import RankCommands
from tuimon.monitor.grad_probe import GradientProbe
from tuimon.monitor.snapshots import SnapshotRing
from tuimon.run.events import (
    CONTROL,
    ERROR,
    INFO,
    MESSAGE,
    PAUSED,
    RUNNING,
    WARNING,
    ControlEvent,
    EndStatus,
    Event,
    MessageEvent,
    RunPhase,
    RunStatus,
    Severity,
)

# A distributed recover's argument: the snapshot step rank 0 chose for every replica.
SNAPSHOT_STEP = "snapshot_step"
# Seconds between looks for a resume (or any request) while paused.
PAUSE_POLL = 0.25


class CommandRunner:
    def __init__(
        self,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        settings: MonitorConfig,
        emit: Callable[[Event], object],
        current_step: Callable[[], int],
        drain_steps: Callable[[], None],
        checkpoint: Callable[[str], Path],
        grads: GradientProbe,
        snapshots: SnapshotRing,
        on_recover: Callable[[], None],
        ranks: RankCommands | None = None,
        missing_ranks: tuple[int, ...] = (),
    ) -> None:
        """`emit`: the event log's. `current_step`: the run's global step. `drain_steps`:
        log every step recorded so far (a command's event comes after them). `checkpoint`:
        save one, with its reason; returns the file. `grads`: holds the gradient clip.
        `snapshots`: what `recover` restores. `on_recover`: told when a recover is applied.
        `ranks`: in a distributed job, the exchange that makes every rank apply a request
        at the same step (monitor/distributed/command_sync.py). `missing_ranks`: ranks
        with no Monitor, on which nothing can be applied."""
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.settings = settings
        self._emit = emit
        self._current_step = current_step
        self._drain_steps = drain_steps
        self._checkpoint = checkpoint
        self._grads = grads
        self._snapshots = snapshots
        self._on_recover = on_recover
        self._ranks = ranks
        self._missing_ranks = missing_ranks
        self._inbox: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self.status: RunStatus = RUNNING
        self.closed = False  # the run is ending: no command is accepted any more
        self.stop_requested = False
        self.stop_step: int | None = None  # where the latest stop was applied
        self.stop_ignored = False  # stop="flag" and the loop ran on regardless

    # -- from any thread -------------------------------------------------------------------

    def submit(self, request: Request) -> dict[str, Any]:
        """Called on a server thread: accept a run command for the next step boundary, or
        refuse it (ProtocolError) with the reason the sender is told."""
        if self.closed:
            raise ProtocolError(f"the run has ended ({self.status})")
        if self.stop_requested and not self.stop_ignored and request.cmd != STOP:
            raise ProtocolError("the run is stopping")
        refusal = self._refusal(request)
        if refusal:
            raise ProtocolError(refusal)
        if request.cmd in LR_COMMANDS:
            # Refused now, in the reply, if it would be refused at the step boundary (the
            # boundary checks again: the schedule may move the LR in between).
            try:
                self._plan_lr(request)
            except lr_control.LrRefused as exc:
                raise ProtocolError(_lr_refusal(request, exc)) from None
        self._inbox.put(request)
        return {"queued": True, "step": self._current_step()}

    def queue(self, request: Request) -> None:
        """Queue a request without the sender's checks (a signal's stop, autofix's recover)."""
        self._inbox.put(request)

    # -- on the training thread ------------------------------------------------------------

    def apply_pending(self) -> bool:
        """Apply what is due at this step boundary, in order; while paused, wait here for
        more. True when the run was paused (the time spent waiting is no step's)."""
        if self._ranks is not None:
            return self._apply_agreed()
        # Most steps have no command: a cheap look first, not a raised queue.Empty.
        if self._inbox.empty() and self.status != PAUSED:
            return False
        for request in self._drain_inbox():
            self._apply(request)
        if self.status != PAUSED:
            return False
        while self.status == PAUSED:
            try:
                request = self._inbox.get(timeout=PAUSE_POLL)
            except queue.Empty:
                continue
            self._apply(request)
        return True

    def _apply_agreed(self) -> bool:
        """A distributed job: requests go through the exchange and apply at the step every
        rank agreed on; a pause waits here, at that step, on every rank."""
        ranks = self._ranks
        assert ranks is not None
        step = self._current_step()
        if self._inbox.empty() and not ranks.due_now(step) and self.status != PAUSED:
            return False
        for request in ranks.exchange(
            step, self._choose_snapshots(self._drain_inbox()), paused=False
        ):
            self._apply(request)
        self._note_late(ranks)
        if self.status != PAUSED:
            return False
        while self.status == PAUSED:
            try:
                local = [self._inbox.get(timeout=PAUSE_POLL)]
            except queue.Empty:
                local = []
            for request in ranks.exchange(step, self._choose_snapshots(local), paused=True):
                self._apply(request)
        return True

    def _choose_snapshots(self, requests: list[Request]) -> list[Request]:
        """Rank 0 names the snapshot a `recover` restores, so every replica goes back to
        the same step (each rank's own view of which snapshots are good may differ)."""
        if self._ranks is None or self._ranks.rank != 0:
            return requests
        for request in requests:
            if request.cmd == RECOVER and SNAPSHOT_STEP not in request.args:
                chosen = self._snapshots.newest_good(request.args.get("before_step"))
                request.args[SNAPSHOT_STEP] = chosen.step if chosen is not None else None
        return requests

    def _drain_inbox(self) -> list[Request]:
        requests = []
        while True:
            try:
                requests.append(self._inbox.get_nowait())
            except queue.Empty:
                return requests

    def _note_late(self, ranks: RankCommands) -> None:
        """Requests this rank saw after their agreed step (ranks not in lockstep)."""
        for request, agreed in ranks.late:
            self._note(
                f"{request.cmd} was applied at step {self._current_step()} on this rank, "
                f"after the agreed step {agreed}: the ranks do not move in lockstep "
                "(no collective per step), so it came late",
                WARNING,
            )
        ranks.late.clear()

    def check_stop_ignored(self) -> None:
        """After a stop in stop="flag" mode: once the loop has run `stop_ignored_after`
        steps past it, say so, and accept commands again."""
        assert self.stop_step is not None
        step = self._current_step()
        waited = step - self.stop_step
        if self.stop_ignored or waited < self.settings.stop_ignored_after:
            return
        self.stop_ignored = True
        self.status = RUNNING
        said: MessageEvent = {
            "type": MESSAGE,
            "step": step,
            "level": WARNING,
            "text": (
                f"stop ignored: the loop ran {waited} steps past the stop at step "
                f"{self.stop_step} (checkpoint saved there). With Monitor(stop='flag') "
                "the loop must end when mon.should_stop is True; or use the default "
                "stop='raise'. Commands are accepted again."
            ),
            "stop_ignored": True,  # run_state.STOP_IGNORED
            "stop_requested_at": self.stop_step,
        }
        self._emit(said)

    def end(self, status: EndStatus) -> None:
        """How the run ended, for the status replies still answered while it closes."""
        self.status = status

    # -- the handlers ----------------------------------------------------------------------

    def _apply(self, request: Request) -> None:
        # Every step before the command goes to the log before the command's event does.
        self._drain_steps()
        handler = HANDLERS.get(request.cmd)
        if handler is None:
            return
        refusal = self._refusal(request)
        if refusal:  # autofix's or a signal's request, which bypass submit()
            self._note(refusal, ERROR)
            return
        try:
            handler(self, request)
        except Exception as exc:  # a command must never take the run down
            self._note(f"{request.cmd} failed: {exc}", ERROR)

    def _change_lr(self, request: Request) -> None:
        """set-lr, scale-lr."""
        try:
            old, new = self._plan_lr(request).apply()
        except lr_control.LrRefused as exc:
            # Accepted when sent, out of bounds at the boundary: say so to the sender.
            said: MessageEvent = {
                "type": MESSAGE,
                "step": self._current_step(),
                "level": ERROR,
                "text": f"{_lr_refusal(request, exc)}; the LR is unchanged",
                "request_id": request.id,
            }
            self._emit(said)
            return
        extra: ControlEvent = {"old_lrs": old, "new_lrs": new} if len(old) > 1 else {}
        self._control(request, old[0], new[0], extra)

    def _pause(self, request: Request) -> None:
        self._change_status(request, RUNNING)

    def _resume(self, request: Request) -> None:
        self._change_status(request, PAUSED)

    def _change_status(self, request: Request, changes_from: RunStatus) -> None:
        # Repeating a command is answered too (old == new), so a client always sees its
        # command acknowledged at a step boundary.
        old = self.status
        if old == changes_from:
            self.status = _status_set_by(request.cmd)
        self._control(request, old, self.status)

    def _stop(self, request: Request) -> None:
        old = self.status
        path = None
        if not self.stop_requested or self.stop_ignored:
            self.stop_requested = True
            self.stop_ignored = False
            self.stop_step = self._current_step()
            self.status = _status_set_by(STOP)
            path = self._checkpoint_or_note("stop")
        self._control(request, old, self.status, {"path": path})

    def _save_checkpoint(self, request: Request) -> None:
        """`checkpoint`: its control event says where the file is, or (`ok` false) why
        there is none, such as "no space left on device"."""
        try:
            path = str(self._checkpoint("command"))
        except Exception as exc:
            self._note(f"checkpoint failed: {exc}", ERROR)
            self._control(request, None, None, {"ok": False, "error": f"checkpoint failed: {exc}"})
        else:
            self._control(request, None, path, {"path": path})

    def _set_grad_clip(self, request: Request) -> None:
        clip = request.args["value"] or None  # 0 stops clipping
        old, self._grads.clip = self._grads.clip, clip
        self._control(request, old, self._grads.clip)

    def _recover(self, request: Request) -> None:
        """Go back to the last good snapshot (if one is kept) and scale the LR down."""
        self._on_recover()
        exact = request.args.get(SNAPSHOT_STEP)
        if SNAPSHOT_STEP in request.args and exact is None:
            restored = None  # rank 0 had no good snapshot: no replica goes back
        else:
            restored = self._snapshots.restore(
                self.model, self.optimizer, request.args.get("before_step"), exact
            )
        limits = lr_control.LrLimits.of(self.settings)
        try:
            old, new = lr_control.scale_lr(
                self.optimizer, self.scheduler, request.args["lr_factor"], limits=limits
            )
        except lr_control.LrRefused as exc:
            old = new = lr_control.current_lrs(self.optimizer)
            self._note(f"recover: the LR is unchanged: {exc}", WARNING)
        self._control(request, old[0], new[0], {"restored_step": restored})
        if restored is None:
            self._note(
                "recover: no good snapshot to restore (set monitor.autofix or "
                "monitor.snapshot_every to keep some), so only the LR was lowered",
                WARNING,
            )

    # -- helpers ---------------------------------------------------------------------------

    def _refusal(self, request: Request) -> str | None:
        """Why a request cannot apply in this job: some ranks have no Monitor, so a change
        to training would reach rank 0 alone (diverging replicas, or ranks blocked in a
        collective while rank 0 pauses). A stop or a checkpoint is still rank 0's."""
        if not self._missing_ranks or request.cmd in (STOP, CHECKPOINT):
            return None
        shown = ", ".join(map(str, self._missing_ranks[:8]))
        more = ", …" if len(self._missing_ranks) > 8 else ""
        return (
            f"{request.cmd} refused: rank(s) {shown}{more} of this job have no tuimon "
            "Monitor, so it would apply on rank 0 alone (the replicas would diverge, or "
            "the other ranks would wait in a collective). Create the Monitor on every rank"
        )

    def _plan_lr(self, request: Request) -> lr_control.LrChange:
        """The set-lr / scale-lr change, checked against the run's LR limits."""
        group = request.args.get("group")
        limits = lr_control.LrLimits.of(self.settings)
        if request.cmd == SET_LR:
            return lr_control.plan_set_lr(
                self.optimizer, self.scheduler, request.args["value"], group, limits
            )
        return lr_control.plan_scale_lr(
            self.optimizer, self.scheduler, request.args["factor"], group, limits
        )

    def _checkpoint_or_note(self, reason: str) -> str | None:
        try:
            return str(self._checkpoint(reason))
        except Exception as exc:
            self._note(f"checkpoint failed: {exc}", ERROR)
            return None

    def _control(
        self, request: Request, old: Any, new: Any, extra: ControlEvent | None = None
    ) -> None:
        """The `control` event of an applied command: what it changed, and for whom."""
        event: ControlEvent = {
            "type": CONTROL,
            "step": self._current_step(),
            "command": request.cmd,
            "old": old,
            "new": new,
            "source": request.source,
            "request_id": request.id,
        }
        # The request's arguments, as sent and checked (control/commands.py's table).
        event.update(cast(ControlEvent, request.args))
        if extra:
            event.update(extra)
        self._emit(event)

    def _note(self, text: str, level: Severity = INFO) -> None:
        said: MessageEvent = {
            "type": MESSAGE,
            "step": self._current_step(),
            "level": level,
            "text": text,
        }
        self._emit(said)


# One handler per run command, by name: the other half of control/commands.py's table.
HANDLERS: Final[dict[str, Callable[[CommandRunner, Request], None]]] = {
    SET_LR: CommandRunner._change_lr,
    SCALE_LR: CommandRunner._change_lr,
    PAUSE: CommandRunner._pause,
    RESUME: CommandRunner._resume,
    STOP: CommandRunner._stop,
    CHECKPOINT: CommandRunner._save_checkpoint,
    SET_GRAD_CLIP: CommandRunner._set_grad_clip,
    RECOVER: CommandRunner._recover,
}
if set(HANDLERS) != set(RUN_COMMANDS):  # a command added to the table needs its handler
    raise AssertionError(
        f"run commands without a handler, or handlers without a command: "
        f"{sorted(set(HANDLERS) ^ set(RUN_COMMANDS))}"
    )


def _status_set_by(command: str) -> RunPhase:
    status = COMMANDS[command].sets_status
    assert status is not None, f"{command} does not change the run's status"
    return status


def _lr_refusal(request: Request, exc: lr_control.LrRefused) -> str:
    """`set-lr 5e-324: resulting lr 5e-324 is below the minimum 1e-12`."""
    value = request.args.get("value", request.args.get("factor"))
    shown = lr_control.show_lr(value) if isinstance(value, float) else value
    return f"{request.cmd} {shown}: {exc}"
