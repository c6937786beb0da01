"""Fixtures of the trainer tests: tiny zoos and policies made by the real entry points."""

import os
import shutil

import pytest

from envs.tasks import task_from_config
from trainer import audit
from trainer.config import load_config
from trainer.generator import reference_layout
from trainer.zoo import train_run, write_manifest

from tests.settings import TINY_POLICY, TINY_ZOO, imitate_cli


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory, ray_local):
    """The TINY chain run once per session by the real entry point (zoo by Ray tasks, then imitation), in a folder of
    its own: its `artifacts/`, which each test gets a copy of (the chain is deterministic; 40 tests used to rerun it)."""
    folder = tmp_path_factory.mktemp("tiny_chain")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert imitate_cli() == 0
    finally:
        os.chdir(cwd)
    return folder / "artifacts"


@pytest.fixture
def trained(in_tmp, tiny_chain):
    """The TINY chain's imitation run folder, in this test's working directory (a copy of the session's chain)."""
    shutil.copytree(tiny_chain, in_tmp / "artifacts")
    return in_tmp / "artifacts/runs/digits_mlp-imitate"


@pytest.fixture
def imitation(trained):
    """The TINY chain's imitation policy file, the start of every GRPO test."""
    return trained / "policy.safetensors"


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
