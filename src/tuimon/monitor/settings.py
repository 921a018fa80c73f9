"""A script's Monitor settings: the `monitor:` section of a config, as keyword arguments.

`Monitor(model, opt, autofix=True, rules={"stall": {"enabled": False}})` is checked by the
same schema and the same messages as a config file (an unknown key gets a did-you-mean),
so a script and a config have the same switches. `notify=` (a URL, a command or a dict)
and `tuimon run --notify` (the TUIMON_NOTIFY environment variable) are checked here too.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tuimon.config.loader import pydantic_problems
from tuimon.config.schema import MonitorConfig, NotifyConfig
from tuimon.config.source import ConfigSource
from tuimon.errors import ConfigError
from tuimon.notify.targets import is_url
from tuimon.run.run_dir import NOTIFY_ENV

ORIGIN = "Monitor(doctor settings)"
NOTIFY_ORIGIN = "Monitor(notify=...)"
NOTIFY_ENV_ORIGIN = f"{NOTIFY_ENV} (tuimon run --notify)"


def monitor_settings(
    given: dict[str, Any] | None,
    keywords: dict[str, Any],
    *,
    autofix: bool = False,
    notify: str | None = None,
) -> MonitorConfig:
    """`doctor=` and keyword settings merged (keywords win), validated; `autofix` forces it
    on; `notify` (from `tuimon run --notify`) is the notifications' target, keeping the
    other `notify=` settings (when, hang_after…) the script gives."""
    if given is not None and not isinstance(given, dict):
        raise TypeError(f"Monitor(doctor=...) takes a dict of settings, got {type(given).__name__}")
    data = {**(given or {}), **keywords}
    notify_settings = _notify_settings(data.pop("notify", None), notify)
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
    if notify_settings is not None:
        settings = settings.model_copy(update={"notify": notify_settings})
    return settings


def _notify_settings(given: Any, target: str | None) -> NotifyConfig | None:
    """`Monitor(notify=...)` checked, with the target of `tuimon run --notify` put in: a
    ValueError naming the keyword (or the variable) and what is wrong."""
    if given is not None and not isinstance(given, str | dict | NotifyConfig):
        raise ValueError(
            f"{NOTIFY_ORIGIN}: a URL, a command or a dict (url, command, when, hang_after, "
            f"format, timeout), got {type(given).__name__}"
        )
    origin = NOTIFY_ORIGIN
    if isinstance(given, NotifyConfig):  # its fields as given (a dump hides the target)
        given = {key: getattr(given, key) for key in NotifyConfig.model_fields}
    if target is not None and target.strip():
        origin = NOTIFY_ENV_ORIGIN
        kept = {} if isinstance(given, str) or given is None else dict(given)
        kept.pop("url", None)
        kept.pop("command", None)
        given = {**kept, ("url" if is_url(target) else "command"): target}
    if given is None:
        return None
    source = ConfigSource(data=given if isinstance(given, dict) else {}, origin=origin)
    try:
        return NotifyConfig.model_validate(given)
    except ValidationError as exc:
        problems = pydantic_problems(exc, source, (), NotifyConfig)
        raise ValueError("\n".join(problems)) from None
