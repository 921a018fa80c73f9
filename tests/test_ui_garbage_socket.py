"""A run's socket that answers with garbage: the app says it is disconnected, shows the
log's history, and keeps trying; its connection thread used to die on the ValueError and
leave the app "starting" forever."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from tuimon.run.run_dir import CONTROL_SOCKET
from tuimon.ui import connection
from tuimon.ui.app import TuimonApp

from conftest import until


def serve_garbage(path, stop: threading.Event) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)
    server.settimeout(0.05)

    def serve() -> None:
        with server:
            while not stop.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                with client:
                    client.sendall(b"this is not json\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


async def test_a_socket_that_answers_garbage_leaves_the_app_disconnected_not_stuck(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(connection, "RETRY_SECONDS", 0.05)
    now, host = time.time(), socket.gethostname()  # this process: an alive "worker"
    start = {"type": "start", "seq": 1, "time": now, "name": "odd", "pid": os.getpid()}
    start["host"] = host
    step = {"type": "step", "seq": 2, "time": now + 1, "step": 7, "loss": 1.0}
    (tmp_path / "events.jsonl").write_text(f"{json.dumps(start)}\n{json.dumps(step)}\n")
    stop = threading.Event()
    server = serve_garbage(tmp_path / CONTROL_SOCKET, stop)
    try:
        app = TuimonApp(tmp_path, fps=20)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.connection_status == "disconnected")
            assert app.shown_status == "disconnected" and app.state.step == 7
            tries = app._connection.attempts
            await until(pilot, lambda: app._connection.attempts > tries + 3)  # still trying
    finally:
        stop.set()
        server.join(timeout=10)
