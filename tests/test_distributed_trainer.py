"""The built-in trainer as a torchrun job: real processes, DDP on the CPU with gloo, two
ranks, launched by `tuimon` itself (headless, detached as the UI starts it, and `tuimon
run` for a script). Every wait is a poll with a deadline; one torchrun job per test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tuimon.launch import start_config_worker, start_script_worker
from tuimon.monitor.distributed.rank_info import RankInfo
from tuimon.run.log_reader import read_events
from tuimon.torchrun_args import DistributedLaunch
from tuimon.training.build_checks import load_run_config
from tuimon.training.distributed_setup import (
    process_device,
    train_sampler,
    val_share,
    weights_digest,
)
from tuimon.training.trainer import REPLICAS_IDENTICAL, Trainer

from conftest import TESTS_DIR, run_tuimon, worker_env

DEADLINE = 240.0  # seconds: generous, for a loaded 2-core machine
TWO = DistributedLaunch(nproc_per_node=2)

# 256 samples: 192 to train, 96 for each of the 2 ranks, 6 steps of 16 an epoch.
CONFIG = """\
name: ddp
model: {name: mlp, hidden: [16]}
data:
  name: synthetic
  synthetic: {num_samples: 256, channels: 1, image_size: 8, num_classes: 4}
  val_split: 0.25
optimizer: {name: SGD, lr: 0.1, momentum: 0.9}
train: {max_steps: 20, batch_size: 16, seed: 0, val_every: 10, device: cpu}
monitor: {log_every: 2, system_interval: 5, print_every: 1}
"""


def job_log(run_dir: Path, rank: int) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl" if rank == 0 else run_dir / "ranks" / str(rank) / "events.jsonl"
    return list(read_events(path)) if path.exists() else []


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == kind]


def replicas_note(events: list[dict[str, Any]]) -> str:
    """The digest a rank logged for its final weights (the note says they matched)."""
    notes = [e["text"] for e in of_type(events, "message") if "sha256" in e.get("text", "")]
    assert len(notes) == 1, notes
    assert notes[0].startswith(REPLICAS_IDENTICAL), notes[0]
    return notes[0].split("sha256 ")[1].rstrip(")")


def checkpoint_digest(path: Path) -> str:
    """The digest of a checkpoint's weights (the mlp has parameters only, no buffers)."""
    weights = torch.load(path, map_location="cpu", weights_only=True)["model"]
    assert not any(name.startswith("module.") for name in weights), list(weights)
    return weights_digest(weights.items())[:16]


def poll(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"not within {DEADLINE:.0f} s: {what}")


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Detached torchrun jobs a test started: killed (their whole session) if left over."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def wait_exit(process: subprocess.Popen[bytes], run_dir: Path) -> int:
    try:
        return process.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output = (run_dir / "output.log").read_text(errors="replace")
        pytest.fail(f"the job did not end:\n{output[-4000:]}")


def test_a_headless_config_job_of_two_processes_is_one_run_with_identical_replicas(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    done = run_tuimon(
        config, "--headless", "--nproc-per-node", "2", "--run-dir", "run", cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "run"
    # One run directory for the job: no rank made one of its own.
    assert not (tmp_path / "runs").exists()
    assert (run / "ranks" / "1" / "events.jsonl").is_file()
    main, other = job_log(run, 0), job_log(run, 1)
    assert of_type(main, "end")[-1]["status"] == "completed"
    assert of_type(other, "end")[-1]["status"] == "completed"
    # Both ranks trained every step, each on its own share of the data: DistributedSampler
    # gives them different samples, so their losses differ.
    steps0, steps1 = of_type(main, "step"), of_type(other, "step")
    assert [e["step"] for e in steps0] == [e["step"] for e in steps1] == list(range(1, 21))
    assert steps0[0]["samples"] == steps1[0]["samples"] == 16  # batch_size is per process
    assert [e["loss"] for e in steps0] != [e["loss"] for e in steps1]
    # Validation: every rank evaluated its share; rank 0 alone logged the whole set's.
    assert [e["step"] for e in of_type(main, "metrics") if "val_loss" in e] == [10, 20]
    assert not [e for e in of_type(other, "metrics") if "val_loss" in e]
    # The replicas ended identical, and equal to the one checkpoint of the job.
    digest = replicas_note(main)
    assert replicas_note(other) == digest
    checkpoints = sorted((run / "checkpoints").glob("*.pt"))
    assert [p.name for p in checkpoints] == ["step-00000020.pt"]
    assert checkpoint_digest(checkpoints[0]) == digest
    assert "2 processes" in done.stdout


def test_a_detached_job_resumes_on_every_rank_and_stops_as_one(tmp_path, spawned, monkeypatch):
    """As the UI starts it: torchrun detached, its output in the run's output.log. It
    resumes a one-process checkpoint on both ranks, and a stop ends both at one step."""
    monkeypatch.chdir(tmp_path)
    first = tmp_path / "first.yaml"
    first.write_text(CONFIG.replace("max_steps: 20", "max_steps: 8"))
    trainer = Trainer(load_run_config(str(first), []))
    trainer.setup()
    assert trainer.run(tmp_path / "first", quiet=True) == "completed"
    resume = tmp_path / "first" / "checkpoints" / "step-00000008.pt"

    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace("max_steps: 20", "max_steps: 100000000"))
    monkeypatch.setenv("PYTHONPATH", worker_env()["PYTHONPATH"])
    run, process = start_config_worker(
        str(config), [f"train.resume={resume}", "train.val_every=0"], "ddp", "run", TWO
    )
    spawned.append(process)

    def both_ranks_past(step: int) -> bool:
        return all(
            [e["step"] for e in of_type(job_log(run, rank), "step")][-1:] >= [step]
            for rank in (0, 1)
        )

    poll(lambda: both_ranks_past(12), "both ranks training past step 12")
    stopped = run_tuimon("ctl", "--wait", "120", run, "stop", timeout=DEADLINE)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert wait_exit(process, run) == 0
    main, other = job_log(run, 0), job_log(run, 1)
    ends = [of_type(log, "end")[-1] for log in (main, other)]
    assert [e["status"] for e in ends] == ["stopped", "stopped"]
    assert ends[0]["step"] == ends[1]["step"]
    # Both ranks continued from the checkpoint's step 8.
    assert of_type(main, "step")[0]["step"] == of_type(other, "step")[0]["step"] == 9
    assert replicas_note(main) == replicas_note(other)
    output = (run / "output.log").read_text(errors="replace")
    assert "OMP_NUM_THREADS" in output  # torchrun's own words: its output is the run's


def test_tuimon_run_starts_a_script_through_torchrun(tmp_path, spawned, monkeypatch):
    """`tuimon run --nproc-per-node 2 SCRIPT`: the script runs twice; its Monitors join the
    run the UI would attach to."""
    monkeypatch.chdir(tmp_path)
    for name, value in {**worker_env(), "STEPS": "12", "OUT": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    script = TESTS_DIR / "scripts" / "ddp_loop.py"
    run, process = start_script_worker(str(script), [], base=tmp_path / "runs", launch=TWO)
    spawned.append(process)
    assert wait_exit(process, run) == 0, (run / "output.log").read_text(errors="replace")
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run.name]
    for rank in (0, 1):
        log = job_log(run, rank)
        assert of_type(log, "end")[-1]["status"] == "completed"
        assert [e["step"] for e in of_type(log, "step")] == list(range(1, 13))
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_each_rank_trains_on_its_own_share_of_the_data():
    places = [RankInfo(rank=r, local_rank=r, world_size=3, local_world_size=3) for r in range(3)]
    dataset = list(range(100))
    shares = [train_sampler(dataset, p, shuffle=True, seed=5) for p in places]
    epoch0 = [list(s) for s in shares]
    assert [len(s) for s in epoch0] == [33, 33, 33]  # equal: every rank takes as many steps
    assert len(set().union(*map(set, epoch0))) == 99  # disjoint
    for share in shares:
        share.set_epoch(1)
    assert [list(s) for s in shares] != epoch0  # another order each epoch
    vals = [val_share(10, p) for p in places]
    assert sorted(i for share in vals for i in share) == list(range(10))  # once, no padding


def test_a_process_takes_the_device_of_its_local_rank():
    place = RankInfo(rank=3, local_rank=1, world_size=4, local_world_size=2)
    assert process_device("cpu", place) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert process_device("auto", place) == torch.device("cpu")
    from tuimon.errors import UsageError

    with pytest.raises(UsageError, match="on one GPU"):
        process_device("cuda:0", place)


def test_the_worker_entry_point_refuses_a_bad_config_with_exit_2(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace("batch_size: 16", "batch_size: -1"))
    done = subprocess.run(
        [sys.executable, "-P", "-m", "tuimon.worker", str(config), "--run-dir", "r"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=worker_env(),
        timeout=DEADLINE,
    )
    assert done.returncode == 2, done.stderr
    assert "batch_size" in done.stderr and not (tmp_path / "r").exists()


def test_two_nodes_on_one_machine_make_one_job_with_the_run_on_node_zero(tmp_path):
    """`--nnodes 2`: each "node" a `tuimon CONFIG --headless` of its own, in its own
    directory (no shared filesystem); node 0 holds the run, node 1 makes none."""
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    nodes = []
    for rank in (0, 1):
        where = tmp_path / f"node{rank}"
        where.mkdir()
        flags = ["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", str(rank)]
        flags += ["--master-addr", "127.0.0.1", "--master-port", port]
        nodes.append(
            subprocess.Popen(
                [sys.executable, "-m", "tuimon", str(config), "--headless", *flags],
                cwd=where,
                env=worker_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    try:
        outputs = [node.communicate(timeout=DEADLINE)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait(timeout=30)
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    (run,) = (tmp_path / "node0" / "runs").iterdir()
    assert of_type(job_log(run, 0), "end")[-1]["status"] == "completed"
    assert [p.name for p in (tmp_path / "node1").iterdir()] == ["runs"]
    rank1 = tmp_path / "node1" / "runs" / run.name
    assert of_type(job_log(rank1, 1), "end")[-1]["status"] == "completed"
    assert replicas_note(job_log(rank1, 1)) == replicas_note(job_log(run, 0))
    assert "node 0 holds the run" in outputs[1]
    # Node 0's job log is complete anyway: rank 1's reports came through torchrun's store.
    job = job_log(run, 0)
    assert job[0]["distributed"]["nodes"] == 2
    remote = next(r for r in of_type(job, "ranks")[-1]["ranks"] if r["rank"] == 1)
    assert remote["node"] == 1 and remote["status"] == "completed"
    assert remote["step"] == of_type(job_log(rank1, 1), "end")[-1]["step"]


def test_a_job_whose_training_raises_ends_failed_on_every_rank_and_exits_1(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        CONFIG.replace("model: {name: mlp, hidden: [16]}", "model: {name: faulty_models:raises_at}")
    )
    done = run_tuimon(
        config, "--headless", "--nproc-per-node", "2", "--run-dir", "run", cwd=tmp_path
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "the job failed" in done.stderr
    for rank in (0, 1):
        end = of_type(job_log(tmp_path / "run", rank), "end")[-1]
        assert end["status"] == "failed" and "boom at step 5" in end["error"]
