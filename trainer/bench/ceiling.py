"""`python -m trainer.bench ceiling`: where the gap between the generator and SGD sits.

From each held-out init, three nets:
- the generator's: the policy's mean path, one policy for every init;
- the same policy fitted to that init alone: Adam on all of the policy's parameters, the loss the train split's
  cross-entropy of the net the mean walk writes from the init, backpropagated through every step of the walk; the net
  is then finished as `generate` finishes it and scored at checkpoints of the fit;
- SGD with the zoo's recipe from the same init (its full budget).

The fitted net is the best the policy's walk can write for that one init. So "fitted minus generated" is the
amortisation gap (what one function of the init, shared by every init, gives up), and "SGD minus fitted" what the walk
cannot write for any one init (its reach). The fit is gradient descent on the task: a diagnostic, not a way to make
nets. A generator with no amortisation gap and a reach past SGD would be held back by nothing but its training.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from envs.models import reference_from_config
from envs.scoring import batched_logits
from envs.tasks import Task, task_from_config
from trainer.bench.common import (count, emit, figure, generated_policy, held_out_parser, held_out_seeds,
                                  paired_difference, positive)
from trainer.bench.warmstart import sgd_from
from trainer.config import ConfigError, ExperimentConfig
from trainer.generator import WeightGenerator, init_states, score_states, unbatch
from trainer.zoo import total_steps


def add_parser(sub) -> argparse.ArgumentParser:
    c = held_out_parser(sub, "ceiling", "the generator against the same policy fitted to each init alone, and SGD: "
                                         "the amortisation gap and the walk's reach", seeds=8, func=run, threads=None)
    c.add_argument("--policy", help="policy.safetensors (default: what `generate` uses, the GRPO policy where one was saved)")
    c.add_argument("--steps", type=count, nargs="+", default=[25, 100, 400],
                   help="Adam steps of the fit at which the fitted net is scored (default 25 100 400)")
    c.add_argument("--lr", type=positive, default=1e-4, help="Adam's learning rate (default 1e-4)")
    c.add_argument("--batch", type=count, default=512, help="train-split examples per step (default 512)")
    return c


def run(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    cfg = cfgs[0]
    seeds = held_out_seeds(args, cfg)
    steps = sorted(set(args.steps))
    if steps[-1] > 100_000:
        raise ConfigError(f"--steps {steps[-1]}: expected at most 100000 steps of fitting per init")
    weight_generator = WeightGenerator.load(args.policy or generated_policy(cfg), cfg=cfg)
    task = task_from_config(cfg.task)
    r = ceiling(cfg, weight_generator, task, seeds, steps, args.lr, args.batch)
    out = table(cfg.name, seeds, r)
    emit(out, args.out)
    figures = []
    if args.plots:
        from trainer import plots  # matplotlib: slow to import, only when figures are asked for

        xs = [0] + steps
        figures.append(plots.curves({"test accuracy (median)": {
            "the policy fitted to each init": (xs, [float(np.median(r["generated"]))]
                                               + [float(np.median(f)) for f in r["fitted"]]),
            "SGD from the same inits": (xs, [float(np.median(r["sgd"]))] * len(xs))}},
            f"{cfg.name}: the generator fitted to one init", "Adam steps of the fit", "test accuracy (median)",
            figure(args, cfg.name, "ceiling")))
    return dict(table=out, figures=figures, results=r)


def fit_to_init(weight_generator: WeightGenerator, task: Task, init: dict[str, torch.Tensor], steps: list[int],
                lr: float, batch: int, seed: int) -> list[float]:
    """Test accuracy of the net the policy's mean walk writes from one init (key -> (1, *shape)) after each of `steps`
    Adam steps on the train split's cross-entropy of that net, the gradient through every step of the walk. The
    policy's parameters are put back afterwards."""
    policy, cfg = weight_generator.policy, weight_generator.cfg
    saved = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    model = reference_from_config(cfg.reference, task).to(weight_generator.device).eval()
    x, y = task.train.x, task.train.y
    draw = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    out = []
    try:
        for step in range(1, steps[-1] + 1):
            idx = torch.randint(len(y), (min(batch, len(y)),), generator=draw)
            net, _ = weight_generator.generate(init, mean_only=True, grad=True, trajectory=False)
            logits = batched_logits(model, net, x[idx].to(weight_generator.device))[0]
            loss = F.cross_entropy(logits, y[idx].to(logits.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step in steps:
                with torch.no_grad():
                    net, _ = weight_generator.generate(init, mean_only=True, trajectory=False)
                out.append(score_states(cfg, task, net, "test")[0])
    finally:
        policy.load_state_dict(saved)
    return out


def ceiling(cfg: ExperimentConfig, weight_generator: WeightGenerator, task: Task, seeds: list[int], steps: list[int],
            lr: float, batch: int) -> dict:
    """Per seed: the mean path's test accuracy, the fitted net's at each of `steps`, and SGD's from the same init."""
    inits = init_states(cfg, task, seeds)
    with torch.no_grad():
        generated, _ = weight_generator.generate(inits, mean_only=True, trajectory=False)
    fitted = [fit_to_init(weight_generator, task, {k: v[i:i + 1] for k, v in inits.items()}, steps, lr, batch, s)
              for i, s in enumerate(seeds)]
    budget = total_steps(cfg, task)
    sgd = [sgd_from(cfg, task, unbatch(inits, i), s, budget) for i, s in enumerate(seeds)]
    return dict(steps=steps, lr=lr, batch=batch, sgd_steps=budget,
                generated=score_states(cfg, task, generated, "test"),
                fitted=[list(f) for f in zip(*fitted)], sgd=sgd)


def table(name: str, seeds: list[int], r: dict) -> str:
    """`ceiling`'s results as markdown: per net, median test accuracy and per-seed differences."""
    lines = [f"{name}: {len(seeds)} held-out inits ({seeds[0]}..{seeds[-1]}). The policy's mean path, the same policy "
             f"fitted to each init alone (Adam, lr {r['lr']:g}, {r['batch']} train-split examples per step, through the "
             f"whole walk) and SGD with the zoo's recipe from the same init ({r['sgd_steps']} steps). Median test "
             f"accuracy; per seed against the generator and against SGD.", "",
             "| net | median | vs the generator, per seed | vs SGD, per seed |", "| --- | --- | --- | --- |",
             f"| the generator (mean path) | {np.median(r['generated']):.4f} | | "
             f"{paired_difference(r['sgd'], r['generated'])} |"]
    for s, f in zip(r["steps"], r["fitted"]):
        lines.append(f"| fitted to its init, {s} steps | {np.median(f):.4f} | {paired_difference(r['generated'], f)} | "
                     f"{paired_difference(r['sgd'], f)} |")
    lines.append(f"| SGD from the same init | {np.median(r['sgd']):.4f} | {paired_difference(r['generated'], r['sgd'])} "
                 f"| |")
    best = r["fitted"][-1]
    gap, reach = np.median(best) - np.median(r["generated"]), np.median(best) - np.median(r["sgd"])
    lines += ["", f"Amortisation gap (fitted at {r['steps'][-1]} steps minus the generator, medians): {gap * 100:+.2f} "
              f"pts. The walk's reach for one init against SGD: {reach * 100:+.2f} pts ("
              + ("the walk can write a net past SGD's from each init: the gap is in sharing one policy across inits)"
                 if reach >= 0 else "below SGD: the walk itself cannot write SGD's net)")]
    return "\n".join(lines)
