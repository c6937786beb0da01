"""`python -m trainer.bench fit`: per tensor, how well the policy's one step from zoo runs' inits reaches their end,
on runs it was imitated on (fitted) and on the zoo's others (learned)."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from envs.tasks import task_from_config
from policy.sampling import walk
from trainer.bench.common import default_policy, emit
from trainer.config import ConfigError, ExperimentConfig
from trainer.generate import parse_seeds
from trainer.pairs import ZooPairs
from trainer.generator import WeightGenerator, reference_layout
from trainer.zoo import load_manifest


def add_parser(sub) -> argparse.ArgumentParser:
    ft = sub.add_parser("fit", help="per tensor, how well the policy's one step from zoo runs' inits reaches their "
                                    "end: fitted (runs it imitated) or learned (the others)")
    ft.add_argument("--config", action="append", default=None, help="experiment YAML, for the default policy")
    ft.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ft.add_argument("--policy", help="policy.safetensors (default: the experiment's imitation policy)")
    ft.add_argument("--runs", default="0..31", help="zoo runs, N, A..B or A,B,C (default 0..31)")
    ft.add_argument("--start", type=int, default=0, help="checkpoint index the step starts from (default 0: the init)")
    ft.add_argument("--out", help="also write the table to this file")
    ft.set_defaults(func=run, default_configs=["configs/digits_mlp.yaml"], threads=None)
    return ft


def run(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    """The policy's one step from zoo runs' checkpoint `--start` straight to their end, per tensor: token-unit MSE of
    its mean against the final checkpoint, beside the identity's (no move) and their ratio. On runs the policy was
    imitated on it says how well it fits; on the zoo's other runs, whether what it fitted carries over."""
    path = args.policy or default_policy(cfgs[0])
    weight_generator = WeightGenerator.load(path, args.overrides)  # its own experiment (its zoo, the runs it imitated), with --set
    cfg, tok = weight_generator.cfg, weight_generator.tokenizer
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
        return tok.encode({k: v[:, c].to(weight_generator.device) for k, v in pairs.weights.items() if k in layout.shapes})

    start, end = tokens(args.start), tokens(-1)
    with torch.no_grad():
        step, _ = walk(weight_generator.policy, start, [pairs.grid[args.start], 1.0], mean_only=True)
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
