"""Malformed and hostile configs through the real command line (issue 8, item 12).

Each file below once gave a traceback, a memory blow-up or a run that died later. Every
one must now end `tuimon CONFIG --headless` in exit 2 with one short message naming the
key and its line (where the problem has one), no traceback and no run directory. The
child runs under an address-space limit so that a regression fails the test with a
MemoryError instead of taking the machine's memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tuimon.cli import main

from conftest import worker_env

# Every line of a problem is short: values are cut to 200 characters (shown_values.py).
MAX_STDERR_CHARS = 2000
# Address space for the child: enough for Python, torch and torchvision to import (about
# 3.5 GB), far below what the allocations these configs used to attempt. A file refused
# while its YAML is read must need far less: Python, PyYAML and pydantic fit in 256 MiB.
ADDRESS_SPACE_LIMIT = 6 * 2**30
READING_ADDRESS_SPACE = 512 * 2**20

BASE = """\
name: hostile
model:
  name: mlp
  hidden: [16]
data:
  name: synthetic
  synthetic: {num_samples: 64, channels: 1, image_size: 8, num_classes: 2}
optimizer:
  name: SGD
  lr: 0.1
  momentum: 0.9
scheduler:
  name: CosineAnnealingLR
  T_max: 10
train:
  max_steps: 2
  batch_size: 8
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, f"{old!r} must occur once in the base config"
    return text.replace(old, new)


def alias_bomb(levels: int = 9) -> str:
    """'Billion laughs': 1 KB of YAML whose aliases expand to 9**(levels + 1) strings."""
    lines = ["lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels + 1):
        refs = ", ".join([f"*lol{level - 1}"] * 9)
        lines.append(f"lol{level}: &lol{level} [{refs}]")
    return "\n".join(lines) + "\n" + BASE


@dataclass(frozen=True)
class Hostile:
    text: str | bytes
    key: str | None  # the key path the message must name (None: the file as a whole)
    line_of: str | None = None  # a substring of the offending line (None: no line)
    says: str = ""  # a further substring the message must contain
    while_reading: bool = False  # refused while reading the YAML, before torch loads
    args: tuple[str, ...] = ()  # further command-line arguments (`--set`)


WIDE_DATA = "{num_samples: 64, channels: 3, image_size: 32, num_classes: 10}"
SYNTHETIC = "{num_samples: 64, channels: 1, image_size: 8, num_classes: 2}"

CASES: dict[str, Hostile] = {
    # --- the cases the issue names -----------------------------------------------------
    "alias-bomb": Hostile(alias_bomb(), "lol4", "lol4:", "alias"),
    "value-of-400-KB": Hostile(
        edit("  name: SGD", "  name: " + "A" * 400_000), "optimizer.name", "AAAA", "more characters"
    ),
    "num_samples-1e9": Hostile(
        edit("num_samples: 64", "num_samples: 1e9"),
        "data.synthetic.num_samples",
        "num_samples",
        "100000000",
    ),
    "lr-inf": Hostile(edit("lr: 0.1", "lr: .inf"), "optimizer.lr", "lr:", "finite"),
    "lr-1e308": Hostile(edit("lr: 0.1", "lr: 1e308"), "optimizer.lr", "lr:", "[1e-12, 100]"),
    "T_max-abc": Hostile(edit("T_max: 10", "T_max: abc"), "scheduler.T_max", "T_max", "integer"),
    "int-of-5000-digits": Hostile(
        edit("batch_size: 8", "batch_size: " + "9" * 5000), "train.batch_size", "batch_size"
    ),
    "list-nested-10000-deep": Hostile(
        edit("hidden: [16]", "hidden: " + "[" * 10_000 + "]" * 10_000),
        "model.hidden",
        "hidden",
        "nested",
    ),
    "hidden-100000000": Hostile(
        edit(SYNTHETIC, WIDE_DATA, edit("hidden: [16]", "hidden: [100000000]")),
        "model.hidden",
        "hidden:",
        "parameters",
    ),
    "image_size-100000": Hostile(
        edit("image_size: 8", "image_size: 100000"), "data.synthetic.image_size", "image_size"
    ),
    # --- more of the same kind -----------------------------------------------------------
    "recursive-alias": Hostile("loop: &loop [*loop]\n" + BASE, "loop", "loop:", "alias"),
    "mapping-nested-10000-deep": Hostile(
        "deep: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n" + BASE, "deep.a.a", "deep:"
    ),
    "synthetic-prototypes-beyond-memory": Hostile(
        edit(SYNTHETIC, "{channels: 1024, image_size: 4096, num_classes: 1000}"),
        "data.synthetic.image_size",
        "synthetic:",
        "available",
    ),
    "batch-beyond-memory": Hostile(
        edit(
            SYNTHETIC,
            "{num_samples: 100000000, channels: 3, image_size: 256, num_classes: 2}",
            edit("batch_size: 8", "batch_size: 100000000"),
        ),
        "train.batch_size",
        "batch_size",
        "available",
    ),
    "lr-nan": Hostile(edit("lr: 0.1", "lr: .nan"), "optimizer.lr", "lr:", "finite"),
    "lr-5e-324": Hostile(edit("lr: 0.1", "lr: 5e-324"), "optimizer.lr", "lr:", "[1e-12, 100]"),
    "momentum-nan": Hostile(
        edit("momentum: 0.9", "momentum: .nan"), "optimizer.momentum", "momentum", "finite"
    ),
    "T_max-zero": Hostile(edit("T_max: 10", "T_max: 0"), "scheduler.T_max", "T_max", "rejected"),
    "OneCycleLR-max_lr-1e6": Hostile(
        edit("  name: CosineAnnealingLR\n  T_max: 10", "  name: OneCycleLR\n  max_lr: 1e6"),
        "scheduler.max_lr",
        "max_lr",
        "lr_max",
    ),
    "lr_min-above-lr_max": Hostile(
        BASE + "monitor: {lr_min: 1, lr_max: 0.5}\n", "monitor", "monitor:", "lr_min"
    ),
    "epochs-1e30": Hostile(edit("max_steps: 2", "epochs: 1e30"), "train.epochs", "epochs"),
    "seed-negative": Hostile(
        edit("batch_size: 8", "batch_size: 8\n  seed: -1"), "train.seed", "seed"
    ),
    "batch_size-zero": Hostile(
        edit("batch_size: 8", "batch_size: 0"), "train.batch_size", "batch_size"
    ),
    "batch_size-negative": Hostile(
        edit("batch_size: 8", "batch_size: -8"), "train.batch_size", "batch_size"
    ),
    "batch_size-fraction": Hostile(
        edit("batch_size: 8", "batch_size: 8.5"), "train.batch_size", "batch_size"
    ),
    "batch_size-yes": Hostile(
        edit("batch_size: 8", "batch_size: yes"), "train.batch_size", "batch_size", "number"
    ),
    "image_size-negative": Hostile(
        edit("image_size: 8", "image_size: -1"), "data.synthetic.image_size", "image_size"
    ),
    "hidden-negative": Hostile(edit("hidden: [16]", "hidden: [-5]"), "model.hidden", "hidden"),
    "hidden-not-a-list": Hostile(edit("hidden: [16]", "hidden: 16"), "model.hidden", "hidden"),
    "hidden-of-strings": Hostile(edit("hidden: [16]", "hidden: [a]"), "model.hidden.0", "hidden"),
    "lr-a-word": Hostile(edit("lr: 0.1", "lr: fast"), "optimizer.lr", "lr:"),
    "model-a-number": Hostile(
        edit("model:\n  name: mlp\n  hidden: [16]", "model: 5"), "model", "model:", "section"
    ),
    "train-a-list": Hostile(
        edit("train:\n  max_steps: 2\n  batch_size: 8", "train: [1, 2]"), "train", "train:"
    ),
    "unknown-top-level-key": Hostile(BASE + "trian: {epochs: 1}\n", "trian", "trian:", "unknown"),
    "num_workers-100000": Hostile(
        edit("  name: synthetic", "  name: synthetic\n  num_workers: 100000"),
        "data.num_workers",
        "num_workers",
    ),
    "random_crop-100000": Hostile(
        edit("  name: synthetic", "  name: synthetic\n  augment: {random_crop: 100000}"),
        "data.augment.random_crop",
        "augment:",
    ),
    "device-tpu": Hostile(
        edit("batch_size: 8", "batch_size: 8\n  device: tpu"), "train.device", "device"
    ),
    "duplicate-key": Hostile(
        edit("lr: 0.1", "lr: 0.1\n  lr: 0.2"), "optimizer.lr", "lr: 0.2", "duplicate"
    ),
    "month-13": Hostile(edit("name: hostile", "name: 2024-13-45"), "name", "name: 2024", "month"),
    "python-tag": Hostile(
        edit("name: hostile", "name: !!python/object/apply:os.system [echo pwned]"),
        "name",
        "name: !!python",
        "constructor",
    ),
    "unhashable-key": Hostile(
        edit("batch_size: 8", "batch_size: 8\n  ? [a, b]\n  : 1"), "train", "? [a, b]", "unhashable"
    ),
    "escape-sequence-in-key": Hostile(BASE + '"\\e]0;pwned\\a": 1\n', None, "pwned", "unknown"),
    "tab-indentation": Hostile(edit("  batch_size: 8", "\tbatch_size: 8"), None, "batch_size"),
    "nul-character": Hostile(edit("name: hostile", "name: host\x00ile"), None, "name: host"),
    "invalid-utf-8": Hostile(
        BASE.encode().replace(b"name: hostile", b"name: caf\xe9"), None, "name: caf", "UTF-8"
    ),
    "binary-garbage": Hostile(bytes(range(256)) * 4, None, None, "UTF-8"),
    "empty-file": Hostile("", "model", None, "missing"),
    "top-level-list": Hostile("- model\n- data\n", None, None, "mapping"),
    "file-of-2-MB": Hostile(BASE + ("# padding\n" * 200_000), None, None, "KiB"),
    "run-name-of-400-KB": Hostile(
        edit("name: hostile", "name: " + "x" * 400_000), "name", "name: xxx", "at most 100"
    ),
    # --- the same through --set ----------------------------------------------------------
    "set-int-of-5000-digits": Hostile(
        BASE, None, None, "5000 digits", args=("--set", "train.batch_size=" + "9" * 5000)
    ),
    "set-list-nested-10000-deep": Hostile(
        BASE, None, None, "nested", args=("--set", "model.hidden=" + "[" * 10_000 + "]" * 10_000)
    ),
    "set-lr-inf": Hostile(
        BASE, "optimizer.lr", None, "finite", args=("--set", "optimizer.lr=.inf")
    ),
}
# Refused while the YAML is read (or its numbers checked), before torch is imported.
WHILE_READING = {
    "alias-bomb",
    "recursive-alias",
    "int-of-5000-digits",
    "list-nested-10000-deep",
    "mapping-nested-10000-deep",
    "lr-inf",
    "lr-nan",
    "momentum-nan",
    "duplicate-key",
    "month-13",
    "python-tag",
    "unhashable-key",
    "tab-indentation",
    "nul-character",
    "invalid-utf-8",
    "binary-garbage",
    "top-level-list",
    "file-of-2-MB",
    "set-int-of-5000-digits",
    "set-list-nested-10000-deep",
    "set-lr-inf",
}
CASES = {name: replace(case, while_reading=name in WHILE_READING) for name, case in CASES.items()}


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str


# Sets the address-space limit, then becomes `python -m tuimon ARGS` (exec: the same
# process). Safe where preexec_fn is not: these children are started from threads.
LIMITED_EXEC = (
    "import os, resource, sys; limit = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_AS, (limit, limit)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'tuimon', *sys.argv[2:]])"
)


def run_cli(
    tmp_path: Path, config: Path, *args: str, address_space: int = ADDRESS_SPACE_LIMIT
) -> Outcome:
    """`python -m tuimon CONFIG --headless` to its end, its address space limited: memory
    is asserted through the result (a process over the limit fails with MemoryError)."""
    command = [str(config), "--headless", "--run-dir", "run", *args]
    try:
        result = subprocess.run(
            [sys.executable, "-c", LIMITED_EXEC, str(address_space), *command],
            cwd=tmp_path,
            env=worker_env(),
            capture_output=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"tuimon did not finish on this config: {str(exc.stderr)[-2000:]}")
    return Outcome(
        result.returncode,
        result.stdout.decode(errors="replace"),
        result.stderr.decode(errors="replace"),
    )


def line_number(text: str | bytes, needle: str) -> int:
    raw = text if isinstance(text, bytes) else text.encode()
    hits = [number for number, line in enumerate(raw.split(b"\n"), 1) if needle.encode() in line]
    assert len(hits) == 1, f"{needle!r} is on lines {hits}"
    return hits[0]


def write_case(tmp_path: Path, case: Hostile) -> Path:
    config = tmp_path / "cfg.yaml"
    if isinstance(case.text, bytes):
        config.write_bytes(case.text)
    else:
        config.write_text(case.text, encoding="utf-8")
    return config


def assert_refused(case: Hostile, code: int, out: str, err: str, run_dir: Path) -> None:
    """Exit 2, one short located message naming the key, nothing started."""
    assert code == 2, f"exit {code}\n{err[-3000:]}"
    assert "Traceback" not in out + err, err[-3000:]
    assert len(err) < MAX_STDERR_CHARS, f"{len(err)} characters of stderr"
    assert "\x1b" not in err, "an escape sequence from the file reached the terminal"
    if case.line_of:
        location = f"cfg.yaml:{line_number(case.text, case.line_of)}:"
    else:
        location = "--set " if case.args else "cfg.yaml"
    assert location in err, err
    if case.key is not None:
        assert f": {case.key}:" in err, err
    assert case.says in err, err
    assert not run_dir.exists(), "a bad config must not start a run"


# Through `python -m tuimon` in a child process, its memory measured: the cases the issue
# names, and every one that used to run without bound (in a child only, under an
# address-space limit and a deadline, so that a regression cannot take this process's
# memory or time: 1e9 samples allocated 8 GB, 100,000 DataLoader workers were forked,
# 1e30 epochs trained forever).
IN_A_CHILD = {
    "alias-bomb",
    "value-of-400-KB",
    "num_samples-1e9",
    "lr-inf",
    "lr-1e308",
    "T_max-abc",
    "int-of-5000-digits",
    "list-nested-10000-deep",
    "hidden-100000000",
    "image_size-100000",
    "synthetic-prototypes-beyond-memory",
    "batch-beyond-memory",
    "num_workers-100000",
    "epochs-1e30",
}
UNBOUNDED_BEFORE = {
    "alias-bomb",
    "num_samples-1e9",
    "hidden-100000000",
    "image_size-100000",
    "synthetic-prototypes-beyond-memory",
    "batch-beyond-memory",
    "num_workers-100000",
    "epochs-1e30",
}


def run_child_case(tmp_path: Path, name: str) -> Outcome:
    case = CASES[name]
    config = write_case(tmp_path, case)
    # Bounded memory: a file refused while its YAML is read gets 512 MiB of address space
    # (the alias bomb used to take 4 GB and more, and 35 s).
    space = READING_ADDRESS_SPACE if case.while_reading else ADDRESS_SPACE_LIMIT
    return run_cli(tmp_path, config, *case.args, address_space=space)


@pytest.fixture(scope="module")
def children(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], tuple[Path, Outcome]]]:
    """The child processes of this module, run as many at a time as there are cores:
    each is one process importing torch, and a serial run leaves the other cores idle.
    Each test waits for its own child and asserts on it (where it ran, what it did)."""
    pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    started: dict[str, tuple[Path, Future[Outcome]]] = {}

    def start(name: str, job: Callable[[Path], Outcome]) -> None:
        where = tmp_path_factory.mktemp(name)
        started[name] = (where, pool.submit(job, where))

    for name in sorted(IN_A_CHILD):
        start(name, lambda where, name=name: run_child_case(where, name))
    start(CUSTOM_MODEL, run_custom_model)

    def result(name: str) -> tuple[Path, Outcome]:
        where, future = started[name]
        return where, future.result()

    yield result
    for _, future in started.values():
        future.cancel()
    pool.shutdown(wait=True)


@pytest.mark.parametrize("name", sorted(IN_A_CHILD))
def test_hostile_config_through_the_command_line(children, name: str) -> None:
    where, result = children(name)

    assert_refused(CASES[name], result.code, result.out, result.err, where / "run")


IN_PROCESS = sorted(set(CASES) - UNBOUNDED_BEFORE)


@pytest.mark.parametrize("name", IN_PROCESS)
def test_hostile_config_through_cli_main(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """The same entry point as `tuimon CONFIG --headless`, in this process: the whole
    table costs one torch import instead of one per file."""
    case = CASES[name]
    config = write_case(tmp_path, case)
    run_dir = tmp_path / "run"

    code = main([str(config), "--headless", "--run-dir", str(run_dir), *case.args])

    captured = capsys.readouterr()
    assert_refused(case, code, captured.out, captured.err, run_dir)


CUSTOM_MODEL = "custom-model-huge_linear"


def run_custom_model(tmp_path: Path) -> Outcome:
    config = tmp_path / "cfg.yaml"
    config.write_text(
        edit("  name: mlp\n  hidden: [16]", "  name: oversized_models:huge_linear"),
        encoding="utf-8",
    )
    return run_cli(tmp_path, config)


def test_custom_model_that_cannot_be_allocated_names_the_model(children) -> None:
    """A custom callable is not sized in advance; its allocation failure is caught."""
    tmp_path, result = children(CUSTOM_MODEL)

    assert result.code == 2, result.err[-3000:]
    assert "Traceback" not in result.out + result.err, result.err[-3000:]
    assert "model: building 'oversized_models:huge_linear' failed for lack of memory" in (
        result.err
    )
    assert "model.name" in result.err
    assert not (tmp_path / "run").exists()


def test_a_model_that_does_not_fit_on_the_device_is_a_clear_error(tmp_path: Path) -> None:
    from tuimon.config import load_config
    from tuimon.errors import UsageError
    from tuimon.training.trainer import Trainer

    config = tmp_path / "cfg.yaml"
    config.write_text(
        edit("  name: mlp\n  hidden: [16]", "  name: oversized_models:device_oom"),
        encoding="utf-8",
    )
    trainer = Trainer(load_config(config))
    with pytest.raises(UsageError, match=r"^model: does not fit on cpu \(CUDA out of memory"):
        trainer.setup()
