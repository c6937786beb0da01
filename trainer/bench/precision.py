"""`python -m trainer.bench precision`: bf16 autocast against fp32 scoring, on what GRPO ranks: how the reward
ranking within a group of sampled nets changes."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from envs.models import reference_from_config
from envs.scoring import score_batch
from envs.tasks import task_from_config
from trainer.bench.common import default_policy, emit, held_out_parser, held_out_seeds, pair_count
from trainer.config import ExperimentConfig
from trainer.device import resolve_device
from trainer.generator import WeightGenerator, init_states


def add_parser(sub) -> argparse.ArgumentParser:
    pr = held_out_parser(sub, "precision", "bf16 autocast vs fp32 scoring: how GRPO's reward ranking in a group "
                                           "changes", seeds=16, func=run, threads=None)
    pr.add_argument("--policy", help="the policy whose samples are scored (default: the imitation policy)")
    pr.add_argument("--group-size", "-G", type=pair_count, default=16, help="sampled nets per init (default 16)")
    return pr


def run(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """bf16 autocast against fp32 scoring, on what GRPO ranks: a group of G sampled nets from each held-out init,
    scored on the reward split on the experiment's device. Per group: the Spearman rank correlation of the two
    precisions' rewards (accuracy and negative loss), whether they pick the same best net, and the largest accuracy
    difference; the table gives medians and means over the groups."""
    cfg = cfgs[0]
    task = task_from_config(cfg.task)
    seeds = held_out_seeds(args, cfg)
    weight_generator = WeightGenerator.load(args.policy or default_policy(cfg), cfg=cfg)
    device = resolve_device(cfg.device)
    model, split = reference_from_config(cfg.reference, task).to(device), task.split("reward").to(device)
    gen = torch.Generator(device=weight_generator.device).manual_seed(cfg.seed)

    def rho(a: torch.Tensor, b: torch.Tensor) -> float:  # nan when a group's rewards are all equal
        return float(spearmanr(a.numpy(), b.numpy()).statistic) if a.unique().numel() > 1 else float("nan")

    groups = []
    for seed in tqdm(seeds, desc="bench precision", disable=not sys.stderr.isatty()):
        states, _ = weight_generator.rollout(init_states(cfg, task, [seed]), args.group_size, gen)
        scores = {}
        for precision in ("fp32", "bf16"):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                scores[precision] = score_batch(model, states, split, cfg.rollout.chunk_size)
        fp, bf = scores["fp32"], scores["bf16"]
        groups.append(dict(seed=seed, fp32_accuracy=fp.accuracy.tolist(), bf16_accuracy=bf.accuracy.tolist(),
                           rho_accuracy=rho(fp.accuracy, bf.accuracy), rho_neg_loss=rho(-fp.loss, -bf.loss),
                           same_best=int(fp.loss.argmin()) == int(bf.loss.argmin()),
                           max_accuracy_diff=float((fp.accuracy - bf.accuracy).abs().max())))

    def summary(key: str) -> str:
        v = np.array([g[key] for g in groups], dtype=float)
        v = v[~np.isnan(v)]
        return f"{np.median(v):.4f} / {v.mean():.4f}" if len(v) else "-"

    lines = [f"{cfg.name} on {device}: bf16 autocast vs fp32 scoring, {len(seeds)} groups of {args.group_size} sampled "
             f"nets (held-out inits {seeds[0]}..{seeds[-1]}), reward split of {len(split)} examples", "",
             "| measure (per group) | median / mean over groups |", "| --- | --- |",
             f"| Spearman rho of accuracies | {summary('rho_accuracy')} |",
             f"| Spearman rho of negative losses | {summary('rho_neg_loss')} |",
             f"| same best net (lowest loss) | {sum(g['same_best'] for g in groups)}/{len(groups)} groups |",
             f"| largest accuracy difference in the group | {summary('max_accuracy_diff')} |"]
    table = "\n".join(lines)
    emit(table, args.out)
    return dict(table=table, figures=[], groups=groups)
