"""`python -m trainer.bench search`: what black-box search buys per evaluation: antithetic evolution strategies
directly on the weights of a policy's generated nets (GRPO's signal with no policy in between), rewarded on the fixed
reward split vs fresh batches."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from envs.models import reference_from_config
from envs.scoring import score_batch
from envs.tasks import Split, task_from_config
from trainer.bench.common import count, default_policy, emit, figure, held_out_parser, held_out_seeds, positive
from trainer.config import ExperimentConfig
from trainer.generator import WeightGenerator, mean_path_accuracy


def add_parser(sub) -> argparse.ArgumentParser:
    e = held_out_parser(sub, "search", "ES on generated nets' weights: fixed reward split vs fresh batches", seeds=2,
                        func=run)
    e.add_argument("--policy", help="policy.safetensors whose mean path starts the search (default: the imitation "
                                    "policy)")
    e.add_argument("--iterations", type=count, default=100)
    e.add_argument("--pairs", type=count, default=256, help="mirrored pairs per net and iteration (default 256)")
    e.add_argument("--sigma", type=positive, default=0.05, help="noise, in units of each tensor's RMS (default 0.05)")
    e.add_argument("--lr", type=positive, default=0.3, help="Adam's step, in units of the noise (default 0.3)")
    e.add_argument("--threads", type=count, help="torch threads (default: the config's `threads`, auto: all cores)")
    return e


def es_search(model: torch.nn.Module, start: dict[str, torch.Tensor], batches: Callable[[int], object],
              monitor: dict[str, object], iterations: int, pairs: int, sigma: float, lr: float, seed: int,
              every: int, desc: str = "es search") -> list[dict[str, float]]:
    """Antithetic ES on S nets at once (`start`: key -> (S, *shape)), Adam on the estimated gradient of minus the
    cross-entropy on `batches(iteration)`. Noise is sigma x each tensor's RMS; Adam steps lr x sigma x that RMS.
    Returns, every `every` iterations and at the end, evaluations so far and the median accuracy on each `monitor`
    split.
    """
    theta = {k: v.clone().requires_grad_(False) for k, v in start.items()}
    scale = {k: v.pow(2).flatten(1).mean(1).sqrt().view(-1, *[1] * (v.dim() - 1)) for k, v in theta.items()}
    z = {k: torch.zeros_like(v, requires_grad=True) for k, v in theta.items()}  # the nets are theta + scale * z
    opt = torch.optim.Adam(z.values(), lr=lr * sigma)
    gen = torch.Generator().manual_seed(seed)
    s = next(iter(theta.values())).shape[0]
    history = []
    for it in tqdm(range(iterations + 1), desc=desc):
        current = {k: theta[k] + scale[k] * z[k].detach() for k in theta}
        if it % every == 0 or it == iterations:
            row = {"evaluations": it * 2 * pairs}  # per net
            for name, split in monitor.items():
                row[name] = float(np.median(score_batch(model, current, split).accuracy.numpy()))
            history.append(row)
        if it == iterations:
            return history
        eps = {k: torch.randn((s, pairs, *v.shape[1:]), generator=gen) for k, v in theta.items()}
        sets = {k: (current[k][:, None] + torch.stack([eps[k], -eps[k]], 2).flatten(1, 2) * sigma * scale[k][:, None])
                .flatten(0, 1) for k in theta}  # (S * 2 * pairs, ...): per net, pairs of mirrored draws
        reward = score_batch(model, sets, batches(it), chunk_size=64).neg_loss().float().view(s, pairs, 2)
        spread = (reward[..., 0] - reward[..., 1]) / (reward.flatten(1).std(1, keepdim=True) + 1e-8)  # (S, pairs)
        opt.zero_grad()
        for k in theta:
            grad = (spread.view(s, pairs, *[1] * (theta[k].dim() - 1)) * eps[k]).mean(1)
            z[k].grad = -grad  # Adam minimises: ascend the reward
        opt.step()


def run(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """ES on the mean-path nets of held-out seeds, twice from the same start: rewards on the fixed reward split vs a
    fresh random batch of as many train-split examples every iteration; reward-split and test accuracy side by side."""
    cfg = cfgs[0]
    seeds = held_out_seeds(args, cfg)
    task = task_from_config(cfg.task)
    policy = args.policy or default_policy(cfg)
    _, start = mean_path_accuracy(WeightGenerator.load(policy, cfg=cfg), task, seeds)
    model = reference_from_config(cfg.reference, task)
    reward, train = task.split("reward"), task.split("train")

    def fresh(it: int) -> Split:
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed_start + it))[:len(reward)]
        return Split(train.x[idx], train.y[idx])

    monitor = {"reward": reward, "test": task.split("test")}
    lines = [f"{cfg.name}: ES on the mean-path nets of {policy}, held-out seeds {seeds[0]}..{seeds[-1]}, "
             f"{args.pairs} mirrored pairs per net and iteration, sigma {args.sigma} x tensor RMS, Adam lr {args.lr}; "
             f"reward: minus the cross-entropy on {len(reward)} examples; medians over nets",
             "", "| reward examples | evaluations per net | reward-split accuracy | test accuracy | test change |",
             "| --- | --- | --- | --- | --- |"]
    curves = {"reward-split accuracy (what the search sees)": {}, "test accuracy": {}}
    for name, batches in (("the reward split (fixed)", lambda it: reward),
                          ("fresh train-split batch per iteration", fresh)):
        t = time.perf_counter()
        hist = es_search(model, start, batches, monitor, args.iterations, args.pairs, args.sigma, args.lr,
                         args.seed_start, max(1, args.iterations // 4), desc=f"es search, {name}")
        print(f"{name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        lines += [f"| {name} | {h['evaluations']} | {h['reward']:.4f} | {h['test']:.4f} | "
                  f"{(h['test'] - hist[0]['test']) * 100:+.2f} pts |" for h in hist]
        for panel, split in zip(curves, ("reward", "test")):
            curves[panel][f"reward: {name}"] = ([h["evaluations"] for h in hist], [h[split] for h in hist])
    table = "\n".join(lines)
    emit(table, args.out)
    figures = []
    if args.plots:
        from trainer import plots  # matplotlib: slow to import, only when figures are asked for

        figures.append(plots.curves(curves, f"{cfg.name}: ES on generated nets' weights (median of {len(seeds)} nets)",
                                    "evaluations per net", "accuracy", figure(args, cfg.name, "search")))
    return dict(table=table, figures=figures)
