"""Start a worker detached from this terminal, and open the UI on a run.

The worker runs in its own process session with its output going to the run directory,
so closing the terminal (an SSH drop, SIGHUP) ends only the UI; `tuimon attach` comes back.

A job of several processes (`--nproc-per-node N`, `--nnodes`) is started the same way,
through torchrun (`python -P -m torch.distributed.run ...`, tuimon/torchrun_args.py): the
detached process is torchrun's agent, its ranks inherit its session and output file, and
rank 0 logs into the run directory prepared here, which the UI attaches to as to any run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from tuimon.control.client import is_alive
from tuimon.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError
from tuimon.run.event_codec import decode_line
from tuimon.run.events import COMPLETED, END, FAILED
from tuimon.run.private_files import open_private_append
from tuimon.run.run_dir import (
    AUTOFIX_ENV,
    DEFAULT_BASE,
    EVENTS_FILE,
    NOTIFY_ENV,
    OUTPUT_FILE,
    QUIET_ENV,
    RUN_DIR_ENV,
    create_run_dir,
)
from tuimon.torchrun_args import (
    DistributedLaunch,
    config_rank_program,
    script_rank_program,
    torchrun_command,
)

ONE_PROCESS = DistributedLaunch()


def launch_config(
    config_path: str,
    overrides: Sequence[str],
    name: str,
    run_dir: str | None,
    lr_factor: float,
    launch: DistributedLaunch = ONE_PROCESS,
) -> int:
    """`tuimon CONFIG` in a terminal: the job in a detached worker, the UI attached to it."""
    path, worker = start_config_worker(config_path, overrides, name, run_dir, launch)
    return run_app(path, worker=worker, lr_factor=lr_factor)


def launch_script(
    script: str,
    args: Sequence[str],
    lr_factor: float,
    *,
    autofix: bool = False,
    quiet: bool = False,
    notify: str | None = None,
    launch: DistributedLaunch = ONE_PROCESS,
) -> int:
    """`tuimon run SCRIPT.py`: the user's script (which uses tuimon.Monitor) as the worker."""
    path, worker = start_script_worker(
        script, args, autofix=autofix, quiet=quiet, notify=notify, launch=launch
    )
    return run_app(path, worker=worker, lr_factor=lr_factor)


def start_config_worker(
    config_path: str,
    overrides: Sequence[str],
    name: str,
    run_dir: str | None,
    launch: DistributedLaunch = ONE_PROCESS,
) -> tuple[Path, subprocess.Popen[bytes]]:
    path = create_run_dir(name, run_dir)
    return path, _spawn(
        config_worker_command(config_path, overrides, path, launch), path, dict(os.environ)
    )


def config_worker_command(
    config_path: str, overrides: Sequence[str], run_dir: Path, launch: DistributedLaunch
) -> list[str]:
    """The detached worker of a config job: `python -P -m tuimon CONFIG --headless ...`,
    or torchrun starting `python -P -m tuimon.worker CONFIG ...` in each process."""
    if launch.distributed:
        program = config_rank_program(config_path, overrides, str(run_dir), detached=True)
        return torchrun_command(launch, program)
    command = [*worker_python(), config_path, "--headless", "--detached", "--run-dir", str(run_dir)]
    for override in overrides:
        command += ["--set", override]
    return command


def run_distributed_headless(
    config_path: str,
    overrides: Sequence[str],
    name: str,
    run_dir: str | None,
    launch: DistributedLaunch,
    *,
    quiet: bool = False,
) -> int:
    """`tuimon CONFIG --headless --nproc-per-node N`: torchrun in the foreground, its ranks'
    output on this terminal (rank 0's copied to the run's output.log).

    torchrun runs in a session of its own, so a dropped terminal (SIGHUP) does not end the
    job, and this process hands it SIGINT and SIGTERM once: torchrun passes the signal to
    every rank, whose Monitor stops at the next step with a checkpoint. On a node without
    rank 0 (`--node-rank` above 0) no run directory is made here: rank 0's is the job's.
    """
    path: Path | None = None
    if launch.node_rank == 0:
        path = create_run_dir(name, run_dir)
        print(f"tuimon: {launch.world_size} processes; the run is {path}", flush=True)
    else:
        print(
            f"tuimon: node {launch.node_rank} of {launch.nnodes}: its {launch.nproc_per_node} "
            f"process(es) join the job at {launch.master_addr}; node 0 holds the run",
            flush=True,
        )
    program = config_rank_program(config_path, overrides, str(path) if path else None, quiet=quiet)
    process = subprocess.Popen(
        torchrun_command(launch, program), stdin=subprocess.DEVNULL, start_new_session=True
    )
    with _signals_passed_to(process) as passed:
        returncode = process.wait()
    if passed:
        where = f" in {path}" if path else ""
        print(f"tuimon: interrupted; the job stopped{where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if returncode != 0:
        where = f": see {path / OUTPUT_FILE}" if path else ""
        print(f"tuimon: the job failed (torchrun exit code {returncode}){where}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


@contextlib.contextmanager
def _signals_passed_to(process: subprocess.Popen[bytes]) -> Iterator[list[int]]:
    """While inside: SIGINT and SIGTERM go to `process` (the list gets each), SIGHUP is
    ignored. Handlers are restored on leaving."""
    passed: list[int] = []

    def pass_on(signum: int, _frame: FrameType | None) -> None:
        passed.append(signum)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)

    previous = {
        signum: signal.signal(signum, handler)
        for signum, handler in (
            (signal.SIGINT, pass_on),
            (signal.SIGTERM, pass_on),
            (signal.SIGHUP, signal.SIG_IGN),
        )
    }
    try:
        yield passed
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def worker_python() -> list[str]:
    """`python -m tuimon` without the current directory on `sys.path`: a `yaml.py` or
    `torch.py` lying in the directory the user started from must not run in the worker."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", "tuimon"]
    # Python 3.10 has no -P: drop the '' that -c puts first before importing anything.
    return [sys.executable, "-c", _SAFE_MAIN]


_SAFE_MAIN = "import sys; del sys.path[0]; from tuimon.cli import main; sys.exit(main())"


def start_script_worker(
    script: str,
    args: Sequence[str],
    base: Path = DEFAULT_BASE,
    *,
    autofix: bool = False,
    quiet: bool = False,
    notify: str | None = None,
    launch: DistributedLaunch = ONE_PROCESS,
) -> tuple[Path, subprocess.Popen[bytes]]:
    """The script runs with TUIMON_RUN_DIR set, so its Monitor logs into this run; the
    switches reach its Monitor the same way (run_dir.py names the variables). With
    `--nproc-per-node N` torchrun starts it N times; rank 0's Monitor takes the run."""
    source = Path(script)
    if not source.is_file():
        raise UsageError(f"{script}: no such script")
    path = create_run_dir(source.stem or "run", base=base)
    env = script_env(path, autofix=autofix, quiet=quiet, notify=notify)
    command = script_rank_program(str(source), args)
    if launch.distributed:
        command = torchrun_command(launch, command)
    return path, _spawn(command, path, env)


def script_env(
    run_dir: Path, *, autofix: bool = False, quiet: bool = False, notify: str | None = None
) -> dict[str, str]:
    """The environment of a script under `tuimon run`: where it logs, and its switches."""
    env = dict(os.environ, **{RUN_DIR_ENV: str(run_dir)})
    for name, on in ((AUTOFIX_ENV, autofix), (QUIET_ENV, quiet)):
        if on:
            env[name] = "1"
        else:
            env.pop(name, None)
    if notify:
        env[NOTIFY_ENV] = notify  # where the script's Monitor sends its notifications
    else:
        env.pop(NOTIFY_ENV, None)
    return env


def attach(run_dir: str | None, lr_factor: float) -> int:
    """`tuimon attach [RUN_DIR]`: the UI on a running job (default: the newest alive)."""
    path = Path(run_dir) if run_dir else newest_alive_run()
    if not (path / EVENTS_FILE).exists() and not is_alive(path):
        raise UsageError(f"{path} is not a run directory (no {EVENTS_FILE}, no live worker)")
    return run_app(path, lr_factor=lr_factor)


def replay(run_dir: str) -> int:
    """`tuimon replay RUN_DIR`: a run's whole history from its log, read-only."""
    path = Path(run_dir)
    if not (path / EVENTS_FILE).is_file():
        raise UsageError(f"{path}: no {EVENTS_FILE} here, so nothing to replay")
    return run_app(path, replay=True)


def find_runs(base: Path = DEFAULT_BASE) -> list[Path]:
    """Run directories under `base`, newest first (by when their log last changed)."""
    if not base.is_dir():
        return []
    runs = [p for p in base.iterdir() if (p / EVENTS_FILE).is_file()]
    return sorted(runs, key=lambda p: (p / EVENTS_FILE).stat().st_mtime, reverse=True)


def newest_alive_run(base: Path = DEFAULT_BASE) -> Path:
    runs = find_runs(base)
    for path in runs:
        if is_alive(path):
            return path
    if runs:  # a killed run answers no socket either: name it, its log is one command away
        raise UsageError(
            f"no running run found under {base}/: the newest, {runs[0]}, has no live "
            f"worker (tuimon attach {runs[0]} shows its log)"
        )
    raise UsageError(
        f"no running run found under {base}/ (tuimon attach RUN_DIR for "
        "another place; tuimon replay RUN_DIR shows a finished run)"
    )


def run_app(
    run_dir: Path,
    *,
    replay: bool = False,
    worker: subprocess.Popen[bytes] | None = None,
    lr_factor: float = 2.0,
) -> int:
    """The UI on `run_dir`; `worker` is the process this command launched, if it did."""
    if os.environ.get("SSH_CONNECTION"):
        # Fewer, cheaper frames over the network; must be set before Textual is imported.
        os.environ.setdefault("TEXTUAL_FPS", "5")
        os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
    from tuimon.ui.app import TuimonApp

    launched = worker is not None
    app = TuimonApp(run_dir, replay=replay, launched=launched, worker=worker, lr_factor=lr_factor)
    app.run()
    if worker is None:
        return EXIT_OK
    status = end_status(run_dir / EVENTS_FILE)
    if status is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=30)  # it has logged its end and is exiting
    if worker.poll() is None:
        if app.stopped_run:
            print(f"Stopping the run; it saves a checkpoint in {run_dir}")
        elif status is None:
            print(f"The run goes on in the background. Reattach with: tuimon attach {run_dir}")
        return EXIT_OK
    return worker_exit_code(run_dir, status, worker.returncode)


def worker_exit_code(run_dir: Path, status: str | None, returncode: int) -> int:
    """The exit code of `tuimon CONFIG` or `tuimon run` once its worker is done: 1 when
    training failed (the log's `end` status says so, or the worker died without one)."""
    if status == FAILED or (status is None and returncode != 0):
        why = "failed" if status == FAILED else f"died (exit code {returncode})"
        print(f"The run {why}: see {run_dir / OUTPUT_FILE}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def end_status(events: Path, tail_bytes: int = 1 << 16) -> str | None:
    """The status in the log's `end` event, read from its last lines (None: no `end`)."""
    try:
        with events.open("rb") as file:
            file.seek(max(0, file.seek(0, os.SEEK_END) - tail_bytes))
            lines = file.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            event = decode_line(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("type") == END:
            return str(event.get("status", COMPLETED))
    return None


def _spawn(command: list[str], run_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Never through a symlink planted in the run directory (run/private_files.py).
    output = open_private_append(run_dir / OUTPUT_FILE, binary=True)
    try:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    finally:
        output.close()
