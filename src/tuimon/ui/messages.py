"""Messages from the connection thread to the app. Live events go straight into the
app's RunState (under its lock); the redraw timer shows them, so they need no message."""

from __future__ import annotations

from textual.message import Message

from tuimon.run.run_state import RunState


class StateReplaced(Message):
    """A fresh state (a snapshot on (re)connect, or a replayed log)."""

    def __init__(self, state: RunState) -> None:
        super().__init__()
        self.state = state


class ConnectionChanged(Message):
    """connecting | connected | disconnected | ended | replay, with a detail line."""

    def __init__(self, status: str, detail: str = "") -> None:
        super().__init__()
        self.status = status
        self.detail = detail


class CommandResult(Message):
    """The worker's reply to a command sent from a key."""

    def __init__(self, command: str, ok: bool, detail: str) -> None:
        super().__init__()
        self.command = command
        self.ok = ok
        self.detail = detail
