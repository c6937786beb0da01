"""`bench precision`: bf16 autocast against fp32 scoring of the same sampled nets."""

import pytest
import torch
from scipy.stats import spearmanr

from envs.tasks import task_from_config
from trainer import imitate
from trainer.bench import precision
from trainer.bench.__main__ import build_parser, cli as bench_main
from trainer.bench.common import default_policy
from trainer.config import load_config
from trainer.generator import WeightGenerator, init_states, score_states


def test_bench_precision_compares_bf16_with_fp32_scores_of_the_same_samples(in_tmp, ray_local, capsys):
    """Each group's fp32 accuracies equal an independent fp32 scoring of the same draws (same generator seed), and the
    bf16 ones an independent autocast scoring; the rank correlation is that of those two lists."""
    sets = ["--set", "zoo.runs=3", "--set", "reference.widths=[8]", "--set", "zoo.epochs=2", "--set",
            "policy.dim=16", "--set", "policy.rounds=1", "--set", "policy.heads=2", "--set", "imitate.steps=4",
            "--set", "imitate.eval_every=4", "--set", "imitate.save_every=4", "--set", "imitate.eval_seeds=2",
            "--set", "rollout.num_workers=1"]
    assert imitate.cli(sets) == 0
    overrides = [a for a in sets if a != "--set"]
    assert bench_main(["precision", "--seeds", "2", "-G", "4"] + sets) == 0
    out = capsys.readouterr().out
    assert "2 groups of 4 sampled nets" in out and "same best net" in out
    args = build_parser().parse_args(["precision", "--seeds", "2", "-G", "4"] + sets)
    cfg = load_config("configs/digits_mlp.yaml", overrides)
    result = precision.run(args, [cfg])
    weight_generator = WeightGenerator.load(default_policy(cfg), cfg=cfg)
    task = task_from_config(cfg.task)
    gen = torch.Generator().manual_seed(cfg.seed)
    for seed, group in zip((0, 1), result["groups"]):
        states, _ = weight_generator.rollout(init_states(cfg, task, [seed]), 4, gen)
        assert group["fp32_accuracy"] == score_states(cfg, task, states, "reward")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert group["bf16_accuracy"] == score_states(cfg, task, states, "reward")
        if len(set(group["fp32_accuracy"])) > 1:
            assert group["rho_accuracy"] == pytest.approx(
                spearmanr(group["fp32_accuracy"], group["bf16_accuracy"]).statistic)
    with pytest.raises(SystemExit) as e:  # a ranking needs two nets: refused before any work
        bench_main(["precision", "-G", "1"] + sets)
    assert e.value.code == 2 and "argument --group-size/-G: expected >= 2 (a ranking needs two nets), got 1" in capsys.readouterr().err
