"""`python -m trainer.bench objectives`: generated nets against the user's alternatives on objectives no zoo run had.

Per objective (`env.objective`: quantized, pruned, noisy; their parameters from the config's `env` section or `--set`),
on held-out init seeds, every net scored on that objective on the test split, paired per seed:

- SGD with the zoo's recipe from the held-out inits, then deployed as the objective says (post-training quantisation,
  magnitude pruning, or just noisy inputs);
- the same SGD nets after a short fine-tune for the objective, timed: quantisation-aware training (straight-through
  quantised weights in the forward pass), pruning then fine-tuning the kept weights (the mask fixed), or training on
  noisy inputs;
- the imitation policy's nets;
- the GRPO policy trained on that objective (by default `artifacts/runs/<experiment>-grpo-<objective>/`, made by
  `python -m trainer.grpo --set env.objective=<objective> --name <experiment>-grpo-<objective>`).

Each row also gives the nets' plain test accuracy, so what the objective costs is visible.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from envs.models import reference_from_config
from envs.objectives import OBJECTIVES, Objective
from envs.tasks import task_from_config
from trainer import paths
from trainer.audit import sgd_cache, sgd_from_seeds
from trainer.bench.common import (count, default_policy, emit, figure, held_out_parser, held_out_seeds,
                                  paired_difference, seed_number)
from trainer.checkpoints import policy_file
from trainer.config import ConfigError, ExperimentConfig
from trainer.generator import WeightGenerator, init_states, reference_layout, score_states, unbatch

FINETUNE_LR = 0.1  # the fine-tune's learning rate, as a share of the zoo recipe's peak rate


def add_parser(sub) -> argparse.ArgumentParser:
    o = held_out_parser(sub, "objectives", "quantised, sparse, noisy: SGD then deployed (+ fine-tune) vs policies",
                        seeds=32, func=run, threads=1)
    o.add_argument("--objective", nargs="+", choices=OBJECTIVES[1:], default=list(OBJECTIVES[1:]),
                   help="objectives to compare on (default: all three)")
    o.add_argument("--policy", help="the imitation policy (default: artifacts/runs/<experiment>-imitate/)")
    o.add_argument("--grpo", action="append", default=[], metavar="OBJECTIVE=POLICY",
                   help="the GRPO policy (file or run folder) for an objective (default: "
                        "artifacts/runs/<experiment>-grpo-<objective>/)")
    o.add_argument("--finetune-epochs", type=count, default=1,
                   help="epochs of the SGD nets' fine-tune for the objective (default 1)")
    o.add_argument("--sample-seed", type=seed_number, default=0, help="seed of a sampling policy's noise (default 0)")
    return o


def grpo_policies(args: argparse.Namespace, cfg: ExperimentConfig) -> dict[str, Path]:
    given = {}
    for item in args.grpo:
        name, sep, path = item.partition("=")
        if not sep or name not in OBJECTIVES[1:]:
            raise ConfigError(f"--grpo {item}: expected OBJECTIVE=POLICY with OBJECTIVE one of "
                              f"{', '.join(OBJECTIVES[1:])}")
        file = policy_file(path)  # a run folder names its policy, as everywhere else
        if not file.is_file():
            raise ConfigError(f"--grpo {item}: {file} not found")
        given[name] = file
    return {o: given.get(o, paths.grpo_run(cfg.name, o) / "policy.safetensors") for o in args.objective}


def run(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    cfg = cfgs[0]
    seeds = held_out_seeds(args, cfg)
    grpo = grpo_policies(args, cfg)
    task = task_from_config(cfg.task)
    imitation = WeightGenerator.load(args.policy or default_policy(cfg), cfg=cfg)
    objectives = {o: Objective.of(dataclasses.replace(cfg.env, objective=o)) for o in args.objective}
    policies = {}
    for o, path in grpo.items():  # checked before any work: a policy trained on other settings is not this objective
        if path.is_file():
            weight_generator = WeightGenerator.load(path, cfg=cfg)
            trained = Objective.of(WeightGenerator.load(path).cfg.env)
            if trained != objectives[o]:
                raise ConfigError(f"{path}: trained on {trained}, not on {objectives[o]} (pass the same --set "
                                  f"env.* as its run)")
            spec = json.loads(path.with_suffix(".json").read_text())
            policies[o] = (weight_generator, spec.get("wall_s"), spec.get("grpo_wall_s"))
    print(f"bench: SGD from the {len(seeds)} held-out seeds (zoo recipe, cached in {sgd_cache(cfg)}) ...",
          file=sys.stderr, flush=True)
    template = reference_layout(cfg, task)[0].state_dict()
    one = dataclasses.replace(cfg, zoo=dataclasses.replace(cfg.zoo, widths=[]))
    sgd = sgd_from_seeds(one, seeds, template)
    inits = init_states(cfg, task, seeds)
    gen = torch.Generator().manual_seed(args.sample_seed)
    imitated = generated(imitation, inits, gen)
    sections, per_objective = [], {}
    plain_sgd = score_states(cfg, task, sgd, "test")
    for name, objective in objectives.items():
        t = time.perf_counter()
        tuned = {k: v.clone() for k, v in sgd.items()}
        for i, s in enumerate(seeds):
            state = finetune(cfg, task, unbatch(sgd, i), objective, args.finetune_epochs, s)
            for k in tuned:
                tuned[k][i] = state[k]
        tune_s = (time.perf_counter() - t) / len(seeds)
        rows = {"SGD, then " + DEPLOY[name]: sgd,
                f"SGD, then {FINETUNE[name]} ({args.finetune_epochs} epoch, {tune_s * 1000:.0f} ms/net)": tuned,
                "imitation policy": imitated}
        if name in policies:
            weight_generator, wall, chain = policies[name]
            label = "GRPO policy on this objective"
            if wall:  # started from another GRPO policy: the whole chain's GRPO time too
                chained = (chain or 0) > wall + 1
                since = f"; {chain / 60:.1f} min from imitation, with the GRPO run it started from" if chained else ""
                label += f" ({wall / 60:.1f} min of GRPO{since})"
            rows[label] = generated(weight_generator, inits, torch.Generator().manual_seed(args.sample_seed))
        results = {label: (score_states(cfg, task, nets, "test", objective),
                           plain_sgd if nets is sgd else score_states(cfg, task, nets, "test"))
                   for label, nets in rows.items()}
        per_objective[name] = results
        base_label = next(iter(results))
        imitation_acc = results["imitation policy"][0]
        lines = [f"### {objective.describe()} ({name})", "",
                 "| nets | on the objective (median) | plain accuracy (median) | per seed vs SGD then deployed | "
                 "per seed vs the imitation policy |", "| --- | --- | --- | --- | --- |"]
        for label, (acc, plain) in results.items():
            lines.append(f"| {label} | {np.median(acc):.4f} | {np.median(plain):.4f} | "
                         f"{'' if label == base_label else paired_difference(results[base_label][0], acc)} | "
                         f"{'' if label == 'imitation policy' else paired_difference(imitation_acc, acc)} |")
        if name not in policies:
            lines.append(f"| GRPO policy on this objective | not trained: `python -m trainer.grpo --set "
                         f"env.objective={name} --name {cfg.name}-grpo-{name}` | | | |")
        lines.append(f"\nSGD's own loss to {DEPLOY[name]}: "
                     f"{paired_difference(plain_sgd, results[base_label][0])}")
        sections.append("\n".join(lines))
    table = "\n\n".join([f"{cfg.name}: nets from {len(seeds)} held-out init seeds {seeds[0]}..{seeds[-1]}, test split, "
                         f"each scored on the objective"] + sections)
    emit(table, args.out)
    figures = []
    if args.plots:
        from trainer import plots  # matplotlib: slow to import, only when figures are asked for

        figures.append(plots.bars(
            {objectives[o].describe(): {label.split(" (")[0]: float(np.median(acc)) for label, (acc, _) in r.items()}
             for o, r in per_objective.items()},
            f"{cfg.name}: median test accuracy on each objective, {len(seeds)} held-out inits", "test accuracy",
            figure(args, cfg.name, "objectives")))
    return dict(table=table, figures=figures, results=per_objective)


DEPLOY = {"quantized": "post-training quantisation", "pruned": "magnitude pruning", "noisy": "noisy inputs"}
FINETUNE = {"quantized": "quantisation-aware fine-tune", "pruned": "pruning + fine-tune of the kept weights",
            "noisy": "fine-tune on noisy inputs"}


def generated(weight_generator: WeightGenerator, inits: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The policy's default output from each init (its mean path, or one sample for a generative policy)."""
    final, _ = weight_generator.generate(inits, mean_only=weight_generator.default_output != "samples", generator=gen, trajectory=False)
    return {k: v.cpu() for k, v in final.items()}


def finetune(cfg: ExperimentConfig, task, state: dict[str, torch.Tensor], objective: Objective, epochs: int,
             seed: int) -> dict[str, torch.Tensor]:
    """What a user would do instead: the zoo's optimizer at FINETUNE_LR of its peak rate, cosine-decayed over
    `epochs`, training the net as the objective deploys it. quantized: the forward pass sees the quantised weights
    and the gradient passes through the rounding and the max-based scale (QAT, by `envs.objectives.quantize`);
    pruned: the net is pruned once and only the kept weights train; noisy: every minibatch gets fresh input noise.
    Returns the fine-tuned weights (pruned ones with their zeros)."""
    model = reference_from_config(cfg.reference, task)
    model.load_state_dict(state)
    params = dict(model.named_parameters())
    mask = None
    if objective.name == "pruned":
        pruned = objective.weights({k: v.detach()[None] for k, v in params.items()})
        mask = {k: (pruned[k][0] != 0).float() for k in params if pruned[k][0].dim() >= 2}
        with torch.no_grad():
            for k, m in mask.items():
                params[k].mul_(m)
    zoo_cfg = cfg.zoo
    opt = torch.optim.SGD(params.values(), lr=zoo_cfg.lr * FINETUNE_LR, momentum=zoo_cfg.momentum)
    per_epoch = len(task.train) // zoo_cfg.batch_size
    total = per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * s / total)))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(task.train), generator=gen)
        for b in range(per_epoch):
            idx = perm[b * zoo_cfg.batch_size:(b + 1) * zoo_cfg.batch_size]
            x = task.train.x[idx]
            if objective.name == "noisy":
                x = x + torch.randn(x.shape, generator=gen) * objective.noise_std
            p = dict(params)
            if objective.name == "quantized":  # the deployed weights, differentiable as `quantize` is (LSQ-style)
                p = {k: v[0] for k, v in objective.weights({k: v[None] for k, v in params.items()}).items()}
            elif mask is not None:
                p = {k: v * mask[k] if k in mask else v for k, v in params.items()}
            loss = F.cross_entropy(torch.func.functional_call(model, p, (x,)), task.train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if mask is not None:
        out.update({k: out[k] * m for k, m in mask.items()})
    return out
