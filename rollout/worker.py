"""The scoring worker: a plain class that loads the task once and scores batches of weight sets (a Ray actor in the
pool, usable directly in tests and single-process runs)."""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import numpy as np
import torch

from envs.models import reference_from_config
from envs.objectives import Objective, score_objective
from envs.scoring import Scores, Weights, slice_weights
from envs.tasks import Split, task_from_config


def as_torch(weights: Any) -> Any:
    """numpy arrays (as they come out of Ray's object store, read-only) -> torch tensors, in any `Weights` form."""
    if isinstance(weights, np.ndarray):
        return torch.from_numpy(np.array(weights))  # a writable copy: torch refuses to alias read-only memory
    if isinstance(weights, dict):
        return {k: as_torch(v) for k, v in weights.items()}
    if isinstance(weights, (list, tuple)):
        return [as_torch(w) for w in weights]
    return weights


class ScoringWorker:
    """Scores weight sets of one reference model on one split of one task; the task is loaded once, here."""

    def __init__(self, task_cfg, reference_cfg, split: str = "reward", chunk_size: int = 16,
                 num_threads: Optional[int] = None, delay_s: float = 0.0, device: str = "cpu",
                 precision: str = "fp32"):
        """`num_threads` caps torch's intra-op threads (one per Ray CPU in the pool); `delay_s` sleeps before each
        share, so tests can kill an actor while a batch is in flight. `device`: where the model and the split live
        and the scoring runs ("cuda" in a Ray actor is the GPU Ray gave it); `precision` "bf16" scores under bfloat16
        autocast."""
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.task = task_from_config(task_cfg)
        self.split = self.task.split(split).to(self.device)
        self.train = None  # loaded on the first request for train-split examples
        self.model = reference_from_config(reference_cfg, self.task, seed=0).to(self.device)  # architecture + buffers
        self.chunk_size, self.delay_s, self.precision = chunk_size, delay_s, precision

    def score(self, weights: Weights, start: int = 0, stop: Optional[int] = None,
              examples: Optional[np.ndarray] = None, grad: bool = False, objective: Optional[Objective] = None,
              noise_seed: int = 0, per_example: bool = False, example_weights: Optional[np.ndarray] = None) -> Scores:
        """Scores of weight sets [start, stop) of `weights` (any `envs.scoring.Weights` form, torch or numpy), on the
        worker's split, or on the train-split examples at indices `examples` when given (fresh reward batches).
        `grad`: with the gradient of the differentiable reward (minus the mean cross-entropy) per set. `objective`:
        scored as deployed (`envs.objectives`; None: plain), input noise drawn from `noise_seed`. `per_example`: with each
        set's cross-entropy on every example; `example_weights` (all G sets' rows, this share's taken here): the
        gradient's per-example weights (`envs.scoring.score_batch`)."""
        if self.delay_s:
            time.sleep(self.delay_s)
        mine = as_torch(slice_weights(weights, start, stop))
        if example_weights is not None:
            example_weights = torch.tensor(np.asarray(example_weights)[start:stop])
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return score_objective(self.model, mine, self.split if examples is None else self.examples(examples),
                                   objective, noise_seed, self.chunk_size, grad=grad, per_example=per_example,
                                   example_weights=example_weights)

    def examples(self, index: np.ndarray) -> Split:
        if self.train is None:
            self.train = self.task.split("train").to(self.device)
        idx = torch.from_numpy(np.array(index, dtype=np.int64)).to(self.device)  # a copy of the object-store array
        return Split(self.train.x[idx], self.train.y[idx])

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        """The Ray node this worker runs on (a Ray actor only)."""
        import ray  # here: the worker stays a plain class, usable without Ray

        return ray.get_runtime_context().get_node_id()

    def threads(self) -> int:
        """Torch threads this worker runs with (what the pool asked for)."""
        return torch.get_num_threads()

    def niceness(self) -> int:
        """This worker's scheduling niceness (a private local instance's workers run at the driver's)."""
        return os.nice(0)
