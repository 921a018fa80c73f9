"""Every command a run takes, in one table: its name, arguments and their checks, whether
it takes a param group, whether it changes the run's status, and its words for people.

The protocol parses requests with it, `tuimon ctl` builds its arguments from it, the UI and
the doctor name commands through it, RunState reads status changes from it, and the
Monitor's command runner has one handler per run command (a test checks both sides).
Adding a command is a row here plus its handler (ARCHITECTURE.md, "Add a command").

Pure: no torch, no Textual, no pydantic; a sender's mistake is a CommandError with a
clear reason, never an exception from deep inside.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from tuimon.number_text import short_number
from tuimon.run.events import PAUSED, RUNNING, STOPPING, RunPhase

# -- names ---------------------------------------------------------------------------------

SET_LR: Final = "set-lr"
SCALE_LR: Final = "scale-lr"
PAUSE: Final = "pause"
RESUME: Final = "resume"
STOP: Final = "stop"
CHECKPOINT: Final = "checkpoint"
SET_GRAD_CLIP: Final = "set-grad-clip"
RECOVER: Final = "recover"
STATUS: Final = "status"
SUBSCRIBE: Final = "subscribe"
HISTORY: Final = "history"
PING: Final = "ping"

# -- limits --------------------------------------------------------------------------------

# The run's default upper LR limit (monitor/lr_control.py's DEFAULT_MAX_LR; not imported:
# this module is the UI's too, and the UI never imports torch).
MAX_LR = 100.0
MAX_SCALE = 1000.0
# No optimizer has this many param groups; a bigger index is refused before it is shown.
MAX_GROUP = 2**31
MAX_STEP = 2**63


class CommandError(ValueError):
    """A command that cannot be acted on; the text is what the sender is told."""


# -- argument checks -----------------------------------------------------------------------


def validate_lr(value: Any, maximum: float | None = MAX_LR) -> float:
    """A learning rate typed by a person: a finite number > 0, and not above `maximum`
    (the UI's LR dialog refuses a typo in place). A request's LR is parsed with no
    maximum: its range is the run's to check, against the run's own LR limits, as every
    LR a set-lr or scale-lr leads to is."""
    number = _number(value, "learning rate")
    if number <= 0:
        raise CommandError(f"learning rate must be > 0, got {show(value)}")
    if maximum is not None and number > maximum:
        raise CommandError(f"learning rate {number:g} is absurdly large (limit {maximum:g})")
    return number


def validate_factor(value: Any) -> float:
    """An LR scale factor: a finite number in [1/MAX_SCALE, MAX_SCALE]."""
    number = _number(value, "scale factor")
    if number <= 0:
        raise CommandError(f"scale factor must be > 0, got {show(value)}")
    if number > MAX_SCALE or number < 1 / MAX_SCALE:
        raise CommandError(f"scale factor {number:g} is outside [1/{MAX_SCALE:g}, {MAX_SCALE:g}]")
    return number


def _request_lr(value: Any) -> float:
    return validate_lr(value, maximum=None)


def _grad_clip(value: Any) -> float:
    number = _number(value, "gradient clip")
    if number < 0:
        raise CommandError(f"gradient clip must be >= 0, got {number:g}")
    return number


def _lr_factor(value: Any) -> float:
    factor = _number(value, "lr_factor")
    if not 0 < factor <= 1:
        raise CommandError(f"lr_factor must be in (0, 1], got {factor:g}")
    return factor


def _group(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_GROUP:
        raise CommandError(f"group must be a param group index >= 0, got {show(value)}")
    return value


def _step(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_STEP:
        raise CommandError(f"before_step must be a step number, got {show(value)}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise CommandError(f"{what} must be a number, got {show(value)}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise CommandError(f"{what} must be a number, got {show(value)}") from None
    if not isinstance(value, int | float):
        raise CommandError(f"{what} must be a number, got {show(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        raise CommandError(f"{what} must be finite, got {show(value)}") from None
    if not math.isfinite(number):
        raise CommandError(f"{what} must be finite, got {show(value)}")
    return number


def show(value: Any) -> str:
    """A value for an error message, at most 40 characters, whatever it is."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # nested too deep to print
        return f"a nested {type(value).__name__}"
    return text if len(text) <= 40 else text[:37] + "..."


# -- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Argument:
    """One field of a request beside `cmd`: checked by `check`, which returns the value
    the run uses or raises CommandError."""

    name: str
    check: Callable[[Any], Any]
    required: bool = True
    default: Any = None  # filled in when not given (None: left out)
    needs: str = ""  # the error's words when it is missing: 'set-lr needs "value"'


@dataclass(frozen=True)
class Command:
    name: str
    summary: str  # for help screens and `tuimon ctl --help`
    # Run commands are queued and applied by the training thread at a step boundary;
    # the others the control server answers itself, at once.
    at_step_boundary: bool = True
    value: Argument | None = None  # the one value `tuimon ctl RUN CMD VALUE` takes
    options: tuple[Argument, ...] = ()  # further fields: group, before_step
    # The run's status after it is applied (the control event's `new`), when it changes it.
    sets_status: RunPhase | None = None
    # How it reads in a toast, an alert's fix or the console: "scale LR ×{factor}".
    words: str = ""

    @property
    def arguments(self) -> tuple[Argument, ...]:
        return ((self.value,) if self.value else ()) + self.options

    @property
    def takes_group(self) -> bool:
        return any(option.name == "group" for option in self.options)


_GROUP = Argument("group", _group, required=False)

COMMANDS: Final[dict[str, Command]] = {
    command.name: command
    for command in (
        Command(
            SET_LR,
            "set the learning rate (of one param group with group)",
            value=Argument("value", _request_lr, needs=f'{SET_LR} needs "value"'),
            options=(_GROUP,),
            words="set LR to {value}",
        ),
        Command(
            SCALE_LR,
            "multiply the learning rate by a factor (keeps a schedule's shape)",
            value=Argument("factor", validate_factor, needs=f'{SCALE_LR} needs "factor"'),
            options=(_GROUP,),
            words="scale LR ×{factor}",
        ),
        Command(PAUSE, "pause at the next step boundary", sets_status=PAUSED, words="pause"),
        Command(RESUME, "resume a paused run", sets_status=RUNNING, words="resume"),
        Command(
            STOP,
            "save a checkpoint and stop at the next step boundary",
            sets_status=STOPPING,
            words="stop",
        ),
        Command(CHECKPOINT, "save a checkpoint now", words="save a checkpoint"),
        Command(
            SET_GRAD_CLIP,
            "clip gradients at this global norm (0: stop clipping)",
            value=Argument(
                "value", _grad_clip, needs=f'{SET_GRAD_CLIP} needs "value" (0 stops clipping)'
            ),
            words="clip gradients at {value}",
        ),
        Command(
            RECOVER,
            "restore the last good snapshot and scale the LR by lr_factor (default 0.1)",
            value=Argument("lr_factor", _lr_factor, required=False, default=0.1),
            options=(Argument("before_step", _step, required=False),),
            words="restore the last good weights, LR ×{lr_factor}",
        ),
        Command(STATUS, "the run's name, status, step and LRs", at_step_boundary=False),
        Command(SUBSCRIBE, "receive every event from now on", at_step_boundary=False),
        Command(HISTORY, "the run so far, as one snapshot", at_step_boundary=False),
        Command(PING, "is the run there?", at_step_boundary=False),
    )
}
RUN_COMMANDS: Final = tuple(name for name, c in COMMANDS.items() if c.at_step_boundary)
SERVER_COMMANDS: Final = tuple(name for name, c in COMMANDS.items() if not c.at_step_boundary)
# Commands that move the run between running, paused and stopping.
STATUS_COMMANDS: Final = tuple(name for name, c in COMMANDS.items() if c.sets_status)
LR_COMMANDS: Final = (SET_LR, SCALE_LR)


def check_arguments(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """A known command's arguments, checked and with defaults filled in; a missing,
    unknown or bad one is a CommandError."""
    command = COMMANDS[name]
    left = dict(args)
    checked: dict[str, Any] = {}
    for argument in command.arguments:
        if argument.name in left:
            checked[argument.name] = argument.check(left.pop(argument.name))
        elif argument.required:
            raise CommandError(argument.needs or f'{name} needs "{argument.name}"')
        elif argument.default is not None:
            checked[argument.name] = argument.default
    if left:
        raise CommandError(f"{name} takes no argument {show(sorted(left)[0])}")
    return checked


def describe(action: Mapping[str, Any] | None) -> str:
    """A command in words: "scale LR ×0.1", "set LR to 0.003", "stop"… (an alert's fix,
    a toast). Works on a damaged log's values too: what is not a number is shown as is."""
    if not action:
        return ""
    name = action.get("cmd", "?")
    command = COMMANDS.get(name) if isinstance(name, str) else None
    if command is None or not command.words:
        extra = " ".join(f"{k}={v}" for k, v in action.items() if k != "cmd")
        return f"{name} {extra}".strip()
    values = {a.name: a.default for a in command.arguments}
    values.update({k: v for k, v in action.items() if k != "cmd"})
    return command.words.format_map({k: short_number(v) for k, v in values.items()})
