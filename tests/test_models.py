"""build_model: built-in, torchvision and custom models, fitted to the data's shape."""

from __future__ import annotations

import importlib
import itertools
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from tuimon.config import load_config
from tuimon.config.loader import validate
from tuimon.config.schema import Config
from tuimon.config.source import parse_source
from tuimon.errors import ConfigError, UsageError
from tuimon.training.models import DataShape, build_model

CIFAR = DataShape(channels=3, image_size=32, num_classes=10)
MNIST = DataShape(channels=1, image_size=28, num_classes=10)


def model_config(name: str, **options: Any) -> Config:
    doc = {
        "model": {"name": name, **options},
        "data": {"name": "synthetic"},
        "train": {"max_steps": 1},
    }
    return validate(parse_source(yaml.safe_dump(doc), "x.yaml"))


def build(name: str, shape: DataShape = CIFAR, **options: Any) -> nn.Module:
    return build_model(model_config(name, **options), shape)


def logits(model: nn.Module, shape: DataShape, batch: int = 2) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(batch, shape.channels, shape.image_size, shape.image_size))


def layers(model: nn.Module, kind: type[nn.Module]) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def conv_channels(model: nn.Module) -> list[int]:
    return [conv.out_channels for conv in layers(model, nn.Conv2d)]


# --- torchvision models ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vgg11_bn", "vgg16_bn"])
def test_torchvision_vgg_on_cifar_gets_adaptive_pool_and_small_classifier(name: str) -> None:
    model = build(name, CIFAR)
    assert logits(model, CIFAR, batch=3).shape == (3, 10)
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    assert model.avgpool.output_size in (1, (1, 1))
    linears = layers(model.classifier, nn.Linear)
    # Not the ImageNet head (25088 -> 4096 -> 4096 -> 1000): 512 -> 512 -> classes.
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(512, 512), (512, 10)]
    classifier_params = sum(p.numel() for p in model.classifier.parameters())
    assert classifier_params < 1_000_000
    assert layers(model.features, nn.BatchNorm2d)
    # 32x32 takes all five 2x2 max-pools (32 -> 1).
    assert len(layers(model.features, nn.MaxPool2d)) == 5


def test_torchvision_vgg11_on_grey_28x28_drops_a_pool() -> None:
    model = build("vgg11", MNIST, dropout=0.2)
    assert model.features[0].in_channels == 1
    # Five max-pools would take 28 -> 14 -> 7 -> 3 -> 1 -> 0: only four are kept.
    assert len(layers(model.features, nn.MaxPool2d)) == 4
    assert logits(model, MNIST).shape == (2, 10)
    model.eval()
    with torch.no_grad():
        feature_map = model.features(torch.randn(1, 1, 28, 28))
    assert feature_map.shape[-2:] == (1, 1)
    assert [d.p for d in layers(model.classifier, nn.Dropout)] == [0.2]


def test_torchvision_vgg_on_large_images_keeps_imagenet_head_and_takes_dropout() -> None:
    shape = DataShape(channels=3, image_size=96, num_classes=7)
    model = build("vgg11", shape, dropout=0.1)
    assert len(layers(model.features, nn.MaxPool2d)) == 5
    assert layers(model.classifier, nn.Linear)[-1].out_features == 7
    dropouts = layers(model.classifier, nn.Dropout)
    assert dropouts
    assert all(d.p == 0.1 for d in dropouts)


def test_torchvision_resnet18_on_cifar_uses_cifar_stem() -> None:
    model = build("resnet18", CIFAR)
    assert model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1)
    assert model.conv1.in_channels == 3
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 10
    assert logits(model, CIFAR).shape == (2, 10)


def test_torchvision_resnet18_grey_small_and_large_images() -> None:
    small = build("resnet18", MNIST)
    assert small.conv1.in_channels == 1
    assert small.conv1.kernel_size == (3, 3)
    assert logits(small, MNIST).shape == (2, 10)
    # Above the small-image threshold the ImageNet stem stays, adapted to the channels.
    large_shape = DataShape(channels=1, image_size=96, num_classes=5)
    large = build("resnet18", large_shape)
    assert large.conv1.kernel_size == (7, 7)
    assert large.conv1.stride == (2, 2)
    assert large.conv1.in_channels == 1
    assert isinstance(large.maxpool, nn.MaxPool2d)
    assert logits(large, large_shape, batch=1).shape == (1, 5)


def test_generic_torchvision_model_adapted_to_one_channel() -> None:
    shape = DataShape(channels=1, image_size=32, num_classes=4)
    model = build("mobilenet_v2", shape, dropout=0.3)
    first_conv = layers(model, nn.Conv2d)[0]
    assert first_conv.in_channels == 1
    assert layers(model, nn.Linear)[-1].out_features == 4
    assert [d.p for d in layers(model, nn.Dropout)] == [0.3]
    assert logits(model, shape).shape == (2, 4)


def test_pretrained_offline_is_a_clear_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models._api as tv_api

    calls: list[str] = []

    def offline(url: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(url)
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(UsageError) as info:
        build("resnet18", CIFAR, pretrained=True)
    assert calls, "the weights download was never attempted"
    message = str(info.value)
    assert "resnet18" in message
    assert "pretrained weights" in message
    assert "Network is unreachable" in message
    assert "internet" in message
    assert "Traceback" not in message


# --- built-in mlp --------------------------------------------------------------------------


def test_mlp_hidden_sizes_and_default_layers() -> None:
    shape = DataShape(channels=1, image_size=8, num_classes=3)
    model = build("mlp", shape, hidden=[32, 16, 8])
    linears = layers(model, nn.Linear)
    assert [(lin.in_features, lin.out_features) for lin in linears] == [
        (64, 32),
        (32, 16),
        (16, 8),
        (8, 3),
    ]
    assert len(layers(model, nn.ReLU)) == 3
    assert not layers(model, nn.BatchNorm1d)
    assert not layers(model, nn.Dropout)
    assert logits(model, shape, batch=4).shape == (4, 3)


def test_mlp_no_hidden_layers_is_linear() -> None:
    shape = DataShape(channels=3, image_size=4, num_classes=5)
    model = build("mlp", shape, hidden=[])
    linears = layers(model, nn.Linear)
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(48, 5)]
    assert logits(model, shape).shape == (2, 5)


def test_mlp_batchnorm_and_dropout() -> None:
    shape = DataShape(channels=1, image_size=8, num_classes=3)
    model = build("mlp", shape, hidden=[32, 16], batchnorm=True, dropout=0.25)
    norms = layers(model, nn.BatchNorm1d)
    assert [bn.num_features for bn in norms] == [32, 16]
    assert [d.p for d in layers(model, nn.Dropout)] == [0.25, 0.25]
    model.train()
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 3)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("sigmoid", nn.Sigmoid),
        ("tanh", nn.Tanh),
        ("relu", nn.ReLU),
        ("leaky_relu", nn.LeakyReLU),
        ("gelu", nn.GELU),
    ],
)
def test_mlp_activation(name: str, kind: type[nn.Module]) -> None:
    shape = DataShape(channels=1, image_size=4, num_classes=2)
    model = build("mlp", shape, hidden=[8, 8], activation=name)
    others = (nn.Sigmoid, nn.Tanh, nn.ReLU, nn.LeakyReLU, nn.GELU)
    found = [type(m) for m in model.modules() if isinstance(m, others)]
    assert found == [kind, kind]
    assert logits(model, shape).shape == (2, 2)


def test_mlp_bad_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="activation"):
        model_config("mlp", activation="swish")
    with pytest.raises(ConfigError, match="hidden"):
        model_config("mlp", hidden=[16, 0])


# --- built-in vgg_small --------------------------------------------------------------------

SMALL_BLOCKS = [[16], [32, 32]]


def test_vgg_small_defaults() -> None:
    model = build("vgg_small", CIFAR)
    assert conv_channels(model) == [64, 128, 256, 256, 512, 512]
    assert len(layers(model, nn.BatchNorm2d)) == 6
    assert all(conv.bias is None for conv in layers(model, nn.Conv2d))
    assert len(layers(model, nn.ReLU)) == 7  # six convs + the classifier's hidden layer
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d)
    assert [lin.out_features for lin in layers(model.classifier, nn.Linear)] == [512, 10]
    assert logits(model, CIFAR).shape == (2, 10)


@pytest.mark.parametrize(
    ("width", "expected"),
    [(0.25, [16, 32, 64, 64, 128, 128]), (0.5, [32, 64, 128, 128, 256, 256])],
)
def test_vgg_small_width_multiplies_channels(width: float, expected: list[int]) -> None:
    model = build("vgg_small", CIFAR, width=width)
    assert conv_channels(model) == expected
    assert layers(model.classifier, nn.Linear)[0].in_features == conv_channels(model)[-1]
    assert logits(model, CIFAR).shape == (2, 10)


def test_vgg_small_batchnorm_off() -> None:
    model = build("vgg_small", CIFAR, blocks=SMALL_BLOCKS, batchnorm=False)
    assert not layers(model, nn.BatchNorm2d)
    assert all(conv.bias is not None for conv in layers(model, nn.Conv2d))
    assert logits(model, CIFAR).shape == (2, 10)


def test_vgg_small_activation_swap() -> None:
    model = build("vgg_small", CIFAR, blocks=SMALL_BLOCKS, activation="sigmoid")
    assert len(layers(model, nn.Sigmoid)) == 4  # three convs + the hidden layer
    assert not layers(model, nn.ReLU)
    assert logits(model, CIFAR).shape == (2, 10)


def test_vgg_small_flatten_head_sees_the_last_feature_map() -> None:
    # Two blocks on 32x32 leave an 8x8 map of 32 channels.
    model = build("vgg_small", CIFAR, blocks=SMALL_BLOCKS, head="flatten", hidden=64)
    assert isinstance(model.pool, nn.Identity)
    linears = layers(model.classifier, nn.Linear)
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(32 * 8 * 8, 64), (64, 10)]
    assert logits(model, CIFAR).shape == (2, 10)
    pooled = build("vgg_small", CIFAR, blocks=SMALL_BLOCKS, head="avgpool", hidden=64)
    assert layers(pooled.classifier, nn.Linear)[0].in_features == 32


def test_vgg_small_hidden_zero_is_one_linear_layer() -> None:
    model = build("vgg_small", CIFAR, blocks=SMALL_BLOCKS, hidden=0, dropout=0.3)
    linears = layers(model.classifier, nn.Linear)
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(32, 10)]
    assert [d.p for d in layers(model.classifier, nn.Dropout)] == [0.3]
    no_dropout = build("vgg_small", CIFAR, blocks=SMALL_BLOCKS, hidden=0, dropout=0)
    assert not layers(no_dropout, nn.Dropout)


def test_vgg_small_stops_pooling_at_one_pixel() -> None:
    shape = DataShape(channels=1, image_size=4, num_classes=3)
    model = build("vgg_small", shape, blocks=[[4], [4], [4], [4]], head="flatten", width=1)
    assert len(layers(model, nn.MaxPool2d)) == 2  # 4 -> 2 -> 1, then no more
    assert layers(model.classifier, nn.Linear)[0].in_features == 4
    assert logits(model, shape).shape == (2, 3)


BASE_VGG_CONFIG = """\
model:
  name: vgg_small
  blocks: [[8], [16]]
  activation: sigmoid
  batchnorm: false
data:
  name: synthetic
train:
  max_steps: 1
"""


@pytest.mark.parametrize(
    ("override", "check"),
    [
        ("model.width=0.5", lambda m: conv_channels(m) == [4, 8]),
        ("model.batchnorm=true", lambda m: len(layers(m, nn.BatchNorm2d)) == 2),
        (
            "model.activation=relu",
            lambda m: not layers(m, nn.Sigmoid) and len(layers(m, nn.ReLU)) == 3,
        ),
    ],
)
def test_classic_fixes_are_one_config_line_each(tmp_path: Path, override: str, check: Any) -> None:
    path = tmp_path / "vgg.yaml"
    path.write_text(BASE_VGG_CONFIG, encoding="utf-8")
    base = build_model(load_config(path), CIFAR)
    assert conv_channels(base) == [8, 16]
    assert not layers(base, nn.BatchNorm2d)
    assert len(layers(base, nn.Sigmoid)) == 3
    assert not check(base)
    fixed = build_model(load_config(path, [override]), CIFAR)
    assert check(fixed)
    assert logits(fixed, CIFAR).shape == (2, 10)


# --- custom package.module:callable --------------------------------------------------------

_module_ids = itertools.count()

CUSTOM_MODULE = """\
from torch import nn

calls = []


def full(num_classes, in_channels, image_size, hidden=8, scale=1.0):
    calls.append(
        dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
             hidden=hidden, scale=scale)
    )
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def classes_only(num_classes, width=4):
    calls.append(dict(num_classes=num_classes, width=width))
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(width), nn.Linear(width, num_classes))


def nothing_known(width=4):
    calls.append(dict(width=width))
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(width))


class Net(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        calls.append(dict(num_classes=num_classes, in_channels=in_channels))
        self.conv = nn.Conv2d(in_channels, 4, 3)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    def forward(self, x):
        return self.head(self.conv(x))


def not_a_module(num_classes):
    return {"num_classes": num_classes}
"""


@pytest.fixture
def custom_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh, uniquely named module of model builders on sys.path."""
    name = f"tuimon_test_custom_models_{next(_module_ids)}"
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / f"{name}.py").write_text(CUSTOM_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


def test_custom_callable_gets_data_shape_and_its_kwargs(custom_module: Any) -> None:
    shape = DataShape(channels=2, image_size=6, num_classes=3)
    model = build(f"{custom_module.__name__}:full", shape, hidden=5, scale=0.5)
    assert custom_module.calls == [
        dict(num_classes=3, in_channels=2, image_size=6, hidden=5, scale=0.5)
    ]
    assert layers(model, nn.Linear)[0].out_features == 5
    assert logits(model, shape).shape == (2, 3)


def test_custom_callable_gets_only_the_shape_args_it_accepts(custom_module: Any) -> None:
    shape = DataShape(channels=2, image_size=6, num_classes=3)
    model = build(f"{custom_module.__name__}:classes_only", shape, width=7)
    assert custom_module.calls == [dict(num_classes=3, width=7)]
    assert logits(model, shape).shape == (2, 3)
    build(f"{custom_module.__name__}:nothing_known", shape)
    assert custom_module.calls[-1] == dict(width=4)


def test_custom_class_is_a_builder_too(custom_module: Any) -> None:
    model = build(f"{custom_module.__name__}:Net", MNIST)
    assert custom_module.calls == [dict(num_classes=10, in_channels=1)]
    assert isinstance(model, custom_module.Net)
    assert logits(model, MNIST).shape == (2, 10)


def test_custom_callable_returning_a_non_module_is_a_usage_error(custom_module: Any) -> None:
    with pytest.raises(UsageError, match=r"not_a_module returned a dict, not an nn\.Module"):
        build(f"{custom_module.__name__}:not_a_module", CIFAR)


def test_custom_callable_config_problems_name_the_key(custom_module: Any) -> None:
    spec = f"{custom_module.__name__}:classes_only"
    with pytest.raises(ConfigError, match="num_classes") as info:
        model_config(spec, num_classes=4)
    assert "set by tuimon" in str(info.value)
    with pytest.raises(ConfigError, match="widht"):
        model_config(spec, widht=4)
    with pytest.raises(ConfigError, match="no attribute"):
        model_config(f"{custom_module.__name__}:missing")
    assert custom_module.calls == []


def test_unknown_model_name_suggests_a_fix() -> None:
    with pytest.raises(ConfigError, match="resnet18"):
        model_config("resnet81")


def test_torchvision_option_the_model_lacks_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"model resnet18: .*dropout"):
        build("resnet18", CIFAR, dropout=0.2)
