"""Moved to `tuimon.did_you_mean` (a stdlib-only leaf); this name stays only until the
doctor's two imports of it move there too."""

from tuimon.did_you_mean import closest, did_you_mean

__all__ = ["closest", "did_you_mean"]
