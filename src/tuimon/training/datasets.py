"""Datasets by name: torchvision's MNIST/FashionMNIST/CIFAR, or the built-in synthetic set.

Images are kept as uint8 tensors and turned into normalized floats per sample, with random
crop and flip for training. A dataset that is absent and cannot be downloaded either falls
back to synthetic data of the same shape (when the config says so, with a note saying what
happened) or stops the run with a message saying how to fix it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from tuimon.config.schema import DataConfig, FaultsConfig
from tuimon.config.shown_values import clipped
from tuimon.errors import UsageError
from tuimon.training.models import DataShape, is_allocation_failure
from tuimon.training.synthetic import SyntheticImages

DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class KnownDataset:
    torchvision_class: str
    channels: int
    image_size: int
    num_classes: int
    train_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


KNOWN = {
    "mnist": KnownDataset("MNIST", 1, 28, 10, 60_000, (0.1307,), (0.3081,)),
    "fashion_mnist": KnownDataset("FashionMNIST", 1, 28, 10, 60_000, (0.2860,), (0.3530,)),
    "cifar10": KnownDataset(
        "CIFAR10", 3, 32, 10, 50_000, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": KnownDataset(
        "CIFAR100", 3, 32, 100, 50_000, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
}


class ImageSource(Protocol):
    labels: torch.Tensor

    def __len__(self) -> int: ...

    def image(self, index: int) -> torch.Tensor: ...

    def images_at(self, indices: torch.Tensor) -> torch.Tensor: ...


class TensorImages:
    """A real dataset held in memory as uint8 NxCxHxW."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> torch.Tensor:
        return self.images[index]

    def images_at(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]


class ImageTransform:
    """uint8 image → float in [0, 1] → random crop / flip (training only) → normalized."""

    def __init__(
        self,
        mean: tuple[float, ...] | None,
        std: tuple[float, ...] | None,
        crop_padding: int = 0,
        hflip: bool = False,
        scale: bool = True,
    ) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1) if mean is not None else None
        self.std = torch.tensor(std).view(-1, 1, 1) if std is not None else None
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.scale = scale  # False only for the raw_pixels fault: values stay in 0-255

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.batch(image.unsqueeze(0))[0]

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """The same for a whole uint8 B×C×H×W batch at once (what the trainer's loader uses)."""
        x = images.float()
        if self.scale:
            x.div_(255)
        if self.crop_padding:
            p = self.crop_padding
            count, _, height, width = x.shape
            padded = F.pad(x, (p, p, p, p))
            offsets = torch.randint(0, 2 * p + 1, (count, 2))
            rows = (offsets[:, 0, None] + torch.arange(height))[:, None, :, None]
            cols = (offsets[:, 1, None] + torch.arange(width))[:, None, None, :]
            x = padded[
                torch.arange(count)[:, None, None, None],
                torch.arange(x.shape[1])[None, :, None, None],
                rows,
                cols,
            ]
        if self.hflip:
            flip = torch.rand(x.shape[0]) < 0.5
            x[flip] = x[flip].flip(-1)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        return x


class ImageDataset(torch.utils.data.Dataset):
    def __init__(
        self, source: ImageSource, indices: torch.Tensor, transform: ImageTransform
    ) -> None:
        self.source = source
        self.indices = indices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(self.indices[i])
        return self.transform(self.source.image(index)), self.source.labels[index]

    def batch(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples at `positions`, indexed and transformed as one tensor op each."""
        indices = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        images = self.source.images_at(indices)
        return self.transform.batch(images), self.source.labels[indices]

    @property
    def labels(self) -> torch.Tensor:
        return self.source.labels[self.indices]


class WholeBatches(torch.utils.data.Dataset):
    """An ImageDataset read a batch at a time: one indexing and one vectorized transform
    per batch instead of per sample, a large share of a small model's step.

    DataLoader calls `__getitems__` when a dataset has it and hands the result to the
    collate function, so this view needs `_ready_batch` as its collate. It is a separate
    view so that ImageDataset itself stays an ordinary map-style dataset that any
    DataLoader with the default collate can read.
    """

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset[i]

    def __getitems__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.batch(positions)


def _ready_batch(batch: Any) -> Any:
    return batch


def batch_loader(dataset: ImageDataset, **options: Any) -> torch.utils.data.DataLoader:
    """A DataLoader over `dataset` that builds each batch in one piece (see WholeBatches)."""
    return torch.utils.data.DataLoader(WholeBatches(dataset), collate_fn=_ready_batch, **options)


@dataclass
class DataBundle:
    train: ImageDataset
    val: ImageDataset | None
    shape: DataShape
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def data_shape(config: DataConfig) -> DataShape:
    """The shape of the samples `config` names, known before any data is loaded."""
    known = KNOWN.get(config.name)
    if known is None:
        synthetic = config.synthetic
        return DataShape(synthetic.channels, synthetic.image_size, synthetic.num_classes)
    return DataShape(known.channels, known.image_size, known.num_classes)


def build_data(config: DataConfig, seed: int, faults: FaultsConfig | None = None) -> DataBundle:
    """The data, or a UsageError naming the data keys when its memory cannot be had (the
    loader refuses what clearly cannot fit; this catches what fails anyway)."""
    try:
        return _build_data(config, seed, faults)
    except (MemoryError, RuntimeError) as exc:
        if not is_allocation_failure(exc):
            raise
        first_line = (str(exc).strip().splitlines() or ["out of memory"])[0]
        raise UsageError(
            f"data: making the {config.name} data failed for lack of memory "
            f"({clipped(first_line)}); lower data.synthetic.num_samples, image_size, "
            "channels or num_classes, or data.limit"
        ) from None


def _build_data(config: DataConfig, seed: int, faults: FaultsConfig | None) -> DataBundle:
    faults = faults or FaultsConfig()
    notes: list[str] = []
    known = KNOWN.get(config.name)
    shape = data_shape(config)
    if known is None:
        source: ImageSource = _synthetic(config, seed, default_size=10_000)
        origin = "synthetic"
    else:
        try:
            source = _load_torchvision(config, known)
            origin = config.name
        except _Unavailable as exc:
            if config.fallback != "synthetic":
                raise UsageError(
                    f"data: {known.torchvision_class} is not in {config.root}/ and {exc}. Put "
                    "it there, allow data.download, or set data.fallback: synthetic to train "
                    "on synthetic data of the same shape"
                ) from None
            synthetic = config.synthetic.model_copy(
                update={
                    "channels": known.channels,
                    "image_size": known.image_size,
                    "num_classes": known.num_classes,
                }
            )
            source = _synthetic(
                config.model_copy(update={"synthetic": synthetic}),
                seed,
                default_size=known.train_size,
            )
            origin = "synthetic"
            notes.append(
                f"{known.torchvision_class} is not in {config.root}/ and {exc}; training on "
                f"synthetic data of the same shape ({known.channels}x{known.image_size}x"
                f"{known.image_size}, {known.num_classes} classes, {len(source)} images) "
                "instead, as data.fallback: synthetic asks"
            )
    task = config.synthetic.task if known is None else "classification"
    if task == "regression":
        # Predict the class index as a number, with a little label noise.
        noise = torch.randn(len(source), generator=torch.Generator().manual_seed(seed + 1))
        source.labels = (source.labels.float() + 0.1 * noise).unsqueeze(1)
        shape = DataShape(shape.channels, shape.image_size, 1)
    if faults.random_labels:
        source.labels = _randomized(source.labels, faults.random_labels, shape.num_classes, seed)
    mean, std = _normalization(config, known if origin != "synthetic" else None, source)
    if faults.raw_pixels:
        mean = std = None
    train_idx, val_idx = _split(len(source), config.val_split, config.limit, seed)
    if faults.class_ratio > 1:
        train_idx = _imbalanced(train_idx, source.labels, faults.class_ratio)
    scale = not faults.raw_pixels
    augment = ImageTransform(
        mean, std, config.augment.random_crop, config.augment.hflip, scale=scale
    )
    plain = ImageTransform(mean, std, scale=scale)
    train = ImageDataset(source, train_idx, augment)
    val = ImageDataset(source, val_idx, plain) if len(val_idx) else None
    info = {
        "name": config.name,
        "source": origin,
        "shape": [shape.channels, shape.image_size, shape.image_size],
        "num_classes": shape.num_classes,
        "task": task,
        "train_samples": len(train),
        "val_samples": len(val) if val is not None else 0,
        "mean": list(mean) if mean is not None else None,
        "std": list(std) if std is not None else None,
    }
    return DataBundle(train=train, val=val, shape=shape, info=info, notes=notes)


class _Unavailable(Exception):
    pass


def _load_torchvision(config: DataConfig, known: KnownDataset) -> TensorImages:
    from torchvision import datasets

    cls = getattr(datasets, known.torchvision_class)
    root = Path(config.root).expanduser()
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        dataset = cls(str(root), train=True, download=config.download)
    except Exception as exc:
        if not config.download:
            raise _Unavailable("data.download is false") from None
        raise _Unavailable(f"could not be downloaded ({type(exc).__name__}: {exc})") from None
    finally:
        socket.setdefaulttimeout(previous)
    data = dataset.data
    images = torch.as_tensor(data)
    # MNIST-like sets are N x H x W; CIFAR is N x H x W x C.
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return TensorImages(images.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.long))


def _synthetic(config: DataConfig, seed: int, default_size: int) -> SyntheticImages:
    options = config.synthetic
    return SyntheticImages(
        num_samples=options.num_samples or default_size,
        channels=options.channels,
        image_size=options.image_size,
        num_classes=options.num_classes,
        noise=options.noise,
        seed=options.seed if options.seed is not None else seed,
    )


Stats = tuple[float, ...] | None


def _normalization(
    config: DataConfig, known: KnownDataset | None, source: ImageSource
) -> tuple[Stats, Stats]:
    if config.normalize is False:
        return None, None
    if config.normalize is not True:
        return tuple(config.normalize.mean), tuple(config.normalize.std)
    if known is not None:
        return known.mean, known.std
    # Synthetic data: measure on a fixed sample of images.
    count = min(len(source), 256)
    sample = torch.stack([source.image(i) for i in range(count)]).float() / 255
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def _randomized(labels: torch.Tensor, share: float, classes: int, seed: int) -> torch.Tensor:
    """Replace a `share` of the labels with random ones (all of them at 1.0)."""
    generator = torch.Generator().manual_seed(seed + 2)
    chosen = torch.rand(len(labels), generator=generator) < share
    noisy = labels.clone()
    random = torch.randint(0, classes, (len(labels),), generator=generator)
    noisy[chosen] = random[chosen].to(labels.dtype).reshape(noisy[chosen].shape)
    return noisy


def _imbalanced(indices: torch.Tensor, labels: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep every sample of class 0 and one in `ratio` of the others."""
    classes = labels[indices].reshape(len(indices), -1)[:, 0].long()
    others = torch.nonzero(classes != 0).flatten()
    keep = torch.cat([torch.nonzero(classes == 0).flatten(), others[:: max(1, round(ratio))]])
    return indices[torch.sort(keep).values]


def _split(
    size: int, val_split: float, limit: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    n_val = int(size * val_split)
    val, train = order[:n_val], order[n_val:]
    if limit is not None:
        train = train[:limit]
        if n_val:
            val = val[: max(1, round(limit * val_split / (1 - val_split)))]
    return train, val
