"""The options a model name takes, in one place: the built-in `mlp` and `vgg_small`, a
torchvision model's, or (for `package.module:callable`) the callable's own arguments.

The loader checks a config's `model:` section against these and training/models.py builds
from them: training depends on config, never the other way round.
"""

from __future__ import annotations

import typing
from functools import cache
from typing import Literal

from pydantic import Field, field_validator

from tuimon.config.schema import ModelConfig, StrictModel

Activation = Literal["relu", "leaky_relu", "sigmoid", "tanh", "gelu"]
ACTIVATIONS: tuple[str, ...] = typing.get_args(Activation)
# Model arguments that tuimon derives from the data; a custom model may accept them.
MODEL_CONTEXT_ARGS = ("num_classes", "in_channels", "image_size")


class MLPOptions(StrictModel):
    """Options of the built-in `mlp`: inputs are flattened."""

    hidden: list[int] = Field([512, 256], max_length=1000, description="units of each hidden layer")
    activation: Activation = "relu"
    batchnorm: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("hidden")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(units <= 0 for units in value):
            raise ValueError("every hidden layer needs at least one unit")
        return value


class VGGSmallOptions(StrictModel):
    """Options of the built-in `vgg_small`: conv blocks, each followed by a 2x2 max-pool."""

    blocks: list[list[int]] = Field([[64], [128], [256, 256], [512, 512]], max_length=100)
    width: float = Field(1.0, gt=0, le=4, description="multiplies every block's channels")
    batchnorm: bool = True
    activation: Activation = "relu"
    dropout: float = Field(0.5, ge=0, lt=1)
    hidden: int = Field(512, ge=0, description="classifier hidden units; 0 = one linear layer")
    head: Literal["avgpool", "flatten"] = Field(
        "avgpool", description="global average pool, or flatten the last feature map"
    )

    @field_validator("blocks")
    @classmethod
    def _non_empty(cls, value: list[list[int]]) -> list[list[int]]:
        if not value or any(not block for block in value):
            raise ValueError("need at least one block, each with at least one conv layer")
        if any(len(block) > 100 for block in value):
            raise ValueError("a block may hold at most 100 conv layers")
        if any(channels <= 0 for block in value for channels in block):
            raise ValueError("every conv layer needs at least one channel")
        return value


class TorchvisionOptions(StrictModel):
    """Options of a torchvision model; it is adapted to the data's shape and classes."""

    pretrained: bool = False
    dropout: float | None = Field(None, ge=0, lt=1, description="classifier dropout, if any")


ModelOptions = MLPOptions | VGGSmallOptions | TorchvisionOptions
BUILTIN_MODEL_OPTIONS: dict[str, type[MLPOptions] | type[VGGSmallOptions]] = {
    "mlp": MLPOptions,
    "vgg_small": VGGSmallOptions,
}


def is_custom(name: str) -> bool:
    """A `package.module:callable` model, which takes its own keyword arguments."""
    return ":" in name


def options_schema(name: str) -> type[ModelOptions]:
    """The options schema of a built-in or torchvision model name."""
    return BUILTIN_MODEL_OPTIONS.get(name, TorchvisionOptions)


def model_options(model: ModelConfig) -> ModelOptions | None:
    """The validated options of a built-in or torchvision model; None for a custom callable."""
    if is_custom(model.name):
        return None
    return options_schema(model.name).model_validate(model.kwargs)


@cache
def torchvision_model_names() -> list[str]:
    """Classification models of torchvision (not detection/segmentation/video)."""
    from torchvision import models

    return sorted(models.list_models(module=models))


def known_model_names() -> list[str]:
    """Every model name that is not a custom callable: the built-ins, then torchvision's."""
    return [*BUILTIN_MODEL_OPTIONS, *torchvision_model_names()]
