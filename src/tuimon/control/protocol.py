"""The control channel's messages: newline-delimited JSON objects, never pickle.

A request is `{"cmd": "set-lr", "value": 0.01, "id": 7, "source": "ui"}`; its reply is
`{"type": "reply", "id": 7, "ok": true, ...}` or `{"type": "reply", "ok": false, "error": …}`.
Everything here is pure: parsing a line either gives a valid request or a clear reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from tuimon.config.suggest import did_you_mean

MAX_LINE_BYTES = 64 * 1024
# An LR beyond this is a typo (3e4 for 3e-4), not a choice.
MAX_LR = 100.0
MAX_SCALE = 1000.0

# Commands that change the run, applied by the training thread at a step boundary.
RUN_COMMANDS = (
    "set-lr",
    "scale-lr",
    "pause",
    "resume",
    "stop",
    "checkpoint",
    "set-grad-clip",  # clip gradients at this global norm (0: stop clipping)
    "recover",  # restore the last good snapshot and scale the LR by lr_factor
)
# Commands the server answers itself, at once.
SERVER_COMMANDS = ("status", "subscribe", "history", "ping")
COMMANDS = RUN_COMMANDS + SERVER_COMMANDS


class ProtocolError(ValueError):
    """A message that cannot be acted on; the text is sent back as the error reply."""


@dataclass
class Request:
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)
    id: Any = None
    source: str = "socket"


def validate_lr(value: Any) -> float:
    """A learning rate typed by a person: a finite number in (0, MAX_LR]."""
    number = _number(value, "learning rate")
    if number <= 0:
        raise ProtocolError(f"learning rate must be > 0, got {_show(value)}")
    if number > MAX_LR:
        raise ProtocolError(f"learning rate {number:g} is absurdly large (limit {MAX_LR:g})")
    return number


def validate_factor(value: Any) -> float:
    """An LR scale factor: a finite number in (0, MAX_SCALE], not 1."""
    number = _number(value, "scale factor")
    if number <= 0:
        raise ProtocolError(f"scale factor must be > 0, got {_show(value)}")
    if number > MAX_SCALE or number < 1 / MAX_SCALE:
        raise ProtocolError(f"scale factor {number:g} is outside [1/{MAX_SCALE:g}, {MAX_SCALE:g}]")
    return number


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ProtocolError(f"{what} must be a number, got {_show(value)}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ProtocolError(f"{what} must be a number, got {_show(value)}") from None
    if not isinstance(value, int | float):
        raise ProtocolError(f"{what} must be a number, got {_show(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise ProtocolError(f"{what} must be finite, got {_show(value)}")
    return number


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_request(line: bytes | str) -> Request:
    """Parse one line into a Request, or raise ProtocolError saying what is wrong."""
    if isinstance(line, bytes):
        if len(line) > MAX_LINE_BYTES:
            raise ProtocolError(f"message longer than {MAX_LINE_BYTES} bytes")
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("message is not UTF-8 text") from None
    try:
        message = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"message is not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"message must be a JSON object, got {type(message).__name__}")
    cmd = message.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError('message needs a "cmd" string, e.g. {"cmd": "pause"}')
    if cmd not in COMMANDS:
        raise ProtocolError(
            f"unknown command {cmd!r}{did_you_mean(cmd, COMMANDS)}; known: {', '.join(COMMANDS)}"
        )
    source = message.get("source", "socket")
    if not isinstance(source, str):
        raise ProtocolError('"source" must be a string')
    args = {k: v for k, v in message.items() if k not in ("cmd", "id", "source")}
    return Request(cmd=cmd, args=_check_args(cmd, args), id=message.get("id"), source=source)


def _check_args(cmd: str, args: dict[str, Any]) -> dict[str, Any]:
    if cmd == "set-lr":
        if "value" not in args:
            raise ProtocolError('set-lr needs "value"')
        checked: dict[str, Any] = {"value": validate_lr(args.pop("value"))}
        if "group" in args:
            checked["group"] = _group(args.pop("group"))
    elif cmd == "scale-lr":
        if "factor" not in args:
            raise ProtocolError('scale-lr needs "factor"')
        checked = {"factor": validate_factor(args.pop("factor"))}
        if "group" in args:
            checked["group"] = _group(args.pop("group"))
    elif cmd == "set-grad-clip":
        if "value" not in args:
            raise ProtocolError('set-grad-clip needs "value" (0 stops clipping)')
        value = _number(args.pop("value"), "gradient clip")
        if value < 0:
            raise ProtocolError(f"gradient clip must be >= 0, got {value:g}")
        checked = {"value": value}
    elif cmd == "recover":
        factor = _number(args.pop("lr_factor", 0.1), "lr_factor")
        if not 0 < factor <= 1:
            raise ProtocolError(f"lr_factor must be in (0, 1], got {factor:g}")
        checked = {"lr_factor": factor}
        if "before_step" in args:
            before = args.pop("before_step")
            if isinstance(before, bool) or not isinstance(before, int) or before < 0:
                raise ProtocolError(f"before_step must be a step number, got {_show(before)}")
            checked["before_step"] = before
    else:
        checked = {}
    if args:
        raise ProtocolError(f"{cmd} takes no argument {sorted(args)[0]!r}")
    return checked


def _group(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"group must be a param group index >= 0, got {_show(value)}")
    return value


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line. NaN and Infinity are written as JSON's extension tokens."""
    return (json.dumps(message, separators=(",", ":"), default=str) + "\n").encode("utf-8")


def reply(request_id: Any, ok: bool, **fields: Any) -> dict[str, Any]:
    return {"type": "reply", "id": request_id, "ok": ok, **fields}
