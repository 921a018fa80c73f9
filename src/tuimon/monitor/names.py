from tuimon.run.events import (
    NOT_IN_MODEL as NOT_IN_MODEL,
)  # moved: until doctor/ imports it from there
