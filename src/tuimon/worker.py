"""Run a config's training job in this process: the worker, complete without any UI.

Headless mode is exactly this, printing progress to stdout; the TUI runs the same thing
in a detached process and attaches to it through the control socket.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from pathlib import Path

import yaml

from tuimon.config.schema import Config
from tuimon.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from tuimon.monitor.stop_signals import ignore_hangup
from tuimon.run.events import FAILED
from tuimon.run.output_capture import tee_output
from tuimon.run.private_files import write_private_file
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
    # Atomically, never through a symlink: the run directory may hold an older config.yaml.
    write_private_file(
        path / CONFIG_FILE, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    )
    ignore_hangup()  # the run has a log now: it outlives a dropped SSH session
    # A detached worker's stdout and stderr already are the run's output file.
    with tee_output(path / OUTPUT_FILE) if capture_output else contextlib.nullcontext():
        try:
            # The Monitor takes SIGINT/SIGTERM (monitor/stop_signals.py): first a stop at
            # the next step boundary with a checkpoint, then an abort.
            status = trainer.run(path, quiet=quiet, take_signals=handle_signals)
        except KeyboardInterrupt:
            print("tuimon: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception:
            traceback.print_exc()
            return EXIT_FAILED
    if trainer.monitor is not None and trainer.monitor.signals_received:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if status == FAILED else EXIT_OK
