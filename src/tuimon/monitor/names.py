"""Moved to run/events.py: kept until doctor/rules/gradients.py imports it from there."""

from tuimon.run.events import NOT_IN_MODEL as NOT_IN_MODEL
