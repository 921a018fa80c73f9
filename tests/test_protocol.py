"""The control protocol's parsing and validation, without a socket."""

from __future__ import annotations

import json

import pytest

from tuimon.control.commands import validate_factor, validate_lr
from tuimon.control.protocol import (
    MAX_LINE_BYTES,
    ProtocolError,
    encode,
    parse_request,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.003", 0.003), (" 1e-4 ", 1e-4), (2, 2.0), ("100", 100.0)],
)
def test_valid_learning_rates(text, value):
    assert validate_lr(text) == value


def test_a_requests_lr_range_is_the_runs_to_check():
    # The run checks every resulting LR against its own limits (which a user may widen).
    assert parse_request(b'{"cmd": "set-lr", "value": 1e9}').args == {"value": 1e9}
    assert validate_lr("1e9", maximum=None) == 1e9


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("abc", "must be a number"),
        ("", "must be a number"),
        (True, "must be a number"),
        (None, "must be a number"),
        ("-1", "must be > 0"),
        (0, "must be > 0"),
        ("nan", "must be finite"),
        ("inf", "must be finite"),
        ("-inf", "must be finite"),
        ("1e9", "absurdly large"),
        ("1e999", "must be finite"),
        (10**400, "must be finite"),  # beyond any float: OverflowError before
        ([0.1], "must be a number"),
    ],
)
def test_refused_learning_rates_say_why(text, reason):
    with pytest.raises(ProtocolError, match=reason):
        validate_lr(text)


def test_scale_factor_bounds():
    assert validate_factor("0.5") == 0.5
    for bad, reason in (("0", "> 0"), ("-2", "> 0"), ("1e6", "outside"), ("x", "number")):
        with pytest.raises(ProtocolError, match=reason):
            validate_factor(bad)


def test_parse_a_full_request():
    request = parse_request(
        b'{"cmd": "set-lr", "value": "0.01", "group": 1, "id": 7, "source": "ui"}'
    )
    assert (request.cmd, request.args, request.id, request.source) == (
        "set-lr",
        {"value": 0.01, "group": 1},
        7,
        "ui",
    )
    assert parse_request('{"cmd": "pause"}').source == "socket"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{", "not JSON"),
        (b"42", "must be a JSON object"),
        (b'{"cmd": 1}', 'needs a "cmd"'),
        (b'{"cmd": "stpo"}', "did you mean stop?"),
        (b'{"cmd": "scale-lr"}', 'needs "factor"'),
        (b'{"cmd": "set-lr", "value": 1, "group": -1}', "group must be"),
        (b'{"cmd": "stop", "now": true}', "takes no argument 'now'"),
        (b'{"cmd": "ping", "source": 3}', '"source" must be a string'),
        (b"\xc3\x28", "not UTF-8"),
        (b"x" * (MAX_LINE_BYTES + 1), "longer than"),
        # What came back as "internal error" before: RecursionError, ValueError, Overflow.
        (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
        (b'{"cmd": "set-lr", "value": ' + b"9" * 5000 + b"}", "more than 4300 digits"),
        (b'{"cmd": "set-lr", "value": ' + b"9" * 4000 + b"}", "must be finite"),
        (b'{"cmd": "scale-lr", "factor": 1e999}', "must be finite"),
        (b'{"cmd": "set-grad-clip", "value": -1e999}', "must be finite"),
        (b'{"cmd": "recover", "lr_factor": ' + b"1" * 4000 + b"}", "must be finite"),
        (b'{"cmd": "set-lr", "value": ' + b"[" * 900 + b"]" * 900 + b"}", "must be a number"),
        (b'{"cmd": "set-lr", "value": 0.1, "group": ' + b"9" * 4000 + b"}", "group must be"),
        (b'{"cmd": "recover", "before_step": ' + b"9" * 4000 + b"}", "before_step must"),
        (b'{"cmd": "ping", "id": ' + b"[" * 900 + b"]" * 900 + b"}", '"id" must be'),
        (b'{"cmd": "ping", "id": ' + b"9" * 4000 + b"}", '"id" must be'),
        (b'{"cmd": "ping", "id": "' + b"x" * 200 + b'"}', '"id" must be'),
        (b'{"cmd": "ping", "source": "\\u001b]0;pwned\\u0007"}', '"source" must be'),
        (b'{"cmd": "ping", "source": "\\ud800"}', '"source" must be'),
        (b'{"cmd": "' + b"q" * 60_000 + b'"}', "unknown command 'qqq"),
        (b'"just a string"', "got string"),
        (b"null", "got null"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_bad_messages_are_refused_with_a_reason(line, reason):
    with pytest.raises(ProtocolError, match=reason):
        parse_request(line)


def test_error_messages_stay_short():
    with pytest.raises(ProtocolError) as refused:
        parse_request(b'{"cmd": "' + b"q" * 60_000 + b'"}')
    assert len(str(refused.value)) < 300


def test_encode_is_one_json_line():
    data = encode({"type": "step", "loss": float("nan")})
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data)["type"] == "step"
