"""`python -m trainer.bench rollout`: evaluations per second of the scoring paths (a load_state_dict loop, batched
vmap, the Ray pool; on a GPU also vmap in fp32 and bf16 and the pool on GPU shares), checked to agree."""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from envs.models import reference_from_config
from envs.scoring import Scores, evaluate, score_batch, stack_weights
from envs.tasks import task_from_config
from rollout.pool import RolloutPool
from trainer.bench.common import count, emit, figure, timed
from trainer.config import ExperimentConfig
from trainer.device import resolve_device

ROLLOUT_CONFIGS = ["configs/mnist_mlp.yaml", "configs/mnist_cnn.yaml"]


class ScoringMismatch(RuntimeError):
    """The scoring paths gave different correct counts for the same weight sets: one of them is wrong."""


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


def add_parser(sub) -> argparse.ArgumentParser:
    r = sub.add_parser("rollout", help="evaluations per second: loop vs vmap vs the Ray pool")
    r.add_argument("--config", action="append", default=None,
                   help=f"experiment YAML, repeatable (default: {' and '.join(ROLLOUT_CONFIGS)})")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value in every experiment (repeatable)")
    r.add_argument("--groups", "-G", type=count, default=16, help="weight sets per batch (default 16)")
    r.add_argument("--repeats", type=count, default=3, help="timed repeats per path; the table shows the median")
    r.add_argument("--workers", type=count, nargs="+", default=[1, 2], help="Ray pool sizes to time (default 1 2)")
    r.add_argument("--split", default="reward", choices=("reward", "test", "train"))
    r.add_argument("--threads", type=count, default=1,
                   help="torch threads of this process (loop, vmap); pool workers always use 1 each")
    r.add_argument("--out", help="also write the table to this file")
    r.add_argument("--plots", metavar="DIR", help="also write PNG figures to this folder")
    r.set_defaults(func=run, default_configs=ROLLOUT_CONFIGS)
    return r


def bench_rollout(cfg: ExperimentConfig, groups: int, repeats: int, workers: list[int], split: str) -> list[Row]:
    """Time each scoring path on the same G weight sets (default inits from seeds cfg.seed + i). The paths must agree:
    ScoringMismatch if any path's correct counts differ from the loop's."""
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
    bad = {m: r for m, r in results.items() if r != first}
    if bad:  # a raise, not an assert: `python -O` would time a path that scores wrongly
        raise ScoringMismatch(f"{cfg.name}: correct counts of {list(bad)} differ from the loop's on the same "
                              f"{groups} weight sets: loop {first}, " + ", ".join(f"{m} {r}" for m, r in bad.items()))
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


def run(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
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
        from trainer import plots  # matplotlib: slow to import, only when figures are asked for

        panels = {f"{e} ({n_examples[e]} examples)": {r.method.split(" (")[0]: r.evals_per_s for r in rows
                                                      if r.experiment == e} for e in n_examples}
        figures.append(plots.bars(panels, f"Scoring throughput, G = {args.groups} weight sets per batch",
                                  "evaluations / s (median of repeats)",
                                  figure(args, "-".join(n_examples), "rollout")))
    return dict(table=table, figures=figures)
