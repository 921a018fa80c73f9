"""`tuimon ls`: every run under the roots, in every state, from real runs: a script's
Monitors that complete, stop, fail, and one that dies (the script killed with SIGKILL
while it trains); config workers that run and pause (through the control socket). One set
of runs serves the whole module."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuimon.catalog.catalog import RunCatalog
from tuimon.catalog.run_summary import DIED
from tuimon.cli import main
from tuimon.control.client import ControlClient
from tuimon.control.commands import PAUSE
from tuimon.run.event_codec import encode_event
from tuimon.run.events import ALERT, COMPLETED, FAILED, PAUSED, RUNNING, START, STEP, STOPPED
from tuimon.run.run_dir import EVENTS_FILE

from conftest import ENDLESS_CONFIG, run_tuimon, worker_env

# Four runs of one script: one completes, one is stopped, one raises, one never ends.
FINISHED_RUNS = """\
import sys
from pathlib import Path

import torch
import tuimon

root = Path(sys.argv[1])


def train(name, steps, stop_at=None, fail_at=None, announce=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    log = root / name / "events.jsonl"
    with tuimon.Monitor(model, opt, run_dir=root / name, quiet=True, total_steps=steps) as mon:
        for step in range(1, steps + 1):
            x = torch.randn(8, 4)
            loss = torch.nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == fail_at:
                raise RuntimeError("the data loader broke")
            if step == stop_at:
                mon.request_stop()
            mon.step(loss)
            if announce and step >= announce and b'"type":"step"' in log.read_bytes():
                print("training", flush=True)  # a step is in its log: kill it now
                announce = None


train("completed", 30)
train("stopped", 30, stop_at=10)
try:
    train("failed", 30, fail_at=12)
except RuntimeError:
    pass
print("finished", flush=True)
# The last one trains until the test kills this process (SIGKILL): it dies.
train("died", 10**9, announce=5)
"""
EXPECTED = {
    "completed": COMPLETED,
    "stopped": STOPPED,
    "failed": FAILED,
    "running": RUNNING,
    "paused": PAUSED,
    "died": DIED,
}


def wait_until(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def socket_answers(run_dir: Path) -> bool:
    try:
        with ControlClient(run_dir, timeout=2) as client:
            client.request("ping")
    except Exception:
        return False
    return True


def statuses(root: Path) -> dict[str, str]:
    return {s.run_dir.name: s.status for s in RunCatalog([root]).refresh()}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A root with a run in every state (EXPECTED)."""
    base = tmp_path_factory.mktemp("fleet")
    root = base / "runs"
    root.mkdir()
    config = base / "endless.yaml"
    config.write_text(ENDLESS_CONFIG, encoding="utf-8")
    script = base / "finished_runs.py"
    script.write_text(FINISHED_RUNS, encoding="utf-8")
    workers: dict[str, subprocess.Popen[bytes]] = {}
    with contextlib.ExitStack() as stack:
        for name in ("running", "paused"):
            log = stack.enter_context((base / f"{name}.out").open("wb"))
            command = [sys.executable, "-m", "tuimon", str(config), "--headless", "--quiet"]
            workers[name] = subprocess.Popen(
                [*command, "--run-dir", str(root / name)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=worker_env(),
                cwd=base,
            )
    errors = stack.enter_context((base / "script.err").open("wb"))
    script_run = workers["died"] = subprocess.Popen(
        [sys.executable, str(script), str(root)],
        stdout=subprocess.PIPE,
        stderr=errors,
        env=worker_env(),
    )
    try:
        assert script_run.stdout is not None
        said = [script_run.stdout.readline() for _ in range(2)]
        assert said == [b"finished\n", b"training\n"], (base / "script.err").read_text()
        script_run.send_signal(signal.SIGKILL)
        script_run.wait(timeout=30)
        for name in ("running", "paused"):
            process = workers[name]
            wait_until(
                lambda run=root / name, p=process: socket_answers(run) or p.poll() is not None,
                f"the {name} worker's socket",
            )
            assert process.poll() is None, (base / f"{name}.out").read_text()
        with ControlClient(root / "paused", timeout=30) as client:
            client.request(PAUSE)
        wait_until(lambda: statuses(root) == EXPECTED, "every run in its state")
        yield root
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        if script_run.stdout is not None:
            script_run.stdout.close()


def test_ls_json_lists_every_run_with_its_state(fleet):
    done = run_tuimon("ls", "--root", fleet, "--json")
    assert done.returncode == 0, done.stderr
    runs = {Path(r["run_dir"]).name: r for r in json.loads(done.stdout)}
    assert {name: r["status"] for name, r in runs.items()} == EXPECTED
    assert runs["completed"]["step"] == runs["completed"]["total_steps"] == 30
    assert runs["stopped"]["step"] == 10 and runs["failed"]["step"] == 11
    assert runs["running"]["step"] >= 1 and runs["running"]["duration"] > 0
    assert all(r["loss"] is not None and r["started"] for r in runs.values())
    assert runs["died"]["ended"] is None and runs["completed"]["ended"] is not None
    started = [r["started"] for r in json.loads(done.stdout)]
    assert started == sorted(started, reverse=True)  # newest first


def test_ls_prints_an_aligned_table(fleet, capsys):
    assert main(["ls", "--root", str(fleet)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0], {line.split()[0]: line for line in lines[1:]}
    assert header.split()[:3] == ["RUN", "STATE", "STEP"]
    assert {name: row.split()[1] for name, row in rows.items()} == EXPECTED
    assert "30/30" in rows["completed"]
    column = header.index("STATE")
    assert all(row[column:].startswith(EXPECTED[name]) for name, row in rows.items())


def test_ls_filters_by_state(fleet, capsys):
    assert main(["ls", "--root", str(fleet), "--json", "--state", DIED, "--state", PAUSED]) == 0
    listed = {Path(r["run_dir"]).name for r in json.loads(capsys.readouterr().out)}
    assert listed == {"died", "paused"}
    with pytest.raises(SystemExit) as exit_info:
        main(["ls", "--root", str(fleet), "--state", "sleeping"])
    assert exit_info.value.code == 2


def test_a_missing_root_is_named_and_the_others_still_listed(fleet, tmp_path, capsys):
    missing = tmp_path / "no-such-root"
    assert main(["ls", "--root", str(missing), "--root", str(fleet), "--json"]) == 0
    out, err = capsys.readouterr()
    assert str(missing) in err
    assert len(json.loads(out)) == len(EXPECTED)


def test_no_runs_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUIMON_ROOTS", raising=False)
    (tmp_path / "runs").mkdir()
    assert main(["ls"]) == 0
    assert "no runs under runs" in capsys.readouterr().out
    assert main(["ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_hostile_text_in_a_log_never_reaches_the_terminal_raw(tmp_path, capsys):
    title = "\x1b]0;pwned\x07"
    run = tmp_path / f"evil{title}\x9b31m"
    run.mkdir()
    events = [
        {"type": START, "name": f"n{title}", "pid": os.getpid(), "host": "x", "time": 1.0},
        {"type": STEP, "step": 1, "loss": 1.0},
        {"type": ALERT, "rule": f"r{title}\x1b[2J", "severity": "error", "message": title},
    ]
    (run / EVENTS_FILE).write_bytes(b"".join(encode_event(e) + b"\n" for e in events))
    for json_flag in ([], ["--json"]):
        assert main(["ls", "--root", str(tmp_path), *json_flag]) == 0
        out = capsys.readouterr().out
        assert "evil" in out and "\x1b" not in out and "\x07" not in out and "\x9b" not in out
