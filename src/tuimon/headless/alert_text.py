"""How an alert reads once its episode has ended: its fix no longer applies.

The rules write their key hint ("press a") into the suggestion, for the moment the alert is
raised. Once the alert has cleared (or the run is over), pressing `a` would apply a fix to a
problem that is gone, so every front end shows the suggestion without the hint.
"""

from __future__ import annotations

import re
from typing import Any

APPLY_KEY = "a"
# "(×0.05, press a)" → "(×0.05)"; "try 0.05 (press a), or clip" → "try 0.05, or clip".
_HINT_IN_PARENS = re.compile(rf",\s*press {APPLY_KEY}\)")
_HINT_ALONE = re.compile(rf"\s*\(press {APPLY_KEY}\)")


def without_key_hint(suggestion: str) -> str:
    """The suggestion without its "press a": for an alert whose fix no longer applies."""
    return _HINT_ALONE.sub("", _HINT_IN_PARENS.sub(")", suggestion))


def describe_action(action: dict[str, Any] | None) -> str:
    """A control command in words: scale-lr ×0.1, set-lr 0.003, stop…"""
    if not action:
        return ""
    cmd = action.get("cmd", "?")
    if cmd == "scale-lr":
        return f"scale LR ×{_short(action.get('factor'))}"
    if cmd == "set-lr":
        return f"set LR to {_short(action.get('value'))}"
    if cmd == "recover":
        return f"restore the last good weights, LR ×{_short(action.get('lr_factor', 0.1))}"
    if cmd == "set-grad-clip":
        return f"clip gradients at {_short(action.get('value'))}"
    extra = " ".join(f"{k}={v}" for k, v in action.items() if k != "cmd")
    return f"{cmd} {extra}".strip()


def _short(value: Any) -> str:
    """A number as `:g` writes it; anything else (a damaged log's) as it is."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}"
    return str(value)


def cleared_at(alert: dict[str, Any]) -> Any:
    """The step where the alert's episode ended (RunState marks it), or None while it holds."""
    return alert.get("cleared_at")


def stale_action_text(alert: dict[str, Any]) -> str:
    """Why an alert's action is not offered any more."""
    return f"the alert cleared at step {cleared_at(alert)}: its fix no longer applies"
