"""Config files: loading with locations, validation, `--set` overrides.

A run loads its config through training/build_checks.py, which adds the checks that need
the optimizer, scheduler, loss and model built (config itself never imports training).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Config", "load_config"]

if TYPE_CHECKING:
    from tuimon.config.loader import load_config
    from tuimon.config.schema import Config


def __getattr__(name: str) -> Any:
    # Imported lazily: `tuimon.config.schema` alone (the monitor's settings, the worker's
    # types) then loads neither the loader nor the YAML reader.
    if name == "load_config":
        from tuimon.config.loader import load_config

        return load_config
    if name == "Config":
        from tuimon.config.schema import Config

        return Config
    raise AttributeError(f"module 'tuimon.config' has no attribute {name!r}")
