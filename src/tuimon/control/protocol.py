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

from tuimon.control.commands import COMMANDS, check_arguments, show
from tuimon.control.commands import CommandError as ProtocolError
from tuimon.did_you_mean import did_you_mean
from tuimon.run.event_codec import encode_event

MAX_LINE_BYTES = 64 * 1024
# A request id is echoed in the reply and the log: a number or a short string.
MAX_ID_CHARS = 128
MAX_SOURCE_CHARS = 64


@dataclass
class Request:
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)
    id: Any = None
    source: str = "socket"


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
            f"unknown command {show(cmd)}{did_you_mean(cmd[:40], COMMANDS)}; "
            f"known: {', '.join(COMMANDS)}"
        )
    source = message.get("source", "socket")
    if not _is_short_text(source, MAX_SOURCE_CHARS):
        raise ProtocolError(
            f'"source" must be a string of at most {MAX_SOURCE_CHARS} printable characters'
        )
    args = {k: v for k, v in message.items() if k not in ("cmd", "id", "source")}
    request_id = _request_id(message.get("id"))
    return Request(cmd=cmd, args=check_arguments(cmd, args), id=request_id, source=source)


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


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line, as the event log writes events (event_codec): NaN and
    Infinity are JSON's extension tokens. Raises TypeError/ValueError for a value JSON
    cannot hold."""
    return encode_event(message) + b"\n"


def reply(request_id: Any, ok: bool, **fields: Any) -> dict[str, Any]:
    return {"type": "reply", "id": request_id, "ok": ok, **fields}
