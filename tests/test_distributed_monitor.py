"""A torchrun job is one run: real DDP training on CPU with gloo, two ranks, real sockets.

The loop is tests/scripts/ddp_loop.py, written as PyTorch's DDP tutorial writes one, with
the two tuimon lines. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
from torch.distributed import TCPStore

from tuimon.control.protocol import Request
from tuimon.monitor.distributed.command_sync import RankCommands
from tuimon.monitor.distributed.job_store import JobStore
from tuimon.monitor.distributed.rank_reports import RankReporter, identity
from tuimon.run.events import FAILED, RUNNING

from conftest import run_tuimon, worker_env

SCRIPT = Path(__file__).parent / "scripts" / "ddp_loop.py"
DEADLINE = 180.0  # seconds: generous, for a loaded 2-core machine


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_bytes().splitlines():
        try:
            events.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue  # a line being written
    return events


def poll(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"not within {timeout:.0f} s: {what}")


def both_ranks_step(job: Job) -> bool:
    return (job.run_dir / "control.sock").exists() and bool(job.steps(1))


class Job:
    """A torchrun job of ddp_loop.py and its run directory."""

    def __init__(self, process: subprocess.Popen[str], run_dir: Path, out: Path) -> None:
        self.process = process
        self.run_dir = run_dir
        self.out = out

    def log(self, rank: int = 0) -> list[dict[str, Any]]:
        path = (
            self.run_dir / "events.jsonl"
            if rank == 0
            else self.run_dir / f"ranks/{rank}/events.jsonl"
        )
        return read_events(path)

    def steps(self, rank: int) -> list[int]:
        return [event["step"] for event in self.log(rank) if event.get("type") == "step"]

    def control(self, rank: int, command: str) -> list[dict[str, Any]]:
        return [
            e for e in self.log(rank) if e.get("type") == "control" and e.get("command") == command
        ]

    def end(self, rank: int) -> dict[str, Any] | None:
        return next((e for e in self.log(rank) if e.get("type") == "end"), None)

    def wait_exit(self) -> int:
        try:
            return self.process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail("the torchrun job did not end")


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


@pytest.fixture
def start_job(tmp_path: Path) -> Iterator[Callable[..., Job]]:
    jobs: list[Job] = []

    def start(**settings: str) -> Job:
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        run_dir = tmp_path / "job"
        env = worker_env() | {"OUT": str(out), "TUIMON_RUN_DIR": str(run_dir), **settings}
        process = subprocess.Popen(
            torchrun("--standalone", "--nproc-per-node", "2", str(SCRIPT)),
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        job = Job(process, run_dir, out)
        jobs.append(job)
        return job

    yield start
    for job in jobs:
        if job.process.poll() is None:
            os.killpg(job.process.pid, signal.SIGKILL)
            job.process.wait(timeout=30)


def ctl(job: Job, *args: str) -> subprocess.CompletedProcess[str]:
    done = run_tuimon("ctl", "--wait", "120", job.run_dir, *args, timeout=DEADLINE)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_one_run_commands_apply_on_every_rank_at_one_step(start_job: Callable[..., Job]) -> None:
    job = start_job(PACE="0.01", TUIMON_AUTOFIX="1")  # autofix keeps snapshots
    poll(lambda: both_ranks_step(job), "both ranks step")
    # One run directory for the job: rank 1 logs inside it, and serves no socket.
    start = job.log(0)[0]
    assert start["type"] == "start" and start["rank"] == 0
    assert start["distributed"]["world_size"] == 2
    assert [r["rank"] for r in start["distributed"]["ranks"]] == [0, 1]
    assert not (job.run_dir / "ranks" / "1" / "control.sock").exists()
    assert all(event.get("rank") == 1 for event in job.log(1))

    ctl(job, "scale-lr", "0.5")
    applied = poll(lambda: job.control(0, "scale-lr") and job.control(1, "scale-lr"), "scale-lr")
    at = {job.control(rank, "scale-lr")[0]["step"] for rank in (0, 1)}
    assert len(at) == 1, f"scale-lr applied at different steps: {at}"
    assert applied[0]["new"] == pytest.approx(0.025)
    step = at.pop()
    later = poll(
        lambda: [e for e in job.log(1) if e.get("type") == "step" and e["step"] > step],
        "steps after",
    )
    assert later[0]["lr"] == pytest.approx(0.025)  # rank 1's optimizer has the new LR

    ctl(job, "pause")
    poll(lambda: job.control(0, "pause") and job.control(1, "pause"), "pause on both")
    paused_at = {job.control(rank, "pause")[0]["step"] for rank in (0, 1)}
    assert len(paused_at) == 1
    # Paused: neither rank's log gets a step past the pause while the job waits.
    before = (max(job.steps(0)), max(job.steps(1)))
    time.sleep(1.5)
    assert (max(job.steps(0)), max(job.steps(1))) == before
    assert max(before) <= paused_at.pop()

    ctl(job, "resume")
    poll(lambda: max(job.steps(0)) > before[0] and max(job.steps(1)) > before[1], "both resume")

    # Both replicas go back to the same snapshot (rank 0 chooses it), at the same step.
    ctl(job, "recover", "0.5")
    poll(lambda: job.control(0, "recover") and job.control(1, "recover"), "recover on both")
    recovered = [job.control(rank, "recover")[0] for rank in (0, 1)]
    assert recovered[0]["step"] == recovered[1]["step"]
    assert recovered[0]["restored_step"] == recovered[1]["restored_step"] is not None

    ctl(job, "stop")
    assert job.wait_exit() == 0
    ends = [job.end(rank) for rank in (0, 1)]
    assert [end and end["status"] for end in ends] == ["stopped", "stopped"]
    assert ends[0]["step"] == ends[1]["step"]
    # One checkpoint, rank 0's; the replicas never diverged.
    assert len(list((job.run_dir / "checkpoints").iterdir())) == 1
    assert not any((job.run_dir / "ranks" / "1" / "checkpoints").iterdir())
    weights = [torch.load(job.out / f"rank{rank}.pt") for rank in (0, 1)]
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    # Rank 0's job log holds every rank's reports; a healthy job gets no rank alert.
    ranks = [e for e in job.log(0) if e.get("type") == "ranks"]
    assert ranks and {r["rank"] for r in ranks[-1]["ranks"]} == {0, 1}
    rank_rules = {"straggler", "stalled_rank", "rank_nan"}
    assert not [e for e in job.log(0) if e.get("type") == "alert" and e["rule"] in rank_rules]


def test_a_killed_rank_is_named_and_the_job_ends(start_job: Callable[..., Job]) -> None:
    job = start_job(PACE="0.02")
    poll(lambda: len(job.steps(1)) > 5, "rank 1 steps")
    victim = job.log(1)[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    code = job.wait_exit()
    assert code != 0
    end = job.end(0)
    assert end is not None and end["status"] == "failed"
    assert f"rank 1 (pid {victim}" in end["error"]


def test_a_rank_whose_code_raises_is_named_in_the_jobs_end(start_job: Callable[..., Job]) -> None:
    """Rank 1's training code raises: its own log has the traceback, and rank 0, whose
    all-reduce then fails, ends the job's log naming rank 1 and its error first."""
    job = start_job(RAISE_RANK="1", RAISE_AT="30", STEPS="100000", PACE="0.01")
    assert job.wait_exit() != 0
    own = job.end(1)
    assert own is not None and own["status"] == "failed"
    assert "RuntimeError: CUDA out of memory" in own["error"]
    end = job.end(0)
    assert end is not None and end["status"] == "failed"
    first = end["error"].splitlines()[0]
    assert first.startswith("rank 1 (pid ") and "failed at step" in first
    assert first.endswith("RuntimeError: CUDA out of memory (a stand-in raised by the test)")


def test_a_slow_rank_and_a_nan_on_another_rank_are_named(start_job: Callable[..., Job]) -> None:
    """Rank 1 waits 30 ms for each batch (a slow loader on one node): under DDP rank 0
    waits as long inside the all-reduce, so only the data time tells them apart. Later its
    loss turns NaN: the job's doctor names rank 1, where rank 0's own loss is finite."""
    job = start_job(SLOW_RANK="1", SLOW_SECONDS="0.03", NAN_RANK="1", NAN_AT="300", STEPS="320")
    assert job.wait_exit() == 0
    alerts = {e["rule"]: e for e in job.log(0) if e.get("type") == "alert"}
    assert "straggler" in alerts, sorted(alerts)
    assert "rank 1" in alerts["straggler"]["message"]
    assert "rank 0" not in alerts["straggler"]["message"]
    assert "rank_nan" in alerts and "rank 1" in alerts["rank_nan"]["message"]
    assert alerts["rank_nan"]["step"] >= 300


def test_a_frozen_rank_is_named_and_the_stuck_job_ends_its_log(
    start_job: Callable[..., Job],
) -> None:
    """A rank that hangs (here: SIGSTOP) leaves rank 0 waiting inside the all-reduce, where
    NCCL would wait for its 10-minute timeout: tuimon names the rank once it has been
    unheard for rank_timeout, and ends the job's log when rank 0 stays stuck after that."""
    job = start_job(PACE="0.02", RANK_TIMEOUT="3")
    poll(lambda: len(job.steps(1)) > 5, "rank 1 steps")
    victim = job.log(1)[0]["pid"]
    os.kill(victim, signal.SIGSTOP)
    try:
        end = poll(lambda: job.end(0), "the job's log ends")
    finally:
        os.kill(victim, signal.SIGKILL)
    assert end["status"] == "failed"
    assert f"rank 1 (pid {victim}" in end["error"] and "hung or dead" in end["error"]
    said = [e["text"] for e in job.log(0) if e.get("type") == "message" and e["level"] == "error"]
    assert any(f"rank 1 (pid {victim}" in text for text in said)


@pytest.fixture
def store() -> Iterator[JobStore]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = TCPStore("127.0.0.1", port, 1, True, timeout=timedelta(seconds=10))
    yield JobStore(server)


def test_a_report_built_before_the_end_never_lands_after_it(store: JobStore) -> None:
    """The reporter thread builds a report (status running) and is slow to send it while
    the rank fails and sends its end's report: the end's must be the one the store keeps,
    or rank 0 names a failed rank as merely dead."""
    status = [RUNNING]
    reporter = RankReporter(
        store, identity(1, 1, 0, "cpu"), memory=lambda: None, status=lambda: status[0]
    )
    in_set, release = threading.Event(), threading.Event()
    plain_set = store.set

    def slow_set(key: str, value: Any) -> None:
        if value.get("status") == RUNNING:  # the periodic report: held on its way
            in_set.set()
            release.wait(10)
        plain_set(key, value)

    store.set = slow_set  # type: ignore[method-assign]
    periodic = threading.Thread(target=reporter._send)  # what the reporter thread runs
    periodic.start()
    assert in_set.wait(10)
    status[0] = FAILED
    ending = threading.Thread(target=reporter.send, args=("RuntimeError: boom",))
    ending.start()
    ending.join(0.5)  # with the report in flight, the end's waits for it
    release.set()
    periodic.join(10)
    ending.join(10)
    kept = store.get("rank/1")
    assert kept["status"] == FAILED and kept["error"] == "RuntimeError: boom"
    reporter._send()  # the reporter thread again, after the end: nothing more is sent
    assert store.get("rank/1")["status"] == FAILED


def test_command_exchange_agrees_on_the_step_in_lockstep(store: JobStore) -> None:
    every = 4
    zero, one = RankCommands(store, 0, every), RankCommands(store, 1, every)
    applied: dict[int, list[tuple[str, int]]] = {0: [], 1: []}
    inbox = {3: [Request("scale-lr", {"factor": 0.5})], 9: [Request("pause")]}
    for step in range(1, 20):
        # Rank 1 reaches the boundary of `step` after rank 0 left `step - 1`'s.
        for request in zero.exchange(step, inbox.get(step, []), paused=False):
            applied[0].append((request.cmd, step))
        for request in one.exchange(step, [], paused=False):
            applied[1].append((request.cmd, step))
    assert applied[0] == applied[1] == [("scale-lr", 4), ("pause", 12)]


def test_a_request_made_on_another_rank_is_applied_by_all(store: JobStore) -> None:
    every = 2
    zero, one = RankCommands(store, 0, every), RankCommands(store, 1, every)
    applied: dict[int, list[tuple[str, int]]] = {0: [], 1: []}
    for step in range(1, 12):
        local = [Request("stop", source="signal")] if step == 3 else []
        for request in one.exchange(step, local, paused=False):
            applied[1].append((request.cmd, step))
        for request in zero.exchange(step, [], paused=False):
            applied[0].append((request.cmd, step))
    assert applied[0] and applied[0] == applied[1]
    assert applied[0][0][0] == "stop"


def test_sigterm_to_torchrun_stops_every_rank_at_one_step(start_job: Callable[..., Job]) -> None:
    """torchrun hands a SIGTERM on to every rank: the job stops as one, at one step,
    with one checkpoint, instead of each rank leaving at its own step."""
    job = start_job(PACE="0.01")
    poll(lambda: both_ranks_step(job), "both ranks step")
    job.process.send_signal(signal.SIGTERM)
    job.wait_exit()
    ends = [job.end(rank) for rank in (0, 1)]
    assert [end and end["status"] for end in ends] == ["stopped", "stopped"]
    assert ends[0]["step"] == ends[1]["step"]
    stops = [job.control(rank, "stop")[0]["step"] for rank in (0, 1)]
    assert stops == [ends[0]["step"]] * 2
    assert len(list((job.run_dir / "checkpoints").iterdir())) == 1


def test_a_rank_with_no_store_to_share_is_told_how_to_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WORLD_SIZE says this is one rank of several, but neither torchrun's store nor a
    process group is there: the Monitor says what to do instead of hanging."""
    from tuimon import Monitor
    from tuimon.monitor.distributed.job_store import StoreUnavailable

    for name in ("TORCHELASTIC_USE_AGENT_STORE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    model = torch.nn.Linear(2, 1)
    with pytest.raises(StoreUnavailable, match="launch with torchrun"):
        Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_torchruns_environment_read_as_this_processs_rank() -> None:
    from tuimon.errors import UsageError
    from tuimon.monitor.distributed.rank_info import rank_info

    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    env |= {"GROUP_RANK": "1", "GROUP_WORLD_SIZE": "2", "TORCHELASTIC_RESTART_COUNT": "2"}
    info = rank_info(env)
    assert info is not None and not info.is_zero
    assert (info.rank, info.local_rank, info.node, info.nodes, info.restart) == (3, 1, 1, 2, 2)
    assert info.local_world_size == 2
    assert rank_info({"WORLD_SIZE": "1", "RANK": "0"}) is None
    with pytest.raises(UsageError, match="torchrun"):
        rank_info({"WORLD_SIZE": "2", "RANK": "x"})
    with pytest.raises(UsageError, match="RANK is '5'"):
        rank_info({"WORLD_SIZE": "2", "RANK": "5"})
