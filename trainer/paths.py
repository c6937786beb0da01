"""Where runs, zoos, generated nets and bench results live: every path under artifacts/ is made here, and only here.

Relative to the working directory, as every command's outputs are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

ARTIFACTS = Path("artifacts")


def zoo_dir(experiment: str) -> Path:
    """An experiment's zoo, unless `zoo.out` says otherwise: checkpoints of every run, zoo.json, manifest.json."""
    return ARTIFACTS / "checkpoints" / experiment


def run_dir(name: str) -> Path:
    """A training run (imitation or GRPO): policy.safetensors + policy.json, state.safetensors, TensorBoard events."""
    return ARTIFACTS / "runs" / name


def imitation_run(experiment: str) -> Path:
    """`trainer.imitate`'s default run."""
    return run_dir(f"{experiment}-imitate")


def grpo_run(experiment: str, objective: Optional[str] = None) -> Path:
    """`trainer.grpo`'s default run; with `objective`, the run `bench objectives` reads for that objective."""
    return run_dir(f"{experiment}-grpo" + (f"-{objective}" if objective else ""))


def imitation_policy(experiment: str) -> Path:
    """Where `trainer.imitate` saves an experiment's policy (its default run)."""
    return imitation_run(experiment) / "policy.safetensors"


def best_policy(experiment: str) -> Path:
    """The policy `trainer.generate` uses unless told otherwise: the GRPO policy (`trainer.grpo`'s default run) where
    one was saved, which GRPO improved from the imitation policy; else the imitation policy."""
    grpo = grpo_run(experiment) / "policy.safetensors"
    return grpo if grpo.is_file() else imitation_policy(experiment)


def generated_dir(name: str) -> Path:
    """`trainer.generate`'s output folder: the nets and report.json."""
    return ARTIFACTS / "generated" / name


def bench_dir(experiment: str) -> Path:
    """Bench results (tables, per-net json, GRPO runs of `bench grpo`) of one experiment."""
    return ARTIFACTS / "bench" / experiment


def audit_dir(experiment: str) -> Path:
    """The audit's cached SGD runs from held-out inits."""
    return ARTIFACTS / "audit" / experiment
