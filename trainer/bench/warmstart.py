"""`python -m trainer.bench warmstart`: what a generated net is worth as a start for SGD.

From each held-out init, SGD with the zoo's recipe compressed to B steps (its learning-rate schedule decays over the B
steps), once from the init itself and once from the net the policy generates from it (its default output), at
B = 1/32 ... 1 of the zoo's budget. The anchor is SGD's full-budget accuracy from the same inits: the first B at which
the generated start reaches it is the speed-up a user gets (NiNo reports about 2x fewer steps).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from envs.models import reference_from_config
from envs.scoring import evaluate
from envs.tasks import task_from_config
from trainer.bench.common import (count, generated_policy, emit, figure, held_out_parser, held_out_seeds,
                                  paired_difference, seed_number)
from trainer.config import ConfigError, ExperimentConfig
from trainer.generator import WeightGenerator, init_states, unbatch
from trainer.zoo import sgd_steps, total_steps


def add_parser(sub) -> argparse.ArgumentParser:
    w = held_out_parser(sub, "warmstart", "SGD for B steps from the generated net vs from the init", seeds=16,
                        func=run, threads=1)
    w.add_argument("--policy", help="policy.safetensors (default: what `generate` uses, the GRPO policy where one was saved)")
    w.add_argument("--fractions", type=count, default=6, help="budgets 1/2^(N-1) .. 1 of the zoo's (default 6)")
    w.add_argument("--sample-seed", type=seed_number, default=0, help="seed of the policy's sampling noise (default 0)")
    return w


def run(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """SGD for B steps from the generated net against from the init, B = 1/2^(--fractions - 1) .. 1 of the zoo's."""
    cfg = cfgs[0]
    seeds = held_out_seeds(args, cfg)
    weight_generator = WeightGenerator.load(args.policy or generated_policy(cfg), cfg=cfg)
    task = task_from_config(cfg.task)
    fractions = [2.0 ** -k for k in range(args.fractions - 1, -1, -1)]
    r = warmstart(cfg, weight_generator, task, seeds, fractions, args.sample_seed)
    out = table(cfg.name, seeds, r)
    emit(out, args.out)
    figures = []
    if args.plots:
        from trainer import plots  # matplotlib: slow to import, only when figures are asked for

        xs = [x["fraction"] for x in r["rows"]]
        figures.append(plots.curves({"SGD for B steps": {
            start: (xs, [float(np.median(x[key])) for x in r["rows"]])
            for start, key in (("from the init", "init"), ("from the generated net", "generated"))}},
            f"{cfg.name}: warm start", "B / zoo budget", "test accuracy (median)",
            figure(args, cfg.name, "warmstart"), logx=True))
    return dict(table=out, figures=figures, results=r)


def sgd_from(cfg: ExperimentConfig, task, state: dict[str, torch.Tensor], seed: int, budget: int) -> float:
    """Test accuracy after `budget` steps of the zoo's recipe from `state` (minibatch order from `seed`, as the zoo's
    run from that init would draw it)."""
    model = reference_from_config(cfg.reference, task)
    model.load_state_dict(state)
    for _ in sgd_steps(cfg, model, task, seed if cfg.zoo.data_seed is None else cfg.zoo.data_seed, budget):
        pass
    return evaluate(model, task.test)[1]


def warmstart(cfg: ExperimentConfig, weight_generator: WeightGenerator, task, seeds: list[int], fractions: list[float],
              sample_seed: int = 0) -> dict:
    """Per budget fraction, per seed: test accuracy of SGD from the init and from the generated net."""
    inits = init_states(cfg, task, seeds)
    sampling = weight_generator.default_output == "samples"
    generated, _ = weight_generator.generate(inits, mean_only=not sampling, generator=torch.Generator().manual_seed(sample_seed),
                               trajectory=False)
    generated = {k: v.cpu() for k, v in generated.items()}
    total = total_steps(cfg, task)
    rows = []
    for f in fractions:
        budget = max(1, round(total * f))
        rows.append(dict(fraction=f, steps=budget,
                         init=[sgd_from(cfg, task, unbatch(inits, i), s, budget) for i, s in enumerate(seeds)],
                         generated=[sgd_from(cfg, task, unbatch(generated, i), s, budget)
                                    for i, s in enumerate(seeds)]))
    start = [evaluate(_loaded(cfg, task, unbatch(generated, i)), task.test)[1] for i in range(len(seeds))]
    return dict(total_steps=total, output="samples" if sampling else "mean path", generated_start=start, rows=rows)


def _loaded(cfg: ExperimentConfig, task, state: dict) -> torch.nn.Module:
    model = reference_from_config(cfg.reference, task)
    model.load_state_dict(state)
    return model


def first_reaching(rows: list[dict], target: float, key: str) -> float | None:
    """The smallest budget fraction whose median accuracy from `key` reaches `target` (None: none does)."""
    hit = [r["fraction"] for r in rows if np.median(r[key]) >= target]
    return min(hit) if hit else None


def table(name: str, seeds: list[int], r: dict) -> str:
    """`warmstart`'s results as markdown: per budget, median accuracy from either start and the per-seed difference."""
    full = next(x for x in r["rows"] if x["fraction"] == 1.0) if any(x["fraction"] == 1.0 for x in r["rows"]) else None
    target = float(np.median(full["init"])) if full else float("nan")
    lines = [f"{name}: SGD with the zoo's recipe compressed to B steps, from {len(seeds)} held-out inits "
             f"({seeds[0]}..{seeds[-1]}) and from the policy's {r['output']} generated from them (test accuracy "
             f"{np.median(r['generated_start']):.4f} before SGD); zoo budget {r['total_steps']} steps. Median test "
             f"accuracy; per seed: generated start minus init start.", "",
             "| B / zoo budget | steps | from the init | from the generated net | per seed |",
             "| --- | --- | --- | --- | --- |"]
    for x in r["rows"]:
        lines.append(f"| 1/{round(1 / x['fraction'])} | {x['steps']} | {np.median(x['init']):.4f} | "
                     f"{np.median(x['generated']):.4f} | {paired_difference(x['init'], x['generated'])} |")
    gen, init = first_reaching(r["rows"], target, "generated"), first_reaching(r["rows"], target, "init")
    lines += ["", f"Full-budget SGD from the init: {target:.4f}. The generated start reaches it at "
              + (f"1/{round(1 / gen)} of the budget ({1 / gen:.0f}x fewer steps)" if gen else "no budget measured")
              + (f"; the init at 1/{round(1 / init)}." if init else ".")]
    return "\n".join(lines)
