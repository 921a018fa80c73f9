"""tuimon in an Accelerate loop: the prepared objects' insides watched by one run.

Accelerate leaves the loop to the user, so the adapter is an object the loop calls once
per iteration: `mon = monitor(accelerator, model, optimizer, scheduler)`, then
`mon.step(loss)` inside `accelerator.accumulate(model)`. `accelerator.prepare` wraps what
the Monitor must hook (the torch optimizer behind `AcceleratedOptimizer`, its GradScaler,
the schedule behind `AcceleratedScheduler`, the module behind DDP or compile); this takes
them out, so probes, LR changes and recovery act on the real ones. A step is recorded
only where Accelerate really stepped the optimizer (`accelerator.sync_gradients`), with
the mean of the micro-batch losses since the last one.

A stop is a flag (`mon.should_stop`), not an exception: the loop is the user's, often
inside `accumulate`, and with several processes every one of them must leave it at the
same step (Accelerate's idiom: `set_trigger()` / `check_trigger()`); an exception on the
main process alone would leave the others waiting in their next all-reduce.

Only the main process watches: on the others the object does nothing (a run per rank
under Accelerate is not built yet). Launched with several processes (torchrun's
environment), the main process's Monitor sees a job whose other ranks have no Monitor: it
refuses the commands that change training (they would reach one replica) and keeps stop
and checkpoint. `TuimonTracker` brings `accelerator.log(...)` scalars into the same run
as metrics.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import accelerate
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.scheduler import AcceleratedScheduler
from accelerate.tracking import GeneralTracker

from tuimon.integrations.framework_run import FrameworkRun
from tuimon.monitor.monitor import Monitor

# Names Accelerate scripts give a validation loss: tuimon's `val_loss` (the doctor's
# overfitting rules read it).
VAL_LOSS_NAMES: Mapping[str, str] = {
    "eval_loss": "val_loss",
    "valid_loss": "val_loss",
    "validation_loss": "val_loss",
}

# `accelerator.log(...)` calls a tracker keeps from before its run starts, at most.
PENDING_LOGS = 1000

# Said in the start event of a job of several processes.
MAIN_PROCESS_ONLY_NOTE = (
    "Accelerate job of {processes} processes: only the main process is watched (a run "
    "per process is not built for Accelerate); a stop reaches the others through "
    "accelerator.set_trigger()/check_trigger(); the checkpoint is tuimon's own of the "
    "main process's replica (save_state is a call for every process)"
)


def monitor(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any = None,
    **settings: Any,
) -> AcceleratedRun:
    """A run for an Accelerate loop: call `.step(loss)` every iteration, end the loop when
    `.should_stop`, and end the run with `with` (or `.close()`, or
    `accelerator.end_training()` when a `TuimonTracker` is attached).

    `model`, `optimizer`, `scheduler`: as `accelerator.prepare` returned them (plain ones
    work too). `settings`: `Monitor(...)` keywords (name, run_dir, total_steps, epochs,
    quiet, doctor settings…). A `TuimonTracker` in `Accelerator(log_with=[...])` is
    attached to this run.
    """
    return AcceleratedRun(accelerator, model, optimizer, scheduler, settings)


class AcceleratedRun:
    """The run of one Accelerate loop on the main process; on any other, does nothing."""

    def __init__(
        self,
        accelerator: Accelerator,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        settings: Mapping[str, Any],
    ) -> None:
        self.accelerator = accelerator
        self.active = bool(accelerator.is_main_process)
        self._run: FrameworkRun | None = None
        self._samples = 0
        if not self.active:
            return
        inner, scaler = inner_optimizer(optimizer)
        if scaler is None:
            scaler = getattr(accelerator, "scaler", None)
        processes = int(accelerator.num_processes)
        notes = []
        if processes > 1:
            notes.append(MAIN_PROCESS_ONLY_NOTE.format(processes=processes))
        trackers = tuimon_trackers(accelerator)
        notes += [t.config_note() for t in trackers if t.config is not None]
        self._run = FrameworkRun(settings, "tuimon.integrations.accelerate.monitor")
        self._run.start(
            accelerator.unwrap_model(model),
            inner,
            inner_scheduler(scheduler),
            scaler=scaler,
            # With several processes save_state is a call for all of them (it waits for
            # every one under automatic naming, DeepSpeed and FSDP gather there): the main
            # one alone could hang. tuimon's own checkpoint of its replica is safe.
            checkpoint_writer=self._save_state if processes == 1 else None,
            notes=notes,
            precision=str(accelerator.mixed_precision),
            framework=f"accelerate {accelerate.__version__}",
        )
        for tracker in trackers:
            tracker.attach(self._run)

    @property
    def monitor(self) -> Monitor | None:
        """The Monitor (None on a process that does not watch)."""
        return self._run.monitor if self._run is not None else None

    @property
    def run_dir(self) -> Path | None:
        mon = self.monitor
        return mon.run_dir if mon is not None else None

    def step(
        self,
        loss: Any,
        *,
        samples: int | None = None,
        epoch: int | None = None,
        inputs: Any = None,
        targets: Any = None,
        grad_norm: Any = None,
    ) -> None:
        """One iteration of the loop, after `optimizer.step()`: `loss` is this micro-batch's
        (kept on its device), `samples` its batch size (for samples/s). A step is recorded
        only where the optimizer really stepped (`accelerator.sync_gradients`); pending
        commands apply there (a pause blocks there). `inputs`/`targets`: the batch, for
        the batch checks; `grad_norm`: what `accelerator.clip_grad_norm_` returned."""
        run = self._run
        if run is None:
            return
        run.add_loss(loss)
        if samples is not None:
            self._samples += int(samples)
        if not self.accelerator.sync_gradients:
            return
        total, self._samples = self._samples, 0
        run.step(
            epoch=epoch,
            samples=total or None,
            inputs=inputs,
            targets=targets,
            grad_norm=grad_norm,
        )

    @property
    def should_stop(self) -> bool:
        """A stop was applied (a checkpoint saved): leave the loop. With several processes,
        `accelerator.set_trigger()` here and `accelerator.check_trigger()` on every one."""
        return self._run is not None and self._run.should_stop

    def close(self) -> None:
        """End the run: `stopped` if a stop was applied, else `completed`."""
        if self._run is not None:
            self._run.finish()

    def _save_state(self, path: Path) -> Path:
        """Accelerate's own checkpoint (model, optimizer, scheduler, scaler, RNG) in a
        directory named as tuimon's file would be; where Accelerate put it (its
        `automatic_checkpoint_naming` chooses for itself)."""
        return Path(self.accelerator.save_state(str(path.with_suffix(""))))

    def __enter__(self) -> AcceleratedRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run = self._run
        if run is None:
            return
        if exc is None:
            run.finish()
        else:  # Ctrl-C ends it `stopped`, any other exception `failed`
            run.fail(exc)


class TuimonTracker(GeneralTracker):
    """`Accelerator(log_with=[TuimonTracker()])`: every `accelerator.log({...})` scalar
    becomes a metric of the run `monitor(accelerator, ...)` starts, at that run's step
    (the `step=` given to `log` is Accelerate's, not tuimon's optimizer steps). Calls
    before the run starts are kept and logged when it does. `accelerator.end_training()`
    ends the run. `renames`: more names for tuimon's (`eval_loss` is `val_loss` already).
    """

    name = "tuimon"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, renames: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.renames = {**VAL_LOSS_NAMES, **(renames or {})}
        self.config: dict[str, Any] | None = None
        self._run: FrameworkRun | None = None
        self._pending: deque[dict[str, Any]] = deque(maxlen=PENDING_LOGS)

    @property
    def tracker(self) -> Monitor | None:
        """The run's Monitor, once `monitor(accelerator, ...)` has started it."""
        return self._run.monitor if self._run is not None else None

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        """`init_trackers(config=...)`: said in the start event's notes, or as a message
        once the run has started."""
        self.config = dict(values)
        mon = self.tracker
        if mon is not None:
            mon.note(self.config_note())

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        if self._run is None or not self._run.started:
            self._pending.append(dict(values))
            return
        self._run.log(values, renames=self.renames)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()

    def attach(self, run: FrameworkRun) -> None:
        """Log into `run` from now on, starting with what was logged before it began."""
        self._run = run
        while self._pending:
            run.log(self._pending.popleft(), renames=self.renames)

    def config_note(self) -> str:
        items = ", ".join(f"{key}={value!r}" for key, value in (self.config or {}).items())
        return f"accelerate init_trackers config: {items}"


def tuimon_trackers(accelerator: Accelerator) -> list[TuimonTracker]:
    """The TuimonTrackers given to `Accelerator(log_with=...)`, started or not yet."""
    found: list[TuimonTracker] = []
    for tracker in [*getattr(accelerator, "trackers", []), *getattr(accelerator, "log_with", [])]:
        if isinstance(tracker, TuimonTracker) and tracker not in found:
            found.append(tracker)
    return found


def inner_optimizer(optimizer: Any) -> tuple[torch.optim.Optimizer, Any]:
    """The torch optimizer behind `AcceleratedOptimizer` (whose own step the Monitor's
    hooks never see), and its GradScaler (fp16), if any."""
    scaler = None
    while isinstance(optimizer, AcceleratedOptimizer):
        scaler = scaler if scaler is not None else optimizer.scaler
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"tuimon needs a torch optimizer (behind Accelerate's wrapper), got "
            f"{type(optimizer).__name__}"
        )
    return optimizer, scaler


def inner_scheduler(scheduler: Any) -> Any:
    """The schedule behind `AcceleratedScheduler`: LR changes scale its base LRs."""
    while isinstance(scheduler, AcceleratedScheduler):
        scheduler = scheduler.scheduler
    return scheduler
