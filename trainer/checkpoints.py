"""Checkpoint I/O: every weight file is safetensors with string metadata; every write is atomic (temp + rename).

Loading validates the file against what the caller expects and reports any problem in one line naming the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file


class CheckpointError(ValueError):
    """A weight file that is missing, corrupt or does not fit; the message is one line naming the file."""


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def save_weights(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write `tensors` to a safetensors file atomically; metadata values are stored as strings."""
    path = Path(path)
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        data = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        save_file(data, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def load_weights(path: str | Path, expected: Optional[Mapping[str, torch.Tensor | torch.Size | tuple]] = None,
                 allow_nonfinite: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load (tensors, metadata) from a safetensors file.

    With `expected` (a state dict, or key -> shape), keys and shapes must match exactly. Non-finite values are an error
    unless `allow_nonfinite`. Every problem raises a one-line CheckpointError naming the file and the key at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    if expected is not None:
        shapes = {k: tuple(v.shape if isinstance(v, torch.Tensor) else v) for k, v in expected.items()}
        missing = sorted(set(shapes) - set(tensors))
        extra = sorted(set(tensors) - set(shapes))
        if missing:
            raise CheckpointError(f"{path}: missing tensor {missing[0]!r} (expected shape {shapes[missing[0]]})")
        if extra:
            raise CheckpointError(f"{path}: unexpected tensor {extra[0]!r} for this reference model")
        for k, shape in shapes.items():
            if tuple(tensors[k].shape) != shape:
                raise CheckpointError(f"{path}: tensor {k!r} has shape {tuple(tensors[k].shape)}, expected {shape}")
    if not allow_nonfinite:
        for k, v in tensors.items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise CheckpointError(f"{path}: tensor {k!r} has non-finite values")
    return tensors, metadata
