"""A script's Monitor settings: the `monitor:` section of a config, as keyword arguments.

`Monitor(model, opt, autofix=True, rules={"stall": {"enabled": False}})` is checked by the
same schema and the same messages as a config file (an unknown key gets a did-you-mean),
so a script and a config have the same switches.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tuimon.config.loader import pydantic_problems
from tuimon.config.schema import MonitorConfig
from tuimon.config.source import ConfigSource
from tuimon.errors import ConfigError

ORIGIN = "Monitor(doctor settings)"


def monitor_settings(
    given: dict[str, Any] | None, keywords: dict[str, Any], *, autofix: bool = False
) -> MonitorConfig:
    """`doctor=` and keyword settings merged (keywords win), validated; `autofix` forces it on."""
    if given is not None and not isinstance(given, dict):
        raise TypeError(f"Monitor(doctor=...) takes a dict of settings, got {type(given).__name__}")
    data = {**(given or {}), **keywords}
    if autofix:
        data["autofix"] = True
    source = ConfigSource(data=data, origin=ORIGIN)
    try:
        settings = MonitorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(pydantic_problems(exc, source, (), MonitorConfig)) from None
    from tuimon.doctor.registry import override_problems

    problems = [
        f"{ORIGIN}: rules.{rule_id}.{key}: {message}"
        for rule_id, override in settings.rules.items()
        for key, message in override_problems(rule_id, override.model_dump())
    ]
    if problems:
        raise ConfigError(problems)
    return settings
