"""`python -m trainer.bench sensitivity`: how SGD's trained weights move when the init moves a little, against
another data order: how much of SGD's final is a smooth function of the init, the part imitation can learn."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from tqdm import tqdm

from envs.models import reference_from_config
from envs.tasks import task_from_config
from trainer.bench.common import emit, held_out_parser, held_out_seeds, non_negative
from trainer.config import ExperimentConfig
from trainer.zoo import sgd_steps


def add_parser(sub) -> argparse.ArgumentParser:
    se = held_out_parser(sub, "sensitivity", "how SGD's trained weights move when the init moves a little, against "
                                             "another data order", seeds=3, func=run, threads=1)
    se.add_argument("--eps", type=non_negative, nargs="+", default=[0.0001, 0.01, 0.1],
                    help="init perturbations, in units of each weight tensor's RMS (default 0.0001 0.01 0.1)")
    return se


def run(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """How SGD's trained weights depend on the init, per weight tensor: the zoo's recipe from held-out seeds, once as
    is, once with another data order, and once per `--eps` with every weight tensor of the init moved by eps x its RMS
    (Gaussian), the data order kept. Each is reported as |final - final as is| / |final as is - init| (the run's own
    move), averaged over seeds. What imitation can learn is the part of the final that varies smoothly with the init;
    where a tiny eps already moves the final as much as a new data order, little of it does."""
    cfg = cfgs[0]
    task = task_from_config(cfg.task)
    seeds = held_out_seeds(args, cfg)

    def train(seed: int, order: int, eps: float) -> tuple[dict, dict]:
        model = reference_from_config(cfg.reference, task, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1 and eps:
                    p.add_(eps * p.pow(2).mean().sqrt() * torch.randn(p.shape, generator=gen))
        init = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for _ in sgd_steps(cfg, model, task, order):
            pass
        return init, model.state_dict()

    columns = ["another data order"] + [f"init + {e:g} x RMS" for e in args.eps]
    changes = []  # per seed: key -> [change per column]
    for seed in tqdm(seeds, desc="bench sensitivity", disable=not sys.stderr.isatty()):
        order = seed if cfg.zoo.data_seed is None else cfg.zoo.data_seed
        init, final = train(seed, order, 0.0)
        others = [train(seed, order + 1, 0.0)[1]] + [train(seed, order, e)[1] for e in args.eps]
        keys = [k for k, v in init.items() if v.dim() > 1]
        changes.append({k: [float((o[k] - final[k]).norm() / (final[k] - init[k]).norm()) for o in others]
                        for k in keys})
    mean = {k: np.mean([c[k] for c in changes], axis=0) for k in changes[0]}
    lines = [f"{cfg.name} ({cfg.reference.family}{cfg.reference.widths}): |final - final| / |move| per weight tensor, "
             f"mean over held-out seeds {seeds[0]}..{seeds[-1]}; the zoo's recipe ({cfg.zoo.optimizer}, "
             f"lr {cfg.zoo.lr}, {cfg.zoo.epochs} epochs)", "",
             "| tensor | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    lines += [f"| {k} | " + " | ".join(f"{x:.3f}" for x in v) + " |" for k, v in mean.items()]
    table = "\n".join(lines)
    emit(table, args.out)
    return dict(table=table, figures=[], columns=columns, change={k: v.tolist() for k, v in mean.items()})
