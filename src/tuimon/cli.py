"""The `tuimon` command. Exit codes: 0 done, 1 training failed, 2 bad usage or config,
130 interrupted."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tuimon.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError

if TYPE_CHECKING:  # imported where used: `tuimon --help` loads no more than it needs
    from tuimon.control.client import ControlClient
    from tuimon.run.events import ControlEvent
    from tuimon.torchrun_args import DistributedLaunch

DESCRIPTION = """\
Run a training job from a config, or talk to a run:

  tuimon [--root DIR ...]                every run on this machine, live (the runs screen)
  tuimon ls [--root DIR ...] [--json]    the same as a table (or JSON), for scripts
  tuimon CONFIG.yaml [--set key.path=value ...] [--headless] [--run-dir DIR]
                     [--nproc-per-node N] [--nnodes N --node-rank R --master-addr HOST]
  tuimon run SCRIPT.py [args ...]        your own script, using tuimon.Monitor (--autofix)
  tuimon run --nproc-per-node N SCRIPT.py [args ...]   the same, through torchrun
  tuimon attach [RUN_DIR]                the UI on a running job (default: the newest)
  tuimon replay RUN_DIR                  a run's whole history, read-only
  tuimon doctor RUN_DIR [--rule R.T=V]   the training doctor over a recorded run
  tuimon ctl RUN_DIR COMMAND [VALUE]     a command to a running job (tuimon ctl -h)
  tuimon export RUN_DIR --csv [FILE] | --tensorboard DIR   a run's scalars, for other tools
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args or args[0].split("=")[0] == "--root":
            return runs_command(args)  # no config: every run, the runs screen
        if args[0] in COMMANDS:
            return COMMANDS[args[0]](args[1:])
        return config_command(args)
    except UsageError as exc:
        from tuimon.terminal_text import printable

        # The message may quote a path or a value from a file: shown, never interpreted.
        print(f"tuimon: error: {printable(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tuimon: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _lr_factor(value: str) -> float:
    from tuimon.control.commands import CommandError, validate_factor

    try:
        factor = validate_factor(value)
    except CommandError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if factor == 1:
        raise argparse.ArgumentTypeError("an LR factor of 1 changes nothing")
    return factor


def _add_lr_factor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lr-factor",
        type=_lr_factor,
        default=2.0,
        metavar="F",
        help="what + and - multiply and divide the LR by (default 2)",
    )


def _add_distributed(parser: argparse.ArgumentParser, *, config: bool) -> None:
    """torchrun's flags, passed through to it (tuimon/torchrun_args.py builds its call)."""
    how = (
        "The trainer uses DistributedDataParallel: gloo on the CPU, NCCL with one GPU\n"
        "per process (train.batch_size is per process)."
        if config
        else "Your script makes its process group and DDP model, as under torchrun."
    )
    group = parser.add_argument_group(
        "a job of several processes",
        "N processes per node, started by torchrun (torch.distributed.run).\n"
        f"{how}\n"
        "It is one run: rank 0 logs into the run directory, the UI attaches to it.\n"
        "Several machines: the same command on each, with --nnodes, its own\n"
        "--node-rank and node 0's --master-addr (and --master-port).",
    )
    default = " (default: the config's train.nproc_per_node, else 1)" if config else ""
    group.add_argument(
        "--nproc-per-node",
        type=int,
        metavar="N",
        help=f"processes on this machine, one per GPU{default}",
    )
    group.add_argument(
        "--nnodes", type=int, default=1, metavar="N", help="machines in the job (default 1)"
    )
    group.add_argument(
        "--node-rank",
        type=int,
        default=0,
        metavar="R",
        help="this machine's place, 0 to nnodes-1 (default 0; node 0 holds the run)",
    )
    group.add_argument(
        "--master-addr",
        metavar="HOST",
        help="node 0's address, where the nodes meet (needed with --nnodes above 1)",
    )
    group.add_argument(
        "--master-port",
        type=int,
        metavar="PORT",
        help="node 0's port for the meeting (torchrun's default 29500; one machine "
        "alone needs none: a free port is chosen)",
    )


# torchrun's flags, in both spellings it accepts: consumed by the launcher, never a script's.
_TORCHRUN_FLAGS = {
    spelling
    for flag in ("nproc-per-node", "nnodes", "node-rank", "master-addr", "master-port")
    for spelling in (f"--{flag}", f"--{flag.replace('-', '_')}")
}


def _distributed_launch(options: argparse.Namespace, nproc_per_node: int) -> DistributedLaunch:
    """The launch the flags ask for, checked (a UsageError, exit 2, names the bad flag)."""
    from tuimon.torchrun_args import DistributedLaunch

    return DistributedLaunch(
        nproc_per_node=nproc_per_node,
        nnodes=options.nnodes,
        node_rank=options.node_rank,
        master_addr=options.master_addr,
        master_port=options.master_port,
    ).check()


def config_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tuimon", description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("config", help="YAML config of the training job")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config value (repeatable)",
    )
    parser.add_argument(
        "--headless",
        action="store_true",
        help="no UI: progress lines on stdout (the default when stdout is not a terminal)",
    )
    parser.add_argument("--run-dir", help="directory of this run (default runs/NAME-TIME/)")
    parser.add_argument(
        "--autofix",
        action="store_true",
        help="on NaN or divergence, restore the last good weights with LR x0.1 (monitor.autofix)",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing; still log")
    _add_lr_factor(parser)
    # Set by the UI for the worker it starts: output already goes to the run's log.
    parser.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=_version())
    _add_distributed(parser, config=True)
    options = parser.parse_args(args)
    if options.autofix:
        options.overrides.append("monitor.autofix=true")
    if options.nproc_per_node is not None and options.nproc_per_node < 1:
        _distributed_launch(options, options.nproc_per_node)  # says why, before the config

    from tuimon.torchrun_args import check_gpu_count, inside_torchrun
    from tuimon.training.build_checks import load_run_config

    config = load_run_config(options.config, options.overrides)
    assert config.name is not None
    # The flag wins over the config. Inside a torchrun job already: this process is a rank.
    nproc = options.nproc_per_node or config.train.nproc_per_node  # never 0: checked above
    launch = _distributed_launch(options, 1 if inside_torchrun() else nproc)
    if launch.distributed:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        check_gpu_count(config.train.device, launch.nproc_per_node, gpus)
    if not options.headless and sys.stdout.isatty() and launch.node_rank == 0:
        from tuimon.launch import launch_config

        return launch_config(
            options.config,
            options.overrides,
            config.name,
            options.run_dir,
            options.lr_factor,
            launch,
        )
    if launch.distributed:
        from tuimon.launch import run_distributed_headless

        return run_distributed_headless(
            options.config,
            options.overrides,
            config.name,
            options.run_dir,
            launch,
            quiet=options.quiet,
        )

    from tuimon.worker import run_config

    return run_config(
        config, run_dir=options.run_dir, quiet=options.quiet, capture_output=not options.detached
    )


def run_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tuimon run",
        description="Run your own training script (which uses "
        "tuimon.Monitor) as the worker, with the UI attached.",
    )
    _add_lr_factor(parser)
    parser.add_argument(
        "--autofix",
        action="store_true",
        help="on NaN or divergence, restore the last good weights with LR x0.1 "
        "(as Monitor(autofix=True))",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress lines in the run's output; still log"
    )
    parser.add_argument(
        "--notify",
        metavar="URL|COMMAND",
        help="tell a webhook (an http(s) URL: JSON POST, Slack and ntfy understood) or a "
        "command (the event as JSON on its stdin) when the run fails, completes, raises an "
        "error alert or hangs (as Monitor(notify=...) or monitor.notify)",
    )
    _add_distributed(parser, config=False)
    parser.add_argument("script", help="the Python script (tuimon's options go before it)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    options = parser.parse_args(args)
    if options.notify is not None:
        from tuimon.notify.targets import shown_target, target_problem

        problem = target_problem(options.notify)
        if problem:
            raise UsageError(f"--notify {shown_target(options.notify)}: {problem}")
    misplaced = [arg for arg in options.args if arg.split("=")[0] in _TORCHRUN_FLAGS]
    if misplaced:
        # After SCRIPT it would be the script's own argument, and the job one process.
        raise UsageError(
            f"{misplaced[0]} after the script would be the script's own argument; tuimon's "
            f"options go before it, as torchrun's do: tuimon run {misplaced[0].split('=')[0]} "
            f"N {options.script} ..."
        )
    nproc = 1 if options.nproc_per_node is None else options.nproc_per_node
    launch = _distributed_launch(options, nproc)
    from tuimon.launch import launch_script

    return launch_script(
        options.script,
        options.args,
        options.lr_factor,
        autofix=options.autofix,
        quiet=options.quiet,
        notify=options.notify,
        launch=launch,
    )


def attach_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tuimon attach", description="Open the UI on a running job."
    )
    parser.add_argument(
        "run_dir", nargs="?", help="the run (default: the newest still running under runs/)"
    )
    _add_lr_factor(parser)
    options = parser.parse_args(args)
    from tuimon.launch import attach

    return attach(options.run_dir, options.lr_factor)


def replay_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tuimon replay", description="Show a run's whole history, read-only."
    )
    parser.add_argument("run_dir", help="the run's directory")
    options = parser.parse_args(args)
    from tuimon.launch import replay
    from tuimon.run.log_reader import read_events
    from tuimon.run.run_dir import EVENTS_FILE
    from tuimon.terminal_text import printable

    log = Path(options.run_dir) / EVENTS_FILE
    if log.is_file():
        # An empty screen says nothing: a log without one event is said so, exit 1. (The
        # app reads the whole log and shows how many damaged lines it skipped.)
        try:
            reader = read_events(log)
            has_event = next(reader, None) is not None
        except OSError as exc:
            raise UsageError(f"cannot read {log}: {exc.strerror or exc}") from None
        if not has_event:
            why = reader.damage_note() or (
                "only an unfinished line" if reader.torn else "the file is empty"
            )
            shown = printable(str(log))
            print(f"tuimon replay: {shown}: no events to show: {why}", file=sys.stderr)
            return EXIT_FAILED
    return replay(options.run_dir)


def ctl_command(args: list[str]) -> int:
    """Exit codes: 0 applied (or sent, when --wait ran out), 2 refused (a bad value here,
    or the run's own refusal: an unknown param group, an LR beyond its limits), 1 the run
    could not be reached or failed applying it (a checkpoint that could not be written)."""
    import json

    from tuimon.control.client import CommandRefused, ControlClient, ControlError
    from tuimon.control.commands import COMMANDS, RUN_COMMANDS, STATUS
    from tuimon.control.protocol import ProtocolError, parse_request
    from tuimon.terminal_text import printable

    # Everything about the commands comes from their table (control/commands.py).
    names = [*RUN_COMMANDS, STATUS]
    with_group = [name for name in names if COMMANDS[name].takes_group]
    parser = argparse.ArgumentParser(
        prog="tuimon ctl",
        description="Send a command to a running job.",
        epilog="commands:\n"
        + "\n".join(f"  {name:<14} {COMMANDS[name].summary}" for name in names),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", help="the run's directory")
    parser.add_argument("command", choices=names)
    parser.add_argument("value", nargs="?", help="the command's value: " + _values_taken(names))
    parser.add_argument(
        "--group", type=int, help=f"only this param group ({', '.join(with_group)})"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the run to apply it (default 10)",
    )
    options = parser.parse_args(args)

    command = COMMANDS[options.command]
    fields: dict[str, Any] = {}
    if options.value is not None:
        if command.value is None:
            raise UsageError(f"{command.name} takes no value")
        fields[command.value.name] = options.value
    elif command.value is not None and command.value.required:
        raise UsageError(f"{command.name} needs a {command.value.name}")
    if options.group is not None:
        if not command.takes_group:
            raise UsageError(f"--group applies to {_listed(with_group)} only")
        fields["group"] = options.group
    if command.name != STATUS:
        # Checked here exactly as the run will check it, so a typo never reaches it.
        try:
            fields = parse_request(json.dumps({"cmd": options.command, **fields})).args
        except ProtocolError as exc:
            raise UsageError(str(exc)) from None

    try:
        with ControlClient(Path(options.run_dir)) as client:
            if command.name == STATUS:
                status = client.request(STATUS)["status"]
                for key, value in status.items():
                    print(printable(f"{key}: {value}", keep_newlines=False))
                return EXIT_OK
            client.subscribe()
            reply = client.request(options.command, source="ctl", **fields)
            return _await_applied(client, reply["id"], options.wait)
    except CommandRefused as exc:
        # The run's words: printed, never interpreted by the terminal.
        print(f"tuimon ctl: refused: {printable(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except ControlError as exc:
        print(f"tuimon ctl: {printable(exc)}", file=sys.stderr)
        return EXIT_FAILED


def _values_taken(names: list[str]) -> str:
    """What each command's value is: "set-lr: value, …, recover: lr_factor (optional)"."""
    from tuimon.control.commands import COMMANDS

    taken = []
    for name in names:
        value = COMMANDS[name].value
        if value is not None:
            taken.append(f"{name}: {value.name}" + ("" if value.required else " (optional)"))
    return ", ".join(taken)


def _listed(names: list[str]) -> str:
    """Names in words: "set-lr and scale-lr", "a, b and c"."""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def doctor_command(args: list[str]) -> int:
    """Re-run the rules over a run's log and print what they find."""
    import json

    from tuimon.doctor.report import (
        SEVERITY_ORDER,
        damage_lines,
        format_report,
        parse_rule_settings,
        review,
        worst_severity,
    )
    from tuimon.run.events import ERROR, WARNING

    parser = argparse.ArgumentParser(
        prog="tuimon doctor",
        description="Run the training doctor's rules over a recorded run (offline).",
    )
    parser.add_argument("run_dir", help="the run's directory")
    parser.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="RULE.THRESHOLD=VALUE",
        help="override a threshold (repeatable), e.g. stall.window=50 or stall.enabled=false",
    )
    parser.add_argument("--json", action="store_true", help="alerts as JSON lines")
    parser.add_argument(
        "--fail-on",
        choices=[WARNING, ERROR],
        help="exit 1 if an alert this severe (or worse) is found",
    )
    options = parser.parse_args(args)
    run_dir = Path(options.run_dir)
    try:
        said, summary = review(run_dir, parse_rule_settings(options.rule))
    except OSError as exc:
        raise UsageError(f"cannot read {run_dir}: {exc.strerror or exc}") from None
    try:
        if options.json:
            for line in damage_lines(summary):
                print(f"tuimon doctor: {line}", file=sys.stderr)
            for event in said:
                # json escapes every control character: nothing in it can reach the terminal.
                print(json.dumps(event, default=str))
        else:
            print(format_report(run_dir, said, summary))
        sys.stdout.flush()
    except BrokenPipeError:
        return _stdout_closed()
    worst = worst_severity(said)
    failing = (
        options.fail_on is not None
        and worst is not None
        and SEVERITY_ORDER[worst] <= SEVERITY_ORDER[options.fail_on]
    )
    return EXIT_FAILED if failing else EXIT_OK


def _stdout_closed() -> int:
    """The reader of our output went away (`tuimon doctor RUN | head`): stop quietly, as
    Python's documentation on SIGPIPE advises: point stdout at /dev/null so the flush at
    exit does not fail again, and exit 141 (128 + SIGPIPE) as a tool killed by it would."""
    import os
    import signal

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def _await_applied(client: ControlClient, request_id: Any, wait: float) -> int:
    """Print what the run did with our command, once it reaches a step boundary: what it
    changed (exit 0), or why it could not (exit 1 for a failure such as a checkpoint that
    could not be written, 2 for a change refused at the boundary)."""
    import time

    from tuimon.run.events import CONTROL, END, ERROR, MESSAGE
    from tuimon.terminal_text import printable

    deadline = time.monotonic() + wait
    last_error: str | None = None  # the run's latest error message: why a checkpoint failed
    while (remaining := deadline - time.monotonic()) > 0:
        event = client.next_event(timeout=remaining)
        if event is None:
            break
        kind = event.get("type")
        ours = event.get("request_id") == request_id
        if kind == MESSAGE and event.get("level") == ERROR:
            if ours:  # refused at the boundary (the LR moved beyond the limits meanwhile)
                print(f"tuimon ctl: {printable(event.get('text'))}", file=sys.stderr)
                return EXIT_USAGE
            last_error = str(event.get("text"))
        if kind == CONTROL and ours:
            failure = _control_failure(cast("ControlEvent", event), last_error)
            if failure is not None:
                print(f"tuimon ctl: {printable(failure)}", file=sys.stderr)
                return EXIT_FAILED
            print(
                printable(
                    f"applied at step {event.get('step')}: {event.get('command')} "
                    f"{_fmt(event.get('old'))} -> {_fmt(event.get('new'))}",
                    keep_newlines=False,
                )
            )
            return EXIT_OK
        if kind == END:
            print(printable(f"the run ended ({event.get('status')}) before applying it"))
            return EXIT_FAILED
    print(f"sent; the run applies it at its next step boundary (none reached in {wait:g}s)")
    return EXIT_OK


def _control_failure(event: ControlEvent, last_error: str | None) -> str | None:
    """Why an applied command failed, or None: an `error` (or ok false) on its event, or a
    checkpoint without a path (the run's last error message says why)."""
    from tuimon.control.commands import CHECKPOINT

    if event.get("error") or event.get("ok") is False:
        return str(event.get("error") or last_error or f"{event.get('command')} failed")
    if event.get("command") == CHECKPOINT and not event.get("path"):
        return last_error or "checkpoint failed: the run saved no file"
    return None


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def runs_command(args: list[str]) -> int:
    """`tuimon` alone (or `tuimon runs`): the runs screen, every run under the roots."""
    from tuimon.runs_launch import runs_command as run

    return run(args)


def ls_command(args: list[str]) -> int:
    """`tuimon ls`: the runs screen's table on stdout (or JSON), for scripts and cron."""
    from tuimon.catalog.ls_command import ls_command as run

    return run(args)


def export_command(args: list[str]) -> int:
    """`tuimon export RUN_DIR`: every scalar of a run as CSV, or as TensorBoard events."""
    from tuimon.export.export_command import export_command as run

    return run(args)


def _version() -> str:
    import tuimon

    return f"tuimon {tuimon.__version__}"


COMMANDS = {
    "ctl": ctl_command,
    "run": run_command,
    "attach": attach_command,
    "replay": replay_command,
    "doctor": doctor_command,
    "runs": runs_command,
    "ls": ls_command,
    "export": export_command,
}
