"""Checkpoints an adversary crafted, a writer killed mid-write, a disk that is full.

A checkpoint is loaded with `torch.load(weights_only=True)`: a crafted file never runs
code, and anything that is not a checkpoint is one clear error naming the file and the
config key. Writes are atomic and leave nothing behind, even on a full filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tuimon.config import load_config
from tuimon.control.client import ControlClient
from tuimon.errors import ConfigError, UsageError
from tuimon.monitor.monitor import Monitor
from tuimon.run import private_files
from tuimon.run.checkpoint import (
    CheckpointError,
    CheckpointSpaceError,
    load_checkpoint,
    model_weights,
    probe_checkpoint_file,
    save_checkpoint,
)
from tuimon.run.run_dir import create_run_dir
from tuimon.training.trainer import Trainer

from conftest import ENDLESS_CONFIG, run_tuimon, small_tmpfs, worker_env

SHORT = ENDLESS_CONFIG.replace("max_steps: 100000000", "max_steps: 4")


class _WritesMarker:
    """Unpickling this runs `touch MARKER`, as a crafted checkpoint would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def crafted_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    files = tmp_path / "files"
    files.mkdir()
    made = {
        "torch_save_with_code": files / "evil.pt",
        "bare_pickle_with_code": files / "evil.pkl",
        "random_bytes": files / "random.pt",
        "text": files / "notes.pt",
        "empty": files / "empty.pt",
        "zip_not_torch": files / "archive.pt",
        "whole_model": files / "model.pt",
    }
    torch.save({"format": 2, "model": _WritesMarker(marker)}, made["torch_save_with_code"])
    made["bare_pickle_with_code"].write_bytes(pickle.dumps(_WritesMarker(marker), protocol=2))
    made["random_bytes"].write_bytes(random.Random(0).randbytes(4096))
    made["text"].write_text("step: 100\nlr: 0.1\n")
    made["empty"].write_bytes(b"")
    with zipfile.ZipFile(made["zip_not_torch"], "w") as archive:
        archive.writestr("data/readme.txt", "not a tensor")
    torch.save(torch.nn.Linear(4, 2), made["whole_model"])
    return made


def tiny() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


# -- crafted and foreign files ------------------------------------------------------------


def test_no_crafted_or_foreign_file_runs_code_or_escapes_as_a_traceback(tmp_path):
    marker = tmp_path / "MARKER"
    for kind, path in crafted_files(tmp_path, marker).items():
        for load in (
            lambda p: load_checkpoint(p, model=tiny()[0], optimizer=tiny()[1], scheduler=None),
            model_weights,
        ):
            with pytest.raises(CheckpointError) as refused:
                load(path)
            assert str(path) in str(refused.value), kind
            assert "weights_only=False" not in str(refused.value)
    assert not marker.exists()


def test_why_a_crafted_file_is_refused_is_said_in_one_line(tmp_path):
    marker = tmp_path / "MARKER"
    made = crafted_files(tmp_path, marker)
    with pytest.raises(CheckpointError) as refused:
        model_weights(made["torch_save_with_code"])
    message = str(refused.value)
    assert "\n" not in message
    assert "unpickling it would call posix.system" in message or "os.system" in message
    with pytest.raises(CheckpointError, match="empty or cut short"):
        model_weights(made["empty"])
    with pytest.raises(CheckpointError, match=r"torch\.nn\.modules\.linear\.Linear"):
        model_weights(made["whole_model"])


def test_the_cheap_probe_refuses_what_it_can_without_unpickling(tmp_path):
    """For a config loader: no unpickling, no tensor read; only the bare pickle (which
    could be torch's legacy format) is left to the real load to refuse."""
    marker = tmp_path / "MARKER"
    made = crafted_files(tmp_path, marker)
    for kind, path in made.items():
        if kind == "bare_pickle_with_code":
            probe_checkpoint_file(path)
            continue
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            probe_checkpoint_file(path)
    model, optimizer = tiny()
    good = save_checkpoint(
        tmp_path / "good.pt", model=model, optimizer=optimizer, scheduler=None, step=1, epoch=0
    )
    probe_checkpoint_file(good)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    probe_checkpoint_file(tmp_path / "weights.pt")
    assert not marker.exists()


@pytest.mark.parametrize("key", ["train.resume", "train.init_from"])
def test_a_config_naming_a_crafted_checkpoint_exits_2_without_running_it(
    write_config, tmp_path, key
):
    marker = tmp_path / "MARKER"
    evil = crafted_files(tmp_path, marker)["torch_save_with_code"]
    done = run_tuimon(write_config(SHORT), "--headless", "--set", f"{key}={evil}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"{key}: {evil} is not a PyTorch checkpoint" in done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists()


def test_a_non_checkpoint_for_resume_is_a_usage_error_naming_the_key(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    config = tmp_path / "c.yaml"
    # Named in the file: the config loader reports it at its line, before anything is built.
    config.write_text(SHORT.replace("train:\n", f"train:\n  resume: {text}\n"))
    line = SHORT.splitlines().index("train:") + 2
    with pytest.raises(ConfigError, match=rf"c\.yaml:{line}:\d+: train\.resume: {text} is not a"):
        load_config(config)
    config.write_text(SHORT)
    with pytest.raises(ConfigError, match=r"train\.init_from: no checkpoint at .*missing\.pt"):
        load_config(config, [f"train.init_from={tmp_path / 'missing.pt'}"])
    torch.save({"weight": torch.zeros(2, 2)}, tmp_path / "w.pt")  # weights, not a checkpoint
    trainer = Trainer(load_config(config, [f"train.resume={tmp_path / 'w.pt'}"]))
    with pytest.raises(UsageError, match=r"is not a tuimon checkpoint .* use train\.init_from"):
        trainer.setup()


# -- what a checkpoint holds ----------------------------------------------------------------


def test_a_checkpoint_loads_weights_only_and_restores_every_rng(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    random.seed(1)
    np.random.seed(2)
    np.random.standard_normal()  # a cached gaussian is part of NumPy's state
    torch.manual_seed(3)
    path = save_checkpoint(
        tmp_path / "step-00000001.pt",
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        step=1,
        epoch=0,
    )
    state = torch.load(path, weights_only=True)  # no allow-list needed
    assert state["format"] == 2 and state["step"] == 1
    expected = (random.random(), np.random.standard_normal(), torch.rand(3).tolist())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler)
    assert (random.random(), np.random.standard_normal(), torch.rand(3).tolist()) == expected


def test_a_checkpoint_of_the_older_format_still_resumes(tmp_path):
    """Format 1 kept NumPy's RNG state as an array: exactly NumPy's array globals are
    allowed for it, and a format-1 file with any other global is still refused."""
    model, optimizer = tiny()
    np.random.seed(5)
    old = {
        "format": 1,
        "step": 7,
        "epoch": 1,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": None,
        "rng": {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
        },
        "extra": {},
    }
    torch.save(old, tmp_path / "old.pt")
    expected = np.random.random_sample()
    np.random.seed(0)
    resumed = load_checkpoint(tmp_path / "old.pt", model=model, optimizer=optimizer, scheduler=None)
    assert resumed.step == 7 and np.random.random_sample() == expected
    old["extra"] = {"payload": _WritesMarker(tmp_path / "MARKER")}
    torch.save(old, tmp_path / "old-evil.pt")
    with pytest.raises(CheckpointError, match="would call"):
        load_checkpoint(tmp_path / "old-evil.pt", model=model, optimizer=optimizer, scheduler=None)
    assert not (tmp_path / "MARKER").exists()


# -- a writer killed mid-write --------------------------------------------------------------

KILLED_WRITER = """\
import os, sys, time
from pathlib import Path
import torch
from tuimon.run import private_files
from tuimon.run.checkpoint import save_checkpoint

def stall(fd):  # the data is written, the rename not done: where a kill -9 hurts
    print("writing", flush=True)
    time.sleep(3600)

private_files.os.fsync = stall
model = torch.nn.Linear(256, 256)
save_checkpoint(Path(sys.argv[1]), model=model,
                optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                scheduler=None, step=30, epoch=0)
"""


def kill_mid_write(target: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        env=worker_env(),
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "writing\n"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        if writer.stdout:
            writer.stdout.close()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if private_files.is_temp_name(p.name))


def test_temp_files_of_a_killed_writer_are_removed_at_the_next_start(tmp_path):
    run = create_run_dir("r", tmp_path / "run")
    checkpoints = run / "checkpoints"
    model, optimizer = tiny()
    good = save_checkpoint(
        checkpoints / "step-00000015.pt",
        model=model,
        optimizer=optimizer,
        scheduler=None,
        step=15,
        epoch=0,
    )
    good_bytes = good.read_bytes()
    kill_mid_write(checkpoints / "step-00000030.pt")
    killed = leftovers(checkpoints)
    assert len(killed) == 1 and (checkpoints / killed[0]).stat().st_size > 256 * 256 * 4
    # Files that only look alike, and a temp file whose writer is alive, stay.
    alive = checkpoints / f".tuimon-tmp-{os.getppid()}-abcdefgh.part"
    keep = [checkpoints / "notes.part", checkpoints / ".tuimon-tmp-notes", alive]
    for path in keep:
        path.write_text("mine")
    legacy = checkpoints / ".step-00000045.pt.tmp-999999999"  # an older tuimon's name
    legacy.write_bytes(b"partial")

    create_run_dir("r", run)  # the next start of a run in this directory

    assert leftovers(checkpoints) == [alive.name]
    assert not legacy.exists() and not (checkpoints / "step-00000030.pt").exists()
    assert good.read_bytes() == good_bytes
    assert all(path.read_text() == "mine" for path in keep)


def test_resuming_from_a_killed_runs_checkpoint_removes_its_temp_files(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(SHORT.replace("max_steps: 4", "max_steps: 4\n  checkpoint_every: 2"))
    first = Trainer(load_config(config))
    first.setup()
    assert first.run(tmp_path / "a", quiet=True) == "completed"
    checkpoints = tmp_path / "a" / "checkpoints"
    kill_mid_write(checkpoints / "step-00000006.pt")
    assert len(leftovers(checkpoints)) == 1
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir() if p.suffix == ".pt"}
    second = Trainer(load_config(config, [f"train.resume={checkpoints / 'step-00000002.pt'}"]))
    second.setup()
    assert leftovers(checkpoints) == []
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before
    assert any("removed 1 temporary checkpoint file" in note for note in second.notes)
    assert second.resume is not None and second.resume.step == 2


# -- a full disk ------------------------------------------------------------------------------


@pytest.fixture
def full_checkpoint_dir(tmp_path):
    """A run whose `checkpoints/` is a 1 MiB tmpfs: a real filesystem that fills up."""
    run = create_run_dir("full", tmp_path / "run")
    with small_tmpfs(run / "checkpoints", "size=1m,mode=0700"):
        yield run


def big_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(1024, 768)  # 3 MiB of weights: more than the tmpfs holds
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_a_checkpoint_that_does_not_fit_says_so_and_leaves_nothing(full_checkpoint_dir):
    checkpoints = full_checkpoint_dir / "checkpoints"
    model, optimizer = big_model()
    target = checkpoints / "step-00000001.pt"
    with pytest.raises(CheckpointSpaceError, match=r"^no space left on device: checkpoint"):
        save_checkpoint(target, model=model, optimizer=optimizer, scheduler=None, step=1, epoch=0)
    assert list(checkpoints.iterdir()) == []


def test_a_write_that_hits_the_full_tmpfs_midway_is_reported_as_no_space(
    full_checkpoint_dir, monkeypatch
):
    """The same through torch's zip writer, the free-space check before it fooled."""
    free = shutil.disk_usage

    def plenty(path):  # type: ignore[no-untyped-def]
        return free(path)._replace(free=1 << 40)

    monkeypatch.setattr("tuimon.run.checkpoint.shutil.disk_usage", plenty)
    checkpoints = full_checkpoint_dir / "checkpoints"
    model, optimizer = big_model()
    with pytest.raises(CheckpointSpaceError) as failed:
        save_checkpoint(
            checkpoints / "step-00000001.pt",
            model=model,
            optimizer=optimizer,
            scheduler=None,
            step=1,
            epoch=0,
        )
    assert str(failed.value).startswith("no space left on device")
    assert failed.value.errno == errno.ENOSPC
    assert list(checkpoints.iterdir()) == []
    small, small_optimizer = tiny()  # and the filesystem has its room back
    save_checkpoint(
        checkpoints / "step-00000002.pt",
        model=small,
        optimizer=small_optimizer,
        scheduler=None,
        step=2,
        epoch=0,
    )


def checkpoint_command_event(run_dir: Path, model, optimizer) -> dict:  # type: ignore[no-untyped-def]
    """Send `checkpoint` over the control socket, let a step apply it, return its event."""
    with (
        Monitor(model, optimizer, run_dir=run_dir, quiet=True) as mon,
        ControlClient(run_dir, timeout=30) as client,
    ):
        client.subscribe()
        request_id = client.request("checkpoint")["id"]
        mon.step(torch.tensor(1.0))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            event = client.next_event(timeout=deadline - time.monotonic())
            if event and event.get("type") == "control" and event["request_id"] == request_id:
                return event
    pytest.fail("the checkpoint command's control event never came")


def test_the_checkpoint_command_reports_a_full_disk_as_an_error(full_checkpoint_dir):
    model, optimizer = big_model()
    event = checkpoint_command_event(full_checkpoint_dir, model, optimizer)
    assert event["ok"] is False and event["new"] is None
    assert event["error"].startswith("checkpoint failed: no space left on device")
    assert list((full_checkpoint_dir / "checkpoints").iterdir()) == []


# -- ENOSPC injected (no root needed) ---------------------------------------------------------


@pytest.fixture
def writes_to_dev_full(monkeypatch):
    """atomic_write's temp file writes to /dev/full: every write fails with a real ENOSPC
    from the kernel, through torch's own zip writer."""
    real_mkstemp, real_fchmod = private_files.tempfile.mkstemp, private_files.os.fchmod
    full: set[int] = set()

    def mkstemp(**kwargs):  # type: ignore[no-untyped-def]
        fd, name = real_mkstemp(**kwargs)
        os.close(fd)
        fd = os.open("/dev/full", os.O_WRONLY)
        full.add(fd)
        return fd, name

    def fchmod(fd: int, mode: int) -> None:
        if fd not in full:  # never chmod the device itself
            real_fchmod(fd, mode)

    monkeypatch.setattr(private_files.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(private_files.os, "fchmod", fchmod)


def test_enospc_from_the_writer_is_no_space_and_keeps_the_old_checkpoint(
    tmp_path, writes_to_dev_full
):
    model, optimizer = tiny()
    target = tmp_path / "step-00000001.pt"
    target.write_bytes(b"the previous good checkpoint")
    with pytest.raises(CheckpointSpaceError, match=r"^no space left on device"):
        save_checkpoint(target, model=model, optimizer=optimizer, scheduler=None, step=1, epoch=0)
    assert target.read_bytes() == b"the previous good checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_enospc_at_fsync_is_no_space_too(tmp_path, monkeypatch):
    """Delayed allocation: the disk can be found full only when the data is synced."""

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(private_files.os, "fsync", full)
    model, optimizer = tiny()
    with pytest.raises(CheckpointSpaceError, match=r"^no space left on device"):
        save_checkpoint(
            tmp_path / "step-00000001.pt",
            model=model,
            optimizer=optimizer,
            scheduler=None,
            step=1,
            epoch=0,
        )
    assert list(tmp_path.iterdir()) == []


def test_the_checkpoint_command_reports_injected_enospc(tmp_path, writes_to_dev_full):
    model, optimizer = tiny()
    event = checkpoint_command_event(tmp_path / "run", model, optimizer)
    assert event["ok"] is False
    assert event["error"].startswith("checkpoint failed: no space left on device")
    assert leftovers(tmp_path / "run" / "checkpoints") == []


def test_ctl_checkpoint_on_a_full_disk_exits_1_with_the_reason(tmp_path, writes_to_dev_full):
    """Before: `applied at step N: checkpoint None -> None`, exit 0."""
    model, optimizer = tiny()
    run = tmp_path / "run"
    with Monitor(model, optimizer, run_dir=run, quiet=True) as mon:
        ctl = subprocess.Popen(
            [sys.executable, "-m", "tuimon", "ctl", str(run), "checkpoint", "--wait", "120"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=worker_env(),
        )
        deadline = time.monotonic() + 180
        while ctl.poll() is None and time.monotonic() < deadline:
            mon.step(torch.tensor(1.0))  # each step boundary may apply the command
            with contextlib.suppress(subprocess.TimeoutExpired):
                ctl.wait(timeout=0.05)
        out, err = ctl.communicate(timeout=30)
    assert ctl.returncode == 1, (out, err)
    assert "tuimon ctl: checkpoint failed: no space left on device" in err
    assert "None -> None" not in out
