"""tuimon inside the Hugging Face Trainer: `Trainer(..., callbacks=[TuimonCallback()])`.

The Trainer owns the loop and gives its callbacks neither the loss nor a hook for an
exception, so the callback holds on to the Trainer that calls it (found on the call stack
at `on_train_begin`, or given: `TuimonCallback(trainer=trainer)`) and wraps its
`training_step`: what that returns is the loss the Trainer backpropagated (already divided
for gradient accumulation, whatever `compute_loss` or `compute_loss_func` made of it), on
the device, so the per-step loss is the sum over an optimizer step's micro-batches, the
number the Trainer itself logs, and needs no sync. An exception out of a training step
ends the run `failed` with its traceback; so does one out of `trainer.train()` when the
Trainer was given; any other way out of training without `on_train_end` is named when the
next `train()` begins or the process exits.

Commands apply where the Trainer calls `on_step_end` (after the optimizer and scheduler
stepped): LR changes scale the optimizer and the LambdaLR's base LRs, so the schedule
keeps its shape; a checkpoint is the Trainer's own (`control.should_save`, saved as
`output_dir/checkpoint-<step>` right after the callback returns); a stop is
`control.should_training_stop`. Only the world's process zero runs a Monitor.
"""

from __future__ import annotations

import atexit
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import transformers
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from tuimon.integrations.accelerate import inner_optimizer, inner_scheduler
from tuimon.integrations.framework_run import FrameworkRun
from tuimon.monitor.monitor import batch_size
from tuimon.run.events import FAILED

# HF's names for what tuimon calls otherwise (the doctor's overfitting rules read val_loss).
HF_RENAMES = {"eval_loss": "val_loss"}
# Who makes the run, in its errors.
ADAPTER = "TuimonCallback"
# How far up the call stack the Trainer that calls a callback is (3 frames in 5.x).
_STACK_DEPTH = 12


class TuimonCallback(TrainerCallback):
    """A tuimon run for each `trainer.train()`: steps, metrics, commands and the doctor.

    `trainer`: the Trainer (optional: found when it calls `on_train_begin`); given, an
    exception out of `trainer.train()` anywhere ends the run `failed` with its traceback.
    Any other keyword is a `tuimon.Monitor` setting (name, run_dir, quiet, doctor,
    autofix, log_every, rules…), checked here, before training starts.
    """

    def __init__(self, trainer: Trainer | None = None, **settings: Any) -> None:
        FrameworkRun(settings, ADAPTER)  # checks them now, before any data is loaded
        self.settings = settings
        self.trainer = trainer
        self.run: FrameworkRun | None = None  # the latest train()'s, kept after it ends
        self._open = False
        self._untaps: list[Callable[[], None]] = []  # undo the wraps of _tap
        self._samples = 0  # this optimizer step's, summed over its micro-batches
        self._grad_norm: Any = None  # this step's norm before clipping, on the device
        # Where the Trainer is now, for a checkpoint asked for inside on_step_end.
        self._args: TrainingArguments | None = None
        self._state: TrainerState | None = None
        self._control: TrainerControl | None = None
        if trainer is not None:
            _wrap_train(trainer, self._end_by)

    @property
    def run_dir(self) -> Path | None:
        """The latest run's directory (None before the first `train()`)."""
        mon = self.run.monitor if self.run is not None else None
        return mon.run_dir if mon is not None else None

    # -- the Trainer's events -------------------------------------------------------

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero:
            return  # one run per job: process zero's (other ranks are not monitored)
        self._end_unfinished("trainer.train() began again before the last one ended")
        trainer = self.trainer or _calling_trainer()
        if trainer is None:
            raise RuntimeError(
                "TuimonCallback could not find the Trainer that calls it: give it, "
                "trainer.add_callback(TuimonCallback(trainer=trainer))"
            )
        optimizer, scaler = inner_optimizer(kwargs.get("optimizer"))
        loader = kwargs.get("train_dataloader")
        steps_per_epoch = epochs = None
        if loader is not None and hasattr(loader, "__len__") and len(loader) > 0:
            steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
            epochs = state.num_train_epochs
        run = FrameworkRun(self.settings, ADAPTER)
        run.start(
            kwargs["model"],
            optimizer,
            inner_scheduler(kwargs.get("lr_scheduler")),
            scaler=scaler,
            total_steps=state.max_steps,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            start_step=state.global_step,
            checkpoint_writer=self._save_through_trainer,
            precision=_precision(trainer),
            framework=f"transformers {transformers.__version__}",
            notes=[
                f"Hugging Face Trainer ({type(trainer).__name__}): the loss is what its "
                "training_step returns, summed over the micro-batches of each optimizer "
                f"step ({args.gradient_accumulation_steps} accumulated), as the Trainer logs it"
            ],
        )
        self.run, self._open = run, True
        self._tap(trainer)
        # After the Monitor's own exit hook, so this runs first (atexit is last-in, first-out).
        atexit.register(self._end_at_exit)

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> TrainerControl | None:
        run = self.run
        if run is None or not self._open or not run.started:
            return None
        self._args, self._state, self._control = args, state, control
        samples, grad_norm = self._samples, self._grad_norm
        self._samples, self._grad_norm = 0, None
        epoch = max(0, math.ceil(state.epoch) - 1) if state.epoch else 0
        # The Trainer's loss is the sum of its micro-batches' shares (each already divided
        # for accumulation), and the norm is the one before clipping. Commands apply
        # here; a pause waits here.
        run.step(epoch=epoch, samples=samples or None, grad_norm=grad_norm, summed=True)
        if run.should_stop:
            control.should_training_stop = True  # never set back: the stop is the user's
        return control

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # Trainer.evaluate() logs its metrics before on_evaluate: this one hook has both.
        if self.run is not None and self._open and logs:
            self.run.log(logs, renames=HF_RENAMES)

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if self.run is not None and self._open:
            self._close()
            self.run.finish()

    # -- the loss and the ends ------------------------------------------------------

    def _tap(self, trainer: Trainer) -> None:
        """Wrap this Trainer's training_step (on the instance, so a subclass's override is
        what runs inside) to keep each micro-batch's loss on the device, and its
        Accelerator's clip_grad_norm_ (which the Trainer calls once per optimizer step,
        after unscaling) to keep the norm before clipping."""
        self._untap()
        self._samples, self._grad_norm = 0, None

        def tap_training_step(training_step: Callable[..., Any]) -> Callable[..., Any]:
            def tapped(*args: Any, **kwargs: Any) -> Any:
                try:
                    loss = training_step(*args, **kwargs)
                except BaseException as exc:
                    self._end_by(exc)
                    raise
                self._add_loss(loss, args[1] if len(args) > 1 else kwargs.get("inputs"))
                return loss

            return tapped

        def tap_clip(clip: Callable[..., Any]) -> Callable[..., Any]:
            def tapped(*args: Any, **kwargs: Any) -> Any:
                self._grad_norm = norm = clip(*args, **kwargs)
                return norm

            return tapped

        self._untaps = [
            _patch(trainer, "training_step", tap_training_step),
            _patch(trainer.accelerator, "clip_grad_norm_", tap_clip),
        ]

    def _untap(self) -> None:
        while self._untaps:
            self._untaps.pop()()

    def _add_loss(self, loss: Any, inputs: Any) -> None:
        if not self._open or self.run is None:
            return
        self.run.add_loss(loss)  # on the device, no sync
        self._samples += batch_size(inputs) or 0

    def _save_through_trainer(self, path: Path) -> Path:
        """A checkpoint through the Trainer's own: it saves `checkpoint-<step>` (model,
        optimizer, scheduler, RNG, trainer state) right after on_step_end returns."""
        if self._control is None or self._args is None or self._state is None:
            raise RuntimeError("a checkpoint is taken only inside on_step_end")
        self._control.should_save = True
        output_dir = Path(self._args.output_dir or "trainer_output")  # set by TrainingArguments
        return output_dir / f"{PREFIX_CHECKPOINT_DIR}-{self._state.global_step}"

    def _end_by(self, exc: BaseException) -> None:
        """Training left by an exception: `failed` with its traceback (`stopped` for
        Ctrl-C)."""
        run = self.run
        if run is None or not self._open:
            return
        self._close()
        run.fail(exc)  # Ctrl-C ends it `stopped`

    def _end_unfinished(self, why: str) -> None:
        """A run whose training never reached on_train_end (an exception the script
        caught, outside a training step): `failed`, saying so."""
        run = self.run
        if run is None or not self._open or run.monitor is None:
            return
        self._close()
        run.monitor.close(status=FAILED, error=f"{why}: training never reached on_train_end")

    def _end_at_exit(self) -> None:
        self._end_unfinished("the process exited while trainer.train() was running")

    def _close(self) -> None:
        self._open = False
        self._untap()
        self._control = None
        atexit.unregister(self._end_at_exit)


def _wrap_train(trainer: Trainer, on_exception: Callable[[BaseException], None]) -> None:
    """`trainer.train()` that ends the run with any exception that leaves it."""

    def wrap(train: Callable[..., Any]) -> Callable[..., Any]:
        def train_and_tell(*args: Any, **kwargs: Any) -> Any:
            try:
                return train(*args, **kwargs)
            except BaseException as exc:
                on_exception(exc)
                raise

        return train_and_tell

    _patch(trainer, "train", wrap)


def _patch(
    owner: Any, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> Callable[[], None]:
    """Set `owner.name` to `wrap(owner.name)` on the instance; returns what undoes it
    (putting back an instance attribute that was there before, if any)."""
    own = vars(owner)
    had, before = name in own, own.get(name)
    setattr(owner, name, wrap(getattr(owner, name)))

    def undo() -> None:
        if had:
            setattr(owner, name, before)
        elif name in vars(owner):
            delattr(owner, name)

    return undo


def _calling_trainer() -> Trainer | None:
    """The Trainer whose method called this callback (Trainer → CallbackHandler → us)."""
    frame: FrameType | None = sys._getframe(1)
    for _ in range(_STACK_DEPTH):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer):
            return owner
        frame = frame.f_back
    return None


def _precision(trainer: Trainer) -> str:
    """What the Trainer really computes in: Accelerate's mixed precision where it has
    autocast for it ("fp16" on a CPU has none, so it trains in 32 bits there)."""
    accelerator = trainer.accelerator
    mixed = str(accelerator.mixed_precision)
    return mixed if mixed != "no" and accelerator.native_amp else "32"
