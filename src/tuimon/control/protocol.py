"""The control channel's messages: newline-delimited JSON objects, never pickle.

A request is `{"cmd": "set-lr", "value": 0.01, "id": 7, "source": "ui"}`; its reply is
`{"type": "reply", "id": 7, "ok": true, ...}` or `{"type": "reply", "ok": false, "error": …}`.
Everything here is pure: parsing a line either gives a valid request or a clear reason,
whatever the line holds (nesting 100,000 deep, a 5000-digit integer, 1e999, a list where a
number belongs, bytes that are not UTF-8): a sender's mistake is never an "internal error".
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any

from tuimon.config.suggest import did_you_mean
from tuimon.run.event_codec import encode_event

MAX_LINE_BYTES = 64 * 1024
# The run's default upper LR limit (monitor/lr_control.py's DEFAULT_MAX_LR; not imported:
# this module is the UI's too, and the UI never imports torch).
MAX_LR = 100.0
MAX_SCALE = 1000.0
# A request id is echoed in the reply and the log: a number or a short string.
MAX_ID_CHARS = 128
MAX_SOURCE_CHARS = 64
# No optimizer has this many param groups; a bigger index is refused before it is shown.
MAX_GROUP = 2**31

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


def validate_lr(value: Any, maximum: float | None = MAX_LR) -> float:
    """A learning rate typed by a person: a finite number > 0, and not above `maximum`
    (the UI's LR dialog refuses a typo in place). A request's LR is parsed with no
    maximum: its range is the run's to check, against the run's own LR limits, as every
    LR a set-lr or scale-lr leads to is."""
    number = _number(value, "learning rate")
    if number <= 0:
        raise ProtocolError(f"learning rate must be > 0, got {_show(value)}")
    if maximum is not None and number > maximum:
        raise ProtocolError(f"learning rate {number:g} is absurdly large (limit {maximum:g})")
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
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        raise ProtocolError(f"{what} must be finite, got {_show(value)}") from None
    if not math.isfinite(number):
        raise ProtocolError(f"{what} must be finite, got {_show(value)}")
    return number


def _show(value: Any) -> str:
    """A value for an error message, at most 40 characters, whatever it is."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # nested too deep to print
        return f"a nested {type(value).__name__}"
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
    message = _load_json(line)
    if not isinstance(message, dict):
        raise ProtocolError(f"message must be a JSON object, got {_json_type(message)}")
    cmd = message.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError('message needs a "cmd" string, e.g. {"cmd": "pause"}')
    if cmd not in COMMANDS:
        raise ProtocolError(
            f"unknown command {_show(cmd)}{did_you_mean(cmd[:40], COMMANDS)}; "
            f"known: {', '.join(COMMANDS)}"
        )
    source = message.get("source", "socket")
    if not _is_short_text(source, MAX_SOURCE_CHARS):
        raise ProtocolError(
            f'"source" must be a string of at most {MAX_SOURCE_CHARS} printable characters'
        )
    args = {k: v for k, v in message.items() if k not in ("cmd", "id", "source")}
    request_id = _request_id(message.get("id"))
    return Request(cmd=cmd, args=_check_args(cmd, args), id=request_id, source=source)


def request_id_of(line: bytes | str) -> Any:
    """The id of a refused request, when one can be read from it, for the error reply."""
    try:
        return _request_id(json.loads(line).get("id"))
    except Exception:  # any line at all: no id then
        return None


def _load_json(line: str) -> Any:
    """The line's JSON value, or a ProtocolError naming what is wrong with it."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"message is not JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise ProtocolError("message is nested too deeply") from None
    except ValueError:  # json's limit on the digits of an integer (CVE-2020-10735)
        raise ProtocolError(
            f"message holds an integer of more than {sys.get_int_max_str_digits()} digits"
        ) from None


def _json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _request_id(value: Any) -> Any:
    """An id to echo: null, a number or a short string (it goes back in the reply)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) < 2**63:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if _is_short_text(value, MAX_ID_CHARS):
        return value
    raise ProtocolError(
        f'"id" must be a number or a string of at most {MAX_ID_CHARS} printable characters'
    )


def _is_short_text(value: Any, limit: int) -> bool:
    """A string that can be logged and printed as it is (no control characters, no lone
    surrogates from a JSON escape)."""
    return isinstance(value, str) and len(value) <= limit and value.isprintable()


def _check_args(cmd: str, args: dict[str, Any]) -> dict[str, Any]:
    if cmd == "set-lr":
        if "value" not in args:
            raise ProtocolError('set-lr needs "value"')
        checked: dict[str, Any] = {"value": validate_lr(args.pop("value"), maximum=None)}
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
            if isinstance(before, bool) or not isinstance(before, int) or not 0 <= before < 2**63:
                raise ProtocolError(f"before_step must be a step number, got {_show(before)}")
            checked["before_step"] = before
    else:
        checked = {}
    if args:
        raise ProtocolError(f"{cmd} takes no argument {_show(sorted(args)[0])}")
    return checked


def _group(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_GROUP:
        raise ProtocolError(f"group must be a param group index >= 0, got {_show(value)}")
    return value


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line, as the event log writes events (event_codec): NaN and
    Infinity are JSON's extension tokens. Raises TypeError/ValueError for a value JSON
    cannot hold."""
    return encode_event(message) + b"\n"


def reply(request_id: Any, ok: bool, **fields: Any) -> dict[str, Any]:
    return {"type": "reply", "id": request_id, "ok": ok, **fields}
