"""Which rank of which job this process is, from torchrun's environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from tuimon.errors import UsageError


@dataclass(frozen=True)
class RankInfo:
    """This process's place in a distributed job (torchrun's RANK, LOCAL_RANK…)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int = 1  # processes on this node
    node: int = 0  # the node's rank: torchrun's GROUP_RANK
    nodes: int = 1  # torchrun's GROUP_WORLD_SIZE
    run_id: str = "none"  # torchrun's TORCHELASTIC_RUN_ID
    restart: int = 0  # torchrun's TORCHELASTIC_RESTART_COUNT: a restarted job is a new run

    @property
    def is_zero(self) -> bool:
        return self.rank == 0


def rank_info(environ: Mapping[str, str] | None = None) -> RankInfo | None:
    """This process's rank, when it is one of several (WORLD_SIZE > 1); else None.

    torchrun (and Lightning, Accelerate, DeepSpeed, which launch through it) set these
    variables in every worker; a job started otherwise but with `torch.distributed`
    initialized is read from the process group instead."""
    env = os.environ if environ is None else environ
    world = _int(env.get("WORLD_SIZE"))
    if world is None:
        return _from_process_group()
    if world <= 1:
        return None
    rank = _int(env.get("RANK"))
    if rank is None or not 0 <= rank < world:
        raise UsageError(
            f"WORLD_SIZE is {world} but RANK is {env.get('RANK')!r}: start a job of several "
            "processes with torchrun (tuimon CONFIG --nproc-per-node N)"
        )
    local = _int(env.get("LOCAL_RANK"))
    return RankInfo(
        rank=rank,
        world_size=world,
        local_rank=local if local is not None else rank,
        local_world_size=_int(env.get("LOCAL_WORLD_SIZE")) or 1,
        node=_int(env.get("GROUP_RANK")) or 0,
        nodes=_int(env.get("GROUP_WORLD_SIZE")) or 1,
        run_id=env.get("TORCHELASTIC_RUN_ID") or "none",
        restart=_int(env.get("TORCHELASTIC_RESTART_COUNT")) or 0,
    )


def _from_process_group() -> RankInfo | None:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch always has it on Linux
        return None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return None
    rank = dist.get_rank()
    return RankInfo(rank=rank, world_size=dist.get_world_size(), local_rank=rank)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
