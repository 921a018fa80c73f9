"""The config checks that build what a config names, so need torch and the model code.

Torch checks some argument values only when the object is made (a negative momentum,
betas out of range) and some only when the schedule is first computed (`T_max: 0` divides
by zero); a model or a synthetic set can be too big for this machine. Doing both while the
config is loaded turns them into config errors with a line number, reported together with
every other problem of the file. The loader (config/loader.py) calls these through
`BuildChecks`: training depends on config, never the other way round.

Torch and the training modules are imported only when a check runs, after the file has
been read and validated: a file refused while it is read (an alias bomb) costs no torch
import, and is refused within a small address space (tests/test_config_hostile.py).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuimon.config.loader import BuildChecks, load_config, located
from tuimon.config.schema import Config, LossConfig, OptimizerConfig, SchedulerConfig
from tuimon.config.shown_values import clipped, shown_value
from tuimon.config.source import ConfigSource

if TYPE_CHECKING:
    import torch

# The run's length the trial scheduler is built for: enough for every schedule to start.
TRIAL_TOTAL_STEPS = 100
TRIAL_STEPS_PER_EPOCH = 10


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The config a run starts from: read, overridden by `--set`, validated, and its
    optimizer, scheduler, loss and size tried; or a ConfigError listing every problem."""
    return load_config(path, overrides, RUN_CHECKS)


def object_problems(config: Config, source: ConfigSource) -> list[str]:
    """Build optimizer, scheduler and loss once on a dummy parameter, and take one
    scheduler step: each refusal placed at the argument it names."""
    import torch

    from tuimon.training import optimization

    problems: list[str] = []
    param = torch.nn.Parameter(torch.zeros(1))
    try:
        optimizer = optimization.build_optimizer(config.optimizer, [param])
    except (ValueError, TypeError, RuntimeError) as exc:
        return [_rejected(source, "optimizer", config.optimizer, exc)]
    if config.scheduler is not None:
        try:
            scheduler = optimization.build_scheduler(
                config.scheduler,
                optimizer,
                total_steps=TRIAL_TOTAL_STEPS,
                steps_per_epoch=TRIAL_STEPS_PER_EPOCH,
            )
            _trial_step(optimizer, scheduler)
        except (ValueError, TypeError, RuntimeError, KeyError, ArithmeticError) as exc:
            problems.append(_rejected(source, "scheduler", config.scheduler, exc))
    try:
        optimization.build_loss(config.loss)
    except (ValueError, TypeError, RuntimeError) as exc:
        problems.append(_rejected(source, "loss", config.loss, exc))
    return problems


def memory_problems(config: Config, source: ConfigSource) -> list[str]:
    """Data and model that cannot fit in this machine's memory, refused before a byte of
    them is allocated (memory_estimate.py says how they are sized)."""
    from tuimon.training import memory_estimate
    from tuimon.training.datasets import data_shape

    available = memory_estimate.available_memory()
    oversize = memory_estimate.data_oversize(config, available)
    if oversize is None:
        oversize = memory_estimate.model_oversize(config, data_shape(config.data), available)
    if oversize is None:
        return []
    return [located(source, oversize.key, oversize.message)]


RUN_CHECKS = BuildChecks(objects=object_problems, memory=memory_problems)


def _trial_step(optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """One optimizer and scheduler step on the dummy parameter; the LR must stay finite."""
    from tuimon.training import optimization

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer.step()
        if optimization.is_plateau(scheduler):
            scheduler.step(1.0)
        else:
            scheduler.step()
    lrs = [group["lr"] for group in optimizer.param_groups]
    if not all(isinstance(lr, int | float) and math.isfinite(lr) for lr in lrs):
        raise ValueError(f"its first step makes the LR {shown_value(lrs)}")


def _rejected(
    source: ConfigSource,
    section: str,
    config: OptimizerConfig | SchedulerConfig | LossConfig,
    exc: Exception,
) -> str:
    """Torch's refusal, placed at the argument it names (else at the section)."""
    where = (section, *_named_key(exc, config.kwargs))
    reason = str(exc) or type(exc).__name__
    return located(source, where, f"{config.name} rejected it: {clipped(reason)}")


def _named_key(exc: Exception, kwargs: dict[str, Any]) -> tuple[str, ...]:
    """The one given argument a torch error names ("Invalid momentum value: -1"), or
    the one given as 0 when torch divided by zero, if any."""
    message = str(exc)
    named = [key for key in kwargs if re.search(rf"\b{re.escape(key)}\b", message)]
    if not named and isinstance(exc, ZeroDivisionError):
        named = [key for key, value in kwargs.items() if _is_zero(value)]
    return (named[0],) if len(named) == 1 else ()


def _is_zero(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0
