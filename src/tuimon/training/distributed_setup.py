"""The built-in trainer as one process of a torchrun job: its process group, its device,
its DistributedDataParallel model, its share of the data, and the check that the replicas
ended identical.

torchrun says what a process is through its environment (RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR/PORT); a job of one process (WORLD_SIZE unset or 1) uses none of this.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from tuimon.errors import UsageError
from tuimon.monitor.distributed.rank_info import RankInfo
from tuimon.training.device import select_device

GLOO = "gloo"
NCCL = "nccl"


def process_device(name: str, place: RankInfo) -> torch.device:
    """`train.device` for one process of a job: `auto` and `cuda` take cuda:LOCAL_RANK."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name.startswith("cuda:"):
        if place.local_world_size > 1:
            raise UsageError(
                f"train.device is {name}, which would put all {place.local_world_size} "
                "processes of this node on one GPU; use cuda (or auto)"
            )
        return select_device(name)
    select_device("cuda")  # a UsageError when there is no CUDA
    if place.local_rank >= torch.cuda.device_count():
        raise UsageError(
            f"process {place.local_rank} of this node needs cuda:{place.local_rank}, but "
            f"{torch.cuda.device_count()} CUDA device(s) are visible; lower --nproc-per-node"
        )
    return torch.device("cuda", place.local_rank)


def join_process_group(device: torch.device) -> None:
    """The job's default process group: NCCL for GPUs, gloo for the CPU (a no-op when
    the script or a library already made it)."""
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=NCCL if device.type == "cuda" else GLOO)


def leave_process_group() -> None:
    """Destroy the default process group, if there is one (at the end, failed or not)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """DDP around `model` (already on `device`); it starts every rank from rank 0's weights."""
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def train_sampler(
    dataset: Dataset[Any], place: RankInfo, *, shuffle: bool, seed: int
) -> DistributedSampler[int]:
    """This rank's share of the training set: the same number of samples on every rank
    (the remainder is dropped), a different order each epoch after `set_epoch`."""
    return DistributedSampler(
        dataset,
        num_replicas=place.world_size,
        rank=place.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=True,
    )


def val_share(size: int, place: RankInfo) -> list[int]:
    """This rank's share of the validation set, every sample exactly once across ranks
    (so the reduced sums are exact: no padding, unlike DistributedSampler)."""
    return list(range(place.rank, size, place.world_size))


def sum_across_ranks(*values: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor summed over every rank (one all-reduce)."""
    flat = torch.stack([v.to(torch.float64) for v in values])
    dist.all_reduce(flat)
    return list(flat.unbind())


def weights_digest(parameters: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 of named parameters (names and exact bytes): equal digests, equal replicas."""
    digest = hashlib.sha256()
    for name, tensor in parameters:
        digest.update(name.encode())
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def digests_of_all_ranks(digest: str) -> list[str]:
    """Every rank's digest, in rank order (one all-gather)."""
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, digest)
    return [str(d) for d in gathered]
