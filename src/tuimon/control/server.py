"""The worker's control server: accepts clients, answers commands, streams events.

Each client gets a reader thread (requests in) and a writer thread fed by a bounded queue
(replies and events out). A slow or stuck client only ever loses its own events — it is told
so with a `lagged` message and can re-read the log — and never slows the training loop.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuimon.control import protocol
from tuimon.control.socket_path import listen
from tuimon.run.event_log import EventLog

# Handles a validated run command; returns the reply's extra fields or raises ProtocolError.
CommandHandler = Callable[[protocol.Request], dict[str, Any]]
StatusProvider = Callable[[], dict[str, Any]]
# The run so far as one compact snapshot (see run/run_state.py), for clients that attach.
HistoryProvider = Callable[[], dict[str, Any]]

CLIENT_QUEUE_SIZE = 20_000


class ControlServer:
    def __init__(
        self,
        path: Path,
        log: EventLog,
        on_command: CommandHandler,
        status: StatusProvider,
        history: HistoryProvider,
    ) -> None:
        self.path = path
        self._log = log
        self._on_command = on_command
        self._status = status
        self._history = history
        self._sock = listen(path)
        self._clients: set[_Client] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._accept_loop, name="tuimon-control", daemon=True
        )
        self._thread.start()

    @property
    def client_count(self) -> int:
        with self._lock:
            return len(self._clients)

    def close(self, drain_timeout: float = 1.0) -> None:
        """Stop accepting, give clients up to `drain_timeout` s to receive what is queued."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.close(drain_timeout)
        self._thread.join(timeout=2)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            client = _Client(conn, self)
            with self._lock:
                self._clients.add(client)
            client.start()

    def forget(self, client: _Client) -> None:
        self._log.unsubscribe(client.push_event)
        with self._lock:
            self._clients.discard(client)

    def handle_line(self, client: _Client, line: bytes) -> None:
        request_id = None
        try:
            request = protocol.parse_request(line)
            request_id = request.id
            if request.cmd == "ping":
                fields: dict[str, Any] = {}
            elif request.cmd == "status":
                fields = {"status": self._status()}
            elif request.cmd == "subscribe":
                fields = {"seq": self._log.subscribe(client.push_event)}
            elif request.cmd == "history":
                fields = {"snapshot": self._history()}
            else:
                fields = self._on_command(request)
            client.send(protocol.reply(request_id, True, **fields))
        except protocol.ProtocolError as exc:
            client.send(protocol.reply(request_id, False, error=str(exc)))
        except Exception as exc:  # the worker must survive anything a client sends
            client.send(protocol.reply(request_id, False, error=f"internal error: {exc!r}"))


_CLOSE = object()


class _Client:
    def __init__(self, conn: socket.socket, server: ControlServer) -> None:
        self._conn = conn
        self._server = server
        self._out: queue.Queue[Any] = queue.Queue(maxsize=CLIENT_QUEUE_SIZE)
        self._lagging = False
        self._dropped = 0
        self._reader = threading.Thread(
            target=self._read_loop, name="tuimon-client-in", daemon=True
        )
        self._writer = threading.Thread(
            target=self._write_loop, name="tuimon-client-out", daemon=True
        )

    def start(self) -> None:
        self._reader.start()
        self._writer.start()

    def send(self, message: dict[str, Any]) -> None:
        """Queue a reply; replies are small and rare, so they wait for room briefly."""
        with contextlib.suppress(queue.Full):
            self._out.put(message, timeout=1.0)

    def push_event(self, event: dict[str, Any]) -> None:
        """Queue an event without ever blocking the event log's writer thread."""
        try:
            if self._lagging:
                # Tell the client once there is room again, then resume the stream.
                self._out.put_nowait(
                    {"type": "lagged", "dropped": self._dropped, "seq": event.get("seq")}
                )
                self._lagging = False
                self._dropped = 0
            self._out.put_nowait(event)
        except queue.Full:
            self._lagging = True
            self._dropped += 1

    def close(self, drain_timeout: float) -> None:
        with contextlib.suppress(queue.Full):
            self._out.put(_CLOSE, timeout=drain_timeout)
        self._writer.join(timeout=drain_timeout)
        with contextlib.suppress(OSError):
            self._conn.shutdown(socket.SHUT_RDWR)
        self._conn.close()

    def _read_loop(self) -> None:
        buffer = b""
        discarding = False
        try:
            while True:
                chunk = self._conn.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if discarding:
                        discarding = False  # the end of an over-long line
                        continue
                    if line.strip():
                        self._server.handle_line(self, line)
                if len(buffer) > protocol.MAX_LINE_BYTES:
                    self.send(
                        protocol.reply(
                            None,
                            False,
                            error=(f"message longer than {protocol.MAX_LINE_BYTES} bytes"),
                        )
                    )
                    buffer = b""
                    discarding = True
        except OSError:
            pass
        finally:
            self._server.forget(self)
            with contextlib.suppress(queue.Full):
                self._out.put_nowait(_CLOSE)

    def _write_loop(self) -> None:
        try:
            while True:
                message = self._out.get()
                if message is _CLOSE:
                    break
                self._conn.sendall(protocol.encode(message))
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_WR)
