"""A real terminal for end-to-end tests: a private tmux server that runs `tuimon`, takes
keys and shows its screen. Shared by tests/test_tmux.py and tests/test_tmux_frameworks.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tuimon.control.client import is_alive

from conftest import run_tuimon, worker_env

TMUX = shutil.which("tmux")
DEADLINE = 120.0  # seconds a screen may take to match: generous, for a busy 2-core machine


class Tmux:
    """A private tmux server (its own socket), so tests never touch the user's sessions."""

    def __init__(self, name: str, cwd: Path) -> None:
        self.socket = f"tuimon-test-{os.getpid()}-{name}"
        self.cwd = cwd

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TMUX or "tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env=worker_env(),
            timeout=30,
        )

    def start(self, session: str, command: str, width: int = 120, height: int = 40) -> None:
        done = self.run(
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            str(width),
            "-y",
            str(height),
            "-c",
            str(self.cwd),
            command,
        )
        assert done.returncode == 0, done.stderr

    def keys(self, session: str, *keys: str) -> None:
        done = self.run("send-keys", "-t", session, *keys)
        assert done.returncode == 0, done.stderr

    def screen(self, session: str) -> str:
        return self.run("capture-pane", "-p", "-t", session).stdout

    def wait_for(
        self, session: str, predicate: Callable[[str], bool], timeout: float = DEADLINE
    ) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen(session)
            if predicate(text):
                return text
            time.sleep(0.2)
        pytest.fail(f"screen never matched; last screen:\n{self.screen(session)}")

    def kill_server(self) -> None:
        self.run("kill-server")


def tmux_server(name: str, tmp_path: Path) -> Iterator[Tmux]:
    """A fixture's body: the server, then no tmux and no worker left behind."""
    if TMUX is None:
        pytest.fail("tmux is not installed (.ci/run installs it): apt-get install tmux")
    server = Tmux(name, tmp_path)
    yield server
    server.kill_server()
    for run in (tmp_path / "runs").glob("*"):  # never leave a worker behind
        if is_alive(run):
            run_tuimon("ctl", run, "stop", timeout=60)
