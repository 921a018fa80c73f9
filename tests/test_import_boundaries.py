"""Import boundaries: each side of tuimon loads only what it needs.

The UI never loads torch, the worker's code or the config machinery (pydantic, yaml): it
starts fast and stays small beside a training run. The worker never loads Textual. The
doctor's rules and the control protocol are pure. Each check imports one side in a fresh
interpreter, so what an earlier test imported cannot hide a leak, and a failure names
each module that came in with the chain of tuimon modules that imported it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import pytest

# Run in the fresh interpreter: a finder first in sys.meta_path sees the first import of
# each forbidden package and records the tuimon code on the stack that asked for it.
PROBE = """
import importlib, json, sys

TARGETS, FORBIDDEN = {targets!r}, {forbidden!r}
chains = {{}}


def root_of(name):
    return next((r for r in FORBIDDEN if name == r or name.startswith(r + ".")), None)


class Recorder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        root = root_of(name)
        if root is not None and root not in chains:
            chain, frame = [], sys._getframe(1)
            while frame is not None:
                module = frame.f_globals.get("__name__") or ""
                if module.startswith("tuimon"):
                    code = frame.f_code.co_name
                    step = module if code == "<module>" else f"{{module}}.{{code}}()"
                    if step not in chain:
                        chain.append(step)
                frame = frame.f_back
            chains[root] = [*reversed(chain), name]
        return None


sys.meta_path.insert(0, Recorder)
for target in TARGETS:
    importlib.import_module(target)
print(json.dumps({{
    "loaded": sorted(m for m in sys.modules if root_of(m) in FORBIDDEN),
    "chains": chains,
    "tuimon": sorted(m for m in sys.modules if m.startswith("tuimon")),
}}))
"""


@dataclass(frozen=True)
class Boundary:
    imports: tuple[str, ...]
    forbidden: tuple[str, ...]


BOUNDARIES = {
    "ui": Boundary(
        (
            "tuimon.ui.app",
            "tuimon.ui.runs_app",
            "tuimon.runs_launch",
            "tuimon.ui.screens.compare_screen",
            "tuimon.ui.screens.metrics_screen",
        ),
        ("torch", "tuimon.monitor", "tuimon.training", "pydantic", "yaml"),
    ),
    # `tuimon ls` and `tuimon export` answer at once, beside training runs.
    "catalog": Boundary(
        ("tuimon.catalog.catalog", "tuimon.catalog.ls_command", "tuimon.catalog.machine_gpus"),
        ("torch", "textual", "pydantic", "yaml", "tuimon.monitor"),
    ),
    "export": Boundary(
        ("tuimon.export.export_command",),
        ("torch", "textual", "pydantic", "tensorboard", "tuimon.monitor"),
    ),
    "worker": Boundary(
        ("tuimon.monitor.monitor", "tuimon.training.trainer", "tuimon.worker"), ("textual",)
    ),
    "doctor": Boundary(
        ("tuimon.doctor.engine", "tuimon.doctor.registry"), ("torch", "textual", "tuimon.monitor")
    ),
    "control-protocol": Boundary(("tuimon.control.protocol",), ("pydantic", "yaml", "torch")),
    # A framework is imported by its adapter only: `pip install tuimon` needs none of them.
    "frameworks": Boundary(
        (
            "tuimon",
            "tuimon.cli",
            "tuimon.worker",
            "tuimon.training.trainer",
            "tuimon.integrations",
            "tuimon.integrations.framework_run",
        ),
        ("lightning", "pytorch_lightning", "transformers", "accelerate"),
    ),
    # An adapter brings its own framework only (Lightning itself reads a few transformers
    # utilities, and HF's Trainer is built on Accelerate, so only this one is clean).
    "accelerate-adapter": Boundary(
        ("tuimon.integrations.accelerate",), ("lightning", "pytorch_lightning", "transformers")
    ),
}


@pytest.mark.parametrize("side", sorted(BOUNDARIES))
def test_a_side_loads_nothing_it_must_not(side: str) -> None:
    boundary = BOUNDARIES[side]
    probe = PROBE.format(targets=list(boundary.imports), forbidden=list(boundary.forbidden))
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"importing {boundary.imports} failed:\n{done.stderr[-3000:]}"
    found = json.loads(done.stdout.splitlines()[-1])
    leaked = sorted(found["chains"])
    assert not leaked, (
        f"importing {', '.join(boundary.imports)} loaded {', '.join(leaked)}:\n"
        + "\n".join(f"  {root}: {' -> '.join(found['chains'][root])}" for root in leaked)
        + f"\n({len(found['loaded'])} forbidden modules in all; tuimon modules loaded: "
        + ", ".join(found["tuimon"])
        + ")"
    )
