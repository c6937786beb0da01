"""`python -m trainer.bench generate`: test accuracy on held-out init seeds of random inits, the zoo's SGD runs and
each given policy, side by side; with `--speed`, also the time to a trained net against SGD's."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from envs.models import reference_from_config
from envs.scoring import evaluate
from envs.tasks import task_from_config
from trainer.audit import sgd_cache, sgd_from_seeds
from trainer.bench.common import (count, default_policy, generated_policy, emit, figure, held_out_parser, held_out_seeds,
                                  paired_difference, stopwatch, seed_number)
from trainer.config import ConfigError, ExperimentConfig
from trainer.device import resolve_device
from trainer.generator import (WeightGenerator, init_states, lowest_loss_draw, mean_path_accuracy, reference_layout,
                              score_states, split_scores)
from trainer.zoo import load_manifest, reference_name, sgd_steps, total_steps, zoo_at_width

SPEED_BATCH = 64  # nets per call in the batched generation timing


def add_parser(sub) -> argparse.ArgumentParser:
    g = held_out_parser(sub, "generate", "held-out accuracy: random init vs SGD vs policies", seeds=32, func=run)
    g.add_argument("--policy", action="append", help="policy.safetensors, repeatable (default: the imitation policy, then the GRPO policy where one was saved)")
    g.add_argument("--sample-seed", type=seed_number, default=0, help="seed of the policies' draws (default 0)")
    g.add_argument("--best-of", type=count, nargs="*", default=[4, 16], metavar="N",
                   help="also each policy's best of N draws per init, chosen by reward-split loss (what "
                        "`generate --best-of N` writes), for each N (default: 4 16; none: skip)")
    g.add_argument("--same-init-sgd", action="store_true",
                   help="also SGD with the zoo's recipe from these held-out inits (trained once, cached) and each "
                        "policy's gap to it per seed: how far from SGD's own outcome each generated net is")
    g.add_argument("--speed", action="store_true",
                   help="also time it: ms/net of the first policy's mean path (1 and 64 nets per call) against SGD's "
                        "time from held-out seeds to that policy's median test accuracy, interleaved in this process")
    g.add_argument("--speed-seeds", type=count, default=8, help="held-out seeds SGD runs from with --speed (default 8)")
    g.add_argument("--check-every", type=count, default=20, help="SGD steps between test-accuracy checks (default 20)")
    g.add_argument("--threads", type=count, default=None,
                   help="torch threads (default: the config's `threads`; the speed table is read per thread)")
    return g


def run(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """Median test accuracy over held-out seeds: random init, SGD (the zoo's final checkpoints), each policy's mean path."""
    cfg = cfgs[0]
    if cfg.env.objective != "plain":  # its SGD rows and every policy row are plain accuracy: refuse, not mislead
        raise ConfigError(f"config key env.objective: bench generate scores plain test accuracy, got "
                          f"{cfg.env.objective!r}; `python -m trainer.bench objectives --objective "
                          f"{cfg.env.objective}` scores nets as that objective deploys them")
    seeds = held_out_seeds(args, cfg)
    zoo = zoo_at_width(cfg)
    manifest = load_manifest(zoo.zoo_dir) if zoo is not None else None
    policy_paths = args.policy or list(dict.fromkeys([default_policy(cfg), generated_policy(cfg)]))  # imitation, then GRPO
    policies = {path: WeightGenerator.load(path, cfg=cfg) for path in policy_paths}
    task = task_from_config(cfg.task)
    random = score_states(cfg, task, init_states(cfg, task, seeds), "test")
    rows = [(f"random init ({cfg.reference.init})", "-", float(np.median(random)), "")]
    per_seed = {}  # name -> test accuracy per held-out seed (for the figure, and the same-init comparison)
    if manifest is not None:
        zoo_accs = [r["checkpoints"][-1]["test_accuracy"] for r in manifest["runs"]]
        rows.append((f"SGD ({len(manifest['runs'])} zoo runs, final checkpoint)", "-", float(np.median(zoo_accs)), ""))
        per_seed["SGD (zoo runs)"] = zoo_accs
    same_init = None  # SGD's test accuracy from each held-out init, where it is trained
    if manifest is None or args.same_init_sgd:  # SGD with the zoo's recipe from the held-out seeds themselves
        why = f"no zoo at {reference_name(cfg)} from {cfg.reference.init} inits" if manifest is None else "--same-init-sgd"
        print(f"bench: {why}; training SGD from the {len(seeds)} held-out seeds (cached in {sgd_cache(cfg)}) ...",
              file=sys.stderr, flush=True)
        t = time.perf_counter()
        one = dataclasses.replace(cfg, zoo=dataclasses.replace(cfg.zoo, widths=[]))
        same_init = score_states(cfg, task, sgd_from_seeds(one, seeds, reference_layout(cfg, task)[0].state_dict()), "test")
        rows.append((f"SGD from these {len(seeds)} held-out seeds (zoo recipe, trained here or cached; "
                     f"{time.perf_counter() - t:.0f} s)", "-", float(np.median(same_init)), ""))
        per_seed["SGD (held-out seeds)"] = same_init
    sgd = rows[-1][2]
    first, first_sampled = None, None
    for path, weight_generator in policies.items():
        t = time.perf_counter()
        accs, _ = mean_path_accuracy(weight_generator, task, seeds)
        seconds = time.perf_counter() - t
        rows.append((f"policy {path} (mean path, {seconds / len(seeds) * 1000:.0f} ms/net to generate and score)",
                     str(len(weight_generator.schedule) - 1), float(np.median(accs)),
                     "" if first is None else paired_difference(first, accs)))
        first = accs if first is None else first
        per_seed[f"{path} (mean path)"] = accs
        # The same noise for every policy (one generator seed, same shapes): paired draws, the first one's the base.
        test, loss = draw_scores(weight_generator, task, seeds, max([1, *args.best_of]), args.sample_seed)
        sampled = test[:, 0].tolist()
        rows.append((f"policy {path} (one draw per init: {cfg.generate.redraw:g} of the init re-drawn, sample seed "
                     f"{args.sample_seed}; per seed vs {'its mean path' if first_sampled is None else 'the first policy' + chr(39) + 's draws'})",
                     str(len(weight_generator.schedule) - 1), float(np.median(sampled)),
                     paired_difference(accs if first_sampled is None else first_sampled, sampled)))
        per_seed[f"{path} (draws)"] = sampled
        for n, best in best_of(test, loss, args.best_of).items():
            per_seed[f"{path} (best of {n} draws)"] = best
            rows.append((f"policy {path} (best of {n} draws per init by reward-split loss, what `generate` writes "
                         f"{'by default' if n == cfg.generate.best_of else f'with --best-of {n}'}; per seed vs "
                         f"its mean path)", str(len(weight_generator.schedule) - 1), float(np.median(best)),
                         paired_difference(accs, best)))
        first_sampled = sampled if first_sampled is None else first_sampled
    lines = [f"{cfg.name} ({reference_name(cfg)}): median test accuracy over {len(seeds)} held-out init seeds "
             f"{seeds[0]}..{seeds[-1]}", "",
             "| weights | steps | test accuracy (median) | / SGD | per seed vs the first policy |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {k} | {acc:.4f} | {acc / sgd:.3f} | {paired} |" for name, k, acc, paired in rows]
    if same_init is not None:
        lines += ["", same_init_table(per_seed, same_init)]
    if args.speed:
        path, weight_generator = next(iter(policies.items()))
        lines += ["", speed_table(args, cfg, weight_generator, path, task, seeds[:args.speed_seeds], float(np.median(first)))]
    table = "\n".join(lines)
    emit(table, args.out)
    figures = []
    if args.plots:
        from trainer import plots  # matplotlib: slow to import, only when figures are asked for

        # Random inits sit near 0.1, far left of the rest: on the axis they would squash the trained nets together.
        figures.append(plots.strips(per_seed, f"{cfg.name}: test accuracy per net; policies from held-out seeds "
                                    f"{seeds[0]}..{seeds[-1]}, SGD: the zoo's runs\n(random inits from those seeds: "
                                    f"median {np.median(random):.3f}, off the axis)", "test accuracy",
                                    figure(args, cfg.name, "generate")))
    return dict(table=table, figures=figures)


def same_init_table(per_seed: dict[str, list[float]], same_init: list[float]) -> str:
    """Each policy output's test accuracy minus SGD's from the same init, per seed (mean +- s.e., share better): how
    far a generated net is from what training its own init gives, the ceiling a further gain (GRPO's, say) meets
    before it passes SGD."""
    lines = ["Per seed against SGD from the same init (policy minus SGD):", "",
             "| policy output | minus SGD from the same init |", "| --- | --- |"]
    lines += [f"| {name} | {paired_difference(same_init, accs)} |" for name, accs in per_seed.items()
              if not name.startswith("SGD")]
    return "\n".join(lines)


def draw_scores(weight_generator: WeightGenerator, task, seeds: list[int], n: int, sample_seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """n draws per init (`WeightGenerator.draw`, one stream): test accuracy and reward-split loss, each (seeds, n)."""
    draws = weight_generator.draw(init_states(weight_generator.cfg, task, seeds), n,
                                  torch.Generator().manual_seed(sample_seed))
    test = np.array(score_states(weight_generator.cfg, task, draws, "test")).reshape(len(seeds), n)
    loss = split_scores(weight_generator.cfg, task, draws, "reward").loss.numpy().reshape(len(seeds), n)
    return test, loss


def best_of(test: np.ndarray, loss: np.ndarray, ns: list[int]) -> dict[int, list[float]]:
    """Test accuracy per init of the draw with the lowest reward-split loss among the first n, for each n in `ns`
    (what `generate --best-of n` keeps): a larger n only adds candidates."""
    return {n: test[np.arange(len(test)), lowest_loss_draw(torch.from_numpy(loss[:, :n])).numpy()].tolist()
            for n in sorted(set(ns))}


def sgd_time_to_accuracy(cfg: ExperimentConfig, task, seed: int, target: float, check_every: int) -> dict:
    """SGD with the zoo's recipe from the init of `seed` (minibatch order from the same seed, as a zoo run draws it)
    under a stopwatch that runs only while it trains: test accuracy is checked every `check_every` steps, off the
    clock, until it reaches `target`. Returns the steps, wall and CPU seconds, and whether it got there at all."""
    device = resolve_device(cfg.device)
    task = task.to(device)
    model = reference_from_config(cfg.reference, task, seed=seed).to(device)
    training = sgd_steps(cfg, model, task, seed if cfg.zoo.data_seed is None else cfg.zoo.data_seed)
    done, wall, cpu, total = 0, 0.0, 0.0, total_steps(cfg, task)
    while evaluate(model, task.test)[1] < target:
        if done == total:
            return dict(steps=done, wall_s=wall, cpu_s=cpu, reached=False)
        w, c = stopwatch(lambda: list(itertools.islice(training, check_every)), 1, device)
        done, wall, cpu = min(done + check_every, total), wall + w, cpu + c
    return dict(steps=done, wall_s=wall, cpu_s=cpu, reached=True)


def speed_table(args: argparse.Namespace, cfg: ExperimentConfig, weight_generator, path: str, task, seeds: list[int],
                target: float) -> str:
    """Time to a trained net: the policy's mean path one net at a time and SPEED_BATCH at a time, against SGD from the
    held-out `seeds` to the policy's median test accuracy `target`; all interleaved in this process, one repeat per
    SGD seed, medians reported."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or 1)  # generation and SGD both timed on one thread unless asked otherwise
    try:
        batch = init_states(cfg, task, range(args.seed_start, args.seed_start + SPEED_BATCH))
        ones = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(len(seeds))]
        for fn in (lambda: weight_generator.generate(ones[0], mean_only=True, trajectory=False),
                   lambda: weight_generator.generate(batch, mean_only=True, trajectory=False)):
            fn()  # warm-up: first-call costs are not rates
        one, many, sgd = [], [], []
        for seed in tqdm(seeds, desc="speed: SGD to equal accuracy and generation, interleaved"):
            sgd.append(sgd_time_to_accuracy(cfg, task, seed, target, args.check_every))
            one.append(stopwatch(lambda: [weight_generator.generate(o, mean_only=True, trajectory=False) for o in ones], len(ones),
                                 weight_generator.device))
            many.append(stopwatch(lambda: weight_generator.generate(batch, mean_only=True, trajectory=False), SPEED_BATCH, weight_generator.device))
    finally:
        torch.set_num_threads(threads)
    sgd_wall, sgd_cpu = (float(np.median([r[k] for r in sgd])) for k in ("wall_s", "cpu_s"))
    reached = sum(r["reached"] for r in sgd)

    def ratio(sgd_s: float, gen_s: float) -> str:
        return f"{sgd_s / gen_s:.0f}x" if gen_s > 0 else "-"

    lines = [f"Speed on {weight_generator.device}: {args.threads or 1} torch thread(s), {os.cpu_count()} CPUs, 1-min load average "
             f"{os.getloadavg()[0]:.1f}; medians of {len(seeds)} interleaved repeats. SGD: the zoo's recipe from held-out "
             f"seeds {seeds[0]}..{seeds[-1]} until test accuracy >= {target:.4f} (the policy's median), checked every "
             f"{args.check_every} steps off the clock; {reached}/{len(seeds)} reached it (the recipe runs "
             f"{total_steps(cfg, task)} steps).", "",
             "| method | nets per call | ms/net (wall) | ms/net (CPU) | SGD steps | SGD time / this (wall) | (CPU) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, n, times in ((f"policy {path} (mean path, {len(weight_generator.schedule) - 1} steps)", 1, one),
                           ("same, batched", SPEED_BATCH, many)):
        w, c = (float(np.median([t[i] for t in times])) for i in (0, 1))
        lines.append(f"| {name} | {n} | {w * 1000:.2f} | {c * 1000:.2f} | | {ratio(sgd_wall, w)} | {ratio(sgd_cpu, c)} |")
    lines.append(f"| SGD ({cfg.zoo.optimizer}, batch {cfg.zoo.batch_size}) to equal test accuracy | 1 | "
                 f"{sgd_wall * 1000:.1f} | {sgd_cpu * 1000:.1f} | {np.median([r['steps'] for r in sgd]):.0f} | 1x | 1x |")
    return "\n".join(lines)
