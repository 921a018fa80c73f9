"""What every framework adapter does with its Monitor, whatever the framework.

A framework calls its hooks per micro-batch and per optimizer step, logs metrics under its
own names, and owns the loop, so the Monitor cannot raise out of it. This keeps one run
for an adapter: micro-batch losses summed on the device until the optimizer steps (no
sync), a step recorded once per optimizer step, the framework's scalars logged as
metrics under tuimon's names, a stop as a flag the adapter hands to the framework, and an
exception as a `failed` end with its traceback.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from tuimon.monitor.monitor import Monitor, RunOptions, script_options
from tuimon.run.events import FAILED, RESERVED_METRIC_KEYS, STOPPED
from tuimon.run.run_dir import QUIET_ENV, flag_from_env

# Names frameworks log that are not metrics of their own: the step event has them already.
STEP_FIELD_NAMES = frozenset({"loss", "lr", "learning_rate", "grad_norm", "epoch", "step"})
# Monitor keywords an adapter sets itself: the framework ends its own loop, and the
# scaler is the framework's.
ADAPTER_KEYWORDS = ("stop", "scaler")
# Keywords for the run itself rather than its settings.
_RUN_KEYWORDS = ("run_dir", "quiet", "name", "loss_fn", "doctor")
_LENGTH_KEYWORDS = ("total_steps", "epochs", "steps_per_epoch")


class FrameworkRun:
    """One run of a framework's training, built when the framework's training begins.

    `settings`: what the user gave the adapter, as `Monitor(...)` keywords (name,
    run_dir, quiet, doctor settings…), checked here, when the adapter is made: a typo
    fails before the framework loads any data. `adapter` names it in those errors.
    """

    def __init__(self, settings: Mapping[str, Any], adapter: str = "the adapter") -> None:
        self.settings = dict(settings)
        for key in ADAPTER_KEYWORDS:
            if key in self.settings:
                raise TypeError(
                    f"{adapter}({key}=...): the adapter sets it (a stop ends the framework's "
                    "loop through the framework; the GradScaler is the framework's)"
                )
        self._options(self.settings)  # raises what the Monitor would raise
        self.monitor: Monitor | None = None
        self._loss_sum: torch.Tensor | None = None
        self._micro_batches = 0

    @property
    def started(self) -> bool:
        return self.monitor is not None

    def start(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        scaler: Any = None,
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        start_step: int = 0,
        checkpoint_writer: Callable[[Path], Path] | None = None,
        notes: Iterable[str] = (),
        precision: str | None = None,
        framework: str | None = None,
    ) -> Monitor:
        """The run's Monitor (stop="flag": the framework ends its own loop)."""
        # The length the user gave wins over the framework's estimate.
        given = {key: self.settings.get(key) for key in _LENGTH_KEYWORDS}
        estimated = {"total_steps": total_steps, "epochs": epochs}
        estimated["steps_per_epoch"] = steps_per_epoch
        lengths = {key: given[key] or _positive(estimated[key]) for key in _LENGTH_KEYWORDS}
        options = self._options({**self.settings, **lengths})
        run_dir = self.settings.get("run_dir")
        # `tuimon run --quiet` says so through the environment, as for a script's Monitor.
        quiet = bool(self.settings.get("quiet", False)) or flag_from_env(QUIET_ENV)
        options.start_step = start_step
        options.checkpoint_writer = checkpoint_writer
        options.notes = list(notes)
        options.precision = precision
        options.framework = framework
        self.monitor = Monitor.configured(
            model,
            optimizer,
            scheduler,
            scaler=scaler,
            run_dir=run_dir,
            quiet=quiet,
            options=options,
        )
        return self.monitor

    @staticmethod
    def _options(settings: Mapping[str, Any]) -> RunOptions:
        """The Monitor's options from its keywords, checked as a script's Monitor's are."""
        rest = {
            key: value
            for key, value in settings.items()
            if key not in _RUN_KEYWORDS and key not in _LENGTH_KEYWORDS
        }
        return script_options(
            settings.get("name"),
            settings.get("total_steps"),
            settings.get("epochs"),
            settings.get("steps_per_epoch"),
            settings.get("loss_fn"),
            "flag",
            settings.get("doctor"),
            rest,
        )

    def add_loss(self, loss: Any) -> None:
        """A micro-batch's loss, kept on its device (reading it would sync the GPU)."""
        if isinstance(loss, torch.Tensor):
            value = loss.detach().float().reshape(())
        elif isinstance(loss, int | float):
            value = torch.tensor(float(loss))
        else:
            return
        self._loss_sum = value if self._loss_sum is None else self._loss_sum + value
        self._micro_batches += 1

    def step(
        self,
        *,
        epoch: int | None = None,
        samples: int | None = None,
        inputs: Any = None,
        targets: Any = None,
        grad_norm: Any = None,
        summed: bool = False,
    ) -> None:
        """One optimizer step, with the mean of the micro-batch losses since the last one
        (their sum with `summed`: each was already its share of the step's loss, as HF's
        are); applies pending commands (a pause blocks here). `inputs`/`targets`: the last
        micro-batch, for the batch checks; `grad_norm`: what clipping returned."""
        mon = self.monitor
        if mon is None:
            return
        if self._loss_sum is None:
            # No loss this step (a training_step that returns none): the step has none,
            # not NaN, so the doctor does not take it for a blow-up.
            loss: Any = None
            micro_batches = 1
        else:
            loss = self._loss_sum if summed else self._loss_sum / self._micro_batches
            micro_batches = self._micro_batches
        self._loss_sum, self._micro_batches = None, 0
        mon.step(
            loss,
            epoch=epoch,
            samples=samples,
            micro_batches=micro_batches,
            inputs=inputs,
            targets=targets,
            grad_norm=grad_norm,
        )

    def log(self, scalars: Mapping[str, Any], renames: Mapping[str, str] | None = None) -> None:
        """The framework's scalars as a `metrics` event: numbers only (a tensor is read:
        logging happens where the framework syncs anyway), renamed by `renames` (HF's
        `eval_loss` is tuimon's `val_loss`), the step's own fields left out."""
        mon = self.monitor
        if mon is None:
            return
        renames = renames or {}
        values: dict[str, float] = {}
        for key, value in scalars.items():
            name = renames.get(key, key)
            if name in STEP_FIELD_NAMES or name in RESERVED_METRIC_KEYS:
                continue
            number = _number(value)
            if number is not None:
                values[name] = number
        if values:
            mon.log(**values)

    @property
    def should_stop(self) -> bool:
        """A stop was applied (its checkpoint saved): end the framework's loop."""
        return self.monitor is not None and self.monitor.should_stop

    def fail(self, exc: BaseException) -> None:
        """End the run `failed`, with the exception's traceback; Ctrl-C or an exit (a
        framework's SIGTERM handler) end it `stopped`, as a script's Monitor does."""
        mon = self.monitor
        if mon is None:
            return
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "exited"
            mon.close(status=STOPPED, reason=reason)
            return
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        mon.close(status=FAILED, error=text)

    def finish(self) -> None:
        """End the run: `stopped` if a stop was applied, else `completed`."""
        if self.monitor is not None:
            self.monitor.close()


def _positive(value: Any) -> int | None:
    """A length the framework reports, or None where it has none (-1, inf, 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return int(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().float().item())
    return None
