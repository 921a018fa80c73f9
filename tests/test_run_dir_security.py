"""Run directories an adversary prepared: another user's, planted symlinks, foreign files.

Like git's refusal of a repository of "dubious ownership", tuimon refuses such a
directory with a message that says why and how to go on, and never writes outside the
run. The tests run as root, which bypasses permission checks: ownership is tested by
ownership (chown to nobody), not by access.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
import torch

from tuimon.errors import UsageError
from tuimon.run.checkpoint import save_checkpoint
from tuimon.run.private_files import (
    GROUP_ACCESS_ENV,
    create_private_file,
    open_private_append,
    write_private_file,
)
from tuimon.run.run_dir import RUN_DIR_ENV, claim_script_run_dir, create_run_dir

from conftest import ENDLESS_CONFIG, run_tuimon

NOBODY = 65534
SHORT = ENDLESS_CONFIG.replace("max_steps: 100000000", "max_steps: 3")
OUTSIDE_TEXT = "precious data outside the run\n"


def outside_file(tmp_path: Path) -> Path:
    target = tmp_path / "outside" / "precious.txt"
    target.parent.mkdir()
    target.write_text(OUTSIDE_TEXT)
    return target


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def foreign_dir(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    path = tmp_path / "theirs"
    path.mkdir()
    os.chown(path, NOBODY, NOBODY)
    return path


# -- ownership ----------------------------------------------------------------------------


def test_a_run_dir_of_another_user_is_refused_with_exit_2(write_config, foreign_dir, tmp_path):
    done = run_tuimon(write_config(SHORT), "--headless", "--run-dir", foreign_dir, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"refusing run directory {foreign_dir}: it is owned by uid {NOBODY}" in done.stderr
    assert "not by you (uid 0" in done.stderr
    assert "use a new or empty directory of your own" in done.stderr
    assert list(foreign_dir.iterdir()) == []


def test_the_run_dir_given_by_tuimon_run_is_checked_too(foreign_dir, monkeypatch):
    monkeypatch.setenv(RUN_DIR_ENV, str(foreign_dir))
    with pytest.raises(UsageError, match=f"owned by uid {NOBODY}"):
        claim_script_run_dir("script")
    assert list(foreign_dir.iterdir()) == []


def test_an_entry_of_another_user_in_an_own_run_dir_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    run = tmp_path / "run"
    run.mkdir()
    (run / "output.log").write_text("")
    os.chown(run / "output.log", NOBODY, NOBODY)
    with pytest.raises(UsageError, match=f"output.log is owned by uid {NOBODY}"):
        create_run_dir("x", run)


# -- planted symlinks ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["config.yaml", "output.log", "events.jsonl", "control.sock"])
def test_a_planted_symlink_in_the_run_dir_is_refused(tmp_path, name):
    target = outside_file(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(target)
    with pytest.raises(UsageError) as refused:
        create_run_dir("x", run)
    message = str(refused.value)
    assert f"refusing run directory {run}: {name} is a symlink (to {target})" in message
    assert target.read_text() == OUTSIDE_TEXT


def test_a_dangling_events_symlink_creates_nothing_outside(tmp_path):
    """`events.jsonl -> /elsewhere/new`: the old check (exists()) followed it and found
    nothing, so the event log created the file outside the run."""
    run = tmp_path / "run"
    run.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "events.jsonl").symlink_to(elsewhere / "new.jsonl")
    with pytest.raises(UsageError, match=r"events\.jsonl is a symlink"):
        create_run_dir("x", run)
    assert list(elsewhere.iterdir()) == []


def test_a_symlinked_checkpoint_dir_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(outside)
    with pytest.raises(UsageError, match="checkpoints is a symlink"):
        create_run_dir("x", run)
    assert list(outside.iterdir()) == []


def test_a_symlink_inside_the_checkpoint_dir_is_refused(tmp_path):
    target = outside_file(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / f".step-00000005.pt.tmp-{os.getpid()}").symlink_to(target)
    with pytest.raises(UsageError, match=r"checkpoints/\.step-00000005\.pt\.tmp-\d+ is a symlink"):
        create_run_dir("x", run)
    assert target.read_text() == OUTSIDE_TEXT


def test_the_cli_refuses_a_planted_output_log_link_and_writes_nothing_outside(
    write_config, tmp_path
):
    target = outside_file(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "output.log").symlink_to(target)
    done = run_tuimon(write_config(SHORT), "--headless", "--run-dir", run, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "output.log is a symlink" in done.stderr and "Traceback" not in done.stderr
    assert target.read_text() == OUTSIDE_TEXT
    assert sorted(p.name for p in run.iterdir()) == ["output.log"]


def test_checkpoint_temp_and_final_names_never_follow_a_link(tmp_path):
    """The old temp name was predictable (`.step-N.pt.tmp-PID`): a link planted there got
    the checkpoint written through it. Now the temp file is mkstemp's and the final name
    is replaced by rename, which replaces a link instead of following it."""
    target = outside_file(tmp_path)
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    final = directory / "step-00000005.pt"
    (directory / f".{final.name}.tmp-{os.getpid()}").symlink_to(target)
    final.symlink_to(target)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(final, model=model, optimizer=optimizer, scheduler=None, step=5, epoch=0)
    assert target.read_text() == OUTSIDE_TEXT
    assert stat.S_ISREG(final.lstat().st_mode)
    assert torch.load(final, weights_only=True)["step"] == 5


# -- what a run dir may hold ----------------------------------------------------------------


def test_a_directory_with_foreign_files_is_refused(tmp_path):
    run = tmp_path / "home"
    run.mkdir()
    (run / ".bashrc").write_text("alias x=y\n")
    (run / "notes.txt").write_text("mine\n")
    with pytest.raises(UsageError) as refused:
        create_run_dir("x", run)
    assert "not empty and not a tuimon run directory (it holds .bashrc, notes.txt)" in str(
        refused.value
    )
    assert sorted(p.name for p in run.iterdir()) == [".bashrc", "notes.txt"]


def test_a_run_dir_tuimon_prepared_is_used_and_one_with_a_run_refused(tmp_path):
    """The UI's worker and a `tuimon run` script start in a directory their launcher made
    (output.log, checkpoints/); a stale socket and an earlier checkpoint may be there."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "output.log").write_text("launcher\n")
    (run / "config.yaml").write_text("name: old\n")
    (run / "checkpoints" / "step-00000010.pt").write_bytes(b"old")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(run / "control.sock"))
    stale.close()
    assert create_run_dir("x", run) == run.resolve()
    (run / "events.jsonl").write_text("")
    with pytest.raises(UsageError, match="already holds a run"):
        create_run_dir("x", run)


def test_a_run_dir_that_cannot_be_created_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match=f"cannot create run directory .*: {tmp_path / 'file'}"):
        create_run_dir("x", tmp_path / "file" / "run")
    with pytest.raises(UsageError, match="it is not a directory"):
        create_run_dir("x", tmp_path / "file")


def test_a_symlinked_run_dir_of_ones_own_is_followed(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert create_run_dir("x", tmp_path / "link") == real.resolve()


# -- modes ------------------------------------------------------------------------------


def test_run_files_are_private_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv(GROUP_ACCESS_ENV, raising=False)
    old = os.umask(0o022)  # a usual umask: the modes come from tuimon, not from it
    try:
        run = create_run_dir("x", tmp_path / "new")
        mine = tmp_path / "mine"
        mine.mkdir(mode=0o755)
        create_run_dir("x", mine)
        write_private_file(run / "config.yaml", "name: x\n")
        with open_private_append(run / "events.jsonl", binary=True) as file:
            file.write(b"{}\n")
        model = torch.nn.Linear(2, 2)
        checkpoint = save_checkpoint(
            run / "checkpoints" / "step-00000001.pt",
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            scheduler=None,
            step=1,
            epoch=0,
        )
    finally:
        os.umask(old)
    assert mode(run) == mode(run / "checkpoints") == mode(mine) == 0o700
    assert mode(run / "config.yaml") == mode(run / "events.jsonl") == mode(checkpoint) == 0o600


def test_group_access_opens_the_run_to_the_group_for_reading(tmp_path, monkeypatch):
    monkeypatch.setenv(GROUP_ACCESS_ENV, "1")
    run = create_run_dir("x", tmp_path / "shared")
    write_private_file(run / "config.yaml", "name: x\n")
    with open_private_append(run / "output.log", binary=False) as file:
        file.write("hello\n")
    assert mode(run) == mode(run / "checkpoints") == 0o750
    assert mode(run / "config.yaml") == mode(run / "output.log") == 0o640


# -- the open functions the event log and the output capture use ----------------------------


def test_open_private_append_refuses_links_fifos_and_foreign_files(tmp_path):
    target = outside_file(tmp_path)
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    with pytest.raises(OSError):
        open_private_append(link, binary=True)
    assert target.read_text() == OUTSIDE_TEXT
    fifo = tmp_path / "output.log"
    os.mkfifo(fifo)
    with pytest.raises(OSError):  # no reader: refused at once, never blocks
        open_private_append(fifo, binary=False)
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs.log"
        theirs.write_text("")
        os.chown(theirs, NOBODY, NOBODY)
        with pytest.raises(OSError, match=f"belongs to uid {NOBODY}"):
            open_private_append(theirs, binary=False)
    with open_private_append(tmp_path / "new.log", binary=False, buffering=1) as file:
        file.write("line\n")
    assert (tmp_path / "new.log").read_text() == "line\n"


def test_create_private_file_is_exclusive_even_for_a_dangling_link(tmp_path):
    link = tmp_path / "events.jsonl"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        create_private_file(link)
    assert not (tmp_path / "nowhere").exists()
