"""`python -m trainer.bench report`: run the standard bench set (generate, audit, rollout, objectives, and GRPO's
budget curve when its results exist) on each experiment and write docs/RESULTS.md with every table, its figures and the
command that reproduces it. The document's pieces (sections, the audit's reading, the GRPO hook) are `trainer.report`'s."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from trainer import paths
from trainer.bench import audit, generate, objectives, rollout
from trainer.bench.common import parser_of
from trainer.config import CONFIG_DIR, ExperimentConfig, load_config
from trainer.report import (AUDIT_GUIDE, OBJECTIVES_GUIDE, audit_reading, check_inputs, command, commit_stamp,
                            grpo_section, missing_inputs, section)

STEPS = (generate, audit, rollout, objectives)  # the subcommands a report runs, each from its command line
SHIPPED_CONFIGS = [f"configs/{p.name}" for p in sorted(CONFIG_DIR.glob("*.yaml"))]


def add_parser(sub) -> argparse.ArgumentParser:
    rep = sub.add_parser("report", help="generate + audit + rollout (+ GRPO's results if present) -> docs/RESULTS.md")
    rep.add_argument("--config", action="append", default=None,
                     help="experiment YAML, repeatable: one section each (default: every shipped config)")
    rep.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    rep.add_argument("--policy", action="append",
                     help="policy.safetensors, repeatable (generate compares them; audit takes the first; default: "
                          "the imitation policy)")
    rep.add_argument("--seeds", type=int, default=32, help="held-out init seeds for generate and audit (default 32)")
    rep.add_argument("--seed-start", type=int, default=0, help="first held-out seed (default 0)")
    rep.add_argument("--out", default="docs/RESULTS.md", help="the report; figures go to figures/ beside it "
                                                              "(default docs/RESULTS.md)")
    rep.set_defaults(func=run, default_configs=SHIPPED_CONFIGS, threads=1)
    return rep


def run_step(argv: list[str]) -> dict:
    """One bench subcommand in this process, exactly as `python -m trainer.bench ARGV` would run it."""
    args = parser_of(STEPS).parse_args(argv)
    return args.func(args, [load_config(path, args.overrides) for path in args.config or args.default_configs])


PREAMBLE = ["# Results", "", "Written by `python -m trainer.bench report`. Each experiment's section names the command and the "
            "commit that wrote it, and every table the command that reproduces it with its figures (figures in "
            "`figures/`, tables also under `artifacts/bench/`). Never edited by hand: rerun the command to refresh "
            "it. With `--config`, only the named experiments' sections are rewritten.", ""]


def split_sections(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """A report's lines before its first experiment section, and each section's lines by experiment name (in order)."""
    head, sections, current = [], {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].split(":")[0]
            sections[current] = []
        (head if current is None else sections[current]).append(line)
    return head, sections


def run(args: argparse.Namespace, cfgs: list[ExperimentConfig]) -> dict:
    check_inputs(args, cfgs)
    out = Path(args.out)
    fig_dir = out.parent / "figures"
    started = time.perf_counter()
    config_paths = args.config or args.default_configs
    sets = sum((["--set", s] for s in args.overrides), [])
    policies = sum((["--policy", p] for p in args.policy or []), [])
    held = ["--seeds", str(args.seeds), "--seed-start", str(args.seed_start)]
    stamp_now = commit_stamp()  # before the report writes anything: its own outputs are not source changes
    # Named experiments replace their own sections of an existing report; without --config it is written anew.
    sections = {}
    if args.config and out.is_file():
        head, sections = split_sections(out.read_text())
        stamp = [line.split(" at the start.")[0] + " at the start." for line in head
                 if line.startswith("Written by `") and " at commit " in line]  # its first sentence
        for lines in sections.values():  # a report written whole stamped its head, not its sections
            if stamp and not any(line.startswith("Written by `") for line in lines[:4]):
                lines[1:1] = ["", stamp[0]]
    for path, cfg in zip(config_paths, cfgs):
        tables = paths.bench_dir(cfg.name)
        common = ["--config", path, *sets]
        me = ["report", *common, *held, *policies, "--out", str(out)]
        lines = [f"## {cfg.name}: {cfg.reference.family} {cfg.reference.widths} on {cfg.task.name}", "",
                 f"Written by `{command(me)}` at commit {stamp_now} on {platform.machine()} with "
                 f"{os.cpu_count()} CPUs, torch {torch.__version__}, 1-min load average {os.getloadavg()[0]:.1f} at "
                 "the start.", ""]
        sections[cfg.name] = lines
        missing = missing_inputs(args, cfg, path)
        if missing:  # a shipped config whose chain was not run here: the section says how to make it
            lines += [f"Not measured in this report: {missing}", ""]
            continue
        steps = [("Held-out accuracy: random init, SGD and the policy", ["generate", *common, *held, *policies], ""),
                 ("Novelty and fidelity audit",
                  ["audit", *common, *held, *policies[:2], "--sample", "--json", str(tables / "audit.json")], AUDIT_GUIDE),
                 ("Scoring throughput", ["rollout", *common, "--threads", "1"], ""),
                 ("Objectives: quantised, sparse and noise-robust nets", ["objectives", *common, *held, *policies[:2]],
                  OBJECTIVES_GUIDE)]
        for title, argv, guide in steps:
            argv = argv + ["--out", str(tables / f"{argv[0]}.md"), "--plots", str(fig_dir)]
            print(f"report: {command(argv)}", file=sys.stderr, flush=True)
            result = run_step(argv)
            if argv[0] == "audit":
                guide = guide + "\n\n" + audit_reading(result["results"])
            lines += section(title, argv, result, out.parent, guide)
        lines += grpo_section(cfg, fig_dir, out.parent)
    body = []
    for name in sorted(sections):
        lines = sections[name]
        while lines and not lines[-1]:
            lines.pop()
        body += lines + [""]
    text = "\n".join(PREAMBLE + body).rstrip() + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"report: {out} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return dict(table=text, figures=sorted(fig_dir.glob("*.png")))
