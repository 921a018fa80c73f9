"""Reading `events.jsonl`: the events of a run, for replay, attach and the doctor."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Event = dict[str, Any]


def read_events(path: str | Path) -> Iterator[Event]:
    """Events of a log, skipping a torn last line of a run that is still writing."""
    with Path(path).open(encoding="utf-8") as file:
        for line in file:
            if not line.endswith("\n"):
                return
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                yield event
