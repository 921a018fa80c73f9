"""Load, override and validate a config; every problem names its key and line."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from pydantic import BaseModel, ValidationError

from tuimon.config import callables, model_options
from tuimon.config import schema as _schema_module
from tuimon.config.model_options import MODEL_CONTEXT_ARGS, is_custom, known_model_names
from tuimon.config.schema import (
    MAX_RUN_NAME,
    Config,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
)
from tuimon.config.shown_values import dotted_key, problem_line, shown_value
from tuimon.config.source import ConfigSource, KeyPath, load_source
from tuimon.did_you_mean import did_you_mean
from tuimon.errors import ConfigError

# No setting takes an integer beyond 64 bits: torch, the log and JSON readers cannot.
MAX_INTEGER = 2**63 - 1
# Scheduler arguments that are learning rates, held to the same limits as optimizer.lr.
SCHEDULER_LR_ARGS = ("max_lr", "base_lr", "eta_min", "min_lr")
_SCHEMA_CLASS_NAMES = {
    name
    for module in (_schema_module, model_options)
    for name, obj in vars(module).items()
    if isinstance(obj, type) and issubclass(obj, BaseModel)
}

# A check of a valid config: its problems, each placed at its key by `located`.
ConfigCheck = Callable[[Config, ConfigSource], list[str]]


@dataclass(frozen=True)
class BuildChecks:
    """Checks that build what a valid config names, so need torch and the model code.

    The training side has them (training/build_checks.py) and passes them in: config never
    imports training, and a run still hears of every problem at once, each at its line.
    """

    # Once every name resolves: torch checks some argument values only when it builds.
    objects: ConfigCheck
    # Last, when nothing else is wrong: whether the data and the model fit in memory.
    memory: ConfigCheck


def load_config(
    path: str | Path, overrides: Sequence[str] = (), builds: BuildChecks | None = None
) -> Config:
    """Read `path`, apply `--set` overrides and validate (see `validate`), or raise
    ConfigError."""
    source = load_source(path)
    for override in overrides:
        source.apply_override(override)
    return validate(source, builds)


def validate(source: ConfigSource, builds: BuildChecks | None = None) -> Config:
    """The validated config, or a ConfigError listing every problem in the file at once.

    Without `builds`, what only building the optimizer, scheduler, loss and model can
    find is left to the run that builds them."""
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
        problems += _check_named_sections(source, **sections)
        raise ConfigError(sorted(problems, key=_position)) from None
    problems = _check_named_sections(
        source, config.model, config.optimizer, config.scheduler, config.loss
    )
    if builds is not None and not problems:
        problems += builds.objects(config, source)
    problems += _check_rule_overrides(config, source)
    problems += _lr_problems(config, source)
    problems += _checkpoint_problems(config, source)
    if builds is not None and not problems:
        problems += builds.memory(config, source)
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
            problems.append(located(source, path, f"must be a finite number, got {value}"))
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
            problems.append(
                located(source, path, f"{shown_value(value)} is beyond any setting's range")
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
            problems.append(located(source, ("train", key), f"no checkpoint at {path}: {why}"))
            continue
        try:
            probe_checkpoint_file(path)
        except CheckpointError as exc:
            problems.append(located(source, ("train", key), str(exc)))
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
            located(source, ("optimizer", "lr"), f"must be within {limits}, got {lr:g}")
        )
    if config.scheduler is not None:
        for key in SCHEDULER_LR_ARGS:
            given = config.scheduler.kwargs.get(key)
            values = given if isinstance(given, list) else [given]
            if any(_is_number(v) and v > high for v in values):
                problems.append(
                    located(
                        source,
                        ("scheduler", key),
                        f"an LR above monitor.lr_max ({high:g}), got {shown_value(given)}",
                    )
                )
    return problems


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_rule_overrides(config: Config, source: ConfigSource) -> list[str]:
    """monitor.rules.<id>.<threshold>: the threshold must be one the rule has."""
    from tuimon.doctor.registry import override_problems

    return [
        located(source, ("monitor", "rules", rule_id, key), message)
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


def _default_name(origin: str) -> str:
    stem = Path(origin).stem if origin else "run"
    # A leading dot would make a hidden run directory (and RUN_NAME_PATTERN refuses it).
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:MAX_RUN_NAME] or "run"


def located(source: ConfigSource, path: KeyPath, message: str) -> str:
    """A problem line: where in the file (or which `--set`), the dotted key, the message."""
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
    return [located(source, path, "; or ".join(messages)) for path, messages in by_path.items()]


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
    return problems


def _check_model(model: ModelConfig, source: ConfigSource) -> list[str]:
    name = model.name
    if is_custom(name):
        try:
            builder = callables.resolve_callable(name)
        except callables.UnknownNameError as exc:
            return [located(source, ("model", "name"), str(exc))]
        return [
            located(source, ("model", key), message)
            for key, message in callables.check_kwargs(
                builder, model.kwargs, skip=MODEL_CONTEXT_ARGS
            )
        ]
    if name not in model_options.BUILTIN_MODEL_OPTIONS:
        known = known_model_names()
        if name not in known:
            return [
                located(
                    source,
                    ("model", "name"),
                    f"unknown model {name!r}{did_you_mean(name, known)}; use mlp, "
                    "vgg_small, a torchvision model name or package.module:callable",
                )
            ]
    schema = model_options.options_schema(name)
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
        return [located(source, (section, "name"), str(exc))]
    return [
        located(source, (section, key), message)
        for key, message in callables.check_kwargs(target, kwargs, skip=skip)
    ]
