"""A client of a run's control socket: send commands, read replies and live events."""

from __future__ import annotations

import collections
import itertools
import json
import time
from pathlib import Path
from typing import Any

from tuimon.control import protocol
from tuimon.control.socket_path import connect
from tuimon.run.run_dir import CONTROL_SOCKET


class ControlError(RuntimeError):
    """The run refused a command, or could not be reached."""


class ControlClient:
    """One connection to a run. Not thread-safe: use it from one thread."""

    def __init__(self, run_dir: str | Path, timeout: float = 5.0) -> None:
        self.socket_path = Path(run_dir) / CONTROL_SOCKET
        try:
            self._sock = connect(self.socket_path, timeout=timeout)
        except FileNotFoundError:
            raise ControlError(
                f"no control socket at {self.socket_path}: the run has ended or never started"
            ) from None
        except ConnectionRefusedError:
            raise ControlError(
                f"{self.socket_path} refuses connections: the run's worker is gone"
            ) from None
        except OSError as exc:
            raise ControlError(f"cannot connect to {self.socket_path}: {exc}") from None
        self._timeout = timeout
        self._buffer = b""
        self._events: collections.deque[dict[str, Any]] = collections.deque()
        self._ids = itertools.count(1)

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (tests use this to send garbage)."""
        self._sock.sendall(data)

    def request(self, cmd: str, *, source: str = "ctl", **args: Any) -> dict[str, Any]:
        """Send a command and return its reply; raise ControlError if it was refused."""
        request_id = next(self._ids)
        message = {"cmd": cmd, "id": request_id, "source": source, **args}
        self._sock.sendall(protocol.encode(message))
        reply = self.wait_reply(request_id)
        if not reply.get("ok"):
            raise ControlError(str(reply.get("error", "refused")))
        return reply

    def wait_reply(self, request_id: Any = None, timeout: float | None = None) -> dict[str, Any]:
        """The next reply (with `request_id`, if given); events met on the way are kept."""
        deadline = time.monotonic() + (timeout if timeout is not None else self._timeout)
        while True:
            message = self._read_message(deadline)
            if message is None:
                raise ControlError("timed out waiting for the run's reply")
            if message.get("type") == "reply" and (
                request_id is None or message.get("id") in (request_id, None)
            ):
                return message
            self._events.append(message)

    def subscribe(self) -> int:
        """Start the live event stream; returns the last seq already in the event log."""
        return int(self.request("subscribe")["seq"])

    def next_event(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next streamed event, or None on timeout. Raises ControlError on disconnect."""
        if self._events:
            return self._events.popleft()
        deadline = time.monotonic() + (timeout if timeout is not None else self._timeout)
        while True:
            message = self._read_message(deadline)
            if message is None:
                return None
            if message.get("type") != "reply":
                return message

    def _read_message(self, deadline: float) -> dict[str, Any] | None:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as exc:
                raise ControlError(f"connection to the run lost: {exc}") from None
            if not chunk:
                raise ControlError("the run closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


def is_alive(run_dir: str | Path, timeout: float = 1.0) -> bool:
    """Whether a worker answers on the run's socket."""
    try:
        with ControlClient(run_dir, timeout=timeout) as client:
            client.request("ping")
        return True
    except (TimeoutError, ControlError, OSError):
        return False
