"""The built-in models: an MLP and a small VGG, each classic fix one option away.

Narrow the VGG (`width`), add or drop BatchNorm (`batchnorm`), swap sigmoid for ReLU
(`activation`): the experiments every "why won't my net train" tutorial suggests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tuimon.config.model_options import Activation, MLPOptions, VGGSmallOptions

ACTIVATION_LAYERS: dict[Activation, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


def activation(name: Activation) -> nn.Module:
    return ACTIVATION_LAYERS[name]()


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, options: MLPOptions) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for units in options.hidden:
            layers.append(nn.Linear(width, units))
            if options.batchnorm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(activation(options.activation))
            if options.dropout:
                layers.append(nn.Dropout(options.dropout))
            width = units
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VGGSmall(nn.Module):
    """Blocks of 3x3 convs, each block closed by a 2x2 max-pool while the image allows it."""

    def __init__(
        self, in_channels: int, image_size: int, num_classes: int, options: VGGSmallOptions
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        size = image_size
        for block in options.blocks:
            for base in block:
                out = max(1, round(base * options.width))
                layers.append(nn.Conv2d(channels, out, 3, padding=1, bias=not options.batchnorm))
                if options.batchnorm:
                    layers.append(nn.BatchNorm2d(out))
                layers.append(activation(options.activation))
                channels = out
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        if options.head == "avgpool":
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(1)
        else:
            self.pool = nn.Identity()
            channels *= size * size
        head: list[nn.Module] = [nn.Flatten()]
        if options.hidden:
            head += [nn.Linear(channels, options.hidden), activation(options.activation)]
            if options.dropout:
                head.append(nn.Dropout(options.dropout))
            head.append(nn.Linear(options.hidden, num_classes))
        else:
            if options.dropout:
                head.append(nn.Dropout(options.dropout))
            head.append(nn.Linear(channels, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))
