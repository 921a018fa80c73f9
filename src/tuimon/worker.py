"""Run a config's training job in this process: the worker, complete without any UI.

Headless mode is exactly this, printing progress to stdout; the TUI runs the same thing
in a detached process and attaches to it through the control socket.

A job of several processes runs this module in each of them under torchrun
(`python -P -m tuimon.worker CONFIG --run-dir DIR ...`, built by tuimon/torchrun_args.py):
rank 0 takes the run directory the launcher prepared; the other ranks leave the choice to
their Monitor, which follows rank 0's.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import yaml

from tuimon.config.schema import Config
from tuimon.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError
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
    """Set up and train; returns the process exit code. Bad setup raises UsageError.

    In a torchrun job only rank 0 makes the run directory, writes its config and copies
    its output there; the other ranks are quiet (rank 0 prints the job's progress) and
    their Monitor finds the job's directory through rank 0.
    """
    trainer = Trainer(config)
    trainer.setup()
    assert config.name is not None
    if trainer.place is not None and not trainer.place.is_zero:
        ignore_hangup()
        return _finish(trainer, None, quiet=True, handle_signals=handle_signals)
    path = create_run_dir(config.name, run_dir)
    # Atomically, never through a symlink: the run directory may hold an older config.yaml.
    write_private_file(
        path / CONFIG_FILE, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    )
    ignore_hangup()  # the run has a log now: it outlives a dropped SSH session
    # A detached worker's stdout and stderr already are the run's output file.
    with tee_output(path / OUTPUT_FILE) if capture_output else contextlib.nullcontext():
        return _finish(trainer, path, quiet=quiet, handle_signals=handle_signals)


def _finish(trainer: Trainer, path: Path | None, *, quiet: bool, handle_signals: bool) -> int:
    """Train (set up already) and turn how it ended into the exit code."""
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


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tuimon.worker CONFIG [--run-dir DIR] [--set K=V ...]`: one process of a
    config's job, as torchrun starts it; never launches anything itself."""
    parser = argparse.ArgumentParser(
        prog="python -m tuimon.worker",
        description="One process of a config's training job (started by tuimon under "
        "torchrun; use `tuimon CONFIG` yourself).",
    )
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--run-dir")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--detached", action="store_true", help="output already goes to the run's output file"
    )
    options = parser.parse_args(argv)
    try:
        from tuimon.training.build_checks import load_run_config

        config = load_run_config(options.config, options.overrides)
        return run_config(
            config,
            run_dir=options.run_dir,
            quiet=options.quiet,
            capture_output=not options.detached,
        )
    except UsageError as exc:
        from tuimon.terminal_text import printable

        print(f"tuimon: error: {printable(exc)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
