"""build_data: the synthetic set, torchvision sets on disk, fallback, transforms and splits."""

from __future__ import annotations

import struct
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from tuimon.config.loader import validate
from tuimon.config.schema import DataConfig
from tuimon.config.source import parse_source
from tuimon.errors import ConfigError, UsageError
from tuimon.training.datasets import DataBundle, ImageDataset, batch_loader, build_data
from tuimon.training.models import DataShape
from tuimon.training.synthetic import SyntheticImages

SMALL_SYNTHETIC = {"num_samples": 200, "channels": 2, "image_size": 8, "num_classes": 4}


def data_config(**data: Any) -> DataConfig:
    doc = {"model": {"name": "mlp"}, "data": data, "train": {"max_steps": 1}}
    return validate(parse_source(yaml.safe_dump(doc), "x.yaml")).data


def synthetic_bundle(seed: int = 0, **data: Any) -> DataBundle:
    data.setdefault("synthetic", SMALL_SYNTHETIC)
    return build_data(data_config(name="synthetic", **data), seed)


def stack(dataset: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.stack(labels)


def raw_images(dataset: ImageDataset) -> torch.Tensor:
    """The uint8 source images behind `dataset`, in its order."""
    return torch.stack([dataset.source.image(int(i)) for i in dataset.indices])


# --- the synthetic set ---------------------------------------------------------------------


def test_synthetic_images_are_deterministic_uint8_of_the_configured_shape() -> None:
    a = SyntheticImages(num_samples=60, channels=3, image_size=10, num_classes=6, seed=4)
    b = SyntheticImages(num_samples=60, channels=3, image_size=10, num_classes=6, seed=4)
    image = a.image(7)
    assert image.dtype == torch.uint8
    assert image.shape == (3, 10, 10)
    assert torch.equal(a.labels, b.labels)
    # Any order, any instance: the same pixels for the same (seed, index).
    forward = [a.image(i) for i in range(60)]
    backward = [b.image(i) for i in reversed(range(60))][::-1]
    for x, y in zip(forward, backward, strict=True):
        assert torch.equal(x, y)
    assert torch.equal(a.image(7), image)
    # Samples differ from each other, and are not flat.
    assert not torch.equal(forward[0], forward[6])
    assert image.float().std() > 5


def test_synthetic_different_seed_gives_different_images() -> None:
    a = SyntheticImages(num_samples=20, channels=1, image_size=8, num_classes=4, seed=0)
    b = SyntheticImages(num_samples=20, channels=1, image_size=8, num_classes=4, seed=1)
    assert not torch.equal(a.prototypes, b.prototypes)
    assert all(not torch.equal(a.image(i), b.image(i)) for i in range(20))


@pytest.mark.parametrize(("num_samples", "num_classes"), [(100, 10), (103, 4)])
def test_synthetic_labels_are_balanced(num_samples: int, num_classes: int) -> None:
    images = SyntheticImages(num_samples, channels=1, image_size=4, num_classes=num_classes)
    assert images.labels.dtype == torch.long
    counts = torch.bincount(images.labels, minlength=num_classes)
    assert len(counts) == num_classes
    assert int(counts.max() - counts.min()) <= 1
    assert int(counts.sum()) == num_samples


def test_synthetic_bundle_shape_and_determinism() -> None:
    bundle = synthetic_bundle(seed=3)
    assert bundle.shape == DataShape(channels=2, image_size=8, num_classes=4)
    assert bundle.info["source"] == "synthetic"
    assert bundle.info["shape"] == [2, 8, 8]
    assert bundle.notes == []
    x, y = bundle.train[0]
    assert x.dtype == torch.float32
    assert x.shape == (2, 8, 8)
    assert y.dtype == torch.long
    again = synthetic_bundle(seed=3)
    assert torch.equal(stack(bundle.train)[0], stack(again.train)[0])
    assert torch.equal(bundle.train.labels, again.train.labels)
    other = synthetic_bundle(seed=4)
    assert not torch.equal(raw_images(bundle.train), raw_images(other.train))
    # synthetic.seed pins the images whatever the run's seed.
    pinned = {**SMALL_SYNTHETIC, "seed": 11}
    first = synthetic_bundle(seed=0, synthetic=pinned, val_split=0)
    second = synthetic_bundle(seed=1, synthetic=pinned, val_split=0)
    assert torch.equal(first.train.source.image(5), second.train.source.image(5))


def test_synthetic_works_with_a_dataloader() -> None:
    bundle = synthetic_bundle(val_split=0.2)
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=16, shuffle=True)
    x, y = next(iter(loader))
    assert x.shape == (16, 2, 8, 8)
    assert y.shape == (16,)
    assert y.dtype == torch.long
    assert int(y.min()) >= 0
    assert int(y.max()) < 4


def test_batch_loader_gives_the_batches_of_a_per_sample_loader() -> None:
    bundle = synthetic_bundle(normalize=True)
    order = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(3)).tolist()
    per_sample = torch.utils.data.DataLoader(bundle.train, batch_size=32, sampler=order)
    whole = batch_loader(bundle.train, batch_size=32, sampler=order)
    pairs = list(zip(per_sample, whole, strict=True))
    assert sum(len(y) for _, y in whole) == len(bundle.train) > 32
    for (x1, y1), (x2, y2) in pairs:
        assert torch.allclose(x1, x2, atol=1e-6)
        assert torch.equal(y1, y2)


def test_synthetic_set_is_learnable_by_a_plain_mlp() -> None:
    bundle = synthetic_bundle(
        seed=0,
        synthetic={"num_samples": 1024, "channels": 1, "image_size": 16, "num_classes": 4},
        val_split=0.25,
    )
    x, y = stack(bundle.train)
    xv, yv = stack(bundle.val)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        initial = loss_fn(model(x), y).item()
    for _ in range(100):
        batch = torch.randint(0, len(y), (64,))
        loss = loss_fn(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = loss_fn(model(x), y).item()
        val_accuracy = (model(xv).argmax(1) == yv).float().mean().item()
    assert initial > 1.2  # about ln(4): no shortcut before training
    assert final < initial / 2
    assert val_accuracy > 0.5  # chance is 0.25: it learnt the classes, not the samples


# --- torchvision sets: fallback, errors, loading from disk ---------------------------------


def test_absent_dataset_falls_back_to_synthetic_of_the_same_shape(tmp_path: Path) -> None:
    root = tmp_path / "nothing-here"
    config = data_config(name="cifar10", root=str(root), download=False, fallback="synthetic")
    bundle = build_data(config, seed=0)
    assert bundle.shape == DataShape(channels=3, image_size=32, num_classes=10)
    assert len(bundle.train) + len(bundle.val) == 50_000
    assert len(bundle.val) == 5_000
    assert bundle.info["source"] == "synthetic"
    assert bundle.info["name"] == "cifar10"
    x, y = bundle.train[0]
    assert x.shape == (3, 32, 32)
    assert 0 <= int(y) < 10
    assert len(bundle.notes) == 1
    note = bundle.notes[0]
    assert "CIFAR10" in note
    assert str(root) in note
    assert "data.download is false" in note
    assert "synthetic" in note
    assert "3x32x32" in note
    assert "50000 images" in note
    assert not root.exists() or not any(root.iterdir())


def test_fallback_honours_synthetic_num_samples(tmp_path: Path) -> None:
    config = data_config(
        name="mnist",
        root=str(tmp_path),
        download=False,
        fallback="synthetic",
        val_split=0,
        # Shape settings are overridden by the real set's shape; the size is kept.
        synthetic={"num_samples": 300, "channels": 3, "image_size": 16, "num_classes": 2},
    )
    bundle = build_data(config, seed=0)
    assert bundle.shape == DataShape(channels=1, image_size=28, num_classes=10)
    assert len(bundle.train) == 300
    assert bundle.val is None
    assert bundle.train[0][0].shape == (1, 28, 28)
    assert set(bundle.train.labels.tolist()) == set(range(10))
    assert "MNIST" in bundle.notes[0]
    assert "300 images" in bundle.notes[0]


def test_absent_dataset_without_fallback_says_how_to_fix_it(tmp_path: Path) -> None:
    root = tmp_path / "data"
    config = data_config(name="fashion_mnist", root=str(root), download=False)
    with pytest.raises(UsageError) as info:
        build_data(config, seed=0)
    message = str(info.value)
    assert "FashionMNIST" in message
    assert str(root) in message
    assert "data.download" in message
    assert "data.fallback: synthetic" in message


def test_failed_download_falls_back_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision import datasets

    attempts: list[str] = []

    def offline(self: Any) -> None:
        attempts.append(type(self).__name__)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    config = data_config(
        name="mnist",
        root=str(tmp_path),
        download=True,
        fallback="synthetic",
        synthetic={"num_samples": 50},
    )
    bundle = build_data(config, seed=0)
    assert attempts == ["MNIST"]
    assert bundle.info["source"] == "synthetic"
    assert "could not be downloaded" in bundle.notes[0]
    assert "no route to host" in bundle.notes[0]
    # And without the fallback, the same failure is a usage error.
    strict = data_config(name="mnist", root=str(tmp_path), download=True)
    with pytest.raises(UsageError, match="could not be downloaded"):
        build_data(strict, seed=0)


def write_idx(path: Path, tensor: torch.Tensor) -> None:
    """A big-endian IDX ("SN3 Pascal Vincent") uint8 file, as MNIST ships it."""
    assert tensor.dtype == torch.uint8
    magic = 0x0800 | tensor.dim()  # type 0x08 = uint8, then the number of dimensions
    header = struct.pack(f">I{tensor.dim()}I", magic, *tensor.shape)
    path.write_bytes(header + tensor.numpy().tobytes())


@pytest.fixture
def fake_mnist(tmp_path: Path) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """root, train images (Nx28x28 uint8) and labels of a tiny MNIST in torchvision's layout."""
    generator = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (40, 28, 28), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 10, (40,), generator=generator).to(torch.uint8)
    raw = tmp_path / "mnist-root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", images)
    write_idx(raw / "train-labels-idx1-ubyte", labels)
    write_idx(raw / "t10k-images-idx3-ubyte", images[:5])
    write_idx(raw / "t10k-labels-idx1-ubyte", labels[:5])
    return raw.parent.parent, images, labels.long()


def test_present_dataset_is_loaded_from_root(fake_mnist: Any) -> None:
    root, images, labels = fake_mnist
    config = data_config(name="mnist", root=str(root), download=False, val_split=0.25)
    bundle = build_data(config, seed=0)
    assert bundle.notes == []
    assert bundle.info["source"] == "mnist"
    assert bundle.shape == DataShape(channels=1, image_size=28, num_classes=10)
    assert len(bundle.train) == 30
    assert len(bundle.val) == 10
    assert bundle.info["train_samples"] == 30
    assert bundle.info["val_samples"] == 10
    for part in (bundle.train, bundle.val):
        assert torch.equal(raw_images(part), images[part.indices].unsqueeze(1))
        assert torch.equal(part.labels, labels[part.indices])
        x, y = part[3]
        assert x.shape == (1, 28, 28)
        assert int(y) == int(labels[part.indices[3]])
    # Known statistics of the real set, not measured on the sample.
    assert bundle.info["mean"] == [0.1307]
    assert bundle.info["std"] == [0.3081]
    index = int(bundle.val.indices[0])
    expected = (images[index].float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(bundle.val[0][0][0], expected, atol=1e-5)


def test_present_dataset_does_not_download(
    fake_mnist: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision import datasets

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("tried to download a dataset that is present")

    monkeypatch.setattr(datasets.utils, "download_and_extract_archive", no_network)
    monkeypatch.setattr(datasets.mnist, "download_and_extract_archive", no_network)
    root, _, labels = fake_mnist
    bundle = build_data(data_config(name="mnist", root=str(root), val_split=0), seed=0)
    assert bundle.info["source"] == "mnist"
    assert len(bundle.train) == 40
    assert sorted(bundle.train.labels.tolist()) == sorted(labels.tolist())


# --- normalization -------------------------------------------------------------------------


def test_normalize_false_gives_values_in_unit_range(fake_mnist: Any) -> None:
    root, _, _ = fake_mnist
    bundle = build_data(
        data_config(name="mnist", root=str(root), download=False, normalize=False), seed=0
    )
    assert bundle.info["mean"] is None
    assert bundle.info["std"] is None
    x, _ = stack(bundle.train)
    assert float(x.min()) >= 0.0
    assert float(x.max()) <= 1.0
    assert float(x.max()) > 0.9  # scaled by 255, not left as 0..255 or squashed
    assert torch.allclose(x, raw_images(bundle.train).float() / 255)


def test_explicit_mean_and_std(fake_mnist: Any) -> None:
    root, _, _ = fake_mnist
    config = data_config(
        name="mnist", root=str(root), download=False, normalize={"mean": [0.5], "std": [0.25]}
    )
    bundle = build_data(config, seed=0)
    assert bundle.info["mean"] == [0.5]
    assert bundle.info["std"] == [0.25]
    x, _ = stack(bundle.train)
    assert torch.allclose(x, (raw_images(bundle.train).float() / 255 - 0.5) / 0.25)
    assert float(x.min()) == pytest.approx(-2.0)


def test_normalize_true_on_synthetic_gives_zero_mean_unit_std_per_channel() -> None:
    bundle = synthetic_bundle(
        synthetic={"num_samples": 400, "channels": 3, "image_size": 8, "num_classes": 4},
        val_split=0,
    )
    mean, std = bundle.info["mean"], bundle.info["std"]
    assert len(mean) == len(std) == 3
    assert all(0.3 < m < 0.7 for m in mean)
    x, _ = stack(bundle.train)
    per_channel_mean = x.mean(dim=(0, 2, 3))
    per_channel_std = x.std(dim=(0, 2, 3))
    assert torch.all(per_channel_mean.abs() < 0.1)
    assert torch.all((per_channel_std - 1).abs() < 0.1)
    raw = synthetic_bundle(
        synthetic={"num_samples": 400, "channels": 3, "image_size": 8, "num_classes": 4},
        val_split=0,
        normalize=False,
    )
    assert stack(raw.train)[0].min() >= 0


def test_explicit_mean_std_of_the_wrong_length_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="one value per channel"):
        data_config(name="synthetic", normalize={"mean": [0.5, 0.5], "std": [0.2]})


# --- augmentation --------------------------------------------------------------------------


def test_random_crop_keeps_shape_and_shifts_some_images() -> None:
    bundle = synthetic_bundle(normalize=False, augment={"random_crop": 2}, val_split=0.2)
    torch.manual_seed(0)
    padding = 2
    changed = 0
    for i in range(30):
        x, _ = bundle.train[i]
        assert x.shape == (2, 8, 8)
        plain = bundle.train.source.image(int(bundle.train.indices[i])).float() / 255
        if not torch.equal(x, plain):
            changed += 1
        # Every output is an 8x8 window of the zero-padded image.
        padded = torch.nn.functional.pad(plain, (padding,) * 4)
        windows = [
            padded[:, top : top + 8, left : left + 8]
            for top in range(2 * padding + 1)
            for left in range(2 * padding + 1)
        ]
        assert any(torch.equal(x, window) for window in windows)
    assert changed >= 10
    # Validation images are never augmented.
    for i in range(10):
        plain = bundle.val.source.image(int(bundle.val.indices[i])).float() / 255
        assert torch.equal(bundle.val[i][0], plain)


def test_hflip_flips_some_images() -> None:
    bundle = synthetic_bundle(normalize=False, augment={"hflip": True}, val_split=0.2)
    torch.manual_seed(0)
    flipped = kept = 0
    for i in range(40):
        x, _ = bundle.train[i]
        plain = bundle.train.source.image(int(bundle.train.indices[i])).float() / 255
        if torch.equal(x, plain):
            kept += 1
        else:
            assert torch.equal(x, plain.flip(-1))
            flipped += 1
    assert flipped >= 5
    assert kept >= 5
    for i in range(10):
        plain = bundle.val.source.image(int(bundle.val.indices[i])).float() / 255
        assert torch.equal(bundle.val[i][0], plain)


def test_no_augmentation_by_default() -> None:
    bundle = synthetic_bundle(normalize=False, val_split=0)
    for i in range(10):
        plain = bundle.train.source.image(int(bundle.train.indices[i])).float() / 255
        assert torch.equal(bundle.train[i][0], plain)


# --- split and limit -----------------------------------------------------------------------


@pytest.mark.parametrize(("val_split", "train", "val"), [(0.1, 180, 20), (0.25, 150, 50)])
def test_val_split_sizes(val_split: float, train: int, val: int) -> None:
    bundle = synthetic_bundle(val_split=val_split)
    assert len(bundle.train) == train
    assert len(bundle.val) == val
    assert bundle.info["train_samples"] == train
    assert bundle.info["val_samples"] == val


def test_zero_val_split_has_no_val_set() -> None:
    bundle = synthetic_bundle(val_split=0)
    assert bundle.val is None
    assert len(bundle.train) == 200
    assert bundle.info["val_samples"] == 0


def test_train_and_val_are_disjoint_and_cover_the_set() -> None:
    bundle = synthetic_bundle(val_split=0.3)
    train = set(bundle.train.indices.tolist())
    val = set(bundle.val.indices.tolist())
    assert len(train) == len(bundle.train)  # no duplicates
    assert len(val) == len(bundle.val)
    assert not train & val
    assert train | val == set(range(200))
    # The split is shuffled, deterministic per seed, and the seed changes it.
    assert sorted(val) != list(range(min(val), min(val) + len(val)))
    assert torch.equal(synthetic_bundle(val_split=0.3).val.indices, bundle.val.indices)
    assert not torch.equal(synthetic_bundle(seed=1, val_split=0.3).val.indices, bundle.val.indices)


def test_limit_caps_training_samples_and_scales_val() -> None:
    bundle = synthetic_bundle(val_split=0.2, limit=40)
    assert len(bundle.train) == 40
    assert len(bundle.val) == 10  # keeps the 80/20 proportion
    assert bundle.info["train_samples"] == 40
    assert not set(bundle.train.indices.tolist()) & set(bundle.val.indices.tolist())
    no_val = synthetic_bundle(val_split=0, limit=25)
    assert len(no_val.train) == 25
    assert no_val.val is None
    # A limit above the set's size uses what there is.
    everything = synthetic_bundle(val_split=0.1, limit=10_000)
    assert len(everything.train) == 180
    assert len(everything.val) == 20
