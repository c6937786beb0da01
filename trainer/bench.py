"""`python -m trainer.bench`: measurements printed as markdown tables.

`rollout`: evaluations per second of the scoring paths (a load_state_dict loop, batched vmap, the Ray pool).
`generate`: test accuracy on held-out init seeds of random inits, the zoo's SGD runs and each given policy, side by side.
`search`: what black-box search buys per evaluation: antithetic evolution strategies directly on the weights of a
policy's generated nets (GRPO's signal with no policy in between), rewarded on the fixed reward split vs fresh batches.
`audit`: are generated nets new, or copies of zoo checkpoints, and do they land where SGD from the same init lands?
`warmstart`: SGD for B steps from the generated net against from the init, B = 1/32 .. 1 of the zoo's budget.
`report`: generate, audit and rollout on one experiment -> docs/RESULTS.md with the tables, figures and commands.
Every subcommand takes `--plots DIR` to write PNG figures next to its table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from envs.models import reference_from_config
from envs.scoring import Scores, evaluate, score_batch, stack_weights
from envs.tasks import task_from_config
from rollout.pool import RolloutPool
from trainer.checkpoints import save_json
from trainer.cli import guarded, use_threads
from trainer.config import ConfigError, ExperimentConfig, load_config
from trainer.device import resolve_device

ROLLOUT_CONFIGS = ["configs/mnist_mlp.yaml", "configs/mnist_cnn.yaml"]


@dataclass
class Row:
    experiment: str
    method: str
    cores: int
    seconds: list[float]  # wall time per batch of G weight sets, one per repeat
    groups: int
    workers: int = 0  # Ray pool size; 0 for the in-process paths

    @property
    def evals_per_s(self) -> float:
        return self.groups / statistics.median(self.seconds)


def timed(fn: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def bench_rollout(cfg: ExperimentConfig, groups: int, repeats: int, workers: list[int], split: str) -> list[Row]:
    """Time each scoring path on the same G weight sets (default inits from seeds cfg.seed + i); the paths must agree."""
    task = task_from_config(cfg.task)
    data = task.split(split)
    model = reference_from_config(cfg.reference, task, seed=cfg.seed)
    sets = [reference_from_config(cfg.reference, task, seed=cfg.seed + i).state_dict() for i in range(groups)]
    stacked = stack_weights(sets, model.state_dict())
    chunk = cfg.rollout.chunk_size
    threads = torch.get_num_threads()

    def loop() -> list[int]:
        correct = []
        for state in sets:
            model.load_state_dict(state)
            correct.append(round(evaluate(model, data)[1] * len(data)))
        return correct

    def vmap() -> Scores:
        return score_batch(model, stacked, data, chunk)

    score_batch(model, {k: v[:2] for k, v in stacked.items()}, data, chunk)  # warm-up: first-call costs are not rates
    rows, results = [], {}
    for method, fn in (("loop of load_state_dict + forward", loop), (f"vmap, chunks of {chunk}", vmap)):
        seconds, out = timed(fn, repeats)
        rows.append(Row(cfg.name, method, threads, seconds, groups))
        results[method] = out if isinstance(out, list) else out.correct.tolist()
    for n in workers:
        t = time.perf_counter()
        with RolloutPool(cfg, num_workers=n, threads=1) as pool:  # a rate per core: one thread per worker
            startup = time.perf_counter() - t
            pool.score({k: v[:n] for k, v in stacked.items()})  # warm-up
            seconds, out = timed(lambda: pool.score(stacked), repeats)
        method = f"Ray pool, {n} worker{'s' if n > 1 else ''} (startup {startup:.1f} s, excluded)"
        rows.append(Row(cfg.name, method, n, seconds, groups, workers=n))
        results[method] = out.correct.tolist()
    first = next(iter(results.values()))
    bad = [m for m, r in results.items() if r != first]
    assert not bad, f"{cfg.name}: correct counts of {bad} differ from the loop's"
    if torch.cuda.is_available() and resolve_device(cfg.device).type == "cuda":
        rows += gpu_rows(cfg, model, stacked, data, groups, repeats, workers, first)
    return rows


def gpu_rows(cfg: ExperimentConfig, model: torch.nn.Module, stacked: dict, data, groups: int, repeats: int,
             workers: list[int], expected: list[int]) -> list[Row]:
    """The vmap path on the experiment's GPU (fp32 with TF32 matmuls, then bf16 autocast), and the Ray pool with
    actors on GPU shares. A row's method names how its correct counts compare with the CPU loop's: TF32 and bf16 may
    flip examples that sit on a decision boundary."""
    device = resolve_device(cfg.device)
    gpu_model, gpu_data = copy.deepcopy(model).to(device), data.to(device)

    def agreement(correct: list[int]) -> str:
        diff = [abs(a - b) for a, b in zip(correct, expected)]
        return "counts = CPU" if not any(diff) else f"{sum(d > 0 for d in diff)}/{len(diff)} sets differ, max {max(diff)}"

    def on_gpu(precision: str) -> Callable[[], Scores]:
        def fn() -> Scores:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = score_batch(gpu_model, stacked, gpu_data, cfg.rollout.chunk_size)
            torch.cuda.synchronize(device)
            return out
        return fn

    rows = []
    for precision in ("fp32", "bf16"):
        fn = on_gpu(precision)
        fn()  # warm-up: CUDA context, kernels
        seconds, out = timed(fn, repeats)
        rows.append(Row(cfg.name, f"vmap on {device} ({precision}{', TF32' if precision == 'fp32' else ''}; "
                                  f"{agreement(out.correct.tolist())})", 0, seconds, groups))
    share = cfg.rollout.gpus_per_worker or 1.0 / max(workers)
    for n in workers:
        with RolloutPool(cfg, num_workers=n, gpus_per_worker=share) as pool:
            pool.score({k: v[:n] for k, v in stacked.items()})  # warm-up
            seconds, out = timed(lambda: pool.score(stacked), repeats)
        rows.append(Row(cfg.name, f"Ray pool, {n} worker(s) on {share:g} GPU each ({agreement(out.correct.tolist())})",
                        n, seconds, groups, workers=n))
    return rows


def emit(table: str, out: str | None) -> None:
    """Print a result table, and write it to `out` too when given."""
    print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(table + "\n")


def figure(args: argparse.Namespace, experiment: str, name: str) -> Path:
    """Where a subcommand's figure goes: <--plots>/<experiment>-<name>.png, so experiments share one folder."""
    return Path(args.plots) / f"{experiment}-{name}.png"


def held_out_seeds(args: argparse.Namespace, cfg: ExperimentConfig) -> list[int]:
    """--seed-start .. + --seeds, checked to be held out: no zoo run started from any of them."""
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    zoo = range(cfg.zoo.seed, cfg.zoo.seed + cfg.zoo.runs)
    if not seeds:
        raise ConfigError(f"--seeds {args.seeds}: need at least one held-out seed")
    if set(seeds) & set(zoo):
        raise ConfigError(f"held-out seeds {seeds[0]}..{seeds[-1]} overlap the zoo's seeds {zoo[0]}..{zoo[-1]} "
                          f"(choose another --seed-start)")
    return seeds


def default_policy(cfg: ExperimentConfig) -> str:
    return f"artifacts/runs/{cfg.name}-imitate/policy.safetensors"


def rollout_table(rows: list[Row], n_examples: dict[str, int]) -> str:
    lines = ["| experiment | split examples | method | cores | evals/s (median) | vs loop | vs 1 worker |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        same = [x for x in rows if x.experiment == r.experiment]
        loop, one = same[0], next((x for x in same if x.workers == 1), None)
        vs_one = f"{r.evals_per_s / one.evals_per_s:.2f}x" if one and r.workers else ""
        lines.append(f"| {r.experiment} | {n_examples[r.experiment]} | {r.method} | {r.cores} | {r.evals_per_s:.2f} | "
                     f"{r.evals_per_s / loop.evals_per_s:.2f}x | {vs_one} |")
    return "\n".join(lines)


def run_rollout(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    load0 = os.getloadavg()[0]
    rows, n_examples = [], {}
    for cfg in cfgs:
        print(f"benchmarking {cfg.name} ...", file=sys.stderr, flush=True)
        rows += bench_rollout(cfg, args.groups, args.repeats, args.workers, args.split)
        n_examples[cfg.name] = len(task_from_config(cfg.task).split(args.split))
    header = (f"Scoring throughput on the {args.split} split: G={args.groups} weight sets per batch (default inits), "
              f"median of {args.repeats} repeats; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()} per "
              f"process, 1-min load average {load0:.1f} before / {os.getloadavg()[0]:.1f} after.")
    table = header + "\n\n" + rollout_table(rows, n_examples)
    emit(table, args.out)
    figures = []
    if args.plots:
        from trainer import plots

        panels = {f"{e} ({n_examples[e]} examples)": {r.method.split(" (")[0]: r.evals_per_s for r in rows
                                                      if r.experiment == e} for e in n_examples}
        figures.append(plots.bars(panels, f"Scoring throughput, G = {args.groups} weight sets per batch",
                                  "evaluations / s (median of repeats)",
                                  figure(args, "-".join(n_examples), "rollout")))
    return dict(table=table, figures=figures)


def paired_difference(base: list[float], other: list[float]) -> str:
    """Per-seed comparison of two policies on the same seeds: mean difference in points with its standard error, and
    the share of seeds where `other` is better, e.g. "+2.05 +- 0.16 pts, better on 94%"."""
    import numpy as np

    d = (np.asarray(other) - np.asarray(base)) * 100
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{d.mean():+.2f} +- {se:.2f} pts, better on {(d > 0).mean():.0%}"


def run_generate(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """Median test accuracy over held-out seeds: random init, SGD (the zoo's final checkpoints), each policy's mean path."""
    import numpy as np

    from trainer.pipeline import WeightGenerator, init_states, mean_path_accuracy, sample_accuracy, score_states
    from trainer.zoo import load_manifest, reference_name, zoo_at_width

    cfg = cfgs[0]
    seeds = held_out_seeds(args, cfg)
    zoo = zoo_at_width(cfg)
    manifest = load_manifest(zoo.zoo_dir) if zoo is not None else None
    policies = {path: WeightGenerator.load(path, cfg=cfg) for path in args.policy or [default_policy(cfg)]}
    task = task_from_config(cfg.task)
    random = score_states(cfg, task, init_states(cfg, task, seeds), "test")
    rows = [("random init (PyTorch default)", "-", float(np.median(random)), "")]
    if manifest is not None:
        zoo_accs = [r["checkpoints"][-1]["test_accuracy"] for r in manifest["runs"]]
        rows.append((f"SGD ({len(manifest['runs'])} zoo runs, final checkpoint)", "-", float(np.median(zoo_accs)), ""))
        per_seed = {"SGD (zoo runs)": zoo_accs}
    else:  # a width no zoo run has: SGD with the zoo's recipe from the held-out seeds themselves (cached)
        from trainer import audit
        from trainer.pipeline import reference_layout

        print(f"bench: no zoo at {reference_name(cfg)}; training SGD from the {len(seeds)} held-out seeds "
              f"(cached in {audit.sgd_cache(cfg)}) ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        one = dataclasses.replace(cfg, zoo=dataclasses.replace(cfg.zoo, widths=[]))
        sgd_nets = audit.sgd_from_seeds(one, seeds, reference_layout(cfg, task)[0].state_dict())
        zoo_accs = score_states(cfg, task, sgd_nets, "test")
        rows.append((f"SGD from these {len(seeds)} held-out seeds (zoo recipe, trained here; "
                     f"{time.perf_counter() - t:.0f} s)", "-", float(np.median(zoo_accs)), ""))
        per_seed = {"SGD (held-out seeds)": zoo_accs}
    sgd = rows[-1][2]
    first = None
    for path, wg in policies.items():
        t = time.perf_counter()
        accs, _ = mean_path_accuracy(wg, task, seeds)
        seconds = time.perf_counter() - t
        rows.append((f"policy {path} (mean path, {seconds / len(seeds) * 1000:.0f} ms/net to generate and score)",
                     str(len(wg.schedule) - 1), float(np.median(accs)),
                     "" if first is None else paired_difference(first, accs)))
        first = accs if first is None else first
        per_seed[f"{Path(path).parent.name} (mean path)"] = accs
        sampled = sample_accuracy(wg, task, seeds, torch.Generator().manual_seed(args.sample_seed))
        rows.append((f"policy {path} (one sample per init, sample seed {args.sample_seed}"
                     f"{'; the default output' if wg.default_output == 'samples' else ''})",
                     str(len(wg.schedule) - 1), float(np.median(sampled)), paired_difference(first, sampled)))
        per_seed[f"{Path(path).parent.name} (samples)"] = sampled
    lines = [f"{cfg.name} ({reference_name(cfg)}): median test accuracy over {len(seeds)} held-out init seeds "
             f"{seeds[0]}..{seeds[-1]}", "",
             "| weights | steps | test accuracy (median) | / SGD | per seed vs the first policy |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {k} | {acc:.4f} | {acc / sgd:.3f} | {paired} |" for name, k, acc, paired in rows]
    if args.speed:
        path, wg = next(iter(policies.items()))
        lines += ["", speed_table(args, cfg, wg, path, task, seeds[:args.speed_seeds], float(np.median(first)))]
    table = "\n".join(lines)
    emit(table, args.out)
    figures = []
    if args.plots:
        from trainer import plots

        # Random inits sit near 0.1, far left of the rest: on the axis they would squash the trained nets together.
        figures.append(plots.strips(per_seed, f"{cfg.name}: test accuracy per net; policies from held-out seeds "
                                    f"{seeds[0]}..{seeds[-1]}, SGD: the zoo's runs\n(random inits from those seeds: "
                                    f"median {np.median(random):.3f}, off the axis)", "test accuracy",
                                    figure(args, cfg.name, "generate")))
    return dict(table=table, figures=figures)


SPEED_BATCH = 64  # nets per call in the batched generation timing


def stopwatch(fn: Callable[[], object], nets: int, device: torch.device = torch.device("cpu")) -> tuple[float, float]:
    """(wall, CPU) seconds per net of one call of `fn`. CPU time counts only this process, so on a shared machine it
    tells the work apart from the waiting. On CUDA the clock stops when the device has finished."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - wall) / nets, (time.process_time() - cpu) / nets


def sgd_time_to_accuracy(cfg: ExperimentConfig, task, seed: int, target: float, check_every: int) -> dict:
    """SGD with the zoo's recipe from the init of `seed` (minibatch order from the same seed, as a zoo run draws it)
    under a stopwatch that runs only while it trains: test accuracy is checked every `check_every` steps, off the
    clock, until it reaches `target`. Returns the steps, wall and CPU seconds, and whether it got there at all."""
    import itertools

    from trainer.zoo import sgd_steps, total_steps

    device = resolve_device(cfg.device)
    task = task.to(device)
    model = reference_from_config(cfg.reference, task, seed=seed).to(device)
    run = sgd_steps(cfg, model, task, seed if cfg.zoo.data_seed is None else cfg.zoo.data_seed)
    done, wall, cpu, total = 0, 0.0, 0.0, total_steps(cfg, task)
    while evaluate(model, task.test)[1] < target:
        if done == total:
            return dict(steps=done, wall_s=wall, cpu_s=cpu, reached=False)
        w, c = stopwatch(lambda: list(itertools.islice(run, check_every)), 1, device)
        done, wall, cpu = min(done + check_every, total), wall + w, cpu + c
    return dict(steps=done, wall_s=wall, cpu_s=cpu, reached=True)


def speed_table(args: argparse.Namespace, cfg: ExperimentConfig, wg, path: str, task, seeds: list[int],
                target: float) -> str:
    """Time to a trained net: the policy's mean path one net at a time and SPEED_BATCH at a time, against SGD from the
    held-out `seeds` to the policy's median test accuracy `target`; all interleaved in this process, one repeat per
    SGD seed, medians reported."""
    import numpy as np

    from trainer.pipeline import init_states
    from trainer.zoo import total_steps

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or 1)  # generation and SGD both timed on one thread unless asked otherwise
    try:
        batch = init_states(cfg, task, range(args.seed_start, args.seed_start + SPEED_BATCH))
        ones = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(len(seeds))]
        for fn in (lambda: wg.generate(ones[0], mean_only=True, trajectory=False),
                   lambda: wg.generate(batch, mean_only=True, trajectory=False)):
            fn()  # warm-up: first-call costs are not rates
        one, many, sgd = [], [], []
        for seed in tqdm(seeds, desc="speed: SGD to equal accuracy and generation, interleaved"):
            sgd.append(sgd_time_to_accuracy(cfg, task, seed, target, args.check_every))
            one.append(stopwatch(lambda: [wg.generate(o, mean_only=True, trajectory=False) for o in ones], len(ones),
                                 wg.device))
            many.append(stopwatch(lambda: wg.generate(batch, mean_only=True, trajectory=False), SPEED_BATCH, wg.device))
    finally:
        torch.set_num_threads(threads)
    sgd_wall, sgd_cpu = (float(np.median([r[k] for r in sgd])) for k in ("wall_s", "cpu_s"))
    reached = sum(r["reached"] for r in sgd)

    def ratio(sgd_s: float, gen_s: float) -> str:
        return f"{sgd_s / gen_s:.0f}x" if gen_s > 0 else "-"

    lines = [f"Speed on {wg.device}: {args.threads or 1} torch thread(s), {os.cpu_count()} CPUs, 1-min load average "
             f"{os.getloadavg()[0]:.1f}; medians of {len(seeds)} interleaved repeats. SGD: the zoo's recipe from held-out "
             f"seeds {seeds[0]}..{seeds[-1]} until test accuracy >= {target:.4f} (the policy's median), checked every "
             f"{args.check_every} steps off the clock; {reached}/{len(seeds)} reached it (the recipe runs "
             f"{total_steps(cfg, task)} steps).", "",
             "| method | nets per call | ms/net (wall) | ms/net (CPU) | SGD steps | SGD time / this (wall) | (CPU) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, n, times in ((f"policy {path} (mean path, {len(wg.schedule) - 1} steps)", 1, one),
                           ("same, batched", SPEED_BATCH, many)):
        w, c = (float(np.median([t[i] for t in times])) for i in (0, 1))
        lines.append(f"| {name} | {n} | {w * 1000:.2f} | {c * 1000:.2f} | | {ratio(sgd_wall, w)} | {ratio(sgd_cpu, c)} |")
    lines.append(f"| SGD ({cfg.zoo.optimizer}, batch {cfg.zoo.batch_size}) to equal test accuracy | 1 | "
                 f"{sgd_wall * 1000:.1f} | {sgd_cpu * 1000:.1f} | {np.median([r['steps'] for r in sgd]):.0f} | 1x | 1x |")
    return "\n".join(lines)


def es_search(model: torch.nn.Module, start: dict[str, torch.Tensor], batches: Callable[[int], object],
              monitor: dict[str, object], iterations: int, pairs: int, sigma: float, lr: float, seed: int,
              every: int, desc: str = "es search") -> list[dict[str, float]]:
    """Antithetic ES on S nets at once (`start`: key -> (S, *shape)), Adam on the estimated gradient of minus the
    cross-entropy on `batches(iteration)`. Noise is sigma x each tensor's RMS; Adam steps lr x sigma x that RMS.
    Returns, every `every` iterations and at the end, evaluations so far and the median accuracy on each `monitor`
    split.
    """
    import numpy as np

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


def run_search(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """ES on the mean-path nets of held-out seeds, twice from the same start: rewards on the fixed reward split vs a
    fresh random batch of as many train-split examples every iteration; reward-split and test accuracy side by side."""
    from envs.tasks import Split
    from trainer.pipeline import WeightGenerator, mean_path_accuracy

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
        from trainer import plots

        figures.append(plots.curves(curves, f"{cfg.name}: ES on generated nets' weights (median of {len(seeds)} nets)",
                                    "evaluations per net", "accuracy", figure(args, cfg.name, "search")))
    return dict(table=table, figures=figures)


def _spread(values) -> str:
    """median [10th percentile, 90th percentile]"""
    import numpy as np

    return f"{np.median(values):.3f} [{np.quantile(values, 0.1):.3f}, {np.quantile(values, 0.9):.3f}]"


def audit_table(r: dict) -> str:
    """The audit's results (`trainer.audit.audit_nets` plus run info) as markdown."""
    import numpy as np

    nov, fid, noise = r["novelty"], r["fidelity"], r["noise_baseline"]
    zoo_median = float(np.median(nov["zoo"]["distance"]))
    seeds = r["seeds"]
    lines = [f"{r['experiment']}: audit of the nets ({r.get('output', 'the mean path')}) of {r['policy']} from {len(seeds)} held-out init seeds "
             f"{seeds[0]}..{seeds[-1]}, against the final checkpoints of the zoo's {r['zoo_runs']} runs and SGD with "
             f"the zoo's recipe from the same inits; {r['test_examples']} test examples. Each cell: median "
             f"[10th, 90th percentile] over nets. Distances are L2 over all weights, after aligning hidden units to "
             f"each zoo net by weight matching.", "",
             "| nets | to the nearest zoo net | / zoo-to-zoo median | unaligned | max IoU of test errors with a "
             "zoo net | test accuracy |", "| --- | --- | --- | --- | --- | --- |"]
    for key, name, acc in (("generated", "generated (policy mean path)", "generated"),
                           ("sgd", "SGD from the same held-out inits", "sgd"),
                           ("zoo", "zoo nets, leave-one-out", "zoo")):
        d = nov[key]["distance"]
        lines.append(f"| {name} | {_spread(d)} | {np.median(d) / zoo_median:.2f} | {_spread(nov[key]['unaligned'])} | "
                     f"{_spread(nov[key]['max_iou'])} | {_spread(r['accuracy'][acc])} |")
    lines += ["", "| noise baseline | test accuracy | vs generated, per net |", "| --- | --- | --- |",
              f"| generated | {_spread(noise['generated'])} | |",
              f"| its nearest zoo net + Gaussian noise at the generated net's distance | {_spread(noise['noise'])} | "
              f"{paired_difference(noise['generated'], noise['noise'])} |",
              f"| its nearest zoo net | {_spread(noise['nearest_zoo'])} | "
              f"{paired_difference(noise['generated'], noise['nearest_zoo'])} |"]
    lines += ["", "| fidelity to the init | prediction agreement, same init | other inits (mean) | L2 distance / "
              "SGD(i)'s travel from init(i), same init | other inits (aligned, mean) |",
              "| --- | --- | --- | --- | --- |",
              f"| generated(i) vs SGD(i) | {_spread(fid['agree_generated_same_init'])} | "
              f"{_spread(fid['agree_generated_other_init'])} | {_spread(fid['generated_to_sgd_same_init'])} | "
              f"{_spread(fid['generated_to_sgd_other_init'])} |",
              f"| SGD(i) with another data order vs SGD(i) | {_spread(fid['agree_sgd_same_init'])} | "
              f"{_spread(fid['agree_sgd_other_init'])} | {_spread(fid['sgd_to_sgd_same_init'])} | "
              f"{_spread(fid['sgd_to_sgd_other_init'])} |"]
    if "agree_generated_two_draws" in fid:
        lines.append(f"| a second sample from init(i) vs generated(i) | {_spread(fid['agree_generated_two_draws'])} "
                     f"| | | |")
    lines += [
              "", f"SGD's travel from the init: {_spread(fid['sgd_travel'])} (L2).", "",
              "| ensemble of k nets (averaged softmax) | generated (mean test accuracy) | SGD, same inits | "
              "ensembles |",
              "| --- | --- | --- | --- |"]
    for k, e in r["ensembles"].items():
        lines.append(f"| k = {k} | {np.mean(e['generated']):.4f} | {np.mean(e['sgd']):.4f} | {len(e['sgd'])} |")
    return "\n".join(lines)


def run_audit(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """Generated nets from held-out inits against the zoo (novelty) and against SGD from the same inits (fidelity)."""
    from trainer import audit
    from trainer.pipeline import WeightGenerator, init_states, reference_layout

    cfg = cfgs[0]
    seeds = held_out_seeds(args, cfg)
    policy = args.policy or default_policy(cfg)
    wg = WeightGenerator.load(policy, cfg=cfg)
    task = task_from_config(cfg.task)
    template, layout = reference_layout(cfg, task)
    zoo = audit.zoo_finals(cfg, template.state_dict())
    t = time.perf_counter()
    inits = init_states(cfg, task, seeds)
    sampling = not args.mean and wg.default_output == "samples"
    gen = torch.Generator().manual_seed(args.sample_seed)
    generated, _ = wg.generate(inits, mean_only=not sampling, generator=gen, trajectory=False)
    second = wg.generate(inits, generator=gen, trajectory=False)[0] if sampling else None
    print(f"audit: training SGD from {len(seeds)} held-out inits, twice (cached in {audit.sgd_cache(cfg)}) ...",
          file=sys.stderr, flush=True)
    sgd = audit.sgd_from_seeds(cfg, seeds, template.state_dict())
    replicate = audit.sgd_from_seeds(cfg, seeds, template.state_dict(), replicate=True)
    print(f"audit: aligning and scoring against {next(iter(zoo.values())).shape[0]} zoo nets ...", file=sys.stderr,
          flush=True)
    results = dict(experiment=cfg.name, policy=str(policy), seeds=seeds,
                   output="one sample per init" if sampling else "the mean path",
                   **audit.audit_nets(cfg, task, layout, zoo, inits, generated, sgd, replicate, second=second))
    results["seconds"] = time.perf_counter() - t
    json_path = Path(args.json or Path(args.out or f"artifacts/bench/{cfg.name}/audit.md").with_suffix(".json"))
    save_json(json_path, results)
    table = audit_table(results)
    emit(table, args.out)
    print(f"audit: {results['seconds']:.0f} s; per-net numbers in {json_path}", file=sys.stderr)
    figures = []
    if args.plots:
        from trainer import plots

        nov = results["novelty"]
        rows = {"generated -> nearest zoo net": "generated", "SGD, held-out inits -> nearest zoo net": "sgd",
                "zoo net -> nearest other zoo net": "zoo"}
        figures.append(plots.histograms({k: nov[v]["distance"] for k, v in rows.items()},
                                        f"{cfg.name}: novelty in weights (hidden units aligned)", "L2 distance",
                                        figure(args, cfg.name, "audit-distance")))
        figures.append(plots.histograms({k: nov[v]["max_iou"] for k, v in rows.items()},
                                        f"{cfg.name}: novelty in behaviour",
                                        "highest IoU of test errors with a zoo net",
                                        figure(args, cfg.name, "audit-iou")))
        ens = results["ensembles"]
        ks = [int(k) for k in ens]
        import numpy as np

        figures.append(plots.curves({"averaged softmax of k nets": {
            name: (ks, [float(np.mean(ens[str(k)][key])) for k in ks])
            for name, key in (("generated", "generated"), ("SGD, same inits", "sgd"))}},
            f"{cfg.name}: ensembles", "k nets", "test accuracy", figure(args, cfg.name, "audit-ensembles"), logx=True))
    return dict(table=table, figures=figures, results=results)


def run_report(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    from trainer import report

    return report.run_report(args, cfgs)


# The exploration modes `bench grpo` compares, each as overrides of the experiment's config with the settings it was
# tuned with (docs/HISTORY.md).
GRPO_MODES = {
    "iid": ["grpo.noise=iid", "grpo.lr=3e-4", "grpo.cosine=false", "grpo.beta_kl=0.1", "grpo.reward=accuracy",
            "grpo.reward_batch=fixed"],
    "units": ["grpo.noise=units", "grpo.latent_std=0.3", "grpo.lr=1e-3", "grpo.cosine=true", "grpo.beta_kl=0.01",
              "grpo.reward=neg_loss", "grpo.reward_batch=fresh"],
}


def run_grpo(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """Held-out gain over the imitation policy against the evaluations GRPO spent, per exploration mode, over
    `--runs` independent runs (their own sampling seed and init seeds): mean +- s.e. over runs of each run's mean
    per-seed gain, at `--points` budgets along each run."""
    import json

    import numpy as np

    from rollout.pool import RolloutPool
    from trainer.grpo import GRPOTrainer
    from trainer.pipeline import WeightGenerator, mean_path_accuracy

    cfg = cfgs[0]
    seeds = held_out_seeds(args, cfg)
    policy = args.policy or default_policy(cfg)
    unknown = [m for m in args.modes if m not in GRPO_MODES]
    if unknown:
        raise ConfigError(f"--modes: unknown mode {unknown[0]!r} (valid: {', '.join(GRPO_MODES)})")
    task = task_from_config(cfg.task)
    base = np.asarray(mean_path_accuracy(WeightGenerator.load(policy, cfg=cfg), task, seeds)[0])
    config = (args.config or args.default_configs)[0]
    checkpoints = sorted({max(1, round(args.iterations * (i + 1) / args.points)) for i in range(args.points)})
    curves: dict[str, dict[int, list[float]]] = {}
    walls: dict[str, dict[int, list[float]]] = {}
    agreement: dict[str, list[tuple[float, float]]] = {}  # per mode, at the end of each run: (same init, across)
    imitation_agreement = None
    with RolloutPool(cfg) as pool:
        for mode in args.modes:
            curves[mode], walls[mode] = {0: [0.0] * args.runs}, {0: [0.0] * args.runs}
            for run in range(args.runs):
                run_cfg = load_config(config, args.overrides + GRPO_MODES[mode] + [
                    f"seed={run}", f"grpo.seed_start={100000 * (run + 1)}", f"grpo.iterations={args.iterations}",
                    f"grpo.eval_every={args.iterations}", f"grpo.save_every={args.iterations}"])
                run_dir = Path("artifacts/bench") / cfg.name / f"grpo-{mode}-{run}"
                trainer = GRPOTrainer(run_cfg, policy, run_dir, progress=False)
                trainer.pool = pool
                for it in tqdm(checkpoints, desc=f"grpo {mode} run {run}"):
                    trainer.cfg.grpo.iterations = it
                    trainer.train()
                    gain = (np.asarray(mean_path_accuracy(trainer.wg, task, seeds)[0]) - base).mean() * 100
                    curves[mode].setdefault(trainer.evaluations, []).append(float(gain))
                    walls[mode].setdefault(trainer.evaluations, []).append(trainer.elapsed)
                end = trainer.evaluate(trainer.wg)
                agreement.setdefault(mode, []).append((end["same"], end["across"]))
                if imitation_agreement is None:
                    imitation_agreement = trainer.evaluate(trainer.imitation)
    lines = [f"{cfg.name}: GRPO from {policy}; held-out gain of the mean path over the imitation policy (test accuracy, "
             f"mean over seeds {seeds[0]}..{seeds[-1]}, imitation median {np.median(base):.4f}); mean +- s.e. over "
             f"{args.runs} runs", "", "| mode | evaluations | GRPO wall (s, mean) | gain (pts) | per run |",
             "| --- | --- | --- | --- | --- |"]
    summary = {}
    for mode, curve in curves.items():
        xs, ys, es = [], [], []
        for evals, gains in sorted(curve.items()):
            g = np.asarray(gains)
            se = g.std(ddof=1) / np.sqrt(len(g)) if len(g) > 1 else float("nan")
            xs.append(evals), ys.append(g.mean()), es.append(se)
            lines.append(f"| {mode} | {evals} | {np.mean(walls[mode][evals]):.0f} | {g.mean():+.2f} +- {se:.2f} | "
                         f"{', '.join(f'{v:+.2f}' for v in g)} |")
        summary[mode] = (xs, ys, es)
    lines += ["", "Diversity: the share of test predictions on which nets sampled from one init (and from different "
              "inits) agree, at the end of each run (`diversity/*` in TensorBoard): imitation policy "
              f"{imitation_agreement['same']:.4f} ({imitation_agreement['across']:.4f})"]
    lines += [f"- {mode}: " + ", ".join(f"{a:.4f} ({b:.4f})" for a, b in agreement[mode]) for mode in agreement]
    table = "\n".join(lines)
    emit(table, args.out)
    figures = []
    if args.plots:
        from trainer import plots

        figures.append(plots.curves({cfg.name: summary}, f"{cfg.name}: GRPO's held-out gain over imitation "
                                    f"({len(seeds)} seeds; mean +- s.e. over {args.runs} runs)",
                                    "evaluations spent (generated nets scored)", "gain (test accuracy points)",
                                    figure(args, cfg.name, "grpo")))
    command = "python -m trainer.bench " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("bench.py") else \
        f"python -m trainer.bench grpo --config {config} --runs {args.runs} --iterations {args.iterations}"
    results = Path(f"artifacts/bench/{cfg.name}/grpo.json")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"command": command, "table": table, "figures": [str(f) for f in figures],
                                   "curves": {m: dict(zip(["evaluations", "gain", "se"], v))
                                              for m, v in summary.items()}}, indent=1, default=float))
    return dict(table=table, figures=figures)


def run_gradient(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """How well GRPO's policy-gradient estimate points, per exploration mode: the cosine between the estimate from
    `n` iterations' rollouts (B x G evaluations each, rewards: minus the cross-entropy on a fresh train-split batch as
    large as the reward split) and the exact gradient of the mean path's expected reward (minus the train-split
    cross-entropy, backpropagated through the walk over `--inits` fresh inits), in the parameters each mode trains."""
    import numpy as np
    import torch.nn.functional as F

    from envs.scoring import batched_logits
    from envs.tasks import Split
    from policy.sampling import gaussian_log_prob
    from trainer.algos import compute_grpo_advantages
    from trainer.grpo import GRPOTrainer
    from trainer.pipeline import init_states

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
        t = GRPOTrainer(load_config(config, args.overrides + GRPO_MODES[mode]), policy, Path("artifacts/bench"),
                        progress=False)
        params = [p for group in t.opt.param_groups for p in group["params"]]

        def gradient(loss: torch.Tensor) -> torch.Tensor:
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])

        seeds = list(range(3 * 10**9, 3 * 10**9 + args.inits))  # never a zoo, held-out or GRPO seed
        t.policy.eval()
        final, _ = t.wg.generate(init_states(t.cfg, task, seeds), mean_only=True, grad=True)
        ce = torch.stack([F.cross_entropy(batched_logits(model, final, train.x[i:i + 4096]).flatten(0, 1),
                                          train.y[i:i + 4096].repeat(args.inits), reduction="sum")
                          for i in range(0, len(train), 4096)]).sum() / (len(train) * args.inits)
        exact = -gradient(ce)  # the ascent direction of the reward
        gen = torch.Generator().manual_seed(cfg.seed)
        estimates = []
        for it in tqdm(range(args.iterations), desc=f"gradient {mode}"):
            t.iteration = it
            ro = t.collect_rollouts()
            idx = torch.randperm(len(train), generator=gen)[:n_reward]
            ro.rewards = score_batch(model, ro.final, Split(train.x[idx], train.y[idx])).neg_loss().float().view(
                t.cfg.grpo.inits_per_iter, t.cfg.grpo.group_size)
            adv, _ = compute_grpo_advantages(ro.rewards, t.cfg.grpo.scale_by_std)
            rows = torch.arange(adv.numel())
            groups, row_of = torch.unique(rows // t.cfg.grpo.group_size, return_inverse=True)
            loss = 0.0
            for step in ro.steps:  # GRPO's surrogate at ratio 1: minus the advantage-weighted log-prob of each draw
                (mean, std), _, drawn = t.step_distributions(step, rows, groups, row_of)
                if drawn is not None:
                    loss = loss - (adv.flatten() * gaussian_log_prob(drawn, mean, std)).mean()
            estimates.append(-gradient(loss))
        est = torch.stack(estimates)
        cos = [float(np.mean([F.cosine_similarity(est[i:i + n].mean(0), exact, dim=0).item()
                              for i in range(0, len(est) - n + 1, n)])) for n in averaged]
        lines.append(f"| {mode} | {sum(p.numel() for p in params)} | " + " | ".join(f"{c:.3f}" for c in cos) + " |")
    table = "\n".join(lines)
    emit(table, args.out)
    return dict(table=table, figures=[])


def run_precision(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """bf16 autocast against fp32 scoring, on what GRPO ranks: a group of G sampled nets from each held-out init,
    scored on the reward split on the experiment's device. Per group: the Spearman rank correlation of the two
    precisions' rewards (accuracy and negative loss), whether they pick the same best net, and the largest accuracy
    difference; the table gives medians and means over the groups."""
    import numpy as np
    from scipy.stats import spearmanr

    from trainer.pipeline import WeightGenerator, init_states

    cfg = cfgs[0]
    task = task_from_config(cfg.task)
    seeds = held_out_seeds(args, cfg)
    wg = WeightGenerator.load(args.policy or default_policy(cfg), cfg=cfg)
    device = resolve_device(cfg.device)
    model, split = reference_from_config(cfg.reference, task).to(device), task.split("reward").to(device)
    gen = torch.Generator(device=wg.device).manual_seed(cfg.seed)

    def rho(a: torch.Tensor, b: torch.Tensor) -> float:  # nan when a group's rewards are all equal
        return float(spearmanr(a.numpy(), b.numpy()).statistic) if a.unique().numel() > 1 else float("nan")

    groups = []
    for seed in tqdm(seeds, desc="bench precision", disable=not sys.stderr.isatty()):
        states, _ = wg.rollout(init_states(cfg, task, [seed]), args.group_size, gen)
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


def run_fit(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """The policy's one step from zoo runs' checkpoint `--start` straight to their end, per tensor: token-unit MSE of
    its mean against the final checkpoint, beside the identity's (no move) and their ratio. On runs the policy was
    imitated on it says how well it fits; on the zoo's other runs, whether what it fitted carries over."""
    import numpy as np

    from policy.sampling import walk
    from trainer.generate import parse_seeds
    from trainer.pairs import ZooPairs
    from trainer.pipeline import WeightGenerator, reference_layout
    from trainer.zoo import load_manifest

    path = args.policy or default_policy(cfgs[0])
    wg = WeightGenerator.load(path, args.overrides)  # its own experiment (its zoo, the runs it imitated), with --set
    cfg, tok = wg.cfg, wg.tokenizer
    runs = parse_seeds(args.runs, "--runs", "run")
    template, layout = reference_layout(cfg, task_from_config(cfg.task))
    manifest = load_manifest(cfg.zoo_dir)
    built, checkpoints = {r["run"] for r in manifest["runs"]}, len(manifest["runs"][0]["checkpoints"])
    if not set(runs) <= built:
        raise ConfigError(f"--runs {args.runs}: {cfg.zoo_dir} holds runs {min(built)}..{max(built)}")
    if not 0 <= args.start < checkpoints - 1:
        raise ConfigError(f"--start {args.start}: expected a checkpoint index in [0, {checkpoints - 2}]")
    pairs = ZooPairs(cfg.zoo_dir, runs, expected=template.state_dict())
    imitated = set(range(cfg.imitate.train_runs or cfg.zoo.runs))

    def tokens(c: int) -> dict[str, torch.Tensor]:
        return tok.encode({k: v[:, c].to(wg.device) for k, v in pairs.weights.items() if k in layout.shapes})

    start, end = tokens(args.start), tokens(-1)
    with torch.no_grad():
        step, _ = walk(wg.policy, start, [pairs.grid[args.start], 1.0], mean_only=True)
    rows = []
    for t in layout.tensors:
        ident = float((start[t.key] - end[t.key]).double().square().mean())
        policy = float((step[t.key] - end[t.key]).double().square().mean())
        rows.append(dict(key=t.key, kind=t.kind, identity=ident, policy=policy,
                         ratio=policy / ident if ident > 0 else float("nan")))
    lines = [f"{cfg.name}: one step of {path} from checkpoint {args.start} (t = {pairs.grid[args.start]:.3f}) to the "
             f"end, zoo runs {args.runs} ({len(imitated & set(runs))} of {len(runs)} among the runs it was imitated "
             f"on); token-unit MSE against the final checkpoint", "",
             "| tensor | kind | identity (no move) | policy | policy / identity |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['key']} | {r['kind']} | {r['identity']:.4f} | {r['policy']:.4f} | {r['ratio']:.2f} |"
              for r in rows]
    weights = [r["ratio"] for r in rows if r["kind"] == "weight"]
    lines.append(f"| all weight tensors | weight | | | median {np.median(weights):.2f} |")
    table = "\n".join(lines)
    emit(table, args.out)
    return dict(table=table, figures=[], rows=rows)


def run_sensitivity(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """How SGD's trained weights depend on the init, per weight tensor: the zoo's recipe from held-out seeds, once as
    is, once with another data order, and once per `--eps` with every weight tensor of the init moved by eps x its RMS
    (Gaussian), the data order kept. Each is reported as |final - final as is| / |final as is - init| (the run's own
    move), averaged over seeds. What imitation can learn is the part of the final that varies smoothly with the init;
    where a tiny eps already moves the final as much as a new data order, little of it does."""
    import numpy as np

    from trainer.zoo import sgd_steps

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


def run_warmstart(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """SGD for B steps from the generated net against from the init (`trainer.warmstart`)."""
    import numpy as np

    from trainer import warmstart
    from trainer.pipeline import WeightGenerator

    cfg = cfgs[0]
    seeds = held_out_seeds(args, cfg)
    if args.fractions < 1:
        raise ConfigError(f"--fractions {args.fractions}: expected at least 1 budget")
    wg = WeightGenerator.load(args.policy or default_policy(cfg), cfg=cfg)
    task = task_from_config(cfg.task)
    fractions = [2.0 ** -k for k in range(args.fractions - 1, -1, -1)]
    r = warmstart.warmstart(cfg, wg, task, seeds, fractions, args.sample_seed)
    table = warmstart.table(cfg.name, seeds, r, paired_difference)
    emit(table, args.out)
    figures = []
    if args.plots:
        from trainer import plots

        xs = [x["fraction"] for x in r["rows"]]
        figures.append(plots.curves({"SGD for B steps": {
            start: (xs, [float(np.median(x[key])) for x in r["rows"]])
            for start, key in (("from the init", "init"), ("from the generated net", "generated"))}},
            f"{cfg.name}: warm start", "B / zoo budget", "test accuracy (median)",
            figure(args, cfg.name, "warmstart"), logx=True))
    return dict(table=table, figures=figures, results=r)


def held_out_parser(sub, name: str, help: str, seeds: int, func: Callable, **defaults) -> argparse.ArgumentParser:
    """A subcommand measured on one experiment's held-out init seeds: --config, --set, --seeds, --seed-start, --out;
    it runs `func` on configs/digits_mlp.yaml unless --config says otherwise (`defaults`: more parsed defaults)."""
    p = sub.add_parser(name, help=help)
    p.set_defaults(func=func, default_configs=["configs/digits_mlp.yaml"], groups=1, repeats=1, workers=[1], **defaults)
    p.add_argument("--config", action="append", default=None, help="experiment YAML (default: configs/digits_mlp.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--seeds", type=int, default=seeds, help=f"held-out init seeds (default {seeds})")
    p.add_argument("--seed-start", type=int, default=0, help="first held-out seed (default 0)")
    p.add_argument("--out", help="also write the table to this file")
    p.add_argument("--plots", metavar="DIR", help="also write PNG figures to this folder")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("rollout", help="evaluations per second: loop vs vmap vs the Ray pool")
    r.add_argument("--config", action="append", default=None,
                   help=f"experiment YAML, repeatable (default: {' and '.join(ROLLOUT_CONFIGS)})")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value in every experiment (repeatable)")
    r.add_argument("--groups", "-G", type=int, default=16, help="weight sets per batch (default 16)")
    r.add_argument("--repeats", type=int, default=3, help="timed repeats per path; the table shows the median")
    r.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray pool sizes to time (default 1 2)")
    r.add_argument("--split", default="reward", choices=("reward", "test", "train"))
    r.add_argument("--threads", type=int, default=1,
                   help="torch threads of this process (loop, vmap); pool workers always use 1 each")
    r.add_argument("--out", help="also write the table to this file")
    r.add_argument("--plots", metavar="DIR", help="also write PNG figures to this folder")
    r.set_defaults(func=run_rollout, default_configs=ROLLOUT_CONFIGS)
    g = held_out_parser(sub, "generate", "held-out accuracy: random init vs SGD vs policies", seeds=32,
                        func=run_generate)
    g.add_argument("--policy", action="append", help="policy.safetensors, repeatable (default: the imitation policy)")
    g.add_argument("--sample-seed", type=int, default=0, help="seed of the policies' sampling noise (default 0)")
    g.add_argument("--speed", action="store_true",
                   help="also time it: ms/net of the first policy's mean path (1 and 64 nets per call) against SGD's "
                        "time from held-out seeds to that policy's median test accuracy, interleaved in this process")
    g.add_argument("--speed-seeds", type=int, default=8, help="held-out seeds SGD runs from with --speed (default 8)")
    g.add_argument("--check-every", type=int, default=20, help="SGD steps between test-accuracy checks (default 20)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the config's `threads`; the speed table is read per thread)")
    e = held_out_parser(sub, "search", "ES on generated nets' weights: fixed reward split vs fresh batches", seeds=2,
                        func=run_search)
    e.add_argument("--policy", help="policy.safetensors whose mean path starts the search (default: the imitation "
                                    "policy)")
    e.add_argument("--iterations", type=int, default=100)
    e.add_argument("--pairs", type=int, default=256, help="mirrored pairs per net and iteration (default 256)")
    e.add_argument("--sigma", type=float, default=0.05, help="noise, in units of each tensor's RMS (default 0.05)")
    e.add_argument("--lr", type=float, default=0.3, help="Adam's step, in units of the noise (default 0.3)")
    e.add_argument("--threads", type=int, help="torch threads (default: the config's `threads`, auto: all cores)")
    w = held_out_parser(sub, "warmstart", "SGD for B steps from the generated net vs from the init", seeds=16,
                        func=run_warmstart, threads=1)
    w.add_argument("--policy", help="policy.safetensors (default: the imitation policy)")
    w.add_argument("--fractions", type=int, default=6, help="budgets 1/2^(N-1) .. 1 of the zoo's (default 6)")
    w.add_argument("--sample-seed", type=int, default=0, help="seed of the policy's sampling noise (default 0)")
    a = held_out_parser(sub, "audit", "novelty (vs the zoo) and fidelity (vs SGD from the same inits) of "
                                      "generated nets", seeds=32, func=run_audit, threads=1)
    a.add_argument("--policy", help="policy.safetensors (default: the imitation policy)")
    a.add_argument("--mean", action="store_true", help="audit the mean path (default: what `generate` writes)")
    a.add_argument("--sample-seed", type=int, default=0, help="seed of the policy's sampling noise (default 0)")
    a.add_argument("--json", help="per-net results (default: --out with .json, else artifacts/bench/<experiment>/"
                                  "audit.json)")
    gr = held_out_parser(sub, "grpo", "GRPO's held-out gain over imitation against evaluations spent, per "
                                      "exploration mode", seeds=96, func=run_grpo, threads=1)
    gr.add_argument("--policy", help="the imitation policy GRPO starts from (default: the experiment's)")
    gr.add_argument("--modes", nargs="+", default=list(GRPO_MODES), help=f"exploration modes (default: "
                                                                          f"{' '.join(GRPO_MODES)})")
    gr.add_argument("--runs", type=int, default=3, help="independent GRPO runs per mode (default 3)")
    gr.add_argument("--iterations", type=int, default=40, help="GRPO iterations per run (default 40)")
    gr.add_argument("--points", type=int, default=4, help="budgets along each run measured on the held-out seeds")
    gd = held_out_parser(sub, "gradient", "cosine of GRPO's policy-gradient estimate with the exact gradient, per "
                                          "exploration mode", seeds=1, func=run_gradient, threads=1)
    gd.add_argument("--policy", help="the imitation policy (default: the experiment's)")
    gd.add_argument("--modes", nargs="+", default=list(GRPO_MODES), choices=list(GRPO_MODES))
    gd.add_argument("--iterations", type=int, default=16, help="GRPO iterations of rollouts (default 16)")
    gd.add_argument("--inits", type=int, default=64, help="fresh inits for the exact gradient (default 64)")
    pr = held_out_parser(sub, "precision", "bf16 autocast vs fp32 scoring: how GRPO's reward ranking in a group "
                                           "changes", seeds=16, func=run_precision, threads=None)
    pr.add_argument("--policy", help="the policy whose samples are scored (default: the imitation policy)")
    pr.add_argument("--group-size", "-G", type=int, default=16, help="sampled nets per init (default 16)")
    se = held_out_parser(sub, "sensitivity", "how SGD's trained weights move when the init moves a little, against "
                                             "another data order", seeds=3, func=run_sensitivity, threads=1)
    se.add_argument("--eps", type=float, nargs="+", default=[0.0001, 0.01, 0.1],
                    help="init perturbations, in units of each weight tensor's RMS (default 0.0001 0.01 0.1)")
    ft = sub.add_parser("fit", help="per tensor, how well the policy's one step from zoo runs' inits reaches their "
                                    "end: fitted (runs it imitated) or learned (the others)")
    ft.add_argument("--config", action="append", default=None, help="experiment YAML, for the default policy")
    ft.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ft.add_argument("--policy", help="policy.safetensors (default: the experiment's imitation policy)")
    ft.add_argument("--runs", default="0..31", help="zoo runs, N, A..B or A,B,C (default 0..31)")
    ft.add_argument("--start", type=int, default=0, help="checkpoint index the step starts from (default 0: the init)")
    ft.add_argument("--out", help="also write the table to this file")
    ft.set_defaults(func=run_fit, default_configs=["configs/digits_mlp.yaml"], groups=1, repeats=1, workers=[1],
                    threads=None)
    rep = sub.add_parser("report", help="generate + audit + rollout (+ GRPO's results if present) -> docs/RESULTS.md")
    rep.add_argument("--config", action="append", default=None,
                     help="experiment YAML, repeatable: one section each (default: configs/digits_mlp.yaml)")
    rep.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    rep.add_argument("--policy", action="append",
                     help="policy.safetensors, repeatable (generate compares them; audit takes the first; default: "
                          "the imitation policy)")
    rep.add_argument("--seeds", type=int, default=32, help="held-out init seeds for generate and audit (default 32)")
    rep.add_argument("--seed-start", type=int, default=0, help="first held-out seed (default 0)")
    rep.add_argument("--out", default="docs/RESULTS.md", help="the report; figures go to figures/ beside it "
                                                              "(default docs/RESULTS.md)")
    rep.set_defaults(func=run_report, default_configs=["configs/digits_mlp.yaml"], groups=1, repeats=1, threads=1,
                     workers=[1])
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if min(args.groups, args.repeats, args.threads or 1, *args.workers, getattr(args, "check_every", 1),
           getattr(args, "speed_seeds", 1)) < 1:
        p.error("--groups, --repeats, --threads, --workers, --check-every and --speed-seeds must be >= 1")
    if min(getattr(args, "eps", [0.0])) < 0:
        p.error("--eps must be >= 0")
    if getattr(args, "group_size", 2) < 2:
        p.error("--group-size must be >= 2: a ranking needs two nets")
    paths = args.config or args.default_configs

    def run() -> None:
        cfgs = [load_config(path, args.overrides) for path in paths]
        for cfg in cfgs:
            resolve_device(cfg.device)  # a device this machine lacks fails here, before any work
        use_threads(args.threads or cfgs[0].threads)
        args.func(args, cfgs)

    return guarded(run)


if __name__ == "__main__":
    raise SystemExit(main())
