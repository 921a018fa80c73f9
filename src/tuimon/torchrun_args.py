"""The argument list of `python -m torch.distributed.run` (torchrun) for a tuimon job.

A job of several processes is launched through torchrun's own launcher and rendezvous,
never a launcher of tuimon's: this module only turns the CLI's flags (`--nproc-per-node`,
`--nnodes`, `--node-rank`, `--master-addr`, `--master-port`; `train.nproc_per_node` in a
config) into torchrun's arguments, checking them first. Pure logic: no processes, no torch.

One node without a master address is `--standalone`: torchrun's rendezvous then listens on
a free port of its own, so two jobs on one machine never collide. Several nodes use
torchrun's static rendezvous at `--master-addr:--master-port`, which every node names.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tuimon.errors import UsageError

TORCHRUN_MODULE = "torch.distributed.run"
WORKER_MODULE = "tuimon.worker"
MAX_PORT = 65535


@dataclass(frozen=True)
class DistributedLaunch:
    """How many processes a job has and where its nodes meet; the default is one process."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def distributed(self) -> bool:
        """More than one process in the job: it runs under torchrun."""
        return self.nproc_per_node > 1 or self.nnodes > 1

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def check(self) -> DistributedLaunch:
        """Itself, or a UsageError (exit 2) saying which flag is wrong and why."""
        if self.nproc_per_node < 1:
            raise UsageError(
                f"--nproc-per-node must be 1 or more (processes on this node), "
                f"not {self.nproc_per_node}"
            )
        if self.nnodes < 1:
            raise UsageError(f"--nnodes must be 1 or more (machines in the job), not {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise UsageError(
                f"--node-rank must be from 0 to {self.nnodes - 1} (--nnodes {self.nnodes}), "
                f"not {self.node_rank}"
            )
        if self.master_port is not None and not 1 <= self.master_port <= MAX_PORT:
            raise UsageError(
                f"--master-port must be a TCP port from 1 to {MAX_PORT}, not {self.master_port}"
            )
        if self.master_addr is not None and (
            not self.master_addr.strip() or any(c.isspace() for c in self.master_addr)
        ):
            raise UsageError(
                f"--master-addr must be a host name or address, not {self.master_addr!r}"
            )
        if self.nnodes > 1 and self.master_addr is None:
            raise UsageError(
                f"--nnodes {self.nnodes} needs --master-addr: the address of node 0, where "
                "every node meets (and --master-port, unless torchrun's default 29500 is free)"
            )
        if not self.distributed and (self.master_addr is not None or self.master_port is not None):
            raise UsageError(
                "--master-addr and --master-port apply to a job of several processes "
                "(--nproc-per-node or --nnodes above 1)"
            )
        return self


def torchrun_args(launch: DistributedLaunch) -> list[str]:
    """torchrun's options for `launch` (what comes before the program it starts)."""
    launch.check()
    args = ["--nnodes", str(launch.nnodes), "--nproc-per-node", str(launch.nproc_per_node)]
    if launch.nnodes == 1 and launch.master_addr is None and launch.master_port is None:
        return [*args, "--standalone"]
    args += ["--node-rank", str(launch.node_rank)]
    # One node with a chosen port: the static rendezvous on this machine.
    args += ["--master-addr", launch.master_addr or "127.0.0.1"]
    if launch.master_port is not None:
        args += ["--master-port", str(launch.master_port)]
    return args


def torchrun_command(
    launch: DistributedLaunch, program: Sequence[str], *, python: str = sys.executable
) -> list[str]:
    """`python -P -m torch.distributed.run ARGS PROGRAM...`: torchrun starting `program`
    in every process. `program` is a full command line (`--no-python`), so a config job's
    ranks keep `-P` (the current directory stays off `sys.path`); a user's script is
    started as `python SCRIPT ARGS`, exactly as without torchrun."""
    return [
        *safe_module_command(TORCHRUN_MODULE, python),
        *torchrun_args(launch),
        "--no-python",
        *program,
    ]


def safe_module_command(module: str, python: str = sys.executable) -> list[str]:
    """`python -P -m MODULE`: a `torch.py` or `yaml.py` in the directory the user started
    from must not be imported. Python 3.10 has no -P: the '' that -c puts first goes."""
    if sys.version_info >= (3, 11):
        return [python, "-P", "-m", module]
    code = f"import runpy, sys; del sys.path[0]; runpy.run_module({module!r}, run_name='__main__')"
    return [python, "-c", code]


def config_rank_program(
    config_path: str,
    overrides: Sequence[str],
    run_dir: str | None,
    *,
    quiet: bool = False,
    detached: bool = False,
) -> list[str]:
    """What each process of a config job runs: `python -P -m tuimon.worker CONFIG ...`
    (`run_dir`: the directory prepared for rank 0; None on a node without rank 0)."""
    program = [*safe_module_command(WORKER_MODULE), config_path]
    if run_dir is not None:
        program += ["--run-dir", run_dir]
    for override in overrides:
        program += ["--set", override]
    if quiet:
        program.append("--quiet")
    if detached:
        program.append("--detached")
    return program


def script_rank_program(script: str, args: Sequence[str]) -> list[str]:
    """What each process of `tuimon run SCRIPT --nproc-per-node N` runs: the script."""
    return [sys.executable, script, *args]


def check_gpu_count(device: str, nproc_per_node: int, gpus: int) -> None:
    """A UsageError when `train.device` cannot give each process of this node its own GPU.

    `cuda` (and `auto` where CUDA is available) puts process LOCAL_RANK on cuda:LOCAL_RANK;
    `cuda:N` would put every process on one GPU, which NCCL refuses.
    """
    if nproc_per_node <= 1 or device == "cpu" or (device == "auto" and gpus == 0):
        return
    if device.startswith("cuda:"):
        raise UsageError(
            f"train.device is {device}, which would put all {nproc_per_node} processes on "
            "one GPU; use cuda (or auto): process i of a node takes cuda:i"
        )
    if nproc_per_node > gpus:
        raise UsageError(
            f"--nproc-per-node {nproc_per_node} needs {nproc_per_node} GPUs on this node "
            f"for train.device {device}, but {gpus} are visible; use --nproc-per-node "
            f"{max(gpus, 1)} or train.device=cpu"
        )


def inside_torchrun(env: Mapping[str, str] = os.environ) -> bool:
    """This process is already one rank of a torchrun job of several (it launches none)."""
    try:
        return int(env.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False
