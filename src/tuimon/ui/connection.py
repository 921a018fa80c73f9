"""The link between the app and a run: a thread that attaches to the control socket,
starts from the worker's snapshot, streams live events into the state, and reconnects
when the worker comes back. For a replay, the state is read from the log instead.

The thread never touches widgets; it only applies events to its RunState (under its lock)
and posts messages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from textual.message import Message

from tuimon.control.client import ControlClient, ControlError
from tuimon.run.run_dir import EVENTS_FILE
from tuimon.run.run_state import RunState, load_run_state
from tuimon.ui.messages import ConnectionChanged, StateReplaced

BATCH_SECONDS = 0.1  # live events are applied and announced at most this often
RETRY_SECONDS = 1.0


class RunConnection(threading.Thread):
    def __init__(
        self,
        run_dir: Path,
        post: Callable[[Message], object],
        worker_alive: Callable[[], bool | None] = lambda: None,
    ) -> None:
        super().__init__(name="tuimon-connection", daemon=True)
        self.run_dir = run_dir
        self._post = post
        self._worker_alive = worker_alive  # None: not launched by us, so unknown
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        announced = None
        while not self._stop.is_set():
            try:
                self._follow()
                return  # the run ended
            except (ControlError, OSError) as exc:
                status = self._status_without_socket()
                if status == "ended":
                    self._load_log_and_finish()
                    return
                if status != announced:
                    self._post(ConnectionChanged(status, str(exc)))
                    announced = status
            self._stop.wait(RETRY_SECONDS)

    def _status_without_socket(self) -> str:
        """Why there is no socket: still starting, gone, or finished (the log has `end`)."""
        if _log_has_end(self.run_dir / EVENTS_FILE):
            return "ended"
        alive = self._worker_alive()
        if alive is False:
            return "worker-exited"
        if alive and not (self.run_dir / EVENTS_FILE).exists():
            return "starting"
        return "disconnected"

    def _follow(self) -> None:
        with ControlClient(self.run_dir, timeout=10) as client:
            client.subscribe()
            snapshot = client.request("history", source="ui")["snapshot"]
            state = RunState.from_snapshot(snapshot)
            self._post(StateReplaced(state))
            self._post(ConnectionChanged("connected"))
            pending: list[dict] = []
            last_post = time.monotonic()
            while not self._stop.is_set():
                event = client.next_event(timeout=BATCH_SECONDS)
                if event is not None:
                    if event.get("type") == "lagged":
                        raise ControlError("fell behind the run's events; resyncing")
                    pending.append(event)
                now = time.monotonic()
                ended = event is not None and event.get("type") == "end"
                if pending and (ended or now - last_post >= BATCH_SECONDS or len(pending) > 5000):
                    state.apply_many(pending)
                    pending = []
                    last_post = now
                if ended:
                    self._post(ConnectionChanged("ended"))
                    return

    def _load_log_and_finish(self) -> None:
        self._post(StateReplaced(load_run_state(self.run_dir / EVENTS_FILE)))
        self._post(ConnectionChanged("ended"))


class ReplayLoader(threading.Thread):
    """Reads a finished run's log into a state, off the UI thread."""

    def __init__(self, run_dir: Path, post: Callable[[Message], object]) -> None:
        super().__init__(name="tuimon-replay", daemon=True)
        self.run_dir = run_dir
        self._post = post

    def stop(self) -> None:
        pass

    def run(self) -> None:
        self._post(ConnectionChanged("loading", f"reading {self.run_dir / EVENTS_FILE}"))
        try:
            state = load_run_state(self.run_dir / EVENTS_FILE)
        except OSError as exc:
            self._post(ConnectionChanged("unreadable", f"cannot read the log: {exc}"))
            return
        self._post(StateReplaced(state))
        self._post(ConnectionChanged("replay"))


def _log_has_end(path: Path) -> bool:
    """Whether the log's last line is an `end` event (reads only the tail)."""
    try:
        with path.open("rb") as file:
            file.seek(0, 2)
            size = file.tell()
            file.seek(max(0, size - 65536))
            tail = file.read().splitlines()
    except OSError:
        return False
    return bool(tail) and b'"type":"end"' in tail[-1]
