"""`python -m trainer.bench report`: run the standard bench set (generate, audit, rollout, and GRPO's budget curve when
its results exist) and write docs/RESULTS.md with every table, its figures and the command that reproduces it.

The GRPO hook: `python -m trainer.bench grpo` (built separately) is expected to leave `GRPO_RESULTS` (per experiment)
holding {"command": "python -m trainer.bench grpo ...", "table": "<markdown>", "figures": ["<png path>", ...]}; the
report copies its figures next to the others and includes it as is. Absent, the section says how to make it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trainer.checkpoints import load_policy_files
from trainer.config import ConfigError, ExperimentConfig, load_config
from trainer.zoo import load_manifest

GRPO_RESULTS = "artifacts/bench/{experiment}/grpo.json"

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
    """Every user error the steps could hit, found before the first one runs: one line, exit 2."""
    from trainer.bench import default_policy, held_out_seeds

    if args.policy and len(cfgs) > 1:
        raise ConfigError("--policy applies to one experiment; with several --config each uses its imitation policy")
    for cfg in cfgs:
        held_out_seeds(args, cfg)
        load_manifest(cfg.zoo_dir)
        for path in args.policy or [default_policy(cfg)]:
            load_policy_files(path)


def run_step(argv: list[str]) -> dict:
    """One bench subcommand in this process, exactly as `python -m trainer.bench ARGV` would run it."""
    from trainer.bench import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args, [load_config(path, args.overrides) for path in args.config or args.default_configs])


def command(argv: list[str]) -> str:
    return "python -m trainer.bench " + shlex.join(argv)


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
            f"{m['generated_to_sgd_same_init']:.2f} of SGD's travel from the init, to SGD(j) {m['generated_to_sgd_other_init']:.2f}.")


def grpo_section(cfg: ExperimentConfig, fig_dir: Path, out_dir: Path) -> list[str]:
    path = Path(GRPO_RESULTS.format(experiment=cfg.name))
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


def run_report(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    check_inputs(args, cfgs)
    out = Path(args.out)
    fig_dir = out.parent / "figures"
    started = time.perf_counter()
    paths = args.config or args.default_configs
    sets = sum((["--set", s] for s in args.overrides), [])
    policies = sum((["--policy", p] for p in args.policy or []), [])
    held = ["--seeds", str(args.seeds), "--seed-start", str(args.seed_start)]
    me = ["report", *sum((["--config", p] for p in paths), []), *sets, *held, *policies, "--out", str(out)]
    lines = ["# Results", "", f"Written by `{command(me)}` on {platform.machine()} with {os.cpu_count()} CPUs, torch "
             f"{torch.__version__}, 1-min load average {os.getloadavg()[0]:.1f} at the start. Every section names the "
             "command that reproduces its table and figures (figures in `figures/`, tables also under "
             "`artifacts/bench/`).", ""]
    for path, cfg in zip(paths, cfgs):
        tables = Path("artifacts/bench") / cfg.name
        common = ["--config", path, *sets]
        lines += [f"## {cfg.name}: {cfg.reference.family} {cfg.reference.widths} on {cfg.task.name}", ""]
        steps = [("Held-out accuracy: random init, SGD and the policy", ["generate", *common, *held, *policies], ""),
                 ("Novelty and fidelity audit",
                  ["audit", *common, *held, *policies[:2], "--json", str(tables / "audit.json")], AUDIT_GUIDE),
                 ("Scoring throughput", ["rollout", *common, "--threads", "1"], "")]
        for title, argv, guide in steps:
            argv = argv + ["--out", str(tables / f"{argv[0]}.md"), "--plots", str(fig_dir)]
            print(f"report: {command(argv)}", file=sys.stderr, flush=True)
            result = run_step(argv)
            if argv[0] == "audit":
                guide = guide + "\n\n" + audit_reading(result["results"])
            lines += section(title, argv, result, out.parent, guide)
        lines += grpo_section(cfg, fig_dir, out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip() + "\n")
    print(f"report: {out} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return dict(table="\n".join(lines), figures=sorted(fig_dir.glob("*.png")))
