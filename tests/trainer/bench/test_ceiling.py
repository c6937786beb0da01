"""`bench ceiling`: the generator against the same policy fitted to each init alone, and SGD from the init."""

import pytest
import torch

from envs.tasks import task_from_config
from trainer.bench.__main__ import cli as bench_main
from trainer.bench.ceiling import fit_across_inits, fit_to_init, table
from trainer.bench.common import default_policy
from trainer.config import load_config
from trainer.generator import WeightGenerator, init_states, score_states


def test_a_fit_to_one_init_raises_its_accuracy_and_leaves_the_policy_as_it_was(tiny_policy, in_tmp):
    cfg = load_config(overrides=[a for a in tiny_policy if a != "--set"])
    task = task_from_config(cfg.task)
    weight_generator = WeightGenerator.load(default_policy(cfg), cfg=cfg)
    before = {k: v.clone() for k, v in weight_generator.policy.state_dict().items()}
    init = init_states(cfg, task, [7])
    with torch.no_grad():
        mean, _ = weight_generator.generate(init, mean_only=True, trajectory=False)
    generated = score_states(cfg, task, mean, "test")[0]
    # A vanishing step scores the generator's own net: the fit's net is the mean path's, finished and scored alike.
    assert fit_to_init(weight_generator, task, init, [1], 1e-30, 64, 0) == [generated]
    fitted = fit_to_init(weight_generator, task, init, [10, 40], 3e-3, 256, 0)
    assert len(fitted) == 2 and fitted[1] > generated + 0.05, (generated, fitted)
    after = weight_generator.policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_fit_across_fresh_inits_raises_held_out_accuracy_and_leaves_the_policy_as_it_was(tiny_policy, in_tmp):
    cfg = load_config(overrides=[a for a in tiny_policy if a != "--set"])
    task = task_from_config(cfg.task)
    weight_generator = WeightGenerator.load(default_policy(cfg), cfg=cfg)
    before = {k: v.clone() for k, v in weight_generator.policy.state_dict().items()}
    held_out = init_states(cfg, task, range(8))
    with torch.no_grad():
        mean, _ = weight_generator.generate(held_out, mean_only=True, trajectory=False)
    generated = score_states(cfg, task, mean, "test")
    across = fit_across_inits(weight_generator, task, held_out, 300, 1e-3, 256)
    assert len(across) == 8 and sum(across) / 8 > sum(generated) / 8 + 0.05, (generated, across)
    after = weight_generator.policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_table_names_the_gap_and_the_reach():
    r = dict(steps=[10, 40], lr=1e-4, batch=512, sgd_steps=100, generated=[0.90, 0.92], fitted=[[0.93, 0.95],
             [0.96, 0.98]], sgd=[0.95, 0.95], amortised=30, across=[0.91, 0.94])
    text = table("tiny", [0, 1], r)
    assert "| fitted across fresh inits, 30 steps of 8 | 0.9250 | +1.50 +- 0.50 pts, better on 100% |" in text
    assert "| fitted to its init, 40 steps | 0.9700 | +6.00 +- 0.00 pts, better on 100% | +2.00 +- 1.00 pts, better on 100% |" in text
    assert "Amortisation gap (fitted at 40 steps minus the generator, medians): +6.00 pts" in text
    assert "against SGD: +2.00 pts (the walk can write a net as good as SGD's" in text


def test_bench_ceiling_end_to_end_and_bad_steps(tiny_policy, in_tmp, capsys):
    assert bench_main(["ceiling", "--seeds", "2", "--steps", "2", "4", "--amortised", "2", "--out", "c.md",
                       "--plots", "figs"]
                      + tiny_policy) == 0
    text = (in_tmp / "c.md").read_text()
    assert [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| fitted")] == [
        "fitted across fresh inits, 2 steps of 8", "fitted to its init, 2 steps", "fitted to its init, 4 steps"]
    assert (in_tmp / "figs/digits_mlp-ceiling.png").stat().st_size > 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        bench_main(["ceiling", "--steps", "0"] + tiny_policy)
    assert e.value.code == 2 and "argument --steps: expected a count >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        bench_main(["ceiling", "--amortised", "-1"] + tiny_policy)
    assert e.value.code == 2 and "argument --amortised: expected a count >= 0, got -1" in capsys.readouterr().err
