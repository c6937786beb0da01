"""`bench temperature` on the tiny zoo's policy, made to sample its unit latent (as GRPO's units mode saves it)."""

import json

import numpy as np
import pytest

from trainer.bench import temperature
from trainer.bench.__main__ import cli as bench_main
from trainer.generator import WeightGenerator, init_states, mean_path_accuracy

POLICY = "artifacts/runs/digits_mlp-imitate/policy.safetensors"


@pytest.fixture
def units_policy(tiny_policy, in_tmp):
    """The tiny imitation policy, saved to draw the unit latent at std 0.3 (what GRPO with grpo.noise=units writes)."""
    spec_path = in_tmp / "artifacts/runs/digits_mlp-imitate/policy.json"
    spec = json.loads(spec_path.read_text())
    spec["sampling"] = dict(noise="units", temperature=1.0, latent_std=0.3)
    spec_path.write_text(json.dumps(spec))
    return tiny_policy


def test_a_vanishing_latent_std_draws_the_mean_path_and_more_spread_disagrees(tiny_zoo, units_policy, in_tmp, capsys):
    task = tiny_zoo[1]
    r = bench_main(["temperature", "--policy", POLICY, "--seeds", "4", "--latent-std", "1e-7", "3", "--best-of", "3",
                    "--sgd-seeds", "2", "--out", "t.md", "--plots", "figs"] + units_policy)
    assert r == 0
    weight_generator = WeightGenerator.load(in_tmp / POLICY)
    mean = mean_path_accuracy(weight_generator, task, [0, 1, 2, 3])[0]
    table = (in_tmp / "t.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 1e-07 |") or line.startswith("| 3 |")]
    assert len(rows) == 2 and "| SGD, another data order (2 inits) |" in table
    # At std 1e-7 every draw is the mean path: its accuracy, no gain from choosing, and two draws agree everywhere.
    assert rows[0].split(" | ")[1] == f"{np.median(mean):.4f}" and rows[0].split(" | ")[-2] == "1.0000"
    assert "+0.00 +- 0.00 pts, better on 0%" in rows[0]
    assert float(rows[1].split(" | ")[-2]) < 1.0  # at std 3 the draws differ
    assert (in_tmp / "figs/digits_mlp-temperature.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_of_one_is_the_first_sample(tiny_zoo, units_policy, in_tmp):
    weight_generator = WeightGenerator.load(in_tmp / POLICY)
    mean = np.array(mean_path_accuracy(weight_generator, tiny_zoo[1], [0, 1, 2])[0])
    inits = init_states(weight_generator.cfg, tiny_zoo[1], [0, 1, 2])
    row = temperature.frontier_row(weight_generator, tiny_zoo[1], inits, mean, 0.5, draws=1, sample_seed=0)
    assert row["best"] == row["sample"] and np.isnan(row["agree_same_init"])


def test_a_policy_without_a_unit_latent_is_refused_in_one_line(tiny_policy, in_tmp, capsys):
    assert bench_main(["temperature", "--policy", POLICY, "--seeds", "2", "--plots", "figs"] + tiny_policy) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {POLICY}: samples with 'iid' noise") and err.count("\n") == 1, err
    assert not (in_tmp / "figs").exists()
