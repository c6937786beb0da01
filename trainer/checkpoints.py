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
    """A temp file beside `path`: same filesystem, so the final rename is atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def _publish(tmp: str, path: Path) -> None:
    """Give the finished temp file the umask's permissions (not mkstemp's private 0600), then rename it into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def save_weights(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write `tensors` to a safetensors file atomically; metadata values are stored as strings."""
    path = Path(path)
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        data = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        save_file(data, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        _publish(tmp, path)
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
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | Path) -> Any:
    """A JSON file this project wrote (zoo.json, run.json, manifest.json, policy.json): a missing, truncated or
    hand-edited one is a one-line CheckpointError naming the file, not a JSONDecodeError mid-run."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({_first_line(e)})") from None


def check_writable_folder(path: str | Path, what: str = "output folder") -> None:
    """Fail before any work if `path` cannot become a folder of new files: an existing file, a parent that is a file,
    or a place where nothing may be created (a read-only mount, /proc). Probed with a temp file in the nearest existing
    parent, removed at once: os.access says yes to root everywhere. Creates nothing that stays."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{what} {path}: exists and is not a folder")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CheckpointError(f"{what} {path}: {parent} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".synthnet-probe-")
    except OSError as e:
        raise CheckpointError(f"{what} {path}: nothing can be written in {parent} ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)


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


# --- resumable training state: model + optimizer + RNG + counters in one safetensors file ----------------------------

def save_training_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        generators: Mapping[str, torch.Generator], info: Mapping[str, Any]) -> Path:
    """One atomic file: model tensors, optimizer tensors, RNG states, and `info` (JSON) plus the optimizer's hyper-
    parameters in the metadata. Nothing is pickled."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars = {}
    for pid, state in opt["state"].items():
        for name, v in state.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{name}"] = v
            else:
                scalars[f"{pid}.{name}"] = v
    for name, g in generators.items():
        tensors[f"rng.{name}"] = g.get_state()
    tensors["rng.torch_global"] = torch.get_rng_state()
    meta = {"info": json.dumps(info), "param_groups": json.dumps(opt["param_groups"]), "scalars": json.dumps(scalars)}
    return save_weights(path, tensors, meta)


def training_state_info(path: str | Path) -> dict:
    """The `info` a training state was saved with (its step, ...), read from the header alone: what a resume can check
    before any work."""
    try:
        info = json.loads(read_metadata(path)["info"])
    except (KeyError, json.JSONDecodeError):
        info = None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: not a training state (no 'info' in its header)")
    return info


def load_training_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        generators: Mapping[str, torch.Generator]) -> dict:
    """Restore what `save_training_state` wrote, in place; returns its `info`."""
    tensors, meta = load_weights(path)
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        for k, v in json.loads(meta["scalars"]).items():
            pid, name = k.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        for name, g in generators.items():
            g.set_state(tensors[f"rng.{name}"])
        torch.set_rng_state(tensors["rng.torch_global"])
        return json.loads(meta["info"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a training state of this run ({_first_line(e)})") from None


# --- the policy: policy.safetensors (weights) + policy.json (config, layout, tokenizer scales, schedule) -------------

def save_policy(folder: str | Path, model: torch.nn.Module, spec: Mapping[str, Any]) -> Path:
    """`tensors` in the metadata counts what was saved: such a file must hold every parameter of its policy (older
    files, without it, may lack the parameters added since)."""
    folder = Path(folder)
    sd = model.state_dict()
    save_weights(folder / "policy.safetensors", sd, {"experiment": spec["experiment"]["name"],
                                                     "format": "synthnet-policy-v1", "tensors": len(sd)})
    save_json(folder / "policy.json", spec)
    return folder / "policy.safetensors"


# What `WeightGenerator.load` reads from policy.json; the rest (trained_steps, zoo, ...) is informational.
POLICY_SPEC_KEYS = ("experiment", "policy", "layout", "scales", "schedule", "grid")


def policy_file(path: str | Path) -> Path:
    """policy.safetensors, given it or its folder."""
    path = Path(path)
    return path / "policy.safetensors" if path.is_dir() else path


def load_policy_files(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, spec) of a saved policy; `path` is policy.safetensors or its folder."""
    path = policy_file(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: policy file not found (train one with `python -m trainer.imitate`)")
    spec_path = path.with_suffix(".json")
    if not spec_path.is_file():
        raise CheckpointError(f"{spec_path}: policy spec not found next to {path.name}")
    weights, meta = load_weights(path)
    if meta.get("format") != "synthnet-policy-v1":
        raise CheckpointError(f"{path}: not a SynthNet policy file (format {meta.get('format')!r})")
    spec = read_json(spec_path)
    missing = [k for k in POLICY_SPEC_KEYS if not isinstance(spec, dict) or k not in spec]
    if missing:
        raise CheckpointError(f"{spec_path}: not a policy spec (no {missing[0]!r}; expected keys "
                              f"{', '.join(POLICY_SPEC_KEYS)})")
    if not isinstance(spec["experiment"], dict) or not isinstance(spec["policy"], dict):
        raise CheckpointError(f"{spec_path}: 'experiment' and 'policy' must be mappings")
    return weights, spec
