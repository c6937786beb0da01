"""The pieces of docs/RESULTS.md that `python -m trainer.bench report` (trainer/bench/report.py) writes: its input
checks, one section per bench step (its command, a reading guide, the table and its figures), the audit's headline in
numbers, and the GRPO hook.

The GRPO hook: `python -m trainer.bench grpo` (built separately) is expected to leave `grpo.json` in the experiment's
`paths.bench_dir`, holding {"command": "python -m trainer.bench grpo ...", "table": "<markdown>", "figures": ["<png path>", ...]}; the
report copies its figures next to the others and includes it as is. Absent, the section says how to make it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np

from trainer import paths
from trainer.bench.common import PROG, default_policy, held_out_seeds
from trainer.checkpoints import load_policy_files
from trainer.config import ConfigError, ExperimentConfig
from trainer.zoo import load_manifest


OBJECTIVES_GUIDE = ("Each net is scored as deployed: quantised, pruned, or on noisy inputs. The GRPO rows are the "
                    "policies `python -m trainer.grpo --set env.objective=<objective> --name <experiment>-grpo-"
                    "<objective>` trained; an objective without one says so.")
AUDIT_GUIDE = """How to read it. *Novelty in weights*: each net's L2 distance to its nearest zoo checkpoint after its
hidden units are permuted to match that checkpoint (weight matching, per unit group), next to the same distance from
each zoo net to the rest of the zoo; a generator that copies its training checkpoints sits far left of the zoo's own
spread. *Novelty in behaviour*: the highest IoU of a net's misclassified test examples with any zoo net's (a net that
makes more errors than the zoo nets cannot score a high IoU: |A n B| / |A u B| <= |B| / |A|). *Noise baseline*: the
nearest zoo net plus isotropic Gaussian noise scaled to the generated net's distance from it; a generator should beat
it. *Fidelity*: SGD with the zoo's recipe from the same held-out inits; a generator that follows its init agrees more
with SGD(i) than with SGD(j), and lies closer to SGD(i) than SGD(i) lies to its init. The second SGD run from each init
(another minibatch order) is the ceiling: how far the init alone decides where SGD lands."""


def check_inputs(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> None:
    """Every user error the steps could hit, found before the first one runs: one line, exit 2. With the default
    configs (every shipped one), a config whose zoo or policy does not exist yet is not an error: its section says how
    to make them (`missing_inputs`); a config the user named must have both, and at least one must be measurable."""
    if args.policy and len(cfgs) > 1:
        raise ConfigError("--policy applies to one experiment; with several --config each uses its imitation policy")
    for cfg in cfgs:
        held_out_seeds(args, cfg)
    if args.config:
        for cfg in cfgs:
            load_manifest(cfg.zoo_dir)
            for path in args.policy or [default_policy(cfg)]:
                load_policy_files(path)
    elif all(missing_inputs(args, cfg, "") for cfg in cfgs):
        raise ConfigError(f"no shipped experiment has a zoo and a policy yet (looked in {paths.zoo_dir('*')}): run "
                          "`python -m trainer.zoo` and `python -m trainer.imitate` first")


def missing_inputs(args: argparse.Namespace, cfg: ExperimentConfig, config_path: str) -> str:
    """'' when `cfg`'s zoo manifest and policy files exist (they are loaded, so a damaged one is an error); else what
    is missing and the commands that make it."""
    wanted = [Path(cfg.zoo_dir) / "manifest.json"] + [Path(p) / "policy.safetensors" if Path(p).is_dir() else Path(p)
                                                      for p in args.policy or [default_policy(cfg)]]
    absent = [str(p) for p in wanted if not p.is_file()]
    if absent:
        return (f"{', '.join(absent)} not found. Make them with `python -m trainer.zoo --config {config_path}` and "
                f"`python -m trainer.imitate --config {config_path}` (then `python -m trainer.grpo --config "
                f"{config_path}`).")
    load_manifest(cfg.zoo_dir)
    for path in args.policy or [default_policy(cfg)]:
        load_policy_files(path)
    return ""


def commit_stamp() -> str:
    """The source's git commit (short hash, "+ changes" when the tree differs from it), or "unknown" outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"`{head}`" + (" + uncommitted changes" if dirty else "")


def command(argv: list[str]) -> str:
    """The shell command that runs bench subcommand `argv`."""
    return f"{PROG} " + shlex.join(argv)


def section(title: str, argv: list[str], result: dict, out_dir: Path, guide: str = "") -> list[str]:
    lines = [f"### {title}", "", "```bash", command(argv), "```", ""]
    lines += [guide, ""] if guide else []
    lines += [result["table"], ""]
    lines += [f"![{Path(f).stem}]({Path(os.path.relpath(f, out_dir)).as_posix()})" for f in result["figures"]]
    return lines + [""]


def audit_reading(r: dict) -> str:
    """The audit's headline in two sentences, from its own numbers."""
    nov, noise, fid = r["novelty"], r["noise_baseline"], r["fidelity"]
    m = {k: float(np.median(v)) for k, v in [*((f"{n}_distance", nov[n]["distance"]) for n in nov),
                                             *noise.items(), *fid.items()]}
    return (f"In numbers: generated nets lie {m['generated_distance'] / m['zoo_distance']:.2f}x as far from their "
            f"nearest zoo net as zoo nets lie from each other (SGD from the same held-out inits: "
            f"{m['sgd_distance'] / m['zoo_distance']:.2f}x); the nearest zoo net plus noise at that distance scores "
            f"{m['noise']:.3f} against the generated nets' {m['generated']:.3f}. Generated(i) agrees with SGD(i) on "
            f"{m['agree_generated_same_init']:.3f} of test predictions and with SGD(j) on "
            f"{m['agree_generated_other_init']:.3f} (SGD(i) with its replicate: {m['agree_sgd_same_init']:.3f}, with "
            f"SGD(j): {m['agree_sgd_other_init']:.3f}); its distance to SGD(i) is "
            f"{m['generated_to_sgd_same_init']:.2f} of SGD's travel from the init, to SGD(j) {m['generated_to_sgd_other_init']:.2f}."
            + (f" Two draws from one init agree on {m['agree_generated_two_draws']:.3f} of test predictions, two SGD "
               f"runs from one init with different data orders on {m['agree_sgd_same_init']:.3f}."
               if "agree_generated_two_draws" in m else ""))


def grpo_section(cfg: ExperimentConfig, fig_dir: Path, out_dir: Path) -> list[str]:
    path = paths.bench_dir(cfg.name) / "grpo.json"
    if not path.is_file():
        return ["### GRPO: held-out accuracy against the evaluation budget", "",
                f"Not measured in this report: `python -m trainer.bench grpo` writes `{path}`, which the report then "
                f"includes.", ""]
    grpo = json.loads(path.read_text())
    figures = []
    for f in grpo.get("figures", []):
        target = fig_dir / Path(f).name
        figures.append(target if Path(f).resolve() == target.resolve() else shutil.copy(f, target))
    lines = ["### GRPO: held-out accuracy against the evaluation budget", "", "```bash", grpo["command"], "```", "",
             grpo["table"], ""]
    return lines + [f"![{Path(f).stem}]({Path(os.path.relpath(f, out_dir)).as_posix()})" for f in figures] + [""]
