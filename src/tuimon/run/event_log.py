"""The event log: `events.jsonl`, append-only, the source of truth of a run.

Events are handed to a writer thread so the training thread never waits on disk or on a
client; the writer flushes after every batch it drains (so at least every `flush_interval`
seconds) and then passes each event to listeners (the control server, the console).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

Event = dict[str, Any]
Listener = Callable[[Event], None]

# Fields every event may carry; a `metrics` event's other keys are its scalars.
RESERVED_METRIC_KEYS = frozenset({"type", "step", "epoch", "time", "seq"})
_STOP = object()


class EventLog:
    """Writes events to a JSONL file from a background thread and fans them out."""

    def __init__(self, path: str | Path, flush_interval: float = 0.2) -> None:
        self.path = Path(path)
        self._file: TextIO = self.path.open("a", encoding="utf-8")
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._flush_interval = flush_interval
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._listener_lock = threading.Lock()
        self._written_seq = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tuimon-event-log", daemon=True)
        self._thread.start()

    def emit(self, event: Event) -> int:
        """Queue an event; returns its sequence number. Never blocks on I/O."""
        # After close() only the writer's own listeners (the doctor's last alerts) may add.
        if self._closed and threading.current_thread() is not self._thread:
            return 0
        with self._seq_lock:
            self._seq += 1
            event["seq"] = self._seq
            event.setdefault("time", time.time())
            self._queue.put(event)
            return self._seq

    def subscribe(self, listener: Listener) -> int:
        """Add a listener; returns the last seq already in the file (it gets all later ones)."""
        with self._listener_lock:
            self._listeners.append(listener)
            return self._written_seq

    def unsubscribe(self, listener: Listener) -> None:
        with self._listener_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every event emitted so far is written and seen by the listeners
        (whose own events, such as the doctor's alerts, are then queued): what comes
        next is logged after them."""
        if self._closed or threading.current_thread() is self._thread:
            return False
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self) -> None:
        """Write everything still queued, then stop the writer."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        self._file.close()

    def _run(self) -> None:
        stopping = False
        while True:
            try:
                item = self._queue.get(timeout=self._flush_interval)
            except queue.Empty:
                continue
            batch: list[Event] = []
            while True:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, threading.Event):  # a flush() barrier
                    if batch:
                        self._write(batch)
                        batch = []
                    item.set()
                else:
                    batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
            # Once stopping, what the last batch's listeners emitted is written too.
            if stopping and self._queue.empty():
                return

    def _write(self, batch: list[Event]) -> None:
        lines = []
        for event in batch:
            try:
                lines.append(json.dumps(event, separators=(",", ":"), default=str))
            except (TypeError, ValueError) as exc:  # a bad value must not lose the run's log
                lines.append(
                    json.dumps(
                        {
                            "type": "log_error",
                            "seq": event.get("seq"),
                            "error": f"unserializable event: {exc}",
                        }
                    )
                )
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()
        with self._listener_lock:
            self._written_seq = batch[-1]["seq"]
            listeners = list(self._listeners)
            for event in batch:
                for listener in listeners:
                    try:
                        listener(event)
                    except Exception:  # a listener's bug must not stop the log
                        traceback.print_exc(file=sys.stderr)
