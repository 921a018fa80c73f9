"""tuimon: a terminal UI live training monitor for PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuimon.errors import StopTraining

__version__ = "0.1.0"
__all__ = ["Monitor", "StopTraining", "__version__"]

if TYPE_CHECKING:
    from tuimon.monitor.monitor import Monitor


def __getattr__(name: str) -> Any:
    # Imported lazily so that `import tuimon` (and the CLI's config checks) stay cheap.
    if name == "Monitor":
        from tuimon.monitor.monitor import Monitor

        return Monitor
    raise AttributeError(f"module 'tuimon' has no attribute {name!r}")
