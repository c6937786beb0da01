"""`bench objectives`: SGD then quantise/prune (+ fine-tune) against the policies' nets, on each objective."""

import pytest
import torch

from envs.objectives import Objective
from envs.tasks import task_from_config
from tests.settings import TINY_ZOO as TINY
from trainer.bench.__main__ import cli as bench_main
from trainer.bench.objectives import finetune
from trainer.config import load_config
from trainer.generator import init_states, unbatch


def test_prune_then_finetune_trains_only_the_kept_weights():
    cfg = load_config(overrides=TINY)
    task = task_from_config(cfg.task)
    state = unbatch(init_states(cfg, task, [3]), 0)
    objective = Objective("pruned", sparsity=0.75)
    out = finetune(cfg, task, state, objective, 1, seed=0)
    matrices = [k for k, v in state.items() if v.dim() >= 2]
    mask = {k: v[0] != 0 for k, v in objective.weights({k: v[None] for k, v in state.items()}).items()}
    dropped = sum(int((~mask[k]).sum()) for k in matrices)
    assert dropped == round(0.75 * sum(state[k].numel() for k in matrices))
    for k in matrices:
        assert torch.equal(out[k] == 0, ~mask[k])  # the pruned ones stay zero, the kept ones all moved
        assert (out[k][mask[k]] != state[k][mask[k]]).all()
    again = objective.weights({k: v[None] for k, v in out.items()})  # deploying the fine-tuned net prunes nothing more
    assert all(torch.equal(again[k][0], out[k]) for k in out)


def test_bench_objectives_end_to_end_with_a_grpo_policy(tiny_zoo, tiny_policy, in_tmp, ray_local, capsys):
    from trainer import grpo
    grpo_sets = ["--set", "env.objective=pruned", "--set", "env.sparsity=0.8", "--set", "grpo.iterations=1",
                 "--set", "grpo.inits_per_iter=2", "--set", "grpo.group_size=4", "--set", "grpo.minibatch_size=4",
                 "--set", "rollout.num_workers=1"]
    assert grpo.cli(tiny_policy + grpo_sets + ["--name", "g"]) == 0
    policy = str(in_tmp / "artifacts/runs/g/policy.safetensors")
    capsys.readouterr()
    args = ["objectives", "--seeds", "2", "--objective", "pruned", "quantized", "--out", "o.md", "--plots", "figs"]
    # Scored on another sparsity than it was trained on: refused before any work, naming both.
    assert bench_main(args + ["--grpo", f"pruned={policy}"] + tiny_policy) == 2
    assert "trained on Objective(name='pruned'" in capsys.readouterr().err and not (in_tmp / "o.md").exists()
    # A run folder names its policy as the file does.
    assert bench_main(args + ["--grpo", f"pruned={in_tmp / 'artifacts/runs/g'}", "--set", "env.sparsity=0.8"] + tiny_policy) == 0
    text = (in_tmp / "o.md").read_text()
    assert "### accuracy at 80% sparsity (pruned)" in text and "### accuracy at 4-bit weights (quantized)" in text
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" (")[0] for r in rows if not r.startswith("nets")] == [
        "SGD, then magnitude pruning", "SGD, then pruning + fine-tune of the kept weights", "imitation policy",
        "GRPO policy on this objective", "SGD, then post-training quantisation",
        "SGD, then quantisation-aware fine-tune", "imitation policy", "GRPO policy on this objective"]
    assert "not trained: `python -m trainer.grpo --set env.objective=quantized" in text
    assert (in_tmp / "figs/digits_mlp-objectives.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        bench_main(["objectives", "--objective", "int4"] + tiny_policy)


def test_quantisation_aware_finetune_trains_through_the_objectives_quantiser():
    """QAT sees the deployed weights: its run departs from the same recipe without the quantiser (same data order),
    and its weights moved. The quantiser's gradient itself is checked in tests/envs/test_objectives.py."""
    cfg = load_config(overrides=TINY)
    task = task_from_config(cfg.task)
    state = unbatch(init_states(cfg, task, [3]), 0)
    qat = finetune(cfg, task, state, Objective("quantized", bits=3), 1, seed=0)
    plain = finetune(cfg, task, state, Objective(), 1, seed=0)
    for k in state:
        if state[k].dim() >= 2:
            assert not torch.equal(qat[k], state[k]) and not torch.allclose(qat[k], plain[k], atol=1e-4)
