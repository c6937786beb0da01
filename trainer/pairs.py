"""The imitation data: ordered checkpoint pairs (W at t1, W at t2), t1 < t2, from the same zoo run."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch
from torch.utils.data import Dataset

from trainer.checkpoints import CheckpointError, load_weights
from trainer.zoo import load_manifest


class ZooPairs(Dataset):
    """All checkpoints of the chosen zoo runs, held in memory as stacked tensors.

    `weights[key]` is (runs, checkpoints, *shape) and `t` is (runs, checkpoints); item k is one ordered pair
    `(W_t1, W_t2, t1, t2)` of state dicts with t1 < t2 from the same run.
    """

    def __init__(self, zoo_dir: str | Path, runs: Optional[Iterable[int]] = None,
                 expected: Optional[Mapping[str, torch.Tensor]] = None):
        zoo_dir = Path(zoo_dir)
        manifest = load_manifest(zoo_dir)
        wanted = None if runs is None else set(runs)
        records = [r for r in manifest["runs"] if wanted is None or r["run"] in wanted]
        if not records:
            raise CheckpointError(f"{zoo_dir}/manifest.json: lists none of the zoo runs asked for")
        self.runs = [r["run"] for r in records]
        per_run = []
        for r in records:
            ckpts = r["checkpoints"]
            per_run.append([load_weights(zoo_dir / c["file"], expected)[0] for c in ckpts])
        self.t = torch.tensor([[c["t"] for c in r["checkpoints"]] for r in records], dtype=torch.float32)
        assert (self.t == self.t[0]).all(), "zoo runs must share one checkpoint grid"
        self.keys = list(per_run[0][0])
        self.weights = {k: torch.stack([torch.stack([sd[k] for sd in run]) for run in per_run]) for k in self.keys}
        n = self.t.shape[1]
        self.index = [(ri, i, j) for ri in range(len(records)) for i in range(n) for j in range(i + 1, n)]

    @property
    def grid(self) -> list[float]:
        """The progress values every run was checkpointed at."""
        return self.t[0].tolist()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int):
        ri, i, j = self.index[k]
        w1 = {key: v[ri, i] for key, v in self.weights.items()}
        w2 = {key: v[ri, j] for key, v in self.weights.items()}
        return w1, w2, self.t[ri, i].item(), self.t[ri, j].item()
