"""Load, override and validate a config; every problem names its key and line."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tuimon.config import callables
from tuimon.config import schema as _schema_module
from tuimon.config.schema import (
    MAX_RUN_NAME,
    Config,
    LossConfig,
    MLPOptions,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    StrictModel,
    TorchvisionOptions,
    VGGSmallOptions,
)
from tuimon.config.shown_values import clipped, dotted_key, problem_line, shown_value
from tuimon.config.source import ConfigSource, KeyPath, load_source
from tuimon.config.suggest import did_you_mean
from tuimon.errors import ConfigError

# No setting takes an integer beyond 64 bits: torch, the log and JSON readers cannot.
MAX_INTEGER = 2**63 - 1
# Scheduler arguments that are learning rates, held to the same limits as optimizer.lr.
SCHEDULER_LR_ARGS = ("max_lr", "base_lr", "eta_min", "min_lr")
# Model arguments that tuimon derives from the data; a custom model may accept them.
MODEL_CONTEXT_ARGS = ("num_classes", "in_channels", "image_size")
_SCHEMA_CLASS_NAMES = {
    name
    for name, obj in vars(_schema_module).items()
    if isinstance(obj, type) and issubclass(obj, BaseModel)
}
BUILTIN_MODEL_OPTIONS: dict[str, type[StrictModel]] = {
    "mlp": MLPOptions,
    "vgg_small": VGGSmallOptions,
}


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read `path`, apply `--set` overrides and validate everything, or raise ConfigError."""
    source = load_source(path)
    for override in overrides:
        source.apply_override(override)
    return validate(source)


def validate(source: ConfigSource) -> Config:
    """The validated config, or a ConfigError listing every problem in the file at once."""
    problems = _number_problems(source)
    if problems:
        # Non-finite or huge numbers first, alone: they would only confuse the checks below.
        raise ConfigError(problems)
    try:
        config = Config.model_validate(source.data)
    except ValidationError as exc:
        problems = pydantic_problems(exc, source, (), Config)
        # The named sections that did parse can still be checked against torch, so that one
        # run reports a bad batch_size and a misspelt optimizer argument together.
        sections = _parsed_sections(source.data)
        problems += _check_named_sections(source, **sections, trial=False)
        raise ConfigError(sorted(problems, key=_position)) from None
    problems = _check_named_sections(
        source, config.model, config.optimizer, config.scheduler, config.loss
    )
    problems += _check_rule_overrides(config, source)
    problems += _lr_problems(config, source)
    problems += _checkpoint_problems(config, source)
    if not problems:
        problems += _size_problems(config, source)
    if problems:
        raise ConfigError(problems)
    if config.name is None:
        config.name = _default_name(source.origin)
    return config


def _number_problems(source: ConfigSource) -> list[str]:
    """NaN, ±inf and integers beyond 64 bits, wherever they are: no setting means them,
    and each would end a run later (an LR of inf, 10**5000 samples) far from its line."""
    problems: list[str] = []
    stack: list[tuple[KeyPath, Any]] = [((), source.data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack.extend(((*path, key), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend(((*path, index), item) for index, item in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(_located(source, path, f"must be a finite number, got {value}"))
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
            problems.append(
                _located(source, path, f"{shown_value(value)} is beyond any setting's range")
            )
    return sorted(problems, key=_position)


def _checkpoint_problems(config: Config, source: ConfigSource) -> list[str]:
    """train.resume and train.init_from name a file that can be a checkpoint: checked
    cheaply here (never unpickled), so a wrong path is reported at its line."""
    from tuimon.run.checkpoint import CheckpointError, probe_checkpoint_file

    problems = []
    for key in ("resume", "init_from"):
        given = getattr(config.train, key)
        if not given:
            continue
        path = Path(given).expanduser()
        if not path.is_file():
            why = "it is a directory" if path.is_dir() else "no such file"
            problems.append(_located(source, ("train", key), f"no checkpoint at {path}: {why}"))
            continue
        try:
            probe_checkpoint_file(path)
        except CheckpointError as exc:
            problems.append(_located(source, ("train", key), str(exc)))
    return problems


def _lr_problems(config: Config, source: ConfigSource) -> list[str]:
    """optimizer.lr (and a scheduler's LR arguments) within the run's LR limits: the same
    [monitor.lr_min, monitor.lr_max] that every set-lr and scale-lr is held to."""
    low, high = config.monitor.lr_min, config.monitor.lr_max
    limits = f"[{low:g}, {high:g}] (monitor.lr_min, monitor.lr_max)"
    problems = []
    lr = config.optimizer.lr
    if not low <= lr <= high:
        problems.append(
            _located(source, ("optimizer", "lr"), f"must be within {limits}, got {lr:g}")
        )
    if config.scheduler is not None:
        for key in SCHEDULER_LR_ARGS:
            given = config.scheduler.kwargs.get(key)
            values = given if isinstance(given, list) else [given]
            if any(_is_number(v) and v > high for v in values):
                problems.append(
                    _located(
                        source,
                        ("scheduler", key),
                        f"an LR above monitor.lr_max ({high:g}), got {shown_value(given)}",
                    )
                )
    return problems


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _size_problems(config: Config, source: ConfigSource) -> list[str]:
    """Data and model that cannot fit in this machine's memory, refused before a byte of
    them is allocated (training/memory_estimate.py says how they are sized)."""
    from tuimon.training import memory_estimate
    from tuimon.training.datasets import data_shape

    available = memory_estimate.available_memory()
    oversize = memory_estimate.data_oversize(config, available)
    if oversize is None:
        oversize = memory_estimate.model_oversize(config, data_shape(config.data), available)
    if oversize is None:
        return []
    return [_located(source, oversize.key, oversize.message)]


def _check_rule_overrides(config: Config, source: ConfigSource) -> list[str]:
    """monitor.rules.<id>.<threshold>: the threshold must be one the rule has."""
    from tuimon.doctor.registry import override_problems

    return [
        _located(source, ("monitor", "rules", rule_id, key), message)
        for rule_id, override in config.monitor.rules.items()
        for key, message in override_problems(rule_id, override.model_dump())
    ]


def _position(problem: str) -> tuple[int, int, int]:
    """Sort key: problems in file order, then those from --set."""
    match = re.match(r"[^:]*:(\d+):(\d+): ", problem)
    return (0, int(match[1]), int(match[2])) if match else (1, 0, 0)


def _parsed_sections(data: dict[str, Any]) -> dict[str, Any]:
    sections: dict[str, Any] = {}
    for key in ("model", "optimizer", "scheduler", "loss"):
        schema = Config.model_fields[key].annotation
        model_class = _model_of(schema)
        raw = data.get(key)
        try:
            sections[key] = model_class.model_validate(raw) if isinstance(raw, dict) else None
        except ValidationError:
            sections[key] = None
    return sections


def model_options(config: Config) -> BaseModel | None:
    """The validated options of a built-in or torchvision model; None for a custom callable."""
    name = config.model.name
    if ":" in name:
        return None
    schema = BUILTIN_MODEL_OPTIONS.get(name, TorchvisionOptions)
    return schema.model_validate(config.model.kwargs)


def _default_name(origin: str) -> str:
    stem = Path(origin).stem if origin else "run"
    # A leading dot would make a hidden run directory (and RUN_NAME_PATTERN refuses it).
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:MAX_RUN_NAME] or "run"


def _located(source: ConfigSource, path: KeyPath, message: str) -> str:
    dotted = dotted_key(path)
    where = source.where(path)
    return problem_line(f"{where}: {dotted}: {message}" if dotted else f"{where}: {message}")


def pydantic_problems(
    exc: ValidationError, source: ConfigSource, prefix: KeyPath, schema: type[BaseModel]
) -> list[str]:
    by_path: dict[KeyPath, list[str]] = {}
    for error in exc.errors(include_url=False):
        loc: KeyPath = tuple(p for p in error["loc"] if not _is_union_tag(p))
        kind = error["type"]
        if loc and loc[-1] == "[key]":
            # A dict key that is not one of the allowed literals (e.g. an unknown rule id).
            loc = loc[:-1]
            choices = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
            key = str(loc[-1])
            message = f"unknown key{did_you_mean(key, choices)}; valid keys: {', '.join(choices)}"
        elif kind == "extra_forbidden":
            key = str(loc[-1])
            choices = _fields_at(schema, loc[:-1])
            message = f"unknown key{did_you_mean(key, choices)}; valid keys: {', '.join(choices)}"
        elif kind == "missing":
            message = "missing required key"
        elif kind in ("model_type", "dict_type"):
            message = f"must be a section (a mapping of keys), got {shown_value(error['input'])}"
        else:
            message = _value_message(error)
        messages = by_path.setdefault(prefix + loc, [])
        if message not in messages:
            messages.append(message)
    # A value that fits no member of a union gets one line listing what each member wanted.
    return [_located(source, path, "; or ".join(messages)) for path, messages in by_path.items()]


_UNION_TAGS = {"bool", "int", "float", "str", "none", "list", "dict"}


def _is_union_tag(part: Any) -> bool:
    """Pydantic adds the union member it tried ('bool', 'NormalizeSpec', …) to error locs."""
    if not isinstance(part, str):
        return False
    if part == "[key]":  # not a union member: marks a bad dict key, handled above
        return False
    return part in _UNION_TAGS or "[" in part or part in _SCHEMA_CLASS_NAMES


def _value_message(error: Any) -> str:
    message = str(error["msg"])
    message = re.sub(r"^(Value error|Assertion failed), ", "", message)
    message = message.replace("Input should be", "must be")
    if "input" in error and not isinstance(error["input"], dict):
        shown = shown_value(error["input"])
        if shown not in message:  # a validator of ours may have quoted it already
            message += f" (got {shown})"
    return message


def _fields_at(schema: type[BaseModel], path: KeyPath) -> list[str]:
    """The valid keys of the section at `path` in `schema`."""
    model: Any = schema
    for part in path:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return []
        model = _model_of(fields[part].annotation)
    fields = getattr(model, "model_fields", None)
    return list(fields) if fields else []


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _check_named_sections(
    source: ConfigSource,
    model: ModelConfig | None,
    optimizer: OptimizerConfig | None,
    scheduler: SchedulerConfig | None,
    loss: LossConfig | None,
    trial: bool = True,
) -> list[str]:
    """Resolve model/optimizer/scheduler/loss names and check their arguments (a section
    given as None could not be parsed and is skipped)."""
    problems: list[str] = []
    if model is not None:
        problems += _check_model(model, source)
    if optimizer is not None:
        problems += _check_torch_section(
            source,
            "optimizer",
            optimizer.name,
            callables.optimizer_names,
            {**optimizer.kwargs, "lr": optimizer.lr},
            skip=("params",),
        )
    if scheduler is not None:
        problems += _check_torch_section(
            source,
            "scheduler",
            scheduler.name,
            callables.scheduler_names,
            scheduler.kwargs,
            skip=("optimizer",),
        )
    if loss is not None:
        problems += _check_torch_section(
            source, "loss", loss.name, callables.loss_names, loss.kwargs, skip=()
        )
    if trial and not problems and optimizer is not None and loss is not None:
        problems += _trial_build(source, optimizer, scheduler, loss)
    return problems


def _check_model(model: ModelConfig, source: ConfigSource) -> list[str]:
    name = model.name
    if ":" in name:
        try:
            builder = callables.resolve_callable(name)
        except callables.UnknownNameError as exc:
            return [_located(source, ("model", "name"), str(exc))]
        return [
            _located(source, ("model", key), message)
            for key, message in callables.check_kwargs(
                builder, model.kwargs, skip=MODEL_CONTEXT_ARGS
            )
        ]
    if name not in BUILTIN_MODEL_OPTIONS:
        from tuimon.training.models import torchvision_model_names

        known = [*BUILTIN_MODEL_OPTIONS, *torchvision_model_names()]
        if name not in known:
            return [
                _located(
                    source,
                    ("model", "name"),
                    f"unknown model {name!r}{did_you_mean(name, known)}; use mlp, "
                    "vgg_small, a torchvision model name or package.module:callable",
                )
            ]
    schema = BUILTIN_MODEL_OPTIONS.get(name, TorchvisionOptions)
    try:
        schema.model_validate(model.kwargs)
    except ValidationError as exc:
        return pydantic_problems(exc, source, ("model",), schema)
    return []


def _check_torch_section(
    source: ConfigSource,
    section: str,
    name: str,
    table: Any,
    kwargs: dict[str, Any],
    skip: tuple[str, ...],
) -> list[str]:
    try:
        target = callables.resolve_name(section, name, table())
    except callables.UnknownNameError as exc:
        return [_located(source, (section, "name"), str(exc))]
    return [
        _located(source, (section, key), message)
        for key, message in callables.check_kwargs(target, kwargs, skip=skip)
    ]


def _trial_build(
    source: ConfigSource,
    optimizer_config: OptimizerConfig,
    scheduler_config: SchedulerConfig | None,
    loss_config: LossConfig,
) -> list[str]:
    """Build optimizer, scheduler and loss once on a dummy parameter, and take one
    scheduler step.

    Torch checks argument values (a negative momentum, betas out of range) only when the
    object is made, and some only when the schedule is first computed (`T_max: 0` divides
    by zero); doing it here turns those into config errors with a line number.
    """
    import torch

    from tuimon.training import optimization

    problems: list[str] = []
    param = torch.nn.Parameter(torch.zeros(1))
    try:
        optimizer = optimization.build_optimizer(optimizer_config, [param])
    except (ValueError, TypeError, RuntimeError) as exc:
        return [_rejected(source, "optimizer", optimizer_config, exc)]
    if scheduler_config is not None:
        try:
            scheduler = optimization.build_scheduler(
                scheduler_config, optimizer, total_steps=100, steps_per_epoch=10
            )
            _trial_step(optimizer, scheduler)
        except (ValueError, TypeError, RuntimeError, KeyError, ArithmeticError) as exc:
            problems.append(_rejected(source, "scheduler", scheduler_config, exc))
    try:
        optimization.build_loss(loss_config)
    except (ValueError, TypeError, RuntimeError) as exc:
        problems.append(_rejected(source, "loss", loss_config, exc))
    return problems


def _trial_step(optimizer: Any, scheduler: Any) -> None:
    """One optimizer and scheduler step on the dummy parameter; the LR must stay finite."""
    import warnings

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
    return _located(source, where, f"{config.name} rejected it: {clipped(reason)}")


def _named_key(exc: Exception, kwargs: dict[str, Any]) -> tuple[str, ...]:
    """The one given argument a torch error names ("Invalid momentum value: -1"), or
    the one given as 0 when torch divided by zero, if any."""
    message = str(exc)
    named = [key for key in kwargs if re.search(rf"\b{re.escape(key)}\b", message)]
    if not named and isinstance(exc, ZeroDivisionError):
        named = [key for key, value in kwargs.items() if _is_number(value) and value == 0]
    return (named[0],) if len(named) == 1 else ()
