"""A client of a run's control socket: send commands, read replies and live events."""

from __future__ import annotations

import collections
import errno
import itertools
import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

from tuimon.control import protocol
from tuimon.control.commands import PING, SUBSCRIBE
from tuimon.control.socket_path import short_address
from tuimon.run.run_dir import CONTROL_SOCKET

# A refused connection is a dead worker's socket file on Linux, but also what a socket
# between its worker's bind() and listen() answers (and, on macOS, a full backlog): it is
# retried this long (at most the timeout) before the worker is called gone. Short, as
# `tuimon attach` asks every killed run's stale socket in turn.
REFUSED_GRACE_SECONDS = 0.1
_RETRY_SECONDS = 0.01


class ControlError(RuntimeError):
    """The run refused a command, or could not be reached."""


class CommandRefused(ControlError):
    """The run answered, and refused the command: the text is its reason."""


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
        except BlockingIOError:
            raise ControlError(
                f"{self.socket_path} did not accept the connection within {timeout:g}s "
                "(the worker is stopped or overwhelmed)"
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
            raise CommandRefused(str(reply.get("error", "refused")))
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
        return int(self.request(SUBSCRIBE)["seq"])

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
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            raise ControlError("the run sent a line that is not a JSON message") from None
        if not isinstance(message, dict):
            raise ControlError("the run sent a line that is not a JSON message")
        return message


def connect(path: Path, timeout: float) -> socket.socket:
    """A socket connected to `path`, waiting up to `timeout` s for the worker to take it.

    A socket with a Python timeout is non-blocking underneath, and a non-blocking AF_UNIX
    connect fails at once with EAGAIN when the listen backlog is full (a burst of clients):
    so connect in blocking mode, bounded by SO_SNDTIMEO (Linux bounds a Unix connect by
    it), and retry EAGAIN, and for a moment ECONNREFUSED, until the deadline.
    """
    deadline = time.monotonic() + timeout
    refused_until = time.monotonic() + min(timeout, REFUSED_GRACE_SECONDS)
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _set_send_timeout(sock, max(deadline - time.monotonic(), 0.001))
            with short_address(path) as address:
                sock.connect(address)
        except OSError as exc:
            sock.close()
            now = time.monotonic()
            busy = exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
            refused = exc.errno == errno.ECONNREFUSED
            if not ((busy and now < deadline) or (refused and now < refused_until)):
                raise
            time.sleep(_RETRY_SECONDS)
            continue
        _set_send_timeout(sock, 0)
        sock.settimeout(timeout)
        return sock


def _set_send_timeout(sock: socket.socket, seconds: float) -> None:
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def is_alive(run_dir: str | Path, timeout: float = 1.0) -> bool:
    """Whether a worker answers on the run's socket."""
    try:
        with ControlClient(run_dir, timeout=timeout) as client:
            client.request(PING)
        return True
    except (TimeoutError, ControlError, OSError):
        return False
