"""TensorBoard logging of a run under artifacts/runs/<name>/: scalars on one step axis, hyperparameters as text."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch.utils.tensorboard import SummaryWriter


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
        # purge_step drops events logged after the step a resumed run restarts from, so curves do not fork.
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
