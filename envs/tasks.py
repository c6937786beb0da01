"""Task datasets of the reference models, loaded once into tensors with train / reward / test splits.

`digits` (scikit-learn's bundled 8x8 digits) needs no download and is the offline default. The torchvision tasks read
from `root`, else $SYNTHNET_DATA, else ./data, and download only when asked to.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from envs.errors import ConfigError, TaskDataError  # TaskDataError: importable from here as before


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # (N, C, H, W) float32, normalised
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "Split":
        """The examples on `device` (the same object when they are there already)."""
        return self if self.x.device == torch.device(device) else Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Task:
    name: str
    train: Split  # what the zoo trains on
    reward: Split  # seeded hold-out carved from the training set: the RL reward
    test: Split  # reporting only
    input_shape: tuple[int, ...]  # (C, H, W)
    num_classes: int
    train_index: torch.Tensor  # positions in the original training set, disjoint from reward_index
    reward_index: torch.Tensor

    def to(self, device) -> "Task":
        """Train, reward and test examples on `device`, so that training and scoring there copy nothing per batch."""
        return dataclasses.replace(self, train=self.train.to(device), reward=self.reward.to(device),
                                   test=self.test.to(device))

    def split(self, name: str) -> Split:
        if name not in ("train", "reward", "test"):
            raise ValueError(f"unknown split {name!r} (valid: train, reward, test)")
        return getattr(self, name)


def data_root(root: Optional[str]) -> Path:
    return Path(root or os.environ.get("SYNTHNET_DATA") or "data")


def _digits(root: Path, download: bool, split_seed: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target, dtype=torch.int64)
    # scikit-learn ships one set; a fixed seeded 25% is the test split.
    perm = torch.from_numpy(np.random.default_rng(split_seed + 12345).permutation(len(y)))
    n_test = len(y) // 4
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _torchvision(cls_name: str, folder: str, mean: tuple[float, ...], std: tuple[float, ...]) -> Callable:
    def load(root: Path, download: bool, split_seed: int):
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        out = []
        for train in (True, False):
            try:
                ds = cls(str(root), train=train, download=download)
            except RuntimeError as e:
                raise TaskDataError(
                    f"{folder}: dataset files not found under {root / folder} ({str(e).splitlines()[0]}); "
                    f"set SYNTHNET_DATA or task.root to the folder holding {folder}/, or task.download: true"
                ) from None
            x = torch.as_tensor(np.asarray(ds.data))
            x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
            x = x.float().div(255.0)
            m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
            out += [(x - m) / s, torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)]
        return tuple(out)

    return load


TASKS: dict[str, Callable] = {
    "digits": _digits,
    "mnist": _torchvision("MNIST", "MNIST", (0.1307,), (0.3081,)),
    "fashion_mnist": _torchvision("FashionMNIST", "FashionMNIST", (0.2860,), (0.3530,)),
    "cifar10": _torchvision("CIFAR10", "cifar-10-batches-py", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@functools.lru_cache(maxsize=4)
def load_task(name: str, root: Optional[str] = None, download: bool = False, reward_size: int = 300,
              split_seed: int = 0) -> Task:
    """Load a task once per process (cached): the reward split is a seeded hold-out of the training set."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (valid: {', '.join(TASKS)})")
    train_x, train_y, test_x, test_y = TASKS[name](data_root(root), download, split_seed)
    if not 0 < reward_size < len(train_y):
        raise ConfigError(f"config key task.reward_size: expected a value in [1, {len(train_y) - 1}] ({name} has "
                          f"{len(train_y)} training examples), got {reward_size}")
    perm = torch.from_numpy(np.random.default_rng(split_seed).permutation(len(train_y)))
    rew, tr = perm[:reward_size], perm[reward_size:]
    return Task(
        name=name,
        train=Split(train_x[tr].contiguous(), train_y[tr].contiguous()),
        reward=Split(train_x[rew].contiguous(), train_y[rew].contiguous()),
        test=Split(test_x.contiguous(), test_y.contiguous()),
        input_shape=tuple(train_x.shape[1:]),
        num_classes=int(max(train_y.max(), test_y.max())) + 1,
        train_index=tr,
        reward_index=rew,
    )


def task_from_config(cfg) -> Task:
    """`cfg` is an `envs.spec.TaskConfig`."""
    return load_task(cfg.name, cfg.root, cfg.download, cfg.reward_size, cfg.split_seed)
