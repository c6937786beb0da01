"""The rollout pool: N Ray actors (`ScoringWorker`) that score batches of weight sets, surviving lost actors."""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import ray
import torch
from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError

from envs.objectives import Objective
from envs.scoring import Scores, Weights, batch_size_of
from rollout.cluster import PlacementError, check_placeable, describe_cluster, describe_request, init_ray, torch_threads
from rollout.worker import ScoringWorker

LOST = (RayActorError, NodeDiedError, WorkerCrashedError)  # the actor is gone; its result never comes back


class RolloutError(RuntimeError):
    """A share of a batch could not be scored within the retry budget; the message is one line."""


def as_numpy(weights: Any) -> Any:
    """torch tensors -> numpy arrays in any `Weights` form: the object store hands numpy to workers without a copy."""
    if isinstance(weights, torch.Tensor):
        return weights.detach().cpu().numpy()
    if isinstance(weights, dict):
        return {k: as_numpy(v) for k, v in weights.items()}
    if isinstance(weights, (list, tuple)):
        return [as_numpy(w) for w in weights]
    return weights


def _from_config(value: Any, cfg: Any, name: str, default: Any) -> Any:
    if value is not None:
        return value
    return getattr(getattr(cfg, "rollout", None), name, default)


class RolloutPool:
    """`num_workers` scoring actors on a Ray cluster; `score` splits a batch across them and returns it in order.

    `cfg` is duck-typed: `.task`, `.reference` and optionally `.rollout` (whose fields fill any argument left None).
    `address` None joins nothing and starts a private Ray instance ("local" forces one even when `.rollout` names a
    cluster); "auto" or "host:port" joins a running cluster. Every wait is bounded by `timeout_s`, the actors' start
    included: a request no node can hold fails at once, actors still unplaced after `timeout_s` (other jobs hold the
    CPUs) fail then, both with a one-line `PlacementError`. A lost actor (its node died, say), or one that returns
    nothing within `timeout_s`, is replaced and its share re-run, at most `max_retries` times per share.
    `threads` are each actor's torch threads (None: `cfg.threads` if set, else this machine's cores shared among the
    actors and the driver, see `rollout.cluster.torch_threads`). `worker_kwargs` go to every `ScoringWorker` (tests:
    `delay_s`). `gpus_per_worker` > 0: each actor asks Ray for that share of a GPU and scores on it (the trainer passes
    0 unless the experiment's device is CUDA); the weights travel through the object store as numpy either way.
    `close()` kills the actors, not Ray.
    """

    def __init__(self, cfg: Any, num_workers: Optional[int] = None, address: Optional[str] = None,
                 timeout_s: Optional[float] = None, max_retries: Optional[int] = None, split: str = "reward",
                 chunk_size: Optional[int] = None, worker_kwargs: Optional[dict] = None,
                 threads: Optional[int] = None, gpus_per_worker: Optional[float] = None):
        self.num_workers = int(_from_config(num_workers, cfg, "num_workers", 2))
        self.timeout_s = float(_from_config(timeout_s, cfg, "timeout_s", 300.0))
        self.max_retries = int(_from_config(max_retries, cfg, "max_retries", 3))
        assert self.num_workers >= 1 and self.timeout_s > 0 and self.max_retries >= 0
        address = _from_config(address, cfg, "address", None)
        init_ray(address, num_cpus=max(self.num_workers, os.cpu_count() or 1))
        self._args = (cfg.task, cfg.reference, split, int(_from_config(chunk_size, cfg, "chunk_size", 16)))
        self.threads = threads or torch_threads(getattr(cfg, "threads", None), self.num_workers + 1)
        self.gpus_per_worker = float(_from_config(gpus_per_worker, cfg, "gpus_per_worker", 0.0))
        # An actor holding a share of a GPU scores there (Ray shows it that GPU alone, as "cuda").
        device = "cuda" if self.gpus_per_worker > 0 else "cpu"
        self._kwargs = {"num_threads": self.threads, "device": device,
                        "precision": _from_config(None, cfg, "precision", "fp32"), **(worker_kwargs or {})}
        self._remote = ray.remote(num_cpus=1, num_gpus=self.gpus_per_worker)(ScoringWorker)
        self.restarts = 0
        check_placeable("scoring actors", 1, self.gpus_per_worker)
        self._actors = [self._spawn() for _ in range(self.num_workers)]
        self._wait_started()

    def _wait_started(self) -> None:
        """Fail here, not mid-batch, if a worker cannot start (missing task data, no free CPUs on the cluster)."""
        pings = [a.pid.remote() for a in self._actors]
        ready, waiting = ray.wait(pings, num_returns=len(pings), timeout=self.timeout_s)
        try:
            ray.get(ready, timeout=self.timeout_s)  # an actor that failed to start raises its error here
            if waiting:
                raise PlacementError(
                    f"{len(waiting)} of {len(pings)} scoring actors not started within rollout.timeout_s="
                    f"{self.timeout_s:g}s: each asks for {describe_request(1, self.gpus_per_worker)}; the Ray cluster "
                    f"has {describe_cluster(free=True)}")
        except BaseException:
            self.close()  # a pending actor would otherwise take its CPU whenever one frees up
            raise

    def _spawn(self):
        return self._remote.remote(*self._args, **self._kwargs)

    def _restart(self, i: int) -> None:
        try:
            ray.kill(self._actors[i])
        except Exception:  # already gone: nothing to stop
            pass
        self._actors[i] = self._spawn()
        self.restarts += 1

    def pids(self) -> list[int]:
        return ray.get([a.pid.remote() for a in self._actors], timeout=self.timeout_s)

    def nodes(self) -> list[str]:
        """The Ray node id each actor runs on."""
        return ray.get([a.node.remote() for a in self._actors], timeout=self.timeout_s)

    def score(self, weights: Weights, examples: Optional[np.ndarray] = None, grad: bool = False,
              objective: Optional[Objective] = None, noise_seed: int = 0, per_example: bool = False,
              example_weights: Optional[np.ndarray] = None) -> Scores:
        """Scores of G weight sets (any `envs.scoring.Weights` form), in input order: on the pool's split, or on the
        train-split examples at indices `examples` when given; `grad`: with each set's reward gradient
        (`Scores.grad`), computed by the workers; `objective`: the nets scored as deployed (None: plain), with input
        noise drawn from `noise_seed` (the same on every worker); `per_example`: with each set's cross-entropy on every
        example (`Scores.example_loss`); `example_weights` (G, N): the gradient's per-example weights."""
        g = batch_size_of(weights)
        if g == 0:
            raise ValueError("no weight sets to score")
        ref = ray.put(as_numpy(weights))  # once: every actor reads the same object, and only its slice of it
        extra = (None if examples is None else ray.put(np.asarray(examples)), grad, objective, noise_seed, per_example,
                 None if example_weights is None else ray.put(np.asarray(example_weights, dtype=np.float32)))
        bounds = np.linspace(0, g, self.num_workers + 1).round().astype(int).tolist()
        shares = {i: (a, b) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])) if b > a}
        tries = dict.fromkeys(shares, 0)
        pending = {self._actors[i].score.remote(ref, a, b, *extra): i for i, (a, b) in shares.items()}
        results: dict[int, Scores] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.timeout_s)
            if ready:
                i = pending.pop(ready[0])
                try:
                    results[i] = ray.get(ready[0], timeout=self.timeout_s)
                    continue
                except LOST:
                    lost = [i]
            else:  # nothing finished in time: the stragglers count as lost (a hung node never raises)
                lost, pending = list(pending.values()), {}
            for i in lost:
                tries[i] += 1
                if tries[i] > self.max_retries:
                    a, b = shares[i]
                    raise RolloutError(f"weight sets {a}:{b} lost {tries[i]} times (actor died or no result within "
                                       f"rollout.timeout_s={self.timeout_s}s); giving up after max_retries={self.max_retries}")
                self._restart(i)
                pending[self._actors[i].score.remote(ref, *shares[i], *extra)] = i
        return Scores.cat([results[i] for i in sorted(results)])

    def close(self) -> None:
        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:  # already gone
                pass
        self._actors = []

    def __enter__(self) -> "RolloutPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
