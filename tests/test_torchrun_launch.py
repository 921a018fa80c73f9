"""torchrun's argument list for a job of several processes, and the CLI's checks of the
flags that make it: pure logic, no processes started."""

from __future__ import annotations

import sys

import pytest
import torch

from tuimon import cli
from tuimon.errors import EXIT_USAGE, UsageError
from tuimon.launch import config_worker_command
from tuimon.torchrun_args import (
    DistributedLaunch,
    check_gpu_count,
    config_rank_program,
    inside_torchrun,
    script_rank_program,
    torchrun_args,
    torchrun_command,
)

CONFIG = """\
name: t
model: {name: mlp, hidden: [8]}
data:
  name: synthetic
  synthetic: {num_samples: 64, channels: 1, image_size: 8, num_classes: 4}
optimizer: {name: SGD, lr: 0.1}
train: {max_steps: 4, batch_size: 16, device: cpu}
"""


def test_one_node_is_standalone_so_two_jobs_on_one_machine_do_not_collide() -> None:
    assert torchrun_args(DistributedLaunch(nproc_per_node=4)) == [
        "--nnodes",
        "1",
        "--nproc-per-node",
        "4",
        "--standalone",
    ]


def test_several_nodes_meet_at_node_zeros_address() -> None:
    launch = DistributedLaunch(
        nproc_per_node=2, nnodes=2, node_rank=1, master_addr="10.0.0.5", master_port=29400
    )
    args = torchrun_args(launch)
    assert "--standalone" not in args
    assert args == [
        "--nnodes",
        "2",
        "--nproc-per-node",
        "2",
        "--node-rank",
        "1",
        "--master-addr",
        "10.0.0.5",
        "--master-port",
        "29400",
    ]
    assert launch.world_size == 4 and launch.distributed


def test_one_node_with_a_chosen_port_meets_on_this_machine() -> None:
    args = torchrun_args(DistributedLaunch(nproc_per_node=2, master_port=29611))
    assert args[-4:] == ["--master-addr", "127.0.0.1", "--master-port", "29611"]
    assert "--standalone" not in args


@pytest.mark.parametrize(
    ("launch", "says"),
    [
        (DistributedLaunch(nproc_per_node=0), "--nproc-per-node must be 1 or more"),
        (DistributedLaunch(nproc_per_node=-3), "not -3"),
        (DistributedLaunch(nnodes=0), "--nnodes must be 1 or more"),
        (DistributedLaunch(nnodes=2, node_rank=2, master_addr="h"), "from 0 to 1"),
        (DistributedLaunch(node_rank=-1), "--node-rank"),
        (DistributedLaunch(nproc_per_node=2, master_port=70000), "TCP port from 1 to 65535"),
        (DistributedLaunch(nnodes=2), "--nnodes 2 needs --master-addr"),
        (DistributedLaunch(nproc_per_node=2, master_addr="a b"), "--master-addr must be"),
        (DistributedLaunch(master_addr="10.0.0.5"), "apply to a job of several processes"),
    ],
)
def test_nonsense_is_refused_naming_the_flag(launch: DistributedLaunch, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        torchrun_args(launch)


def test_one_process_is_not_distributed() -> None:
    assert not DistributedLaunch().distributed
    assert DistributedLaunch(nproc_per_node=2).distributed
    assert DistributedLaunch(nnodes=2, master_addr="h").distributed


def test_a_config_jobs_ranks_keep_the_current_directory_off_sys_path() -> None:
    program = config_rank_program("c.yaml", ["a.b=1", "c=2"], "/runs/r", detached=True)
    command = torchrun_command(DistributedLaunch(nproc_per_node=2), program)
    # torchrun itself, then each rank, without the current directory on sys.path.
    assert command[:4] == [sys.executable, "-P", "-m", "torch.distributed.run"]
    assert command[command.index("--no-python") + 1 :] == program
    assert program[:4] == [sys.executable, "-P", "-m", "tuimon.worker"]
    assert program[4:] == [
        "c.yaml",
        "--run-dir",
        "/runs/r",
        "--set",
        "a.b=1",
        "--set",
        "c=2",
        "--detached",
    ]
    # A node without rank 0 names no run directory: rank 0's is the job's.
    assert "--run-dir" not in config_rank_program("c.yaml", [], None)


def test_a_script_runs_as_python_runs_it() -> None:
    command = torchrun_command(
        DistributedLaunch(nproc_per_node=3), script_rank_program("train.py", ["--epochs", "2"])
    )
    assert command[-4:] == [sys.executable, "train.py", "--epochs", "2"]
    assert command[command.index("--no-python") + 1] == sys.executable


def test_the_ui_starts_torchrun_only_for_several_processes(tmp_path) -> None:
    one = config_worker_command("c.yaml", ["x=1"], tmp_path, DistributedLaunch())
    assert "torch.distributed.run" not in one and "--detached" in one
    two = config_worker_command("c.yaml", ["x=1"], tmp_path, DistributedLaunch(nproc_per_node=2))
    assert two[:4] == [sys.executable, "-P", "-m", "torch.distributed.run"]
    assert two[two.index("--no-python") + 1 :] == config_rank_program(
        "c.yaml", ["x=1"], str(tmp_path), detached=True
    )
    assert "--headless" not in two  # each rank is a worker, never the launching CLI


@pytest.mark.parametrize(
    ("device", "nproc", "gpus", "says"),
    [
        ("cuda", 4, 2, "needs 4 GPUs on this node for train.device cuda, but 2 are visible"),
        ("cuda", 2, 0, "but 0 are visible"),
        ("auto", 3, 2, "needs 3 GPUs"),
        ("cuda:1", 2, 8, "would put all 2 processes on one GPU"),
    ],
)
def test_more_processes_than_gpus_is_refused(device: str, nproc: int, gpus: int, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        check_gpu_count(device, nproc, gpus)


@pytest.mark.parametrize(
    ("device", "nproc", "gpus"),
    [("cpu", 8, 0), ("auto", 8, 0), ("cuda", 2, 2), ("cuda:0", 1, 1), ("cuda", 1, 0)],
)
def test_what_fits_is_accepted(device: str, nproc: int, gpus: int) -> None:
    check_gpu_count(device, nproc, gpus)


def test_inside_a_torchrun_job_nothing_more_is_launched() -> None:
    assert inside_torchrun({"WORLD_SIZE": "2", "RANK": "1"})
    assert not inside_torchrun({"WORLD_SIZE": "1"}) and not inside_torchrun({})


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--nproc-per-node", "0"], "--nproc-per-node must be 1 or more"),
        (["--nnodes", "2", "--nproc-per-node", "2"], "needs --master-addr"),
        (["--master-port", "0", "--nproc-per-node", "2"], "--master-port must be"),
    ],
)
def test_the_cli_says_what_is_wrong_with_exit_2(tmp_path, capsys, flags, says) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    assert cli.main([str(config), "--headless", *flags]) == EXIT_USAGE
    assert says in capsys.readouterr().err


def test_a_flag_that_is_no_number_is_a_usage_error(tmp_path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    with pytest.raises(SystemExit) as exited:
        cli.main([str(config), "--headless", "--nproc-per-node", "two"])
    assert exited.value.code == EXIT_USAGE
    assert "invalid int value: 'two'" in capsys.readouterr().err


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() >= 3,
    reason="needs fewer than 3 visible GPUs to be refused",
)
def test_the_flag_wins_over_the_config(tmp_path, capsys) -> None:
    """The config asks for 3 processes on cuda, the flag for 2: the refusal names the
    number the CLI went by (fewer GPUs than that are visible here)."""
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace("device: cpu", "device: cuda, nproc_per_node: 3"))
    flags = ["--headless", "--set", "train.device=cuda"]
    assert cli.main([str(config), *flags]) == EXIT_USAGE
    from_config = capsys.readouterr().err
    assert cli.main([str(config), *flags, "--nproc-per-node", "2"]) == EXIT_USAGE
    from_flag = capsys.readouterr().err
    if "no CUDA device is available" in from_config:
        pytest.skip("the config check refuses cuda here before the process count is read")
    assert "--nproc-per-node 3 needs 3 GPUs" in from_config
    assert "--nproc-per-node 2 needs 2 GPUs" in from_flag


def test_tuimon_run_checks_its_flags_before_starting_anything(
    tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "s.py"
    script.write_text("raise SystemExit('must not run')\n")
    assert cli.main(["run", "--nproc-per-node", "0", str(script)]) == EXIT_USAGE
    assert "--nproc-per-node must be 1 or more" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag", ["--nproc-per-node", "--nproc_per_node=2", "--nnodes"])
def test_tuimon_run_says_where_its_flags_go(tmp_path, capsys, monkeypatch, flag) -> None:
    """After SCRIPT a flag is the script's: a torchrun flag there is refused, not ignored."""
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "s.py"
    script.write_text("raise SystemExit('must not run')\n")
    assert cli.main(["run", str(script), flag, "2"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "options go before it" in err and f"tuimon run {flag.split('=')[0]} N" in err
    assert not (tmp_path / "runs").exists()
