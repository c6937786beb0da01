"""TensorBoard logging of a run under artifacts/runs/<name>/: scalars on one step axis, hyperparameters as text."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch
import torchvision
from torch.utils.tensorboard import SummaryWriter

from envs.spec import ConfigError
from trainer.checkpoints import CheckpointError, check_writable_folder, read_json

# What a run writes into its folder; `--overwrite` removes these and nothing else (the folder is named by the user).
RUN_FILES = ("events.out.tfevents.*", "policy.safetensors", "policy.json", "state.safetensors")


def _has(folder: Path, pattern: str) -> bool:
    return next(Path(folder).glob(pattern), None) is not None


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Before any work: `--resume` needs a saved state, and an earlier run's folder is only reused when asked (two
    runs' curves in one folder are one unreadable TensorBoard plot, and the old policy would be silently replaced)."""
    state = Path(run_dir) / "state.safetensors"
    check_writable_folder(run_dir, "run folder")
    if _locked(run_dir):  # before anything below removes a file the live run is writing
        raise ConfigError(BUSY.format(run_dir=run_dir))
    if resume and overwrite:
        raise ConfigError("--resume continues the run in its folder, --overwrite replaces it: pass one of them")
    if resume:
        if not state.is_file():
            raise CheckpointError(f"{state}: nothing to resume from")
    elif not overwrite and not any(_has(run_dir, p) for p in RUN_FILES if not p.startswith("events")) and \
            _has(run_dir, "events*"):
        # A run that crashed before it saved anything left only its curves: nothing to resume, so no reason to refuse.
        print(f"note: {run_dir}: removing the TensorBoard events of an earlier run that saved no state",
              file=sys.stderr)
        clear_run_dir(run_dir)
    elif not overwrite and any(f for pattern in RUN_FILES for f in Path(run_dir).glob(pattern)):
        raise ConfigError(f"{run_dir}: holds an earlier run; pass --resume to continue it, --overwrite to replace it, "
                          f"or --name to start another")


BUSY = "{run_dir}: another run is writing to this folder; wait for it, or pass --name"


def _locked(run_dir: Path) -> bool:
    """Whether a live run holds the folder's lock (`lock_run_dir`); creates nothing."""
    import fcntl

    path = Path(run_dir) / ".lock"
    if not path.is_file():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def check_resumable(run_dir: Path, cfg, sections: Mapping[str, tuple[str, ...]]) -> None:
    """A resumed run must be the run it continues: its seed and, in each of `sections` (section -> the keys a resumed
    run may change), every setting as the run's policy.json stored it. A changed one is a one-line error naming it."""
    path = Path(run_dir) / "policy.json"
    stored = read_json(path)
    experiment = stored.get("experiment") if isinstance(stored, dict) else None
    if not isinstance(experiment, dict):
        raise CheckpointError(f"{path}: not the policy spec of the run being resumed (no 'experiment' mapping)")
    now = dataclasses.asdict(cfg)
    for section, may_change in {"seed": (), **sections}.items():
        was, new = experiment.get(section), now[section]
        if not isinstance(new, dict):  # a top-level key
            was, new, section = ({section: was} if section in experiment else {}), {section: new}, ""
        elif not isinstance(was, dict):
            raise CheckpointError(f"{path}: 'experiment.{section}' is not a mapping")
        changed = [k for k in new if k not in may_change and k in was and was[k] != new[k]]
        if changed:
            k = changed[0]
            raise ConfigError(f"config key {section + '.' if section else ''}{k}: {new[k]!r} differs from the run being "
                              f"resumed ({was[k]!r}); start another run with --name")


def lock_run_dir(run_dir: Path):
    """An exclusive lock on the run folder for as long as the returned file stays open (the process's life): a second
    run started with the same --name stops here with a one-line error instead of writing into the first one's folder."""
    import fcntl  # POSIX only; imported here so the module still imports where it is missing

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    handle = open(Path(run_dir) / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(BUSY.format(run_dir=run_dir)) from None
    return handle


def clear_run_dir(run_dir: Path) -> None:
    """`--overwrite`: remove the earlier run's events, policy and state, just before the new run logs."""
    for pattern in RUN_FILES:
        for f in Path(run_dir).glob(pattern):
            f.unlink()


def _flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class RunLogger:
    def __init__(self, run_dir: str | Path, cfg=None, purge_step: Optional[int] = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # purge_step drops events logged at or after it, so curves do not fork: a run resumed from a state saved at
        # step N passes N + 1 (the values at N were flushed with that state).
        self.writer = SummaryWriter(str(self.run_dir), purge_step=purge_step or None)
        if cfg is not None and not purge_step:
            rows = "\n".join(f"|{k}|{v}|" for k, v in _flatten(dataclasses.asdict(cfg)).items())
            self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + rows)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def histogram(self, step: int, tag: str, values: torch.Tensor) -> None:
        self.writer.add_histogram(tag, values.detach().flatten().float().cpu(), step)

    def image(self, step: int, tag: str, img: torch.Tensor) -> None:
        """`img` is (H, W) or (C, H, W) in any range; scaled to [0, 1]."""
        img = img.detach().float().cpu()
        img = (img - img.min()) / (img.max() - img.min() + 1e-12)
        self.writer.add_image(tag, img if img.dim() == 3 else img[None], step)

    def flush(self) -> None:
        """Called before a resumable state is saved: a run killed after it must find its curves on disk up to there."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def read_scalars(run_dir: str | Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one scalar tag from a run's event files, in step order (the last write of a step wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return []
    return sorted({e.step: e.value for e in acc.Scalars(tag)}.items())


def first_layer_grid(weight: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    """First-layer weights as a grid of images: MLP rows reshaped to the input image, conv kernels as they are."""
    w = weight.detach().float().cpu()
    if w.dim() == 2 and w.shape[1] == int(np.prod(input_shape)):
        w = w.view(-1, *input_shape)
    w = w[:, :3] if w.shape[1] in (1, 3) else w[:, :1]
    w = (w - w.min()) / (w.max() - w.min() + 1e-12)
    return torchvision.utils.make_grid(w, nrow=8, padding=1, pad_value=1.0)
