"""Checkpoints: everything needed to continue a run at the same step with the same LR.

Written to a temporary file and renamed into place, so a crash mid-write never leaves a
truncated checkpoint where a good one was expected.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


@dataclass
class ResumeState:
    step: int
    epoch: int
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_path(directory: Path, step: int, tag: str = "step") -> Path:
    return directory / f"{tag}-{step:08d}.pt"


def save_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    step: int,
    epoch: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    state = {
        "format": FORMAT_VERSION,
        "step": step,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": _rng_state(),
        "extra": dict(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    map_location: torch.device | str = "cpu",
) -> ResumeState:
    """Restore model, optimizer, scheduler and RNG state in place; return where to continue."""
    # The file is the user's own checkpoint and holds RNG states (NumPy arrays, tuples),
    # which the weights-only unpickler refuses.
    state = torch.load(Path(path), map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a tuimon checkpoint (format {FORMAT_VERSION})")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return ResumeState(
        step=int(state["step"]), epoch=int(state["epoch"]), extra=dict(state.get("extra") or {})
    )


def model_weights(path: str | Path) -> Any:
    """The model's state_dict from a tuimon checkpoint, or the file itself if it is one."""
    state = torch.load(Path(path), map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "model" in state and "format" in state:
        return state["model"]
    return state


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
