"""torchrun's key-value store, as the ranks of one Monitor share it.

torchrun's agent serves a TCPStore at MASTER_ADDR:MASTER_PORT for the whole job (its
workers are told so by TORCHELASTIC_USE_AGENT_STORE); a job that initialized
`torch.distributed` without the agent has the default process group's store. Every key
tuimon writes lives under `tuimon/<restart>/<monitor>/`, so a restarted job and a second
Monitor in the same script (a GAN's) never read each other's keys. Values are JSON.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import orjson
import torch.distributed as dist

from tuimon.monitor.distributed.rank_info import RankInfo

# How long one store operation may wait (connecting, or a key that should come soon).
STORE_TIMEOUT = timedelta(seconds=60)
_monitors_made = 0  # this process's Monitors so far: the same count on every rank


class StoreUnavailable(RuntimeError):
    """No store to share: the job cannot agree on a run directory or on commands."""


class JobStore:
    """JSON values under this Monitor's own prefix of the job's store."""

    def __init__(self, store: dist.Store) -> None:
        self._store = store

    @classmethod
    def open(cls, info: RankInfo) -> JobStore:
        """The job's store, under a prefix of this Monitor's own."""
        global _monitors_made
        _monitors_made += 1
        prefix = f"tuimon/{info.restart}/{_monitors_made}/"
        return cls(dist.PrefixStore(prefix, _base_store()))

    def set(self, key: str, value: Any) -> None:
        self._store.set(key, orjson.dumps(value).decode())

    def get(self, key: str, timeout: timedelta = STORE_TIMEOUT) -> Any:
        """The value of `key`, waiting up to `timeout` for someone to set it."""
        self._store.wait([key], timeout)
        return orjson.loads(self._store.get(key))

    def get_many(self, keys: list[str]) -> list[Any]:
        """Values of keys known to exist, in one round trip."""
        return [orjson.loads(raw) for raw in self._store.multi_get(keys)]

    def has(self, key: str) -> bool:
        return bool(self._store.check([key]))

    def counter(self, key: str, add: int = 0) -> int:
        """A counter: adds `add` (0 reads it) in one round trip."""
        return int(self._store.add(key, add))


def _base_store() -> dist.Store:
    """torchrun's agent store, or the default process group's."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if agent and addr and port:
        return dist.TCPStore(
            addr, int(port), is_master=False, timeout=STORE_TIMEOUT, wait_for_workers=False
        )
    if dist.is_available() and dist.is_initialized():
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    raise StoreUnavailable(
        "this process is one rank of a distributed job (WORLD_SIZE > 1) but tuimon found no "
        "store to share with the other ranks: launch with torchrun, or create the Monitor "
        "after torch.distributed.init_process_group()"
    )
