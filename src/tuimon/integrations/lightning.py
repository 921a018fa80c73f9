"""tuimon inside PyTorch Lightning: `Trainer(callbacks=[TuimonCallback()])`.

Lightning owns the loop, so the callback builds the run when training starts (from the
module, `trainer.optimizers`, the scheduler configs and the precision plugin's scaler)
and follows Lightning's hooks: losses per micro-batch, one tuimon step per optimizer step
(when `trainer.global_step` advanced: batch hooks fire per micro-batch under
`accumulate_grad_batches`), gradient norms in `on_before_optimizer_step` (after the
backward and the AMP unscale: Lightning's `optimizer.step(closure)` runs the backward
after the optimizer's own pre-hook), validation metrics after validation, and an
exception as a `failed` end. Commands apply at the step boundary as everywhere in tuimon;
a stop becomes `trainer.should_stop` and its checkpoint is Lightning's own `.ckpt`.

`TuimonLogger` (optional) makes every scalar `self.log(...)` logs a metric of the same run.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import Logger

from tuimon.integrations.framework_run import FrameworkRun
from tuimon.monitor.monitor import Monitor, batch_size
from tuimon.run.private_files import make_private_dir
from tuimon.run.run_dir import run_dir_from_env

__all__ = ["TuimonCallback", "TuimonLogger"]

# Lightning's checkpoint files end so (`trainer.save_checkpoint`, ModelCheckpoint).
LIGHTNING_CHECKPOINT_SUFFIX = ".ckpt"
# Who makes the run, in its errors.
ADAPTER = "TuimonCallback"


class TuimonCallback(pl.Callback):
    """Watch and steer a Lightning fit: `Trainer(callbacks=[TuimonCallback()])`.

    Keywords are `tuimon.Monitor`'s (name, run_dir, quiet, total_steps, autofix,
    log_every, rules, doctor…), checked here, before training starts. Under
    `tuimon run train.py` the run is the one `tuimon run` made.
    """

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        FrameworkRun(settings, ADAPTER)  # checks them now, before any data is loaded
        self._settings = settings
        self._run: FrameworkRun | None = None
        self._trainer: pl.Trainer | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._ended = False
        self._seen_global_step = 0  # trainer.global_step at the last tuimon step
        self._loss_factor = 1  # Lightning divides the loss by accumulate_grad_batches
        self._samples: int | None = 0  # summed batch sizes since the last step
        self._metrics_by_logger = False  # a TuimonLogger sends every logged scalar

    @property
    def monitor(self) -> Monitor | None:
        """The run's Monitor while training runs (its `run_dir`, `history`…)."""
        return self._run.monitor if self._run is not None else None

    # -- start --------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, not in on_fit_start: a resumed fit has restored global_step and the
        # optimizers by now, Lightning's signal handlers are in place, and the sanity
        # check's validation is over.
        if self._active:
            return
        optimizers = list(trainer.optimizers)
        if not optimizers:
            warnings.warn(
                "TuimonCallback: this fit has no optimizer, so tuimon has nothing to watch",
                stacklevel=2,
            )
            return
        optimizer = optimizers[0]
        notes = _notes(trainer, pl_module, optimizers)
        schedulers = [
            config.scheduler
            for config in trainer.lr_scheduler_configs
            if getattr(config.scheduler, "optimizer", None) is optimizer
        ]
        scheduler: Any = schedulers[0] if len(schedulers) == 1 else (schedulers or None)
        accumulate = max(1, int(trainer.accumulate_grad_batches))
        total_steps, steps_per_epoch = _run_length(trainer, accumulate)
        epochs = None
        if total_steps is None or steps_per_epoch is None:
            epochs = trainer.max_epochs
        run = FrameworkRun(self._settings, ADAPTER)
        self._run, self._trainer, self._optimizer = run, trainer, optimizer
        self._ended = False
        self._seen_global_step = trainer.global_step
        self._loss_factor = accumulate if pl_module.automatic_optimization else 1
        self._samples = 0
        run.start(
            pl_module,
            optimizer,
            scheduler,
            scaler=_grad_scaler(trainer),
            total_steps=total_steps,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            start_step=trainer.global_step,
            # In a DDP fit save_checkpoint is collective: rank 0 alone would wait for the
            # others forever, so there tuimon writes its own checkpoint on rank 0.
            checkpoint_writer=self._save_checkpoint if trainer.world_size == 1 else None,
            notes=notes,
            precision=str(trainer.precision),
            framework=f"lightning {pl.__version__}",
        )
        self._metrics_by_logger = False
        for logger in trainer.loggers:
            if isinstance(logger, TuimonLogger):
                logger.attach(run)
                self._metrics_by_logger = True

    # -- steps --------------------------------------------------------------------------

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # The batch is loaded and on the device: the wait for data ends here, not at the
        # first forward (training_step may call a submodule, or augment first).
        if self._active and self._run is not None and self._run.monitor is not None:
            self._run.monitor.batch_ready()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # The gradients are final here (after the closure's backward, unscaled under AMP,
        # before clipping); the optimizer's own pre-hook came before the backward.
        if self._active and optimizer is self._optimizer and self._run is not None:
            monitor = self._run.monitor
            if monitor is not None:
                monitor.measure_grads()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        run = self._run
        if run is None or not self._active:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            # Lightning hands back loss / accumulate_grad_batches: the micro-batch's own.
            run.add_loss(loss.detach() * self._loss_factor if self._loss_factor != 1 else loss)
        size = batch_size(batch)
        self._samples = self._samples + size if self._samples is not None and size else None
        if trainer.global_step == self._seen_global_step:
            return  # a micro-batch: the optimizer has not stepped yet
        self._seen_global_step = trainer.global_step
        samples, self._samples = self._samples or None, 0
        inputs, targets = _inputs_and_targets(batch)
        run.step(epoch=trainer.current_epoch, samples=samples, inputs=inputs, targets=targets)
        if run.should_stop:
            trainer.should_stop = True  # never set back: Lightning or the user may have set it

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._run is None or not self._active or trainer.sanity_checking:
            return
        if not self._metrics_by_logger:  # else the logger has sent them already
            self._run.log(trainer.callback_metrics)

    # -- ends ---------------------------------------------------------------------------

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        run = self._run
        if run is None or not self._active:
            return
        self._ended = True
        # Ctrl-C and Lightning's SIGTERMException (a SystemExit) end it `stopped`.
        run.fail(exception)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._finish()

    def _finish(self) -> None:
        if self._run is not None and not self._ended:
            self._ended = True
            self._run.finish()

    @property
    def _active(self) -> bool:
        return self._run is not None and self._run.started and not self._ended

    def _save_checkpoint(self, path: Path) -> Path:
        """The `checkpoint` and `stop` commands' file: Lightning's own checkpoint (weights,
        optimizers, schedulers, loops), resumable with `trainer.fit(ckpt_path=...)`."""
        trainer = self._trainer
        if trainer is None:
            raise RuntimeError("no Lightning trainer to save a checkpoint with")
        target = path.with_suffix(LIGHTNING_CHECKPOINT_SUFFIX)
        make_private_dir(target.parent)
        trainer.save_checkpoint(target)
        return target


class TuimonLogger(Logger):
    """Every scalar `self.log(...)` logs, as a metric of the run: `Trainer(logger=
    TuimonLogger(), callbacks=[TuimonCallback()])`. The callback lends it its run."""

    def __init__(self) -> None:
        super().__init__()
        self._run: FrameworkRun | None = None
        self._warned = False
        # Lightning asks for the version before training starts (ModelCheckpoint puts its
        # files under <root>/tuimon/<version>/): the run's directory name where `tuimon
        # run` has chosen it, else the time, fixed now so that it never changes.
        given = run_dir_from_env()
        self._version = given.name if given is not None else time.strftime("%Y%m%d-%H%M%S")

    def attach(self, run: FrameworkRun) -> None:
        """Log into `run` (the TuimonCallback of the same Trainer calls this)."""
        self._run = run

    @property
    def name(self) -> str:
        return "tuimon"

    @property
    def version(self) -> str:
        return self._version

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        run = self._run
        if run is None or run.monitor is None:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    "TuimonLogger logs into a TuimonCallback's run: add one, "
                    "Trainer(logger=TuimonLogger(), callbacks=[TuimonCallback()])",
                    stacklevel=2,
                )
            return
        run.log(metrics)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Not recorded: hyperparameters are not per-step scalars (the module's are in
        every Lightning checkpoint)."""


def _run_length(trainer: pl.Trainer, accumulate: int) -> tuple[int | None, int | None]:
    """Optimizer steps in the fit and per epoch, where Lightning knows them."""
    try:
        total: float | None = float(trainer.estimated_stepping_batches)
    except Exception:  # a dataloader without a length, say
        total = None
    batches = trainer.num_training_batches
    per_epoch = None
    if isinstance(batches, int | float) and math.isfinite(batches) and batches > 0:
        per_epoch = math.ceil(batches / accumulate)
    if total is None or not math.isfinite(total) or total <= 0:
        return None, per_epoch
    return int(total), per_epoch


def _grad_scaler(trainer: pl.Trainer) -> Any:
    """The precision plugin's GradScaler (16-mixed), or None (32, bf16)."""
    plugin = getattr(trainer.strategy, "precision_plugin", None)
    scaler = getattr(plugin, "scaler", None)
    if scaler is None or not callable(getattr(scaler, "is_enabled", None)):
        return None
    return scaler


def _notes(
    trainer: pl.Trainer, pl_module: pl.LightningModule, optimizers: list[torch.optim.Optimizer]
) -> list[str]:
    notes = []
    if len(optimizers) > 1:
        first = type(optimizers[0]).__name__
        notes.append(
            f"{len(optimizers)} optimizers: tuimon watches and steers the first ({first}); "
            "LR commands change only its learning rate"
        )
    if not pl_module.automatic_optimization:
        notes.append(
            "manual optimization: one tuimon step per training batch in which an optimizer "
            "stepped (trainer.global_step advanced)"
        )
    return notes


def _inputs_and_targets(batch: Any) -> tuple[Any, Any]:
    """A batch's inputs and targets where it is the usual `(x, y)`, for the batch checks
    (`input_nan`, `input_scale`, `class_imbalance`…); nothing for any other shape."""
    if isinstance(batch, list | tuple) and len(batch) == 2:
        x, y = batch
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            return x, y
    return None, None
