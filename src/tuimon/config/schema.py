"""The shape of a tuimon config file.

Closed sections (`train`, `data`, `monitor`) forbid unknown keys here. Open sections
(`model`, `optimizer`, `scheduler`, `loss`) take a `name` plus keyword arguments for the named
thing; those arguments are checked against its signature in `config/callables.py`.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from tuimon.config.shown_values import shown_value
from tuimon.did_you_mean import did_you_mean
from tuimon.doctor.rule_ids import RULE_IDS
from tuimon.notify import targets as notify_targets
from tuimon.run.run_dir import RUN_NAME_PATTERN

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "synthetic")
# The run's LR limits, as monitor/lr_control.py's LrLimits defaults: below, float noise;
# above, a typo (3e4 for 3e-4). optimizer.lr and every set-lr / scale-lr stay within them.
DEFAULT_LR_MIN = 1e-12
DEFAULT_LR_MAX = 100.0
# Seeds are mixed with sample indices (synthetic.py) and must stay within torch's 64 bits.
MAX_SEED = 2**32 - 1
MAX_RUN_NAME = 100
# `train.precision`: full float32, or autocast to bfloat16 / float16 (with a GradScaler).
FULL_PRECISION: Final = 32
BF16: Final = "bf16"
FP16: Final = "fp16"
PRECISIONS: tuple[int | str, ...] = (FULL_PRECISION, BF16, FP16)
Precision = Literal[32, "bf16", "fp16"]  # PRECISIONS, as a type
# What people write for one of them, and which one it is: named in the error, not accepted
# (a config says it one way).
PRECISION_ALIASES = {
    "16": FP16,
    "half": FP16,
    "float16": FP16,
    "16-mixed": FP16,
    "bfloat16": BF16,
    "bf16-mixed": BF16,
    "fp32": str(FULL_PRECISION),
    "float32": str(FULL_PRECISION),
    "full": str(FULL_PRECISION),
    "32-true": str(FULL_PRECISION),
}


class _NoBoolNumbers(BaseModel):
    """Pydantic reads `true` as 1 for an int field; a config saying `batch_size: yes`
    is a mistake, not a batch of one."""

    @field_validator("*", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            members = _members(cls.model_fields[info.field_name].annotation)
            if bool not in members and members & {int, float}:
                raise ValueError("expected a number, not true or false")
        return value


def _members(annotation: Any) -> set[Any]:
    """The types a field accepts: {int, NoneType} for `int | None`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set(typing.get_args(annotation))
    return {annotation}


class StrictModel(_NoBoolNumbers):
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class NamedCall(_NoBoolNumbers):
    """A section naming a callable; every other key is a keyword argument for it."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    name: str

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelConfig(NamedCall):
    """`name`: mlp | vgg_small | a torchvision model (vgg16_bn, …) | pkg.module:callable;
    the options each takes are in config/model_options.py."""


class OptimizerConfig(NamedCall):
    name: str = "SGD"
    lr: float = Field(0.01, gt=0, description="within [monitor.lr_min, monitor.lr_max]")


class SchedulerConfig(NamedCall):
    interval: Literal["step", "epoch"] = "epoch"
    warmup_steps: int = Field(0, ge=0)
    warmup_start_factor: float = Field(0.1, gt=0, le=1)

    @model_validator(mode="after")
    def _warmup_needs_steps(self) -> SchedulerConfig:
        if self.warmup_steps and self.interval != "step":
            raise ValueError("warmup_steps counts optimizer steps: set interval: step")
        return self


class LossConfig(NamedCall):
    name: str = "CrossEntropyLoss"


class NormalizeSpec(StrictModel):
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _same_length(self) -> NormalizeSpec:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std need one value per channel each")
        if any(s <= 0 for s in self.std):
            raise ValueError("every std must be > 0")
        return self


class AugmentConfig(StrictModel):
    random_crop: int = Field(
        0, ge=0, le=256, description="padding in pixels for a random crop; 0 = off"
    )
    hflip: bool = False


class SyntheticConfig(StrictModel):
    # Bounds that keep the set's index tensors (8 bytes a sample, a few of them) and its
    # class prototypes within reason; memory_estimate.py checks what they add up to.
    num_samples: int | None = Field(
        None, gt=0, le=100_000_000, description="default 10000, or the real size"
    )
    channels: int = Field(3, gt=0, le=1024)
    image_size: int = Field(32, ge=4, le=4096)
    num_classes: int = Field(10, ge=2, le=100_000)
    noise: float = Field(1.0, ge=0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    task: Literal["classification", "regression"] = Field(
        "classification", description="regression: predict the class index as a number"
    )


class DataConfig(StrictModel):
    name: str
    root: str = "data"
    download: bool = True
    fallback: Literal["synthetic"] | None = None
    val_split: float = Field(0.1, ge=0, lt=1)
    normalize: bool | NormalizeSpec = True
    augment: AugmentConfig = AugmentConfig()
    shuffle: bool = True
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes")
    limit: int | None = Field(None, gt=0, description="use only this many training samples")
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in DATASETS:
            hint = did_you_mean(value, DATASETS)
            raise ValueError(
                f"unknown dataset {shown_value(value)}{hint}; one of: {', '.join(DATASETS)}"
            )
        return value


class TrainConfig(StrictModel):
    # Bounds that keep the step count an exact number in the log (JSON, below 2**53).
    epochs: int | None = Field(None, gt=0, le=1_000_000)
    max_steps: int | None = Field(None, gt=0, le=10**15)
    batch_size: int = Field(64, gt=0)
    device: str = "auto"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    grad_clip: float | None = Field(None, gt=0)
    accumulate: int = Field(1, gt=0)
    val_every: int = Field(0, ge=0, description="steps between validations; 0 = each epoch end")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints; 0 = only at end")
    resume: str | None = None
    nproc_per_node: int = Field(
        1, gt=0, le=1024, description="processes (GPUs) per node: >1 runs under torchrun with DDP"
    )
    init_from: str | None = Field(
        None, description="start from these model weights only (fine-tuning)"
    )
    precision: Precision = Field(
        FULL_PRECISION,
        description="32 | bf16 | fp16: autocast for forward and loss (fp16 with a GradScaler)",
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _known_precision(cls, value: Any) -> Any:
        if value == str(FULL_PRECISION):  # `--set 'train.precision="32"'`
            return FULL_PRECISION
        if value in PRECISIONS and not isinstance(value, float):  # 32.0 is a typo, not 32
            return value
        meant = PRECISION_ALIASES.get(str(value).strip().lower())
        hint = f" (did you mean {meant}?)" if meant else did_you_mean(str(value), [BF16, FP16])
        raise ValueError(f"must be 32, bf16 or fp16, not {shown_value(value)}{hint}")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {shown_value(value)}")
        return value

    @model_validator(mode="after")
    def _has_length(self) -> TrainConfig:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set epochs or max_steps (or both: whichever ends first)")
        return self


class ProbeConfig(StrictModel):
    layer_norms_every: int = Field(20, gt=0, description="steps between per-layer gradient norms")
    update_ratio_every: int = Field(
        50, ge=0, description="steps between update-to-weight ratio probes; 0 = off"
    )
    batch_every: int = Field(
        20, ge=0, description="every N steps, 3 batches' inputs/labels/outputs checked; 0 = off"
    )
    activations_every: int = Field(
        50, ge=0, description="steps between dead-ReLU/saturation probes; 0 = off"
    )
    stale_grad_every: int = Field(
        10, ge=0, description="steps between checks for a missing zero_grad(); 0 = off"
    )


# A Literal of the doctor's one list of rule ids, built at run time (pydantic reads it; to
# mypy, whose Literal takes only written values, each id is a str).
RuleId = Literal[RULE_IDS]  # type: ignore[valid-type]


class RuleOverride(BaseModel):
    """`enabled` plus threshold overrides; thresholds are checked against each rule."""

    model_config = ConfigDict(extra="allow")

    enabled: bool = True


NotifyWhen = Literal[notify_targets.NOTIFY_WHEN]  # type: ignore[valid-type]
NotifyFormat = Literal[notify_targets.FORMATS]  # type: ignore[valid-type]


class NotifyConfig(StrictModel):
    """`monitor.notify`: where a message goes when the run needs a person (notify/).

    A bare string is a URL (http:// or https://) or a command. Dumped (the start event,
    the run's config.yaml) the target shows only its scheme and host, or its program."""

    url: str | None = Field(None, description="a webhook: JSON POSTed to it")
    command: str | None = Field(
        None, description="a command (split like a shell, run without one): the JSON on stdin"
    )
    # Not `on`: YAML 1.1 reads an `on:` key as true.
    when: list[NotifyWhen] = Field(
        list(notify_targets.DEFAULT_WHEN),
        description="what notifies: error (alert), failed, completed, stopped, hang",
    )
    hang_after: float = Field(
        notify_targets.DEFAULT_HANG_AFTER,
        gt=0,
        description="seconds without a step (while running) that make a hang",
    )
    format: NotifyFormat = Field(
        notify_targets.AUTO, description="auto | slack | ntfy | json: the webhook's body"
    )
    timeout: float = Field(
        notify_targets.DEFAULT_TIMEOUT, gt=0, le=300, description="seconds one delivery may take"
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_target(cls, value: Any) -> Any:
        """`notify: URL` or `notify: COMMAND` for `notify: {url: URL}` / `{command: …}`."""
        if isinstance(value, str):  # ftp://… is a URL tuimon cannot send to, not a program
            url = notify_targets.is_url(value) or "://" in value.split(" ", 1)[0]
            return {"url" if url else "command": value}
        if isinstance(value, dict) and True in value:  # `on: [...]`, which YAML reads as true
            raise ValueError("`on:` reads as true in YAML: write `when: [error, failed, ...]`")
        return value

    @field_validator("url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        if value is not None:
            problem = notify_targets.url_problem(value)
            if problem:
                raise ValueError(problem)
            return value.strip()
        return value

    @field_validator("command")
    @classmethod
    def _command_line(cls, value: str | None) -> str | None:
        if value is not None:
            notify_targets.command_argv(value)  # raises ValueError saying why
        return value

    @model_validator(mode="after")
    def _one_target(self) -> NotifyConfig:
        if (self.url is None) == (self.command is None):
            raise ValueError("give a url or a command (one of them)")
        if (
            self.url is not None
            and notify_targets.format_for(self.url, self.format) == notify_targets.NTFY
            and not notify_targets.ntfy_topic(self.url)[1]
        ):
            raise ValueError("an ntfy URL names its topic: https://ntfy.sh/TOPIC")
        return self

    @property
    def target(self) -> str:
        return self.url if self.url is not None else str(self.command)

    @field_serializer("url", "command")
    def _shown(self, value: str | None) -> str | None:
        """Never the secret part: a URL's path and query, a command's arguments."""
        return notify_targets.shown_target(value) if value is not None else None


class MonitorConfig(StrictModel):
    log_every: int = Field(10, gt=0, description="steps kept on the device per batched transfer")
    print_every: float = Field(5.0, gt=0, description="seconds between headless progress lines")
    system_interval: float = Field(1.0, gt=0, description="seconds between system samples")
    smoothing: float = Field(0.9, ge=0, lt=1, description="EMA weight of the smoothed loss")
    probes: ProbeConfig = ProbeConfig()
    rules: dict[RuleId, RuleOverride] = {}
    lr_min: float = Field(DEFAULT_LR_MIN, gt=0, description="the lowest LR a command may set")
    lr_max: float = Field(DEFAULT_LR_MAX, gt=0, description="the highest LR a command may set")
    autofix: bool = Field(False, description="on NaN or divergence: restore, LR x0.1")
    autofix_max: int = Field(3, ge=1, description="autofix gives up after this many tries")
    snapshot_every: int = Field(
        0, ge=0, description="steps between in-memory snapshots; 0 = 20 with autofix, else off"
    )
    sync_every: int = Field(
        4,
        gt=0,
        le=10_000,
        description="distributed jobs: steps between the ranks' command exchanges (a "
        "command applies on every rank within this many steps)",
    )
    rank_timeout: float = Field(
        30.0, gt=0, description="distributed jobs: seconds a rank may go unheard before it is named"
    )
    stop_ignored_after: int = Field(
        50,
        gt=0,
        description="Monitor(stop='flag'): steps a script may run on after a stop before "
        "tuimon says it ignores should_stop and takes commands again",
    )
    notify: NotifyConfig | None = Field(
        None, description="a webhook URL or a command told of errors, the end and hangs"
    )

    @model_validator(mode="after")
    def _lr_range(self) -> MonitorConfig:
        if self.lr_min >= self.lr_max:
            raise ValueError(f"lr_min ({self.lr_min:g}) must be below lr_max ({self.lr_max:g})")
        return self


class FaultsConfig(StrictModel):
    """Deliberate bugs for the fault zoo (configs/faults/): each one a classic mistake."""

    skip_zero_grad: bool = Field(False, description="never call optimizer.zero_grad()")
    softmax_before_loss: bool = Field(False, description="softmax the logits before the loss")
    random_labels: float = Field(
        0.0, ge=0, le=1, description="share of labels replaced by random ones (1: all)"
    )
    sort_by_label: bool = Field(False, description="batches come sorted by class")
    raw_pixels: bool = Field(False, description="feed 0-255 pixel values, not normalized")
    nan_inputs: float = Field(0.0, ge=0, le=1, description="share of batches with a NaN pixel")
    class_ratio: float = Field(1.0, ge=1, description="class 0 this many times the others")
    optimizer_params: Literal["all", "head"] = Field(
        "all", description="head: the optimizer holds only the last layer"
    )
    bias_init: float | None = Field(None, description="set every bias to this value")
    weight_scale: float = Field(1.0, gt=0, description="multiply the initial weights")
    nan_grad_at: int | None = Field(None, gt=0, description="a NaN gradient at this step")
    nan_grad_every: int | None = Field(
        None, gt=0, description="a NaN in one gradient every N steps (fp16: the scaler skips them)"
    )
    skip_optimizer_step: bool = Field(
        False, description="optimizer.step() never runs (a GradScaler skipping every step)"
    )
    slow_storage_ms: float = Field(
        0.0, ge=0, description="each batch waits this long for its files (cold network storage)"
    )


class Config(StrictModel):
    # The run directory is NAME-TIMESTAMP: a name this long still leaves it a valid file name.
    name: str | None = Field(
        None, max_length=MAX_RUN_NAME, description="run name; default: the config file's stem"
    )
    model: ModelConfig
    data: DataConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig | None = None
    loss: LossConfig = LossConfig()
    train: TrainConfig
    monitor: MonitorConfig = MonitorConfig()
    faults: FaultsConfig = FaultsConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and not RUN_NAME_PATTERN.fullmatch(value):
            raise ValueError("name may hold letters, digits, '.', '_' and '-' only")
        return value
