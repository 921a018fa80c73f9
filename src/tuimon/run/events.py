"""The event log's vocabulary: every event type, probe name, status and field, in one place.

`events.jsonl` is tuimon's one contract between the worker and every reader (the UI,
replay, the doctor, exports). Producers build events as these TypedDicts and consumers
read them as these TypedDicts, so a renamed field is a type error (`mypy`) instead of a
silent blank panel. The log is JSON, so a reader still treats every field as possibly
missing or wrong (a damaged or foreign log): `run/field_types.py` checks the types of
known fields before an event reaches a consumer. docs/CONTRACTS.md describes the format
for people.

Fields beyond these may appear (a step carries "whatever else is measured", a `metrics`
event any scalar a script logs): TypedDicts say what every reader may rely on, not all
there is. Pure: no torch, no Textual, no pydantic.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypedDict

# -- event types ---------------------------------------------------------------------------

START: Final = "start"
END: Final = "end"
STEP: Final = "step"
METRICS: Final = "metrics"
SYSTEM: Final = "system"
ALERT: Final = "alert"
ALERT_CLEARED: Final = "alert_cleared"
CONTROL: Final = "control"
CHECKPOINT: Final = "checkpoint"
MESSAGE: Final = "message"
PROBE: Final = "probe"
LOG_ERROR: Final = "log_error"  # a line the writer could not encode, in place of its event
RANKS: Final = "ranks"  # a distributed job: every rank as rank 0 last heard of it

EventType = Literal[
    "start",
    "end",
    "step",
    "metrics",
    "system",
    "alert",
    "alert_cleared",
    "control",
    "checkpoint",
    "message",
    "probe",
    "log_error",
    "ranks",
]
EVENT_TYPES: Final[tuple[EventType, ...]] = (
    START,
    END,
    STEP,
    METRICS,
    SYSTEM,
    ALERT,
    ALERT_CLEARED,
    CONTROL,
    CHECKPOINT,
    MESSAGE,
    PROBE,
    LOG_ERROR,
    RANKS,
)

# -- probe names (a `probe` event's `probe` field) -----------------------------------------

BATCH_PROBE: Final = "batch"  # inputs, targets, outputs and the loss of one batch
ACTIVATIONS_PROBE: Final = "activations"  # per activation layer: dead/saturated shares
DEAD_UNITS_PROBE: Final = "dead_units"  # per layer: share of units that never fire
STALE_GRAD_PROBE: Final = "stale_grad"  # gradients left over from an earlier step
OPTIMIZER_PROBE: Final = "optimizer"  # at start: does the optimizer hold the model?

ProbeName = Literal["batch", "activations", "dead_units", "stale_grad", "optimizer"]
PROBE_NAMES: Final[tuple[ProbeName, ...]] = (
    BATCH_PROBE,
    ACTIVATIONS_PROBE,
    DEAD_UNITS_PROBE,
    STALE_GRAD_PROBE,
    OPTIMIZER_PROBE,
)

# -- statuses ------------------------------------------------------------------------------

# How a run ended: an `end` event's `status`.
EndStatus = Literal["completed", "stopped", "failed"]
COMPLETED: Final = "completed"
STOPPED: Final = "stopped"
FAILED: Final = "failed"
END_STATUSES: Final[tuple[EndStatus, ...]] = (COMPLETED, STOPPED, FAILED)

# Where a live run is: the Monitor's phase, changed only at a step boundary.
RunPhase = Literal["starting", "running", "paused", "stopping"]
STARTING: Final = "starting"
RUNNING: Final = "running"
PAUSED: Final = "paused"
STOPPING: Final = "stopping"

# A run's status as every view shows it: a live phase, then how it ended.
RunStatus = Literal["starting", "running", "paused", "stopping", "completed", "stopped", "failed"]
RUN_STATUSES: Final[tuple[RunStatus, ...]] = (
    STARTING,
    RUNNING,
    PAUSED,
    STOPPING,
    COMPLETED,
    STOPPED,
    FAILED,
)

Severity = Literal["info", "warning", "error"]
INFO: Final = "info"
WARNING: Final = "warning"
ERROR: Final = "error"
SEVERITIES: Final[tuple[Severity, ...]] = (INFO, WARNING, ERROR)

# The layer name, in `layer_grad_norms` and `layer_update_ratios`, of the parameters an
# optimizer holds that the model does not (optimizer_mismatch's evidence).
NOT_IN_MODEL: Final = "(not in model)"

# Keys every event may carry, added by the event log: not a metric's name.
RESERVED_METRIC_KEYS: Final = frozenset({"type", "step", "epoch", "time", "seq", "rank"})


# -- the events ----------------------------------------------------------------------------
# `seq` (1, 2, …) and `time` (Unix seconds) are added by the event log to every event.


class _Event(TypedDict, total=False):
    seq: int
    time: float
    rank: int  # in a distributed job: the rank that wrote it (run/events.py RANKS)


class StartEvent(_Event, total=False):
    """The first event: what runs, where, with which settings."""

    type: Literal["start"]
    step: int
    name: str
    run_dir: str
    pid: int
    host: str
    argv: list[str]
    config: dict[str, Any] | None  # the resolved config (config runs)
    versions: dict[str, Any]  # tuimon, python, torch, cuda, torchvision
    device: dict[str, Any]  # type, name (+ index, total_memory on CUDA)
    model: dict[str, Any]  # class, params, trainable, layers
    optimizer: dict[str, Any]  # class, param_groups, lrs
    scheduler: str | None
    precision: str | None  # "32", "bf16", "fp16", or the framework's name ("bf16-mixed")
    framework: str | None  # "lightning 2.6.6", "transformers 5.24.0"…: who owns the loop
    loss: dict[str, Any] | None  # the criterion's name and settings, when known
    stop_mode: str
    total_steps: int | None
    steps_per_epoch: int | None
    epochs: int | None
    start_step: int
    resumed_from: str | None
    grad_clip: float | None
    data: dict[str, Any] | None
    notes: list[str]
    settings: dict[str, Any]  # the monitor section, defaults filled in
    distributed: DistributedInfo  # a torchrun job: its ranks (absent for one process)


class EndEvent(_Event, total=False):
    """The last event: how the run ended."""

    type: Literal["end"]
    status: EndStatus
    step: int
    epoch: int
    elapsed: float
    error: str  # the traceback of a failed run
    reason: str  # e.g. "interrupted"


class CudaMemory(TypedDict):
    allocated: int
    reserved: int
    max_allocated: int


class _StepRequired(_Event):
    type: Literal["step"]
    step: int


class StepEvent(_StepRequired, total=False):
    """One optimizer step (a Monitor.step() call)."""

    epoch: int
    loss: float | None
    lr: float | None
    lrs: list[float]  # every param group's, when there is more than one
    step_time: float
    data_time: float
    samples: int | None
    samples_per_s: float
    optimizer_steps: int
    grad_norm: float
    grad_norm_unclipped: float  # what clip_grad_norm_ returned, given to step()
    loss_scale: float  # a GradScaler's scale after the step (Monitor(scaler=...))
    layer_grad_norms: dict[str, float]
    update_ratio: float
    layer_update_ratios: dict[str, float]
    cuda_memory: CudaMemory  # on the last step of a batch fetched from the device


class MetricsEvent(_Event, total=False):
    """Scalars from `mon.log()` (validation loss, accuracy…); any other key is a metric."""

    type: Literal["metrics"]
    step: int
    epoch: int
    val_loss: float


class HostSample(TypedDict, total=False):
    cpu_percent: float
    cpu_count: int | None
    ram_used: int
    ram_total: int
    ram_percent: float
    process_rss: int | None
    process_cpu_percent: float | None
    load_avg: list[float] | None


class GpuSample(TypedDict, total=False):
    """One GPU as NVML reads it; every reading may be None (not supported, or lost)."""

    index: int
    name: str | None
    uuid: str | None
    util: float | None
    mem_util: float | None
    mem_used: int | None
    mem_total: int | None
    temperature: float | None
    power_w: float | None
    power_limit_w: float | None
    process_mem: int | None


class SystemEvent(_Event, total=False):
    """A sample of the host and its GPUs, every `monitor.system_interval` seconds."""

    type: Literal["system"]
    host: HostSample
    gpus: list[GpuSample]
    gpu_status: str  # why there is no GPU reading ("no NVIDIA GPU (…)")


class Action(TypedDict, total=False):
    """A command that would fix what an alert names: a control request without id."""

    cmd: str
    value: float
    factor: float
    lr_factor: float
    group: int
    before_step: int  # recover: restore a snapshot from before this step


class AlertEvent(_Event, total=False):
    """The doctor names a fault (docs/CONTRACTS.md lists the rule ids)."""

    type: Literal["alert"]
    step: int
    rule: str
    severity: Severity
    message: str
    suggestion: str
    evidence: dict[str, Any]  # the numbers behind it
    action: Action  # a command that would fix it, offered to the user and to autofix
    caused_by: str  # the rule id of the fault this one follows from (a symptom's cause)


class AlertClearedEvent(_Event, total=False):
    """An alert's episode is over: its fix no longer applies."""

    type: Literal["alert_cleared"]
    step: int
    rule: str
    reason: str  # "recovered" when a recover restored the weights


class ControlEvent(_Event, total=False):
    """A command that was applied at a step boundary (control/commands.py)."""

    type: Literal["control"]
    step: int
    command: str
    old: Any
    new: Any
    source: str  # ui, ctl, autofix, api, signal…
    request_id: Any
    ok: bool  # false: it was applied and failed (`error` says why)
    error: str
    path: str | None  # checkpoint, stop: the file written
    old_lrs: list[float]
    new_lrs: list[float]
    restored_step: int | None  # recover: the snapshot's step
    # The request's arguments, as sent: value, factor, group, lr_factor, before_step.
    value: float
    factor: float
    group: int
    lr_factor: float
    before_step: int


class CheckpointEvent(_Event, total=False):
    type: Literal["checkpoint"]
    step: int
    path: str
    reason: str  # manual, command, stop, end…


class MessageEvent(_Event, total=False):
    """A line of text for every front end (Monitor.note, the log's own notices)."""

    type: Literal["message"]
    step: int
    level: Severity
    text: str
    request_id: Any  # the command it answers, if any
    recording: bool  # false: the event log cannot write (a full disk)
    dropped_events: int  # events lost while it could not
    stop_ignored: bool  # a stop="flag" loop ran on past a stop
    stop_requested_at: int


class _ProbeEvent(_Event, total=False):
    type: Literal["probe"]
    step: int


class BatchProbeEvent(_ProbeEvent, total=False):
    probe: Literal["batch"]
    inputs: dict[str, Any]  # nonfinite, mean, std, min, max (+ dtype, shape)
    targets: dict[str, Any]  # classes, label counts, sortedness
    outputs: dict[str, Any]  # min, max, row_sum_error
    loss: dict[str, Any]  # which criterion the loss matches


class ActivationsProbeEvent(_ProbeEvent, total=False):
    probe: Literal["activations"]
    layers: dict[str, dict[str, float]]  # layer → {kind: share}


class DeadUnitsProbeEvent(_ProbeEvent, total=False):
    probe: Literal["dead_units"]
    layers: dict[str, float]  # layer → share of units that never fired


class StaleGradProbeEvent(_ProbeEvent, total=False):
    probe: Literal["stale_grad"]
    stale: bool
    param: str | None


class OptimizerProbeEvent(_ProbeEvent, total=False):
    probe: Literal["optimizer"]
    not_in_model: int  # parameters the optimizer holds that the model does not
    trainable_not_in_optimizer: int
    skipped_names: list[str]


class RankSummary(TypedDict, total=False):
    """One rank of a distributed job, as rank 0 last heard of it through torchrun's store.

    The identity fields (rank … device) are known from the start; the rest come with the
    rank's reports, every few steps (monitor/distributed/rank_reports.py)."""

    rank: int
    local_rank: int
    node: int  # the node's rank (torchrun's GROUP_RANK)
    host: str
    pid: int
    device: str  # "cuda:1", "cpu"
    step: int  # its latest step
    status: RunStatus  # running, paused…; then how it ended
    step_time: float | None  # mean seconds per step since its previous report
    data_time: float | None  # of which waiting for data (before the model's forward)
    samples_per_s: float | None
    memory: int | None  # bytes: CUDA memory allocated, or the process's RSS on a CPU
    nonfinite_step: int | None  # the latest step whose loss was NaN or inf on that rank
    age: float  # seconds since rank 0 last heard from it (rank 0's clock)
    step_age: float  # seconds since its step last advanced (rank 0's clock)
    alive: bool | None  # on rank 0's host: is its process running; None: cannot tell
    error: str  # why it ended, when it failed


class DistributedInfo(TypedDict, total=False):
    """The start event's `distributed`: the job's shape (torchrun's environment)."""

    world_size: int
    nodes: int
    backend: str | None  # the default process group's, when one is initialized
    run_id: str  # torchrun's TORCHELASTIC_RUN_ID, or the one tuimon agreed
    sync_every: int  # commands are exchanged every this many steps
    ranks: list[RankSummary]  # identity fields only


class RanksEvent(_Event, total=False):
    """Every rank of a distributed job (only in rank 0's log, `events.jsonl`)."""

    type: Literal["ranks"]
    step: int  # rank 0's step
    world_size: int
    ranks: list[RankSummary]


class LogErrorEvent(_Event, total=False):
    type: Literal["log_error"]
    error: str


ProbeEvent = (
    BatchProbeEvent
    | ActivationsProbeEvent
    | DeadUnitsProbeEvent
    | StaleGradProbeEvent
    | OptimizerProbeEvent
)
Event = (
    StartEvent
    | EndEvent
    | StepEvent
    | MetricsEvent
    | SystemEvent
    | AlertEvent
    | AlertClearedEvent
    | ControlEvent
    | CheckpointEvent
    | MessageEvent
    | ProbeEvent
    | LogErrorEvent
    | RanksEvent
)
