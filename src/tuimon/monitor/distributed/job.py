"""One Monitor per rank, one run per job: the run directory, the ranks and the services
(command exchange, reports) a Monitor needs when it is one rank of several."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import cast

from tuimon.monitor.distributed.command_sync import RankCommands
from tuimon.monitor.distributed.job_store import JobStore
from tuimon.monitor.distributed.rank_info import RankInfo
from tuimon.run.events import DistributedInfo, RankSummary
from tuimon.run.run_dir import DEFAULT_BASE, rank_run_dir, run_dir_from_env

# Rank 0 waits this long for every rank's Monitor before it starts without the missing.
JOIN_TIMEOUT = 15.0
# Another rank waits this long for rank 0 to say where the job's run directory is.
DIR_TIMEOUT = timedelta(seconds=120)
_JOB = "job"


class DistributedJob:
    """This rank's view of the job: its store, the members, the run directory."""

    def __init__(self, info: RankInfo, store: JobStore) -> None:
        self.info = info
        self.store = store
        self.members: list[RankSummary] = []
        self.job_dir: Path | None = None  # rank 0's directory (on rank 0's node)

    @classmethod
    def join(cls, info: RankInfo) -> DistributedJob:
        return cls(info, JobStore.open(info))

    @property
    def missing(self) -> list[int]:
        """Ranks that have no Monitor (known on rank 0 once the members are in)."""
        joined = {member["rank"] for member in self.members}
        return [rank for rank in range(self.info.world_size) if rank not in joined]

    def agree_run_dir(
        self, make_job_dir: Callable[[], Path], requested: Path | None, name: str
    ) -> Path:
        """Rank 0 makes the job's directory and tells the others; rank N takes
        `ranks/N/` in it, or, on another node (no shared filesystem assumed), in a
        directory of the same name under that node's own root."""
        if self.info.is_zero:
            self.job_dir = make_job_dir()
            self.store.set(
                _JOB,
                {
                    "run_dir": str(self.job_dir),
                    "node": self.info.node,
                    "host": socket.gethostname(),
                },
            )
            return self.job_dir
        job = self.store.get(_JOB, DIR_TIMEOUT)
        shared = Path(job["run_dir"])
        if job["node"] == self.info.node and job["host"] == socket.gethostname():
            job_dir = shared
        else:
            job_dir = requested or run_dir_from_env() or DEFAULT_BASE / shared.name
        self.job_dir = job_dir
        return rank_run_dir(job_dir, self.info.rank, name)

    def announce(self, me: RankSummary) -> None:
        self.store.set(f"identity/{self.info.rank}", me)

    def gather_members(self, me: RankSummary) -> None:
        """Rank 0: every rank's identity, waiting up to JOIN_TIMEOUT for late ones."""
        deadline = time.monotonic() + JOIN_TIMEOUT
        keys = [f"identity/{rank}" for rank in range(self.info.world_size)]
        present: list[str] = []
        while True:
            present = [key for key in keys if self.store.has(key)]
            if len(present) == len(keys) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.members = [cast(RankSummary, value) for value in self.store.get_many(present)]
        if not any(member.get("rank") == self.info.rank for member in self.members):
            self.members.insert(0, me)

    def commands(self, every: int) -> RankCommands:
        return RankCommands(self.store, self.info.rank, every)

    def describe(self, backend: str | None, sync_every: int) -> DistributedInfo:
        return {
            "world_size": self.info.world_size,
            "nodes": self.info.nodes,
            "backend": backend,
            "run_id": self.info.run_id,
            "sync_every": sync_every,
            "ranks": list(self.members),
        }
