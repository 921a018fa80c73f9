"""A full disk loses events, not the run: the log's writer survives ENOSPC, says that it is
not recording (to listeners and `ctl status`), retries, and records how much it dropped;
`output.log` capture never raises. First on a real tmpfs that fills up (as root), then
with ENOSPC injected into the writer's file (anywhere)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tuimon.control.client import ControlClient
from tuimon.headless.console import ConsoleReporter
from tuimon.run import event_log, output_capture
from tuimon.run.event_log import EventLog
from tuimon.run.log_reader import read_events
from tuimon.run.output_capture import tee_output

from conftest import small_tmpfs, worker_env

NO_SPACE = os.strerror(errno.ENOSPC).lower()  # "no space left on device"


def poll(predicate: Any, what: str, timeout: float = 60.0) -> Any:
    """The first truthy value of `predicate()`, polled until `timeout` (then fail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


# -- a real filesystem that fills up ---------------------------------------------------------

# Paced to at most ~1000 steps/s (~250 KB/s of log), so that once the filler is gone the
# log cannot fill the 4 MiB disk again before the test ends the run.
TRAIN_SCRIPT = """
import sys
import time
from pathlib import Path

import torch
import tuimon

run_dir, finish = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
with tuimon.Monitor(model, opt, run_dir=run_dir, name="full") as mon:
    while not finish.exists():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss, inputs=x)
        time.sleep(0.001)
print("training done")
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted in tmp_path, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    with small_tmpfs(mount, "size=4m"):
        yield mount


def fill(disk: Path) -> Path:
    """Write a file until the filesystem refuses more; returns it."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as file:
        try:
            while True:
                file.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        # The last partial chunk's pages too: whatever still fits, byte by byte in pages.
        for size in (4096, 512, 1):
            try:
                while True:
                    file.write(chunk[:size])
            except OSError:
                pass
    return filler


def log_status(run_dir: Path) -> dict[str, Any] | None:
    try:
        with ControlClient(run_dir, timeout=5) as client:
            return client.request("status")["status"]
    except Exception:
        return None


def test_a_run_survives_a_full_disk_and_logs_what_it_dropped(small_disk, tmp_path):
    run_dir = small_disk / "run"
    finish = tmp_path / "finish"
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script), str(run_dir), str(finish)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=worker_env(),
        cwd=tmp_path,
    )
    try:
        events = run_dir / "events.jsonl"
        poll(
            lambda: events.exists() and any(e["type"] == "step" for e in read_events(events)),
            "the first steps in the log",
        )
        assert log_status(run_dir)["log"]["recording"] is True
        filler = fill(small_disk)

        # Training goes on, unrecorded, and the control socket says so.
        full = poll(
            lambda: (s := log_status(run_dir)) and not s["log"]["recording"] and s,
            "ctl status to report that events are not recorded",
        )
        assert full["log"]["error"] == NO_SPACE
        poll(
            lambda: (s := log_status(run_dir)) and s["step"] > full["step"] + 20,
            "training to go on while the disk is full",
        )
        assert process.poll() is None

        filler.unlink()
        poll(
            lambda: any(e.get("dropped_events") for e in read_events(events)),
            "the log to record what was dropped",
        )
        assert log_status(run_dir)["log"]["recording"] is True
        finish.touch()
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 0, err
    assert "Traceback" not in err, err
    assert "training done" in out
    # The headless output said it loudly when it happened.
    assert f"events are not being recorded: cannot write {events}: {NO_SPACE}" in out
    logged = list(read_events(events))
    assert logged[-1]["type"] == "end" and logged[-1]["status"] == "completed"
    [dropped] = [e for e in logged if e.get("dropped_events")]
    assert dropped["type"] == "message" and dropped["level"] == "warning"
    assert dropped["dropped_events"] > 0 and NO_SPACE in dropped["text"]
    first, last = dropped["dropped_steps"]
    steps = [e["step"] for e in logged if e["type"] == "step"]
    assert steps == sorted(steps)
    assert not set(range(first, last + 1)) & set(steps)  # exactly those steps are missing
    assert steps[0] == 1 and steps[-1] == logged[-1]["step"]


# -- ENOSPC injected into the writer's file ----------------------------------------------


class FillingFile:
    """The log's file on a disk that can be filled and emptied: when full, one write()
    stores a few bytes (a torn line, as a real partial write does), later ones fail."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.full = False
        self.refused = 0
        self._torn = False

    def write(self, data: Any) -> int:
        if not self.full:
            return self.real.write(data)
        if not self._torn:
            self._torn = True
            return self.real.write(data[:10])
        self.refused += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self) -> None:
        self.real.flush()

    def close(self) -> None:
        self.real.close()


def steps(log: EventLog, first: int, last: int) -> None:
    for step in range(first, last + 1):
        log.emit({"type": "step", "step": step})


def test_injected_enospc_events_reach_listeners_and_the_loss_is_recorded(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    log = EventLog(path, flush_interval=0.05)
    disk = FillingFile(log._file)
    log._file = disk
    seen: list[dict[str, Any]] = []
    log.subscribe(seen.append)
    steps(log, 1, 5)
    assert log.flush()
    assert log.health() == {"recording": True, "dropped": 0, "error": None, "since": None}

    disk.full = True
    monkeypatch.setattr(event_log, "RETRY_INTERVAL", 3600.0, raising=False)  # no retry in this part
    for first in range(6, 21, 5):  # three batches
        steps(log, first, first + 4)
        assert log.flush()  # a barrier is released even though the write failed
    health = log.health()
    assert health["recording"] is False and health["error"] == NO_SPACE
    assert health["dropped"] == 15 and health["since"] is not None
    assert disk.refused == 1  # later batches did not hammer the full disk
    # The listeners (UI, console, clients) got every step, and were told.
    assert [e["step"] for e in seen if e["type"] == "step"] == list(range(1, 21))
    [alarm] = [e for e in seen if e["type"] == "message"]
    assert alarm["level"] == "error" and "seq" not in alarm  # it is not in the file
    assert f"events are not being recorded: cannot write {path}: {NO_SPACE}" in alarm["text"]

    disk.full = False
    monkeypatch.setattr(event_log, "RETRY_INTERVAL", 0.0, raising=False)
    steps(log, 21, 22)
    log.close()

    assert log.health()["recording"] is True and log.health()["dropped"] == 15
    logged = list(read_events(path))  # the torn line is skipped
    assert [e["step"] for e in logged if e["type"] == "step"] == [1, 2, 3, 4, 5, 21, 22]
    assert [e["seq"] for e in logged] == sorted(e["seq"] for e in logged)
    [note] = [e for e in logged if e["type"] == "message"]
    assert note["level"] == "warning" and note["dropped_events"] == 15
    assert note["dropped_steps"] == [6, 20] and note["step"] == 20
    assert note["text"].startswith("15 events were not recorded (steps 6-20, ")
    assert NO_SPACE in note["text"]
    torn = b'{"type":"s'  # the first 10 bytes of step 6
    assert path.read_bytes().split(b"\n").count(torn) == 1  # the torn line stands alone


def close_in_one_batch(log: EventLog, disk: FillingFile, *events: dict[str, Any]) -> None:
    """Fill the disk, emit `events` and close, with the writer held so that it takes them
    all, with the close, in one last batch (as a Monitor's close does after its flush)."""
    entered, release = threading.Event(), threading.Event()

    def hold(event: dict[str, Any]) -> None:
        if event["type"] == "hold":
            entered.set()
            release.wait(30)

    log.subscribe(hold)
    log.emit({"type": "hold"})
    assert entered.wait(30)
    disk.full = True
    for event in events:
        log.emit(event)
    closing = threading.Thread(target=log.close)
    closing.start()
    poll(lambda: log._queue.qsize() == len(events) + 1, "close() to queue its stop")
    release.set()
    closing.join(60)
    assert not closing.is_alive()


def test_close_on_a_full_disk_does_not_raise_and_says_what_was_lost(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(event_log, "CLOSE_RETRY_PAUSE", 0.01, raising=False)
    path = tmp_path / "events.jsonl"
    log = EventLog(path, flush_interval=0.05)
    disk = FillingFile(log._file)
    log._file = disk
    seen: list[dict[str, Any]] = []
    log.subscribe(seen.append)
    steps(log, 1, 3)
    assert log.flush()
    disk.full = True
    steps(log, 4, 6)
    assert log.flush()
    refused = disk.refused
    close_in_one_batch(log, disk, {"type": "end", "status": "completed", "step": 6})

    assert seen[-1]["type"] == "end"
    assert disk.refused - refused == event_log.CLOSE_TRIES  # the last batch, retried briefly
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # Steps 4-6, the test's hold event and `end`.
    assert err.strip().splitlines() == [
        f"tuimon: 5 events, steps 4-6 (the last ones of the run) could not be written to "
        f"{path}: {NO_SPACE}"
    ]
    assert [e["step"] for e in read_events(path) if e["type"] == "step"] == [1, 2, 3]


def test_the_last_batch_is_written_when_space_returns_during_close(tmp_path, monkeypatch):
    monkeypatch.setattr(event_log, "CLOSE_RETRY_PAUSE", 0.01, raising=False)
    path = tmp_path / "events.jsonl"
    log = EventLog(path, flush_interval=0.05)
    disk = FillingFile(log._file)
    log._file = disk
    original = disk.write

    def frees_space_after_two_refusals(data: Any) -> int:
        if disk.refused == 2:
            disk.full = False
        return original(data)

    disk.write = frees_space_after_two_refusals  # type: ignore[method-assign]
    log.emit({"type": "step", "step": 1})
    assert log.flush()
    close_in_one_batch(
        log, disk, {"type": "step", "step": 2}, {"type": "end", "status": "completed", "step": 2}
    )
    logged = list(read_events(path))
    assert [(e["type"], e.get("step")) for e in logged] == [
        ("step", 1),
        ("hold", None),
        ("step", 2),
        ("end", 2),
    ]


# -- output.log --------------------------------------------------------------------------

FULL_DEVICE = Path("/dev/full")  # every write to it fails with ENOSPC


@pytest.fixture
def full_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """output.log's file is /dev/full (tee_output itself refuses a device: it is given one)."""
    if not FULL_DEVICE.exists():
        pytest.skip("no /dev/full on this system")

    def open_full(path: Path, *, binary: bool, buffering: int = -1) -> Any:
        return FULL_DEVICE.open("ab" if binary else "a", buffering=buffering)

    monkeypatch.setattr(output_capture, "open_private_append", open_full)


def test_output_capture_on_a_full_disk_never_raises(full_copy, capfd):
    with tee_output(Path("output.log")):
        print("line one")
        print("line two", file=sys.stderr)
        sys.stdout.flush()
        print("unfinished", end="")  # buffered in the copy until its close at exit
    out, err = capfd.readouterr()
    assert out == "line one\nunfinished" and err == "line two\n"


def test_output_capture_failing_only_at_exit_never_raises(full_copy, capfd):
    with tee_output(Path("output.log")):
        sys.stdout.write("no newline, so nothing is written until the copy is closed")
    assert capfd.readouterr().out.startswith("no newline")


def test_output_capture_keeps_writing_the_copy_while_it_works(tmp_path, capfd):
    copy = tmp_path / "output.log"
    with tee_output(copy):
        print("hello")
        print("oops", file=sys.stderr)
    assert copy.read_text() == "hello\noops\n"
    assert capfd.readouterr() == ("hello\n", "oops\n")


def test_the_writer_outlives_a_console_and_stderr_on_the_full_disk(tmp_path, monkeypatch):
    """A detached worker's stdout and stderr are output.log: on a full disk the console's
    print fails, and so does printing that failure; the writer must outlive both."""
    if not FULL_DEVICE.exists():
        pytest.skip("no /dev/full on this system")
    full_out = FULL_DEVICE.open("a", buffering=1)
    monkeypatch.setattr(sys, "stdout", full_out)
    monkeypatch.setattr(sys, "stderr", full_out)
    log = EventLog(tmp_path / "events.jsonl", flush_interval=0.05)
    log.subscribe(ConsoleReporter("full", print_every=0.0))
    log.emit({"type": "message", "step": 0, "level": "info", "text": "printed: fails"})
    assert log.flush()
    steps(log, 1, 3)
    log.close()
    monkeypatch.undo()
    with contextlib.suppress(OSError):
        full_out.close()
    assert [e.get("step") for e in read_events(tmp_path / "events.jsonl")] == [0, 1, 2, 3]
