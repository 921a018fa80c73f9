"""Run a config's training job in this process: the worker, complete without any UI.

Headless mode is exactly this, printing progress to stdout; the TUI runs the same thing
in a detached process and attaches to it through the control socket.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType

import yaml

from tuimon.config.schema import Config
from tuimon.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from tuimon.run.output_capture import tee_output
from tuimon.run.run_dir import CONFIG_FILE, OUTPUT_FILE, create_run_dir
from tuimon.training.trainer import Trainer


def run_config(
    config: Config,
    *,
    run_dir: str | Path | None = None,
    quiet: bool = False,
    handle_signals: bool = True,
    capture_output: bool = True,
) -> int:
    """Set up and train; returns the process exit code. Bad setup raises UsageError."""
    trainer = Trainer(config)
    trainer.setup()
    assert config.name is not None
    path = create_run_dir(config.name, run_dir)
    (path / CONFIG_FILE).write_text(
        yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
    )
    interrupted = _SignalStop(trainer)
    # A detached worker's stdout and stderr already are the run's output file.
    with tee_output(path / OUTPUT_FILE) if capture_output else contextlib.nullcontext():
        if handle_signals:
            interrupted.install()
        try:
            status = trainer.run(path, quiet=quiet)
        except KeyboardInterrupt:
            print("tuimon: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception:
            traceback.print_exc()
            return EXIT_FAILED
        finally:
            interrupted.uninstall()
    if interrupted.count:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if status == "failed" else EXIT_OK


class _SignalStop:
    """First SIGINT/SIGTERM: stop at the next step boundary, with a checkpoint. Second:
    abort at once."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.count = 0
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        monitor = self.trainer.monitor
        if monitor is None or self.count > 1:
            raise KeyboardInterrupt
        print(
            f"\ntuimon: {signal.Signals(signum).name}: stopping at the next step (again to abort)",
            file=sys.stderr,
            flush=True,
        )
        monitor.request_stop(source="signal")
