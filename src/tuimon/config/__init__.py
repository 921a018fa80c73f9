"""Config files: loading with locations, validation, `--set` overrides."""

from tuimon.config.loader import load_config, model_options
from tuimon.config.schema import Config

__all__ = ["Config", "load_config", "model_options"]
