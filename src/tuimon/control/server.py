"""The worker's control server: accepts clients, answers commands, streams events.

Each client gets a reader thread (requests in) and a writer thread fed by a queue of
encoded lines (replies and events out). The queue is bounded in bytes, not messages: a
client that does not read what it asked for (200 `history` requests of 0.5 MiB each, say)
or falls too far behind the event stream is dropped, its queue freed, and it must
reconnect (the UI does, and re-reads the history). So a client only ever costs the worker
a bounded amount of memory and never slows the training loop or the event log's writer.

A connection holds at most one subscription: a second `subscribe` is refused with an
error (it would otherwise add a second listener that outlives the connection).
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuimon.control import protocol
from tuimon.control.commands import HISTORY, PING, STATUS, SUBSCRIBE
from tuimon.control.socket_path import listen
from tuimon.run.event_log import EventLog

# Handles a validated run command; returns the reply's extra fields or raises ProtocolError.
CommandHandler = Callable[[protocol.Request], dict[str, Any]]
StatusProvider = Callable[[], dict[str, Any]]
# The run so far as one compact snapshot (see run/run_state.py), for clients that attach.
HistoryProvider = Callable[[], dict[str, Any]]

# What may wait for one client: past this it is not reading, and is dropped. Tens of
# thousands of step events, or a run's history several times over.
CLIENT_QUEUE_BYTES = 8 * 1024 * 1024
# Clients that may wait to be accepted at once (a burst of `tuimon ctl`s and UIs); the
# kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 128
# How long a closing client's writer may take to send what is queued.
DRAIN_SECONDS = 2.0


class ControlServer:
    def __init__(
        self,
        path: Path,
        log: EventLog,
        on_command: CommandHandler,
        status: StatusProvider,
        history: HistoryProvider,
        client_queue_bytes: int = CLIENT_QUEUE_BYTES,
    ) -> None:
        self.path = path
        self._log = log
        self._on_command = on_command
        self._status = status
        self._history = history
        self.client_queue_bytes = client_queue_bytes
        self._sock = listen(path, LISTEN_BACKLOG)
        self._clients: set[_Client] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # The event being fanned out and its line: encoded once for all subscribers.
        self._last_event: dict[str, Any] | None = None
        self._last_line = b""
        self._thread = threading.Thread(
            target=self._accept_loop, name="tuimon-control", daemon=True
        )
        self._thread.start()

    @property
    def client_count(self) -> int:
        with self._lock:
            return len(self._clients)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in all clients' queues (what clients cost the worker's memory)."""
        with self._lock:
            clients = list(self._clients)
        return sum(client.queued_bytes for client in clients)

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
        # One drain time for all: every writer starts its last sends at once.
        for client in clients:
            client.stop_queueing()
        deadline = time.monotonic() + drain_timeout
        for client in clients:
            client.close(max(deadline - time.monotonic(), 0.0))
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
        """A client is gone: its subscription (if any) ends with it."""
        client.unsubscribe(self._log)
        with self._lock:
            self._clients.discard(client)

    def encode_event(self, event: dict[str, Any]) -> bytes | None:
        """An event's line; the event log calls every listener with one event before the
        next, so one remembered event encodes it once however many clients subscribe."""
        if event is not self._last_event:
            try:
                line = protocol.encode(event)
            except (TypeError, ValueError, RecursionError):
                return None  # the log writes a log_error for it; clients skip it
            self._last_event, self._last_line = event, line
        return self._last_line

    def handle_line(self, client: _Client, line: bytes) -> None:
        request_id = None
        try:
            request = protocol.parse_request(line)
            request_id = request.id
            if request.cmd == PING:
                fields: dict[str, Any] = {}
            elif request.cmd == STATUS:
                fields = {"status": self._status()}
            elif request.cmd == SUBSCRIBE:
                fields = {"seq": client.subscribe(self._log)}
            elif request.cmd == HISTORY:
                fields = {"snapshot": self._history()}
            else:
                fields = self._on_command(request)
            client.send(protocol.reply(request_id, True, **fields))
        except protocol.ProtocolError as exc:
            if request_id is None:
                request_id = protocol.request_id_of(line)
            client.send(protocol.reply(request_id, False, error=str(exc)))
        except Exception as exc:  # the worker must survive anything a client sends
            client.send(protocol.reply(request_id, False, error=f"internal error: {exc!r}"))


class _Client:
    def __init__(self, conn: socket.socket, server: ControlServer) -> None:
        self._conn = conn
        self._server = server
        self._limit = server.client_queue_bytes
        self._out: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._ready = threading.Condition()
        self._closing = False
        self._dropped = False
        self._subscribed_at: int | None = None
        self._close_lock = threading.Lock()
        self._reader = threading.Thread(
            target=self._read_loop, name="tuimon-client-in", daemon=True
        )
        self._writer = threading.Thread(
            target=self._write_loop, name="tuimon-client-out", daemon=True
        )

    @property
    def queued_bytes(self) -> int:
        return self._queued

    def start(self) -> None:
        self._reader.start()
        self._writer.start()

    def subscribe(self, log: EventLog) -> int:
        """Start this connection's event stream; a second one is refused."""
        if self._subscribed_at is not None:
            raise protocol.ProtocolError(
                "this connection is already subscribed (since seq "
                f"{self._subscribed_at}): one subscription per connection"
            )
        self._subscribed_at = log.subscribe(self.push_event)
        return self._subscribed_at

    def unsubscribe(self, log: EventLog) -> None:
        if self._subscribed_at is not None:
            log.unsubscribe(self.push_event)

    def send(self, message: dict[str, Any]) -> None:
        """Queue a reply (never blocks: a client that does not read is dropped)."""
        try:
            line = protocol.encode(message)
        except (TypeError, ValueError, RecursionError) as exc:
            line = protocol.encode(
                protocol.reply(message.get("id"), False, error=f"reply not encodable: {exc}")
            )
        self._enqueue(line)

    def push_event(self, event: dict[str, Any]) -> None:
        """Queue an event without ever blocking the event log's writer thread."""
        line = self._server.encode_event(event)
        if line is not None:
            self._enqueue(line)

    def _enqueue(self, line: bytes) -> None:
        with self._ready:
            if self._dropped or self._closing:
                return
            if self._queued >= self._limit:
                self._drop()
                return
            self._out.append(line)
            self._queued += len(line)
            self._ready.notify()

    def _drop(self) -> None:
        """Free the queue and close the connection (called with `_ready` held). The reader
        then sees the end of the stream and forgets the client: unsubscribing here, on the
        event log's writer thread inside its listener call, would deadlock."""
        self._dropped = True
        self._out.clear()
        self._queued = 0
        self._ready.notify_all()
        with contextlib.suppress(OSError):
            self._conn.shutdown(socket.SHUT_RDWR)  # wakes a reader in recv, a writer in send

    def stop_queueing(self) -> None:
        """Queue nothing more; the writer sends what is queued, then ends."""
        with self._ready:
            self._closing = True
            self._ready.notify_all()

    def close(self, drain_timeout: float) -> None:
        """Let the writer send what is queued (up to `drain_timeout` s), then close."""
        self.stop_queueing()
        if threading.current_thread() is not self._writer:
            self._writer.join(timeout=drain_timeout)
        with self._close_lock:
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_RDWR)
            self._conn.close()

    def _read_loop(self) -> None:
        buffer = b""
        discarding = False  # inside a line already refused as too long
        try:
            while not self._dropped:
                chunk = self._conn.recv(65536)
                if not chunk:
                    break
                if discarding:
                    end = chunk.find(b"\n")
                    if end < 0:
                        continue
                    chunk = chunk[end + 1 :]
                    discarding = False
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if self._dropped:
                        break
                    if line.strip():
                        self._server.handle_line(self, line)
                if len(buffer) > protocol.MAX_LINE_BYTES:
                    # One error for the line, however long; the rest of it is skipped.
                    self.send(
                        protocol.reply(
                            None,
                            False,
                            error=(
                                f"message longer than {protocol.MAX_LINE_BYTES} bytes; "
                                "the rest of the line is skipped"
                            ),
                        )
                    )
                    buffer = b""
                    discarding = True
        except OSError:
            pass
        finally:
            self._server.forget(self)
            self.close(DRAIN_SECONDS)

    def _write_loop(self) -> None:
        try:
            while True:
                with self._ready:
                    while not self._out and not self._closing and not self._dropped:
                        self._ready.wait()
                    if not self._out:
                        break  # closing (or dropped) with nothing left to send
                    line = self._out.popleft()
                    self._queued -= len(line)
                self._conn.sendall(line)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_WR)
