"""`python -m trainer.bench gradient`: how well GRPO's policy-gradient estimate points: its cosine with the exact
gradient of the mean path's expected reward, per exploration mode, as more iterations are averaged."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from envs.models import reference_from_config
from envs.scoring import batched_logits, score_batch
from envs.tasks import Split, task_from_config
from policy.sampling import gaussian_log_prob
from trainer import paths
from trainer.algos import compute_grpo_advantages
from trainer.bench.common import count, default_policy, emit, held_out_parser
from trainer.bench.grpo import GRPO_MODES
from trainer.config import ExperimentConfig, load_config
from trainer.generator import init_states

SCORE_MODES = ("iid", "units")  # the modes whose estimate is the score function's (pathwise is exact by construction)


def averaged_cosines(estimates: torch.Tensor, exact: torch.Tensor, ns: list[int]) -> list[float]:
    """Per n: the mean, over the len(estimates) // n disjoint blocks of n consecutive estimates, of the cosine between
    the block's average and `exact`. `estimates`: (iterations, parameters)."""
    return [float(np.mean([F.cosine_similarity(estimates[i:i + n].mean(0), exact, dim=0).item()
                           for i in range(0, len(estimates) - n + 1, n)])) for n in ns]


def add_parser(sub) -> argparse.ArgumentParser:
    gd = held_out_parser(sub, "gradient", "cosine of GRPO's policy-gradient estimate with the exact gradient, per "
                                          "exploration mode", seeds=1, func=run, threads=1)
    gd.add_argument("--policy", help="the imitation policy (default: the experiment's)")
    gd.add_argument("--modes", nargs="+", default=list(SCORE_MODES), choices=list(SCORE_MODES),
                    help="the score-function estimator's exploration modes")
    gd.add_argument("--iterations", type=count, default=16, help="GRPO iterations of rollouts (default 16)")
    gd.add_argument("--inits", type=count, default=64, help="fresh inits for the exact gradient (default 64)")
    return gd


def run(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """How well GRPO's policy-gradient estimate points, per exploration mode: the cosine between the estimate from
    `n` iterations' rollouts (B x G evaluations each, rewards: minus the cross-entropy on a fresh train-split batch as
    large as the reward split) and the exact gradient of the mean path's expected reward (minus the train-split
    cross-entropy, backpropagated through the walk over `--inits` fresh inits), in the parameters each mode trains."""
    from trainer.grpo import GRPOTrainer  # it imports torchvision: seconds that other subcommands should not pay

    cfg = cfgs[0]
    policy = args.policy or default_policy(cfg)
    config = (args.config or args.default_configs)[0]
    task = task_from_config(cfg.task)
    model = reference_from_config(cfg.reference, task)
    train, n_reward = task.split("train"), len(task.split("reward"))
    averaged = [n for n in (1, 4, 16, 64) if n <= args.iterations]
    lines = [f"{cfg.name}: cosine between GRPO's policy-gradient estimate and the exact gradient of the expected reward "
             f"(minus the train-split cross-entropy of the mean path, {args.inits} fresh inits), from {policy}; "
             f"estimates averaged over n iterations of B x G evaluations, mean over the {args.iterations} // n "
             f"disjoint averages", "", "| mode | trained parameters | " +
             " | ".join(f"n = {n}" for n in averaged) + " |", "| --- | --- | " + " | ".join("---" for _ in averaged) + " |"]
    for mode in args.modes:
        t = GRPOTrainer(load_config(config, args.overrides + GRPO_MODES[mode]), policy, paths.ARTIFACTS / "bench",
                        progress=False)
        params = [p for group in t.opt.param_groups for p in group["params"]]

        def gradient(loss: torch.Tensor) -> torch.Tensor:
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])

        seeds = list(range(3 * 10**9, 3 * 10**9 + args.inits))  # never a zoo, held-out or GRPO seed
        t.policy.eval()
        final, _ = t.weight_generator.generate(init_states(t.cfg, task, seeds), mean_only=True, grad=True)
        ce = torch.stack([F.cross_entropy(batched_logits(model, final, train.x[i:i + 4096]).flatten(0, 1),
                                          train.y[i:i + 4096].repeat(args.inits), reduction="sum")
                          for i in range(0, len(train), 4096)]).sum() / (len(train) * args.inits)
        exact = -gradient(ce)  # the ascent direction of the reward
        gen = torch.Generator().manual_seed(cfg.seed)
        estimates = []
        for it in tqdm(range(args.iterations), desc=f"gradient {mode}"):
            t.iteration = it
            rollouts = t.collect_rollouts()
            idx = torch.randperm(len(train), generator=gen)[:n_reward]
            rollouts.rewards = score_batch(model, rollouts.final, Split(train.x[idx], train.y[idx])).neg_loss().float().view(
                t.cfg.grpo.inits_per_iter, t.cfg.grpo.group_size)
            adv, _ = compute_grpo_advantages(rollouts.rewards, t.cfg.grpo.scale_by_std)
            rows = torch.arange(adv.numel())
            groups, row_of = torch.unique(rows // t.cfg.grpo.group_size, return_inverse=True)
            loss = 0.0
            for step in rollouts.steps:  # GRPO's surrogate at ratio 1: minus the advantage-weighted log-prob of each draw
                (mean, std), _, drawn = t.step_distributions(step, rows, groups, row_of)
                if drawn is not None:
                    loss = loss - (adv.flatten() * gaussian_log_prob(drawn, mean, std)).mean()
            estimates.append(-gradient(loss))
        cos = averaged_cosines(torch.stack(estimates), exact, averaged)
        lines.append(f"| {mode} | {sum(p.numel() for p in params)} | " + " | ".join(f"{c:.3f}" for c in cos) + " |")
    table = "\n".join(lines)
    emit(table, args.out)
    return dict(table=table, figures=[])
