"""Will a config's data and model fit in memory? Decided before anything is allocated.

`model.hidden: [100000000]` or `data.synthetic.image_size: 100000` make torch ask for
hundreds of gigabytes: at best a DefaultCPUAllocator traceback deep in setup, at worst a
machine swapping itself to a halt. So the model is built once on the meta device (shapes,
no storage) to count its parameters, the synthetic set's tensors are sized from its
settings, and whatever cannot fit in the memory this machine has available is refused
with the key responsible. The bound is generous on purpose: it catches the absurd, and
`build_model` / `build_data` still turn an allocation that fails anyway into a clear error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from tuimon.config.schema import Config, DataConfig
from tuimon.training.synthetic import MATERIALIZE_BYTES

if TYPE_CHECKING:
    from tuimon.training.models import DataShape

# float32 weights, their gradients and two optimizer slots (Adam's moments).
BYTES_PER_TRAINED_PARAMETER = 16
# A batch exists as uint8, as floats, padded for a crop and normalized: about 3 float copies.
BATCH_FLOAT_COPIES = 3
# Per sample of the synthetic set: its class, its label and its place in the shuffled split.
INDEX_BYTES_PER_SAMPLE = 3 * 8
SYNTHETIC_DEFAULT_SAMPLES = 10_000


@dataclass(frozen=True)
class Oversize:
    """What does not fit: the key to blame and a sentence saying by how much."""

    key: tuple[str, ...]
    message: str


def available_memory() -> int:
    """Bytes this process could still allocate: free RAM, or less under a cgroup limit."""
    available = psutil.virtual_memory().available
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return available
    if limit.isdigit():
        available = min(available, max(0, int(limit) - used))
    return available


def data_oversize(config: Config, available: int) -> Oversize | None:
    """The synthetic set (or the synthetic fallback) that would not fit, if it would not."""
    from tuimon.training.datasets import KNOWN

    data: DataConfig = config.data
    known = KNOWN.get(data.name)
    if known is not None and data.fallback != "synthetic":
        return None  # a real dataset's size is what it is
    synthetic = data.synthetic
    channels, size, classes = synthetic.channels, synthetic.image_size, synthetic.num_classes
    samples = synthetic.num_samples or SYNTHETIC_DEFAULT_SAMPLES
    if known is not None:
        channels, size, classes = known.channels, known.image_size, known.num_classes
        samples = synthetic.num_samples or known.train_size
    pixels = channels * size * size
    prototypes = 4 * classes * pixels
    images = samples * pixels if samples * pixels <= MATERIALIZE_BYTES else 0
    padded = channels * (size + 2 * data.augment.random_crop) ** 2
    batch = 4 * BATCH_FLOAT_COPIES * min(config.train.batch_size, samples) * padded
    total = prototypes + images + INDEX_BYTES_PER_SAMPLE * samples + batch
    if total <= available:
        return None
    if batch > prototypes:
        key: tuple[str, ...] = ("train", "batch_size")
        what = f"a batch of {min(config.train.batch_size, samples):,} images takes {_size(batch)}"
    else:
        key = ("data", "synthetic", "image_size")
        what = (
            f"its class prototypes (num_classes × channels × image_size² = "
            f"{classes:,} × {channels:,} × {size:,}² floats) take {_size(prototypes)}"
        )
    return Oversize(
        key,
        f"the synthetic data needs about {_size(total)}: {what}, more than the "
        f"{_size(available)} this machine has available",
    )


def parameter_count(config: Config, shape: DataShape) -> int | None:
    """The parameters of the model `config` builds for data of `shape`, counted on the
    meta device; None for a model tuimon cannot size without running it (a custom
    callable, pretrained weights) or one that does not build on the meta device."""
    import torch

    from tuimon.training.models import build_model

    name = config.model.name
    if ":" in name or config.model.kwargs.get("pretrained"):
        return None
    try:
        with torch.device("meta"):
            model = build_model(config, shape)
    except Exception:
        return None  # the real build reports what is wrong, with its own message
    return sum(parameter.numel() for parameter in model.parameters())


def model_oversize(config: Config, shape: DataShape, available: int) -> Oversize | None:
    """The model that would not fit for training, if it would not."""
    count = parameter_count(config, shape)
    if count is None:
        return None
    needed = count * BYTES_PER_TRAINED_PARAMETER
    if needed <= available:
        return None
    kwargs = config.model.kwargs
    key = next((k for k in ("hidden", "blocks", "width") if k in kwargs), "name")
    return Oversize(
        ("model", key),
        f"the model would have {count:,} parameters, about {_size(needed)} to train "
        f"(weights, gradients, optimizer state), more than the {_size(available)} this "
        "machine has available",
    )


def _size(count: float) -> str:
    """Bytes as a person reads them: 25.6 GB, 1.3 TB."""
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]
    power = min(len(units) - 1, int(math.log10(max(count, 1)) // 3))
    return f"{count / 1000**power:.3g} {units[power]}"
