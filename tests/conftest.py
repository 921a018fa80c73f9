"""Shared fixtures: small real configs and real worker processes with their sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tuimon.control.client import ControlClient
from tuimon.control.commands import PAUSE, SUBSCRIBE
from tuimon.run.events import CONTROL
from tuimon.run.log_reader import read_events

TESTS_DIR = Path(__file__).parent
REPO = TESTS_DIR.parent

# A run that never ends by itself (tests stop it) and steps fast on a CPU.
ENDLESS_CONFIG = """\
name: endless
model:
  name: mlp
  hidden: [32]
data:
  name: synthetic
  synthetic: {num_samples: 512, channels: 1, image_size: 8, num_classes: 4}
  val_split: 0.25
optimizer:
  name: SGD
  lr: 0.1
  momentum: 0.9
train:
  max_steps: 100000000
  batch_size: 32
  seed: 0
monitor:
  log_every: 1
  system_interval: 0.1
  print_every: 0.5
"""


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config (default: ENDLESS_CONFIG) into tmp_path and return its path."""

    def write(text: str = ENDLESS_CONFIG, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@contextlib.contextmanager
def small_tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A real filesystem that fills up: a tmpfs (`options`: e.g. "size=4m") mounted on the
    existing directory `mount`, unmounted afterwards. Skips the test, saying why, where it
    cannot be mounted (not root, no mount); injected-ENOSPC tests cover that case."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the injected-ENOSPC tests still run)")
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        pytest.skip("no mount command here (the injected-ENOSPC tests still run)")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # Custom models used by tests live in tests/; the worker imports them by name.
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    return env


def run_tuimon(
    *args: str | Path, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m tuimon ARGS` to its end, as a user would run it, tests' models importable."""
    return subprocess.run(
        [sys.executable, "-m", "tuimon", *map(str, args)],
        capture_output=True,
        text=True,
        env=worker_env(),
        cwd=cwd,
        timeout=timeout,
    )


class Worker:
    """A `tuimon CONFIG --headless` process and its run directory."""

    def __init__(self, process: subprocess.Popen[str], run_dir: Path) -> None:
        self.process = process
        self.run_dir = run_dir

    @property
    def events_path(self) -> Path:
        return self.run_dir / "events.jsonl"

    def events(self) -> list[dict[str, Any]]:
        return list(read_events(self.events_path))

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the control socket answers (or the process dies: then fail with its output)."""
        deadline = time.monotonic() + timeout
        socket_path = self.run_dir / "control.sock"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out, err = self.process.communicate()
                pytest.fail(f"worker exited {self.process.returncode}:\n{out}\n{err}")
            if socket_path.exists():
                try:
                    with ControlClient(self.run_dir, timeout=2) as client:
                        client.request("ping")
                    return
                except Exception:
                    pass
            time.sleep(0.05)
        pytest.fail("worker's control socket never answered")

    def client(self) -> ControlClient:
        return ControlClient(self.run_dir, timeout=30)

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            pytest.fail(f"worker did not exit:\n{out}\n{err}")

    def output(self) -> tuple[str, str]:
        return self.process.communicate(timeout=30)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(config: Path, *args: str, run_dir: Path | None = None, ready: bool = True) -> Worker:
        worker = launch_worker(config, run_dir or tmp_path / f"run{len(started)}", args, tmp_path)
        started.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    yield start
    kill_workers(started)


def launch_worker(config: Path, run_dir: Path, args: Sequence[str], cwd: Path) -> Worker:
    """A headless `tuimon CONFIG` worker logging into `run_dir`, its output piped."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuimon",
            str(config),
            "--headless",
            "--run-dir",
            str(run_dir),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=worker_env(),
        cwd=cwd,
    )
    return Worker(process, run_dir)


def kill_workers(workers: Sequence[Worker]) -> None:
    """Every worker still running killed, and its pipes closed."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait(timeout=30)
        for stream in (worker.process.stdout, worker.process.stderr):
            if stream:
                stream.close()


async def until(pilot: Any, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    """Let a Textual app under Pilot run until `predicate` holds (fails after `timeout`)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await pilot.pause(0.05)


def wait_for(
    client: ControlClient, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read streamed events until one matches; returns it and every event before it."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        event = client.next_event(timeout=remaining)
        if event is None:
            break
        if predicate(event):
            return event, seen
        seen.append(event)
    types = [e.get("type") for e in seen[-20:]]
    pytest.fail(f"no matching event within {timeout}s; last seen: {types}")


class SteerWhilePaused:
    """Pause a run from the training thread's own hook; a second client, subscribed to
    the run's events, sends `commands` once the pause is applied (the training thread is
    then blocked inside its step) — e.g. a checkpoint, then resume. `join()` waits for it
    and raises what went wrong there, so nothing is lost in the thread."""

    def __init__(self, run_dir: Path, *commands: str) -> None:
        watcher = ControlClient(run_dir, timeout=30)
        watcher.request(SUBSCRIBE)
        self.errors: list[BaseException] = []

        def send_once_paused() -> None:
            try:
                with watcher:
                    wait_for(watcher, lambda e: e["type"] == CONTROL and e["command"] == PAUSE)
                with ControlClient(run_dir, timeout=30) as client:
                    for command in commands:  # in order, all while paused
                        client.request(command)
            except BaseException as exc:
                self.errors.append(exc)

        self.thread = threading.Thread(target=send_once_paused, daemon=True)
        self.thread.start()
        with ControlClient(run_dir, timeout=30) as client:
            client.request(PAUSE)

    def join(self) -> None:
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the commands for the paused run were never sent"
        if self.errors:
            raise self.errors[0]


@pytest.fixture
def cpu_burner() -> Iterator[None]:
    """Two busy-looping processes beside the test, as on a shared CI machine that is busy.

    Each one ends by itself after ten minutes even if the test runner dies; the fixture
    kills them when the test ends.
    """
    loop = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end: pass\n"
    burners = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(2)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(timeout=30)


class SharedWorkers:
    """Workers kept for a whole module: tests that only read or steer a run share one
    process (a worker start is a torch import, seconds of CPU) instead of one each.

    `live(config_text)` is the module's running worker of that config, or a new one when
    the last has ended (a test that stops or kills it ends it for the next one), so every
    test still works alone or in any selection.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[Worker] = []
        self.current: dict[str, Worker] = {}

    def live(self, text: str = ENDLESS_CONFIG, *args: str) -> Worker:
        key = "\n".join([text, *args])
        worker = self.current.get(key)
        if worker is not None and worker.process.poll() is None:
            return worker
        number = len(self.started)
        config = self.root / f"config{number}.yaml"
        config.write_text(text, encoding="utf-8")
        worker = launch_worker(config, self.root / f"run{number}", args, self.root)
        self.started.append(worker)
        self.current[key] = worker
        worker.wait_ready()
        return worker

    def close(self) -> None:
        kill_workers(self.started)


@pytest.fixture(scope="module")
def shared_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedWorkers]:
    """The module's shared workers (see SharedWorkers), killed when the module ends."""
    workers = SharedWorkers(tmp_path_factory.mktemp("shared"))
    yield workers
    workers.close()
