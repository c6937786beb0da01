"""`bench grpo` and `bench gradient`: GRPO's held-out gain against evaluations, and its gradient estimate against the
exact gradient, from the tiny imitation policy of tests/trainer/test_grpo.py."""

import json

import numpy as np
import pytest

from envs.tasks import task_from_config
from tests.settings import GRPO
from trainer.bench.__main__ import cli as bench_main
from trainer.config import load_config
from trainer.generator import WeightGenerator, mean_path_accuracy


def test_bench_grpo_measures_held_out_gain_against_evaluations(imitation, in_tmp, capsys):
    args = ["grpo", "--runs", "2", "--iterations", "2", "--points", "2", "--seeds", "3", "--plots", "figs"]
    assert bench_main(args + sum((["--set", s] for s in GRPO), [])) == 0
    out = capsys.readouterr().out
    results = json.loads((in_tmp / "artifacts/bench/digits_mlp/grpo.json").read_text())
    assert results["table"] in out and (in_tmp / "figs/digits_mlp-grpo.png").stat().st_size > 0
    for mode in ("iid", "units"):
        curve = results["curves"][mode]
        assert curve["evaluations"] == [0, 32, 64] and curve["gain"][0] == 0.0  # B x G = 2 x 16, the modes' group
    cfg = load_config(overrides=GRPO)
    task = task_from_config(cfg.task)
    base = mean_path_accuracy(WeightGenerator.load(imitation, cfg=cfg), task, range(3))[0]
    gains = []
    for run in range(2):  # the last point is each run's saved policy, measured independently
        tuned = WeightGenerator.load(in_tmp / f"artifacts/bench/digits_mlp/grpo-units-{run}/policy.safetensors", cfg=cfg)
        gains.append((np.asarray(mean_path_accuracy(tuned, task, range(3))[0]) - base).mean() * 100)
    assert results["curves"]["units"]["gain"][-1] == pytest.approx(np.mean(gains), abs=1e-6)
    assert bench_main(["grpo", "--modes", "bogus"]) == 2


def test_bench_grpo_checks_every_mode_before_the_first_run(imitation, in_tmp, monkeypatch, capsys):
    from trainer.bench import grpo

    monkeypatch.setitem(grpo.GRPO_MODES, "broken", ["grpo.estimator=score", "grpo.backprop=walk"])
    args = ["grpo", "--modes", "units", "broken", "--runs", "1", "--iterations", "1", "--seeds", "2"]
    assert bench_main(args + sum((["--set", s] for s in GRPO), [])) == 2
    assert "grpo.backprop" in capsys.readouterr().err and not (in_tmp / "artifacts/bench").exists()


def test_bench_grpo_modes_keep_their_tuned_group_and_meet_at_equal_evaluations():
    """A mode pins the group it was tuned with whatever the config's (MNIST ships pairs); --evaluations gives each mode
    the iterations that spend that budget, so a group of 16 runs an eighth of a pair's iterations."""
    import argparse

    from trainer.bench.grpo import GRPO_MODES, mode_iterations

    mnist_like = GRPO + ["grpo.group_size=2", "grpo.epochs=1", "grpo.explore=last"]
    units = load_config(overrides=mnist_like + GRPO_MODES["units"])
    config = load_config(overrides=mnist_like + GRPO_MODES["config"])
    assert (units.grpo.group_size, units.grpo.epochs, units.grpo.explore) == (16, 2, "all")
    assert (config.grpo.group_size, config.grpo.explore) == (2, "last")
    walk = GRPO + ["grpo.estimator=pathwise", "grpo.trainable=policy", "grpo.backprop=walk"]  # MNIST's recipe
    assert all(load_config(overrides=walk + GRPO_MODES[m]).grpo.backprop == "last" for m in ("score_cv", "units-last"))
    assert load_config(overrides=walk + GRPO_MODES["pathwise-walk"]).grpo.backprop == "walk"
    budget = argparse.Namespace(evaluations=256, iterations=40)
    assert (mode_iterations(budget, units), mode_iterations(budget, config)) == (8, 64)  # 2 inits an iteration
    assert mode_iterations(argparse.Namespace(evaluations=None, iterations=40), units) == 40


def test_bench_gradient_compares_the_estimate_with_the_exact_gradient(imitation, in_tmp, capsys):
    args = ["gradient", "--iterations", "4", "--inits", "4"] + sum((["--set", s] for s in GRPO), [])
    assert bench_main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| iid", "| units"))]
    assert len(rows) == 2
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]  # mode, parameters, n = 1, n = 4
    assert all(len(c) == 4 and int(c[1]) > 0 for c in cells) and cells[0][2:] != cells[1][2:]
    assert int(rows[0].split("|")[2]) > int(rows[1].split("|")[2])  # iid trains the whole policy, units its latent head


def test_averaged_cosines_average_disjoint_blocks_then_take_the_cosine():
    """Estimates = exact + orthogonal noise of alternating sign: one estimate has cosine 1/sqrt(2) with the exact
    gradient, the average of a pair (the noise cancels) has cosine 1; a block of 3 leaves a third of the noise."""
    import torch

    from trainer.bench.gradient import averaged_cosines

    exact, noise = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    est = torch.stack([exact + noise * (-1) ** i for i in range(6)])
    got = averaged_cosines(est, exact, [1, 2, 3])
    assert got == pytest.approx([2 ** -0.5, 1.0, 1 / (1 + 1 / 9) ** 0.5])
    assert averaged_cosines(-est, exact, [2]) == pytest.approx([-1.0])
