"""Build the model a config names, fitted to the data's channels, image size and classes."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from tuimon.config import callables
from tuimon.config.model_options import (
    MODEL_CONTEXT_ARGS,
    MLPOptions,
    TorchvisionOptions,
    VGGSmallOptions,
    model_options,
)
from tuimon.config.schema import Config
from tuimon.config.shown_values import clipped, shown_value
from tuimon.errors import UsageError
from tuimon.training.architectures import MLP, VGGSmall

# Below this size, torchvision's ImageNet stems (7x7 stride-2 conv, early max-pool, 7x7
# classifier input) throw away most of the image: switch to CIFAR-style stems and heads.
SMALL_IMAGE = 64


@dataclass(frozen=True)
class DataShape:
    channels: int
    image_size: int
    num_classes: int


def build_model(config: Config, shape: DataShape) -> nn.Module:
    """The model, or a UsageError naming the model's keys when its memory cannot be had
    (the loader refuses what clearly cannot fit; this catches what fails anyway)."""
    try:
        return _build(config, shape)
    except MemoryError:
        raise _too_big(config, "out of memory") from None
    except RuntimeError as exc:
        if not is_allocation_failure(exc):
            raise
        raise _too_big(config, str(exc)) from None


def is_allocation_failure(exc: BaseException) -> bool:
    """torch's way of saying an allocation failed (CPU or CUDA), as opposed to a bug."""
    text = str(exc)
    return isinstance(exc, MemoryError) or any(sign in text for sign in ALLOCATION_FAILURES)


# What torch's allocators say when they cannot allocate (CPU, CUDA, MPS).
ALLOCATION_FAILURES = ("DefaultCPUAllocator", "can't allocate", "out of memory")


def _too_big(config: Config, reason: str) -> UsageError:
    keys = {
        "mlp": "model.hidden",
        "vgg_small": "model.blocks, model.width, model.hidden",
    }.get(config.model.name, "model.name and its arguments")
    first_line = reason.strip().splitlines()[0] if reason.strip() else reason
    return UsageError(
        f"model: building {shown_value(config.model.name)} failed for lack of memory "
        f"({clipped(first_line)}); make it smaller ({keys}) or the data's images smaller"
    )


def _build(config: Config, shape: DataShape) -> nn.Module:
    name = config.model.name
    options = model_options(config.model)
    if isinstance(options, MLPOptions):
        return MLP(shape.channels * shape.image_size**2, shape.num_classes, options)
    if isinstance(options, VGGSmallOptions):
        return VGGSmall(shape.channels, shape.image_size, shape.num_classes, options)
    if isinstance(options, TorchvisionOptions):
        return _torchvision(name, options, shape)
    return _custom(name, config.model.kwargs, shape)


def _custom(spec: str, kwargs: dict[str, Any], shape: DataShape) -> nn.Module:
    builder = callables.resolve_callable(spec)
    accepted: Mapping[str, inspect.Parameter]
    try:
        accepted = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        accepted = {}
    context = {k: getattr(shape, _SHAPE_FIELD[k]) for k in MODEL_CONTEXT_ARGS if k in accepted}
    model = builder(**context, **kwargs)
    if not isinstance(model, nn.Module):
        raise UsageError(f"model {spec} returned a {type(model).__name__}, not an nn.Module")
    return model


_SHAPE_FIELD = {"num_classes": "num_classes", "in_channels": "channels", "image_size": "image_size"}


def _torchvision(name: str, options: TorchvisionOptions, shape: DataShape) -> nn.Module:
    from torchvision import models

    kwargs: dict[str, Any] = {}
    if options.dropout is not None:
        kwargs["dropout"] = options.dropout
    try:
        if options.pretrained:
            model = models.get_model(name, weights="DEFAULT", **kwargs)
        else:
            model = models.get_model(name, weights=None, num_classes=shape.num_classes, **kwargs)
    except TypeError as exc:
        raise UsageError(f"model {name}: {exc}") from None
    except Exception as exc:  # weights download failed (offline), hash mismatch, …
        if options.pretrained:
            raise UsageError(
                f"model {name}: could not load pretrained weights ({exc}); "
                "they are downloaded on first use, which needs internet access "
                "or a copy in the torch hub cache"
            ) from None
        raise
    small = shape.image_size <= SMALL_IMAGE
    if name.startswith("vgg"):
        _adapt_vgg(model, shape, small, options)
    elif name.startswith(("resnet", "resnext", "wide_resnet")):
        _adapt_resnet(model, shape, small)
    else:
        _adapt_first_conv(model, shape.channels)
        if options.pretrained:
            _replace_last_linear(model, shape.num_classes)
    return model


def _adapt_vgg(model: Any, shape: DataShape, small: bool, options: TorchvisionOptions) -> None:
    features = model.features
    first = features[0]
    if first.in_channels != shape.channels:
        features[0] = _conv_like(first, shape.channels)
    # Each max-pool halves the image; keep only as many as it can take (28x28 MNIST: 4).
    pools = [i for i, layer in enumerate(features) if isinstance(layer, nn.MaxPool2d)]
    allowed = int(math.log2(shape.image_size)) if shape.image_size >= 2 else 0
    for index in pools[allowed:]:
        features[index] = nn.Identity()
    if small:
        dropout = options.dropout if options.dropout is not None else 0.5
        width = _last_conv_channels(features)
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(width, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, shape.num_classes),
        )
    elif options.pretrained:
        _replace_last_linear(model.classifier, shape.num_classes)


def _adapt_resnet(model: Any, shape: DataShape, small: bool) -> None:
    if small:
        # The CIFAR ResNet stem: 3x3 stride-1 conv, no max-pool.
        model.conv1 = nn.Conv2d(shape.channels, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif model.conv1.in_channels != shape.channels:
        model.conv1 = _conv_like(model.conv1, shape.channels)
    if model.fc.out_features != shape.num_classes:
        model.fc = nn.Linear(model.fc.in_features, shape.num_classes)


def _adapt_first_conv(model: nn.Module, channels: int) -> None:
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != channels:
                    setattr(parent, child_name, _conv_like(child, channels))
                return


def _replace_last_linear(module: nn.Module, num_classes: int) -> None:
    last = None
    for parent in module.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                last = (parent, child_name, child)
    if last is not None and last[2].out_features != num_classes:
        parent, child_name, child = last
        setattr(parent, child_name, nn.Linear(child.in_features, num_classes))


def _conv_like(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        _pair(conv.kernel_size),
        _pair(conv.stride),
        padding,
        _pair(conv.dilation),
        conv.groups if conv.groups == 1 else 1,
        bias=conv.bias is not None,
    )
    if conv.weight.shape[1] == 3 and in_channels == 1:
        # Grey input to an RGB-trained stem: the mean of the colour filters.
        new.weight.data.copy_(conv.weight.data.mean(dim=1, keepdim=True))
    return new


def _pair(size: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's kernel, stride, padding or dilation (typed as any tuple): always a pair."""
    height, width = size
    return height, width


def _last_conv_channels(features: nn.Sequential) -> int:
    channels = 512
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            channels = layer.out_channels
    return channels
