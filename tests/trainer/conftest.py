"""Fixtures of the trainer tests: tiny zoos and policies made by the real entry points."""

import pytest

from envs.tasks import task_from_config
from trainer import audit
from trainer.config import load_config
from trainer.generator import reference_layout
from trainer.zoo import train_run, write_manifest

from tests.settings import TINY_POLICY, TINY_ZOO, imitate_cli


@pytest.fixture
def trained(in_tmp, ray_local):
    """The TINY chain's imitation run folder (zoo built by Ray tasks)."""
    assert imitate_cli() == 0
    return in_tmp / "artifacts/runs/digits_mlp-imitate"


@pytest.fixture
def imitation(in_tmp, ray_local):
    """The TINY chain's imitation policy file, the start of every GRPO test."""
    assert imitate_cli() == 0
    return in_tmp / "artifacts/runs/digits_mlp-imitate/policy.safetensors"


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """Three digits runs trained in-process (no Ray): (cfg, task, layout, stacked final checkpoints)."""
    folder = tmp_path_factory.mktemp("zoo")
    cfg = load_config(overrides=TINY_ZOO + [f"zoo.out={folder}"])
    for run in range(cfg.zoo.runs):
        train_run(cfg, run, folder)
    write_manifest(cfg, folder)
    task = task_from_config(cfg.task)
    template, layout = reference_layout(cfg, task)
    return cfg, task, layout, audit.zoo_finals(cfg, template.state_dict())


@pytest.fixture
def tiny_policy(tiny_zoo, in_tmp):
    """A 6-step imitation policy on the tiny zoo (already built, so no Ray starts); returns the --set arguments."""
    from trainer import imitate

    sets = sum((["--set", s] for s in TINY_ZOO + [f"zoo.out={tiny_zoo[0].zoo_dir}"] + TINY_POLICY), [])
    assert imitate.cli(sets) == 0
    return sets
