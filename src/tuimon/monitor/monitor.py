"""`tuimon.Monitor`: two lines that bring any training loop into tuimon.

The Monitor *is* the worker side of a run: it owns the run directory's event log, the
system sampler and the control server, records every step without syncing the GPU, and
applies commands (LR changes, pause, stop, checkpoint) only inside `step()`, on the
training thread, at a step boundary. The built-in trainer uses exactly this object.

This module is the public API, the wiring and the step path; the commands are the
command runner's (command_runner.py), the decision to recover autofix's (autofix.py).
"""

from __future__ import annotations

import atexit
import math
import os
import platform
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import psutil
import torch

import tuimon
from tuimon.config.schema import MonitorConfig, ProbeConfig
from tuimon.control.commands import STOP
from tuimon.control.protocol import Request
from tuimon.control.server import ControlServer
from tuimon.doctor.engine import Doctor
from tuimon.errors import StopTraining
from tuimon.headless.console import ConsoleReporter
from tuimon.monitor import lr_control
from tuimon.monitor.autofix import Autofix
from tuimon.monitor.command_runner import CommandRunner
from tuimon.monitor.device_buffer import DeviceBuffer, StepRecord
from tuimon.monitor.distributed.job import DistributedJob
from tuimon.monitor.distributed.rank_info import rank_info
from tuimon.monitor.distributed.rank_reports import RankCollector, RankReporter, identity
from tuimon.monitor.inner_module import inner_module
from tuimon.monitor.loss_info import describe_loss
from tuimon.monitor.optimizer_check import optimizer_check
from tuimon.monitor.probes import StepProbes
from tuimon.monitor.settings import monitor_settings
from tuimon.monitor.snapshots import SnapshotRing
from tuimon.monitor.step_timer import StepTimer
from tuimon.monitor.stop_signals import StopOnSignal
from tuimon.notify.notifier import Notifier
from tuimon.notify.payloads import RunFacts
from tuimon.notify.targets import redacted_argv
from tuimon.run.checkpoint import checkpoint_path, save_checkpoint
from tuimon.run.event_log import EventLog
from tuimon.run.events import (
    ALERT,
    CHECKPOINT,
    COMPLETED,
    END,
    ERROR,
    FAILED,
    INFO,
    MESSAGE,
    METRICS,
    RESERVED_METRIC_KEYS,
    START,
    STEP,
    STOPPED,
    WARNING,
    CheckpointEvent,
    CudaMemory,
    EndEvent,
    EndStatus,
    Event,
    MessageEvent,
    MetricsEvent,
    RankSummary,
    RunStatus,
    Severity,
    StartEvent,
    StepEvent,
)
from tuimon.run.replay_cache import write_state_cache
from tuimon.run.run_dir import (
    AUTOFIX_ENV,
    CHECKPOINT_DIR,
    CONTROL_SOCKET,
    EVENTS_FILE,
    NOTIFY_ENV,
    QUIET_ENV,
    RUN_NAME_PATTERN,
    claim_script_run_dir,
    create_run_dir,
    flag_from_env,
)
from tuimon.run.run_state import RunState
from tuimon.system.sampler import SystemSampler

# How a Monitor answers a stop: raise StopTraining from `step()` (default), or only set
# `should_stop` for a script that polls it (and finishes its epoch first, say).
STOP_MODES = ("raise", "flag")


@dataclass
class RunOptions:
    """What the built-in trainer (or `tuimon run`) knows beyond the public signature."""

    name: str | None = None
    settings: MonitorConfig = field(default_factory=MonitorConfig)
    config: dict[str, Any] | None = None
    total_steps: int | None = None
    steps_per_epoch: int | None = None
    epochs: int | None = None
    grad_clip: float | None = None
    start_step: int = 0
    start_epoch: int = 0
    resumed_from: str | None = None
    data: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    loss: dict[str, Any] | None = None  # the start event's `loss`: name and settings
    stop: str = "raise"
    # Signals that stop the run (first: at the next step; second: abort), and whether to
    # take them from a handler someone else installed (the built-in worker does).
    stop_signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)
    replace_signal_handlers: bool = False
    # A framework's own checkpointing (Lightning's `trainer.save_checkpoint`): given the
    # path tuimon would use, it saves (or arranges the save) and returns the file's path.
    checkpoint_writer: Callable[[Path], Path] | None = None
    precision: str | None = None  # "32", "bf16", "fp16", or a framework's name for it
    framework: str | None = None  # the framework that owns the loop, with its version


class Monitor:
    """Watch a training loop: `with Monitor(model, optimizer) as mon: ... mon.step(loss)`.

    `name`: the run's name (default: the script's). `total_steps`, `epochs`,
    `steps_per_epoch`: the run's length, for the epoch, progress bar and ETA. `loss_fn`: the
    criterion, recorded for the doctor. `stop`: "raise" (a stop makes `step()` raise
    StopTraining, which the `with` block turns into a `stopped` run) or "flag" (only
    `should_stop` is set). `doctor` (a dict) and any other keyword: the settings of a
    config's `monitor:` section (autofix, snapshot_every, rules, probes, log_every…);
    `notify` (a webhook URL, a command, or a dict: url/command, when, hang_after, format) is
    where a message goes on an error alert, the end or a hang (`tuimon run --notify`).
    `scaler`: the run's `torch.amp.GradScaler`, whose loss scale each step records (no
    sync: the scale stays on the device until the step's other values are fetched).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        scaler: Any = None,
        run_dir: str | Path | None = None,
        quiet: bool = False,
        name: str | None = None,
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        loss_fn: Any = None,
        stop: str = "raise",
        doctor: dict[str, Any] | None = None,
        _options: RunOptions | None = None,
        **doctor_settings: Any,
    ) -> None:
        if _options is None:  # a script's Monitor: its options from the keywords
            _options = script_options(
                name, total_steps, epochs, steps_per_epoch, loss_fn, stop, doctor, doctor_settings
            )
            quiet = quiet or flag_from_env(QUIET_ENV)
        options = _options
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"Monitor needs a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"Monitor needs a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if options.stop not in STOP_MODES:
            raise ValueError(
                f"Monitor(stop={options.stop!r}): use stop='raise' (step() raises "
                "tuimon.StopTraining) or stop='flag' (the loop polls mon.should_stop)"
            )
        # torch.compile's wrapper: names, hooks and checkpoints are those of the module it
        # wraps (no "_orig_mod." prefixes); only the step timer watches the wrapper's calls.
        called = model
        model = inner_module(model)
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.options = options
        self.settings = options.settings
        self.name = options.name or _default_name()
        # One of several ranks (torchrun): one run per job, rank 0's; the others log
        # under its ranks/<N>/ and take their commands from rank 0 at agreed steps.
        info = rank_info()
        self.rank: int | None = info.rank if info is not None else None
        self._job = DistributedJob.join(info) if info is not None else None
        self._rank_zero = info is None or info.is_zero

        def own_run_dir() -> Path:
            if run_dir is not None:
                return create_run_dir(self.name, run_dir)
            return claim_script_run_dir(self.name)

        if self._job is None:
            self.run_dir = own_run_dir()
        else:
            requested = Path(run_dir) if run_dir is not None else None
            self.run_dir = self._job.agree_run_dir(own_run_dir, requested, self.name)
            if not self._rank_zero:  # DDP's gradients are rank 0's: probe them there
                self.settings = self.settings.model_copy(update={"probes": _RANK_PROBES})
        self.global_step = options.start_step
        self._epoch = options.start_epoch
        self._epoch_given = False
        self.total_steps = options.total_steps
        self.stop_mode = options.stop
        self._closed = False
        self._end_lock = threading.Lock()  # close() and _abandon() may race: one ends the run
        self._started = time.time()
        self._last_loss: float | None = None

        self._log = EventLog(self.run_dir / EVENTS_FILE, rank=self.rank)
        # Kept up to date on the log's writer thread, served whole to clients that attach.
        self.history = RunState(smoothing=self.settings.smoothing)
        self._log.subscribe(self.history.apply_many, batches=True)
        if not quiet and self._rank_zero:  # one progress line per job, not per rank
            self._log.subscribe(
                ConsoleReporter(
                    self.name, self.settings.print_every, smoothing=self.settings.smoothing
                )
            )
        self._probes = StepProbes(model, optimizer, self.settings.probes, options.grad_clip)
        first = next(model.parameters(), None)
        self._device = first.device if first is not None else torch.device("cpu")
        self._me: RankSummary | None = None
        if self._job is not None and info is not None:
            self._me = identity(info.rank, info.local_rank, info.node, str(self._device))
            self._job.announce(self._me)
            if self._rank_zero:
                self._job.gather_members(self._me)
        self._timer = StepTimer(called)
        self._buffer = DeviceBuffer(self.settings.log_every)
        every = self.settings.snapshot_every or (20 if self.settings.autofix else 0)
        self._snapshots = SnapshotRing(every)
        self._autofix = Autofix(self.settings, self.note)
        self._commands = CommandRunner(
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            settings=self.settings,
            emit=self._log.emit,
            current_step=lambda: self.global_step,
            drain_steps=self._drain_steps,
            checkpoint=self.checkpoint,
            grads=self._probes.grads,
            snapshots=self._snapshots,
            on_recover=self._autofix.recovery_applied,
            ranks=self._job.commands(self.settings.sync_every) if self._job else None,
            missing_ranks=tuple(self._job.missing) if self._job and self._rank_zero else (),
        )
        # The doctor reads every event on the log's writer thread, off the training loop.
        # Without snapshots a `recover` could only lower the LR: the doctor offers that.
        self.doctor = Doctor(
            {k: v.model_dump() for k, v in self.settings.rules.items()}, can_restore=every > 0
        )
        if self._rank_zero:  # the job's verdicts come from the job's log
            self._log.subscribe(self._consult_doctor, batches=True)
        self._log.emit(self._start_event())
        # Notifications read the log as the doctor does, and queue only (notify/).
        self._notifier: Notifier | None = None
        if self._rank_zero and self.settings.notify is not None:
            self._notifier = Notifier(
                self.settings.notify,
                RunFacts(self.name, str(self.run_dir), socket.gethostname(), os.getpid()),
                current_step=lambda: self.global_step,
                status=self._status_now,
                note=self.note,
            )
            self._log.subscribe(self._notifier.observe, batches=True)
        check = optimizer_check(model, optimizer)
        check["step"] = self.global_step
        self._log.emit(check)
        self._missing_note()
        # One sampler per machine: a node's local rank 0 reads its host and GPUs.
        self._sampler: SystemSampler | None = None
        if info is None or info.local_rank == 0:
            self._sampler = SystemSampler(self._log.emit, self.settings.system_interval)
            self._sampler.start()
        self._reporter: RankReporter | None = None
        self._collector: RankCollector | None = None
        self._lost: list[RankSummary] = []
        self._steps_at_loss = -1  # the step when a rank was found lost
        if self._job is not None and self._me is not None:
            self._reporter = RankReporter(
                self._job.store, self._me, memory=self._memory_in_use, status=self._status_now
            )
            self._reporter.start()
            if self._rank_zero:
                self._collector = RankCollector(
                    self._job.store,
                    self._job.members,
                    emit=self._log.emit,
                    current_step=lambda: self.global_step,
                    timeout=self.settings.rank_timeout,
                    on_lost=self._rank_lost,
                )
                self._collector.start()
        self._server: ControlServer | None = None
        if self._rank_zero:  # one control socket per job: rank 0's
            self._server = ControlServer(
                self.run_dir / CONTROL_SOCKET,
                self._log,
                on_command=self._commands.submit,
                status=self._status,
                history=self.history.snapshot,
            )
        self._previous_excepthook = sys.excepthook
        sys.excepthook = self._excepthook
        atexit.register(self._close_at_exit)
        self._signal_stop = StopOnSignal(lambda source: self.request_stop(source))
        self._signal_stop.install(options.stop_signals, replace=options.replace_signal_handlers)

    @classmethod
    def configured(
        cls,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        scaler: Any = None,
        run_dir: str | Path | None = None,
        quiet: bool = False,
        options: RunOptions,
    ) -> Monitor:
        """A Monitor with settings from a config (used by the built-in trainer and the
        framework adapters)."""
        return cls(
            model,
            optimizer,
            scheduler,
            scaler=scaler,
            run_dir=run_dir,
            quiet=quiet,
            _options=options,
        )

    # -- public API -------------------------------------------------------------------

    @property
    def status(self) -> RunStatus:
        """running, paused or stopping; then completed, stopped or failed."""
        return self._commands.status

    @property
    def should_stop(self) -> bool:
        """True once a stop was requested: end the loop (a checkpoint was already saved)."""
        return self._commands.stop_requested

    @property
    def epoch(self) -> int:
        """The current epoch, counted from 0 (`for epoch in range(epochs)`)."""
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch = int(value)
        self._epoch_given = True

    @property
    def signals_received(self) -> int:
        """How many stop signals (SIGTERM, or SIGINT under the worker) this run got."""
        return self._signal_stop.count

    def step(
        self,
        loss: Any,
        *,
        inputs: Any = None,
        targets: Any = None,
        outputs: Any = None,
        epoch: int | None = None,
        samples: int | None = None,
        micro_batches: int = 1,
        grad_norm: Any = None,
    ) -> None:
        """Record one optimizer step; apply pending commands (a pause blocks here).

        With gradient accumulation, call it once per optimizer step and give `samples` (the
        summed batch size) or `micro_batches` (how many batches like `inputs` went into it),
        so samples/s is right. `grad_norm`: the norm `clip_grad_norm_` returned, i.e. before
        clipping (the step's `grad_norm` is the one the optimizer used, after it).

        After a stop was applied (its checkpoint saved) this raises StopTraining, unless
        the Monitor was made with `stop="flag"`.
        """
        if self._closed:
            raise RuntimeError("this Monitor is closed")
        self.global_step += 1
        if epoch is not None:
            self.epoch = epoch
        elif not self._epoch_given and self.options.steps_per_epoch:
            self._epoch = (self.global_step - 1) // self.options.steps_per_epoch
        step_time, data_time = self._timer.lap()
        sample = self._probes.sample(self.global_step, inputs, targets, outputs, loss)
        lrs = sample.lrs if sample.lrs is not None else lr_control.current_lrs(self.optimizer)
        if micro_batches < 1:
            raise ValueError(f"mon.step(micro_batches={micro_batches!r}): at least 1")
        if samples is None:
            batch = batch_size(inputs if inputs is not None else targets)
            samples = batch * micro_batches if batch is not None else None
        meta: dict[str, Any] = {
            "step": self.global_step,
            "epoch": self._epoch,
            "time": time.time(),
            "lr": lrs[0] if lrs else None,
            "step_time": step_time,
            "data_time": data_time,
            "samples": samples,
            "optimizer_steps": sample.optimizer_steps,
        }
        if len(lrs) > 1:
            meta["lrs"] = lrs
        if samples and step_time > 0:
            meta["samples_per_s"] = samples / step_time
        if sample.layout:
            meta["batch_layout"] = sample.layout
        tensors = sample.tensors
        if grad_norm is not None:
            tensors[UNCLIPPED] = _norm_tensor(grad_norm, self._device)
        scale = _loss_scale(self.scaler)
        if scale is not None:
            tensors[LOSS_SCALE] = scale
        buffer = self._buffer
        buffer.add(meta, loss, tensors)
        if self._snapshots.every:
            self._snapshots.maybe_take(self.global_step, self.model, self.optimizer)
        # Values come back every `log_every` steps: the steps between touch no event.
        if buffer.due():
            buffer.start_transfer()
        if buffer.in_flight:
            self._emit_steps(buffer.collect())
        if self._commands.apply_pending():
            self._timer.exclude_pause()
        self._timer.restart()
        if self._commands.stop_requested:
            # After a stop: end the loop, or (flag mode) say so when the loop ignores it.
            if self.stop_mode == "raise":
                raise StopTraining(self.global_step)
            self._commands.check_stop_ignored()

    def batch_ready(self) -> None:
        """Say the step's batch has arrived, for loops where the first forward is not where
        the data wait ends (a framework's batch-start hook; augmentation on the device
        before the forward). Without it the first forward after a step marks it."""
        self._timer.batch_ready()

    def measure_grads(self) -> None:
        """Take this step's gradient norms now. For loops where `optimizer.step(closure)`
        runs the backward itself (Lightning), so the optimizer's pre-hook comes before the
        gradients: call it where they are final (after backward and any unscale, before
        the update). From the first call on, every step's norms come from these calls."""
        self._probes.grads.measure()

    def log(self, **scalars: Any) -> None:
        """Record scalars (validation loss, accuracy…) at the current step."""
        reserved = RESERVED_METRIC_KEYS.intersection(scalars)
        if reserved:
            raise ValueError(f"mon.log(): {sorted(reserved)[0]!r} is a reserved name")
        values = {key: _scalar(value) for key, value in scalars.items()}
        # Steps before this point go first, so the log stays in step order.
        self._drain_steps()
        metrics = {"type": METRICS, "step": self.global_step, "epoch": self.epoch, **values}
        self._log.emit(cast(MetricsEvent, metrics))  # any scalar a script logs

    def checkpoint(self, reason: str = "manual") -> Path:
        """Save model, optimizer, scheduler, step and RNG state now; returns the file.

        In a distributed job rank 0 writes it (DDP's replicas are identical); another
        rank writes nothing and returns the path of rank 0's file."""
        self._drain_steps()
        if not self._rank_zero and self._job is not None and self._job.job_dir is not None:
            return checkpoint_path(self._job.job_dir / CHECKPOINT_DIR, self.global_step)
        path = checkpoint_path(self.run_dir / CHECKPOINT_DIR, self.global_step)
        writer = self.options.checkpoint_writer
        if writer is not None:  # the framework's own format, through the framework
            path = writer(path)
        else:
            save_checkpoint(
                path,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                step=self.global_step,
                epoch=self.epoch,
                scaler=self.scaler,
            )
        saved: CheckpointEvent = {
            "type": CHECKPOINT,
            "step": self.global_step,
            "path": str(path),
            "reason": reason,
        }
        self._log.emit(saved)
        return path

    def note(self, text: str, level: Severity = INFO) -> None:
        """A line of text for the log, the console and the UI."""
        said: MessageEvent = {
            "type": MESSAGE,
            "step": self.global_step,
            "level": level,
            "text": text,
        }
        self._log.emit(said)

    def request_stop(self, source: str = "api") -> None:
        """Ask the run to stop at its next step boundary (safe from a signal handler)."""
        self._commands.queue(Request(cmd=STOP, source=source))

    def close(
        self, status: EndStatus | None = None, error: str | None = None, reason: str | None = None
    ) -> None:
        """End the run: write what is pending, the `end` event, and stop the services."""
        if not self._begin_end():
            return
        try:
            self._drain_steps()
        except Exception as exc:  # a dead CUDA context must not lose the end event
            self.note(f"could not fetch the last steps: {exc!r}", level=ERROR)
        if status is None:
            status = STOPPED if self._commands.stop_requested else COMPLETED
        if status == FAILED and self._collector is not None:
            lost = self._collector.lost()  # a rank that died first is why this one failed
            if lost:
                error = f"{_lost_text(lost)}\n\n{error or ''}".rstrip()
        self._commands.end(status)
        if self._sampler is not None:
            self._sampler.stop()
        if self._reporter is not None:
            self._reporter.send(error)  # its last report: how this rank ended
            self._reporter.close()
        if self._collector is not None:
            self._collector.close()
            # Every rank as last heard, before `end`; when all went well, after their ends.
            self._collector.emit_now(settle=0.0 if status == FAILED else SETTLE_SECONDS)
        self._write_end(status, error, reason)
        if not self._log.health()["dropped"]:  # the cache stands for the log: all of it
            write_state_cache(self.run_dir, self.history, self._log.path)
        if self._server is not None:
            self._server.close()
        self._probes.remove()
        self._timer.remove()
        self._signal_stop.uninstall()
        if sys.excepthook == self._excepthook:
            sys.excepthook = self._previous_excepthook
        atexit.unregister(self._close_at_exit)

    def _begin_end(self) -> bool:
        """True for the one caller that ends the run: close() on the training thread, or
        _abandon() on the collector's timer, whichever comes first."""
        with self._end_lock:
            if self._closed:
                return False
            self._closed = True
        self._commands.closed = True
        return True

    def _write_end(self, status: EndStatus, error: str | None, reason: str | None) -> None:
        """The `end` event, last in the log, and the log closed."""
        end: EndEvent = {
            "type": END,
            "status": status,
            "step": self.global_step,
            "epoch": self.epoch,
            "elapsed": time.time() - self._started,
        }
        if error:
            end["error"] = error
        if reason:
            end["reason"] = reason
        # The doctor reads the last steps on the log's thread: its alerts go before `end`.
        self._log.flush()
        if self._notifier is not None:
            self._log.flush()  # the notifier has seen the doctor's last alerts
            self._notifier.run_ended(end)
            self._notifier.close()  # bounded: the end's message goes out before the exit
        self._log.emit(end)
        self._log.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, StopTraining):
            self.close(status=STOPPED)
            return True  # the stop was asked for: the code after the `with` block goes on
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close(status=STOPPED, reason="interrupted")
        else:
            self.close(status=FAILED, error="".join(traceback.format_exception(exc_type, exc, tb)))
        return False

    # -- setup --------------------------------------------------------------------------

    def _start_event(self) -> StartEvent:
        params = list(self.model.parameters())
        options = self.options
        start: StartEvent = {
            "type": START,
            "name": self.name,
            "run_dir": str(self.run_dir),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "argv": redacted_argv(sys.argv),  # never a notification's secret
            "config": options.config,
            "versions": _versions(),
            "device": _device_info(self._device),
            "model": {
                "class": type(self.model).__name__,
                "params": sum(p.numel() for p in params),
                "trainable": sum(p.numel() for p in params if p.requires_grad),
                "layers": list(self._probes.layout.layer_names),
            },
            "optimizer": {
                "class": type(self.optimizer).__name__,
                "param_groups": len(self.optimizer.param_groups),
                "lrs": lr_control.current_lrs(self.optimizer),
            },
            "scheduler": _scheduler_name(self.scheduler),
            "precision": options.precision,
            "framework": options.framework,
            "loss": options.loss,
            "stop_mode": options.stop,
            "total_steps": options.total_steps,
            "steps_per_epoch": options.steps_per_epoch,
            "epochs": options.epochs,
            "start_step": options.start_step,
            "resumed_from": options.resumed_from,
            "grad_clip": options.grad_clip,
            "data": options.data,
            "notes": list(options.notes),
            "settings": self.settings.model_dump(mode="json"),
        }
        if self._job is not None:
            start["distributed"] = self._job.describe(_backend(), self.settings.sync_every)
        return start

    def _missing_note(self) -> None:
        if self._job is None or not self._rank_zero or not self._job.missing:
            return
        missing = self._job.missing
        self.note(
            f"{len(missing)} of {self._job.info.world_size} ranks made no tuimon Monitor "
            f"(rank(s) {', '.join(map(str, missing[:8]))}{', …' if len(missing) > 8 else ''}):"
            " only rank 0 is watched, and commands that change training (LR, pause, "
            "gradient clip, recover) are refused, as they would reach rank 0 alone. "
            "Create the Monitor on every rank.",
            level=WARNING,
        )

    # -- steps --------------------------------------------------------------------------

    def _drain_steps(self) -> None:
        """Log every step recorded so far (waiting for its values to reach the host)."""
        self._emit_steps(self._buffer.drain())

    def _emit_steps(self, records: list[StepRecord]) -> None:
        if not records:
            return
        events: list[Event] = []
        for record, (fields, probes) in zip(records, self._probes.read(records), strict=True):
            meta = record.meta
            meta.pop("batch_layout", None)  # read() has decoded the batch probe with it
            # The meta of step() and the probes' fields: built up, so a cast.
            event = cast(StepEvent, {"type": STEP, **meta, "loss": record.loss, **fields})
            if record.loss is None:  # none given (a framework step without one): no key
                del event["loss"]
            if UNCLIPPED in record.values:
                event["grad_norm_unclipped"] = record.values[UNCLIPPED][0]
            if LOSS_SCALE in record.values:
                event["loss_scale"] = record.values[LOSS_SCALE][0]
            self._snapshots.verify(meta["step"], record.loss, fields.get("grad_norm"))
            # Probes first: rules then know a step's inputs before they judge its loss.
            events += [*probes, event]
            if self._reporter is not None:
                self._reporter.record(
                    meta["step"],
                    meta["step_time"],
                    meta.get("data_time"),
                    meta.get("samples"),
                    record.loss,
                )
        memory = _cuda_memory(self._device)
        if memory:
            event["cuda_memory"] = memory  # on the last step event
        self._last_loss = records[-1].loss
        # Steps wait for the log writer's timer (it takes the GIL once per interval, not
        # per batch), unless autofix may restore a snapshot: then the doctor must judge
        # before the ring's good snapshots are replaced by newer, blown-up ones.
        self._log.emit_many(events, wake=self._snapshots.every > 0)

    # -- the doctor and the control server ----------------------------------------------

    def _consult_doctor(self, events: list[dict[str, Any]]) -> None:
        """Log listener (of batches): alerts for the log, and autofix for the worst failures."""
        observe = self.doctor.observe
        for event in events:
            for said in observe(event):
                verdict = cast(Event, said)  # an alert or alert_cleared event
                self._log.emit(verdict)
                if verdict["type"] == ALERT:
                    recover = self._autofix.consider(verdict)
                    if recover is not None:
                        self._commands.queue(recover)

    def _status_now(self) -> RunStatus:
        return self._commands.status

    def _memory_in_use(self) -> int | None:
        """For this rank's report: the CUDA allocator's count, or the process's RSS."""
        if self._device.type == "cuda":
            return int(torch.cuda.memory_allocated(self._device))
        try:
            return int(psutil.Process().memory_info().rss)
        except psutil.Error:
            return None

    def _rank_lost(self, summary: RankSummary) -> None:
        """The collector found a rank dead or unheard (on its thread): say so now, and if
        this rank makes no step for a while after (it waits for the lost one inside a
        collective, where NCCL could hang until its timeout), end the run here."""
        self._lost.append(summary)
        self.note(_lost_text([summary]), level=ERROR)
        self._steps_at_loss = self.global_step
        timer = threading.Timer(self.settings.rank_timeout, self._end_if_stuck)
        timer.daemon = True
        timer.start()

    def _end_if_stuck(self) -> None:
        if self._closed or self.global_step != self._steps_at_loss:
            return
        self._abandon(
            f"{_lost_text(self._lost)}\n\nThis rank made no step for "
            f"{self.settings.rank_timeout:g} s after that (it waits for the lost rank inside "
            "a collective): tuimon ended the run here; torchrun stops the process."
        )

    def _abandon(self, error: str) -> None:
        """End the log from another thread while the training thread is stuck: only the
        services that do not touch the model (its thread may never come back)."""
        if not self._begin_end():
            return
        self._commands.end(FAILED)
        if self._collector is not None:
            self._collector.emit_now()
        self._write_end(FAILED, error, None)
        if self._server is not None:
            self._server.close()
        if self._sampler is not None:
            self._sampler.stop()

    def _status(self) -> dict[str, Any]:
        commands = self._commands
        return {
            "name": self.name,
            "state": commands.status,
            "step": self.global_step,
            "epoch": self.epoch,
            "total_steps": self.total_steps,
            "lrs": lr_control.current_lrs(self.optimizer),
            "loss": self._last_loss,
            "pid": os.getpid(),
            "run_dir": str(self.run_dir),
            "stop_mode": self.stop_mode,
            "stop_requested_at": commands.stop_step if commands.stop_requested else None,
            "stop_ignored": commands.stop_ignored,
            # recording false: events are not reaching events.jsonl (a full disk), and why.
            "log": self._log.health(),
        }

    # -- exits --------------------------------------------------------------------------

    def _excepthook(
        self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        # A script that never closed the Monitor and died: record why, then report as usual.
        # (An uncaught StopTraining is a SystemExit: no hook, the exit code is 0, and the
        # atexit close ends the run `stopped`.)
        if not self._closed:
            if issubclass(exc_type, KeyboardInterrupt):
                self.close(status=STOPPED, reason="interrupted")
            else:
                self.close(
                    status=FAILED, error="".join(traceback.format_exception(exc_type, exc, tb))
                )
        self._previous_excepthook(exc_type, exc, tb)

    def _close_at_exit(self) -> None:
        self.close()


def script_options(
    name: str | None,
    total_steps: int | None,
    epochs: int | None,
    steps_per_epoch: int | None,
    loss_fn: Any,
    stop: str,
    doctor: dict[str, Any] | None,
    doctor_settings: dict[str, Any],
) -> RunOptions:
    """A script's keywords to Monitor, checked, as the options the trainer gives directly."""
    if name is not None and not RUN_NAME_PATTERN.fullmatch(str(name)):
        raise ValueError(
            f"Monitor(name={name!r}): a name may hold letters, digits, '.', '_' and '-' only"
        )
    total_steps, epochs, steps_per_epoch = _run_length(total_steps, epochs, steps_per_epoch)
    return RunOptions(
        name=name,
        settings=monitor_settings(
            doctor,
            doctor_settings,
            autofix=flag_from_env(AUTOFIX_ENV),
            notify=os.environ.get(NOTIFY_ENV),
        ),
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        loss=describe_loss(loss_fn) if loss_fn is not None else None,
        stop=stop,
    )


def _scheduler_name(scheduler: Any) -> str | None:
    """The scheduler's class, or the classes of a framework's several, joined."""
    if scheduler is None:
        return None
    if isinstance(scheduler, list | tuple):
        return " + ".join(type(one).__name__ for one in scheduler) or None
    return type(scheduler).__name__


def _default_name() -> str:
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""
    return script if script and script not in ("-c", "pytest", "__main__") else "run"


def _run_length(
    total_steps: int | None, epochs: int | None, steps_per_epoch: int | None
) -> tuple[int | None, int | None, int | None]:
    """Checked lengths, each filled in from the other two where they determine it."""
    for label, value in (
        ("total_steps", total_steps),
        ("epochs", epochs),
        ("steps_per_epoch", steps_per_epoch),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value <= 0
        ):
            raise ValueError(f"Monitor({label}={value!r}): must be a positive int")
    if total_steps is None and epochs and steps_per_epoch:
        total_steps = epochs * steps_per_epoch
    if steps_per_epoch is None and total_steps and epochs and total_steps % epochs == 0:
        steps_per_epoch = total_steps // epochs
    if epochs is None and total_steps and steps_per_epoch:
        epochs = math.ceil(total_steps / steps_per_epoch)
    return total_steps, epochs, steps_per_epoch


# A job that ends well waits this long for its other ranks' ends, for the job's log.
SETTLE_SECONDS = 5.0

# What a rank other than 0 probes: its gradient norm (cheap, and its clip must be applied
# on every replica), none of the layer-by-layer probes (DDP's gradients are rank 0's).
_RANK_PROBES = ProbeConfig(
    layer_norms_every=10**9,
    update_ratio_every=0,
    batch_every=0,
    activations_every=0,
    stale_grad_every=0,
)


def _lost_text(lost: list[RankSummary]) -> str:
    """ "rank 1 (pid 812 on gpu-3) died at step 40" for each lost rank."""
    parts = []
    for summary in lost:
        where = f"pid {summary.get('pid')} on {summary.get('host')}"
        step = summary.get("step")
        if summary.get("status") == FAILED:
            error = str(summary.get("error") or "").strip().splitlines()
            why = f": {error[-1]}" if error else ""
            parts.append(f"rank {summary.get('rank')} ({where}) failed at step {step}{why}")
        elif summary.get("alive") is False:
            parts.append(f"rank {summary.get('rank')} ({where}) died at step {step}")
        else:
            parts.append(
                f"rank {summary.get('rank')} ({where}) has not been heard from for "
                f"{summary.get('age', 0):.0f} s (last step {step}): hung or dead"
            )
    return "; ".join(parts)


def _backend() -> str | None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return str(dist.get_backend())
    return None


# The device-buffer slot of the pre-clipping gradient norm a script hands to `step()`.
UNCLIPPED = "unclipped"
# The device-buffer slot of a GradScaler's loss scale after the step's `update()`.
LOSS_SCALE = "loss_scale"


def _loss_scale(scaler: Any) -> torch.Tensor | None:
    """The scaler's current scale as a 1-element device tensor (a copy: `update()` changes
    it in place), or None for no scaler, a disabled one, or one not used yet.
    `get_scale()` would read it back to the host: a GPU sync every step."""
    if scaler is None or not scaler.is_enabled():
        return None
    scale = getattr(scaler, "_scale", None)
    if not isinstance(scale, torch.Tensor):
        return None
    return scale.detach().float().reshape(1).clone()


def _norm_tensor(value: Any, device: torch.device) -> torch.Tensor:
    """A norm as a 1-element tensor, left where it is: reading it now would sync the GPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().reshape(1)
    return torch.tensor([float(value)], device=device)


def batch_size(batch: Any) -> int | None:
    """How many samples a batch holds: the first dimension of its first tensor (in a
    tensor, a list/tuple or a dict of them, as loaders and frameworks hand them over),
    read from the shape, so no sync."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else None
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, list | tuple):
        for item in batch:
            size = batch_size(item)
            if size is not None:
                return size
    return None


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().float().mean().item() if value.numel() else None
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _versions() -> dict[str, Any]:
    versions: dict[str, Any] = {
        "tuimon": tuimon.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    if "torchvision" in sys.modules:
        versions["torchvision"] = sys.modules["torchvision"].__version__
    return versions


def _device_info(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return {
            "type": "cuda",
            "index": index,
            "name": props.name,
            "total_memory": props.total_memory,
        }
    return {"type": device.type, "name": f"{device.type} ({torch.get_num_threads()} threads)"}


def _cuda_memory(device: torch.device) -> CudaMemory | None:
    """Allocator counters: host-side bookkeeping, reading them does not sync the GPU."""
    if device.type != "cuda":
        return None
    return {
        "allocated": torch.cuda.memory_allocated(device),
        "reserved": torch.cuda.memory_reserved(device),
        "max_allocated": torch.cuda.max_memory_allocated(device),
    }
