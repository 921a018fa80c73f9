"""The event log: `events.jsonl`, append-only, the source of truth of a run.

Events are handed to a writer thread so the training thread never waits on disk or on a
client. Steps reach the writer in batches (`emit_many`), and it picks them up on a timer,
every `flush_interval` seconds, not on each batch: a fast training loop emits thousands of
events a second, and a writer woken by each burst would take the GIL from the training
thread each time. A single `emit()` (a command's outcome, a message, an alert: rare events
a client may be waiting for), `flush()` and `close()` wake it at once. Each wake writes
what is queued in one `write()` and then passes the events to the listeners (the run's
history, the doctor, the control server, the console), in slices between which it lets the
training thread have the GIL back. A listener subscribed with `batches=True` gets each
slice as one list (the run's history applies it under one lock).

A write that fails (a full disk, a quota, an I/O error) never stops the writer nor the run.
Like a database's log, the run is worth more than its record, and pausing training on a
full disk would hold a GPU hostage to an operator who may not be watching; so the run goes
on and says loudly that it is not being recorded:

- events that could not be written still reach the listeners (the UI, the console, clients
  keep working) and are counted as dropped;
- at the first failure the listeners (not the file) get a `message` event of level `error`
  naming the cause ("no space left on device"); `health()` (served by `ctl status`) says
  `recording: false` until a write succeeds again;
- the writer retries with a later batch, at most every `RETRY_INTERVAL` seconds;
- when a write succeeds it starts with a newline, so a line torn by the failure stays a
  bad line of its own (readers skip it), and then records a `message` of level `warning`
  with how many events were dropped and the steps and time span they covered.

`close()` never raises: the last batch (with `end`) gets a few brief retries; if they fail,
one line on stderr says what was lost.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

import orjson

from tuimon.run.event_codec import encode_event
from tuimon.run.events import ERROR, LOG_ERROR, MESSAGE, WARNING, LogErrorEvent, MessageEvent
from tuimon.run.events import Event as VocabularyEvent
from tuimon.run.private_files import open_private_append

# What a producer hands the log: an event of the vocabulary (run/events.py), or a JSON
# object built with fields of its own (a `metrics` event's scalars).
Emitted = VocabularyEvent | dict[str, Any]
# What the log holds and its listeners get: a JSON object, with `seq` and `time`.
Event = dict[str, Any]
Listener = Callable[[Event], None]
BatchListener = Callable[[list[Event]], None]
# While writes fail, a later batch tries again at most this often (seconds).
RETRY_INTERVAL = 1.0
# The last batch, written by close(): tries and the pause between them (seconds).
CLOSE_TRIES = 4
CLOSE_RETRY_PAUSE = 0.25
# Listeners see this many events, then the writer yields the GIL (a slice is ~1 ms of work).
LISTENER_SLICE = 64
_STOP = object()


class EventLog:
    """Writes events to a JSONL file from a background thread and fans them out."""

    def __init__(
        self, path: str | Path, flush_interval: float = 0.2, rank: int | None = None
    ) -> None:
        """`rank`: in a distributed job, the rank every event is stamped with."""
        self.path = Path(path)
        self.rank = rank
        # Unbuffered: one write() per batch, and a failed write leaves nothing behind in a
        # buffer to come out later in the middle of another line. Private, never through a
        # planted symlink (private_files.py).
        self._file = cast(BinaryIO, open_private_append(self.path, binary=True, buffering=0))
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._flush_interval = flush_interval
        self._seq = 0
        self._seq_lock = threading.Lock()
        # (listener, takes a list of events)
        self._listeners: list[tuple[Callable[[Any], None], bool]] = []
        self._wake = threading.Event()  # set by flush() and close(): drain now
        self._listener_lock = threading.Lock()
        self._written_seq = 0
        self._closed = False
        self._stopping = False
        self._outage: _Outage | None = None  # set while writes fail
        self._dropped_total = 0
        self._thread = threading.Thread(target=self._run, name="tuimon-event-log", daemon=True)
        self._thread.start()

    def emit(self, event: Emitted) -> int:
        """Queue an event and wake the writer; returns its sequence number. Never blocks on
        I/O. For the run's rare events (a command's outcome, a message, an alert) that a
        client may be waiting for; a batch of steps goes through `emit_many`, on the timer."""
        # After close() only the writer's own listeners (the doctor's last alerts) may add.
        if self._closed and threading.current_thread() is not self._thread:
            return 0
        with self._seq_lock:
            self._seq += 1
            event["seq"] = seq = self._seq
            event.setdefault("time", time.time())
            if self.rank is not None:
                event["rank"] = self.rank
            self._queue.put(event)
        self._wake.set()
        return seq

    def emit_many(self, events: Sequence[Emitted], *, wake: bool = False) -> int:
        """Queue events in this order, with one lock and one queue item for all of them
        (the training thread's share of logging a batch of steps); returns the last seq.
        They wait for the writer's timer unless `wake`: a run that restores snapshots
        wants the doctor's verdict before its good snapshots have left the ring."""
        if not events or (self._closed and threading.current_thread() is not self._thread):
            return 0
        now = time.time()
        rank = self.rank
        with self._seq_lock:
            seq = self._seq
            for event in events:
                seq += 1
                event["seq"] = seq
                if "time" not in event:
                    event["time"] = now
                if rank is not None:
                    event["rank"] = rank
            self._seq = seq
            self._queue.put(list(events))  # the writer takes them as JSON objects
        if wake:
            self._wake.set()
        return seq

    def subscribe(self, listener: Callable[[Any], None], *, batches: bool = False) -> int:
        """Add a listener; returns the last seq the writer has handled (it gets all later
        ones). Those events are in the file unless `health()` reports them dropped.
        `batches`: the listener takes a list of events (in order) instead of one event."""
        with self._listener_lock:
            self._listeners.append((listener, batches))
            return self._written_seq

    def unsubscribe(self, listener: Callable[[Any], None]) -> None:
        with self._listener_lock:
            self._listeners = [entry for entry in self._listeners if entry[0] != listener]

    def health(self) -> dict[str, Any]:
        """Whether events are being recorded: `recording`, `dropped` (events never written,
        over the whole run), `error` (why not, while not recording) and `since` (when
        recording stopped; None while recording)."""
        outage = self._outage
        return {
            "recording": outage is None,
            "dropped": self._dropped_total,
            "error": outage.error if outage else None,
            "since": outage.since if outage else None,
        }

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every event emitted so far is written and seen by the listeners
        (whose own events, such as the doctor's alerts, are then queued): what comes
        next is logged after them."""
        if self._closed or threading.current_thread() is self._thread:
            return False
        done = threading.Event()
        self._queue.put(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self) -> None:
        """Write everything still queued, then stop the writer. Never raises."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._wake.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            self._file.close()

    def _run(self) -> None:
        while True:
            if not self._stopping:
                self._wake.wait(self._flush_interval)
                self._wake.clear()  # before draining: a later set() means a later wake
            batch: list[Event] = []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if type(item) is list:  # emit_many()
                    batch += item
                elif item is _STOP:
                    self._stopping = True
                elif isinstance(item, threading.Event):  # a flush() barrier
                    try:
                        if batch:
                            self._write(batch)
                            batch = []
                    finally:
                        item.set()
                else:
                    batch.append(item)
            if batch:
                self._write(batch)
            # Once stopping, what the last batch's listeners emitted is written too.
            if self._stopping and self._queue.empty():
                self._report_loss_at_close()
                return

    def _write(self, batch: list[Event]) -> None:
        try:
            self._store(batch)
        except Exception:  # the writer must outlive anything; the events still go out
            _print_exception()
        for start in range(0, len(batch), LISTENER_SLICE):
            if start:
                time.sleep(0)  # the training thread may take the GIL between slices
            part = batch[start : start + LISTENER_SLICE]
            with self._listener_lock:
                self._written_seq = part[-1]["seq"]
                for listener, batches in list(self._listeners):
                    if batches:
                        try:
                            listener(part)
                        except Exception:  # a listener's bug must not stop the log
                            _print_exception()
                        continue
                    for event in part:
                        try:
                            listener(event)
                        except Exception:
                            _print_exception()

    def _store(self, batch: list[Event]) -> None:
        """Append the batch to the file, or count it dropped while the file cannot be written."""
        outage = self._outage
        throttled = outage is not None and time.monotonic() - outage.tried < RETRY_INTERVAL
        if throttled and not self._stopping:
            assert outage is not None
            outage.drop(batch)
            self._dropped_total += len(batch)
            return
        lines = _encode(batch)
        tries = CLOSE_TRIES if self._stopping and not (outage and outage.gave_up) else 1
        for attempt in range(tries):
            if attempt:
                time.sleep(CLOSE_RETRY_PAUSE)
            # After a failure the file may end in a torn line: keep it apart from the next.
            prefix = b"\n" if outage is not None else b""
            data = prefix + b"\n".join(lines) + b"\n"
            written, error = self._write_all(data)
            if error is None:
                if outage is not None:
                    self._recovered(outage)
                return
            if outage is None:
                outage = self._outage = _Outage(str(self.path), error)
                self._not_recording(outage, batch)
            # Lines that reached the file whole before the failure are not lost.
            whole = max(0, data[:written].count(b"\n") - len(prefix))
            batch, lines = batch[whole:], lines[whole:]
            if not batch:
                return
        assert outage is not None
        outage.tried = time.monotonic()
        outage.gave_up = self._stopping
        outage.drop(batch)
        self._dropped_total += len(batch)

    def _write_all(self, data: bytes) -> tuple[int, OSError | None]:
        """Bytes written and the error that stopped the write, if any."""
        written = 0
        view = memoryview(data)
        try:
            while written < len(data):
                count = self._file.write(view[written:])
                if not count:  # a raw file that took nothing: treat as full
                    raise OSError("the file accepted no bytes")
                written += count
        except OSError as exc:
            return written, exc
        return written, None

    def _not_recording(self, outage: _Outage, batch: list[Event]) -> None:
        """Tell the listeners (the file cannot be told) that events are not recorded."""
        # The batch's newest step, as JSON holds it; None when no event in it has one.
        step: Any = next((e["step"] for e in reversed(batch) if "step" in e), None)
        message: MessageEvent = {
            "type": MESSAGE,
            "step": step,
            "level": ERROR,
            "text": (
                f"events are not being recorded: cannot write {outage.path}: "
                f"{outage.error}. Training goes on; the log will say what was lost "
                "once it can be written again."
            ),
            "time": outage.since,
            "recording": False,
        }
        self._tell_listeners(_as_object(message))

    def _tell_listeners(self, event: Event) -> None:
        with self._listener_lock:
            listeners = list(self._listeners)
        for listener, batches in listeners:
            try:
                listener([event] if batches else event)
            except Exception:
                _print_exception()

    def _recovered(self, outage: _Outage) -> None:
        self._outage = None
        if not outage.dropped:
            return
        steps = (
            f"steps {outage.first_step}-{outage.last_step}"
            if outage.first_step is not None
            else "no steps"
        )
        span = max(0.0, (outage.last_time or 0.0) - (outage.first_time or 0.0))
        message: MessageEvent = {
            "type": MESSAGE,
            "step": outage.last_step,
            "level": WARNING,
            "text": (
                f"{outage.dropped} events were not recorded ({steps}, {span:.1f}s "
                f"of the run): {outage.error}. Recording resumed."
            ),
            "dropped_events": outage.dropped,
        }
        # The span of what was lost: fields MessageEvent does not name (yet).
        fields = _as_object(message)
        fields["dropped_steps"] = [outage.first_step, outage.last_step]
        fields["dropped_time"] = [outage.first_time, outage.last_time]
        self.emit(fields)

    def _report_loss_at_close(self) -> None:
        outage = self._outage
        if outage is None or not outage.dropped:
            return
        steps = (
            f", steps {outage.first_step}-{outage.last_step}"
            if outage.first_step is not None
            else ""
        )
        with contextlib.suppress(Exception):
            print(
                f"tuimon: {outage.dropped} events{steps} (the last ones of the run) could not "
                f"be written to {outage.path}: {outage.error}",
                file=sys.stderr,
                flush=True,
            )


def _as_object(event: Emitted) -> Event:
    """An event as the log holds it: a JSON object (a TypedDict is one at run time)."""
    return cast(Event, event)


def _print_exception() -> None:
    """Show a listener's bug on stderr; a stderr that cannot be written (a detached
    worker's output.log on a full disk) must not kill the writer in its turn."""
    with contextlib.suppress(Exception):
        traceback.print_exc(file=sys.stderr)


def _encode(batch: list[Event]) -> list[bytes]:
    """Each event's line, as `encode_event` writes it; an event JSON cannot hold becomes
    a `log_error` line.

    The writer's hot path, one C call per event: orjson's line is `encode_event`'s unless
    the event holds a non-finite float, which orjson writes as `null` — so only a line
    with a `null` in it goes through `encode_event`'s slower check.
    """
    lines = []
    for event in batch:
        try:
            line = orjson.dumps(event, default=str)
        except orjson.JSONEncodeError:
            line = b"null"  # let encode_event decide (a big int, a circular value...)
        if b"null" in line:
            try:
                line = encode_event(event)
            except (TypeError, ValueError, RecursionError) as exc:
                # A bad value must not lose the run's log.
                error: LogErrorEvent = {
                    "type": LOG_ERROR,
                    "seq": event["seq"],  # every event in a batch has one (emit)
                    "error": f"unserializable event: {exc}",
                }
                line = encode_event(error)
        lines.append(line)
    return lines


class _Outage:
    """A stretch of time during which the log could not be written."""

    def __init__(self, path: str, error: OSError) -> None:
        self.path = path
        reason = error.strerror or str(error)
        self.error = reason[:1].lower() + reason[1:]  # "no space left on device"
        self.since = time.time()
        self.tried = time.monotonic()
        self.gave_up = False  # close() already spent its retries
        self.dropped = 0
        self.first_step: Any = None
        self.last_step: Any = None
        self.first_time: float | None = None
        self.last_time: float | None = None

    def drop(self, batch: list[Event]) -> None:
        self.dropped += len(batch)
        for event in batch:
            step = event.get("step")
            if isinstance(step, int | float):
                if self.first_step is None:
                    self.first_step = step
                self.last_step = step
        if self.first_time is None:
            self.first_time = batch[0].get("time")
        self.last_time = batch[-1].get("time")
