"""`python -m trainer.bench temperature`: the sampler's frontier. For each std of the unit latent a generative policy
draws with, on held-out inits: one sample's test accuracy, the best of N samples chosen on the reward split, and how
often two samples from one init predict the same class, beside SGD's own agreement (another data order from the same
init). Is there a std at which samples are both as accurate and as diverse as SGD's runs?"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from envs.tasks import task_from_config
from trainer import audit
from trainer.bench.common import (count, emit, figure, generated_policy, held_out_parser, held_out_seeds,
                                  paired_difference, positive, seed_number)
from trainer.config import ConfigError, ExperimentConfig
from trainer.generator import WeightGenerator, init_states, mean_path_accuracy, reference_layout, repeat_groups, \
    score_states

AGREEMENT_DRAWS = 4  # samples per init whose pairwise agreement is measured


def add_parser(sub) -> argparse.ArgumentParser:
    t = held_out_parser(sub, "temperature", "the sampler's frontier: accuracy, best-of-N and same-init agreement "
                                            "per latent std", seeds=32, func=run, threads=1)
    t.add_argument("--policy", help="a generative policy.safetensors (default: what `generate` uses)")
    t.add_argument("--latent-std", type=positive, nargs="+", default=None, metavar="STD",
                   help="stds of the unit latent to draw with (default: the policy's own, x 1.5, x 2)")
    t.add_argument("--best-of", type=count, default=16, metavar="N", help="samples per init to choose the best from "
                                                                         "on the reward split (default 16)")
    t.add_argument("--sgd-seeds", type=int, default=32, help="held-out inits SGD runs from twice, for its agreement "
                                                            "(default 32, shared with `bench audit`'s cache; 0: skip)")
    t.add_argument("--sample-seed", type=seed_number, default=0, help="seed of the sampling noise (default 0)")
    return t


def frontier_row(weight_generator: WeightGenerator, task, inits: dict[str, torch.Tensor], mean: np.ndarray, std: float,
                 draws: int, sample_seed: int) -> dict:
    """Draws `draws` samples per init at latent std `std`; their accuracies, the reward-split choice and agreement."""
    cfg, n = weight_generator.cfg, len(mean)
    weight_generator.policy.sampling.latent_std = std
    gen = torch.Generator().manual_seed(sample_seed)
    final, _ = weight_generator.generate(repeat_groups(inits, draws), generator=gen, trajectory=False)
    test = np.array(score_states(cfg, task, final, "test")).reshape(n, draws)
    reward = np.array(score_states(cfg, task, final, "reward")).reshape(n, draws)
    k = min(AGREEMENT_DRAWS, draws)
    firsts = {key: v.view(n, draws, *v.shape[1:])[:, :k].reshape(n * k, *v.shape[1:]) for key, v in final.items()}
    same, other = audit.prediction_agreement(audit.predictions(audit.split_logits(cfg, task, firsts, "test")), k) \
        if k > 1 else (float("nan"), float("nan"))
    best = test[np.arange(n), reward.argmax(1)]
    return dict(latent_std=std, sample=test[:, 0].tolist(), best=best.tolist(), agree_same_init=same,
                agree_other_init=other, sample_vs_mean=paired_difference(mean, test[:, 0]),
                best_vs_mean=paired_difference(mean, best))


def run(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    cfg = cfgs[0]
    seeds = held_out_seeds(args, cfg)
    if args.sgd_seeds < 0:
        raise ConfigError(f"--sgd-seeds {args.sgd_seeds}: expected >= 0")
    policy = args.policy or generated_policy(cfg)
    weight_generator = WeightGenerator.load(policy, cfg=cfg)
    sampling = weight_generator.policy.sampling
    if sampling.noise != "units" and not weight_generator.policy.cfg.generative:
        raise ConfigError(f"{policy}: samples with {sampling.noise!r} noise; the frontier is over the unit latent's "
                          f"std (a generative policy, or one GRPO trained with grpo.noise=units)")
    own = sampling.latent_std if sampling.latent_std is not None else weight_generator.policy.cfg.latent_std
    stds = args.latent_std or [own, 1.5 * own, 2 * own]
    task = task_from_config(cfg.task)
    inits = init_states(cfg, task, seeds)
    mean = np.array(mean_path_accuracy(weight_generator, task, seeds)[0])
    rows = []
    for std in stds:
        print(f"temperature: latent std {std:g}, {args.best_of} samples per init on {len(seeds)} inits ...",
              file=sys.stderr, flush=True)
        rows.append(frontier_row(weight_generator, task, inits, mean, std, args.best_of, args.sample_seed))
    sgd = None
    if args.sgd_seeds:
        sgd_seeds = seeds[:args.sgd_seeds]
        template, _ = reference_layout(cfg, task)
        print(f"temperature: SGD from {len(sgd_seeds)} held-out inits, two data orders (cached in "
              f"{audit.sgd_cache(cfg)}) ...", file=sys.stderr, flush=True)
        pair = [audit.sgd_from_seeds(cfg, sgd_seeds, template.state_dict(), replicate=r) for r in (False, True)]
        both = {k: torch.stack([pair[0][k], pair[1][k]], 1).flatten(0, 1) for k in pair[0]}
        same, other = audit.prediction_agreement(audit.predictions(audit.split_logits(cfg, task, both, "test")), 2)
        sgd = dict(seeds=len(sgd_seeds), accuracy=float(np.median(score_states(cfg, task, pair[0], "test"))),
                   agree_same_init=same, agree_other_init=other)
    results = dict(experiment=cfg.name, policy=str(policy), seeds=seeds, best_of=args.best_of,
                   mean_path=mean.tolist(), rows=rows, sgd=sgd)
    text = table(results)
    emit(text, args.out)
    figures = [plot(results, figure(args, cfg.name, "temperature"))] if args.plots else []
    return dict(table=text, figures=figures, results=results)


def table(r: dict) -> str:
    n, b = len(r["seeds"]), r["best_of"]
    lines = [f"{r['experiment']}: the sampler's frontier, {r['policy']}, {n} held-out inits (mean path median "
             f"{np.median(r['mean_path']):.4f})", "",
             f"| latent std | one sample (median) | vs the mean path, per seed | best of {b} on the reward split | "
             f"vs the mean path, per seed | two samples of one init agree | samples of two inits agree |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in r["rows"]:
        lines.append(f"| {row['latent_std']:g} | {np.median(row['sample']):.4f} | {row['sample_vs_mean']} | "
                     f"{np.median(row['best']):.4f} | {row['best_vs_mean']} | {row['agree_same_init']:.4f} | "
                     f"{row['agree_other_init']:.4f} |")
    if r["sgd"]:
        s = r["sgd"]
        lines.append(f"| SGD, another data order ({s['seeds']} inits) | {s['accuracy']:.4f} | | | | "
                     f"{s['agree_same_init']:.4f} | {s['agree_other_init']:.4f} |")
    return "\n".join(lines)


def plot(r: dict, path) -> Path:
    from trainer import plots  # matplotlib: slow to import, only when figures are asked for

    agree = [row["agree_same_init"] for row in r["rows"]]
    lines = {"one sample": (agree, [np.median(row["sample"]) for row in r["rows"]]),
             f"best of {r['best_of']}": (agree, [np.median(row["best"]) for row in r["rows"]])}
    if r["sgd"]:
        lines["SGD, another data order"] = ([r["sgd"]["agree_same_init"]], [r["sgd"]["accuracy"]])
    stds = ", ".join(f"{row['latent_std']:g}" for row in r["rows"])
    return plots.curves({f"{r['experiment']}, latent std {stds} (right to left)": lines},
                        "accuracy against diversity of sampled nets", "two nets from one init agree on (test predictions)",
                        "test accuracy (median over inits)", path)
