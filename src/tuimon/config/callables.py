"""Resolve torch names and `package.module:callable` specs, and check keyword arguments.

Optimizers, schedulers and losses are named as torch names them, with their keyword
arguments given beside `name`. Checking those against the real signature lets a typo fail
at load time with the line of the key, instead of as a TypeError deep in the worker.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from tuimon.config.shown_values import clipped, shown_value
from tuimon.did_you_mean import did_you_mean


class UnknownNameError(LookupError):
    """A name that does not resolve; the message says why and what was meant."""


def optimizer_names() -> dict[str, type]:
    import torch

    return {
        name: obj
        for name, obj in vars(torch.optim).items()
        if inspect.isclass(obj)
        and issubclass(obj, torch.optim.Optimizer)
        and obj is not torch.optim.Optimizer
    }


def scheduler_names() -> dict[str, type]:
    import torch

    lr_scheduler = torch.optim.lr_scheduler
    bases = {"LRScheduler", "_LRScheduler", "SequentialLR", "ChainedScheduler"}
    return {
        name: obj
        for name, obj in vars(lr_scheduler).items()
        if inspect.isclass(obj)
        and name not in bases
        and not name.startswith("_")
        and (issubclass(obj, lr_scheduler.LRScheduler) or name == "ReduceLROnPlateau")
    }


def loss_names() -> dict[str, type]:
    import torch

    return {
        name: obj
        for name, obj in vars(torch.nn).items()
        if inspect.isclass(obj) and name.endswith("Loss") and issubclass(obj, torch.nn.Module)
    }


def resolve_name(kind: str, name: str, table: dict[str, Any]) -> Any:
    if name in table:
        return table[name]
    raise UnknownNameError(f"unknown {kind} {shown_value(name)}{did_you_mean(name, table)}")


def resolve_callable(spec: str) -> Callable[..., Any]:
    """Import `package.module:attribute` and return the attribute."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UnknownNameError(f"{shown_value(spec)} is not of the form package.module:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        reason = clipped(str(exc))
        raise UnknownNameError(f"cannot import {shown_value(module_name)}: {reason}") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_")]
            hint = did_you_mean(part, names)
            raise UnknownNameError(f"{module_name} has no attribute {shown_value(part)}{hint}")
        target = getattr(target, part)
    if not callable(target):
        raise UnknownNameError(f"{spec} is not callable")
    return target


def check_kwargs(
    func: Callable[..., Any], kwargs: dict[str, Any], *, skip: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """Problems with `kwargs` as arguments of `func`: (key, message) pairs.

    `skip` names parameters that tuimon fills in itself (params, optimizer, num_classes…);
    giving one of them in the config is an error too.
    """
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    skipped = set(skip)
    params = {
        name: p
        for name, p in signature.parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and name not in {"self", "cls"}
    }
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    allowed = [n for n in params if n not in skipped]
    problems: list[tuple[str, str]] = []
    for key, value in kwargs.items():
        if key in skipped:
            problems.append((key, "is set by tuimon from the data and model; remove it"))
            continue
        if key not in params:
            if not takes_any:
                valid = ", ".join(allowed) if allowed else "none"
                problems.append(
                    (key, f"unknown key{did_you_mean(key, allowed)}; valid keys: {valid}")
                )
            continue
        message = _type_problem(params[key], value)
        if message:
            problems.append((key, message))
    return problems


def _type_problem(param: inspect.Parameter, value: Any) -> str | None:
    default = param.default
    if value is None:
        return None
    if default is inspect.Parameter.empty or default is None:
        # No default to compare with (`T_max: int`): the annotation says what it takes.
        return _annotation_problem(_annotation_name(param.annotation), value)
    annotation = _annotation_name(param.annotation)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return None
        return f"expected true or false, got {shown_value(value)}"
    if isinstance(default, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expected a number, got {shown_value(value)}"
        if annotation == "int" and not isinstance(value, int):
            return f"expected an integer, got {shown_value(value)}"
        return None
    if isinstance(default, tuple | list):
        if not isinstance(value, list | tuple) or len(value) != len(default):
            return (
                f"expected a list of {len(default)} values like {list(default)}, "
                f"got {shown_value(value)}"
            )
        return None
    if isinstance(default, str) and not isinstance(value, str):
        return f"expected a string, got {shown_value(value)}"
    return None


def _annotation_name(annotation: Any) -> str:
    """'int' for both `int` and the string annotation 'int' (torch uses either)."""
    if isinstance(annotation, str):
        return annotation.strip()
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def _annotation_problem(annotation: str, value: Any) -> str | None:
    """A value that cannot be what a plain `int`/`float`/`bool`/`str` annotation asks."""
    if annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer, got {shown_value(value)}"
    elif annotation == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expected a number, got {shown_value(value)}"
    elif annotation == "bool":
        if not isinstance(value, bool):
            return f"expected true or false, got {shown_value(value)}"
    elif annotation == "str" and not isinstance(value, str):
        return f"expected a string, got {shown_value(value)}"
    return None
