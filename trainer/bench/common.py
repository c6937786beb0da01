"""What the bench subcommands share: result output (`emit`, `figure`), the held-out seeds and their parser,
the default policy, timing and the summary statistics printed in their tables."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable

import numpy as np
import torch

from trainer import paths
from trainer.config import ConfigError, ExperimentConfig


# argparse types: a count or a scale out of range is refused where the flag is read, naming it (a zero count would
# otherwise print a table of nothing).
def count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a count >= 1, got {value}")
    return value


def non_negative_count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {value}")
    return value


def seed_number(text: str) -> int:
    """A seed of torch's 64-bit generators: a negative one, or one past 2^63, is refused where the flag is read (it raised
    `Overflow when unpacking long long`, or named a file `seed--00003`)."""
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2^63), got {value}")
    return value


MAX_SEEDS = 10**6  # held-out seeds of one bench: one generated net and one SGD run each; more is a typo


def pair_count(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected >= 2 (a ranking needs two nets), got {value}")
    return value


def positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite value > 0, got {text}")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite value >= 0, got {text}")
    return value

PROG = "python -m trainer.bench"


def parser_of(benchmarks: Iterable[ModuleType], description: str | None = None) -> argparse.ArgumentParser:
    """`python -m trainer.bench` with the subcommands of `benchmarks`: modules whose `add_parser(sub)` registers one."""
    p = argparse.ArgumentParser(prog=PROG, description=description)
    sub = p.add_subparsers(dest="command", required=True)
    for bench in benchmarks:
        bench.add_parser(sub)
    return p


def held_out_parser(sub, name: str, help: str, seeds: int, func: Callable, **defaults) -> argparse.ArgumentParser:
    """A subcommand measured on one experiment's held-out init seeds: --config, --set, --seeds, --seed-start, --out;
    it runs `func` on configs/digits_mlp.yaml unless --config says otherwise (`defaults`: more parsed defaults)."""
    p = sub.add_parser(name, help=help)
    p.set_defaults(func=func, default_configs=["configs/digits_mlp.yaml"], **defaults)
    p.add_argument("--config", action="append", default=None, help="experiment YAML (default: configs/digits_mlp.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--seeds", type=int, default=seeds, help=f"held-out init seeds (default {seeds})")
    p.add_argument("--seed-start", type=int, default=0, help="first held-out seed (default 0)")
    p.add_argument("--out", help="also write the table to this file")
    p.add_argument("--plots", metavar="DIR", help="also write PNG figures to this folder")
    return p


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
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: need at least one held-out seed")
    if not 0 <= args.seed_start < 2**63:  # a negative seed named a cache folder seed--00005; 2^64 overflowed torch
        raise ConfigError(f"--seed-start {args.seed_start}: expected a seed in [0, 2^63)")
    if args.seeds > MAX_SEEDS or args.seed_start + args.seeds > 2**63:  # checked before the range is built
        raise ConfigError(f"--seeds {args.seeds} from --seed-start {args.seed_start}: expected at most {MAX_SEEDS} "
                          f"seeds, all below 2^63")
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    zoo = range(cfg.zoo.seed, cfg.zoo.seed + cfg.zoo.runs)
    if set(seeds) & set(zoo):
        raise ConfigError(f"held-out seeds {seeds[0]}..{seeds[-1]} overlap the zoo's seeds {zoo[0]}..{zoo[-1]} "
                          f"(choose another --seed-start)")
    return seeds


def default_policy(cfg: ExperimentConfig) -> str:
    """The imitation policy: what the benches of imitation and GRPO start from."""
    return str(paths.imitation_policy(cfg.name))


def generated_policy(cfg: ExperimentConfig) -> str:
    """What `trainer.generate` uses by default (`generator.best_policy`): the benches of generated nets measure it."""
    return str(paths.best_policy(cfg.name))


def timed(fn: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    """Wall seconds of each of `repeats` calls of `fn`, and what the last call returned."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def stopwatch(fn: Callable[[], object], nets: int, device: torch.device = torch.device("cpu")) -> tuple[float, float]:
    """(wall, CPU) seconds per net of one call of `fn`. CPU time counts only this process, so on a shared machine it
    tells the work apart from the waiting. On CUDA the clock stops when the device has finished."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - wall) / nets, (time.process_time() - cpu) / nets


def paired_difference(base: list[float], other: list[float]) -> str:
    """Per-seed comparison of two policies on the same seeds: mean difference in points with its standard error, and
    the share of seeds where `other` is better, e.g. "+2.05 +- 0.16 pts, better on 94%"."""
    d = (np.asarray(other) - np.asarray(base)) * 100
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{d.mean():+.2f} +- {se:.2f} pts, better on {(d > 0).mean():.0%}"


def spread(values) -> str:
    """median [10th percentile, 90th percentile]"""
    return f"{np.median(values):.3f} [{np.quantile(values, 0.1):.3f}, {np.quantile(values, 0.9):.3f}]"
