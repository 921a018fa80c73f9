"""The built-in trainer: a plain PyTorch loop over a config, reporting through Monitor.

There is no second code path: everything tuimon records and every command it obeys goes
through the same `Monitor` a custom loop would use. The loop is ordered so that
`mon.step()` is the last thing an iteration does (after the scheduler), which makes the
step boundary — where commands and checkpoints happen — a clean place to resume from.

Under torchrun (WORLD_SIZE > 1: `tuimon CONFIG --nproc-per-node N`) the same loop runs in
every process, as DistributedDataParallel (training/distributed_setup.py): each process
trains on its share of the data with `train.batch_size` samples per step — per process,
so the job's batch is batch_size × world size; nothing is divided for you.
"""

from __future__ import annotations

import math
import random
import signal
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from tuimon.config.schema import Config
from tuimon.errors import UsageError
from tuimon.monitor.distributed.rank_info import RankInfo, rank_info
from tuimon.monitor.inner_module import inner_module
from tuimon.monitor.monitor import Monitor, RunOptions
from tuimon.run.checkpoint import CheckpointError, ResumeState, load_checkpoint, model_weights
from tuimon.run.events import ERROR, INFO, RunStatus
from tuimon.run.private_files import remove_leftover_temp_files
from tuimon.training import faults
from tuimon.training.datasets import DataBundle, batch_loader, build_data
from tuimon.training.device import select_device
from tuimon.training.distributed_setup import (
    digests_of_all_ranks,
    join_process_group,
    leave_process_group,
    process_device,
    sum_across_ranks,
    train_sampler,
    val_share,
    weights_digest,
    wrap_model,
)
from tuimon.training.models import build_model, is_allocation_failure
from tuimon.training.optimization import (
    build_loss,
    build_optimizer,
    build_scheduler,
    is_plateau,
)
from tuimon.training.precision import MixedPrecision, mixed_precision

# The start of the note every rank of a job logs when the replicas ended identical.
REPLICAS_IDENTICAL = "weights identical"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


class Trainer:
    """Build everything a config names (`setup`), then train it under a Monitor (`run`).

    In a torchrun job, `setup` joins the job's process group (gloo on the CPU, NCCL on
    GPUs; `auto` and `cuda` take cuda:LOCAL_RANK), seeds every rank alike, and wraps the
    model in DistributedDataParallel after any resume, which loads the same checkpoint
    on every rank; `run` leaves the group at its end, failed or not. `train.batch_size`
    is per process. Validation is sharded: each rank evaluates its share and the sums are
    all-reduced, so every rank (and a ReduceLROnPlateau on it) sees the same val_loss,
    which rank 0 alone logs.
    """

    model: torch.nn.Module  # DistributedDataParallel around the model in a torchrun job

    def __init__(self, config: Config) -> None:
        self.config = config
        self.monitor: Monitor | None = None
        self.resume: ResumeState | None = None
        self.place: RankInfo | None = None
        self._sampler: torch.utils.data.DistributedSampler[int] | None = None
        self._validated_at = -1
        self._epoch_loss = torch.zeros(())
        self._epoch_steps = 0

    def setup(self) -> None:
        """Build data, model, optimizer, scheduler, loss; load the checkpoint to resume.

        Under torchrun, joins the job's process group first (left again if this fails).
        """
        self.place = rank_info()
        if self.place is None:
            self.device = select_device(self.config.train.device)
            self._build()
            return
        self.device = process_device(self.config.train.device, self.place)
        join_process_group(self.device)
        try:
            self._build()
            # After the resume, so that every rank loaded it; DDP then checks that every
            # rank holds the same weights (rank 0's are broadcast).
            self.model = wrap_model(self.model, self.device)
        except BaseException:
            leave_process_group()
            raise

    @property
    def module(self) -> torch.nn.Module:
        """The model itself (not its DistributedDataParallel wrapper)."""
        return inner_module(self.model)

    def _build(self) -> None:
        cfg, train = self.config, self.config.train
        # The same seed on every rank: the replicas start identical (and DDP checks it).
        seed_everything(train.seed)
        self.data: DataBundle = build_data(cfg.data, train.seed, cfg.faults)
        self.notes = list(self.data.notes)
        self.precision: MixedPrecision = mixed_precision(train.precision, self.device)
        self.notes += self.precision.notes
        self.model = build_model(cfg, self.data.shape)
        faults.apply_init_faults(self.model, cfg.faults)
        if train.init_from:
            self._load_weights(Path(train.init_from).expanduser())
        try:
            self.model.to(self.device)
            self.loss_fn = build_loss(cfg.loss).to(self.device)
            self.optimizer = build_optimizer(
                cfg.optimizer, faults.optimizer_params(self.model, cfg.faults)
            )
        except (MemoryError, RuntimeError) as exc:
            if not is_allocation_failure(exc):
                raise
            # The model fit the host, not the device (a CUDA out of memory): say which keys.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(
                f"model: does not fit on {self.device} ({first[:200]}); make it smaller "
                "(model.name and its arguments) or choose another train.device"
            ) from None
        samples = len(self.data.train)
        if self.place is not None:
            self._sampler = train_sampler(
                self.data.train, self.place, shuffle=cfg.data.shuffle, seed=train.seed
            )
            samples = len(self._sampler)
        batches = math.ceil(samples / train.batch_size)
        self.steps_per_epoch = batches // train.accumulate
        if self.steps_per_epoch == 0:
            share = f" (this process's share of {self.place.world_size})" if self.place else ""
            raise UsageError(
                f"data: {samples} training samples{share} make no full step of "
                f"train.batch_size × train.accumulate = {train.batch_size * train.accumulate}"
            )
        limits = [train.max_steps] if train.max_steps else []
        if train.epochs:
            limits.append(train.epochs * self.steps_per_epoch)
        self.total_steps = min(limits)
        self.scheduler: LRScheduler | None = None
        if cfg.scheduler is not None:
            self.scheduler = build_scheduler(
                cfg.scheduler,
                self.optimizer,
                total_steps=self.total_steps,
                steps_per_epoch=self.steps_per_epoch,
            )
        if train.resume:
            self._resume(Path(train.resume).expanduser())

    def _resume(self, path: Path) -> None:
        """`train.resume`: model, optimizer, scheduler, step and RNG from a tuimon checkpoint."""
        if not path.is_file():
            raise UsageError(f"train.resume: no checkpoint at {path}")
        # The run that wrote it may have been killed mid-write: its temporary files go now.
        removed = remove_leftover_temp_files(path.parent)
        if removed:
            size = sum(size for _, size in removed) / 2**20
            self.notes.append(
                f"removed {len(removed)} temporary checkpoint file(s) ({size:.1f} MiB) "
                f"that a killed run left in {path.parent}"
            )
        try:
            self.resume = load_checkpoint(
                path,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                scaler=self.precision.scaler,
                map_location=self.device,
            )
        except CheckpointError as exc:
            raise UsageError(f"train.resume: {exc}") from None
        except (ValueError, RuntimeError, KeyError) as exc:
            raise UsageError(f"train.resume: cannot resume from {path}: {exc}") from None

    def _load_weights(self, path: Path) -> None:
        """`train.init_from`: model weights only (a tuimon checkpoint or a state_dict)."""
        if not path.is_file():
            raise UsageError(f"train.init_from: no file at {path}")
        try:
            self.model.load_state_dict(model_weights(path))
        except CheckpointError as exc:
            raise UsageError(f"train.init_from: {exc}") from None
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"train.init_from: cannot load weights from {path}: {exc}") from None

    def run(
        self, run_dir: str | Path | None = None, quiet: bool = False, take_signals: bool = False
    ) -> RunStatus:
        """Train to the end (or a stop); returns the run's final status.

        `take_signals`: SIGINT and SIGTERM stop the run (first: at the next step, with a
        checkpoint; second: abort), whoever handled them before (the worker process).
        In a torchrun job every rank runs this with its DDP model, and the process group
        is destroyed at the end however the run ends.
        """
        try:
            return self._run(run_dir, quiet, take_signals)
        finally:
            if self.place is not None:
                leave_process_group()

    def _run(self, run_dir: str | Path | None, quiet: bool, take_signals: bool) -> RunStatus:
        cfg = self.config
        start = self.resume.step if self.resume else 0
        options = RunOptions(
            name=cfg.name,
            settings=cfg.monitor,
            config=cfg.model_dump(mode="json"),
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            epochs=cfg.train.epochs or math.ceil(self.total_steps / self.steps_per_epoch),
            grad_clip=cfg.train.grad_clip,
            start_step=start,
            start_epoch=start // self.steps_per_epoch,
            resumed_from=str(cfg.train.resume) if self.resume else None,
            data=self.data.info,
            notes=list(self.notes),
            loss={"name": cfg.loss.name, **cfg.loss.kwargs},
            precision=str(cfg.train.precision),
            # The loop polls should_stop after every step and ends cleanly itself.
            stop="flag",
        )
        if take_signals:
            options.stop_signals = (signal.SIGINT, signal.SIGTERM)
            options.replace_signal_handlers = True
        with Monitor.configured(
            self.model,
            self.optimizer,
            self.scheduler,
            scaler=self.precision.scaler,
            run_dir=run_dir,
            quiet=quiet,
            options=options,
        ) as mon:
            self.monitor = mon
            self._train(mon)
            if self.place is not None:
                self._compare_replicas(mon)
        return mon.status

    def _compare_replicas(self, mon: Monitor) -> None:
        """Say in every rank's log whether the replicas ended with identical weights (the
        digest of each rank's parameters, gathered): DDP's promise, checked once."""
        assert self.place is not None
        digests = digests_of_all_ranks(weights_digest(self.module.named_parameters()))
        mine = digests[self.place.rank]
        differ = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
        if differ:
            mon.note(
                f"the replicas' weights differ at the end: rank(s) {differ} differ from "
                f"rank 0 (this rank: sha256 {mine[:16]}, rank 0: {digests[0][:16]})",
                ERROR,
            )
        else:
            mon.note(
                f"{REPLICAS_IDENTICAL} on all {len(digests)} ranks at the end (sha256 {mine[:16]})",
                INFO,
            )

    # -- the loop -----------------------------------------------------------------------

    def _train(self, mon: Monitor) -> None:
        spe = self.steps_per_epoch
        epoch, done_in_epoch = divmod(mon.global_step, spe)
        if mon.global_step >= self.total_steps:
            return
        if mon.global_step and done_in_epoch == 0:
            # Checkpoints are taken at step boundaries, before an epoch's closing work.
            self._end_epoch(mon, epoch - 1)
        while mon.global_step < self.total_steps and not mon.should_stop:
            mon.epoch = epoch
            self._train_epoch(mon, epoch, skip=done_in_epoch)
            done_in_epoch = 0
            if mon.should_stop:
                return
            if mon.global_step % spe == 0:
                self._end_epoch(mon, epoch)
            epoch += 1
        if self.data.val is not None and self._validated_at != mon.global_step:
            self._validate(mon)
        mon.checkpoint("final")

    def _train_epoch(self, mon: Monitor, epoch: int, skip: int) -> None:
        """Train one epoch, starting at its step `skip` (non-zero when resuming)."""
        train, sched_cfg = self.config.train, self.config.scheduler
        # The scheduler to step after every optimizer step, if any.
        step_scheduler = (
            self.scheduler
            if sched_cfg is not None
            and sched_cfg.interval == "step"
            and not is_plateau(self.scheduler)
            else None
        )
        batches = faults.slow_storage(
            iter(self._loader(epoch, skip_batches=skip * train.accumulate)), self.config.faults
        )
        self._epoch_loss = torch.zeros((), device=self.device)
        self._epoch_steps = 0
        self.model.train()
        bugs, precision = self.config.faults, self.precision
        for _ in range(self.steps_per_epoch - skip):
            if not bugs.skip_zero_grad:
                self.optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=self.device)
            for _micro in range(train.accumulate):
                inputs, targets = next(batches)
                inputs = faults.corrupt_inputs(inputs.to(self.device, non_blocking=True), bugs)
                targets = targets.to(self.device, non_blocking=True)
                with precision.autocast():
                    outputs = faults.loss_inputs(self.model(inputs), bugs)
                    loss = self.loss_fn(outputs, targets)
                precision.backward(loss / train.accumulate)
                total += loss.detach()
            faults.corrupt_grads(self.model, mon.global_step + 1, bugs)
            precision.step(self.optimizer, bugs)
            if step_scheduler is not None:
                step_scheduler.step()
            mean_loss = total / train.accumulate
            self._epoch_loss += mean_loss
            self._epoch_steps += 1
            mon.step(mean_loss, inputs=inputs, targets=targets, outputs=outputs)
            step = mon.global_step
            if train.val_every and step % train.val_every == 0 and self.data.val is not None:
                self._validate(mon)
            if train.checkpoint_every and step % train.checkpoint_every == 0:
                mon.checkpoint("periodic")
            if mon.should_stop or step >= self.total_steps:
                break

    def _end_epoch(self, mon: Monitor, epoch: int) -> None:
        """An epoch's closing work: validation and the per-epoch scheduler step."""
        val_every, has_val = self.config.train.val_every, self.data.val is not None
        val_loss = self._validate(mon) if val_every == 0 and has_val else None
        sched_cfg = self.config.scheduler
        if self.scheduler is None or sched_cfg is None:
            return
        if is_plateau(self.scheduler):
            if val_every and has_val:
                return  # `_validate` feeds it after every validation
            if val_loss is None:
                # No validation set: the plateau is judged on the epoch's training loss.
                loss_sum, steps = self._epoch_loss, torch.tensor(float(self._epoch_steps))
                if self.place is not None:  # every rank steps the schedule on the same loss
                    loss_sum, steps = sum_across_ranks(loss_sum, steps.to(self.device))
                val_loss = float(loss_sum / max(float(steps), 1.0))
            self.scheduler.step(val_loss)
        elif sched_cfg.interval == "epoch":
            self.scheduler.step()

    @torch.no_grad()
    def _validate(self, mon: Monitor) -> float:
        assert self.data.val is not None
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        count = 0
        classify = True
        share = val_share(len(self.data.val), self.place) if self.place is not None else None
        loader = batch_loader(
            self.data.val,
            batch_size=self.config.train.batch_size,
            sampler=share,
            num_workers=self.config.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        # The module itself: DDP's forward may sync buffers, a collective of all ranks.
        model = self.module
        for inputs, targets in loader:
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            with self.precision.autocast():  # evaluated as it trains
                outputs = model(inputs)
                loss = self.loss_fn(outputs, targets)
            loss_sum += loss * len(targets)
            if classify and outputs.dim() == 2 and targets.dim() == 1:
                correct += (outputs.argmax(dim=1) == targets).sum()
            else:
                classify = False
            count += len(targets)
        self.model.train()
        total = torch.tensor(float(count), device=self.device)
        if self.place is not None:
            # Every rank evaluated its share; the whole set's sums, known on every rank.
            not_classified = torch.tensor(float(not classify), device=self.device)
            loss_sum, correct, total, not_classified = sum_across_ranks(
                loss_sum, correct, total, not_classified
            )
            classify = float(not_classified) == 0
        val_loss = float(loss_sum / max(float(total), 1.0))
        metrics: dict[str, Any] = {"val_loss": val_loss}
        if classify:
            metrics["val_acc"] = float(correct) / max(float(total), 1.0)
        if self.place is None or self.place.is_zero:
            mon.log(**metrics)
        self._validated_at = mon.global_step
        if is_plateau(self.scheduler) and self.config.train.val_every:
            self.scheduler.step(val_loss)
        return val_loss

    def _loader(self, epoch: int, skip_batches: int) -> torch.utils.data.DataLoader:
        """This epoch's batches, in an order fixed by (seed, epoch), from batch `skip_batches`.

        The loader has its own generator so that making it does not draw from the global
        RNG: a run resumed mid-epoch then sees exactly the batches and augmentations of the
        original.
        """
        cfg = self.config
        seed = cfg.train.seed * 100_003 + epoch
        size = len(self.data.train)
        if self._sampler is not None:
            # This rank's share, in an order fixed by (seed, epoch) like the whole set's.
            self._sampler.set_epoch(epoch)
            order = torch.tensor(list(self._sampler), dtype=torch.long)
        elif cfg.data.shuffle:
            order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
        else:
            order = torch.arange(size)
        order = faults.epoch_order(order, self.data.train.labels, cfg.faults)
        sampler = order[skip_batches * cfg.train.batch_size :].tolist()
        return batch_loader(
            self.data.train,
            batch_size=cfg.train.batch_size,
            sampler=sampler,
            num_workers=cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=False,
        )
