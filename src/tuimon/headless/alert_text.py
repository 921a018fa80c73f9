"""How an alert reads once its episode has ended: its fix no longer applies.

The rules write their key hint ("press a") into the suggestion, for the moment the alert is
raised. Once the alert has cleared (or the run is over), pressing `a` would apply a fix to a
problem that is gone, so every front end shows the suggestion without the hint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

APPLY_KEY = "a"
# "(×0.05, press a)" → "(×0.05)"; "try 0.05 (press a), or clip" → "try 0.05, or clip".
_HINT_IN_PARENS = re.compile(rf",\s*press {APPLY_KEY}\)")
_HINT_ALONE = re.compile(rf"\s*\(press {APPLY_KEY}\)")


def without_key_hint(suggestion: str) -> str:
    """The suggestion without its "press a": for an alert whose fix no longer applies."""
    return _HINT_ALONE.sub("", _HINT_IN_PARENS.sub(")", suggestion))


def cleared_at(alert: Mapping[str, Any]) -> Any:
    """The step where the alert's episode ended (RunState marks it), or None while it holds."""
    return alert.get("cleared_at")


def stale_action_text(alert: Mapping[str, Any]) -> str:
    """Why an alert's action is not offered any more."""
    return f"the alert cleared at step {cleared_at(alert)}: its fix no longer applies"
