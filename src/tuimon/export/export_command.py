"""`tuimon export RUN_DIR --csv [FILE] | --tensorboard DIR`: a run's scalars for other tools.

The log is streamed (never held): the CSV needs two passes (its header names every column),
TensorBoard one; with both asked for, the CSV's second pass writes both. Outputs are written
under a temporary name and put in place only when complete (`output_file.py`). Damaged lines
are skipped, counted and said on stderr; the rest is exported (exit 0). Exit 2 for bad usage
(nothing to export, not a run, an output that exists without --force, no tensorboard
package), 1 when an output cannot be written.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import stat
import sys
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol

from tuimon.errors import EXIT_FAILED, EXIT_OK, UsageError
from tuimon.export.csv_export import MAX_COLUMNS, ColumnScan, CsvRows, scan_columns
from tuimon.export.output_file import OutputExists, check_free, output_file
from tuimon.export.progress_bar import ProgressBar
from tuimon.export.scalar_stream import ScalarEvent, ScalarStream
from tuimon.export.tensorboard_export import (
    FILE_PREFIX,
    MAX_TAGS,
    TensorBoardEvents,
    event_file_name,
    load_protos,
)
from tuimon.run.run_dir import EVENTS_FILE
from tuimon.terminal_text import printable

STDOUT: Final = "-"
CSV_SUFFIX: Final = ".csv"
PROGRESS_EVERY = 1024  # events between progress updates
PROG: Final = "tuimon export"

DESCRIPTION = """\
Export every scalar of a run (step fields, per-layer values, LR groups, logged metrics)
for other tools, streaming its log (a log of any length, in bounded memory).

  --csv [FILE]       one row per step: step, epoch, time, elapsed, then a column per
                     scalar; metrics on their step's row. FILE defaults to RUN_NAME.csv
                     here; - writes to stdout.
  --tensorboard DIR  TensorBoard event files in DIR/RUN_NAME/ (tensorboard --logdir DIR
                     shows every run exported there); needs pip install "tuimon[tensorboard]".

Existing outputs are not replaced without --force. Damaged log lines are skipped and
counted on stderr; the rest is exported.
"""


class _Sink(Protocol):
    def add(self, event: ScalarEvent) -> None: ...
    def finish(self) -> None: ...


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("run_dir", help="the run's directory (or its events.jsonl)")
    parser.add_argument(
        "--csv",
        nargs="?",
        const="",
        metavar="FILE",
        help="write a CSV (default FILE: RUN_NAME.csv; - for stdout)",
    )
    parser.add_argument("--tensorboard", metavar="DIR", help="write TensorBoard event files")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing CSV or earlier TensorBoard export"
    )
    parser.add_argument(
        "--rank",
        type=_rank,
        metavar="N",
        help="in a log holding several ranks' events, whose to export (default: the log's own)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: when stderr is a terminal)",
    )
    return parser


def _rank(value: str) -> int:
    try:
        rank = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rank: {value!r}") from None
    if rank < 0:
        raise argparse.ArgumentTypeError("a rank is 0 or more")
    return rank


def export_command(args: list[str]) -> int:
    options = _parser().parse_args(args)
    if options.csv is None and options.tensorboard is None:
        raise UsageError(
            "nothing to export: give --csv [FILE] (- for stdout) and/or --tensorboard DIR"
        )
    log, name = _find_log(Path(options.run_dir))
    protos = load_protos() if options.tensorboard is not None else None
    csv_path = None if options.csv is None else _csv_target(options.csv, name)
    tb_dir = None if options.tensorboard is None else Path(options.tensorboard) / name
    try:
        if csv_path is not None and csv_path != STDOUT:
            if _is_the_log(Path(csv_path), log):
                raise UsageError(f"{csv_path} is the run's log: the CSV goes elsewhere")
            check_free(Path(csv_path), replace=options.force)
        if tb_dir is not None:
            _check_tensorboard_dir(tb_dir, replace=options.force)
    except OutputExists as exc:
        raise UsageError(f"{exc.filename} {exc.strerror}: --force replaces it") from None
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename}: {exc.strerror or exc}") from None
    try:
        size = log.stat().st_size
    except OSError as exc:
        raise UsageError(f"cannot read {log}: {exc.strerror or exc}") from None
    terminal = _isatty(sys.stderr)
    progress = ProgressBar(
        sys.stderr,
        size * (2 if csv_path is not None else 1),
        enabled=terminal if options.progress is None else options.progress,
        terminal=terminal,
    )
    try:
        return _export(options, log, csv_path, tb_dir, protos, progress, size)
    except OSError as exc:
        progress.close()
        if isinstance(exc, BrokenPipeError):
            return _stdout_closed()
        reading = exc.filename is not None and Path(exc.filename) == log
        what = "read" if reading else "write"
        _say(f"cannot {what} {exc.filename or 'the output'}: {exc.strerror or exc}")
        return EXIT_FAILED
    finally:
        progress.close()


def _export(
    options: argparse.Namespace,
    log: Path,
    csv_path: str | None,
    tb_dir: Path | None,
    protos: Any,
    progress: ProgressBar,
    size: int,
) -> int:
    scan: ColumnScan | None = None
    rank = options.rank
    end: int | None = None
    t0: float | None = None
    first: ScalarStream | None = None
    if csv_path is not None:  # pass 1: the columns
        progress.label = "reading"
        first = ScalarStream(log, rank=rank)
        try:
            scan = scan_columns(first, progress.update)
        except OSError as exc:
            raise UsageError(f"cannot read {log}: {exc.strerror or exc}") from None
        rank, end, t0 = first.rank, first.offset, first.t0
        base = size
    else:
        base = 0
    stream = ScalarStream(log, rank=rank, end=end)
    progress.label = "writing"
    with contextlib.ExitStack() as outputs:
        sinks: list[_Sink] = []
        rows: CsvRows | None = None
        tensorboard: TensorBoardEvents | None = None
        if csv_path is not None and scan is not None:
            rows = CsvRows(
                _open_csv(outputs, csv_path, options.force),
                list(scan.columns),
                t0,
                _header_clean(csv_path),
            )
            sinks.append(rows)
        tb_file: Path | None = None
        if tb_dir is not None:
            tb_dir.mkdir(parents=True, exist_ok=True)
            tb_file = event_file_name(tb_dir)
            tensorboard = TensorBoardEvents(
                outputs.enter_context(output_file(tb_file, replace=False)),
                lambda: stream.t0,
                protos,
            )
            sinks.append(tensorboard)
        for count, event in enumerate(stream):
            for sink in sinks:
                sink.add(event)
            if not count % PROGRESS_EVERY:
                progress.update(base + stream.offset)
        progress.update(base + stream.offset)
        for sink in sinks:
            sink.finish()
        if csv_path == STDOUT:
            sys.stdout.flush()
    progress.close()
    if rows is not None and scan is not None:
        where = "stdout" if csv_path == STDOUT else csv_path
        _say(f"{rows.rows} rows, {len(scan.columns) + 4} columns -> {where}")
    if tensorboard is not None and tb_file is not None and tb_dir is not None:
        if options.force:
            _remove_earlier_event_files(tb_dir, keep=tb_file.name)
        _say(f"{tensorboard.events} events, {tensorboard.values} values -> {tb_file}")
    over_limit = (scan is not None and scan.over_limit) or (
        tensorboard is not None and tensorboard.over_limit
    )
    _report_reading(first if first is not None else stream, over_limit)
    return EXIT_OK


def _report_reading(stream: ScalarStream, over_limit: bool) -> None:
    """What was left out of the log, said on stderr: damaged lines, other ranks, names."""
    note = stream.reader.damage_note()
    if note:
        _say(note)
    if stream.other_ranks:
        _say(
            f"{stream.other_ranks} events of other ranks than {stream.rank} left out "
            "(--rank N exports another's)"
        )
    if over_limit:
        _say(f"more than {min(MAX_COLUMNS, MAX_TAGS)} scalar names: the rest were left out")


def _is_the_log(target: Path, log: Path) -> bool:
    try:
        return target.exists() and os.path.samefile(target, log)
    except OSError:
        return False


def _find_log(path: Path) -> tuple[Path, str]:
    """The log to read and the run's name (its directory's)."""
    if path.name == EVENTS_FILE and path.is_file():
        return path, path.resolve().parent.name
    log = path / EVENTS_FILE
    if not path.is_dir():
        raise UsageError(f"{path}: no such run directory")
    if not log.is_file():
        raise UsageError(f"{path} is not a run directory (it has no {EVENTS_FILE})")
    return log, path.resolve().name or "run"


def _csv_target(value: str, name: str) -> str:
    return value if value else name + CSV_SUFFIX


def _open_csv(outputs: contextlib.ExitStack, target: str, force: bool) -> BinaryIO:
    if target == STDOUT:
        sys.stdout.flush()
        return sys.stdout.buffer
    return outputs.enter_context(output_file(Path(target), replace=force))


def _header_clean(target: str) -> Any:
    """Column names reach a terminal only through `printable` (a name is a script's text)."""
    if target == STDOUT and _isatty(sys.stdout):
        return lambda name: printable(name, keep_newlines=False)
    return str


def _check_tensorboard_dir(directory: Path, *, replace: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(directory))
    if not replace and _event_files(directory):
        raise OutputExists(errno.EEXIST, "holds an earlier export's event files", str(directory))


def _event_files(directory: Path) -> list[Path]:
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [directory / name for name in names if name.startswith(FILE_PREFIX)]


def _remove_earlier_event_files(directory: Path, keep: str) -> None:
    """--force: the export replaces earlier ones (TensorBoard would show both), removing
    only regular files of this user named as event files, never following a link."""
    for path in _event_files(directory):
        if path.name == keep:
            continue
        with contextlib.suppress(OSError):
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
                path.unlink()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _say(text: str) -> None:
    print(f"{PROG}: {printable(text, keep_newlines=False)}", file=sys.stderr)


def _stdout_closed() -> int:
    """The reader of our CSV went away (`| head`): stop quietly, exit 141 as SIGPIPE would."""
    import signal

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE
