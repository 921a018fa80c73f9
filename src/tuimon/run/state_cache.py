"""Moved to run/replay_cache.py; this name stays until its last importers move too."""

from tuimon.run.replay_cache import load_cached_state as load_cached_state
from tuimon.run.replay_cache import load_replay_state as load_replay_state
from tuimon.run.replay_cache import write_state_cache as write_state_cache
