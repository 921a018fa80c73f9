"""The notifier: a log listener and a thread of its own that sends notifications.

It reads the run's events on the log's writer thread (like the doctor) and only queues:
an error alert, the end, a hang found by its own thread. Its thread sends them one at a
time. Whoever queues never waits and never sees an error: a full queue drops the message
and counts it. The first failure to deliver is said once (a `warning` message in the log,
a line on stderr); later ones are counted. `close()` gives what is queued a bounded time
to go out, so the end's message is not lost when the process exits right after.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from tuimon.config.schema import NotifyConfig
from tuimon.notify.delivery import DeliveryError, post_json, run_command
from tuimon.notify.hang_watch import HangWatch
from tuimon.notify.payloads import Notification, RunFacts, body, from_alert, from_end, from_hang
from tuimon.notify.targets import HANG, command_argv, format_for, shown_target
from tuimon.run.events import ALERT, ERROR, WARNING, Severity

# Messages waiting to be sent; more are dropped (and counted), never waited for.
QUEUE_SIZE = 32
# The longest close() waits for queued messages to go out (seconds).
CLOSE_FLUSH_SECONDS = 10.0
# The hang watch looks this many times per `hang_after` (at most once a second).
HANG_CHECKS = 4
_STOP = object()


class Notifier:
    def __init__(
        self,
        settings: NotifyConfig,
        run: RunFacts,
        *,
        current_step: Callable[[], int],
        status: Callable[[], str],
        note: Callable[[str, Severity], None],
    ) -> None:
        """`note`: puts a line in the run's log (Monitor.note); `current_step`, `status`:
        read by the hang watch (the training thread only writes them)."""
        self.settings = settings
        self.run = run
        self.when = frozenset(settings.when)
        self._current_step = current_step
        self._status = status
        self._note = note
        self._queue: queue.Queue[Any] = queue.Queue(QUEUE_SIZE)
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._warned = False
        self._ended = False
        self._deadline: float | None = None  # when close() stops waiting
        self._stop = threading.Event()
        self._sender = threading.Thread(target=self._send_all, name="tuimon-notify", daemon=True)
        self._sender.start()
        self._watch: threading.Thread | None = None
        if HANG in self.when:
            self._hangs = HangWatch(settings.hang_after, current_step(), time.monotonic())
            self._watch = threading.Thread(
                target=self._watch_hangs, name="tuimon-notify-hang", daemon=True
            )
            self._watch.start()

    @property
    def target(self) -> str:
        """Where messages go, as it may be shown (no secret)."""
        return shown_target(self.settings.target)

    # -- queuing: never blocks, never raises ---------------------------------------------

    def observe(self, events: list[dict[str, Any]]) -> None:
        """Log listener (batches): an error alert becomes a message (one per episode: the
        doctor alerts once per episode)."""
        if ERROR not in self.when:
            return
        for event in events:
            if event.get("type") == ALERT and event.get("severity") == ERROR:
                self.queue(from_alert(event, self.run))

    def run_ended(self, end: Mapping[str, Any]) -> None:
        """The `end` event, before it is logged: its message, if `when` names its status.
        The message that matters most may wait for room in the queue, within the time
        close() then has left."""
        if self._ended:
            return
        self._ended = True
        self._deadline = time.monotonic() + CLOSE_FLUSH_SECONDS
        if end.get("status") in self.when:
            try:
                self._queue.put(from_end(end, self.run, time.time()), timeout=CLOSE_FLUSH_SECONDS)
            except queue.Full:
                self.dropped += 1

    def queue(self, note: Notification) -> None:
        try:
            self._queue.put_nowait(note)
        except queue.Full:
            self.dropped += 1

    def close(self) -> bool:
        """Stop the hang watch; send what is queued, waiting at most CLOSE_FLUSH_SECONDS
        from the end (`run_ended`) or from now. True when everything queued went out (or
        failed) in time."""
        self._stop.set()
        if self.dropped:
            with contextlib.suppress(Exception):
                self._note(
                    f"{self.dropped} notification(s) to {self.target} were dropped: the "
                    f"receiver was slower than the run ({QUEUE_SIZE} can wait)",
                    WARNING,
                )
        deadline = self._deadline or time.monotonic() + CLOSE_FLUSH_SECONDS
        try:
            self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            return False
        self._sender.join(max(0.0, deadline - time.monotonic()))
        return not self._sender.is_alive()

    # -- the notifier's threads -----------------------------------------------------------

    def _watch_hangs(self) -> None:
        interval = min(1.0, self.settings.hang_after / HANG_CHECKS)
        while not self._stop.wait(interval):
            try:
                hang = self._hangs.check(self._current_step(), self._status(), time.monotonic())
            except Exception:  # a status read during teardown: look again later
                continue
            if hang is not None:
                self.queue(from_hang(hang.step, hang.idle, self._status(), self.run, time.time()))

    def _send_all(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._deliver(item)
                self.sent += 1
            except DeliveryError as exc:
                self._failed(str(exc))
            except Exception as exc:  # never let one message end the thread
                self._failed(f"{type(exc).__name__}: {exc}")

    def _deliver(self, note: Notification) -> None:
        settings = self.settings
        if settings.url is not None:
            format = format_for(settings.url, settings.format)
            where, payload = body(note, format, settings.url)
            post_json(where or settings.url, payload, settings.timeout)
        else:
            payload = note.fields()
            run_command(command_argv(str(settings.command)), payload, settings.timeout)

    def _failed(self, reason: str) -> None:
        self.failed += 1
        if self._warned:
            return
        self._warned = True
        text = (
            f"notification to {self.target} failed: {reason} (further failures to notify "
            "are not reported)"
        )
        print(f"tuimon: warning: {text}", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):  # the log is closing: stderr has it
            self._note(text, WARNING)
