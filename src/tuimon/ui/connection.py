"""The link between the app and a run: a thread that attaches to the control socket,
starts from the worker's snapshot, streams live events into the state, and reconnects
when the worker comes back. For a replay, the state is read from the log instead.

Without a socket the run's history still comes from its log. A worker whose pid is known
dead (killed: no `end` event) is "worker-gone": the thread stops knocking on its socket
and only watches the socket file, which a new worker in the same directory replaces.

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
from tuimon.run.replay_cache import load_replay_state
from tuimon.run.run_dir import CONTROL_SOCKET, EVENTS_FILE
from tuimon.run.run_state import RunState, load_run_state
from tuimon.run.worker_liveness import WorkerLiveness, start_event, worker_liveness
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
        self.connected = False  # whether a snapshot ever came from the worker
        self.attempts = 0  # connections tried (tests check that a dead worker's stop)
        self.socket_checks = 0  # looks at the socket file while the worker is gone

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        announced: tuple[str, str] | None = None
        history_shown = False  # the log's history, while there is no snapshot
        while not self._stop.is_set():
            self.attempts += 1
            try:
                self._follow()
                return  # the run ended
            except (ControlError, OSError, ValueError) as exc:  # ValueError: not JSON
                history_shown = history_shown or self.connected
                status, detail = self._status_without_socket(exc)
                if status == "ended":
                    self._load_log_and_finish()
                    return
                if status == "worker-gone":
                    # The log is the whole story now, up to the kill (a live stream's last
                    # batch may not have been applied when the connection broke).
                    history_shown = self._post_log_history()
                elif status == "disconnected" and not history_shown:
                    history_shown = self._post_log_history()
                if (status, detail) != announced:
                    self._post(ConnectionChanged(status, detail))
                    announced = (status, detail)
                if status == "worker-gone":
                    self._wait_for_new_socket()
                    continue
            self._stop.wait(RETRY_SECONDS)

    def _status_without_socket(self, exc: Exception) -> tuple[str, str]:
        """Why there is no socket: still starting, gone, or finished (the log has `end`),
        with a line that says so."""
        log = self.run_dir / EVENTS_FILE
        if _log_has_end(log):
            return "ended", ""
        alive = self._worker_alive()
        start = start_event(log)
        if start is None:
            if alive is False:
                return "worker-exited", str(exc)
            if alive and not log.exists():
                return "starting", str(exc)
            return "disconnected", str(exc)
        liveness = worker_liveness(start)
        if alive is False and liveness.verdict != "gone":
            liveness = WorkerLiveness("gone", liveness.pid, liveness.host)  # our own child
        if liveness.verdict == "gone":
            return "worker-gone", f"worker gone ({liveness.describe()})"
        if liveness.verdict == "unknown":
            return "disconnected", f"{exc} ({liveness.describe()})"
        return "disconnected", str(exc)

    def _post_log_history(self) -> bool:
        """Show what the log holds while the socket does not answer; True once shown."""
        try:
            state = load_run_state(self.run_dir / EVENTS_FILE)
        except (OSError, ValueError):
            return False
        self._post(StateReplaced(state))
        return True

    def _wait_for_new_socket(self) -> None:
        """Until the socket file is replaced (a new worker bound it) or the app stops: a dead
        worker's socket is not retried, it cannot answer."""
        seen = _file_identity(self.run_dir / CONTROL_SOCKET)
        while not self._stop.wait(RETRY_SECONDS):
            self.socket_checks += 1
            if _file_identity(self.run_dir / CONTROL_SOCKET) not in (seen, None):
                return

    def _follow(self) -> None:
        with ControlClient(self.run_dir, timeout=10) as client:
            client.subscribe()
            snapshot = client.request("history", source="ui")["snapshot"]
            state = RunState.from_snapshot(snapshot)
            self._post(StateReplaced(state))
            self.connected = True
            self._post(ConnectionChanged("connected"))
            pending: list[dict] = []
            last_post = time.monotonic()
            while not self._stop.is_set():
                event = client.next_event(timeout=BATCH_SECONDS)
                if event is not None:
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
        self._post(StateReplaced(load_replay_state(self.run_dir)))
        self._post(ConnectionChanged("ended"))


class ReplayLoader(threading.Thread):
    """Reads a finished run's state, off the UI thread: from the `state.json` its worker
    wrote at the end when that still stands for the log (run/replay_cache.py), else from
    the log itself."""

    def __init__(self, run_dir: Path, post: Callable[[Message], object]) -> None:
        super().__init__(name="tuimon-replay", daemon=True)
        self.run_dir = run_dir
        self._post = post

    def stop(self) -> None:
        pass

    def run(self) -> None:
        self._post(ConnectionChanged("loading", f"reading {self.run_dir / EVENTS_FILE}"))
        try:
            state = load_replay_state(self.run_dir)
        except OSError as exc:
            self._post(ConnectionChanged("unreadable", f"cannot read the log: {exc}"))
            return
        self._post(StateReplaced(state))
        self._post(ConnectionChanged("replay", replay_notice(state)))


NO_END = "no end event: the worker was killed or is still writing"


def replay_notice(state: RunState) -> str:
    """What a replay must say about a log without `end`: the run it shows is not over, or
    was cut short. Empty for a finished run."""
    if state.end is not None or state.start is None:
        return ""
    liveness = worker_liveness(state.start)
    return f"{NO_END} ({liveness.describe()})" if liveness.pid is not None else NO_END


def _file_identity(path: Path) -> tuple[int, int] | None:
    """What tells one file at `path` from the next one created there."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns


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
