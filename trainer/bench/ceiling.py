"""`python -m trainer.bench ceiling`: where the gap between the generator and SGD sits.

From each held-out init, four nets:
- the generator's: the policy's mean path, one policy for every init;
- the same policy fitted across fresh inits (`--amortised` steps of 8 inits each, their own seeds), with the same loss
  and gradient as below: what the policy could reach for every init at once by the exact gradient, with no estimator in
  between (GRPO's pathwise estimator, at its end, should be level with it);
- the same policy fitted to that init alone: Adam on all of the policy's parameters, the loss imitation's task loss
  (the train split's cross-entropy of the net the walk writes from the init, backpropagated through every step); the net
  is then finished as `generate` finishes it and scored at checkpoints of the fit;
- SGD with the zoo's recipe from the same init (its full budget).

The fitted net is the best the policy's walk can write for that one init. So "fitted minus generated" is the
amortisation gap (what one function of the init, shared by every init, gives up), and "SGD minus fitted" what the walk
cannot write for any one init (its reach). The fit is gradient descent on the task: a diagnostic, not a way to make
nets. A generator with no amortisation gap and a reach past SGD would be held back by nothing but its training.
"""

from __future__ import annotations

import argparse
from typing import Callable

import numpy as np
import torch

from envs.models import reference_from_config
from envs.tasks import Task, task_from_config
from trainer.bench.common import (count, emit, figure, generated_policy, held_out_parser, held_out_seeds,
                                  non_negative_count, paired_difference, positive)
from trainer.bench.warmstart import sgd_from
from trainer.config import ConfigError, ExperimentConfig
from trainer.generator import WeightGenerator, init_states, score_states, unbatch
from trainer.imitate import walk_loss
from trainer.zoo import total_steps


MAX_FIT_STEPS = 100_000


def add_parser(sub) -> argparse.ArgumentParser:
    c = held_out_parser(sub, "ceiling", "the generator against the same policy fitted to each init alone, and SGD: "
                                         "the amortisation gap and the walk's reach", seeds=8, func=run, threads=None)
    c.add_argument("--policy", help="policy.safetensors (default: what `generate` uses, the GRPO policy where one was saved)")
    c.add_argument("--steps", type=count, nargs="+", default=[25, 100, 400],
                   help="Adam steps of the fit at which the fitted net is scored (default 25 100 400)")
    c.add_argument("--lr", type=positive, default=1e-4, help="Adam's learning rate (default 1e-4)")
    c.add_argument("--batch", type=count, default=512, help="train-split examples per step (default 512)")
    c.add_argument("--amortised", type=non_negative_count, default=300,
                   help="Adam steps of the fit across fresh inits, 8 per step (default 300; 0: leave it out)")
    return c


def run(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    cfg = cfgs[0]
    seeds = held_out_seeds(args, cfg)
    steps = sorted(set(args.steps))
    for flag, n in (("--steps", steps[-1]), ("--amortised", args.amortised)):
        if n > MAX_FIT_STEPS:
            raise ConfigError(f"{flag} {n}: expected at most {MAX_FIT_STEPS} steps of fitting")
    weight_generator = WeightGenerator.load(args.policy or generated_policy(cfg), cfg=cfg)
    task = task_from_config(cfg.task)
    r = ceiling(cfg, weight_generator, task, seeds, steps, args.lr, args.batch, args.amortised)
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


def fit(weight_generator: WeightGenerator, task: Task, inits: Callable[[int], dict[str, torch.Tensor]],
        steps: list[int], lr: float, batch: int, seed: int, score: Callable[[], list[float]]) -> list[list[float]]:
    """Adam on all of the policy's parameters for steps[-1] steps, each on imitation's task loss (`walk_loss`: the
    cross-entropy on `batch` train-split examples of the nets the walk writes from `inits(step)`, through every step
    of the walk); `score()` after each of `steps`. The policy's parameters are put back afterwards."""
    policy, cfg = weight_generator.policy, weight_generator.cfg
    saved = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    template = reference_from_config(cfg.reference, task).to(weight_generator.device).eval()
    draw = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    out = []
    try:
        for step in range(1, steps[-1] + 1):
            loss = walk_loss(weight_generator, template, task, "train", inits(step), batch, draw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step in steps:
                out.append(score())
    finally:
        policy.load_state_dict(saved)
    return out


def mean_path_test(weight_generator: WeightGenerator, task: Task, inits: dict[str, torch.Tensor]) -> list[float]:
    """Test accuracy of the nets the policy's mean walk writes from `inits`, finished as `generate` finishes them."""
    with torch.no_grad():
        nets, _ = weight_generator.generate(inits, mean_only=True, trajectory=False)
    return score_states(weight_generator.cfg, task, nets, "test")


def fit_to_init(weight_generator: WeightGenerator, task: Task, init: dict[str, torch.Tensor], steps: list[int],
                lr: float, batch: int, seed: int) -> list[float]:
    """Test accuracy of the net the policy's mean walk writes from one init (key -> (1, *shape)) after each of `steps`
    Adam steps of `fit` on that init alone."""
    return [a[0] for a in fit(weight_generator, task, lambda _: init, steps, lr, batch, seed,
                              lambda: mean_path_test(weight_generator, task, init))]


AMORTISED_INITS = 8
AMORTISED_SEED_START = 7 * 10**12
"""the fit across inits draws its inits from here on: no zoo, GRPO or held-out seed is near"""


def fit_across_inits(weight_generator: WeightGenerator, task: Task, held_out: dict[str, torch.Tensor], steps: int,
                     lr: float, batch: int) -> list[float]:
    """Test accuracy on the `held_out` inits of the policy's mean path after `steps` Adam steps of `fit`, each on
    AMORTISED_INITS fresh inits."""
    cfg, b = weight_generator.cfg, AMORTISED_INITS

    def inits(step: int) -> dict[str, torch.Tensor]:
        return init_states(cfg, task, range(AMORTISED_SEED_START + (step - 1) * b, AMORTISED_SEED_START + step * b))

    return fit(weight_generator, task, inits, [steps], lr, batch, 0,
               lambda: mean_path_test(weight_generator, task, held_out))[0]


def ceiling(cfg: ExperimentConfig, weight_generator: WeightGenerator, task: Task, seeds: list[int], steps: list[int],
            lr: float, batch: int, amortised: int = 0) -> dict:
    """Per seed: the mean path's test accuracy, the policy's after `amortised` steps fitted across fresh inits (None:
    0 steps), the fitted net's at each of `steps`, and SGD's from the same init."""
    inits = init_states(cfg, task, seeds)
    generated = mean_path_test(weight_generator, task, inits)
    across = fit_across_inits(weight_generator, task, inits, amortised, lr, batch) if amortised else None
    fitted = [fit_to_init(weight_generator, task, {k: v[i:i + 1] for k, v in inits.items()}, steps, lr, batch, s)
              for i, s in enumerate(seeds)]
    budget = total_steps(cfg, task)
    sgd = [sgd_from(cfg, task, unbatch(inits, i), s, budget) for i, s in enumerate(seeds)]
    return dict(steps=steps, lr=lr, batch=batch, sgd_steps=budget, generated=generated, amortised=amortised,
                across=across, fitted=[list(f) for f in zip(*fitted)], sgd=sgd)


def table(name: str, seeds: list[int], r: dict) -> str:
    """`ceiling`'s results as markdown: per net, median test accuracy and per-seed differences."""
    lines = [f"{name}: {len(seeds)} held-out inits ({seeds[0]}..{seeds[-1]}). The policy's mean path, the same policy "
             f"fitted to each init alone (Adam, lr {r['lr']:g}, {r['batch']} train-split examples per step, through the "
             f"whole walk) and SGD with the zoo's recipe from the same init ({r['sgd_steps']} steps). Median test "
             f"accuracy; per seed against the generator and against SGD.", "",
             "| net | median | vs the generator, per seed | vs SGD, per seed |", "| --- | --- | --- | --- |",
             f"| the generator (mean path) | {np.median(r['generated']):.4f} | | "
             f"{paired_difference(r['sgd'], r['generated'])} |"]
    if r.get("across") is not None:
        lines.append(f"| fitted across fresh inits, {r['amortised']} steps of {AMORTISED_INITS} | "
                     f"{np.median(r['across']):.4f} | {paired_difference(r['generated'], r['across'])} | "
                     f"{paired_difference(r['sgd'], r['across'])} |")
    for s, f in zip(r["steps"], r["fitted"]):
        lines.append(f"| fitted to its init, {s} steps | {np.median(f):.4f} | {paired_difference(r['generated'], f)} | "
                     f"{paired_difference(r['sgd'], f)} |")
    lines.append(f"| SGD from the same init | {np.median(r['sgd']):.4f} | {paired_difference(r['generated'], r['sgd'])} "
                 f"| |")
    best = r["fitted"][-1]
    gap, reach = np.median(best) - np.median(r["generated"]), np.median(best) - np.median(r["sgd"])
    lines += ["", f"Amortisation gap (fitted at {r['steps'][-1]} steps minus the generator, medians): {gap * 100:+.2f} "
              f"pts. The walk's reach for one init against SGD: {reach * 100:+.2f} pts ("
              + ("the walk can write a net as good as SGD's from each init: the gap is in sharing one policy across inits)"
                 if reach >= 0 else "below SGD: the walk itself cannot write SGD's net)")]
    return "\n".join(lines)
