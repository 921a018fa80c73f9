"""Checkpoints: everything needed to continue a run at the same step with the same LR.

Written with `atomic_write` (a `mkstemp` file, `fsync`, rename, directory `fsync`), so a
crash mid-write never leaves a truncated checkpoint where a good one was expected.

Read with `torch.load(weights_only=True)` only: a checkpoint is data, and unpickling
anything else can run code. So a tuimon checkpoint holds nothing but tensors and plain
types (format 2: the RNG states as tensors, ints and floats). Format 1, written before,
kept NumPy's RNG state as a NumPy array: for it exactly NumPy's array-rebuilding globals
are allowed, nothing more.
"""

from __future__ import annotations

import contextlib
import errno
import random
import re
import shutil
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuimon.run.private_files import atomic_write, make_private_dir

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class CheckpointError(Exception):
    """A file that cannot be loaded as a checkpoint; the message names the file and why."""


class CheckpointSpaceError(OSError):
    """A checkpoint that did not fit on its filesystem (ENOSPC or EDQUOT)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


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
    scaler: Any | None = None,
) -> Path:
    """Write the checkpoint; CheckpointSpaceError ("no space left on device") when it does
    not fit, and then no partial or temporary file is left. `scaler`: an fp16 run's
    GradScaler, whose state (its scale and growth counter: plain numbers) is kept too."""
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
    if scaler is not None and scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    make_private_dir(path.parent)
    needed = _storage_bytes(state)
    # Checked first, so that a checkpoint that cannot fit never fills the disk the event
    # log writes to.
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise _no_space(errno.ENOSPC, path, needed, free)
    try:
        with atomic_write(path) as file:
            try:
                torch.save(state, file)
            except Exception as exc:
                # Asked while the partial file still takes its room: torch's zip writer
                # reports a short write as an "enforce fail" and may lose the errno.
                code = _space_errno(exc, path.parent, needed - _position(file))
                if code is None:
                    raise
                raise _no_space(code, path, needed, _free(path.parent)) from exc
    except OSError as exc:  # the last flush, the fsync or the rename
        if isinstance(exc, CheckpointSpaceError) or exc.errno not in _SPACE_ERRNOS:
            raise
        raise _no_space(exc.errno, path, needed, _free(path.parent)) from exc
    return path


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    map_location: torch.device | str = "cpu",
    scaler: Any | None = None,
) -> ResumeState:
    """Restore model, optimizer, scheduler and RNG state in place; return where to continue.
    `scaler`: a GradScaler takes the saved one's scale, if the checkpoint has one (a
    checkpoint of a run without loss scaling leaves it at its initial scale).

    CheckpointError when the file is not a tuimon checkpoint; RuntimeError (from torch)
    when it does not fit this model.
    """
    path = Path(path)
    state = load_data(path, map_location)
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        raise CheckpointError(
            f"{path} is not a tuimon checkpoint (no format {FORMAT_VERSION} header); for "
            "model weights alone use train.init_from"
        )
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and scaler.is_enabled() and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        return ResumeState(
            step=int(state["step"]),
            epoch=int(state["epoch"]),
            extra=dict(state.get("extra") or {}),
        )
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{path} is a damaged tuimon checkpoint ({exc!r})") from None


def model_weights(path: str | Path) -> Mapping[str, Any]:
    """The model's state_dict from a tuimon checkpoint, or the file itself if it is one."""
    path = Path(path)
    state = load_data(path, "cpu")
    if isinstance(state, dict) and "model" in state and "format" in state:
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(
            f"{path} holds a {type(state).__name__}, not a state_dict (save "
            "model.state_dict(), not the model)"
        )
    return state


def probe_checkpoint_file(path: Path) -> None:
    """Cheap checks that `path` can be a checkpoint, without unpickling it or reading its
    tensors: lets a config loader report a bad `train.resume`/`train.init_from` at its
    line before anything is built. CheckpointError if it cannot be one; passing is no
    promise (the real load still checks everything)."""
    try:
        with path.open("rb") as file:
            head = file.read(1)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror})") from None
    if not head:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: the file is empty")
    if not zipfile.is_zipfile(path):
        if head != b"\x80":  # torch's legacy format begins with a pickle's PROTO opcode
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint: neither torch's zip format nor a pickle"
            )
        return
    find_globals = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if find_globals is None:  # torch < 2.6
        return
    try:
        unsafe = find_globals(path)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: {_why(exc)}") from None
    allowed = _global_names(_format1_globals())
    refused = [name for name in unsafe if name not in allowed]
    if refused:
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint: {_why(RuntimeError(f'GLOBAL {refused[0]}'))}"
        )


def load_data(path: Path, map_location: torch.device | str) -> Any:
    """torch.load with weights_only=True; any failure is a CheckpointError naming the file."""
    # torch 2.4 has no safe_globals(): there a format-1 checkpoint gets the error below.
    allow = getattr(torch.serialization, "safe_globals", None)
    try:
        with (
            allow(_format1_globals()) if allow else contextlib.nullcontext(),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: {_why(exc)}") from None


def _why(exc: Exception) -> str:
    """One line on why torch.load failed. Not torch's own advice, which is to load with
    weights_only=False: exactly what must not be done with a file of unknown origin."""
    text = str(exc)
    called = re.search(r"GLOBAL ([\w.]+)", text)
    if called:
        return (
            f"unpickling it would call {called[1]}, which can run code; tuimon loads "
            "checkpoints with weights_only=True and refuses it"
        )
    refused = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if refused:
        return f"the weights-only loader refuses it ({refused[1].strip()[:120]})"
    if isinstance(exc, EOFError) or "Ran out of input" in text:
        return "the file is empty or cut short"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"reading it fails with {type(exc).__name__}: {first[:200]}".rstrip(": ")


def _format1_globals() -> list[Any]:
    """What a format-1 checkpoint's NumPy RNG state needs to be rebuilt: an array of uint32."""
    try:
        import numpy as np
    except ImportError:
        return []
    multiarray = getattr(np, "_core", None) or np.core
    rebuild = multiarray.multiarray._reconstruct
    allowed: list[Any] = [rebuild, np.ndarray, np.dtype]
    if rebuild.__module__ != "numpy.core.multiarray":
        allowed.append((rebuild, "numpy.core.multiarray._reconstruct"))  # NumPy 1.x's name
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed.append(dtypes.UInt32DType)
    return allowed


def _global_names(allowed: list[Any]) -> set[str]:
    names = set()
    for entry in allowed:
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f"{entry.__module__}.{entry.__qualname__}")
    return names


def _storage_bytes(state: Any) -> int:
    """The bytes of tensor data torch.save writes for `state` (each storage once)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for tensor in _tensors(state):
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)


def _space_errno(exc: BaseException, directory: Path, still_needed: int) -> int | None:
    """ENOSPC/EDQUOT if the write failed for lack of room, else None."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _SPACE_ERRNOS:
            return cause.errno
        cause = cause.__cause__ or cause.__context__
    torch_writer = isinstance(exc, RuntimeError) and "inline_container" in str(exc)
    if torch_writer and _free(directory) < still_needed:
        return errno.ENOSPC
    return None


def _free(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0


def _position(file: Any) -> int:
    try:
        return int(file.tell())
    except (OSError, ValueError):
        return 0


def _no_space(code: int, path: Path, needed: int, free: int) -> CheckpointSpaceError:
    what = "disk quota exceeded" if code == errno.EDQUOT else "no space left on device"
    return CheckpointSpaceError(
        code,
        f"{what}: checkpoint {path} needs about {_mib(needed)}, "
        f"{_mib(free)} free on its filesystem",
    )


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain types, loadable with weights_only=True."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        numpy_state = np.random.get_state(legacy=True)
        if isinstance(numpy_state, tuple):  # always, for the global MT19937 RandomState
            name, keys, pos, has_gauss, cached = numpy_state
            state["numpy"] = {
                "name": str(name),
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        import numpy as np

        saved = state["numpy"]
        if isinstance(saved, dict):  # format 2
            saved = (
                saved["name"],
                saved["keys"].cpu().numpy().astype(np.uint32),
                saved["pos"],
                saved["has_gauss"],
                saved["cached_gaussian"],
            )
        np.random.set_state(saved)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
